//! Integration events out (docs/protocol.md, Integration events): room and membership events
//! POSTed to the webhook endpoints an operator registers (`CHAT_INTEGRATION_WEBHOOKS`), signed
//! the Standard Webhooks way ([`chat_runtime::webhook`]), at least once and in order per room.
//!
//! Three steps, each safe with several chat-history instances:
//! 1. **Outbox**: an event is a row of `integration_outbox` written in the transaction that made
//!    it: the archive insert of a room event ([`queue_room_events`], called by the archive
//!    writer), or a membership change (a trigger on `memberships`, migration 0006, so every code
//!    path that changes membership is covered; it takes the room's transaction lock, so a room's
//!    changes get ids in commit order). Nothing is written while no endpoint is registered.
//! 2. **Sequencer** ([`sequence`]): one instance at a time (a transaction advisory lock) gives
//!    the rows their final order and fans them out to `integration_deliveries`, one row per
//!    matching endpoint. Archive writers commit concurrently, so a room's events may commit out
//!    of stream order: a room event is ordered only once the archive consumer's ack floor has
//!    passed it (every event at or below the floor has committed), by stream sequence. A
//!    membership change is stamped with the stream's last sequence read after it committed
//!    ([`stamp_memberships`]) and ordered once the floor passes that: after every room event
//!    published before it, before those published after.
//! 3. **Dispatcher** ([`Integration::run`]): only the lowest position of each (endpoint, room) is
//!    ever attempted, claimed with a lease, so a room's events reach an endpoint in order while
//!    rooms proceed independently. A failure is retried with exponential backoff and jitter
//!    (capped at `CHAT_INTEGRATION_WEBHOOK_RETRY_MAX`) for as long as it takes: nothing is dropped.
//!    The backlog shows in `chat_history_integration_pending` (per endpoint),
//!    `chat_history_integration_unordered` and `chat_history_integration_oldest_seconds` (alert
//!    `ChatIntegrationWebhooksStuck`).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::time::Duration;

use async_nats::jetstream;
use chat_bus::event::{EventKind, RoomEvent};
use chat_bus::{now_ms, subjects};
use chat_runtime::webhook::{self, Target};
use chat_runtime::{ConfigError, Env};
use serde::Deserialize;
use serde_json::json;
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Every event type an endpoint may subscribe to.
pub const EVENT_TYPES: &[&str] = &[
    "message.created",
    "message.edited",
    "message.deleted",
    "reaction",
    "member.joined",
    "member.left",
];

/// Deliveries in flight at once per process.
const CONCURRENCY: usize = 64;
/// Most outbox rows ordered per sequencer round.
const SEQUENCE_BATCH: i64 = 1000;
/// How often the dispatcher looks for work when nothing woke it.
const POLL: Duration = Duration::from_millis(100);
/// How often the backlog gauges are refreshed.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// One registered endpoint (an element of `CHAT_INTEGRATION_WEBHOOKS`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `[A-Za-z0-9_-]{1,64}`: the key of its deliveries and the label of its metrics.
    pub id: String,
    /// `https://…` or `http://…` (for a receiver on a trusted network).
    pub url: String,
    /// `whsec_<base64 of 24 to 64 bytes>` (Standard Webhooks).
    pub secret: String,
    /// Event types ([`EVENT_TYPES`]), or `["*"]` for all.
    pub events: Vec<String>,
    /// Only these rooms; absent: every room.
    #[serde(default)]
    pub rooms: Option<Vec<String>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("events", &self.events)
            .field("rooms", &self.rooms)
            .finish()
    }
}

/// The integration settings of chat-history.
#[derive(Debug, Clone)]
pub struct IntegrationConfig {
    /// `CHAT_INTEGRATION_WEBHOOKS`: a JSON array of endpoints, inline (starting with `[`) or
    /// the path of a file holding it. Set: the endpoints table is made equal to it at start.
    /// Unset: the table is left as it is (another instance, or a later `chatctl`, manages it).
    pub endpoints: Option<Vec<Endpoint>>,
    /// `CHAT_INTEGRATION_WEBHOOK_CA`: extra CA certificates (PEM) trusted for `https://`.
    pub ca: Option<PathBuf>,
    /// `CHAT_INTEGRATION_WEBHOOK_TIMEOUT` (5s): one attempt, connect to status line.
    pub timeout: Duration,
    /// `CHAT_INTEGRATION_WEBHOOK_RETRY_MIN` (500ms): the first backoff.
    pub retry_min: Duration,
    /// `CHAT_INTEGRATION_WEBHOOK_RETRY_MAX` (60s): the longest backoff.
    pub retry_max: Duration,
}

