//! Declared resources: a resource states once what it stores (its fields, with their list
//! kinds and whether a write sets them), how it is represented (one `Serialize + ToSchema`
//! type that both renders and documents the responses), who may do what, and hooks for what
//! is truly its own (cascades, side tables, extra rules). The generic handlers here serve
//! list, retrieve, create, update, partial update and destroy with the audit entry written
//! in the same transaction as the change, and document each operation in the OpenAPI
//! document under the resource's operation ids, tags and texts.
//!
//! The order of checks is the same for every resource (domain.md §1.3): the staff gate of
//! the method, then, when the policy reads the body first, the body and its view-level
//! rule, then the record (404) and its object-level rule (403), then (body last) the body
//! and its rule, then validation (400). What a write reads beyond the body (uploads) is
//! read just before validation; what it stores outside the database is stored after it,
//! before the transaction, and removed again if the transaction fails.

use crate::config::Engine;
use crate::store::audit::{self, Action, AuditContext, Snapshot};
use crate::store::{Db, DbError, Tx};
use crate::web::api::body::{self, Body};
use crate::web::api::list::{self as listing, Column, Kind, ListSpec};
use crate::web::api::{Caller, context, path_id};
use crate::web::{ApiError, AppState};
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use salvo::http::StatusCode;
use salvo::oapi::{
    Components, Content, Endpoint as Documented, Object, Operation, Parameter, ParameterIn, RefOr,
    RequestBody, Required, Response as DocResponse, Schema, ToSchema,
};
use salvo::prelude::*;
use sea_query::{Alias, Expr, ExprTrait, Query, SelectStatement};
use serde::Serialize;
use std::future::Future;
use std::marker::PhantomData;

/// Whether a write sets a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Never written by the API (the id).
    Never,
    /// Set on create only (creation times).
    Create,
    /// Set on create and on every update.
    Always,
}

/// A stored field's value: how it is bound in a write and how the audit trail renders it.
#[derive(Debug, Clone)]
pub enum Val {
    Int(i64),
    OptInt(Option<i64>),
    Text(String),
    OptText(Option<String>),
    Bool(bool),
    Date(Option<NaiveDate>),
    DateTime(DateTime<Utc>),
    /// Two-decimal text, stored as a NUMERIC.
    Decimal(String),
}

impl Val {
    /// The audit trail's text of the value (`None` = null).
    pub fn audit(&self) -> Option<String> {
        match self {
            Val::Int(n) => audit::int(*n),
            Val::OptInt(n) => audit::opt_int(*n),
            Val::Text(s) => Some(s.clone()),
            Val::OptText(s) => s.clone(),
            Val::Bool(b) => audit::boolean(*b),
            Val::Date(d) => audit::date(d),
            Val::DateTime(dt) => audit::datetime(dt),
            Val::Decimal(s) => Some(s.clone()),
        }
    }

    fn expr(&self) -> Expr {
        match self {
            Val::Int(n) => Expr::val(*n),
            Val::OptInt(n) => Expr::val(*n),
            Val::Text(s) => Expr::val(s.clone()),
            Val::OptText(s) => Expr::val(s.clone()),
            Val::Bool(b) => Expr::val(*b),
            Val::Date(d) => Expr::val(*d),
            Val::DateTime(dt) => Expr::val(*dt),
            Val::Decimal(s) => Expr::val(s.clone()).cast_as(Alias::new("NUMERIC")),
        }
    }
}

/// One stored field of a resource: its list column (name, kind; foreign keys are stored as
/// `<name>_id`), whether writes set it, how its value is read from a row, and, for values
/// the table does not hold in their rendered form, the SQL that selects them.
pub struct Field<R> {
    pub column: Column,
    pub write: Write,
    pub get: fn(&R) -> Val,
    pub select: Option<fn(Engine) -> &'static str>,
}

impl<R> Field<R> {
    /// A field set on create and update.
    pub const fn new(name: &'static str, kind: Kind, get: fn(&R) -> Val) -> Self {
        Field {
            column: Column::new(name, kind),
            write: Write::Always,
            get,
            select: None,
        }
    }

    /// The primary key: listed and audited, never written.
    pub const fn id(get: fn(&R) -> Val) -> Self {
        Field {
            column: Column::new("id", Kind::Int),
            write: Write::Never,
            get,
            select: None,
        }
    }

    pub const fn write(mut self, write: Write) -> Self {
        self.write = write;
        self
    }

    /// Selected through an SQL expression (aliased to the field's column).
    pub const fn selected_as(mut self, sql: fn(Engine) -> &'static str) -> Self {
        self.select = Some(sql);
        self
    }
}

/// The list columns of a field declaration, for the resource's `ListSpec`.
pub const fn columns<R, const N: usize>(fields: &[Field<R>; N]) -> [Column; N] {
    let mut out = [Column::new("", Kind::Int); N];
    let mut i = 0;
    while i < N {
        out[i] = fields[i].column;
        i += 1;
    }
    out
}

