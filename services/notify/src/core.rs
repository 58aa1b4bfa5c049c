//! What the consumer, the request handlers and the membership listener share: the pool, NATS,
//! the member cache, the webhook dispatcher's wake-up, per-room locks that keep `unread`
//! publications of one room in the order their counts were computed, and the exact unread
//! count (protocol.md#ws-unread: asked for by `hello`, `joined` and a moving marker, never made per
//! message).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::stream::DirectGetErrorKind;
use chat_bus::api::{
    ApiError, MembershipChange, NotifyState, NotifyStateRequest, ReadRequest, UnreadState,
    UnreadUpdate, UserNotification,
};
use chat_bus::event::RoomEvent;
use chat_bus::{now_ms, subjects, trace};
use chat_proto::{Notification, NotificationKind, RoomId, RoomKind, UserId};
use chat_runtime::db::db_error;
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::{Mutex, MutexGuard};

use crate::config::NotifyConfig;
use crate::members::Members;
use crate::mention;
use crate::store::{self, NewNotification};
use crate::webhook::Webhooks;

/// Number of lock stripes (rooms hash onto them).
const STRIPES: usize = 64;

/// Most events one count reads from the stream (above the consumer's ack floor) per room.
const MAX_STREAM_COUNT: usize = 20_000;

/// The shared state; cheap to clone.
#[derive(Clone)]
pub struct Core {
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub stream: jetstream::stream::Stream,
    pub members: Members,
    pub webhooks: Option<Webhooks>,
    pub config: Arc<NotifyConfig>,
    /// What a reply or thread message refers to (event validity, and whom it notifies).
    pub lookup: chat_bus::lookup::TargetLookup,
    locks: Arc<Vec<Mutex<()>>>,
}

impl Core {
    pub fn new(
        pool: PgPool,
        nats: async_nats::Client,
        stream: jetstream::stream::Stream,
        webhooks: Option<Webhooks>,
        config: NotifyConfig,
    ) -> Self {
        let members = Members::new(
            nats.clone(),
            config.request_timeout,
            config.members_ttl,
            config.members_cache_max,
        );
        let fallback =
            chat_bus::lookup::TargetLookup::history_fallback(nats.clone(), config.request_timeout);
        Core {
            lookup: chat_bus::lookup::TargetLookup::new(stream.clone(), Some(fallback)),
            pool,
            nats,
            stream,
            members,
            webhooks,
            config: Arc::new(config),
            locks: Arc::new((0..STRIPES).map(|_| Mutex::new(())).collect()),
        }
    }