impl IntegrationConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        const KEY: &str = "CHAT_INTEGRATION_WEBHOOKS";
        let endpoints = match env.get(KEY) {
            None => None,
            Some(v) => {
                let inline = v.trim_start().starts_with('[');
                // The value is never echoed when inline: it holds the secrets.
                let shown = if inline { "(inline JSON)" } else { v };
                let err = |problem: String| ConfigError {
                    key: KEY.into(),
                    value: shown.into(),
                    problem,
                };
                let text = if inline {
                    v.to_owned()
                } else {
                    std::fs::read_to_string(v).map_err(|e| err(format!("unreadable: {e}")))?
                };
                Some(parse_endpoints(&text).map_err(err)?)
            }
        };
        let ca = env.get("CHAT_INTEGRATION_WEBHOOK_CA").map(PathBuf::from);
        if let Some(ca) = &ca
            && let Err(e) = chat_runtime::tls::client_config(Some(ca))
        {
            return Err(ConfigError {
                key: "CHAT_INTEGRATION_WEBHOOK_CA".into(),
                value: ca.display().to_string(),
                problem: e,
            });
        }
        Ok(IntegrationConfig {
            endpoints,
            ca,
            timeout: env.duration("CHAT_INTEGRATION_WEBHOOK_TIMEOUT", Duration::from_secs(5))?,
            retry_min: env.duration(
                "CHAT_INTEGRATION_WEBHOOK_RETRY_MIN",
                Duration::from_millis(500),
            )?,
            retry_max: env.duration(
                "CHAT_INTEGRATION_WEBHOOK_RETRY_MAX",
                Duration::from_secs(60),
            )?,
        })
    }
}

/// The endpoints of a `CHAT_INTEGRATION_WEBHOOKS` document, checked; an error names the
/// endpoint and what is wrong (never a secret).
pub fn parse_endpoints(text: &str) -> Result<Vec<Endpoint>, String> {
    let list: Vec<Endpoint> =
        serde_json::from_str(text).map_err(|e| format!("not a JSON array of endpoints: {e}"))?;
    let mut ids = BTreeSet::new();
    let mut out = Vec::with_capacity(list.len());
    for mut e in list {
        let id_ok = (1..=64).contains(&e.id.len())
            && e.id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok {
            return Err(format!(
                "endpoint id {:?}: expected 1 to 64 of A-Z a-z 0-9 - _",
                e.id
            ));
        }
        if !ids.insert(e.id.clone()) {
            return Err(format!("endpoint id {:?} is listed twice", e.id));
        }
        if Target::parse(&e.url).is_none() {
            return Err(format!(
                "endpoint {}: url: expected https://host[:port][/path] or http://…",
                e.id
            ));
        }
        webhook::whsec_key(&e.secret).map_err(|p| format!("endpoint {}: secret: {p}", e.id))?;
        if e.events.iter().any(|t| t == "*") {
            e.events = EVENT_TYPES.iter().map(|t| t.to_string()).collect();
        }
        if e.events.is_empty() {
            return Err(format!("endpoint {}: events: none listed", e.id));
        }
        if let Some(bad) = e.events.iter().find(|t| !EVENT_TYPES.contains(&t.as_str())) {
            return Err(format!(
                "endpoint {}: events: unknown type {bad:?} (known: {}, or \"*\")",
                e.id,
                EVENT_TYPES.join(", ")
            ));
        }
        if let Some(rooms) = &e.rooms
            && let Some(bad) = rooms
                .iter()
                .find(|r| chat_proto::RoomId::new(r.to_string()).is_err())
        {
            return Err(format!(
                "endpoint {}: rooms: {bad:?} is not a room id",
                e.id
            ));
        }
        out.push(e);
    }
    Ok(out)
}