/// Who may use a method at all (finer rules are the resource's `check_*` hooks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// Any authenticated caller.
    Anyone,
    /// Staff only (403 for everyone else, before anything else is looked at).
    Staff,
}

/// The access rules of a resource, as data.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub create: Who,
    pub change: Who,
    pub delete: Who,
    /// Who may change or delete a record they can see: checked after the record (404) and
    /// its object rule (403), before `check_write`.
    pub record_write: Who,
    /// Whether item writes read the body and run `check_body` before looking up the record
    /// (a view-level permission that inspects the body: research records). Destroy then reads
    /// the body too. Otherwise the record comes first and destroy reads no body.
    pub body_first: bool,
}

impl Policy {
    /// Every authenticated caller passes the gate; the resource's hooks decide the rest, the
    /// record before the body.
    pub const OPEN: Policy = Policy {
        create: Who::Anyone,
        change: Who::Anyone,
        delete: Who::Anyone,
        record_write: Who::Anyone,
        body_first: false,
    };

    /// `OPEN`, with the body and its view-level rule before the record.
    pub const BODY_FIRST: Policy = Policy {
        body_first: true,
        ..Policy::OPEN
    };

    /// Everyone authenticated may read; staff write.
    pub const STAFF_WRITES: Policy = Policy {
        create: Who::Staff,
        change: Who::Staff,
        delete: Who::Staff,
        record_write: Who::Anyone,
        body_first: false,
    };

    /// Records of a request's team: members read (as `check_record` decides), creates follow
    /// the resource's `check_body`, and staff alone change or delete, refused once the record
    /// is found (404 before 403).
    pub const STAFF_CHANGES: Policy = Policy {
        record_write: Who::Staff,
        ..Policy::OPEN
    };
}

/// The texts of one operation: summary and description (wrapped lines are joined).
pub type Text = (&'static str, &'static str);

/// The texts of an operation the resource does not offer (see `Resource::OPS`).
pub const UNOFFERED: Text = ("", "");

/// What the OpenAPI document and the OPTIONS metadata say about a resource.
pub struct Docs {
    pub tag: &'static str,
    /// The description of the `{id}` path parameter.
    pub id: &'static str,
    /// OPTIONS names of the collection and item routes ("Cluster List", "Cluster Instance").
    pub list_name: &'static str,
    pub item_name: &'static str,
    pub list: Text,
    pub retrieve: Text,
    pub create: Text,
    pub update: Text,
    pub partial_update: Text,
    pub destroy: Text,
}

