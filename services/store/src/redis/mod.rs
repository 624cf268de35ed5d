//! The production store on Redis (or Redis Cluster): Lua scripts for atomic
//! transitions, one hash tag per partition, and pub/sub notifications feeding
//! the in-process [`EventHub`] so that nothing on a hot path polls.

mod codec;
pub mod connection;
pub mod schema;

/// Decoders of what the store reads back from Redis, for the fuzz targets
/// and their proptest twins (`services/fuzzing`): on any bytes they refuse,
/// never panic.
#[doc(hidden)]
pub mod decode {
    use conveyor_core::TaskId;

    /// A task hash's fields, as `HGETALL` returns them.
    pub fn task(
        id: TaskId,
        fields: Vec<(String, Vec<u8>)>,
    ) -> conveyor_core::Result<conveyor_core::StoredTask> {
        super::codec::parse_task(id, fields)
    }

    /// A workflow node's materialized inputs (`wi`): how many arrivals.
    pub fn arrivals(blob: &[u8]) -> Result<usize, String> {
        super::codec::decode_arrivals(blob).map(|arrivals| arrivals.len())
    }
}
mod scripts;
mod subscriber;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use prost::Message;
use redis::Value;
use tokio::task::AbortHandle;

use conveyor_core::workflow::NewWorkflow;
use conveyor_core::{ConveyorError, NewTask, Result, StoredTask, TaskId, TaskState};

use crate::Store;
use crate::events::EventHub;
use crate::stream::StoreEvent;
use crate::types::*;
use codec::{bytes_of, int_of, parse_task, unavailable};
use connection::Connection;
pub use connection::RedisTls;
use scripts::Scripts;

/// How to reach Redis and lay out keys.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// Prepended to every key and channel, so deployments (and tests) can share
    /// one Redis.
    pub prefix: String,
    /// Partitions per queue; each is one hash slot, so more partitions spread
    /// a busy queue over more cluster shards.
    pub partitions: u16,
    /// Time limit of any one store call.
    pub command_timeout: Duration,
    /// Whose clock the scripts compare deadlines on.
    pub clock: StoreClock,
    /// Durability of submissions: when above 0, a submission (a task, a
    /// batch, a workflow) is acknowledged only once this many replicas of
    /// its shard have it (`WAIT`), so that a failover right after the
    /// acknowledgement cannot lose it. 0: acknowledged once the primary has
    /// it (Redis' default, asynchronous replication).
    pub wait_replicas: u32,
    /// How long a submission waits for those replicas before it fails with
    /// UNAVAILABLE (written, but not known to survive a failover).
    pub wait_timeout: Duration,
    /// TLS settings for a `rediss://` URL.
    pub tls: RedisTls,
}

/// Whose clock decides lease expiry, due times, expiry and rate slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreClock {
    /// Redis' `TIME`: one clock for every replica, whatever theirs say.
    /// Instants a caller passes are turned into offsets from its own now,
    /// and applied to the store's. The production setting.
    Server,
    /// The `now` each caller passes, as given: for tests that drive virtual
    /// time (the conformance suite and the differential test).
    Caller,
}

impl RedisConfig {
    /// Defaults for `url`: prefix `cv:`, one partition, 5 s commands.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "cv:".to_string(),
            partitions: 1,
            command_timeout: Duration::from_secs(5),
            clock: StoreClock::Server,
            wait_replicas: 0,
            wait_timeout: Duration::from_secs(1),
            tls: RedisTls::default(),
        }
    }
}

/// Redis-backed [`Store`].
pub struct RedisStore {
    connection: Connection,
    /// Each partition's hash tag (see [`connection::partition_tags`]).
    tags: Vec<String>,
    config: RedisConfig,
    scripts: Scripts,
    events: EventHub,
    /// Per partition, the pub/sub channels its scripts publish on, under
    /// its hash tag: on a cluster they are sharded channels (`SPUBLISH`),
    /// so a message goes to the shard that owns the partition, not to every
    /// node.
    channels: Vec<Channels>,
    /// With `wait_replicas`: connections of their own for submissions, each
    /// a script then a `WAIT` (which blocks its connection until the
    /// replicas answer, so it must not hold up leases and outcomes).
    durable: Vec<Connection>,
    /// Rotates the first partition and queue key tried by `lease`, for fairness.
    rotor: AtomicUsize,
    /// Partitions where each of this process's sessions took leases: what
    /// a heartbeat must extend.
    session_partitions:
        std::sync::Mutex<std::collections::HashMap<String, std::collections::BTreeSet<u16>>>,
    subscriber: AbortHandle,
}

/// Connections for submissions under `wait_replicas` (see `durable`).
const DURABLE_CONNECTIONS: usize = 4;

/// The pub/sub channels of one partition, all under its hash tag.
#[derive(Clone, Debug)]
pub(crate) struct Channels {
    /// Passed to the scripts, which derive the ready channel from it.
    pub ev: String,
    /// Queues with new ready tasks (and `*`: a queue was resumed).
    pub rdy: String,
    /// Revoked leases: `<session> <task id>`.
    pub rev: String,
    /// WatchEvents' task and worker events (published while watched).
    pub tev: String,
    /// This process's channel for the tasks it waits on.
    pub watch: String,
}

impl Channels {
    fn new(prefix: &str, process: &str) -> Self {
        Self {
            ev: format!("{prefix}ev"),
            rdy: format!("{prefix}rdy"),
            rev: format!("{prefix}rev"),
            tev: format!("{prefix}{}", schema::EVENT_CHANNEL),
            watch: format!("{prefix}ev:{process}"),
        }
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("config", &self.config)
            .finish()
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

/// Why connecting to `config.url` fails, from one attempt.
async fn connect_failure(config: &RedisConfig) -> ConveyorError {
    let timed_out =
        || ConveyorError::Unavailable(format!("redis {}: connect timed out", config.url));
    if connection::cluster_nodes(&config.url).is_some() {
        return timed_out();
    }
    let attempt = async {
        connection::client(&config.url, &config.tls)?
            .get_multiplexed_async_connection()
            .await
    };
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(Err(error)) => tls_hint(config, error),
        _ => timed_out(),
    }
}

/// A connection error, with what to set when it is TLS's.
fn tls_hint(config: &RedisConfig, error: redis::RedisError) -> ConveyorError {
    let text = error.to_string();
    let hint = if text.contains("UnknownIssuer") || text.contains("certificate") {
        "; give the CA that signed Redis' certificate with --redis-tls-ca (CONVEYOR_REDIS_TLS_CA), \
         and a client certificate with --redis-tls-cert/--redis-tls-key if Redis requires one"
    } else if config.url.starts_with("redis:") && text.contains("Connection reset") {
        "; does this Redis speak TLS only? then write rediss://"
    } else {
        ""
    };
    ConveyorError::Unavailable(format!("redis {}: {text}{hint}", config.url))
}

impl RedisStore {
    /// Connects, and subscribes to change notifications before returning so
    /// that no notification after this call is missed.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        let nodes = connection::cluster_nodes(&config.url);
        let open = |url: &str| {
            connection::client(url, &config.tls)
                .map_err(|error| ConveyorError::Unavailable(format!("redis url {url}: {error}")))
        };
        // Pub/sub: one connection to the one Redis; on a cluster, sharded
        // pub/sub through a cluster client of its own (see subscriber.rs).
        let clients = match &nodes {
            Some(nodes) if nodes.is_empty() => {
                return Err(ConveyorError::Unavailable(format!(
                    "redis url {}: a cluster URL names its nodes: redis+cluster://host:port,host:port",
                    config.url
                )));
            }
            Some(_) => Vec::new(),
            None => vec![open(&config.url)?],
        };
        let connecting = Connection::open_with(&config.url, config.command_timeout, &config.tls);
        let connection = match tokio::time::timeout(config.command_timeout, connecting).await {
            Ok(connected) => connected.map_err(|error| tls_hint(&config, error))?,
            // The reconnecting manager retried until the deadline: one plain
            // attempt says why (a TLS error, a refused connection).
            Err(_) => return Err(connect_failure(&config).await),
        };
        let events = EventHub::default();
        let tags =
            connection::partition_tags(&config.prefix, config.partitions, connection.is_cluster());
        // This process's own channel (per partition) for the changes of the
        // tasks it waits on: the scripts publish a task's events only to its
        // watchers.
        let process = uuid::Uuid::now_v7().simple().to_string();
        let channels: Vec<Channels> = tags
            .iter()
            .map(|tag| Channels::new(&format!("{{{tag}}}:"), &process))
            .collect();
        let subscriber = subscriber::start(
            nodes,
            clients,
            events.clone(),
            channels.clone(),
            connection.clone(),
            config.command_timeout,
            &config.tls,
        )
        .await?;
        let sharded = connection.is_cluster();
        let mut durable = Vec::new();
        if config.wait_replicas > 0 {
            for _ in 0..DURABLE_CONNECTIONS {
                let connecting =
                    Connection::open_with(&config.url, config.command_timeout, &config.tls);
                durable.push(
                    tokio::time::timeout(config.command_timeout, connecting)
                        .await
                        .map_err(|_| {
                            ConveyorError::Unavailable(format!(
                                "redis {}: connect timed out",
                                config.url
                            ))
                        })?
                        .map_err(unavailable)?,
                );
            }
        }
        let store = Self {
            durable,
            tags,
            connection,
            config,
            scripts: Scripts::new(sharded),
            events,
            channels,
            rotor: AtomicUsize::new(0),
            session_partitions: Default::default(),
            subscriber,
        };
        let fresh = store.check_partitions().await?;
        store.upgrade_layout(fresh).await?;
        Ok(store)
    }

