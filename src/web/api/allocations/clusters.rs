//! `/allocations/clusters/` (domain.md §7.1): the HPC clusters allocations are made on. Staff
//! manage them; everyone authenticated may read any cluster by id, while the list shows a
//! non-staff caller only the clusters their teams may use (access mode and access list).

use crate::domain::validation::{Text, Validator};
use crate::store::audit::Action;
use crate::store::{Db, Tx};
use crate::web::ApiError;
use crate::web::api::body::Body;
use crate::web::api::list::{Column, Kind, ListSpec, search};
use crate::web::api::resource::{self, Docs, Field, Policy, Resource, Val};
use crate::web::api::summaries;
use crate::web::api::summaries::{AuditLogSummaryDoc, TeamSummaryDoc};
use crate::web::api::{Caller, body};
use crate::{on_db, on_tx};
use chrono_tz::Tz;
use salvo::oapi::{Components, RefOr, Schema, ToSchema};
use sea_query::{Alias, Cond, Expr, ExprTrait, Query};
use serde::Serialize;

pub const CONTENT_TYPE: &str = "allocations | Cluster";
const MODEL: &str = "Cluster";
pub const ACCESS_MODES: &[&str] = &["WL", "BL", "OP"];

const FIELDS: [Field<ClusterRow>; 5] = [
    Field::id(|c| Val::Int(c.id)),
    Field::new("name", Kind::Text, |c| Val::Text(c.name.clone())),
    Field::new("description", Kind::Text, |c| {
        Val::OptText(c.description.clone())
    }),
    Field::new("enabled", Kind::Bool, |c| Val::Bool(c.enabled)),
    Field::new("access_mode", Kind::Choice(ACCESS_MODES), |c| {
        Val::Text(c.access_mode.clone())
    }),
];
const COLUMNS: [Column; 5] = resource::columns(&FIELDS);

pub const SPEC: ListSpec = ListSpec {
    table: "allocations_cluster",
    filters: &COLUMNS,
    order: &COLUMNS,
    search: &[search("name"), search("description")],
};

// A cluster as the API renders and documents it (a doc comment here would become the
// schema's description).
#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "Cluster"))]
pub struct Cluster {
    pub id: i64,
    #[salvo(schema(value_type = Vec<TeamSummaryDoc>))]
    pub _access_teams: Vec<crate::web::api::summaries::Embedded>,
    #[salvo(schema(value_type = Vec<AuditLogSummaryDoc>))]
    pub _history: Vec<crate::web::api::summaries::AuditLogSummaryDoc>,
    #[salvo(schema(max_length = 50))]
    pub name: String,
    #[salvo(schema(max_length = 150, required))]
    pub description: Option<String>,
    pub enabled: bool,
    /// * `WL` - Whitelist
    /// * `BL` - Blacklist
    /// * `OP` - Open
    pub access_mode: String,
    pub access_teams: Vec<i64>,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "ClusterRequest"))]
pub struct ClusterRequestDoc {
    #[salvo(schema(min_length = 1, max_length = 50))]
    pub name: String,
    #[salvo(schema(max_length = 150))]
    pub description: Option<String>,
    #[salvo(schema(required = false))]
    pub enabled: bool,
    /// * `WL` - Whitelist
    /// * `BL` - Blacklist
    /// * `OP` - Open
    #[salvo(schema(required = false))]
    pub access_mode: String,
    #[salvo(schema(required = false))]
    pub access_teams: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ClusterRow {
    pub id: i64,
    pub name: String,
    pub description: Option<String>,
    pub enabled: bool,
    pub access_mode: String,
}

/// Non-staff list visibility: open clusters, whitelists naming one of the caller's teams,
/// blacklists naming none of them.
fn scope(q: &mut sea_query::SelectStatement, caller: &Caller) {
    if caller.is_staff() {
        return;
    }
    let me = caller.id();
    let listed = || {
        let mut sub = Query::select();
        sub.column(Alias::new("cluster_id"))
            .from(Alias::new("allocations_cluster_access_teams"))
            .and_where(
                Expr::col(Alias::new("team_id")).in_subquery(crate::store::teams::of_user(me)),
            );
        sub
    };
    let mode = |m: &str| Expr::col(Alias::new("access_mode")).eq(m);
    q.cond_where(
        Cond::any()
            .add(mode("OP"))
            .add(mode("WL").and(Expr::col(Alias::new("id")).in_subquery(listed())))
            .add(mode("BL").and(Expr::col(Alias::new("id")).not_in_subquery(listed()))),
    );
}

/// Access-list rows (cluster id, team id) of some clusters, ascending team id (one query).
async fn access_rows(db: &Db, ids: &[i64]) -> Result<Vec<(i64, i64)>, ApiError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = Query::select();
    q.columns([Alias::new("cluster_id"), Alias::new("team_id")])
        .from(Alias::new("allocations_cluster_access_teams"))
        .and_where(Expr::col(Alias::new("cluster_id")).is_in(ids.to_vec()))
        .order_by(Alias::new("team_id"), sea_query::Order::Asc);
    Ok(crate::store::fetch_all(db, &q).await?)
}

