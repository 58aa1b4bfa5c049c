//! From the upgrade to `hello` (protocol.md#ws): the token (the upgrade's header or the
//! first frame, within `CHAT_AUTH_TIMEOUT`), the slots an authenticated session counts against
//! ([`crate::admission`]), then the session's registration in the hub, its rooms and `hello`.
//! A connection refused on the way gets an error frame and its close code here.

use std::collections::HashMap;

use axum::extract::ws::Message;
use chat_bus::api::{self, ApiError, NotifyState, NotifyStateRequest, UserRooms, rooms};
use chat_proto::{ClientFrame, Envelope, ErrorCode, RoomId, RoomSummary, ServerFrame, close};
use futures::StreamExt;

use super::rooms::last_seq;
use super::writer::{TRY_AGAIN_LATER, close_and_drain, close_with, send_frame};
use super::{Session, Socket, is_too_big};
use crate::Edge;
use crate::admission::{Slot, UserSlot};
use crate::auth::{AuthError, Identity};
use crate::presence_reporter;

/// How the upgrade admitted a connection (see [`crate::admission`]).
pub enum Admitted {
    /// The upgrade's header token verified, and the session's slots are taken.
    Verified {
        identity: Identity,
        slots: SessionSlots,
    },
    /// To authenticate with its first frame (or its header token failed: the session says
    /// why); holds a slot of the unauthenticated connections until then.
    Pending {
        header_token: Option<String>,
        slot: Option<Slot>,
    },
}

/// What an authenticated session counts against, given back when the session is dropped.
#[derive(Debug)]
pub struct SessionSlots {
    _connection: Slot,
    _user: UserSlot,
}

/// Why an authenticated connection may not become a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `CHAT_MAX_SESSIONS_PER_USER` (protocol.md#ws-limits).
    UserSessions,
    /// `CHAT_MAX_CONNECTIONS`.
    Connections,
}

/// Takes the slots of a session of `identity`: one of the user's sessions on this edge, then one
/// of the edge's authenticated connections.
pub fn admit_session(edge: &Edge, identity: &Identity) -> Result<SessionSlots, Refused> {
    let Some(user) = edge.user_sessions.try_take(&identity.user) else {
        metrics::counter!("chat_edge_admission_refused_total", "why" => "sessions of the user")
            .increment(1);
        return Err(Refused::UserSessions);
    };
    let Some(connection) = Slot::try_take(
        &edge.open,
        edge.config.max_connections,
        "chat_edge_connections",
    ) else {
        metrics::counter!("chat_edge_admission_refused_total", "why" => "too many connections")
            .increment(1);
        return Err(Refused::Connections);
    };
    Ok(SessionSlots {
        _connection: connection,
        _user: user,
    })
}

/// Takes an admitted connection to an identity and its session's slots: authenticates it if
/// the upgrade did not, then takes the slots. `None` when it is refused (the client was told,
/// and the socket closed).
pub(super) async fn accept<S: Socket>(
    edge: &Edge,
    socket: &mut S,
    admitted: Admitted,
) -> Option<(Identity, SessionSlots)> {
    let (identity, slots) = match admitted {
        Admitted::Verified { identity, slots } => (identity, slots),
        Admitted::Pending { header_token, slot } => {
            let identity = authenticate(edge, socket, header_token).await?;
            let slots = match admit_session(edge, &identity) {
                Ok(slots) => slots,
                Err(Refused::UserSessions) => {
                    // protocol.md#ws-limits: before any hello.
                    let f = ServerFrame::error(
                        None,
                        ErrorCode::LimitExceeded,
                        format!(
                            "at most {} open sessions per user",
                            edge.config.max_sessions_per_user
                        ),
                    );
                    send_frame(socket, &f).await;
                    close_and_drain(socket, close::RATE_ABUSE, "too many sessions").await;
                    return None;
                }
                Err(Refused::Connections) => {
                    let f = ServerFrame::error(
                        None,
                        ErrorCode::Unavailable,
                        "too many connections: try again later",
                    );
                    send_frame(socket, &f).await;
                    close_and_drain(socket, TRY_AGAIN_LATER, "try again later").await;
                    return None;
                }
            };
            // Authenticated: no longer an unauthenticated connection.
            drop(slot);
            (identity, slots)
        }
    };
    Some((identity, slots))
}

