//! History pages that never have a hole. Everything at or below the archive consumer's ack
//! floor is in PostgreSQL (an entry is acknowledged only after its row committed, or after it
//! was dead-lettered as not an event); whatever lies above it is read from the stream. So a page
//! is complete however far the writer lags.
//!
//! What a page costs (protocol.md#ws-limits, issue 15 item 10), in the common case: one
//! PostgreSQL query and one batched direct get of the stream, run concurrently, for its events,
//! then one PostgreSQL query for their state (the stream's tail above the floor, which the first
//! read saw whole, is not read again). While the archive lags by more than a page, or
//! PostgreSQL is down, the stream part is located by bisection over the room's entry counts
//! (O(log seqs) single gets) and read in one batch: never the whole room.
//! The floor is refreshed in the background ([`HistoryQuery::track_floor`]), not per page.
//!
//! `prev_seq` (protocol.md#identities, #nats): the seq of the previous *valid* event of the room. The archive
//! holds exactly the valid events, so within it the previous row is the previous event; each
//! page reads one row (or entry) more than it returns, so every `prev_seq` comes from its
//! neighbour, and entries of the stream that are not events ([`chat_bus::event::validate`]) are
//! skipped exactly as the archive and the live feed skip them.
//!
//! *(v1.1, protocol.md#ws-lifecycle)* A page holds events of every kind. Its `message` objects carry
//! their current state: the changes archived at or below the floor, read from PostgreSQL, and
//! those above it, read from the stream's tail of the room, folded in seq order
//! ([`crate::state`]), so a page is right from either or both. A replay (`replay`, what
//! `join{since}` and the edge's gap filling ask) carries the events as they were sent instead.
//! Either way nothing of a deleted message's text is served: its body and its edits' are "".
//! Stream entries pass the same two steps of validity as the archive's (the stateful one
//! through [`TargetLookup`]).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use chat_bus::api::{
    ApiError, HistoryPage, HistoryRequest, MessageInfo, MessageInfoRequest, clamp_limit,
};
use chat_bus::event::{self, EventKind, Target};
use chat_bus::lookup::TargetLookup;
use chat_bus::subjects;
use chat_proto::{
    ChatMessage, DeleteEvent, EditEvent, ErrorCode, ReactionEvent, RoomEventFrame, RoomId, UserId,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::state::{Change, fold};
use crate::stream_read::{Entry, StreamReader};
use chat_runtime::db::db_error;

/// How often the archive's ack floor is refreshed while pages are asked (at least every second).
pub const FLOOR_REFRESH: Duration = Duration::from_millis(20);

/// Default byte budget of a page's events, serialized (`HISTORY_PAGE_MAX_BYTES`): a page
/// frame always fits the edge's write buffer and NATS's payload limit (protocol.md#ws-limits).
pub const DEFAULT_PAGE_MAX_BYTES: usize = 192 * 1024;

/// Most stream entries one page may examine (invalid entries included) beyond the ones it needs.
const SCAN_SLACK: usize = 256;

/// Most entries of a room's stream tail (above the archive's floor) read for the state of a
/// page or a thread page: beyond it (an archive writer stopped for that long in one room, or
/// PostgreSQL down with a long stream), such a page is `unavailable` rather than wrong.
const TAIL_MAX: usize = 20_000;

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
    lookup: TargetLookup,
}

/// seq, sender, body as sent, client_id, ts, kind, target, emoji, on, reply_to, thread.
type PgRow = (
    i64,
    String,
    String,
    String,
    i64,
    String,
    Option<i64>,
    Option<String>,
    Option<bool>,
    Option<i64>,
    Option<i64>,
);

/// The columns of [`PgRow`] (`m` is the row). The body as sent: `sent_body` (since migration
/// 0003; "" once deleted), else `body` (rows archived before it hold their body as sent).
const PG_COLUMNS: &str = "m.seq, m.sender, COALESCE(m.sent_body, m.body), m.client_id, m.ts,
    m.kind, m.target, m.emoji, m.reaction_on, m.reply_to, m.thread";

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
    events: Vec<RoomEventFrame>,
    anchor: u64,
}

