//! chat-presence: who is online, away, busy or offline (protocol.md#ws "Presence", §3).
//!
//! Stateless: every instance keeps its state in two JetStream KV buckets, and any number of
//! them share the work (a durable work-queue consumer for the edges' session and status events,
//! queue groups for heartbeats, joins and `chat.api.presence`).
//!
//! - [`state`]: the per-user and per-edge records and the rules that change them;
//! - [`store`]: compare-and-set access to the buckets;
//! - [`rooms`]: who hears about a change (a user's rooms, room sizes), asked of chat-history;
//! - this module: the event handlers, the sweeper that takes silent edges' users offline, the
//!   `chat.api.presence` server and the wiring.
//!
//! How a change travels: an edge publishes session up/down and status choices on
//! `chat.internal.presence.*` (kept by the `CHAT_PRESENCE` stream until applied) and a heartbeat
//! listing its sessions; one instance applies each event to the user's record under
//! compare-and-set; if the user's effective status changed, that instance publishes
//! `presence.user.<user>` and `chat.room.<room>.presence` for each of the user's rooms (rooms
//! above `PRESENCE_MAX_ROOM_FANOUT` members are skipped), which the edges turn into `presence`
//! frames. `README.md` next to this crate gives the costs, the numbers and the limits.

pub mod config;
pub mod metrics_catalogue;
pub mod rooms;
pub mod state;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use chat_bus::api::{
    ApiError, EdgeHeartbeat, MembershipChange, PresenceReply, PresenceRequest, RoomPresenceEvent,
    SessionEvent, StatusChange, UserPresenceEvent,
};
use chat_bus::{now_ms, rpc, subjects};
use chat_proto::{PresenceEntry, RoomId, Status, UserId};
use chat_runtime::metrics::Metric;
use chat_runtime::service::{Admin, Base, Service};
use chat_runtime::{ConfigError, Env, nats::Serve as _, retry};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::{DEFAULT_ADMIN_LISTEN, PresenceConfig};
use state::{
    EDGE_SHARDS, EdgeAlive, EdgeRecord, EdgeSession, UserRecord, edge_record_keys, edge_shard,
    edge_shard_key,
};
use store::{Records, StoreError};

/// An edge silent for this many of its heartbeats is dead. With the sweeper running every quarter
/// heartbeat, its users are offline at most 2.25 heartbeats after its last heartbeat (so within
/// 3 of its death, with room for the work itself); a live edge is only mistaken for dead if a
/// whole heartbeat goes missing, and its next heartbeat brings its users back.
pub const DEAD_AFTER_HEARTBEATS: f64 = 2.0;

/// Most users one `chat.api.presence {users}` request may ask about (ten batched reads).
pub const MAX_USERS_PER_REQUEST: usize = 10_000;

/// Most users in a room's snapshot (protocol.md#ws v1.1: `presence_snapshot` lists at most 1,000).
pub const MAX_SNAPSHOT_USERS: usize = 1_000;

/// A started chat-presence, ready to [`run`](App::run).
pub struct App {
    presence: Presence,
    /// Taken in `build`, so that no event is missed between `build` and `run`.
    subscriptions: Subscriptions,
    admin: Admin,
}

impl Service for App {
    const NAME: &'static str = "chat-presence";
    const METRICS: &'static [Metric] = metrics_catalogue::CATALOGUE;
    type Config = PresenceConfig;

    fn config(env: &Env) -> Result<PresenceConfig, ConfigError> {
        PresenceConfig::from_env(env)
    }

    async fn build(config: PresenceConfig, shutdown: &CancellationToken) -> anyhow::Result<App> {
        App::build(config, shutdown).await
    }

    async fn run(self, shutdown: CancellationToken) {
        App::run(self, shutdown).await
    }

    fn admin_addr(&self) -> SocketAddr {
        App::admin_addr(self)
    }
}

