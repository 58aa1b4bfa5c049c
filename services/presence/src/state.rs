//! The records chat-presence keeps in JetStream KV, and the pure rules that change them.
//!
//! Every rule here is a function of (record, event) so that it can be retried under
//! compare-and-set and unit-tested without NATS. Edges and presence instances may deliver events
//! out of order (a queue group spreads them over instances); the rules are written so that the
//! order does not matter: a closed session is remembered for a while (`closed`) so that a late
//! `up` or a stale heartbeat does not bring it back, and a status carries its time.

use std::collections::{BTreeMap, BTreeSet};

use chat_proto::{PresenceEntry, Status, UserId};
use serde::{Deserialize, Serialize};

/// A user's presence state (KV key: the user id, bucket [`chat_bus::subjects::PRESENCE_USERS_BUCKET`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// The status the user set last; shown while at least one session lives.
    #[serde(default = "online")]
    pub chosen: Status,
    /// When `chosen` was set (edge clock), so that an older status never overrides a newer one.
    #[serde(default)]
    pub chosen_ts: i64,
    /// The events stream's sequence of the choice: breaks ties between choices made within the
    /// same millisecond (the stream orders them as they arrived).
    #[serde(default)]
    pub chosen_seq: u64,
    /// When the user was last online (for an offline user: when their last session ended).
    #[serde(default)]
    pub last_seen: i64,
    /// Live sessions: session id → where it lives.
    #[serde(default)]
    pub sessions: BTreeMap<String, LiveSession>,
    /// Sessions closed recently (session id → close time), kept so that a late `up` or a heartbeat
    /// taken before the close cannot resurrect them.
    #[serde(default)]
    pub closed: BTreeMap<String, i64>,
}

fn online() -> Status {
    Status::Online
}

impl Default for UserRecord {
    fn default() -> Self {
        UserRecord {
            chosen: Status::Online,
            chosen_ts: 0,
            chosen_seq: 0,
            last_seen: 0,
            sessions: BTreeMap::new(),
            closed: BTreeMap::new(),
        }
    }
}

/// Where a live session is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveSession {
    pub edge: String,
    /// When the session opened (or was first reported), edge clock.
    pub since: i64,
}

impl UserRecord {
    /// What others see: the chosen status while a session lives, offline otherwise.
    pub fn effective(&self) -> Status {
        if self.sessions.is_empty() {
            Status::Offline
        } else {
            self.chosen
        }
    }

    /// The entry of snapshots: an online user is seen `now`.
    pub fn entry(&self, user: &UserId, now: i64) -> PresenceEntry {
        let status = self.effective();
        PresenceEntry {
            user: user.clone(),
            status,
            last_seen: if status == Status::Offline {
                self.last_seen
            } else {
                now.max(self.last_seen)
            },
        }
    }

    /// A session opened. No-op for a session already closed (its `down` overtook its `up`).
    pub fn session_up(&mut self, edge: &str, session: &str, ts: i64) {
        if self.closed.contains_key(session) || self.sessions.contains_key(session) {
            return;
        }
        self.sessions.insert(
            session.to_owned(),
            LiveSession {
                edge: edge.to_owned(),
                since: ts,
            },
        );
        self.last_seen = self.last_seen.max(ts);
    }

    /// A session closed.
    pub fn session_down(&mut self, session: &str, ts: i64) {
        self.sessions.remove(session);
        self.closed.insert(session.to_owned(), ts);
        self.last_seen = self.last_seen.max(ts);
    }

    /// The user chose a status at `ts`, event `seq` of the events stream; a choice older than
    /// the current one (by time, then by sequence) is ignored, so redeliveries and reorderings
    /// between instances are harmless.
    pub fn set_status(&mut self, status: Status, ts: i64, seq: u64) {
        if status != Status::Offline && (ts, seq) >= (self.chosen_ts, self.chosen_seq) {
            self.chosen = status;
            self.chosen_ts = ts;
            self.chosen_seq = seq;
        }
    }

    /// Aligns the sessions on `edge` with what its heartbeat (taken at `hb_ts`) listed for this
    /// user: unlisted sessions older than `grace` are gone (their `down` was lost); listed
    /// sessions not known and not closed are live (their `up` was lost).
    pub fn reconcile_edge(
        &mut self,
        edge: &str,
        listed: &BTreeSet<String>,
        hb_ts: i64,
        grace: i64,
    ) {
        let mut removed = false;
        self.sessions.retain(|id, s| {
            let keep = s.edge != edge || listed.contains(id) || s.since >= hb_ts - grace;
            removed |= !keep;
            keep
        });
        for id in listed {
            if !self.closed.contains_key(id) && !self.sessions.contains_key(id) {
                self.sessions.insert(
                    id.clone(),
                    LiveSession {
                        edge: edge.to_owned(),
                        since: hb_ts,
                    },
                );
            }
        }
        if removed || !listed.is_empty() {
            self.last_seen = self.last_seen.max(hb_ts);
        }
    }

