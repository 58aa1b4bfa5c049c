//! `join` (protocol.md#ws; the replay: §2 Lifecycle): chat-history adds the membership, the session
//! subscribes to the room and answers `joined`; with `since` (and the log's current epoch) it
//! first replays what came after `since` ([`crate::session::rooms`]), so the client misses
//! nothing.

use chat_bus::api::{ApiError, RoomInfo, rooms};
use chat_proto::{RoomId, RoomKind, ServerFrame};

use crate::session::rooms::last_seq;
use crate::session::{Session, Socket};

impl<S: Socket> Session<S> {
    pub(crate) async fn on_join(
        &mut self,
        reference: Option<String>,
        room: RoomId,
        since: Option<u64>,
        epoch: Option<String>,
    ) -> Result<(), ApiError> {
        let info: RoomInfo = self
            .request(&rooms::Join {
                user: self.user().clone(),
                room: room.clone(),
            })
            .await?;
        self.subscribe(&room, info.kind).await?;
        let last = last_seq(&self.edge, &room).await?;
        let members = (info.kind != RoomKind::Public).then_some(info.members);
        let recovered = match since {
            None => {
                if let Some(r) = self.rooms.get_mut(&room) {
                    r.delivered = r.delivered.max(last);
                }
                None
            }
            Some(since) if epoch.as_deref() == Some(self.edge.epoch.as_str()) => {
                self.replay(&room, since).await?;
                Some(true)
            }
            Some(_) => {
                if let Some(r) = self.rooms.get_mut(&room) {
                    r.delivered = r.delivered.max(last);
                }
                Some(false)
            }
        };
        let (last_read, unread) = self.unread_of(&room, last).await;
        let f = ServerFrame::Joined {
            reference,
            room,
            kind: info.kind,
            last_seq: last,
            recovered,
            members,
            last_read,
            unread,
        };
        self.send(&f).await;
        Ok(())
    }
}
