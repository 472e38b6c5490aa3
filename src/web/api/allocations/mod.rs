//! `/allocations/` (domain.md §7): clusters, allocation requests, reviews, resource
//! allocations, attachments and comments.

pub mod attachments;
pub mod clusters;
pub mod comments;
pub mod requests;
pub mod resource_allocations;
pub mod reviews;
pub mod shared;

use super::resource;
use crate::store::Db;
use crate::web::ApiError;
use crate::web::api::Caller;

/// Staff, or a member of the team of allocation request `request_id` (not when the request
/// is gone): who may see a request's reviews, allocations, attachments and comments.
pub async fn sees_request(db: &Db, caller: &Caller, request_id: i64) -> Result<bool, ApiError> {
    Ok(caller.is_staff()
        || crate::store::teams::in_request_team(db, caller.id(), request_id).await?)
}

/// The routes of this family.
pub fn routes() -> crate::web::route::Routes {
    crate::web::route::Routes::new()
        .push(resource::routes::<clusters::Clusters>())
        .push(resource::routes::<requests::Requests>())
        .push(resource::routes::<reviews::Reviews>())
        .push(resource::routes::<resource_allocations::ResourceAllocations>())
        .push(resource::routes::<attachments::Attachments>())
        .push(attachments::download_routes())
        .push(resource::routes::<comments::Comments>())
}
