//! Frames in both directions, and the decoding of client frames into precise errors.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{RoomId, UserId};

/// Kind of a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoomKind {
    Public,
    Private,
    Dm,
}

impl RoomKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RoomKind::Public => "public",
            RoomKind::Private => "private",
            RoomKind::Dm => "dm",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "public" => Some(RoomKind::Public),
            "private" => Some(RoomKind::Private),
            "dm" => Some(RoomKind::Dm),
            _ => None,
        }
    }
}

/// A user's presence status. Clients may set `online`, `away` or `busy`; `offline` is derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Online,
    Away,
    Busy,
    Offline,
}

/// Client → server frames (protocol.md#ws). `ref` and `traceparent` are read from the envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Auth {
        token: String,
    },
    Join {
        room: RoomId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
    },
    Leave {
        room: RoomId,
    },
    Create {
        room: RoomId,
        #[serde(default)]
        private: bool,
        #[serde(default)]
        members: Vec<UserId>,
    },
    Invite {
        room: RoomId,
        user: UserId,
    },
    OpenDm {
        user: UserId,
    },
    Send {
        room: RoomId,
        body: String,
        client_id: String,
        /// *(v1.1)* The seq of the message this one quotes (protocol.md#ws).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<u64>,
        /// *(v1.1)* The seq of the top-level message whose thread this one belongs to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread: Option<u64>,
    },
    /// *(v1.1)* Replace the body of one's own message `seq`.
    Edit {
        room: RoomId,
        seq: u64,
        body: String,
        client_id: String,
    },
    /// *(v1.1)* Delete one's own message `seq`.
    Delete {
        room: RoomId,
        seq: u64,
        client_id: String,
    },
    /// *(v1.1)* Add (`on`, the default) or remove one's reaction to message `seq`.
    React {
        room: RoomId,
        seq: u64,
        emoji: String,
        #[serde(default = "yes")]
        on: bool,
        client_id: String,
    },
    History {
        room: RoomId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<i64>,
        /// *(v1.1)* Only the root `thread` and the messages of its thread.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread: Option<u64>,
    },
    /// Full-text search of the user's rooms (protocol.md#ws-search).
    Search {
        query: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<RoomId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
    },
    Typing {
        room: RoomId,
    },
    Read {
        room: RoomId,
        seq: u64,
    },
    Status {
        status: Status,
    },
    Presence {
        room: RoomId,
    },
    Ping,
}

fn yes() -> bool {
    true
}

/// Every `type` a client may send, for telling `unknown_type` from `bad_request`.
pub const CLIENT_TYPES: &[&str] = &[
    "auth", "join", "leave", "create", "invite", "open_dm", "send", "edit", "delete", "react",
    "history", "search", "typing", "read", "status", "presence", "ping",
];

/// Longest reaction emoji, in characters (protocol.md#ws `react`).
pub const MAX_EMOJI_CHARS: usize = 32;

/// Most distinct emoji on one message (so also the most reactions one user can add to it): a
/// `react` adding another gets `limit_exceeded`, and one that reaches the log anyway (a race, an
/// integration) changes nothing, like adding a reaction the user already has.
pub const MAX_REACTION_EMOJI: usize = 20;

/// Most reactions (user and emoji pairs) on one message, the same way: with them, a message's
/// state stays far below what one frame carries (5,000 × a 64-character id ≈ 335 KB, plus a
/// body of at most 16 KiB), whatever the size of its room.
pub const MAX_REACTIONS: usize = 5_000;

/// Whether adding `user`'s reaction `emoji` to a message with `reactions` stays within
/// [`MAX_REACTION_EMOJI`] and [`MAX_REACTIONS`] (a reaction the user has already fits: adding it
/// changes nothing).
pub fn reaction_fits(reactions: &Reactions, user: &UserId, emoji: &str) -> bool {
    match reactions.get(emoji) {
        Some(users) if users.contains(user) => true,
        present => {
            (present.is_some() || reactions.len() < MAX_REACTION_EMOJI)
                && reactions.values().map(Vec::len).sum::<usize>() < MAX_REACTIONS
        }
    }
}

