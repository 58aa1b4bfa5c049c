//! Rooms and membership, persisted in PostgreSQL and served to the edges over
//! [`chat_bus::subjects::ROOMS`]. Every committed change is announced on
//! `chat.user.<user>.membership`, so that each edge updates the user's sessions.

use std::collections::BTreeSet;

use chat_bus::api::{
    ApiError, Done, Membership, MembershipChange, RoomInfo, RoomsRequest, UserRooms, rooms,
};
use chat_bus::rpc::RoomsReply;
use chat_bus::{now_ms, subjects};
use chat_proto::{ErrorCode, RoomId, RoomKind, UserId};
use chat_runtime::db::db_error;
use sqlx::{PgPool, Postgres, Transaction};

/// Most user ids one `create` may list (protocol.md#ws v1.1 Quotas).
pub const MAX_CREATE_MEMBERS: usize = 1_000;

/// The rooms service.
#[derive(Clone)]
pub struct Rooms {
    pool: PgPool,
    nats: async_nats::Client,
    /// `CHAT_MAX_ROOMS_PER_USER`.
    max_rooms: u64,
    /// Orders membership changes among room events for integration webhooks.
    integration: Option<crate::integration::OrderHint>,
}

impl Rooms {
    pub fn new(pool: PgPool, nats: async_nats::Client) -> Self {
        Rooms {
            pool,
            nats,
            max_rooms: 1_000,
            integration: None,
        }
    }

    /// Membership changes carry their stream position for integration webhooks.
    pub fn with_integration(mut self, hint: crate::integration::OrderHint) -> Self {
        self.integration = Some(hint);
        self
    }

