//! `/allocations/requests/` (domain.md §7.2, §7.3): allocation requests of a team. Team
//! admins/owners create them (⚑ pending, with their own team's grants and publications only),
//! staff edit and delete them, every member reads them; non-staff see public comments only.

use super::shared::{REQUESTS, date_text, invalid_pk, now};
use crate::config::Engine;
use crate::domain::validation::{Text, Validator, pk_value};
use crate::on_tx;
use crate::store::audit::{self, Action, AuditContext};
use crate::store::{Db, Tx};
use crate::web::ApiError;
use crate::web::api::Caller;
use crate::web::api::body::Body;
use crate::web::api::list::{Column, Kind, ListSpec, search, search_via};
use crate::web::api::resource::{self, Docs, Field, Policy, Resource, Val, Write};
use crate::web::api::summaries::render_datetime;
use crate::web::api::summaries::{self, AuditLogSummaryDoc, TeamSummaryDoc, UserSummaryDoc};
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use salvo::oapi::{Components, RefOr, Schema, ToSchema};
use sea_query::{Alias, Expr, ExprTrait, Query};
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;

// Attachments and comments name the summary schema through this module.
pub use super::shared::AllocationRequestSummaryDoc;

pub const CONTENT_TYPE: &str = "allocations | AllocationRequest";
const MODEL: &str = "AllocationRequest";
pub const STATUSES: &[&str] = &["PD", "AP", "DC", "CR"];

pub const TABLE: &str = REQUESTS;

const FIELDS: [Field<RequestRow>; 9] = [
    Field::id(|r| Val::Int(r.id)),
    Field::new("title", Kind::Text, |r| Val::Text(r.title.clone())),
    Field::new("description", Kind::Text, |r| {
        Val::Text(r.description.clone())
    }),
    Field::new("submitted", Kind::DateTime, |r: &RequestRow| {
        Val::DateTime(r.submitted)
    })
    .write(Write::Create),
    Field::new("active", Kind::Date, |r| Val::Date(r.active)),
    Field::new("expire", Kind::Date, |r| Val::Date(r.expire)),
    Field::new("status", Kind::Choice(STATUSES), |r| {
        Val::Text(r.status.clone())
    }),
    Field::new("submitter", Kind::Fk("users_user"), |r| {
        Val::Int(r.submitter_id)
    }),
    Field::new("team", Kind::Fk("users_team"), |r| Val::Int(r.team_id)),
];
const COLUMNS: &[Column] = &resource::columns(&FIELDS);

pub const SPEC: ListSpec = ListSpec {
    table: TABLE,
    filters: COLUMNS,
    order: COLUMNS,
    search: &[
        search("title"),
        search("description"),
        search_via(&[("team_id", "users_team")], "name"),
        search_via(&[("submitter_id", "users_user")], "username"),
        search_via(&[("submitter_id", "users_user")], "first_name"),
        search_via(&[("submitter_id", "users_user")], "last_name"),
    ],
};

/// The to-many fields: (field, the side table's column for the linked id, the linked table).
/// Each is stored in the side table `allocations_allocationrequest_<field>`.
const LINKS: [(&str, &str, &str); 3] = [
    ("assignees", "user_id", "users_user"),
    (
        "publications",
        "publication_id",
        "research_products_publication",
    ),
    ("grants", "grant_id", "research_products_grant"),
];

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RequestRow {
    pub id: i64,
    pub title: String,
    pub description: String,
    pub submitted: DateTime<Utc>,
    pub active: Option<NaiveDate>,
    pub expire: Option<NaiveDate>,
    pub status: String,
    pub submitter_id: i64,
    pub team_id: i64,
}