/// Makes the endpoints table equal to `endpoints`; an endpoint no longer listed is removed with
/// its undelivered events (logged with their number).
pub async fn sync_endpoints(pool: &PgPool, endpoints: &[Endpoint]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('chat-history:integration-endpoints'))")
        .execute(&mut *tx)
        .await?;
    let ids: Vec<&str> = endpoints.iter().map(|e| e.id.as_str()).collect();
    let removed: Vec<(String, i64)> = sqlx::query_as(
        "SELECT e.id, (SELECT count(*) FROM integration_deliveries d WHERE d.endpoint = e.id)
         FROM integration_endpoints e WHERE NOT (e.id = ANY($1))",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    for (id, pending) in &removed {
        tracing::warn!(
            endpoint = id,
            pending,
            "integration endpoint no longer configured: removed with its undelivered events"
        );
    }
    sqlx::query("DELETE FROM integration_endpoints WHERE NOT (id = ANY($1))")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    for e in endpoints {
        sqlx::query(
            "INSERT INTO integration_endpoints (id, url, secret, events, rooms, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (id) DO UPDATE SET url = $2, secret = $3, events = $4, rooms = $5,
                                            updated_at = $6",
        )
        .bind(&e.id)
        .bind(&e.url)
        .bind(&e.secret)
        .bind(&e.events)
        .bind(&e.rooms)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    tracing::info!(endpoints = endpoints.len(), "integration endpoints synced");
    Ok(())
}

/// The webhook type of a room event.
pub fn event_type(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Message => "message.created",
        EventKind::Edit => "message.edited",
        EventKind::Delete => "message.deleted",
        EventKind::Reaction => "reaction",
    }
}

/// The `data` of a room event's webhook (docs/protocol.md, Integration events).
pub fn event_data(seq: u64, e: &RoomEvent) -> serde_json::Value {
    let mut d = json!({"seq": seq, "from": e.from, "client_id": e.client_id});
    let m = d.as_object_mut().expect("an object");
    match e.kind {
        EventKind::Message => {
            m.insert("body".into(), json!(e.body));
            if let Some(r) = e.reply_to {
                m.insert("reply_to".into(), json!(r));
            }
            if let Some(t) = e.thread {
                m.insert("thread".into(), json!(t));
            }
        }
        EventKind::Edit => {
            m.insert("target".into(), json!(e.target));
            m.insert("body".into(), json!(e.body));
        }
        EventKind::Delete => {
            m.insert("target".into(), json!(e.target));
        }
        EventKind::Reaction => {
            m.insert("target".into(), json!(e.target));
            m.insert("emoji".into(), json!(e.emoji));
            m.insert("on".into(), json!(e.on.unwrap_or(true)));
        }
    }
    d
}

/// Queues the webhooks of room events just archived (`events`: those the insert actually
/// added, so a redelivered event is not queued twice), inside the archive's transaction, which
/// holds the rooms' locks. Nothing is written while no endpoint is registered.
pub async fn queue_room_events(
    tx: &mut Transaction<'_, Postgres>,
    epoch_id: i32,
    events: &[(i64, &RoomEvent)],
) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let mut rooms = Vec::with_capacity(events.len());
    let mut seqs = Vec::with_capacity(events.len());
    let mut types = Vec::with_capacity(events.len());
    let mut ids = Vec::with_capacity(events.len());
    let mut tss = Vec::with_capacity(events.len());
    let mut datas = Vec::with_capacity(events.len());
    for (seq, e) in events {
        rooms.push(e.room.as_str());
        seqs.push(*seq);
        types.push(event_type(e.kind));
        ids.push(format!("evt_{epoch_id}_{seq}"));
        tss.push(e.ts);
        datas.push(event_data(*seq as u64, e).to_string());
    }
    sqlx::query(
        "INSERT INTO integration_outbox (room, epoch_id, seq, type, event_id, ts, data, created_at)
         SELECT u.room, $1, u.seq, u.type, u.event_id, u.ts, u.data, $8
         FROM UNNEST($2::text[], $3::bigint[], $4::text[], $5::text[], $6::bigint[], $7::text[])
              AS u(room, seq, type, event_id, ts, data)
         WHERE EXISTS (SELECT 1 FROM integration_endpoints)
         ORDER BY u.seq",
    )
    .bind(epoch_id)
    .bind(&rooms)
    .bind(&seqs)
    .bind(&types)
    .bind(&ids)
    .bind(&tss)
    .bind(&datas)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Nothing of a deleted message's text is kept (protocol.md#ws-lifecycle), not even in webhooks
