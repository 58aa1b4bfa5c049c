//! `chatctl consumers`: how far behind each durable consumer is.
//!
//! Every stream's durable consumers (the services' own streams; key-value buckets are skipped),
//! so a consumer added later is listed without a change here. `lag` is what the consumer still
//! owes: events not yet delivered (`pending`) plus delivered but unacknowledged (`ack_pending`);
//! `oldest_unacked_s` is the age of the first event above its ack floor, the
//! `chat_consumer_lag_seconds` the services export.

use futures::TryStreamExt;
use serde::Serialize;

use crate::{Ctx, push_json, push_table};

/// One durable consumer's state.
#[derive(Debug, Serialize)]
pub struct ConsumerLag {
    pub stream: String,
    pub consumer: String,
    /// Events matching its filter not yet delivered.
    pub pending: u64,
    /// Delivered, not yet acknowledged.
    pub ack_pending: u64,
    /// Delivered more than once and still unacknowledged.
    pub redelivered: u64,
    /// Pull requests waiting: 0 usually means no instance is consuming.
    pub waiting: u64,
    /// Stream seq of the last event delivered.
    pub last_delivered_seq: u64,
    /// Stream seq below which everything is acknowledged.
    pub ack_floor_seq: u64,
    /// The stream's newest seq.
    pub stream_last_seq: u64,
    /// `pending + ack_pending`.
    pub lag: u64,
    /// Age in seconds of the oldest unacknowledged event (absent when there is none, or the
    /// stream does not allow direct gets).
    pub oldest_unacked_s: Option<f64>,
}

pub async fn collect(ctx: &Ctx, only: Option<&str>) -> anyhow::Result<Vec<ConsumerLag>> {
    let mut names: Vec<String> = match only {
        Some(s) => vec![s.to_owned()],
        // Key-value and object stores are streams too; their consumers are watchers.
        None => ctx
            .js
            .stream_names()
            .try_collect::<Vec<String>>()
            .await
            .map_err(|e| anyhow::anyhow!("cannot list the streams: {e}"))?
            .into_iter()
            .filter(|n| !n.starts_with("KV_") && !n.starts_with("OBJ_"))
            .collect(),
    };
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let mut stream = match ctx.js.get_stream(&name).await {
            Ok(s) => s,
            Err(e) if crate::is_stream_not_found(&e) => {
                anyhow::bail!("no stream named {name}")
            }
            Err(e) => anyhow::bail!("cannot read stream {name}: {e}"),
        };
        let info = stream
            .info()
            .await
            .map_err(|e| anyhow::anyhow!("cannot read stream {name}: {e}"))?
            .clone();
        let consumers: Vec<async_nats::jetstream::consumer::Info> = stream
            .consumers()
            .try_collect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot list the consumers of {name}: {e}"))?;
        let mut consumers: Vec<_> = consumers
            .into_iter()
            .filter(|c| c.config.durable_name.is_some())
            .collect();
        consumers.sort_by(|a, b| a.name.cmp(&b.name));
        for c in consumers {
            let oldest = if (c.num_pending > 0 || c.num_ack_pending > 0) && info.config.allow_direct
            {
                let filter = match c.config.filter_subject.as_str() {
                    "" => ">",
                    f => f,
                };
                stream
                    .direct_get_next_for_subject(filter, Some(c.ack_floor.stream_sequence + 1))
                    .await
                    .ok()
                    .map(|m| age_s(m.time))
            } else {
                None
            };
            out.push(ConsumerLag {
                stream: name.clone(),
                consumer: c.name.clone(),
                pending: c.num_pending,
                ack_pending: c.num_ack_pending as u64,
                redelivered: c.num_redelivered as u64,
                waiting: c.num_waiting as u64,
                last_delivered_seq: c.delivered.stream_sequence,
                ack_floor_seq: c.ack_floor.stream_sequence,
                stream_last_seq: info.state.last_sequence,
                lag: c.num_pending + c.num_ack_pending as u64,
                oldest_unacked_s: oldest,
            });
        }
    }
    Ok(out)
}

fn age_s(t: time::OffsetDateTime) -> f64 {
    let age = time::OffsetDateTime::now_utc() - t;
    (age.as_seconds_f64() * 1000.0).round().max(0.0) / 1000.0
}

pub async fn run(ctx: &Ctx, only: Option<&str>, out: &mut String) -> anyhow::Result<()> {
    let lags = collect(ctx, only).await?;
    if ctx.json {
        push_json(out, &lags);
        return Ok(());
    }
    if lags.is_empty() {
        out.push_str("no durable consumers\n");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = lags
        .iter()
        .map(|l| {
            vec![
                l.stream.clone(),
                l.consumer.clone(),
                l.lag.to_string(),
                l.pending.to_string(),
                l.ack_pending.to_string(),
                l.redelivered.to_string(),
                format!("{}/{}", l.last_delivered_seq, l.stream_last_seq),
                l.ack_floor_seq.to_string(),
                l.waiting.to_string(),
                l.oldest_unacked_s
                    .map(|s| format!("{s:.1}s"))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    push_table(
        out,
        &[
            "STREAM",
            "CONSUMER",
            "LAG",
            "PENDING",
            "ACK_PENDING",
            "REDELIVERED",
            "DELIVERED/LAST",
            "ACK_FLOOR",
            "WAITING",
            "OLDEST_UNACKED",
        ],
        &rows,
    );
    Ok(())
}