/// A resource served by the generic handlers.
pub trait Resource: Send + Sync + Sized + 'static {
    /// A stored record, as `select` reads it.
    type Row: Clone
        + Send
        + Sync
        + Unpin
        + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
        + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>;
    /// The representation: serialises the responses and documents them.
    type Repr: Serialize + ToSchema + Send;
    /// What validation returns beside the row, for `after_write` (side tables).
    type Extra: Send + Sync;

    /// Collection path without leading slash, e.g. `allocations/clusters/`; the item is
    /// `<PATH>{id}/` and operation ids are `<path with _>_<action>`.
    const PATH: &'static str;
    const TABLE: &'static str;
    /// Audit content type, e.g. `allocations | Cluster`.
    const CONTENT_TYPE: &'static str;
    /// Whether writes leave audit entries (false: neither `repr` nor `snapshot` is used).
    const AUDITED: bool = true;
    /// Model name of the 404 message.
    const MODEL: &'static str;
    /// Stored fields, `id` first, in the audit trail's order.
    const FIELDS: &'static [Field<Self::Row>];
    /// Filters, ordering and search of the list.
    const SPEC: ListSpec;
    const POLICY: Policy;
    const DOCS: Docs;
    /// The operations served (and documented); the others answer 405 like any method the
    /// route does not map.
    const OPS: &'static [Op] = &Op::ALL;

    fn id(row: &Self::Row) -> i64;
    fn set_id(row: &mut Self::Row, id: i64);

    /// The audit trail's text of a record. Called inside the write's transaction.
    fn repr(tx: &mut Tx, row: &Self::Row) -> impl Future<Output = Result<String, ApiError>> + Send;

    /// Validates a body against the stored record (`current`, `None` on create): the new
    /// row (id of `current`, or 0) and the extras `after_write` applies.
    fn validate(
        db: &Db,
        caller: &Caller,
        body: &Body,
        partial: bool,
        current: Option<&Self::Row>,
    ) -> impl Future<Output = Result<(Self::Row, Self::Extra), ApiError>> + Send;

    /// Representations of some records, in their order (a constant number of queries),
    /// with datetimes in the site's zone `tz`.
    fn represent(
        db: &Db,
        tz: Tz,
        rows: &[Self::Row],
    ) -> impl Future<Output = Result<Vec<Self::Repr>, ApiError>> + Send;

    /// Trims a representation to what `caller` may see of it (nested records only staff
    /// read) before a response carries it: `represent` renders everything.
    fn redact(_repr: &mut Self::Repr, _caller: &Caller) {}

    /// Restricts the list to what the caller may see. Required, like `check_record`: every
    /// resource states who sees what, even when it is everyone.
    fn scope(q: &mut SelectStatement, caller: &Caller);

    /// Object-level rule of every item method (403, or 404 where a record is hidden).
    fn check_record(
        db: &Db,
        caller: &Caller,
        row: &Self::Row,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// Object-level rule of the item writes (update, partial update, destroy), after
    /// `check_record`.
    fn check_write(
        _db: &Db,
        _caller: &Caller,
        _row: &Self::Row,
        _action: Action,
    ) -> impl Future<Output = Result<(), ApiError>> + Send {
        async { Ok(()) }
    }

    /// View-level rule on the body of a write (403), before validation.
    fn check_body(
        _db: &Db,
        _caller: &Caller,
        _body: &Body,
        _action: Action,
    ) -> impl Future<Output = Result<(), ApiError>> + Send {
        async { Ok(()) }
    }

    /// Reads what a write takes from the request beside the parsed body (a file part's own
    /// headers, the settings an upload is checked against) into `body.input`, after
    /// `check_body` and before `validate`.
    fn read_input(
        _req: &mut Request,
        _app: &AppState,
        _body: &mut Body,
    ) -> impl Future<Output = Result<(), ApiError>> + Send {
        async { Ok(()) }
    }

    /// Runs after validation, before the write's transaction: stores what the new row refers
    /// to outside the database (an upload) and completes the row. Returns the files stored,
    /// which are removed again when the write fails.
    fn store(
        _app: &AppState,
        _row: &mut Self::Row,
        _extra: &Self::Extra,
    ) -> impl Future<Output = Result<Vec<String>, ApiError>> + Send {
        async { Ok(Vec::new()) }
    }

    /// Runs once a write is committed, with the record before (`None` on create) and after
    /// (`None` on delete): clean-ups outside the database, such as removing a stored file no
    /// record refers to any more. An error is still the answer, though the write stays.
    fn after_commit(
        _app: &AppState,
        _before: Option<&Self::Row>,
        _after: Option<&Self::Row>,
    ) -> impl Future<Output = Result<(), ApiError>> + Send {
        async { Ok(()) }
    }

    /// Runs in the write's transaction after the row is stored, before the audit entry.
    fn after_write(
        _tx: &mut Tx,
        _row: &Self::Row,
        _extra: Self::Extra,
        _action: Action,
    ) -> impl Future<Output = Result<(), ApiError>> + Send {
        async { Ok(()) }
    }

    /// Runs in the delete's transaction before the audit entry and the delete (refusals).
    fn before_delete(
        _tx: &mut Tx,
        _row: &Self::Row,
    ) -> impl Future<Output = Result<(), ApiError>> + Send {
        async { Ok(()) }
    }

    /// Runs in the delete's transaction after `before_delete`, before the record's own audit
    /// entry: the audit entries of the rows the delete cascades to. Returns the stored files
    /// the delete takes with it, removed once it is committed.
    fn cascade(
        _tx: &mut Tx,
        _ctx: &AuditContext,
        _row: &Self::Row,
    ) -> impl Future<Output = Result<Vec<String>, ApiError>> + Send {
        async { Ok(Vec::new()) }
    }

    /// Adjusts the audit context of a delete before anything is recorded (e.g. a record that
    /// is the caller itself cannot be the actor of its own deletion entry).
    fn delete_context(_ctx: &mut AuditContext, _caller: &Caller, _row: &Self::Row) {}

    /// The answer when the delete hits a foreign key (`None`: the database error).
    fn still_referenced() -> Option<ApiError> {
        None
    }

    /// The answer when a create or update hits a unique constraint (`None`: the database
    /// error), for a race past the uniqueness check of validation.
    fn duplicate() -> Option<ApiError> {
        None
    }

    /// The request body schema of POST and PUT when the resource documents it as a type
    /// (PATCH takes its `Patched` variant, see [`patched`]); otherwise the document takes it
    /// from `openapi::request_bodies`.
    fn request_body(_components: &mut Components) -> Option<RefOr<Schema>> {
        None
    }

    /// The audit snapshot of a record: every field in declaration order.
    fn snapshot(row: &Self::Row) -> Snapshot {
        Self::FIELDS
            .iter()
            .map(|f| (f.column.name, (f.get)(row).audit()))
            .collect()
    }
}

/// `SELECT <fields> FROM <table>`.
pub fn select<R: Resource>(engine: Engine) -> SelectStatement {
    let mut q = Query::select();
    for f in R::FIELDS {
        let column = f.column.sql();
        match f.select {
            Some(sql) => q.expr_as(Expr::cust(sql(engine)), Alias::new(column)),
            None => q.column(Alias::new(column)),
        };
    }
    q.from(Alias::new(R::TABLE));
    q
}

