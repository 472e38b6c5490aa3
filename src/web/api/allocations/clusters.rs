//! `/allocations/clusters/` (domain.md §7.1): the HPC clusters allocations are made on. Staff
//! manage them; everyone authenticated may read any cluster by id, while the list shows a
//! non-staff caller only the clusters their teams may use (access mode and access list).

use crate::store::audit::{self, Action, Snapshot};
use crate::store::{Db, Tx};
use crate::web::ApiError;
use crate::web::api::fields::{Text, Validator};
use crate::web::api::list::{self as listing, Column, Kind, ListSpec, search};
use crate::web::api::summaries;
use crate::web::api::{Caller, body, context, path_id};
use crate::{on_db, on_tx};
use salvo::http::StatusCode;
use salvo::oapi::ToSchema;
use salvo::prelude::*;
use sea_query::{Alias, Cond, Expr, ExprTrait, Query};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::HashMap;

pub const CONTENT_TYPE: &str = "allocations | Cluster";
const MODEL: &str = "Cluster";
pub const ACCESS_MODES: &[&str] = &["WL", "BL", "OP"];

const COLUMNS: &[Column] = &[
    Column::new("id", Kind::Int),
    Column::new("name", Kind::Text),
    Column::new("description", Kind::Text),
    Column::new("enabled", Kind::Bool),
    Column::new("access_mode", Kind::Choice(ACCESS_MODES)),
];

pub const SPEC: ListSpec = ListSpec {
    table: "allocations_cluster",
    filters: COLUMNS,
    order: COLUMNS,
    search: &[search("name"), search("description")],
};

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "ClusterSummary"))]
pub struct ClusterSummaryDoc {
    pub id: i64,
    #[salvo(schema(max_length = 50))]
    pub name: String,
    pub enabled: bool,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "Cluster"))]
