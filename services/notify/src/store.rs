//! chat-notify's tables: what the consumer writes, and the queries behind unread counts, read
//! markers and pending notifications.
//!
//! Unread is computed, never incremented: `count(*)` of the room's rows from others above the
//! reader's marker, over the `(room, seq)` primary key, only when a count is asked for (`hello`,
//! `joined`, a marker that moves), never per message (protocol.md#ws-unread). A redelivered event
//! re-inserts rows that exist (`ON CONFLICT DO NOTHING`), so it can never count twice.

use std::collections::HashMap;

use chat_bus::api::UserNotification;
use chat_bus::now_ms;
use chat_proto::{Notification, NotificationKind, RoomId, UserId};
use sqlx::PgPool;

/// Most pending notifications one state request lists (the newest).
pub const MAX_PENDING_LISTED: i64 = chat_proto::HELLO_NOTIFICATIONS as i64;

/// One event of the stream as the consumer stores it.
#[derive(Debug, Clone)]
pub struct RoomMessage {
    pub room: RoomId,
    pub seq: u64,
    /// None for an event that could not be decoded: it counts for nobody.
    pub sender: Option<UserId>,
}

/// A notification for a user, to be stored.
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub user: UserId,
    pub notification: Notification,
}

fn kind_str(kind: NotificationKind) -> &'static str {
    match kind {
        NotificationKind::Mention => "mention",
        NotificationKind::Dm => "dm",
        NotificationKind::Invite => "invite",
        NotificationKind::Reply => "reply",
    }
}

fn parse_kind(s: &str) -> Option<NotificationKind> {
    match s {
        "mention" => Some(NotificationKind::Mention),
        "dm" => Some(NotificationKind::Dm),
        "invite" => Some(NotificationKind::Invite),
        "reply" => Some(NotificationKind::Reply),
        _ => None,
    }
}

/// Binds the rows to the stream incarnation `epoch`. If the stream was recreated since they
/// were written, its seqs start over and every stored seq is meaningless: the state is reset.
pub async fn ensure_epoch(pool: &PgPool, epoch: &str) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let current: Option<(String,)> =
        sqlx::query_as("SELECT epoch FROM stream_epoch WHERE id FOR UPDATE")
            .fetch_optional(&mut *tx)
            .await?;
    let reset = match current {
        Some((e,)) if e == epoch => false,
        Some(_) => {
            sqlx::query("TRUNCATE room_messages, read_markers, notifications")
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE stream_epoch SET epoch = $1 WHERE id")
                .bind(epoch)
                .execute(&mut *tx)
                .await?;
            true
        }
        None => {
            sqlx::query("INSERT INTO stream_epoch (id, epoch) VALUES (TRUE, $1)")
                .bind(epoch)
                .execute(&mut *tx)
                .await?;
            false
        }
    };
    tx.commit().await?;
    Ok(reset)
}

/// Stores a batch of events and their notifications in one transaction.
/// With `outbox`, new notifications are also queued for the webhook in the same transaction.
/// Returns the ids to publish live: the new ones, and those of `again` (notifications of
/// redelivered events) that are still pending.
pub async fn store_batch(
    pool: &PgPool,
    messages: &[RoomMessage],
    notes: &[NewNotification],
    again: &[String],
    outbox: bool,
) -> Result<Vec<String>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let rooms: Vec<&str> = messages.iter().map(|m| m.room.as_str()).collect();
    let seqs: Vec<i64> = messages.iter().map(|m| m.seq as i64).collect();
    let senders: Vec<Option<&str>> = messages
        .iter()
        .map(|m| m.sender.as_ref().map(UserId::as_str))
        .collect();
    sqlx::query(
        "INSERT INTO room_messages (room, seq, sender)
         SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[])
         ON CONFLICT (room, seq) DO NOTHING",
    )
    .bind(&rooms)
    .bind(&seqs)
    .bind(&senders)
    .execute(&mut *tx)
    .await?;
    let new_ids = insert_notifications(&mut tx, notes).await?;
    if outbox {
        queue_webhooks(&mut tx, notes, &new_ids).await?;
    }
    let mut publish = new_ids;
    if !again.is_empty() {
        let again: Vec<&str> = again.iter().map(String::as_str).collect();
        let pending: Vec<(String,)> =
            sqlx::query_as("SELECT id FROM notifications WHERE id = ANY($1::text[])")
                .bind(&again)
                .fetch_all(&mut *tx)
                .await?;
        for (id,) in pending {
            if !publish.contains(&id) {
                publish.push(id);
            }
        }
    }
    tx.commit().await?;
    Ok(publish)
}