/// Records by id, in the order of `ids` (one query).
pub async fn load<R: Resource>(db: &Db, ids: &[i64]) -> Result<Vec<R::Row>, ApiError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = select::<R>(db.engine());
    q.and_where(Expr::col(Alias::new("id")).is_in(ids.to_vec()));
    let mut rows: Vec<R::Row> = crate::store::fetch_all(db, &q).await?;
    rows.sort_by_key(|r| ids.iter().position(|i| *i == R::id(r)));
    Ok(rows)
}

/// One record by id, if it exists.
pub async fn by_id<R: Resource>(db: &Db, id: i64) -> Result<Option<R::Row>, ApiError> {
    Ok(load::<R>(db, &[id]).await?.pop())
}

/// One record by id, or 404 with the model's message.
pub async fn found<R: Resource>(db: &Db, id: i64) -> Result<R::Row, ApiError> {
    by_id::<R>(db, id)
        .await?
        .ok_or_else(|| ApiError::no_match(R::MODEL))
}

/// The representation of one record, unredacted (for answers that are not a caller's view of
/// the resource; the handlers apply `Resource::redact`).
pub async fn represent_one<R: Resource>(
    db: &Db,
    tz: Tz,
    row: &R::Row,
) -> Result<R::Repr, ApiError> {
    R::represent(db, tz, std::slice::from_ref(row))
        .await?
        .pop()
        .ok_or(ApiError::Internal)
}

fn gate(who: Who, caller: &Caller) -> Result<(), ApiError> {
    ApiError::forbidden_unless(who == Who::Anyone || caller.is_staff())
}

/// Builds a write for the tx's backend and runs it: `(sql, values)` per backend.
macro_rules! run_on_tx {
    ($tx:expr, $q:expr, |$conn:ident, $sql:ident, $values:ident| $body:expr) => {{
        use sea_query_sqlx::SqlxBinder;
        let ($sql, $values) = match $tx.engine() {
            Engine::Postgres => $q.build_sqlx(sea_query::PostgresQueryBuilder),
            Engine::Sqlite => $q.build_sqlx(sea_query::SqliteQueryBuilder),
        };
        crate::on_tx!($tx, |$conn| $body)
    }};
}

async fn insert<R: Resource>(tx: &mut Tx, row: &R::Row) -> Result<i64, DbError> {
    let fields: Vec<&Field<R::Row>> = R::FIELDS
        .iter()
        .filter(|f| f.write != Write::Never)
        .collect();
    let mut q = Query::insert();
    q.into_table(Alias::new(R::TABLE))
        .columns(fields.iter().map(|f| Alias::new(f.column.sql())))
        .values_panic(fields.iter().map(|f| (f.get)(row).expr()))
        .returning_col(Alias::new("id"));
    Ok(run_on_tx!(tx, q, |c, sql, values| {
        sqlx::query_scalar_with(sqlx::AssertSqlSafe(sql), values)
            .fetch_one(c)
            .await
    })?)
}

async fn update_row<R: Resource>(tx: &mut Tx, row: &R::Row) -> Result<(), DbError> {
    let mut q = Query::update();
    q.table(Alias::new(R::TABLE))
        .values(
            R::FIELDS
                .iter()
                .filter(|f| f.write == Write::Always)
                .map(|f| (Alias::new(f.column.sql()), (f.get)(row).expr())),
        )
        .and_where(Expr::col(Alias::new("id")).eq(R::id(row)));
    run_on_tx!(tx, q, |c, sql, values| sqlx::query_with(
        sqlx::AssertSqlSafe(sql),
        values
    )
    .execute(c)
    .await
    .map(|_| ()))?;
    Ok(())
}

/// A failed insert or update: a unique violation answers `R::duplicate()` when declared.
fn write_error<R: Resource>(e: DbError) -> ApiError {
    match e {
        DbError::Query(sqlx::Error::Database(d)) if d.is_unique_violation() => {
            R::duplicate().unwrap_or_else(|| DbError::Query(sqlx::Error::Database(d)).into())
        }
        e => e.into(),
    }
}

/// The audit entry of a write (`before`/`after`: the record's states), for audited
/// resources.
async fn record<R: Resource>(
    tx: &mut Tx,
    ctx: &AuditContext,
    action: Action,
    before: Option<&R::Row>,
    after: Option<&R::Row>,
) -> Result<(), ApiError> {
    let Some(row) = after.or(before).filter(|_| R::AUDITED) else {
        return Ok(());
    };
    let text = R::repr(tx, row).await?;
    audit::record(
        tx,
        ctx,
        R::CONTENT_TYPE,
        R::id(row),
        &text,
        action,
        audit::changes(
            before.map(R::snapshot).as_ref(),
            after.map(R::snapshot).as_ref(),
        ),
    )
    .await?;
    Ok(())
}

