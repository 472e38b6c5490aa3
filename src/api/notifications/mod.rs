//! `/notifications/` (domain.md §9): notifications and preferences.

use salvo::prelude::*;

/// The routes of this family.
pub fn routes() -> Router {
    Router::new()
}
