//! Assembly of Conveyor processes: any subset of the four roles on one
//! listener over one store. Used by the `conveyor` binary and by tests.

pub mod app;
pub mod cli;
pub mod config;
pub mod forward;
mod metered;
pub mod ops;
pub mod tls_out;
