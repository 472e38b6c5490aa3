//! `/allocations/attachments/` (domain.md §7.6): files attached to allocation requests.
//! Uploads are stored under `<upload.dir>/allocations/` with a server-chosen name (the
//! client's file name is only kept as the display `name`, never used as a path), and are
//! downloaded through the API with the record's permission checks (operations.md §6.4
//! decision 3), optionally handed to nginx with `X-Accel-Redirect`.
//!
//! Download routes (Keystone additions; upstream let nginx serve `/media/<file>` publicly):
//! `GET /allocations/attachments/{id}/download/`, and `GET /media/<file>/` (the path shape
//! upstream's frontend builds from the `file` value `allocations/<name>`; the unslashed form
//! is answered with the usual 301 to the slashed one).

use crate::config::Config;
use crate::domain::validation::{Text, Validator, pk_value};
use crate::infra::uploads::{SUBDIR, UploadDir, read_stored, remove_files};
use crate::store::audit::{self, Action, Snapshot};
use crate::store::{Db, Tx};
use crate::web::ApiError;
use crate::web::api::body::{self, Body};
use crate::web::api::list::{self as listing, Column, Kind, ListSpec, search, search_via};
use crate::web::api::summaries::render_datetime;
use crate::web::api::{Caller, context, path_id};
use crate::web::canonical::percent_decode_strict;
use crate::{on_db, on_tx};
use chrono::{DateTime, NaiveDate, SubsecRound, Utc};
use chrono_tz::Tz;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use salvo::http::StatusCode;
use salvo::http::header::{self, HeaderValue};
use salvo::oapi::ToSchema;
use salvo::prelude::*;
use sea_query::{Alias, Expr, ExprTrait, Query, SelectStatement};
use serde::Serialize;
use serde_json::{Value, json};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;

pub const CONTENT_TYPE: &str = "allocations | Attachment";
const MODEL: &str = "Attachment";
pub(crate) const REQUESTS: &str = "allocations_allocationrequest";
/// `Attachment.name` is a varchar(250).
const NAME_MAX: usize = 250;

const FILTERS: &[Column] = &[
    Column::new("id", Kind::Int),
    Column::new("name", Kind::Text),
    Column::new("uploaded", Kind::DateTime),
    Column::new("request", Kind::Fk(REQUESTS)),
];

const ORDER: &[Column] = &[
    Column::new("id", Kind::Int),
    Column::new("file", Kind::Text),
    Column::new("name", Kind::Text),
    Column::new("uploaded", Kind::DateTime),
    Column::new("request", Kind::Fk(REQUESTS)),
];

pub const SPEC: ListSpec = ListSpec {
    table: "allocations_attachment",
    filters: FILTERS,
    order: ORDER,
    // Upstream lists the dead field `path` (500 on any search); `name` replaces it (§2.3).
    search: &[
        search("name"),
        search_via(&[("request_id", REQUESTS)], "title"),
        search_via(
            &[("request_id", REQUESTS), ("submitter_id", "users_user")],
            "username",
        ),
        search_via(
            &[("request_id", REQUESTS), ("submitter_id", "users_user")],
            "first_name",
        ),
        search_via(
            &[("request_id", REQUESTS), ("submitter_id", "users_user")],
            "last_name",
        ),
    ],
};

const ROW_COLUMNS: [&str; 5] = ["id", "file", "name", "uploaded", "request_id"];

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttachmentRow {
    pub id: i64,
    pub file: String,
    pub name: String,
    pub uploaded: DateTime<Utc>,
    pub request_id: i64,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "Attachment"))]
pub struct AttachmentDoc {
    pub id: i64,
    /// Storage path relative to the upload directory (`allocations/<name>`).
    pub file: String,
    pub name: String,
    pub _request: super::requests::AllocationRequestSummaryDoc,
    pub _history: Vec<crate::web::api::summaries::AuditLogSummaryDoc>,
    pub uploaded: String,
    pub request: i64,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "PaginatedAttachmentList"))]
pub struct AttachmentPage {
    pub count: i64,
    pub next: Option<String>,
    pub previous: Option<String>,
    pub results: Vec<AttachmentDoc>,
}

// ---------------------------------------------------------------------------------------
// Parent requests: summaries, teams and the caller's team scope (shared with comments).
// ---------------------------------------------------------------------------------------

/// The columns of an allocation request that its children need.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RequestRef {
    pub id: i64,
    pub title: String,
    pub status: String,
    pub active: Option<NaiveDate>,
    pub expire: Option<NaiveDate>,
    pub team_id: i64,
}

/// Requests by id (one query).
pub async fn requests_by_id(db: &Db, ids: &[i64]) -> Result<HashMap<i64, RequestRef>, ApiError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut q = Query::select();
    q.columns(["id", "title", "status", "active", "expire", "team_id"].map(Alias::new))
        .from(Alias::new(REQUESTS))
        .and_where(Expr::col(Alias::new("id")).is_in(ids));
    let rows: Vec<RequestRef> = crate::store::fetch_all(db, &q).await?;
    Ok(rows.into_iter().map(|r| (r.id, r)).collect())
}

pub async fn request_ref(db: &Db, id: i64) -> Result<Option<RequestRef>, ApiError> {
    Ok(requests_by_id(db, &[id]).await?.remove(&id))
}

/// AllocationRequestSummary (domain.md §4).
pub fn request_summary(r: &RequestRef) -> Value {
    let date = |d: &Option<NaiveDate>| d.map(|d| d.format("%Y-%m-%d").to_string());
    json!({
        "id": r.id,
        "title": r.title,
        "status": r.status,
        "active": date(&r.active),
        "expire": date(&r.expire),
    })
}

