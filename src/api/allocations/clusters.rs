//! Not yet implemented.

use salvo::prelude::*;

/// The routes of this resource.
pub fn routes() -> Router {
    Router::new()
}
