//! `create` (protocol.md#ws): chat-history creates the room (public, or private with its first
//! members), and the session joins it at once (`joined`).

use chat_bus::api::{ApiError, RoomInfo, rooms};
use chat_proto::{RoomId, RoomKind, ServerFrame, UserId};

use crate::session::rooms::last_seq;
use crate::session::{Session, Socket};

impl<S: Socket> Session<S> {
    pub(crate) async fn on_create(
        &mut self,
        reference: Option<String>,
        room: RoomId,
        private: bool,
        members: Vec<UserId>,
    ) -> Result<(), ApiError> {
        let info: RoomInfo = self
            .request(&rooms::Create {
                user: self.user().clone(),
                room,
                private,
                members,
            })
            .await?;
        self.subscribe(&info.room, info.kind).await?;
        let last = last_seq(&self.edge, &info.room).await?;
        let (last_read, unread) = self.unread_of(&info.room, last).await;
        let members = (info.kind != RoomKind::Public).then_some(info.members);
        let f = ServerFrame::Joined {
            reference,
            room: info.room,
            kind: info.kind,
            last_seq: last,
            recovered: None,
            members,
            last_read,
            unread,
        };
        self.send(&f).await;
        Ok(())
    }
}