/// Every valid event of a room's stream with seq > `after`, as one read of the page saw them
/// all: the page's state then needs no second read of the same tail.
struct Tail {
    after: u64,
    events: Vec<RoomEventFrame>,
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
        let fallback = pg_fallback(pool.clone(), epoch_id);
        HistoryQuery {
            lookup: TargetLookup::new(stream.clone(), Some(fallback)),
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

    /// One page (protocol.md#ws `history`, §3 `chat.api.history`). With PostgreSQL unreachable,
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
    /// rather than break history for connected members (protocol.md#ws, outages), and counts it.
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
        let keep_oldest = req.after.is_some();
        let (mut messages, mut has_more, tail) = match (req.thread, req.after) {
            (Some(root), _) => {
                self.thread_page(room, root, req.before, req.after, limit, view)
                    .await?
            }
            (None, Some(after)) => {
                let (run, more, tail) = self.forward(room, after, limit, view).await?;
                (chain(run), more, tail)
            }
            (None, None) => {
                let (run, more, tail) = self.backward(room, req.before, limit, view).await?;
                (chain(run), more, tail)
            }
        };
        self.add_state(&mut messages, room, view, req.replay, tail.as_ref())
            .await?;
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

    /// The oldest up to `limit` events with seq > `after`, whether more follow, and the stream's
    /// whole tail above the floor when the read saw all of it.
    async fn forward(
        &self,
        room: &RoomId,
        after: u64,
        limit: usize,
        view: View,
    ) -> Result<(Run, bool, Option<Tail>), ApiError> {
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
                let (rows, anchor) = archived?;
                // The tail is only needed among the events (and its error only matters) if the
                // archive is short; read whole, it also serves the page's state.
                let short = rows.len() < want;
                let (tail, complete) = match tail {
                    Ok(read) => read,
                    Err(_) if !short => (Vec::new(), false),
                    Err(e) => return Err(e),
                };
                let whole = complete.then(|| Tail {
                    after: floor,
                    events: tail.clone(),
                });
                let (events, more) =
                    merge_forward(rows, if short { tail } else { Vec::new() }, limit);
                return Ok((Run { events, anchor }, more, whole));
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
        Ok((Run { events, anchor }, more, None))
    }

    /// The newest up to `limit` events with seq < `before` (any seq when `None`), whether more
    /// lie below them, and the stream's whole tail above the view's low end when the read saw
    /// all of it (no `before`, and no more than the page above the floor).
    async fn backward(
        &self,
        room: &RoomId,
        before: Option<u64>,
        limit: usize,
        view: View,
    ) -> Result<(Run, bool, Option<Tail>), ApiError> {
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
        let whole = |tail: &VecDeque<RoomEventFrame>, reached_lo: bool| {
            (before.is_none() && reached_lo).then(|| Tail {
                after: lo,
                events: tail.iter().cloned().collect(),
            })
        };
        let (events, whole) = match view {
            View::Archive { floor } => {
                let archive_before = before.map_or(floor.saturating_add(1), |b| b.min(floor + 1));
                let (tail, archived) =
                    tokio::join!(stream_part, self.pg_backward(room, archive_before, want));
                let (tail, reached_lo) = tail?;
                let whole = whole(&tail, reached_lo);
                // The archive is only needed (and its error only matters) if the tail is short.
                let rows = if tail.len() < want {
                    archived?
                } else {
                    Vec::new()
                };
                (merge_backward(tail, rows, want), whole)
            }
            View::StreamOnly { first } => {
                let (tail, reached_lo) = stream_part.await?;
                if tail.len() < want && first > 1 && reached_lo {
                    // Older events may have left the stream for the archive only.
                    return Err(ApiError::unavailable());
                }
                let whole = whole(&tail, reached_lo);
                (tail, whole)
            }
        };
        let (run, more) = newest_page(events, limit);
        Ok((run, more, whole))
    }

    /// `chat.internal.history.message`: what the edge checks before publishing a change of
    /// message `seq`, a reply to it or a message in its thread (protocol.md#ws-lifecycle): its
    /// author, thread and whether it is deleted, whether it is archived or only in the stream
    /// (and, with PostgreSQL down, from the stream alone); `not_found` if it is no valid message.
    pub async fn message_info(&self, req: MessageInfoRequest) -> Result<MessageInfo, ApiError> {
        let floor = self.current_floor();
        let room = &req.room;
        let subject = subjects::room_msg(room);
        let row: Result<Option<(String, Option<i64>, bool)>, ApiError> = sqlx::query_as(
            "SELECT sender, thread, deleted FROM messages
             WHERE epoch_id = $1 AND room = $2 AND seq = $3 AND kind = 'message'",
        )
        .bind(self.epoch_id)
        .bind(room.as_str())
        .bind(to_i64(req.seq))
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error);
        let (from, thread, deleted, tail_from) = match row {
            Ok(Some((from, thread, deleted))) => (
                UserId::new(from).map_err(|_| ApiError::internal())?,
                thread.map(|t| t as u64),
                deleted,
                // The stored `deleted` covers what is archived; a delete above the floor may
                // not be yet.
                req.seq.max(floor),
            ),
            Ok(None) => match self.lookup.target(room, req.seq).await? {
                Some(t) if t.is_message => (t.from, t.thread, false, req.seq),
                _ => return Err(no_such_message()),
            },
            Err(e) if e.code == ErrorCode::Unavailable => {
                match self.lookup.target(room, req.seq).await? {
                    Some(t) if t.is_message => (t.from, t.thread, false, req.seq),
                    _ => return Err(no_such_message()),
                }
            }
            Err(e) => return Err(e),
        };
        let tail = self.stream_tail(room, &subject, tail_from).await?;
        let deleted = deleted
            || tail
                .iter()
                .any(|e| matches!(e, RoomEventFrame::Delete(d) if d.target == req.seq));
        let reactions_full = match &req.adding {
            Some(new) if !deleted => !chat_proto::reaction_fits(
                &self.reactions_of(req.seq, tail_from, &tail).await?,
                &new.user,
                &new.emoji,
            ),
            _ => false,
        };
        Ok(MessageInfo {
            from,
            thread,
            deleted,
            reactions_full,
        })
    }

