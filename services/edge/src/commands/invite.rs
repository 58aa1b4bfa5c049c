//! `invite` (protocol.md#ws): chat-history adds a member to a private room; the invitee's
//! sessions learn it from the membership announcement (`joined`), this one gets `ok`.

use chat_bus::api::{self, ApiError, rooms};
use chat_proto::{RoomId, ServerFrame, UserId};

use crate::session::{Session, Socket};

impl<S: Socket> Session<S> {
    pub(crate) async fn on_invite(
        &mut self,
        reference: Option<String>,
        room: RoomId,
        user: UserId,
    ) -> Result<(), ApiError> {
        let _: api::Done = self
            .request(&rooms::Invite {
                user: self.user().clone(),
                room: room.clone(),
                target: user,
            })
            .await?;
        self.send(&ServerFrame::Ok { reference, room }).await;
        Ok(())
    }
}
