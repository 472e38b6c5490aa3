//! `/research/grants/` (domain.md §8.1): funding grants of a team. Amounts are exact
//! decimals carried as cents and rendered as strings with two places.

use super::values::{self, amount_text_sql, render_cents};
use super::{check_body_team, check_record_team, team_exists, team_scope};
use crate::on_tx;
use crate::store::Db;
use crate::store::audit::{self, Action, Snapshot};
use crate::web::ApiError;
use crate::web::api::fields::{Text, Validator};
use crate::web::api::list::{self as listing, Column, Kind, ListSpec, search, search_via};
use crate::web::api::{Caller, body, context, path_id, summaries};
use chrono::NaiveDate;
use salvo::http::StatusCode;
use salvo::oapi::ToSchema;
use salvo::prelude::*;
use sea_query::{Alias, Expr, ExprTrait, Query, SelectStatement};
use serde::Serialize;
use serde_json::{Value, json};

pub const CONTENT_TYPE: &str = "research_products | Grant";
const MODEL: &str = "Grant";
pub const TABLE: &str = "research_products_grant";

pub const COLUMNS: &[Column] = &[
    Column::new("id", Kind::Int),
    Column::new("title", Kind::Text),
    Column::new("agency", Kind::Text),
    Column::new("pi", Kind::Text),
    Column::new("amount", Kind::Decimal),
    Column::new("grant_number", Kind::Text),
    Column::new("start_date", Kind::Date),
    Column::new("end_date", Kind::Date),
    Column::new("description", Kind::Text),
    Column::new("team", Kind::Fk("users_team")),
];

pub const SPEC: ListSpec = ListSpec {
    table: TABLE,
    filters: COLUMNS,
    order: COLUMNS,
    search: &[
        search("title"),
        search("agency"),
        search_via(&[("team_id", "users_team")], "name"),
        search("pi"),
    ],
};

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "Grant"))]
pub struct GrantDoc {
    pub id: i64,
    pub _team: crate::web::api::users::TeamSummaryDoc,
    pub _history: Vec<crate::web::api::users::AuditLogSummaryDoc>,
    pub title: String,
    pub agency: String,
    pub pi: Option<String>,
    /// Decimal string with two places.
    pub amount: String,
    pub grant_number: Option<String>,
    pub start_date: String,
    pub end_date: Option<String>,
    pub description: Option<String>,
    pub team: i64,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "PaginatedGrantList"))]
pub struct GrantPage {
    pub count: i64,
    pub next: Option<String>,
    pub previous: Option<String>,
    pub results: Vec<GrantDoc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct GrantRow {
    pub id: i64,
    pub title: String,
    pub agency: String,
    pub pi: Option<String>,
    /// Two-decimal text, as stored.
    pub amount: String,
    pub grant_number: Option<String>,
    pub start_date: NaiveDate,
    pub end_date: Option<NaiveDate>,
    pub description: Option<String>,
    pub team_id: i64,
}

/// A team's grants, amounts as two-decimal text (for the audit of a team deletion).
pub const SELECT_BY_TEAM_PG: &str = "SELECT id, title, agency, pi, CAST(amount AS TEXT) AS amount, \
     grant_number, start_date, end_date, description, team_id FROM research_products_grant \
     WHERE team_id = $1 ORDER BY id";
pub const SELECT_BY_TEAM_SQLITE: &str = "SELECT id, title, agency, pi, printf('%.2f', amount) AS amount, \
     grant_number, start_date, end_date, description, team_id FROM research_products_grant \
     WHERE team_id = $1 ORDER BY id";

fn select(db: &Db) -> SelectStatement {
    let mut q = Query::select();
    q.columns(["id", "title", "agency", "pi"].map(Alias::new))
        .expr_as(
            Expr::cust(amount_text_sql(db.engine())),
            Alias::new("amount"),
        )
        .columns(
            [
                "grant_number",
                "start_date",
                "end_date",
                "description",
                "team_id",
            ]
            .map(Alias::new),
        )
        .from(Alias::new(TABLE));
    q
}

/// Grants by id, in the order of `ids` (one query).
async fn load(db: &Db, ids: &[i64]) -> Result<Vec<GrantRow>, ApiError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = select(db);
    q.and_where(Expr::col(Alias::new("id")).is_in(ids.to_vec()));
    let mut rows: Vec<GrantRow> = crate::store::fetch_all(db, &q).await?;
    rows.sort_by_key(|r| ids.iter().position(|i| *i == r.id));
    Ok(rows)
}

fn date_text(d: &Option<NaiveDate>) -> Value {
    d.map(|d| Value::String(d.format("%Y-%m-%d").to_string()))
        .unwrap_or(Value::Null)
}

