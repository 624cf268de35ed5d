//! Gauges a dispatcher publishes while metrics are on: its connected workers
//! and their free slots, and the store's queue depths (every replica reports
//! the same store-wide depths: aggregate them with `max`, not `sum`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use conveyor_runtime::metrics::{QUEUE_DEPTH, WORKER_SLOTS, WORKERS_CONNECTED};
use conveyor_store::Store;
use tokio_util::sync::CancellationToken;

use crate::Registry;

/// How often the gauges are refreshed.
pub const INTERVAL: Duration = Duration::from_secs(1);

pub(crate) async fn run(store: Arc<dyn Store>, registry: Registry, shutdown: CancellationToken) {
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    loop {
        let workers = registry.snapshot();
        metrics::gauge!(WORKERS_CONNECTED).set(workers.len() as f64);
        let slots: u64 = workers.iter().map(|worker| u64::from(worker.credits)).sum();
        metrics::gauge!(WORKER_SLOTS).set(slots as f64);
        match store.queue_depths().await {
            Ok(depths) => {
                // Ready per namespace and queue (task names and priority
                // levels summed).
                let mut ready: BTreeMap<(String, String), u64> = BTreeMap::new();
                for (key, count) in &depths.ready {
                    let base = key.base();
                    let scoped = base
                        .as_str()
                        .split_once(':')
                        .map_or(base.as_str(), |(queue, _)| queue);
                    let (namespace, queue) = conveyor_core::namespace::split_queue(scoped);
                    *ready
                        .entry((namespace.name().to_string(), queue.to_string()))
                        .or_default() += count;
                }
                // A queue that emptied reads 0, not its last value.
                for gone in seen.difference(&ready.keys().cloned().collect()) {
                    set_ready(&gone.0, &gone.1, 0);
                }
                for ((namespace, queue), count) in &ready {
                    set_ready(namespace, queue, *count);
                }
                seen = ready.into_keys().collect();
                for (state, count) in [
                    ("scheduled", depths.scheduled),
                    ("leased", depths.leased),
                    ("dead", depths.dead),
                ] {
                    metrics::gauge!(QUEUE_DEPTH, "state" => state).set(count as f64);
                }
            }
            Err(error) => tracing::debug!(%error, "reading queue depths failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(INTERVAL) => {}
        }
    }
}

fn set_ready(namespace: &str, queue: &str, count: u64) {
    metrics::gauge!(
        QUEUE_DEPTH,
        "namespace" => namespace.to_string(),
        "queue" => queue.to_string(),
        "state" => "ready",
    )
    .set(count as f64);
}
