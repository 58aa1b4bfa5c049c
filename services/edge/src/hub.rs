//! Fan-out inside one edge process: one NATS subscription per room (its ordered live feed,
//! typing and presence) and one per user (notifications, unread counts, membership), each
//! serving every local session that needs it. A message is serialized once per edge and handed
//! to each session's bounded queue; a session whose queue is full is marked for closing (4008)
//! rather than slowing everyone else down.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_nats::Subscriber;
use chat_bus::api::{
    self, HistoryPage, HistoryRequest, MembershipChange, RoomPresenceEvent, TypingEvent,
    UnreadUpdate, UserNotification,
};
use chat_bus::{event, subjects};
use chat_proto::{ChatMessage, RoomId, ServerFrame, UserId};
use futures::StreamExt;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What the hub hands to a session.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A room event, delivered once per session (the session drops seqs it has delivered).
    Event {
        room: RoomId,
        seq: u64,
        json: Arc<str>,
    },
    /// Any other ready-made frame about one room (typing, presence, unread, notification):
    /// delivered only while the session is a member, so nothing of a room follows its `left`.
    RoomFrame { room: RoomId, json: Arc<str> },
    /// The user's membership changed (possibly from another session or edge).
    Membership(MembershipChange),
}

/// A session as the hub sees it.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    pub id: u64,
    pub name: Arc<str>,
    pub user: UserId,
    pub tx: mpsc::Sender<Outbound>,
    /// Cancelled when the session's queue overflowed: it must close with 4008.
    pub overflow: CancellationToken,
}

