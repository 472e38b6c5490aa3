//! Integration tests: the real `keystone` binary against real databases, sockets and
//! systemd's own socket activation. One test binary keeps link time down.

mod common;

mod accounts;
mod allocations_core;
mod attachments_comments;
mod batch;
mod cli;
mod daemon;
mod hostile_edges;
mod http_base;
mod journald;
mod ldap;
mod logs;
mod negotiation;
mod outages;
mod paths;
mod research_notifications;
mod seed;
mod self_granted_compute;
mod storage;
mod task_ldap;
mod task_limits;
mod task_notices;
mod tasks_broker;