impl App {
    /// Connects and creates the buckets if missing, waiting for NATS as long as it is down (or
    /// until `shutdown`).
    pub async fn build(
        config: PresenceConfig,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<App> {
        let Base { admin, nats, js } =
            Base::start::<App>(config.admin_listen, &config.nats).await?;
        let users = retry::at_start("create the presence bucket", shutdown, || {
            store::ensure_bucket(&js, subjects::PRESENCE_USERS_BUCKET, config.kv_replicas)
        })
        .await?;
        let edges = retry::at_start("create the presence edges bucket", shutdown, || {
            store::ensure_bucket(&js, subjects::PRESENCE_EDGES_BUCKET, config.kv_replicas)
        })
        .await?;
        let alive = retry::at_start("create the presence liveness bucket", shutdown, || {
            store::ensure_bucket(&js, subjects::PRESENCE_ALIVE_BUCKET, config.kv_replicas)
        })
        .await?;
        let subscriptions = retry::at_start("subscribe to the events", shutdown, || {
            Subscriptions::new(&nats, &js, config.kv_replicas)
        })
        .await?;
        tracing::info!("chat-presence started");
        let presence = Presence(Arc::new(Inner {
            rooms: rooms::Directory::new(nats.clone(), config.request_timeout),
            nats,
            users: Records::new(users),
            edges: Records::new(edges),
            alive: Records::new(alive),
            config,
            listening_since: now_ms(),
        }));
        Ok(App {
            presence,
            subscriptions,
            admin,
        })
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.addr()
    }

    /// The service's core, for benchmarks and tests that drive it directly.
    pub fn presence(&self) -> Presence {
        self.presence.clone()
    }

    /// Serves until `shutdown`, then drains: stops taking events and requests and finishes those
    /// in hand. Everything runs inside this future, so aborting it stops the instance at once
    /// (as a crash would).
    pub async fn run(self, shutdown: CancellationToken) {
        let p = self.presence;
        let admin = self.admin.serve(Vec::new(), shutdown.clone());
        let (lanes, mut workers) = Lanes::start(p.config.workers);
        let events = p
            .clone()
            .consume_events(self.subscriptions, lanes, shutdown.clone());
        let api = rpc::Presence::serve(p.nats.clone(), p.config.nats.serve, shutdown.clone(), {
            let p = p.clone();
            move |req| {
                let p = p.clone();
                async move { p.query(req).await }
            }
        });
        let sweeper = p.clone().sweep_forever(shutdown.clone());
        let (_, events, api, ()) = tokio::join!(admin, events, api, sweeper);
        for res in [events, api] {
            if let Err(e) = res {
                tracing::error!(error = %e, "subscription failed");
            }
        }
        // The lanes' senders are gone with `consume_events`: the workers finish what is queued.
        while workers.join_next().await.is_some() {}
        chat_runtime::nats::flush_within(&p.nats).await;
    }
}

/// chat-presence's core: cheap to clone.
#[derive(Clone)]
pub struct Presence(Arc<Inner>);

pub struct Inner {
    nats: async_nats::Client,
    users: Records<UserRecord>,
    edges: Records<EdgeRecord>,
    alive: Records<EdgeAlive>,
    rooms: rooms::Directory,
    config: PresenceConfig,
    /// When this instance began hearing heartbeats (ms). While no instance runs, heartbeats go
    /// unrecorded: an edge is judged silent only over time this instance has been listening.
    listening_since: i64,
}

impl std::ops::Deref for Presence {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Worker lanes: the events of one key (a user, an edge) run in order on one lane, different
/// keys in parallel.
struct Lanes {
    senders: Vec<mpsc::Sender<Job>>,
}

impl Lanes {
    fn start(n: usize) -> (Lanes, JoinSet<()>) {
        let mut workers = JoinSet::new();
        let senders = (0..n)
            .map(|_| {
                let (tx, mut rx) = mpsc::channel::<Job>(256);
                workers.spawn(async move {
                    while let Some(job) = rx.recv().await {
                        job.await;
                    }
                });
                tx
            })
            .collect();
        (Lanes { senders }, workers)
    }

    /// Queues `job` on the lane of `key`; `chat_presence_events_total{kind}` counts it once done.
    async fn submit(&self, key: &str, kind: Kind, job: impl Future<Output = ()> + Send + 'static) {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let lane = (h.finish() % self.senders.len() as u64) as usize;
        let job = async move {
            job.await;
            metrics::counter!("chat_presence_events_total", "kind" => kind.name()).increment(1);
        };
        let _ = self.senders[lane].send(Box::pin(job)).await;
    }
}

impl Presence {
    /// How long a closed session is remembered (against late `up`s and stale heartbeats).
    fn closed_retention_ms(&self) -> i64 {
        (self.config.heartbeat.as_millis() as i64 * 10).max(60_000)
    }

