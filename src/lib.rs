//! Keystone: the HPC allocation-management API as one systemd-native daemon with web, worker
//! and beat roles. `main.rs` only parses the command line and hands over to `cli`.

pub mod admin;
pub mod api;
pub mod assets;
pub mod audit;
pub mod auth;
pub mod beat;
pub mod broker;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod db;
pub mod health;
pub mod http;
pub mod ldap;
pub mod mail;
pub mod metrics;
pub mod operator;
pub mod passwords;
pub mod quickstart;
pub mod retention;
pub mod secret;
pub mod seed;
pub mod serve;
pub mod sessions;
pub mod slurm;
pub mod tasks;
pub mod throttle;
pub mod uploads;
pub mod worker;