    /// A transaction for a membership change (with its stream position, see
    /// [`crate::integration::OrderHint`]).
    async fn begin(&self) -> Result<Transaction<'static, Postgres>, ApiError> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        if let Some(hint) = &self.integration {
            hint.mark(&mut tx).await.map_err(db_error)?;
        }
        Ok(tx)
    }

    /// Sets the quota of rooms per user.
    pub fn with_max_rooms(mut self, max: u64) -> Self {
        self.max_rooms = max;
        self
    }

    /// Adds `user` to `room` unless they are a member already (false then), refusing with
    /// `limit_exceeded` a user at the quota. The user's memberships are counted through the
    /// `memberships_by_user` index (at most the quota's rows) under a per-user transaction lock,
    /// so two joins racing at the quota cannot both pass.
    async fn add_within_quota(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        room: &RoomId,
        user: &UserId,
    ) -> Result<bool, ApiError> {
        if is_member(tx, room, user).await? {
            return Ok(false);
        }
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('rooms-of:' || $1))")
            .bind(user.as_str())
            .execute(&mut **tx)
            .await
            .map_err(db_error)?;
        let (count,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM (SELECT 1 FROM memberships WHERE user_id = $1 LIMIT $2) r",
        )
        .bind(user.as_str())
        .bind(self.max_rooms as i64)
        .fetch_one(&mut **tx)
        .await
        .map_err(db_error)?;
        if count as u64 >= self.max_rooms {
            metrics::counter!("chat_history_room_quota_refusals_total").increment(1);
            return Err(ApiError::new(
                ErrorCode::LimitExceeded,
                format!("{user} is in {} rooms, the most allowed", self.max_rooms),
            ));
        }
        add_member(tx, room, user).await
    }

    /// [`Self::add_within_quota`] for the members of a room just created, in three statements
    /// whatever their number (one per member made a create of 1,000 members 4,000 round trips,
    /// past the request deadline on a loaded machine): the users' locks in the set's order (the
    /// order every path takes them in), the first user at the quota if any, one insert.
    async fn add_new_room_members(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        room: &RoomId,
        users: &BTreeSet<UserId>,
    ) -> Result<(), ApiError> {
        let ids: Vec<&str> = users.iter().map(|u| u.as_str()).collect();
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtext('rooms-of:' || u)) \
             FROM unnest($1::text[]) WITH ORDINALITY AS t(u, i) ORDER BY i",
        )
        .bind(&ids)
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
        let at_quota: Option<(String,)> = sqlx::query_as(
            "SELECT u FROM unnest($1::text[]) AS u \
             WHERE (SELECT count(*) FROM (SELECT 1 FROM memberships WHERE user_id = u LIMIT $2) r) >= $2 \
             LIMIT 1",
        )
        .bind(&ids)
        .bind(self.max_rooms as i64)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db_error)?;
        if let Some((user,)) = at_quota {
            metrics::counter!("chat_history_room_quota_refusals_total").increment(1);
            return Err(ApiError::new(
                ErrorCode::LimitExceeded,
                format!("{user} is in {} rooms, the most allowed", self.max_rooms),
            ));
        }
        sqlx::query(
            "INSERT INTO memberships (room, user_id, joined_at) \
             SELECT $1, u, $3 FROM unnest($2::text[]) AS u ON CONFLICT DO NOTHING",
        )
        .bind(room.as_str())
        .bind(&ids)
        .bind(now_ms())
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    pub async fn handle(&self, req: RoomsRequest) -> Result<RoomsReply, ApiError> {
        match req {
            RoomsRequest::Join(rooms::Join { user, room }) => {
                self.join(user, room).await.map(RoomsReply::Room)
            }
            RoomsRequest::Leave(rooms::Leave { user, room }) => {
                self.leave(user, room).await.map(RoomsReply::Done)
            }
            RoomsRequest::Create(rooms::Create {
                user,
                room,
                private,
                members,
            }) => self
                .create(user, room, private, members)
                .await
                .map(RoomsReply::Room),
            RoomsRequest::Invite(rooms::Invite { user, room, target }) => {
                self.invite(user, room, target).await.map(RoomsReply::Done)
            }
            RoomsRequest::OpenDm(rooms::OpenDm { user, other }) => {
                self.open_dm(user, other).await.map(RoomsReply::Room)
            }
            RoomsRequest::UserRooms(rooms::UserRoomsOf { user }) => {
                self.user_rooms(user).await.map(RoomsReply::Rooms)
            }
            RoomsRequest::Members(rooms::Members { room }) => {
                self.members(room).await.map(RoomsReply::Room)
            }
            RoomsRequest::CreateRoom(rooms::CreateRoom {
                room,
                private,
                members,
                by,
            }) => self
                .create_room(room, private, members, by)
                .await
                .map(RoomsReply::Room),
            RoomsRequest::AddMember(rooms::AddMember { room, user, by }) => {
                self.add_member(room, user, by).await.map(RoomsReply::Room)
            }
            RoomsRequest::RemoveMember(rooms::RemoveMember { room, user }) => {
                self.remove_member(room, user).await.map(RoomsReply::Room)
            }
        }
    }

    async fn join(&self, user: UserId, room: RoomId) -> Result<RoomInfo, ApiError> {
        let mut tx = self.begin().await?;
        let kind = match room_kind(&mut tx, &room).await? {
            Some(kind) => kind,
            None if room.is_dm() => return Err(ApiError::forbidden("not a member of this room")),
            None => {
                create_room(&mut tx, &room, RoomKind::Public, &user).await?;
                RoomKind::Public
            }
        };
        let added = match kind {
            RoomKind::Public => self.add_within_quota(&mut tx, &room, &user).await?,
            RoomKind::Private | RoomKind::Dm => {
                if !is_member(&mut tx, &room, &user).await? {
                    return Err(ApiError::forbidden("not a member of this room"));
                }
                false
            }
        };
        let members = if kind == RoomKind::Public {
            Vec::new()
        } else {
            list_members(&mut tx, &room).await?
        };
        tx.commit().await.map_err(db_error)?;
        if added {
            self.announce(&user, &room, kind, true, &user).await;
        }
        Ok(RoomInfo {
            room,
            kind,
            members,
        })
    }

    async fn leave(&self, user: UserId, room: RoomId) -> Result<Done, ApiError> {
        let mut tx = self.begin().await?;
        let removed: Option<(String,)> = sqlx::query_as(
            "DELETE FROM memberships m USING rooms r
             WHERE m.room = $1 AND m.user_id = $2 AND r.id = m.room RETURNING r.kind",
        )
        .bind(room.as_str())
        .bind(user.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        if let Some((kind,)) = removed {
            let kind = RoomKind::parse(&kind).unwrap_or(RoomKind::Public);
            self.announce(&user, &room, kind, false, &user).await;
        }
        Ok(Done { room })
    }

    async fn create(
        &self,
        user: UserId,
        room: RoomId,
        private: bool,
        members: Vec<UserId>,
    ) -> Result<RoomInfo, ApiError> {
        if room.is_dm() {
            return Err(ApiError::bad_request(
                "room ids beginning with dm- are reserved",
            ));
        }
        if members.len() > MAX_CREATE_MEMBERS {
            return Err(ApiError::new(
                ErrorCode::LimitExceeded,
                format!("a create lists at most {MAX_CREATE_MEMBERS} members"),
            ));
        }
        let kind = if private {
            RoomKind::Private
        } else {
            RoomKind::Public
        };
        let mut tx = self.begin().await?;
        if !create_room(&mut tx, &room, kind, &user).await? {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "a room with this id exists",
            ));
        }
        let everyone: BTreeSet<UserId> = members.into_iter().chain([user.clone()]).collect();
        // A member at the quota refuses the whole create (the transaction is dropped).
        self.add_new_room_members(&mut tx, &room, &everyone).await?;
        tx.commit().await.map_err(db_error)?;
        for m in &everyone {
            self.announce(m, &room, kind, true, &user).await;
        }
        let members = if kind == RoomKind::Public {
            Vec::new()
        } else {
            everyone.into_iter().collect()
        };
        Ok(RoomInfo {
            room,
            kind,
            members,
        })
    }

    /// Trusted create (chat-api): as [`Self::create`], with no creator among the members.
    async fn create_room(
        &self,
        room: RoomId,
        private: bool,
        members: Vec<UserId>,
        by: Option<UserId>,
    ) -> Result<RoomInfo, ApiError> {
        if room.is_dm() {
            return Err(ApiError::bad_request(
                "room ids beginning with dm- are reserved",
            ));
        }
        if members.len() > MAX_CREATE_MEMBERS {
            return Err(ApiError::new(
                ErrorCode::LimitExceeded,
                format!("a create lists at most {MAX_CREATE_MEMBERS} members"),
            ));
        }
        let kind = if private {
            RoomKind::Private
        } else {
            RoomKind::Public
        };
        let creator = by.as_ref().map_or(TRUSTED_CREATOR, |b| b.as_str());
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        if !insert_room(&mut tx, &room, kind, creator).await? {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "a room with this id exists",
            ));
        }
        let everyone: BTreeSet<UserId> = members.into_iter().collect();
        if !everyone.is_empty() {
            self.add_new_room_members(&mut tx, &room, &everyone).await?;
        }
        tx.commit().await.map_err(db_error)?;
        for m in &everyone {
            self.announce(m, &room, kind, true, by.as_ref().unwrap_or(m))
                .await;
        }
        Ok(RoomInfo {
            room,
            kind,
            members: everyone.into_iter().collect(),
        })
    }

    /// Trusted add (chat-api): no inviter's check; the quota applies.
    async fn add_member(
        &self,
        room: RoomId,
        user: UserId,
        by: Option<UserId>,
    ) -> Result<RoomInfo, ApiError> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let Some(kind) = room_kind(&mut tx, &room).await? else {
            return Err(ApiError::new(ErrorCode::NotFound, "no such room"));
        };
        if kind == RoomKind::Dm {
            return Err(ApiError::forbidden(
                "the members of a direct-message room do not change",
            ));
        }
        let added = self.add_within_quota(&mut tx, &room, &user).await?;
        let members = list_members(&mut tx, &room).await?;
        tx.commit().await.map_err(db_error)?;
        if added {
            self.announce(&user, &room, kind, true, by.as_ref().unwrap_or(&user))
                .await;
        }
        Ok(RoomInfo {
            room,
            kind,
            members,
        })
    }

    /// Trusted removal (chat-api): announced as the user's `leave` is.
    async fn remove_member(&self, room: RoomId, user: UserId) -> Result<RoomInfo, ApiError> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let Some(kind) = room_kind(&mut tx, &room).await? else {
            return Err(ApiError::new(ErrorCode::NotFound, "no such room"));
        };
        let removed = sqlx::query("DELETE FROM memberships WHERE room = $1 AND user_id = $2")
            .bind(room.as_str())
            .bind(user.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?
            .rows_affected()
            == 1;
        let members = list_members(&mut tx, &room).await?;
        tx.commit().await.map_err(db_error)?;
        if removed {
            self.announce(&user, &room, kind, false, &user).await;
        }
        Ok(RoomInfo {
            room,
            kind,
            members,
        })
    }

    async fn invite(&self, user: UserId, room: RoomId, target: UserId) -> Result<Done, ApiError> {
        let mut tx = self.begin().await?;
        let Some(kind) = room_kind(&mut tx, &room).await? else {
            return Err(ApiError::new(ErrorCode::NotFound, "no such room"));
        };
        if kind == RoomKind::Dm {
            return Err(ApiError::forbidden(
                "nobody can be invited to a direct-message room",
            ));
        }
        if !is_member(&mut tx, &room, &user).await? {
            return Err(ApiError::forbidden("only a member may invite to this room"));
        }
        let added = self.add_within_quota(&mut tx, &room, &target).await?;
        tx.commit().await.map_err(db_error)?;
        if added {
            self.announce(&target, &room, kind, true, &user).await;
        }
        Ok(Done { room })
    }

    async fn open_dm(&self, user: UserId, other: UserId) -> Result<RoomInfo, ApiError> {
        let Some(room) = RoomId::dm(&user, &other) else {
            return Err(ApiError::bad_request(
                "a direct-message room needs two different users",
            ));
        };
        let mut tx = self.begin().await?;
        if !create_room(&mut tx, &room, RoomKind::Dm, &user).await? {
            // An existing room with this id must be this pair's DM: a direct-message room,
            // created by one of the two, with no member but them. Anything else (a room made
            // some other way, or another pair whose ids collide in the 64-bit id) is refused.
            let row: Option<(String, String)> =
                sqlx::query_as("SELECT kind, created_by FROM rooms WHERE id = $1")
                    .bind(room.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_error)?;
            let pair = [user.as_str(), other.as_str()];
            let is_dm_of_pair = match row {
                Some((kind, by)) => {
                    RoomKind::parse(&kind) == Some(RoomKind::Dm) && pair.contains(&by.as_str())
                }
                None => false,
            };
            let members = list_members(&mut tx, &room).await?;
            if !is_dm_of_pair || members.iter().any(|m| !pair.contains(&m.as_str())) {
                tracing::warn!(%room, "open_dm: the room with this DM id is not the pair's DM");
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    "a room with this direct-message id exists and is not this pair's",
                ));
            }
        }
        let mut added = Vec::new();
        for m in [&user, &other] {
            if self.add_within_quota(&mut tx, &room, m).await? {
                added.push(m.clone());
            }
        }
        tx.commit().await.map_err(db_error)?;
        for m in &added {
            self.announce(m, &room, RoomKind::Dm, true, &user).await;
        }
        let mut members = vec![user, other];
        members.sort();
        Ok(RoomInfo {
            room,
            kind: RoomKind::Dm,
            members,
        })
    }

    async fn user_rooms(&self, user: UserId) -> Result<UserRooms, ApiError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT m.room, r.kind FROM memberships m JOIN rooms r ON r.id = m.room
             WHERE m.user_id = $1 ORDER BY m.room",
        )
        .bind(user.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let rooms = rows
            .into_iter()
            .filter_map(|(room, kind)| {
                Some(Membership {
                    room: RoomId::new(room).ok()?,
                    kind: RoomKind::parse(&kind)?,
                })
            })
            .collect();
        Ok(UserRooms { rooms })
    }

    async fn members(&self, room: RoomId) -> Result<RoomInfo, ApiError> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let Some(kind) = room_kind(&mut tx, &room).await? else {
            return Err(ApiError::new(ErrorCode::NotFound, "no such room"));
        };
        let members = list_members(&mut tx, &room).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(RoomInfo {
            room,
            kind,
            members,
        })
    }

    async fn announce(
        &self,
        user: &UserId,
        room: &RoomId,
        kind: RoomKind,
        member: bool,
        by: &UserId,
    ) {
        let change = MembershipChange {
            user: user.clone(),
            room: room.clone(),
            kind,
            member,
            by: by.clone(),
        };
        let payload = match serde_json::to_vec(&change) {
            Ok(p) => p,
            Err(_) => return,
        };
        if let Err(e) = self
            .nats
            .publish(subjects::user_membership(user), payload.into())
            .await
        {
            tracing::warn!(error = %e, "membership announcement not published");
        }
    }
}

