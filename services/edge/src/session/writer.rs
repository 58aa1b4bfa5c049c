//! The write side of a session, apart from the client logic (issue 18's shape): every rule of
//! writing to the client is here.
//!
//! - Batches: [`write_batch`] drains the session's bounded queue into the socket, many frames per
//!   flush, so a burst to one socket is one write rather than one per frame. Frames arrive ready
//!   to send: the hub serializes each event once per edge and every session shares its bytes
//!   (`Utf8Bytes` is `Bytes`-backed, a clone is a reference count), so a delivery allocates
//!   nothing. Written over any `Sink` of WebSocket messages, so it is tested (allocations
//!   included) without a socket.
//! - The write deadline and slow consumers: a write blocked for 3 heartbeats, or a queue that
//!   filled meanwhile (the hub raises the session's stop), closes the session with 4008
//!   (`Session::on_outbound`; an idle session's loop closes on its stop alike, and a kick or
//!   the drain ends a blocked write the same way, with their own codes);
//!   a heartbeat due meanwhile pings once the write is done.
//! - Replies and closes: [`send_frame`] (one frame, counted by type and error code),
//!   [`close_with`] (a close frame, counted by code) and [`close_and_drain`] (close, then read
//!   to the peer's close reply, so that the connection ends with FIN).

use std::sync::Arc;
use std::time::Duration;

use super::{Session, Socket};
use crate::hub::{Stop, StopReason};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use chat_bus::api::MembershipChange;
use chat_proto::{RoomId, ServerFrame};
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;

/// What the hub hands to a session: one pointer, so that a session's queue costs little while it
/// is idle (its first block of slots is allocated with the channel) and a delivery copies 16
/// bytes. What it points to is built once per edge and shared by every recipient.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A room event, delivered once per session (the session drops seqs it has delivered).
    Event(Arc<RoomEvent>),
    /// Any other ready-made frame about one room (typing, presence, unread, notification):
    /// delivered only while the session is a member, so nothing of a room follows its `left`.
    RoomFrame(Arc<RoomFrame>),
    /// The user's membership changed (possibly from another session or edge).
    Membership(Box<MembershipChange>),
}

/// A room event as ready frame bytes (`Utf8Bytes` is `Bytes`-backed: a clone is a reference
/// count).
#[derive(Debug)]
pub struct RoomEvent {
    pub room: Arc<RoomId>,
    pub seq: u64,
    pub text: Utf8Bytes,
}

/// A ready frame about one room that is not one of its events.
#[derive(Debug)]
pub struct RoomFrame {
    pub room: Arc<RoomId>,
    pub text: Utf8Bytes,
}

impl Outbound {
    pub fn room_frame(room: Arc<RoomId>, text: Utf8Bytes) -> Self {
        Outbound::RoomFrame(Arc::new(RoomFrame { room, text }))
    }
}

/// Most queued items written before one flush.
pub const MAX_BATCH: usize = 256;

/// What the writer asks of the session about its rooms.
pub trait Rooms {
    /// Whether event `seq` of `room` goes out now; if so it is recorded as delivered (a room
    /// the session is not in, or a seq it has delivered, is dropped: replay/live dedupe).
    fn admit_event(&mut self, room: &RoomId, seq: u64) -> bool;
    /// Whether the session is a member of `room`.
    fn is_member(&self, room: &RoomId) -> bool;
}

/// What one batch did.
#[derive(Debug, Default)]
pub struct Batch {
    /// Room events written.
    pub events: u64,
    /// Other frames written.
    pub frames: u64,
    /// A membership change that ended the batch early, for the session to handle.
    pub membership: Option<Box<MembershipChange>>,
}

