//! Who a caller is: password hashing (Django formats), sessions and their revocation, API keys
//! and the secret key they are signed with.

pub mod auth;
pub mod passwords;
pub mod secret;
pub mod sessions;
