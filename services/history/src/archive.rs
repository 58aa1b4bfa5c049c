//! The archive writer: a durable JetStream consumer that stores every room event in PostgreSQL
//! in batches, acknowledging an event only after the transaction holding it has committed.
//! Redelivery is harmless (`ON CONFLICT DO NOTHING` on the stream sequence); an event that can
//! never be stored is dead-lettered after `max_deliver` deliveries instead of blocking its room.
//!
//! A stored entry that is not a valid event (protocol.md#nats, [`chat_bus::event::validate`]) is
//! dead-lettered with its reason at once, acknowledged and skipped: never archived or counted.
//! The writer loops are supervised: one that ends or panics is restarted with a backoff, and
//! while any is not running the service is not ready ([`WriterHealth`]).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer::pull};
use chat_bus::event::{self, Event, EventKind, Invalid, RoomEvent, Target};
use chat_bus::lookup::TargetLookup;
use chat_bus::{subjects, trace};
use chat_runtime::admin::ReadinessCheck;
use chat_runtime::consumer::{BatchLoop, InHand};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::HistoryConfig;

/// A valid event ready to be written.
struct Row {
    seq: i64,
    event: Event,
}

pub use chat_bus::event::{DLQ_REASON_HEADER, DLQ_SEQ_HEADER, DLQ_SUBJECT_HEADER};

/// How many of the writer loops are running; the service is ready only while all are.
#[derive(Debug, Clone)]
pub struct WriterHealth {
    wanted: usize,
    running: Arc<AtomicUsize>,
}

