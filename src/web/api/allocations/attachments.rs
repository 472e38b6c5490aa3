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

use super::shared::{self, AllocationRequestSummaryDoc, REQUESTS};
use crate::config::Config;
use crate::domain::validation::{Text, Validator};
use crate::infra::uploads::{self, SUBDIR};
use crate::store::audit::Action;
use crate::store::{Db, Tx};
use crate::web::api::body::{self, Body, FileField};
use crate::web::api::list::{Column, Kind, ListSpec, search, search_via};
use crate::web::api::resource::{self, Docs, Field, Policy, Resource, Val};
use crate::web::api::summaries::{self, AuditLogSummaryDoc, render_datetime};
use crate::web::api::{Caller, context, path_id};
use crate::web::files::send_stored;
use crate::web::{ApiError, AppState};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use salvo::oapi::ToSchema;
use salvo::prelude::*;
use sea_query::{Alias, Expr, ExprTrait, SelectStatement};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;

pub const CONTENT_TYPE: &str = "allocations | Attachment";
const MODEL: &str = "Attachment";
/// `Attachment.name` is a varchar(250).
const NAME_MAX: usize = 250;

const FIELDS: [Field<AttachmentRow>; 5] = [
    Field::id(|a| Val::Int(a.id)),
    Field::new("file", Kind::Text, |a| Val::Text(a.file.clone())),
    Field::new("name", Kind::Text, |a| Val::Text(a.name.clone())),
    Field::new("uploaded", Kind::DateTime, |a: &AttachmentRow| {
        Val::DateTime(a.uploaded)
    }),
    Field::new("request", Kind::Fk(REQUESTS), |a| Val::Int(a.request_id)),
];
const COLUMNS: &[Column] = &resource::columns(&FIELDS);

