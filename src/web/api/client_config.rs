//! `GET /config/` (operations.md §3.10): the settings the web frontend needs, from the live
//! configuration.

use super::context;
use salvo::http::StatusCode;
use salvo::oapi::ToSchema;
use salvo::prelude::*;
use serde::Serialize;

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "Config"))]
pub struct ClientConfig {
    pub version: String,
    pub max_upload_size: u64,
    pub max_upload_count: u64,
    pub allowed_file_types: Vec<String>,
    pub session_age: u64,
}

/// Retrieve client configuration.
///
/// Returns the application settings the frontend needs: version, upload limits, allowed
/// file types and session lifetime.
#[endpoint(
    operation_id = "config_retrieve",
    tags("Utils - Configuration"),
    responses((status_code = 200, description = "", body = ClientConfig))
)]
pub async fn retrieve(depot: &mut Depot, res: &mut Response) {
    let result = context(depot).map(|(app, _caller)| {
        let s = &app.config.settings;
        ClientConfig {
            version: env!("CARGO_PKG_VERSION").to_string(),
            max_upload_size: s.upload.max_size,
            max_upload_count: s.upload.max_count,
            allowed_file_types: s.upload.allowed_types.clone(),
            session_age: s.security.session_age,
        }
    });
    super::respond(res, StatusCode::OK, result);
}
