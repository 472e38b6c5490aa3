//! `/allocations/allocations/` (domain.md §7.5): service units requested, awarded and used
//! on one cluster for one request. Staff, or an admin/owner of the request's team on a
//! cluster the team may use, create them (⚑ only staff award: `awarded` and `final`); staff
//! edit and delete them; members read them.

use super::shared::{self, REQUESTS, invalid_pk};
use crate::domain::validation::{NOT_NULL, REQUIRED, Validator, pk_value};
use crate::on_tx;
use crate::store::audit::{Action, Snapshot};
use crate::store::{Db, Tx};
use crate::web::ApiError;
use crate::web::api::Caller;
use crate::web::api::body::{self, Body};
use crate::web::api::list::{Column, Kind, ListSpec, search_via};
use crate::web::api::resource::{self, Docs, Field, Policy, Resource, Val};
use crate::web::api::summaries::AuditLogSummaryDoc;
use chrono_tz::Tz;
use salvo::oapi::{Components, RefOr, Schema, ToSchema};
use serde::Serialize;
use serde_json::Value;

pub const CONTENT_TYPE: &str = "allocations | ResourceAllocation";
const MODEL: &str = "ResourceAllocation";
const TABLE: &str = "allocations_resourceallocation";
/// Service units are PostgreSQL `INTEGER`s (domain.md §3.5.4).
pub const SU_MAX: i64 = 2_147_483_647;

const FIELDS: [Field<AllocationRow>; 6] = [
    Field::id(|a| Val::Int(a.id)),
    Field::new("requested", Kind::Int, |a| Val::Int(a.requested.into())),
    Field::new("awarded", Kind::Int, |a| {
        Val::OptInt(a.awarded.map(i64::from))
    }),
    Field::new("final", Kind::Int, |a| Val::OptInt(a.final_.map(i64::from))),
    Field::new("cluster", Kind::Fk("allocations_cluster"), |a| {
        Val::Int(a.cluster_id)
    }),
    Field::new("request", Kind::Fk(REQUESTS), |a| Val::Int(a.request_id)),
];
const COLUMNS: [Column; 6] = resource::columns(&FIELDS);

pub const SPEC: ListSpec = ListSpec {
    table: TABLE,
    filters: &COLUMNS,
    order: &COLUMNS,
    search: &[
        search_via(
            &[("request_id", REQUESTS), ("team_id", "users_team")],
            "name",
        ),
        search_via(&[("request_id", REQUESTS)], "title"),
        search_via(&[("cluster_id", "allocations_cluster")], "name"),
    ],
};

// A resource allocation as the API renders and documents it (a doc comment here would
// become the schema's description).
#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "ResourceAllocation"))]
pub struct ResourceAllocation {
    pub id: i64,
    #[salvo(schema(value_type = crate::web::api::summaries::ClusterSummaryDoc))]
    pub _cluster: Option<crate::web::api::summaries::Embedded>,
    #[salvo(schema(value_type = shared::AllocationRequestSummaryDoc))]
    pub _request: Option<crate::web::api::summaries::Embedded>,
    #[salvo(schema(value_type = Vec<AuditLogSummaryDoc>))]
    pub _history: Vec<crate::web::api::summaries::AuditLogSummaryDoc>,
    #[salvo(schema(minimum = 0, maximum = 2147483647))]
    pub requested: i64,
    #[salvo(schema(minimum = 0, maximum = 2147483647, required))]
    pub awarded: Option<i64>,
    #[salvo(schema(minimum = 0, maximum = 2147483647, required))]
    pub r#final: Option<i64>,
    pub cluster: i64,
    pub request: i64,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "ResourceAllocationRequest"))]
