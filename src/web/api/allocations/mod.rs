//! `/allocations/` (domain.md §7): clusters, allocation requests, reviews, resource
//! allocations, attachments and comments.

pub mod attachments;
pub mod clusters;
pub mod comments;
pub mod requests;
pub mod resource_allocations;
pub mod reviews;

/// The routes of this family.
pub fn routes() -> crate::web::route::Routes {
    crate::web::route::Routes::new()
        .push(clusters::routes())
        .push(requests::routes())
        .push(reviews::routes())
        .push(resource_allocations::routes())
        .push(attachments::routes())
        .push(comments::routes())
}