/// Whether `emoji` may name a reaction: 1..=32 characters, no whitespace and no control
/// characters (protocol.md#ws `react`).
pub fn valid_emoji(emoji: &str) -> bool {
    let len = crate::char_len(emoji);
    (1..=MAX_EMOJI_CHARS).contains(&len)
        && !emoji.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl ClientFrame {
    /// The first field breaking protocol.md#ws-limits (a control character where none
    /// may be), with why; `None` when the frame is clean. Every string a client controls that
    /// reaches a NATS header, a log line or another user is listed here.
    pub fn hostile_field(&self) -> Option<&'static str> {
        match self {
            ClientFrame::Send {
                body, client_id, ..
            }
            | ClientFrame::Edit {
                body, client_id, ..
            } => {
                if crate::has_control(client_id) {
                    Some("client_id must not contain control characters")
                } else if crate::body_has_control(body) {
                    Some("body must not contain control characters other than tab and newline")
                } else {
                    None
                }
            }
            ClientFrame::Delete { client_id, .. } => crate::has_control(client_id)
                .then_some("client_id must not contain control characters"),
            ClientFrame::React {
                client_id, emoji, ..
            } => {
                if crate::has_control(client_id) {
                    Some("client_id must not contain control characters")
                } else if crate::has_control(emoji) {
                    Some("emoji must not contain control characters")
                } else {
                    None
                }
            }
            ClientFrame::Auth { .. }
            | ClientFrame::Join { .. }
            | ClientFrame::Leave { .. }
            | ClientFrame::Create { .. }
            | ClientFrame::Invite { .. }
            | ClientFrame::OpenDm { .. }
            | ClientFrame::History { .. }
            // The query is checked by the edge's dispatch (no control character but whitespace).
            | ClientFrame::Search { .. }
            | ClientFrame::Typing { .. }
            | ClientFrame::Read { .. }
            | ClientFrame::Status { .. }
            | ClientFrame::Presence { .. }
            | ClientFrame::Ping => None,
        }
    }

    /// The frame's `type`, for metrics and logs.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientFrame::Auth { .. } => "auth",
            ClientFrame::Join { .. } => "join",
            ClientFrame::Leave { .. } => "leave",
            ClientFrame::Create { .. } => "create",
            ClientFrame::Invite { .. } => "invite",
            ClientFrame::OpenDm { .. } => "open_dm",
            ClientFrame::Send { .. } => "send",
            ClientFrame::Edit { .. } => "edit",
            ClientFrame::Delete { .. } => "delete",
            ClientFrame::React { .. } => "react",
            ClientFrame::History { .. } => "history",
            ClientFrame::Search { .. } => "search",
            ClientFrame::Typing { .. } => "typing",
            ClientFrame::Read { .. } => "read",
            ClientFrame::Status { .. } => "status",
            ClientFrame::Presence { .. } => "presence",
            ClientFrame::Ping => "ping",
        }
    }
}

/// A decoded client frame with the envelope fields any frame may carry.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Echoed in the reply or error.
    pub reference: Option<String>,
    /// W3C trace context of the client's own trace, if it wants the server's spans in it.
    pub traceparent: Option<String>,
    pub frame: ClientFrame,
}

/// Why a client frame was refused; `reference` is echoed when it could be read.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    pub reference: Option<String>,
    pub code: ErrorCode,
    pub message: String,
}

/// Longest `ref` a client may attach.
pub const MAX_REF_CHARS: usize = 64;

/// Longest `traceparent` field (a W3C traceparent is 55 characters; room for future versions).
pub const MAX_TRACEPARENT_BYTES: usize = 128;

/// Longest error message a refusal carries. serde's messages quote the offending value (`unknown
/// variant `…``, `invalid type: string "…"`), which a client controls up to `max_frame`.
pub const MAX_ERROR_MESSAGE_CHARS: usize = 200;

fn bounded(mut message: String) -> String {
    if crate::char_len(&message) > MAX_ERROR_MESSAGE_CHARS {
        let keep = crate::prefix_chars(&message, MAX_ERROR_MESSAGE_CHARS - 1).len();
        message.truncate(keep);
        message.push('…');
    }
    message
}

