//! `/allocations/allocations/` (domain.md §7.5): service units requested, awarded and used
//! on one cluster for one request. Staff, or an admin/owner of the request's team on a
//! cluster the team may use, create them (⚑ only staff award: `awarded` and `final`); staff
//! edit and delete them; members read them.

use super::clusters;
use super::requests::{self, invalid_pk};
use crate::domain::validation::{NOT_NULL, REQUIRED, Validator, pk_value};
use crate::store::Db;
use crate::store::audit::{self, Action, Snapshot};
use crate::web::ApiError;
use crate::web::api::list::{self as listing, Column, Kind, ListSpec, search_via};
use crate::web::api::{Caller, body, context, path_id};
use crate::{on_db, on_tx};
use chrono_tz::Tz;
use salvo::http::StatusCode;
use salvo::oapi::ToSchema;
use salvo::prelude::*;
use serde::Serialize;
use serde_json::{Value, json};

pub const CONTENT_TYPE: &str = "allocations | ResourceAllocation";
const MODEL: &str = "ResourceAllocation";
/// Service units are PostgreSQL `INTEGER`s (domain.md §3.5.4).
pub const SU_MAX: i64 = 2_147_483_647;

const COLUMNS: &[Column] = &[
    Column::new("id", Kind::Int),
    Column::new("requested", Kind::Int),
    Column::new("awarded", Kind::Int),
    Column::new("final", Kind::Int),
    Column::new("cluster", Kind::Fk("allocations_cluster")),
    Column::new("request", Kind::Fk(requests::TABLE)),
];

pub const SPEC: ListSpec = ListSpec {
    table: "allocations_resourceallocation",
    filters: COLUMNS,
    order: COLUMNS,
    search: &[
        search_via(
            &[("request_id", requests::TABLE), ("team_id", "users_team")],
            "name",
        ),
        search_via(&[("request_id", requests::TABLE)], "title"),
        search_via(&[("cluster_id", "allocations_cluster")], "name"),
    ],
};

const ROW_COLUMNS: [&str; 6] = [
    "id",
    "requested",
    "awarded",
    "final",
    "cluster_id",
    "request_id",
];

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "ResourceAllocation"))]
pub struct ResourceAllocationDoc {
    pub id: i64,
    pub _cluster: clusters::ClusterSummaryDoc,
    pub _request: requests::AllocationRequestSummaryDoc,
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

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "PatchedResourceAllocationRequest"))]
pub struct PatchedResourceAllocationRequestDoc {
    #[salvo(schema(minimum = 0, maximum = 2147483647, required = false))]
    pub requested: i64,
    #[salvo(schema(minimum = 0, maximum = 2147483647))]
    pub awarded: Option<i64>,
    #[salvo(schema(minimum = 0, maximum = 2147483647))]
    pub r#final: Option<i64>,
    #[salvo(schema(required = false))]
    pub cluster: i64,
    #[salvo(schema(required = false))]
    pub request: i64,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "PaginatedResourceAllocationList"))]
pub struct ResourceAllocationPage {
    pub count: i64,
    pub next: Option<String>,
    pub previous: Option<String>,
    pub results: Vec<ResourceAllocationDoc>,
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

fn scope(q: &mut sea_query::SelectStatement, caller: &Caller) {
    requests::scope_via_request(q, caller, "request_id");
}

/// Representations of a page: clusters, requests and history in a constant number of
/// queries.
pub async fn represent(db: &Db, tz: Tz, rows: &[AllocationRow]) -> Result<Vec<Value>, ApiError> {
    let ids: Vec<i64> = rows.iter().map(|a| a.id).collect();
    let cluster_ids: Vec<i64> = rows.iter().map(|a| a.cluster_id).collect();
    let request_ids: Vec<i64> = rows.iter().map(|a| a.request_id).collect();
    let cls = clusters::by_ids(db, &cluster_ids).await?;
    let reqs = requests::summaries_by_id(db, &request_ids).await?;
    let mut history = crate::web::api::summaries::history(db, tz, CONTENT_TYPE, &ids).await?;
    Ok(rows
        .iter()
        .map(|a| {
            json!({
                "id": a.id,
                "_cluster": cls.get(&a.cluster_id).map(clusters::summary).unwrap_or(Value::Null),
                "_request": reqs.get(&a.request_id).cloned().unwrap_or(Value::Null),
                "_history": history.remove(&a.id).unwrap_or_default(),
                "requested": a.requested,
                "awarded": a.awarded,
                "final": a.final_,
                "cluster": a.cluster_id,
                "request": a.request_id,
            })
        })
        .collect())
}

async fn represent_one(db: &Db, tz: Tz, a: &AllocationRow) -> Result<Value, ApiError> {
    Ok(represent(db, tz, std::slice::from_ref(a))
        .await?
        .pop()
        .unwrap_or(Value::Null))
}

/// List resource allocations.
///
/// Returns a list of resource allocations. Non-staff users are only returned allocations
/// belonging to teams where they hold membership. Staff users are returned all allocations.
#[endpoint(
    operation_id = "allocations_allocations_list",
    tags("Allocations - Allocated Resources"),
    responses((status_code = 200, description = "", body = ResourceAllocationPage))
)]
pub async fn list(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let listing::CallerPage {
            app, rows, page, ..
        } = listing::caller_page::<AllocationRow>(req, depot, &SPEC, &ROW_COLUMNS, scope).await?;
        Ok(page.envelope(represent(&app.db, app.config.timezone(), &rows).await?))
    }
    .await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