/// Queues the notifications of `notes` whose id is in `ids` for the webhook.
async fn queue_webhooks(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    notes: &[NewNotification],
    ids: &[String],
) -> Result<(), sqlx::Error> {
    let mut out_ids = Vec::new();
    let mut users = Vec::new();
    let mut bodies = Vec::new();
    for n in notes.iter().filter(|n| ids.contains(&n.notification.id)) {
        let body = serde_json::to_string(&UserNotification {
            user: n.user.clone(),
            notification: n.notification.clone(),
        })
        .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        out_ids.push(n.notification.id.as_str());
        users.push(n.user.as_str());
        bodies.push(body);
    }
    if out_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO webhook_outbox (id, user_id, body, next_at, created_at)
         SELECT id, u, b, $4, $4 FROM UNNEST($1::text[], $2::text[], $3::text[]) AS x(id, u, b)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&out_ids)
    .bind(&users)
    .bind(&bodies)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A webhook delivery claimed from the outbox.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: String,
    pub user: UserId,
    pub body: String,
    /// Attempts so far, this one included.
    pub attempts: i32,
    pub created_at: i64,
}

/// Claims up to `limit` due deliveries, leasing them until `lease_until` (ms) so that no other
/// instance takes them meanwhile; a lease that runs out (the instance died) makes them due again.
pub async fn claim_webhooks(
    pool: &PgPool,
    now: i64,
    lease_until: i64,
    limit: i64,
) -> Result<Vec<Claimed>, sqlx::Error> {
    // A notification read meanwhile (on another device) is not pushed any more.
    sqlx::query(
        "DELETE FROM webhook_outbox o WHERE o.next_at <= $1
         AND NOT EXISTS (SELECT 1 FROM notifications n WHERE n.id = o.id)",
    )
    .bind(now)
    .execute(pool)
    .await?;
    let rows: Vec<(String, String, String, i32, i64)> = sqlx::query_as(
        "UPDATE webhook_outbox SET next_at = $2, attempts = attempts + 1
         WHERE id IN (SELECT id FROM webhook_outbox WHERE next_at <= $1
                      ORDER BY next_at LIMIT $3 FOR UPDATE SKIP LOCKED)
         RETURNING id, user_id, body, attempts, created_at",
    )
    .bind(now)
    .bind(lease_until)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, user, body, attempts, created_at)| {
            Some(Claimed {
                id,
                user: UserId::new(user).ok()?,
                body,
                attempts,
                created_at,
            })
        })
        .collect())
}

