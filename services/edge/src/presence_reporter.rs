//! What this edge tells chat-presence (protocol.md#nats): every heartbeat, the sessions it
//! holds (an edge that stops reporting is presumed dead, its sessions gone), and each session's
//! `up` (after `hello`) and `down` (at its cleanup, however it ended).

use chat_bus::api::{EdgeHeartbeat, SessionEvent, SessionRef};
use chat_bus::{now_ms, subjects};

use crate::Edge;
use crate::hub::SessionHandle;

/// Tells chat-presence, every heartbeat, which sessions this edge holds; an edge that stops
/// reporting is presumed dead.
pub(crate) async fn heartbeat(edge: Edge) {
    let mut tick = tokio::time::interval(edge.config.heartbeat);
    loop {
        tick.tick().await;
        let sessions = edge
            .hub
            .sessions()
            .await
            .into_iter()
            .map(|(name, user)| SessionRef {
                session: name.to_string(),
                user,
            })
            .collect();
        let hb = EdgeHeartbeat {
            edge: edge.edge_id.clone(),
            heartbeat_ms: edge.config.heartbeat.as_millis() as u64,
            sessions,
            ts: now_ms(),
        };
        edge.publish_json(subjects::PRESENCE_HEARTBEAT, &hb).await;
    }
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