impl WriterHealth {
    pub fn new(wanted: usize) -> Self {
        WriterHealth {
            wanted,
            running: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    pub fn all_running(&self) -> bool {
        self.running() >= self.wanted
    }

    /// `/readyz`: not ready while a writer is not running.
    pub fn readiness(&self) -> ReadinessCheck {
        let this = self.clone();
        Arc::new(move || {
            let (running, wanted) = (this.running(), this.wanted);
            Box::pin(async move {
                if running >= wanted {
                    Ok(())
                } else {
                    Err(format!("{running} of {wanted} archive writers running"))
                }
            })
        })
    }
}

/// Marks one writer as running for as long as it lives (a panic unwinds through it too).
struct Running(Arc<AtomicUsize>);

impl Running {
    fn start(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Running(counter.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs `health.wanted` copies of the loop `make()` until `shutdown`, restarting any that ends
/// or panics (after 100 ms, doubling up to 5 s while restarts keep failing within a minute).
pub async fn supervise<F, Fut>(health: WriterHealth, shutdown: CancellationToken, make: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let make = Arc::new(make);
    let slots: Vec<_> = (0..health.wanted.max(1))
        .map(|slot| {
            let make = make.clone();
            let health = health.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut backoff = Duration::from_millis(100);
                loop {
                    let started = Instant::now();
                    let running = Running::start(&health.running);
                    let fut = make();
                    let result = tokio::spawn(async move {
                        let _running = running;
                        fut.await
                    })
                    .await;
                    if shutdown.is_cancelled() {
                        return;
                    }
                    metrics::counter!("chat_history_writer_restarts_total").increment(1);
                    match result {
                        Err(e) if e.is_panic() => {
                            tracing::error!(slot, "archive writer panicked; restarting")
                        }
                        _ => tracing::error!(slot, "archive writer ended; restarting"),
                    }
                    if started.elapsed() > Duration::from_secs(60) {
                        backoff = Duration::from_millis(100);
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            })
        })
        .collect();
    for s in slots {
        let _ = s.await;
    }
}

/// The archive writer of one chat-history process; run as many processes as needed.
pub struct Archive {
    pub pool: PgPool,
    pub js: jetstream::Context,
    /// The `CHAT` stream, whose consumer this is.
    pub stream: jetstream::stream::Stream,
    pub epoch_id: i32,
    pub config: HistoryConfig,
    /// What earlier events an entry refers to, when the archive does not hold them yet.
    pub lookup: TargetLookup,
}

/// The consumer every chat-history process shares.
pub fn consumer_config(ack_wait: Duration) -> pull::Config {
    pull::Config {
        durable_name: Some(subjects::HISTORY_CONSUMER.to_owned()),
        description: Some("chat-history: archive every event in PostgreSQL".into()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait,
        max_ack_pending: 20_000,
        ..Default::default()
    }
}

impl Archive {
    /// Consumes until `shutdown`; reconnects to the consumer after any failure.
    /// Runs `HISTORY_WRITERS` writer loops on the shared consumer: each pulls, writes and acks
    /// its own batches, so one batch's database round trip overlaps the next one's delivery.
    /// The loops are supervised (restarted if one ends or panics) and reported in `health`.
    pub async fn run(self, health: WriterHealth, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let stop = shutdown.clone();
        supervise(health, shutdown, move || {
            let this = this.clone();
            let shutdown = stop.clone();
            async move { this.run_one(shutdown).await }
        })
        .await;
    }

    async fn run_one(&self, shutdown: CancellationToken) {
        let config = &self.config;
        BatchLoop::new(
            consumer_config(config.ack_wait),
            config.batch_max,
            config.batch_wait,
        )
        .run(&self.stream, &shutdown, |batch| {
            self.handle_batch(batch, &shutdown)
        })
        .await;
    }

    async fn handle_batch(&self, batch: Vec<jetstream::Message>, shutdown: &CancellationToken) {
        let mut rows = Vec::with_capacity(batch.len());
        let mut kept = Vec::with_capacity(batch.len());
        let mut spans = Vec::with_capacity(batch.len());
        for (msg, seq, checked) in self.classify(batch).await {
            match checked {
                Ok(event) => {
                    let span = tracing::info_span!(
                        "history.archive",
                        otel.kind = "consumer",
                        messaging.system = trace::MESSAGING_SYSTEM,
                        messaging.operation.type = "process",
                        messaging.destination.name = %msg.subject,
                        messaging.consumer.group.name = subjects::HISTORY_CONSUMER,
                        messaging.message.id = trace::message_id(msg.headers.as_ref()),
                        room = %event.room(),
                        seq
                    );
                    trace::continue_from(&span, msg.headers.as_ref());
                    spans.push(span);
                    rows.push(Row {
                        seq: seq as i64,
                        event,
                    });
                    kept.push(msg);
                }
                Err(invalid) => {
                    metrics::counter!("chat_history_invalid_entries_total", "reason" => invalid.code())
                        .increment(1);
                    self.dead_letter(&msg, seq, &invalid.reason()).await
                }
            }
        }
        if rows.is_empty() {
            return;
        }
        let started = Instant::now();
        let in_hand = InHand {
            ack_wait: self.config.ack_wait,
            errors: "chat_history_write_errors_total",
        };
        let written = in_hand
            .retry_while(
                "archive write",
                &kept,
                shutdown,
                |e| !is_data_error(e),
                || insert_rows(&self.pool, self.epoch_id, &rows),
            )
            .await;
        match written {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                tracing::warn!(error = %e, "batch refused, writing its events one by one");
                self.isolate(rows, kept).await;
                return;
            }
            None => return,
        }
        metrics::histogram!("chat_history_batch_size").record(rows.len() as f64);
        metrics::histogram!("chat_history_batch_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("chat_history_archived_total").increment(rows.len() as u64);
        for m in &kept {
            if let Err(e) = m.ack().await {
                tracing::debug!(error = %e, "ack not sent; the event will be redelivered and skipped");
            }
        }
        drop(spans);
    }

    /// Which entries of a batch are events (protocol.md#nats), in delivery order. A kind whose
    /// validity depends on earlier events looks them up here: in the archive (one query per
    /// batch), among the batch's own earlier events, then in the stream ([`TargetLookup`]).
    /// An entry whose targets cannot be looked up now (the stream unreachable) is redelivered
    /// later rather than judged.
    async fn classify(
        &self,
        batch: Vec<jetstream::Message>,
    ) -> Vec<(jetstream::Message, u64, Result<Event, Invalid>)> {
        let mut out = Vec::with_capacity(batch.len());
        let mut pending = Vec::with_capacity(batch.len());
        let mut refs = Vec::new();
        for msg in batch {
            let Ok(info) = msg.info() else { continue };
            let seq = info.stream_sequence;
            if info.delivered > 1 {
                metrics::counter!("chat_history_redeliveries_total").increment(1);
            }
            let candidate = event::validate_stored(&msg.subject, &msg.payload);
            if let Ok(c) = &candidate {
                refs.extend(c.references());
            }
            pending.push((msg, seq, candidate));
        }
        let mut archived = if refs.is_empty() {
            std::collections::HashMap::new()
        } else {
            match archived_targets(&self.pool, self.epoch_id, &refs).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::debug!(error = %e, "archive lookup failed; asking the stream");
                    std::collections::HashMap::new()
                }
            }
        };
        for (msg, seq, candidate) in pending {
            let checked = match candidate {
                Err(invalid) => Err(invalid),
                Ok(c) if c.references().is_empty() => c.resolve(|_| None),
                Ok(c) => {
                    let room = c.peek().room().clone();
                    let known = c
                        .references()
                        .into_iter()
                        .all(|r| archived.get(&r).is_some_and(|(r_room, _)| *r_room == room));
                    if known {
                        c.resolve(|r| archived.get(&r).map(|(_, t)| t.clone()))
                    } else {
                        match self.lookup.resolve(&room, seq, c).await {
                            Ok(checked) => checked,
                            Err(e) => {
                                tracing::warn!(seq, error = %e, "targets not readable now; redelivering");
                                let _ = msg
                                    .ack_with(AckKind::Nak(Some(Duration::from_millis(500))))
                                    .await;
                                continue;
                            }
                        }
                    }
                }
            };
            // Later entries of the batch may refer to this one.
            match &checked {
                Ok(e) => {
                    let t = Target::of(e);
                    self.lookup.remember(e.room(), seq, Some(t.clone()));
                    archived.insert(seq, (e.room().clone(), t));
                }
                Err(_) => {
                    if let Some(room) = subjects::room_of(&msg.subject) {
                        self.lookup.remember(&room, seq, None);
                    }
                }
            }
            out.push((msg, seq, checked));
        }
        out
    }

    /// Writes events one by one after a batch was refused, dead-lettering those that keep failing.
    async fn isolate(&self, rows: Vec<Row>, kept: Vec<jetstream::Message>) {
        for (row, msg) in rows.into_iter().zip(kept) {
            let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
            match insert_rows(&self.pool, self.epoch_id, std::slice::from_ref(&row)).await {
                Ok(()) => {
                    metrics::counter!("chat_history_archived_total").increment(1);
                    let _ = msg.ack().await;
                }
                Err(e) if is_data_error(&e) && delivered as u64 >= self.config.max_deliver => {
                    self.dead_letter(
                        &msg,
                        row.seq as u64,
                        &format!("refused by the database: {e}"),
                    )
                    .await;
                }
                Err(_) => {
                    let _ = msg
                        .ack_with(AckKind::Nak(Some(Duration::from_millis(200))))
                        .await;
                }
            }
        }
    }

    /// Moves an entry to the dead-letter stream with its reason and stops its redelivery; if the
    /// dead-letter stream cannot take it, the entry is redelivered later (nothing is dropped).
    async fn dead_letter(&self, msg: &jetstream::Message, seq: u64, reason: &str) {
        metrics::counter!("chat_history_dead_letter_total").increment(1);
        let reason = event::header_safe(reason, 200);
        tracing::error!(seq, reason, subject = %msg.subject, "entry dead-lettered");
        let headers = dead_letter_headers(msg.headers.as_ref(), seq, &reason, &msg.subject);
        let published = match self
            .js
            .publish_with_headers(
                subjects::dead_letter(subjects::HISTORY_CONSUMER),
                headers,
                msg.payload.clone(),
            )
            .await
        {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        if published {
            let _ = msg.ack_with(AckKind::Term).await;
        } else {
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
        }
    }
}

/// The headers of a dead-lettered entry: its own (they came through NATS, so they are valid
/// header values) plus where it came from and why. Never panics: `reason` is made header-safe.
fn dead_letter_headers(
    original: Option<&HeaderMap>,
    seq: u64,
    reason: &str,
    subject: &str,
) -> HeaderMap {
    let mut headers = original.cloned().unwrap_or_default();
    // One dead letter per stored entry, however often it is retried.
    headers.insert(event::MSG_ID_HEADER, format!("dlq-{seq}").as_str());
    headers.insert(DLQ_SEQ_HEADER, seq.to_string().as_str());
    headers.insert(DLQ_REASON_HEADER, event::header_safe(reason, 200).as_str());
    headers.insert(
        DLQ_SUBJECT_HEADER,
        event::header_safe(subject, 300).as_str(),
    );
    headers
}

/// A failure of the data itself (it will fail again), as opposed to an outage.
fn is_data_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23")),
        _ => false,
    }
}

/// The archived valid messages among `seqs`: their room and what a reference needs of them.
async fn archived_targets(
    pool: &PgPool,
    epoch_id: i32,
    seqs: &[u64],
) -> Result<std::collections::HashMap<u64, (chat_proto::RoomId, Target)>, sqlx::Error> {
    let seqs: Vec<i64> = seqs.iter().map(|&s| s as i64).collect();
    let rows: Vec<(i64, String, String, Option<i64>)> = sqlx::query_as(
        "SELECT seq, room, sender, thread FROM messages
         WHERE epoch_id = $1 AND seq = ANY($2) AND kind = 'message'",
    )
    .bind(epoch_id)
    .bind(&seqs)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(seq, room, sender, thread)| {
            let room = chat_proto::RoomId::new(room).ok()?;
            let from = chat_proto::UserId::new(sender).ok()?;
            let target = Target {
                is_message: true,
                from,
                thread: thread.map(|t| t as u64),
            };
            Some((seq as u64, (room, target)))
        })
        .collect())
}

/// Writes a batch of valid events; rows already archived are skipped. Every kind is a row of
/// `messages`; a change also updates the state of the message it targets (protocol.md#ws
/// Lifecycle), in the same transaction: all of a batch commits or none does.
///
/// The writer loops of every process commit batches concurrently, so a change may commit before
/// its target (or two changes of one message out of order). Each transaction therefore locks
/// the rooms it writes (in a fixed order), and recomputes the state of every message it touches
/// from all its archived changes: the state is the same whatever order the batches commit in.
/// A room the batch only adds messages to is locked shared: new messages of different batches
/// never touch each other's state, so such batches commit in parallel (before, every batch
/// spanning many rooms waited for every other one, and the writers ran one at a time,
/// docs/benchmarks.md "Search"); a room with a change in the batch is locked exclusively, so a
/// change and its target, or two changes, still never commit unseen by each other.
async fn insert_rows(pool: &PgPool, epoch_id: i32, rows: &[Row]) -> Result<(), sqlx::Error> {
    let mut columns = EventColumns::with_capacity(rows.len());
    let mut rooms: Vec<&str> = Vec::with_capacity(rows.len());
    let mut exclusive: Vec<bool> = Vec::with_capacity(rows.len());
    let mut changed: Vec<i64> = Vec::new();
    let mut has_changes = false;
    for r in rows {
        let e = r.event.event();
        columns.push(r.seq, e);
        rooms.push(e.room.as_str());
        exclusive.push(e.target.is_some());
        if let Some(t) = e.target {
            changed.push(t as i64);
            has_changes = true;
        }
    }
    let mut tx = pool.begin().await?;
    lock_rooms(&mut tx, &rooms, &exclusive).await?;
    let inserted = columns.insert(&mut tx, epoch_id).await?;
    // Integration webhooks of the events this transaction added (not of a redelivery).
    if !inserted.is_empty() {
        let added: std::collections::HashSet<i64> = inserted.into_iter().collect();
        let events: Vec<(i64, &RoomEvent)> = rows
            .iter()
            .filter(|r| added.contains(&r.seq))
            .map(|r| (r.seq, r.event.event()))
            .collect();
        crate::integration::queue_room_events(&mut tx, epoch_id, &events).await?;
    }
    // Messages of this batch whose changes committed first.
    let (early,): (Vec<i64>,) = sqlx::query_as(
        "SELECT COALESCE(array_agg(DISTINCT target), '{}') FROM messages
         WHERE epoch_id = $1 AND target = ANY($2)",
    )
    .bind(epoch_id)
    .bind(&columns.message_seqs)
    .fetch_one(&mut *tx)
    .await?;
    changed.extend(early);
    if has_changes || !changed.is_empty() {
        changed.sort_unstable();
        changed.dedup();
        recompute_state(&mut tx, epoch_id, &changed).await?;
    }
    tx.commit().await
}

/// Locks the rooms a batch writes for its transaction (see [`insert_rows`]): room `i`
/// exclusively if `exclusive[i]` (the batch changes a message there), shared otherwise. One lock
/// per key (rooms whose hashes collide share one, in its strongest mode), taken in key order, so
/// two batches never wait for each other in a cycle; the keys are those of the membership
/// trigger (migration 0006), which locks exclusively. PostgreSQL computes output expressions
/// after the sort when ORDER BY does not refer to them (SELECT reference, "The SELECT List"), so
/// the locks are taken in that order.
pub async fn lock_rooms(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    rooms: &[&str],
    exclusive: &[bool],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT CASE WHEN x THEN pg_advisory_xact_lock(k)::text
                     ELSE pg_advisory_xact_lock_shared(k)::text END
         FROM (SELECT hashtext('chat-history:' || u.r) AS k, bool_or(u.x) AS x
               FROM UNNEST($1::text[], $2::bool[]) AS u(r, x) GROUP BY 1) l
         ORDER BY k",
    )
    .bind(rooms)
    .bind(exclusive)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Recomputes the stored state of messages `targets` from every archived change of each.
async fn recompute_state(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    epoch_id: i32,
    targets: &[i64],
) -> Result<(), sqlx::Error> {
    let bases: Vec<(i64, String)> = sqlx::query_as(
        "SELECT seq, COALESCE(sent_body, body) FROM messages
         WHERE epoch_id = $1 AND seq = ANY($2) AND kind = 'message'",
    )
    .bind(epoch_id)
    .bind(targets)
    .fetch_all(&mut **tx)
    .await?;
    if bases.is_empty() {
        return Ok(());
    }
    let found: Vec<i64> = bases.iter().map(|(s, _)| *s).collect();
    let changes = crate::query::pg_changes(&mut **tx, epoch_id, &found, None).await?;
    let mut seqs = Vec::with_capacity(bases.len());
    let mut bodies = Vec::with_capacity(bases.len());
    let mut deleted = Vec::with_capacity(bases.len());
    let mut edited = Vec::with_capacity(bases.len());
    let mut versions = Vec::with_capacity(bases.len());
    for (seq, body) in bases {
        let m = crate::state::fold(
            seq as u64,
            body,
            changes.get(&(seq as u64)).into_iter().flatten(),
        );
        seqs.push(seq);
        bodies.push(m.body);
        deleted.push(m.state.deleted);
        edited.push(m.state.edited);
        versions.push(m.state.version as i64);
    }
    sqlx::query(
        "UPDATE messages m SET body = u.body, deleted = u.deleted, edited_ts = u.edited,
                version = u.version
         FROM UNNEST($2::bigint[], $3::text[], $4::bool[], $5::bigint[], $6::bigint[])
              AS u(seq, body, deleted, edited, version)
         WHERE m.epoch_id = $1 AND m.seq = u.seq",
    )
    .bind(epoch_id)
    .bind(&seqs)
    .bind(&bodies)
    .bind(&deleted)
    .bind(&edited)
    .bind(&versions)
    .execute(&mut **tx)
    .await?;
    // Nothing of a deleted message's text is kept: neither as sent nor in its edits.
    let gone: Vec<i64> = seqs
        .iter()
        .zip(&deleted)
        .filter(|(_, d)| **d)
        .map(|(s, _)| *s)
        .collect();
    if !gone.is_empty() {
        sqlx::query(
            "UPDATE messages SET sent_body = '', body = ''
             WHERE epoch_id = $1 AND (seq = ANY($2) OR (kind = 'edit' AND target = ANY($2)))",
        )
        .bind(epoch_id)
        .bind(&gone)
        .execute(&mut **tx)
        .await?;
        crate::integration::scrub_deleted(tx, epoch_id, &gone).await?;
    }
    Ok(())
}

/// The events of a batch, as the columns of one multi-row insert.
#[derive(Default)]
struct EventColumns<'a> {
    seqs: Vec<i64>,
    rooms: Vec<&'a str>,
    senders: Vec<&'a str>,
    bodies: Vec<&'a str>,
    sent_bodies: Vec<Option<&'a str>>,
    client_ids: Vec<&'a str>,
    tss: Vec<i64>,
    kinds: Vec<&'static str>,
    targets: Vec<Option<i64>>,
    emojis: Vec<Option<&'a str>>,
    ons: Vec<Option<bool>>,
    reply_tos: Vec<Option<i64>>,
    threads: Vec<Option<i64>>,
    /// The seqs of the batch's `message` events.
    message_seqs: Vec<i64>,
}

