//! Room members, asked of chat-history (`RoomsRequest::Members`) and cached. A membership event
//! (`chat.user.*.membership`) drops the room's entry; entries also expire after a TTL in case an
//! event was missed while NATS was away.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chat_bus::api::{self, ApiError, RoomInfo, RoomsRequest};
use chat_bus::subjects;
use chat_proto::{ErrorCode, RoomId, RoomKind};

struct Entry {
    info: Arc<RoomInfo>,
    fetched: Instant,
}

/// The cache; cheap to clone.
#[derive(Clone)]
pub struct Members {
    inner: Arc<Inner>,
}

struct Inner {
    nats: async_nats::Client,
    timeout: Duration,
    ttl: Duration,
    cache: Mutex<HashMap<RoomId, Entry>>,
    /// Bumped by every invalidation: an answer fetched across one is used but not cached.
    generation: AtomicU64,
}

impl Inner {
    fn cache(&self) -> MutexGuard<'_, HashMap<RoomId, Entry>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Members {
    pub fn new(nats: async_nats::Client, timeout: Duration, ttl: Duration) -> Self {
        Members {
            inner: Arc::new(Inner {
                nats,
                timeout,
                ttl,
                cache: Mutex::new(HashMap::new()),
                generation: AtomicU64::new(0),
            }),
        }
    }

    /// A room's kind and members; `unavailable` while chat-history does not answer. A room
    /// chat-history does not know (a bot posting to a room nobody joined) has no members.
    pub async fn get(&self, room: &RoomId) -> Result<Arc<RoomInfo>, ApiError> {
        if let Some(e) = self.inner.cache().get(room)
            && e.fetched.elapsed() < self.inner.ttl
        {
            return Ok(e.info.clone());
        }
        self.refresh(room).await
    }

    /// Asks chat-history again, bypassing the cache.
    pub async fn refresh(&self, room: &RoomId) -> Result<Arc<RoomInfo>, ApiError> {
        let generation = self.inner.generation.load(Ordering::SeqCst);
        let reply: Result<RoomInfo, ApiError> = api::request(
            &self.inner.nats,
            subjects::ROOMS,
            &RoomsRequest::Members { room: room.clone() },
            self.inner.timeout,
        )
        .await;
        let info = match reply {
            Ok(info) => Arc::new(info),
            Err(e) if e.code == ErrorCode::NotFound => Arc::new(RoomInfo {
                room: room.clone(),
                kind: if room.is_dm() {
                    RoomKind::Dm
                } else {
                    RoomKind::Public
                },
                members: Vec::new(),
            }),
            Err(e) => return Err(e),
        };
        let mut cache = self.inner.cache();
        if self.inner.generation.load(Ordering::SeqCst) == generation {
            cache.insert(
                room.clone(),
                Entry {
                    info: info.clone(),
                    fetched: Instant::now(),
                },
            );
        }
        Ok(info)
    }

    /// How long ago the cached member list of `room` was fetched (None: not cached).
    pub fn age(&self, room: &RoomId) -> Option<Duration> {
        self.inner.cache().get(room).map(|e| e.fetched.elapsed())
    }

    /// Forgets a room's members (its membership changed).
    pub fn invalidate(&self, room: &RoomId) {
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
        self.inner.cache().remove(room);
    }
}
