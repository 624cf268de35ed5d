//! The Redis layout, written down once: every key and every task-hash field
//! the scripts use. The README's tables are rendered from these (a test
//! fails when they drift), and a test checks the Lua code against them.
//!
//! Every key starts with the partition prefix `{cv:N}:` (`cv:` is
//! `--redis-prefix`, `N` the partition). The braces are a Redis hash tag: all
//! keys of one partition share a slot, so a script touching several of them
//! is valid on Redis Cluster. Scripts get the partition's `sched` key as
//! `KEYS[1]` and derive the others from it.

/// One key: its pattern after the partition prefix, its type, what it holds.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// Pattern after `{cv:N}:`; `<…>` parts vary.
    pub pattern: &'static str,
    /// Redis type.
    pub kind: &'static str,
    /// What it holds, and who writes it.
    pub holds: &'static str,
}

/// Pub/sub channels named after a partition's prefix like its keys (not
/// keys: nothing is stored under them): `tev`, the partition's event stream.
#[cfg(test)]
const PARTITION_CHANNELS: &[&str] = &[EVENT_CHANNEL];

/// The partition's event stream channel (see `lua/common.lua`, `emit`).
pub(crate) const EVENT_CHANNEL: &str = "tev";

/// Every key of a partition.
pub const KEYS: &[Key] = &[
    Key {
        pattern: "t:<id>",
        kind: "hash",
        holds: "a task: the fields below; expires its result TTL after it finishes",
    },
    Key {
        pattern: "q:<queue>:<name>",
        kind: "list",
        holds: "ids of QUEUED tasks of one task name, FIFO; `…#1` to `…#9` for priority levels above 0; `<queue>` is `<namespace>/<queue>` outside `default`",
    },
    Key {
        pattern: "rq",
        kind: "set",
        holds: "queue lists that may be non-empty: a lease visits only these",
    },
    Key {
        pattern: "sched",
        kind: "sorted set",
        holds: "ids of SCHEDULED tasks by due time (ms); also the scripts' routing key (`KEYS[1]`)",
    },
    Key {
        pattern: "exp",
        kind: "sorted set",
        holds: "ids of tasks with `expires`, by that instant; promote expires those still unstarted",
    },
    Key {
        pattern: "sess",
        kind: "sorted set",
        holds: "session ids by lease deadline on the store's clock (the reaper's index)",
    },
    Key {
        pattern: "sl:<session>",
        kind: "set",
        holds: "ids a session holds leased",
    },
    Key {
        pattern: "idem:<key>",
        kind: "string",
        holds: "the first task or workflow id of an idempotency key, for the window (partition 0)",
    },
    Key {
        pattern: "dlq",
        kind: "sorted set",
        holds: "dead letters (FAILED tasks) by failure time",
    },
    Key {
        pattern: "dlx",
        kind: "sorted set",
        holds: "dead letters by the time their task hash expires: trimmed with them",
    },
    Key {
        pattern: "wa:<id>",
        kind: "hash",
        holds: "a WAITING workflow node's inputs so far: parent position → parent id, its state digit and outcome record; gone once the node is ready (`wi`) or finished",
    },
    Key {
        pattern: "wg:<workflow id>",
        kind: "string",
        holds: "a workflow's graph, protobuf `WorkflowRecord`, apart from its head `t:<workflow id>` (which waiters read at every change); expires with the head",
    },
    Key {
        pattern: "wl:<workflow id>",
        kind: "string",
        holds: "a workflow's node ids separated by spaces (CancelWorkflow's list), until the workflow finishes",
    },
    Key {
        pattern: "paused",
        kind: "set",
        holds: "paused queues",
    },
    Key {
        pattern: "rl:<bucket>",
        kind: "string",
        holds: "a rate bucket's GCRA theoretical arrival time, ms (partition 0)",
    },
    Key {
        pattern: "cc:<key>",
        kind: "set",
        holds: "tasks holding a permit of a concurrency key (partition 0)",
    },
    Key {
        pattern: "cz:<key>",
        kind: "sorted set",
        holds: "tasks parked for a concurrency key, scored by park sequence (partition 0)",
    },
    Key {
        pattern: "cr:<key>",
        kind: "hash",
        holds: "a concurrency key's reservation (r: task, s: its park sequence) and overtakes of its oldest waiter (b) (partition 0)",
    },
    Key {
        pattern: "evon",
        kind: "string",
        holds: "present while a WatchEvents subscriber watches (15 s TTL, renewed every 5 s): the scripts then publish every transition on the partition's channel {<prefix><n>}:tev",
    },
    Key {
        pattern: "layout",
        kind: "string",
        holds: "the key layout the data is in, 2 (absent: 1); a store upgrades older data when it connects (partition 0)",
    },
    Key {
        pattern: "cw:<key>",
        kind: "list",
        holds: "tasks parked by versions before several keys per task; moved back to their queues when a store connects, then gone (partition 0)",
    },
    Key {
        pattern: "cseq",
        kind: "string",
        holds: "the last park sequence given to a task waiting for concurrency keys (partition 0)",
    },
    Key {
        pattern: "partitions",
        kind: "string",
        holds: "the partition count the store was set up with (partition 0)",
    },
    Key {
        pattern: "sch",
        kind: "hash",
        holds: "schedules by id (`<namespace>` U+001F `<id>` outside `default`), protobuf (partition 0)",
    },
    Key {
        pattern: "disp",
        kind: "hash",
        holds: "dispatcher replicas: `<sessions> <alive until ms>` per replica id, renewed every few seconds, for rebalancing worker sessions (partition 0)",
    },
    Key {
        pattern: "wrk",
        kind: "hash",
        holds: "worker sessions of each dispatcher replica: `<alive until ms> <encoded ListWorkersResponse>` per replica id, renewed every 2 s, so that ListWorkers on any replica lists them all (partition 0)",
    },
    Key {
        pattern: "schv",
        kind: "hash",
        holds: "schedule versions, the compare-and-set token (partition 0)",
    },
    Key {
        pattern: "schn",
        kind: "sorted set",
        holds: "schedule ids by next run; absent when paused or finished (partition 0)",
    },
    Key {
        pattern: "schp",
        kind: "sorted set",
        holds: "claimed runs (`<id> <fire ms>`) by the deadline to settle them (partition 0)",
    },
    Key {
        pattern: "schr:<id>",
        kind: "list",
        holds: "a schedule's last 100 runs, newest first (partition 0)",
    },
];

