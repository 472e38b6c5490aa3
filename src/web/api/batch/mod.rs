//! `/batch/` (domain.md §12): several API operations, in order, as one all-or-nothing unit.
//!
//! Each step is an internal request dispatched to the full route table with the batch
//! caller's identity. All steps share one database transaction (`Db::pin`): a step sees the
//! writes of the steps before it, and the job commits or rolls back as a whole. A nested
//! `/batch/` step runs inside the outer transaction under a savepoint. Every request is
//! bounded by the `[batch]` settings (see `limits`).

mod job;
mod limits;
#[cfg(test)]
mod proptests;
mod tokens;

use crate::store::Db;
use crate::web::access::{Cid, Delegated};
use crate::web::api::context;
use crate::web::{ApiError, AppState, InjectState};
use job::{Job, Step};
use limits::{Limits, Scope};
use salvo::http::header::{self, HeaderName, HeaderValue};
use salvo::http::{Method, ReqBody, ResBody, StatusCode};
use salvo::prelude::*;
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use tokens::{Failure, ResolveError, Resolved};

/// Headers of the batch request that steps inherit, so that links, client addresses and
/// audit entries read as they would for the batch request itself.
const INHERITED: [&str; 5] = [
    "host",
    "x-forwarded-for",
    "x-forwarded-port",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// Savepoint of a nested batch (savepoints stack, so one name serves every depth).
const SAVEPOINT: &str = "SAVEPOINT keystone_batch";
const ROLLBACK_SAVEPOINT: &str = "ROLLBACK TO SAVEPOINT keystone_batch";
const RELEASE_SAVEPOINT: &str = "RELEASE SAVEPOINT keystone_batch";

/// The outcome of one step, as reported in `results` (§12.3 step 5).
#[derive(Debug, Clone, Serialize)]
struct StepResult {
    #[serde(rename = "ref")]
    reference: String,
    index: usize,
    method: String,
    path: String,
    status: u16,
    body: Value,
}

/// Why a job stopped.
enum Stop {
    /// A step answered 4xx: 422 with the step's details.
    Step(StepResult),
    /// A token could not be resolved: 422 naming it.
    Reference(ResolveError),
    /// A step answered 5xx, or the transaction failed: 500.
    Internal,
    /// A `[batch]` limit was reached, here or in a nested job: 400 with this body.
    Limit(Value),
    /// The request ran past `batch.time_limit`: 422 with this body.
    Timeout(Value),
}

/// The request body and uploaded parts of the batch request.
struct Upload {
    job: Job,
    files: Vec<tokens::FilePart>,
}

/// The media types a job may come in, as the OpenAPI document lists them.
pub const MEDIA_TYPES: [&str; 2] = ["multipart/form-data", "application/json"];

/// Reads and validates the job (§12.1): JSON or multipart only, `job` as an object or a
/// JSON string.
async fn read_job(req: &mut Request, max_steps: usize) -> Result<Upload, job::Invalid> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(ct) = &content_type {
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !essence.is_empty() && !MEDIA_TYPES.contains(&essence.as_str()) {
            return Err(ApiError::UnsupportedMediaType(ct.clone()).into());
        }
    }
    let body = super::body::read(req).await?;
    let mut files = Vec::new();
    for (field, name, path, _) in &body.files {
        files.push(tokens::FilePart {
            field: field.clone(),
            name: name.clone().unwrap_or_else(|| field.clone()),
            path: path.clone(),
        });
    }
    let raw = if body.not_object.is_some() {
        Value::Null
    } else {
        body.fields.get("job").cloned().unwrap_or(Value::Null)
    };
    let value = match raw {
        Value::String(text) => serde_json::from_str::<Value>(&text)
            .map_err(|_| ApiError::BadRequest("The `job` field is not valid JSON.".to_string()))?,
        // A form part repeated: the last one counts, as with Django's QueryDict.
        Value::Array(parts) if body.form => match parts.last() {
            Some(Value::String(text)) => serde_json::from_str::<Value>(text).map_err(|_| {
                ApiError::BadRequest("The `job` field is not valid JSON.".to_string())
            })?,
            _ => Value::Null,
        },
        other => other,
    };
    let job = job::parse(&value, max_steps)?;
    Ok(Upload { job, files })
}

