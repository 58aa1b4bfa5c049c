//! History pages that never have a hole. Everything at or below the archive consumer's ack
//! floor is in PostgreSQL (an event is acknowledged only after its row committed); whatever lies
//! above it is read from the stream. So a page is complete however far the writer lags.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use chat_bus::api::{ApiError, HistoryPage, HistoryRequest, clamp_limit};
use chat_bus::event::RoomEvent;
use chat_bus::subjects;
use chat_proto::{ChatMessage, RoomId, UserId};
use futures::StreamExt;
use sqlx::PgPool;
use tokio::sync::Mutex;

use crate::rooms::db_error;

/// How stale a cached ack floor may be; a stale floor only means reading more from the stream.
const FLOOR_TTL: Duration = Duration::from_millis(20);

/// Answers history requests.
#[derive(Clone)]
pub struct HistoryQuery {
    pool: PgPool,
    nats: async_nats::Client,
    stream: jetstream::stream::Stream,
    epoch_id: i32,
    floor: Arc<Mutex<(Option<Instant>, u64)>>,
}

type PgRow = (i64, String, String, String, i64, i64);

impl HistoryQuery {
    pub fn new(
        pool: PgPool,
        nats: async_nats::Client,
        stream: jetstream::stream::Stream,
        epoch_id: i32,
    ) -> Self {
        HistoryQuery {
            pool,
            nats,
            stream,
            epoch_id,
            floor: Arc::new(Mutex::new((None, 0))),
        }
    }

    /// One page (CONTRACT §2 `history`, §3 `chat.api.history`). With PostgreSQL unreachable,
    /// the page is read from the stream alone when the stream still holds all it needs, and is
    /// `unavailable` otherwise: never silently short.
    pub async fn page(&self, req: HistoryRequest) -> Result<HistoryPage, ApiError> {
        if req.before.is_some() && req.after.is_some() {
            return Err(ApiError::bad_request("give before or after, not both"));
        }
        // Both ask PostgreSQL: concurrently, so that an outage costs one timeout, not two.
        let (member, page) = tokio::join!(self.require_member(&req), self.page_archived(&req));
        member?;
        match page {
            Err(e) if e.code == chat_proto::ErrorCode::Unavailable => {
                metrics::counter!("history_stream_fallback_total").increment(1);
                self.page_from_stream(&req).await
            }
            other => other,
        }
    }

