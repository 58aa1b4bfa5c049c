//! Reads of one room's entries in the `CHAT` stream that cost what the page needs, not what the
//! room holds: batched direct gets (`$JS.API.DIRECT.GET.CHAT` with `next_by_subj` and `batch`,
//! nats-server 2.11+), which answer from the stream's subject index without creating a
//! consumer. Going backwards (the newest events of a room below a seq), the subject's entry
//! counts (`Nats-Num-Pending`) locate the start of the page by bisection over seqs: O(log seqs)
//! single gets plus one batch, however many events the room has.

use std::time::Duration;

use bytes::Bytes;
use chat_bus::api::ApiError;
use chat_bus::event::{SEQUENCE_HEADER, header_u64};
use chat_bus::subjects;
use futures::StreamExt;

/// `Nats-Num-Pending` of a batched direct get: entries of the subject after this one.
const NUM_PENDING_HEADER: &str = "Nats-Num-Pending";

/// Most entries one batched direct get asks for.
pub const MAX_BATCH: usize = 1024;

/// One stored entry of a room.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    pub payload: Bytes,
}

/// What one batched get returned.
#[derive(Debug, Default)]
pub struct Batch {
    /// Entries in seq order.
    pub entries: Vec<Entry>,
    /// Entries of the subject after the last one returned (after `from` if none was).
    pub pending: u64,
}

/// Reader of the `CHAT` stream's entries, one room subject at a time.
#[derive(Clone)]
pub struct StreamReader {
    nats: async_nats::Client,
    api: String,
    timeout: Duration,
}

fn unavailable(what: &str, e: &dyn std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "{what}");
    ApiError::unavailable()
}

impl StreamReader {
    pub fn new(nats: async_nats::Client, timeout: Duration) -> Self {
        StreamReader {
            nats,
            api: format!("$JS.API.DIRECT.GET.{}", subjects::STREAM),
            timeout,
        }
    }

