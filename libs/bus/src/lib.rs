//! Everything the services say to each other over NATS.
//!
//! - [`subjects`]: every subject, stream, consumer and queue-group name (no subject literal lives
//!   anywhere else);
//! - [`event`]: the room event stored in the `CHAT` stream (protocol.md#nats) and its live copy;
//! - [`lookup`]: what an event's target, reply_to or thread refers to (event validity);
//! - [`stream`]: the `CHAT` stream's configuration and its epoch;
//! - [`api`]: request/reply payloads, public (`chat.api.*`) and internal;
//! - [`rpc`]: each request/reply endpoint as a type (subject, queue, request, reply) and the one
//!   `call`;
//! - [`apikey`]: server API keys, their scopes and how they are checked;
//! - [`post`]: the checks and the publish of a room event, shared by chat-edge and chat-api;
//! - [`trace`]: W3C trace context carried in NATS headers.

pub mod api;
pub mod apikey;
pub mod event;
pub mod lookup;
pub mod post;
pub mod rpc;
pub mod stream;
pub mod subjects;
pub mod trace;

/// Milliseconds since the Unix epoch: the `ts` of protocol.md#identities.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
