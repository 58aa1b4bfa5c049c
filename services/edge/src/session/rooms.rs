//! What each room means to a session, and how its events reach the client exactly once and in
//! order: the delivery state per room (the highest seq delivered, the first delivered live), the
//! replay of what came after a `since` (a gap filled from chat-history, deduplicated against the
//! live feed), and the session's memberships (`joined`/`left` on a membership change, and their
//! periodic reconciliation with chat-history, which repairs an announcement lost on the way).

use std::collections::HashMap;

use chat_bus::api::{ApiError, MembershipChange, NotifyStateRequest, UserRooms, rooms};
use chat_bus::rpc;
use chat_proto::{RoomId, RoomKind, ServerFrame};

use super::{Session, Socket, writer};
use crate::Edge;

/// What a room means to this session.
#[derive(Debug, Clone)]
pub(crate) struct RoomState {
    kind: RoomKind,
    /// Highest seq of this room delivered to the client; later copies are dropped.
    pub(crate) delivered: u64,
    /// First seq delivered live, so a replay can fill exactly what came before it.
    live_from: Option<u64>,
}

impl writer::Rooms for HashMap<RoomId, RoomState> {
    fn admit_event(&mut self, room: &RoomId, seq: u64) -> bool {
        let Some(state) = self.get_mut(room) else {
            return false;
        };
        if seq <= state.delivered {
            return false;
        }
        state.delivered = seq;
        state.live_from.get_or_insert(seq);
        true
    }

    fn is_member(&self, room: &RoomId) -> bool {
        self.contains_key(room)
    }
}

/// The answer of a reconciliation's `UserRooms` request.
pub(super) type Reconciling =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<UserRooms, ApiError>> + Send>>;

/// Waits for the reconciliation in flight (never completes when there is none).
pub(super) async fn next_reconcile(
    r: &mut Option<(u64, Reconciling)>,
) -> (u64, Result<UserRooms, ApiError>) {
    match r {
        Some((version, fut)) => (*version, fut.await),
        None => std::future::pending().await,
    }
}

impl<S: Socket> Session<S> {
    /// The user's marker and unread count in `room` covering the events up to `last` (what a
    /// `joined` carries: protocol.md#ws-unread); zeros, with a warning, while chat-notify does not
    /// answer (its next `unread` corrects them).
    pub(crate) async fn unread_of(&mut self, room: &RoomId, last: u64) -> (u64, u64) {
        let req = NotifyStateRequest {
            user: self.user().clone(),
            rooms: vec![room.clone()],
            last_seqs: vec![last],
        };
        match self.request(&req).await {
            Ok(state) => state
                .rooms
                .iter()
                .find(|u| u.room == *room)
                .map_or((0, 0), |u| (u.last_read, u.unread)),
            Err(e) => {
                tracing::warn!(error = %e, "unread state unavailable; joined lists zeros");
                (0, 0)
            }
        }
    }

    /// Asks chat-history for the user's rooms, to be compared with this session's when answered
    /// (issue 15 item 12): a membership announcement lost on the way (NATS core, at most once)
    /// would otherwise leave the session subscribed to a room it left — receiving and able to
    /// send — or missing one it was added to. One request per session per
    /// `CHAT_MEMBERSHIP_RECONCILE`, on the heartbeat's ticks: nothing per message.
    pub(super) fn start_reconcile(&mut self) {
        let (nats, timeout) = (self.edge.nats.clone(), self.edge.config.request_timeout);
        let req = rooms::UserRoomsOf {
            user: self.user().clone(),
        };
        let fut = async move { rpc::call(&nats, &req, timeout).await };
        self.reconciling = Some((self.rooms_version, Box::pin(fut)));
    }