    /// Refuses a page asked on behalf of a non-member. This is the second line (chat-edge checks
    /// its session's rooms first), so while PostgreSQL is unreachable it lets the page through
    /// rather than break history for connected members (CONTRACT §2, outages), and counts it.
    async fn require_member(&self, req: &HistoryRequest) -> Result<(), ApiError> {
        let Some(user) = &req.user else {
            return Ok(());
        };
        match crate::rooms::is_member_of(&self.pool, &req.room, user).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ApiError::forbidden("not a member of this room")),
            Err(e) if e.code == chat_proto::ErrorCode::Unavailable => {
                metrics::counter!("history_membership_unchecked_total").increment(1);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn page_archived(&self, req: &HistoryRequest) -> Result<HistoryPage, ApiError> {
        let limit = clamp_limit(req.limit) as usize;
        let floor = self.ack_floor().await;
        let room = req.room.clone();
        let (mut messages, has_more) = match req.after {
            Some(after) => {
                let mut rows = self.pg_after(&room, after, floor, limit + 1).await?;
                if rows.len() <= limit {
                    let tail = self.tail(&room, floor).await?;
                    rows.extend(tail.into_iter().filter(|m| m.seq > after));
                }
                let more = rows.len() > limit;
                rows.truncate(limit);
                (rows, more)
            }
            None => {
                let before = req.before.unwrap_or(u64::MAX);
                let mut tail = if before > floor.saturating_add(1) {
                    self.tail(&room, floor).await?
                } else {
                    Vec::new()
                };
                tail.retain(|m| m.seq < before);
                let need = (limit + 1).saturating_sub(tail.len());
                let mut rows = if need > 0 {
                    self.pg_before(&room, before.min(floor.saturating_add(1)), need)
                        .await?
                } else {
                    Vec::new()
                };
                rows.extend(tail);
                let more = rows.len() > limit;
                let skip = rows.len().saturating_sub(limit);
                (rows.split_off(skip), more)
            }
        };
        messages.shrink_to_fit();
        Ok(HistoryPage {
            room,
            messages,
            has_more,
        })
    }

    /// The archive consumer's ack floor: every event at or below it is in PostgreSQL.
    async fn ack_floor(&self) -> u64 {
        let mut cached = self.floor.lock().await;
        if let (Some(at), floor) = *cached
            && at.elapsed() < FLOOR_TTL
        {
            return floor;
        }
        let floor = match self.stream.consumer_info(subjects::HISTORY_CONSUMER).await {
            Ok(info) => info.ack_floor.stream_sequence,
            Err(e) => {
                tracing::debug!(error = %e, "no archive consumer yet: reading everything from the stream");
                0
            }
        };
        *cached = (Some(Instant::now()), floor);
        floor
    }

    async fn pg_after(
        &self,
        room: &RoomId,
        after: u64,
        floor: u64,
        n: usize,
    ) -> Result<Vec<ChatMessage>, ApiError> {
        if after >= floor {
            return Ok(Vec::new());
        }
        let rows: Vec<PgRow> = sqlx::query_as(
            "SELECT m.seq, m.sender, m.body, m.client_id, m.ts,
                    COALESCE((SELECT max(p.seq) FROM messages p
                              WHERE p.epoch_id = m.epoch_id AND p.room = m.room AND p.seq < m.seq), 0)
             FROM messages m
             WHERE m.epoch_id = $1 AND m.room = $2 AND m.seq > $3 AND m.seq <= $4
             ORDER BY m.seq LIMIT $5",
        )
        .bind(self.epoch_id)
        .bind(room.as_str())
        .bind(to_i64(after))
        .bind(to_i64(floor))
        .bind(n as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(rows
            .into_iter()
            .filter_map(|r| row_to_message(room, r))
            .collect())
    }

    async fn pg_before(
        &self,
        room: &RoomId,
        before: u64,
        n: usize,
    ) -> Result<Vec<ChatMessage>, ApiError> {
        let rows: Vec<PgRow> = sqlx::query_as(
            "SELECT m.seq, m.sender, m.body, m.client_id, m.ts,
                    COALESCE((SELECT max(p.seq) FROM messages p
                              WHERE p.epoch_id = m.epoch_id AND p.room = m.room AND p.seq < m.seq), 0)
             FROM messages m
             WHERE m.epoch_id = $1 AND m.room = $2 AND m.seq < $3
             ORDER BY m.seq DESC LIMIT $4",
        )
        .bind(self.epoch_id)
        .bind(room.as_str())
        .bind(to_i64(before))
        .bind(n as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let mut out: Vec<ChatMessage> = rows
            .into_iter()
            .filter_map(|r| row_to_message(room, r))
            .collect();
        out.reverse();
        Ok(out)
    }

    /// The last archived seq of the room at or below `floor` (the prev_seq of the first tail event).
    async fn pg_last(&self, room: &RoomId, floor: u64) -> Result<u64, ApiError> {
        if floor == 0 {
            return Ok(0);
        }
        let (last,): (Option<i64>,) = sqlx::query_as(
            "SELECT max(seq) FROM messages WHERE epoch_id = $1 AND room = $2 AND seq <= $3",
        )
        .bind(self.epoch_id)
        .bind(room.as_str())
        .bind(to_i64(floor))
        .fetch_one(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(last.unwrap_or(0) as u64)
    }

    /// Every event of the room above `floor`, read from the stream, in order.
    async fn tail(&self, room: &RoomId, floor: u64) -> Result<Vec<ChatMessage>, ApiError> {
        let last = self.last_seq(room).await?;
        if last <= floor {
            return Ok(Vec::new());
        }
        let prev = self.pg_last(room, floor).await?;
        self.stream_events(room, floor + 1, prev, last).await
    }

    /// The room's newest seq in the stream (0: none).
    async fn last_seq(&self, room: &RoomId) -> Result<u64, ApiError> {
        chat_bus::stream::last_seq(&self.stream, room).await
    }

    /// The room's events with `start <= seq <= last`, read from the stream in order; `prev` is the
    /// room's event before `start`.
    async fn stream_events(
        &self,
        room: &RoomId,
        start: u64,
        mut prev: u64,
        last: u64,
    ) -> Result<Vec<ChatMessage>, ApiError> {
        let unavailable = |e: &dyn std::fmt::Display| {
            tracing::warn!(error = %e, "reading the stream failed");
            ApiError::unavailable()
        };
        if last < start {
            return Ok(Vec::new());
        }
        let reader = self
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subjects::room_msg(room),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(&e))?;
        let mut messages = reader.messages().await.map_err(|e| unavailable(&e))?;
        let mut out = Vec::new();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
            let msg = match next {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(unavailable(&e)),
                Ok(None) | Err(_) => return Err(unavailable(&"stream read ended early")),
            };
            let Ok(info) = msg.info() else { continue };
            let seq = info.stream_sequence;
            if let Ok(event) = RoomEvent::decode(&msg.payload) {
                out.push(event.into_message(seq, prev));
                prev = seq;
            }
            if seq >= last {
                break;
            }
        }
        Ok(out)
    }

    /// The room's last event at or below `seq` (0: none), asked of the stream.
    async fn stream_last_at_or_below(&self, room: &RoomId, seq: u64) -> Result<u64, ApiError> {
        if seq == 0 {
            return Ok(0);
        }
        let req = serde_json::json!({"multi_last": [subjects::room_msg(room)], "up_to_seq": seq, "batch": 1});
        let subject = format!("$JS.API.DIRECT.GET.{}", subjects::STREAM);
        let reply = self
            .nats
            .request(subject, serde_json::to_vec(&req).unwrap_or_default().into())
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "direct get failed");
                ApiError::unavailable()
            })?;
        Ok(
            chat_bus::event::header_u64(reply.headers.as_ref(), chat_bus::event::SEQUENCE_HEADER)
                .unwrap_or(0),
        )
    }

    /// The page from the stream alone (PostgreSQL down).
    async fn page_from_stream(&self, req: &HistoryRequest) -> Result<HistoryPage, ApiError> {
        let limit = clamp_limit(req.limit) as usize;
        let room = req.room.clone();
        let first = match self.stream.get_info().await {
            Ok(info) => info.state.first_sequence,
            Err(e) => {
                tracing::warn!(error = %e, "stream unreachable for history");
                return Err(ApiError::unavailable());
            }
        };
        let last = self.last_seq(&room).await?;
        match req.after {
            Some(after) => {
                // Everything after `after` must still be in the stream.
                if after.saturating_add(1) < first {
                    return Err(ApiError::unavailable());
                }
                let prev = self.stream_last_at_or_below(&room, after).await?;
                let mut rows = self.stream_events(&room, after + 1, prev, last).await?;
                let more = rows.len() > limit;
                rows.truncate(limit);
                Ok(HistoryPage {
                    room,
                    messages: rows,
                    has_more: more,
                })
            }
            None => {
                let before = req.before.unwrap_or(u64::MAX);
                let mut rows = self.stream_events(&room, first.max(1), 0, last).await?;
                rows.retain(|m| m.seq < before);
                // Older events may have left the stream for the archive only.
                if rows.len() <= limit && first > 1 {
                    return Err(ApiError::unavailable());
                }
                let more = rows.len() > limit;
                let skip = rows.len().saturating_sub(limit);
                Ok(HistoryPage {
                    room,
                    messages: rows.split_off(skip),
                    has_more: more,
                })
            }
        }
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn row_to_message(
    room: &RoomId,
    (seq, sender, body, client_id, ts, prev): PgRow,
) -> Option<ChatMessage> {
    Some(ChatMessage {
        room: room.clone(),
        seq: seq as u64,
        prev_seq: prev as u64,
        from: UserId::new(sender).ok()?,
        body,
        client_id,
        ts,
    })
}
