//! Fan-out inside one edge process: one NATS subscription per room (its ordered live feed,
//! typing and presence) and one for all users (notifications, unread counts, membership), each
//! serving every local session that needs it. A message is serialized once per edge, as ready
//! frame bytes shared by every recipient, and handed to each session's bounded queue from a
//! snapshot of the room's sessions (rebuilt on membership change, not per message): a delivery
//! allocates nothing. A session whose queue is full is marked for closing (4008) rather than
//! slowing everyone else down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_nats::Subscriber;
use axum::extract::ws::Utf8Bytes;
use chat_bus::api::{
    self, HistoryRequest, MembershipChange, RoomPresenceEvent, TypingEvent, UnreadUpdate,
    UserNotification,
};
use chat_bus::{event, rpc, subjects};
use chat_proto::{RoomEventFrame, RoomId, ServerFrame, UserId};
use futures::StreamExt;
use futures::task::AtomicWaker;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::session::writer::{Outbound, RoomEvent, RoomFrame};

/// A session as the hub sees it.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    pub id: u64,
    pub name: Arc<str>,
    pub user: UserId,
    pub tx: mpsc::Sender<Outbound>,
    /// Raised when the session must close, from outside its task: its queue overflowed (4008),
    /// every session of the user is to close (4001: `chat.user.<user>.disconnect`, published by
    /// chat-api or `chatctl`) or the edge drains (1012). Not through the queue, so a full queue
    /// cannot turn a kick into a 4008 or delay it behind the frames waiting there.
    pub stop: Arc<Stop>,
}

/// Why a session is closed from outside its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Its queue filled, or a write stayed blocked for 3 heartbeats: 4008.
    SlowConsumer,
    /// Kicked (every session of the user): 4001, with [`Stop::kick_reason`].
    Kicked,
    /// The edge drains: 1012.
    Restart,
}

impl StopReason {
    const ALL: [StopReason; 3] = [
        StopReason::SlowConsumer,
        StopReason::Kicked,
        StopReason::Restart,
    ];

    fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.get(usize::from(v).checked_sub(1)?).copied()
    }

    fn as_u8(self) -> u8 {
        self as u8 + 1
    }
}

/// A session's one stop signal: a reason (the first one raised wins) and the waker of the
/// session's task. The session's loop awaits it on every turn, so it is an atomic load and an
/// `AtomicWaker` registration, with no lock: the three `CancellationToken`s it replaces (overflow,
/// kick, the edge's shutdown) each took a lock to register a waiter and another to drop it on
/// every turn of the loop, ~7 % of the edge's CPU at 100,000 deliveries/s (issue 12).
#[derive(Debug, Default)]
pub struct Stop {
    reason: AtomicU8,
    kick_reason: std::sync::OnceLock<String>,
    waker: AtomicWaker,
}

/// The longest close reason sent, in bytes (a close frame's payload is at most 125 bytes).
pub const MAX_KICK_REASON_BYTES: usize = 120;