/// Authenticates by header or first frame; closes with 4001 and returns `None` on failure.
async fn authenticate<S>(
    edge: &Edge,
    socket: &mut S,
    header_token: Option<String>,
) -> Option<Identity>
where
    S: Socket,
{
    let (token, reference) = match header_token {
        Some(t) => (t, None),
        None => {
            let first = tokio::time::timeout(edge.config.auth_timeout, async {
                loop {
                    match socket.next().await {
                        Some(Ok(Message::Text(t))) => return Ok(Some(t.to_string())),
                        Some(Ok(Message::Binary(_))) => return Ok(None),
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Ok(Message::Close(_))) | None => return Err(None),
                        Some(Err(e)) => return Err(Some(e)),
                    }
                }
            })
            .await;
            let text = match first {
                Err(_) => {
                    let f = ServerFrame::error(
                        None,
                        ErrorCode::Unauthorized,
                        "no auth frame within the time limit",
                    );
                    send_frame(socket, &f).await;
                    close_with(socket, close::UNAUTHORIZED, "authentication timeout").await;
                    return None;
                }
                Ok(Err(Some(e))) if is_too_big(&e) => {
                    close_with(socket, close::TOO_BIG, "frame too large").await;
                    return None;
                }
                Ok(Err(_)) => return None,
                Ok(Ok(text)) => text,
            };
            match text.as_deref().map(Envelope::decode) {
                Some(Ok(Envelope {
                    frame: ClientFrame::Auth { token },
                    reference,
                    ..
                })) => (token, reference),
                Some(Ok(env)) => {
                    let f = ServerFrame::error(
                        env.reference,
                        ErrorCode::Unauthorized,
                        "authenticate first",
                    );
                    send_frame(socket, &f).await;
                    close_with(socket, close::UNAUTHORIZED, "unauthorized").await;
                    return None;
                }
                Some(Err(e)) => {
                    send_frame(socket, &ServerFrame::error(e.reference, e.code, e.message)).await;
                    close_with(socket, close::UNAUTHORIZED, "unauthorized").await;
                    return None;
                }
                None => {
                    let f = ServerFrame::error(None, ErrorCode::Unauthorized, "authenticate first");
                    send_frame(socket, &f).await;
                    close_with(socket, close::UNAUTHORIZED, "unauthorized").await;
                    return None;
                }
            }
        }
    };
    match edge.auth.verify(&token).await {
        Ok(id) => Some(id),
        Err(e) => {
            metrics::counter!("chat_edge_auth_failures_total").increment(1);
            let code = if e == AuthError::Expired {
                ErrorCode::TokenExpired
            } else {
                ErrorCode::Unauthorized
            };
            send_frame(socket, &ServerFrame::error(reference, code, e.to_string())).await;
            close_with(socket, close::UNAUTHORIZED, "unauthorized").await;
            None
        }
    }
}

impl<S: Socket> Session<S> {
    /// Registers the session, subscribes it to the user's rooms and sends `hello`.
    pub(super) async fn start(&mut self) -> Result<(), ApiError> {
        let edge = self.edge.clone();
        edge.hub
            .add_user_session(self.handle.clone())
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "user subscription failed");
                ApiError::unavailable()
            })?;
        let memberships: UserRooms = self
            .request(&rooms::UserRoomsOf {
                user: self.user().clone(),
            })
            .await?;
        let mut summaries = Vec::with_capacity(memberships.rooms.len());
        for m in &memberships.rooms {
            self.subscribe(&m.room, m.kind).await?;
        }
        let last_seqs: Vec<u64> =
            futures::future::join_all(memberships.rooms.iter().map(|m| last_seq(&edge, &m.room)))
                .await
                .into_iter()
                .collect::<Result<_, _>>()?;
        // Counts covering exactly each room's `last_seq` (protocol.md#ws-unread): what follows
        // comes live, and the client counts it.
        let state: NotifyState = match self
            .request(&NotifyStateRequest {
                user: self.user().clone(),
                rooms: memberships.rooms.iter().map(|m| m.room.clone()).collect(),
                last_seqs: last_seqs.clone(),
            })
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "unread state unavailable; hello lists zeros");
                NotifyState {
                    rooms: Vec::new(),
                    notifications: Vec::new(),
                    notifications_total: 0,
                }
            }
        };
        let unread: HashMap<&RoomId, &api::UnreadState> =
            state.rooms.iter().map(|u| (&u.room, u)).collect();
        for (m, last) in memberships.rooms.iter().zip(last_seqs) {
            if let Some(r) = self.rooms.get_mut(&m.room) {
                r.delivered = r.delivered.max(last);
            }
            let u = unread.get(&m.room);
            summaries.push(RoomSummary {
                room: m.room.clone(),
                kind: m.kind,
                last_seq: last,
                last_read: u.map_or(0, |u| u.last_read),
                unread: u.map_or(0, |u| u.unread),
            });
        }
        let hello = ServerFrame::Hello {
            user: self.user().clone(),
            session: self.handle.name.to_string(),
            epoch: edge.epoch.clone(),
            heartbeat_ms: edge.config.heartbeat.as_millis() as u64,
            limits: edge.config.limits(),
            rooms: summaries,
            notifications_total: state
                .notifications_total
                .max(state.notifications.len() as u64),
            notifications: state.notifications,
        };
        self.send(&hello).await;
        presence_reporter::session_up(&edge, &self.handle).await;
        Ok(())
    }
}