async fn room_kind(
    tx: &mut Transaction<'_, Postgres>,
    room: &RoomId,
) -> Result<Option<RoomKind>, ApiError> {
    let row: Option<(String,)> = sqlx::query_as("SELECT kind FROM rooms WHERE id = $1")
        .bind(room.as_str())
        .fetch_optional(&mut **tx)
        .await
        .map_err(db_error)?;
    Ok(row.and_then(|(k,)| RoomKind::parse(&k)))
}

/// `created_by` of a room created through chat-api without naming who for.
pub const TRUSTED_CREATOR: &str = "chat-api";

/// Inserts a room; false if it existed.
async fn create_room(
    tx: &mut Transaction<'_, Postgres>,
    room: &RoomId,
    kind: RoomKind,
    by: &UserId,
) -> Result<bool, ApiError> {
    insert_room(tx, room, kind, by.as_str()).await
}

/// Inserts a room created by `by` (a user id, or [`TRUSTED_CREATOR`]); false if it existed.
async fn insert_room(
    tx: &mut Transaction<'_, Postgres>,
    room: &RoomId,
    kind: RoomKind,
    by: &str,
) -> Result<bool, ApiError> {
    let done = sqlx::query(
        "INSERT INTO rooms (id, kind, created_by, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
    )
    .bind(room.as_str())
    .bind(kind.as_str())
    .bind(by)
    .bind(now_ms())
    .execute(&mut **tx)
    .await
    .map_err(db_error)?;
    Ok(done.rows_affected() == 1)
}

