//! `/research/publications/` (domain.md §8.2): a team's publications, drafts to accepted.

use super::values;
use super::{check_body_team, check_record_team, team_scope};
use crate::domain::validation::{Text, Validator};
use crate::on_db;
use crate::store::audit::{self, Action};
use crate::store::{Db, Tx};
use crate::web::ApiError;
use crate::web::api::body::Body;
use crate::web::api::list::{Column, Kind, ListSpec, search, search_via};
use crate::web::api::resource::{self, Docs, Field, Policy, Resource, Val};
use crate::web::api::summaries::{AuditLogSummaryDoc, TeamSummaryDoc};
use crate::web::api::{Caller, summaries};
use chrono::NaiveDate;
use chrono_tz::Tz;
use salvo::oapi::ToSchema;
use sea_query::SelectStatement;
use serde::Serialize;

pub const CONTENT_TYPE: &str = "research_products | Publication";
const MODEL: &str = "Publication";
pub const TABLE: &str = "research_products_publication";
const DOI_TAKEN: &str = "publication with this doi already exists.";

const FIELDS: [Field<PublicationRow>; 10] = [
    Field::id(|p| Val::Int(p.id)),
    Field::new("title", Kind::Text, |p| Val::Text(p.title.clone())),
    Field::new("abstract", Kind::Text, |p| {
        Val::OptText(p.abstract_.clone())
    }),
    Field::new("published", Kind::Date, |p| Val::Date(p.published)),
    Field::new("submitted", Kind::Date, |p| Val::Date(p.submitted)),
    Field::new("journal", Kind::Text, |p| Val::OptText(p.journal.clone())),
    Field::new("doi", Kind::Text, |p| Val::OptText(p.doi.clone())),
    Field::new("volume", Kind::Text, |p| Val::OptText(p.volume.clone())),
    Field::new("issue", Kind::Text, |p| Val::OptText(p.issue.clone())),
    Field::new("team", Kind::Fk("users_team"), |p| Val::Int(p.team_id)),
];

pub const COLUMNS: &[Column] = &resource::columns(&FIELDS);

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

// A publication as the API renders and documents it (a doc comment here would become the
// schema's description).
#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "Publication"))]
pub struct Publication {
    pub id: i64,
    #[salvo(schema(value_type = TeamSummaryDoc))]
    pub _team: Option<crate::web::api::summaries::Embedded>,
    #[salvo(schema(value_type = Vec<AuditLogSummaryDoc>))]
    pub _history: Vec<crate::web::api::summaries::AuditLogSummaryDoc>,
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

fn date_text(d: &Option<NaiveDate>) -> Option<String> {
    d.map(|d| d.format("%Y-%m-%d").to_string())
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
    body: &Body,
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
        && crate::store::teams::active(db, t).await?.is_none()
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

/// The publication resource.
pub struct Publications;

crate::document_resource!(Publications);

impl Resource for Publications {
    type Row = PublicationRow;
    type Repr = Publication;
    type Extra = ();

    const PATH: &'static str = "research/publications/";
    const TABLE: &'static str = TABLE;
    const CONTENT_TYPE: &'static str = CONTENT_TYPE;
    const MODEL: &'static str = MODEL;
    const FIELDS: &'static [Field<PublicationRow>] = &FIELDS;
    const SPEC: ListSpec = SPEC;
    /// Staff, or members of the body's team (view level) and of the record's team.
    const POLICY: Policy = Policy::BODY_FIRST;
    const DOCS: Docs = Docs {
        tag: "Research - Publications",
        id: "A unique integer value identifying this publication.",
        list_name: "Publication List",
        item_name: "Publication Instance",
        list: (
            "List publications.",
            "Returns a list of publications. Non-staff users are only returned publications \
             for teams where they hold membership. Staff users are returned all publications.",
        ),
        retrieve: (
            "Retrieve a publication.",
            "Returns a single publication by ID. Non-staff users can only retrieve \
             publications for teams where they hold membership.",
        ),
        create: (
            "Create a publication.",
            "Creates a new publication. Write access is granted to staff users and members of \
             the target team.",
        ),
        update: (
            "Update a publication.",
            "Replaces an existing publication with new values. Write access is granted to \
             staff users and members of the target team.",
        ),
        partial_update: (
            "Partially update a publication.",
            "Partially updates an existing publication with new values. Write access is \
             granted to staff users and members of the target team.",
        ),
        destroy: (
            "Delete a publication.",
            "Deletes a publication by ID. Write access is granted to staff users and members \
             of the target team.",
        ),
    };

    crate::record_id!();

    async fn repr(_tx: &mut Tx, row: &PublicationRow) -> Result<String, ApiError> {
        Ok(repr(row))
    }

    async fn validate(
        db: &Db,
        _caller: &Caller,
        body: &Body,
        partial: bool,
        current: Option<&PublicationRow>,
    ) -> Result<(PublicationRow, ()), ApiError> {
        Ok((validate(db, body, partial, current).await?, ()))
    }

    /// Representations of a page: teams and history in two queries whatever the page size.
    async fn represent(
        db: &Db,
        tz: Tz,
        rows: &[PublicationRow],
    ) -> Result<Vec<Publication>, ApiError> {
        let ids: Vec<i64> = rows.iter().map(|p| p.id).collect();
        let team_ids: Vec<i64> = rows.iter().map(|p| p.team_id).collect();
        let teams = summaries::teams_by_id(db, &team_ids).await?;
        let mut history = crate::web::api::summaries::history(db, tz, CONTENT_TYPE, &ids).await?;
        Ok(rows
            .iter()
            .map(|p| Publication {
                id: p.id,
                _team: teams.get(&p.team_id).cloned(),
                _history: history.remove(&p.id).unwrap_or_default(),
                title: p.title.clone(),
                abstract_: p.abstract_.clone(),
                published: date_text(&p.published),
                submitted: date_text(&p.submitted),
                journal: p.journal.clone(),
                doi: p.doi.clone(),
                volume: p.volume.clone(),
                issue: p.issue.clone(),
                team: p.team_id,
            })
            .collect())
    }

    fn scope(q: &mut SelectStatement, caller: &Caller) {
        team_scope(q, caller)
    }

    async fn check_body(
        db: &Db,
        caller: &Caller,
        body: &Body,
        _action: Action,
    ) -> Result<(), ApiError> {
        check_body_team(db, caller, body).await
    }

    async fn check_record(db: &Db, caller: &Caller, row: &PublicationRow) -> Result<(), ApiError> {
        check_record_team(db, caller, row.team_id).await
    }

    /// A concurrent write of the same DOI surfaces as the same field error.
    fn duplicate() -> Option<ApiError> {
        Some(ApiError::field("doi", DOI_TAKEN))
    }
}
