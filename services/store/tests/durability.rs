//! `wait_replicas` (`--redis-wait-replicas`): a submission is acknowledged
//! only once that many replicas have it, and fails with UNAVAILABLE, saying
//! what to do, when they do not confirm it in time. And on a cluster, the
//! store's pub/sub is sharded: every channel lives on the shard of its
//! partition, none is a classic (broadcast) channel.
//!
//! On one Redis without replicas (scripts/test's first Redis) asking for one
//! replica fails; on the test cluster (one replica per primary) one succeeds
//! and two fail.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::task;
use conveyor_core::ConveyorError;
use conveyor_store::conformance::{test_redis_config, test_redis_url};
use conveyor_store::{RedisStore, Store};

mod common;

async fn store(url: &str, wait_replicas: u32) -> RedisStore {
    let mut config = test_redis_config(url);
    config.wait_replicas = wait_replicas;
    config.wait_timeout = Duration::from_millis(300);
    RedisStore::connect(config).await.expect("connect")
}

#[tokio::test]
async fn submissions_wait_for_the_replicas_asked_for() {
    let Some(url) = test_redis_url() else {
        return;
    };
    let replicas_per_shard = if url.starts_with("redis+cluster://") {
        1
    } else {
        0
    };

    // As many replicas as there are: acknowledged, and stored.
    if replicas_per_shard > 0 {
        let store = store(&url, replicas_per_shard).await;
        let tasks: Vec<_> = (0..20).map(|_| task()).collect();
        let ids: Vec<_> = tasks.iter().map(|task| task.id).collect();
        let acks = store
            .enqueue(tasks, conveyor_core::time::now_ms())
            .await
            .expect("acknowledged");
        assert_eq!(acks.iter().map(|ack| ack.id).collect::<Vec<_>>(), ids);
        for id in ids {
            assert!(
                store
                    .get(id, conveyor_core::time::now_ms())
                    .await
                    .unwrap()
                    .is_some()
            );
        }
    }

    // One more than there are: UNAVAILABLE after the wait, naming the flag
    // and what to do.
    let store = store(&url, replicas_per_shard + 1).await;
    let started = Instant::now();
    let error = store
        .enqueue(vec![task()], conveyor_core::time::now_ms())
        .await
        .expect_err("no replica can confirm it");
    let ConveyorError::Unavailable(message) = &error else {
        panic!("expected UNAVAILABLE, got {error:?}");
    };
    assert!(message.contains("--redis-wait-replicas"), "{message}");
    assert!(message.contains("idempotency key"), "{message}");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "answered before the wait timeout"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn cluster_pubsub_is_sharded_per_partition() {
    let Some(url) = test_redis_url().filter(|url| url.starts_with("redis+cluster://")) else {
        return;
    };
    let mut config = test_redis_config(&url);
    config.partitions = 6;
    let prefix = config.prefix.clone();
    let _store = RedisStore::connect(config).await.expect("connect");
    let nodes = conveyor_store::redis::connection::cluster_nodes(&url).expect("cluster url");
    let (mut sharded, mut classic) = (BTreeSet::new(), BTreeSet::new());
    for node in &nodes {
        let client = redis::Client::open(node.as_str()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let pattern = format!("{{{prefix}*");
        let on_node: Vec<String> = redis::cmd("PUBSUB")
            .arg("SHARDCHANNELS")
            .arg(&pattern)
            .query_async(&mut connection)
            .await
            .unwrap();
        // SSUBSCRIBE is refused (MOVED) by a node that does not own the
        // channel's slot: what a node lists, its shard owns.
        sharded.extend(on_node);
        let on_node: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .arg(&pattern)
            .query_async(&mut connection)
            .await
            .unwrap();
        classic.extend(on_node);
    }
    assert!(
        classic.is_empty(),
        "classic channels on a cluster: {classic:?}"
    );
    // Per partition: the process's watch channel, ready, revoke, events.
    assert_eq!(sharded.len(), 6 * 4, "{sharded:?}");
}