/// Representations of a page: teams and history in two queries whatever the page size.
pub async fn represent(db: &Db, rows: &[GrantRow]) -> Result<Vec<Value>, ApiError> {
    let ids: Vec<i64> = rows.iter().map(|g| g.id).collect();
    let team_ids: Vec<i64> = rows.iter().map(|g| g.team_id).collect();
    let teams = summaries::teams_by_id(db, &team_ids).await?;
    let mut history = crate::web::api::summaries::history(db, CONTENT_TYPE, &ids).await?;
    Ok(rows
        .iter()
        .map(|g| {
            json!({
                "id": g.id,
                "_team": teams.get(&g.team_id).cloned().unwrap_or(Value::Null),
                "_history": history.remove(&g.id).unwrap_or_default(),
                "title": g.title,
                "agency": g.agency,
                "pi": g.pi,
                "amount": g.amount,
                "grant_number": g.grant_number,
                "start_date": g.start_date.format("%Y-%m-%d").to_string(),
                "end_date": date_text(&g.end_date),
                "description": g.description,
                "team": g.team_id,
            })
        })
        .collect())
}

async fn represent_one(db: &Db, g: &GrantRow) -> Result<Value, ApiError> {
    Ok(represent(db, std::slice::from_ref(g))
        .await?
        .pop()
        .unwrap_or(Value::Null))
}

/// List funding grants.
///
/// Returns a list of funding grants. Non-staff users are only returned grants for teams
/// where they hold membership. Staff users are returned all grants.
#[endpoint(
    operation_id = "research_grants_list",
    tags("Research - Grants"),
    responses((status_code = 200, description = "", body = GrantPage))
)]
pub async fn list(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let scope = |q: &mut SelectStatement| team_scope(q, &caller);
        let (ids, page) =
            listing::page::<(i64,)>(req, &app.db, app.config.timezone(), &SPEC, &["id"], &scope)
                .await?;
        let ids: Vec<i64> = ids.into_iter().map(|(id,)| id).collect();
        let rows = load(&app.db, &ids).await?;
        Ok(page.envelope(represent(&app.db, &rows).await?))
    }
    .await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

async fn by_id(db: &Db, id: i64) -> Result<GrantRow, ApiError> {
    load(db, &[id])
        .await?
        .pop()
        .ok_or_else(|| ApiError::no_match(MODEL))
}

/// An item the caller may act on: 404 when missing, 403 outside the caller's teams.
async fn accessible(db: &Db, caller: &Caller, id: i64) -> Result<GrantRow, ApiError> {
    let g = by_id(db, id).await?;
    check_record_team(db, caller, g.team_id).await?;
    Ok(g)
}

/// Retrieve a funding grant.
///
/// Returns a single funding grant by ID. Non-staff users can only retrieve grants for teams
/// where they hold membership.
#[endpoint(
    operation_id = "research_grants_retrieve",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this grant.")),
    tags("Research - Grants"),
    responses((status_code = 200, description = "", body = GrantDoc))
)]
pub async fn retrieve(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let g = accessible(&app.db, &caller, path_id(req)?).await?;
        represent_one(&app.db, &g).await
    }
    .await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

pub fn snapshot(g: &GrantRow) -> Snapshot {
    vec![
        ("id", audit::int(g.id)),
        ("title", Some(g.title.clone())),
        ("agency", Some(g.agency.clone())),
        ("pi", g.pi.clone()),
        ("amount", Some(g.amount.clone())),
        ("grant_number", g.grant_number.clone()),
        ("start_date", audit::date(&Some(g.start_date))),
        ("end_date", audit::date(&g.end_date)),
        ("description", g.description.clone()),
        ("team", audit::int(g.team_id)),
    ]
}

pub fn repr(g: &GrantRow) -> String {
    audit::truncate(&format!("Grant #{} - {}", g.id, g.title))
}

/// Validates a body against the stored row (`current`, for updates). On PUT every required
/// field must be present; omitted optional fields keep their stored values.
async fn validate(
    db: &Db,
    body: &body::Body,
    partial: bool,
    current: Option<&GrantRow>,
) -> Result<GrantRow, ApiError> {
    body.require_object()?;
    let f = &body.fields;
    let mut v = Validator::new(f, partial);
    let title = v.text("title", Text::required(250)).flatten();
    let agency = v.text("agency", Text::required(100)).flatten();
    let pi = v.text("pi", Text::optional(100));
    let amount = values::amount(&mut v, f, "amount", partial);
    let grant_number = v.text("grant_number", Text::optional(250));
    let start_date =
        values::date(&mut v, f, "start_date", true, false, partial, body.form).flatten();
    let end_date = values::date(&mut v, f, "end_date", false, true, partial, body.form);
    let description = v.text("description", Text::optional(usize::MAX));
    let team = v.pk("team", true);
    if let Some(t) = team
        && !team_exists(db, t).await?
    {
        v.error(
            "team",
            format!("Invalid pk \"{t}\" - object does not exist."),
        );
    }
    v.finish()?;
    let keep = |new: Option<Option<String>>, old: Option<&Option<String>>| match new {
        Some(value) => value,
        None => old.cloned().flatten(),
    };
    Ok(GrantRow {
        id: current.map(|c| c.id).unwrap_or(0),
        title: title
            .or_else(|| current.map(|c| c.title.clone()))
            .unwrap_or_default(),
        agency: agency
            .or_else(|| current.map(|c| c.agency.clone()))
            .unwrap_or_default(),
        pi: keep(pi, current.map(|c| &c.pi)),
        amount: amount
            .map(render_cents)
            .or_else(|| current.map(|c| c.amount.clone()))
            .unwrap_or_else(|| render_cents(0)),
        grant_number: keep(grant_number, current.map(|c| &c.grant_number)),
        start_date: start_date
            .or(current.map(|c| c.start_date))
            .unwrap_or_default(),
        end_date: match end_date {
            Some(d) => d,
            None => current.and_then(|c| c.end_date),
        },
        description: keep(description, current.map(|c| &c.description)),
        team_id: team.or(current.map(|c| c.team_id)).unwrap_or_default(),
    })
}