/// List scope of request children for non-staff callers: rows whose request belongs to a
/// team in which the caller holds any membership (active or inactive team).
pub fn scope_to_caller_teams(q: &mut SelectStatement, caller: &Caller) {
    if caller.is_staff() {
        return;
    }
    let me = caller.id();
    let mut teams = Query::select();
    teams
        .column(Alias::new("team_id"))
        .from(Alias::new("users_membership"))
        .and_where(Expr::col(Alias::new("user_id")).eq(me));
    let mut requests = Query::select();
    requests
        .column(Alias::new("id"))
        .from(Alias::new(REQUESTS))
        .and_where(Expr::col(Alias::new("team_id")).in_subquery(teams));
    q.and_where(Expr::col(Alias::new("request_id")).in_subquery(requests));
}

/// The team of a request, `None` when the request does not exist.
pub async fn request_team(db: &Db, request_id: i64) -> Result<Option<i64>, ApiError> {
    Ok(on_db!(db, |p| sqlx::query_scalar::<_, i64>(
        "SELECT team_id FROM allocations_allocationrequest WHERE id = $1"
    )
    .bind(request_id)
    .fetch_optional(p)
    .await)?)
}

/// Staff, or any member of the team.
pub async fn is_member_or_staff(db: &Db, caller: &Caller, team_id: i64) -> Result<bool, ApiError> {
    Ok(caller.is_staff() || crate::store::teams::is_member(db, caller.id(), team_id).await?)
}

/// The request named by a body's `request` key, when it parses and exists.
pub async fn body_request(db: &Db, body: &Body) -> Result<Option<RequestRef>, ApiError> {
    let Some(id) = body.get("request").and_then(|v| pk_value(v).ok()) else {
        return Ok(None);
    };
    request_ref(db, id).await
}

// ---------------------------------------------------------------------------------------
// Representation
// ---------------------------------------------------------------------------------------

/// Representations of a page: request summaries and history in three queries whatever the
/// page size.
pub async fn represent(db: &Db, tz: Tz, rows: &[AttachmentRow]) -> Result<Vec<Value>, ApiError> {
    let ids: Vec<i64> = rows.iter().map(|a| a.id).collect();
    let request_ids: Vec<i64> = rows.iter().map(|a| a.request_id).collect();
    let requests = requests_by_id(db, &request_ids).await?;
    let mut history = crate::web::api::summaries::history(db, tz, CONTENT_TYPE, &ids).await?;
    Ok(rows
        .iter()
        .map(|a| {
            json!({
                "id": a.id,
                "file": a.file,
                "name": a.name,
                "_request": requests.get(&a.request_id).map(request_summary).unwrap_or(Value::Null),
                "_history": history.remove(&a.id).unwrap_or_default(),
                "uploaded": render_datetime(&a.uploaded, tz),
                "request": a.request_id,
            })
        })
        .collect())
}

async fn represent_one(db: &Db, tz: Tz, a: &AttachmentRow) -> Result<Value, ApiError> {
    Ok(represent(db, tz, std::slice::from_ref(a))
        .await?
        .pop()
        .unwrap_or(Value::Null))
}

// ---------------------------------------------------------------------------------------
// Endpoints
// ---------------------------------------------------------------------------------------

/// List file attachments.
///
/// Returns a list of file attachments. Non-staff users are only returned attachments
/// belonging to teams where they hold membership. Staff users are returned all attachments.
#[endpoint(
    operation_id = "allocations_attachments_list",
    tags("Allocations - Request Attachments"),
    responses((status_code = 200, description = "", body = AttachmentPage))
)]
pub async fn list(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let listing::CallerPage {
            app, rows, page, ..
        } = listing::caller_page::<AttachmentRow>(
            req,
            depot,
            &SPEC,
            &ROW_COLUMNS,
            scope_to_caller_teams,
        )
        .await?;
        Ok(page.envelope(represent(&app.db, app.timezone, &rows).await?))
    }
    .await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

async fn by_id(db: &Db, id: i64) -> Result<Option<AttachmentRow>, ApiError> {
    Ok(on_db!(db, |p| sqlx::query_as::<_, AttachmentRow>(
        "SELECT id, file, name, uploaded, request_id FROM allocations_attachment WHERE id = $1"
    )
    .bind(id)
    .fetch_optional(p)
    .await)?)
}

/// An existing attachment the caller may read: 404 when missing, 403 for other teams.
async fn readable(db: &Db, caller: &Caller, id: i64) -> Result<AttachmentRow, ApiError> {
    let a = by_id(db, id)
        .await?
        .ok_or_else(|| ApiError::no_match(MODEL))?;
    if super::sees_request(db, caller, a.request_id).await? {
        Ok(a)
    } else {
        Err(ApiError::forbidden())
    }
}

/// An existing attachment the caller may change: staff only (members get 403).
async fn writable(db: &Db, caller: &Caller, id: i64) -> Result<AttachmentRow, ApiError> {
    let a = by_id(db, id)
        .await?
        .ok_or_else(|| ApiError::no_match(MODEL))?;
    if caller.user.is_staff {
        Ok(a)
    } else {
        Err(ApiError::forbidden())
    }
}