impl Envelope {
    /// Decodes one text frame. Never panics; every refusal names the client's mistake.
    pub fn decode(text: &str) -> Result<Envelope, DecodeError> {
        let fail = |reference: Option<String>, code, message: String| DecodeError {
            reference,
            code,
            message: bounded(message),
        };
        let value: Value = serde_json::from_str(text).map_err(|e| {
            fail(
                None,
                ErrorCode::BadRequest,
                format!("frame is not valid JSON: {e}"),
            )
        })?;
        let Value::Object(mut map) = value else {
            return Err(fail(
                None,
                ErrorCode::BadRequest,
                "frame must be a JSON object".into(),
            ));
        };
        let reference = match map.remove("ref") {
            None | Some(Value::Null) => None,
            // Not echoed (protocol.md#ws): the ref itself is the bad field.
            Some(Value::String(r)) if crate::has_control(&r) => {
                return Err(fail(
                    None,
                    ErrorCode::BadRequest,
                    "ref must not contain control characters".into(),
                ));
            }
            Some(Value::String(r)) if crate::char_len(&r) <= MAX_REF_CHARS => Some(r),
            Some(_) => {
                return Err(fail(
                    None,
                    ErrorCode::BadRequest,
                    format!("ref must be a string of at most {MAX_REF_CHARS} characters"),
                ));
            }
        };
        let traceparent = match map.remove("traceparent") {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) if crate::has_control(&t) => {
                return Err(fail(
                    reference,
                    ErrorCode::BadRequest,
                    "traceparent must not contain control characters".into(),
                ));
            }
            Some(Value::String(t)) if t.len() <= MAX_TRACEPARENT_BYTES => Some(t),
            Some(_) => {
                return Err(fail(
                    reference,
                    ErrorCode::BadRequest,
                    format!(
                        "traceparent must be a string of at most {MAX_TRACEPARENT_BYTES} bytes"
                    ),
                ));
            }
        };
        match map.get("type") {
            Some(Value::String(t)) if CLIENT_TYPES.contains(&t.as_str()) => {}
            Some(Value::String(t)) => {
                let shown: String = crate::prefix_chars(t, 32).to_owned();
                return Err(fail(
                    reference,
                    ErrorCode::UnknownType,
                    format!("unknown frame type {shown:?}"),
                ));
            }
            Some(_) => {
                return Err(fail(
                    reference,
                    ErrorCode::BadRequest,
                    "type must be a string".into(),
                ));
            }
            None => {
                return Err(fail(
                    reference,
                    ErrorCode::BadRequest,
                    "missing field `type`".into(),
                ));
            }
        }
        match serde_json::from_value::<ClientFrame>(Value::Object(map)) {
            Ok(frame) => match frame.hostile_field() {
                Some(why) => Err(fail(reference, ErrorCode::BadRequest, why.into())),
                None => Ok(Envelope {
                    reference,
                    traceparent,
                    frame,
                }),
            },
            Err(e) => Err(fail(reference, ErrorCode::BadRequest, e.to_string())),
        }
    }
}

/// Error codes of protocol.md#ws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    UnknownType,
    Unauthorized,
    TokenExpired,
    Forbidden,
    NotFound,
    Conflict,
    TooLarge,
    /// A quota (protocol.md#ws-limits).
    LimitExceeded,
    RateLimited,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A stored chat message as clients see it (live, in history and in replays).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub room: RoomId,
    pub seq: u64,
    pub prev_seq: u64,
    pub from: UserId,
    pub body: String,
    pub client_id: String,
    pub ts: i64,
    /// *(v1.1)* The message this one quotes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
    /// *(v1.1)* The root of the thread this message belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<u64>,
    /// *(v1.1)* Current state, in history pages and search results only (protocol.md#ws-lifecycle).
    #[serde(flatten)]
    pub state: Option<MessageState>,
}