    /// Brings data of an older layout up to date, once per store: a fresh
    /// store is marked current at once; one written by an older version is
    /// upgraded, then marked, so later starts pay one GET.
    async fn upgrade_layout(&self, fresh: bool) -> Result<()> {
        let marker = format!("{}layout", self.meta_prefix());
        let mut connection = self.connection.clone();
        if !fresh {
            let layout: Option<u32> = self
                .timed(redis::cmd("GET").arg(&marker).query_async(&mut connection))
                .await?;
            if layout.is_none_or(|layout| layout < LAYOUT) {
                self.requeue_parked_v1().await?;
            }
        }
        let _: () = self
            .timed(
                redis::cmd("SET")
                    .arg(&marker)
                    .arg(LAYOUT)
                    .query_async(&mut connection),
            )
            .await?;
        Ok(())
    }

    /// Moves tasks parked for a concurrency permit by an older version (in
    /// lists `cw:<key>`, which nothing reads any more) back to their queues.
    async fn requeue_parked_v1(&self) -> Result<()> {
        if self.connection.is_cluster() {
            // Cluster support came after the v1 layout: no such lists exist
            // there (and SCAN would see one node only).
            return Ok(());
        }
        let prefix = self.partition_prefix(conveyor_core::placement::COORDINATION_PARTITION);
        let pattern = format!("{}cw:*", redis_glob_escape(&prefix));
        let mut connection = self.connection.clone();
        let mut cursor: u64 = 0;
        let mut lists: Vec<String> = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .timed(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut connection),
                )
                .await?;
            lists.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        for list in lists {
            let key = &list[prefix.len() + "cw:".len()..];
            let mut invocation = self.invoke(
                &self.scripts.requeue_parked_v1,
                conveyor_core::placement::COORDINATION_PARTITION,
            );
            invocation
                .arg(&self.ch(conveyor_core::placement::COORDINATION_PARTITION).ev)
                .arg(key);
            let moved: i64 = redis::from_redis_value(self.run(&invocation).await?).unwrap_or(0);
            tracing::info!(key, moved, "requeued tasks parked by an older version");
        }
        Ok(())
    }

    /// Records the partition count on first use and refuses a different one
    /// later: tasks, keys and limits were placed by that count, and a process
    /// that assumed another would not see some of them.
    /// Returns whether the store is new (nothing was recorded yet).
    async fn check_partitions(&self) -> Result<bool> {
        let key = format!("{}partitions", self.meta_prefix());
        let mut connection = self.connection.clone();
        let stored: Option<u16> = self
            .timed(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(self.config.partitions)
                    .arg("NX")
                    .arg("GET")
                    .query_async(&mut connection),
            )
            .await?;
        match stored {
            Some(stored) if stored != self.config.partitions => {
                Err(ConveyorError::FailedPrecondition(format!(
                    "this Redis (key prefix {:?}) was set up with --partitions {stored}, \
                     not {}: start every process with --partitions {stored} \
                     (CONVEYOR_PARTITIONS), or use another --redis-prefix for a new layout",
                    self.config.prefix, self.config.partitions
                )))
            }
            Some(_) => Ok(false),
            None => Ok(true),
        }
    }

    /// Where the store's own records live (the partition count, the layout
    /// version): `{cv:0}:` whatever the partition count, so that a process
    /// started with another count finds them. On one Redis it is partition
    /// 0's prefix; on a cluster, partition 0's tag depends on the count.
    fn meta_prefix(&self) -> String {
        format!("{{{}0}}:", self.config.prefix)
    }

    /// The pub/sub channels of a partition.
    fn ch(&self, partition: u16) -> &Channels {
        &self.channels[usize::from(partition) % self.channels.len()]
    }

    /// `SPUBLISH` on a cluster (sharded pub/sub), `PUBLISH` on one node.
    fn publish(&self) -> &'static str {
        if self.connection.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// The key prefix of a partition, hash tag included.
    fn partition_prefix(&self, partition: u16) -> String {
        let tag = &self.tags[usize::from(partition) % self.tags.len()];
        format!("{{{tag}}}:")
    }

    /// A script call routed to `partition`: KEYS[1] is the partition's
    /// routing key, whose hash tag every key the script touches shares (the
    /// scripts derive their keys from it), so Redis Cluster sends the call
    /// to the slot that holds them all.
    fn invoke<'a>(&self, script: &'a redis::Script, partition: u16) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        invocation.key(format!("{}sched", self.partition_prefix(partition)));
        invocation
    }

    /// The `now` argument of a script: empty for the store's clock.
    fn now_arg(&self, now_ms: i64) -> String {
        match self.config.clock {
            StoreClock::Server => String::new(),
            StoreClock::Caller => now_ms.to_string(),
        }
    }

    /// Runs a script whose second run changes nothing the first did not
    /// (or only how its answer reads): a call that met a dropped connection
    /// is retried once on the re-established one.
    async fn run(&self, invocation: &redis::ScriptInvocation<'_>) -> Result<Value> {
        match self.attempt(invocation).await {
            Err(Retry::Dropped(_)) => {
                tracing::info!("redis connection was dropped; retrying the call once");
                self.attempt(invocation).await.map_err(Retry::into_error)
            }
            other => other.map_err(Retry::into_error),
        }
    }

    /// Runs a script once: for calls that must not run twice (a lease whose
    /// answer was lost would hold its tasks until the session ends).
    async fn run_once(&self, invocation: &redis::ScriptInvocation<'_>) -> Result<Value> {
        self.attempt(invocation).await.map_err(Retry::into_error)
    }

    /// Runs a submission's script: with `wait_replicas`, on a connection of
    /// its own and followed by `WAIT` on it, so that the answer comes only
    /// once the replicas have the write. Retried (when `keyed`, so that a
    /// second run returns the first one's tasks) after a dropped connection.
    async fn run_submission(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
        partition: u16,
        keyed: bool,
    ) -> Result<Value> {
        if self.durable.is_empty() {
            return if keyed {
                self.run(invocation).await
            } else {
                self.run_once(invocation).await
            };
        }
        let pick = self.rotor.fetch_add(1, Ordering::Relaxed) % self.durable.len();
        let mut connection = self.durable[pick].clone();
        let value = match self.attempt_on(invocation, &mut connection).await {
            Err(Retry::Dropped(_)) if keyed => self
                .attempt_on(invocation, &mut connection)
                .await
                .map_err(Retry::into_error)?,
            other => other.map_err(Retry::into_error)?,
        };
        self.wait_for_replicas(&mut connection, partition).await?;
        Ok(value)
    }

    /// `WAIT` on the connection that wrote, routed on a cluster to the
    /// primary of `partition`'s slot (the one the script ran on).
    async fn wait_for_replicas(&self, connection: &mut Connection, partition: u16) -> Result<()> {
        let wanted = self.config.wait_replicas;
        let timeout_ms = self.config.wait_timeout.as_millis().max(1) as u64;
        let mut wait = redis::cmd("WAIT");
        wait.arg(wanted).arg(timeout_ms);
        let limit = self.config.wait_timeout + self.config.command_timeout;
        let acked: i64 = match connection {
            Connection::Single(single) => self.timed_for(limit, wait.query_async(single)).await?,
            Connection::Cluster(cluster) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let tag = &self.tags[usize::from(partition) % self.tags.len()];
                let route = Route::new(connection::slot(tag) as u16, SlotAddr::Master);
                let reply = self
                    .timed_for(
                        limit,
                        cluster.route_command(
                            wait,
                            RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                        ),
                    )
                    .await?;
                redis::from_redis_value(reply).map_err(|error| {
                    ConveyorError::Unavailable(format!("redis: WAIT answered {error}"))
                })?
            }
        };
        if acked < i64::from(wanted) {
            return Err(ConveyorError::Unavailable(format!(
                "the submission was written, but {acked} of the {wanted} replicas that \
                 --redis-wait-replicas asks for confirmed it within {timeout_ms} ms, so a \
                 failover could lose it: retry with the same idempotency key (which returns \
                 the task if it was kept), and check the replicas (INFO replication)"
            )));
        }
        Ok(())
    }

    async fn timed_for<T>(
        &self,
        limit: Duration,
        future: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        tokio::time::timeout(limit, future)
            .await
            .map_err(|_| ConveyorError::Unavailable("redis call timed out".into()))?
            .map_err(unavailable)
    }

    /// One try of a script, telling a dropped connection from other errors.
    async fn attempt(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> std::result::Result<Value, Retry> {
        let mut connection = self.connection.clone();
        self.attempt_on(invocation, &mut connection).await
    }

    async fn attempt_on(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
        connection: &mut Connection,
    ) -> std::result::Result<Value, Retry> {
        match tokio::time::timeout(
            self.config.command_timeout,
            invocation.invoke_async(connection),
        )
        .await
        {
            Err(_) => Err(Retry::Final(ConveyorError::Unavailable(
                "redis call timed out".into(),
            ))),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) if error.is_connection_dropped() => Err(Retry::Dropped(error)),
            Ok(Err(error)) => Err(Retry::Final(unavailable(error))),
        }
    }

    /// 0: the mode's condition failed; -1: version conflict; else the new
    /// version.
    async fn put_schedule(
        &self,
        schedule: conveyor_api::pb::Schedule,
        next_ms: Option<i64>,
        mode: &str,
        expected_version: Option<u64>,
    ) -> Result<i64> {
        let mut invocation = self.invoke(&self.scripts.schedule_put, 0);
        invocation
            .arg(&schedule.id)
            .arg(schedule.encode_to_vec())
            .arg(next_ms.unwrap_or(-1))
            .arg(mode)
            .arg(expected_version.map(|v| v.to_string()).unwrap_or_default());
        Ok(int_of(&self.run_once(&invocation).await?))
    }

    /// Schedules with their versions, from parallel replies.
    fn with_versions(
        ids: &[String],
        records: Vec<Option<Vec<u8>>>,
        versions: Vec<Option<u64>>,
    ) -> Result<Vec<conveyor_api::pb::Schedule>> {
        ids.iter()
            .zip(records)
            .zip(versions)
            .filter_map(|((id, bytes), version)| {
                bytes.map(|bytes| {
                    decode_schedule(&bytes, id).map(|mut schedule| {
                        schedule.version = version.unwrap_or(0);
                        schedule
                    })
                })
            })
            .collect()
    }

    /// A plain command under the store's time limit.
    async fn timed<T>(
        &self,
        future: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        self.timed_for(self.config.command_timeout, future).await
    }

    async fn release_partition(
        &self,
        partition: u16,
        session_id: &str,
        now_ms: i64,
    ) -> Result<Vec<TaskId>> {
        let mut invocation = self.invoke(&self.scripts.release, partition);
        invocation
            .arg(self.now_arg(now_ms))
            .arg(session_id)
            .arg(&self.ch(partition).ev)
            .arg(&self.ch(partition).rdy);
        ids_of(self.run(&invocation).await?)
    }
}