/// Retrieve a file attachment.
///
/// Returns a single file attachment by ID. Read access is granted to staff users and team
/// members.
#[endpoint(
    operation_id = "allocations_attachments_retrieve",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this attachment.")),
    tags("Allocations - Request Attachments"),
    responses((status_code = 200, description = "", body = AttachmentDoc))
)]
pub async fn retrieve(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let a = readable(&app.db, &caller, path_id(req)?).await?;
        represent_one(&app.db, app.timezone, &a).await
    }
    .await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

fn snapshot(a: &AttachmentRow) -> Snapshot {
    vec![
        ("id", audit::int(a.id)),
        ("file", Some(a.file.clone())),
        ("name", Some(a.name.clone())),
        ("uploaded", audit::datetime(&a.uploaded)),
        ("request", audit::int(a.request_id)),
    ]
}

pub fn repr(a: &AttachmentRow) -> String {
    format!(
        "Attachment #{} - '{}' on request #{}",
        a.id, a.name, a.request_id
    )
}

/// What a client sent as `file`.
enum FileInput {
    Absent,
    Null,
    /// A plain form/JSON value instead of a file part.
    NotAFile,
    /// A file part without a usable file name (empty, `.` or `..` after sanitising).
    Nameless,
    Part {
        /// The client's base name, sanitised; display only.
        name: String,
        temp: PathBuf,
        size: u64,
    },
}

/// The last `file` part of a multipart body (as Django's `MultiValueDict` picks it), with
/// its client file name reduced to a base name.
async fn file_input(req: &mut Request, body: &Body) -> FileInput {
    if let Some((_, salvo_name, temp, size)) = body.files.iter().rev().find(|f| f.0 == "file") {
        // salvo strips `/` and `\` from names (so `../x` reads `..x`); the raw header keeps
        // them, which lets us take the base name as upstream does.
        let raw = match req.form_data().await {
            Ok(form) => form
                .files
                .iter_all()
                .flat_map(|(_, parts)| parts.iter())
                .find(|p| p.path() == temp)
                .and_then(|p| p.headers().get(header::CONTENT_DISPOSITION))
                .and_then(|v| disposition_file_name(v.as_bytes())),
            Err(_) => None,
        };
        let name = raw
            .or_else(|| salvo_name.clone())
            .and_then(|n| client_base_name(&n));
        return match name {
            Some(name) => FileInput::Part {
                name,
                temp: temp.clone(),
                size: *size,
            },
            None => FileInput::Nameless,
        };
    }
    match body.get("file") {
        None => FileInput::Absent,
        Some(Value::Null) => FileInput::Null,
        Some(_) => FileInput::NotAFile,
    }
}

/// A validated upload, ready to be stored.
struct Upload {
    name: String,
    temp: PathBuf,
    ext: &'static str,
}

/// DRF's FileField checks, then upstream's `validate_file` (size, type resolution, allow-list).
fn check_file(
    v: &mut Validator,
    input: FileInput,
    required: bool,
    config: &Config,
) -> Option<Upload> {
    const FIELD: &str = "file";
    match input {
        // Django drops parts whose name sanitises to nothing, so they count as absent.
        FileInput::Absent | FileInput::Nameless => {
            if required {
                v.error(FIELD, "No file was submitted.");
            }
            None
        }
        FileInput::Null => {
            v.error(FIELD, crate::domain::validation::NOT_NULL);
            None
        }
        FileInput::NotAFile => {
            v.error(
                FIELD,
                "The submitted data was not a file. Check the encoding type on the form.",
            );
            None
        }
        FileInput::Part { name, temp, size } => {
            let limits = &config.settings.upload;
            if size == 0 {
                v.error(FIELD, "The submitted file is empty.");
                return None;
            }
            if size > limits.max_size {
                v.error(FIELD, size_message(limits.max_size));
                return None;
            }
            let Some((ext, mime)) = mime_for(&name) else {
                v.error(FIELD, "File type could not be resolved.");
                return None;
            };
            if !limits
                .allowed_types
                .iter()
                .any(|t| t.eq_ignore_ascii_case(mime))
            {
                v.error(FIELD, format!("File type '{mime}' is not allowed."));
                return None;
            }
            Some(Upload {
                name: fit_name(&name, NAME_MAX),
                temp,
                ext,
            })
        }
    }
}

/// `File size should not exceed <n> MB.` with the limit in MiB to two decimals.
pub fn size_message(max_size: u64) -> String {
    format!(
        "File size should not exceed {:.2} MB.",
        max_size as f64 / 1_048_576.0
    )
}

/// Validated values of a create or update.
struct Input {
    name: Option<String>,
    request: Option<i64>,
    upload: Option<Upload>,
}

async fn validate(
    req: &mut Request,
    db: &Db,
    config: &Config,
    body: &Body,
    partial: bool,
) -> Result<Input, ApiError> {
    body.require_object()?;
    let file = file_input(req, body).await;
    let mut v = Validator::new(&body.fields, partial);
    let upload = check_file(&mut v, file, !partial, config);
    let name = v
        .text(
            "name",
            Text {
                max: NAME_MAX,
                required: false,
                nullable: false,
                blank: false,
                trim: true,
            },
        )
        .flatten();
    let request = v.pk("request", true);
    if let Some(r) = request
        && request_team(db, r).await?.is_none()
    {
        v.error(
            "request",
            format!("Invalid pk \"{r}\" - object does not exist."),
        );
    }
    v.finish()?;
    Ok(Input {
        name,
        request,
        upload,
    })
}

