//! Posting room events: the field checks, the checks of protocol.md#ws's client table that need a
//! target's state, the publish with its dedup id, and the recognition of a retry. One path for
//! chat-edge (a session's `send`/`edit`/`delete`/`react`) and chat-api (a bot's HTTP calls), so
//! that both refuse and deduplicate the same way.
//!
//! A retry (same author and client_id within the deduplication window) is answered with the
//! original seq (`duplicate: true`) whatever happened since, as if before any other check
//! (protocol.md#ws). The work for one event:
//! 1. [`check`]: the checks that need the target's state (chat-history's
//!    `chat.internal.history.message`): `not_found`, `forbidden`;
//! 2. passed: [`publish`]; JetStream's deduplication (`Nats-Msg-Id`) answers a retry with the
//!    original seq. The log decides the rest (a change that lands after its target was deleted
//!    is an event that changes nothing);
//! 3. refused because the target is deleted (the only refusal a retry can meet: a message's
//!    author and existence never change): [`earlier`] reads the room's events of the
//!    deduplication window for one this author made with this client_id; found, it is answered
//!    as the duplicate it is. (JetStream offers no lookup by msg id, and checks a publish's
//!    expected last sequence before its msg id, so a dry-run publish cannot ask.)

use std::time::Duration;

use async_nats::jetstream::{self, consumer, context::PublishAckFuture, stream::Stream};
use async_nats::{HeaderMap, HeaderValue};
use chat_proto::{ClientFrame, ErrorCode, RoomId, UserId};

use crate::api::{ApiError, MAX_QUERY_CHARS, MessageInfo, MessageInfoRequest, NewReaction};
use crate::event::{EventKind, MSG_ID_HEADER, RoomEvent};
use crate::{now_ms, subjects, trace};

/// Longest `client_id`.
pub const MAX_CLIENT_ID_CHARS: usize = 64;

/// Most ids a `create` may list in `members` (protocol.md#ws-limits).
pub const MAX_CREATE_MEMBERS: usize = 1000;

/// `send`/`edit`: a body of 1..=max_body characters, a client_id of 1..=64 characters.
pub fn check_send(body: &str, client_id: &str, max_body: usize) -> Result<(), ApiError> {
    let len = chat_proto::char_len(body);
    if len == 0 {
        return Err(ApiError::bad_request("body must not be empty"));
    }
    if len > max_body {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!("body is longer than {max_body} characters"),
        ));
    }
    check_client_id(client_id)
}

/// A client_id of 1..=64 characters.
pub fn check_client_id(client_id: &str) -> Result<(), ApiError> {
    if client_id.is_empty() || chat_proto::char_len(client_id) > MAX_CLIENT_ID_CHARS {
        return Err(ApiError::bad_request(
            "client_id must be 1 to 64 characters",
        ));
    }
    Ok(())
}

/// A reaction's emoji (protocol.md#ws `react`).
pub fn check_emoji(emoji: &str) -> Result<(), ApiError> {
    if chat_proto::valid_emoji(emoji) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "emoji must be 1 to 32 characters without whitespace or control characters",
        ))
    }
}

/// `search`: a query that is not blank, of at most `MAX_QUERY_CHARS` characters, without control
/// characters but whitespace. Whether it holds a word to search for is chat-history's to say.
pub fn check_query(query: &str) -> Result<(), ApiError> {
    if query.trim().is_empty() {
        return Err(ApiError::bad_request("query must not be empty"));
    }
    if chat_proto::char_len(query) > MAX_QUERY_CHARS {
        return Err(ApiError::bad_request(format!(
            "query is longer than {MAX_QUERY_CHARS} characters"
        )));
    }
    if query.chars().any(|c| c.is_control() && !c.is_whitespace()) {
        return Err(ApiError::bad_request(
            "query must not contain control characters",
        ));
    }
    Ok(())
}

/// The field checks of a lifecycle frame (`send`, `edit`, `delete`, `react`) that need no I/O:
/// protocol.md#ws-limits, then lengths. Membership is the caller's to check.
pub fn check_frame(frame: &ClientFrame, max_body: usize) -> Result<(), ApiError> {
    if let Some(why) = frame.hostile_field() {
        return Err(ApiError::bad_request(why));
    }
    match frame {
        ClientFrame::Send {
            body, client_id, ..
        }
        | ClientFrame::Edit {
            body, client_id, ..
        } => check_send(body, client_id, max_body),
        ClientFrame::Delete { client_id, .. } => check_client_id(client_id),
        ClientFrame::React {
            emoji, client_id, ..
        } => {
            check_emoji(emoji)?;
            check_client_id(client_id)
        }
        _ => Ok(()),
    }
}