/// A failed store call: worth one retry (the connection was dropped, so
/// the manager reconnects), or not.
enum Retry {
    Dropped(redis::RedisError),
    Final(ConveyorError),
}

impl Retry {
    fn into_error(self) -> ConveyorError {
        match self {
            Retry::Dropped(error) => unavailable(error),
            Retry::Final(error) => error,
        }
    }
}

/// Items grouped by the partition of their task (one script call each),
/// each with its index in the request so replies can be put back in order.
fn group_by_partition<T>(
    items: Vec<T>,
    id: impl Fn(&T) -> TaskId,
) -> BTreeMap<u16, Vec<(usize, T)>> {
    let mut groups: BTreeMap<u16, Vec<(usize, T)>> = BTreeMap::new();
    for (index, item) in items.into_iter().enumerate() {
        groups
            .entry(id(&item).partition())
            .or_default()
            .push((index, item));
    }
    groups
}

/// A task's due time as the enqueue script reads it: relative to now
/// (`+N`) unless an ETA names the instant, so that a countdown runs on the
/// store's clock even when the submitter's is off.
fn due_arg(task: &NewTask, now_ms: i64) -> String {
    let eta = task
        .record
        .options
        .as_ref()
        .is_some_and(|options| options.eta.is_some());
    if eta {
        task.due_at_ms.to_string()
    } else {
        format!("+{}", (task.due_at_ms - now_ms).max(0))
    }
}