/// not delivered yet: the `message.created` and `message.edited` events of the messages `gone`
/// (seqs of epoch `epoch_id`) still waiting get `body` "". Called in the transaction that
/// archived the delete. It first takes the sequencer's lock (only while an endpoint is
/// registered): a round in progress could otherwise copy a row's text into a delivery after
/// this scrub read the deliveries. No cycle: a round never waits for an archive transaction.
pub async fn scrub_deleted(
    tx: &mut Transaction<'_, Postgres>,
    epoch_id: i32,
    gone: &[i64],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtext('chat-history:integration-sequencer'))
         WHERE EXISTS (SELECT 1 FROM integration_endpoints)",
    )
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE integration_outbox SET data = jsonb_set(data::jsonb, '{body}', '\"\"')::text
         WHERE epoch_id = $1 AND seq IS NOT NULL
           AND (   (type = 'message.created' AND seq = ANY($2))
                OR (type = 'message.edited' AND (data::jsonb->>'target')::bigint = ANY($2)))",
    )
    .bind(epoch_id)
    .bind(gone)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE integration_deliveries
         SET body = jsonb_set(body::jsonb, '{data,body}', '\"\"')::text
         WHERE event_id LIKE 'evt\\_' || $1::text || '\\_%'
           AND (   (body::jsonb->>'type' = 'message.created'
                    AND (body::jsonb->'data'->>'seq')::bigint = ANY($2))
                OR (body::jsonb->>'type' = 'message.edited'
                    AND (body::jsonb->'data'->>'target')::bigint = ANY($2)))",
    )
    .bind(epoch_id)
    .bind(gone)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A row of the outbox being ordered.
#[derive(Debug, Clone)]
struct Pending {
    id: i64,
    room: String,
    /// (epoch, stream seq) of a room event; None for a membership change.
    seq: Option<(i32, i64)>,
    /// (epoch, `after_seq`) of a membership change.
    after: Option<(i32, i64)>,
    ty: String,
    event_id: String,
    ts: i64,
    data: String,
    created_at: i64,
}

/// The order of one sequencer round: room events by stream sequence; a membership change after
/// the room events at or below its `after_seq` and before those above; then by outbox id (a
/// room's membership changes in commit order: the trigger takes the room's lock).
fn round_order(mut rows: Vec<Pending>) -> Vec<Pending> {
    rows.sort_by_key(|r| match r.seq {
        Some((epoch, seq)) => (epoch, seq, 0, r.id),
        None => {
            let (epoch, after) = r.after.unwrap_or((i32::MAX, i64::MAX));
            (epoch, after, 1, r.id)
        }
    });
    rows
}

/// What the rooms service needs to order a membership change among room events: the stream
/// position it comes after, read before its transaction commits and handed to the trigger of
/// migration 0006 (`chat.integration_after_seq`). Only while an endpoint is registered.
#[derive(Clone)]
pub struct OrderHint {
    pub stream: jetstream::stream::Stream,
    pub epoch_id: i32,
    /// An endpoint is registered (kept by the dispatcher).
    pub enabled: Arc<AtomicBool>,
}

impl OrderHint {
    /// Sets the stream's last sequence as the position of the membership changes of `tx`. If
    /// the stream does not answer within 2 s, nothing is set: the sequencer stamps them a moment
    /// after they commit instead (room events published meanwhile may then precede them).
    pub async fn mark(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
        if !self.enabled.load(AtomicOrdering::Relaxed) {
            return Ok(());
        }
        let last = match tokio::time::timeout(Duration::from_secs(2), self.stream.get_info()).await
        {
            Ok(Ok(info)) => info.state.last_sequence,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "stream unreadable: membership event ordered later");
                return Ok(());
            }
            Err(_) => {
                tracing::warn!("stream info too slow: membership event ordered later");
                return Ok(());
            }
        };
        sqlx::query(
            "SELECT set_config('chat.integration_after_seq', $1, true),
                    set_config('chat.integration_epoch_id', $2, true)",
        )
        .bind(last.to_string())
        .bind(self.epoch_id.to_string())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

/// Stamps the membership changes not stamped yet with `after_seq`: `last_seq` is called once
/// they are read, so it returns a stream sequence at or above that of every room event
/// published before they committed.
pub async fn stamp_memberships<F, Fut>(
    pool: &PgPool,
    epoch_id: i32,
    last_seq: F,
) -> Result<usize, sqlx::Error>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Option<u64>>,
{
    let (ids,): (Vec<i64>,) = sqlx::query_as(
        "SELECT COALESCE(array_agg(id), '{}') FROM integration_outbox
         WHERE seq IS NULL AND after_seq IS NULL",
    )
    .fetch_one(pool)
    .await?;
    if ids.is_empty() {
        return Ok(0);
    }
    let Some(last) = last_seq().await else {
        return Ok(0);
    };
    sqlx::query("UPDATE integration_outbox SET after_seq = $2, epoch_id = $3 WHERE id = ANY($1)")
        .bind(&ids)
        .bind(last as i64)
        .bind(epoch_id)
        .execute(pool)
        .await?;
    Ok(ids.len())
}