// The representation and what it nests (a doc comment on these types would become the
// schema's description).

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "AllocationRequest"))]
pub struct AllocationRequest {
    pub id: i64,
    #[salvo(schema(value_type = UserSummaryDoc))]
    pub _submitter: Option<crate::web::api::summaries::Embedded>,
    #[salvo(schema(value_type = TeamSummaryDoc))]
    pub _team: Option<crate::web::api::summaries::Embedded>,
    #[salvo(schema(value_type = Vec<UserSummaryDoc>))]
    pub _assignees: Vec<crate::web::api::summaries::Embedded>,
    pub _publications: Vec<PublicationSummary>,
    pub _grants: Vec<GrantSummary>,
    #[salvo(schema(value_type = Vec<AuditLogSummaryDoc>))]
    pub _history: Vec<crate::web::api::summaries::AuditLogSummaryDoc>,
    pub _allocations: Vec<ResourceAllocationSummary>,
    pub _attachments: Vec<AttachmentSummary>,
    pub _comments: Vec<CommentSummary>,
    #[salvo(schema(max_length = 250))]
    pub title: String,
    #[salvo(schema(max_length = 20000))]
    pub description: String,
    pub submitted: String,
    #[salvo(schema(required))]
    pub active: Option<String>,
    #[salvo(schema(required))]
    pub expire: Option<String>,
    /// * `PD` - Pending
    /// * `AP` - Approved
    /// * `DC` - Declined
    /// * `CR` - Changes Requested
    pub status: String,
    pub submitter: i64,
    pub team: i64,
    pub assignees: Vec<i64>,
    pub publications: Vec<i64>,
    pub grants: Vec<i64>,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "ResourceAllocationSummary"))]
pub struct ResourceAllocationSummary {
    pub id: i64,
    pub cluster: i64,
    #[salvo(schema(minimum = 0, maximum = 2147483647))]
    pub requested: i64,
    #[salvo(schema(minimum = 0, maximum = 2147483647))]
    pub awarded: Option<i64>,
    #[salvo(schema(minimum = 0, maximum = 2147483647))]
    pub r#final: Option<i64>,
    #[salvo(schema(value_type = summaries::ClusterSummaryDoc))]
    pub _cluster: Option<crate::web::api::summaries::Embedded>,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "AttachmentSummary"))]
pub struct AttachmentSummary {
    pub file: String,
    pub name: String,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "CommentSummary"))]
pub struct CommentSummary {
    pub id: i64,
    pub user: i64,
    #[salvo(schema(max_length = 2000))]
    pub content: String,
    pub created: String,
    pub private: bool,
    #[salvo(schema(value_type = UserSummaryDoc))]
    pub _user: Option<crate::web::api::summaries::Embedded>,
}

// Read as stored (`team` is the `team_id` column; the amount is two-decimal text).
#[derive(Clone, Serialize, ToSchema, sqlx::FromRow)]
#[salvo(schema(name = "GrantSummary"))]
pub struct GrantSummary {
    pub id: i64,
    #[salvo(schema(max_length = 250))]
    pub title: String,
    #[salvo(schema(max_length = 100))]
    pub agency: String,
    #[salvo(schema(max_length = 100))]
    pub pi: Option<String>,
    pub amount: String,
    #[salvo(schema(max_length = 250))]
    pub grant_number: Option<String>,
    #[salvo(schema(value_type = String))]
    pub start_date: NaiveDate,
    #[salvo(schema(value_type = Option<String>))]
    pub end_date: Option<NaiveDate>,
    pub description: Option<String>,
    pub team: i64,
}

// Read as stored (`team` is the `team_id` column).
#[derive(Clone, Serialize, ToSchema, sqlx::FromRow)]
#[salvo(schema(name = "PublicationSummary"))]
pub struct PublicationSummary {
    pub id: i64,
    #[salvo(schema(max_length = 250))]
    pub title: String,
    pub r#abstract: Option<String>,
    #[salvo(schema(value_type = Option<String>))]
    pub published: Option<NaiveDate>,
    #[salvo(schema(value_type = Option<String>))]
    pub submitted: Option<NaiveDate>,
    #[salvo(schema(max_length = 100))]
    pub journal: Option<String>,
    #[salvo(schema(max_length = 50))]
    pub doi: Option<String>,
    #[salvo(schema(max_length = 20))]
    pub volume: Option<String>,
    #[salvo(schema(max_length = 20))]
    pub issue: Option<String>,
    pub team: i64,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "AllocationRequestRequest"))]
