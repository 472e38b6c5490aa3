//! `/batch/` (domain.md §12): several operations in one transaction.

use salvo::prelude::*;

/// The routes of this family.
pub fn routes() -> Router {
    Router::new()
}
