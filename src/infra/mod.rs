//! The outside systems Keystone talks to: LDAP, Slurm, mail, and what it reports about itself
//! (health checks, metrics).

pub mod health;
pub mod ldap;
pub mod mail;
pub mod metrics;
pub mod slurm;
pub mod uploads;