pub struct AllocationRequestRequestDoc {
    #[salvo(schema(min_length = 1, max_length = 250))]
    pub title: String,
    #[salvo(schema(min_length = 1, max_length = 20000))]
    pub description: String,
    #[salvo(schema(format = Date))]
    pub active: Option<String>,
    #[salvo(schema(format = Date))]
    pub expire: Option<String>,
    /// * `PD` - Pending
    /// * `AP` - Approved
    /// * `DC` - Declined
    /// * `CR` - Changes Requested
    ///
    /// Non-staff callers may only create a request in status `PD` (403 otherwise).
    #[salvo(schema(required = false))]
    pub status: String,
    pub submitter: i64,
    pub team: i64,
    #[salvo(schema(required = false))]
    pub assignees: Vec<i64>,
    /// Non-staff callers may only link publications of the request's team (403 otherwise).
    #[salvo(schema(required = false))]
    pub publications: Vec<i64>,
    /// Non-staff callers may only link grants of the request's team (403 otherwise).
    #[salvo(schema(required = false))]
    pub grants: Vec<i64>,
}

/// (request id, linked id): a row of a side table.
type LinkRow = (i64, i64);

/// Each request's share of `rows` (their order kept), by the `(request, row id)` links
/// that name them.
fn share_out<T: Clone>(
    rows: Vec<T>,
    id: impl Fn(&T) -> i64,
    links: &HashMap<i64, Vec<LinkRow>>,
) -> HashMap<i64, Vec<T>> {
    let mut owners: HashMap<i64, Vec<i64>> = HashMap::new();
    for (request, target) in links.values().flatten() {
        owners.entry(*target).or_default().push(*request);
    }
    let mut shares: HashMap<i64, Vec<T>> = HashMap::new();
    for row in rows {
        for request in owners.get(&id(&row)).into_iter().flatten() {
            shares.entry(*request).or_default().push(row.clone());
        }
    }
    shares
}

/// `items` by `key`, each group in the items' order.
fn group<T>(items: impl IntoIterator<Item = T>, key: impl Fn(&T) -> i64) -> HashMap<i64, Vec<T>> {
    let mut groups: HashMap<i64, Vec<T>> = HashMap::new();
    for item in items {
        groups.entry(key(&item)).or_default().push(item);
    }
    groups
}

/// `SELECT <columns> FROM <table> WHERE <key> IN (<ids>) ORDER BY <order>` (one query, none
/// without ids): a column `a AS b` reads column `a` as `b`; `computed` is one more column
/// given as (name, SQL).
async fn rows_in<T: crate::store::FetchRow>(
    db: &Db,
    table: &str,
    columns: &str,
    computed: Option<(&str, &'static str)>,
    (key, ids): (&str, &[i64]),
    order: &str,
) -> Result<Vec<T>, ApiError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = Query::select();
    for column in columns.split(", ") {
        let (name, alias) = column.split_once(" AS ").unwrap_or((column, column));
        q.expr_as(Expr::col(Alias::new(name)), Alias::new(alias));
    }
    if let Some((name, sql)) = computed {
        q.expr_as(Expr::cust(sql), Alias::new(name));
    }
    q.from(Alias::new(table))
        .and_where(Expr::col(Alias::new(key)).is_in(ids.to_vec()));
    for column in order.split(", ") {
        q.order_by(Alias::new(column), sea_query::Order::Asc);
    }
    Ok(crate::store::fetch_all(db, &q).await?)
}

#[derive(sqlx::FromRow)]
struct AllocationRow {
    id: i64,
    requested: i32,
    awarded: Option<i32>,
    r#final: Option<i32>,
    cluster_id: i64,
    request_id: i64,
}

