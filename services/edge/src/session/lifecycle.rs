//! *(v1.1)* The lifecycle frames of a session (CONTRACT §2 Lifecycle): `edit`, `delete`, `react`
//! and `send` with `reply_to`/`thread`. Each becomes a room event of its own kind, published to
//! the room's subject like a message, and is acknowledged with that event's own seq.
//!
//! A retry (same user and client_id within the deduplication window) is answered with the
//! original `ack` (`duplicate: true`) whatever happened since, as if before any other check
//! (CONTRACT §2). The work for one frame:
//! 1. the checks that need the target's state (chat-history's `chat.internal.history.message`):
//!    `not_found`, `forbidden` as the client table of CONTRACT §2 says;
//! 2. passed: the publish; JetStream's deduplication (`Nats-Msg-Id`) answers a retry with the
//!    original seq. The log decides the rest (a change that lands after its target was deleted
//!    is an event that changes nothing);
//! 3. refused because the target is deleted (the only refusal a retry can meet: a message's
//!    author and existence never change): before answering it, the room's events of the
//!    deduplication window are read for one this user made with this client_id; found, it is
//!    answered as the duplicate it is. Only such a refused frame pays for this read. (JetStream offers no lookup by msg id, and checks a
//!    publish's expected last sequence before its msg id, so a dry-run publish cannot ask.)

use async_nats::jetstream::consumer;
use axum::extract::ws::Message;
use chat_bus::api::{ApiError, MessageInfo, MessageInfoRequest, NewReaction};
use chat_bus::event::{EventKind, RoomEvent};
use chat_bus::{now_ms, subjects, trace};
use chat_proto::{ClientFrame, ErrorCode, RoomId, ServerFrame};
use futures::{Sink, Stream};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{MAX_SENDS_IN_FLIGHT, Session, original_ts, publish_failed};
use crate::Edge;

fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such message in this room")
}

/// The event a lifecycle frame asks for (membership and fields were checked by dispatch).
fn event_of(frame: ClientFrame, user: &chat_proto::UserId) -> Option<RoomEvent> {
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

/// How a lifecycle frame went out: published (its stream acknowledgement pending), or found to
/// be the retry of an event already made.
enum Outcome {
    Published(async_nats::jetstream::context::PublishAckFuture),
    Earlier(u64),
}

/// Carries out a lifecycle frame. Its reply (`ack` or an error) joins the session's queue of
/// send replies, so that replies go out in the order the frames came, like sends'.
pub(super) async fn handle<S>(
    session: &mut Session<S>,
    reference: Option<String>,
    traceparent: Option<String>,
    frame: ClientFrame,
) -> Result<(), ApiError>
where
    S: Stream<Item = Result<Message, axum::Error>>
        + Sink<Message, Error = axum::Error>
        + Unpin
        + Send,
{
    use futures::StreamExt;
    while session.sends.len() >= MAX_SENDS_IN_FLIGHT {
        if let Some(reply) = session.sends.next().await {
            session.send(&reply).await;
        }
    }
    let name = frame.type_name();
    let Some(event) = event_of(frame, session.user()) else {
        return Err(ApiError::internal());
    };
    let span = tracing::info_span!(
        parent: None,
        "lifecycle",
        otel.kind = "producer",
        messaging.system = trace::MESSAGING_SYSTEM,
        messaging.operation.type = "send",
        messaging.destination.name = %format_args!("chat.room.{}.msg", event.room),
        messaging.message.id = %format_args!("{}:{}", event.from, event.client_id),
        frame = name,
        room = %event.room,
        user = %event.from,
        seq = tracing::field::Empty
    );
    if let Some(tp) = traceparent.as_deref() {
        let _ = span.set_parent(trace::from_traceparent(tp));
    }
    let edge = session.edge.clone();
    let deadline = tokio::time::Instant::now() + edge.config.request_timeout;
    let outcome = async {
        match check(&edge, &event).await {
            Ok(()) => session
                .publish(&event, deadline)
                .await
                .map(Outcome::Published),
            // Only a change refused because its target was deleted since can be a retry of
            // one that was made (the author and the target's existence never change).
            Err(Refused::Deleted(refused)) => match earlier(&edge, &event).await? {
                Some(seq) => Ok(Outcome::Earlier(seq)),
                None => Err(refused),
            },
            Err(Refused::Other(e)) => Err(e),
        }
    }
    .instrument(span.clone())
    .await;
    let reply = async move {
        let (seq, duplicate) = match outcome {
            Ok(Outcome::Published(ack)) => match tokio::time::timeout_at(deadline, ack).await {
                Ok(Ok(ack)) => (ack.sequence, ack.duplicate),
                Ok(Err(e)) => {
                    let e = publish_failed(&e);
                    return ServerFrame::error(reference, e.code, e.message);
                }
                Err(_) => {
                    let e = publish_failed(&"no acknowledgement in time");
                    return ServerFrame::error(reference, e.code, e.message);
                }
            },
            Ok(Outcome::Earlier(seq)) => (seq, true),
            Err(e) => return ServerFrame::error(reference, e.code, e.message),
        };
        tracing::Span::current().record("seq", seq);
        let ts = if duplicate {
            original_ts(&edge, seq).await.unwrap_or(event.ts)
        } else {
            event.ts
        };
        ServerFrame::Ack {
            reference,
            room: event.room,
            client_id: event.client_id,
            seq,
            ts,
            duplicate,
        }
    };
    session.sends.push_back(Box::pin(reply.instrument(span)));
    Ok(())
}

/// Who made a stored event (all a retry is recognized by).
#[derive(serde::Deserialize)]
struct Maker<'a> {
    #[serde(borrow)]
    from: &'a str,
    #[serde(borrow)]
    client_id: &'a str,
}