impl Stop {
    /// Asks the session to close for `why`; true if this is the first reason raised.
    pub fn raise(&self, why: StopReason) -> bool {
        let first = self
            .reason
            .compare_exchange(0, why.as_u8(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if first {
            self.waker.wake();
        }
        first
    }

    /// Asks the session to close with 4001; the first reason wins.
    pub fn kick(&self, reason: &str) {
        let reason = if reason.trim().is_empty() {
            "disconnected by the server"
        } else {
            reason
        };
        let mut end = reason.len().min(MAX_KICK_REASON_BYTES);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let clean: String = reason[..end]
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        // Set before the reason is raised, so that the session reads it once it sees the kick.
        let _ = self.kick_reason.set(clean);
        self.raise(StopReason::Kicked);
    }

    /// The reason raised, if any.
    pub fn reason(&self) -> Option<StopReason> {
        StopReason::from_u8(self.reason.load(Ordering::Acquire))
    }

    /// Completes with the reason once one is raised. Only the session's own task awaits it (one
    /// waker is kept).
    pub fn raised(&self) -> impl std::future::Future<Output = StopReason> + '_ {
        std::future::poll_fn(|cx| {
            if let Some(why) = self.reason() {
                return std::task::Poll::Ready(why);
            }
            self.waker.register(cx.waker());
            // Raised between the load and the registration: its wake found no waker.
            match self.reason() {
                Some(why) => std::task::Poll::Ready(why),
                None => std::task::Poll::Pending,
            }
        })
    }

    /// A kick's close reason.
    pub fn kick_reason(&self) -> String {
        self.kick_reason.get().cloned().unwrap_or_default()
    }
}

impl SessionHandle {
    /// Queues an item without waiting; false if the session's queue is full (it is then marked
    /// to close with 4008) or closed. Allocates nothing beyond the channel's slot.
    pub fn push(&self, item: Outbound) -> bool {
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.stop.raise(StopReason::SlowConsumer) {
                    metrics::counter!("chat_edge_slow_consumers_total").increment(1);
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// The local sessions behind one subscription. Deliveries read a snapshot shared by reference
/// (`Arc<[SessionHandle]>`), rebuilt when a session comes or goes, never per message.
pub struct Sessions {
    map: std::sync::Mutex<HashMap<u64, SessionHandle>>,
    snapshot: RwLock<Arc<[SessionHandle]>>,
}

impl Sessions {
    fn new(first: SessionHandle) -> Arc<Self> {
        let s = Arc::new(Sessions {
            map: std::sync::Mutex::new(HashMap::from([(first.id, first)])),
            snapshot: RwLock::new(Arc::from(Vec::new())),
        });
        s.rebuild(&s.map.lock().unwrap_or_else(|e| e.into_inner()));
        s
    }

    fn rebuild(&self, map: &HashMap<u64, SessionHandle>) {
        let list: Arc<[SessionHandle]> = map.values().cloned().collect();
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = list;
    }

    fn insert(&self, session: SessionHandle) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(session.id, session);
        self.rebuild(&map);
    }

    /// Removes a session; returns how many are left.
    fn remove(&self, id: u64) -> usize {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.remove(&id).is_some() {
            self.rebuild(&map);
        }
        map.len()
    }

    /// The sessions now (a reference count, no copy).
    pub fn snapshot(&self) -> Arc<[SessionHandle]> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Hands one ready event to every session of `targets`; returns how many took it. No
/// allocation per recipient: the event is shared by reference count.
pub fn deliver_event(targets: &[SessionHandle], event: &Arc<RoomEvent>) -> u64 {
    let mut delivered = 0;
    for s in targets {
        if s.push(Outbound::Event(event.clone())) {
            delivered += 1;
        }
    }
    delivered
}

struct Entry {
    sessions: Arc<Sessions>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The edge's subscriptions and the sessions behind them.
pub struct Hub {
    nats: async_nats::Client,
    /// How long a gap in a room's live feed waits for chat-history to fill it.
    request_timeout: Duration,
    /// What a live event refers to (the stateful step of event validity, protocol.md#nats).
    lookup: chat_bus::lookup::TargetLookup,
    rooms: Mutex<HashMap<RoomId, Entry>>,
    /// Local sessions per user, served by one subscription to every user's subject
    /// ([`subjects::USERS_ALL`], started with the first session): a per-user subscription was
    /// the largest part of an idle connection's memory (issue 12).
    users: Arc<std::sync::Mutex<HashMap<UserId, Arc<Sessions>>>>,
    users_feed: Mutex<Option<JoinHandle<()>>>,
    typing: std::sync::Mutex<TypingThrottle>,
}

/// The last typing indicator per (user, room), in two generations of at least
/// [`TYPING_INTERVAL`] each: the older one is dropped whole when a new one starts, which only
/// forgets entries older than the interval. O(1) per call, no scan under the lock (issue 15
/// item 12), memory bounded by the keys active in the last two intervals.
#[derive(Debug)]
pub struct TypingThrottle {
    started: Instant,
    current: HashMap<(UserId, RoomId), Instant>,
    previous: HashMap<(UserId, RoomId), Instant>,
}

impl TypingThrottle {
    pub fn new(now: Instant) -> Self {
        TypingThrottle {
            started: now,
            current: HashMap::new(),
            previous: HashMap::new(),
        }
    }

    /// Whether an indicator for `key` may go out at `now`; records it if so.
    pub fn allow(&mut self, key: (UserId, RoomId), now: Instant) -> bool {
        if now.saturating_duration_since(self.started) >= TYPING_INTERVAL {
            // Everything in `previous` was recorded before `started`, at least an interval ago.
            self.previous = std::mem::take(&mut self.current);
            self.started = now;
        }
        let last = self
            .current
            .get(&key)
            .or_else(|| self.previous.get(&key))
            .copied();
        if last.is_some_and(|at| now.saturating_duration_since(at) < TYPING_INTERVAL) {
            return false;
        }
        self.current.insert(key, now);
        true
    }

    /// Keys remembered.
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// At most one typing indicator per user per room per this interval leaves this edge.
pub const TYPING_INTERVAL: Duration = Duration::from_secs(2);

impl Hub {
    pub fn new(
        nats: async_nats::Client,
        request_timeout: Duration,
        lookup: chat_bus::lookup::TargetLookup,
    ) -> Self {
        Hub {
            nats,
            request_timeout,
            lookup,
            rooms: Mutex::new(HashMap::new()),
            users: Arc::new(std::sync::Mutex::new(HashMap::new())),
            users_feed: Mutex::new(None),
            typing: std::sync::Mutex::new(TypingThrottle::new(Instant::now())),
        }
    }

    /// Adds a session to a room; the room's subscriptions are active at the server when this
    /// returns, so nothing published afterwards is missed.
    pub async fn add_to_room(
        &self,
        room: &RoomId,
        session: SessionHandle,
    ) -> Result<(), async_nats::Error> {
        let mut rooms = self.rooms.lock().await;
        if let Some(entry) = rooms.get(room) {
            entry.sessions.insert(session);
            return Ok(());
        }
        let sessions = Sessions::new(session);
        let feed = self.nats.subscribe(subjects::fanout(room)).await?;
        let typing = self.nats.subscribe(subjects::room_typing(room)).await?;
        let presence = self.nats.subscribe(subjects::room_presence(room)).await?;
        self.nats.flush().await?;
        let tasks = vec![
            tokio::spawn(room_feed(
                self.nats.clone(),
                self.lookup.clone(),
                self.request_timeout,
                room.clone(),
                feed,
                sessions.clone(),
            )),
            tokio::spawn(room_typing(typing, sessions.clone())),
            tokio::spawn(room_presence(presence, sessions.clone())),
        ];
        rooms.insert(room.clone(), Entry { sessions, tasks });
        metrics::gauge!("chat_edge_rooms").set(rooms.len() as f64);
        Ok(())
    }

    /// Removes a session from a room, unsubscribing when it was the room's last local session.
    pub async fn remove_from_room(&self, room: &RoomId, session: u64) {
        let mut rooms = self.rooms.lock().await;
        let empty = match rooms.get(room) {
            Some(entry) => entry.sessions.remove(session) == 0,
            None => return,
        };
        if empty {
            rooms.remove(room);
            metrics::gauge!("chat_edge_rooms").set(rooms.len() as f64);
        }
    }

    fn users(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Arc<Sessions>>> {
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a session of a user; the subscription serving it is active when this returns.
    pub async fn add_user_session(&self, session: SessionHandle) -> Result<(), async_nats::Error> {
        {
            let mut feed = self.users_feed.lock().await;
            if feed.is_none() {
                let sub = self.nats.subscribe(subjects::USERS_ALL).await?;
                self.nats.flush().await?;
                *feed = Some(tokio::spawn(users_feed(sub, self.users.clone())));
            }
        }
        let mut users = self.users();
        match users.get(&session.user) {
            Some(sessions) => sessions.insert(session),
            None => {
                users.insert(session.user.clone(), Sessions::new(session));
            }
        }
        Ok(())
    }

    /// Unregisters a session; returns how many sessions the user still has on this edge.
    pub async fn remove_user_session(&self, user: &UserId, session: u64) -> usize {
        let mut users = self.users();
        let left = match users.get(user) {
            Some(sessions) => sessions.remove(session),
            None => return 0,
        };
        if left == 0 {
            users.remove(user);
        }
        left
    }

    /// Once `shutdown` is cancelled (the drain), raises [`StopReason::Restart`] for every session
    /// registered then; one registered afterwards sees the token itself (`Session::serve` checks
    /// it once registered), so none is missed: the token is cancelled before the sessions are
    /// listed, and a session is listed from its registration on.
    pub fn stop_all_on(&self, shutdown: CancellationToken) {
        let users = self.users.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            let users = users.lock().unwrap_or_else(|e| e.into_inner());
            for sessions in users.values() {
                for s in sessions.snapshot().iter() {
                    s.stop.raise(StopReason::Restart);
                }
            }
        });
    }

    /// Every live session on this edge (for the presence heartbeat).
    pub async fn sessions(&self) -> Vec<(Arc<str>, UserId)> {
        let users = self.users();
        users
            .values()
            .flat_map(|sessions| {
                sessions
                    .snapshot()
                    .iter()
                    .map(|s| (s.name.clone(), s.user.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// How many local sessions receive `room` (tests and diagnostics).
    pub async fn room_sessions(&self, room: &RoomId) -> usize {
        let rooms = self.rooms.lock().await;
        rooms
            .get(room)
            .map(|e| e.sessions.snapshot().len())
            .unwrap_or(0)
    }

    /// Whether a typing indicator of `user` in `room` may go out now (and records it if so).
    pub fn typing_allowed(&self, user: &UserId, room: &RoomId) -> bool {
        match self.typing.lock() {
            Ok(mut t) => t.allow((user.clone(), room.clone()), Instant::now()),
            Err(_) => false,
        }
    }
}

/// A room's live feed on this edge. Core NATS delivery is at most once (a reconnect to another
/// server, a slow-consumer drop): an entry whose predecessor (`Nats-Last-Sequence`) is above the
/// last one seen reveals a gap, which is filled from chat-history before the entry, so sessions
/// get every event in order.
///
/// A stored entry that is not a valid event (protocol.md#nats) is never delivered, and the chain of
/// `prev_seq` skips it: the feed keeps the seq of the last valid event itself, and gives it as
/// the next event's `prev_seq`, exactly as chat-history computes it for pages and replays. Until
/// the feed has seen one (its first entry since subscribing), chat-history tells it.
async fn room_feed(
    nats: async_nats::Client,
    lookup: chat_bus::lookup::TargetLookup,
    timeout: Duration,
    room: RoomId,
    mut sub: Subscriber,
    sessions: Arc<Sessions>,
) {
    let shared = Arc::new(room.clone());
    let deliveries = metrics::counter!("chat_edge_fanout_deliveries_total");
    // The last stored entry seen, valid or not.
    let mut last_entry: Option<u64> = None;
    // The last valid event's seq, once known: the next event's prev_seq.
    let mut last_event: Option<u64> = None;
    while let Some(msg) = sub.next().await {
        let Some(entry) = event::decode_fanout(msg.headers.as_ref(), &msg.payload, &room) else {
            tracing::warn!(%room, "entry without a sequence on the live feed skipped");
            continue;
        };
        if let Some(seen) = last_entry {
            if entry.seq <= seen {
                continue;
            }
            if entry.last_entry > seen {
                let (missed, complete) = fill_gap(&nats, timeout, &room, seen, entry.seq).await;
                for m in missed {
                    last_event = Some(m.seq());
                    fan_out(&shared, m, &sessions, None, &deliveries);
                }
                if !complete {
                    // Unknown: give the raw predecessor, so that clients see the gap and fill it.
                    last_event = Some(entry.last_entry);
                }
            }
        }
        last_entry = Some(entry.seq);
        let checked = match entry.candidate {
            Err(invalid) => Err(invalid),
            Ok(candidate) if candidate.references().is_empty() => candidate.resolve(|_| None),
            // A change, reply or thread message (protocol.md#nats's stateful step): what it refers
            // to is looked up once (memoized) and checked as the archive checks it.
            Ok(candidate) => {
                let stated = candidate.peek().clone();
                match lookup.resolve(&room, entry.seq, candidate).await {
                    Ok(checked) => checked,
                    Err(e) => {
                        // The edge checked what it published itself; the archive decides for
                        // good (and replays skip what it refuses).
                        tracing::warn!(%room, seq = entry.seq, error = %e, "targets unreadable; the event is passed on");
                        Ok(stated)
                    }
                }
            }
        };
        let event = match checked {
            Ok(event) => event,
            Err(invalid) => {
                metrics::counter!("chat_edge_feed_invalid_entries_total").increment(1);
                tracing::debug!(%room, seq = entry.seq, reason = %invalid, "entry that is not an event skipped");
                continue;
            }
        };
        let prev = match last_event {
            Some(prev) => prev,
            None => previous_event(&nats, timeout, &room, entry.seq, entry.last_entry).await,
        };
        last_event = Some(entry.seq);
        fan_out(
            &shared,
            event.into_frame(entry.seq, prev),
            &sessions,
            msg.headers.as_ref(),
            &deliveries,
        );
    }
}

/// The seq of the room's last event before `seq`, from chat-history (which skips entries that
/// are not events, as the feed does). `last_entry` (the raw predecessor) when it cannot say.
async fn previous_event(
    nats: &async_nats::Client,
    timeout: Duration,
    room: &RoomId,
    seq: u64,
    last_entry: u64,
) -> u64 {
    if last_entry == 0 {
        return 0;
    }
    let req = HistoryRequest {
        room: room.clone(),
        before: Some(seq),
        after: None,
        limit: Some(1),
        thread: None,
        user: None,
        replay: true,
    };
    match rpc::call(nats, &req, timeout).await {
        Ok(page) => page.messages.last().map_or(0, |m| m.seq()),
        Err(e) => {
            tracing::warn!(%room, seq, error = %e, "previous event unknown; the raw predecessor is given");
            last_entry
        }
    }
}

/// The events of `room` strictly between `after` and `before`, from chat-history (which answers
/// from the stream what the archive does not hold yet), and whether that is all of them. If it
/// cannot say (a warning), the sessions see the gap in `prev_seq` and can fill it themselves
/// (protocol.md#ws).
async fn fill_gap(
    nats: &async_nats::Client,
    timeout: Duration,
    room: &RoomId,
    after: u64,
    before: u64,
) -> (Vec<RoomEventFrame>, bool) {
    metrics::counter!("chat_edge_feed_gaps_total").increment(1);
    let mut missed = Vec::new();
    let mut pages = rpc::EventsAfter::new(room.clone(), after, None);
    loop {
        let page = match pages.next(nats, timeout).await {
            Ok(Some(page)) => page,
            Ok(None) => return (missed, true),
            Err(e) => {
                metrics::counter!("chat_edge_feed_gaps_unfilled_total").increment(1);
                tracing::warn!(%room, after, before, error = %e, "gap in the live feed left for clients to fill");
                return (missed, false);
            }
        };
        for m in page {
            if m.seq() >= before {
                return (missed, true);
            }
            missed.push(m);
        }
    }
}

/// Hands one event to every session of the room on this edge, serialized once (one
/// `edge.deliver` span per edge per event).
fn fan_out(
    room: &Arc<RoomId>,
    message: RoomEventFrame,
    sessions: &Sessions,
    headers: Option<&async_nats::HeaderMap>,
    deliveries: &metrics::Counter,
) {
    let seq = message.seq();
    let span = tracing::info_span!(
        "edge.deliver",
        otel.kind = "consumer",
        messaging.system = chat_bus::trace::MESSAGING_SYSTEM,
        messaging.operation.type = "process",
        messaging.destination.name = %format_args!("chat.fanout.{room}"),
        messaging.message.id = chat_bus::trace::message_id(headers),
        room = %room,
        seq,
        sessions = tracing::field::Empty
    );
    chat_bus::trace::continue_from(&span, headers);
    let _entered = span.enter();
    let event = Arc::new(RoomEvent {
        room: room.clone(),
        seq,
        text: Utf8Bytes::from(message.into_server_frame().to_json()),
    });
    let targets = sessions.snapshot();
    span.record("sessions", targets.len());
    deliveries.increment(deliver_event(&targets, &event));
}

/// Hands a ready frame about `room` to every session of `targets` (but `except`'s).
fn fan_out_frame(
    targets: &[SessionHandle],
    room: &Arc<RoomId>,
    text: Utf8Bytes,
    except: Option<&UserId>,
) {
    let item = Outbound::room_frame(room.clone(), text);
    for s in targets {
        if except != Some(&s.user) {
            s.push(item.clone());
        }
    }
}

async fn room_typing(mut sub: Subscriber, sessions: Arc<Sessions>) {
    while let Some(msg) = sub.next().await {
        let Ok(ev) = serde_json::from_slice::<TypingEvent>(&msg.payload) else {
            continue;
        };
        let room = Arc::new(ev.room.clone());
        let text = Utf8Bytes::from(
            ServerFrame::Typing {
                room: ev.room,
                user: ev.user.clone(),
            }
            .to_json(),
        );
        fan_out_frame(&sessions.snapshot(), &room, text, Some(&ev.user));
    }
}

async fn room_presence(mut sub: Subscriber, sessions: Arc<Sessions>) {
    while let Some(msg) = sub.next().await {
        let Ok(ev) = serde_json::from_slice::<RoomPresenceEvent>(&msg.payload) else {
            continue;
        };
        let room = Arc::new(ev.room.clone());
        let text = Utf8Bytes::from(
            ServerFrame::Presence {
                room: ev.room,
                user: ev.user,
                status: ev.status,
                last_seen: ev.last_seen,
            }
            .to_json(),
        );
        fan_out_frame(&sessions.snapshot(), &room, text, None);
    }
}

/// Everything addressed to users, handed to the sessions of the users this edge serves (the
/// rest is dropped before it is decoded).
async fn users_feed(
    mut sub: Subscriber,
    users: Arc<std::sync::Mutex<HashMap<UserId, Arc<Sessions>>>>,
) {
    while let Some(msg) = sub.next().await {
        let Some(user) = subjects::user_of_subject(&msg.subject).and_then(|u| UserId::new(u).ok())
        else {
            continue;
        };
        let targets = {
            let users = users.lock().unwrap_or_else(|e| e.into_inner());
            match users.get(&user) {
                Some(sessions) => sessions.snapshot(),
                None => continue,
            }
        };
        let item = match subjects::user_subject_kind(&msg.subject) {
            Some("notify") => serde_json::from_slice::<UserNotification>(&msg.payload)
                .ok()
                .map(|n| {
                    Outbound::room_frame(
                        Arc::new(n.notification.room.clone()),
                        ServerFrame::Notification(n.notification).to_json().into(),
                    )
                }),
            Some("unread") => serde_json::from_slice::<UnreadUpdate>(&msg.payload)
                .ok()
                .map(|u| {
                    let room = Arc::new(u.room.clone());
                    let text = ServerFrame::Unread {
                        room: u.room,
                        count: u.count,
                        last_read: u.last_read,
                        as_of: u.as_of,
                    };
                    Outbound::room_frame(room, text.to_json().into())
                }),
            Some("membership") => serde_json::from_slice::<MembershipChange>(&msg.payload)
                .ok()
                .map(|c| Outbound::Membership(Box::new(c))),
            Some("disconnect") => {
                // Issue 16: every session of the user closes with 4001, whatever it was doing.
                let reason = serde_json::from_slice::<api::Disconnect>(&msg.payload)
                    .map(|d| d.reason)
                    .unwrap_or_default();
                metrics::counter!("chat_edge_disconnects_total").increment(targets.len() as u64);
                for s in targets.iter() {
                    s.stop.kick(&reason);
                }
                None
            }
            _ => None,
        };
        if let Some(item) = item {
            for s in targets.iter() {
                s.push(item.clone());
            }
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Ok(mut feed) = self.users_feed.try_lock()
            && let Some(task) = feed.take()
        {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(id: u64, queue: usize) -> (SessionHandle, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(queue);
        let handle = SessionHandle {
            id,
            name: Arc::from(format!("s{id}")),
            user: UserId::new(format!("u{id}")).unwrap(),
            tx,
            stop: Arc::default(),
        };
        (handle, rx)
    }

    fn ids(snapshot: &[SessionHandle]) -> Vec<u64> {
        let mut ids: Vec<u64> = snapshot.iter().map(|s| s.id).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn a_room_snapshot_is_shared_until_its_sessions_change() {
        let (first, _r1) = handle(1, 4);
        let sessions = Sessions::new(first);
        let (second, _r2) = handle(2, 4);
        sessions.insert(second);
        let before = sessions.snapshot();
        assert_eq!(ids(&before), vec![1, 2]);
        // Deliveries read the same list, not a copy, while nothing changes.
        assert!(Arc::ptr_eq(&before, &sessions.snapshot()));
        // Removing a session that is not there changes nothing, not even the list.
        assert_eq!(sessions.remove(7), 2);
        assert!(Arc::ptr_eq(&before, &sessions.snapshot()));
        assert_eq!(sessions.remove(1), 1);
        let after = sessions.snapshot();
        assert_eq!(ids(&after), vec![2]);
        // A snapshot taken before keeps the sessions it had (a delivery under way finishes).
        assert_eq!(ids(&before), vec![1, 2]);
        assert_eq!(sessions.remove(2), 0);
        assert!(sessions.snapshot().is_empty());
    }

    #[test]
    fn a_full_queue_marks_its_session_to_close_and_a_closed_one_is_skipped() {
        let (session, rx) = handle(1, 1);
        let room = Arc::new(RoomId::new("r").unwrap());
        let frame = || Outbound::room_frame(room.clone(), Utf8Bytes::from_static("{}"));
        assert!(session.push(frame()));
        assert_eq!(session.stop.reason(), None);
        assert!(!session.push(frame()), "the queue holds one");
        assert_eq!(
            session.stop.reason(),
            Some(StopReason::SlowConsumer),
            "a full queue means 4008"
        );
        let (closed, closed_rx) = handle(2, 1);
        drop(closed_rx);
        assert!(!closed.push(frame()));
        assert_eq!(
            closed.stop.reason(),
            None,
            "a gone session is not a slow one"
        );
        drop(rx);
    }

    #[test]
    fn a_kick_keeps_its_first_reason_bounded_and_printable() {
        let k = Stop::default();
        assert_eq!(k.kick_reason(), "");
        assert!(futures::FutureExt::now_or_never(k.raised()).is_none());
        k.kick(&format!("banned\n{}", "é".repeat(100)));
        let r = k.kick_reason();
        assert!(
            r.len() <= MAX_KICK_REASON_BYTES && r.starts_with("banned "),
            "{r:?}"
        );
        k.kick("second");
        assert!(
            k.kick_reason().starts_with("banned"),
            "the first reason wins"
        );
        assert_eq!(
            futures::FutureExt::now_or_never(k.raised()),
            Some(StopReason::Kicked)
        );
        let quiet = Stop::default();
        quiet.kick("  ");
        assert_eq!(quiet.kick_reason(), "disconnected by the server");
    }

    #[tokio::test]
    async fn a_stop_wakes_the_task_awaiting_it_and_the_first_reason_wins() {
        let stop = Arc::new(Stop::default());
        let waiting = tokio::spawn({
            let stop = stop.clone();
            async move { stop.raised().await }
        });
        // The task registers its waker and parks before the reason is raised.
        tokio::task::yield_now().await;
        assert!(stop.raise(StopReason::SlowConsumer));
        assert!(!stop.raise(StopReason::Restart), "the first reason wins");
        let woken = tokio::time::timeout(Duration::from_secs(10), waiting).await;
        assert_eq!(woken.expect("woken").unwrap(), StopReason::SlowConsumer);
        assert_eq!(stop.reason(), Some(StopReason::SlowConsumer));
    }

    #[test]
    fn typing_is_throttled_per_user_and_room_with_bounded_memory() {
        let t0 = Instant::now();
        let mut t = TypingThrottle::new(t0);
        let key = |u: &str, r: &str| (UserId::new(u).unwrap(), RoomId::new(r).unwrap());
        assert!(t.allow(key("a", "r"), t0));
        assert!(!t.allow(key("a", "r"), t0 + Duration::from_millis(500)));
        assert!(t.allow(key("a", "other"), t0), "another room");
        assert!(t.allow(key("b", "r"), t0), "another user");
        // Across a generation change the last indicator is still remembered...
        let just_before = t0 + TYPING_INTERVAL - Duration::from_millis(1);
        assert!(t.allow(key("c", "r"), just_before));
        assert!(!t.allow(
            key("c", "r"),
            t0 + TYPING_INTERVAL + Duration::from_millis(10)
        ));
        // ...and allowed again an interval later.
        assert!(t.allow(key("c", "r"), just_before + TYPING_INTERVAL));
        // Many keys, spread over time: only the last two generations are kept.
        let mut now = t0;
        for i in 0..50_000u32 {
            now += Duration::from_micros(200);
            t.allow(key(&format!("u{i}"), "r"), now);
        }
        let per_interval = (TYPING_INTERVAL.as_micros() / 200) as usize;
        assert!(t.len() <= 2 * per_interval + 1, "{} keys kept", t.len());
    }
}
