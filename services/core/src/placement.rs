//! Where a task lives. Placement belongs to the store (it knows its partition
//! count); this is the one rule every backend applies.
//!
//! Partition 0 is the *coordination partition*: every task that carries a
//! rate limit or a concurrency key lives there, beside the buckets and
//! permits themselves, so that one atomic store operation sees all of them
//! whatever combination a task carries (placing by the limit's key instead
//! cannot be made correct: a task with a rate bucket and a concurrency key
//! would need two homes). Limited tasks run at their limits' pace anyway, so
//! their partition is rarely the bottleneck.
//!
//! A task (or batch, or workflow) whose only key is an idempotency key lives
//! in that key's partition, a hash of the key: the same submission sent
//! again finds its key where it left it, and keyed tasks, which the Python,
//! Go and TypeScript SDKs send by default, spread over every partition (on a
//! cluster, over every shard) like plain ones. A key is found again by a
//! submission placed the same way: the same task, or the same batch (placed
//! by its first key). The same key sent once with a rate limit or
//! concurrency key and once without, or first inside a batch and then alone,
//! is looked up in another partition (with more than one partition) and
//! not recognised.
//!
//! Tasks without keys spread over every partition, each process's batches
//! taking them in turn.

use crate::ids::TaskId;
use crate::validate::NewTask;

/// The partition that holds every rate bucket and concurrency permit, and
/// the tasks that use them.
pub const COORDINATION_PARTITION: u16 = 0;

/// Whether the task must live in the [`COORDINATION_PARTITION`]: it carries a
/// rate limit or a concurrency key.
pub fn needs_coordination(task: &NewTask) -> bool {
    task.rate_limit.is_some() || !task.concurrency.is_empty()
}

/// The partition of an idempotency key (already scoped to its namespace):
/// FNV-1a of its bytes, so that every process and version agrees.
pub fn key_partition(key: &str, partitions: u16) -> u16 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(partitions.max(1))) as u16
}

/// Places tasks that are stored together, atomically, in one partition:
/// the coordination partition when any of them needs it, else the partition
/// of the first idempotency key among them, else the next one in turn. Each process takes the partitions in turn from a random start:
/// a producer's batches spread evenly (random picks left 20 batches over 12
/// partitions on 3 cluster shards at 44 %, 37 % and 19 % of the work), and
/// processes need not agree on anything. Each task gets a new id naming its
/// partition.
pub fn place(tasks: &mut [NewTask], partitions: u16) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let Some(first) = tasks.first() else {
        return;
    };
    let partition = if partitions <= 1 || tasks.iter().any(needs_coordination) {
        COORDINATION_PARTITION
    } else if let Some(key) = tasks
        .iter()
        .find_map(|task| task.idempotency_key.as_deref())
    {
        key_partition(key, partitions)
    } else {
        let mut turn = NEXT.fetch_add(1, Ordering::Relaxed);
        if turn == u32::MAX {
            // First call: a random start, so that processes started together
            // do not all begin with partition 0.
            let random = first.id.as_uuid().as_bytes();
            let start = u32::from(u16::from_be_bytes([random[10], random[11]]));
            let _ = NEXT.compare_exchange(0, start + 1, Ordering::Relaxed, Ordering::Relaxed);
            turn = start;
        }
        (turn % u32::from(partitions)) as u16
    };
    for task in tasks {
        task.id = TaskId::new(partition);
    }
}

#[cfg(test)]
mod tests {
    use conveyor_api::pb;

    use super::*;
    use crate::limits::Limits;
    use crate::validate::validate_spec;

    fn task(options: pb::TaskOptions, idempotency_key: &str) -> NewTask {
        let spec = pb::TaskSpec {
            name: "add".into(),
            options: Some(options),
            idempotency_key: idempotency_key.into(),
            ..Default::default()
        };
        validate_spec(spec, "task", &Limits::default(), 1_000, 0).expect("valid")
    }

    #[test]
    fn idempotency_keys_place_by_hash_and_spread() {
        let mut seen = std::collections::BTreeSet::new();
        for n in 0..200 {
            let key = format!("order-{n}");
            let mut first = task(pb::TaskOptions::default(), &key);
            let mut again = task(pb::TaskOptions::default(), &key);
            place(std::slice::from_mut(&mut first), 8);
            place(std::slice::from_mut(&mut again), 8);
            assert_eq!(first.id.partition(), again.id.partition(), "{key}");
            assert_eq!(first.id.partition(), key_partition(&key, 8));
            seen.insert(first.id.partition());
        }
        assert_eq!(seen.len(), 8, "keyed tasks reach every partition");
        // Fixed values: processes of every version must agree.
        assert_eq!(key_partition("order-1", 8), key_partition("order-1", 8));
        assert_eq!(key_partition("", 8), (0xcbf2_9ce4_8422_2325u64 % 8) as u16);
        // A batch goes where its first key goes.
        let mut batch = vec![
            task(pb::TaskOptions::default(), ""),
            task(pb::TaskOptions::default(), "b-1"),
            task(pb::TaskOptions::default(), "b-2"),
        ];
        place(&mut batch, 8);
        assert!(
            batch
                .iter()
                .all(|t| t.id.partition() == key_partition("b-1", 8))
        );
    }

    #[test]
    fn limited_tasks_share_the_coordination_partition() {
        let rated = pb::TaskOptions {
            rate_limit: "5/s".into(),
            ..Default::default()
        };
        let concurrent = pb::TaskOptions {
            concurrency_key: "k".into(),
            concurrency_limit: 1,
            ..Default::default()
        };
        for mut keyed in [
            task(rated.clone(), ""),
            task(concurrent, ""),
            task(rated, "order-1"),
        ] {
            place(std::slice::from_mut(&mut keyed), 8);
            assert_eq!(keyed.id.partition(), COORDINATION_PARTITION);
        }
    }

    #[test]
    fn plain_tasks_spread_and_batches_stay_together() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..400 {
            let mut batch = vec![
                task(pb::TaskOptions::default(), ""),
                task(pb::TaskOptions::default(), ""),
            ];
            place(&mut batch, 8);
            assert_eq!(batch[0].id.partition(), batch[1].id.partition());
            assert!(batch[0].id.partition() < 8);
            seen.insert(batch[0].id.partition());
        }
        assert_eq!(seen.len(), 8, "every partition gets plain tasks");
        let rated = pb::TaskOptions {
            rate_limit: "5/s".into(),
            ..Default::default()
        };
        let mut mixed = vec![task(pb::TaskOptions::default(), ""), task(rated, "")];
        place(&mut mixed, 8);
        assert!(mixed.iter().all(|t| t.id.partition() == 0));
    }
}