    /// `edge` died: every session on it is gone; `last_alive` is its last heartbeat.
    pub fn edge_dead(&mut self, edge: &str, last_alive: i64) {
        let before = self.sessions.len();
        self.sessions.retain(|_, s| s.edge != edge);
        if self.sessions.len() != before {
            self.last_seen = self.last_seen.max(last_alive);
        }
    }

    /// Forgets closed sessions older than `keep_after`.
    pub fn prune(&mut self, keep_after: i64) {
        self.closed.retain(|_, ts| *ts >= keep_after);
    }
}

/// Shards of an edge's record: the sessions an edge holds are kept in [`EDGE_SHARDS`] KV entries
/// ([`edge_shard_key`]), a session in the one its user's id hashes to ([`edge_shard`]: all of a
/// user's sessions on an edge in one shard, so that a shard alone is enough to reconcile its
/// users; the edge's heartbeat comes in the same parts). A session's `up` rewrites its shard,
/// not a record of every session of the edge: with one record, n connects cost O(n²) (~3.6 ms
/// of CPU per connect at 1,000 sessions, docs/benchmarks.md "Batch wait"), and the record
/// outgrew NATS's max payload past ~15,000 sessions.
pub use chat_bus::api::{EDGE_SHARDS, edge_shard};

/// The KV key of shard `shard` of `edge`'s record.
pub fn edge_shard_key(edge: &str, shard: u32) -> String {
    format!("{edge}.s{shard:02}")
}

/// Every key that may hold sessions of `edge`: its shards, and the whole-edge record that
/// versions before the shards wrote (read and removed by the sweeper; never written again).
pub fn edge_record_keys(edge: &str) -> Vec<String> {
    std::iter::once(edge.to_owned())
        .chain((0..EDGE_SHARDS).map(|i| edge_shard_key(edge, i)))
        .collect()
}

/// Sessions an edge holds, as its heartbeats and session `up`s describe them: one shard of them
/// (KV key [`edge_shard_key`], bucket [`chat_bus::subjects::PRESENCE_EDGES_BUCKET`]). The
/// sweeper takes their users offline when the edge goes silent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeRecord {
    /// Session id → user and when it was last listed or opened (edge clock).
    pub sessions: BTreeMap<String, EdgeSession>,
}

/// When chat-presence last heard an edge (KV key: the edge id, bucket
/// [`chat_bus::subjects::PRESENCE_ALIVE_BUCKET`]). Kept apart from [`EdgeRecord`] and written
/// without compare-and-set, so that a heartbeat always counts, however busy the edge record is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeAlive {
    /// The edge's heartbeat period.
    pub heartbeat_ms: u64,
    /// When a heartbeat (or the edge's first session) arrived, by chat-presence's clock: liveness
    /// is judged by one clock, not the edges'.
    pub seen_at: i64,
}

impl EdgeAlive {
    /// Has the edge been silent for longer than `factor` heartbeats at `now`, counting only
    /// from `listening_since` (before it, nobody may have been there to hear it)?
    pub fn is_silent(&self, now: i64, listening_since: i64, factor: f64) -> bool {
        (now - self.seen_at.max(listening_since)) as f64 > self.heartbeat_ms as f64 * factor
    }
}

/// A session as the edge record knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeSession {
    pub user: UserId,
    pub ts: i64,
}

impl EdgeRecord {
    /// Applies a heartbeat listing `listed` (session → user) taken at `hb_ts`. Returns the users
    /// whose sessions on this edge differ from what the record knew: those need reconciling.
    /// A session the record knows but the heartbeat does not list survives for `grace` after it
    /// was last seen (it may have opened after the heartbeat's snapshot).
    pub fn apply_heartbeat(
        &mut self,
        listed: &BTreeMap<String, UserId>,
        hb_ts: i64,
        grace: i64,
    ) -> BTreeSet<UserId> {
        let mut changed = BTreeSet::new();
        let mut next = BTreeMap::new();
        for (id, user) in listed {
            if self.sessions.get(id).is_none_or(|s| &s.user != user) {
                changed.insert(user.clone());
            }
            next.insert(
                id.clone(),
                EdgeSession {
                    user: user.clone(),
                    ts: hb_ts,
                },
            );
        }
        for (id, s) in &self.sessions {
            if listed.contains_key(id) {
                continue;
            }
            changed.insert(s.user.clone());
            if s.ts >= hb_ts - grace {
                next.insert(id.clone(), s.clone());
            }
        }
        self.sessions = next;
        changed
    }

