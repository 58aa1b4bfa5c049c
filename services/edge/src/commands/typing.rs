//! `typing` (protocol.md#ws): published to the room's typing subject, at most once per
//! [`crate::hub::TYPING_INTERVAL`] per user and room (the hub's throttle); never answered.

use chat_bus::api::{ApiError, TypingEvent};
use chat_bus::{now_ms, subjects};
use chat_proto::RoomId;

use crate::session::{Session, Socket};

impl<S: Socket> Session<S> {
    pub(crate) async fn on_typing(&mut self, room: RoomId) -> Result<(), ApiError> {
        if self.edge.hub.typing_allowed(&self.handle.user, &room) {
            let ev = TypingEvent {
                room: room.clone(),
                user: self.user().clone(),
                ts: now_ms(),
            };
            self.edge
                .publish_json(subjects::room_typing(&room), &ev)
                .await;
        }
        Ok(())
    }
}