/// One field of a task hash.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// Field name.
    pub name: &'static str,
    /// What it holds; absent means the default in parentheses.
    pub holds: &'static str,
}

/// Every field of `t:<id>`. Fields at their default are not written, so that
/// small tasks stay in Redis' compact hash encoding.
pub const TASK_FIELDS: &[Field] = &[
    Field {
        name: "st",
        holds: "state, the `TaskState` number",
    },
    Field {
        name: "qk",
        holds: "queue key with priority level (`<queue>:<name>[#N]`)",
    },
    Field {
        name: "sp",
        holds: "the submission record, `conveyor.store.v1.TaskRecord`",
    },
    Field {
        name: "at",
        holds: "attempts started (0)",
    },
    Field {
        name: "fl",
        holds: "failed attempts (0)",
    },
    Field {
        name: "tk",
        holds: "lease token of the current or last lease (0)",
    },
    Field {
        name: "ss",
        holds: "session holding or that last held the lease",
    },
    Field {
        name: "wk",
        holds: "worker id of that session",
    },
    Field {
        name: "ua",
        holds: "last state change, ms (creation)",
    },
    Field {
        name: "du",
        holds: "due time, ms (creation)",
    },
    Field {
        name: "fa",
        holds: "finish time, ms with a µs fraction",
    },
    Field {
        name: "ex",
        holds: "expiry instant, ms (none)",
    },
    Field {
        name: "ttl",
        holds: "result TTL, ms (the platform default)",
    },
    Field {
        name: "oc",
        holds: "outcome, `conveyor.store.v1.OutcomeRecord`",
    },
    Field {
        name: "pg",
        holds: "progress of the running attempt, `conveyor.v1.Progress`",
    },
    Field {
        name: "rb",
        holds: "rate bucket (none)",
    },
    Field {
        name: "ri",
        holds: "ms between starts of the rate bucket",
    },
    Field {
        name: "rs",
        holds: "the rate slot a parked task reserved, ms",
    },
    Field {
        name: "ck",
        holds: "concurrency keys, joined by a vertical bar (none)",
    },
    Field {
        name: "cl",
        holds: "their limits, joined by commas",
    },
    Field {
        name: "cs",
        holds: "park sequence: the task's place in its keys' waiting lines (never parked)",
    },
    Field {
        name: "w",
        holds: "set once somebody waits on the task: its changes are published",
    },
    Field {
        name: "wf",
        holds: "workflow nodes: the workflow's id (its head is the hash t:<workflow id>)",
    },
    Field {
        name: "wn",
        holds: "workflow nodes: the node's index in the workflow",
    },
    Field {
        name: "wc",
        holds: "workflow nodes: children, `<id>:<position among its parents>` separated by spaces",
    },
    Field {
        name: "wd",
        holds: "WAITING nodes: parents not finished yet",
    },
    Field {
        name: "wm",
        holds: "WAITING nodes: input, 1 none, 2 the one parent's result, 3 the JSON list of the parents' results",
    },
    Field {
        name: "wt",
        holds: "WAITING nodes: trigger, 1 all parents succeeded, 2 all finished, 3 a parent failed (link_error)",
    },
    Field {
        name: "wdl",
        holds: "WAITING nodes: delay once ready, `+<ms>` (countdown) or an instant (ETA)",
    },
    Field {
        name: "wi",
        holds: "ready nodes: their inputs in parent order, each `<length>:<parent id><state digit><outcome record>`; prepended to the arguments when read",
    },
    Field {
        name: "wx",
        holds: "nodes that did not run: the parent whose failure (or cancellation) settled them",
    },
    Field {
        name: "wr",
        holds: "nodes that did not run: the node whose own failure started the chain",
    },
    Field {
        name: "wnc",
        holds: "workflow heads: the number of nodes (marks the hash as a workflow's head)",
    },
    Field {
        name: "wp",
        holds: "workflow heads: nodes not finished; the head takes its final state at 0",
    },
    Field {
        name: "wfc",
        holds: "workflow heads: nodes FAILED",
    },
    Field {
        name: "wcc",
        holds: "workflow heads: nodes cancelled (link_error callbacks not needed are not counted)",
    },
    Field {
        name: "wff",
        holds: "workflow heads: the first node that FAILED or EXPIRED",
    },
    Field {
        name: "wq",
        holds: "workflow heads: present once CancelWorkflow was called",
    },
];