pub fn repr(c: &ClusterRow) -> String {
    format!("Cluster #{} - {}", c.id, c.name)
}

/// The validated state of a cluster after a write, and its new access list if supplied.
async fn validate(
    db: &Db,
    body: &body::Body,
    partial: bool,
    current: Option<&ClusterRow>,
) -> Result<(ClusterRow, Option<Vec<i64>>), ApiError> {
    body.require_object()?;
    let mut v = Validator::new(&body.fields, partial);
    let name = v.text("name", Text::required(50)).flatten();
    let description = v.text("description", Text::optional(150));
    let enabled = v.boolean("enabled");
    let access_mode = v.choice("access_mode", ACCESS_MODES, false);
    let access_teams = v.pk_list("access_teams", body.form);
    if let Some(name) = &name {
        let taken: i64 = on_db!(db, |p| sqlx::query_scalar(
            "SELECT COUNT(*) FROM allocations_cluster WHERE name = $1 AND id <> $2"
        )
        .bind(name)
        .bind(current.map(|c| c.id).unwrap_or(-1))
        .fetch_one(p)
        .await)?;
        if taken > 0 {
            v.error("name", "cluster with this name already exists.");
        }
    }
    if let Some(teams) = &access_teams
        && let Some(bad) = crate::store::first_missing(db, "users_team", teams).await?
    {
        v.error(
            "access_teams",
            format!("Invalid pk \"{bad}\" - object does not exist."),
        );
    }
    v.finish()?;
    let row = ClusterRow {
        id: current.map(|c| c.id).unwrap_or(0),
        name: name
            .or_else(|| current.map(|c| c.name.clone()))
            .unwrap_or_default(),
        description: match description {
            Some(d) => d,
            None => current.and_then(|c| c.description.clone()),
        },
        enabled: enabled.or(current.map(|c| c.enabled)).unwrap_or(true),
        access_mode: access_mode
            .or_else(|| current.map(|c| c.access_mode.clone()))
            .unwrap_or_else(|| "OP".to_string()),
    };
    let access_teams = access_teams.map(|mut t| {
        t.sort_unstable();
        t.dedup();
        t
    });
    Ok((row, access_teams))
}

/// Replaces the access list of a cluster.
async fn set_access_teams(tx: &mut Tx, cluster_id: i64, teams: &[i64]) -> Result<(), ApiError> {
    on_tx!(tx, |c| sqlx::query(
        "DELETE FROM allocations_cluster_access_teams WHERE cluster_id = $1"
    )
    .bind(cluster_id)
    .execute(c)
    .await
    .map(|_| ()))?;
    for team in teams {
        on_tx!(tx, |c| sqlx::query(
            "INSERT INTO allocations_cluster_access_teams (cluster_id, team_id) VALUES ($1, $2)"
        )
        .bind(cluster_id)
        .bind(*team)
        .execute(c)
        .await
        .map(|_| ()))?;
    }
    Ok(())
}

fn blocked() -> ApiError {
    ApiError::Conflict(
        "Cannot delete some instances of model 'Cluster' because they are referenced through \
         protected foreign keys: 'ResourceAllocation.cluster'."
            .into(),
    )
}

/// The cluster resource.
pub struct Clusters;

crate::document_resource!(Clusters);

impl Resource for Clusters {
    type Row = ClusterRow;
    type Repr = Cluster;
    /// The new access list, when the body names one.
    type Extra = Option<Vec<i64>>;