/// Execute a batch job.
///
/// Executes multiple HTTP operations sequentially within a single atomic transaction. If any
/// step returns a 4xx or 5xx status, the job halts and all changes are rolled back. Steps may
/// reference the response body of previous steps using @ref{alias.dotpath} tokens. File parts
/// uploaded alongside the job definition may be referenced in step payloads using
/// @file{name} tokens, where `name` is the multipart field name. When `dry_run` is true, all
/// steps execute but no database changes are persisted.
#[endpoint(
    operation_id = "batch_create",
    tags("Utils - Batch Processing"),
    request_body = job::JobRequestRequestDoc,
    responses(
        (status_code = 200, description = "", body = job::JobResultDoc),
        (status_code = 422, description = "", body = job::JobExecutionErrorDoc)
    )
)]
pub async fn create(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let (app, caller) = match context(depot) {
        Ok(v) => v,
        Err(e) => return e.render(res),
    };
    // A job dispatched by a step of another job runs in that job's scope, one level down.
    let enclosing = depot.get_typed::<Scope>().ok().cloned();
    if let Some(scope) = &enclosing
        && scope.too_deep()
    {
        let body = limits::too_deep(scope.limits().max_depth);
        scope.abort(body.clone());
        res.status_code(StatusCode::BAD_REQUEST);
        return res.render(Json(body));
    }
    let max_steps = match &enclosing {
        Some(scope) => scope.limits().max_steps,
        None => Limits::of(&app.config).max_steps,
    };
    let upload = match read_job(req, max_steps).await {
        Ok(upload) => upload,
        Err(invalid) => {
            if invalid.over_limit
                && let Some(scope) = &enclosing
            {
                scope.abort(invalid.error.body());
            }
            return invalid.error.render(res);
        }
    };
    // The clock of an outermost job starts once its request has been read.
    let scope = enclosing.unwrap_or_else(|| Scope::outermost(Limits::of(&app.config)));
    let cid = depot
        .get_typed::<Cid>()
        .cloned()
        .unwrap_or_else(|_| Cid(crate::web::access::correlation_id(req)));
    let nested = app.db.is_pinned();
    let db = match app.db.pin().await {
        Ok(db) => db,
        Err(e) => return ApiError::from(e).render(res),
    };
    if nested && let Err(e) = db.execute_raw(SAVEPOINT).await {
        return ApiError::from(e).render(res);
    }
    let mut state = (*app).clone();
    state.db = db.clone();
    // Sessions the steps end or change are invalidated once the job is kept (below).
    let step_sessions = Arc::new(app.sessions.on(db.clone()));
    state.sessions = step_sessions.clone();
    let runner = Runner {
        service: step_service(Arc::new(state), Delegated(caller), cid, scope.nested()),
        outer: req,
        files: &upload.files,
        scope: &scope,
        db: &db,
    };
    let result = runner.run(&upload.job.steps).await;
    drop(runner);
    // The steps' invalidations, taken now: nothing may still hold the transaction at its end.
    let held = step_sessions.take_deferred();
    drop(step_sessions);
    let keep = result.is_ok() && !upload.job.dry_run;
    let ended = if nested {
        end_nested(&db, keep).await
    } else {
        if keep {
            // The commit itself must not be cut short by the job's statement deadline.
            statement_deadline(&db, None).await;
        }
        match db.finish(keep).await {
            Ok(orphans) => {
                crate::infra::uploads::remove_stored(&app.config, &orphans).await;
                Ok(())
            }
            Err(e) => Err(e),
        }
    };
    if let Err(e) = ended {
        tracing::error!("batch transaction could not be completed: {e}");
        return ApiError::Internal.render(res);
    }
    if keep {
        // Committed (or, nested, kept in the enclosing job, which takes them over).
        for target in held {
            app.sessions.invalidate(target).await;
        }
    }
    match result {
        Ok(results) => {
            res.status_code(StatusCode::OK);
            res.render(Json(json!({ "results": results })));
        }
        Err(Stop::Step(step)) => {
            res.status_code(StatusCode::UNPROCESSABLE_ENTITY);
            res.render(Json(json!({
                "detail": format!(
                    "Step #{} ({} {}) failed with status {}",
                    step.index, step.method, step.path, step.status
                ),
                "step": step.index,
                "status": step.status,
                "body": step.body,
            })));
        }
        Err(Stop::Reference(e)) => {
            res.status_code(StatusCode::UNPROCESSABLE_ENTITY);
            res.render(Json(json!({
                "detail": format!("Cannot resolve reference \"{}\": {}", e.token, e.reason),
                "token": e.token,
            })));
        }
        Err(Stop::Limit(body)) => {
            scope.abort(body.clone());
            res.status_code(StatusCode::BAD_REQUEST);
            res.render(Json(body));
        }
        Err(Stop::Timeout(body)) => {
            res.status_code(StatusCode::UNPROCESSABLE_ENTITY);
            res.render(Json(body));
        }
        Err(Stop::Internal) => ApiError::Internal.render(res),
    }
}