impl ChatMessage {
    /// A message as it was sent (no state, no reply, no thread).
    pub fn new(
        room: RoomId,
        seq: u64,
        prev_seq: u64,
        from: UserId,
        body: String,
        client_id: String,
        ts: i64,
    ) -> Self {
        ChatMessage {
            room,
            seq,
            prev_seq,
            from,
            body,
            client_id,
            ts,
            reply_to: None,
            thread: None,
            state: None,
        }
    }
}

/// Users who reacted with each emoji, in the order they reacted.
pub type Reactions = std::collections::BTreeMap<String, Vec<UserId>>;

/// *(v1.1)* A message's current state (protocol.md#ws-lifecycle): carried by `message` objects in
/// history pages and search results, never by live frames.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MessageState {
    /// The highest seq of any event that changed the message; its own seq if none.
    pub version: u64,
    /// `ts` of the latest edit; absent if never edited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited: Option<i64>,
    /// Set once deleted (the body is then "" and there are no reactions).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    #[serde(default, skip_serializing_if = "Reactions::is_empty")]
    pub reactions: Reactions,
    /// On a thread's root: how many messages the thread holds (deleted ones included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replies: Option<u64>,
}

/// *(v1.1)* An `edit` room event (protocol.md#ws-lifecycle).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditEvent {
    pub room: RoomId,
    pub seq: u64,
    pub prev_seq: u64,
    pub from: UserId,
    pub target: u64,
    pub body: String,
    pub client_id: String,
    pub ts: i64,
}

/// *(v1.1)* A `delete` room event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteEvent {
    pub room: RoomId,
    pub seq: u64,
    pub prev_seq: u64,
    pub from: UserId,
    pub target: u64,
    pub client_id: String,
    pub ts: i64,
}

/// *(v1.1)* A `reaction` room event: `on` adds the reaction, `!on` removes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReactionEvent {
    pub room: RoomId,
    pub seq: u64,
    pub prev_seq: u64,
    pub from: UserId,
    pub target: u64,
    pub emoji: String,
    pub on: bool,
    pub client_id: String,
    pub ts: i64,
}

/// A room event of any kind, as a history page lists it: each entry carries the `type` of its
/// live frame (protocol.md#ws, v1.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RoomEventFrame {
    Message(ChatMessage),
    Edit(EditEvent),
    Delete(DeleteEvent),
    Reaction(ReactionEvent),
}

impl RoomEventFrame {
    pub fn seq(&self) -> u64 {
        match self {
            RoomEventFrame::Message(m) => m.seq,
            RoomEventFrame::Edit(e) => e.seq,
            RoomEventFrame::Delete(e) => e.seq,
            RoomEventFrame::Reaction(e) => e.seq,
        }
    }

    pub fn prev_seq(&self) -> u64 {
        match self {
            RoomEventFrame::Message(m) => m.prev_seq,
            RoomEventFrame::Edit(e) => e.prev_seq,
            RoomEventFrame::Delete(e) => e.prev_seq,
            RoomEventFrame::Reaction(e) => e.prev_seq,
        }
    }

    pub fn set_prev_seq(&mut self, prev: u64) {
        match self {
            RoomEventFrame::Message(m) => m.prev_seq = prev,
            RoomEventFrame::Edit(e) => e.prev_seq = prev,
            RoomEventFrame::Delete(e) => e.prev_seq = prev,
            RoomEventFrame::Reaction(e) => e.prev_seq = prev,
        }
    }

    pub fn room(&self) -> &RoomId {
        match self {
            RoomEventFrame::Message(m) => &m.room,
            RoomEventFrame::Edit(e) => &e.room,
            RoomEventFrame::Delete(e) => &e.room,
            RoomEventFrame::Reaction(e) => &e.room,
        }
    }

    pub fn from(&self) -> &UserId {
        match self {
            RoomEventFrame::Message(m) => &m.from,
            RoomEventFrame::Edit(e) => &e.from,
            RoomEventFrame::Delete(e) => &e.from,
            RoomEventFrame::Reaction(e) => &e.from,
        }
    }

