//! Request/reply payloads: the public `chat.api.*` ones (protocol.md#nats) and the internal ones
//! between chat-edge and the services, with one error shape, `{"error":{code,message}}`.

use bytes::Bytes;
use chat_proto::{
    ChatMessage, ErrorCode, Notification, PresenceEntry, RoomEventFrame, RoomId, RoomKind, Status,
    UserId,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// An error returned over request/reply. `message` is for humans and never carries internals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
    pub fn unavailable() -> Self {
        Self::new(
            ErrorCode::Unavailable,
            "a dependency is unavailable, retry later",
        )
    }
    pub fn internal() -> Self {
        Self::new(ErrorCode::Internal, "internal error")
    }
}

#[derive(Serialize, Deserialize)]
struct ErrorReply {
    error: ApiError,
}

/// Encodes a reply: the value itself, or `{"error":{…}}`.
pub fn encode_reply<T: Serialize>(reply: &Result<T, ApiError>) -> Bytes {
    let json = match reply {
        Ok(value) => serde_json::to_vec(value),
        Err(error) => serde_json::to_vec(&ErrorReply {
            error: error.clone(),
        }),
    };
    Bytes::from(json.unwrap_or_else(|_| {
        br#"{"error":{"code":"internal","message":"internal error"}}"#.to_vec()
    }))
}

/// Decodes a reply made by [`encode_reply`].
pub fn decode_reply<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ApiError> {
    if let Ok(ErrorReply { error }) = serde_json::from_slice::<ErrorReply>(payload) {
        return Err(error);
    }
    serde_json::from_slice(payload).map_err(|e| {
        tracing::warn!(error = %e, "undecodable reply");
        ApiError::internal()
    })
}

/// Decodes a request, mapping a malformed one to `bad_request`.
pub fn decode_request<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(payload)
        .map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))
}

/// Default page size of history.
pub const HISTORY_DEFAULT_LIMIT: u32 = 50;
/// Largest page of history.
pub const HISTORY_MAX_LIMIT: u32 = 200;

/// Clamps a requested page size to 1..=200, 50 when absent.
pub fn clamp_limit(limit: Option<i64>) -> u32 {
    match limit {
        None => HISTORY_DEFAULT_LIMIT,
        Some(l) => l.clamp(1, HISTORY_MAX_LIMIT as i64) as u32,
    }
}

/// `chat.api.history` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRequest {
    pub room: RoomId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// *(v1.1)* Page the thread of this root: the root and its thread's messages only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<u64>,
    /// On whose behalf the page is asked. chat-edge always names its user, so that chat-history
    /// itself refuses (`forbidden`) a user who is not a member of the room, whatever the edge
    /// checked; an integration that omits it reads as the trusted party it is (protocol.md#nats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserId>,
    /// *(v1.1)* The events as they were sent, as `join{since}` replays them and the live feed
    /// carried them (`message` objects without state; a deleted message's body and its edits'
    /// are still ""), instead of the current state of each message. What an integration
    /// filling a gap in its own copy of the live feed asks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replay: bool,
}

/// `chat.api.history` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    pub room: RoomId,
    /// Room events of every kind, each with the `type` of its live frame (protocol.md#ws, v1.1).
    pub messages: Vec<RoomEventFrame>,
    pub has_more: bool,
}

/// Default number of search results (protocol.md#ws `search`).
pub const SEARCH_DEFAULT_LIMIT: u32 = 20;
/// Most search results in one reply.
pub const SEARCH_MAX_LIMIT: u32 = 50;
/// Longest search query, in characters. The contract sets no bound; this one keeps a query's
/// cost (one index lookup per term) and its echo in `search_results` small.
pub const MAX_QUERY_CHARS: usize = 1000;

/// Clamps a requested number of search results to 1..=50, 20 when absent.
pub fn clamp_search_limit(limit: Option<i64>) -> u32 {
    match limit {
        None => SEARCH_DEFAULT_LIMIT,
        Some(l) => l.clamp(1, SEARCH_MAX_LIMIT as i64) as u32,
    }
}

