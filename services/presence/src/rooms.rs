//! Who should hear about a user's status: the rooms of the user and the size of each room, asked
//! of chat-history over [`subjects::ROOMS`] and cached briefly in memory. Every instance drops a
//! user's cached rooms when a `chat.user.<user>.membership` change passes, so a join is seen at
//! once; the cache only saves lookups between changes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chat_bus::api::{ApiError, RoomInfo, UserRooms, rooms};
use chat_bus::rpc;
use chat_proto::{RoomId, RoomKind, UserId};

/// How long a user's list of rooms is reused.
const USER_ROOMS_TTL: Duration = Duration::from_secs(10);
/// How long a room's size is reused (it only decides whether the room is too big to broadcast to).
const ROOM_SIZE_TTL: Duration = Duration::from_secs(30);
/// Cached entries beyond which the caches are cleared (a crude bound on memory).
const MAX_CACHED: usize = 100_000;

/// A user's rooms, with when they were fetched.
type CachedRooms = (Instant, Vec<(RoomId, RoomKind)>);

/// The rooms directory, backed by chat-history.
pub struct Directory {
    nats: async_nats::Client,
    timeout: Duration,
    user_rooms: Mutex<HashMap<UserId, CachedRooms>>,
    room_sizes: Mutex<HashMap<RoomId, (Instant, usize)>>,
    /// Bumped by every membership change: an answer fetched across a change may predate it, so
    /// it is used but not cached.
    generation: AtomicU64,
}

impl Directory {
    pub fn new(nats: async_nats::Client, timeout: Duration) -> Self {
        Directory {
            nats,
            timeout,
            user_rooms: Mutex::new(HashMap::new()),
            room_sizes: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    /// The rooms `user` is a member of.
    pub async fn user_rooms(&self, user: &UserId) -> Result<Vec<(RoomId, RoomKind)>, ApiError> {
        if let Some((at, rooms)) = lock(&self.user_rooms).get(user)
            && at.elapsed() < USER_ROOMS_TTL
        {
            return Ok(rooms.clone());
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let reply: UserRooms = rpc::call(
            &self.nats,
            &rooms::UserRoomsOf { user: user.clone() },
            self.timeout,
        )
        .await?;
        let rooms: Vec<(RoomId, RoomKind)> =
            reply.rooms.into_iter().map(|m| (m.room, m.kind)).collect();
        let mut cache = lock(&self.user_rooms);
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        if self.generation.load(Ordering::SeqCst) == generation {
            cache.insert(user.clone(), (Instant::now(), rooms.clone()));
        }
        Ok(rooms)
    }

    /// A room's kind and members, fresh from chat-history (snapshots must be exact).
    pub async fn members(&self, room: &RoomId) -> Result<RoomInfo, ApiError> {
        let info: RoomInfo = rpc::call(
            &self.nats,
            &rooms::Members { room: room.clone() },
            self.timeout,
        )
        .await?;
        self.remember_size(room, info.members.len());
        Ok(info)
    }

    /// How many members `room` has (cached).
    pub async fn room_size(&self, room: &RoomId, kind: RoomKind) -> Result<usize, ApiError> {
        if kind == RoomKind::Dm {
            return Ok(2);
        }
        if let Some((at, size)) = lock(&self.room_sizes).get(room)
            && at.elapsed() < ROOM_SIZE_TTL
        {
            return Ok(*size);
        }
        Ok(self.members(room).await?.members.len())
    }

    fn remember_size(&self, room: &RoomId, size: usize) {
        let mut cache = lock(&self.room_sizes);
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(room.clone(), (Instant::now(), size));
    }

    /// A membership of `user` in `room` changed: forget what the caches say about both.
    pub fn forget(&self, user: &UserId, room: &RoomId) {
        let mut cache = lock(&self.user_rooms);
        self.generation.fetch_add(1, Ordering::SeqCst);
        cache.remove(user);
        drop(cache);
        lock(&self.room_sizes).remove(room);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
