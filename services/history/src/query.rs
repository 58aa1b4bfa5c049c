//! History pages that never have a hole. Everything at or below the archive consumer's ack
//! floor is in PostgreSQL (an entry is acknowledged only after its row committed, or after it
//! was dead-lettered as not an event); whatever lies above it is read from the stream. So a page
//! is complete however far the writer lags.
//!
//! What a page costs (CONTRACT §2 Limits, issue 15 item 10): one PostgreSQL query and one
//! batched direct get of the stream, run concurrently, in the common case; while the archive lags
//! by more than a page, or PostgreSQL is down, the stream part is located by bisection over the
//! room's entry counts (O(log seqs) single gets) and read in one batch: never the whole room.
//! The floor is refreshed in the background ([`HistoryQuery::track_floor`]), not per page.
//!
//! `prev_seq` (CONTRACT §1, §3): the seq of the previous *valid* event of the room. The archive
//! holds exactly the valid events, so within it the previous row is the previous event; each
//! page reads one row (or entry) more than it returns, so every `prev_seq` comes from its
//! neighbour, and entries of the stream that are not events ([`chat_bus::event::validate`]) are
//! skipped exactly as the archive and the live feed skip them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use chat_bus::api::{ApiError, HistoryPage, HistoryRequest, clamp_limit};
use chat_bus::event::{self, Event};
use chat_bus::subjects;
use chat_proto::{ChatMessage, RoomId, UserId};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::rooms::db_error;
use crate::stream_read::{Entry, StreamReader};

/// How often the archive's ack floor is refreshed while pages are asked (at least every second).
pub const FLOOR_REFRESH: Duration = Duration::from_millis(20);

/// Default byte budget of a page's events, serialized (`HISTORY_PAGE_MAX_BYTES`): a page
/// frame always fits the edge's write buffer and NATS's payload limit (CONTRACT §2 Limits).
pub const DEFAULT_PAGE_MAX_BYTES: usize = 192 * 1024;

/// Most stream entries one page may examine (invalid entries included) beyond the ones it needs.
const SCAN_SLACK: usize = 256;

/// The archive consumer's ack floor as last seen: every event at or below it is in PostgreSQL.
#[derive(Debug, Default)]
struct Floor {
    value: AtomicU64,
    /// A page was served since the last refresh.
    demand: AtomicBool,
}

/// Answers history requests.
#[derive(Clone)]
pub struct HistoryQuery {
    pool: PgPool,
    stream: jetstream::stream::Stream,
    reader: StreamReader,
    epoch_id: i32,
    floor: Arc<Floor>,
    page_max_bytes: usize,
}

type PgRow = (i64, String, String, String, i64);

/// Where the events of a room are read from: PostgreSQL for seqs up to `floor`, the stream
/// above; or (PostgreSQL down) the stream alone, which holds seqs from `first` on.
#[derive(Debug, Clone, Copy)]
enum View {
    Archive { floor: u64 },
    StreamOnly { first: u64 },
}

impl View {
    /// The seq below which the stream is not consulted.
    fn stream_lo(self) -> u64 {
        match self {
            View::Archive { floor } => floor,
            View::StreamOnly { first } => first.saturating_sub(1),
        }
    }
}

/// A page's events, ascending, with the seq of the event before the first (the chain's anchor).
struct Run {
    events: Vec<ChatMessage>,
    anchor: u64,
}

impl HistoryQuery {
    pub fn new(
        pool: PgPool,
        nats: async_nats::Client,
        stream: jetstream::stream::Stream,
        epoch_id: i32,
        page_max_bytes: usize,
        request_timeout: Duration,
    ) -> Self {
        // A reply must also fit NATS's payload limit, with room for the page's other fields.
        let max_payload = nats.server_info().max_payload;
        let limit = if max_payload > 0 {
            max_payload.saturating_sub(16 * 1024).max(64 * 1024)
        } else {
            page_max_bytes
        };
        HistoryQuery {
            pool,
            stream,
            reader: StreamReader::new(nats, request_timeout),
            epoch_id,
            floor: Arc::new(Floor::default()),
            page_max_bytes: page_max_bytes.min(limit),
        }
    }

