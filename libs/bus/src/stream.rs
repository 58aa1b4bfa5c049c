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

/// The configuration of the `CHAT` stream (CONTRACT §3).
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
