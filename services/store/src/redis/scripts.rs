//! The Lua scripts, one per transition so that each is atomic. The code lives
//! in `lua/*.lua`; each script is `lua/common.lua` (helpers) followed by its
//! own body, under one `#!lua` shebang so that Redis 7 treats it as a
//! declared-keys script (refused when it would cross slots on a cluster, or
//! run out of memory). Every script gets the partition's routing key as
//! `KEYS[1]` and derives every other key from it: see `schema.rs`.

/// Helpers shared by the task scripts.
const COMMON: &str = include_str!("lua/common.lua");

/// Every script of the store, by file name (without `.lua`).
pub(crate) const SOURCES: &[(&str, &str)] = &[
    ("enqueue", include_str!("lua/enqueue.lua")),
    ("lease", include_str!("lua/lease.lua")),
    ("mark_started", include_str!("lua/mark_started.lua")),
    ("watch", include_str!("lua/watch.lua")),
    ("heartbeat", include_str!("lua/heartbeat.lua")),
    ("complete", include_str!("lua/complete.lua")),
    ("release", include_str!("lua/release.lua")),
    ("reap", include_str!("lua/reap.lua")),
    ("promote", include_str!("lua/promote.lua")),
    ("cancel", include_str!("lua/cancel.lua")),
    ("progress", include_str!("lua/progress.lua")),
    ("forget", include_str!("lua/forget.lua")),
    ("replay", include_str!("lua/replay.lua")),
    ("workflow", include_str!("lua/workflow.lua")),
    ("cancel_workflow", include_str!("lua/cancel_workflow.lua")),
    ("schedule_put", include_str!("lua/schedule_put.lua")),
    ("schedule_claim", include_str!("lua/schedule_claim.lua")),
    ("schedule_settle", include_str!("lua/schedule_settle.lua")),
    ("schedule_delete", include_str!("lua/schedule_delete.lua")),
    ("schedule_due", include_str!("lua/schedule_due.lua")),
    ("dispatchers", include_str!("lua/dispatchers.lua")),
    ("workers", include_str!("lua/workers.lua")),
    (
        "requeue_parked_v1",
        include_str!("lua/requeue_parked_v1.lua"),
    ),
];

/// The shebang every script file starts with.
const SHEBANG: &str = "#!lua";

/// `source` without its first line, which must be the shebang.
fn body(name: &str, source: &str) -> String {
    let (first, rest) = source.split_once('\n').unwrap_or((source, ""));
    assert_eq!(
        first.trim(),
        SHEBANG,
        "lua/{name}.lua must start with {SHEBANG}"
    );
    rest.to_string()
}

/// The full text of script `name`: shebang, helpers, body.
pub(crate) fn assemble(name: &str, source: &str) -> String {
    let common = body("common", COMMON)
        .replace(
            "DEFAULT_TTL_MS",
            &conveyor_core::Limits::default()
                .default_result_ttl_ms
                .to_string(),
        )
        .replace(
            "CONC_OVERTAKE_LIMIT",
            &conveyor_core::concurrency::OVERTAKE_LIMIT.to_string(),
        )
        .replace(
            "CONC_WAKE_WINDOW",
            &conveyor_core::concurrency::WAKE_WINDOW.to_string(),
        );
    format!("{SHEBANG}\n{common}\n{}", body(name, source))
}

/// The compiled scripts (SHA computed once; EVALSHA with EVAL fallback).
#[derive(Debug)]
pub(crate) struct Scripts {
    pub enqueue: redis::Script,
    pub lease: redis::Script,
    pub mark_started: redis::Script,
    pub watch: redis::Script,
    pub heartbeat: redis::Script,
    pub complete: redis::Script,
    pub release: redis::Script,
    pub reap: redis::Script,
    pub promote: redis::Script,
    pub cancel: redis::Script,
    pub progress: redis::Script,
    pub forget: redis::Script,
    pub replay: redis::Script,
    pub workflow: redis::Script,
    pub cancel_workflow: redis::Script,
    pub schedule_put: redis::Script,
    pub schedule_claim: redis::Script,
    pub schedule_settle: redis::Script,
    pub schedule_delete: redis::Script,
    pub schedule_due: redis::Script,
    pub dispatchers: redis::Script,
    pub workers: redis::Script,
    pub requeue_parked_v1: redis::Script,
}

impl Scripts {
    /// `sharded`: on a Redis Cluster the scripts publish with `SPUBLISH`, so
    /// that a message stays within the shard of its partition (whose hash
    /// tag every channel carries) instead of being broadcast to every node.
    pub(crate) fn new(sharded: bool) -> Self {
        let script = |name: &str| {
            let (_, source) = SOURCES
                .iter()
                .find(|(file, _)| *file == name)
                .unwrap_or_else(|| panic!("no script lua/{name}.lua"));
            let text = assemble(name, source);
            if sharded {
                redis::Script::new(&text.replace("redis.call('PUBLISH'", "redis.call('SPUBLISH'"))
            } else {
                redis::Script::new(&text)
            }
        };
        Self {
            enqueue: script("enqueue"),
            lease: script("lease"),
            mark_started: script("mark_started"),
            watch: script("watch"),
            heartbeat: script("heartbeat"),
            complete: script("complete"),
            release: script("release"),
            reap: script("reap"),
            promote: script("promote"),
            cancel: script("cancel"),
            progress: script("progress"),
            forget: script("forget"),
            replay: script("replay"),
            workflow: script("workflow"),
            cancel_workflow: script("cancel_workflow"),
            schedule_put: script("schedule_put"),
            schedule_claim: script("schedule_claim"),
            schedule_settle: script("schedule_settle"),
            schedule_delete: script("schedule_delete"),
            schedule_due: script("schedule_due"),
            dispatchers: script("dispatchers"),
            workers: script("workers"),
            requeue_parked_v1: script("requeue_parked_v1"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_has_the_shebang_and_no_key_from_argv() {
        for (name, source) in SOURCES {
            let text = assemble(name, source);
            assert!(text.starts_with("#!lua\n"), "{name}");
            // Keys are built from P (derived from KEYS[1]); a key built
            // from an argument would look like `ARGV[n] ..` inside a call.
            for line in text.lines() {
                let code = line.split("--").next().unwrap_or("");
                if code.contains("redis.call(") && !code.contains("redis.call('PUBLISH'") {
                    let after = code.split("redis.call(").nth(1).unwrap_or("");
                    let key = after.split(',').nth(1).unwrap_or("").trim();
                    assert!(
                        !key.starts_with("ARGV"),
                        "lua/{name}.lua builds a key from ARGV: {line}"
                    );
                }
            }
        }
    }
}