pub const SPEC: ListSpec = ListSpec {
    table: "allocations_attachment",
    // Every column but the stored file name.
    filters: &[COLUMNS[0], COLUMNS[2], COLUMNS[3], COLUMNS[4]],
    order: COLUMNS,
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

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttachmentRow {
    pub id: i64,
    pub file: String,
    pub name: String,
    pub uploaded: DateTime<Utc>,
    pub request_id: i64,
}

// An attachment as the API renders and documents it (a doc comment here would become the
// schema's description).
#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "Attachment"))]
pub struct Attachment {
    pub id: i64,
    /// Storage path relative to the upload directory (`allocations/<name>`).
    pub file: String,
    pub name: String,
    #[salvo(schema(value_type = AllocationRequestSummaryDoc))]
    pub _request: Option<crate::web::api::summaries::Embedded>,
    #[salvo(schema(value_type = Vec<AuditLogSummaryDoc>))]
    pub _history: Vec<crate::web::api::summaries::AuditLogSummaryDoc>,
    pub uploaded: String,
    pub request: i64,
}

// ---------------------------------------------------------------------------------------
// The uploaded file
// ---------------------------------------------------------------------------------------

/// What `read_input` leaves for validation: the `file` field, and the settings it is
/// checked against.
struct Input {
    file: FileField,
    config: Arc<Config>,
}

/// A validated upload, ready to be stored.
pub struct Upload {
    name: String,
    temp: PathBuf,
    ext: &'static str,
}

/// DRF's FileField checks, then upstream's `validate_file` (size, type resolution, allow-list).
fn check_file(
    v: &mut Validator,
    input: FileField,
    required: bool,
    config: &Config,
) -> Option<Upload> {
    const FIELD: &str = "file";
    match input {
        // Django drops parts whose name sanitises to nothing, so they count as absent.
        FileField::Absent | FileField::Nameless => {
            if required {
                v.error(FIELD, "No file was submitted.");
            }
            None
        }
        FileField::Null => {
            v.error(FIELD, crate::domain::validation::NOT_NULL);
            None
        }
        FileField::NotAFile => {
            v.error(
                FIELD,
                "The submitted data was not a file. Check the encoding type on the form.",
            );
            None
        }
        FileField::Part { name, temp, size } => {
            let limits = &config.settings.upload;
            if size == 0 {
                v.error(FIELD, "The submitted file is empty.");
                return None;
            }
            if size > limits.max_size {
                v.error(FIELD, size_message(limits.max_size));
                return None;
            }
            let Some((ext, mime)) = uploads::mime_for(&name) else {
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
                name: uploads::fit_name(&name, NAME_MAX),
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

/// Validates a body against the stored attachment (`current`, None on create): the new row
/// (its `file` still the stored one, or empty) and the upload that `store` writes.
async fn validate(
    db: &Db,
    body: &Body,
    partial: bool,
    current: Option<&AttachmentRow>,
) -> Result<(AttachmentRow, Option<Upload>), ApiError> {
    body.require_object()?;
    let input = body.input::<Input>().ok_or(ApiError::Internal)?;
    let mut v = Validator::new(&body.fields, partial);
    let upload = check_file(&mut v, input.file.clone(), !partial, &input.config);
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
        && shared::request_team(db, r).await?.is_none()
    {
        v.error("request", shared::invalid_pk(r));
    }
    v.finish()?;
    let row = match current {
        // An omitted name keeps the stored one, also when a new file replaces the old.
        Some(c) => AttachmentRow {
            id: c.id,
            file: c.file.clone(),
            name: name.unwrap_or_else(|| c.name.clone()),
            uploaded: shared::now(),
            request_id: request.unwrap_or(c.request_id),
        },
        None => {
            let (Some(upload), Some(request_id)) = (&upload, request) else {
                return Err(ApiError::Internal);
            };
            AttachmentRow {
                id: 0,
                file: String::new(),
                name: name.unwrap_or_else(|| upload.name.clone()),
                uploaded: shared::now(),
                request_id,
            }
        }
    };
    Ok((row, upload))
}

// ---------------------------------------------------------------------------------------
// The resource
// ---------------------------------------------------------------------------------------

/// The attachment resource.
pub struct Attachments;

crate::document_resource!(Attachments);

impl Resource for Attachments {
    type Row = AttachmentRow;
    type Repr = Attachment;
    type Extra = Option<Upload>;

    const PATH: &'static str = "allocations/attachments/";
    const TABLE: &'static str = "allocations_attachment";
    const CONTENT_TYPE: &'static str = CONTENT_TYPE;
    const MODEL: &'static str = MODEL;
    const FIELDS: &'static [Field<AttachmentRow>] = &FIELDS;
    const SPEC: ListSpec = SPEC;
    /// Members of the request's team read; admins and owners create (`check_body`); staff
    /// change and delete, once the record is found (404 before 403).
    const POLICY: Policy = Policy::STAFF_CHANGES;
    const DOCS: Docs = Docs {
        tag: "Allocations - Request Attachments",
        id: "A unique integer value identifying this attachment.",
        list_name: "Attachment List",
        item_name: "Attachment Instance",
        list: (
            "List file attachments.",
            "Returns a list of file attachments. Non-staff users are only returned \
             attachments belonging to teams where they hold membership. Staff users are \
             returned all attachments.",
        ),
        retrieve: (
            "Retrieve a file attachment.",
            "Returns a single file attachment by ID. Read access is granted to staff users \
             and team members.",
        ),
        create: (
            "Create a file attachment.",
            "Creates a new file attachment on an allocation request (multipart upload, field \
             `file`). Write access is granted to staff users and team administrators.",
        ),
        update: (
            "Update a file attachment.",
            "Replaces an existing file attachment with new values (multipart; `file` and \
             `request` required). Write access is restricted to staff users.",
        ),
        partial_update: (
            "Partially update a file attachment.",
            "Partially updates an existing file attachment with new values. Write access is \
             restricted to staff users.",
        ),
        destroy: (
            "Delete a file attachment.",
            "Deletes a file attachment by ID, and its stored file. Write access is \
             restricted to staff users.",
        ),
    };

    crate::record_id!();

    async fn repr(_tx: &mut Tx, a: &AttachmentRow) -> Result<String, ApiError> {
        Ok(format!(
            "Attachment #{} - '{}' on request #{}",
            a.id, a.name, a.request_id
        ))
    }

    async fn validate(
        db: &Db,
        _caller: &Caller,
        body: &Body,
        partial: bool,
        current: Option<&AttachmentRow>,
    ) -> Result<(AttachmentRow, Option<Upload>), ApiError> {
        validate(db, body, partial, current).await
    }

    /// Representations of a page: request summaries and history in three queries whatever
    /// the page size.
    async fn represent(
        db: &Db,
        tz: Tz,
        rows: &[AttachmentRow],
    ) -> Result<Vec<Attachment>, ApiError> {
        let ids: Vec<i64> = rows.iter().map(|a| a.id).collect();
        let request_ids: Vec<i64> = rows.iter().map(|a| a.request_id).collect();
        let requests = shared::summaries_by_id(db, &request_ids).await?;
        let mut history = summaries::history(db, tz, CONTENT_TYPE, &ids).await?;
        Ok(rows
            .iter()
            .map(|a| Attachment {
                id: a.id,
                file: a.file.clone(),
                name: a.name.clone(),
                _request: requests.get(&a.request_id).cloned(),
                _history: history.remove(&a.id).unwrap_or_default(),
                uploaded: render_datetime(&a.uploaded, tz),
                request: a.request_id,
            })
            .collect())
    }

    fn scope(q: &mut SelectStatement, caller: &Caller) {
        shared::scope_via_request(q, caller, "request_id")
    }

    /// Read access: staff, or a member of the request's team (403).
    async fn check_record(db: &Db, caller: &Caller, row: &AttachmentRow) -> Result<(), ApiError> {
        ApiError::forbidden_unless(super::sees_request(db, caller, row.request_id).await?)
    }

    /// View-level rule of a create: a non-staff caller must be an admin or owner of the body
    /// request's team; a missing, garbled or unknown request is 403 too.
    async fn check_body(
        db: &Db,
        caller: &Caller,
        body: &Body,
        action: Action,
    ) -> Result<(), ApiError> {
        if action != Action::Create || caller.is_staff() {
            return Ok(());
        }
        let Some(team) = shared::body_request_team(db, body).await? else {
            return Err(ApiError::forbidden());
        };
        ApiError::forbidden_unless(crate::store::teams::is_privileged(db, caller.id(), team).await?)
    }

    /// The `file` field, its name as the part's own header gives it.
    async fn read_input(
        req: &mut Request,
        app: &AppState,
        body: &mut Body,
    ) -> Result<(), ApiError> {
        let file = body::file_field(req, body, "file").await;
        body.input = Some(Arc::new(Input {
            file,
            config: app.config.clone(),
        }));
        Ok(())
    }

    /// Stores a validated upload under a new name; the row refers to it.
    async fn store(
        app: &AppState,
        row: &mut AttachmentRow,
        upload: &Option<Upload>,
    ) -> Result<Vec<String>, ApiError> {
        let Some(upload) = upload else {
            return Ok(Vec::new());
        };
        let file = uploads::store_upload(&app.db, &app.config, &upload.temp, upload.ext)
            .await
            .map_err(|e| {
                tracing::error!("cannot store an attachment: {e}");
                ApiError::Internal
            })?;
        row.file = file.clone();
        Ok(vec![file])
    }

    /// A replaced or deleted file goes with the last record that referred to it.
    async fn after_commit(
        app: &AppState,
        before: Option<&AttachmentRow>,
        after: Option<&AttachmentRow>,
    ) -> Result<(), ApiError> {
        match before {
            Some(b) if after.is_none_or(|a| a.file != b.file) => {
                Ok(uploads::remove_unreferenced(&app.db, &app.config, &b.file).await?)
            }
            _ => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Downloads
// ---------------------------------------------------------------------------------------

/// An existing attachment the caller may read: 404 when missing, 403 for other teams.
async fn readable(db: &Db, caller: &Caller, id: i64) -> Result<AttachmentRow, ApiError> {
    let a = resource::found::<Attachments>(db, id).await?;
    Attachments::check_record(db, caller, &a).await?;
    Ok(a)
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
        send_stored(&app.config, &a.file, &a.name, res).await
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
        let mut q = resource::select::<Attachments>(app.db.engine());
        q.and_where(Expr::col(Alias::new("file")).eq(format!("{SUBDIR}/{name}")))
            .order_by(Alias::new("id"), sea_query::Order::Asc)
            .limit(1);
        let rows: Vec<AttachmentRow> = crate::store::fetch_all(&app.db, &q).await?;
        let a = rows.into_iter().next().ok_or_else(ApiError::not_found)?;
        Attachments::check_record(&app.db, &caller, &a).await?;
        send_stored(&app.config, &a.file, &a.name, res).await
    }
    .await;
    if let Err(e) = result {
        e.render(res);
    }
}

/// The download routes beside the resource's own.
pub fn download_routes() -> crate::web::route::Routes {
    crate::web::route::Routes::new()
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
