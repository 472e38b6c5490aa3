//! `/research/grants/` (domain.md §8.1): funding grants of a team. Amounts are exact
//! decimals carried as cents and rendered as strings with two places.

use super::values::{self, amount_text_sql, render_cents};
use super::{check_body_team, check_record_team, team_scope};
use crate::domain::validation::{Text, Validator};
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

pub const CONTENT_TYPE: &str = "research_products | Grant";
const MODEL: &str = "Grant";
pub const TABLE: &str = "research_products_grant";

const FIELDS: [Field<GrantRow>; 10] = [
    Field::id(|g| Val::Int(g.id)),
    Field::new("title", Kind::Text, |g| Val::Text(g.title.clone())),
    Field::new("agency", Kind::Text, |g| Val::Text(g.agency.clone())),
    Field::new("pi", Kind::Text, |g| Val::OptText(g.pi.clone())),
    Field::new("amount", Kind::Decimal, |g: &GrantRow| {
        Val::Decimal(g.amount.clone())
    })
    .selected_as(amount_text_sql),
    Field::new("grant_number", Kind::Text, |g| {
        Val::OptText(g.grant_number.clone())
    }),
    Field::new("start_date", Kind::Date, |g| Val::Date(Some(g.start_date))),
    Field::new("end_date", Kind::Date, |g| Val::Date(g.end_date)),
    Field::new("description", Kind::Text, |g| {
        Val::OptText(g.description.clone())
    }),
    Field::new("team", Kind::Fk("users_team"), |g| Val::Int(g.team_id)),
];

pub const COLUMNS: &[Column] = &resource::columns(&FIELDS);

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

// A grant as the API renders and documents it (a doc comment here would become the
// schema's description).
#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "Grant"))]
pub struct Grant {
    pub id: i64,
    #[salvo(schema(value_type = TeamSummaryDoc))]
    pub _team: Option<crate::web::api::summaries::Embedded>,
    #[salvo(schema(value_type = Vec<AuditLogSummaryDoc>))]
    pub _history: Vec<crate::web::api::summaries::AuditLogSummaryDoc>,
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

pub fn repr(g: &GrantRow) -> String {
    audit::truncate(&format!("Grant #{} - {}", g.id, g.title))
}

/// Validates a body against the stored row (`current`, for updates). On PUT every required
/// field must be present; omitted optional fields keep their stored values.
async fn validate(
    db: &Db,
    body: &Body,
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

/// The grant resource.
pub struct Grants;

crate::document_resource!(Grants);

impl Resource for Grants {
    type Row = GrantRow;
    type Repr = Grant;
    type Extra = ();

    const PATH: &'static str = "research/grants/";
    const TABLE: &'static str = TABLE;
    const CONTENT_TYPE: &'static str = CONTENT_TYPE;
    const MODEL: &'static str = MODEL;
    const FIELDS: &'static [Field<GrantRow>] = &FIELDS;
    const SPEC: ListSpec = SPEC;
    /// Staff, or members of the body's team (view level) and of the record's team.
    const POLICY: Policy = Policy::BODY_FIRST;
    const DOCS: Docs = Docs {
        tag: "Research - Grants",
        id: "A unique integer value identifying this grant.",
        list_name: "Grant List",
        item_name: "Grant Instance",
        list: (
            "List funding grants.",
            "Returns a list of funding grants. Non-staff users are only returned grants for \
             teams where they hold membership. Staff users are returned all grants.",
        ),
        retrieve: (
            "Retrieve a funding grant.",
            "Returns a single funding grant by ID. Non-staff users can only retrieve grants \
             for teams where they hold membership.",
        ),
        create: (
            "Create a funding grant.",
            "Creates a new funding grant. Write access is granted to staff users and members \
             of the target team.",
        ),
        update: (
            "Update a funding grant.",
            "Replaces an existing funding grant with new values. Write access is granted to \
             staff users and members of the target team.",
        ),
        partial_update: (
            "Partially update a funding grant.",
            "Partially updates an existing funding grant with new values. Write access is \
             granted to staff users and members of the target team.",
        ),
        destroy: (
            "Delete a funding grant.",
            "Deletes a funding grant by ID. Write access is granted to staff users and \
             members of the target team.",
        ),
    };

    crate::record_id!();

    async fn repr(_tx: &mut Tx, row: &GrantRow) -> Result<String, ApiError> {
        Ok(repr(row))
    }

    async fn validate(
        db: &Db,
        _caller: &Caller,
        body: &Body,
        partial: bool,
        current: Option<&GrantRow>,
    ) -> Result<(GrantRow, ()), ApiError> {
        Ok((validate(db, body, partial, current).await?, ()))
    }

    /// Representations of a page: teams and history in two queries whatever the page size.
    async fn represent(db: &Db, tz: Tz, rows: &[GrantRow]) -> Result<Vec<Grant>, ApiError> {
        let ids: Vec<i64> = rows.iter().map(|g| g.id).collect();
        let team_ids: Vec<i64> = rows.iter().map(|g| g.team_id).collect();
        let teams = summaries::teams_by_id(db, &team_ids).await?;
        let mut history = crate::web::api::summaries::history(db, tz, CONTENT_TYPE, &ids).await?;
        Ok(rows
            .iter()
            .map(|g| Grant {
                id: g.id,
                _team: teams.get(&g.team_id).cloned(),
                _history: history.remove(&g.id).unwrap_or_default(),
                title: g.title.clone(),
                agency: g.agency.clone(),
                pi: g.pi.clone(),
                amount: g.amount.clone(),
                grant_number: g.grant_number.clone(),
                start_date: g.start_date.format("%Y-%m-%d").to_string(),
                end_date: g.end_date.map(|d| d.format("%Y-%m-%d").to_string()),
                description: g.description.clone(),
                team: g.team_id,
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

    async fn check_record(db: &Db, caller: &Caller, row: &GrantRow) -> Result<(), ApiError> {
        check_record_team(db, caller, row.team_id).await
    }
}