/// Saved time of a row, at the database's microsecond precision.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Create a file attachment.
///
/// Creates a new file attachment on an allocation request (multipart upload, field `file`).
/// Write access is granted to staff users and team administrators.
#[endpoint(
    operation_id = "allocations_attachments_create",
    tags("Allocations - Request Attachments"),
    responses((status_code = 201, description = "", body = AttachmentDoc))
)]
pub async fn create(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let me = caller.user.clone();
        let body = body::read(req).await?;
        // View-level rule: a non-staff caller must be an admin/owner of the body request's
        // team; a missing, garbled or unknown request is 403 too.
        if !me.is_staff {
            let Some(r) = body_request(&app.db, &body).await? else {
                return Err(ApiError::forbidden());
            };
            if !crate::store::teams::is_privileged(&app.db, me.id, r.team_id).await? {
                return Err(ApiError::forbidden());
            }
        }
        let input = validate(req, &app.db, &app.config, &body, false).await?;
        let (Some(upload), Some(request_id)) = (input.upload, input.request) else {
            return Err(ApiError::Internal);
        };
        let file = store_upload(&app.db, &app.config, &upload).await?;
        let mut row = AttachmentRow {
            id: 0,
            file: file.clone(),
            name: input.name.unwrap_or_else(|| upload.name.clone()),
            uploaded: now(),
            request_id,
        };
        let ctx = crate::web::access::audit_context(req, depot);
        let saved: Result<(), ApiError> = async {
            let mut tx = app.db.begin().await?;
            row.id = on_tx!(&mut tx, |c| sqlx::query_scalar(
                "INSERT INTO allocations_attachment (file, name, uploaded, request_id) \
                 VALUES ($1, $2, $3, $4) RETURNING id"
            )
            .bind(&row.file)
            .bind(&row.name)
            .bind(row.uploaded)
            .bind(row.request_id)
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
            Ok(())
        }
        .await;
        if let Err(e) = saved {
            remove_files(&app.db, &app.config, std::slice::from_ref(&file)).await;
            return Err(e);
        }
        represent_one(&app.db, app.timezone, &row).await
    }
    .await;
    crate::web::api::respond(res, StatusCode::CREATED, result);
}

async fn update(req: &mut Request, depot: &mut Depot, partial: bool) -> Result<Value, ApiError> {
    let (app, caller) = context(depot)?;
    let current = writable(&app.db, &caller, path_id(req)?).await?;
    let body = body::read(req).await?;
    let input = validate(req, &app.db, &app.config, &body, partial).await?;
    let new_file = match &input.upload {
        Some(upload) => Some(store_upload(&app.db, &app.config, upload).await?),
        None => None,
    };
    let after = AttachmentRow {
        id: current.id,
        file: new_file.clone().unwrap_or_else(|| current.file.clone()),
        // An omitted name keeps the stored one, also when a new file replaces the old.
        name: input.name.unwrap_or_else(|| current.name.clone()),
        uploaded: now(),
        request_id: input.request.unwrap_or(current.request_id),
    };
    let ctx = crate::web::access::audit_context(req, depot);
    let saved: Result<(), ApiError> = async {
        let mut tx = app.db.begin().await?;
        on_tx!(&mut tx, |c| sqlx::query(
            "UPDATE allocations_attachment SET file = $1, name = $2, uploaded = $3, \
             request_id = $4 WHERE id = $5"
        )
        .bind(&after.file)
        .bind(&after.name)
        .bind(after.uploaded)
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
            &repr(&after),
            Action::Update,
            audit::changes(Some(&snapshot(&current)), Some(&snapshot(&after))),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
    .await;
    match (saved, new_file) {
        (Err(e), Some(file)) => {
            remove_files(&app.db, &app.config, &[file]).await;
            return Err(e);
        }
        (Err(e), None) => return Err(e),
        // The replaced file goes with the value that referenced it.
        (Ok(()), Some(_)) => remove_unreferenced(&app.db, &app.config, &current.file).await?,
        (Ok(()), None) => {}
    }
    represent_one(&app.db, app.timezone, &after).await
}

/// Update a file attachment.
///
/// Replaces an existing file attachment with new values (multipart; `file` and `request`
/// required). Write access is restricted to staff users.
#[endpoint(
    operation_id = "allocations_attachments_update",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this attachment.")),
    tags("Allocations - Request Attachments"),
    responses((status_code = 200, description = "", body = AttachmentDoc))
)]
pub async fn put(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = update(req, depot, false).await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

/// Partially update a file attachment.
///
/// Partially updates an existing file attachment with new values. Write access is
/// restricted to staff users.
#[endpoint(
    operation_id = "allocations_attachments_partial_update",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this attachment.")),
    tags("Allocations - Request Attachments"),
    responses((status_code = 200, description = "", body = AttachmentDoc))
)]
pub async fn patch(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = update(req, depot, true).await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

/// Delete a file attachment.
///
/// Deletes a file attachment by ID, and its stored file. Write access is restricted to
/// staff users.
#[endpoint(
    operation_id = "allocations_attachments_destroy",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this attachment.")),
    tags("Allocations - Request Attachments"),
    responses((status_code = 204, description = "No response body"))
)]
pub async fn destroy(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result: Result<(), ApiError> = async {
        let (app, caller) = context(depot)?;
        let a = writable(&app.db, &caller, path_id(req)?).await?;
        let ctx = crate::web::access::audit_context(req, depot);
        audit::delete_audited(
            &app.db,
            &ctx,
            CONTENT_TYPE,
            "allocations_attachment",
            a.id,
            &repr(&a),
            &snapshot(&a),
        )
        .await?;
        remove_unreferenced(&app.db, &app.config, &a.file).await
    }
    .await;
    crate::web::api::no_content(res, result);
}

