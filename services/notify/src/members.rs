//! Room members, asked of chat-history (`RoomsRequest::Members`) and cached. A membership event
//! (`chat.user.*.membership`) drops the room's entry; entries also expire after a TTL in case an
//! event was missed while NATS was away. The cache holds at most `NOTIFY_MEMBERS_CACHE_MAX`
//! rooms (issue 15 item 12: it once grew by every room ever posted to): when full, expired
//! entries go first, then the oldest-fetched eighth, so an insert costs O(1) amortised.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chat_bus::api::{ApiError, RoomInfo, rooms};
use chat_bus::rpc;
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
    /// Most rooms cached.
    max: usize,
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
    pub fn new(nats: async_nats::Client, timeout: Duration, ttl: Duration, max: usize) -> Self {
        Members {
            inner: Arc::new(Inner {
                nats,
                timeout,
                ttl,
                max: max.max(1),
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
        let reply: Result<RoomInfo, ApiError> = rpc::call(
            &self.inner.nats,
            &rooms::Members { room: room.clone() },
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
            let entry = Entry {
                info: info.clone(),
                fetched: Instant::now(),
            };
            insert_bounded(
                &mut cache,
                room.clone(),
                entry,
                self.inner.max,
                self.inner.ttl,
            );
            metrics::gauge!("chat_notify_member_cache_entries").set(cache.len() as f64);
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

/// Inserts into a cache of at most `max` entries: when a new room finds it full, the expired
/// entries are dropped, then (if still full) the oldest-fetched eighth — one O(n) pass per
/// `max / 8` inserts.
fn insert_bounded(
    cache: &mut HashMap<RoomId, Entry>,
    room: RoomId,
    entry: Entry,
    max: usize,
    ttl: Duration,
) {
    if cache.len() >= max && !cache.contains_key(&room) {
        cache.retain(|_, e| e.fetched.elapsed() < ttl);
        if cache.len() >= max {
            let mut ages: Vec<Instant> = cache.values().map(|e| e.fetched).collect();
            let k = (max / 8).clamp(1, ages.len());
            let (_, cutoff, _) = ages.select_nth_unstable(k - 1);
            let cutoff = *cutoff;
            cache.retain(|_, e| e.fetched > cutoff);
        }
    }
    cache.insert(room, entry);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(room: &RoomId, fetched: Instant) -> Entry {
        Entry {
            info: Arc::new(RoomInfo {
                room: room.clone(),
                kind: RoomKind::Public,
                members: Vec::new(),
            }),
            fetched,
        }
    }

    #[test]
    fn the_cache_stays_bounded_and_evicts_expired_then_oldest() {
        let ttl = Duration::from_secs(60);
        let mut cache = HashMap::new();
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            let room = RoomId::new(format!("r{i}")).unwrap();
            let e = entry(&room, t0 + Duration::from_micros(i as u64));
            insert_bounded(&mut cache, room, e, 64, ttl);
            assert!(cache.len() <= 64, "{} entries after {i}", cache.len());
        }
        // The newest room is kept; the oldest are gone.
        assert!(cache.contains_key(&RoomId::new("r9999").unwrap()));
        assert!(!cache.contains_key(&RoomId::new("r0").unwrap()));
        // Expired entries go before fresh ones.
        let mut cache = HashMap::new();
        let old = Instant::now()
            .checked_sub(Duration::from_secs(120))
            .unwrap();
        let stale = RoomId::new("stale").unwrap();
        insert_bounded(&mut cache, stale.clone(), entry(&stale, old), 2, ttl);
        let fresh = RoomId::new("fresh").unwrap();
        insert_bounded(
            &mut cache,
            fresh.clone(),
            entry(&fresh, Instant::now()),
            2,
            ttl,
        );
        let third = RoomId::new("third").unwrap();
        insert_bounded(
            &mut cache,
            third.clone(),
            entry(&third, Instant::now()),
            2,
            ttl,
        );
        assert!(cache.contains_key(&fresh) && cache.contains_key(&third));
        assert!(!cache.contains_key(&stale));
        // Re-inserting a cached room at the bound evicts nothing.
        insert_bounded(
            &mut cache,
            fresh.clone(),
            entry(&fresh, Instant::now()),
            2,
            ttl,
        );
        assert_eq!(cache.len(), 2);
    }
}
