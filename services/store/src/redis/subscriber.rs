//! One pub/sub connection per store: task changes and ready queues become
//! [`EventHub`] notifications. It reconnects with backoff and, after any gap,
//! wakes every waiter so that nothing waits on a message it missed.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use tokio::task::AbortHandle;

use conveyor_core::{Result, TaskId};

use crate::events::EventHub;
use crate::types::QueueKey;

use super::Channels;
use super::codec::{parse_task, unavailable};
use crate::stream::StoreEvent;

/// What a channel carries.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Changes of the tasks this process waits on.
    Watch,
    /// Queues with ready tasks.
    Ready,
    /// Revoked leases.
    Revoke,
    /// WatchEvents' stream.
    Stream,
}

/// Every channel of every partition, by name.
fn channel_kinds(channels: &[Channels]) -> HashMap<String, Kind> {
    channels
        .iter()
        .flat_map(|c| {
            [
                (c.watch.clone(), Kind::Watch),
                (c.rdy.clone(), Kind::Ready),
                (c.rev.clone(), Kind::Revoke),
                (c.tev.clone(), Kind::Stream),
            ]
        })
        .collect()
}

/// The channels of one partition (one slot on a cluster).
fn partition_channels(c: &Channels) -> [&str; 4] {
    [&c.watch, &c.rdy, &c.rev, &c.tev]
}