/// Download a file attachment.
///
/// Returns the attachment's file content with its type and `Content-Disposition:
/// attachment` (Keystone addition: attachments are never served publicly). Read access as
/// for the attachment record: staff users and team members.
#[endpoint(
    operation_id = "allocations_attachments_download",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this attachment.")),
    tags("Allocations - Request Attachments"),
    responses((status_code = 200, description = "The file content."))
)]
pub async fn download(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let a = readable(&app.db, &caller, path_id(req)?).await?;
        send_file(&app.config, &a, res).await
    }
    .await;
    if let Err(e) = result {
        e.render(res);
    }
}

/// `GET /media/allocations/<name>/`: the path upstream's frontend builds from `file`,
/// served with the record's permission checks.
#[handler]
pub async fn media(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let name = req
            .param::<String>("name")
            .ok_or_else(ApiError::not_found)?;
        let file = format!("{SUBDIR}/{name}");
        let row: Option<AttachmentRow> = on_db!(&app.db, |p| sqlx::query_as::<_, AttachmentRow>(
            "SELECT id, file, name, uploaded, request_id FROM allocations_attachment \
             WHERE file = $1 ORDER BY id LIMIT 1"
        )
        .bind(&file)
        .fetch_optional(p)
        .await)?;
        let a = row.ok_or_else(ApiError::not_found)?;
        let a = readable(&app.db, &caller, a.id).await?;
        send_file(&app.config, &a, res).await
    }
    .await;
    if let Err(e) = result {
        e.render(res);
    }
}

/// Writes the file of `a` (or an `X-Accel-Redirect` to it) with its headers.
async fn send_file(config: &Config, a: &AttachmentRow, res: &mut Response) -> Result<(), ApiError> {
    let accel = config
        .settings
        .upload
        .accel_redirect
        .as_deref()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string);
    let root = config.upload_dir();
    let file = a.file.clone();
    let with_body = accel.is_none();
    // All file-system work off the async threads: checks, then the content.
    let content = tokio::task::spawn_blocking(move || -> std::io::Result<Option<Vec<u8>>> {
        let storage = UploadDir::open(&root, false)?;
        let path = storage
            .resolve(&file)
            .ok_or_else(|| std::io::Error::other(format!("no stored file for {file:?}")))?;
        if with_body {
            read_stored(&path).map(Some)
        } else {
            Ok(None)
        }
    })
    .await
    .map_err(|_| ApiError::Internal)?
    .map_err(|e| {
        tracing::warn!("attachment {}: {e}", a.id);
        ApiError::not_found()
    })?;
    let mime = mime_for(&a.file)
        .map(|(_, m)| m)
        .unwrap_or("application/octet-stream");
    let shown = if a.name.trim().is_empty() {
        a.file
            .rsplit('/')
            .next()
            .unwrap_or("attachment")
            .to_string()
    } else {
        a.name.clone()
    };
    let mut headers = vec![
        (header::CONTENT_TYPE, mime.to_string()),
        (header::CONTENT_DISPOSITION, content_disposition(&shown)),
        (header::CACHE_CONTROL, "private, no-cache".to_string()),
        // Uploaded SVG or HTML-looking content must never run in the API's origin.
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; sandbox".to_string(),
        ),
    ];
    if let Some(prefix) = accel {
        let target = format!(
            "{}/{}",
            prefix.trim_end_matches('/'),
            percent_encode_path(&a.file)
        );
        headers.push((header::HeaderName::from_static("x-accel-redirect"), target));
    }
    for (name, value) in headers {
        let value = HeaderValue::from_str(&value).map_err(|_| ApiError::Internal)?;
        res.headers_mut().insert(name, value);
    }
    res.status_code(StatusCode::OK);
    if let Some(content) = content {
        res.write_body(content).map_err(|_| ApiError::Internal)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Files of deleted records
// ---------------------------------------------------------------------------------------

/// For code deleting allocation requests: the stored files of the attachments the database
/// will cascade away with the requests of `request_ids` (run it in the deleting
/// transaction, before the `DELETE`), to be passed to [`remove_files`] after the commit.
pub async fn stored_files(tx: &mut Tx, request_ids: &[i64]) -> Result<Vec<String>, ApiError> {
    if request_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = Query::select();
    q.column(Alias::new("file"))
        .from(Alias::new("allocations_attachment"))
        .and_where(Expr::col(Alias::new("request_id")).is_in(request_ids.to_vec()))
        .order_by(Alias::new("id"), sea_query::Order::Asc);
    use sea_query_sqlx::SqlxBinder;
    let engine = tx.engine();
    let files: Vec<String> = crate::on_tx!(tx, |conn| {
        let (sql, values) = match engine {
            crate::config::Engine::Postgres => q.build_sqlx(sea_query::PostgresQueryBuilder),
            crate::config::Engine::Sqlite => q.build_sqlx(sea_query::SqliteQueryBuilder),
        };
        sqlx::query_scalar_with(sqlx::AssertSqlSafe(sql), values)
            .fetch_all(conn)
            .await?
    });
    Ok(files)
}

/// Removes a file once no attachment row refers to it any more.
async fn remove_unreferenced(db: &Db, config: &Config, file: &str) -> Result<(), ApiError> {
    let still: i64 = on_db!(db, |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM allocations_attachment WHERE file = $1"
    )
    .bind(file)
    .fetch_one(p)
    .await)?;
    if still == 0 {
        remove_files(db, config, &[file.to_string()]).await;
    }
    Ok(())
}