/// Create a funding grant.
///
/// Creates a new funding grant. Write access is granted to staff users and members of the
/// target team.
#[endpoint(
    operation_id = "research_grants_create",
    tags("Research - Grants"),
    responses((status_code = 201, description = "", body = GrantDoc))
)]
pub async fn create(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let body = body::read(req).await?;
        check_body_team(&app.db, &caller, &body).await?;
        let mut row = validate(&app.db, &body, false, None).await?;
        let ctx = crate::web::api::users::audit_context(req, depot);
        let mut tx = app.db.begin().await?;
        row.id = on_tx!(&mut tx, |c| sqlx::query_scalar(
            "INSERT INTO research_products_grant (title, agency, pi, amount, grant_number, \
             start_date, end_date, description, team_id) \
             VALUES ($1, $2, $3, CAST($4 AS NUMERIC), $5, $6, $7, $8, $9) RETURNING id"
        )
        .bind(&row.title)
        .bind(&row.agency)
        .bind(&row.pi)
        .bind(&row.amount)
        .bind(&row.grant_number)
        .bind(row.start_date)
        .bind(row.end_date)
        .bind(&row.description)
        .bind(row.team_id)
        .fetch_one(c)
        .await)?;
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
    let body = body::read(req).await?;
    check_body_team(&app.db, &caller, &body).await?;
    let current = accessible(&app.db, &caller, path_id(req)?).await?;
    let after = validate(&app.db, &body, partial, Some(&current)).await?;
    let ctx = crate::web::api::users::audit_context(req, depot);
    let mut tx = app.db.begin().await?;
    on_tx!(&mut tx, |c| sqlx::query(
        "UPDATE research_products_grant SET title = $1, agency = $2, pi = $3, \
         amount = CAST($4 AS NUMERIC), grant_number = $5, start_date = $6, end_date = $7, \
         description = $8, team_id = $9 WHERE id = $10"
    )
    .bind(&after.title)
    .bind(&after.agency)
    .bind(&after.pi)
    .bind(&after.amount)
    .bind(&after.grant_number)
    .bind(after.start_date)
    .bind(after.end_date)
    .bind(&after.description)
    .bind(after.team_id)
    .bind(after.id)
    .execute(c)
    .await
    .map(|_| ()))?;
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

/// Update a funding grant.
///
/// Replaces an existing funding grant with new values. Write access is granted to staff
/// users and members of the target team.
#[endpoint(
    operation_id = "research_grants_update",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this grant.")),
    tags("Research - Grants"),
    responses((status_code = 200, description = "", body = GrantDoc))
)]
pub async fn put(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = update(req, depot, false).await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

/// Partially update a funding grant.
///
/// Partially updates an existing funding grant with new values. Write access is granted to
/// staff users and members of the target team.
#[endpoint(
    operation_id = "research_grants_partial_update",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this grant.")),
    tags("Research - Grants"),
    responses((status_code = 200, description = "", body = GrantDoc))
)]
pub async fn patch(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = update(req, depot, true).await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

/// Delete a funding grant.
///
/// Deletes a funding grant by ID. Write access is granted to staff users and members of the
/// target team.
#[endpoint(
    operation_id = "research_grants_destroy",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this grant.")),
    tags("Research - Grants"),
    responses((status_code = 204, description = "No response body"))
)]
pub async fn destroy(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result: Result<(), ApiError> = async {
        let (app, caller) = context(depot)?;
        let body = body::read(req).await?;
        check_body_team(&app.db, &caller, &body).await?;
        let g = accessible(&app.db, &caller, path_id(req)?).await?;
        let ctx = crate::web::api::users::audit_context(req, depot);
        audit::delete_audited(
            &app.db,
            &ctx,
            CONTENT_TYPE,
            "research_products_grant",
            g.id,
            &repr(&g),
            &snapshot(&g),
        )
        .await?;
        Ok(())
    }
    .await;
    crate::web::api::no_content(res, result);
}
