//! Sharing worker sessions fairly between dispatcher replicas.
//!
//! Load balancers in front of gRPC (a Kubernetes Service, most L4 proxies)
//! balance connections, not calls: a worker's long-lived stream stays on the
//! replica it first reached, so a replica added by a scale-up gets no worker
//! until some reconnect. Every replica therefore announces its session count
//! to the store every `rebalance_interval` and reads the others'; one holding
//! more than its share (the total over the live replicas, rounded up) asks
//! the excess sessions to drain, those with the fewest running tasks first.
//! A drained worker finishes what it runs (no task is lost or run twice:
//! the drain hands out no new lease, its grace is an hour rather than the
//! shutdown's seconds, and the outcomes are reported on the old stream),
//! then opens its next session on a new connection, which the load
//! balancer may place on another replica. Rounding up means a
//! replica one session over never drains, so sessions do not flap between
//! replicas; a replica shutting down withdraws its record and drains all
//! its sessions (to the others).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use conveyor_core::time::now_ms;
use conveyor_store::Store;

use crate::Registry;

/// Announces this replica's sessions every `interval` and drains the
/// excess, until `shutdown`; then withdraws the announcement.
pub(crate) async fn run(
    store: Arc<dyn Store>,
    registry: Registry,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let replica = uuid::Uuid::now_v7().to_string();
    // Three missed announcements and the others stop counting this one.
    let ttl_ms = (interval.as_millis() as i64 * 3).max(1_000);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                if let Err(error) = store.announce_dispatcher(&replica, None, 0, now_ms()).await {
                    tracing::debug!(%error, "withdrawing the dispatcher announcement failed; it lapses");
                }
                return;
            }
            _ = ticker.tick() => {}
        }
        let mine = registry.staying() as u32;
        let live = match store
            .announce_dispatcher(&replica, Some(mine), ttl_ms, now_ms())
            .await
        {
            Ok(live) => live,
            Err(error) => {
                tracing::debug!(%error, "announcing the dispatcher failed; retrying next round");
                continue;
            }
        };
        let excess = excess(mine, live.len(), live.values().sum());
        if excess > 0 {
            let asked = registry.drain_some(excess as usize);
            tracing::info!(
                sessions = mine,
                replicas = live.len(),
                asked,
                "over this replica's share of worker sessions: asked some to reconnect"
            );
        }
    }
}

/// Sessions over a replica's share: `total` sessions over `replicas`
/// replicas, rounded up, so that an uneven total never moves a session.
fn excess(mine: u32, replicas: usize, total: u32) -> u32 {
    let share = total.div_ceil(replicas.max(1) as u32);
    mine.saturating_sub(share)
}

#[cfg(test)]
mod tests {
    use super::excess;

    #[test]
    fn only_sessions_over_the_rounded_up_share_move() {
        // A new replica: half of ten move.
        assert_eq!(excess(10, 2, 10), 5);
        // Uneven totals stay put: 3 over 2 replicas is 2 + 1.
        assert_eq!(excess(2, 2, 3), 0);
        assert_eq!(excess(3, 2, 3), 1);
        // Balanced, or under the share.
        assert_eq!(excess(4, 3, 12), 0);
        assert_eq!(excess(1, 3, 12), 0);
        // Alone (or the store does not answer with this replica yet).
        assert_eq!(excess(7, 1, 7), 0);
        assert_eq!(excess(7, 0, 0), 7);
    }
}