/// Writes the `delete` entries of the records of `R` whose `column` is one of `ids`, in id
/// order, for a delete elsewhere that the database cascades to them: call it in that delete's
/// transaction, before the rows go. Returns the records.
pub async fn audit_deleted<R: Resource>(
    tx: &mut Tx,
    ctx: &AuditContext,
    column: &'static str,
    ids: &[i64],
) -> Result<Vec<R::Row>, ApiError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = select::<R>(tx.engine());
    q.and_where(Expr::col(Alias::new(column)).is_in(ids.to_vec()))
        .order_by(Alias::new("id"), sea_query::Order::Asc);
    let rows: Vec<R::Row> = run_on_tx!(tx, q, |c, sql, values| sqlx::query_as_with(
        sqlx::AssertSqlSafe(sql),
        values
    )
    .fetch_all(c)
    .await)?;
    for row in &rows {
        record::<R>(tx, ctx, Action::Delete, Some(row), None).await?;
    }
    Ok(rows)
}

async fn list<R: Resource>(
    req: &mut Request,
    depot: &mut Depot,
) -> Result<listing::Envelope<Vec<R::Repr>>, ApiError> {
    let (app, caller) = context(depot)?;
    let scope = |q: &mut SelectStatement| R::scope(q, &caller);
    let tz = app.timezone;
    let (rows, page) = if R::FIELDS.iter().any(|f| f.select.is_some()) {
        // A computed column would shadow the stored one in ORDER BY: page the ids, then
        // load the page.
        let (ids, page) =
            listing::page::<(i64,)>(req, &app.db, tz, &R::SPEC, &["id"], &scope).await?;
        let ids: Vec<i64> = ids.into_iter().map(|(id,)| id).collect();
        (load::<R>(&app.db, &ids).await?, page)
    } else {
        let base = select::<R>(app.db.engine());
        listing::page_from::<R::Row>(req, &app.db, tz, &R::SPEC, base, &scope, &[]).await?
    };
    envelope::<R>(&app.db, tz, &caller, &page, &rows).await
}

/// The representations of some records as `caller` may see them.
async fn represent_for<R: Resource>(
    db: &Db,
    tz: Tz,
    caller: &Caller,
    rows: &[R::Row],
) -> Result<Vec<R::Repr>, ApiError> {
    let mut reprs = R::represent(db, tz, rows).await?;
    for repr in &mut reprs {
        R::redact(repr, caller);
    }
    Ok(reprs)
}