/// On PostgreSQL, bounds every statement of the job's transaction by the time left (a step
/// waiting on a lock gives up at the deadline instead of holding its pooled connection);
/// `None` lifts the bound. SQLite statements of a job never wait: it holds the write lock.
async fn statement_deadline(db: &Db, left: Option<std::time::Duration>) {
    if let Db::PostgresPinned(pinned) = db {
        // Rounded up, so a statement is cut off only once the deadline has passed.
        let ms = left.map_or(0, |d| (d.as_millis() + 1).min(i32::MAX as u128));
        let mut tx = pinned.tx.lock().await;
        let set = sqlx::query("SELECT set_config('statement_timeout', $1, true)")
            .bind(ms.to_string())
            .execute(&mut **tx)
            .await;
        if let Err(e) = set {
            tracing::warn!("batch: cannot set the statement deadline: {e}");
        }
    }
}

/// Ends a nested batch's savepoint: kept (released into the outer transaction) or undone.
async fn end_nested(db: &Db, keep: bool) -> Result<(), crate::store::DbError> {
    if !keep {
        db.execute_raw(ROLLBACK_SAVEPOINT).await?;
    }
    db.execute_raw(RELEASE_SAVEPOINT).await
}

/// The service steps are dispatched to: every route, with the job's state and caller, and
/// none of the outer middleware (no redirects, no request logging, no CORS).
fn step_service(state: Arc<AppState>, caller: Delegated, cid: Cid, scope: Scope) -> Service {
    // The route table is built once per process, not once per job.
    static ROUTER: std::sync::OnceLock<Arc<Router>> = std::sync::OnceLock::new();
    let router = ROUTER.get_or_init(|| Arc::new(crate::web::router()));
    Service::new(router.clone())
        .hoop(InjectState(state))
        .hoop(StepIdentity { caller, cid, scope })
        .catcher(salvo::catcher::Catcher::default().hoop(step_errors))
}

/// Puts the batch caller, correlation id and job scope in each step's depot.
struct StepIdentity {
    caller: Delegated,
    cid: Cid,
    scope: Scope,
}

#[handler]
impl StepIdentity {
    async fn handle(&self, depot: &mut Depot) {
        depot.insert_typed(self.caller.clone());
        depot.insert_typed(self.cid.clone());
        depot.insert_typed(self.scope.clone());
    }
}

/// Framework errors of a step: an unknown path is `No route matched: <path>` (§12.3 step 3).
#[handler]
async fn step_errors(req: &Request, res: &mut Response, ctrl: &mut FlowCtrl) {
    if res.status_code.unwrap_or(StatusCode::NOT_FOUND) == StatusCode::NOT_FOUND {
        ApiError::NotFound(format!("No route matched: {}", req.uri().path())).render(res);
        ctrl.skip_rest();
        return;
    }
    crate::web::render_framework_error(req, res);
    ctrl.skip_rest();
}

/// Runs the steps of one job against the step service.
struct Runner<'a> {
    service: Service,
    outer: &'a Request,
    files: &'a [tokens::FilePart],
    scope: &'a Scope,
    db: &'a Db,
}

