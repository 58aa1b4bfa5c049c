//! `open_dm` (protocol.md#ws): chat-history finds or makes the direct-message room of two
//! users, and the session joins it (`joined`).

use chat_bus::api::{ApiError, RoomInfo, rooms};
use chat_proto::{ServerFrame, UserId};

use crate::session::rooms::last_seq;
use crate::session::{Session, Socket};

impl<S: Socket> Session<S> {
    pub(crate) async fn on_open_dm(
        &mut self,
        reference: Option<String>,
        user: UserId,
    ) -> Result<(), ApiError> {
        let info: RoomInfo = self
            .request(&rooms::OpenDm {
                user: self.user().clone(),
                other: user,
            })
            .await?;
        self.subscribe(&info.room, info.kind).await?;
        let last = last_seq(&self.edge, &info.room).await?;
        let (last_read, unread) = self.unread_of(&info.room, last).await;
        let f = ServerFrame::Joined {
            reference,
            room: info.room,
            kind: info.kind,
            last_seq: last,
            recovered: None,
            members: Some(info.members),
            last_read,
            unread,
        };
        self.send(&f).await;
        Ok(())
    }
}
