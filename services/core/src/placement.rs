//! Where a task lives. Placement belongs to the store (it knows its partition
//! count); this is the one rule every backend applies.
//!
//! Partition 0 is the *coordination partition*: every task that carries an
//! idempotency key, a rate limit or a concurrency key lives there, beside the
//! keys, buckets and permits themselves, so that one atomic store operation
//! sees all of them whatever combination a task carries. Placing by the key
//! instead (one partition per key) cannot be made correct: a task with a rate
//! bucket and a concurrency key would need two homes, and the same
//! idempotency key sent with other options would be looked up elsewhere.
//! Tasks without such keys spread over every partition. Limited tasks run at
//! their limits' pace anyway, so their partition is rarely the bottleneck.

use crate::ids::TaskId;
use crate::validate::NewTask;

/// The partition that holds every idempotency key, rate bucket and
/// concurrency permit, and the tasks that use them.
pub const COORDINATION_PARTITION: u16 = 0;

/// Whether the task must live in the [`COORDINATION_PARTITION`].
pub fn needs_coordination(task: &NewTask) -> bool {
    task.idempotency_key.is_some() || task.rate_limit.is_some() || !task.concurrency.is_empty()
}

/// Places tasks that are stored together, atomically, in one partition:
/// the coordination partition when any of them needs it, else the next one
/// in turn. Each process takes the partitions in turn from a random start:
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
    fn keyed_tasks_share_the_coordination_partition() {
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
            task(rated, ""),
            task(concurrent, ""),
            task(pb::TaskOptions::default(), "order-1"),
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
        let mut mixed = vec![
            task(pb::TaskOptions::default(), ""),
            task(pb::TaskOptions::default(), "k"),
        ];
        place(&mut mixed, 8);
        assert!(mixed.iter().all(|t| t.id.partition() == 0));
    }
}