pub struct ClusterDoc {
    pub id: i64,
    pub _access_teams: Vec<crate::web::api::users::TeamSummaryDoc>,
    pub _history: Vec<crate::web::api::users::AuditLogSummaryDoc>,
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

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "PatchedClusterRequest"))]
pub struct PatchedClusterRequestDoc {
    #[salvo(schema(min_length = 1, max_length = 50, required = false))]
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

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "PaginatedClusterList"))]
pub struct ClusterPage {
    pub count: i64,
    pub next: Option<String>,
    pub previous: Option<String>,
    pub results: Vec<ClusterDoc>,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ClusterRow {
    pub id: i64,
    pub name: String,
    pub description: Option<String>,
    pub enabled: bool,
    pub access_mode: String,
}

const ROW_COLUMNS: [&str; 5] = ["id", "name", "description", "enabled", "access_mode"];

/// `SELECT team_id FROM users_membership WHERE user_id = <id>`: every team the user has a
/// membership row in (active or not).
pub fn teams_of(user_id: i64) -> sea_query::SelectStatement {
    let mut q = Query::select();
    q.column(Alias::new("team_id"))
        .from(Alias::new("users_membership"))
        .and_where(Expr::col(Alias::new("user_id")).eq(user_id));
    q
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
            .and_where(Expr::col(Alias::new("team_id")).in_subquery(teams_of(me)));
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

/// Representations of a page of clusters: access lists, their teams and history in a
/// constant number of queries.
pub async fn represent(db: &Db, rows: &[ClusterRow]) -> Result<Vec<Value>, ApiError> {
    let ids: Vec<i64> = rows.iter().map(|c| c.id).collect();
    let access = access_rows(db, &ids).await?;
    let team_ids: Vec<i64> = access.iter().map(|(_, t)| *t).collect();
    let teams = summaries::teams_by_id(db, &team_ids).await?;
    let mut history = crate::web::api::summaries::history(db, CONTENT_TYPE, &ids).await?;
    Ok(rows
        .iter()
        .map(|c| {
            let mine: Vec<i64> = access
                .iter()
                .filter(|(cid, _)| *cid == c.id)
                .map(|(_, t)| *t)
                .collect();
            let expanded: Vec<Value> = mine.iter().filter_map(|t| teams.get(t).cloned()).collect();
            json!({
                "id": c.id,
                "_access_teams": expanded,
                "_history": history.remove(&c.id).unwrap_or_default(),
                "name": c.name,
                "description": c.description,
                "enabled": c.enabled,
                "access_mode": c.access_mode,
                "access_teams": mine,
            })
        })
        .collect())
}

async fn represent_one(db: &Db, c: &ClusterRow) -> Result<Value, ApiError> {
    Ok(represent(db, std::slice::from_ref(c))
        .await?
        .pop()
        .unwrap_or(Value::Null))
}

pub fn summary(c: &ClusterRow) -> Value {
    json!({"id": c.id, "name": c.name, "enabled": c.enabled})
}

/// Clusters by id (one query).
pub async fn by_ids(db: &Db, ids: &[i64]) -> Result<HashMap<i64, ClusterRow>, ApiError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut q = Query::select();
    q.columns(ROW_COLUMNS.map(Alias::new))
        .from(Alias::new("allocations_cluster"))
        .and_where(Expr::col(Alias::new("id")).is_in(ids));
    let rows: Vec<ClusterRow> = crate::store::fetch_all(db, &q).await?;
    Ok(rows.into_iter().map(|c| (c.id, c)).collect())
}

/// List HPC clusters.
///
/// Returns a list of HPC clusters. Non-staff users are only returned clusters accessible
/// based on each cluster's access mode (open, whitelist, or blacklist) and the user's team
/// memberships. Staff users are returned all clusters.
#[endpoint(
    operation_id = "allocations_clusters_list",
    tags("Allocations - Clusters"),
    responses((status_code = 200, description = "", body = ClusterPage))
)]
pub async fn list(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let scope = |q: &mut sea_query::SelectStatement| scope(q, &caller);
        let (rows, page) = listing::page::<ClusterRow>(
            req,
            &app.db,
            app.config.timezone(),
            &SPEC,
            &ROW_COLUMNS,
            &scope,
        )
        .await?;
        Ok(page.envelope(represent(&app.db, &rows).await?))
    }
    .await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

pub async fn by_id(db: &Db, id: i64) -> Result<Option<ClusterRow>, ApiError> {
    Ok(on_db!(db, |p| sqlx::query_as::<_, ClusterRow>(
        "SELECT id, name, description, enabled, access_mode FROM allocations_cluster WHERE id = $1"
    )
    .bind(id)
    .fetch_optional(p)
    .await)?)
}

async fn found(db: &Db, id: i64) -> Result<ClusterRow, ApiError> {
    by_id(db, id)
        .await?
        .ok_or_else(|| ApiError::no_match(MODEL))
}

/// Whether team `team_id` may use a cluster (domain.md §3.5.1): open, whitelisted or not
/// blacklisted.
pub async fn team_may_use(db: &Db, cluster: &ClusterRow, team_id: i64) -> Result<bool, ApiError> {
    if cluster.access_mode == "OP" {
        return Ok(true);
    }
    let listed: i64 = on_db!(db, |p| {
        sqlx::query_scalar(
        "SELECT COUNT(*) FROM allocations_cluster_access_teams WHERE cluster_id = $1 AND team_id = $2"
    )
    .bind(cluster.id)
    .bind(team_id)
    .fetch_one(p)
    .await
    })?;
    Ok(match cluster.access_mode.as_str() {
        "WL" => listed > 0,
        "BL" => listed == 0,
        _ => true,
    })
}

/// Retrieve an HPC cluster.
///
/// Returns a single HPC cluster by ID. Read access is granted to all users regardless of the
/// cluster access policy.
#[endpoint(
    operation_id = "allocations_clusters_retrieve",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this cluster.")),
    tags("Allocations - Clusters"),
    responses((status_code = 200, description = "", body = ClusterDoc))
)]
pub async fn retrieve(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, _caller) = context(depot)?;
        let c = found(&app.db, path_id(req)?).await?;
        represent_one(&app.db, &c).await
    }
    .await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

