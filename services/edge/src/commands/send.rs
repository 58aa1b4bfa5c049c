//! `send` of a plain message (protocol.md#ws): published to the room's stream subject in the
//! order the sends came, acknowledged (`ack`, with the stream's seq) once the stream has it. The
//! session goes on reading meanwhile: the wait for each acknowledgement joins the session's
//! queue of send replies (`Session::sends`), answered in order. `send` with `reply_to` or
//! `thread` is a lifecycle frame ([`super::lifecycle`]).

use std::time::Instant;

use chat_bus::api::ApiError;
use chat_bus::event::RoomEvent;
use chat_bus::post::{acknowledged, stored_ts};
use chat_bus::{now_ms, trace};
use chat_proto::{RoomId, ServerFrame};
use futures::StreamExt;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::session::{Session, Socket};

/// Most sends of one session waiting for their acknowledgement at once (protocol.md#ws: the
/// session keeps reading meanwhile; acks go out in the order of the sends).
pub const MAX_SENDS_IN_FLIGHT: usize = 64;

/// The reply to a send, once its acknowledgement came (or did not).
pub(crate) type SendReply =
    std::pin::Pin<Box<dyn std::future::Future<Output = ServerFrame> + Send>>;

impl<S: Socket> Session<S> {
    /// Publishes a message and queues the wait for its acknowledgement: the session goes on
    /// reading (and answering other frames) meanwhile. At most [`MAX_SENDS_IN_FLIGHT`] wait at
    /// once; beyond, the oldest is answered first. Replies to sends (`ack`, or `unavailable` when
    /// the stream does not acknowledge in time) go out in the order the sends came.
    pub(crate) async fn on_send(
        &mut self,
        reference: Option<String>,
        traceparent: Option<String>,
        room: RoomId,
        body: String,
        client_id: String,
    ) -> Result<(), ApiError> {
        self.make_room_for_a_send().await;
        let span = tracing::info_span!(
            parent: None,
            "send",
            otel.kind = "producer",
            messaging.system = chat_bus::trace::MESSAGING_SYSTEM,
            messaging.operation.type = "send",
            messaging.destination.name = %format_args!("chat.room.{room}.msg"),
            messaging.message.id = %format_args!("{}:{client_id}", self.handle.user),
            room = %room,
            user = %self.handle.user,
            seq = tracing::field::Empty
        );
        if let Some(tp) = traceparent.as_deref() {
            let _ = span.set_parent(trace::from_traceparent(tp));
        }
        let started = Instant::now();
        let event = RoomEvent::message(room, self.user().clone(), body, client_id, now_ms());
        let deadline = tokio::time::Instant::now() + self.edge.config.request_timeout;
        // Published here, in the order the sends came, so the stream keeps that order.
        let published = self
            .publish(&event, deadline)
            .instrument(span.clone())
            .await;
        let edge = self.edge.clone();
        let reply = async move {
            let result = match published {
                Ok(ack) => acknowledged(ack, deadline).await,
                Err(e) => Err(e),
            };
            metrics::histogram!("chat_edge_send_ack_seconds")
                .record(started.elapsed().as_secs_f64());
            match result {
                Ok((seq, duplicate)) => {
                    ack_frame(&edge.stream, reference, event, seq, duplicate).await
                }
                Err(e) => ServerFrame::error(reference, e.code, e.message),
            }
        };
        self.sends.push_back(Box::pin(reply.instrument(span)));
        Ok(())
    }

    /// Waits, answering the oldest sends, until fewer than [`MAX_SENDS_IN_FLIGHT`] await their
    /// acknowledgement.
    pub(crate) async fn make_room_for_a_send(&mut self) {
        while self.sends.len() >= MAX_SENDS_IN_FLIGHT {
            if let Some(reply) = self.sends.next().await {
                self.send(&reply).await;
            }
        }
    }

    /// Publishes through JetStream ([`chat_bus::post::publish`]); the stream's acknowledgement
    /// is the returned future. Never a panic on a header value (issue 15): dispatch refused
    /// control characters in client_id already; whatever slipped through is refused there.
    pub(crate) async fn publish(
        &mut self,
        event: &RoomEvent,
        deadline: tokio::time::Instant,
    ) -> Result<async_nats::jetstream::context::PublishAckFuture, ApiError> {
        chat_bus::post::publish(&self.edge.js, event, deadline).await
    }
}

/// The `ack` of an event the stream stored at `seq` (protocol.md#ws): a duplicate carries the
/// original's `ts`. Recorded as the span's `seq`.
pub(crate) async fn ack_frame(
    stream: &async_nats::jetstream::stream::Stream,
    reference: Option<String>,
    event: RoomEvent,
    seq: u64,
    duplicate: bool,
) -> ServerFrame {
    tracing::Span::current().record("seq", seq);
    let ts = stored_ts(stream, &event, seq, duplicate).await;
    ServerFrame::Ack {
        reference,
        room: event.room,
        client_id: event.client_id,
        seq,
        ts,
        duplicate,
    }
}