/// The seq of the event this frame already made, if it is a retry (step 3): the room's events
/// of the deduplication window with this user and client_id.
async fn earlier(edge: &Edge, event: &RoomEvent) -> Result<Option<u64>, ApiError> {
    use futures::StreamExt;
    let unavailable = |e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, "reading the deduplication window failed");
        ApiError::unavailable()
    };
    let window = chat_bus::stream::duplicate_window(&edge.config.stream);
    let start = time::OffsetDateTime::now_utc() - window - std::time::Duration::from_secs(1);
    let scan = async {
        let reader = edge
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
    tokio::time::timeout(edge.config.request_timeout, scan)
        .await
        .map_err(|_| unavailable(&"no answer in time"))?
}

/// Why [`check`] refused a frame.
enum Refused {
    /// Its target is deleted: it may be a retry of a change made before the delete.
    Deleted(ApiError),
    Other(ApiError),
}

impl From<ApiError> for Refused {
    fn from(e: ApiError) -> Self {
        Refused::Other(e)
    }
}

/// The checks of CONTRACT §2's client table that need the target's state (step 1).
async fn check(edge: &Edge, event: &RoomEvent) -> Result<(), Refused> {
    let info = |seq: u64| message_info(edge, &event.room, seq, None);
    let deleted = |e: ApiError| Err(Refused::Deleted(e));
    match event.kind {
        EventKind::Message => {
            if let Some(r) = event.reply_to {
                info(r).await?;
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
            let m = message_info(edge, &event.room, event.target.unwrap_or(0), adding).await?;
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
    edge: &Edge,
    room: &RoomId,
    seq: u64,
    adding: Option<NewReaction>,
) -> Result<MessageInfo, ApiError> {
    if seq == 0 {
        return Err(not_found());
    }
    chat_bus::api::request(
        &edge.nats,
        subjects::HISTORY_MESSAGE,
        &MessageInfoRequest {
            room: room.clone(),
            seq,
            adding,
        },
        edge.config.request_timeout,
    )
    .await
}
