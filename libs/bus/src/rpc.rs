//! Request/reply endpoints as types: which subject, which queue group serves it, what goes in
//! and what comes back, declared once here for both sides (docs/protocol.md §NATS-API).
//!
//! A caller writes `rpc::call(&nats, &HistoryRequest { … }, timeout)`: the request's type picks
//! the subject and the reply's type ([`Request`]). A service serves an [`Endpoint`] with
//! `chat_runtime::nats::serve::<E>`, which decodes [`Endpoint::Request`] and encodes its reply,
//! inside the concurrency limit and deadline every endpoint has.
//!
//! chat-history's rooms endpoint carries several operations with different replies on one
//! subject; each operation is a type of its own ([`rooms`]) that knows its reply, and the server
//! decodes them all as one [`RoomsRequest`].

use std::time::Duration;

use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};

use crate::api::rooms;
use crate::api::{
    ApiError, HistoryPage, HistoryRequest, MessageInfo, MessageInfoRequest, NotifyState,
    NotifyStateRequest, PresenceReply, PresenceRequest, ReadRequest, RoomInfo, RoomsRequest,
    SearchReply, SearchRequest, UnreadUpdate, UserRooms, decode_reply,
};
use crate::subjects;

/// A request/reply endpoint: its subject, the queue group of its servers, and the types the
/// server decodes and encodes.
pub trait Endpoint: 'static {
    const SUBJECT: &'static str;
    const QUEUE: &'static str;
    /// What the server decodes (for the rooms endpoint: every operation).
    type Request: DeserializeOwned + Send + 'static;
    /// What the server encodes.
    type Reply: Serialize + Send + 'static;
}

/// A request a client sends: the endpoint it goes to and the reply it gets.
pub trait Request: Serialize + Sync {
    type Endpoint: Endpoint;
    type Reply: DeserializeOwned;
}

/// Sends `req` to its endpoint and decodes the reply. No responder, a failed request or no
/// answer within `timeout` is `unavailable`; the server's error is returned as it is.
pub async fn call<R: Request>(
    client: &async_nats::Client,
    req: &R,
    timeout: Duration,
) -> Result<R::Reply, ApiError> {
    let subject = async_nats::Subject::from_static(<R::Endpoint as Endpoint>::SUBJECT);
    request(client, subject, req, timeout).await
}

/// [`call`] on a subject named by the caller: for a test or a tool that speaks to a subject as
/// an outsider would (a public `chat.api.*` one, or a wrong one on purpose).
pub async fn request_on<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
    client: &async_nats::Client,
    subject: &str,
    req: &Req,
    timeout: Duration,
) -> Result<Resp, ApiError> {
    request(client, async_nats::Subject::from(subject), req, timeout).await
}

/// The one request: a static subject costs no copy ([`call`]), a caller's is copied once.
async fn request<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
    client: &async_nats::Client,
    subject: async_nats::Subject,
    req: &Req,
    timeout: Duration,
) -> Result<Resp, ApiError> {
    let payload = Bytes::from(serde_json::to_vec(req).map_err(|_| ApiError::internal())?);
    let mut headers = async_nats::HeaderMap::new();
    crate::trace::inject_current(&mut headers);
    let fut = client.request_with_headers(subject.clone(), headers, payload);
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(msg)) => decode_reply(&msg.payload),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, %subject, "request failed");
            Err(ApiError::unavailable())
        }
        Err(_) => {
            tracing::debug!(%subject, "request timed out");
            Err(ApiError::unavailable())
        }
    }
}