    /// Up to `n` entries of `subject` with seq ≥ `from`, in order (one request).
    pub async fn batch(&self, subject: &str, from: u64, n: usize) -> Result<Batch, ApiError> {
        let n = n.clamp(1, MAX_BATCH);
        let req = serde_json::json!({"seq": from.max(1), "next_by_subj": subject, "batch": n});
        let inbox = self.nats.new_inbox();
        let mut sub = self
            .nats
            .subscribe(inbox.clone())
            .await
            .map_err(|e| unavailable("stream read: subscribe", &e))?;
        self.nats
            .publish_with_reply(self.api.clone(), inbox, req.to_string().into())
            .await
            .map_err(|e| unavailable("stream read: request", &e))?;
        let mut out = Batch::default();
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let msg = match tokio::time::timeout_at(deadline, sub.next()).await {
                Ok(Some(m)) => m,
                Ok(None) | Err(_) => return Err(unavailable("stream read", &"no end of batch")),
            };
            let pending = header_u64(msg.headers.as_ref(), NUM_PENDING_HEADER);
            match msg.status.map(u16::from) {
                None => {
                    let Some(seq) = header_u64(msg.headers.as_ref(), SEQUENCE_HEADER) else {
                        return Err(unavailable("stream read", &"entry without a sequence"));
                    };
                    out.pending = pending.unwrap_or(0);
                    out.entries.push(Entry {
                        seq,
                        payload: msg.payload,
                    });
                }
                // End of batch.
                Some(204) => {
                    if let Some(p) = pending {
                        out.pending = p;
                    }
                    return Ok(out);
                }
                // Nothing at or after `from`.
                Some(404) => return Ok(out),
                Some(code) => return Err(unavailable("stream read", &format!("status {code}"))),
            }
        }
    }

    /// The seq of the newest entry of `subject` (0: none).
    pub async fn last_seq(&self, subject: &str) -> Result<u64, ApiError> {
        let what = "stream read: last";
        let reply = self
            .one_reply(what, serde_json::json!({ "last_by_subj": subject }))
            .await?;
        match reply.status.map(u16::from) {
            None => Ok(header_u64(reply.headers.as_ref(), SEQUENCE_HEADER).unwrap_or(0)),
            Some(404) => Ok(0),
            Some(code) => Err(unavailable(what, &format!("status {code}"))),
        }
    }

    /// The first reply to a direct get, on the client's shared reply subscription.
    async fn one_reply(
        &self,
        what: &str,
        req: serde_json::Value,
    ) -> Result<async_nats::Message, ApiError> {
        tokio::time::timeout(
            self.timeout,
            self.nats.request(self.api.clone(), req.to_string().into()),
        )
        .await
        .map_err(|e| unavailable(what, &e))?
        .map_err(|e| unavailable(what, &e))
    }

    /// How many entries of `subject` have seq ≥ `from`, and the first of them. The first reply
    /// of a batch of one says both, so this is a plain request on the client's shared reply
    /// subscription, without a subscription of its own (the end-of-batch status that follows
    /// the entry finds no request waiting and is dropped by the client).
    pub async fn count_from(
        &self,
        subject: &str,
        from: u64,
    ) -> Result<(u64, Option<u64>), ApiError> {
        let what = "stream read: count";
        let req = serde_json::json!({"seq": from.max(1), "next_by_subj": subject, "batch": 1});
        let reply = self.one_reply(what, req).await?;
        match reply.status.map(u16::from) {
            None => {
                let Some(seq) = header_u64(reply.headers.as_ref(), SEQUENCE_HEADER) else {
                    return Err(unavailable("stream read", &"entry without a sequence"));
                };
                let pending = header_u64(reply.headers.as_ref(), NUM_PENDING_HEADER).unwrap_or(0);
                Ok((1 + pending, Some(seq)))
            }
            // Nothing at or after `from`.
            Some(404) => Ok((0, None)),
            Some(code) => Err(unavailable(what, &format!("status {code}"))),
        }
    }

    /// The last up to `n` entries of `subject` with `lo < seq < before` (`None`: no upper
    /// bound), in order, and whether more lie below them (above `lo`).
    pub async fn backward(
        &self,
        subject: &str,
        lo: u64,
        before: Option<u64>,
        n: usize,
    ) -> Result<(Vec<Entry>, bool), ApiError> {
        let n = n.clamp(1, MAX_BATCH);
        let upper = async {
            match before {
                Some(b) => self.count_from(subject, b).await.map(|(c, _)| c),
                None => Ok(0),
            }
        };
        let (total, upper) = tokio::join!(self.count_from(subject, lo.saturating_add(1)), upper);
        let ((total, first), upper) = (total?, upper?);
        let Some(first) = first else {
            return Ok((Vec::new(), false));
        };
        let count = total.saturating_sub(upper);
        if count == 0 {
            return Ok((Vec::new(), false));
        }
        let below = |seq: u64| before.is_none_or(|b| seq < b);
        if count as usize <= n {
            let b = self.batch(subject, first, count as usize).await?;
            let entries = b.entries.into_iter().filter(|e| below(e.seq)).collect();
            return Ok((entries, false));
        }
        // Bisect for the highest entry `start` with at least `n` entries in [start, before).
        let top = match before {
            Some(b) => b - 1,
            None => self.last_seq(subject).await?.max(first),
        };
        let (mut lo_s, mut hi_s) = (first, top);
        let mut probes = 0u32;
        while lo_s < hi_s {
            probes += 1;
            let mid = lo_s + (hi_s - lo_s).div_ceil(2);
            let (c, at) = self.count_from(subject, mid).await?;
            let c = c.saturating_sub(upper);
            match at {
                Some(at) if c >= n as u64 && below(at) => {
                    lo_s = at;
                    if c == n as u64 {
                        break;
                    }
                }
                _ => hi_s = mid - 1,
            }
        }
        metrics::histogram!("chat_history_stream_bisect_probes").record(f64::from(probes));
        let b = self.batch(subject, lo_s, n).await?;
        let entries = b.entries.into_iter().filter(|e| below(e.seq)).collect();
        Ok((entries, true))
    }
}
