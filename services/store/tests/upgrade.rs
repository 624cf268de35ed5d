//! A store started over data of an older version: tasks that version parked
//! for a concurrency permit (in lists `cw:<key>`) go back to their queues
//! and run; nothing is lost in the upgrade.

use conveyor_api::pb;
use conveyor_core::Limits;
use conveyor_core::validate::validate_spec;
use conveyor_store::conformance::{test_redis_config, test_redis_url};
use conveyor_store::{LeaseRequest, QueueKey, RedisStore, Store};

const NOW: i64 = 1_700_000_000_000;

fn limited() -> conveyor_core::NewTask {
    let spec = pb::TaskSpec {
        name: "add".into(),
        options: Some(pb::TaskOptions {
            concurrency_key: "k".into(),
            concurrency_limit: 1,
            ..Default::default()
        }),
        ..Default::default()
    };
    validate_spec(spec, "task", &Limits::default(), NOW, 0).expect("valid")
}

#[tokio::test]
async fn tasks_parked_by_the_previous_version_run_after_the_upgrade() {
    // Layout 1 predates cluster support: no cluster holds its data, so the
    // upgrade is checked on one Redis (scripts/test's first cargo step).
    let Some(url) = test_redis_url().filter(|url| !url.contains("+cluster://")) else {
        return;
    };
    let mut config = test_redis_config(&url);
    config.partitions = 1;
    let store = RedisStore::connect(config.clone()).await.expect("connect");
    let acks = store
        .enqueue(vec![limited(), limited()], NOW)
        .await
        .expect("enqueue");
    // What the previous version left: both tasks QUEUED, out of their queue
    // list, in the key's waiting list.
    let prefix = format!("{{{}0}}:", config.prefix);
    let mut connection = conveyor_store::redis::connection::Connection::open(
        &url,
        std::time::Duration::from_secs(5),
    )
    .await
    .expect("connect");
    let queue = format!("{prefix}q:default:add");
    let _: () = redis::cmd("DEL")
        .arg(&queue)
        .query_async(&mut connection)
        .await
        .expect("DEL");
    // ... and no layout key, which that version did not write.
    let _: () = redis::cmd("DEL")
        .arg(format!("{prefix}layout"))
        .query_async(&mut connection)
        .await
        .expect("DEL");
    let _: () = redis::cmd("RPUSH")
        .arg(format!("{prefix}cw:k"))
        .arg(acks[0].id.to_string())
        .arg(acks[1].id.to_string())
        .query_async(&mut connection)
        .await
        .expect("RPUSH");
    let request = |session: &str| LeaseRequest {
        session_id: session.into(),
        worker_id: "w".into(),
        queue_keys: vec![QueueKey::new("default", "add")],
        max: 10,
        lease_deadline_ms: NOW + 10_000,
        now_ms: NOW,
    };
    assert!(
        store.lease(request("s0")).await.expect("lease").is_empty(),
        "stranded before the upgrade"
    );
    // The new version connects: the oldest is leased, the other waits for
    // the permit under the current rules.
    let upgraded = RedisStore::connect(config).await.expect("connect again");
    let leased = upgraded.lease(request("s1")).await.expect("lease");
    assert_eq!(
        leased.iter().map(|task| task.id).collect::<Vec<_>>(),
        vec![acks[0].id]
    );
    let exists: i64 = redis::cmd("EXISTS")
        .arg(format!("{prefix}cw:k"))
        .query_async(&mut connection)
        .await
        .expect("EXISTS");
    assert_eq!(exists, 0, "the old list is gone");
    let layout: Option<u32> = redis::cmd("GET")
        .arg(format!("{prefix}layout"))
        .query_async(&mut connection)
        .await
        .expect("GET");
    assert_eq!(
        layout,
        Some(2),
        "marked: the next start does not look again"
    );
    upgraded.release_session("s1", NOW).await.expect("release");
    let again = upgraded.lease(request("s2")).await.expect("lease");
    assert_eq!(again.len(), 1, "one permit");
}
