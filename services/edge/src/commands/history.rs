//! `history` (protocol.md#ws): one page of a room (or of a thread) from chat-history, as the
//! user may see it, answered `history`.

use chat_bus::api::{ApiError, HistoryPage, HistoryRequest};
use chat_proto::{RoomId, ServerFrame};

use crate::session::{Session, Socket};

impl<S: Socket> Session<S> {
    pub(crate) async fn on_history(
        &mut self,
        reference: Option<String>,
        room: RoomId,
        before: Option<u64>,
        after: Option<u64>,
        limit: Option<i64>,
        thread: Option<u64>,
    ) -> Result<(), ApiError> {
        let page: HistoryPage = self
            .request(&HistoryRequest {
                room,
                before,
                after,
                limit,
                thread,
                user: Some(self.user().clone()),
                replay: false,
            })
            .await?;
        let f = ServerFrame::History {
            reference,
            room: page.room,
            messages: page.messages,
            has_more: page.has_more,
        };
        self.send(&f).await;
        Ok(())
    }
}
