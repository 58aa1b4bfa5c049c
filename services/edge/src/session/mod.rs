//! One client connection, from authentication to close: the `Session` and its loop. Written
//! over any [`Socket`] (a `Sink`/`Stream` of WebSocket messages), so it is the same code in
//! production and in tests.
//!
//! - [`handshake`]: from the upgrade to `hello` (authentication, the session's slots, `hello`);
//! - this module: the session's state and its loop (`Session::serve`: drain, kick, token
//!   expiry, heartbeats, reading the client's frames and carrying them out);
//! - [`writer`]: every rule of writing to the client (batches and flushes, the write deadline,
//!   slow consumers closed with 4008, error frames and closes);
//! - [`rooms`]: what each room means to the session (delivery state, replay, membership changes
//!   and their reconciliation with chat-history).

pub mod handshake;
mod lifecycle;
pub mod rooms;
pub mod writer;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::Message;
use chat_bus::api::{
    self, ApiError, HistoryPage, HistoryRequest, PresenceReply, PresenceRequest, ReadRequest,
    RoomInfo, RoomsRequest, StatusChange, TypingEvent, UnreadUpdate,
};
use chat_bus::event::RoomEvent;
use chat_bus::{now_ms, subjects, trace};
use chat_proto::{ClientFrame, Envelope, ErrorCode, RoomId, RoomKind, ServerFrame, UserId, close};
use futures::{FutureExt as _, Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::Edge;
use crate::auth::{AuthError, now_s};
use crate::dispatch::{self, Action, Inbound};
use crate::hub::{Outbound, SessionHandle};
use crate::presence_reporter;
use crate::ratelimit::TokenBucket;

pub use handshake::{Admitted, Refused, SessionSlots, admit_session};
use rooms::{Reconciling, RoomState, last_seq, next_reconcile};
use writer::{INTERNAL_ERROR, TRY_AGAIN_LATER, close_and_drain, close_with};

/// What a session runs over: the WebSocket of the upgrade, or any stand-in of it in tests.
pub trait Socket:
    Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin + Send
{
}

impl<S> Socket for S where
    S: Stream<Item = Result<Message, axum::Error>>
        + Sink<Message, Error = axum::Error>
        + Unpin
        + Send
{
}

/// How a frame handler wants the connection to go on.
pub(crate) enum Flow {
    Continue,
    Close(u16, &'static str),
}

/// Runs a connection to its end, with no admission at the upgrade (tests and embedders):
/// `header_token` is the bearer token of the upgrade request.
pub async fn run<S: Socket>(edge: Edge, socket: S, header_token: Option<String>) {
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
pub async fn run_admitted<S: Socket>(edge: Edge, mut socket: S, admitted: Admitted) {
    let Some((identity, slots)) = handshake::accept(&edge, &mut socket, admitted).await else {
        return;
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

fn is_too_big(e: &axum::Error) -> bool {
    let text = e.to_string();
    text.contains("Space limit exceeded")
        || text.contains("too long")
        || text.contains("Message too big")
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

pub(crate) struct Session<S> {
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

impl<S: Socket> Session<S> {
    pub(crate) fn user(&self) -> &UserId {
        &self.handle.user
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

    async fn cleanup(&mut self) {
        let rooms: Vec<RoomId> = self.rooms.drain().map(|(room, _)| room).collect();
        release(self.edge.clone(), self.handle.clone(), rooms).await;
        self.cleaned_up = true;
    }

    pub(crate) async fn request<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
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
}

/// Most sends of one session waiting for their acknowledgement at once (CONTRACT §2: the
/// session keeps reading meanwhile; acks go out in the order of the sends).
pub const MAX_SENDS_IN_FLIGHT: usize = 64;

/// The reply to a send, once its acknowledgement came (or did not).
type SendReply = std::pin::Pin<Box<dyn std::future::Future<Output = ServerFrame> + Send>>;

use chat_bus::post::{original_ts, publish_failed};