/// One sequencer round: orders the outbox rows that may be ordered now (room events at or
/// below the archive's ack floor `floor` of epoch `epoch_id`; membership changes whose
/// `after_seq` the floor has passed) and fans them out to the matching endpoints.
/// Returns how many rows it ordered; 0 when another instance holds the sequencer's lock.
pub async fn sequence(pool: &PgPool, epoch_id: i32, floor: u64) -> Result<usize, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let (locked,): (bool,) = sqlx::query_as(
        "SELECT pg_try_advisory_xact_lock(hashtext('chat-history:integration-sequencer'))",
    )
    .fetch_one(&mut *tx)
    .await?;
    if !locked {
        return Ok(0);
    }
    type RowTuple = (
        i64,
        String,
        Option<i32>,
        Option<i64>,
        Option<i64>,
        String,
        String,
        i64,
        String,
        i64,
    );
    // An older epoch's stream is gone: its events committed long ago.
    let events: Vec<RowTuple> = sqlx::query_as(
        "SELECT id, room, epoch_id, seq, after_seq, type, event_id, ts, data, created_at
         FROM integration_outbox
         WHERE seq IS NOT NULL AND (epoch_id <> $1 OR seq <= $2)
         ORDER BY epoch_id, seq LIMIT $3",
    )
    .bind(epoch_id)
    .bind(floor as i64)
    .bind(SEQUENCE_BATCH)
    .fetch_all(&mut *tx)
    .await?;
    let mut rows: Vec<RowTuple> = Vec::new();
    let full = events.len() as i64 >= SEQUENCE_BATCH;
    rows.extend(events);
    if !full {
        let members: Vec<RowTuple> = sqlx::query_as(
            "SELECT id, room, epoch_id, seq, after_seq, type, event_id, ts, data, created_at
             FROM integration_outbox
             WHERE seq IS NULL AND after_seq IS NOT NULL AND (epoch_id <> $1 OR after_seq <= $2)
             ORDER BY id LIMIT $3",
        )
        .bind(epoch_id)
        .bind(floor as i64)
        .bind(SEQUENCE_BATCH)
        .fetch_all(&mut *tx)
        .await?;
        rows.extend(members);
    }
    if rows.is_empty() {
        return Ok(0);
    }
    let rows: Vec<Pending> = rows
        .into_iter()
        .map(
            |(id, room, epoch, seq, after, ty, event_id, ts, data, created_at)| Pending {
                id,
                room,
                seq: seq.map(|s| (epoch.unwrap_or(0), s)),
                after: after.map(|s| (epoch.unwrap_or(0), s)),
                ty,
                event_id,
                ts,
                data,
                created_at,
            },
        )
        .collect();
    let ordered = round_order(rows);
    let n = ordered.len() as i64;
    let (base,): (i64,) = sqlx::query_as("SELECT nextval('integration_pos')")
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query("SELECT setval('integration_pos', $1)")
        .bind(base + n - 1)
        .execute(&mut *tx)
        .await?;
    let mut ids = Vec::with_capacity(ordered.len());
    let mut poss = Vec::with_capacity(ordered.len());
    let mut rooms = Vec::with_capacity(ordered.len());
    let mut types = Vec::with_capacity(ordered.len());
    let mut event_ids = Vec::with_capacity(ordered.len());
    let mut bodies = Vec::with_capacity(ordered.len());
    let mut created = Vec::with_capacity(ordered.len());
    for (i, r) in ordered.iter().enumerate() {
        ids.push(r.id);
        poss.push(base + i as i64);
        rooms.push(r.room.as_str());
        types.push(r.ty.as_str());
        event_ids.push(r.event_id.as_str());
        bodies.push(body(r));
        created.push(r.created_at);
    }
    sqlx::query(
        "INSERT INTO integration_deliveries (endpoint, pos, room, event_id, body, created_at, next_at)
         SELECT e.id, u.pos, u.room, u.event_id, u.body, u.created_at, $7
         FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[])
              AS u(pos, room, type, event_id, body, created_at)
         JOIN integration_endpoints e
           ON u.type = ANY(e.events) AND (e.rooms IS NULL OR u.room = ANY(e.rooms))",
    )
    .bind(&poss)
    .bind(&rooms)
    .bind(&types)
    .bind(&event_ids)
    .bind(&bodies)
    .bind(&created)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM integration_outbox WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(ordered.len())
}