/// The routes of this resource.
pub fn routes() -> crate::web::route::Routes {
    crate::web::route::Routes::new()
        .push(crate::web::api::collection!(
            "allocations/attachments/",
            list,
            create,
            "Attachment List"
        ))
        .push(crate::web::api::item!(
            "allocations/attachments/{id}/",
            retrieve,
            put,
            patch,
            destroy,
            "Attachment Instance"
        ))
        .push(
            crate::web::api::read_only!(
                "allocations/attachments/{id}/download/",
                download,
                "Attachment Download"
            )
            .unnegotiated(),
        )
        .push(
            crate::web::api::read_only!("media/allocations/{name}/", media, "Attachment Media")
                .unnegotiated(),
        )
}

// ---------------------------------------------------------------------------------------
// Storage (crate::infra::uploads owns the upload directory)
// ---------------------------------------------------------------------------------------

/// Stores an upload; inside a batch it is removed again if the batch rolls back.
async fn store_upload(db: &Db, config: &Config, upload: &Upload) -> Result<String, ApiError> {
    let root = config.upload_dir();
    let temp = upload.temp.clone();
    let ext = upload.ext;
    let file = tokio::task::spawn_blocking(move || UploadDir::open(&root, true)?.store(&temp, ext))
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(|e| {
            tracing::error!("cannot store an attachment: {e}");
            ApiError::Internal
        })?;
    db.remove_on_rollback(&file);
    Ok(file)
}

// ---------------------------------------------------------------------------------------
// Names, types and headers
// ---------------------------------------------------------------------------------------

/// The `filename*` (RFC 5987) or `filename` parameter of a part's Content-Disposition, as
/// multipart parsers read it, before any sanitising.
fn disposition_file_name(header: &[u8]) -> Option<String> {
    let params = disposition_params(header);
    if let Some((_, v)) = params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(b"filename*"))
        && let Some(name) = decode_ext_value(v)
    {
        return Some(name);
    }
    let (_, v) = params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(b"filename"))?;
    let v = v.trim_ascii();
    let raw: Vec<u8> = if let Some(inner) = v.strip_prefix(b"\"") {
        // Only `\"` is an escape: browsers send Windows paths with raw backslashes.
        let mut out = Vec::new();
        let mut i = 0;
        while i < inner.len() {
            match inner[i] {
                b'\\' if inner.get(i + 1) == Some(&b'"') => {
                    out.push(b'"');
                    i += 2;
                }
                b'"' => break,
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        out
    } else {
        v.to_vec()
    };
    // Legacy percent-encoding in `filename` is decoded when it yields UTF-8.
    let decoded = percent_decode_strict(&raw)
        .filter(|d| std::str::from_utf8(d).is_ok())
        .map(Cow::into_owned)
        .unwrap_or(raw);
    Some(String::from_utf8_lossy(&decoded).into_owned())
}

/// `key=value` parameters after the disposition type; `;` inside quotes is part of a value.
fn disposition_params(header: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut out = Vec::new();
    let mut rest = match header.iter().position(|b| *b == b';') {
        Some(i) => &header[i + 1..],
        None => return out,
    };
    while !rest.is_empty() {
        let (mut quoted, mut escaped) = (false, false);
        let end = rest
            .iter()
            .position(|&b| {
                if escaped {
                    escaped = false;
                } else if quoted && b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    quoted = !quoted;
                } else if !quoted && b == b';' {
                    return true;
                }
                false
            })
            .unwrap_or(rest.len());
        let param = rest[..end].trim_ascii();
        rest = rest.get(end + 1..).unwrap_or_default();
        if let Some(eq) = param.iter().position(|b| *b == b'=') {
            out.push((param[..eq].trim_ascii(), param[eq + 1..].trim_ascii()));
        }
    }
    out
}

/// RFC 5987 `charset'lang'pct-encoded` (UTF-8 or ISO-8859-1).
fn decode_ext_value(v: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(v.trim_ascii()).ok()?;
    let mut parts = text.splitn(3, '\'');
    let charset = parts.next()?;
    let _lang = parts.next()?;
    let bytes = percent_decode_strict(parts.next()?.as_bytes())?;
    if charset.eq_ignore_ascii_case("utf-8") {
        String::from_utf8(bytes.into_owned()).ok()
    } else if charset.eq_ignore_ascii_case("iso-8859-1") {
        Some(bytes.iter().map(|b| char::from(*b)).collect())
    } else {
        None
    }
}

/// Upstream's (Django's) reading of a client file name: the part after the last `/` or
/// `\`, without control and invisible formatting characters; `None` for nothing usable.
pub fn client_base_name(raw: &str) -> Option<String> {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let kept: String = last
        .chars()
        .filter(|c| {
            !c.is_control()
                && !matches!(
                    *c,
                    '\u{200B}'..='\u{200F}'
                        | '\u{202A}'..='\u{202E}'
                        | '\u{2060}'..='\u{2069}'
                        | '\u{2028}'
                        | '\u{2029}'
                        | '\u{FEFF}'
                )
        })
        .collect();
    let name = kept.trim();
    if name.is_empty() || name == "." || name == ".." {
        None
    } else {
        Some(name.to_string())
    }
}