/// The event a lifecycle frame of `user` asks for (`None` for other frames).
pub fn event_of(frame: ClientFrame, user: &UserId) -> Option<RoomEvent> {
    let ts = now_ms();
    Some(match frame {
        ClientFrame::Send {
            room,
            body,
            client_id,
            reply_to,
            thread,
        } => RoomEvent {
            reply_to,
            thread,
            ..RoomEvent::message(room, user.clone(), body, client_id, ts)
        },
        ClientFrame::Edit {
            room,
            seq,
            body,
            client_id,
        } => RoomEvent {
            body,
            ..RoomEvent::change(EventKind::Edit, room, user.clone(), seq, client_id, ts)
        },
        ClientFrame::Delete {
            room,
            seq,
            client_id,
        } => RoomEvent::change(EventKind::Delete, room, user.clone(), seq, client_id, ts),
        ClientFrame::React {
            room,
            seq,
            emoji,
            on,
            client_id,
        } => RoomEvent {
            emoji: Some(emoji),
            on: Some(on),
            ..RoomEvent::change(EventKind::Reaction, room, user.clone(), seq, client_id, ts)
        },
        _ => return None,
    })
}

/// A header value async-nats would refuse (it holds CR or LF) or a name that is not a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("header {0} cannot carry this value")]
pub struct InvalidHeader(pub String);

/// Is `name` a header name async-nats accepts (visible ASCII, no `:`)?
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// The NATS headers of a room event (protocol.md#nats) with dedup id `msg_id` and the trace `fields`
/// a propagator wrote: the W3C trace context, then `Nats-Msg-Id` (after the trace fields: the
/// dedup id must never be lost). Cannot panic: async-nats panics on a header value holding CR
/// or LF (a `client_id` sent as `"a\r\nb"` once killed the session task, issue 15), so every
/// value is checked first and a bad one is an error. The `event_headers` fuzz target drives it.
pub fn event_headers(
    msg_id: &str,
    fields: &[(String, String)],
) -> Result<HeaderMap, InvalidHeader> {
    let mut headers = HeaderMap::new();
    for (name, value) in fields {
        if !valid_name(name) || name.eq_ignore_ascii_case(MSG_ID_HEADER) {
            return Err(InvalidHeader(name.clone()));
        }
        let value: HeaderValue = value.parse().map_err(|_| InvalidHeader(name.clone()))?;
        headers.insert(name.as_str(), value);
    }
    let id: HeaderValue = msg_id
        .parse()
        .map_err(|_| InvalidHeader(MSG_ID_HEADER.to_owned()))?;
    headers.insert(MSG_ID_HEADER, id);
    Ok(headers)
}

/// A failed or late publish: `unavailable` to the caller, the detail in the log.
pub fn publish_failed(e: &dyn std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "publish failed");
    ApiError::unavailable()
}

/// Publishes `event` through JetStream with its dedup id and the current trace context, by
/// `deadline`; the stream's acknowledgement is the returned future.
pub async fn publish(
    js: &jetstream::Context,
    event: &RoomEvent,
    deadline: tokio::time::Instant,
) -> Result<PublishAckFuture, ApiError> {
    let payload = serde_json::to_vec(event).map_err(|_| ApiError::internal())?;
    let headers = event_headers(&event.msg_id(), &trace::current_fields())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let fut = js.publish_with_headers(subjects::room_msg(&event.room), headers, payload.into());
    match tokio::time::timeout_at(deadline, fut).await {
        Ok(Ok(ack)) => Ok(ack),
        Ok(Err(e)) => Err(publish_failed(&e)),
        Err(_) => Err(publish_failed(&"not published in time")),
    }
}

/// The stream's acknowledgement of a [`publish`], by `deadline`: the stored seq, and whether the
/// stream had the event already (a retry, recognized by its dedup id).
pub async fn acknowledged(
    ack: PublishAckFuture,
    deadline: tokio::time::Instant,
) -> Result<(u64, bool), ApiError> {
    match tokio::time::timeout_at(deadline, ack).await {
        Ok(Ok(ack)) => Ok((ack.sequence, ack.duplicate)),
        Ok(Err(e)) => Err(publish_failed(&e)),
        Err(_) => Err(publish_failed(&"no acknowledgement in time")),
    }
}

/// The `ts` of the event stored at `seq`: `event`'s own, or for a duplicate the original's, read
/// back from the stream (`event`'s if that read fails).
pub async fn stored_ts(stream: &Stream, event: &RoomEvent, seq: u64, duplicate: bool) -> i64 {
    if duplicate {
        original_ts(stream, seq).await.unwrap_or(event.ts)
    } else {
        event.ts
    }
}