/// Declares endpoints whose one request type has one reply type.
macro_rules! endpoints {
    ($($(#[$doc:meta])* $name:ident: $subject:expr, $queue:expr, $req:ty => $reply:ty;)*) => {$(
        $(#[$doc])*
        pub struct $name;
        impl Endpoint for $name {
            const SUBJECT: &'static str = $subject;
            const QUEUE: &'static str = $queue;
            type Request = $req;
            type Reply = $reply;
        }
        impl Request for $req {
            type Endpoint = $name;
            type Reply = $reply;
        }
    )*};
}

endpoints! {
    /// `chat.api.history` (protocol.md#nats), served by chat-history.
    History: subjects::API_HISTORY, subjects::HISTORY_QUEUE, HistoryRequest => HistoryPage;
    /// `chat.api.search` (protocol.md#nats), served by chat-history.
    Search: subjects::API_SEARCH, subjects::HISTORY_QUEUE, SearchRequest => SearchReply;
    /// A message's author, thread and state, asked before a change to it (event validity).
    MessageLookup: subjects::HISTORY_MESSAGE, subjects::HISTORY_QUEUE,
        MessageInfoRequest => MessageInfo;
    /// `chat.api.presence` (protocol.md#nats), served by chat-presence.
    Presence: subjects::API_PRESENCE, subjects::PRESENCE_QUEUE, PresenceRequest => PresenceReply;
    /// What `hello` lists of a user's unread counts and notifications, served by chat-notify.
    NotifyStateEndpoint: subjects::NOTIFY_STATE, subjects::NOTIFY_QUEUE,
        NotifyStateRequest => NotifyState;
    /// Moves a read marker, served by chat-notify.
    Read: subjects::NOTIFY_READ, subjects::NOTIFY_QUEUE, ReadRequest => UnreadUpdate;
}

/// Rooms and membership, served by chat-history: every operation of [`rooms`].
pub struct Rooms;

impl Endpoint for Rooms {
    const SUBJECT: &'static str = subjects::ROOMS;
    const QUEUE: &'static str = subjects::HISTORY_QUEUE;
    type Request = RoomsRequest;
    type Reply = RoomsReply;
}

/// What the rooms endpoint answers: the reply of the operation asked (each operation's type
/// names which, [`Request::Reply`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum RoomsReply {
    Room(RoomInfo),
    Done(crate::api::Done),
    Rooms(UserRooms),
}

macro_rules! room_ops {
    ($($op:ident => $reply:ty;)*) => {$(
        impl Request for rooms::$op {
            type Endpoint = Rooms;
            type Reply = $reply;
        }
    )*};
}

room_ops! {
    Join => RoomInfo;
    Leave => crate::api::Done;
    Create => RoomInfo;
    Invite => crate::api::Done;
    OpenDm => RoomInfo;
    UserRoomsOf => UserRooms;
    Members => RoomInfo;
    CreateRoom => RoomInfo;
    AddMember => RoomInfo;
    RemoveMember => RoomInfo;
}

/// A room's events after a cursor, page by page, oldest first and as they were sent
/// (`replay`): the one loop behind `join{since}`, the edge's gap filling and an integration's
/// catch-up. Each [`next`](Self::next) asks chat-history for the following page; `None` once a
/// page said it was the last.
pub struct EventsAfter {
    req: HistoryRequest,
    done: bool,
}

impl EventsAfter {
    /// Largest page asked for.
    pub const PAGE: i64 = crate::api::HISTORY_MAX_LIMIT as i64;

    /// Events of `room` with seq > `after`, read on behalf of `user` (chat-history refuses a
    /// non-member) or, without one, as a trusted service.
    pub fn new(
        room: chat_proto::RoomId,
        after: u64,
        user: Option<chat_proto::UserId>,
    ) -> EventsAfter {
        EventsAfter {
            req: HistoryRequest {
                room,
                before: None,
                after: Some(after),
                limit: Some(Self::PAGE),
                thread: None,
                user,
                replay: true,
            },
            done: false,
        }
    }

    /// The next page, `Ok(None)` when there is no more. An error leaves the cursor where it was,
    /// so that calling again retries the same page.
    pub async fn next(
        &mut self,
        client: &async_nats::Client,
        timeout: Duration,
    ) -> Result<Option<Vec<chat_proto::RoomEventFrame>>, ApiError> {
        if self.done {
            return Ok(None);
        }
        let page = call(client, &self.req, timeout).await?;
        let after = self.req.after.unwrap_or(0);
        self.req.after = Some(page.messages.iter().map(|m| m.seq()).fold(after, u64::max));
        // An empty page that claims more would loop forever: it ends the walk.
        self.done = !page.has_more || page.messages.is_empty();
        Ok(Some(page.messages))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_proto::{RoomId, UserId};

    fn wire<R: Request>(req: &R) -> serde_json::Value {
        serde_json::to_value(req).unwrap()
    }

    #[test]
    fn each_room_operation_is_sent_as_the_server_decodes_it() {
        let (user, room) = (UserId::new("ann").unwrap(), RoomId::new("r").unwrap());
        let ops = [
            (
                wire(&rooms::Join {
                    user: user.clone(),
                    room: room.clone(),
                }),
                "join",
            ),
            (
                wire(&rooms::UserRoomsOf { user: user.clone() }),
                "user_rooms",
            ),
            (
                wire(&rooms::OpenDm {
                    user: user.clone(),
                    other: UserId::new("bob").unwrap(),
                }),
                "open_dm",
            ),
            (
                wire(&rooms::RemoveMember {
                    room: room.clone(),
                    user: user.clone(),
                }),
                "remove_member",
            ),
        ];
        for (value, op) in ops {
            assert_eq!(value["op"], op, "{value}");
            let decoded: RoomsRequest = serde_json::from_value(value.clone()).unwrap();
            let back = match decoded {
                RoomsRequest::Join(_) => "join",
                RoomsRequest::UserRooms(_) => "user_rooms",
                RoomsRequest::OpenDm(_) => "open_dm",
                RoomsRequest::RemoveMember(_) => "remove_member",
                other => panic!("{op} decoded as {other:?}"),
            };
            assert_eq!(back, op);
        }
    }

    #[test]
    fn an_unknown_operation_is_refused() {
        let bad = serde_json::json!({"op": "drop_table", "user": "ann"});
        assert!(serde_json::from_value::<RoomsRequest>(bad).is_err());
    }

    #[test]
    fn every_endpoint_has_its_subject_and_queue() {
        assert_eq!(History::SUBJECT, "chat.api.history");
        assert_eq!(Rooms::QUEUE, subjects::HISTORY_QUEUE);
        assert_eq!(Presence::QUEUE, subjects::PRESENCE_QUEUE);
        assert_eq!(Read::QUEUE, subjects::NOTIFY_QUEUE);
    }
}