/// The answer to a committed write. The write stands whatever happens next, so a database
/// that became unreachable meanwhile is waited for (a few seconds) rather than answered
/// 503, which would invite the client to write again.
async fn represent_committed<R: Resource>(
    app: &AppState,
    caller: &Caller,
    row: &R::Row,
) -> Result<R::Repr, ApiError> {
    let mut wait = std::time::Duration::from_millis(100);
    for _ in 0..6 {
        match represent_one_for::<R>(&app.db, app.timezone, caller, row).await {
            Err(ApiError::Unavailable) => {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            answer => return answer,
        }
    }
    represent_one_for::<R>(&app.db, app.timezone, caller, row).await
}

/// The representation of one record as `caller` may see it.
async fn represent_one_for<R: Resource>(
    db: &Db,
    tz: Tz,
    caller: &Caller,
    row: &R::Row,
) -> Result<R::Repr, ApiError> {
    represent_for::<R>(db, tz, caller, std::slice::from_ref(row))
        .await?
        .pop()
        .ok_or(ApiError::Internal)
}

async fn envelope<R: Resource>(
    db: &Db,
    tz: Tz,
    caller: &Caller,
    page: &listing::Page,
    rows: &[R::Row],
) -> Result<listing::Envelope<Vec<R::Repr>>, ApiError> {
    let reprs = represent_for::<R>(db, tz, caller, rows).await?;
    Ok(page.envelope(reprs))
}

/// The record of an item request the caller may act on: 404, then the object rule.
async fn accessible<R: Resource>(
    db: &Db,
    caller: &Caller,
    req: &Request,
) -> Result<R::Row, ApiError> {
    let row = found::<R>(db, path_id(req)?).await?;
    R::check_record(db, caller, &row).await?;
    Ok(row)
}

/// The record of an item write the caller may make: `accessible`, then the write rule.
async fn writable<R: Resource>(
    db: &Db,
    caller: &Caller,
    req: &Request,
    action: Action,
) -> Result<R::Row, ApiError> {
    let row = accessible::<R>(db, caller, req).await?;
    gate(R::POLICY.record_write, caller)?;
    R::check_write(db, caller, &row, action).await?;
    Ok(row)
}

async fn retrieve<R: Resource>(req: &mut Request, depot: &mut Depot) -> Result<R::Repr, ApiError> {
    let (app, caller) = context(depot)?;
    let row = accessible::<R>(&app.db, &caller, req).await?;
    represent_one_for::<R>(&app.db, app.timezone, &caller, &row).await
}

/// The outcome of a write's transaction; when it failed, the files `Resource::store` wrote
/// for it are removed again.
async fn settle(
    app: &AppState,
    written: Result<(), ApiError>,
    stored: &[String],
) -> Result<(), ApiError> {
    if written.is_err() && !stored.is_empty() {
        crate::infra::uploads::remove_files(&app.db, &app.config, stored).await;
    }
    written
}

async fn create<R: Resource>(req: &mut Request, depot: &mut Depot) -> Result<R::Repr, ApiError> {
    let (app, caller) = context(depot)?;
    gate(R::POLICY.create, &caller)?;
    let mut body = body::read(req).await?;
    R::check_body(&app.db, &caller, &body, Action::Create).await?;
    R::read_input(req, &app, &mut body).await?;
    let (mut row, extra) = R::validate(&app.db, &caller, &body, false, None).await?;
    let stored = R::store(&app, &mut row, &extra).await?;
    let ctx = crate::web::access::audit_context(req, depot);
    let written: Result<(), ApiError> = async {
        let mut tx = app.db.begin().await?;
        let id = insert::<R>(&mut tx, &row).await.map_err(write_error::<R>)?;
        R::set_id(&mut row, id);
        R::after_write(&mut tx, &row, extra, Action::Create).await?;
        record::<R>(&mut tx, &ctx, Action::Create, None, Some(&row)).await?;
        tx.commit().await?;
        Ok(())
    }
    .await;
    settle(&app, written, &stored).await?;
    R::after_commit(&app, None, Some(&row)).await?;
    represent_committed::<R>(&app, &caller, &row).await
}

async fn update<R: Resource>(
    req: &mut Request,
    depot: &mut Depot,
    partial: bool,
) -> Result<R::Repr, ApiError> {
    let (app, caller) = context(depot)?;
    gate(R::POLICY.change, &caller)?;
    let (current, mut body) = if R::POLICY.body_first {
        let body = body::read(req).await?;
        R::check_body(&app.db, &caller, &body, Action::Update).await?;
        (
            writable::<R>(&app.db, &caller, req, Action::Update).await?,
            body,
        )
    } else {
        let current = writable::<R>(&app.db, &caller, req, Action::Update).await?;
        let body = body::read(req).await?;
        R::check_body(&app.db, &caller, &body, Action::Update).await?;
        (current, body)
    };
    R::read_input(req, &app, &mut body).await?;
    let (mut after, extra) = R::validate(&app.db, &caller, &body, partial, Some(&current)).await?;
    let stored = R::store(&app, &mut after, &extra).await?;
    let ctx = crate::web::access::audit_context(req, depot);
    let written: Result<(), ApiError> = async {
        let mut tx = app.db.begin().await?;
        update_row::<R>(&mut tx, &after)
            .await
            .map_err(write_error::<R>)?;
        R::after_write(&mut tx, &after, extra, Action::Update).await?;
        record::<R>(&mut tx, &ctx, Action::Update, Some(&current), Some(&after)).await?;
        tx.commit().await?;
        Ok(())
    }
    .await;
    settle(&app, written, &stored).await?;
    R::after_commit(&app, Some(&current), Some(&after)).await?;
    represent_committed::<R>(&app, &caller, &after).await
}

async fn destroy<R: Resource>(req: &mut Request, depot: &mut Depot) -> Result<(), ApiError> {
    let (app, caller) = context(depot)?;
    gate(R::POLICY.delete, &caller)?;
    if R::POLICY.body_first {
        let body = body::read(req).await?;
        R::check_body(&app.db, &caller, &body, Action::Delete).await?;
    }
    let row = writable::<R>(&app.db, &caller, req, Action::Delete).await?;
    let mut ctx = crate::web::access::audit_context(req, depot);
    R::delete_context(&mut ctx, &caller, &row);
    let mut tx = app.db.begin().await?;
    R::before_delete(&mut tx, &row).await?;
    let files = R::cascade(&mut tx, &ctx, &row).await?;
    record::<R>(&mut tx, &ctx, Action::Delete, Some(&row), None).await?;
    let sql = format!("DELETE FROM {} WHERE id = $1", R::TABLE);
    let id = R::id(&row);
    let deleted = crate::on_tx!(&mut tx, |c| sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
        .bind(id)
        .execute(c)
        .await
        .map(|_| ()));
    match deleted {
        Ok(()) => {}
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
            return Err(R::still_referenced().unwrap_or_else(|| sqlx::Error::Database(e).into()));
        }
        Err(e) => return Err(e.into()),
    }
    tx.commit().await?;
    if !files.is_empty() {
        crate::infra::uploads::remove_files(&app.db, &app.config, &files).await;
    }
    R::after_commit(&app, Some(&row), None).await
}

/// The six operations of a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    List,
    Retrieve,
    Create,
    Update,
    PartialUpdate,
    Destroy,
}

impl Op {
    pub const ALL: [Op; 6] = [
        Op::List,
        Op::Retrieve,
        Op::Create,
        Op::Update,
        Op::PartialUpdate,
        Op::Destroy,
    ];

