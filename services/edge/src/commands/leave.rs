//! `leave` (protocol.md#ws): chat-history removes the membership, then the session stops the
//! room's events and answers `left`.

use chat_bus::api::{self, ApiError, rooms};
use chat_proto::{RoomId, ServerFrame};

use crate::session::{Session, Socket};

impl<S: Socket> Session<S> {
    pub(crate) async fn on_leave(
        &mut self,
        reference: Option<String>,
        room: RoomId,
    ) -> Result<(), ApiError> {
        let _: api::Done = self
            .request(&rooms::Leave {
                user: self.user().clone(),
                room: room.clone(),
            })
            .await?;
        self.unsubscribe(&room).await;
        self.send(&ServerFrame::Left { reference, room }).await;
        Ok(())
    }
}
