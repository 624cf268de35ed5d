//! What every Conveyor process shares and no domain crate needs: telemetry,
//! the server stack (layers, health, reflection), signals and graceful
//! shutdown. Depends on no domain crate.

mod admin;
pub mod auth;
mod layers;
pub mod metrics;
mod server;
mod shutdown;
pub mod telemetry;
pub mod tls;

pub use admin::serve_admin;
pub use auth::AuthLayer;
pub use layers::OverloadLayer;
pub use server::{ServerConfig, serve};
pub use shutdown::{Shutdown, wait_for_signals};
pub use telemetry::{TelemetryConfig, TelemetryGuard, init_telemetry, init_tracing};

/// Errors of the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be built from the descriptor sets.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The TLS files do not load.
    #[error("tls: {0}")]
    Tls(#[from] tls::TlsError),
    /// The auth file does not load.
    #[error("{0}")]
    Auth(#[from] auth::AuthError),
}

/// Result with [`RuntimeError`].
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