    fn suffix(self) -> &'static str {
        match self {
            Op::List => "list",
            Op::Retrieve => "retrieve",
            Op::Create => "create",
            Op::Update => "update",
            Op::PartialUpdate => "partial_update",
            Op::Destroy => "destroy",
        }
    }
}

/// The salvo handler of one operation of resource `R`.
pub struct Handle<R, const OP: u8>(PhantomData<fn() -> R>);

const LIST: u8 = 0;
const RETRIEVE: u8 = 1;
const CREATE: u8 = 2;
const UPDATE: u8 = 3;
const PARTIAL_UPDATE: u8 = 4;
const DESTROY: u8 = 5;

pub type List<R> = Handle<R, LIST>;
pub type Retrieve<R> = Handle<R, RETRIEVE>;
pub type Create<R> = Handle<R, CREATE>;
pub type Update<R> = Handle<R, UPDATE>;
pub type PartialUpdate<R> = Handle<R, PARTIAL_UPDATE>;
pub type Destroy<R> = Handle<R, DESTROY>;

impl<R, const OP: u8> Handle<R, OP> {
    pub const fn new() -> Self {
        Handle(PhantomData)
    }

    const fn op() -> Op {
        match OP {
            LIST => Op::List,
            RETRIEVE => Op::Retrieve,
            CREATE => Op::Create,
            UPDATE => Op::Update,
            PARTIAL_UPDATE => Op::PartialUpdate,
            _ => Op::Destroy,
        }
    }
}

impl<R, const OP: u8> Default for Handle<R, OP> {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl<R: Resource, const OP: u8> Handler for Handle<R, OP> {
    async fn handle(
        &self,
        req: &mut Request,
        depot: &mut Depot,
        res: &mut Response,
        _ctrl: &mut FlowCtrl,
    ) {
        match Self::op() {
            Op::List => crate::web::api::respond(res, StatusCode::OK, list::<R>(req, depot).await),
            Op::Retrieve => {
                crate::web::api::respond(res, StatusCode::OK, retrieve::<R>(req, depot).await)
            }
            Op::Create => {
                crate::web::api::respond(res, StatusCode::CREATED, create::<R>(req, depot).await)
            }
            Op::Update => {
                crate::web::api::respond(res, StatusCode::OK, update::<R>(req, depot, false).await)
            }
            Op::PartialUpdate => {
                crate::web::api::respond(res, StatusCode::OK, update::<R>(req, depot, true).await)
            }
            Op::Destroy => crate::web::api::no_content(res, destroy::<R>(req, depot).await),
        }
    }
}

/// The routes of a resource: the collection and the item, protected (the gate decides who
/// may reach them; the policy above decides the rest), with the operations of `R::OPS`.
pub fn routes<R: Resource>() -> crate::web::route::Routes {
    use crate::web::route::{Endpoint, Routes};
    let offers = |op: Op| R::OPS.contains(&op);
    let mut list = Endpoint::protected(R::PATH);
    if offers(Op::List) {
        list = list.get(List::<R>::new()).head(List::<R>::new());
    }
    if offers(Op::Create) {
        list = list.post(Create::<R>::new());
    }
    let mut item = Endpoint::protected(format!("{}{{id}}/", R::PATH));
    if offers(Op::Retrieve) {
        item = item.get(Retrieve::<R>::new()).head(Retrieve::<R>::new());
    }
    if offers(Op::Update) {
        item = item.put(Update::<R>::new());
    }
    if offers(Op::PartialUpdate) {
        item = item.patch(PartialUpdate::<R>::new());
    }
    if offers(Op::Destroy) {
        item = item.delete(Destroy::<R>::new());
    }
    let meta = crate::web::api::meta;
    Routes::new()
        .push(list.options(meta(R::DOCS.list_name, "")).format_suffix())
        .push(item.options(meta(R::DOCS.item_name, "")).format_suffix())
}

/// `TypeId` of a handler, for the OpenAPI endpoint registry.
pub fn type_id<H: 'static>() -> std::any::TypeId {
    std::any::TypeId::of::<H>()
}

fn json_content(schema: RefOr<Schema>) -> Content {
    Content::new(schema)
}

/// `string` or null, as the schema derive writes an `Option<String>` field.
fn nullable_string() -> Object {
    use salvo::oapi::schema::{BasicType, SchemaType};
    Object::new().schema_type(SchemaType::Array(vec![BasicType::String, BasicType::Null]))
}

/// `Paginated<Model>List`: the page envelope of the representation.
fn page_schema<R: Resource>(components: &mut Components) -> RefOr<Schema> {
    let name = format!("Paginated{}List", R::MODEL);
    let results = salvo::oapi::Array::new().items(R::Repr::to_schema(components));
    let schema = Object::new()
        .property("count", i64::to_schema(components))
        .required("count")
        .property("next", nullable_string())
        .property("previous", nullable_string())
        .property("results", results)
        .required("results");
    components
        .schemas
        .insert(name.clone(), RefOr::Type(Schema::Object(Box::new(schema))));
    RefOr::Ref(salvo::oapi::Ref::from_schema_name(name))
}

