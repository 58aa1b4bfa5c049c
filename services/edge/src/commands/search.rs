//! The `search` frame (protocol.md#ws-search): asks chat-history (`chat.api.search`) on behalf of
//! the session's user, so that chat-history applies the user's memberships as they are when the
//! search runs, and answers `search_results`. [`crate::dispatch::classify`] has checked the
//! fields and, with `room`, the session's membership.

use std::time::Duration;

use chat_bus::api::{ApiError, SearchReply, SearchRequest};
use chat_bus::rpc;
use chat_proto::{RoomId, ServerFrame, UserId};

use crate::session::{Session, Socket};

/// What a `search` frame asks.
pub struct Search {
    pub query: String,
    pub room: Option<RoomId>,
    pub limit: Option<i64>,
    pub before: Option<u64>,
}

/// Runs the search for `user` and makes the `search_results` frame answering `reference`.
pub async fn run(
    nats: &async_nats::Client,
    timeout: Duration,
    user: &UserId,
    reference: Option<String>,
    search: Search,
) -> Result<ServerFrame, ApiError> {
    let req = SearchRequest {
        query: search.query,
        user: Some(user.clone()),
        room: search.room,
        limit: search.limit,
        before: search.before,
    };
    let reply: SearchReply = rpc::call(nats, &req, timeout).await?;
    Ok(ServerFrame::SearchResults {
        reference,
        query: req.query,
        results: reply.results,
        has_more: reply.has_more,
    })
}

impl<S: Socket> Session<S> {
    pub(crate) async fn on_search(
        &mut self,
        reference: Option<String>,
        search: Search,
    ) -> Result<(), ApiError> {
        let (nats, timeout) = (&self.edge.nats, self.edge.config.request_timeout);
        let f = run(nats, timeout, self.user(), reference, search).await?;
        self.send(&f).await;
        Ok(())
    }
}