impl SessionHandle {
    fn push(&self, item: Outbound) -> bool {
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.overflow.is_cancelled() {
                    metrics::counter!("edge_slow_consumers_total").increment(1);
                }
                self.overflow.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

type Sessions = Arc<RwLock<HashMap<u64, SessionHandle>>>;

struct Entry {
    sessions: Sessions,
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
    rooms: Mutex<HashMap<RoomId, Entry>>,
    users: Mutex<HashMap<UserId, Entry>>,
    typing: std::sync::Mutex<HashMap<(UserId, RoomId), Instant>>,
}

/// At most one typing indicator per user per room per this interval leaves this edge.
pub const TYPING_INTERVAL: Duration = Duration::from_secs(2);

fn snapshot(sessions: &Sessions) -> Vec<SessionHandle> {
    sessions
        .read()
        .map(|s| s.values().cloned().collect())
        .unwrap_or_default()
}

impl Hub {
    pub fn new(nats: async_nats::Client, request_timeout: Duration) -> Self {
        Hub {
            nats,
            request_timeout,
            rooms: Mutex::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
            typing: std::sync::Mutex::new(HashMap::new()),
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
            if let Ok(mut s) = entry.sessions.write() {
                s.insert(session.id, session);
            }
            return Ok(());
        }
        let sessions: Sessions = Arc::new(RwLock::new(HashMap::from([(session.id, session)])));
        let feed = self.nats.subscribe(subjects::fanout(room)).await?;
        let typing = self.nats.subscribe(subjects::room_typing(room)).await?;
        let presence = self.nats.subscribe(subjects::room_presence(room)).await?;
        self.nats.flush().await?;
        let tasks = vec![
            tokio::spawn(room_feed(
                self.nats.clone(),
                self.request_timeout,
                room.clone(),
                feed,
                sessions.clone(),
            )),
            tokio::spawn(room_typing(typing, sessions.clone())),
            tokio::spawn(room_presence(presence, sessions.clone())),
        ];
        rooms.insert(room.clone(), Entry { sessions, tasks });
        metrics::gauge!("edge_rooms").set(rooms.len() as f64);
        Ok(())
    }

    /// Removes a session from a room, unsubscribing when it was the room's last local session.
    pub async fn remove_from_room(&self, room: &RoomId, session: u64) {
        let mut rooms = self.rooms.lock().await;
        let empty = match rooms.get(room) {
            Some(entry) => entry.sessions.write().map(|mut s| {
                s.remove(&session);
                s.is_empty()
            }),
            None => return,
        };
        if empty.unwrap_or(true) {
            rooms.remove(room);
            metrics::gauge!("edge_rooms").set(rooms.len() as f64);
        }
    }

    /// Registers a session of a user; the user's subscription is active when this returns.
    pub async fn add_user_session(&self, session: SessionHandle) -> Result<(), async_nats::Error> {
        let mut users = self.users.lock().await;
        if let Some(entry) = users.get(&session.user) {
            if let Ok(mut s) = entry.sessions.write() {
                s.insert(session.id, session);
            }
            return Ok(());
        }
        let user = session.user.clone();
        let sessions: Sessions = Arc::new(RwLock::new(HashMap::from([(session.id, session)])));
        let sub = self.nats.subscribe(subjects::user_all(&user)).await?;
        self.nats.flush().await?;
        let tasks = vec![tokio::spawn(user_feed(sub, sessions.clone()))];
        users.insert(user, Entry { sessions, tasks });
        Ok(())
    }

    /// Unregisters a session; returns how many sessions the user still has on this edge.
    pub async fn remove_user_session(&self, user: &UserId, session: u64) -> usize {
        let mut users = self.users.lock().await;
        let left = match users.get(user) {
            Some(entry) => entry
                .sessions
                .write()
                .map(|mut s| {
                    s.remove(&session);
                    s.len()
                })
                .unwrap_or(0),
            None => return 0,
        };
        if left == 0 {
            users.remove(user);
        }
        left
    }

    /// Every live session on this edge (for the presence heartbeat).
    pub async fn sessions(&self) -> Vec<(Arc<str>, UserId)> {
        let users = self.users.lock().await;
        users
            .values()
            .flat_map(|e| snapshot(&e.sessions).into_iter().map(|s| (s.name, s.user)))
            .collect()
    }

    /// How many local sessions receive `room` (tests and diagnostics).
    pub async fn room_sessions(&self, room: &RoomId) -> usize {
        let rooms = self.rooms.lock().await;
        rooms
            .get(room)
            .and_then(|e| e.sessions.read().ok().map(|s| s.len()))
            .unwrap_or(0)
    }

    /// Whether a typing indicator of `user` in `room` may go out now (and records it if so).
    pub fn typing_allowed(&self, user: &UserId, room: &RoomId) -> bool {
        let Ok(mut map) = self.typing.lock() else {
            return false;
        };
        let now = Instant::now();
        if map.len() > 10_000 {
            map.retain(|_, at| now.duration_since(*at) < TYPING_INTERVAL);
        }
        let key = (user.clone(), room.clone());
        match map.get(&key) {
            Some(at) if now.duration_since(*at) < TYPING_INTERVAL => false,
            _ => {
                map.insert(key, now);
                true
            }
        }
    }
}

/// A room's live feed on this edge. Core NATS delivery is at most once (a reconnect to another
/// server, a slow-consumer drop): an entry whose predecessor (`Nats-Last-Sequence`) is above the
/// last one seen reveals a gap, which is filled from chat-history before the entry, so sessions
/// get every event in order.
///
/// A stored entry that is not a valid event (CONTRACT §3) is never delivered, and the chain of
/// `prev_seq` skips it: the feed keeps the seq of the last valid event itself, and gives it as
/// the next event's `prev_seq`, exactly as chat-history computes it for pages and replays. Until
/// the feed has seen one (its first entry since subscribing), chat-history tells it.
async fn room_feed(
    nats: async_nats::Client,
    timeout: Duration,
    room: RoomId,
    mut sub: Subscriber,
    sessions: Sessions,
) {
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
                    last_event = Some(m.seq);
                    fan_out(&room, m, &sessions, None);
                }
                if !complete {
                    // Unknown: give the raw predecessor, so that clients see the gap and fill it.
                    last_event = Some(entry.last_entry);
                }
            }
        }
        last_entry = Some(entry.seq);
        let checked = entry
            .candidate
            .and_then(|candidate| candidate.resolve(|_| None));
        let event = match checked {
            Ok(event) => event,
            Err(invalid) => {
                metrics::counter!("edge_feed_invalid_entries_total").increment(1);
                tracing::debug!(%room, seq = entry.seq, reason = %invalid, "entry that is not an event skipped");
                continue;
            }
        };
        let prev = match last_event {
            Some(prev) => prev,
            None => previous_event(&nats, timeout, &room, entry.seq, entry.last_entry).await,
        };
        last_event = Some(entry.seq);
        if let Some(message) = event.into_message(entry.seq, prev) {
            fan_out(&room, message, &sessions, msg.headers.as_ref());
        }
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
        user: None,
    };
    match api::request::<_, HistoryPage>(nats, subjects::API_HISTORY, &req, timeout).await {
        Ok(page) => page.messages.last().map_or(0, |m| m.seq),
        Err(e) => {
            tracing::warn!(%room, seq, error = %e, "previous event unknown; the raw predecessor is given");
            last_entry
        }
    }
}