/// The JSON body of an event: `{type, id, ts, room, data}`.
fn body(r: &Pending) -> String {
    format!(
        r#"{{"type":{},"id":{},"ts":{},"room":{},"data":{}}}"#,
        json!(r.ty),
        json!(r.event_id),
        r.ts,
        json!(r.room),
        r.data
    )
}

/// A delivery claimed for one attempt.
#[derive(Debug)]
struct Claimed {
    endpoint: String,
    pos: i64,
    event_id: String,
    body: String,
    attempts: i32,
}

/// Claims the due head of up to `limit` (endpoint, room) queues until `lease_until`.
async fn claim(
    pool: &PgPool,
    now: i64,
    lease_until: i64,
    limit: i64,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let rows: Vec<(String, i64, String, String, i32)> = sqlx::query_as(
        "UPDATE integration_deliveries d SET lease_until = $2, attempts = d.attempts + 1
         FROM (SELECT h.endpoint, h.pos FROM (
                   SELECT DISTINCT ON (endpoint, room) endpoint, pos, next_at, lease_until
                   FROM integration_deliveries ORDER BY endpoint, room, pos) h
               WHERE h.next_at <= $1 AND h.lease_until <= $1
               ORDER BY h.next_at LIMIT $3) c
         WHERE d.endpoint = c.endpoint AND d.pos = c.pos AND d.lease_until <= $1
         RETURNING d.endpoint, d.pos, d.event_id, d.body, d.attempts",
    )
    .bind(now)
    .bind(lease_until)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(endpoint, pos, event_id, body, attempts)| Claimed {
            endpoint,
            pos,
            event_id,
            body,
            attempts,
        })
        .collect())
}

/// An endpoint as the dispatcher uses it.
struct Live {
    target: Target,
    key: Vec<u8>,
}

/// The dispatcher of one chat-history process.
pub struct Integration {
    pub pool: PgPool,
    pub stream: jetstream::stream::Stream,
    pub epoch_id: i32,
    pub config: IntegrationConfig,
    /// Set while an endpoint is registered ([`OrderHint::enabled`]).
    pub enabled: Arc<AtomicBool>,
}

