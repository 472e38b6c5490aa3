//! Integration tests: the real `keystone` binary against real databases, sockets and
//! systemd's own socket activation. One test binary keeps link time down.

mod common;

mod accounts;
mod cli;
mod daemon;
mod http_base;
mod ldap;
mod logs;
mod storage;