/// The README's tables, as markdown.
pub fn markdown() -> String {
    let mut text = String::from("| key (after `{cv:N}:`) | type | holds |\n|---|---|---|\n");
    for key in KEYS {
        text.push_str(&format!(
            "| `{}` | {} | {} |\n",
            key.pattern, key.kind, key.holds
        ));
    }
    text.push_str("\n| task field | holds |\n|---|---|\n");
    for field in TASK_FIELDS {
        text.push_str(&format!("| `{}` | {} |\n", field.name, field.holds));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::scripts::SOURCES;

    const BEGIN: &str =
        "<!-- redis-schema:begin (generated from services/store/src/redis/schema.rs) -->\n";
    const END: &str = "<!-- redis-schema:end -->";

    #[test]
    fn the_readme_shows_the_schema() {
        let readme = include_str!("../../../../README.md");
        let start = readme.find(BEGIN).expect("README has the schema markers") + BEGIN.len();
        let end = readme[start..].find(END).expect("end marker") + start;
        assert_eq!(
            &readme[start..end],
            markdown(),
            "README's Redis tables differ from schema.rs: paste the output of `cargo run -p conveyor-store --example redis_schema` between the markers"
        );
    }

    #[test]
    fn the_scripts_use_only_documented_keys_and_fields() {
        let all: String = SOURCES
            .iter()
            .map(|(_, source)| *source)
            .chain([include_str!("lua/common.lua")])
            .collect();
        // Keys: every `P .. 'name` in the code is a documented key.
        for piece in all.split("P .. '").skip(1) {
            let name: String = piece.chars().take_while(|c| *c != '\'').collect();
            // `t:<id>` is used as `P .. 't:' .. id`: its fixed part.
            let documented = KEYS
                .iter()
                .any(|key| key.pattern.split('<').next() == Some(name.as_str()))
                || PARTITION_CHANNELS.contains(&name.as_str());
            assert!(
                documented,
                "lua uses key `{name}` that schema.rs does not list"
            );
        }
        // Fields: every quoted field read or written on a task hash.
        for call in [
            "'HMGET', t, ",
            "'HSET', t, ",
            "'HGET', t, ",
            "'HDEL', t, ",
            "'HEXISTS', t, ",
        ] {
            for piece in all.split(call).skip(1) {
                let args: String = piece.chars().take_while(|c| *c != ')').collect();
                for (index, argument) in args.split(',').enumerate() {
                    let argument = argument.trim();
                    // HSET alternates field, value: only fields are quoted names.
                    let is_field = call != "'HSET', t, " || index % 2 == 0;
                    if is_field && argument.starts_with('\'') {
                        let name = argument.trim_matches('\'');
                        assert!(
                            TASK_FIELDS.iter().any(|field| field.name == name),
                            "lua uses task field `{name}` that schema.rs does not list"
                        );
                    }
                }
            }
        }
        for field in TASK_FIELDS {
            assert!(
                all.contains(&format!("'{}'", field.name)),
                "schema.rs lists `{}`, which no script uses",
                field.name
            );
        }
    }
}