/// The documented operation of one handler of `R`.
pub fn endpoint<R: Resource, const OP: u8>() -> Documented {
    let op = Handle::<R, OP>::op();
    let mut components = Components::new();
    let docs = &R::DOCS;
    let (summary, description) = match op {
        Op::List => docs.list,
        Op::Retrieve => docs.retrieve,
        Op::Create => docs.create,
        Op::Update => docs.update,
        Op::PartialUpdate => docs.partial_update,
        Op::Destroy => docs.destroy,
    };
    let id = format!(
        "{}_{}",
        R::PATH.trim_end_matches('/').replace(['/', '-'], "_"),
        op.suffix()
    );
    let mut operation = Operation::new()
        .operation_id(id)
        .summary(summary)
        .description(description)
        .add_tag(docs.tag);
    if op != Op::List && op != Op::Create {
        operation = operation.add_parameter(
            Parameter::new("id")
                .location(ParameterIn::Path)
                .description(docs.id)
                .required(Required::True)
                .schema(i64::to_schema(&mut components)),
        );
    }
    if matches!(op, Op::Create | Op::Update | Op::PartialUpdate)
        && let Some(schema) = R::request_body(&mut components)
    {
        let schema = if op == Op::PartialUpdate {
            patched(&mut components, schema)
        } else {
            schema
        };
        operation = operation.request_body(
            RequestBody::new()
                .add_content("application/json", json_content(schema))
                .required(Required::True),
        );
    }
    let (status, response) = match op {
        Op::List => (
            "200",
            DocResponse::new("").add_content(
                "application/json",
                json_content(page_schema::<R>(&mut components)),
            ),
        ),
        Op::Destroy => ("204", DocResponse::new("No response body")),
        Op::Create => (
            "201",
            DocResponse::new("").add_content(
                "application/json",
                json_content(R::Repr::to_schema(&mut components)),
            ),
        ),
        _ => (
            "200",
            DocResponse::new("").add_content(
                "application/json",
                json_content(R::Repr::to_schema(&mut components)),
            ),
        ),
    };
    operation = operation.add_response(status, response);
    Documented::new(operation, components)
}

/// `Resource::id` and `Resource::set_id` for a row whose primary key is its `id` field.
#[macro_export]
macro_rules! record_id {
    () => {
        fn id(row: &Self::Row) -> i64 {
            row.id
        }

        fn set_id(row: &mut Self::Row, id: i64) {
            row.id = id;
        }
    };
}

/// Registers the six operations of a resource in the OpenAPI document (once per resource,
/// next to its declaration). The document shows those `routes` mounts, i.e. `R::OPS`.
#[macro_export]
macro_rules! document_resource {
    ($r:ty) => {
        $crate::document_resource!(@op $r, List);
        $crate::document_resource!(@op $r, Retrieve);
        $crate::document_resource!(@op $r, Create);
        $crate::document_resource!(@op $r, Update);
        $crate::document_resource!(@op $r, PartialUpdate);
        $crate::document_resource!(@op $r, Destroy);
    };
    (@op $r:ty, $op:ident) => {
        salvo::oapi::__private::inventory::submit! {
            salvo::oapi::EndpointRegistry::save(
                $crate::web::api::resource::type_id::<$crate::web::api::resource::$op<$r>>,
                $crate::web::api::resource::documented::<$crate::web::api::resource::$op<$r>>,
            )
        }
    };
}

/// The documented operation of a handler type (for `document_resource!`).
pub trait DocumentedHandler {
    fn documented() -> Documented;
}

impl<R: Resource, const OP: u8> DocumentedHandler for Handle<R, OP> {
    fn documented() -> Documented {
        endpoint::<R, OP>()
    }
}

pub fn documented<H: DocumentedHandler>() -> Documented {
    H::documented()
}

/// The `Patched<Name>` variant of the registered request schema `schema` refers to: the same
/// fields, none of them required (a PATCH sends only what it changes), as upstream documents
/// partial updates.
pub fn patched(components: &mut Components, schema: RefOr<Schema>) -> RefOr<Schema> {
    let RefOr::Ref(reference) = &schema else {
        return schema;
    };
    let Some(name) = reference
        .ref_location
        .rsplit('/')
        .next()
        .map(str::to_string)
    else {
        return schema;
    };
    let Some(RefOr::Type(Schema::Object(object))) = components.schemas.0.get(&name).cloned() else {
        return schema;
    };
    let mut object = *object;
    object.required.clear();
    let name = format!("Patched{name}");
    components
        .schemas
        .insert(name.clone(), RefOr::Type(Schema::Object(Box::new(object))));
    RefOr::Ref(salvo::oapi::Ref::from_schema_name(name))
}

/// A request schema as a reference, registering it (for `Resource::request_body`).
pub fn schema_of<T: ToSchema>(components: &mut Components) -> RefOr<Schema> {
    T::to_schema(components)
}
