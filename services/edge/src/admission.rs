//! Who may open a connection, and what an open connection counts against (protocol.md#ws
//! Quotas, issue 15 item 9): new connections per second per client address (so that one address
//! cannot take the whole admission rate), unauthenticated connections apart from authenticated
//! ones (a client that never authenticates holds no slot of `CHAT_MAX_CONNECTIONS`), and open
//! sessions per user. Every slot is a guard given back when dropped, whatever way the task
//! holding it ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chat_proto::UserId;

use crate::ratelimit::{TokenBucket, Verdict};

/// One unit of a counted resource (open connections, unauthenticated connections), counted in
/// its counter and gauge until dropped — a panic or an abort included (issue 15 item 1: a leaked
/// count once locked every later client out with 503).
#[derive(Debug)]
pub struct Slot {
    counter: Arc<AtomicUsize>,
    gauge: &'static str,
}

impl Slot {
    /// Takes a slot when fewer than `max` are taken.
    pub fn try_take(counter: &Arc<AtomicUsize>, max: usize, gauge: &'static str) -> Option<Slot> {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        metrics::gauge!(gauge).increment(1.0);
        Some(Slot {
            counter: counter.clone(),
            gauge,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!(self.gauge).decrement(1.0);
    }
}

/// Open sessions per user on this edge (`CHAT_MAX_SESSIONS_PER_USER`).
#[derive(Debug)]
pub struct UserSessions {
    max: usize,
    counts: Mutex<HashMap<UserId, usize>>,
}

/// One session of a user, counted until dropped.
#[derive(Debug)]
pub struct UserSlot {
    owner: Arc<UserSessions>,
    user: UserId,
}

impl UserSessions {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(UserSessions {
            max,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// A session slot of `user`, or `None` when the user has `max` open already.
    pub fn try_take(self: &Arc<Self>, user: &UserId) -> Option<UserSlot> {
        let mut counts = self.counts.lock().ok()?;
        if counts.get(user).copied().unwrap_or(0) >= self.max {
            return None;
        }
        *counts.entry(user.clone()).or_insert(0) += 1;
        Some(UserSlot {
            owner: self.clone(),
            user: user.clone(),
        })
    }

    /// Open sessions of `user` (tests, diagnostics).
    pub fn count(&self, user: &UserId) -> usize {
        self.counts
            .lock()
            .map(|c| c.get(user).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        // A poisoned lock (a panic while it was held) still counts: take the data back.
        let mut counts = match self.owner.counts.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(n) = counts.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.user);
            }
        }
    }
}

/// The key of a client address: IPv4 as is, IPv6 by its /64 (one subscriber's usual
/// allocation, which an attacker can otherwise cycle through at will).
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// A token bucket per client address (`CHAT_ADMISSION_PER_IP_PER_S`, burst the same), in a map of
/// bounded size: two generations of at most `cap` addresses each; when the current one is full
/// it becomes the previous one and the oldest is dropped. No scan, no timer: O(1) per upgrade.
/// An address dropped this way starts over with a full bucket — what it would have after a
/// second of silence anyway.
#[derive(Debug)]
pub struct PerAddress {
    rate: u32,
    cap: usize,
    maps: Mutex<[HashMap<IpAddr, TokenBucket>; 2]>,
}

impl PerAddress {
    pub fn new(rate: u32, cap: usize) -> Self {
        PerAddress {
            rate,
            cap: cap.max(1),
            maps: Mutex::new([HashMap::new(), HashMap::new()]),
        }
    }

    /// Whether a new connection from `ip` is admitted now (and takes a token if so).
    pub fn admit(&self, ip: IpAddr, now: Instant) -> bool {
        let Ok(mut maps) = self.maps.lock() else {
            return true;
        };
        let ip = key(ip);
        let [current, previous] = &mut *maps;
        if !current.contains_key(&ip) {
            if current.len() >= self.cap {
                *previous = std::mem::take(current);
            }
            let bucket = previous
                .remove(&ip)
                .unwrap_or_else(|| TokenBucket::new(self.rate, now));
            current.insert(ip, bucket);
        }
        match current.get_mut(&ip) {
            Some(bucket) => bucket.check(now) == Verdict::Allow,
            None => true,
        }
    }

    /// Addresses remembered (at most twice the cap).
    pub fn len(&self) -> usize {
        self.maps
            .lock()
            .map(|m| m[0].len() + m[1].len())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn slots_are_bounded_and_given_back_on_drop() {
        let n = Arc::new(AtomicUsize::new(0));
        let a = Slot::try_take(&n, 2, "test_slots").unwrap();
        let _b = Slot::try_take(&n, 2, "test_slots").unwrap();
        assert!(Slot::try_take(&n, 2, "test_slots").is_none());
        drop(a);
        assert!(Slot::try_take(&n, 2, "test_slots").is_some());
        assert_eq!(n.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_slot_is_given_back_when_its_task_panics_or_is_aborted() {
        let n = Arc::new(AtomicUsize::new(0));
        let slot = Slot::try_take(&n, 10, "test_slots").unwrap();
        let task = tokio::spawn(async move {
            let _slot = slot;
            tokio::task::yield_now().await;
            panic!("a bug in a session");
        });
        assert!(task.await.unwrap_err().is_panic());
        assert_eq!(n.load(Ordering::Relaxed), 0);
        let slot = Slot::try_take(&n, 10, "test_slots").unwrap();
        let aborted = tokio::spawn(async move {
            let _slot = slot;
            std::future::pending::<()>().await;
        });
        aborted.abort();
        assert!(aborted.await.unwrap_err().is_cancelled());
        assert_eq!(n.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn sessions_per_user_are_capped_per_user() {
        let s = UserSessions::new(2);
        let (alice, bob) = (UserId::new("alice").unwrap(), UserId::new("bob").unwrap());
        let a1 = s.try_take(&alice).unwrap();
        let _a2 = s.try_take(&alice).unwrap();
        assert!(s.try_take(&alice).is_none());
        assert!(s.try_take(&bob).is_some(), "another user is not affected");
        drop(a1);
        assert!(s.try_take(&alice).is_some());
        drop(s.try_take(&bob));
        assert_eq!(s.count(&bob), 0);
    }

    #[test]
    fn one_address_cannot_take_the_whole_rate_and_the_map_stays_bounded() {
        let per = PerAddress::new(5, 100);
        let now = Instant::now();
        let flood: IpAddr = "10.0.0.1".parse().unwrap();
        let admitted = (0..50).filter(|_| per.admit(flood, now)).count();
        assert_eq!(admitted, 5, "burst of the per-address rate, then refused");
        assert!(
            per.admit("10.0.0.2".parse().unwrap(), now),
            "others still get in"
        );
        // The same /64 is one address; another /64 is not.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            (0..20)
                .filter(|i| per.admit(v6(&format!("2001:db8::{i:x}")), now))
                .count(),
            5
        );
        assert!(per.admit(v6("2001:db8:0:1::1"), now));
        // A second later the address is admitted again.
        assert!(per.admit(flood, now + Duration::from_secs(1)));
        for i in 0..10_000u32 {
            per.admit(IpAddr::from(i.to_be_bytes()), now);
        }
        assert!(per.len() <= 200, "{} addresses kept", per.len());
    }
}