/// A workflow node's uncommon fields for workflow.lua, '' when all are the
/// defaults (the common case: one argument instead of eight).
fn node_extra(
    task: &NewTask,
    node: &conveyor_core::workflow::NewNode,
    now_ms: i64,
    ttl_arg: &dyn Fn(i64) -> String,
) -> String {
    let due = due_arg(task, now_ms);
    let ttl = ttl_arg(task.result_ttl_ms);
    let delay = node.ready_delay.map(|delay| delay.to_script());
    if due == "+0"
        && task.expires_at_ms == 0
        && ttl.is_empty()
        && task.rate_limit.is_none()
        && task.concurrency.is_empty()
        && delay.is_none()
    {
        return String::new();
    }
    let (bucket, interval) = task
        .rate_limit
        .as_ref()
        .map_or((String::new(), 0.0), |(bucket, interval)| {
            (bucket.clone(), *interval)
        });
    [
        due,
        task.expires_at_ms.to_string(),
        ttl,
        bucket,
        format!("{interval:?}"),
        concurrency_keys(&task.concurrency),
        concurrency_limits(&task.concurrency),
        delay.unwrap_or_default(),
    ]
    .join("\u{1f}")
}

fn decode_schedule(bytes: &[u8], id: &str) -> Result<conveyor_api::pb::Schedule> {
    conveyor_api::pb::Schedule::decode(bytes).map_err(|error| ConveyorError::Corrupt {
        key: format!("schedule {id}"),
        reason: error.to_string(),
    })
}

fn items(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) => items,
        _ => Vec::new(),
    }
}

fn ids_of(value: Value) -> Result<Vec<TaskId>> {
    items(value)
        .iter()
        .map(|item| {
            let text = String::from_utf8(bytes_of(item)).unwrap_or_default();
            TaskId::parse(&text, "id").map_err(|_| ConveyorError::Corrupt {
                key: text.clone(),
                reason: "task id in store is not a uuid".into(),
            })
        })
        .collect()
}

fn state_of(code: i64) -> Result<TaskState> {
    TaskState::from_i32(code as i32).ok_or_else(|| ConveyorError::Corrupt {
        key: "state".into(),
        reason: format!("unknown state {code}"),
    })
}

#[async_trait]
impl Store for RedisStore {
    fn partitions(&self) -> u16 {
        self.config.partitions
    }

    fn events(&self) -> &EventHub {
        &self.events
    }

    async fn enqueue(&self, tasks: Vec<NewTask>, now_ms: i64) -> Result<Vec<EnqueueAck>> {
        let count = tasks.len();
        let by_partition = group_by_partition(tasks, |item| item.id);
        let mut acks: Vec<Option<EnqueueAck>> = vec![None; count];
        for (partition, group) in by_partition {
            let mut invocation = self.invoke(&self.scripts.enqueue, partition);
            invocation
                .arg(self.now_arg(now_ms))
                .arg(&self.ch(partition).rdy);
            for (_, task) in &group {
                invocation
                    .arg(task.id.to_string())
                    .arg(
                        QueueKey::new(&task.queue, &task.record.name)
                            .at_priority(
                                task.record
                                    .options
                                    .as_ref()
                                    .map_or(0, |options| options.priority),
                            )
                            .as_str(),
                    )
                    .arg(task.record.encode_to_vec())
                    .arg(due_arg(task, now_ms))
                    .arg(task.expires_at_ms)
                    // The default TTL is not stored (see the finish helper).
                    .arg(
                        if task.result_ttl_ms
                            == conveyor_core::Limits::default().default_result_ttl_ms
                        {
                            String::new()
                        } else {
                            task.result_ttl_ms.to_string()
                        },
                    )
                    .arg(task.idempotency_key.as_deref().unwrap_or(""))
                    .arg(task.idempotency_ttl_ms)
                    .arg(
                        task.rate_limit
                            .as_ref()
                            .map_or("", |(bucket, _)| bucket.as_str()),
                    )
                    .arg(
                        task.rate_limit
                            .as_ref()
                            .map_or(0.0, |(_, interval)| *interval),
                    )
                    .arg(concurrency_keys(&task.concurrency))
                    .arg(concurrency_limits(&task.concurrency));
            }
            // Run twice, tasks without an idempotency key would be stored
            // twice: only a batch keyed throughout is retried.
            let keyed = group.iter().all(|(_, task)| task.idempotency_key.is_some());
            let reply = self.run_submission(&invocation, partition, keyed).await?;
            let reply = items(reply);
            for ((index, _), chunk) in group.iter().zip(reply.chunks(3)) {
                let [id, duplicate, state] = chunk else {
                    continue;
                };
                let id = ids_of(Value::Array(vec![id.clone()]))?.remove(0);
                // A duplicate whose first task's record is gone reports 0.
                let state = match int_of(state) {
                    0 => None,
                    code => Some(state_of(code)?),
                };
                acks[*index] = Some(EnqueueAck {
                    id,
                    state,
                    duplicate: int_of(duplicate) == 1,
                });
            }
        }
        acks.into_iter()
            .map(|ack| {
                ack.ok_or_else(|| {
                    ConveyorError::Unavailable("short reply from enqueue script".into())
                })
            })
            .collect()
    }

    async fn submit_workflow(&self, workflow: NewWorkflow, now_ms: i64) -> Result<WorkflowAck> {
        let partition = workflow.id.partition();
        let default_ttl = conveyor_core::Limits::default().default_result_ttl_ms;
        let ttl_arg = |ttl: i64| {
            if ttl == default_ttl {
                String::new()
            } else {
                ttl.to_string()
            }
        };
        let mut invocation = self.invoke(&self.scripts.workflow, partition);
        invocation
            .arg(self.now_arg(now_ms))
            .arg(&self.ch(partition).rdy)
            .arg(&self.ch(partition).ev)
            .arg(workflow.id.to_string())
            .arg(workflow.head.encode_to_vec())
            .arg(ttl_arg(workflow.result_ttl_ms))
            .arg(workflow.graph.encode_to_vec())
            .arg(workflow.idempotency_key.as_deref().unwrap_or(""))
            .arg(workflow.idempotency_ttl_ms);
        let mut children = String::new();
        for (index, node) in workflow.nodes.iter().enumerate() {
            let task = &node.task;
            children.clear();
            for (child, position) in &node.children {
                if !children.is_empty() {
                    children.push(' ');
                }
                let _ = write!(
                    children,
                    "{}:{position}",
                    workflow.nodes[*child as usize].task.id
                );
            }
            let wait = if node.parents.is_empty() {
                String::new()
            } else {
                format!(
                    "{} {} {}",
                    node.parents.len(),
                    node.rule.input_code(),
                    node.rule.trigger_code()
                )
            };
            invocation
                .arg(task.id.to_string())
                .arg(
                    QueueKey::new(&task.queue, &task.record.name)
                        .at_priority(
                            task.record
                                .options
                                .as_ref()
                                .map_or(0, |options| options.priority),
                        )
                        .as_str(),
                )
                .arg(task.record.encode_to_vec())
                .arg(index)
                .arg(wait)
                .arg(children.as_str())
                .arg(node_extra(task, node, now_ms, &ttl_arg));
        }
        // Run twice, a workflow without an idempotency key would be stored
        // twice: only a keyed one is retried.
        let reply = self
            .run_submission(&invocation, partition, workflow.idempotency_key.is_some())
            .await?;
        let reply = items(reply);
        let (Some(id), Some(duplicate)) = (reply.first(), reply.get(1)) else {
            return Err(ConveyorError::Corrupt {
                key: workflow.id.to_string(),
                reason: "the workflow script answered nothing".into(),
            });
        };
        let id = ids_of(Value::Array(vec![id.clone()]))?.remove(0);
        if int_of(duplicate) == 0 {
            return Ok(WorkflowAck {
                id,
                task_ids: workflow.nodes.iter().map(|node| node.task.id).collect(),
                duplicate: false,
            });
        }
        let task_ids = match self
            .get_workflow(id, WorkflowNodes::Outputs, now_ms)
            .await?
        {
            Some(earlier) => earlier
                .graph
                .nodes
                .iter()
                .filter_map(|node| TaskId::parse(&node.task_id, "task_id").ok())
                .collect(),
            None => Vec::new(),
        };
        Ok(WorkflowAck {
            id,
            task_ids,
            duplicate: true,
        })
    }