/// Shortens a display name to `max` characters, keeping a short extension.
fn fit_name(name: &str, max: usize) -> String {
    let count = name.chars().count();
    if count <= max {
        return name.to_string();
    }
    let ext = name
        .rfind('.')
        .map(|i| &name[i..])
        .filter(|e| e.chars().count() <= 16)
        .unwrap_or("");
    let keep = max - ext.chars().count();
    let stem: String = name.chars().take(keep).collect();
    format!("{stem}{ext}")
}

/// Python's `splitext` extension without the dot (leading dots of the name do not count).
fn extension(name: &str) -> Option<&str> {
    let base = name.rsplit('/').next().unwrap_or(name);
    let (_, ext) = base.trim_start_matches('.').rsplit_once('.')?;
    (!ext.is_empty()).then_some(ext)
}

/// The MIME type of a file name from its extension (domain.md §7.6), with the extension
/// as stored. Content is never sniffed.
pub fn mime_for(name: &str) -> Option<(&'static str, &'static str)> {
    let ext = extension(name)?.to_lowercase();
    MIME_TYPES.iter().find(|(e, _)| *e == ext).copied()
}

/// Extension table: upstream's allow-listed types exactly as the reference container
/// resolves them (plus `md`/`markdown`), and common types that are not allow-listed by
/// default (so they are named in the error and can be allowed in `upload.allowed_types`).
/// Compression suffixes (`.gz`, `.bz2`, `.xz`, `.Z`, `.br`) are deliberately unknown:
/// `report.pdf.gz` is refused instead of being taken for a PDF.
const MIME_TYPES: &[(&str, &str)] = &[
    ("pdf", "application/pdf"),
    ("rtf", "application/rtf"),
    ("doc", "application/msword"),
    ("dot", "application/msword"),
    ("wiz", "application/msword"),
    (
        "docx",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ),
    ("odt", "application/vnd.oasis.opendocument.text"),
    ("latex", "application/x-latex"),
    ("tex", "application/x-tex"),
    ("xls", "application/vnd.ms-excel"),
    ("xla", "application/vnd.ms-excel"),
    ("xlb", "application/vnd.ms-excel"),
    ("xlc", "application/vnd.ms-excel"),
    ("xlm", "application/vnd.ms-excel"),
    ("xlt", "application/vnd.ms-excel"),
    ("xlw", "application/vnd.ms-excel"),
    (
        "xlsx",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ),
    ("ods", "application/vnd.oasis.opendocument.spreadsheet"),
    ("ppt", "application/vnd.ms-powerpoint"),
    ("pot", "application/vnd.ms-powerpoint"),
    ("ppa", "application/vnd.ms-powerpoint"),
    ("pps", "application/vnd.ms-powerpoint"),
    ("pwz", "application/vnd.ms-powerpoint"),
    (
        "pptx",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ),
    ("txt", "text/plain"),
    ("text", "text/plain"),
    ("conf", "text/plain"),
    ("def", "text/plain"),
    ("in", "text/plain"),
    ("ksh", "text/plain"),
    ("list", "text/plain"),
    ("log", "text/plain"),
    ("pl", "text/plain"),
    ("md", "text/markdown"),
    ("markdown", "text/markdown"),
    ("rtx", "text/richtext"),
    ("csv", "text/csv"),
    ("png", "image/png"),
    ("jpg", "image/jpeg"),
    ("jpeg", "image/jpeg"),
    ("jpe", "image/jpeg"),
    ("gif", "image/gif"),
    ("svg", "image/svg+xml"),
    ("svgz", "image/svg+xml"),
    ("tif", "image/tiff"),
    ("tiff", "image/tiff"),
    ("bmp", "image/bmp"),
    // Known, not allow-listed by default.
    ("exe", "application/x-msdownload"),
    ("dll", "application/x-msdownload"),
    ("com", "application/x-msdownload"),
    ("bat", "application/x-msdownload"),
    ("msi", "application/x-msdownload"),
    ("zip", "application/zip"),
    ("tar", "application/x-tar"),
    ("7z", "application/x-7z-compressed"),
    ("rar", "application/x-rar-compressed"),
    ("jar", "application/java-archive"),
    ("apk", "application/vnd.android.package-archive"),
    ("iso", "application/x-iso9660-image"),
    ("dmg", "application/x-apple-diskimage"),
    ("bin", "application/octet-stream"),
    ("json", "application/json"),
    ("xml", "application/xml"),
    ("yaml", "application/yaml"),
    ("yml", "application/yaml"),
    ("toml", "application/toml"),
    ("sql", "application/sql"),
    ("html", "text/html"),
    ("htm", "text/html"),
    ("xhtml", "application/xhtml+xml"),
    ("css", "text/css"),
    ("js", "application/javascript"),
    ("mjs", "application/javascript"),
    ("wasm", "application/wasm"),
    ("sh", "application/x-sh"),
    ("csh", "application/x-csh"),
    ("py", "text/x-python"),
    ("c", "text/x-c"),
    ("h", "text/x-c"),
    ("cpp", "text/x-c"),
    ("java", "text/x-java-source"),
    ("php", "application/x-httpd-php"),
    ("tsv", "text/tab-separated-values"),
    ("ics", "text/calendar"),
    ("vcf", "text/x-vcard"),
    ("srt", "application/x-subrip"),
    ("eps", "application/postscript"),
    ("ps", "application/postscript"),
    ("ai", "application/postscript"),
    ("epub", "application/epub+zip"),
    ("odp", "application/vnd.oasis.opendocument.presentation"),
    ("odg", "application/vnd.oasis.opendocument.graphics"),
    ("swf", "application/x-shockwave-flash"),
    ("webp", "image/webp"),
    ("ico", "image/x-icon"),
    ("heic", "image/heic"),
    ("psd", "image/vnd.adobe.photoshop"),
    ("mp3", "audio/mpeg"),
    ("wav", "audio/x-wav"),
    ("ogg", "audio/ogg"),
    ("flac", "audio/flac"),
    ("m4a", "audio/mp4"),
    ("mp4", "video/mp4"),
    ("mpg", "video/mpeg"),
    ("mpeg", "video/mpeg"),
    ("mov", "video/quicktime"),
    ("avi", "video/x-msvideo"),
    ("mkv", "video/x-matroska"),
    ("webm", "video/webm"),
    ("woff", "font/woff"),
    ("woff2", "font/woff2"),
    ("ttf", "font/ttf"),
    ("otf", "font/otf"),
];