    const PATH: &'static str = "allocations/clusters/";
    const TABLE: &'static str = "allocations_cluster";
    const CONTENT_TYPE: &'static str = CONTENT_TYPE;
    const MODEL: &'static str = MODEL;
    const FIELDS: &'static [Field<ClusterRow>] = &FIELDS;
    const SPEC: ListSpec = SPEC;
    const POLICY: Policy = Policy::STAFF_WRITES;
    const DOCS: Docs = Docs {
        tag: "Allocations - Clusters",
        id: "A unique integer value identifying this cluster.",
        list_name: "Cluster List",
        item_name: "Cluster Instance",
        list: (
            "List HPC clusters.",
            "Returns a list of HPC clusters. Non-staff users are only returned clusters \
             accessible based on each cluster's access mode (open, whitelist, or blacklist) \
             and the user's team memberships. Staff users are returned all clusters.",
        ),
        retrieve: (
            "Retrieve an HPC cluster.",
            "Returns a single HPC cluster by ID. Read access is granted to all users \
             regardless of the cluster access policy.",
        ),
        create: (
            "Create an HPC cluster.",
            "Creates a new HPC cluster. Write access is restricted to staff users.",
        ),
        update: (
            "Update an HPC cluster.",
            "Replaces an existing HPC cluster with new values. Write access is restricted to \
             staff users.",
        ),
        partial_update: (
            "Partially update an HPC cluster.",
            "Partially updates an existing HPC cluster with new values. Write access is \
             restricted to staff users.",
        ),
        destroy: (
            "Delete an HPC cluster.",
            "Deletes an HPC cluster by ID. Write access is restricted to staff users. Refused \
             with 409 while resource allocations reference the cluster.",
        ),
    };

    crate::record_id!();

    async fn repr(_tx: &mut Tx, row: &ClusterRow) -> Result<String, ApiError> {
        Ok(repr(row))
    }

    async fn validate(
        db: &Db,
        _caller: &Caller,
        body: &Body,
        partial: bool,
        current: Option<&ClusterRow>,
    ) -> Result<(ClusterRow, Self::Extra), ApiError> {
        validate(db, body, partial, current).await
    }

    /// Representations of a page of clusters: access lists, their teams and history in a
    /// constant number of queries.
    async fn represent(db: &Db, tz: Tz, rows: &[ClusterRow]) -> Result<Vec<Cluster>, ApiError> {
        let ids: Vec<i64> = rows.iter().map(|c| c.id).collect();
        let access = access_rows(db, &ids).await?;
        let team_ids: Vec<i64> = access.iter().map(|(_, t)| *t).collect();
        let teams = summaries::teams_by_id(db, &team_ids).await?;
        let mut history = crate::web::api::summaries::history(db, tz, CONTENT_TYPE, &ids).await?;
        Ok(rows
            .iter()
            .map(|c| {
                let mine: Vec<i64> = access
                    .iter()
                    .filter(|(cid, _)| *cid == c.id)
                    .map(|(_, t)| *t)
                    .collect();
                let expanded: Vec<summaries::Embedded> =
                    mine.iter().filter_map(|t| teams.get(t).cloned()).collect();
                Cluster {
                    id: c.id,
                    _access_teams: expanded,
                    _history: history.remove(&c.id).unwrap_or_default(),
                    name: c.name.clone(),
                    description: c.description.clone(),
                    enabled: c.enabled,
                    access_mode: c.access_mode.clone(),
                    access_teams: mine,
                }
            })
            .collect())
    }

    fn scope(q: &mut sea_query::SelectStatement, caller: &Caller) {
        scope(q, caller)
    }

    /// Any authenticated caller may retrieve any cluster by id, whatever the list shows
    /// (domain.md §13: "any cluster → 200").
    async fn check_record(_db: &Db, _caller: &Caller, _row: &ClusterRow) -> Result<(), ApiError> {
        Ok(())
    }

    async fn after_write(
        tx: &mut Tx,
        row: &ClusterRow,
        teams: Self::Extra,
        _action: Action,
    ) -> Result<(), ApiError> {
        match teams {
            Some(teams) => set_access_teams(tx, row.id, &teams).await,
            None => Ok(()),
        }
    }

    /// Checked inside the transaction so a concurrent allocation cannot slip in between
    /// the check and the delete unnoticed (the foreign key would refuse it anyway).
    async fn before_delete(tx: &mut Tx, row: &ClusterRow) -> Result<(), ApiError> {
        let used: i64 = on_tx!(tx, |conn| sqlx::query_scalar(
            "SELECT COUNT(*) FROM allocations_resourceallocation WHERE cluster_id = $1"
        )
        .bind(row.id)
        .fetch_one(conn)
        .await)?;
        if used > 0 { Err(blocked()) } else { Ok(()) }
    }

    fn still_referenced() -> Option<ApiError> {
        Some(blocked())
    }

    fn request_body(components: &mut Components) -> Option<RefOr<Schema>> {
        Some(ClusterRequestDoc::to_schema(components))
    }
}