/// Removes a delivery (done, skipped or given up).
pub async fn finish_webhook(pool: &PgPool, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM webhook_outbox WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Schedules the next attempt of a delivery.
pub async fn retry_webhook(pool: &PgPool, id: &str, next_at: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE webhook_outbox SET next_at = $2 WHERE id = $1")
        .bind(id)
        .bind(next_at)
        .execute(pool)
        .await?;
    Ok(())
}

/// Inserts notifications, except those already read (the user's marker covers their seq: the
/// reader was ahead of this consumer, or the event is redelivered after a read cleared it) and
/// those that exist; returns the ids inserted.
async fn insert_notifications(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    notes: &[NewNotification],
) -> Result<Vec<String>, sqlx::Error> {
    if notes.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids = Vec::with_capacity(notes.len());
    let mut users = Vec::with_capacity(notes.len());
    let mut kinds = Vec::with_capacity(notes.len());
    let mut rooms = Vec::with_capacity(notes.len());
    let mut seqs = Vec::with_capacity(notes.len());
    let mut senders = Vec::with_capacity(notes.len());
    let mut previews = Vec::with_capacity(notes.len());
    let mut tss = Vec::with_capacity(notes.len());
    for n in notes {
        let x = &n.notification;
        ids.push(x.id.as_str());
        users.push(n.user.as_str());
        kinds.push(kind_str(x.kind));
        rooms.push(x.room.as_str());
        seqs.push(x.seq as i64);
        senders.push(x.from.as_str());
        previews.push(x.preview.as_str());
        tss.push(x.ts);
    }
    let rows: Vec<(String,)> = sqlx::query_as(
        "INSERT INTO notifications (id, user_id, kind, room, seq, sender, preview, ts)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                              $6::text[], $7::text[], $8::bigint[])
                       AS x(id, user_id, kind, room, seq, sender, preview, ts)
         WHERE NOT EXISTS (SELECT 1 FROM read_markers r
                           WHERE r.user_id = x.user_id AND r.room = x.room AND r.last_read >= x.seq)
         ON CONFLICT (id) DO NOTHING
         RETURNING id",
    )
    .bind(&ids)
    .bind(&users)
    .bind(&kinds)
    .bind(&rooms)
    .bind(&seqs)
    .bind(&senders)
    .bind(&previews)
    .bind(&tss)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Stores one notification made outside the consumer (an invite); true if it is new.
pub async fn store_notification(
    pool: &PgPool,
    note: &NewNotification,
    outbox: bool,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let new = insert_notifications(&mut tx, std::slice::from_ref(note)).await?;
    if outbox {
        queue_webhooks(&mut tx, std::slice::from_ref(note), &new).await?;
    }
    tx.commit().await?;
    Ok(!new.is_empty())
}

/// Others' stored messages in `room` with `after < seq <= upto`.
pub async fn unread_in_range(
    pool: &PgPool,
    user: &UserId,
    room: &RoomId,
    after: u64,
    upto: u64,
) -> Result<u64, sqlx::Error> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM room_messages
         WHERE room = $1 AND seq > $2 AND seq <= $3 AND sender <> $4",
    )
    .bind(room.as_str())
    .bind(after as i64)
    .bind(upto.min(i64::MAX as u64) as i64)
    .bind(user.as_str())
    .fetch_one(pool)
    .await?;
    Ok(n as u64)
}

/// id, kind, room, seq, sender, preview, ts, and the count of all pending.
type PendingRow = (String, String, String, i64, String, String, i64, i64);

/// A user's pending notifications in `rooms`: the newest [`MAX_PENDING_LISTED`], oldest first,
/// and how many are pending in all (protocol.md#ws v1.1), in one query.
pub async fn pending(
    pool: &PgPool,
    user: &UserId,
    rooms: &[RoomId],
) -> Result<(Vec<Notification>, u64), sqlx::Error> {
    let names: Vec<&str> = rooms.iter().map(RoomId::as_str).collect();
    // The window count is taken before the LIMIT: it counts every pending notification.
    let rows: Vec<PendingRow> = sqlx::query_as(
        "SELECT id, kind, room, seq, sender, preview, ts, total FROM (
             SELECT *, count(*) OVER () AS total FROM notifications
             WHERE user_id = $1 AND room = ANY($2::text[])
             ORDER BY ts DESC, seq DESC LIMIT $3
         ) newest ORDER BY ts, seq, id",
    )
    .bind(user.as_str())
    .bind(&names)
    .bind(MAX_PENDING_LISTED)
    .fetch_all(pool)
    .await?;
    let total = rows.first().map_or(0, |r| r.7.max(0) as u64);
    let listed = rows
        .into_iter()
        .filter_map(|(id, kind, room, seq, from, preview, ts, _)| {
            Some(Notification {
                id,
                kind: parse_kind(&kind)?,
                room: RoomId::new(room).ok()?,
                seq: seq as u64,
                from: UserId::new(from).ok()?,
                preview,
                ts,
            })
        })
        .collect();
    Ok((listed, total))
}