/// `chat.api.search` request (protocol.md#nats).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchRequest {
    /// Words, `"phrases"` and `-exclusions`.
    pub query: String,
    /// On whose behalf: only the rooms this user is a member of when the search runs. Absent, a
    /// trusted integration searches every room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserId>,
    /// Only this room (`forbidden` when `user` is not a member of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<RoomId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// Only messages with a lower seq: the last result's seq pages back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
}

/// `chat.api.search` reply: message objects, newest first (descending seq across rooms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchReply {
    pub results: Vec<ChatMessage>,
    pub has_more: bool,
}

/// Request of [`crate::subjects::HISTORY_MESSAGE`]: the valid message `seq` of `room`; the
/// reply is a [`MessageInfo`], or `not_found` when there is no such message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageInfoRequest {
    pub room: RoomId,
    pub seq: u64,
    /// A reaction about to be added: the reply says whether it would fit the message's bounds
    /// (`chat_proto::MAX_REACTION_EMOJI`, `MAX_REACTIONS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adding: Option<NewReaction>,
}

/// A user's reaction about to be added (see [`MessageInfoRequest::adding`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewReaction {
    pub user: UserId,
    pub emoji: String,
}

/// What the edge checks of a message before publishing a change to it, reply or thread message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageInfo {
    pub from: UserId,
    /// The root of its thread, if it is in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<u64>,
    pub deleted: bool,
    /// Asked with [`MessageInfoRequest::adding`]: that reaction would pass the message's bounds
    /// (its addition would change nothing), so it is refused with `limit_exceeded`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reactions_full: bool,
}

/// `chat.api.presence` request: a room's members, or a list of users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PresenceRequest {
    Room { room: RoomId },
    Users { users: Vec<UserId> },
}

/// `chat.api.presence` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceReply {
    pub users: Vec<PresenceEntry>,
}

/// Internal rooms and membership requests, served by chat-history on [`crate::subjects::ROOMS`]
/// ([`crate::rpc::Rooms`]): every operation of [`rooms`], told apart by its `op`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RoomsRequest {
    Join(rooms::Join),
    Leave(rooms::Leave),
    Create(rooms::Create),
    Invite(rooms::Invite),
    OpenDm(rooms::OpenDm),
    UserRooms(rooms::UserRoomsOf),
    Members(rooms::Members),
    CreateRoom(rooms::CreateRoom),
    AddMember(rooms::AddMember),
    RemoveMember(rooms::RemoveMember),
}

/// The operations of chat-history's rooms endpoint, each sent as `{"op": …, fields}` and
/// answered with the reply its [`crate::rpc::Request`] names.
pub mod rooms {
    use chat_proto::{RoomId, UserId};
    use serde::{Deserialize, Serialize};

    /// Become a member: creates an unknown public room; refuses private rooms and DMs.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "op", rename = "join")]
    pub struct Join {
        pub user: UserId,
        pub room: RoomId,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "op", rename = "leave")]
    pub struct Leave {
        pub user: UserId,
        pub room: RoomId,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "op", rename = "create")]
    pub struct Create {
        pub user: UserId,
        pub room: RoomId,
        pub private: bool,
        pub members: Vec<UserId>,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "op", rename = "invite")]
    pub struct Invite {
        pub user: UserId,
        pub room: RoomId,
        pub target: UserId,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "op", rename = "open_dm")]
    pub struct OpenDm {
        pub user: UserId,
        pub other: UserId,
    }

    /// The rooms a user is a member of.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "op", rename = "user_rooms")]
    pub struct UserRoomsOf {
        pub user: UserId,
    }

    /// A room's kind and members.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "op", rename = "members")]
    pub struct Members {
        pub room: RoomId,
    }

    /// *(issue 16, trusted: chat-api)* Creates a room whose creator need not be a member;
    /// `conflict` if it exists. Each member is announced like an invitee (by `by`), or as having
    /// joined themselves when `by` is absent.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "op", rename = "create_room")]
    pub struct CreateRoom {
        pub room: RoomId,
        pub private: bool,
        pub members: Vec<UserId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub by: Option<UserId>,
    }

    /// *(issue 16, trusted)* Adds a member without an inviter's check (the user's room quota
    /// still applies); `not_found` for an unknown room, `forbidden` for a DM.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "op", rename = "add_member")]
    pub struct AddMember {
        pub room: RoomId,
        pub user: UserId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub by: Option<UserId>,
    }

    /// *(issue 16, trusted)* Removes a member, announced as their `leave` is (every edge stops
    /// delivering the room to their sessions); `not_found` for an unknown room.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "op", rename = "remove_member")]
    pub struct RemoveMember {
        pub room: RoomId,
        pub user: UserId,
    }
}