async fn found(db: &Db, id: i64) -> Result<AllocationRow, ApiError> {
    let row: Option<AllocationRow> = on_db!(db, |p| sqlx::query_as::<_, AllocationRow>(
        "SELECT id, requested, awarded, final, cluster_id, request_id \
         FROM allocations_resourceallocation WHERE id = $1"
    )
    .bind(id)
    .fetch_optional(p)
    .await)?;
    row.ok_or_else(|| ApiError::no_match(MODEL))
}

/// Retrieve a resource allocation.
///
/// Returns a single resource allocation by ID. Read access is granted to staff users and
/// team members.
#[endpoint(
    operation_id = "allocations_allocations_retrieve",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this resource allocation.")),
    tags("Allocations - Allocated Resources"),
    responses((status_code = 200, description = "", body = ResourceAllocationDoc))
)]
pub async fn retrieve(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let me = &caller.user;
        let a = found(&app.db, path_id(req)?).await?;
        if !me.is_staff {
            let member = match requests::by_id(&app.db, a.request_id).await? {
                Some(r) => requests::is_member(&app.db, me.id, r.team_id).await?,
                None => false,
            };
            if !member {
                return Err(ApiError::forbidden());
            }
        }
        represent_one(&app.db, app.config.timezone(), &a).await
    }
    .await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

pub fn snapshot_of(
    id: i64,
    requested: i32,
    awarded: Option<i32>,
    fin: Option<i32>,
    cluster: i64,
    request: i64,
) -> Snapshot {
    vec![
        ("id", audit::int(id)),
        ("requested", audit::int(i64::from(requested))),
        ("awarded", audit::opt_int(awarded.map(i64::from))),
        ("final", audit::opt_int(fin.map(i64::from))),
        ("cluster", audit::int(cluster)),
        ("request", audit::int(request)),
    ]
}

fn snapshot(a: &AllocationRow) -> Snapshot {
    snapshot_of(
        a.id,
        a.requested,
        a.awarded,
        a.final_,
        a.cluster_id,
        a.request_id,
    )
}

/// `Resource Allocation #<pk> - Cluster #<pk> - <cluster name> allocation for Team #<pk> -
/// <team name>`.
pub fn repr_of(id: i64, cluster: i64, cluster_name: &str, team: i64, team_name: &str) -> String {
    format!(
        "Resource Allocation #{id} - Cluster #{cluster} - {cluster_name} allocation for Team #{team} - {team_name}"
    )
}

async fn repr(db: &Db, a: &AllocationRow) -> Result<String, ApiError> {
    let names: Option<(String, i64, String)> = on_db!(db, |p| sqlx::query_as(
        "SELECT c.name, r.team_id, t.name FROM allocations_cluster c, \
         allocations_allocationrequest r, users_team t \
         WHERE c.id = $1 AND r.id = $2 AND t.id = r.team_id"
    )
    .bind(a.cluster_id)
    .bind(a.request_id)
    .fetch_optional(p)
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
        && clusters::first_missing(db, "allocations_cluster", &[id])
            .await?
            .is_some()
    {
        v.error("cluster", invalid_pk(id));
    }
    if let Some(id) = request
        && requests::missing(db, id).await?
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
    let Some(request) = requests::by_id(db, request_id).await? else {
        return Ok(false);
    };
    if !crate::store::teams::is_privileged(db, user_id, request.team_id).await? {
        return Ok(false);
    }
    let Some(cluster) = clusters::by_id(db, cluster_id).await? else {
        return Ok(false);
    };
    clusters::team_may_use(db, &cluster, request.team_id).await
}

/// Create a resource allocation.
///
/// Creates a new resource allocation. Write access is granted to staff users and team
/// administrators. Non-staff users may only create allocations on clusters their team is
/// permitted to use under the cluster's access mode, and may not set `awarded` or `final`
/// (any value other than null is refused with 403 before validation).
#[endpoint(
    operation_id = "allocations_allocations_create",
    tags("Allocations - Allocated Resources"),
    request_body = ResourceAllocationRequestDoc,
    responses((status_code = 201, description = "", body = ResourceAllocationDoc))
)]
pub async fn create(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let me = &caller.user;
        let body = body::read(req).await?;
        if !me.is_staff && !may_create(&app.db, me.id, &body).await? {
            return Err(ApiError::forbidden());
        }
        let mut row = validate(&app.db, &body, false, None).await?;
        let ctx = crate::web::access::audit_context(req, depot);
        let mut tx = app.db.begin().await?;
        row.id = on_tx!(&mut tx, |c| {
            sqlx::query_scalar(
            "INSERT INTO allocations_resourceallocation (requested, awarded, final, cluster_id, \
             request_id) VALUES ($1, $2, $3, $4, $5) RETURNING id"
        )
        .bind(row.requested)
        .bind(row.awarded)
        .bind(row.final_)
        .bind(row.cluster_id)
        .bind(row.request_id)
        .fetch_one(c)
        .await
        })?;
        let text = repr(&app.db, &row).await?;
        audit::record(
            &mut tx,
            &ctx,
            CONTENT_TYPE,
            row.id,
            &text,
            Action::Create,
            audit::changes(None, Some(&snapshot(&row))),
        )
        .await?;
        tx.commit().await?;
        represent_one(&app.db, app.config.timezone(), &row).await
    }
    .await;
    crate::web::api::respond(res, StatusCode::CREATED, result);
}