    /// Keeps the ack floor fresh: every [`FLOOR_REFRESH`] while pages are asked, every second
    /// otherwise. A stale floor is still a floor (it only means reading more from the stream).
    pub async fn track_floor(self, shutdown: CancellationToken) {
        let mut idle = Duration::ZERO;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(FLOOR_REFRESH) => {}
            }
            idle += FLOOR_REFRESH;
            if !self.floor.demand.swap(false, Ordering::Relaxed) && idle < Duration::from_secs(1) {
                continue;
            }
            idle = Duration::ZERO;
            self.refresh_floor().await;
        }
    }

    async fn refresh_floor(&self) {
        match self.stream.consumer_info(subjects::HISTORY_CONSUMER).await {
            Ok(info) => {
                self.floor
                    .value
                    .fetch_max(info.ack_floor.stream_sequence, Ordering::Relaxed);
            }
            Err(e) => tracing::debug!(error = %e, "no archive consumer yet: the stream is read"),
        }
    }

    fn current_floor(&self) -> u64 {
        self.floor.demand.store(true, Ordering::Relaxed);
        self.floor.value.load(Ordering::Relaxed)
    }

    /// One page (CONTRACT §2 `history`, §3 `chat.api.history`). With PostgreSQL unreachable,
    /// the page is read from the stream alone when the stream still holds all it needs, and is
    /// `unavailable` otherwise: never silently short.
    pub async fn page(&self, req: HistoryRequest) -> Result<HistoryPage, ApiError> {
        if req.before.is_some() && req.after.is_some() {
            return Err(ApiError::bad_request("give before or after, not both"));
        }
        let view = View::Archive {
            floor: self.current_floor(),
        };
        // Both ask PostgreSQL: concurrently, so that an outage costs one timeout, not two.
        let (member, page) = tokio::join!(self.require_member(&req), self.page_in(&req, view));
        member?;
        match page {
            Err(e) if e.code == chat_proto::ErrorCode::Unavailable => {
                metrics::counter!("chat_history_stream_fallback_total").increment(1);
                let first = match self.stream.get_info().await {
                    Ok(info) => info.state.first_sequence,
                    Err(e) => {
                        tracing::warn!(error = %e, "stream unreachable for history");
                        return Err(ApiError::unavailable());
                    }
                };
                self.page_in(&req, View::StreamOnly { first }).await
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
                metrics::counter!("chat_history_membership_unchecked_total").increment(1);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn page_in(&self, req: &HistoryRequest, view: View) -> Result<HistoryPage, ApiError> {
        let limit = clamp_limit(req.limit) as usize;
        let room = &req.room;
        let (run, mut has_more, keep_oldest) = match req.after {
            Some(after) => {
                let (run, more) = self.forward(room, after, limit, view).await?;
                (run, more, true)
            }
            None => {
                let (run, more) = self.backward(room, req.before, limit, view).await?;
                (run, more, false)
            }
        };
        let mut messages = chain(run);
        if fit_in_bytes(&mut messages, self.page_max_bytes, keep_oldest) {
            metrics::counter!("chat_history_pages_cut_to_size_total").increment(1);
            has_more = true;
        }
        Ok(HistoryPage {
            room: room.clone(),
            messages,
            has_more,
        })
    }

    /// The oldest up to `limit` events with seq > `after`, and whether more follow.
    async fn forward(
        &self,
        room: &RoomId,
        after: u64,
        limit: usize,
        view: View,
    ) -> Result<(Run, bool), ApiError> {
        let want = limit + 1;
        let subject = subjects::room_msg(room);
        let (mut events, anchor, cursor) = match view {
            View::Archive { floor } if after < floor => {
                // The archived part and the stream's tail above the floor, concurrently: the
                // tail is usually empty, and then this is one round trip.
                let (archived, tail) = tokio::join!(
                    self.pg_forward(room, after, floor, want),
                    self.stream_forward(room, &subject, floor, want, view)
                );
                let (mut rows, anchor) = archived?;
                if rows.len() < want {
                    let (tail, _) = tail?;
                    rows.extend(tail);
                }
                rows.truncate(want);
                let more = rows.len() > limit;
                rows.truncate(limit);
                return Ok((
                    Run {
                        events: rows,
                        anchor,
                    },
                    more,
                ));
            }
            View::Archive { .. } => (Vec::new(), None::<u64>, after),
            View::StreamOnly { first } => {
                if after.saturating_add(1) < first {
                    // Events after `after` may have left the stream for the archive only.
                    return Err(ApiError::unavailable());
                }
                (Vec::new(), None, after)
            }
        };
        let (tail, _) = self
            .stream_forward(room, &subject, cursor, want, view)
            .await?;
        events.extend(tail);
        let anchor = match anchor {
            Some(a) => a,
            None => self.last_at_or_below(room, &subject, after, view).await?,
        };
        let more = events.len() > limit;
        events.truncate(limit);
        Ok((Run { events, anchor }, more))
    }

    /// The newest up to `limit` events with seq < `before` (any seq when `None`), and whether
    /// more lie below them.
    async fn backward(
        &self,
        room: &RoomId,
        before: Option<u64>,
        limit: usize,
        view: View,
    ) -> Result<(Run, bool), ApiError> {
        // One more than the page: it tells whether more exist and is the chain's anchor.
        let want = limit + 1;
        let subject = subjects::room_msg(room);
        let lo = view.stream_lo();
        let stream_part = async {
            if before.is_some_and(|b| b <= lo.saturating_add(1)) {
                return Ok((VecDeque::new(), true));
            }
            self.stream_backward(room, &subject, lo, before, want).await
        };
        let mut events: VecDeque<ChatMessage> = match view {
            View::Archive { floor } => {
                let archive_before = before.map_or(floor.saturating_add(1), |b| b.min(floor + 1));
                let (tail, archived) =
                    tokio::join!(stream_part, self.pg_backward(room, archive_before, want));
                let (mut tail, _) = tail?;
                if tail.len() < want {
                    let rows = archived?;
                    for r in rows.into_iter().rev().take(want - tail.len()) {
                        tail.push_front(r);
                    }
                }
                tail
            }
            View::StreamOnly { first } => {
                let (tail, reached_lo) = stream_part.await?;
                if tail.len() < want && first > 1 && reached_lo {
                    // Older events may have left the stream for the archive only.
                    return Err(ApiError::unavailable());
                }
                tail
            }
        };
        while events.len() > want {
            events.pop_front();
        }
        let more = events.len() > limit;
        let anchor = if more {
            events.pop_front().map_or(0, |e| e.seq)
        } else {
            0
        };
        Ok((
            Run {
                events: events.into(),
                anchor,
            },
            more,
        ))
    }

    /// The seq of the last event at or below `seq` (0: none).
    async fn last_at_or_below(
        &self,
        room: &RoomId,
        subject: &str,
        seq: u64,
        view: View,
    ) -> Result<u64, ApiError> {
        if seq == 0 {
            return Ok(0);
        }
        if let View::Archive { floor } = view
            && seq <= floor
        {
            return self.pg_last_at_or_below(room, seq).await;
        }
        let (found, reached_lo) = self
            .stream_backward(room, subject, view.stream_lo(), Some(seq + 1), 1)
            .await?;
        if let Some(e) = found.back() {
            return Ok(e.seq);
        }
        match view {
            View::Archive { floor } if reached_lo => self.pg_last_at_or_below(room, floor).await,
            View::StreamOnly { first } if reached_lo && first <= 1 => Ok(0),
            _ => Err(ApiError::unavailable()),
        }
    }

    /// Up to `n` valid events of the stream with seq > `after` (and above the view's low end).
    async fn stream_forward(
        &self,
        room: &RoomId,
        subject: &str,
        after: u64,
        n: usize,
        view: View,
    ) -> Result<(Vec<ChatMessage>, bool), ApiError> {
        let mut cursor = after.max(view.stream_lo());
        let mut out = Vec::new();
        let mut scanned = 0usize;
        loop {
            let batch = self
                .reader
                .batch(subject, cursor + 1, n - out.len())
                .await?;
            let Some(last) = batch.entries.last() else {
                return Ok((out, true));
            };
            cursor = last.seq;
            scanned += batch.entries.len();
            out.extend(batch.entries.iter().filter_map(|e| valid_message(room, e)));
            if batch.pending == 0 {
                return Ok((out, true));
            }
            if out.len() >= n {
                return Ok((out, false));
            }
            if scanned > n + SCAN_SLACK {
                return Err(too_many_invalid(room));
            }
        }
    }

    /// The newest up to `n` valid events of the stream with `lo < seq < before`, ascending, and
    /// whether the read went down to `lo` (nothing more below in the stream).
    async fn stream_backward(
        &self,
        room: &RoomId,
        subject: &str,
        lo: u64,
        before: Option<u64>,
        n: usize,
    ) -> Result<(VecDeque<ChatMessage>, bool), ApiError> {
        let mut out = VecDeque::new();
        let mut hi = before;
        let mut scanned = 0usize;
        loop {
            let (entries, more_below) =
                self.reader.backward(subject, lo, hi, n - out.len()).await?;
            let Some(oldest) = entries.first() else {
                return Ok((out, true));
            };
            hi = Some(oldest.seq);
            scanned += entries.len();
            for e in entries.iter().rev() {
                if let Some(m) = valid_message(room, e) {
                    out.push_front(m);
                }
            }
            if !more_below {
                return Ok((out, true));
            }
            if out.len() >= n {
                return Ok((out, false));
            }
            if scanned > n + SCAN_SLACK {
                return Err(too_many_invalid(room));
            }
        }
    }

    /// Archived events with `after < seq <= floor` (up to `n`), and the seq of the last archived
    /// event at or below `after` (one query).
    async fn pg_forward(
        &self,
        room: &RoomId,
        after: u64,
        floor: u64,
        n: usize,
    ) -> Result<(Vec<ChatMessage>, u64), ApiError> {
        let rows: Vec<PgRow> = sqlx::query_as(
            "(SELECT seq, ''::text, ''::text, ''::text, 0::bigint FROM messages
               WHERE epoch_id = $1 AND room = $2 AND seq <= $3 ORDER BY seq DESC LIMIT 1)
             UNION ALL
             (SELECT seq, sender, body, client_id, ts FROM messages
               WHERE epoch_id = $1 AND room = $2 AND seq > $3 AND seq <= $4 ORDER BY seq LIMIT $5)",
        )
        .bind(self.epoch_id)
        .bind(room.as_str())
        .bind(to_i64(after))
        .bind(to_i64(floor))
        .bind(n as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let mut anchor = 0;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            if (r.0 as u64) <= after {
                anchor = r.0 as u64;
            } else if let Some(m) = row_to_message(room, r) {
                out.push(m);
            }
        }
        Ok((out, anchor))
    }

    /// The newest up to `n` archived events with seq < `before`, ascending.
    async fn pg_backward(
        &self,
        room: &RoomId,
        before: u64,
        n: usize,
    ) -> Result<Vec<ChatMessage>, ApiError> {
        let rows: Vec<PgRow> = sqlx::query_as(
            "SELECT seq, sender, body, client_id, ts FROM messages
             WHERE epoch_id = $1 AND room = $2 AND seq < $3
             ORDER BY seq DESC LIMIT $4",
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

    /// The last archived seq of the room at or below `seq` (0: none).
    async fn pg_last_at_or_below(&self, room: &RoomId, seq: u64) -> Result<u64, ApiError> {
        let (last,): (Option<i64>,) = sqlx::query_as(
            "SELECT max(seq) FROM messages WHERE epoch_id = $1 AND room = $2 AND seq <= $3",
        )
        .bind(self.epoch_id)
        .bind(room.as_str())
        .bind(to_i64(seq))
        .fetch_one(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(last.unwrap_or(0) as u64)
    }
}

fn too_many_invalid(room: &RoomId) -> ApiError {
    metrics::counter!("chat_history_scan_budget_exceeded_total").increment(1);
    tracing::warn!(%room, "too many stream entries that are not events in one page");
    ApiError::unavailable()
}

/// The stream entry as a page's message, if it is a valid event (CONTRACT §3); `prev_seq` is
/// set by [`chain`].
fn valid_message(room: &RoomId, e: &Entry) -> Option<ChatMessage> {
    let checked = event::validate(&e.payload, room).and_then(|c| c.resolve(|_| None));
    match checked {
        Ok(Event::Message(m)) => Some(m.into_message(e.seq, 0)),
        Err(_) => None,
    }
}

/// Sets every `prev_seq` of a run from its neighbour: the previous valid event of the room.
fn chain(run: Run) -> Vec<ChatMessage> {
    let mut prev = run.anchor;
    let mut events = run.events;
    for m in &mut events {
        m.prev_seq = prev;
        prev = m.seq;
    }
    events
}

/// Bytes a value takes once serialized as JSON.
fn json_len<T: serde::Serialize>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, value);
    c.0
}

/// Cuts `messages` (ascending) to at most `budget` bytes of serialized events, keeping the
/// oldest (`keep_oldest`, a page `after` a cursor) or the newest ones, and always at least one.
/// The chain stays exact: a kept event's `prev_seq` is the one it had. True if it cut.
fn fit_in_bytes(messages: &mut Vec<ChatMessage>, budget: usize, keep_oldest: bool) -> bool {
    let mut total = 0usize;
    let mut keep = 0usize;
    let n = messages.len();
    for i in 0..n {
        let m = if keep_oldest {
            &messages[i]
        } else {
            &messages[n - 1 - i]
        };
        total += json_len(m) + 1;
        if total > budget && keep > 0 {
            break;
        }
        keep += 1;
    }
    if keep == n {
        return false;
    }
    if keep_oldest {
        messages.truncate(keep);
    } else {
        messages.drain(..n - keep);
    }
    true
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn row_to_message(room: &RoomId, (seq, sender, body, client_id, ts): PgRow) -> Option<ChatMessage> {
    Some(ChatMessage {
        room: room.clone(),
        seq: seq as u64,
        prev_seq: 0,
        from: UserId::new(sender).ok()?,
        body,
        client_id,
        ts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, body: &str) -> ChatMessage {
        ChatMessage {
            room: RoomId::new("r").unwrap(),
            seq,
            prev_seq: 0,
            from: UserId::new("a").unwrap(),
            body: body.into(),
            client_id: "c".into(),
            ts: 1,
        }
    }

    #[test]
    fn chain_links_each_event_to_its_neighbour() {
        let out = chain(Run {
            events: vec![msg(5, "a"), msg(9, "b"), msg(12, "c")],
            anchor: 3,
        });
        let links: Vec<(u64, u64)> = out.iter().map(|m| (m.seq, m.prev_seq)).collect();
        assert_eq!(links, vec![(5, 3), (9, 5), (12, 9)]);
    }

    /// Issue 15 item 4: 4,000 characters of `\u0001` are 24,000 bytes once escaped; the budget is
    /// on the serialized size.
    #[test]
    fn pages_are_cut_by_serialized_size_keeping_the_right_end() {
        let body = "\u{1}".repeat(4000);
        let one = json_len(&msg(1, &body));
        assert!(one > 24_000, "{one}");
        let all: Vec<ChatMessage> = (1..=60).map(|s| msg(s, &body)).collect();
        let mut newest = chain(Run {
            events: all.clone(),
            anchor: 0,
        });
        assert!(fit_in_bytes(&mut newest, 10 * one, false));
        assert_eq!(newest.len(), 9);
        assert_eq!((newest[0].seq, newest[0].prev_seq), (52, 51));
        assert!(json_len(&newest) <= 10 * one);
        let mut oldest = chain(Run {
            events: all,
            anchor: 0,
        });
        assert!(fit_in_bytes(&mut oldest, 10 * one, true));
        assert_eq!(oldest.last().map(|m| m.seq), Some(9));
        // One event is always kept, however small the budget.
        let mut tiny = vec![msg(1, &body)];
        assert!(!fit_in_bytes(&mut tiny, 10, true));
        assert_eq!(tiny.len(), 1);
    }
}