/// What the checks and the retry lookup read: NATS (chat-history), the `CHAT` stream.
#[derive(Clone, Copy)]
pub struct Reader<'a> {
    pub nats: &'a async_nats::Client,
    pub stream: &'a Stream,
    /// How long one request (and the dedup-window scan) may take.
    pub timeout: Duration,
    /// The stream's deduplication window ([`crate::stream::duplicate_window`]).
    pub window: Duration,
}

/// Why [`check`] refused an event.
#[derive(Debug)]
pub enum Refused {
    /// Its target is deleted: it may be a retry of a change made before the delete.
    Deleted(ApiError),
    Other(ApiError),
}

impl From<ApiError> for Refused {
    fn from(e: ApiError) -> Self {
        Refused::Other(e)
    }
}

fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such message in this room")
}

/// The checks of protocol.md#ws's client table that need the target's state (step 1). A plain
/// message (no reply_to, no thread) costs nothing.
pub async fn check(r: Reader<'_>, event: &RoomEvent) -> Result<(), Refused> {
    let info = |seq: u64| message_info(r, &event.room, seq, None);
    let deleted = |e: ApiError| Err(Refused::Deleted(e));
    match event.kind {
        EventKind::Message => {
            if let Some(reply) = event.reply_to {
                info(reply).await?;
            }
            if let Some(t) = event.thread
                && info(t).await?.thread.is_some()
            {
                return Err(Refused::Other(ApiError::new(
                    ErrorCode::NotFound,
                    "a thread's root is a top-level message",
                )));
            }
            Ok(())
        }
        EventKind::Edit => {
            let m = info(event.target.unwrap_or(0)).await?;
            if m.from != event.from {
                Err(ApiError::forbidden("only its author edits a message").into())
            } else if m.deleted {
                deleted(ApiError::forbidden("the message is deleted"))
            } else {
                Ok(())
            }
        }
        EventKind::Delete => {
            let m = info(event.target.unwrap_or(0)).await?;
            if m.from != event.from {
                Err(ApiError::forbidden("only its author deletes a message").into())
            } else if m.deleted {
                deleted(ApiError::new(ErrorCode::NotFound, "the message is deleted"))
            } else {
                Ok(())
            }
        }
        EventKind::Reaction => {
            let adding = (event.on != Some(false)).then(|| NewReaction {
                user: event.from.clone(),
                emoji: event.emoji.clone().unwrap_or_default(),
            });
            let m = message_info(r, &event.room, event.target.unwrap_or(0), adding).await?;
            if m.deleted {
                deleted(ApiError::new(ErrorCode::NotFound, "the message is deleted"))
            } else if m.reactions_full {
                Err(ApiError::new(
                    ErrorCode::LimitExceeded,
                    format!(
                        "a message holds at most {} distinct reactions and {} in all",
                        chat_proto::MAX_REACTION_EMOJI,
                        chat_proto::MAX_REACTIONS
                    ),
                )
                .into())
            } else {
                Ok(())
            }
        }
    }
}

async fn message_info(
    r: Reader<'_>,
    room: &RoomId,
    seq: u64,
    adding: Option<NewReaction>,
) -> Result<MessageInfo, ApiError> {
    if seq == 0 {
        return Err(not_found());
    }
    crate::rpc::call(
        r.nats,
        &MessageInfoRequest {
            room: room.clone(),
            seq,
            adding,
        },
        r.timeout,
    )
    .await
}

/// Who made a stored event (all a retry is recognized by).
#[derive(serde::Deserialize)]
struct Maker<'a> {
    #[serde(borrow)]
    from: &'a str,
    #[serde(borrow)]
    client_id: &'a str,
}

/// The seq of the event `event` already made, if it is a retry (step 3): the room's events of
/// the deduplication window with this author and client_id.
pub async fn earlier(r: Reader<'_>, event: &RoomEvent) -> Result<Option<u64>, ApiError> {
    use futures::StreamExt;
    let unavailable = |e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, "reading the deduplication window failed");
        ApiError::unavailable()
    };
    let start = time::OffsetDateTime::now_utc() - r.window - Duration::from_secs(1);
    let scan = async {
        let reader = r
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subjects::room_msg(&event.room),
                deliver_policy: consumer::DeliverPolicy::ByStartTime { start_time: start },
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(&e))?;
        let mut left = reader.cached_info().num_pending;
        let mut messages = reader.messages().await.map_err(|e| unavailable(&e))?;
        while left > 0 {
            let Some(next) = messages.next().await else {
                break;
            };
            let msg = next.map_err(|e| unavailable(&e))?;
            left -= 1;
            if let Ok(who) = serde_json::from_slice::<Maker<'_>>(&msg.payload)
                && who.from == event.from.as_str()
                && who.client_id == event.client_id
                && let Ok(info) = msg.info()
            {
                return Ok(Some(info.stream_sequence));
            }
            if let Ok(info) = msg.info() {
                left = left.min(info.pending);
            }
        }
        Ok(None)
    };
    tokio::time::timeout(r.timeout, scan)
        .await
        .map_err(|_| unavailable(&"no answer in time"))?
}

