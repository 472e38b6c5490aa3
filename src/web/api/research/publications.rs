//! `/research/publications/` (domain.md §8.2): a team's publications, drafts to accepted.

use super::values;
use super::{check_body_team, check_record_team, team_exists, team_scope};
use crate::store::Db;
use crate::store::audit::{self, Action, Snapshot};
use crate::web::ApiError;
use crate::web::api::fields::{Text, Validator};
use crate::web::api::list::{self as listing, Column, Kind, ListSpec, search, search_via};
use crate::web::api::{Caller, body, context, path_id, summaries};
use crate::{on_db, on_tx};
use chrono::NaiveDate;
use salvo::http::StatusCode;
use salvo::oapi::ToSchema;
use salvo::prelude::*;
use sea_query::{Alias, Expr, ExprTrait, Query, SelectStatement};
use serde::Serialize;
use serde_json::{Value, json};

pub const CONTENT_TYPE: &str = "research_products | Publication";
const MODEL: &str = "Publication";
pub const TABLE: &str = "research_products_publication";
const DOI_TAKEN: &str = "publication with this doi already exists.";

pub const COLUMNS: &[Column] = &[
    Column::new("id", Kind::Int),
    Column::new("title", Kind::Text),
    Column::new("abstract", Kind::Text),
    Column::new("published", Kind::Date),
    Column::new("submitted", Kind::Date),
    Column::new("journal", Kind::Text),
    Column::new("doi", Kind::Text),
    Column::new("volume", Kind::Text),
    Column::new("issue", Kind::Text),
    Column::new("team", Kind::Fk("users_team")),
];

pub const SPEC: ListSpec = ListSpec {
    table: TABLE,
    filters: COLUMNS,
    order: COLUMNS,
    search: &[
        search("title"),
        search("abstract"),
        search("journal"),
        search("doi"),
        search_via(&[("team_id", "users_team")], "name"),
    ],
};

const SELECT_COLUMNS: [&str; 10] = [
    "id",
    "title",
    "abstract",
    "published",
    "submitted",
    "journal",
    "doi",
    "volume",
    "issue",
    "team_id",
];

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "Publication"))]
pub struct PublicationDoc {
    pub id: i64,
    pub _team: crate::web::api::users::TeamSummaryDoc,
    pub _history: Vec<crate::web::api::users::AuditLogSummaryDoc>,
    pub title: String,
    #[serde(rename = "abstract")]
    pub abstract_: Option<String>,
    pub published: Option<String>,
    pub submitted: Option<String>,
    pub journal: Option<String>,
    pub doi: Option<String>,
    pub volume: Option<String>,
    pub issue: Option<String>,
    pub team: i64,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "PaginatedPublicationList"))]
pub struct PublicationPage {
    pub count: i64,
    pub next: Option<String>,
    pub previous: Option<String>,
    pub results: Vec<PublicationDoc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PublicationRow {
    pub id: i64,
    pub title: String,
    #[sqlx(rename = "abstract")]
    pub abstract_: Option<String>,
    pub published: Option<NaiveDate>,
    pub submitted: Option<NaiveDate>,
    pub journal: Option<String>,
    pub doi: Option<String>,
    pub volume: Option<String>,
    pub issue: Option<String>,
    pub team_id: i64,
}

fn date_text(d: &Option<NaiveDate>) -> Value {
    d.map(|d| Value::String(d.format("%Y-%m-%d").to_string()))
        .unwrap_or(Value::Null)
}

/// Representations of a page: teams and history in two queries whatever the page size.
pub async fn represent(db: &Db, rows: &[PublicationRow]) -> Result<Vec<Value>, ApiError> {
    let ids: Vec<i64> = rows.iter().map(|p| p.id).collect();
    let team_ids: Vec<i64> = rows.iter().map(|p| p.team_id).collect();
    let teams = summaries::teams_by_id(db, &team_ids).await?;
    let mut history = crate::web::api::summaries::history(db, CONTENT_TYPE, &ids).await?;
    Ok(rows
        .iter()
        .map(|p| {
            json!({
                "id": p.id,
                "_team": teams.get(&p.team_id).cloned().unwrap_or(Value::Null),
                "_history": history.remove(&p.id).unwrap_or_default(),
                "title": p.title,
                "abstract": p.abstract_,
                "published": date_text(&p.published),
                "submitted": date_text(&p.submitted),
                "journal": p.journal,
                "doi": p.doi,
                "volume": p.volume,
                "issue": p.issue,
                "team": p.team_id,
            })
        })
        .collect())
}

async fn represent_one(db: &Db, p: &PublicationRow) -> Result<Value, ApiError> {
    Ok(represent(db, std::slice::from_ref(p))
        .await?
        .pop()
        .unwrap_or(Value::Null))
}

/// List publications.
///
/// Returns a list of publications. Non-staff users are only returned publications for teams
/// where they hold membership. Staff users are returned all publications.
#[endpoint(
    operation_id = "research_publications_list",
    tags("Research - Publications"),
    responses((status_code = 200, description = "", body = PublicationPage))
)]
pub async fn list(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let scope = |q: &mut SelectStatement| team_scope(q, &caller);
        let (rows, page) = listing::page::<PublicationRow>(
            req,
            &app.db,
            app.config.timezone(),
            &SPEC,
            &SELECT_COLUMNS,
            &scope,
        )
        .await?;
        Ok(page.envelope(represent(&app.db, &rows).await?))
    }
    .await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

