//! One pub/sub connection per store: task changes and ready queues become
//! [`EventHub`] notifications. It reconnects with backoff and, after any gap,
//! wakes every waiter so that nothing waits on a message it missed.

use std::time::Duration;

use futures::StreamExt;
use tokio::task::AbortHandle;

use conveyor_core::{Result, TaskId};

use crate::events::EventHub;
use crate::types::QueueKey;

use super::codec::{parse_task, unavailable};
use crate::stream::StoreEvent;

/// Subscribes (waiting for the first subscription) and spawns the loop.
pub(crate) async fn start(
    clients: Vec<redis::Client>,
    events: EventHub,
    events_channel: String,
    ready_channel: String,
    revoke_channel: String,
    stream_channels: Vec<String>,
    commands: super::connection::Connection,
) -> Result<AbortHandle> {
    let mut channels = vec![
        events_channel.clone(),
        ready_channel.clone(),
        revoke_channel.clone(),
    ];
    channels.extend(stream_channels.iter().cloned());
    // The nodes in turn, from the first that answers (one, unless a cluster).
    let mut next = 0;
    let first = subscribe_any(&clients, &mut next, &channels).await?;
    let task = tokio::spawn(async move {
        let mut pubsub = Some(first);
        let mut backoff = Duration::from_millis(50);
        loop {
            let current = match pubsub.take() {
                Some(current) => current,
                None => match subscribe_any(&clients, &mut next, &channels).await {
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
            pump(
                current,
                &events,
                &events_channel,
                &revoke_channel,
                &stream_channels,
            )
            .await;
            tracing::warn!("redis pub/sub connection lost; reconnecting");
            events.wake_all();
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

async fn pump(
    mut pubsub: redis::aio::PubSub,
    events: &EventHub,
    events_channel: &str,
    revoke_channel: &str,
    stream_channels: &[String],
) {
    let mut messages = pubsub.on_message();
    while let Some(message) = messages.next().await {
        let payload = message.get_payload_bytes();
        if stream_channels
            .iter()
            .any(|channel| channel == message.get_channel_name())
        {
            // Task and worker events for WatchEvents (published only while
            // a watcher keeps them on).
            if events.wants_events()
                && let Some(event) = StoreEvent::decode(&String::from_utf8_lossy(payload))
            {
                events.emit(event);
            }
        } else if message.get_channel_name() == revoke_channel {
            let text = String::from_utf8_lossy(payload);
            if let Some((session_id, id)) = text.split_once(' ')
                && let Ok(id) = TaskId::parse(id, "id")
            {
                events.task_revoked(session_id, id);
            }
        } else if message.get_channel_name() == events_channel {
            match payload.iter().position(|&byte| byte == b'\n') {
                // A finished task, sent along (see notify_finished).
                Some(end) => {
                    let Ok(id) = TaskId::parse(&String::from_utf8_lossy(&payload[..end]), "id")
                    else {
                        continue;
                    };
                    // Every process gets the event; only one with a waiter
                    // for the task decodes it.
                    if !events.is_watched(id) {
                        continue;
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
            }
        } else if payload == b"*" {
            // A queue was resumed: every starved session re-checks.
            events.wake_all();
        } else {
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
