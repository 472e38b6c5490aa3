//! Site root, version, health and OpenAPI endpoints (spec/operations.md §3.7, §3.9, §3.11).

use super::negotiation;
use super::route::{Endpoint, Policy, Routes};
use super::{ApiError, state};
use crate::infra::health::{CheckResult, prometheus};
use salvo::http::StatusCode;
use salvo::http::header::{self, HeaderValue};
use salvo::oapi::ToSchema;
use salvo::prelude::*;
use serde::Serialize;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Answers OPTIONS with the DRF metadata document (domain.md §1.7), without running the view.
pub struct Metadata {
    pub name: &'static str,
    pub description: &'static str,
    pub renders: &'static [&'static str],
}

#[handler]
impl Metadata {
    async fn handle(&self, res: &mut Response) {
        res.render(Json(serde_json::json!({
            "name": self.name,
            "description": self.description,
            "renders": self.renders,
            "parses": ["application/json", "application/x-www-form-urlencoded", "multipart/form-data"],
        })));
    }
}

/// A read-only view: GET (documented), HEAD (same handler; the server drops the body) and
/// OPTIONS; every other method gets 405 with an `Allow` header from the framework.
macro_rules! read_only {
    ($path:expr, $get:expr, $meta:expr $(,)?) => {
        Endpoint::public($path).get($get).head($get).options($meta)
    };
}

const JSON_ONLY: &[&str] = &["application/json"];

pub fn routes() -> Routes {
    Routes::new()
        .push(
            Endpoint::new("", Policy::OPEN)
                .get(site_root)
                .head(site_root),
        )
        .push(read_only!(
            "version/",
            version,
            Metadata {
                name: "Version",
                description: "Return the application version number as a plain text response.",
                renders: &["text/plain"],
            },
        ).renders(negotiation::JSON_OR_TEXT))
        .push(read_only!(
            "health/",
            health,
            Metadata {
                name: "Health",
                description: "Return a 200 status if all application health checks pass and a 500 status otherwise.",
                renders: JSON_ONLY,
            },
        ))
        .push(read_only!(
            "health/json/",
            health_json,
            Metadata {
                name: "Health Json",
                description: "Return system health checks in JSON format.",
                renders: JSON_ONLY,
            },
        ))
        .push(read_only!(
            "health/prom/",
            health_prom,
            Metadata {
                name: "Health Prom",
                description: "Return system health checks in Prometheus format.",
                renders: &["text/plain"],
            },
        ).renders(negotiation::JSON_OR_TEXT))
        .push(read_only!(
            "openapi/json/",
            openapi_json,
            Metadata {
                name: "Open Api Json",
                description: "The OpenAPI document as JSON.",
                renders: &["application/vnd.oai.openapi+json", "application/json"],
            },
        ).renders(negotiation::OPENAPI_JSON))
        .push(read_only!(
            "openapi/yaml/",
            openapi_yaml,
            Metadata {
                name: "Open Api Yaml",
                description: "The OpenAPI document as YAML.",
                renders: &["application/vnd.oai.openapi", "application/yaml"],
            },
        ).renders(negotiation::OPENAPI_YAML))
}

/// The site root: a one-line version banner (not part of the OpenAPI document).
#[handler]
async fn site_root(res: &mut Response) {
    res.render(Text::Html(format!("Keystone API Version {VERSION}")));
}

/// Retrieve the application version number.
///
/// Returns the application version number as a plain text response.
#[endpoint(
    operation_id = "version_retrieve",
    tags("Version"),
    responses((status_code = 200, description = "", body = String, content_type = "text/plain"))
)]
async fn version(res: &mut Response) {
    res.render(Text::Plain(VERSION));
}

/// One health check result, as `/health/json/` reports it.
#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "HealthCheckResult"))]
struct HealthCheckDoc {
    check: String,
    healthy: bool,
    error: Option<String>,
    time_taken: f64,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "HealthCheckList"))]
struct HealthListDoc {
    data: Vec<HealthCheckDoc>,
}

async fn results(depot: &Depot) -> Result<Vec<CheckResult>, ApiError> {
    let app = state(depot).map_err(|_| ApiError::Internal)?;
    Ok(app.health.results().await)
}

/// Retrieve the current application health status.
///
/// Returns a 200 status if all application health checks pass and a 500 status otherwise.
/// Health checks are performed on demand and cached for 60 seconds.
#[endpoint(
    operation_id = "health_retrieve",
    tags("Admin - Health Checks"),
    responses(
        (status_code = 200, description = "No response body"),
        (status_code = 500, description = "No response body")
    )
)]
async fn health(depot: &mut Depot, res: &mut Response) {
    match results(depot).await {
        Ok(r) => {
            let ok = r.iter().all(|c| c.healthy);
            res.status_code(if ok {
                StatusCode::OK
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            });
            // An empty body, as upstream: only the status speaks. (An explicit empty body
            // keeps the error catcher from filling in a 500 page.)
            res.headers_mut().remove(header::CONTENT_TYPE);
            res.body(salvo::http::ResBody::Once(Default::default()));
        }
        Err(e) => e.render(res),
    }
}

/// Retrieve health checks in JSON format.
///
/// Returns individual health check results in JSON format. Health checks are performed on
/// demand and cached for 60 seconds.
#[endpoint(
    operation_id = "health_json_retrieve",
    tags("Admin - Health Checks"),
    responses((status_code = 200, description = "", body = HealthListDoc))
)]
async fn health_json(depot: &mut Depot, res: &mut Response) {
    match results(depot).await {
        Ok(r) => res.render(Json(serde_json::json!({ "data": r }))),
        Err(e) => e.render(res),
    }
}

/// Retrieve health checks in Prometheus format.
///
/// Returns individual health check results in Prometheus format. Health checks are performed
/// on demand and cached for 60 seconds.
#[endpoint(
    operation_id = "health_prom_retrieve",
    tags("Admin - Health Checks"),
    responses((status_code = 200, description = "", body = String, content_type = "text/plain"))
)]
async fn health_prom(depot: &mut Depot, res: &mut Response) {
    match results(depot).await {
        Ok(r) => {
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            let _ = res.write_body(prometheus(&r));
        }
        Err(e) => e.render(res),
    }
}

fn accepts(req: &Request, media: &str) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(',').any(|part| part.trim().starts_with(media)))
        .unwrap_or(false)
}

fn render_document(res: &mut Response, content_type: &'static str, body: &str) {
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    let _ = res.write_body(body.to_string());
}

#[handler]
async fn openapi_json(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let Ok(app) = state(depot) else {
        return ApiError::Internal.render(res);
    };
    let ct = if accepts(req, "application/json") {
        "application/json"
    } else {
        "application/vnd.oai.openapi+json"
    };
    render_document(res, ct, &app.openapi.json);
}

#[handler]
async fn openapi_yaml(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let Ok(app) = state(depot) else {
        return ApiError::Internal.render(res);
    };
    let ct = if accepts(req, "application/yaml") {
        "application/yaml; charset=utf-8"
    } else {
        "application/vnd.oai.openapi; charset=utf-8"
    };
    render_document(res, ct, &app.openapi.yaml);
}
