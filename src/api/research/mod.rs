//! `/research/` (domain.md §8): grants and publications.

use salvo::prelude::*;

/// The routes of this family.
pub fn routes() -> Router {
    Router::new()
}
