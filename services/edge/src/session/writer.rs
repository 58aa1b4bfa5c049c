//! The write side of a session, apart from the client logic (issue 18's shape): it drains the
//! session's bounded queue into the socket, many frames per flush, so a burst to one socket is
//! one write rather than one per frame. Frames arrive ready to send: the hub serializes each
//! event once per edge and every session shares its bytes (`Utf8Bytes` is `Bytes`-backed, a
//! clone is a reference count), so a delivery allocates nothing. Written over any `Sink` of
//! WebSocket messages, so it is tested (allocations included) without a socket.

use std::sync::Arc;

use axum::extract::ws::{Message, Utf8Bytes};
use chat_bus::api::MembershipChange;
use chat_proto::RoomId;
use futures::{Sink, SinkExt};
use tokio::sync::mpsc;

/// What the hub hands to a session.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A room event, delivered once per session (the session drops seqs it has delivered).
    Event {
        room: Arc<RoomId>,
        seq: u64,
        text: Utf8Bytes,
    },
    /// Any other ready-made frame about one room (typing, presence, unread, notification):
    /// delivered only while the session is a member, so nothing of a room follows its `left`.
    RoomFrame { room: Arc<RoomId>, text: Utf8Bytes },
    /// The user's membership changed (possibly from another session or edge).
    Membership(Box<MembershipChange>),
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
            Outbound::Event { room, seq, text } => {
                if rooms.admit_event(&room, seq) {
                    sink.feed(Message::Text(text)).await?;
                    batch.events += 1;
                }
            }
            Outbound::RoomFrame { room, text } => {
                if rooms.is_member(&room) {
                    sink.feed(Message::Text(text)).await?;
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