    async fn get_workflow(
        &self,
        id: TaskId,
        nodes: WorkflowNodes,
        now_ms: i64,
    ) -> Result<Option<StoredWorkflow>> {
        let Some(head) = self.get(id, now_ms).await? else {
            return Ok(None);
        };
        if !head.is_workflow {
            return Ok(None);
        }
        let prefix = self.partition_prefix(id.partition());
        let key = format!("{prefix}t:{id}");
        let mut connection = self.connection.clone();
        let (counters, graph): ((Option<u32>, Option<u32>, Option<String>), Option<Vec<u8>>) =
            tokio::time::timeout(
                self.config.command_timeout,
                redis::pipe()
                    .cmd("HMGET")
                    .arg(&key)
                    .arg("wp")
                    .arg("wfc")
                    .arg("wff")
                    .cmd("GET")
                    .arg(format!("{prefix}wg:{id}"))
                    .query_async(&mut connection),
            )
            .await
            .map_err(|_| ConveyorError::Unavailable("redis call timed out".into()))?
            .map_err(unavailable)?;
        let (unfinished, failed, first_failed) = counters;
        let Some(graph) = graph else {
            return Ok(None);
        };
        let graph =
            conveyor_api::store_pb::WorkflowRecord::decode(graph.as_slice()).map_err(|error| {
                ConveyorError::Corrupt {
                    key: key.clone(),
                    reason: format!("workflow graph: {error}"),
                }
            })?;
        let wanted: Vec<u32> = match nodes {
            WorkflowNodes::All => (0..graph.nodes.len() as u32).collect(),
            WorkflowNodes::Outputs => graph.outputs.clone(),
        };
        let mut read = Vec::with_capacity(wanted.len());
        for chunk in wanted.chunks(1_000) {
            let mut pipe = redis::pipe();
            for index in chunk {
                let task_id = &graph.nodes[*index as usize].task_id;
                pipe.cmd("HGETALL").arg(format!("{prefix}t:{task_id}"));
            }
            let replies: Vec<Vec<(String, Vec<u8>)>> = tokio::time::timeout(
                self.config.command_timeout,
                pipe.query_async(&mut connection),
            )
            .await
            .map_err(|_| ConveyorError::Unavailable("redis call timed out".into()))?
            .map_err(unavailable)?;
            for (index, fields) in chunk.iter().zip(replies) {
                if fields.is_empty() {
                    continue;
                }
                let task_id = TaskId::parse(&graph.nodes[*index as usize].task_id, "task_id")
                    .map_err(|_| ConveyorError::Corrupt {
                        key: key.clone(),
                        reason: "node id is not a uuid".into(),
                    })?;
                read.push((*index, parse_task(task_id, fields)?));
            }
        }
        Ok(Some(StoredWorkflow {
            head,
            graph,
            nodes: read,
            unfinished: unfinished.unwrap_or(0),
            failed: failed.unwrap_or(0),
            first_failed,
        }))
    }

    async fn cancel_workflow(&self, id: TaskId, now_ms: i64) -> Result<Option<(u32, TaskState)>> {
        let mut invocation = self.invoke(&self.scripts.cancel_workflow, id.partition());
        invocation
            .arg(id.to_string())
            .arg(self.now_arg(now_ms))
            .arg(&self.ch(id.partition()).ev)
            .arg(&self.ch(id.partition()).rev);
        let reply = items(self.run(&invocation).await?);
        match reply.as_slice() {
            [count, state] => Ok(Some((int_of(count) as u32, state_of(int_of(state))?))),
            _ => Ok(None),
        }
    }

    async fn get(&self, id: TaskId, _now_ms: i64) -> Result<Option<StoredTask>> {
        let key = format!("{}t:{id}", self.partition_prefix(id.partition()));
        let read = || async {
            let mut connection = self.connection.clone();
            tokio::time::timeout(
                self.config.command_timeout,
                redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async::<Vec<(String, Vec<u8>)>>(&mut connection),
            )
            .await
            .map_err(|_| ConveyorError::Unavailable("redis call timed out".into()))
        };
        // A read: retried once when it met a dropped connection.
        let fields = match read().await? {
            Err(error) if error.is_connection_dropped() => read().await?.map_err(unavailable)?,
            other => other.map_err(unavailable)?,
        };
        if fields.is_empty() {
            return Ok(None);
        }
        let task = parse_task(id, fields).inspect_err(|error| {
            tracing::error!(key = %key, %error, "corrupt task record");
        })?;
        Ok(Some(task))
    }

    async fn watch(&self, id: TaskId, _now_ms: i64) -> Result<Option<StoredTask>> {
        let mut invocation = self.invoke(&self.scripts.watch, id.partition());
        invocation
            .arg(id.to_string())
            .arg(&self.ch(id.partition()).watch);
        // The script answers with HGETALL's reply: read it as `get` does.
        let fields: Vec<(String, Vec<u8>)> = redis::from_redis_value(self.run(&invocation).await?)
            .map_err(|error| ConveyorError::Corrupt {
                key: id.to_string(),
                reason: format!("watch reply: {error}"),
            })?;
        if fields.is_empty() {
            return Ok(None);
        }
        Ok(Some(parse_task(id, fields)?))
    }

    async fn lease(&self, request: LeaseRequest) -> Result<Vec<LeasedTask>> {
        if request.queue_keys.is_empty() || request.max == 0 {
            return Ok(Vec::new());
        }
        let partitions = self.config.partitions.max(1);
        let start = self.rotor.fetch_add(1, Ordering::Relaxed);
        let mut leased = Vec::new();
        for offset in 0..partitions {
            if leased.len() >= request.max {
                break;
            }
            let partition = ((start + offset as usize) % partitions as usize) as u16;
            let mut invocation = self.invoke(&self.scripts.lease, partition);
            invocation
                .arg(self.now_arg(request.now_ms))
                .arg((request.lease_deadline_ms - request.now_ms).max(0))
                .arg(&request.session_id)
                .arg(&request.worker_id)
                .arg(request.max - leased.len())
                .arg(&self.ch(partition).ev)
                .arg(start % request.queue_keys.len());
            for key in &request.queue_keys {
                invocation.arg(key.as_str());
            }
            let reply = items(self.run_once(&invocation).await?);
            if !reply.is_empty() {
                self.session_partitions
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .entry(request.session_id.clone())
                    .or_default()
                    .insert(partition);
            }
            for chunk in reply.chunks(7) {
                let [id, attempt, failures, token, spec, workflow, inputs] = chunk else {
                    continue;
                };
                let id = ids_of(Value::Array(vec![id.clone()]))?.remove(0);
                let mut record = conveyor_api::store_pb::TaskRecord::decode(
                    bytes_of(spec).as_slice(),
                )
                .map_err(|error| ConveyorError::Corrupt {
                    key: id.to_string(),
                    reason: format!("task record: {error}"),
                })?;
                let inputs = bytes_of(inputs);
                if !inputs.is_empty() {
                    codec::apply_leased_inputs(id, &mut record, &inputs)?;
                }
                let workflow = bytes_of(workflow);
                let workflow_id = if workflow.is_empty() {
                    None
                } else {
                    Some(ids_of(Value::Array(vec![Value::BulkString(workflow)]))?.remove(0))
                };
                leased.push(LeasedTask {
                    id,
                    record,
                    workflow_id,
                    attempt: int_of(attempt) as u32,
                    failures: int_of(failures) as u32,
                    lease_token: int_of(token) as u64,
                });
            }
        }
        Ok(leased)
    }

