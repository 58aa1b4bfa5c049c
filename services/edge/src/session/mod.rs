//! One client connection, from authentication to close: the `Session` and its loop. Written
//! over any [`Socket`] (a `Sink`/`Stream` of WebSocket messages), so it is the same code in
//! production and in tests.
//!
//! - [`handshake`]: from the upgrade to `hello` (authentication, the session's slots, `hello`);
//! - this module: the session's state and its loop (`Session::serve`: drain, kick, token
//!   expiry, heartbeats, reading the client's frames and handing them to [`crate::commands`]);
//! - [`writer`]: every rule of writing to the client (batches and flushes, the write deadline,
//!   slow consumers closed with 4008, error frames and closes);
//! - [`rooms`]: what each room means to the session (delivery state, replay, membership changes
//!   and their reconciliation with chat-history).

pub mod handshake;
pub mod rooms;
pub mod writer;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::Message;
use chat_bus::api::ApiError;
use chat_bus::rpc;
use chat_proto::{ErrorCode, RoomId, ServerFrame, UserId, close};
use futures::{FutureExt as _, Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;

use crate::Edge;
use crate::auth::now_s;
use crate::commands::send::SendReply;
use crate::dispatch::{self, Action, Inbound};
use crate::hub::{Outbound, SessionHandle, StopReason};
use crate::presence_reporter;
use crate::ratelimit::TokenBucket;

pub use crate::commands::send::MAX_SENDS_IN_FLIGHT;
pub use handshake::{Admitted, Refused, SessionSlots, admit_session};
use rooms::{Reconciling, RoomState, next_reconcile};
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
    // Boxed, as the cleanup below: the handshake's state (JWT verification, a key fetch, the
    // first frame's timeout) was 5 KiB of a session task's 7.5, and inline it would stay part
    // of the task for the connection's whole life (idle memory, issue 12).
    let Some((identity, slots)) = Box::pin(handshake::accept(&edge, &mut socket, admitted)).await
    else {
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
        stop: Default::default(),
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
    Box::pin(session.cleanup()).await;
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
    pub(crate) edge: Edge,
    socket: S,
    pub(crate) handle: SessionHandle,
    /// Token expiry, seconds since the Unix epoch.
    pub(crate) exp: i64,
    pub(crate) rooms: HashMap<RoomId, RoomState>,
    bucket: TokenBucket,
    last_heard: Instant,
    pub(crate) expiry_changed: bool,
    /// Set once [`Session::cleanup`] ran; until then, dropping the session cleans up.
    cleaned_up: bool,
    /// Given back when the session is dropped (after its cleanup).
    _slots: SessionSlots,
    /// Registered once: the writer counts per batch, with no lookup per delivery.
    messages_out: metrics::Counter,
    /// A heartbeat came due while a write was blocked: ping once it is done.
    ping_due: bool,
    /// Sends waiting for their acknowledgement, answered in order.
    pub(crate) sends: futures::stream::FuturesOrdered<SendReply>,
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
        // Registered (in `start`) before this check, so a drain either is seen here or raises
        // this session's stop (`Hub::stop_all_on`).
        if self.edge.shutdown.is_cancelled() {
            self.handle.stop.raise(StopReason::Restart);
        }
        let stop = self.handle.stop.clone();
        let mut read_first = true;
        loop {
            if self.expiry_changed {
                expiry.as_mut().reset(expiry_instant(self.exp));
                self.expiry_changed = false;
            }
            tokio::select! {
                biased;
                why = stop.raised() => {
                    self.close_for(why).await;
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
                            self.on_outbound(item, &mut rx, &stop, &mut ping).await
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

    /// Closes the connection for a reason raised from outside the session's task.
    async fn close_for(&mut self, why: StopReason) {
        match why {
            StopReason::Restart => {
                close_with(&mut self.socket, close::RESTART, "server restart").await;
            }
            StopReason::SlowConsumer => {
                close_with(&mut self.socket, close::SLOW_CONSUMER, "slow consumer").await;
            }
            StopReason::Kicked => {
                tracing::info!(session = %self.handle.name, "disconnected on request (4001)");
                let reason = self.handle.stop.kick_reason();
                close_with(&mut self.socket, close::UNAUTHORIZED, reason).await;
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

    /// Asks a service on this session's behalf, within `CHAT_REQUEST_TIMEOUT`.
    pub(crate) async fn request<R: rpc::Request>(&mut self, req: &R) -> Result<R::Reply, ApiError> {
        rpc::call(&self.edge.nats, req, self.edge.config.request_timeout).await
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an async fn returns, without calling it.
    fn future_size<A, B, C, F: std::future::Future>(_: impl FnOnce(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A session's task stays allocated for the connection's whole life, idle or not, so its
    /// size is idle memory (issue 12: at most 10 KiB per idle connection in all). Rarely-run
    /// steps (the handshake, commands, reconciliation, cleanup) are boxed; inline, the
    /// handshake alone made the task 7.5 KiB in release builds (3.7 KiB once boxed).
    #[test]
    fn a_session_task_keeps_rarely_run_steps_out_of_its_size() {
        let task = future_size(run_admitted::<axum::extract::ws::WebSocket>);
        println!("FIGURES session task future: {task} bytes");
        assert!(task <= 4096, "a session's task future is {task} bytes");
    }

    /// Every delivery moves one `Outbound` into a session's queue, whose first block of slots
    /// is allocated with the channel: one pointer and a tag.
    #[test]
    fn a_queued_item_is_two_words() {
        assert_eq!(std::mem::size_of::<Outbound>(), 16);
    }
}
