//! One client connection, from authentication to close. Written over any `Sink`/`Stream` of
//! WebSocket messages, so it is the same code in production and in tests.

mod lifecycle;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message};
use chat_bus::api::{
    self, ApiError, HistoryPage, HistoryRequest, MembershipChange, NotifyState, NotifyStateRequest,
    PresenceReply, PresenceRequest, ReadRequest, RoomInfo, RoomsRequest, StatusChange, TypingEvent,
    UnreadUpdate, UserRooms,
};
use chat_bus::event::RoomEvent;
use chat_bus::{now_ms, subjects, trace};
use chat_proto::{
    ClientFrame, Envelope, ErrorCode, RoomId, RoomKind, RoomSummary, ServerFrame, UserId, close,
};
use futures::{FutureExt as _, Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub mod writer;

use crate::Edge;
use crate::admission::{Slot, UserSlot};
use crate::auth::{AuthError, Identity, now_s};
use crate::dispatch::{self, Action, Inbound};
use crate::hub::{Outbound, SessionHandle};
use crate::presence_reporter;
use crate::ratelimit::TokenBucket;

/// What a room means to this session.
#[derive(Debug, Clone)]
struct RoomState {
    kind: RoomKind,
    /// Highest seq of this room delivered to the client; later copies are dropped.
    delivered: u64,
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

/// How a frame handler wants the connection to go on.
enum Flow {
    Continue,
    Close(u16, &'static str),
}

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
    /// `CHAT_MAX_SESSIONS_PER_USER` (CONTRACT v1.1 §2 Quotas).
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

/// Runs a connection to its end, with no admission at the upgrade (tests and embedders):
/// `header_token` is the bearer token of the upgrade request.
pub async fn run<S>(edge: Edge, socket: S, header_token: Option<String>)
where
    S: Stream<Item = Result<Message, axum::Error>>
        + Sink<Message, Error = axum::Error>
        + Unpin
        + Send,
{
    let admitted = Admitted::Pending {
        header_token,
        slot: None,
    };
    run_admitted(edge, socket, admitted).await;
}

/// Runs an admitted connection to its end.
///
/// Whatever way the session ends, what it holds is given back (issue 15: a panic once leaked
/// the hub's entries, the user's presence and the connection slot): a panic inside the session
/// is caught here and the session cleaned up as after any close, and should the future be
/// dropped before its cleanup (an abort, a panic in the cleanup itself), [`Session`]'s `Drop`
/// hands the same cleanup to a task of its own. The slots are guards.
pub async fn run_admitted<S>(edge: Edge, mut socket: S, admitted: Admitted)
where
    S: Stream<Item = Result<Message, axum::Error>>
        + Sink<Message, Error = axum::Error>
        + Unpin
        + Send,
{
    let (identity, slots) = match admitted {
        Admitted::Verified { identity, slots } => (identity, slots),
        Admitted::Pending { header_token, slot } => {
            let Some(identity) = authenticate(&edge, &mut socket, header_token).await else {
                return;
            };
            let slots = match admit_session(&edge, &identity) {
                Ok(slots) => slots,
                Err(Refused::UserSessions) => {
                    // CONTRACT v1.1 §2 Quotas: before any hello.
                    let f = ServerFrame::error(
                        None,
                        ErrorCode::LimitExceeded,
                        format!(
                            "at most {} open sessions per user",
                            edge.config.max_sessions_per_user
                        ),
                    );
                    send_frame(&mut socket, &f).await;
                    close_and_drain(&mut socket, close::RATE_ABUSE, "too many sessions").await;
                    return;
                }
                Err(Refused::Connections) => {
                    let f = ServerFrame::error(
                        None,
                        ErrorCode::Unavailable,
                        "too many connections: try again later",
                    );
                    send_frame(&mut socket, &f).await;
                    close_and_drain(&mut socket, TRY_AGAIN_LATER, "try again later").await;
                    return;
                }
            };
            // Authenticated: no longer an unauthenticated connection.
            drop(slot);
            (identity, slots)
        }
    };
    let id = edge.next_session_id();
    let name: Arc<str> = format!("{}-{id}", edge.edge_id).into();
    let (tx, rx) = mpsc::channel(edge.config.outbound_queue);
    let handle = SessionHandle {
        id,
        name: name.clone(),
        user: identity.user.clone(),
        tx,
        overflow: CancellationToken::new(),
        kick: Default::default(),
    };
    let mut session = Session {
        edge: edge.clone(),
        socket,
        handle,
        exp: identity.exp,
        rooms: HashMap::new(),
        bucket: TokenBucket::new(edge.config.rate_per_s, Instant::now()),
        last_heard: Instant::now(),
        expiry_changed: false,
        cleaned_up: false,
        _slots: slots,
        messages_out: metrics::counter!("chat_edge_frames_out_total", "type" => "message"),
        ping_due: false,
        sends: futures::stream::FuturesOrdered::new(),
        rooms_version: 0,
        // Spread over the interval, so that sessions opened together do not ask together.
        ticks_to_reconcile: 1 + rand::random::<u32>() % edge.config.reconcile_ticks(),
        reconciling: None,
    };
    let served = std::panic::AssertUnwindSafe(session.serve(rx))
        .catch_unwind()
        .await;
    if served.is_err() {
        // The panic message went to the panic hook (stderr); the session is cleaned up as usual.
        metrics::counter!("chat_edge_session_panics_total").increment(1);
        tracing::error!(session = %name, "session task panicked; closing it with 1011");
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            close_with(&mut session.socket, INTERNAL_ERROR, "internal error"),
        )
        .await;
    }
    session.cleanup().await;
}

/// WebSocket close code 1011: the server met an unexpected condition.
const INTERNAL_ERROR: u16 = 1011;
/// WebSocket close code 1013: try again later.
const TRY_AGAIN_LATER: u16 = 1013;

async fn send_frame<S>(socket: &mut S, frame: &ServerFrame) -> bool
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

async fn close_with<S>(socket: &mut S, code: u16, reason: impl Into<axum::extract::ws::Utf8Bytes>)
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
async fn close_and_drain<S>(socket: &mut S, code: u16, reason: &'static str)
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

fn is_too_big(e: &axum::Error) -> bool {
    let text = e.to_string();
    text.contains("Space limit exceeded")
        || text.contains("too long")
        || text.contains("Message too big")
}

/// Authenticates by header or first frame; closes with 4001 and returns `None` on failure.
async fn authenticate<S>(
    edge: &Edge,
    socket: &mut S,
    header_token: Option<String>,
) -> Option<Identity>
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
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

/// What the connection's two queues had first: a frame from the client or one for it.
enum Io {
    Inbound(Option<Result<Message, axum::Error>>),
    Outbound(Option<Outbound>),
}

/// The next frame from the client or for it, whichever is ready, trying `read_first`'s side
/// first. Both halves are cancel-safe, so losing a race against a timer loses nothing.
async fn next_io<S>(socket: &mut S, rx: &mut mpsc::Receiver<Outbound>, read_first: bool) -> Io
where
    S: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    if read_first {
        tokio::select! {
            biased;
            msg = socket.next() => Io::Inbound(msg),
            item = rx.recv() => Io::Outbound(item),
        }
    } else {
        tokio::select! {
            biased;
            item = rx.recv() => Io::Outbound(item),
            msg = socket.next() => Io::Inbound(msg),
        }
    }
}

struct Session<S> {
    edge: Edge,
    socket: S,
    handle: SessionHandle,
    /// Token expiry, seconds since the Unix epoch.
    exp: i64,
    rooms: HashMap<RoomId, RoomState>,
    bucket: TokenBucket,
    last_heard: Instant,
    expiry_changed: bool,
    /// Set once [`Session::cleanup`] ran; until then, dropping the session cleans up.
    cleaned_up: bool,
    /// Given back when the session is dropped (after its cleanup).
    _slots: SessionSlots,
    /// Registered once: the writer counts per batch, with no lookup per delivery.
    messages_out: metrics::Counter,
    /// A heartbeat came due while a write was blocked: ping once it is done.
    ping_due: bool,
    /// Sends waiting for their acknowledgement, answered in order.
    sends: futures::stream::FuturesOrdered<SendReply>,
    /// Bumped by every change of `rooms`: a reconciliation answered across one is dropped.
    rooms_version: u64,
    /// Heartbeat ticks until the next reconciliation of `rooms` with chat-history.
    ticks_to_reconcile: u32,
    /// A reconciliation in flight: (`rooms_version` when asked, the user's stored rooms).
    reconciling: Option<(u64, Reconciling)>,
}

/// The answer of a reconciliation's `UserRooms` request.
type Reconciling =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<UserRooms, ApiError>> + Send>>;

/// Waits for the reconciliation in flight (never completes when there is none).
async fn next_reconcile(r: &mut Option<(u64, Reconciling)>) -> (u64, Result<UserRooms, ApiError>) {
    match r {
        Some((version, fut)) => (*version, fut.await),
        None => std::future::pending().await,
    }
}

impl<S> Drop for Session<S> {
    fn drop(&mut self) {
        if self.cleaned_up {
            return;
        }
        // Dropped before its cleanup ran (the future was aborted, or the cleanup panicked):
        // give everything back from a task of its own.
        let rooms: Vec<RoomId> = self.rooms.drain().map(|(room, _)| room).collect();
        let (edge, handle) = (self.edge.clone(), self.handle.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(release(edge, handle, rooms));
        }
    }
}

/// Removes a session from the hub (its rooms and its user entry) and announces `session down`.
async fn release(edge: Edge, handle: SessionHandle, rooms: Vec<RoomId>) {
    for room in rooms {
        edge.hub.remove_from_room(&room, handle.id).await;
    }
    edge.hub.remove_user_session(&handle.user, handle.id).await;
    presence_reporter::session_down(&edge, &handle).await;
}

fn expiry_instant(exp: i64) -> tokio::time::Instant {
    let left = (exp - now_s()).max(0) as u64;
    tokio::time::Instant::now() + Duration::from_secs(left)
}

impl<S> Session<S>
where
    S: Stream<Item = Result<Message, axum::Error>>
        + Sink<Message, Error = axum::Error>
        + Unpin
        + Send,
{
    fn user(&self) -> &UserId {
        &self.handle.user
    }

    async fn send(&mut self, frame: &ServerFrame) -> bool {
        send_frame(&mut self.socket, frame).await
    }

    async fn serve(&mut self, mut rx: mpsc::Receiver<Outbound>) {
        // Boxed: rarely-run futures stay off the connection's resident state (idle memory).
        if let Err(e) = Box::pin(self.start()).await {
            self.send(&ServerFrame::error(None, e.code, e.message))
                .await;
            close_with(&mut self.socket, TRY_AGAIN_LATER, "try again later").await;
            return;
        }
        let heartbeat = self.edge.config.heartbeat;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        // After a stall, one ping rather than a burst of them.
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let expiry = tokio::time::sleep_until(expiry_instant(self.exp));
        tokio::pin!(expiry);
        let shutdown = self.edge.shutdown.clone();
        let overflow = self.handle.overflow.clone();
        let kick = self.handle.kick.clone();
        let mut read_first = true;
        loop {
            if self.expiry_changed {
                expiry.as_mut().reset(expiry_instant(self.exp));
                self.expiry_changed = false;
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    close_with(&mut self.socket, close::RESTART, "server restart").await;
                    return;
                }
                _ = overflow.cancelled() => {
                    close_with(&mut self.socket, close::SLOW_CONSUMER, "slow consumer").await;
                    return;
                }
                _ = kick.requested() => {
                    tracing::info!(session = %self.handle.name, "disconnected on request (4001)");
                    close_with(&mut self.socket, close::UNAUTHORIZED, kick.reason()).await;
                    return;
                }
                _ = &mut expiry => {
                    self.send(&ServerFrame::error(None, ErrorCode::TokenExpired, "token expired")).await;
                    close_with(&mut self.socket, close::UNAUTHORIZED, "token expired").await;
                    return;
                }
                (asked_at, stored) = next_reconcile(&mut self.reconciling) => {
                    self.reconciling = None;
                    Box::pin(self.reconcile(asked_at, stored)).await;
                }
                _ = ping.tick() => {
                    self.ticks_to_reconcile = self.ticks_to_reconcile.saturating_sub(1);
                    if self.ticks_to_reconcile == 0 && self.reconciling.is_none() {
                        self.ticks_to_reconcile = self.edge.config.reconcile_ticks();
                        self.start_reconcile();
                    }
                    if self.last_heard.elapsed() > heartbeat * 3 {
                        // A busy edge may not have read the peer's pong yet: read what is
                        // waiting before calling the peer dead.
                        let Some(msg) = futures::FutureExt::now_or_never(self.socket.next()) else {
                            tracing::debug!(session = %self.handle.name, "peer silent for 3 heartbeats, dropping");
                            return;
                        };
                        if !self.on_inbound(msg).await {
                            return;
                        }
                    }
                    if self.socket.send(Message::Ping(Default::default())).await.is_err() {
                        return;
                    }
                }
                Some(reply) = self.sends.next(), if !self.sends.is_empty() => {
                    if !self.send(&reply).await {
                        return;
                    }
                }
                io = next_io(&mut self.socket, &mut rx, read_first) => {
                    // Alternate which side goes first when both are ready: a busy room must not
                    // starve the client's frames and pongs (it would be dropped as a dead peer),
                    // nor a client pipelining sends starve its own acks.
                    read_first = matches!(io, Io::Outbound(_));
                    let more = match io {
                        Io::Inbound(msg) => self.on_inbound(msg).await,
                        Io::Outbound(item) => {
                            self.on_outbound(item, &mut rx, &overflow, &mut ping).await
                        }
                    };
                    if !more {
                        return;
                    }
                    if std::mem::take(&mut self.ping_due)
                        && self.socket.send(Message::Ping(Default::default())).await.is_err()
                    {
                        return;
                    }
                }
            }
        }
    }

    /// Handles what the client sent; false when the connection is over.
    async fn on_inbound(&mut self, msg: Option<Result<Message, axum::Error>>) -> bool {
        let flow = match msg {
            None | Some(Ok(Message::Close(_))) => return false,
            Some(Err(e)) => {
                if is_too_big(&e) {
                    close_with(&mut self.socket, close::TOO_BIG, "frame too large").await;
                }
                return false;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                self.last_heard = Instant::now();
                Flow::Continue
            }
            Some(Ok(Message::Text(t))) => self.on_client_frame(Inbound::Text(t.as_str())).await,
            Some(Ok(Message::Binary(b))) => {
                self.on_client_frame(Inbound::Binary { len: b.len() }).await
            }
        };
        if let Flow::Close(code, reason) = flow {
            close_and_drain(&mut self.socket, code, reason).await;
            return false;
        }
        true
    }

    /// Writes what is queued for the client (a batch, one flush: [`writer::write_batch`]);
    /// false when the connection is over (a failed write ends it).
    async fn on_outbound(
        &mut self,
        item: Option<Outbound>,
        rx: &mut mpsc::Receiver<Outbound>,
        overflow: &CancellationToken,
        ping: &mut tokio::time::Interval,
    ) -> bool {
        let Some(item) = item else { return false };
        // A peer that stops reading blocks the write; the overflow token still ends the
        // connection (its queue filled meanwhile), without waiting for the peer. A write blocked
        // for 3 heartbeats ends it too: a peer that stops reading while it keeps writing would
        // otherwise hold the session forever (each side waiting for the other to read). That
        // deadline is checked on the heartbeat's own ticks: no timer is armed per write.
        let stall = self.edge.config.heartbeat * 3;
        let started = tokio::time::Instant::now();
        let outcome = {
            let write = writer::write_batch(&mut self.socket, item, rx, &mut self.rooms);
            tokio::pin!(write);
            loop {
                tokio::select! {
                    biased;
                    r = &mut write => break Some(r),
                    _ = overflow.cancelled() => break None,
                    _ = ping.tick() => {
                        self.ping_due = true;
                        if started.elapsed() >= stall {
                            metrics::counter!("chat_edge_slow_consumers_total").increment(1);
                            overflow.cancel();
                            break None;
                        }
                    }
                }
            }
        };
        if overflow.is_cancelled() {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                close_with(&mut self.socket, close::SLOW_CONSUMER, "slow consumer"),
            )
            .await;
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

    /// Registers the session, subscribes it to the user's rooms and sends `hello`.
    async fn start(&mut self) -> Result<(), ApiError> {
        let edge = self.edge.clone();
        edge.hub
            .add_user_session(self.handle.clone())
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "user subscription failed");
                ApiError::unavailable()
            })?;
        let memberships: UserRooms = self
            .request(
                subjects::ROOMS,
                &RoomsRequest::UserRooms {
                    user: self.user().clone(),
                },
            )
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
        // Counts covering exactly each room's `last_seq` (CONTRACT §2 Unread): what follows
        // comes live, and the client counts it.
        let state: NotifyState = match self
            .request(
                subjects::NOTIFY_STATE,
                &NotifyStateRequest {
                    user: self.user().clone(),
                    rooms: memberships.rooms.iter().map(|m| m.room.clone()).collect(),
                    last_seqs: last_seqs.clone(),
                },
            )
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

    async fn cleanup(&mut self) {
        let rooms: Vec<RoomId> = self.rooms.drain().map(|(room, _)| room).collect();
        release(self.edge.clone(), self.handle.clone(), rooms).await;
        self.cleaned_up = true;
    }

    /// The user's marker and unread count in `room` covering the events up to `last` (what a
    /// `joined` carries: CONTRACT §2 Unread); zeros, with a warning, while chat-notify does not
    /// answer (its next `unread` corrects them).
    async fn unread_of(&mut self, room: &RoomId, last: u64) -> (u64, u64) {
        let req = NotifyStateRequest {
            user: self.user().clone(),
            rooms: vec![room.clone()],
            last_seqs: vec![last],
        };
        match self
            .request::<_, NotifyState>(subjects::NOTIFY_STATE, &req)
            .await
        {
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

    async fn request<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &mut self,
        subject: &'static str,
        req: &Req,
    ) -> Result<Resp, ApiError> {
        api::request(
            &self.edge.nats,
            subject,
            req,
            self.edge.config.request_timeout,
        )
        .await
    }

    /// Asks chat-history for the user's rooms, to be compared with this session's when answered
    /// (issue 15 item 12): a membership announcement lost on the way (NATS core, at most once)
    /// would otherwise leave the session subscribed to a room it left — receiving and able to
    /// send — or missing one it was added to. One request per session per
    /// `CHAT_MEMBERSHIP_RECONCILE`, on the heartbeat's ticks: nothing per message.
    fn start_reconcile(&mut self) {
        let (nats, timeout) = (self.edge.nats.clone(), self.edge.config.request_timeout);
        let req = RoomsRequest::UserRooms {
            user: self.user().clone(),
        };
        let fut = async move { api::request(&nats, subjects::ROOMS, &req, timeout).await };
        self.reconciling = Some((self.rooms_version, Box::pin(fut)));
    }

    /// Applies a reconciliation's answer: rooms the session has and chat-history does not store
    /// are left (`left`, unsubscribed: no more events, `send` is `forbidden`), stored rooms it
    /// lacks are joined, as their announcements would have done. An answer asked before a
    /// change of the session's rooms may predate it and is dropped; so is a failed request (the
    /// next tick asks again).
    async fn reconcile(&mut self, asked_at: u64, stored: Result<UserRooms, ApiError>) {
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
    async fn subscribe(&mut self, room: &RoomId, kind: RoomKind) -> Result<(), ApiError> {
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

    async fn unsubscribe(&mut self, room: &RoomId) -> bool {
        if self.rooms.remove(room).is_some() {
            self.rooms_version += 1;
            self.edge.hub.remove_from_room(room, self.handle.id).await;
            true
        } else {
            false
        }
    }

    async fn on_membership(&mut self, change: MembershipChange) {
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
                self.request::<_, RoomInfo>(
                    subjects::ROOMS,
                    &RoomsRequest::Members {
                        room: change.room.clone(),
                    },
                )
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

    /// Runs a data frame through [`dispatch::classify`], then carries out its verdict.
    async fn on_client_frame(&mut self, inbound: Inbound<'_>) -> Flow {
        let now = Instant::now();
        self.last_heard = now;
        let limits = self.edge.config.limits();
        let rooms = &self.rooms;
        let action = dispatch::classify(inbound, now, &limits, &mut self.bucket, |room| {
            rooms.contains_key(room)
        });
        match action {
            Action::Close(code, reason) => Flow::Close(code, reason),
            Action::Refuse(refusal) => {
                if refusal.code == ErrorCode::RateLimited {
                    metrics::counter!("chat_edge_rate_limited_total").increment(1);
                }
                if let Some(ty) = refusal.frame_type {
                    metrics::counter!("chat_edge_frames_in_total", "type" => ty).increment(1);
                }
                self.send(&refusal.into_frame()).await;
                Flow::Continue
            }
            Action::Handle(env) => {
                let ty = env.frame.type_name();
                metrics::counter!("chat_edge_frames_in_total", "type" => ty).increment(1);
                let reference = env.reference.clone();
                // Boxed (one allocation per handled frame, none per delivery): inline, the
                // largest command's state would be part of every session task's future, idle
                // or not.
                match Box::pin(self.handle_frame(env)).await {
                    Ok(flow) => flow,
                    Err(e) => {
                        self.send(&ServerFrame::error(reference, e.code, e.message))
                            .await;
                        Flow::Continue
                    }
                }
            }
        }
    }

    /// Carries out a frame that [`dispatch::classify`] accepted (membership and field limits
    /// are checked there).
    async fn handle_frame(&mut self, env: Envelope) -> Result<Flow, ApiError> {
        let Envelope {
            reference,
            traceparent,
            frame,
        } = env;
        match frame {
            ClientFrame::Auth { token } => match self.edge.auth.verify(&token).await {
                Ok(id) if id.user == self.handle.user => {
                    self.exp = id.exp;
                    self.expiry_changed = true;
                    Ok(Flow::Continue)
                }
                Ok(_) => Err(ApiError::new(
                    ErrorCode::Unauthorized,
                    "a refreshed token must be for the same user",
                )),
                Err(AuthError::Expired) => {
                    Err(ApiError::new(ErrorCode::TokenExpired, "token expired"))
                }
                Err(AuthError::Invalid) => {
                    Err(ApiError::new(ErrorCode::Unauthorized, "invalid token"))
                }
            },
            ClientFrame::Ping => {
                self.send(&ServerFrame::Pong { reference }).await;
                Ok(Flow::Continue)
            }
            ClientFrame::Send {
                room,
                body,
                client_id,
                reply_to: None,
                thread: None,
            } => {
                self.on_send(reference, traceparent, room, body, client_id)
                    .await?;
                Ok(Flow::Continue)
            }
            frame @ (ClientFrame::Send { .. }
            | ClientFrame::Edit { .. }
            | ClientFrame::Delete { .. }
            | ClientFrame::React { .. }) => {
                lifecycle::handle(self, reference, traceparent, frame).await?;
                Ok(Flow::Continue)
            }
            ClientFrame::Join { room, since, epoch } => {
                self.on_join(reference, room, since, epoch).await?;
                Ok(Flow::Continue)
            }
            ClientFrame::Leave { room } => {
                let _: api::Done = self
                    .request(
                        subjects::ROOMS,
                        &RoomsRequest::Leave {
                            user: self.user().clone(),
                            room: room.clone(),
                        },
                    )
                    .await?;
                self.unsubscribe(&room).await;
                self.send(&ServerFrame::Left { reference, room }).await;
                Ok(Flow::Continue)
            }
            ClientFrame::Create {
                room,
                private,
                members,
            } => {
                let info: RoomInfo = self
                    .request(
                        subjects::ROOMS,
                        &RoomsRequest::Create {
                            user: self.user().clone(),
                            room,
                            private,
                            members,
                        },
                    )
                    .await?;
                self.subscribe(&info.room, info.kind).await?;
                let last = last_seq(&self.edge, &info.room).await?;
                let (last_read, unread) = self.unread_of(&info.room, last).await;
                let members = (info.kind != RoomKind::Public).then_some(info.members);
                let f = ServerFrame::Joined {
                    reference,
                    room: info.room,
                    kind: info.kind,
                    last_seq: last,
                    recovered: None,
                    members,
                    last_read,
                    unread,
                };
                self.send(&f).await;
                Ok(Flow::Continue)
            }
            ClientFrame::Invite { room, user } => {
                let _: api::Done = self
                    .request(
                        subjects::ROOMS,
                        &RoomsRequest::Invite {
                            user: self.user().clone(),
                            room: room.clone(),
                            target: user,
                        },
                    )
                    .await?;
                self.send(&ServerFrame::Ok { reference, room }).await;
                Ok(Flow::Continue)
            }
            ClientFrame::OpenDm { user } => {
                let info: RoomInfo = self
                    .request(
                        subjects::ROOMS,
                        &RoomsRequest::OpenDm {
                            user: self.user().clone(),
                            other: user,
                        },
                    )
                    .await?;
                self.subscribe(&info.room, info.kind).await?;
                let last = last_seq(&self.edge, &info.room).await?;
                let (last_read, unread) = self.unread_of(&info.room, last).await;
                let f = ServerFrame::Joined {
                    reference,
                    room: info.room,
                    kind: info.kind,
                    last_seq: last,
                    recovered: None,
                    members: Some(info.members),
                    last_read,
                    unread,
                };
                self.send(&f).await;
                Ok(Flow::Continue)
            }
            ClientFrame::History {
                room,
                before,
                after,
                limit,
                thread,
            } => {
                let page: HistoryPage = self
                    .request(
                        subjects::API_HISTORY,
                        &HistoryRequest {
                            room,
                            before,
                            after,
                            limit,
                            thread,
                            user: Some(self.user().clone()),
                            replay: false,
                        },
                    )
                    .await?;
                let f = ServerFrame::History {
                    reference,
                    room: page.room,
                    messages: page.messages,
                    has_more: page.has_more,
                };
                self.send(&f).await;
                Ok(Flow::Continue)
            }
            ClientFrame::Search {
                query,
                room,
                limit,
                before,
            } => {
                let search = crate::search::Search {
                    query,
                    room,
                    limit,
                    before,
                };
                let (nats, timeout) = (&self.edge.nats, self.edge.config.request_timeout);
                let f = crate::search::run(nats, timeout, self.user(), reference, search).await?;
                self.send(&f).await;
                Ok(Flow::Continue)
            }
            ClientFrame::Typing { room } => {
                if self.edge.hub.typing_allowed(&self.handle.user, &room) {
                    let ev = TypingEvent {
                        room: room.clone(),
                        user: self.user().clone(),
                        ts: now_ms(),
                    };
                    self.edge
                        .publish_json(subjects::room_typing(&room), &ev)
                        .await;
                }
                Ok(Flow::Continue)
            }
            ClientFrame::Read { room, seq } => {
                let _: UnreadUpdate = self
                    .request(
                        subjects::NOTIFY_READ,
                        &ReadRequest {
                            user: self.user().clone(),
                            room,
                            seq,
                        },
                    )
                    .await?;
                Ok(Flow::Continue)
            }
            ClientFrame::Status { status } => {
                let ev = StatusChange {
                    user: self.user().clone(),
                    status,
                    ts: now_ms(),
                };
                self.edge.publish_json(subjects::PRESENCE_STATUS, &ev).await;
                Ok(Flow::Continue)
            }
            ClientFrame::Presence { room } => {
                let reply: PresenceReply = self
                    .request(
                        subjects::API_PRESENCE,
                        &PresenceRequest::Room { room: room.clone() },
                    )
                    .await?;
                self.send(&ServerFrame::PresenceSnapshot {
                    reference,
                    room,
                    users: reply.users,
                })
                .await;
                Ok(Flow::Continue)
            }
        }
    }

    /// Publishes a message and queues the wait for its acknowledgement: the session goes on
    /// reading (and answering other frames) meanwhile. At most [`MAX_SENDS_IN_FLIGHT`] wait at
    /// once; beyond, the oldest is answered first. Replies to sends (`ack`, or `unavailable` when
    /// the stream does not acknowledge in time) go out in the order the sends came.
    async fn on_send(
        &mut self,
        reference: Option<String>,
        traceparent: Option<String>,
        room: RoomId,
        body: String,
        client_id: String,
    ) -> Result<(), ApiError> {
        while self.sends.len() >= MAX_SENDS_IN_FLIGHT {
            if let Some(reply) = self.sends.next().await {
                self.send(&reply).await;
            }
        }
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
        let event = RoomEvent::message(
            room.clone(),
            self.user().clone(),
            body,
            client_id.clone(),
            now_ms(),
        );
        let deadline = tokio::time::Instant::now() + self.edge.config.request_timeout;
        // Published here, in the order the sends came, so the stream keeps that order.
        let published = self
            .publish(&event, deadline)
            .instrument(span.clone())
            .await;
        let edge = self.edge.clone();
        let reply = async move {
            let result = match published {
                Ok(ack) => match tokio::time::timeout_at(deadline, ack).await {
                    Ok(Ok(ack)) => Ok((ack.sequence, ack.duplicate)),
                    Ok(Err(e)) => Err(publish_failed(&e)),
                    Err(_) => Err(publish_failed(&"no acknowledgement in time")),
                },
                Err(e) => Err(e),
            };
            metrics::histogram!("chat_edge_send_ack_seconds")
                .record(started.elapsed().as_secs_f64());
            let (seq, duplicate) = match result {
                Ok(r) => r,
                Err(e) => return ServerFrame::error(reference, e.code, e.message),
            };
            tracing::Span::current().record("seq", seq);
            let ts = if duplicate {
                original_ts(&edge.stream, seq).await.unwrap_or(event.ts)
            } else {
                event.ts
            };
            ServerFrame::Ack {
                reference,
                room,
                client_id,
                seq,
                ts,
                duplicate,
            }
        };
        self.sends.push_back(Box::pin(reply.instrument(span)));
        Ok(())
    }

    /// Publishes through JetStream ([`chat_bus::post::publish`]); the stream's acknowledgement
    /// is the returned future. Never a panic on a header value (issue 15): dispatch refused
    /// control characters in client_id already; whatever slipped through is refused there.
    async fn publish(
        &mut self,
        event: &RoomEvent,
        deadline: tokio::time::Instant,
    ) -> Result<async_nats::jetstream::context::PublishAckFuture, ApiError> {
        chat_bus::post::publish(&self.edge.js, event, deadline).await
    }

    async fn on_join(
        &mut self,
        reference: Option<String>,
        room: RoomId,
        since: Option<u64>,
        epoch: Option<String>,
    ) -> Result<(), ApiError> {
        let info: RoomInfo = self
            .request(
                subjects::ROOMS,
                &RoomsRequest::Join {
                    user: self.user().clone(),
                    room: room.clone(),
                },
            )
            .await?;
        self.subscribe(&room, info.kind).await?;
        let last = last_seq(&self.edge, &room).await?;
        let members = (info.kind != RoomKind::Public).then_some(info.members);
        let recovered = match since {
            None => {
                if let Some(r) = self.rooms.get_mut(&room) {
                    r.delivered = r.delivered.max(last);
                }
                None
            }
            Some(since) if epoch.as_deref() == Some(self.edge.epoch.as_str()) => {
                self.replay(&room, since).await?;
                Some(true)
            }
            Some(_) => {
                if let Some(r) = self.rooms.get_mut(&room) {
                    r.delivered = r.delivered.max(last);
                }
                Some(false)
            }
        };
        let (last_read, unread) = self.unread_of(&room, last).await;
        let f = ServerFrame::Joined {
            reference,
            room,
            kind: info.kind,
            last_seq: last,
            recovered,
            members,
            last_read,
            unread,
        };
        self.send(&f).await;
        Ok(())
    }

    /// Sends every event of `room` after `since` that this session has not delivered yet, in
    /// order. The room is subscribed already, so what is published meanwhile waits in the queue
    /// and is dropped there if the replay covered it.
    async fn replay(&mut self, room: &RoomId, since: u64) -> Result<(), ApiError> {
        let mut cursor = since;
        loop {
            let page: HistoryPage = self
                .request(
                    subjects::API_HISTORY,
                    &HistoryRequest {
                        room: room.clone(),
                        before: None,
                        after: Some(cursor),
                        limit: Some(200),
                        thread: None,
                        user: Some(self.user().clone()),
                        // Events as they were sent (CONTRACT §2 Lifecycle), not current state.
                        replay: true,
                    },
                )
                .await?;
            let has_more = page.has_more && !page.messages.is_empty();
            for m in page.messages {
                let seq = m.seq();
                cursor = cursor.max(seq);
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
            if !has_more {
                return Ok(());
            }
        }
    }
}

/// Most sends of one session waiting for their acknowledgement at once (CONTRACT §2: the
/// session keeps reading meanwhile; acks go out in the order of the sends).
pub const MAX_SENDS_IN_FLIGHT: usize = 64;

/// The reply to a send, once its acknowledgement came (or did not).
type SendReply = std::pin::Pin<Box<dyn std::future::Future<Output = ServerFrame> + Send>>;

use chat_bus::post::{original_ts, publish_failed};

/// The room's newest seq, 0 for a room with no event.
async fn last_seq(edge: &Edge, room: &RoomId) -> Result<u64, ApiError> {
    chat_bus::stream::last_seq(&edge.stream, room).await
}