    /// The current reactions of message `seq`: its archived changes at or below `tail_from`
    /// (none when it is only in the stream: then `tail_from` is `seq`) and those of `tail`.
    async fn reactions_of(
        &self,
        seq: u64,
        tail_from: u64,
        tail: &[RoomEventFrame],
    ) -> Result<chat_proto::Reactions, ApiError> {
        let mut changes = if tail_from > seq {
            pg_changes(&self.pool, self.epoch_id, &[to_i64(seq)], Some(tail_from))
                .await
                .map_err(db_error)?
                .remove(&seq)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        changes.extend(
            tail.iter()
                .filter(|e| matches!(e, RoomEventFrame::Reaction(r) if r.target == seq))
                .filter_map(change_of),
        );
        Ok(fold(seq, String::new(), &changes).state.reactions)
    }

    /// The stream entry as a page's event, if it is a valid event (protocol.md#nats, both steps);
    /// `prev_seq` is set by [`chain`].
    async fn valid_event(
        &self,
        room: &RoomId,
        e: &Entry,
    ) -> Result<Option<RoomEventFrame>, ApiError> {
        let Ok(candidate) = event::validate(&e.payload, room) else {
            return Ok(None);
        };
        let checked = if candidate.references().is_empty() {
            candidate.resolve(|_| None)
        } else {
            self.lookup.resolve(room, e.seq, candidate).await?
        };
        Ok(checked.ok().map(|ev| ev.into_frame(e.seq, 0)))
    }

    /// Every valid event of the room's stream with seq > `after` (at most [`TAIL_MAX`] entries
    /// examined, else `unavailable`), ascending, `prev_seq` unset. Normally none, or the few
    /// events the archive has not acknowledged yet: one request says whether there are any,
    /// one batched get per [`MAX_BATCH`](crate::stream_read::MAX_BATCH) reads them.
    async fn stream_tail(
        &self,
        room: &RoomId,
        subject: &str,
        after: u64,
    ) -> Result<Vec<RoomEventFrame>, ApiError> {
        if self.reader.count_from(subject, after + 1).await?.0 == 0 {
            return Ok(Vec::new());
        }
        let mut cursor = after;
        let mut out = Vec::new();
        let mut scanned = 0usize;
        loop {
            let batch = self
                .reader
                .batch(subject, cursor + 1, crate::stream_read::MAX_BATCH)
                .await?;
            let Some(last) = batch.entries.last() else {
                return Ok(out);
            };
            cursor = last.seq;
            scanned += batch.entries.len();
            for e in &batch.entries {
                if let Some(ev) = self.valid_event(room, e).await? {
                    out.push(ev);
                }
            }
            if batch.pending == 0 {
                return Ok(out);
            }
            if scanned >= TAIL_MAX {
                metrics::counter!("chat_history_tail_too_long_total").increment(1);
                tracing::warn!(%room, after, "stream tail too long for a page's state");
                return Err(ApiError::unavailable());
            }
        }
    }

    /// Gives each `message` of `page` its current state (or, for a replay, its body as sent
    /// unless deleted), and empties the body of every edit of a deleted message. The changes
    /// at or below the floor come from PostgreSQL, those above from the stream's tail; every
    /// change of a message comes after it, so the tail is read from the page's oldest message
    /// (or edit's target) on, never below the floor: from `known` when the page's own read saw
    /// that part whole (the common case: nothing is read twice), else by a read of its own.
    async fn add_state(
        &self,
        page: &mut [RoomEventFrame],
        room: &RoomId,
        view: View,
        replay: bool,
        known: Option<&Tail>,
    ) -> Result<(), ApiError> {
        let mut targets: Vec<u64> = Vec::new();
        let mut roots: Vec<u64> = Vec::new();
        for e in page.iter() {
            match e {
                RoomEventFrame::Message(m) => {
                    targets.push(m.seq);
                    if !replay && m.thread.is_none() {
                        roots.push(m.seq);
                    }
                }
                RoomEventFrame::Edit(x) => targets.push(x.target),
                _ => {}
            }
        }
        let Some(&lo) = targets.iter().min() else {
            return Ok(());
        };
        if let View::StreamOnly { first } = view
            && lo < first
        {
            // An edit of a message that left the stream: whether it was deleted is archived.
            return Err(ApiError::unavailable());
        }
        let subject = subjects::room_msg(room);
        let archived = async {
            match view {
                View::Archive { floor } if lo <= floor => {
                    let old: Vec<i64> = targets
                        .iter()
                        .filter(|t| **t <= floor)
                        .map(|t| to_i64(*t))
                        .collect();
                    let old_roots: Vec<i64> = roots
                        .iter()
                        .filter(|r| **r <= floor)
                        .map(|r| to_i64(*r))
                        .collect();
                    archived_state(&self.pool, self.epoch_id, &old, &old_roots, Some(floor))
                        .await
                        .map_err(db_error)
                }
                _ => Ok(Archived::default()),
            }
        };
        let from = lo.max(view.stream_lo());
        let tail = async {
            match known {
                Some(t) if t.after <= from => Ok(Cow::Borrowed(t.events.as_slice())),
                _ => self.stream_tail(room, &subject, from).await.map(Cow::Owned),
            }
        };
        let (archived, tail) = tokio::join!(archived, tail);
        let (mut archived, tail) = (archived?, tail?);
        let wanted: HashSet<u64> = targets.iter().copied().collect();
        for e in tail.iter().filter(|e| e.seq() > from) {
            if let Some(c) = change_of(e) {
                let target = e.target().unwrap_or(0);
                if wanted.contains(&target) {
                    archived.changes.entry(target).or_default().push(c);
                }
            } else if let RoomEventFrame::Message(ChatMessage {
                thread: Some(root), ..
            }) = e
            {
                *archived.replies.entry(*root).or_default() += 1;
            }
        }
        apply_state(page, &archived, replay);
        Ok(())
    }

    /// A page of thread `root` (protocol.md#ws `history{thread}`): only `message` events, the root
    /// and the messages of its thread, each with its room's `prev_seq`. The archived part comes
    /// from PostgreSQL (by the thread's index), the part above the floor from the stream's tail,
    /// which is returned whole for the page's state.
    async fn thread_page(
        &self,
        room: &RoomId,
        root: u64,
        before: Option<u64>,
        after: Option<u64>,
        limit: usize,
        view: View,
    ) -> Result<(Vec<RoomEventFrame>, bool, Option<Tail>), ApiError> {
        let subject = subjects::room_msg(room);
        let in_thread = |e: &RoomEventFrame| matches!(e, RoomEventFrame::Message(m) if m.seq == root || m.thread == Some(root));
        // The stream part: the tail above the floor (or, PostgreSQL down, from the root on).
        let tail_lo = match view {
            View::Archive { floor } => floor,
            View::StreamOnly { first } => {
                if root < first {
                    return Err(ApiError::unavailable());
                }
                root - 1
            }
        };
        let (tail, anchor) = tokio::join!(
            self.stream_tail(room, &subject, tail_lo),
            self.last_at_or_below(room, &subject, tail_lo, view)
        );
        let tail = tail?;
        let whole = Tail {
            after: tail_lo,
            events: tail.clone(),
        };
        let mut tail = chain(Run {
            events: tail,
            anchor: anchor?,
        });
        tail.retain(in_thread);
        let floor = match view {
            View::Archive { floor } => floor,
            View::StreamOnly { .. } => 0,
        };
        let want = limit + 1;
        let mut rows = match after {
            Some(after) => {
                let mut rows = if after < floor {
                    self.pg_thread(room, root, after, floor + 1, want, true)
                        .await?
                } else {
                    Vec::new()
                };
                if rows.len() < want {
                    rows.extend(tail.into_iter().filter(|e| e.seq() > after));
                }
                rows.truncate(want);
                rows
            }
            None => {
                let before = before.unwrap_or(u64::MAX);
                tail.retain(|e| e.seq() < before);
                let need = want.saturating_sub(tail.len());
                let mut rows = if need > 0 && floor > 0 {
                    self.pg_thread(room, root, 0, before.min(floor + 1), need, false)
                        .await?
                } else {
                    Vec::new()
                };
                rows.extend(tail);
                let skip = rows.len().saturating_sub(want);
                rows.split_off(skip)
            }
        };
        let more = rows.len() > limit;
        if more {
            if after.is_some() {
                rows.truncate(limit);
            } else {
                rows.remove(0);
            }
        }
        Ok((rows, more, Some(whole)))
    }

    /// Archived messages of thread `root` (and the root) with `after < seq < before`: the
    /// oldest `n` (`oldest`) or the newest `n`, ascending, each with its room's `prev_seq`.
    async fn pg_thread(
        &self,
        room: &RoomId,
        root: u64,
        after: u64,
        before: u64,
        n: usize,
        oldest: bool,
    ) -> Result<Vec<RoomEventFrame>, ApiError> {
        let order = if oldest { "ASC" } else { "DESC" };
        let sql = format!(
            "SELECT {PG_COLUMNS},
                    COALESCE((SELECT max(p.seq) FROM messages p
                              WHERE p.epoch_id = m.epoch_id AND p.room = m.room
                                AND p.seq < m.seq), 0)
             FROM messages m
             WHERE m.epoch_id = $1 AND m.room = $2 AND m.kind = 'message'
               AND (m.seq = $3 OR m.thread = $3) AND m.seq > $4 AND m.seq < $5
             ORDER BY m.seq {order} LIMIT $6"
        );
        type ThreadRow = (
            i64,
            String,
            String,
            String,
            i64,
            String,
            Option<i64>,
            Option<String>,
            Option<bool>,
            Option<i64>,
            Option<i64>,
            i64,
        );
        let rows: Vec<ThreadRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(self.epoch_id)
            .bind(room.as_str())
            .bind(to_i64(root))
            .bind(to_i64(after))
            .bind(to_i64(before))
            .bind(n as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        let mut out: Vec<RoomEventFrame> = rows
            .into_iter()
            .filter_map(|r| {
                let prev = r.11 as u64;
                let mut e = row_to_message(
                    room,
                    (r.0, r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8, r.9, r.10),
                )?;
                e.set_prev_seq(prev);
                Some(e)
            })
            .collect();
        if !oldest {
            out.reverse();
        }
        Ok(out)
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
            return Ok(e.seq());
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
    ) -> Result<(Vec<RoomEventFrame>, bool), ApiError> {
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
            for e in &batch.entries {
                if let Some(ev) = self.valid_event(room, e).await? {
                    out.push(ev);
                }
            }
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
    ) -> Result<(VecDeque<RoomEventFrame>, bool), ApiError> {
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
            let mut valid = Vec::with_capacity(entries.len());
            for e in &entries {
                if let Some(ev) = self.valid_event(room, e).await? {
                    valid.push(ev);
                }
            }
            for ev in valid.into_iter().rev() {
                out.push_front(ev);
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
    ) -> Result<(Vec<RoomEventFrame>, u64), ApiError> {
        let sql = format!(
            "(SELECT seq, ''::text, ''::text, ''::text, 0::bigint, ''::text, NULL::bigint,
                     NULL::text, NULL::bool, NULL::bigint, NULL::bigint FROM messages
               WHERE epoch_id = $1 AND room = $2 AND seq <= $3 ORDER BY seq DESC LIMIT 1)
             UNION ALL
             (SELECT {PG_COLUMNS} FROM messages m
               WHERE m.epoch_id = $1 AND m.room = $2 AND m.seq > $3 AND m.seq <= $4
               ORDER BY m.seq LIMIT $5)"
        );
        let rows: Vec<PgRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
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
    ) -> Result<Vec<RoomEventFrame>, ApiError> {
        let sql = format!(
            "SELECT {PG_COLUMNS} FROM messages m
             WHERE m.epoch_id = $1 AND m.room = $2 AND m.seq < $3
             ORDER BY m.seq DESC LIMIT $4"
        );
        let rows: Vec<PgRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(self.epoch_id)
            .bind(room.as_str())
            .bind(to_i64(before))
            .bind(n as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        let mut out: Vec<RoomEventFrame> = rows
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

/// A page after a cursor from its two sources: the archived events above the cursor (ascending,
/// all at or below the floor) and, after them, the stream's tail above the floor. The oldest
/// `limit` events, and whether more follow.
fn merge_forward(
    mut archived: Vec<RoomEventFrame>,
    tail: Vec<RoomEventFrame>,
    limit: usize,
) -> (Vec<RoomEventFrame>, bool) {
    archived.extend(tail);
    archived.truncate(limit + 1);
    let more = archived.len() > limit;
    archived.truncate(limit);
    (archived, more)
}

/// The newest events below a cursor from its two sources: the stream's tail (ascending, all above
/// the floor) and, before it, the newest archived events (ascending, all at or below it), up to
/// `want` in all.
fn merge_backward(
    mut tail: VecDeque<RoomEventFrame>,
    archived: Vec<RoomEventFrame>,
    want: usize,
) -> VecDeque<RoomEventFrame> {
    let room_for = want.saturating_sub(tail.len());
    for r in archived.into_iter().rev().take(room_for) {
        tail.push_front(r);
    }
    tail
}

/// A page before a cursor from the newest events found (ascending, up to `limit` + 1 asked): the
/// newest `limit`, whether more lie below, and the event before the first as the chain's anchor
/// (0 when nothing lies below: the first event of the room has no predecessor).
fn newest_page(mut events: VecDeque<RoomEventFrame>, limit: usize) -> (Run, bool) {
    while events.len() > limit + 1 {
        events.pop_front();
    }
    let more = events.len() > limit;
    let anchor = if more {
        events.pop_front().map_or(0, |e| e.seq())
    } else {
        0
    };
    (
        Run {
            events: events.into(),
            anchor,
        },
        more,
    )
}

/// Sets every `prev_seq` of a run from its neighbour: the previous valid event of the room.
fn chain(run: Run) -> Vec<RoomEventFrame> {
    let mut prev = run.anchor;
    let mut events = run.events;
    for e in &mut events {
        e.set_prev_seq(prev);
        prev = e.seq();
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
fn fit_in_bytes(messages: &mut Vec<RoomEventFrame>, budget: usize, keep_oldest: bool) -> bool {
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

fn no_such_message() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such message in this room")
}

/// A row of the archive as the event it stores (a message as sent: its state comes later);
/// `prev_seq` is set by [`chain`].
fn row_to_message(
    room: &RoomId,
    (seq, sender, body, client_id, ts, kind, target, emoji, on, reply_to, thread): PgRow,
) -> Option<RoomEventFrame> {
    let seq = seq as u64;
    let prev_seq = 0;
    let from = UserId::new(sender).ok()?;
    let target = target.map_or(0, |t| t as u64);
    let room = room.clone();
    Some(match EventKind::parse(&kind)? {
        EventKind::Message => RoomEventFrame::Message(ChatMessage {
            reply_to: reply_to.map(|t| t as u64),
            thread: thread.map(|t| t as u64),
            ..ChatMessage::new(room, seq, prev_seq, from, body, client_id, ts)
        }),
        EventKind::Edit => RoomEventFrame::Edit(EditEvent {
            room,
            seq,
            prev_seq,
            from,
            target,
            body,
            client_id,
            ts,
        }),
        EventKind::Delete => RoomEventFrame::Delete(DeleteEvent {
            room,
            seq,
            prev_seq,
            from,
            target,
            client_id,
            ts,
        }),
        EventKind::Reaction => RoomEventFrame::Reaction(ReactionEvent {
            room,
            seq,
            prev_seq,
            from,
            target,
            emoji: emoji.unwrap_or_default(),
            on: on.unwrap_or(true),
            client_id,
            ts,
        }),
    })
}

/// A change event as the fold takes it.
fn change_of(e: &RoomEventFrame) -> Option<Change> {
    let (seq, kind, from, body, emoji, on, ts) = match e {
        RoomEventFrame::Message(_) => return None,
        RoomEventFrame::Edit(x) => (
            x.seq,
            EventKind::Edit,
            &x.from,
            x.body.as_str(),
            "",
            true,
            x.ts,
        ),
        RoomEventFrame::Delete(x) => (x.seq, EventKind::Delete, &x.from, "", "", true, x.ts),
        RoomEventFrame::Reaction(x) => (
            x.seq,
            EventKind::Reaction,
            &x.from,
            "",
            x.emoji.as_str(),
            x.on,
            x.ts,
        ),
    };
    Some(Change {
        seq,
        kind,
        from: from.clone(),
        body: body.to_owned(),
        emoji: emoji.to_owned(),
        on,
        ts,
    })
}

/// What is known of the state of some messages: their changes by target, and how many
/// messages the threads of some roots hold.
#[derive(Debug, Default)]
pub(crate) struct Archived {
    pub changes: HashMap<u64, Vec<Change>>,
    pub replies: HashMap<u64, u64>,
}

/// Applies `known` to the events of a page (protocol.md#ws-lifecycle): a message gets its current
/// body and state, or (`replay`) keeps its body as sent and no state; either way a deleted
/// message's body is "", and so is the body of each edit of it.
fn apply_state(page: &mut [RoomEventFrame], known: &Archived, replay: bool) {
    let deleted: HashSet<u64> = known
        .changes
        .iter()
        .filter(|(_, cs)| cs.iter().any(|c| c.kind == EventKind::Delete))
        .map(|(t, _)| *t)
        .collect();
    for e in page.iter_mut() {
        match e {
            RoomEventFrame::Message(m) if replay && deleted.contains(&m.seq) => m.body.clear(),
            RoomEventFrame::Message(m) if !replay => set_state(m, known),
            RoomEventFrame::Edit(x) if deleted.contains(&x.target) => x.body.clear(),
            _ => {}
        }
    }
}

/// Folds the known changes of `m` (sent as `m.body`) into its current body and state.
pub(crate) fn set_state(m: &mut ChatMessage, known: &Archived) {
    let body = std::mem::take(&mut m.body);
    let folded = fold(m.seq, body, known.changes.get(&m.seq).into_iter().flatten());
    m.body = folded.body;
    let mut state = folded.state;
    if m.thread.is_none() {
        state.replies = known.replies.get(&m.seq).copied().filter(|n| *n > 0);
    }
    m.state = Some(state);
}

/// The archived changes of messages `targets` and the sizes of the threads of `roots`, at or
/// below `up_to` (everything archived when `None`): one round trip, two indexed scans.
pub(crate) async fn archived_state(
    pool: &PgPool,
    epoch_id: i32,
    targets: &[i64],
    roots: &[i64],
    up_to: Option<u64>,
) -> Result<Archived, sqlx::Error> {
    if targets.is_empty() && roots.is_empty() {
        return Ok(Archived::default());
    }
    // A thread's size comes as a row of no kind ('') with the root as target and the count as
    // seq: no change has that kind.
    let rows: Vec<ChangeRow> = sqlx::query_as(
        "SELECT target, seq, kind, sender, sent_body, emoji, reaction_on, ts FROM messages
          WHERE epoch_id = $1 AND target = ANY($2) AND ($4::bigint IS NULL OR seq <= $4)
         UNION ALL
         SELECT thread, count(*), '', '', NULL, NULL, NULL, 0 FROM messages
          WHERE epoch_id = $1 AND thread = ANY($3) AND kind = 'message'
            AND ($4::bigint IS NULL OR seq <= $4)
          GROUP BY thread
         ORDER BY seq",
    )
    .bind(epoch_id)
    .bind(targets)
    .bind(roots)
    .bind(up_to.map(to_i64))
    .fetch_all(pool)
    .await?;
    let mut out = Archived::default();
    for row in rows {
        if row.2.is_empty() {
            out.replies.insert(row.0 as u64, row.1 as u64);
        } else {
            add_change(&mut out.changes, row);
        }
    }
    Ok(out)
}

/// target, seq, kind, sender, body as sent, emoji, reaction_on, ts.
type ChangeRow = (
    i64,
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<bool>,
    i64,
);

/// Adds the change of `row` to its target's (rows come in seq order); skips a row that is no
/// change.
fn add_change(out: &mut HashMap<u64, Vec<Change>>, row: ChangeRow) {
    let (target, seq, kind, sender, body, emoji, on, ts) = row;
    let (Some(kind), Ok(from)) = (EventKind::parse(&kind), UserId::new(sender)) else {
        return;
    };
    out.entry(target as u64).or_default().push(Change {
        seq: seq as u64,
        kind,
        from,
        body: body.unwrap_or_default(),
        emoji: emoji.unwrap_or_default(),
        on: on.unwrap_or(true),
        ts,
    });
}

/// The archived changes of messages `targets` (at or below `up_to`), by target, in seq order.
pub(crate) async fn pg_changes<'e, E: sqlx::PgExecutor<'e>>(
    ex: E,
    epoch_id: i32,
    targets: &[i64],
    up_to: Option<u64>,
) -> Result<HashMap<u64, Vec<Change>>, sqlx::Error> {
    let rows: Vec<ChangeRow> = sqlx::query_as(
        "SELECT target, seq, kind, sender, sent_body, emoji, reaction_on, ts FROM messages
         WHERE epoch_id = $1 AND target = ANY($2) AND ($3::bigint IS NULL OR seq <= $3)
         ORDER BY seq",
    )
    .bind(epoch_id)
    .bind(targets)
    .bind(up_to.map(to_i64))
    .fetch_all(ex)
    .await?;
    let mut out: HashMap<u64, Vec<Change>> = HashMap::new();
    for row in rows {
        add_change(&mut out, row);
    }
    Ok(out)
}

/// Looks up in the archive what the stream no longer holds (valid messages only).
pub(crate) fn pg_fallback(pool: PgPool, epoch_id: i32) -> chat_bus::lookup::Fallback {
    Arc::new(move |room: RoomId, seq: u64| {
        let pool = pool.clone();
        Box::pin(async move {
            let row: Option<(String, Option<i64>)> = sqlx::query_as(
                "SELECT sender, thread FROM messages
                 WHERE epoch_id = $1 AND room = $2 AND seq = $3 AND kind = 'message'",
            )
            .bind(epoch_id)
            .bind(room.as_str())
            .bind(to_i64(seq))
            .fetch_optional(&pool)
            .await
            .map_err(db_error)?;
            Ok(row.and_then(|(from, thread)| {
                Some(Target {
                    is_message: true,
                    from: UserId::new(from).ok()?,
                    thread: thread.map(|t| t as u64),
                })
            }))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, body: &str) -> RoomEventFrame {
        RoomEventFrame::Message(ChatMessage::new(
            RoomId::new("r").unwrap(),
            seq,
            0,
            UserId::new("a").unwrap(),
            body.into(),
            "c".into(),
            1,
        ))
    }

    #[test]
    fn chain_links_each_event_to_its_neighbour() {
        let out = chain(Run {
            events: vec![msg(5, "a"), msg(9, "b"), msg(12, "c")],
            anchor: 3,
        });
        let links: Vec<(u64, u64)> = out.iter().map(|m| (m.seq(), m.prev_seq())).collect();
        assert_eq!(links, vec![(5, 3), (9, 5), (12, 9)]);
    }

    fn seqs<'a>(events: impl IntoIterator<Item = &'a RoomEventFrame>) -> Vec<u64> {
        events.into_iter().map(|e| e.seq()).collect()
    }

    fn run(range: impl IntoIterator<Item = u64>) -> Vec<RoomEventFrame> {
        range.into_iter().map(|s| msg(s, "x")).collect()
    }

    #[test]
    fn a_page_after_a_cursor_reads_the_archive_then_the_tail() {
        // Archive up to the floor (10), the tail above it; seqs may skip (not every entry is an
        // event).
        let (page, more) = merge_forward(run([4, 6, 9]), run([11, 12, 15]), 5);
        assert_eq!((seqs(&page), more), (vec![4, 6, 9, 11, 12], true));
        // Exactly the limit: no more.
        let (page, more) = merge_forward(run([4, 6]), run([11]), 3);
        assert_eq!((seqs(&page), more), (vec![4, 6, 11], false));
        // Nothing archived above the cursor yet: the tail alone; nothing at all: empty.
        let (page, more) = merge_forward(Vec::new(), run([11, 12]), 5);
        assert_eq!((seqs(&page), more), (vec![11, 12], false));
        let (page, more) = merge_forward(Vec::new(), Vec::new(), 5);
        assert_eq!((page.len(), more), (0, false));
        // A full archive part (limit + 1 rows): the tail is not needed to know there is more.
        let (page, more) = merge_forward(run(1..=4), Vec::new(), 3);
        assert_eq!((seqs(&page), more), (vec![1, 2, 3], true));
    }

    #[test]
    fn a_page_before_a_cursor_keeps_the_newest_and_anchors_on_the_one_below() {
        let limit = 3;
        let want = limit + 1;
        // The tail (above the floor) is newest; the archive fills in below it.
        let events = merge_backward(run([11, 12]).into(), run([3, 5, 8, 9]), want);
        assert_eq!(seqs(&events), vec![8, 9, 11, 12]);
        let (page, more) = newest_page(events, limit);
        assert_eq!(
            (seqs(&page.events), page.anchor, more),
            (vec![9, 11, 12], 8, true)
        );
        let chained = chain(page);
        let links: Vec<(u64, u64)> = chained.iter().map(|m| (m.seq(), m.prev_seq())).collect();
        assert_eq!(links, vec![(9, 8), (11, 9), (12, 11)]);
        // A tail that fills the page alone takes nothing from the archive.
        let events = merge_backward(run(20..=25).into(), run([3, 5]), want);
        let (page, more) = newest_page(events, limit);
        assert_eq!(
            (seqs(&page.events), page.anchor, more),
            (vec![23, 24, 25], 22, true)
        );
        // Everything the room holds fits: no more, and the first event has no predecessor.
        let events = merge_backward(run([7]).into(), run([2]), want);
        let (page, more) = newest_page(events, limit);
        assert_eq!(
            (seqs(&page.events), page.anchor, more),
            (vec![2, 7], 0, false)
        );
        // PostgreSQL's part alone (empty tail: the archive is up to date).
        let events = merge_backward(VecDeque::new(), run(1..=10), want);
        let (page, more) = newest_page(events, limit);
        assert_eq!(
            (seqs(&page.events), page.anchor, more),
            (vec![8, 9, 10], 7, true)
        );
    }

    /// Issue 15 item 4: 4,000 characters of `\u0001` are 24,000 bytes once escaped; the budget is
    /// on the serialized size.
    #[test]
    fn pages_are_cut_by_serialized_size_keeping_the_right_end() {
        let body = "\u{1}".repeat(4000);
        let one = json_len(&msg(1, &body));
        assert!(one > 24_000, "{one}");
        let all: Vec<RoomEventFrame> = (1..=60).map(|s| msg(s, &body)).collect();
        let mut newest = chain(Run {
            events: all.clone(),
            anchor: 0,
        });
        assert!(fit_in_bytes(&mut newest, 10 * one, false));
        assert_eq!(newest.len(), 9);
        assert_eq!((newest[0].seq(), newest[0].prev_seq()), (52, 51));
        assert!(json_len(&newest) <= 10 * one);
        let mut oldest = chain(Run {
            events: all,
            anchor: 0,
        });
        assert!(fit_in_bytes(&mut oldest, 10 * one, true));
        assert_eq!(oldest.last().map(|m| m.seq()), Some(9));
        // One event is always kept, however small the budget.
        let mut tiny = vec![msg(1, &body)];
        assert!(!fit_in_bytes(&mut tiny, 10, true));
        assert_eq!(tiny.len(), 1);
    }
}