impl Runner<'_> {
    async fn run(&self, steps: &[Step]) -> Result<Vec<StepResult>, Stop> {
        let mut results: Vec<StepResult> = Vec::with_capacity(steps.len());
        let mut bodies: Map<String, Value> = Map::new();
        let max_body = self.scope.limits().max_body;
        for (i, step) in steps.iter().enumerate() {
            let index = i + 1;
            let mut meter = self.scope.meter();
            let before = meter.clone();
            let resolved = self.resolve(step, &bodies, &mut meter);
            self.scope.spent(&before, &meter);
            let (path, payload, files) = resolved.map_err(|failure| match failure {
                Failure::Unresolved(e) => Stop::Reference(e),
                Failure::Expansions { token } => Stop::Limit(limits::too_many_expansions(
                    &token,
                    self.scope.limits().max_expansions,
                )),
                Failure::TooLarge => {
                    Stop::Limit(limits::too_large(index, &step.method, &step.path, max_body))
                }
            })?;
            let target = with_query(&path, &step.query);
            let (content_type, bytes) = match encode_body(payload, &files, max_body).await {
                Ok(encoded) => encoded,
                Err(Encoding::TooLarge) => {
                    return Err(Stop::Limit(limits::too_large(
                        index,
                        &step.method,
                        &step.path,
                        max_body,
                    )));
                }
                Err(Encoding::Unreadable(e)) => {
                    tracing::error!("batch step: cannot read an uploaded file part: {e}");
                    return Err(Stop::Internal);
                }
            };
            statement_deadline(self.db, self.scope.remaining()).await;
            let (status, body) = self
                .dispatch(&step.method, &target, &content_type, bytes)
                .await;
            // A limit reached by a nested job ends this one too; so does the deadline,
            // whatever the step answered (a statement cut off at it answers 500).
            if let Some(body) = self.scope.aborted() {
                return Err(Stop::Limit(body));
            }
            if self.scope.remaining().is_none() {
                return Err(Stop::Timeout(limits::timed_out(
                    index,
                    &step.method,
                    &path,
                    status.as_u16(),
                    self.scope.limits().time_limit,
                )));
            }
            let result = StepResult {
                reference: step.reference.clone(),
                index,
                method: step.method.clone(),
                path,
                status: status.as_u16(),
                body,
            };
            if status.is_server_error() {
                return Err(Stop::Internal);
            }
            if status.as_u16() >= 400 {
                return Err(Stop::Step(result));
            }
            if !step.reference.is_empty() {
                bodies.insert(step.reference.clone(), result.body.clone());
            }
            results.push(result);
        }
        Ok(results)
    }

    /// A step's path and payload with their tokens resolved, and the files it sends.
    #[allow(clippy::type_complexity)]
    fn resolve(
        &self,
        step: &Step,
        bodies: &Map<String, Value>,
        meter: &mut tokens::Meter,
    ) -> Result<(String, Map<String, Value>, Vec<(String, tokens::FilePart)>), Failure> {
        let path = tokens::resolve_text(&step.path, bodies, meter)?;
        let mut files = Vec::new();
        let mut payload = Map::new();
        for (key, value) in &step.payload {
            match tokens::resolve(value, bodies, self.files, meter)? {
                Resolved::Value(v) => {
                    payload.insert(key.clone(), v);
                }
                Resolved::File(f) => files.push((key.clone(), f)),
            }
        }
        Ok((path, payload, files))
    }

    /// Sends one internal request and returns its status and JSON body (null when the
    /// response has none).
    async fn dispatch(
        &self,
        method: &str,
        target: &str,
        content_type: &str,
        bytes: Vec<u8>,
    ) -> (StatusCode, Value) {
        let route = target.split('?').next().unwrap_or(target).to_string();
        let no_route = || {
            let e = ApiError::NotFound(format!("No route matched: {route}"));
            (e.status(), e.body())
        };
        // Upstream resolves the path as given: no trailing-slash redirect inside a job.
        if !route.ends_with('/') || crate::web::canonical::check(&route).is_err() {
            return no_route();
        }
        let Ok(uri) = target.parse::<salvo::http::uri::Uri>() else {
            return no_route();
        };
        let Ok(method) = Method::from_bytes(method.as_bytes()) else {
            return no_route();
        };
        let mut req = Request::new();
        *req.method_mut() = method;
        req.set_uri(uri);
        for name in INHERITED {
            if let Some(v) = self.outer.headers().get(name) {
                req.headers_mut()
                    .insert(HeaderName::from_static(name), v.clone());
            }
        }
        if let Ok(v) = HeaderValue::from_str(content_type) {
            req.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        req.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        req.replace_body(ReqBody::Once(bytes.into()));
        let handler = self.service.hyper_handler(
            self.outer.local_addr().clone(),
            self.outer.remote_addr().clone(),
            self.outer.scheme().clone(),
            None,
            salvo::ConnCtrl::new(),
            None,
        );
        let mut res = handler.handle(req).await;
        let status = res.status_code.unwrap_or(StatusCode::OK);
        let is_json = res
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        // Non-REST views (the site root, a nested batch) give no body (§12.3 step 5).
        let body = if !is_json || route == "/" || route == "/batch/" {
            Value::Null
        } else {
            match res.take_body() {
                ResBody::Once(b) => serde_json::from_slice(&b).unwrap_or(Value::Null),
                ResBody::Chunks(chunks) => {
                    let all: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
                    serde_json::from_slice(&all).unwrap_or(Value::Null)
                }
                _ => Value::Null,
            }
        };
        (status, body)
    }
}

