//! *(v1.1)* The lifecycle frames of a session (protocol.md#ws-lifecycle): `edit`, `delete`, `react`
//! and `send` with `reply_to`/`thread`. Each becomes a room event of its own kind, published to
//! the room's subject like a message, and is acknowledged with that event's own seq.
//!
//! The checks, the publish and the recognition of a retry are [`chat_bus::post`]'s (shared with
//! chat-api); this module pipelines them in a session: the reply joins the session's queue of
//! send replies, so that replies go out in the order the frames came.

use chat_bus::api::ApiError;
use chat_bus::post::{Refused, acknowledged, check, earlier, event_of};
use chat_bus::trace;
use chat_proto::{ClientFrame, ServerFrame};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::send::ack_frame;
use crate::session::{Session, Socket};

/// How a lifecycle frame went out: published (its stream acknowledgement pending), or found to
/// be the retry of an event already made.
enum Outcome {
    Published(async_nats::jetstream::context::PublishAckFuture),
    Earlier(u64),
}

/// Carries out a lifecycle frame. Its reply (`ack` or an error) joins the session's queue of
/// send replies, so that replies go out in the order the frames came, like sends'.
pub(super) async fn handle<S: Socket>(
    session: &mut Session<S>,
    reference: Option<String>,
    traceparent: Option<String>,
    frame: ClientFrame,
) -> Result<(), ApiError> {
    session.make_room_for_a_send().await;
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
    let reader = edge.post_reader();
    let outcome = async {
        match check(reader, &event).await {
            Ok(()) => session
                .publish(&event, deadline)
                .await
                .map(Outcome::Published),
            // Only a change refused because its target was deleted since can be a retry of
            // one that was made (the author and the target's existence never change).
            Err(Refused::Deleted(refused)) => match earlier(reader, &event).await? {
                Some(seq) => Ok(Outcome::Earlier(seq)),
                None => Err(refused),
            },
            Err(Refused::Other(e)) => Err(e),
        }
    }
    .instrument(span.clone())
    .await;
    let reply = async move {
        let stored = match outcome {
            Ok(Outcome::Published(ack)) => acknowledged(ack, deadline).await,
            Ok(Outcome::Earlier(seq)) => Ok((seq, true)),
            Err(e) => Err(e),
        };
        match stored {
            Ok((seq, duplicate)) => ack_frame(&edge.stream, reference, event, seq, duplicate).await,
            Err(e) => ServerFrame::error(reference, e.code, e.message),
        }
    };
    session.sends.push_back(Box::pin(reply.instrument(span)));
    Ok(())
}