    /// The message a change is about (`None` for a message).
    pub fn target(&self) -> Option<u64> {
        match self {
            RoomEventFrame::Message(_) => None,
            RoomEventFrame::Edit(e) => Some(e.target),
            RoomEventFrame::Delete(e) => Some(e.target),
            RoomEventFrame::Reaction(e) => Some(e.target),
        }
    }

    /// The live frame carrying this event.
    pub fn into_server_frame(self) -> ServerFrame {
        match self {
            RoomEventFrame::Message(m) => ServerFrame::Message(m),
            RoomEventFrame::Edit(e) => ServerFrame::Edit(e),
            RoomEventFrame::Delete(e) => ServerFrame::Delete(e),
            RoomEventFrame::Reaction(e) => ServerFrame::Reaction(e),
        }
    }

    /// The frame's `type`, for metrics.
    pub fn type_name(&self) -> &'static str {
        match self {
            RoomEventFrame::Message(_) => "message",
            RoomEventFrame::Edit(_) => "edit",
            RoomEventFrame::Delete(_) => "delete",
            RoomEventFrame::Reaction(_) => "reaction",
        }
    }
}

/// The limits a client must respect, announced in `hello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub max_body: usize,
    pub max_frame: usize,
    pub rate_per_s: u32,
}

/// One of the user's rooms, as listed in `hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSummary {
    pub room: RoomId,
    pub kind: RoomKind,
    pub last_seq: u64,
    pub last_read: u64,
    pub unread: u64,
}

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotificationKind {
    Mention,
    Dm,
    Invite,
    /// *(v1.1)* A reply to one's message, or a message in one's thread.
    Reply,
}

/// A notification (mention, DM, invite), pending until a `read` covers its seq.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub id: String,
    pub kind: NotificationKind,
    pub room: RoomId,
    pub seq: u64,
    pub from: UserId,
    pub preview: String,
    pub ts: i64,
}

/// A user's presence, as in snapshots and `chat.api.presence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEntry {
    pub user: UserId,
    pub status: Status,
    pub last_seen: i64,
}

/// Most pending notifications a `hello` lists (protocol.md#ws v1.1: the newest 100).
pub const HELLO_NOTIFICATIONS: usize = 100;