    /// The sessions of `user` the record lists.
    pub fn sessions_of(&self, user: &UserId) -> BTreeSet<String> {
        self.sessions
            .iter()
            .filter(|(_, s)| &s.user == user)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The users with a session on this edge.
    pub fn users(&self) -> BTreeSet<UserId> {
        self.sessions.values().map(|s| s.user.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_shards_are_stable_and_spread() {
        // Pinned values: instances of different versions must put a user's sessions in the same
        // shard.
        assert_eq!(edge_shard(""), 0x811c_9dc5 % EDGE_SHARDS);
        assert_eq!(edge_shard("s1"), 0x0851_b8c9_u32 % EDGE_SHARDS);
        assert_eq!(edge_shard_key("e0000abcd", 7), "e0000abcd.s07");
        let mut counts = [0u32; EDGE_SHARDS as usize];
        for i in 0..16_000 {
            counts[edge_shard(&format!("user-{i}")) as usize] += 1;
        }
        // 1,000 per shard if even; no shard more than 20 % off.
        assert!(
            counts.iter().all(|&c| (800..=1200).contains(&c)),
            "{counts:?}"
        );
        let keys = edge_record_keys("e1");
        assert_eq!(keys.len(), EDGE_SHARDS as usize + 1);
        assert_eq!(keys[0], "e1");
    }

    fn user(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    #[test]
    fn two_sessions_keep_a_user_online_until_both_close() {
        let mut r = UserRecord::default();
        assert_eq!(r.effective(), Status::Offline);
        r.session_up("e1", "s1", 10);
        r.session_up("e2", "s2", 11);
        assert_eq!(r.effective(), Status::Online);
        r.session_down("s1", 20);
        assert_eq!(r.effective(), Status::Online);
        r.session_down("s2", 30);
        assert_eq!(r.effective(), Status::Offline);
        assert_eq!(r.last_seen, 30);
    }

    #[test]
    fn a_down_that_overtakes_its_up_wins() {
        let mut r = UserRecord::default();
        r.session_down("s1", 20);
        r.session_up("e1", "s1", 10);
        assert_eq!(r.effective(), Status::Offline);
    }

    #[test]
    fn status_is_kept_across_sessions_and_older_choices_lose() {
        let mut r = UserRecord::default();
        r.set_status(Status::Busy, 5, 1);
        r.set_status(Status::Away, 3, 2);
        assert_eq!(r.effective(), Status::Offline);
        r.session_up("e1", "s1", 10);
        assert_eq!(r.effective(), Status::Busy);
        r.set_status(Status::Offline, 11, 3);
        assert_eq!(r.effective(), Status::Busy);
        // Same millisecond: the later event of the stream wins, whatever the order applied.
        r.set_status(Status::Online, 12, 5);
        r.set_status(Status::Away, 12, 4);
        assert_eq!(r.effective(), Status::Online);
    }

    #[test]
    fn heartbeats_repair_lost_ups_and_downs_but_not_closed_sessions() {
        let mut r = UserRecord::default();
        r.session_up("e1", "ghost", 10);
        r.session_up("e1", "young", 995);
        r.session_down("closed", 500);
        let listed: BTreeSet<String> = ["lost-up".to_owned(), "closed".to_owned()].into();
        r.reconcile_edge("e1", &listed, 1000, 100);
        let ids: Vec<&str> = r.sessions.keys().map(String::as_str).collect();
        assert_eq!(ids, vec!["lost-up", "young"]);
    }

    #[test]
    fn a_dead_edge_takes_only_its_sessions() {
        let mut r = UserRecord::default();
        r.session_up("e1", "s1", 10);
        r.session_up("e2", "s2", 10);
        r.edge_dead("e1", 50);
        assert_eq!(r.effective(), Status::Online);
        r.edge_dead("e2", 60);
        assert_eq!(r.effective(), Status::Offline);
        assert_eq!(r.last_seen, 60);
    }

    #[test]
    fn edge_record_reports_differences_only() {
        let mut e = EdgeRecord::default();
        let listed: BTreeMap<String, UserId> =
            [("s1".to_owned(), user("a")), ("s2".to_owned(), user("b"))].into();
        let changed = e.apply_heartbeat(&listed, 1000, 100);
        assert_eq!(changed, [user("a"), user("b")].into());
        assert!(e.apply_heartbeat(&listed, 1100, 100).is_empty());
        // A session opened after the snapshot survives one grace period.
        e.sessions.insert(
            "s3".into(),
            EdgeSession {
                user: user("c"),
                ts: 1150,
            },
        );
        let changed = e.apply_heartbeat(&listed, 1200, 100);
        assert_eq!(changed, [user("c")].into());
        assert!(e.sessions.contains_key("s3"));
        let changed = e.apply_heartbeat(&listed, 1300, 100);
        assert_eq!(changed, [user("c")].into());
        assert!(!e.sessions.contains_key("s3"));
        let alive = EdgeAlive {
            heartbeat_ms: 100,
            seen_at: 4,
        };
        assert!(alive.is_silent(4 + 301, 0, 3.0));
        assert!(!alive.is_silent(4 + 300, 0, 3.0));
        // An instance that started listening late judges only the time it listened.
        assert!(!alive.is_silent(4 + 301, 100, 3.0));
        assert!(alive.is_silent(100 + 301, 100, 3.0));
    }
}