    async fn mark_started(&self, reports: Vec<StartReport>, now_ms: i64) -> Result<()> {
        let by_partition = group_by_partition(reports, |item| item.id);
        for (partition, group) in by_partition {
            let mut invocation = self.invoke(&self.scripts.mark_started, partition);
            invocation
                .arg(self.now_arg(now_ms))
                .arg(&self.ch(partition).ev);
            for (_, report) in &group {
                invocation
                    .arg(report.id.to_string())
                    .arg(&report.session_id)
                    .arg(report.lease_token);
            }
            self.run(&invocation).await?;
        }
        Ok(())
    }

    async fn heartbeat(&self, session_id: &str, deadline_ms: i64, now_ms: i64) -> Result<bool> {
        // Only the partitions where this session took leases: one call in
        // the common case, whatever the partition count.
        let partitions: Vec<u16> = self
            .session_partitions
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(session_id)
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default();
        let mut alive = false;
        for partition in partitions {
            let mut invocation = self.invoke(&self.scripts.heartbeat, partition);
            invocation
                .arg(self.now_arg(now_ms))
                .arg(session_id)
                .arg((deadline_ms - now_ms).max(0));
            alive |= int_of(&self.run(&invocation).await?) == 1;
        }
        Ok(alive)
    }

    async fn complete(&self, reports: Vec<OutcomeReport>, now_us: i64) -> Result<Vec<OutcomeAck>> {
        // Milliseconds with the µs as a fraction: Lua numbers (doubles)
        // hold it exactly, ZADD takes it as a score, and the codec reads it.
        let now = match self.config.clock {
            StoreClock::Server => String::new(),
            StoreClock::Caller => {
                format!("{}.{:03}", now_us.div_euclid(1000), now_us.rem_euclid(1000))
            }
        };
        let now_ms = now_us.div_euclid(1000);
        let count = reports.len();
        let by_partition = group_by_partition(reports, |item| item.id);
        let mut acks = vec![OutcomeAck::NotFound; count];
        for (partition, group) in by_partition {
            let mut invocation = self.invoke(&self.scripts.complete, partition);
            invocation.arg(&now).arg(&self.ch(partition).ev);
            for (_, report) in &group {
                let (kind, record, retry_at) = codec::encode_outcome(&report.outcome);
                // Sent as a delay: the store applies it to its own clock.
                let retry_in = if kind == "r" {
                    (retry_at - now_ms).max(0)
                } else {
                    0
                };
                invocation
                    .arg(report.id.to_string())
                    .arg(&report.session_id)
                    .arg(report.lease_token)
                    .arg(kind)
                    .arg(record)
                    .arg(retry_in);
            }
            let reply = items(self.run(&invocation).await?);
            for ((index, _), code) in group.iter().zip(reply.iter()) {
                acks[*index] = match int_of(code) {
                    -1 => OutcomeAck::NotFound,
                    -2 => OutcomeAck::StaleLease,
                    -3 => OutcomeAck::NotHeld,
                    state => OutcomeAck::Recorded(state_of(state)?),
                };
            }
        }
        Ok(acks)
    }

    async fn release_session(&self, session_id: &str, now_ms: i64) -> Result<Vec<TaskId>> {
        self.session_partitions
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .remove(session_id);
        let mut requeued = Vec::new();
        for partition in 0..self.config.partitions.max(1) {
            requeued.extend(
                self.release_partition(partition, session_id, now_ms)
                    .await?,
            );
        }
        Ok(requeued)
    }

    async fn reap_expired(&self, now_ms: i64, limit: usize) -> Result<Vec<TaskId>> {
        let mut requeued = Vec::new();
        for partition in 0..self.config.partitions.max(1) {
            let mut invocation = self.invoke(&self.scripts.reap, partition);
            invocation
                .arg(self.now_arg(now_ms))
                .arg(limit)
                .arg(&self.ch(partition).ev)
                .arg(&self.ch(partition).rdy);
            requeued.extend(ids_of(self.run(&invocation).await?)?);
        }
        Ok(requeued)
    }

    async fn promote_due(&self, now_ms: i64, limit: usize) -> Result<Promotion> {
        let mut promotion = Promotion::default();
        for partition in 0..self.config.partitions.max(1) {
            let mut invocation = self.invoke(&self.scripts.promote, partition);
            invocation
                .arg(self.now_arg(now_ms))
                .arg(limit)
                .arg(&self.ch(partition).ev)
                .arg(&self.ch(partition).rdy);
            let reply = items(self.run(&invocation).await?);
            let [promoted, expired, next_due] = reply.as_slice() else {
                return Err(ConveyorError::Unavailable(
                    "short reply from promote script".into(),
                ));
            };
            promotion.promoted += int_of(promoted) as usize;
            promotion.expired += int_of(expired) as usize;
            // The script answers in ms from its now: in the caller's clock,
            // the next due time is that far from the caller's now.
            let next_due = match int_of(next_due) {
                -1 => -1,
                in_ms => now_ms + in_ms,
            };
            if next_due >= 0 {
                promotion.next_due_ms = Some(
                    promotion
                        .next_due_ms
                        .map_or(next_due, |due| due.min(next_due)),
                );
            }
        }
        Ok(promotion)
    }

    async fn cancel(&self, id: TaskId, now_ms: i64) -> Result<CancelAck> {
        let mut invocation = self.invoke(&self.scripts.cancel, id.partition());
        invocation
            .arg(id.to_string())
            .arg(self.now_arg(now_ms))
            .arg(&self.ch(id.partition()).ev)
            .arg(&self.ch(id.partition()).rev);
        Ok(match int_of(&self.run_once(&invocation).await?) {
            0 => CancelAck::Cancelled,
            -1 => CancelAck::NotFound,
            -2 => CancelAck::IsWorkflow,
            state => CancelAck::NotCancellable(state_of(state)?),
        })
    }

    async fn record_progress(&self, reports: Vec<ProgressReport>, now_ms: i64) -> Result<()> {
        let by_partition = group_by_partition(reports, |item| item.id);
        for (partition, group) in by_partition {
            let mut invocation = self.invoke(&self.scripts.progress, partition);
            invocation
                .arg(self.now_arg(now_ms))
                .arg(&self.ch(partition).ev);
            for (_, report) in group {
                let mut progress = report.progress;
                progress.reported_at = Some(conveyor_core::time::timestamp_from_ms(now_ms));
                invocation
                    .arg(report.id.to_string())
                    .arg(report.session_id)
                    .arg(report.lease_token)
                    .arg(progress.encode_to_vec());
            }
            self.run(&invocation).await?;
        }
        Ok(())
    }

    async fn forget(&self, id: TaskId) -> Result<ForgetAck> {
        let mut invocation = self.invoke(&self.scripts.forget, id.partition());
        invocation
            .arg(id.to_string())
            .arg(&self.ch(id.partition()).ev);
        Ok(match int_of(&self.run_once(&invocation).await?) {
            0 => ForgetAck::Forgotten,
            -1 => ForgetAck::NotFound,
            state => ForgetAck::NotFinished(state_of(state)?),
        })
    }

