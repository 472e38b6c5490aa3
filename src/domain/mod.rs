//! Keystone's rules, free of HTTP, SQL and Redis: what an audit entry records, who may do
//! what, how a body is validated and what a refusal is ([`DomainError`]). Pure and
//! unit-tested; it imports nothing of the crate but configuration types.

pub mod audit;
pub mod error;
pub mod notifications;
pub mod policy;
pub mod validation;

pub use error::DomainError;
