//! Keystone's rules, free of HTTP, SQL and Redis: what an audit entry records, who may do
//! what. Pure and unit-tested; it imports nothing of the crate but configuration types.

pub mod audit;
pub mod notifications;
pub mod policy;
