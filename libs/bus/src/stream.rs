//! The `CHAT` stream: its configuration, its creation at start, and its epoch.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::subjects;

/// Settings of the stream an operator may change.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// How long the stream keeps events (the archive keeps everything).
    pub max_age: Duration,
    /// 1 on a single server, 3 on a NATS cluster.
    pub replicas: usize,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            max_age: Duration::from_secs(7 * 24 * 3600),
            replicas: 1,
        }
    }
}

/// Deduplication window of sends: 2 minutes, or the retention if that is shorter.
pub fn duplicate_window(settings: &StreamSettings) -> Duration {
    settings.max_age.min(Duration::from_secs(120))
}

/// The configuration of the `CHAT` stream (protocol.md#nats).
pub fn chat_stream_config(settings: &StreamSettings) -> stream::Config {
    stream::Config {
        name: subjects::STREAM.to_owned(),
        subjects: vec![subjects::ROOM_MSG_ALL.to_owned()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age: settings.max_age,
        duplicate_window: duplicate_window(settings),
        num_replicas: settings.replicas,
        allow_direct: true,
        republish: Some(stream::Republish {
            source: subjects::ROOM_MSG_ALL.to_owned(),
            destination: subjects::FANOUT_TEMPLATE.to_owned(),
            headers_only: false,
        }),
        description: Some("Every room event, ordered; republished to chat.fanout.<room>".into()),
        ..Default::default()
    }
}

/// The log's incarnation: the stream's creation time in nanoseconds, as an opaque string.
pub fn epoch_of(info: &stream::Info) -> String {
    info.created.unix_timestamp_nanos().to_string()
}

/// Creates the `CHAT` stream if it is missing, brings retention and replicas in line with the
/// settings if it exists, and returns it with its epoch.
pub async fn ensure_chat_stream(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<(stream::Stream, String), async_nats::Error> {
    let wanted = chat_stream_config(settings);
    let mut stream = js.get_or_create_stream(wanted.clone()).await?;
    let info = stream.info().await?.clone();
    if info.config.max_age != wanted.max_age
        || info.config.num_replicas != wanted.num_replicas
        || info.config.duplicate_window != wanted.duplicate_window
    {
        let mut updated = info.config.clone();
        updated.max_age = wanted.max_age;
        updated.num_replicas = wanted.num_replicas;
        updated.duplicate_window = wanted.duplicate_window;
        js.update_stream(updated).await?;
    }
    Ok((stream, epoch_of(&info)))
}

/// The seq of the room's newest event in the stream (0 for a room with none). An unreachable
/// stream is `unavailable`.
pub async fn last_seq(
    stream: &stream::Stream,
    room: &chat_proto::RoomId,
) -> Result<u64, crate::api::ApiError> {
    match stream
        .direct_get_last_for_subject(subjects::room_msg(room))
        .await
    {
        Ok(m) => Ok(m.sequence),
        Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(0),
        Err(e) => {
            tracing::warn!(error = %e, "stream unreachable");
            Err(crate::api::ApiError::unavailable())
        }
    }
}

/// Creates the dead-letter stream if it is missing.
pub async fn ensure_dead_letter_stream(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<stream::Stream, async_nats::Error> {
    Ok(js
        .get_or_create_stream(stream::Config {
            name: subjects::DEAD_LETTER_STREAM.to_owned(),
            subjects: vec![subjects::DEAD_LETTER_ALL.to_owned()],
            storage: stream::StorageType::File,
            num_replicas: replicas,
            description: Some("Events a consumer could never handle".into()),
            ..Default::default()
        })
        .await?)
}

/// The messages of a durable pull consumer, pulled up to `batch_max` at a time.
pub async fn pull_messages(
    consumer: &jetstream::consumer::PullConsumer,
    batch_max: usize,
) -> Result<jetstream::consumer::pull::Stream, async_nats::Error> {
    Ok(consumer
        .stream()
        .max_messages_per_batch(batch_max.max(1))
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await?)
}

/// The next batch of `messages`: waits for one (`Ok(None)` if `shutdown` comes first), then
/// takes what else arrives within `wait`, up to `max`. A hiccup after the first message ends the
/// batch early; the stream failing or ending before it is an error (the caller starts over).
pub async fn next_batch(
    messages: &mut jetstream::consumer::pull::Stream,
    max: usize,
    wait: Duration,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<Option<Vec<jetstream::Message>>, async_nats::Error> {
    use futures::StreamExt;
    let first = tokio::select! {
        _ = shutdown.cancelled() => return Ok(None),
        next = messages.next() => match next {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(e.into()),
            None => return Err("consumer stream ended".into()),
        },
    };
    let mut batch = vec![first];
    let deadline = tokio::time::Instant::now() + wait;
    while batch.len() < max {
        match tokio::time::timeout_at(deadline, messages.next()).await {
            Ok(Some(Ok(m))) => batch.push(m),
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %e, "consumer hiccup");
                break;
            }
            Ok(None) | Err(_) => break,
        }
    }
    Ok(Some(batch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_window_never_exceeds_retention() {
        let s = StreamSettings {
            max_age: Duration::from_secs(30),
            replicas: 1,
        };
        assert_eq!(duplicate_window(&s), Duration::from_secs(30));
        assert_eq!(
            duplicate_window(&StreamSettings::default()),
            Duration::from_secs(120)
        );
        let c = chat_stream_config(&StreamSettings::default());
        assert_eq!(
            c.republish.unwrap().destination,
            "chat.fanout.{{wildcard(1)}}"
        );
    }
}