    /// Takes the events: the edges' session and status events from the durable consumer (each
    /// acknowledged once applied, so that an instance that dies with events in hand loses none:
    /// they are delivered again), heartbeats and joins from the queue group, and every
    /// membership change (for the rooms cache).
    async fn consume_events(
        self,
        subs: Subscriptions,
        lanes: Lanes,
        shutdown: CancellationToken,
    ) -> Result<(), async_nats::Error> {
        let Subscriptions {
            consumer,
            events,
            heartbeat,
            joins,
            mut memberships,
        } = subs;
        let mut events = Some(events);
        let tag = |kind: Kind| move |m: async_nats::Message| (kind, m);
        let mut core = futures::stream::select_all([
            heartbeat.map(tag(Kind::Heartbeat)).boxed(),
            joins.map(tag(Kind::Join)).boxed(),
        ]);
        loop {
            if events.is_none() {
                match consumer.messages().await {
                    Ok(stream) => events = Some(stream),
                    Err(e) => tracing::warn!(error = %e, "events consumer unavailable, retrying"),
                }
            }
            let next_event = async {
                match events.as_mut() {
                    Some(stream) => stream.next().await,
                    None => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        None
                    }
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(msg) = memberships.next() => {
                    if let Ok(ch) = serde_json::from_slice::<MembershipChange>(&msg.payload) {
                        self.rooms.forget(&ch.user, &ch.room);
                    }
                }
                next = core.next() => {
                    let Some((kind, msg)) = next else { break };
                    self.dispatch(&lanes, kind, msg).await;
                }
                next = next_event => match next {
                    Some(Ok(msg)) => self.dispatch_event(&lanes, msg).await,
                    Some(Err(e)) => tracing::debug!(error = %e, "events consumer hiccup"),
                    None => events = None,
                },
            }
        }
        // Dropping the subscriptions unsubscribes; the queue group's other members take over,
        // and unacknowledged events go to the other instances.
        Ok(())
    }

    /// Queues an event of the edges on its user's lane; acknowledges it once applied, or asks
    /// for it again a little later if the bucket could not be reached.
    async fn dispatch_event(&self, lanes: &Lanes, msg: jetstream::Message) {
        let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
        let p = self.clone();
        let subject = msg.subject.as_str();
        if subject == subjects::PRESENCE_STATUS {
            let Ok(ev) = serde_json::from_slice::<StatusChange>(&msg.payload) else {
                tracing::warn!("undecodable status change");
                let _ = msg.ack_with(AckKind::Term).await;
                return;
            };
            let key = ev.user.to_string();
            lanes
                .submit(&key, Kind::Status, async move {
                    let res = p
                        .change_user(&ev.user, |r| r.set_status(ev.status, ev.ts, seq))
                        .await;
                    settle(&msg, res).await;
                })
                .await;
            return;
        }
        let kind = if subject == subjects::PRESENCE_SESSION_UP {
            Kind::Up
        } else if subject == subjects::PRESENCE_SESSION_DOWN {
            Kind::Down
        } else {
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        };
        let Ok(ev) = serde_json::from_slice::<SessionEvent>(&msg.payload) else {
            tracing::warn!("undecodable session event");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        };
        let key = ev.user.to_string();
        lanes
            .submit(&key, kind, async move {
                let res = if kind == Kind::Up {
                    p.on_up(&ev).await
                } else {
                    p.on_down(&ev).await
                };
                settle(&msg, res).await;
            })
            .await;
    }