/// A staff-only item: 404 when missing, then 403 for non-staff.
async fn staff_item(db: &Db, caller: &Caller, id: i64) -> Result<AllocationRow, ApiError> {
    let me = &caller.user;
    let a = found(db, id).await?;
    if !me.is_staff {
        return Err(ApiError::forbidden());
    }
    Ok(a)
}

async fn update(req: &mut Request, depot: &mut Depot, partial: bool) -> Result<Value, ApiError> {
    let (app, caller) = context(depot)?;
    let current = staff_item(&app.db, &caller, path_id(req)?).await?;
    let body = body::read(req).await?;
    let after = validate(&app.db, &body, partial, Some(&current)).await?;
    let ctx = crate::web::access::audit_context(req, depot);
    let text = repr(&app.db, &after).await?;
    let mut tx = app.db.begin().await?;
    on_tx!(&mut tx, |c| sqlx::query(
        "UPDATE allocations_resourceallocation SET requested = $1, awarded = $2, final = $3, \
         cluster_id = $4, request_id = $5 WHERE id = $6"
    )
    .bind(after.requested)
    .bind(after.awarded)
    .bind(after.final_)
    .bind(after.cluster_id)
    .bind(after.request_id)
    .bind(after.id)
    .execute(c)
    .await
    .map(|_| ()))?;
    audit::record(
        &mut tx,
        &ctx,
        CONTENT_TYPE,
        after.id,
        &text,
        Action::Update,
        audit::changes(Some(&snapshot(&current)), Some(&snapshot(&after))),
    )
    .await?;
    tx.commit().await?;
    represent_one(&app.db, app.config.timezone(), &after).await
}

/// Update a resource allocation.
///
/// Replaces an existing resource allocation with new values. Write access is restricted to
/// staff users.
#[endpoint(
    operation_id = "allocations_allocations_update",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this resource allocation.")),
    tags("Allocations - Allocated Resources"),
    request_body = ResourceAllocationRequestDoc,
    responses((status_code = 200, description = "", body = ResourceAllocationDoc))
)]
pub async fn put(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = update(req, depot, false).await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

/// Partially update a resource allocation.
///
/// Partially updates an existing resource allocation with new values. Write access is
/// restricted to staff users.
#[endpoint(
    operation_id = "allocations_allocations_partial_update",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this resource allocation.")),
    tags("Allocations - Allocated Resources"),
    request_body = PatchedResourceAllocationRequestDoc,
    responses((status_code = 200, description = "", body = ResourceAllocationDoc))
)]
pub async fn patch(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = update(req, depot, true).await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

/// Delete a resource allocation.
///
/// Deletes a resource allocation by ID. Write access is restricted to staff users.
#[endpoint(
    operation_id = "allocations_allocations_destroy",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this resource allocation.")),
    tags("Allocations - Allocated Resources"),
    responses((status_code = 204, description = "No response body"))
)]
pub async fn destroy(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result: Result<(), ApiError> = async {
        let (app, caller) = context(depot)?;
        let a = staff_item(&app.db, &caller, path_id(req)?).await?;
        let ctx = crate::web::access::audit_context(req, depot);
        let text = repr(&app.db, &a).await?;
        audit::delete_audited(
            &app.db,
            &ctx,
            CONTENT_TYPE,
            "allocations_resourceallocation",
            a.id,
            &text,
            &snapshot(&a),
        )
        .await?;
        Ok(())
    }
    .await;
    crate::web::api::no_content(res, result);
}

/// The routes of this resource.
pub fn routes() -> crate::web::route::Routes {
    crate::web::route::Routes::new()
        .push(crate::web::api::collection!(
            "allocations/allocations/",
            list,
            create,
            "Resource Allocation List"
        ))
        .push(crate::web::api::item!(
            "allocations/allocations/{id}/",
            retrieve,
            put,
            patch,
            destroy,
            "Resource Allocation Instance"
        ))
}