    async fn dead_letters(
        &self,
        cursor: DeadLetterCursor,
        limit: usize,
    ) -> Result<(Vec<StoredTask>, Option<DeadLetterCursor>)> {
        let mut tasks = Vec::new();
        let mut connection = self.connection.clone();
        let partitions = self.config.partitions.max(1);
        let mut offset = cursor.offset;
        for partition in cursor.partition..partitions {
            let key = format!("{}dlq", self.partition_prefix(partition));
            loop {
                let wanted = limit - tasks.len();
                let ids: Vec<String> = redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(offset)
                    .arg(offset + wanted as u64 - 1)
                    .query_async(&mut connection)
                    .await
                    .map_err(unavailable)?;
                let fetched = ids.len();
                offset += fetched as u64;
                for id in ids {
                    let id = TaskId::parse(&id, "id").map_err(|_| ConveyorError::Corrupt {
                        key: key.clone(),
                        reason: format!("dead letter {id:?} is not a task id"),
                    })?;
                    if let Some(task) = self.get(id, 0).await? {
                        tasks.push(task);
                    }
                }
                if tasks.len() >= limit {
                    return Ok((tasks, Some(DeadLetterCursor { partition, offset })));
                }
                if fetched < wanted {
                    break;
                }
            }
            offset = 0;
        }
        Ok((tasks, None))
    }

    async fn replay(&self, id: TaskId, now_ms: i64) -> Result<ReplayAck> {
        let mut invocation = self.invoke(&self.scripts.replay, id.partition());
        invocation
            .arg(id.to_string())
            .arg(self.now_arg(now_ms))
            .arg(&self.ch(id.partition()).ev)
            .arg(&self.ch(id.partition()).rdy);
        Ok(match int_of(&self.run_once(&invocation).await?) {
            0 => ReplayAck::Replayed,
            -1 => ReplayAck::NotFound,
            -2 => ReplayAck::WorkflowNode,
            state => ReplayAck::NotFailed(state_of(state)?),
        })
    }

    async fn set_queue_paused(&self, queue: &str, paused: bool) -> Result<()> {
        let mut pipe = redis::pipe();
        for partition in 0..self.config.partitions.max(1) {
            let key = format!("{}paused", self.partition_prefix(partition));
            pipe.cmd(if paused { "SADD" } else { "SREM" })
                .arg(key)
                .arg(queue)
                .ignore();
        }
        if !paused {
            // Sessions starved by the pause re-check their queues.
            pipe.cmd(self.publish())
                .arg(&self.ch(0).rdy)
                .arg("*")
                .ignore();
        }
        let mut connection = self.connection.clone();
        self.timed(pipe.query_async::<()>(&mut connection)).await
    }

    async fn create_schedule(
        &self,
        schedule: conveyor_api::pb::Schedule,
        next_ms: Option<i64>,
    ) -> Result<Option<u64>> {
        let version = self.put_schedule(schedule, next_ms, "create", None).await?;
        Ok((version > 0).then_some(version as u64))
    }

    async fn replace_schedule(
        &self,
        schedule: conveyor_api::pb::Schedule,
        next_ms: Option<i64>,
        expected_version: Option<u64>,
    ) -> Result<SchedulePut> {
        Ok(
            match self
                .put_schedule(schedule, next_ms, "replace", expected_version)
                .await?
            {
                0 => SchedulePut::NotFound,
                -1 => SchedulePut::Conflict,
                version => SchedulePut::Stored(version as u64),
            },
        )
    }

    async fn get_schedule(&self, id: &str) -> Result<Option<conveyor_api::pb::Schedule>> {
        let mut connection = self.connection.clone();
        let prefix = self.partition_prefix(0);
        let (record, version): (Option<Vec<u8>>, Option<u64>) = self
            .timed(
                redis::pipe()
                    .cmd("HGET")
                    .arg(format!("{prefix}sch"))
                    .arg(id)
                    .cmd("HGET")
                    .arg(format!("{prefix}schv"))
                    .arg(id)
                    .query_async(&mut connection),
            )
            .await?;
        Ok(Self::with_versions(&[id.to_string()], vec![record], vec![version])?.pop())
    }

    async fn list_schedules(&self) -> Result<Vec<conveyor_api::pb::Schedule>> {
        let mut connection = self.connection.clone();
        let prefix = self.partition_prefix(0);
        let (entries, versions): (
            Vec<(String, Vec<u8>)>,
            std::collections::HashMap<String, u64>,
        ) = self
            .timed(
                redis::pipe()
                    .cmd("HGETALL")
                    .arg(format!("{prefix}sch"))
                    .cmd("HGETALL")
                    .arg(format!("{prefix}schv"))
                    .query_async(&mut connection),
            )
            .await?;
        let mut schedules = entries
            .iter()
            .map(|(id, bytes)| {
                decode_schedule(bytes, id).map(|mut schedule| {
                    schedule.version = versions.get(id).copied().unwrap_or(0);
                    schedule
                })
            })
            .collect::<Result<Vec<_>>>()?;
        schedules.sort_by(|left, right| left.id.cmp(&right.id));
        Ok(schedules)
    }

    async fn delete_schedule(&self, id: &str) -> Result<bool> {
        let mut invocation = self.invoke(&self.scripts.schedule_delete, 0);
        invocation.arg(id);
        Ok(int_of(&self.run(&invocation).await?) == 1)
    }

    async fn due_schedules(&self, now_ms: i64, limit: usize) -> Result<DueSchedules> {
        let mut invocation = self.invoke(&self.scripts.schedule_due, 0);
        invocation.arg(self.now_arg(now_ms)).arg(limit);
        let reply = items(self.run(&invocation).await?);
        let Some((count, rest)) = reply.split_first() else {
            return Ok(DueSchedules::default());
        };
        let count = int_of(count) as usize;
        let mut due = DueSchedules::default();
        for pair in rest.chunks(2).take(count) {
            let [record, version] = pair else { continue };
            let mut schedule = decode_schedule(&bytes_of(record), "(due)")?;
            schedule.version = int_of(version) as u64;
            due.due.push(schedule);
        }
        for pair in rest.chunks(2).skip(count) {
            let [id, fire] = pair else { continue };
            let id = String::from_utf8(bytes_of(id)).unwrap_or_default();
            due.unsettled.push((id, int_of(fire)));
        }
        Ok(due)
    }

    async fn claim_schedule_run(
        &self,
        expected_version: u64,
        fire_ms: i64,
        updated: conveyor_api::pb::Schedule,
        next_ms: Option<i64>,
        claim_ttl_ms: i64,
        now_ms: i64,
    ) -> Result<bool> {
        let mut invocation = self.invoke(&self.scripts.schedule_claim, 0);
        invocation
            .arg(&updated.id)
            .arg(expected_version)
            .arg(fire_ms)
            .arg(updated.encode_to_vec())
            .arg(next_ms.unwrap_or(-1))
            .arg(claim_ttl_ms)
            .arg(self.now_arg(now_ms));
        Ok(int_of(&self.run(&invocation).await?) == 1)
    }

    async fn settle_schedule_run(
        &self,
        id: &str,
        fire_ms: i64,
        run: Option<conveyor_api::pb::ScheduleRun>,
    ) -> Result<bool> {
        let mut invocation = self.invoke(&self.scripts.schedule_settle, 0);
        invocation
            .arg(id)
            .arg(fire_ms)
            .arg(run.map(|run| run.encode_to_vec()).unwrap_or_default());
        Ok(int_of(&self.run(&invocation).await?) == 1)
    }