fn snapshot(c: &ClusterRow) -> Snapshot {
    vec![
        ("id", audit::int(c.id)),
        ("name", Some(c.name.clone())),
        ("description", audit::text(&c.description)),
        ("enabled", audit::boolean(c.enabled)),
        ("access_mode", Some(c.access_mode.clone())),
    ]
}

pub fn repr(c: &ClusterRow) -> String {
    format!("Cluster #{} - {}", c.id, c.name)
}

/// The first id of `ids` missing from `table`, if any (one query).
pub async fn first_missing(db: &Db, table: &str, ids: &[i64]) -> Result<Option<i64>, ApiError> {
    if ids.is_empty() {
        return Ok(None);
    }
    let mut unique = ids.to_vec();
    unique.sort_unstable();
    unique.dedup();
    let mut q = Query::select();
    q.column(Alias::new("id"))
        .from(Alias::new(table))
        .and_where(Expr::col(Alias::new("id")).is_in(unique));
    let found: Vec<(i64,)> = crate::store::fetch_all(db, &q).await?;
    Ok(ids
        .iter()
        .find(|id| !found.iter().any(|(f,)| f == *id))
        .copied())
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
        && let Some(bad) = first_missing(db, "users_team", teams).await?
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

fn staff_only(caller: &Caller) -> Result<(), ApiError> {
    let me = &caller.user;
    if me.is_staff {
        Ok(())
    } else {
        Err(ApiError::forbidden())
    }
}

/// Create an HPC cluster.
///
/// Creates a new HPC cluster. Write access is restricted to staff users.
#[endpoint(
    operation_id = "allocations_clusters_create",
    tags("Allocations - Clusters"),
    request_body = ClusterRequestDoc,
    responses((status_code = 201, description = "", body = ClusterDoc))
)]
pub async fn create(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        staff_only(&caller)?;
        let body = body::read(req).await?;
        let (mut row, teams) = validate(&app.db, &body, false, None).await?;
        let ctx = crate::web::api::users::audit_context(req, depot);
        let mut tx = app.db.begin().await?;
        row.id = on_tx!(&mut tx, |c| sqlx::query_scalar(
            "INSERT INTO allocations_cluster (name, description, enabled, access_mode) \
             VALUES ($1, $2, $3, $4) RETURNING id"
        )
        .bind(&row.name)
        .bind(&row.description)
        .bind(row.enabled)
        .bind(&row.access_mode)
        .fetch_one(c)
        .await)?;
        set_access_teams(&mut tx, row.id, &teams.unwrap_or_default()).await?;
        audit::record(
            &mut tx,
            &ctx,
            CONTENT_TYPE,
            row.id,
            &repr(&row),
            Action::Create,
            audit::changes(None, Some(&snapshot(&row))),
        )
        .await?;
        tx.commit().await?;
        represent_one(&app.db, &row).await
    }
    .await;
    crate::web::api::respond(res, StatusCode::CREATED, result);
}

async fn update(req: &mut Request, depot: &mut Depot, partial: bool) -> Result<Value, ApiError> {
    let (app, caller) = context(depot)?;
    staff_only(&caller)?;
    let current = found(&app.db, path_id(req)?).await?;
    let body = body::read(req).await?;
    let (after, teams) = validate(&app.db, &body, partial, Some(&current)).await?;
    let ctx = crate::web::api::users::audit_context(req, depot);
    let mut tx = app.db.begin().await?;
    on_tx!(&mut tx, |c| sqlx::query(
        "UPDATE allocations_cluster SET name = $1, description = $2, enabled = $3, \
         access_mode = $4 WHERE id = $5"
    )
    .bind(&after.name)
    .bind(&after.description)
    .bind(after.enabled)
    .bind(&after.access_mode)
    .bind(after.id)
    .execute(c)
    .await
    .map(|_| ()))?;
    if let Some(teams) = teams {
        set_access_teams(&mut tx, after.id, &teams).await?;
    }
    audit::record(
        &mut tx,
        &ctx,
        CONTENT_TYPE,
        after.id,
        &repr(&after),
        Action::Update,
        audit::changes(Some(&snapshot(&current)), Some(&snapshot(&after))),
    )
    .await?;
    tx.commit().await?;
    represent_one(&app.db, &after).await
}