/// Moves a marker forward to `seq` (never back) and clears the notifications it covers.
/// Returns the effective marker (the read one or the join floor, whichever is higher) before
/// and after: equal when the read moved nothing (protocol.md#ws-unread: then nothing is pushed).
pub async fn read(
    pool: &PgPool,
    user: &UserId,
    room: &RoomId,
    seq: u64,
) -> Result<(u64, u64), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let before: Option<(i64,)> = sqlx::query_as(
        "SELECT GREATEST(last_read, joined_at) FROM read_markers
         WHERE user_id = $1 AND room = $2 FOR UPDATE",
    )
    .bind(user.as_str())
    .bind(room.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let (read, joined): (i64, i64) = sqlx::query_as(
        "INSERT INTO read_markers (user_id, room, last_read) VALUES ($1, $2, $3)
         ON CONFLICT (user_id, room)
         DO UPDATE SET last_read = GREATEST(read_markers.last_read, EXCLUDED.last_read)
         RETURNING last_read, joined_at",
    )
    .bind(user.as_str())
    .bind(room.as_str())
    .bind(seq as i64)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM notifications WHERE user_id = $1 AND room = $2 AND seq <= $3")
        .bind(user.as_str())
        .bind(room.as_str())
        .bind(read)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((before.map_or(0, |(b,)| b as u64), read.max(joined) as u64))
}

/// A user's effective marker in each of `rooms` (the read one or the join floor), and the count
/// of others' stored messages above it up to `upto` (the consumer's ack floor: everything at or
/// below it is stored). The rest, up to the seq a count covers, is counted from the stream.
pub async fn unread_upto(
    pool: &PgPool,
    user: &UserId,
    rooms: &[RoomId],
    upto: u64,
) -> Result<HashMap<RoomId, (u64, u64)>, sqlx::Error> {
    let names: Vec<&str> = rooms.iter().map(RoomId::as_str).collect();
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT q.room, COALESCE(GREATEST(r.last_read, r.joined_at), 0),
                (SELECT count(*) FROM room_messages m
                 WHERE m.room = q.room AND m.seq > COALESCE(GREATEST(r.last_read, r.joined_at), 0)
                   AND m.seq <= $3 AND m.sender <> $1)
         FROM UNNEST($2::text[]) AS q(room)
         LEFT JOIN read_markers r ON r.user_id = $1 AND r.room = q.room",
    )
    .bind(user.as_str())
    .bind(&names)
    .bind(upto.min(i64::MAX as u64) as i64)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(room, last, n)| Some((RoomId::new(room).ok()?, (last as u64, n as u64))))
        .collect())
}

/// Sets the join floor of a marker to `seq` (only forward): a join is not a read, so it clears
/// no notification. True if the effective marker moved (the floor is above both the old floor
/// and what was read), i.e. the count changed.
pub async fn start_marker(
    pool: &PgPool,
    user: &UserId,
    room: &RoomId,
    seq: u64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO read_markers (user_id, room, joined_at) VALUES ($1, $2, $3)
         ON CONFLICT (user_id, room)
         DO UPDATE SET joined_at = EXCLUDED.joined_at
         WHERE GREATEST(read_markers.joined_at, read_markers.last_read) < EXCLUDED.joined_at",
    )
    .bind(user.as_str())
    .bind(room.as_str())
    .bind(seq as i64)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1 && seq > 0)
}

/// Withdraws the pending notifications of deleted messages (protocol.md#ws-lifecycle), with their
/// webhook deliveries not yet made. `deleted` are (room, seq) of the deleted messages.
pub async fn withdraw(pool: &PgPool, deleted: &[(RoomId, u64)]) -> Result<u64, sqlx::Error> {
    if deleted.is_empty() {
        return Ok(0);
    }
    let rooms: Vec<&str> = deleted.iter().map(|(r, _)| r.as_str()).collect();
    let seqs: Vec<i64> = deleted.iter().map(|(_, s)| *s as i64).collect();
    let mut tx = pool.begin().await?;
    let ids: Vec<(String,)> = sqlx::query_as(
        "DELETE FROM notifications n USING UNNEST($1::text[], $2::bigint[]) AS d(room, seq)
         WHERE n.room = d.room AND n.seq = d.seq RETURNING n.id",
    )
    .bind(&rooms)
    .bind(&seqs)
    .fetch_all(&mut *tx)
    .await?;
    let ids: Vec<String> = ids.into_iter().map(|(id,)| id).collect();
    if !ids.is_empty() {
        sqlx::query("DELETE FROM webhook_outbox WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(ids.len() as u64)
}
