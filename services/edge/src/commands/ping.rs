//! `ping` (protocol.md#ws): answered `pong`, for clients that cannot see WebSocket pings.

use chat_bus::api::ApiError;
use chat_proto::ServerFrame;

use crate::session::{Session, Socket};

impl<S: Socket> Session<S> {
    pub(crate) async fn on_ping(&mut self, reference: Option<String>) -> Result<(), ApiError> {
        self.send(&ServerFrame::Pong { reference }).await;
        Ok(())
    }
}