    async fn record_schedule_run(
        &self,
        id: &str,
        run: conveyor_api::pb::ScheduleRun,
    ) -> Result<()> {
        let mut connection = self.connection.clone();
        let key = format!("{}schr:{id}", self.partition_prefix(0));
        let _: () = self
            .timed(
                redis::pipe()
                    .cmd("LPUSH")
                    .arg(&key)
                    .arg(run.encode_to_vec())
                    .ignore()
                    .cmd("LTRIM")
                    .arg(&key)
                    .arg(0)
                    .arg(99)
                    .ignore()
                    .query_async(&mut connection),
            )
            .await?;
        Ok(())
    }

    async fn schedule_runs(&self, id: &str) -> Result<Vec<conveyor_api::pb::ScheduleRun>> {
        let mut connection = self.connection.clone();
        let key = format!("{}schr:{id}", self.partition_prefix(0));
        let runs: Vec<Vec<u8>> = self
            .timed(
                redis::cmd("LRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(99)
                    .query_async(&mut connection),
            )
            .await?;
        runs.iter()
            .map(|bytes| {
                conveyor_api::pb::ScheduleRun::decode(bytes.as_slice()).map_err(|error| {
                    ConveyorError::Corrupt {
                        key: key.clone(),
                        reason: format!("schedule run: {error}"),
                    }
                })
            })
            .collect()
    }

    async fn scheduled_summary(&self) -> Result<ScheduledSummary> {
        let mut summary = ScheduledSummary::default();
        let mut connection = self.connection.clone();
        for partition in 0..self.config.partitions.max(1) {
            let key = format!("{}sched", self.partition_prefix(partition));
            let (count, first): (u64, Vec<(String, f64)>) = redis::pipe()
                .cmd("ZCARD")
                .arg(&key)
                .cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(0)
                .arg("WITHSCORES")
                .query_async(&mut connection)
                .await
                .map_err(unavailable)?;
            summary.count += count;
            if let Some((_, due)) = first.first() {
                let due = *due as i64;
                summary.next_due_ms = Some(summary.next_due_ms.map_or(due, |next| next.min(due)));
            }
        }
        Ok(summary)
    }

    async fn enable_events(&self) -> Result<()> {
        let mut pipe = redis::pipe();
        for partition in 0..self.config.partitions.max(1) {
            pipe.cmd("SET")
                .arg(format!("{}evon", self.partition_prefix(partition)))
                .arg(1)
                .arg("PX")
                .arg(15_000)
                .ignore();
        }
        let mut connection = self.connection.clone();
        pipe.query_async::<()>(&mut connection)
            .await
            .map_err(unavailable)
    }

    async fn publish_event(&self, event: StoreEvent) -> Result<()> {
        let mut connection = self.connection.clone();
        redis::cmd(self.publish())
            .arg(&self.ch(0).tev)
            .arg(event.encode())
            .query_async::<()>(&mut connection)
            .await
            .map_err(unavailable)
    }

    async fn announce_dispatcher(
        &self,
        replica: &str,
        sessions: Option<u32>,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<BTreeMap<String, u32>> {
        let mut invocation = self.invoke(
            &self.scripts.dispatchers,
            conveyor_core::placement::COORDINATION_PARTITION,
        );
        invocation
            .arg(self.now_arg(now_ms))
            .arg(replica)
            .arg(sessions.map(|count| count.to_string()).unwrap_or_default())
            .arg(ttl_ms);
        let live: Vec<(String, u32)> = redis::from_redis_value(self.run(&invocation).await?)
            .map_err(|error| ConveyorError::Corrupt {
                key: "disp".into(),
                reason: format!("dispatchers reply: {error}"),
            })?;
        Ok(live.into_iter().collect())
    }

    async fn announce_workers(
        &self,
        replica: &str,
        workers: Option<Vec<u8>>,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<std::collections::BTreeMap<String, Vec<u8>>> {
        let mut invocation = self.invoke(
            &self.scripts.workers,
            conveyor_core::placement::COORDINATION_PARTITION,
        );
        invocation
            .arg(self.now_arg(now_ms))
            .arg(replica)
            .arg(workers.unwrap_or_default())
            .arg(ttl_ms);
        let live: Vec<(String, Vec<u8>)> = redis::from_redis_value(self.run(&invocation).await?)
            .map_err(|error| ConveyorError::Corrupt {
                key: "wrk".into(),
                reason: format!("workers reply: {error}"),
            })?;
        Ok(live.into_iter().collect())
    }

    async fn queue_depths(&self) -> Result<QueueDepths> {
        let mut depths = QueueDepths::default();
        let mut ready: std::collections::BTreeMap<String, u64> = Default::default();
        let mut connection = self.connection.clone();
        for partition in 0..self.config.partitions.max(1) {
            let prefix = self.partition_prefix(partition);
            let (lists, scheduled, dead, sessions): (Vec<String>, u64, u64, Vec<String>) =
                redis::pipe()
                    .cmd("SMEMBERS")
                    .arg(format!("{prefix}rq"))
                    .cmd("ZCARD")
                    .arg(format!("{prefix}sched"))
                    .cmd("ZCARD")
                    .arg(format!("{prefix}dlq"))
                    .cmd("ZRANGE")
                    .arg(format!("{prefix}sess"))
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut connection)
                    .await
                    .map_err(unavailable)?;
            depths.scheduled += scheduled;
            depths.dead += dead;
            if partition == 0 {
                // Every partition holds the same set; partition 0's is read.
                let mut paused: Vec<String> = redis::cmd("SMEMBERS")
                    .arg(format!("{prefix}paused"))
                    .query_async(&mut connection)
                    .await
                    .map_err(unavailable)?;
                paused.sort();
                depths.paused = paused;
            }
            let mut pipe = redis::pipe();
            for list in &lists {
                pipe.cmd("LLEN").arg(format!("{prefix}q:{list}"));
            }
            for session in &sessions {
                pipe.cmd("SCARD").arg(format!("{prefix}sl:{session}"));
            }
            if lists.is_empty() && sessions.is_empty() {
                continue;
            }
            let counts: Vec<u64> = pipe
                .query_async(&mut connection)
                .await
                .map_err(unavailable)?;
            for (list, count) in lists.iter().zip(&counts) {
                if *count > 0 {
                    *ready.entry(list.clone()).or_default() += count;
                }
            }
            depths.leased += counts[lists.len()..].iter().sum::<u64>();
        }
        depths.ready = ready
            .into_iter()
            .map(|(list, count)| (QueueKey::from_encoded(list), count))
            .collect();
        Ok(depths)
    }
}

/// The key layout this version writes (the `layout` key): 2 parks tasks
/// waiting for concurrency permits in `cz:<key>` sorted sets, where layout 1
/// (no `layout` key) used `cw:<key>` lists.
const LAYOUT: u32 = 2;

/// A task's concurrency keys as its `ck` field stores them.
fn concurrency_keys(keys: &[(String, u32)]) -> String {
    let mut joined = String::new();
    for (index, (key, _)) in keys.iter().enumerate() {
        if index > 0 {
            joined.push(conveyor_core::concurrency::KEY_SEPARATOR);
        }
        joined.push_str(key);
    }
    joined
}

/// The limits of [`concurrency_keys`], as the `cl` field stores them.
fn concurrency_limits(keys: &[(String, u32)]) -> String {
    keys.iter()
        .map(|(_, limit)| limit.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// `text` with Redis glob characters escaped, for `SCAN MATCH`.
fn redis_glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}