/// A room and (for private rooms and DMs) its members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    pub room: RoomId,
    pub kind: RoomKind,
    pub members: Vec<UserId>,
}

/// A membership of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub room: RoomId,
    pub kind: RoomKind,
}

/// Reply to [`rooms::UserRoomsOf`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRooms {
    pub rooms: Vec<Membership>,
}

/// Reply to leave and invite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    pub room: RoomId,
}

/// Published on `chat.user.<user>.membership` after a membership change is committed, so that
/// every edge (re)subscribes or unsubscribes the user's sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipChange {
    pub user: UserId,
    pub room: RoomId,
    pub kind: RoomKind,
    /// true: became a member; false: no longer one.
    pub member: bool,
    /// Who caused it (the inviter for an invite, the user for join/leave).
    pub by: UserId,
}

/// Published on `chat.user.<user>.disconnect` ([`crate::subjects::user_disconnect`]): every edge
/// closes the user's sessions with 4001 (e.g. after a ban).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnect {
    pub user: UserId,
    /// Shown to the client in the close frame's reason (at most 120 bytes are sent).
    #[serde(default)]
    pub reason: String,
}

/// Request of [`crate::subjects::NOTIFY_STATE`]: what `hello` lists for a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyStateRequest {
    pub user: UserId,
    pub rooms: Vec<RoomId>,
    /// The seq each count must cover (protocol.md#ws-unread), aligned with `rooms`: the `last_seq`
    /// the edge puts in `hello` or `joined`. Empty: chat-notify takes each room's newest seq.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_seqs: Vec<u64>,
}

/// A user's read marker and unread count in a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreadState {
    pub room: RoomId,
    pub last_read: u64,
    /// The count of others' messages with last_read < seq <= `as_of`.
    pub unread: u64,
    /// The seq the count covers (protocol.md#ws-unread).
    #[serde(default)]
    pub as_of: u64,
}

/// Reply of [`crate::subjects::NOTIFY_STATE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyState {
    pub rooms: Vec<UnreadState>,
    /// The newest `chat_proto::HELLO_NOTIFICATIONS` pending ones, oldest first.
    pub notifications: Vec<Notification>,
    /// How many are pending in all (0 from an older chat-notify: use the list's length).
    #[serde(default)]
    pub notifications_total: u64,
}

/// Request of [`crate::subjects::NOTIFY_READ`]; the reply is an [`UnreadUpdate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadRequest {
    pub user: UserId,
    pub room: RoomId,
    pub seq: u64,
}

/// Published on `chat.user.<user>.unread` (protocol.md#nats).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
/// v1.1: published when a marker moves or a count changes for another reason than a new
/// message, never per message; `count` covers the events up to seq `as_of`.
pub struct UnreadUpdate {
    pub user: UserId,
    pub room: RoomId,
    pub count: u64,
    pub last_read: u64,
    #[serde(default)]
    pub as_of: u64,
}

/// Published on `chat.user.<user>.notify` (protocol.md#nats): a notification plus its user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNotification {
    pub user: UserId,
    #[serde(flatten)]
    pub notification: Notification,
}

/// Published on `chat.room.<room>.typing`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypingEvent {
    pub room: RoomId,
    pub user: UserId,
    pub ts: i64,
}