pub struct ResourceAllocationRequestDoc {
    #[salvo(schema(minimum = 0, maximum = 2147483647))]
    pub requested: i64,
    /// Set by staff only: a non-staff create sending a value other than null is refused (403).
    #[salvo(schema(minimum = 0, maximum = 2147483647))]
    pub awarded: Option<i64>,
    /// Set by staff only: a non-staff create sending a value other than null is refused (403).
    #[salvo(schema(minimum = 0, maximum = 2147483647))]
    pub r#final: Option<i64>,
    pub cluster: i64,
    pub request: i64,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AllocationRow {
    pub id: i64,
    pub requested: i32,
    pub awarded: Option<i32>,
    #[sqlx(rename = "final")]
    pub final_: Option<i32>,
    pub cluster_id: i64,
    pub request_id: i64,
}

pub fn snapshot_of(
    id: i64,
    requested: i32,
    awarded: Option<i32>,
    fin: Option<i32>,
    cluster: i64,
    request: i64,
) -> Snapshot {
    ResourceAllocations::snapshot(&AllocationRow {
        id,
        requested,
        awarded,
        final_: fin,
        cluster_id: cluster,
        request_id: request,
    })
}

/// `Resource Allocation #<pk> - Cluster #<pk> - <cluster name> allocation for Team #<pk> -
/// <team name>`.
pub fn repr_of(id: i64, cluster: i64, cluster_name: &str, team: i64, team_name: &str) -> String {
    format!(
        "Resource Allocation #{id} - Cluster #{cluster} - {cluster_name} allocation for Team #{team} - {team_name}"
    )
}

async fn repr(tx: &mut Tx, a: &AllocationRow) -> Result<String, ApiError> {
    let names: Option<(String, i64, String)> = on_tx!(tx, |c| sqlx::query_as(
        "SELECT c.name, r.team_id, t.name FROM allocations_cluster c, \
         allocations_allocationrequest r, users_team t \
         WHERE c.id = $1 AND r.id = $2 AND t.id = r.team_id"
    )
    .bind(a.cluster_id)
    .bind(a.request_id)
    .fetch_optional(c)
    .await)?;
    let (cluster_name, team, team_name) = names.unwrap_or_default();
    Ok(repr_of(a.id, a.cluster_id, &cluster_name, team, &team_name))
}

/// A service-unit count as DRF's `IntegerField(min_value=0)` with the PostgreSQL bound:
/// `Some(None)` = null, `None` = absent or invalid (error recorded).
fn service_units(
    v: &mut Validator,
    body: &body::Body,
    name: &str,
    required: bool,
    partial: bool,
) -> Option<Option<i32>> {
    const INVALID: &str = "A valid integer is required.";
    const BELOW: &str = "Ensure this value is greater than or equal to 0.";
    let above = format!("Ensure this value is less than or equal to {SU_MAX}.");
    let Some(raw) = body.get(name) else {
        if required && !partial {
            v.error(name, REQUIRED);
        }
        return None;
    };
    // None = not an integer; Some(Err(sign)) = an integer beyond i64 of that sign.
    let parsed: Option<Result<i64, bool>> = match raw {
        Value::Null => {
            if required {
                v.error(name, NOT_NULL);
                return None;
            }
            return Some(None);
        }
        Value::String(s) if s.is_empty() && body.form && !required => return Some(None),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Some(Ok(i))
            } else if n.as_u64().is_some() {
                Some(Err(true))
            } else {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.is_finite())
                    .map(|f| {
                        if f > i64::MAX as f64 {
                            Err(true)
                        } else if f < i64::MIN as f64 {
                            Err(false)
                        } else {
                            Ok(f as i64)
                        }
                    })
            }
        }
        Value::String(s) => {
            // DRF strips a trailing `.0…` before `int()`.
            let t = s.trim();
            let t = match t.split_once('.') {
                Some((int, frac)) if frac.bytes().all(|b| b == b'0') => int,
                _ => t,
            };
            let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                Some(t.parse::<i64>().map_err(|_| !t.starts_with('-')))
            }
        }
        _ => None,
    };
    match parsed {
        None => {
            v.error(name, INVALID);
            None
        }
        Some(Err(true)) => {
            v.error(name, above);
            None
        }
        Some(Err(false)) => {
            v.error(name, BELOW);
            None
        }
        Some(Ok(n)) if n < 0 => {
            v.error(name, BELOW);
            None
        }
        Some(Ok(n)) if n > SU_MAX => {
            v.error(name, above);
            None
        }
        Some(Ok(n)) => Some(Some(n as i32)),
    }
}