/// Adds a member; false if they were one already.
async fn add_member(
    tx: &mut Transaction<'_, Postgres>,
    room: &RoomId,
    user: &UserId,
) -> Result<bool, ApiError> {
    let done = sqlx::query(
        "INSERT INTO memberships (room, user_id, joined_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(room.as_str())
    .bind(user.as_str())
    .bind(now_ms())
    .execute(&mut **tx)
    .await
    .map_err(db_error)?;
    Ok(done.rows_affected() == 1)
}

/// Whether `user` is a member of `room` (any kind of room).
pub async fn is_member_of(pool: &PgPool, room: &RoomId, user: &UserId) -> Result<bool, ApiError> {
    let row: Option<(i32,)> =
        sqlx::query_as("SELECT 1 FROM memberships WHERE room = $1 AND user_id = $2")
            .bind(room.as_str())
            .bind(user.as_str())
            .fetch_optional(pool)
            .await
            .map_err(db_error)?;
    Ok(row.is_some())
}

async fn is_member(
    tx: &mut Transaction<'_, Postgres>,
    room: &RoomId,
    user: &UserId,
) -> Result<bool, ApiError> {
    let row: Option<(i32,)> =
        sqlx::query_as("SELECT 1 FROM memberships WHERE room = $1 AND user_id = $2")
            .bind(room.as_str())
            .bind(user.as_str())
            .fetch_optional(&mut **tx)
            .await
            .map_err(db_error)?;
    Ok(row.is_some())
}

async fn list_members(
    tx: &mut Transaction<'_, Postgres>,
    room: &RoomId,
) -> Result<Vec<UserId>, ApiError> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT user_id FROM memberships WHERE room = $1 ORDER BY user_id")
            .bind(room.as_str())
            .fetch_all(&mut **tx)
            .await
            .map_err(db_error)?;
    Ok(rows
        .into_iter()
        .filter_map(|(u,)| UserId::new(u).ok())
        .collect())
}
