//! Worker sessions across dispatcher replicas: each replica writes its
//! sessions to the store every [`INTERVAL`] (`announce_workers`), so that
//! ListWorkers on any replica lists every replica's workers, its own fresh
//! and the others' as of their last announcement.

use std::sync::Arc;
use std::time::Duration;

use conveyor_api::pb;
use conveyor_core::time::now_ms;
use conveyor_store::Store;
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::Registry;

/// How often a replica writes its sessions.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// A replica that missed three writes (stopped, partitioned) is not listed.
const TTL_MS: i64 = 6_000;

/// Writes this replica's sessions every [`INTERVAL`] until `shutdown`, then
/// withdraws them.
pub(crate) async fn run(
    store: Arc<dyn Store>,
    registry: Registry,
    replica: Arc<str>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                if let Err(error) = store.announce_workers(&replica, None, 0, now_ms()).await {
                    tracing::debug!(%error, "withdrawing this replica's workers failed; they lapse");
                }
                return;
            }
            _ = ticker.tick() => {}
        }
        let workers = pb::ListWorkersResponse {
            workers: registry.snapshot(),
            next_page_token: String::new(),
        }
        .encode_to_vec();
        if let Err(error) = store
            .announce_workers(&replica, Some(workers), TTL_MS, now_ms())
            .await
        {
            tracing::debug!(%error, "announcing this replica's workers failed; retrying");
        }
    }
}

/// Every replica's workers: this one's from `registry`, the others' from
/// their last announcement (this replica's own stays out, being stale).
pub(crate) async fn all_workers(
    store: &dyn Store,
    registry: &Registry,
    replica: &str,
) -> Vec<pb::WorkerInfo> {
    let mut workers = registry.snapshot();
    match store.announce_workers("", None, 0, now_ms()).await {
        Ok(announced) => {
            for (other, blob) in announced {
                if other == replica {
                    continue;
                }
                match pb::ListWorkersResponse::decode(blob.as_slice()) {
                    Ok(list) => workers.extend(list.workers),
                    Err(error) => {
                        tracing::warn!(replica = %other, %error, "a replica's worker list does not decode");
                    }
                }
            }
        }
        Err(error) => {
            tracing::warn!(%error, "reading the other replicas' workers failed; listing this replica's");
        }
    }
    workers.sort_by(|a, b| (&a.worker_id, &a.session_id).cmp(&(&b.worker_id, &b.session_id)));
    workers.dedup_by(|a, b| a.session_id == b.session_id);
    workers
}
