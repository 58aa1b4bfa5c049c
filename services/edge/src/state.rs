//! [`Edge`]: what every connection of this edge shares (configuration, NATS, the hub, the token
//! verifier, the admission counters, the drain's token and tracker), cheap handles only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{EdgeConfig, admission, auth, hub, ratelimit};

/// What every connection of this edge shares: cheap handles only.
#[derive(Clone)]
pub struct Edge(pub(crate) Arc<EdgeInner>);

pub struct EdgeInner {
    pub config: EdgeConfig,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub stream: jetstream::stream::Stream,
    /// The log's incarnation (protocol.md#identities).
    pub epoch: String,
    pub hub: hub::Hub,
    pub auth: auth::Authenticator,
    /// Names this process in session ids and presence heartbeats.
    pub edge_id: String,
    pub(crate) next_session: AtomicU64,
    /// Upgrades admitted per second (reconnect storms).
    pub(crate) admission: std::sync::Mutex<ratelimit::TokenBucket>,
    /// Upgrades admitted per second per client address.
    pub(crate) per_address: admission::PerAddress,
    /// Authenticated connections, for `CHAT_MAX_CONNECTIONS`; each is an [`admission::Slot`].
    pub(crate) open: Arc<AtomicUsize>,
    /// Connections not authenticated yet, for `CHAT_MAX_UNAUTHENTICATED`.
    pub(crate) pending: Arc<AtomicUsize>,
    /// Open sessions per user, for `CHAT_MAX_SESSIONS_PER_USER`.
    pub user_sessions: Arc<admission::UserSessions>,
    /// Cancelled to drain: every session closes with 1012.
    pub shutdown: CancellationToken,
    pub(crate) sessions: TaskTracker,
}

impl std::ops::Deref for Edge {
    type Target = EdgeInner;
    fn deref(&self) -> &EdgeInner {
        &self.0
    }
}

impl Edge {
    pub(crate) fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// What [`chat_bus::post`]'s checks read: chat-history over NATS, the `CHAT` stream.
    pub fn post_reader(&self) -> chat_bus::post::Reader<'_> {
        chat_bus::post::Reader {
            nats: &self.nats,
            stream: &self.stream,
            timeout: self.config.request_timeout,
            window: chat_bus::stream::duplicate_window(&self.config.stream),
        }
    }

    /// Fire-and-forget publish of a JSON value.
    pub async fn publish_json<T: serde::Serialize>(
        &self,
        subject: impl async_nats::subject::ToSubject,
        value: &T,
    ) {
        let Ok(payload) = serde_json::to_vec(value) else {
            return;
        };
        if let Err(e) = self.nats.publish(subject, payload.into()).await {
            tracing::debug!(error = %e, "publish failed");
        }
    }
}