/// Update an HPC cluster.
///
/// Replaces an existing HPC cluster with new values. Write access is restricted to staff
/// users.
#[endpoint(
    operation_id = "allocations_clusters_update",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this cluster.")),
    tags("Allocations - Clusters"),
    request_body = ClusterRequestDoc,
    responses((status_code = 200, description = "", body = ClusterDoc))
)]
pub async fn put(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = update(req, depot, false).await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

/// Partially update an HPC cluster.
///
/// Partially updates an existing HPC cluster with new values. Write access is restricted to
/// staff users.
#[endpoint(
    operation_id = "allocations_clusters_partial_update",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this cluster.")),
    tags("Allocations - Clusters"),
    request_body = PatchedClusterRequestDoc,
    responses((status_code = 200, description = "", body = ClusterDoc))
)]
pub async fn patch(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = update(req, depot, true).await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

/// Delete an HPC cluster.
///
/// Deletes an HPC cluster by ID. Write access is restricted to staff users. Refused with 409
/// while resource allocations reference the cluster.
#[endpoint(
    operation_id = "allocations_clusters_destroy",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this cluster.")),
    tags("Allocations - Clusters"),
    responses((status_code = 204, description = "No response body"))
)]
pub async fn destroy(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result: Result<(), ApiError> = async {
        let (app, caller) = context(depot)?;
        staff_only(&caller)?;
        let c = found(&app.db, path_id(req)?).await?;
        let ctx = crate::web::api::users::audit_context(req, depot);
        let mut tx = app.db.begin().await?;
        // Checked inside the transaction so a concurrent allocation cannot slip in between
        // the check and the delete unnoticed (the foreign key would refuse it anyway).
        let used: i64 = on_tx!(&mut tx, |conn| sqlx::query_scalar(
            "SELECT COUNT(*) FROM allocations_resourceallocation WHERE cluster_id = $1"
        )
        .bind(c.id)
        .fetch_one(conn)
        .await)?;
        if used > 0 {
            return Err(blocked());
        }
        audit::record(
            &mut tx,
            &ctx,
            CONTENT_TYPE,
            c.id,
            &repr(&c),
            Action::Delete,
            audit::changes(Some(&snapshot(&c)), None),
        )
        .await?;
        let deleted = on_tx!(&mut tx, |conn| sqlx::query(
            "DELETE FROM allocations_cluster WHERE id = $1"
        )
        .bind(c.id)
        .execute(conn)
        .await
        .map(|_| ()));
        match deleted {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
                return Err(blocked());
            }
            Err(e) => return Err(e.into()),
        }
        tx.commit().await?;
        Ok(())
    }
    .await;
    crate::web::api::no_content(res, result);
}

fn blocked() -> ApiError {
    ApiError::Conflict(
        "Cannot delete some instances of model 'Cluster' because they are referenced through \
         protected foreign keys: 'ResourceAllocation.cluster'."
            .into(),
    )
}

/// The routes of this resource.
pub fn routes() -> crate::web::route::Routes {
    crate::web::route::Routes::new()
        .push(crate::web::api::collection!(
            "allocations/clusters/",
            list,
            create,
            "Cluster List"
        ))
        .push(crate::web::api::item!(
            "allocations/clusters/{id}/",
            retrieve,
            put,
            patch,
            destroy,
            "Cluster Instance"
        ))
}
