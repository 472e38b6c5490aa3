//! `/allocations/` (domain.md §7): clusters, allocation requests, reviews, resource
//! allocations, attachments and comments.

pub mod attachments;
pub mod clusters;
pub mod comments;
pub mod requests;
pub mod resource_allocations;
pub mod reviews;

use super::resource;

/// The routes of this family.
pub fn routes() -> crate::web::route::Routes {
    crate::web::route::Routes::new()
        .push(resource::routes::<clusters::Clusters>())
        .push(requests::routes())
        .push(resource::routes::<reviews::Reviews>())
        .push(resource::routes::<resource_allocations::ResourceAllocations>())
        .push(attachments::routes())
        .push(resource::routes::<comments::Comments>())
}