async fn by_id(db: &Db, id: i64) -> Result<PublicationRow, ApiError> {
    let mut q = Query::select();
    q.columns(SELECT_COLUMNS.map(Alias::new))
        .from(Alias::new(TABLE))
        .and_where(Expr::col(Alias::new("id")).eq(id));
    let mut rows: Vec<PublicationRow> = crate::store::fetch_all(db, &q).await?;
    rows.pop().ok_or_else(|| ApiError::no_match(MODEL))
}

/// An item the caller may act on: 404 when missing, 403 outside the caller's teams.
async fn accessible(db: &Db, caller: &Caller, id: i64) -> Result<PublicationRow, ApiError> {
    let p = by_id(db, id).await?;
    check_record_team(db, caller, p.team_id).await?;
    Ok(p)
}

/// Retrieve a publication.
///
/// Returns a single publication by ID. Non-staff users can only retrieve publications for
/// teams where they hold membership.
#[endpoint(
    operation_id = "research_publications_retrieve",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this publication.")),
    tags("Research - Publications"),
    responses((status_code = 200, description = "", body = PublicationDoc))
)]
pub async fn retrieve(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let p = accessible(&app.db, &caller, path_id(req)?).await?;
        represent_one(&app.db, &p).await
    }
    .await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

pub fn snapshot(p: &PublicationRow) -> Snapshot {
    vec![
        ("id", audit::int(p.id)),
        ("title", Some(p.title.clone())),
        ("abstract", p.abstract_.clone()),
        ("published", audit::date(&p.published)),
        ("submitted", audit::date(&p.submitted)),
        ("journal", p.journal.clone()),
        ("doi", p.doi.clone()),
        ("volume", p.volume.clone()),
        ("issue", p.issue.clone()),
        ("team", audit::int(p.team_id)),
    ]
}

pub fn repr(p: &PublicationRow) -> String {
    audit::truncate(&format!("Publication #{} - {}", p.id, p.title))
}

async fn doi_taken(db: &Db, doi: &str, except: i64) -> Result<bool, ApiError> {
    let n: i64 = on_db!(db, |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM research_products_publication WHERE doi = $1 AND id <> $2"
    )
    .bind(doi)
    .bind(except)
    .fetch_one(p)
    .await)?;
    Ok(n > 0)
}

