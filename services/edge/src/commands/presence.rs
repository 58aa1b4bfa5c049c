//! `presence` (protocol.md#ws): who of a room is online now, from chat-presence, answered
//! `presence_snapshot`.

use chat_bus::api::{ApiError, PresenceReply, PresenceRequest};
use chat_proto::{RoomId, ServerFrame};

use crate::session::{Session, Socket};

impl<S: Socket> Session<S> {
    pub(crate) async fn on_presence(
        &mut self,
        reference: Option<String>,
        room: RoomId,
    ) -> Result<(), ApiError> {
        let reply: PresenceReply = self
            .request(&PresenceRequest::Room { room: room.clone() })
            .await?;
        self.send(&ServerFrame::PresenceSnapshot {
            reference,
            room,
            users: reply.users,
        })
        .await;
        Ok(())
    }
}