/// Server → client frames (protocol.md#ws).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Hello {
        user: UserId,
        session: String,
        epoch: String,
        heartbeat_ms: u64,
        limits: Limits,
        rooms: Vec<RoomSummary>,
        /// The newest [`HELLO_NOTIFICATIONS`] pending notifications, oldest first (protocol.md#ws
        /// v1.1), so that `hello` always fits in one frame.
        notifications: Vec<Notification>,
        /// How many notifications are pending in all (v1.1).
        #[serde(default)]
        notifications_total: u64,
    },
    Message(ChatMessage),
    /// *(v1.1)* Lifecycle events (protocol.md#ws-lifecycle).
    Edit(EditEvent),
    Delete(DeleteEvent),
    Reaction(ReactionEvent),
    Ack {
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        room: RoomId,
        client_id: String,
        seq: u64,
        ts: i64,
        duplicate: bool,
    },
    Joined {
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        room: RoomId,
        kind: RoomKind,
        last_seq: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        members: Option<Vec<UserId>>,
        /// v1.1: the user's marker and unread count, covering the events up to `last_seq`.
        #[serde(default)]
        last_read: u64,
        #[serde(default)]
        unread: u64,
    },
    Left {
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        room: RoomId,
    },
    Ok {
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        room: RoomId,
    },
    History {
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        room: RoomId,
        messages: Vec<RoomEventFrame>,
        has_more: bool,
    },
    /// Answer to `search`: message objects, newest first (protocol.md#ws-search).
    SearchResults {
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        query: String,
        results: Vec<ChatMessage>,
        has_more: bool,
    },
    Typing {
        room: RoomId,
        user: UserId,
    },
    Presence {
        room: RoomId,
        user: UserId,
        status: Status,
        last_seen: i64,
    },
    PresenceSnapshot {
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        room: RoomId,
        users: Vec<PresenceEntry>,
    },
    /// v1.1: sent when the marker moves (or the count changes for another reason than a new
    /// message); `count` covers the events up to seq `as_of`, and the client adds one for each
    /// later `message` of another user (protocol.md#ws-unread).
    Unread {
        room: RoomId,
        count: u64,
        last_read: u64,
        #[serde(default)]
        as_of: u64,
    },
    Notification(Notification),
    Error {
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    Pong {
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
}

/// Every `type` the server sends, in the order of [`ServerFrame::type_name`]; kept beside it so
/// that a new variant is added to both (docs/protocol.md is checked against this list).
pub const SERVER_TYPES: &[&str] = &[
    "hello",
    "message",
    "edit",
    "delete",
    "reaction",
    "ack",
    "joined",
    "left",
    "ok",
    "history",
    "search_results",
    "typing",
    "presence",
    "presence_snapshot",
    "unread",
    "notification",
    "error",
    "pong",
];

impl ServerFrame {
    /// An error frame.
    pub fn error(reference: Option<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error {
            reference,
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// The frame as the JSON text sent on the socket.
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: every map key is a string and no Serialize impl errors.
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"serialization failed"}"#.to_owned()
        })
    }

    /// The frame's `type`, for metrics.
    pub fn type_name(&self) -> &'static str {
        match self {
            ServerFrame::Hello { .. } => "hello",
            ServerFrame::Message(_) => "message",
            ServerFrame::Edit(_) => "edit",
            ServerFrame::Delete(_) => "delete",
            ServerFrame::Reaction(_) => "reaction",
            ServerFrame::Ack { .. } => "ack",
            ServerFrame::Joined { .. } => "joined",
            ServerFrame::Left { .. } => "left",
            ServerFrame::Ok { .. } => "ok",
            ServerFrame::History { .. } => "history",
            ServerFrame::SearchResults { .. } => "search_results",
            ServerFrame::Typing { .. } => "typing",
            ServerFrame::Presence { .. } => "presence",
            ServerFrame::PresenceSnapshot { .. } => "presence_snapshot",
            ServerFrame::Unread { .. } => "unread",
            ServerFrame::Notification(_) => "notification",
            ServerFrame::Error { .. } => "error",
            ServerFrame::Pong { .. } => "pong",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::char_len;

    fn code_of(text: &str) -> ErrorCode {
        Envelope::decode(text).unwrap_err().code
    }

    #[test]
    fn decodes_frames_with_ref_and_traceparent() {
        let env = Envelope::decode(
            r#"{"type":"send","room":"r1","body":"hi","client_id":"c1","ref":"7","traceparent":"00-abc"}"#,
        )
        .unwrap();
        assert_eq!(env.reference.as_deref(), Some("7"));
        assert_eq!(env.traceparent.as_deref(), Some("00-abc"));
        assert!(matches!(env.frame, ClientFrame::Send { ref body, .. } if body == "hi"));
        assert_eq!(
            Envelope::decode(r#"{"type":"ping"}"#).unwrap().frame,
            ClientFrame::Ping
        );
    }

    #[test]
    fn tells_bad_request_from_unknown_type() {
        assert_eq!(code_of("not json"), ErrorCode::BadRequest);
        assert_eq!(code_of("[1,2]"), ErrorCode::BadRequest);
        assert_eq!(code_of(r#"{"room":"x"}"#), ErrorCode::BadRequest);
        assert_eq!(code_of(r#"{"type":7}"#), ErrorCode::BadRequest);
        assert_eq!(code_of(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
        assert_eq!(
            code_of(r#"{"type":"send","room":"r"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(r#"{"type":"join","room":"bad room"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(r#"{"type":"read","room":"r","seq":-1}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(code_of(r#"{"type":"ping","ref":5}"#), ErrorCode::BadRequest);
        let long_ref = format!(r#"{{"type":"ping","ref":"{}"}}"#, "x".repeat(65));
        assert_eq!(code_of(&long_ref), ErrorCode::BadRequest);
    }

    #[test]
    fn error_messages_are_bounded_whatever_the_client_sent() {
        // Found by the frame_decode fuzz target: serde quotes the offending value in full.
        let long = "x".repeat(5000);
        for text in [
            format!(r#"{{"type":"status","status":"{long}"}}"#),
            format!(r#"{{"type":"join","room":"r","since":"{long}"}}"#),
            format!(r#"{{"type":"read","room":"r","seq":"é{long}"}}"#),
        ] {
            let err = Envelope::decode(&text).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest);
            assert_eq!(
                char_len(&err.message),
                MAX_ERROR_MESSAGE_CHARS,
                "{}",
                err.message
            );
            assert!(err.message.ends_with('…'));
        }
        let short = Envelope::decode(r#"{"type":"status","status":"idle"}"#).unwrap_err();
        assert!(short.message.contains("idle"), "{}", short.message);
    }

    #[test]
    fn control_characters_are_refused_and_a_bad_ref_is_not_echoed() {
        // protocol.md#ws-limits.
        let cases = [
            (
                r#"{"type":"send","room":"r","body":"b","client_id":"a\r\nb","ref":"1"}"#,
                Some("1"),
            ),
            (
                r#"{"type":"send","room":"r","body":"b","client_id":"t\tab","ref":"1"}"#,
                Some("1"),
            ),
            (
                r#"{"type":"send","room":"r","body":"cr\r","client_id":"c","ref":"1"}"#,
                Some("1"),
            ),
            (
                r#"{"type":"send","room":"r","body":"\u0001","client_id":"c","ref":"1"}"#,
                Some("1"),
            ),
            (
                r#"{"type":"send","room":"r","body":"b","client_id":"c","ref":"1","traceparent":"00-\n"}"#,
                Some("1"),
            ),
            (r#"{"type":"ping","ref":"a\nb"}"#, None),
            (r#"{"type":"ping","ref":"\u0085"}"#, None),
        ];
        for (text, reference) in cases {
            let err = Envelope::decode(text).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest, "{text}");
            assert_eq!(err.reference.as_deref(), reference, "{text}");
            assert!(
                err.message.contains("control characters"),
                "{}",
                err.message
            );
        }
        let ok = Envelope::decode(
            r#"{"type":"send","room":"r","body":"one\n\ttwo","client_id":"c-1","ref":"x"}"#,
        )
        .unwrap();
        assert!(matches!(ok.frame, ClientFrame::Send { ref body, .. } if body == "one\n\ttwo"));
    }

    #[test]
    fn errors_echo_the_ref_when_readable() {
        let err = Envelope::decode(r#"{"type":"send","ref":"r9"}"#).unwrap_err();
        assert_eq!(err.reference.as_deref(), Some("r9"));
    }

    #[test]
    fn server_frames_have_the_contract_shape() {
        let f = ServerFrame::Ack {
            reference: Some("1".into()),
            room: RoomId::new("r").unwrap(),
            client_id: "c".into(),
            seq: 5,
            ts: 10,
            duplicate: false,
        };
        let v: Value = serde_json::from_str(&f.to_json()).unwrap();
        assert_eq!(v["type"], "ack");
        assert_eq!(v["ref"], "1");
        assert_eq!(v["seq"], 5);
        let m = ServerFrame::Message(ChatMessage::new(
            RoomId::new("r").unwrap(),
            3,
            1,
            UserId::new("a").unwrap(),
            "b".into(),
            "c".into(),
            1,
        ));
        let v: Value = serde_json::from_str(&m.to_json()).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["prev_seq"], 1);
        let back: ServerFrame = serde_json::from_value(v).unwrap();
        assert_eq!(back, m);
        let e = ServerFrame::error(None, ErrorCode::RateLimited, "slow down");
        assert_eq!(serde_json::to_value(&e).unwrap()["code"], "rate_limited");
    }

    #[test]
    fn lifecycle_frames_decode_with_their_defaults() {
        let env =
            Envelope::decode(r#"{"type":"react","room":"r","seq":4,"emoji":"👍","client_id":"c"}"#)
                .unwrap();
        assert!(matches!(
            env.frame,
            ClientFrame::React {
                on: true,
                seq: 4,
                ..
            }
        ));
        let env = Envelope::decode(
            r#"{"type":"send","room":"r","body":"b","client_id":"c","reply_to":3,"thread":2}"#,
        )
        .unwrap();
        assert!(matches!(
            env.frame,
            ClientFrame::Send {
                reply_to: Some(3),
                thread: Some(2),
                ..
            }
        ));
        // A v1 send is still a send.
        let env =
            Envelope::decode(r#"{"type":"send","room":"r","body":"b","client_id":"c"}"#).unwrap();
        assert!(matches!(
            env.frame,
            ClientFrame::Send {
                reply_to: None,
                thread: None,
                ..
            }
        ));
        assert_eq!(
            code_of(r#"{"type":"edit","room":"r","seq":1,"client_id":"c"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(r#"{"type":"delete","room":"r","seq":"x","client_id":"c"}"#),
            ErrorCode::BadRequest
        );
        let env = Envelope::decode(r#"{"type":"history","room":"r","thread":9}"#).unwrap();
        assert!(matches!(
            env.frame,
            ClientFrame::History {
                thread: Some(9),
                ..
            }
        ));
    }

    #[test]
    fn emoji_rules() {
        assert!(valid_emoji("👍"));
        assert!(valid_emoji(":+1:"));
        assert!(valid_emoji(&"x".repeat(32)));
        assert!(!valid_emoji(&"x".repeat(33)));
        assert!(!valid_emoji(""));
        assert!(!valid_emoji("a b"));
        assert!(!valid_emoji("a\u{3000}"));
        assert!(!valid_emoji("a\u{7}"));
        assert!(!valid_emoji("\n"));
    }

    #[test]
    fn lifecycle_server_frames_have_the_contract_shape() {
        let room = RoomId::new("r").unwrap();
        let a = UserId::new("a").unwrap();
        let edit = RoomEventFrame::Edit(EditEvent {
            room: room.clone(),
            seq: 9,
            prev_seq: 8,
            from: a.clone(),
            target: 3,
            body: "new".into(),
            client_id: "c".into(),
            ts: 5,
        });
        let v = serde_json::to_value(&edit).unwrap();
        assert_eq!(v["type"], "edit");
        assert_eq!(v["target"], 3);
        // The entry of a page and the live frame are the same JSON.
        assert_eq!(
            serde_json::to_value(edit.clone().into_server_frame()).unwrap(),
            v
        );
        let reaction = ServerFrame::Reaction(ReactionEvent {
            room: room.clone(),
            seq: 10,
            prev_seq: 9,
            from: a.clone(),
            target: 3,
            emoji: "👍".into(),
            on: false,
            client_id: "c2".into(),
            ts: 6,
        });
        let v: Value = serde_json::from_str(&reaction.to_json()).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["on"].as_bool()),
            (Some("reaction"), Some(false))
        );
        // A live message carries no state; a history message carries it flat.
        let mut m = ChatMessage::new(room.clone(), 3, 0, a.clone(), "".into(), "c".into(), 1);
        let live = serde_json::to_value(RoomEventFrame::Message(m.clone())).unwrap();
        assert!(live.get("version").is_none() && live.get("reply_to").is_none());
        m.thread = Some(1);
        m.state = Some(MessageState {
            version: 12,
            edited: Some(7),
            deleted: true,
            reactions: Reactions::new(),
            replies: None,
        });
        let page = serde_json::to_value(RoomEventFrame::Message(m.clone())).unwrap();
        assert_eq!(page["type"], "message");
        assert_eq!(page["version"], 12);
        assert_eq!(page["deleted"], true);
        assert_eq!(page["thread"], 1);
        assert!(page.get("reactions").is_none());
        let back: RoomEventFrame = serde_json::from_value(page).unwrap();
        assert_eq!(back, RoomEventFrame::Message(m));
        let back: RoomEventFrame = serde_json::from_value(live).unwrap();
        assert!(matches!(
            back,
            RoomEventFrame::Message(ChatMessage { state: None, .. })
        ));
    }
}