    async fn dispatch(&self, lanes: &Lanes, kind: Kind, msg: async_nats::Message) {
        let p = self.clone();
        match kind {
            Kind::Heartbeat => {
                let Ok(hb) = serde_json::from_slice::<EdgeHeartbeat>(&msg.payload) else {
                    tracing::warn!("undecodable heartbeat");
                    return;
                };
                if hb.shard.is_some_and(|shard| shard >= EDGE_SHARDS) {
                    tracing::warn!(
                        edge = hb.edge,
                        shard = hb.shard,
                        "heartbeat part of no shard"
                    );
                    return;
                }
                // Liveness is recorded at once, apart from the lanes: however busy they are, a
                // live edge must not look silent. Once per heartbeat: by its first part (each
                // part arrives with the others; one lost is one heartbeat missed, as a whole
                // heartbeat lost was, and the sweeper waits for two).
                if hb.shard.is_none_or(|shard| shard == 0) {
                    let alive = EdgeAlive {
                        heartbeat_ms: hb.heartbeat_ms,
                        seen_at: now_ms(),
                    };
                    let (edge, q) = (hb.edge.clone(), self.clone());
                    tokio::spawn(async move {
                        if let Err(e) = q.alive.put(&edge, &alive).await {
                            tracing::warn!(error = %e, edge, "heartbeat not recorded");
                        }
                    });
                }
                // A part's lane is its shard's: parts apply side by side, each shard's in order.
                let key = match hb.shard {
                    Some(shard) => format!("edge:{}:{shard}", hb.edge),
                    None => format!("edge:{}", hb.edge),
                };
                lanes
                    .submit(&key, kind, async move {
                        if let Err(e) = p.on_heartbeat(&hb).await {
                            tracing::warn!(error = %e, edge = hb.edge, "heartbeat not applied");
                        }
                    })
                    .await;
            }
            Kind::Join => {
                let Ok(ch) = serde_json::from_slice::<MembershipChange>(&msg.payload) else {
                    return;
                };
                if !ch.member {
                    return;
                }
                let key = ch.user.to_string();
                lanes
                    .submit(&key, kind, async move {
                        if let Err(e) = p.on_join(&ch).await {
                            tracing::warn!(error = %e, user = %ch.user, "join not announced");
                        }
                    })
                    .await;
            }
            Kind::Up | Kind::Down | Kind::Status => {}
        }
    }

    /// A session opened: the edge record learns it first, in its user's shard (so that the
    /// sweeper can take it offline should the edge die), then the user's record. The first
    /// session of a shard makes the edge known to the sweeper even before its first heartbeat
    /// (a liveness record that exists already is left as it is).
    pub async fn on_up(&self, ev: &SessionEvent) -> Result<(), StoreError> {
        let shard = edge_shard_key(&ev.edge, edge_shard(ev.user.as_str()));
        let updated = self
            .edges
            .update(&shard, |cur| {
                if cur.is_some_and(|r| r.sessions.contains_key(&ev.session)) {
                    return None;
                }
                let mut r = cur.cloned().unwrap_or_default();
                r.sessions.insert(
                    ev.session.clone(),
                    EdgeSession {
                        user: ev.user.clone(),
                        ts: ev.ts,
                    },
                );
                Some(r)
            })
            .await?;
        if updated.before.is_none() {
            let alive = EdgeAlive {
                heartbeat_ms: self.config.heartbeat.as_millis() as u64,
                seen_at: now_ms(),
            };
            self.alive.create(&ev.edge, &alive).await?;
        }
        self.change_user(&ev.user, |r| r.session_up(&ev.edge, &ev.session, ev.ts))
            .await
    }

    /// A session closed (the edge record forgets it at the edge's next heartbeat).
    pub async fn on_down(&self, ev: &SessionEvent) -> Result<(), StoreError> {
        self.change_user(&ev.user, |r| r.session_down(&ev.session, ev.ts))
            .await
    }