async fn validate(
    db: &Db,
    body: &body::Body,
    partial: bool,
    current: Option<&AllocationRow>,
) -> Result<AllocationRow, ApiError> {
    body.require_object()?;
    let mut v = Validator::new(&body.fields, partial);
    let requested = service_units(&mut v, body, "requested", true, partial).flatten();
    let awarded = service_units(&mut v, body, "awarded", false, partial);
    let fin = service_units(&mut v, body, "final", false, partial);
    let cluster = v.pk("cluster", true);
    let request = v.pk("request", true);
    if let Some(id) = cluster
        && crate::store::first_missing(db, "allocations_cluster", &[id])
            .await?
            .is_some()
    {
        v.error("cluster", invalid_pk(id));
    }
    if let Some(id) = request
        && shared::missing(db, id).await?
    {
        v.error("request", invalid_pk(id));
    }
    v.finish()?;
    Ok(AllocationRow {
        id: current.map(|c| c.id).unwrap_or(0),
        requested: requested
            .or(current.map(|c| c.requested))
            .unwrap_or_default(),
        awarded: awarded.unwrap_or_else(|| current.and_then(|c| c.awarded)),
        final_: fin.unwrap_or_else(|| current.and_then(|c| c.final_)),
        cluster_id: cluster
            .or(current.map(|c| c.cluster_id))
            .unwrap_or_default(),
        request_id: request
            .or(current.map(|c| c.request_id))
            .unwrap_or_default(),
    })
}

/// ⚑ Whether a body sets service units only staff may set (docs/security.md §10): any
/// `awarded` or `final` that is not null (a form's empty value is null), valid or not.
fn sets_award(body: &body::Body) -> bool {
    ["awarded", "final"]
        .into_iter()
        .any(|name| match body.get(name) {
            None | Some(Value::Null) => false,
            Some(Value::String(s)) => !(s.is_empty() && body.form),
            Some(_) => true,
        })
}

/// The create rule for non-staff callers (domain.md §7.5): admin/owner of the body request's
/// team, on a cluster that team may use, ⚑ without `awarded` or `final`. Anything missing or
/// unknown is a 403.
async fn may_create(db: &Db, user_id: i64, body: &body::Body) -> Result<bool, ApiError> {
    if sets_award(body) {
        return Ok(false);
    }
    let pk = |key: &str| body.get(key).and_then(|v| pk_value(v).ok());
    let (Some(request_id), Some(cluster_id)) = (pk("request"), pk("cluster")) else {
        return Ok(false);
    };
    let Some(team_id) = shared::request_team(db, request_id).await? else {
        return Ok(false);
    };
    if !crate::store::teams::is_privileged(db, user_id, team_id).await? {
        return Ok(false);
    }
    Ok(crate::store::clusters::usable_by(db, cluster_id, team_id)
        .await?
        .unwrap_or(false))
}

/// The resource allocation resource.
pub struct ResourceAllocations;

crate::document_resource!(ResourceAllocations);

impl Resource for ResourceAllocations {
    type Row = AllocationRow;
    type Repr = ResourceAllocation;
    type Extra = ();