#[derive(sqlx::FromRow)]
struct CommentRow {
    id: i64,
    content: String,
    created: DateTime<Utc>,
    private: bool,
    user_id: i64,
    request_id: i64,
}

/// `Allocation Request #<pk> - '<title, truncated>' for Team #<pk> - <name>`.
pub fn repr_with(r: &RequestRow, team_name: &str) -> String {
    format!(
        "Allocation Request #{} - '{}' for Team #{} - {}",
        r.id,
        audit::truncate(&r.title),
        r.team_id,
        team_name
    )
}

/// A date field (`YYYY-MM-DD`), nullable. `Some(None)` = explicit null; `None` = absent or
/// invalid (the error is recorded).
fn date_field(v: &mut Validator, body: &Body, name: &str) -> Option<Option<NaiveDate>> {
    const WRONG: &str = "Date has wrong format. Use one of these formats instead: YYYY-MM-DD.";
    match body.get(name)? {
        Value::Null => Some(None),
        // Form encodings cannot send null: an empty value means null.
        Value::String(s) if s.is_empty() && body.form => Some(None),
        raw => {
            let date = raw.as_str().and_then(parse_date);
            if date.is_none() {
                v.error(name, WRONG);
            }
            date.map(Some)
        }
    }
}

/// `YYYY-MM-DD` (month and day may have one digit, as Django accepts).
fn parse_date(s: &str) -> Option<NaiveDate> {
    let mut parts = s.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || y.len() != 4
        || !(1..=2).contains(&m.len())
        || !(1..=2).contains(&d.len())
        || ![y, m, d]
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    NaiveDate::from_ymd_opt(y.parse().ok()?, m.parse().ok()?, d.parse().ok()?)
}

/// The lists of the to-many fields a write supplied (in `LINKS` order), sorted, without
/// repeats; `None` leaves a side table as it is.
pub struct Links([Option<Vec<i64>>; 3]);

/// Replaces the side tables of the to-many lists a write supplied.
async fn set_links(tx: &mut Tx, request_id: i64, links: &Links) -> Result<(), ApiError> {
    for ((field, column, _), given) in LINKS.iter().zip(&links.0) {
        let Some(ids) = given else { continue };
        let table = format!("allocations_allocationrequest_{field}");
        let delete = format!("DELETE FROM {table} WHERE allocationrequest_id = $1");
        on_tx!(tx, |c| sqlx::query(sqlx::AssertSqlSafe(delete.clone()))
            .bind(request_id)
            .execute(c)
            .await
            .map(|_| ()))?;
        let insert =
            format!("INSERT INTO {table} (allocationrequest_id, {column}) VALUES ($1, $2)");
        for id in ids {
            on_tx!(tx, |c| sqlx::query(sqlx::AssertSqlSafe(insert.clone()))
                .bind(request_id)
                .bind(*id)
                .execute(c)
                .await
                .map(|_| ()))?;
        }
    }
    Ok(())
}

