//! One pub/sub connection per store: task changes and ready queues become
//! [`EventHub`] notifications. It reconnects with backoff and, after any gap,
//! wakes every waiter so that nothing waits on a message it missed.

use std::time::Duration;

use futures::StreamExt;
use tokio::task::AbortHandle;

use conveyor_core::{Result, TaskId};

use crate::events::EventHub;
use crate::types::QueueKey;

use super::codec::unavailable;

/// Subscribes (waiting for the first subscription) and spawns the loop.
pub(crate) async fn start(
    client: redis::Client,
    events: EventHub,
    events_channel: String,
    ready_channel: String,
    revoke_channel: String,
) -> Result<AbortHandle> {
    let channels = [
        events_channel.clone(),
        ready_channel.clone(),
        revoke_channel.clone(),
    ];
    let first = subscribe(&client, &channels).await?;
    let task = tokio::spawn(async move {
        let mut pubsub = Some(first);
        let mut backoff = Duration::from_millis(50);
        loop {
            let current = match pubsub.take() {
                Some(current) => current,
                None => match subscribe(&client, &channels).await {
                    Ok(current) => {
                        backoff = Duration::from_millis(50);
                        events.wake_all();
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
            pump(current, &events, &events_channel, &revoke_channel).await;
            tracing::warn!("redis pub/sub connection lost; reconnecting");
            events.wake_all();
        }
    });
    Ok(task.abort_handle())
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
) {
    let mut messages = pubsub.on_message();
    while let Some(message) = messages.next().await {
        let payload = message.get_payload_bytes();
        if message.get_channel_name() == revoke_channel {
            let text = String::from_utf8_lossy(payload);
            if let Some((session_id, id)) = text.split_once(' ')
                && let Ok(id) = TaskId::parse(id, "id")
            {
                events.task_revoked(session_id, id);
            }
        } else if message.get_channel_name() == events_channel {
            if let Ok(id) = TaskId::parse(&String::from_utf8_lossy(payload), "id") {
                events.task_changed(id);
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
