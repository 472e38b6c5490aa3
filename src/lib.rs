//! Keystone: the HPC allocation-management API as one systemd-native daemon with web, worker
//! and beat roles. `main.rs` only parses the command line and hands over to `cli`.
//!
//! Layers, top to bottom (a module only names modules below it; `module-graph` checks it in CI):
//! `cli` (commands) -> `roles` (serve: web, worker, beat) -> `web` (HTTP edge and resources) ->
//! `queue` (the broker) / `tasks` (background work) -> `identity`, `infra` (LDAP, Slurm, mail,
//! health, metrics) -> `store` (database) -> `domain` (pure rules) -> `config`.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod domain;
pub mod identity;
pub mod infra;
pub mod queue;
pub mod roles;
pub mod store;
pub mod tasks;
pub mod web;