/// The ids a to-many field of the body names, as far as they parse the way validation
/// parses them (validation reports the rest).
fn listed_ids(body: &Body, field: &str) -> Vec<i64> {
    let items: Vec<&Value> = match body.get(field) {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(one @ Value::String(_)) if body.form => vec![one],
        _ => Vec::new(),
    };
    let mut ids: Vec<i64> = items.into_iter().filter_map(|v| pk_value(v).ok()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// ⚑ Whether every grant and publication the body links belongs to `team` (docs/security.md
/// §10). Ids that do not exist pass here; validation answers them with 400.
async fn links_stay_in_team(db: &Db, body: &Body, team: i64) -> Result<bool, ApiError> {
    for (field, _, table) in &LINKS[1..] {
        let ids = listed_ids(body, field);
        if ids.is_empty() {
            continue;
        }
        let mut q = Query::select();
        q.column(Alias::new("id"))
            .from(Alias::new(*table))
            .and_where(Expr::col(Alias::new("id")).is_in(ids))
            .and_where(Expr::col(Alias::new("team_id")).ne(team))
            .limit(1);
        let foreign: Vec<(i64,)> = crate::store::fetch_all(db, &q).await?;
        if !foreign.is_empty() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The create rule for non-staff callers: an admin/owner of the body's team (a missing,
/// garbled or unknown team is a 403, not a validation error), ⚑ filing the request as
/// pending (no `status`, or exactly `PD`: any other value, valid or not, is refused) and
/// linking only that team's grants and publications (docs/security.md §10).
async fn may_create(db: &Db, user_id: i64, body: &Body) -> Result<bool, ApiError> {
    let Some(team) = body.get("team").and_then(|t| pk_value(t).ok()) else {
        return Ok(false);
    };
    let pending = match body.get("status") {
        None => true,
        Some(status) => status.as_str() == Some("PD"),
    };
    Ok(crate::store::teams::is_privileged(db, user_id, team).await?
        && pending
        && links_stay_in_team(db, body, team).await?)
}

/// The allocation request resource.
pub struct Requests;

crate::document_resource!(Requests);

impl Resource for Requests {
    type Row = RequestRow;
    type Repr = AllocationRequest;
    type Extra = Links;

    const PATH: &'static str = "allocations/requests/";
    const TABLE: &'static str = TABLE;
    const CONTENT_TYPE: &'static str = CONTENT_TYPE;
    const MODEL: &'static str = MODEL;
    const FIELDS: &'static [Field<RequestRow>] = &FIELDS;
    const SPEC: ListSpec = SPEC;
    /// Creates follow `may_create` (`check_body`, before validation); item writes are
    /// staff-only once the record is found (404 before 403).
    const POLICY: Policy = Policy::STAFF_CHANGES;
    const DOCS: Docs = Docs {
        tag: "Allocations - Requests",
        id: "A unique integer value identifying this allocation request.",
        list_name: "Allocation Request List",
        item_name: "Allocation Request Instance",
        list: (
            "List allocation requests.",
            "Returns a list of allocation requests. Non-staff users are only returned \
             requests belonging to teams where they hold membership. Staff users are returned \
             all requests.",
        ),
        retrieve: (
            "Retrieve an allocation request.",
            "Returns a single allocation request by ID. Read access is granted to staff users \
             and team members.",
        ),
        create: (
            "Create an allocation request.",
            "Creates a new allocation request. Write access is granted to staff users and team \
             administrators. A team administrator may only create a request in status `PD` \
             (pending) and may only link grants and publications of the request's own team; \
             any other status, or a grant or publication of another team, is refused with 403 \
             before validation.",
        ),
        update: (
            "Update an allocation request.",
            "Replaces an existing allocation request with new values. Write access is \
             restricted to staff users.",
        ),
        partial_update: (
            "Partially update an allocation request.",
            "Partially updates an existing allocation request with new values. Write access is \
             restricted to staff users.",
        ),
        destroy: (
            "Delete an allocation request.",
            "Deletes a single allocation request by ID. Write access is restricted to staff \
             users. The request's allocations, reviews, attachments and comments are deleted \
             with it.",
        ),
    };

    crate::record_id!();

    async fn repr(tx: &mut Tx, row: &RequestRow) -> Result<String, ApiError> {
        let name: Option<String> = on_tx!(tx, |c| sqlx::query_scalar(
            "SELECT name FROM users_team WHERE id = $1"
        )
        .bind(row.team_id)
        .fetch_optional(c)
        .await)?;
        Ok(repr_with(row, &name.unwrap_or_default()))
    }

    async fn validate(
        db: &Db,
        _caller: &Caller,
        body: &Body,
        partial: bool,
        current: Option<&RequestRow>,
    ) -> Result<(RequestRow, Links), ApiError> {
        body.require_object()?;
        let mut v = Validator::new(&body.fields, partial);
        let title = v.text("title", Text::required(250)).flatten();
        let description = v.text("description", Text::required(20_000)).flatten();
        let active = date_field(&mut v, body, "active");
        let expire = date_field(&mut v, body, "expire");
        let status = v.choice("status", STATUSES, false);
        let submitter = v.pk("submitter", true);
        let team = v.pk("team", true);
        let mut links = LINKS.map(|(field, ..)| v.pk_list(field, body.form));
        for (field, table, id) in [
            ("submitter", "users_user", submitter),
            ("team", "users_team", team),
        ] {
            if let Some(id) = id
                && crate::store::first_missing(db, table, &[id])
                    .await?
                    .is_some()
            {
                v.error(field, invalid_pk(id));
            }
        }
        for ((field, _, table), given) in LINKS.iter().zip(&links) {
            if let Some(ids) = given
                && let Some(bad) = crate::store::first_missing(db, table, ids).await?
            {
                v.error(field, invalid_pk(bad));
            }
        }
        v.finish()?;
        let row = RequestRow {
            id: current.map(|c| c.id).unwrap_or(0),
            title: title
                .or_else(|| current.map(|c| c.title.clone()))
                .unwrap_or_default(),
            description: description
                .or_else(|| current.map(|c| c.description.clone()))
                .unwrap_or_default(),
            submitted: current.map(|c| c.submitted).unwrap_or_else(now),
            active: active.unwrap_or_else(|| current.and_then(|c| c.active)),
            expire: expire.unwrap_or_else(|| current.and_then(|c| c.expire)),
            status: status
                .or_else(|| current.map(|c| c.status.clone()))
                .unwrap_or_else(|| "PD".to_string()),
            submitter_id: submitter
                .or(current.map(|c| c.submitter_id))
                .unwrap_or_default(),
            team_id: team.or(current.map(|c| c.team_id)).unwrap_or_default(),
        };
        // ⚑ Keystone enforces the model's date rule on the merged record (domain.md §3.5.2).
        if let (Some(a), Some(e)) = (row.active, row.expire)
            && a >= e
        {
            return Err(ApiError::field(
                "non_field_errors",
                "The expiration date must come after the activation date.",
            ));
        }
        for ids in links.iter_mut().flatten() {
            ids.sort_unstable();
            ids.dedup();
        }
        Ok((row, Links(links)))
    }

    /// Every expansion (all comments: `redact` drops the private ones for non-staff), in a
    /// constant number of queries.
    async fn represent(
        db: &Db,
        tz: Tz,
        rows: &[RequestRow],
    ) -> Result<Vec<AllocationRequest>, ApiError> {
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // (request id, linked id) rows of a side table, by linked id.
        let side_table = |i: usize| {
            let (field, column, _) = LINKS[i];
            let table = format!("allocations_allocationrequest_{field}");
            let columns = format!("allocationrequest_id, {column}");
            let key = ("allocationrequest_id", ids.as_slice());
            async move { rows_in::<LinkRow>(db, &table, &columns, None, key, column).await }
        };
        let assignees = side_table(0).await?;
        let publication_links = side_table(1).await?;
        let grant_links = side_table(2).await?;
        let children = ("request_id", ids.as_slice());
        let allocations: Vec<AllocationRow> = rows_in(
            db,
            "allocations_resourceallocation",
            "id, requested, awarded, final, cluster_id, request_id",
            None,
            children,
            "id",
        )
        .await?;
        let attachments: Vec<(i64, String, String)> = rows_in(
            db,
            "allocations_attachment",
            "request_id, file, name",
            None,
            children,
            "id",
        )
        .await?;
        let comments: Vec<CommentRow> = rows_in(
            db,
            "allocations_comment",
            "id, content, created, private, user_id, request_id",
            None,
            children,
            "created, id",
        )
        .await?;

        let mut user_ids: Vec<i64> = rows.iter().map(|r| r.submitter_id).collect();
        user_ids.extend(assignees.iter().map(|l| l.1));
        user_ids.extend(comments.iter().map(|c| c.user_id));
        let users = summaries::users_by_id(db, &user_ids).await?;
        let team_ids: Vec<i64> = rows.iter().map(|r| r.team_id).collect();
        let teams = summaries::teams_by_id(db, &team_ids).await?;
        let targets = |links: &[LinkRow]| links.iter().map(|l| l.1).collect::<Vec<_>>();
        let publications: Vec<PublicationSummary> = rows_in(
            db,
            "research_products_publication",
            "id, title, abstract, published, submitted, journal, doi, volume, issue, team_id AS team",
            None,
            ("id", &targets(&publication_links)),
            "title, id",
        )
        .await?;
        // numeric(14,2) as text with two places on both backends (migrations/README.md).
        let amount = match db.engine() {
            Engine::Postgres => "CAST(amount AS TEXT)",
            Engine::Sqlite => "printf('%.2f', amount)",
        };
        let grants: Vec<GrantSummary> = rows_in(
            db,
            "research_products_grant",
            "id, title, agency, pi, grant_number, start_date, end_date, description, team_id AS team",
            Some(("amount", amount)),
            ("id", &targets(&grant_links)),
            "title, id",
        )
        .await?;
        let cluster_ids: Vec<i64> = allocations.iter().map(|a| a.cluster_id).collect();
        let clusters = summaries::clusters_by_id(db, &cluster_ids).await?;
        let mut history = summaries::history(db, tz, CONTENT_TYPE, &ids).await?;

        let user = |id: i64| users.get(&id).cloned();
        // Side rows by request, each group in its query's order (links by linked id,
        // attachments by id, comments by creation time).
        let linked = |links: &[LinkRow]| group(links.iter().copied(), |l| l.0);
        let (assignees, publication_ids, grant_ids) = (
            linked(&assignees),
            linked(&publication_links),
            linked(&grant_links),
        );
        // Publications and grants by title: each request's share of the title-ordered rows.
        let mut publications_of = share_out(publications, |p| p.id, &publication_ids);
        let mut grants_of = share_out(grants, |g| g.id, &grant_ids);
        let mut allocations = group(allocations, |a| a.request_id);
        let mut attachments = group(attachments, |a| a.0);
        let mut comments = group(comments, |c| c.request_id);
        let targets = |by_request: &HashMap<i64, Vec<LinkRow>>, id: i64| -> Vec<i64> {
            by_request
                .get(&id)
                .map(|links| links.iter().map(|l| l.1).collect())
                .unwrap_or_default()
        };
        Ok(rows
            .iter()
            .map(|r| {
                let assignee_ids = targets(&assignees, r.id);
                // Allocations by cluster name.
                let mut mine = allocations.remove(&r.id).unwrap_or_default();
                mine.sort_by(|a, b| {
                    let name =
                        |x: &AllocationRow| clusters.get(&x.cluster_id).map(|c| c.name.as_str());
                    name(a).cmp(&name(b)).then(a.id.cmp(&b.id))
                });
                AllocationRequest {
                    id: r.id,
                    _submitter: user(r.submitter_id),
                    _team: teams.get(&r.team_id).cloned(),
                    _assignees: assignee_ids
                        .iter()
                        .map(|u| user(*u).unwrap_or_else(summaries::Embedded::null))
                        .collect(),
                    _publications: publications_of.remove(&r.id).unwrap_or_default(),
                    _grants: grants_of.remove(&r.id).unwrap_or_default(),
                    _history: history.remove(&r.id).unwrap_or_default(),
                    _allocations: mine
                        .iter()
                        .map(|a| ResourceAllocationSummary {
                            id: a.id,
                            cluster: a.cluster_id,
                            requested: a.requested.into(),
                            awarded: a.awarded.map(i64::from),
                            r#final: a.r#final.map(i64::from),
                            _cluster: clusters.get(&a.cluster_id).map(|c| c.summary.clone()),
                        })
                        .collect(),
                    _attachments: attachments
                        .remove(&r.id)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(_, file, name)| AttachmentSummary { file, name })
                        .collect(),
                    _comments: comments
                        .remove(&r.id)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|c| CommentSummary {
                            id: c.id,
                            user: c.user_id,
                            created: render_datetime(&c.created, tz),
                            private: c.private,
                            _user: user(c.user_id),
                            content: c.content,
                        })
                        .collect(),
                    title: r.title.clone(),
                    description: r.description.clone(),
                    submitted: render_datetime(&r.submitted, tz),
                    active: date_text(&r.active),
                    expire: date_text(&r.expire),
                    status: r.status.clone(),
                    submitter: r.submitter_id,
                    team: r.team_id,
                    assignees: assignee_ids,
                    publications: targets(&publication_ids, r.id),
                    grants: targets(&grant_ids, r.id),
                }
            })
            .collect())
    }

    /// Private comments are for staff (also in lists).
    fn redact(repr: &mut AllocationRequest, caller: &Caller) {
        if !caller.is_staff() {
            repr._comments.retain(|c| !c.private);
        }
    }

    /// Non-staff: the requests of their teams.
    fn scope(q: &mut sea_query::SelectStatement, caller: &Caller) {
        if !caller.is_staff() {
            q.and_where(
                Expr::col(Alias::new("team_id"))
                    .in_subquery(crate::store::teams::of_user(caller.id())),
            );
        }
    }

    /// Staff, or any member of the request's team (403).
    async fn check_record(db: &Db, caller: &Caller, row: &RequestRow) -> Result<(), ApiError> {
        ApiError::forbidden_unless(
            caller.is_staff()
                || crate::store::teams::is_member(db, caller.id(), row.team_id).await?,
        )
    }

    /// A non-staff create must pass `may_create`, before validation.
    async fn check_body(
        db: &Db,
        caller: &Caller,
        body: &Body,
        action: Action,
    ) -> Result<(), ApiError> {
        ApiError::forbidden_unless(
            action != Action::Create
                || caller.is_staff()
                || may_create(db, caller.id(), body).await?,
        )
    }

    async fn after_write(
        tx: &mut Tx,
        row: &RequestRow,
        links: Links,
        _action: Action,
    ) -> Result<(), ApiError> {
        set_links(tx, row.id, &links).await
    }

    /// The request's allocations, reviews, attachments and comments go with it; the
    /// attachments' stored files once the delete is committed.
    async fn cascade(
        tx: &mut Tx,
        ctx: &AuditContext,
        row: &RequestRow,
    ) -> Result<Vec<String>, ApiError> {
        crate::web::api::cascade::requests(tx, ctx, &[row.id]).await
    }

    fn request_body(components: &mut Components) -> Option<RefOr<Schema>> {
        Some(AllocationRequestRequestDoc::to_schema(components))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse_like_django() {
        assert_eq!(
            parse_date("2026-01-02"),
            NaiveDate::from_ymd_opt(2026, 1, 2)
        );
        assert_eq!(parse_date("2026-1-2"), NaiveDate::from_ymd_opt(2026, 1, 2));
        for bad in [
            "2026-02-30",
            "26-01-02",
            "2026-01-02T00:00",
            "2026/01/02",
            "",
            "x",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn reprs_truncate_titles() {
        let r = RequestRow {
            id: 7,
            title: "t".repeat(120),
            description: String::new(),
            submitted: Utc::now(),
            active: None,
            expire: None,
            status: "PD".into(),
            submitter_id: 1,
            team_id: 3,
        };
        let text = repr_with(&r, "Team One");
        assert!(text.starts_with("Allocation Request #7 - 'ttt"));
        assert!(text.ends_with("…' for Team #3 - Team One"));
    }
}
