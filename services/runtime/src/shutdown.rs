//! Shutdown: one token for the whole process, cancelled by SIGTERM or SIGINT;
//! a second signal exits at once.

use tokio_util::sync::CancellationToken;

/// Process-wide shutdown token; clones share it.
pub type Shutdown = CancellationToken;

/// Cancels `shutdown` on the first SIGTERM/SIGINT and exits the process on
/// the second. Returns after the first.
pub async fn wait_for_signals(shutdown: Shutdown) {
    first_signal().await;
    tracing::info!("shutdown signal received; draining (signal again to exit at once)");
    shutdown.cancel();
    tokio::spawn(async {
        first_signal().await;
        tracing::warn!("second signal; exiting now");
        std::process::exit(130);
    });
}

#[cfg(unix)]
async fn first_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => stream,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM; using ctrl-c only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(not(unix))]
async fn first_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