    /// Applies a reconciliation's answer: rooms the session has and chat-history does not store
    /// are left (`left`, unsubscribed: no more events, `send` is `forbidden`), stored rooms it
    /// lacks are joined, as their announcements would have done. An answer asked before a
    /// change of the session's rooms may predate it and is dropped; so is a failed request (the
    /// next tick asks again).
    pub(super) async fn reconcile(&mut self, asked_at: u64, stored: Result<UserRooms, ApiError>) {
        let Ok(stored) = stored else { return };
        if asked_at != self.rooms_version {
            return;
        }
        let kinds: HashMap<&RoomId, RoomKind> =
            stored.rooms.iter().map(|m| (&m.room, m.kind)).collect();
        let mut changes: Vec<MembershipChange> = self
            .rooms
            .iter()
            .filter(|(room, _)| !kinds.contains_key(room))
            .map(|(room, state)| (room.clone(), state.kind, false))
            .chain(
                kinds
                    .iter()
                    .filter(|(room, _)| !self.rooms.contains_key(**room))
                    .map(|(room, kind)| ((*room).clone(), *kind, true)),
            )
            .map(|(room, kind, member)| MembershipChange {
                user: self.handle.user.clone(),
                room,
                kind,
                member,
                by: self.handle.user.clone(),
            })
            .collect();
        changes.sort_by_key(|c| c.member);
        for change in changes {
            tracing::info!(session = %self.handle.name, room = %change.room, member = change.member,
                "membership reconciled: an announcement was missed");
            metrics::counter!("chat_edge_membership_reconciled_total").increment(1);
            self.on_membership(change).await;
        }
    }

    /// Adds the room to this session (subscribing the hub if needed).
    pub(crate) async fn subscribe(
        &mut self,
        room: &RoomId,
        kind: RoomKind,
    ) -> Result<(), ApiError> {
        if let Some(r) = self.rooms.get_mut(room) {
            r.kind = kind;
            return Ok(());
        }
        self.edge
            .hub
            .add_to_room(room, self.handle.clone())
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "room subscription failed");
                ApiError::unavailable()
            })?;
        self.rooms_version += 1;
        self.rooms.insert(
            room.clone(),
            RoomState {
                kind,
                delivered: 0,
                live_from: None,
            },
        );
        Ok(())
    }

    pub(crate) async fn unsubscribe(&mut self, room: &RoomId) -> bool {
        if self.rooms.remove(room).is_some() {
            self.rooms_version += 1;
            self.edge.hub.remove_from_room(room, self.handle.id).await;
            true
        } else {
            false
        }
    }

    pub(super) async fn on_membership(&mut self, change: MembershipChange) {
        if change.member && !self.rooms.contains_key(&change.room) {
            if self.subscribe(&change.room, change.kind).await.is_err() {
                return;
            }
            let last = last_seq(&self.edge, &change.room).await.unwrap_or(0);
            if let Some(r) = self.rooms.get_mut(&change.room) {
                r.delivered = r.delivered.max(last);
            }
            let members = if change.kind == RoomKind::Public {
                None
            } else {
                self.request(&rooms::Members {
                    room: change.room.clone(),
                })
                .await
                .ok()
                .map(|i| i.members)
            };
            let (last_read, unread) = self.unread_of(&change.room, last).await;
            let f = ServerFrame::Joined {
                reference: None,
                room: change.room,
                kind: change.kind,
                last_seq: last,
                recovered: None,
                members,
                last_read,
                unread,
            };
            self.send(&f).await;
        } else if !change.member && self.unsubscribe(&change.room).await {
            self.send(&ServerFrame::Left {
                reference: None,
                room: change.room,
            })
            .await;
        }
    }

    /// Sends every event of `room` after `since` that this session has not delivered yet, in
    /// order. The room is subscribed already, so what is published meanwhile waits in the queue
    /// and is dropped there if the replay covered it.
    pub(crate) async fn replay(&mut self, room: &RoomId, since: u64) -> Result<(), ApiError> {
        // Events as they were sent (protocol.md#ws-lifecycle), not current state.
        let mut pages = rpc::EventsAfter::new(room.clone(), since, Some(self.user().clone()));
        let (nats, timeout) = (self.edge.nats.clone(), self.edge.config.request_timeout);
        while let Some(page) = pages.next(&nats, timeout).await? {
            for m in page {
                let seq = m.seq();
                let Some(state) = self.rooms.get_mut(room) else {
                    return Ok(());
                };
                let before_live = state.live_from.is_none_or(|first| seq < first);
                if before_live || seq > state.delivered {
                    state.delivered = state.delivered.max(seq);
                    if !self.send(&m.into_server_frame()).await {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}

/// The room's newest seq, 0 for a room with no event.
pub(crate) async fn last_seq(edge: &Edge, room: &RoomId) -> Result<u64, ApiError> {
    chat_bus::stream::last_seq(&edge.stream, room).await
}
