//! The running daemon: `serve` starts the roles one process plays (web, worker, beat).

pub mod beat;
pub mod serve;
pub mod worker;
