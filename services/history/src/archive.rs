//! The archive writer: a durable JetStream consumer that stores every room event in PostgreSQL
//! in batches, acknowledging an event only after the transaction holding it has committed.
//! Redelivery is harmless (`ON CONFLICT DO NOTHING` on the stream sequence); an event that can
//! never be stored is dead-lettered after `max_deliver` deliveries instead of blocking its room.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::pull};
use chat_bus::event::RoomEvent;
use chat_bus::{subjects, trace};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::HistoryConfig;

/// A decoded event ready to be written.
struct Row {
    seq: i64,
    event: RoomEvent,
}

/// The archive writer of one chat-history process; run as many processes as needed.
pub struct Archive {
    pub pool: PgPool,
    pub js: jetstream::Context,
    pub epoch_id: i32,
    pub config: HistoryConfig,
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
    pub async fn run(self, shutdown: CancellationToken) {
        let this = std::sync::Arc::new(self);
        let writers: Vec<_> = (0..this.config.writers.max(1))
            .map(|_| {
                let this = this.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move { this.run_one(shutdown).await })
            })
            .collect();
        for w in writers {
            let _ = w.await;
        }
    }

    async fn run_one(&self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            if let Err(e) = self.consume(&shutdown).await {
                tracing::warn!(error = %e, "archive consumer interrupted, restarting");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }

    async fn consume(&self, shutdown: &CancellationToken) -> Result<(), async_nats::Error> {
        let stream = self.js.get_stream(subjects::STREAM).await?;
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                subjects::HISTORY_CONSUMER,
                consumer_config(self.config.ack_wait),
            )
            .await?;
        let batch_max = self.config.batch_max.max(1);
        let mut messages = chat_bus::stream::pull_messages(&consumer, batch_max).await?;
        while let Some(batch) =
            chat_bus::stream::next_batch(&mut messages, batch_max, self.config.batch_wait, shutdown)
                .await?
        {
            self.handle_batch(batch, shutdown).await;
        }
        Ok(())
    }

    async fn handle_batch(&self, batch: Vec<jetstream::Message>, shutdown: &CancellationToken) {
        let mut rows = Vec::with_capacity(batch.len());
        let mut kept = Vec::with_capacity(batch.len());
        let mut spans = Vec::with_capacity(batch.len());
        for msg in batch {
            let Ok(info) = msg.info() else { continue };
            let (seq, delivered) = (info.stream_sequence, info.delivered);
            if delivered > 1 {
                metrics::counter!("history_redeliveries_total").increment(1);
            }
            match RoomEvent::decode(&msg.payload) {
                Ok(event) => {
                    let span = tracing::info_span!("history.archive", room = %event.room, seq);
                    trace::continue_from(&span, msg.headers.as_ref());
                    spans.push(span);
                    rows.push(Row {
                        seq: seq as i64,
                        event,
                    });
                    kept.push(msg);
                }
                Err(e) => {
                    self.dead_letter(&msg, seq, &format!("undecodable event: {e}"))
                        .await
                }
            }
        }
        if rows.is_empty() {
            return;
        }
        let started = Instant::now();
        let mut delay = Duration::from_millis(100);
        let mut last_progress = Instant::now();
        loop {
            match insert_rows(&self.pool, self.epoch_id, &rows).await {
                Ok(()) => break,
                Err(e) if is_data_error(&e) => {
                    tracing::warn!(error = %e, "batch refused, writing its events one by one");
                    self.isolate(rows, kept).await;
                    return;
                }
                Err(e) => {
                    metrics::counter!("history_write_errors_total").increment(1);
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "archive write failed");
                    if last_progress.elapsed() > self.config.ack_wait / 3 {
                        for m in &kept {
                            let _ = m.ack_with(AckKind::Progress).await;
                        }
                        last_progress = Instant::now();
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        metrics::histogram!("history_batch_size").record(rows.len() as f64);
        metrics::histogram!("history_batch_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("history_archived_total").increment(rows.len() as u64);
        for m in &kept {
            if let Err(e) = m.ack().await {
                tracing::debug!(error = %e, "ack not sent; the event will be redelivered and skipped");
            }
        }
        drop(spans);
    }

    /// Writes events one by one after a batch was refused, dead-lettering those that keep failing.
    async fn isolate(&self, rows: Vec<Row>, kept: Vec<jetstream::Message>) {
        for (row, msg) in rows.into_iter().zip(kept) {
            let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
            match insert_rows(&self.pool, self.epoch_id, std::slice::from_ref(&row)).await {
                Ok(()) => {
                    metrics::counter!("history_archived_total").increment(1);
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

    /// Moves an event to the dead-letter stream and stops its redelivery.
    async fn dead_letter(&self, msg: &jetstream::Message, seq: u64, reason: &str) {
        metrics::counter!("history_dead_letter_total").increment(1);
        tracing::error!(seq, reason, "event dead-lettered");
        let mut headers = msg.headers.clone().unwrap_or_default();
        headers.insert("Chat-Dlq-Stream-Seq", seq.to_string().as_str());
        headers.insert(
            "Chat-Dlq-Reason",
            reason.chars().take(200).collect::<String>().as_str(),
        );
        headers.insert("Chat-Dlq-Subject", msg.subject.as_str());
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

/// A failure of the data itself (it will fail again), as opposed to an outage.
fn is_data_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23")),
        _ => false,
    }
}

/// One multi-row insert of a batch; rows already archived are skipped.
async fn insert_rows(pool: &PgPool, epoch_id: i32, rows: &[Row]) -> Result<(), sqlx::Error> {
    let mut seqs = Vec::with_capacity(rows.len());
    let mut rooms = Vec::with_capacity(rows.len());
    let mut senders = Vec::with_capacity(rows.len());
    let mut bodies = Vec::with_capacity(rows.len());
    let mut client_ids = Vec::with_capacity(rows.len());
    let mut tss = Vec::with_capacity(rows.len());
    for r in rows {
        seqs.push(r.seq);
        rooms.push(r.event.room.as_str());
        senders.push(r.event.from.as_str());
        bodies.push(r.event.body.as_str());
        client_ids.push(r.event.client_id.as_str());
        tss.push(r.event.ts);
    }
    sqlx::query(
        "INSERT INTO messages (epoch_id, seq, room, sender, body, client_id, ts)
         SELECT $1, * FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[])
         ON CONFLICT (epoch_id, seq) DO NOTHING",
    )
    .bind(epoch_id)
    .bind(&seqs)
    .bind(&rooms)
    .bind(&senders)
    .bind(&bodies)
    .bind(&client_ids)
    .bind(&tss)
    .execute(pool)
    .await?;
    Ok(())
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