/// Writes `first` and whatever else is queued (up to [`MAX_BATCH`] items, or up to a membership
/// change) with a single flush. A failed write is an error: the session ends.
pub async fn write_batch<S, R>(
    sink: &mut S,
    first: Outbound,
    rx: &mut mpsc::Receiver<Outbound>,
    rooms: &mut R,
) -> Result<Batch, axum::Error>
where
    S: Sink<Message, Error = axum::Error> + Unpin,
    R: Rooms + ?Sized,
{
    let mut batch = Batch::default();
    let mut next = Some(first);
    let mut taken = 0;
    while let Some(item) = next.take() {
        taken += 1;
        match item {
            Outbound::Event(event) => {
                if rooms.admit_event(&event.room, event.seq) {
                    sink.feed(Message::Text(event.text.clone())).await?;
                    batch.events += 1;
                }
            }
            Outbound::RoomFrame(frame) => {
                if rooms.is_member(&frame.room) {
                    sink.feed(Message::Text(frame.text.clone())).await?;
                    batch.frames += 1;
                }
            }
            Outbound::Membership(change) => {
                batch.membership = Some(change);
                break;
            }
        }
        if taken < MAX_BATCH {
            next = rx.try_recv().ok();
        }
    }
    if batch.events + batch.frames > 0 {
        sink.flush().await?;
    }
    Ok(batch)
}

/// WebSocket close code 1011: the server met an unexpected condition.
pub(super) const INTERNAL_ERROR: u16 = 1011;
/// WebSocket close code 1013: try again later.
pub(super) const TRY_AGAIN_LATER: u16 = 1013;

pub(super) async fn send_frame<S>(socket: &mut S, frame: &ServerFrame) -> bool
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    metrics::counter!("chat_edge_frames_out_total", "type" => frame.type_name()).increment(1);
    if let ServerFrame::Error { code, .. } = frame {
        metrics::counter!("chat_edge_errors_total", "code" => code.as_str()).increment(1);
    }
    socket
        .send(Message::Text(frame.to_json().into()))
        .await
        .is_ok()
}

pub(super) async fn close_with<S>(socket: &mut S, code: u16, reason: impl Into<Utf8Bytes>)
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    metrics::counter!("chat_edge_closes_total", "code" => code.to_string()).increment(1);
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
    let _ = socket.flush().await;
}

/// Closes and reads what the peer still sends (up to its close reply, for at most a second), so
/// the TCP connection ends with FIN rather than a reset that could swallow the close frame.
pub(super) async fn close_and_drain<S>(socket: &mut S, code: u16, reason: &'static str)
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    close_with(socket, code, reason).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(msg)) = socket.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

impl<S: Socket> Session<S> {
    pub(crate) async fn send(&mut self, frame: &ServerFrame) -> bool {
        send_frame(&mut self.socket, frame).await
    }

    /// Writes what is queued for the client (a batch, one flush: [`write_batch`]);
    /// false when the connection is over (a failed write ends it).
    pub(super) async fn on_outbound(
        &mut self,
        item: Option<Outbound>,
        rx: &mut mpsc::Receiver<Outbound>,
        stop: &Stop,
        ping: &mut tokio::time::Interval,
    ) -> bool {
        let Some(item) = item else { return false };
        // A peer that stops reading blocks the write; a stop still ends the connection (its
        // queue filled meanwhile, a kick, the drain), without waiting for the peer. A write blocked
        // for 3 heartbeats ends it too: a peer that stops reading while it keeps writing would
        // otherwise hold the session forever (each side waiting for the other to read). That
        // deadline is checked on the heartbeat's own ticks: no timer is armed per write.
        let stall = self.edge.config.heartbeat * 3;
        let started = tokio::time::Instant::now();
        let outcome = {
            let write = write_batch(&mut self.socket, item, rx, &mut self.rooms);
            tokio::pin!(write);
            loop {
                tokio::select! {
                    biased;
                    r = &mut write => break Some(r),
                    _ = stop.raised() => break None,
                    _ = ping.tick() => {
                        self.ping_due = true;
                        if started.elapsed() >= stall {
                            metrics::counter!("chat_edge_slow_consumers_total").increment(1);
                            stop.raise(StopReason::SlowConsumer);
                            break None;
                        }
                    }
                }
            }
        };
        if let Some(why) = stop.reason() {
            // The peer may still not read: the close gets a second, not the write deadline.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.close_for(why)).await;
            return false;
        }
        match outcome {
            Some(Ok(batch)) => {
                self.messages_out.increment(batch.events);
                if let Some(change) = batch.membership {
                    Box::pin(self.on_membership(*change)).await;
                }
                true
            }
            Some(Err(e)) => {
                tracing::debug!(session = %self.handle.name, error = %e, "write failed; closing");
                false
            }
            None => false,
        }
    }
}