/// The `ts` of the stored event `seq` (the original of a duplicate).
pub async fn original_ts(stream: &Stream, seq: u64) -> Option<i64> {
    let m = stream.direct_get(seq).await.ok()?;
    RoomEvent::decode(&m.payload).ok().map(|e| e.ts)
}

/// An event stored (or found stored already: a retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Posted {
    pub seq: u64,
    /// The stored event's `ts` (the original's for a duplicate).
    pub ts: i64,
    pub duplicate: bool,
}

/// The whole way of one event, waiting for its acknowledgement: [`check`], [`publish`], and
/// for a change refused because its target is deleted, [`earlier`]. What chat-api does for each
/// call; a session pipelines the same steps itself.
pub async fn post(
    r: Reader<'_>,
    js: &jetstream::Context,
    event: &RoomEvent,
) -> Result<Posted, ApiError> {
    let deadline = tokio::time::Instant::now() + r.timeout;
    let (seq, duplicate) = match check(r, event).await {
        Ok(()) => acknowledged(publish(js, event, deadline).await?, deadline).await?,
        Err(Refused::Deleted(refused)) => match earlier(r, event).await? {
            Some(seq) => (seq, true),
            None => return Err(refused),
        },
        Err(Refused::Other(e)) => return Err(e),
    };
    let ts = stored_ts(r.stream, event, seq, duplicate).await;
    Ok(Posted { seq, ts, duplicate })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(v: &str) -> Vec<(String, String)> {
        vec![("traceparent".to_owned(), v.to_owned())]
    }

    #[test]
    fn builds_trace_then_msg_id() {
        let h = event_headers("alice:c1", &tp("00-ab-cd-01")).unwrap();
        assert_eq!(h.get(MSG_ID_HEADER).map(|v| v.as_str()), Some("alice:c1"));
        assert_eq!(
            h.get("traceparent").map(|v| v.as_str()),
            Some("00-ab-cd-01")
        );
    }

    #[test]
    fn cr_or_lf_anywhere_is_an_error_not_a_panic() {
        for id in ["a\rb", "a\nb", "alice:\r\nNats-Msg-Id: x"] {
            assert!(event_headers(id, &[]).is_err(), "{id:?}");
        }
        assert!(event_headers("ok", &tp("00-\r\n")).is_err());
        let bad_name = vec![("trace parent".to_owned(), "x".to_owned())];
        assert!(event_headers("ok", &bad_name).is_err());
        // A trace field may not override the dedup id.
        let sneaky = vec![("nats-msg-id".to_owned(), "other".to_owned())];
        assert!(event_headers("ok", &sneaky).is_err());
    }

    #[test]
    fn frames_are_checked_like_the_edge_does() {
        let room = RoomId::new("r").unwrap();
        let send = |body: &str, id: &str| ClientFrame::Send {
            room: room.clone(),
            body: body.into(),
            client_id: id.into(),
            reply_to: None,
            thread: None,
        };
        assert!(check_frame(&send("hi", "c"), 5).is_ok());
        assert_eq!(
            check_frame(&send("too long", "c"), 5).unwrap_err().code,
            ErrorCode::TooLarge
        );
        assert_eq!(
            check_frame(&send("", "c"), 5).unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            check_frame(&send("a\u{7}", "c"), 5).unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            check_frame(&send("hi", ""), 5).unwrap_err().code,
            ErrorCode::BadRequest
        );
        let react = ClientFrame::React {
            room: room.clone(),
            seq: 1,
            emoji: "a b".into(),
            on: true,
            client_id: "c".into(),
        };
        assert_eq!(
            check_frame(&react, 5).unwrap_err().code,
            ErrorCode::BadRequest
        );
        let bot = UserId::new("bot").unwrap();
        let e = event_of(send("hi", "c"), &bot).unwrap();
        assert_eq!((e.kind, e.msg_id()), (EventKind::Message, "bot:c".into()));
        assert!(check_query("deploy").is_ok());
        assert!(check_query("  ").is_err());
    }
}
