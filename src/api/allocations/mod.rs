//! `/allocations/` (domain.md §7): clusters, allocation requests, reviews, resource
//! allocations, attachments and comments.

use salvo::prelude::*;

/// The routes of this family.
pub fn routes() -> Router {
    Router::new()
}