    /// Serializes count-and-publish of one room: a count computed earlier is never published
    /// after one computed later (within this process).
    pub async fn lock_room(&self, room: &RoomId) -> MutexGuard<'_, ()> {
        let mut h = DefaultHasher::new();
        room.hash(&mut h);
        self.locks[(h.finish() as usize) % STRIPES].lock().await
    }

    /// The seq of the room's newest event in the stream (0 if none).
    pub async fn last_seq(&self, room: &RoomId) -> Result<u64, ApiError> {
        chat_bus::stream::last_seq(&self.stream, room).await
    }

    pub async fn publish_json<T: Serialize>(&self, subject: String, value: &T) {
        let Ok(payload) = serde_json::to_vec(value) else {
            return;
        };
        if let Err(e) = self.nats.publish(subject, payload.into()).await {
            tracing::debug!(error = %e, "publish failed");
        }
    }

    /// How far the consumer is: every event at or below this stream seq is stored (acks are sent
    /// only after a batch committed). None if NATS does not say.
    async fn ack_floor(&self) -> Option<u64> {
        match self.stream.consumer_info(subjects::NOTIFY_CONSUMER).await {
            Ok(info) => Some(info.ack_floor.stream_sequence),
            Err(e) => {
                tracing::debug!(error = %e, "consumer info unavailable");
                None
            }
        }
    }

    /// The user's marker and exact unread count in each room, covering the events up to the
    /// room's given seq (protocol.md#ws-unread: `hello` and `joined` cover their `last_seq`, however
    /// far behind the consumer is). What the consumer has stored up to its ack floor is counted
    /// in PostgreSQL; the events above it, up to the seq asked for, are read from the stream.
    pub async fn unread(
        &self,
        user: &UserId,
        rooms: &[(RoomId, u64)],
    ) -> Result<Vec<UnreadState>, ApiError> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let highest = rooms.iter().map(|(_, s)| *s).max().unwrap_or(0);
        let floor = self.ack_floor().await.unwrap_or(0).min(highest);
        let names: Vec<RoomId> = rooms.iter().map(|(r, _)| r.clone()).collect();
        let stored = store::unread_upto(&self.pool, user, &names, floor)
            .await
            .map_err(db_error)?;
        let mut out = Vec::with_capacity(rooms.len());
        for (room, as_of) in rooms {
            let (last_read, mut count) = stored.get(room).copied().unwrap_or((0, 0));
            let from = last_read.max(floor);
            if *as_of > from {
                count += self.count_in_stream(user, room, from, *as_of).await?;
            }
            out.push(UnreadState {
                room: room.clone(),
                last_read,
                unread: count,
                as_of: *as_of,
            });
        }
        Ok(out)
    }

    /// Messages of others in `room` with `after < seq <= upto`, read from the stream (the part
    /// the consumer has not acknowledged yet). An entry that is not a valid message of the room
    /// counts for nobody, as in the consumer's table.
    async fn count_in_stream(
        &self,
        user: &UserId,
        room: &RoomId,
        after: u64,
        upto: u64,
    ) -> Result<u64, ApiError> {
        let subject = subjects::room_msg(room);
        let mut next = after + 1;
        let mut count = 0;
        let mut read = 0usize;
        while next <= upto {
            if read == MAX_STREAM_COUNT {
                // A consumer this far behind is an outage: what it has stored is counted, the
                // rest is caught up by the next count asked for.
                metrics::counter!("chat_notify_unread_inexact_total").increment(1);
                tracing::warn!(%room, after, upto, "unread counted from the stream only in part");
                let tail = store::unread_in_range(&self.pool, user, room, next - 1, upto)
                    .await
                    .map_err(db_error)?;
                return Ok(count + tail);
            }
            read += 1;
            let m = match self
                .stream
                .direct_get_next_for_subject(subject.as_str(), Some(next))
                .await
            {
                Ok(m) => m,
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => break,
                Err(e) => {
                    tracing::warn!(error = %e, "stream unreachable");
                    return Err(ApiError::unavailable());
                }
            };
            if m.sequence > upto {
                break;
            }
            next = m.sequence + 1;
            if let Ok(ev) = RoomEvent::decode(&m.payload)
                && ev.room == *room
                && ev.from != *user
            {
                count += 1;
            }
        }
        metrics::counter!("chat_notify_unread_from_stream_total").increment(read as u64);
        Ok(count)
    }

    /// Tells every session of `user` their marker and count in `room` (protocol.md#ws-unread: only
    /// when the marker moved or the count changed for another reason than a new message).
    async fn push_unread(&self, user: &UserId, room: &RoomId, as_of: u64) -> Option<UnreadUpdate> {
        let state = match self.unread(user, &[(room.clone(), as_of)]).await {
            Ok(mut s) => s.pop()?,
            Err(e) => {
                tracing::warn!(error = %e, "unread count not published");
                return None;
            }
        };
        let update = UnreadUpdate {
            user: user.clone(),
            room: room.clone(),
            count: state.unread,
            last_read: state.last_read,
            as_of: state.as_of.max(state.last_read),
        };
        self.publish_json(subjects::user_unread(user), &update)
            .await;
        Some(update)
    }

    /// Sends new notifications live and wakes the webhook dispatcher (their outbox rows were
    /// written with them). Each is published inside a
    /// `notify.notification` span under `parent` (the event's span, continuing the sender's
    /// trace) with that span's `traceparent`, so whoever delivers it can continue the trace.
    pub async fn deliver(&self, notes: Vec<(UserNotification, tracing::Span)>) {
        let mut handed = Vec::with_capacity(notes.len());
        for (n, parent) in notes {
            let kind = match n.notification.kind {
                NotificationKind::Mention => "mention",
                NotificationKind::Dm => "dm",
                NotificationKind::Invite => "invite",
                NotificationKind::Reply => "reply",
            };
            metrics::counter!("chat_notify_notifications_total", "kind" => kind).increment(1);
            let span =
                tracing::info_span!(parent: &parent, "notify.notification", user = %n.user, kind);
            let mut headers = async_nats::HeaderMap::new();
            span.in_scope(|| trace::inject_current(&mut headers));
            if let Ok(payload) = serde_json::to_vec(&n)
                && let Err(e) = self
                    .nats
                    .publish_with_headers(subjects::user_notify(&n.user), headers, payload.into())
                    .await
            {
                tracing::debug!(error = %e, "publish failed");
            }
            handed.push(n);
        }
        if !handed.is_empty()
            && let Some(w) = &self.webhooks
        {
            w.wake();
        }
    }

    /// `NOTIFY_STATE`: a user's markers, unread counts and pending notifications in `rooms`.
    /// Only rooms the user is a member of are answered: whoever asks (an edge, or anything else
    /// with access to the subject), a non-member learns nothing of a room's activity. Each count
    /// covers exactly the events up to the room's `last_seqs` entry (its newest if not given).
    pub async fn state(&self, req: NotifyStateRequest) -> Result<NotifyState, ApiError> {
        let mut mine = Vec::with_capacity(req.rooms.len());
        for (i, room) in req.rooms.into_iter().enumerate() {
            if self.is_member(&req.user, &room).await? {
                let as_of = match req.last_seqs.get(i) {
                    Some(s) => *s,
                    None => self.last_seq(&room).await?,
                };
                mine.push((room, as_of));
            }
        }
        self.catch_up(&mine).await;
        let rooms = self.unread(&req.user, &mine).await?;
        let names: Vec<RoomId> = mine.into_iter().map(|(r, _)| r).collect();
        let (notifications, notifications_total) = store::pending(&self.pool, &req.user, &names)
            .await
            .map_err(db_error)?;
        Ok(NotifyState {
            rooms,
            notifications,
            notifications_total,
        })
    }

    /// Waits (a bounded time) until the consumer has acknowledged every event up to the seqs
    /// asked for, so that `hello` after an outage or during a burst lists the notifications of
    /// those events too. Counts do not depend on it: what is still pending is counted from the
    /// stream.
    async fn catch_up(&self, rooms: &[(RoomId, u64)]) {
        let highest = rooms.iter().map(|(_, s)| *s).max().unwrap_or(0);
        if highest == 0 || self.config.state_catch_up.is_zero() {
            return;
        }
        let deadline = tokio::time::Instant::now() + self.config.state_catch_up;
        loop {
            match self.ack_floor().await {
                Some(floor) if floor < highest => {}
                _ => return,
            }
            if tokio::time::Instant::now() >= deadline {
                metrics::counter!("chat_notify_state_stale_total").increment(1);
                tracing::debug!("state answered before the consumer caught up");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `NOTIFY_READ`: moves the marker forward (clamped to the room's last seq), clears the
    /// notifications it covers, and, if the marker moved, tells every session of the user the
    /// new count (a read that moves nothing pushes nothing: protocol.md#ws-unread).
    /// A non-member is refused (`forbidden`): no marker, no count of the room's messages.
    pub async fn read(&self, req: ReadRequest) -> Result<UnreadUpdate, ApiError> {
        self.require_member(&req.user, &req.room).await?;
        let last = self.last_seq(&req.room).await?;
        let seq = req.seq.min(last);
        let _guard = self.lock_room(&req.room).await;
        let (before, after) = store::read(&self.pool, &req.user, &req.room, seq)
            .await
            .map_err(db_error)?;
        if after != before
            && let Some(update) = self.push_unread(&req.user, &req.room, last).await
        {
            return Ok(update);
        }
        let state = self
            .unread(&req.user, &[(req.room.clone(), last)])
            .await?
            .pop()
            .ok_or_else(ApiError::internal)?;
        Ok(UnreadUpdate {
            user: req.user,
            room: req.room,
            count: state.unread,
            last_read: state.last_read,
            as_of: state.as_of.max(state.last_read),
        })
    }

    /// Refuses a user who is not a member of `room`.
    async fn require_member(&self, user: &UserId, room: &RoomId) -> Result<(), ApiError> {
        if self.is_member(user, room).await? {
            Ok(())
        } else {
            Err(ApiError::forbidden("not a member of this room"))
        }
    }

    /// Whether `user` is a member of `room`, from the member cache. A cached list may predate a
    /// join (the membership event and the request race), so a miss is checked again with
    /// chat-history.
    async fn is_member(&self, user: &UserId, room: &RoomId) -> Result<bool, ApiError> {
        Ok(self.members.get(room).await?.members.contains(user)
            || self.members.refresh(room).await?.members.contains(user))
    }

    /// Joining a public room starts the marker at its newest event: its history is not
    /// "unread" to a newcomer (nor to someone rejoining after a leave). The floor may be set
    /// after the joiner's `joined` counted without it: the count then changed for another reason
    /// than a new message, and is pushed (protocol.md#ws-unread).
    async fn joined_public(&self, user: &UserId, room: &RoomId) {
        let Ok(seq) = self.last_seq(room).await else {
            return;
        };
        let _guard = self.lock_room(room).await;
        match store::start_marker(&self.pool, user, room, seq).await {
            Ok(true) => {
                self.push_unread(user, room, seq).await;
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "read marker of a new member not set"),
        }
    }

    /// A membership change: forget the room's members; an invite into a private room makes an
    /// `invite` notification at the room's current last seq.
    pub async fn membership(&self, change: MembershipChange) {
        self.members.invalidate(&change.room);
        if change.member && change.by == change.user && change.kind == RoomKind::Public {
            self.joined_public(&change.user, &change.room).await;
        }
        if !(change.member && change.by != change.user && change.kind == RoomKind::Private) {
            return;
        }
        let seq = self.last_seq(&change.room).await.unwrap_or(0);
        let notification = Notification {
            id: mention::invite_notification_id(change.room.as_str(), &change.user, seq),
            kind: NotificationKind::Invite,
            room: change.room.clone(),
            seq,
            from: change.by.clone(),
            preview: format!("{} invited you to {}", change.by, change.room),
            ts: now_ms(),
        };
        let note = NewNotification {
            user: change.user.clone(),
            notification,
        };
        match store::store_notification(&self.pool, &note, self.webhooks.is_some()).await {
            Ok(true) => {
                let span = tracing::info_span!("notify.invite", room = %change.room);
                let n = UserNotification {
                    user: note.user,
                    notification: note.notification,
                };
                self.deliver(vec![(n, span)]).await
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "invite notification not stored"),
        }
    }
}
