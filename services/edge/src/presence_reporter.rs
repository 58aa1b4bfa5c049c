//! What this edge tells chat-presence (protocol.md#nats): every heartbeat, the sessions it
//! holds (an edge that stops reporting is presumed dead, its sessions gone), and each session's
//! `up` (after `hello`) and `down` (at its cleanup, however it ended).

use chat_bus::api::{EDGE_SHARDS, EdgeHeartbeat, SessionEvent, SessionRef, edge_shard};
use chat_bus::{now_ms, subjects};
use chat_proto::UserId;

use crate::Edge;
use crate::hub::SessionHandle;

/// Tells chat-presence, every heartbeat, which sessions this edge holds, in one message per shard
/// ([`heartbeat_parts`]); an edge that stops reporting is presumed dead.
pub(crate) async fn heartbeat(edge: Edge) {
    let mut tick = tokio::time::interval(edge.config.heartbeat);
    loop {
        tick.tick().await;
        let sessions = edge.hub.sessions().await;
        let parts = heartbeat_parts(
            &edge.edge_id,
            edge.config.heartbeat.as_millis() as u64,
            &sessions,
            now_ms(),
        );
        for part in &parts {
            edge.publish_json(subjects::PRESENCE_HEARTBEAT, part).await;
        }
    }
}

/// A heartbeat listing `sessions`, as [`EDGE_SHARDS`] parts: part `i` lists every session whose
/// user is in shard `i` ([`edge_shard`]), and is sent even when it lists none (it then says that
/// shard holds nothing, which removes sessions whose `down` was lost). No message grows with the
/// whole edge: one part holds ~1/16 of its sessions.
pub(crate) fn heartbeat_parts(
    edge: &str,
    heartbeat_ms: u64,
    sessions: &[(std::sync::Arc<str>, UserId)],
    ts: i64,
) -> Vec<EdgeHeartbeat> {
    let mut parts: Vec<EdgeHeartbeat> = (0..EDGE_SHARDS)
        .map(|shard| EdgeHeartbeat {
            edge: edge.to_owned(),
            heartbeat_ms,
            sessions: Vec::new(),
            ts,
            shard: Some(shard),
        })
        .collect();
    for (name, user) in sessions {
        parts[edge_shard(user.as_str()) as usize]
            .sessions
            .push(SessionRef {
                session: name.to_string(),
                user: user.clone(),
            });
    }
    parts
}

/// Announces a session that said `hello`.
pub(crate) async fn session_up(edge: &Edge, handle: &SessionHandle) {
    let up = SessionEvent {
        edge: edge.edge_id.clone(),
        session: handle.name.to_string(),
        user: handle.user.clone(),
        ts: now_ms(),
    };
    edge.publish_json(subjects::PRESENCE_SESSION_UP, &up).await;
}

/// Announces a session that ended.
pub(crate) async fn session_down(edge: &Edge, handle: &SessionHandle) {
    let down = SessionEvent {
        edge: edge.edge_id.clone(),
        session: handle.name.to_string(),
        user: handle.user.clone(),
        ts: now_ms(),
    };
    edge.publish_json(subjects::PRESENCE_SESSION_DOWN, &down)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_heartbeat_is_one_part_per_shard_each_listing_all_of_its_users_sessions() {
        let sessions: Vec<(Arc<str>, UserId)> = (0..200)
            .map(|i| {
                let user = UserId::new(format!("u{}", i % 50)).unwrap();
                (Arc::from(format!("e1-{i}")), user)
            })
            .collect();
        let parts = heartbeat_parts("e1", 5000, &sessions, 42);
        assert_eq!(
            parts.len(),
            EDGE_SHARDS as usize,
            "every shard, even an empty one"
        );
        let mut listed = 0;
        for (i, part) in parts.iter().enumerate() {
            assert_eq!(part.shard, Some(i as u32));
            assert_eq!(
                (part.edge.as_str(), part.heartbeat_ms, part.ts),
                ("e1", 5000, 42)
            );
            for s in &part.sessions {
                assert_eq!(
                    edge_shard(s.user.as_str()),
                    i as u32,
                    "{} in its user's shard",
                    s.session
                );
            }
            listed += part.sessions.len();
        }
        assert_eq!(listed, sessions.len(), "each session in exactly one part");
        // With 50 users over 16 shards, the parts are far from one message of everything.
        let largest = parts.iter().map(|p| p.sessions.len()).max().unwrap();
        assert!(largest < sessions.len() / 4, "largest part {largest}");
    }

    #[test]
    fn an_edge_with_no_sessions_still_reports_every_shard_empty() {
        let parts = heartbeat_parts("e1", 5000, &[], 1);
        assert_eq!(parts.len(), EDGE_SHARDS as usize);
        assert!(parts.iter().all(|p| p.sessions.is_empty()));
    }
}
