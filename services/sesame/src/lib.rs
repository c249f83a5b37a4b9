//! The `sesame` binary's library: configuration, the assembly of roles into
//! one process ([`server::Sesame`]), and the client commands (`demo`,
//! `device`, `enroll`, `challenge`). Everything here can run in-process, which
//! is how the end-to-end tests use it.

pub mod cli;
pub mod config;
pub mod inbox;
pub mod server;
pub mod telemetry;

pub use config::Config;
pub use server::Sesame;