impl<'a> EventColumns<'a> {
    fn with_capacity(n: usize) -> Self {
        EventColumns {
            seqs: Vec::with_capacity(n),
            rooms: Vec::with_capacity(n),
            senders: Vec::with_capacity(n),
            bodies: Vec::with_capacity(n),
            sent_bodies: Vec::with_capacity(n),
            client_ids: Vec::with_capacity(n),
            tss: Vec::with_capacity(n),
            kinds: Vec::with_capacity(n),
            targets: Vec::with_capacity(n),
            emojis: Vec::with_capacity(n),
            ons: Vec::with_capacity(n),
            reply_tos: Vec::with_capacity(n),
            threads: Vec::with_capacity(n),
            message_seqs: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, seq: i64, e: &'a RoomEvent) {
        self.seqs.push(seq);
        self.rooms.push(e.room.as_str());
        self.senders.push(e.from.as_str());
        let is_message = e.kind == EventKind::Message;
        // `body` is a message's current text only (a search looks there); an edit's text is
        // in `sent_body`.
        self.bodies
            .push(if is_message { e.body.as_str() } else { "" });
        self.sent_bodies
            .push(e.kind.has_body().then_some(e.body.as_str()));
        self.client_ids.push(e.client_id.as_str());
        self.tss.push(e.ts);
        self.kinds.push(e.kind.as_str());
        self.targets.push(e.target.map(|t| t as i64));
        self.emojis.push(e.emoji.as_deref());
        self.ons.push(e.on);
        self.reply_tos.push(e.reply_to.map(|t| t as i64));
        self.threads.push(e.thread.map(|t| t as i64));
        if is_message {
            self.message_seqs.push(seq);
        }
    }

    async fn insert(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        epoch_id: i32,
    ) -> Result<Vec<i64>, sqlx::Error> {
        if self.seqs.is_empty() {
            return Ok(Vec::new());
        }
        let inserted: Vec<(i64,)> = sqlx::query_as(
            "INSERT INTO messages (epoch_id, seq, room, sender, body, sent_body, client_id, ts,
                                   kind, target, emoji, reaction_on, reply_to, thread, version)
             SELECT $1, u.seq, u.room, u.sender, u.body, u.sent_body, u.client_id, u.ts, u.kind,
                    u.target, u.emoji, u.reaction_on, u.reply_to, u.thread,
                    CASE WHEN u.kind = 'message' THEN u.seq END
             FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                         $8::bigint[], $9::text[], $10::bigint[], $11::text[], $12::bool[],
                         $13::bigint[], $14::bigint[])
                  AS u(seq, room, sender, body, sent_body, client_id, ts, kind, target, emoji,
                       reaction_on, reply_to, thread)
             ON CONFLICT (epoch_id, seq) DO NOTHING
             RETURNING seq",
        )
        .bind(epoch_id)
        .bind(&self.seqs)
        .bind(&self.rooms)
        .bind(&self.senders)
        .bind(&self.bodies)
        .bind(&self.sent_bodies)
        .bind(&self.client_ids)
        .bind(&self.tss)
        .bind(&self.kinds)
        .bind(&self.targets)
        .bind(&self.emojis)
        .bind(&self.ons)
        .bind(&self.reply_tos)
        .bind(&self.threads)
        .fetch_all(&mut **tx)
        .await?;
        Ok(inserted.into_iter().map(|(s,)| s).collect())
    }
}