/// Published on `chat.room.<room>.presence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomPresenceEvent {
    pub room: RoomId,
    pub user: UserId,
    pub status: Status,
    pub last_seen: i64,
}

/// Published on `presence.user.<user>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserPresenceEvent {
    pub user: UserId,
    pub status: Status,
    pub last_seen: i64,
    pub sessions: u32,
}

/// A session an edge holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionRef {
    pub session: String,
    pub user: UserId,
}

/// Internal: a session opened or closed on an edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEvent {
    pub edge: String,
    pub session: String,
    pub user: UserId,
    pub ts: i64,
}

/// Internal: an edge's periodic report of the sessions it holds, in [`EDGE_SHARDS`] parts (one
/// message per shard, each listing every session of its shard, so that no message grows with
/// the whole edge: ~60 bytes a session, NATS's default 1 MB `max_payload` holds ~15,000).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeHeartbeat {
    pub edge: String,
    pub heartbeat_ms: u64,
    pub sessions: Vec<SessionRef>,
    pub ts: i64,
    /// The shard ([`edge_shard`]) this part speaks for: it lists all of that shard's sessions
    /// and says nothing of the others. Absent: the message lists every session of the edge (the
    /// one-message heartbeat of versions before the parts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<u32>,
}

/// How many shards an edge's sessions are split into: its heartbeat's parts and chat-presence's
/// edge record (`chat_presence_edges/<edge>.sNN`) both follow [`edge_shard`].
pub const EDGE_SHARDS: u32 = 16;

/// The shard that holds the sessions of `user`: FNV-1a of the user id, stable across processes
/// and versions (every edge and chat-presence instance must agree); all of a user's sessions on
/// an edge share one, so that one shard alone is enough to reconcile its users.
pub fn edge_shard(user: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in user.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % EDGE_SHARDS
}

/// Internal: a user chose a status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    pub user: UserId,
    pub status: Status,
    pub ts: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_round_trip_values_and_errors() {
        let ok: Result<Done, ApiError> = Ok(Done {
            room: RoomId::new("r").unwrap(),
        });
        assert_eq!(decode_reply::<Done>(&encode_reply(&ok)), ok);
        let err: Result<Done, ApiError> = Err(ApiError::forbidden("not a member"));
        let bytes = encode_reply(&err);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()["error"]["code"],
            "forbidden"
        );
        assert_eq!(decode_reply::<Done>(&bytes), err);
    }

    #[test]
    fn limits_clamp() {
        assert_eq!(clamp_limit(None), 50);
        assert_eq!(clamp_limit(Some(0)), 1);
        assert_eq!(clamp_limit(Some(-5)), 1);
        assert_eq!(clamp_limit(Some(1000)), 200);
        assert_eq!(clamp_search_limit(None), 20);
        assert_eq!(clamp_search_limit(Some(0)), 1);
        assert_eq!(clamp_search_limit(Some(51)), 50);
    }

    #[test]
    fn presence_request_has_two_shapes() {
        let r: PresenceRequest = serde_json::from_str(r#"{"room":"x"}"#).unwrap();
        assert!(matches!(r, PresenceRequest::Room { .. }));
        let r: PresenceRequest = serde_json::from_str(r#"{"users":["a","b"]}"#).unwrap();
        assert!(matches!(r, PresenceRequest::Users { ref users } if users.len() == 2));
    }

    #[test]
    fn user_notification_is_flat() {
        let n = UserNotification {
            user: UserId::new("bob").unwrap(),
            notification: Notification {
                id: "n1".into(),
                kind: chat_proto::NotificationKind::Mention,
                room: RoomId::new("r").unwrap(),
                seq: 3,
                from: UserId::new("alice").unwrap(),
                preview: "hi".into(),
                ts: 1,
            },
        };
        let v = serde_json::to_value(&n).unwrap();
        assert_eq!(v["user"], "bob");
        assert_eq!(v["kind"], "mention");
    }
}
