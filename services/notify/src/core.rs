//! What the consumer, the request handlers and the membership listener share: the pool, NATS,
//! the member cache, the webhook dispatcher's wake-up, and per-room locks that keep `unread` publications of
//! one room in the order their counts were computed.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use chat_bus::api::{
    ApiError, MembershipChange, NotifyState, NotifyStateRequest, ReadRequest, UnreadUpdate,
    UserNotification,
};
use chat_bus::{now_ms, subjects, trace};
use chat_proto::{Notification, NotificationKind, RoomId, RoomKind, UserId};
use futures::StreamExt;
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

/// Maps a database failure to what a requester may see: `unavailable` when PostgreSQL cannot be
/// reached or is going away (retry later), `internal` for a failure of the query itself. The
/// detail goes to the log only.
pub fn db_error(e: sqlx::Error) -> ApiError {
    let internal = match &e {
        sqlx::Error::Database(db) => !db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || c.starts_with("53")),
        sqlx::Error::RowNotFound
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Encode(_)
        | sqlx::Error::Decode(_) => true,
        _ => false,
    };
    if internal {
        tracing::error!(error = %e, "database error");
        ApiError::internal()
    } else {
        tracing::warn!(error = %e, "postgres unavailable");
        ApiError::unavailable()
    }
}

/// The shared state; cheap to clone.
#[derive(Clone)]
pub struct Core {
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub stream: jetstream::stream::Stream,
    pub members: Members,
    pub webhooks: Option<Webhooks>,
    pub config: Arc<NotifyConfig>,
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
        let members = Members::new(nats.clone(), config.request_timeout, config.members_ttl);
        Core {
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

    /// Publishes the unread counts of `users` in `room` (call with the room's lock held).
    pub async fn publish_unread(&self, room: &RoomId, users: &[UserId]) -> Result<(), sqlx::Error> {
        if users.is_empty() {
            return Ok(());
        }
        for (user, last_read, count) in store::unread_in_room(&self.pool, room, users).await? {
            let update = UnreadUpdate {
                user: user.clone(),
                room: room.clone(),
                count,
                last_read,
            };
            self.publish_json(subjects::user_unread(&user), &update)
                .await;
        }
        Ok(())
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
            };
            metrics::counter!("notify_notifications_total", "kind" => kind).increment(1);
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
    /// with access to the subject), a non-member learns nothing of a room's activity.
    pub async fn state(&self, mut req: NotifyStateRequest) -> Result<NotifyState, ApiError> {
        let mut mine = Vec::with_capacity(req.rooms.len());
        for room in std::mem::take(&mut req.rooms) {
            if self.is_member(&req.user, &room).await? {
                mine.push(room);
            }
        }
        req.rooms = mine;
        self.catch_up(&req.rooms).await;
        let rooms = store::unread_of_user(&self.pool, &req.user, &req.rooms)
            .await
            .map_err(db_error)?;
        let (notifications, notifications_total) =
            store::pending(&self.pool, &req.user, &req.rooms)
                .await
                .map_err(db_error)?;
        Ok(NotifyState {
            rooms,
            notifications,
            notifications_total,
        })
    }

    /// Waits (a bounded time) until the consumer has stored every event the rooms had when the
    /// request came, so that `hello` after an outage or during a burst shows exact counts.
    async fn catch_up(&self, rooms: &[RoomId]) {
        if rooms.is_empty() || self.config.state_catch_up.is_zero() {
            return;
        }
        let deadline = tokio::time::Instant::now() + self.config.state_catch_up;
        // One request answers the common case: nothing undelivered, nothing unacknowledged.
        if let Ok(info) = self.stream.consumer_info(subjects::NOTIFY_CONSUMER).await
            && info.num_pending == 0
            && info.num_ack_pending == 0
        {
            return;
        }
        let targets: Vec<(RoomId, u64)> = futures::stream::iter(rooms.iter().cloned())
            .map(|room| async move {
                let last = self.last_seq(&room).await.unwrap_or(0);
                (room, last)
            })
            .buffer_unordered(32)
            .filter(|(_, last)| futures::future::ready(*last > 0))
            .collect()
            .await;
        if targets.is_empty() {
            return;
        }
        let names: Vec<RoomId> = targets.iter().map(|(r, _)| r.clone()).collect();
        loop {
            let Ok(done) = store::processed(&self.pool, &names).await else {
                return;
            };
            let behind = targets
                .iter()
                .filter(|(r, last)| done.get(r).copied().unwrap_or(0) < *last)
                .count();
            if behind == 0 {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                metrics::counter!("notify_state_stale_total").increment(1);
                tracing::debug!(behind, "state answered before the consumer caught up");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `NOTIFY_READ`: moves the marker forward (clamped to the room's last seq), clears the
    /// notifications it covers, and tells every session of the user the new count.
    /// A non-member is refused (`forbidden`): no marker, no count of the room's messages.
    pub async fn read(&self, req: ReadRequest) -> Result<UnreadUpdate, ApiError> {
        self.require_member(&req.user, &req.room).await?;
        let last = match self.last_seq(&req.room).await {
            Ok(s) => s,
            Err(_) => store::processed(&self.pool, std::slice::from_ref(&req.room))
                .await
                .map_err(db_error)?
                .get(&req.room)
                .copied()
                .unwrap_or(0),
        };
        let seq = req.seq.min(last);
        let _guard = self.lock_room(&req.room).await;
        let (last_read, count) = store::read(&self.pool, &req.user, &req.room, seq)
            .await
            .map_err(db_error)?;
        let update = UnreadUpdate {
            user: req.user.clone(),
            room: req.room.clone(),
            count,
            last_read,
        };
        self.publish_json(subjects::user_unread(&req.user), &update)
            .await;
        Ok(update)
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
    /// "unread" to a newcomer (nor to someone rejoining after a leave).
    async fn joined_public(&self, user: &UserId, room: &RoomId) {
        let Ok(seq) = self.last_seq(room).await else {
            return;
        };
        match store::start_marker(&self.pool, user, room, seq).await {
            // Nothing to announce: the count of a room just joined is 0 by definition.
            Ok(_) => {}
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
