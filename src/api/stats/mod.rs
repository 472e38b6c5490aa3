//! `/stats/` (domain.md §11): aggregates over the caller's visible records.

use salvo::prelude::*;

/// The routes of this family.
pub fn routes() -> Router {
    Router::new()
}
