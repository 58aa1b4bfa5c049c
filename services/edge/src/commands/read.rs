//! `read` (protocol.md#ws-unread): moves the user's read marker in chat-notify, which announces the
//! new count to every session of the user (`unread`).

use chat_bus::api::{ApiError, ReadRequest, UnreadUpdate};
use chat_proto::RoomId;

use crate::session::{Session, Socket};

impl<S: Socket> Session<S> {
    pub(crate) async fn on_read(&mut self, room: RoomId, seq: u64) -> Result<(), ApiError> {
        let _: UnreadUpdate = self
            .request(&ReadRequest {
                user: self.user().clone(),
                room,
                seq,
            })
            .await?;
        Ok(())
    }
}