/// The id of `epoch` in the archive, registering it on first sight.
pub async fn epoch_id(pool: &PgPool, epoch: &str) -> Result<i32, sqlx::Error> {
    sqlx::query("INSERT INTO epochs (epoch) VALUES ($1) ON CONFLICT (epoch) DO NOTHING")
        .bind(epoch)
        .execute(pool)
        .await?;
    let (id,): (i32,) = sqlx::query_as("SELECT id FROM epochs WHERE epoch = $1")
        .bind(epoch)
        .fetch_one(pool)
        .await?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        for _ in 0..100_000 {
            if cond() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("never happened: {what}");
    }

    async fn ready(health: &WriterHealth) -> Result<(), String> {
        (health.readiness())().await
    }

    /// Issue 15 item 2: a writer that panicked was never restarted and `/readyz` said ready.
    #[tokio::test(start_paused = true)]
    async fn a_panicked_writer_is_restarted_and_not_ready_meanwhile() {
        let health = WriterHealth::new(2);
        let starts = Arc::new(AtomicU32::new(0));
        let boom = Arc::new(tokio::sync::Notify::new());
        let shutdown = CancellationToken::new();
        let sup = tokio::spawn(supervise(health.clone(), shutdown.clone(), {
            let (starts, boom, shutdown) = (starts.clone(), boom.clone(), shutdown.clone());
            move || {
                let n = starts.fetch_add(1, Ordering::SeqCst);
                let (boom, shutdown) = (boom.clone(), shutdown.clone());
                async move {
                    if n == 0 {
                        boom.notified().await;
                        panic!("a writer's bug");
                    }
                    shutdown.cancelled().await;
                }
            }
        }));
        until("both writers run", || health.all_running()).await;
        assert_eq!(ready(&health).await, Ok(()));
        boom.notify_one();
        until("the panicked writer is down", || health.running() == 1).await;
        let not_ready = ready(&health).await.unwrap_err();
        assert!(not_ready.contains("1 of 2"), "{not_ready}");
        // Restarted after its backoff.
        tokio::time::advance(Duration::from_millis(150)).await;
        until("the writer is back", || health.all_running()).await;
        assert_eq!(starts.load(Ordering::SeqCst), 3);
        assert_eq!(ready(&health).await, Ok(()));
        shutdown.cancel();
        sup.await.unwrap();
        assert_eq!(health.running(), 0);
    }

    #[test]
    fn dead_letter_headers_never_panic_and_carry_a_safe_reason() {
        let mut original = HeaderMap::new();
        original.insert("traceparent", "00-abc-def-01");
        original.insert(event::MSG_ID_HEADER, "bot:c1");
        let h = dead_letter_headers(Some(&original), 42, "kind \"x\ny\"\r\n", "chat.room.r.msg");
        assert_eq!(h.get(DLQ_REASON_HEADER).unwrap().as_str(), "kind \"x?y\"??");
        assert_eq!(h.get(DLQ_SEQ_HEADER).unwrap().as_str(), "42");
        assert_eq!(h.get(event::MSG_ID_HEADER).unwrap().as_str(), "dlq-42");
        assert_eq!(h.get("traceparent").unwrap().as_str(), "00-abc-def-01");
    }
}