    const PATH: &'static str = "allocations/allocations/";
    const TABLE: &'static str = TABLE;
    const CONTENT_TYPE: &'static str = CONTENT_TYPE;
    const MODEL: &'static str = MODEL;
    const FIELDS: &'static [Field<AllocationRow>] = &FIELDS;
    const SPEC: ListSpec = SPEC;
    /// Creates follow `may_create` (`check_body`); item writes are staff-only once the
    /// record is found (404 before 403).
    const POLICY: Policy = Policy::STAFF_CHANGES;
    const DOCS: Docs = Docs {
        tag: "Allocations - Allocated Resources",
        id: "A unique integer value identifying this resource allocation.",
        list_name: "Resource Allocation List",
        item_name: "Resource Allocation Instance",
        list: (
            "List resource allocations.",
            "Returns a list of resource allocations. Non-staff users are only returned \
             allocations belonging to teams where they hold membership. Staff users are \
             returned all allocations.",
        ),
        retrieve: (
            "Retrieve a resource allocation.",
            "Returns a single resource allocation by ID. Read access is granted to staff \
             users and team members.",
        ),
        create: (
            "Create a resource allocation.",
            "Creates a new resource allocation. Write access is granted to staff users and \
             team administrators. Non-staff users may only create allocations on clusters \
             their team is permitted to use under the cluster's access mode, and may not set \
             `awarded` or `final` (any value other than null is refused with 403 before \
             validation).",
        ),
        update: (
            "Update a resource allocation.",
            "Replaces an existing resource allocation with new values. Write access is \
             restricted to staff users.",
        ),
        partial_update: (
            "Partially update a resource allocation.",
            "Partially updates an existing resource allocation with new values. Write access \
             is restricted to staff users.",
        ),
        destroy: (
            "Delete a resource allocation.",
            "Deletes a resource allocation by ID. Write access is restricted to staff users.",
        ),
    };

    crate::record_id!();

    async fn repr(tx: &mut Tx, row: &AllocationRow) -> Result<String, ApiError> {
        repr(tx, row).await
    }

    async fn validate(
        db: &Db,
        _caller: &Caller,
        body: &Body,
        partial: bool,
        current: Option<&AllocationRow>,
    ) -> Result<(AllocationRow, ()), ApiError> {
        Ok((validate(db, body, partial, current).await?, ()))
    }

    /// Representations of a page: clusters, requests and history in a constant number of
    /// queries.
    async fn represent(
        db: &Db,
        tz: Tz,
        rows: &[AllocationRow],
    ) -> Result<Vec<ResourceAllocation>, ApiError> {
        let ids: Vec<i64> = rows.iter().map(|a| a.id).collect();
        let cluster_ids: Vec<i64> = rows.iter().map(|a| a.cluster_id).collect();
        let request_ids: Vec<i64> = rows.iter().map(|a| a.request_id).collect();
        let cls = crate::web::api::summaries::clusters_by_id(db, &cluster_ids).await?;
        let reqs = shared::summaries_by_id(db, &request_ids).await?;
        let mut history = crate::web::api::summaries::history(db, tz, CONTENT_TYPE, &ids).await?;
        Ok(rows
            .iter()
            .map(|a| ResourceAllocation {
                id: a.id,
                _cluster: cls.get(&a.cluster_id).map(|c| c.summary.clone()),
                _request: reqs.get(&a.request_id).cloned(),
                _history: history.remove(&a.id).unwrap_or_default(),
                requested: a.requested.into(),
                awarded: a.awarded.map(i64::from),
                r#final: a.final_.map(i64::from),
                cluster: a.cluster_id,
                request: a.request_id,
            })
            .collect())
    }

    fn scope(q: &mut sea_query::SelectStatement, caller: &Caller) {
        shared::scope_via_request(q, caller, "request_id");
    }

    /// Members of the request's team (staff: any).
    async fn check_record(db: &Db, caller: &Caller, row: &AllocationRow) -> Result<(), ApiError> {
        ApiError::forbidden_unless(super::sees_request(db, caller, row.request_id).await?)
    }

    /// A non-staff create must pass `may_create`, before validation.
    async fn check_body(
        db: &Db,
        caller: &Caller,
        body: &Body,
        action: Action,
    ) -> Result<(), ApiError> {
        if action == Action::Create
            && !caller.is_staff()
            && !may_create(db, caller.id(), body).await?
        {
            return Err(ApiError::forbidden());
        }
        Ok(())
    }

    fn request_body(components: &mut Components) -> Option<RefOr<Schema>> {
        Some(ResourceAllocationRequestDoc::to_schema(components))
    }
}
