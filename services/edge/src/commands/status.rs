//! `status` (protocol.md#ws): the user's chosen status (online, away, busy…), published
//! to chat-presence, which tells the user's rooms.

use chat_bus::api::{ApiError, StatusChange};
use chat_bus::{now_ms, subjects};
use chat_proto::Status;

use crate::session::{Session, Socket};

impl<S: Socket> Session<S> {
    pub(crate) async fn on_status(&mut self, status: Status) -> Result<(), ApiError> {
        let ev = StatusChange {
            user: self.user().clone(),
            status,
            ts: now_ms(),
        };
        self.edge.publish_json(subjects::PRESENCE_STATUS, &ev).await;
        Ok(())
    }
}