/// The events of `room` strictly between `after` and `before`, from chat-history (which answers
/// from the stream what the archive does not hold yet), and whether that is all of them. If it
/// cannot say (a warning), the sessions see the gap in `prev_seq` and can fill it themselves
/// (CONTRACT §2).
async fn fill_gap(
    nats: &async_nats::Client,
    timeout: Duration,
    room: &RoomId,
    after: u64,
    before: u64,
) -> (Vec<ChatMessage>, bool) {
    metrics::counter!("edge_feed_gaps_total").increment(1);
    let mut missed = Vec::new();
    let mut cursor = after;
    loop {
        let req = HistoryRequest {
            room: room.clone(),
            before: None,
            after: Some(cursor),
            limit: Some(200),
            user: None,
        };
        let page: HistoryPage = match api::request(nats, subjects::API_HISTORY, &req, timeout).await
        {
            Ok(page) => page,
            Err(e) => {
                metrics::counter!("edge_feed_gaps_unfilled_total").increment(1);
                tracing::warn!(%room, after, before, error = %e, "gap in the live feed left for clients to fill");
                return (missed, false);
            }
        };
        let more = page.has_more && !page.messages.is_empty();
        for m in page.messages {
            if m.seq >= before {
                return (missed, true);
            }
            cursor = m.seq;
            missed.push(m);
        }
        if !more {
            return (missed, true);
        }
    }
}

/// Hands one event to every session of the room on this edge, serialized once.
fn fan_out(
    room: &RoomId,
    message: ChatMessage,
    sessions: &Sessions,
    headers: Option<&async_nats::HeaderMap>,
) {
    let seq = message.seq;
    let span =
        tracing::info_span!("edge.deliver", room = %room, seq, sessions = tracing::field::Empty);
    chat_bus::trace::continue_from(&span, headers);
    let _entered = span.enter();
    let json: Arc<str> = ServerFrame::Message(message).to_json().into();
    let targets = snapshot(sessions);
    span.record("sessions", targets.len());
    let mut delivered = 0u64;
    for s in targets {
        if s.push(Outbound::Event {
            room: room.clone(),
            seq,
            json: json.clone(),
        }) {
            delivered += 1;
        }
    }
    metrics::counter!("edge_fanout_deliveries_total").increment(delivered);
}

async fn room_typing(mut sub: Subscriber, sessions: Sessions) {
    while let Some(msg) = sub.next().await {
        let Ok(ev) = serde_json::from_slice::<TypingEvent>(&msg.payload) else {
            continue;
        };
        let json: Arc<str> = ServerFrame::Typing {
            room: ev.room.clone(),
            user: ev.user.clone(),
        }
        .to_json()
        .into();
        for s in snapshot(&sessions) {
            if s.user != ev.user {
                s.push(Outbound::RoomFrame {
                    room: ev.room.clone(),
                    json: json.clone(),
                });
            }
        }
    }
}

async fn room_presence(mut sub: Subscriber, sessions: Sessions) {
    while let Some(msg) = sub.next().await {
        let Ok(ev) = serde_json::from_slice::<RoomPresenceEvent>(&msg.payload) else {
            continue;
        };
        let room = ev.room.clone();
        let json: Arc<str> = ServerFrame::Presence {
            room: ev.room,
            user: ev.user,
            status: ev.status,
            last_seen: ev.last_seen,
        }
        .to_json()
        .into();
        for s in snapshot(&sessions) {
            s.push(Outbound::RoomFrame {
                room: room.clone(),
                json: json.clone(),
            });
        }
    }
}

async fn user_feed(mut sub: Subscriber, sessions: Sessions) {
    while let Some(msg) = sub.next().await {
        let item = match subjects::user_subject_kind(&msg.subject) {
            Some("notify") => serde_json::from_slice::<UserNotification>(&msg.payload)
                .ok()
                .map(|n| Outbound::RoomFrame {
                    room: n.notification.room.clone(),
                    json: ServerFrame::Notification(n.notification).to_json().into(),
                }),
            Some("unread") => serde_json::from_slice::<UnreadUpdate>(&msg.payload)
                .ok()
                .map(|u| Outbound::RoomFrame {
                    room: u.room.clone(),
                    json: ServerFrame::Unread {
                        room: u.room,
                        count: u.count,
                        last_read: u.last_read,
                        as_of: u.as_of,
                    }
                    .to_json()
                    .into(),
                }),
            Some("membership") => serde_json::from_slice::<MembershipChange>(&msg.payload)
                .ok()
                .map(Outbound::Membership),
            _ => None,
        };
        if let Some(item) = item {
            for s in snapshot(&sessions) {
                s.push(item.clone());
            }
        }
    }
}