/// `path` with `query_params` appended (⚑ merged with `&` when `path` already has a query;
/// upstream appends a second `?`).
fn with_query(path: &str, query: &Map<String, Value>) -> String {
    if query.is_empty() {
        return path.to_string();
    }
    let mut enc = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in query {
        match value {
            Value::Array(items) => {
                for item in items {
                    enc.append_pair(key, &tokens::python_text(item));
                }
            }
            other => {
                enc.append_pair(key, &tokens::python_text(other));
            }
        }
    }
    let encoded = enc.finish();
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}{encoded}")
}

/// Why a step's body could not be built.
enum Encoding {
    /// Larger than the request body limit.
    TooLarge,
    Unreadable(std::io::Error),
}

/// The step's body: JSON, or multipart when a payload value is an uploaded file; at most
/// `max` bytes (files are measured before they are read).
async fn encode_body(
    payload: Map<String, Value>,
    files: &[(String, tokens::FilePart)],
    max: usize,
) -> Result<(String, Vec<u8>), Encoding> {
    if files.is_empty() {
        let bytes = serde_json::to_vec(&Value::Object(payload)).unwrap_or_default();
        if bytes.len() > max {
            return Err(Encoding::TooLarge);
        }
        return Ok(("application/json".to_string(), bytes));
    }
    let mut file_bytes: u64 = 0;
    for (_, file) in files {
        let meta = tokio::fs::metadata(&file.path)
            .await
            .map_err(Encoding::Unreadable)?;
        file_bytes = file_bytes.saturating_add(meta.len());
    }
    if usize::try_from(file_bytes).map_or(true, |n| n > max) {
        return Err(Encoding::TooLarge);
    }
    let boundary = format!("keystone-batch-{}", uuid::Uuid::new_v4().simple());
    let mut out: Vec<u8> = Vec::new();
    let field = |out: &mut Vec<u8>, name: &str, text: &str| {
        out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        out.extend_from_slice(
            format!(
                "Content-Disposition: form-data; name=\"{}\"\r\n\r\n",
                quote(name)
            )
            .as_bytes(),
        );
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
    };
    for (key, value) in &payload {
        match value {
            Value::Array(items) => {
                for item in items {
                    field(&mut out, key, &tokens::python_text(item));
                }
            }
            other => field(&mut out, key, &tokens::python_text(other)),
        }
    }
    for (key, file) in files {
        let content = tokio::fs::read(&file.path)
            .await
            .map_err(Encoding::Unreadable)?;
        out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        out.extend_from_slice(
            format!(
                "Content-Disposition: form-data; name=\"{}\"; filename=\"{}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n",
                quote(key),
                quote(&file.name)
            )
            .as_bytes(),
        );
        out.extend_from_slice(&content);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    if out.len() > max {
        return Err(Encoding::TooLarge);
    }
    Ok((format!("multipart/form-data; boundary={boundary}"), out))
}

/// A name inside a quoted Content-Disposition parameter.
fn quote(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "%22")
        .replace(['\r', '\n'], " ")
}

/// The routes of this family.
pub fn routes() -> crate::web::route::Routes {
    crate::web::route::Endpoint::protected("batch/")
        .post(create)
        .options(super::meta("Batch", ""))
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_appended_or_merged() {
        let q: Map<String, Value> =
            serde_json::from_str(r#"{"id": 12, "flag": true, "none": null, "team": [1, 2]}"#)
                .unwrap();
        let out = with_query("/users/teams/", &q);
        assert!(out.starts_with("/users/teams/?"), "{out}");
        for part in ["id=12", "flag=True", "none=None", "team=1", "team=2"] {
            assert!(out.contains(part), "{part} missing from {out}");
        }
        let merged = with_query("/users/teams/?_order=id", &q);
        assert!(merged.starts_with("/users/teams/?_order=id&"), "{merged}");
        assert_eq!(with_query("/x/", &Map::new()), "/x/");
    }
}