    /// An edge's heartbeat (its liveness is recorded by the dispatcher): the sessions it lists
    /// are the truth for it. Each shard of the edge record takes those of its sessions
    /// (compare-and-set), then the users whose sessions there differ from what the record knew
    /// are reconciled.
    ///
    /// A part of a heartbeat (`shard` set: the edge sends one per shard, README "How it works")
    /// speaks for its shard only: the
    /// other shards are left as they are, and a session it lists from another shard is ignored.
    pub async fn on_heartbeat(&self, hb: &EdgeHeartbeat) -> Result<(), StoreError> {
        let speaks_for = |shard: u32| hb.shard.is_none_or(|part| part == shard);
        let mut shards = vec![BTreeMap::<String, UserId>::new(); EDGE_SHARDS as usize];
        let mut by_user: BTreeMap<&UserId, BTreeSet<String>> = BTreeMap::new();
        for s in &hb.sessions {
            let shard = edge_shard(s.user.as_str());
            if !speaks_for(shard) {
                continue;
            }
            shards[shard as usize].insert(s.session.clone(), s.user.clone());
            by_user
                .entry(&s.user)
                .or_default()
                .insert(s.session.clone());
        }
        let grace = hb.heartbeat_ms as i64;
        let mut updates = Vec::with_capacity(shards.len());
        for (i, listed) in shards.iter().enumerate() {
            if !speaks_for(i as u32) {
                continue;
            }
            let key = edge_shard_key(&hb.edge, i as u32);
            updates.push(async move {
                let mut changed = BTreeSet::new();
                self.edges
                    .update(&key, |cur| {
                        // A shard with nothing listed and no record stays unwritten.
                        if cur.is_none() && listed.is_empty() {
                            return None;
                        }
                        let mut record = cur.cloned().unwrap_or_default();
                        changed = record.apply_heartbeat(listed, hb.ts, grace);
                        Some(record)
                    })
                    .await?;
                Ok::<_, StoreError>(changed)
            });
        }
        let mut changed = BTreeSet::new();
        for users in futures::future::try_join_all(updates).await? {
            changed.extend(users);
        }
        let empty = BTreeSet::new();
        let results: Vec<Result<(), StoreError>> = futures::stream::iter(changed)
            .map(|user| {
                let mine = by_user.get(&user).unwrap_or(&empty);
                async move {
                    self.change_user(&user, |r| r.reconcile_edge(&hb.edge, mine, hb.ts, grace))
                        .await
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// A user joined a room: the room's members hear the user's presence.
    pub async fn on_join(&self, ch: &MembershipChange) -> Result<(), StoreError> {
        let (record, _) = self.users.get(ch.user.as_str()).await?;
        let record = record.unwrap_or_default();
        match self.rooms.room_size(&ch.room, ch.kind).await {
            Ok(size) if size <= self.config.max_room_fanout => {}
            Ok(_) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, room = %ch.room, "room size unknown, not announcing");
                return Ok(());
            }
        }
        let entry = record.entry(&ch.user, now_ms());
        self.publish_room(&ch.room, &entry).await;
        Ok(())
    }

    /// A user's record as stored (None: never seen).
    pub async fn user_record(&self, user: &UserId) -> Result<Option<UserRecord>, StoreError> {
        Ok(self.users.get(user.as_str()).await?.0)
    }

    /// Applies `rule` to a user's record; announces the user's presence if the effective status
    /// changed.
    pub async fn change_user(
        &self,
        user: &UserId,
        rule: impl Fn(&mut UserRecord),
    ) -> Result<(), StoreError> {
        let keep_after = now_ms() - self.closed_retention_ms();
        let updated = self
            .users
            .update(user.as_str(), |cur| {
                let mut r = cur.cloned().unwrap_or_default();
                rule(&mut r);
                r.prune(keep_after);
                Some(r)
            })
            .await?;
        let before = updated
            .before
            .as_ref()
            .map_or(Status::Offline, UserRecord::effective);
        let after = updated.after.unwrap_or_default();
        if after.effective() != before {
            self.announce(user, &after).await;
        }
        Ok(())
    }

    /// Publishes a user's new presence on `presence.user.<user>` and to each of their rooms that
    /// is small enough.
    async fn announce(&self, user: &UserId, record: &UserRecord) {
        metrics::counter!("chat_presence_changes_total").increment(1);
        let entry = record.entry(user, now_ms());
        let ev = UserPresenceEvent {
            user: user.clone(),
            status: entry.status,
            last_seen: entry.last_seen,
            sessions: record.sessions.len() as u32,
        };
        self.publish(subjects::presence_user(user), &ev).await;
        if self.config.max_room_fanout == 0 {
            return;
        }
        let rooms = match self.rooms.user_rooms(user).await {
            Ok(rooms) => rooms,
            Err(e) => {
                tracing::warn!(error = %e, %user, "rooms unknown, presence not broadcast to rooms");
                return;
            }
        };
        for (room, kind) in rooms {
            match self.rooms.room_size(&room, kind).await {
                Ok(size) if size <= self.config.max_room_fanout => {
                    self.publish_room(&room, &entry).await;
                }
                Ok(_) => metrics::counter!("chat_presence_fanout_skipped_total").increment(1),
                Err(e) => tracing::warn!(error = %e, %room, "room size unknown, skipped"),
            }
        }
    }

    async fn publish_room(&self, room: &RoomId, entry: &PresenceEntry) {
        let ev = RoomPresenceEvent {
            room: room.clone(),
            user: entry.user.clone(),
            status: entry.status,
            last_seen: entry.last_seen,
        };
        self.publish(subjects::room_presence(room), &ev).await;
    }

    async fn publish<T: serde::Serialize>(&self, subject: String, value: &T) {
        let Ok(payload) = serde_json::to_vec(value) else {
            return;
        };
        if let Err(e) = self.nats.publish(subject, payload.into()).await {
            tracing::debug!(error = %e, "presence not published");
        }
    }

    /// Answers `chat.api.presence`: a room's members (the first [`MAX_SNAPSHOT_USERS`] that
    /// chat-history lists, protocol.md#ws v1.1) or a list of users. Unknown users are offline,
    /// last seen at 0. The records are read in batches of [`store::MAX_BATCH_KEYS`] (one
    /// request each), never one read per member.
    pub async fn query(&self, req: PresenceRequest) -> Result<PresenceReply, ApiError> {
        let users = match req {
            PresenceRequest::Room { room } => {
                let mut members = self.rooms.members(&room).await?.members;
                if members.len() > MAX_SNAPSHOT_USERS {
                    metrics::counter!("chat_presence_snapshots_truncated_total").increment(1);
                    members.truncate(MAX_SNAPSHOT_USERS);
                }
                members
            }
            PresenceRequest::Users { users } => {
                if users.len() > MAX_USERS_PER_REQUEST {
                    return Err(ApiError::bad_request(format!(
                        "at most {MAX_USERS_PER_REQUEST} users per request"
                    )));
                }
                users
            }
        };
        let now = now_ms();
        let mut entries = Vec::with_capacity(users.len());
        for chunk in users.chunks(store::MAX_BATCH_KEYS) {
            let keys: Vec<&str> = chunk.iter().map(UserId::as_str).collect();
            let mut records = self.users.get_many(&self.nats, &keys).await.map_err(|e| {
                tracing::warn!(error = %e, "presence bucket unavailable");
                ApiError::unavailable()
            })?;
            for user in chunk {
                let record = records.remove(user.as_str()).unwrap_or_default();
                entries.push(record.entry(user, now));
            }
        }
        Ok(PresenceReply { users: entries })
    }

    /// Every quarter heartbeat (from a random phase, so instances spread out), takes the users of
    /// silent edges offline. Any number of instances may sweep at once: each user change is a
    /// compare-and-set, so exactly one of them announces it.
    async fn sweep_forever(self, shutdown: CancellationToken) {
        let period = self.config.heartbeat / 4;
        let phase = Duration::from_millis(rand::random::<u64>() % period.as_millis().max(1) as u64);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            // A sweep against an unreachable NATS retries its requests for long: shutdown
            // abandons it (issue 15 item 13; another instance, or this one restarted, sweeps).
            tokio::select! {
                _ = shutdown.cancelled() => return,
                res = self.sweep() => {
                    if let Err(e) = res {
                        tracing::warn!(error = %e, "sweep failed");
                    }
                }
            }
        }
    }

    /// One pass of the sweeper; returns how many edges it found dead. The instance that
    /// removes a silent edge's liveness record (compare-and-set) takes its users offline; a
    /// heartbeat arriving meanwhile wins, and the edge lives on.
    pub async fn sweep(&self) -> Result<usize, StoreError> {
        metrics::counter!("chat_presence_sweeps_total").increment(1);
        let mut dead = 0;
        for edge in self.alive.keys().await? {
            let (Some(alive), revision) = self.alive.get(&edge).await? else {
                continue;
            };
            if !alive.is_silent(now_ms(), self.listening_since, DEAD_AFTER_HEARTBEATS) {
                continue;
            }
            if !self.alive.remove_if(&edge, revision).await? {
                continue;
            }
            let keys = edge_record_keys(&edge);
            let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            let records = self.edges.get_many(&self.nats, &key_refs).await?;
            let sessions: usize = records.values().map(|r| r.sessions.len()).sum();
            let users: BTreeSet<UserId> = records.values().flat_map(EdgeRecord::users).collect();
            tracing::info!(edge, sessions, "edge silent, taking its users offline");
            for user in users {
                if let Err(e) = self
                    .change_user(&user, |r| r.edge_dead(&edge, alive.seen_at))
                    .await
                {
                    // Put the edge back as it was, so that a later sweep finishes the job.
                    let _ = self.alive.put(&edge, &alive).await;
                    return Err(e);
                }
            }
            // Unconditionally: a heartbeat applied meanwhile must not leave a record that
            // matches the edge's sessions while their users are offline (the edge's next
            // heartbeat, finding no record, brings back the sessions of an edge that lives).
            for key in &keys {
                self.edges.remove(key).await?;
            }
            metrics::counter!("chat_presence_dead_edges_total").increment(1);
            dead += 1;
        }
        Ok(dead)
    }
}

/// Acknowledges an applied event, or asks for it again shortly (the bucket was unreachable).
async fn settle(msg: &jetstream::Message, res: Result<(), StoreError>) {
    let ack = match res {
        Ok(()) => msg.ack().await,
        Err(e) => {
            tracing::warn!(error = %e, "event not applied, will retry");
            msg.ack_with(AckKind::Nak(Some(Duration::from_millis(500))))
                .await
        }
    };
    if let Err(e) = ack {
        tracing::debug!(error = %e, "ack not sent; the event will be applied again (harmless)");
    }
}

/// How long an event may stay unacknowledged before it is delivered to an instance again.
pub const EVENTS_ACK_WAIT: Duration = Duration::from_secs(5);

/// The subscriptions of an instance: the events consumer, the heartbeats and joins in the
/// queue group, and every membership change (to keep the rooms cache fresh).
struct Subscriptions {
    consumer: jetstream::consumer::PullConsumer,
    events: jetstream::consumer::pull::Stream,
    heartbeat: async_nats::Subscriber,
    joins: async_nats::Subscriber,
    memberships: async_nats::Subscriber,
}

impl Subscriptions {
    async fn new(
        nats: &async_nats::Client,
        js: &jetstream::Context,
        replicas: usize,
    ) -> Result<Self, async_nats::Error> {
        let stream = js
            .get_or_create_stream(jetstream::stream::Config {
                name: subjects::PRESENCE_EVENTS_STREAM.to_owned(),
                description: Some("Session and status events waiting for chat-presence".into()),
                subjects: vec![
                    subjects::PRESENCE_SESSION_UP.to_owned(),
                    subjects::PRESENCE_SESSION_DOWN.to_owned(),
                    subjects::PRESENCE_STATUS.to_owned(),
                ],
                retention: jetstream::stream::RetentionPolicy::WorkQueue,
                storage: jetstream::stream::StorageType::Memory,
                max_age: Duration::from_secs(600),
                num_replicas: replicas,
                ..Default::default()
            })
            .await?;
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                subjects::PRESENCE_CONSUMER,
                jetstream::consumer::pull::Config {
                    durable_name: Some(subjects::PRESENCE_CONSUMER.to_owned()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: EVENTS_ACK_WAIT,
                    max_ack_pending: 2_000,
                    ..Default::default()
                },
            )
            .await?;
        let events = consumer.messages().await?;
        let q = || subjects::PRESENCE_QUEUE.to_owned();
        let subs = Subscriptions {
            consumer,
            events,
            heartbeat: nats
                .queue_subscribe(subjects::PRESENCE_HEARTBEAT, q())
                .await?,
            joins: nats
                .queue_subscribe(subjects::USER_MEMBERSHIP_ALL, q())
                .await?,
            // Not a queue group: every instance forgets its cached rooms of the user.
            memberships: nats.subscribe(subjects::USER_MEMBERSHIP_ALL).await?,
        };
        nats.flush().await?;
        Ok(subs)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Up,
    Down,
    Status,
    Heartbeat,
    Join,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Up => "up",
            Kind::Down => "down",
            Kind::Status => "status",
            Kind::Heartbeat => "heartbeat",
            Kind::Join => "join",
        }
    }
}
