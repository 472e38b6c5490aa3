//! Field validation lives in the domain layer; this path stays for the resources that name it.

pub use crate::domain::validation::*;