impl Integration {
    /// Orders and delivers until `shutdown`; undelivered rows stay for the next run (or another
    /// instance, once their lease runs out).
    pub async fn run(self, shutdown: CancellationToken) {
        let tls = match webhook::connector(self.config.ca.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "CHAT_INTEGRATION_WEBHOOK_CA unusable: integration webhooks stopped");
                return;
            }
        };
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(CONCURRENCY));
        let tasks = TaskTracker::new();
        let lease = this.config.timeout * 2 + Duration::from_secs(1);
        let mut last_report = tokio::time::Instant::now() - REPORT_EVERY;
        let mut endpoints: Arc<HashMap<String, Live>> = Arc::default();
        while !shutdown.is_cancelled() {
            match this.endpoints().await {
                Ok(e) => {
                    this.enabled.store(!e.is_empty(), AtomicOrdering::Relaxed);
                    endpoints = Arc::new(e);
                }
                Err(e) => tracing::warn!(error = %e, "integration endpoints unreadable"),
            }
            if last_report.elapsed() >= REPORT_EVERY {
                if let Err(e) = report(&this.pool).await {
                    tracing::debug!(error = %e, "integration backlog not measured");
                }
                last_report = tokio::time::Instant::now();
            }
            if !endpoints.is_empty() {
                this.sequence_all().await;
                loop {
                    let free = permits.available_permits();
                    if free == 0 {
                        break;
                    }
                    let now = now_ms();
                    let claimed =
                        match claim(&this.pool, now, now + lease.as_millis() as i64, free as i64)
                            .await
                        {
                            Ok(c) => c,
                            Err(e) => {
                                tracing::warn!(error = %e, "integration deliveries unreadable");
                                break;
                            }
                        };
                    if claimed.is_empty() {
                        break;
                    }
                    for c in claimed {
                        let Ok(permit) = permits.clone().acquire_owned().await else {
                            break;
                        };
                        let (this, tls, endpoints, shutdown) = (
                            this.clone(),
                            tls.clone(),
                            endpoints.clone(),
                            shutdown.clone(),
                        );
                        tasks.spawn(async move {
                            tokio::select! {
                                // Abandoned mid-attempt: the lease runs out, it is tried again.
                                _ = shutdown.cancelled() => {}
                                _ = this.attempt(&tls, &endpoints, c) => {}
                            }
                            drop(permit);
                        });
                    }
                }
            }
            let wait = if endpoints.is_empty() {
                Duration::from_secs(1)
            } else {
                POLL
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        tasks.close();
        tasks.wait().await;
    }

    async fn endpoints(&self) -> Result<HashMap<String, Live>, sqlx::Error> {
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT id, url, secret FROM integration_endpoints")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, url, secret)| {
                let target = Target::parse(&url)?;
                let key = webhook::whsec_key(&secret).ok()?;
                Some((id, Live { target, key }))
            })
            .collect())
    }

    /// Orders everything the archive's floor allows now.
    async fn sequence_all(&self) {
        let stream = self.stream.clone();
        let stamped = stamp_memberships(&self.pool, self.epoch_id, || async move {
            match stream.get_info().await {
                Ok(info) => Some(info.state.last_sequence),
                Err(e) => {
                    tracing::debug!(error = %e, "stream unreadable: membership events wait");
                    None
                }
            }
        })
        .await;
        if let Err(e) = stamped {
            tracing::warn!(error = %e, "integration outbox not stamped");
        }
        let floor = match self.stream.consumer_info(subjects::HISTORY_CONSUMER).await {
            Ok(info) => info.ack_floor.stream_sequence,
            Err(e) => {
                tracing::debug!(error = %e, "no archive consumer yet: nothing ordered");
                return;
            }
        };
        loop {
            match sequence(&self.pool, self.epoch_id, floor).await {
                Ok(n) if n as i64 >= SEQUENCE_BATCH => continue,
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "integration outbox not ordered");
                    return;
                }
            }
        }
    }

    /// One attempt of a claimed delivery, then the row is removed (delivered) or scheduled
    /// again with backoff; every failure is retried, none is dropped.
    async fn attempt(&self, tls: &TlsConnector, endpoints: &HashMap<String, Live>, c: Claimed) {
        let outcome = match endpoints.get(&c.endpoint) {
            Some(live) => {
                let headers = webhook::standard_headers(
                    &live.key,
                    &c.event_id,
                    webhook::now_secs(),
                    c.body.as_bytes(),
                );
                webhook::post_once(
                    &live.target,
                    Some(tls),
                    "chat-history",
                    &headers,
                    c.body.as_bytes(),
                    self.config.timeout,
                )
                .await
                .map_err(|e| e.to_string())
            }
            None => Err("endpoint unusable (bad url or secret in the table)".to_owned()),
        };
        let result = match outcome {
            Ok(()) => {
                metrics::counter!("chat_history_integration_deliveries_total", "endpoint" => c.endpoint.clone())
                    .increment(1);
                sqlx::query("DELETE FROM integration_deliveries WHERE endpoint = $1 AND pos = $2")
                    .bind(&c.endpoint)
                    .bind(c.pos)
                    .execute(&self.pool)
                    .await
                    .map(|_| ())
            }
            Err(e) => {
                metrics::counter!("chat_history_integration_failures_total", "endpoint" => c.endpoint.clone())
                    .increment(1);
                let wait = webhook::backoff(
                    c.attempts.max(1) as u32,
                    self.config.retry_min,
                    self.config.retry_max,
                );
                let level_warn = c.attempts >= 5;
                if level_warn {
                    tracing::warn!(endpoint = c.endpoint, id = c.event_id, attempts = c.attempts, error = %e, "integration webhook failing");
                } else {
                    tracing::debug!(endpoint = c.endpoint, id = c.event_id, attempts = c.attempts, error = %e, "integration webhook attempt failed");
                }
                let mut error = e;
                error.truncate(300);
                sqlx::query(
                    "UPDATE integration_deliveries SET next_at = $3, lease_until = 0, last_error = $4
                     WHERE endpoint = $1 AND pos = $2",
                )
                .bind(&c.endpoint)
                .bind(c.pos)
                .bind(now_ms() + wait.as_millis() as i64)
                .bind(error)
                .execute(&self.pool)
                .await
                .map(|_| ())
            }
        };
        if let Err(e) = result {
            // The lease runs out and the row is claimed again: at least once.
            tracing::warn!(error = %e, "integration delivery not updated");
        }
    }
}

fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Sets the backlog gauges: deliveries waiting per endpoint; events waiting to be ordered; the
/// age of the oldest event not delivered yet, ordered or not (the alert's measure).
async fn report(pool: &PgPool) -> Result<(), sqlx::Error> {
    let rows: Vec<(String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT e.id, count(d.pos), min(d.created_at)
         FROM integration_endpoints e LEFT JOIN integration_deliveries d ON d.endpoint = e.id
         GROUP BY e.id",
    )
    .fetch_all(pool)
    .await?;
    let mut oldest_all: Option<i64> = None;
    for (id, n, oldest) in rows {
        metrics::gauge!("chat_history_integration_pending", "endpoint" => id).set(n as f64);
        oldest_all = earliest(oldest_all, oldest);
    }
    let (waiting, oldest): (i64, Option<i64>) =
        sqlx::query_as("SELECT count(*), min(created_at) FROM integration_outbox")
            .fetch_one(pool)
            .await?;
    metrics::gauge!("chat_history_integration_unordered").set(waiting as f64);
    let age = earliest(oldest_all, oldest).map_or(0.0, |o| (now_ms() - o).max(0) as f64 / 1000.0);
    metrics::gauge!("chat_history_integration_oldest_seconds").set(age);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, room: &str, seq: Option<i64>, after: Option<i64>) -> Pending {
        Pending {
            id,
            room: room.into(),
            seq: seq.map(|s| (1, s)),
            after: after.map(|s| (1, s)),
            ty: if seq.is_some() {
                "message.created"
            } else {
                "member.joined"
            }
            .into(),
            event_id: format!("e{id}"),
            ts: 0,
            data: "{}".into(),
            created_at: 0,
        }
    }

    /// Two writers committed a room's seqs 10 and 9 in that order: they are delivered 9, 10; a
    /// membership change made when the stream ended at 9 comes after 9 and before 10, and two
    /// changes stamped alike keep their commit order.
    #[test]
    fn a_round_orders_by_stream_sequence() {
        let rows = vec![
            row(4, "a", Some(9), None),
            row(1, "a", Some(10), None),
            row(3, "a", None, Some(9)),
            row(2, "a", None, Some(9)),
            row(6, "a", Some(11), None),
        ];
        let order: Vec<i64> = round_order(rows).into_iter().map(|r| r.id).collect();
        assert_eq!(order, [4, 2, 3, 1, 6]);
    }

    #[test]
    fn endpoints_are_checked_and_never_echo_a_secret() {
        let ok = r#"[{"id":"crm","url":"https://crm.example/hook","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw","events":["*"]},
                     {"id":"ops_1","url":"http://10.0.0.5:8080/x","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw","events":["member.left"],"rooms":["general"]}]"#;
        let e = parse_endpoints(ok).unwrap();
        assert_eq!(e[0].events.len(), EVENT_TYPES.len());
        assert_eq!(e[1].rooms.as_deref(), Some(&["general".to_owned()][..]));
        assert!(!format!("{e:?}").contains("MfKQ9r8"));
        for (bad, says) in [
            (
                r#"[{"id":"a b","url":"http://x/","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw","events":["*"]}]"#,
                "endpoint id",
            ),
            (
                r#"[{"id":"a","url":"ftp://x/","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw","events":["*"]}]"#,
                "url",
            ),
            (
                r#"[{"id":"a","url":"http://x/","secret":"hunter2-plain","events":["*"]}]"#,
                "secret",
            ),
            (
                r#"[{"id":"a","url":"http://x/","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw","events":["message.sent"]}]"#,
                "unknown type",
            ),
            (
                r#"[{"id":"a","url":"http://x/","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw","events":[]}]"#,
                "none listed",
            ),
            (
                r#"[{"id":"a","url":"http://x/","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw","events":["*"]},{"id":"a","url":"http://x/","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw","events":["*"]}]"#,
                "twice",
            ),
            (
                r#"[{"id":"a","url":"http://x/","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw","events":["*"],"extra":1}]"#,
                "unknown field",
            ),
        ] {
            let err = parse_endpoints(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        let env = Env::from_pairs([(
            "CHAT_INTEGRATION_WEBHOOKS",
            r#"[{"id":"a","url":"http://x/","secret":"hunter2","events":["*"]}]"#,
        )]);
        let err = IntegrationConfig::from_env(&env).unwrap_err().to_string();
        assert!(
            err.contains("CHAT_INTEGRATION_WEBHOOKS") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn bodies_are_the_documented_json() {
        let r = Pending {
            data: r#"{"seq":7,"from":"alice","client_id":"c1","body":"hi"}"#.into(),
            ..row(1, "general", Some(7), None)
        };
        let v: serde_json::Value = serde_json::from_str(&body(&r)).unwrap();
        assert_eq!(
            v,
            json!({"type":"message.created","id":"e1","ts":0,"room":"general",
                   "data":{"seq":7,"from":"alice","client_id":"c1","body":"hi"}})
        );
    }
}