/// `attachment` with an ASCII `filename` fallback and the exact name as RFC 5987
/// `filename*` (RFC 6266 §4.3).
pub fn content_disposition(name: &str) -> String {
    let fallback: String = name
        .chars()
        .map(|c| {
            if (c.is_ascii_graphic() || c == ' ') && !matches!(c, '"' | '\\' | '%') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded = utf8_percent_encode(name, NOT_ATTR_CHAR);
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

/// Bytes outside RFC 5987's attr-char, percent-encoded in `filename*`.
const NOT_ATTR_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// Bytes other than unreserved characters and `/`, percent-encoded in X-Accel-Redirect.
const NOT_UNRESERVED_OR_SLASH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// Percent-encodes everything but unreserved characters and `/` (for X-Accel-Redirect).
fn percent_encode_path(path: &str) -> String {
    utf8_percent_encode(path, NOT_UNRESERVED_OR_SLASH).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_names_become_base_names() {
        assert_eq!(client_base_name("../x.txt").as_deref(), Some("x.txt"));
        assert_eq!(client_base_name("/etc/passwd").as_deref(), Some("passwd"));
        assert_eq!(
            client_base_name("C:\\Users\\ann\\report.pdf").as_deref(),
            Some("report.pdf")
        );
        assert_eq!(
            client_base_name("a\0b\u{202E}.txt").as_deref(),
            Some("ab.txt")
        );
        assert_eq!(client_base_name("dir/.."), None);
        assert_eq!(client_base_name("../"), None);
        assert_eq!(client_base_name(" . "), None);
    }

    #[test]
    fn disposition_names_are_read_like_multipart_parsers() {
        let h = br#"form-data; name="file"; filename="C:\dir\a; b.txt""#;
        assert_eq!(
            disposition_file_name(h).as_deref(),
            Some("C:\\dir\\a; b.txt")
        );
        let h = b"form-data; name=\"file\"; filename=\"x.txt\"; filename*=UTF-8''%C3%A9t%C3%A9.txt";
        assert_eq!(disposition_file_name(h).as_deref(), Some("été.txt"));
        let h = br#"form-data; name="file"; filename="say \"hi\".txt""#;
        assert_eq!(disposition_file_name(h).as_deref(), Some("say \"hi\".txt"));
        let h = br#"form-data; name="file"; filename="..%2F..%2Fx.txt""#;
        assert_eq!(disposition_file_name(h).as_deref(), Some("../../x.txt"));
        assert_eq!(disposition_file_name(br#"form-data; name="file""#), None);
    }

    #[test]
    fn types_come_from_the_extension_only() {
        assert_eq!(mime_for("a.PDF"), Some(("pdf", "application/pdf")));
        assert_eq!(mime_for("notes.md").map(|m| m.1), Some("text/markdown"));
        assert_eq!(
            mime_for("x.exe").map(|m| m.1),
            Some("application/x-msdownload")
        );
        assert_eq!(mime_for("report.pdf.gz"), None);
        assert_eq!(mime_for(".txt"), None);
        assert_eq!(mime_for("noext"), None);
        assert_eq!(mime_for("a."), None);
        assert_eq!(mime_for("allocations/abc.svgz").map(|m| m.0), Some("svgz"));
    }

    #[test]
    fn size_message_prints_mib_with_two_decimals() {
        assert_eq!(
            size_message(2_621_440),
            "File size should not exceed 2.50 MB."
        );
        assert_eq!(size_message(1024), "File size should not exceed 0.00 MB.");
        assert_eq!(
            size_message(10 * 1_048_576),
            "File size should not exceed 10.00 MB."
        );
    }

    #[test]
    fn long_names_keep_their_extension() {
        let long = format!("{}.txt", "a".repeat(5000));
        let fitted = fit_name(&long, 250);
        assert_eq!(fitted.chars().count(), 250);
        assert!(fitted.ends_with(".txt"));
        assert_eq!(fit_name("short.txt", 250), "short.txt");
    }

    #[test]
    fn accel_paths_encode_all_but_unreserved_and_slash() {
        assert_eq!(
            percent_encode_path("allocations/a b%é~_-.txt"),
            "allocations/a%20b%25%C3%A9~_-.txt"
        );
        assert_eq!(percent_encode_path("x?y#z"), "x%3Fy%23z");
    }

    #[test]
    fn content_disposition_is_rfc_6266() {
        assert_eq!(
            content_disposition("a b.txt"),
            "attachment; filename=\"a b.txt\"; filename*=UTF-8''a%20b.txt"
        );
        assert_eq!(
            content_disposition("é\"\\.pdf"),
            "attachment; filename=\"___.pdf\"; filename*=UTF-8''%C3%A9%22%5C.pdf"
        );
    }
}