/// Subscribes (waiting for the first subscription) and spawns the loop.
/// One Redis: a pub/sub connection to it. A cluster (`nodes`): sharded
/// pub/sub (`SSUBSCRIBE`) through the cluster client, which subscribes on
/// the shard that owns each partition's slot and resubscribes after a
/// failover or a slot move.
pub(crate) async fn start(
    nodes: Option<Vec<String>>,
    clients: Vec<redis::Client>,
    events: EventHub,
    channels: Vec<Channels>,
    commands: super::connection::Connection,
    timeout: Duration,
    tls: &super::connection::RedisTls,
) -> Result<AbortHandle> {
    let kinds = channel_kinds(&channels);
    if let Some(nodes) = nodes {
        return start_sharded(nodes, events, channels, kinds, timeout, tls).await;
    }
    let names: Vec<String> = kinds.keys().cloned().collect();
    // The nodes in turn, from the first that answers.
    let mut next = 0;
    let first = subscribe_any(&clients, &mut next, &names).await?;
    let task = tokio::spawn(async move {
        let mut pubsub = Some(first);
        let mut backoff = Duration::from_millis(50);
        loop {
            let current = match pubsub.take() {
                Some(current) => current,
                None => match subscribe_any(&clients, &mut next, &names).await {
                    Ok(current) => {
                        backoff = Duration::from_millis(50);
                        events.wake_all();
                        // Redis came back: the command connection is most
                        // likely dead too. Ping it now, so that it reconnects
                        // before a caller's request meets the dead socket.
                        let mut commands = commands.clone();
                        tokio::spawn(async move {
                            for _ in 0..2 {
                                let pong: redis::RedisResult<String> =
                                    redis::cmd("PING").query_async(&mut commands).await;
                                if pong.is_ok() {
                                    break;
                                }
                            }
                        });
                        current
                    }
                    Err(error) => {
                        tracing::warn!(%error, "redis pub/sub reconnect failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                },
            };
            let mut current = current;
            let mut messages = current.on_message();
            while let Some(message) = messages.next().await {
                if let Some(kind) = kinds.get(message.get_channel_name()) {
                    handle(&events, *kind, message.get_payload_bytes());
                }
            }
            tracing::warn!("redis pub/sub connection lost; reconnecting");
            events.wake_all();
        }
    });
    Ok(task.abort_handle())
}

async fn start_sharded(
    nodes: Vec<String>,
    events: EventHub,
    channels: Vec<Channels>,
    kinds: HashMap<String, Kind>,
    timeout: Duration,
    tls: &super::connection::RedisTls,
) -> Result<AbortHandle> {
    let (sender, mut pushes) = tokio::sync::mpsc::unbounded_channel::<redis::PushInfo>();
    let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.iter().map(String::as_str))
        .use_protocol(redis::ProtocolVersion::RESP3)
        .push_sender(sender)
        .connection_timeout(timeout)
        .response_timeout(timeout);
    if let Some(certificates) = tls
        .certificates(nodes.first().map_or("", String::as_str))
        .map_err(unavailable)?
    {
        builder = builder.certs(certificates);
    }
    let client = builder.build().map_err(unavailable)?;
    let mut connection = tokio::time::timeout(timeout, client.get_async_connection())
        .await
        .map_err(|_| {
            conveyor_core::ConveyorError::Unavailable("redis cluster: connect timed out".into())
        })?
        .map_err(unavailable)?;
    // One SSUBSCRIBE per partition: its channels share its slot.
    for partition in &channels {
        connection
            .ssubscribe(&partition_channels(partition))
            .await
            .map_err(unavailable)?;
    }
    let task = tokio::spawn(async move {
        // The connection lives as long as the loop: dropping it would end
        // the subscriptions.
        let _connection = connection;
        while let Some(push) = pushes.recv().await {
            match push.kind {
                redis::PushKind::SMessage | redis::PushKind::Message => {
                    let mut data = push.data.into_iter();
                    let (Some(channel), Some(payload)) = (data.next(), data.next()) else {
                        continue;
                    };
                    let (Ok(channel), Ok(payload)) = (
                        redis::from_redis_value::<String>(channel),
                        redis::from_redis_value::<Vec<u8>>(payload),
                    ) else {
                        continue;
                    };
                    if let Some(kind) = kinds.get(&channel) {
                        handle(&events, *kind, &payload);
                    }
                }
                redis::PushKind::Disconnection | redis::PushKind::SUnsubscribe => {
                    // A node went away or its slots moved: the client
                    // resubscribes; meanwhile messages may have been lost,
                    // so every waiter re-reads.
                    tracing::warn!(kind = ?push.kind, "redis cluster pub/sub interrupted; resubscribing");
                    events.wake_all();
                }
                _ => {}
            }
        }
    });
    Ok(task.abort_handle())
}

/// Subscribes through the first of `clients` from `next` on that answers;
/// `next` moves past it, so that a reconnect tries the others first.
async fn subscribe_any(
    clients: &[redis::Client],
    next: &mut usize,
    channels: &[String],
) -> Result<redis::aio::PubSub> {
    let mut last = None;
    for _ in 0..clients.len() {
        let client = &clients[*next % clients.len()];
        *next = (*next + 1) % clients.len();
        match subscribe(client, channels).await {
            Ok(pubsub) => return Ok(pubsub),
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| conveyor_core::ConveyorError::Unavailable("no redis node".into())))
}

async fn subscribe(client: &redis::Client, channels: &[String]) -> Result<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await.map_err(unavailable)?;
    pubsub.subscribe(channels).await.map_err(unavailable)?;
    Ok(pubsub)
}

/// One message.
fn handle(events: &EventHub, kind: Kind, payload: &[u8]) {
    match kind {
        Kind::Stream => {
            // Task and worker events for WatchEvents (published only while
            // a watcher keeps them on).
            if events.wants_events()
                && let Some(event) = StoreEvent::decode(&String::from_utf8_lossy(payload))
            {
                events.emit(event);
            }
        }
        Kind::Revoke => {
            let text = String::from_utf8_lossy(payload);
            if let Some((session_id, id)) = text.split_once(' ')
                && let Ok(id) = TaskId::parse(id, "id")
            {
                events.task_revoked(session_id, id);
            }
        }
        Kind::Watch => match payload.iter().position(|&byte| byte == b'\n') {
            // A finished task, sent along (see notify_finished).
            Some(end) => {
                let Ok(id) = TaskId::parse(&String::from_utf8_lossy(&payload[..end]), "id") else {
                    return;
                };
                if !events.is_watched(id) {
                    return;
                }
                match decode_fields(&payload[end + 1..]).map(|fields| parse_task(id, fields)) {
                    Some(Ok(task)) => events.task_finished(task),
                    _ => {
                        tracing::warn!(task = %id, "undecodable finished-task event; waiters re-read it");
                        events.task_changed(id);
                    }
                }
            }
            None => {
                if let Ok(id) = TaskId::parse(&String::from_utf8_lossy(payload), "id") {
                    events.task_changed(id);
                }
            }
        },
        Kind::Ready if payload == b"*" => {
            // A queue was resumed: every starved session re-checks.
            events.wake_all();
        }
        Kind::Ready => {
            let key = QueueKey::from_encoded(String::from_utf8_lossy(payload).into_owned());
            // Priority lists notify under their base key, which sessions watch.
            events.queue_ready(&key.base());
        }
    }
}

/// The hash fields of a finished-task event: per field, name, space,
/// length, space, value. `None` when malformed.
fn decode_fields(mut rest: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let mut fields = Vec::new();
    while !rest.is_empty() {
        let space = rest.iter().position(|&byte| byte == b' ')?;
        let name = std::str::from_utf8(&rest[..space]).ok()?.to_owned();
        rest = &rest[space + 1..];
        let space = rest.iter().position(|&byte| byte == b' ')?;
        let length: usize = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
        rest = &rest[space + 1..];
        if rest.len() < length {
            return None;
        }
        fields.push((name, rest[..length].to_vec()));
        rest = &rest[length..];
    }
    Some(fields)
}

#[cfg(test)]
mod tests {
    use super::decode_fields;

    #[test]
    fn finished_task_fields_decode_with_binary_values() {
        let fields = decode_fields(b"st 1 5oc 4 a \nbfa 3 123").unwrap();
        assert_eq!(
            fields,
            vec![
                ("st".to_string(), b"5".to_vec()),
                ("oc".to_string(), b"a \nb".to_vec()),
                ("fa".to_string(), b"123".to_vec()),
            ]
        );
        assert_eq!(decode_fields(b""), Some(vec![]));
        assert_eq!(decode_fields(b"st 9 5"), None);
        assert_eq!(decode_fields(b"st x 5"), None);
    }
}
