//! The room event of the `CHAT` stream (CONTRACT §3) and how its live copy becomes a message.

use async_nats::HeaderMap;
use chat_proto::{ChatMessage, RoomId, UserId};
use serde::{Deserialize, Serialize};

/// Header with the JetStream deduplication id `<from>:<client_id>`.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// Header of a republished event: its stream sequence.
pub const SEQUENCE_HEADER: &str = "Nats-Sequence";
/// Header of a republished event: the previous sequence of the same subject (the room's prev_seq).
pub const LAST_SEQUENCE_HEADER: &str = "Nats-Last-Sequence";
/// Header of a republished event: when it was stored (RFC 3339).
pub const TIMESTAMP_HEADER: &str = "Nats-Time-Stamp";

/// What kind of event a stored object is; only `message` exists in v1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Message,
}

/// One event as stored in the stream: `{"v":1,"kind":"message","room","from","body","client_id","ts"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomEvent {
    pub v: u32,
    pub kind: EventKind,
    pub room: RoomId,
    pub from: UserId,
    pub body: String,
    pub client_id: String,
    pub ts: i64,
}

impl RoomEvent {
    pub fn message(room: RoomId, from: UserId, body: String, client_id: String, ts: i64) -> Self {
        RoomEvent {
            v: 1,
            kind: EventKind::Message,
            room,
            from,
            body,
            client_id,
            ts,
        }
    }

    /// The deduplication id: a retried send with the same client_id is stored once.
    pub fn msg_id(&self) -> String {
        format!("{}:{}", self.from, self.client_id)
    }

    /// Decodes a stored event, refusing versions and shapes this code does not know.
    pub fn decode(payload: &[u8]) -> Result<Self, serde_json::Error> {
        let event: RoomEvent = serde_json::from_slice(payload)?;
        if event.v != 1 {
            return Err(serde::de::Error::custom(format!(
                "unsupported event version {}",
                event.v
            )));
        }
        Ok(event)
    }

    pub fn into_message(self, seq: u64, prev_seq: u64) -> ChatMessage {
        ChatMessage {
            room: self.room,
            seq,
            prev_seq,
            from: self.from,
            body: self.body,
            client_id: self.client_id,
            ts: self.ts,
        }
    }
}

/// Reads a numeric header.
pub fn header_u64(headers: Option<&HeaderMap>, name: &str) -> Option<u64> {
    headers?.get(name)?.as_str().parse().ok()
}

/// Decodes a message of the live feed `chat.fanout.<room>` (payload plus republish headers).
pub fn decode_fanout(headers: Option<&HeaderMap>, payload: &[u8]) -> Option<ChatMessage> {
    let seq = header_u64(headers, SEQUENCE_HEADER)?;
    let prev = header_u64(headers, LAST_SEQUENCE_HEADER).unwrap_or(0);
    let event = RoomEvent::decode(payload).ok()?;
    Some(event.into_message(seq, prev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_has_the_contract_shape() {
        let e = RoomEvent::message(
            RoomId::new("r").unwrap(),
            UserId::new("a").unwrap(),
            "hi".into(),
            "c1".into(),
            5,
        );
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["kind"], "message");
        assert_eq!(e.msg_id(), "a:c1");
        assert!(RoomEvent::decode(br#"{"v":2,"kind":"message","room":"r","from":"a","body":"","client_id":"c","ts":1}"#).is_err());
    }

    #[test]
    fn fanout_reads_seq_headers() {
        let mut h = HeaderMap::new();
        h.insert(SEQUENCE_HEADER, "12");
        h.insert(LAST_SEQUENCE_HEADER, "7");
        let payload =
            br#"{"v":1,"kind":"message","room":"r","from":"a","body":"x","client_id":"c","ts":1}"#;
        let m = decode_fanout(Some(&h), payload).unwrap();
        assert_eq!((m.seq, m.prev_seq), (12, 7));
        assert!(decode_fanout(None, payload).is_none());
    }
}