/// Validates a body against the stored row (`current`, for updates). On PUT `title` and
/// `team` must be present; omitted optional fields keep their stored values.
async fn validate(
    db: &Db,
    body: &body::Body,
    partial: bool,
    current: Option<&PublicationRow>,
) -> Result<PublicationRow, ApiError> {
    body.require_object()?;
    let f = &body.fields;
    let mut v = Validator::new(f, partial);
    let title = v.text("title", Text::required(250)).flatten();
    let abstract_ = v.text("abstract", Text::optional(usize::MAX));
    let published = values::date(&mut v, f, "published", false, true, partial, body.form);
    let submitted = values::date(&mut v, f, "submitted", false, true, partial, body.form);
    let journal = v.text("journal", Text::optional(100));
    let doi = v.text("doi", Text::optional(50));
    let volume = v.text("volume", Text::optional(20));
    let issue = v.text("issue", Text::optional(20));
    let team = v.pk("team", true);
    if let Some(Some(d)) = &doi
        && doi_taken(db, d, current.map(|c| c.id).unwrap_or(0)).await?
    {
        v.error("doi", DOI_TAKEN);
    }
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
    let keep_date = |new: Option<Option<NaiveDate>>, old: Option<NaiveDate>| match new {
        Some(value) => value,
        None => old,
    };
    Ok(PublicationRow {
        id: current.map(|c| c.id).unwrap_or(0),
        title: title
            .or_else(|| current.map(|c| c.title.clone()))
            .unwrap_or_default(),
        abstract_: keep(abstract_, current.map(|c| &c.abstract_)),
        published: keep_date(published, current.and_then(|c| c.published)),
        submitted: keep_date(submitted, current.and_then(|c| c.submitted)),
        journal: keep(journal, current.map(|c| &c.journal)),
        doi: keep(doi, current.map(|c| &c.doi)),
        volume: keep(volume, current.map(|c| &c.volume)),
        issue: keep(issue, current.map(|c| &c.issue)),
        team_id: team.or(current.map(|c| c.team_id)).unwrap_or_default(),
    })
}

/// A concurrent insert of the same DOI surfaces as the same field error.
fn doi_conflict(e: sqlx::Error) -> ApiError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => ApiError::field("doi", DOI_TAKEN),
        _ => e.into(),
    }
}

/// Create a publication.
///
/// Creates a new publication. Write access is granted to staff users and members of the
/// target team.
#[endpoint(
    operation_id = "research_publications_create",
    tags("Research - Publications"),
    responses((status_code = 201, description = "", body = PublicationDoc))
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
            "INSERT INTO research_products_publication (title, abstract, published, submitted, \
             journal, doi, volume, issue, team_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id"
        )
        .bind(&row.title)
        .bind(&row.abstract_)
        .bind(row.published)
        .bind(row.submitted)
        .bind(&row.journal)
        .bind(&row.doi)
        .bind(&row.volume)
        .bind(&row.issue)
        .bind(row.team_id)
        .fetch_one(c)
        .await)
        .map_err(doi_conflict)?;
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
        "UPDATE research_products_publication SET title = $1, abstract = $2, published = $3, \
         submitted = $4, journal = $5, doi = $6, volume = $7, issue = $8, team_id = $9 \
         WHERE id = $10"
    )
    .bind(&after.title)
    .bind(&after.abstract_)
    .bind(after.published)
    .bind(after.submitted)
    .bind(&after.journal)
    .bind(&after.doi)
    .bind(&after.volume)
    .bind(&after.issue)
    .bind(after.team_id)
    .bind(after.id)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(doi_conflict)?;
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

/// Update a publication.
///
/// Replaces an existing publication with new values. Write access is granted to staff users
/// and members of the target team.
#[endpoint(
    operation_id = "research_publications_update",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this publication.")),
    tags("Research - Publications"),
    responses((status_code = 200, description = "", body = PublicationDoc))
)]
pub async fn put(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = update(req, depot, false).await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

/// Partially update a publication.
///
/// Partially updates an existing publication with new values. Write access is granted to
/// staff users and members of the target team.
#[endpoint(
    operation_id = "research_publications_partial_update",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this publication.")),
    tags("Research - Publications"),
    responses((status_code = 200, description = "", body = PublicationDoc))
)]
pub async fn patch(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = update(req, depot, true).await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

/// Delete a publication.
///
/// Deletes a publication by ID. Write access is granted to staff users and members of the
/// target team.
#[endpoint(
    operation_id = "research_publications_destroy",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this publication.")),
    tags("Research - Publications"),
    responses((status_code = 204, description = "No response body"))
)]
pub async fn destroy(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result: Result<(), ApiError> = async {
        let (app, caller) = context(depot)?;
        let body = body::read(req).await?;
        check_body_team(&app.db, &caller, &body).await?;
        let p = accessible(&app.db, &caller, path_id(req)?).await?;
        let ctx = crate::web::api::users::audit_context(req, depot);
        audit::delete_audited(
            &app.db,
            &ctx,
            CONTENT_TYPE,
            "research_products_publication",
            p.id,
            &repr(&p),
            &snapshot(&p),
        )
        .await?;
        Ok(())
    }
    .await;
    crate::web::api::no_content(res, result);
}
