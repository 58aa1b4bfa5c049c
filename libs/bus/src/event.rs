//! The room event of the `CHAT` stream (protocol.md#nats) and how its live copy becomes a message.
//!
//! Event validity is decided here and only here, so that every component (the edge's live
//! feed, the archive, history pages and replays, notifications) agrees on which stored entries
//! are events. It has two steps:
//! - [`validate`] — pure and stateless: decodes a stored entry for the room of its subject and
//!   checks all that needs nothing else (version, kind, room, ids, lengths, control characters);
//! - [`Candidate::resolve`] — the checks that need earlier events the entry refers to (for
//!   kinds that change or answer a message): the caller looks up [`Candidate::references`] and
//!   passes the answers as a closure.
//!
//! An entry failing either step is not an event ([`Invalid`], a header-safe reason).

use async_nats::HeaderMap;
use chat_proto::{
    ChatMessage, DeleteEvent, EditEvent, ReactionEvent, RoomEventFrame, RoomId, UserId,
};
use serde::{Deserialize, Serialize};

/// Header with the JetStream deduplication id `<from>:<client_id>`.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// Header of a republished event: its stream sequence.
pub const SEQUENCE_HEADER: &str = "Nats-Sequence";
/// Header of a republished event: the previous sequence of the same subject (the room's prev_seq).
pub const LAST_SEQUENCE_HEADER: &str = "Nats-Last-Sequence";
/// Header of a republished event: when it was stored (RFC 3339).
pub const TIMESTAMP_HEADER: &str = "Nats-Time-Stamp";

/// What every header chat-history adds to a dead-lettered entry begins with (a replay drops them).
pub const DLQ_HEADER_PREFIX: &str = "Chat-Dlq-";
/// Header of a dead-lettered entry: why it is there (a sanitized, short text).
pub const DLQ_REASON_HEADER: &str = "Chat-Dlq-Reason";
/// Header of a dead-lettered entry: its sequence in the stream it came from (`CHAT`).
pub const DLQ_SEQ_HEADER: &str = "Chat-Dlq-Stream-Seq";
/// Header of a dead-lettered entry: the subject it was stored under.
pub const DLQ_SUBJECT_HEADER: &str = "Chat-Dlq-Subject";

/// What kind of event a stored object is (protocol.md#nats; `edit`, `delete`, `reaction` are v1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Message,
    Edit,
    Delete,
    Reaction,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Message => "message",
            EventKind::Edit => "edit",
            EventKind::Delete => "delete",
            EventKind::Reaction => "reaction",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "message" => Some(EventKind::Message),
            "edit" => Some(EventKind::Edit),
            "delete" => Some(EventKind::Delete),
            "reaction" => Some(EventKind::Reaction),
            _ => None,
        }
    }

    /// Whether events of this kind carry a `body`.
    pub fn has_body(self) -> bool {
        matches!(self, EventKind::Message | EventKind::Edit)
    }
}

/// One event as stored in the stream (protocol.md#nats):
/// `{"v":1,"kind":"message","room","from","body","client_id","ts", reply_to?, thread?}`,
/// `{"v":1,"kind":"edit","room","from","target","body","client_id","ts"}`,
/// `{"v":1,"kind":"delete","room","from","target","client_id","ts"}`,
/// `{"v":1,"kind":"reaction","room","from","target","emoji","on","client_id","ts"}`.
///
/// One flat shape for every kind, so that the many readers of `from`, `room` and `body` stay
/// simple; [`RoomEvent::decode`] refuses an object that lacks a field of its kind, and
/// serialization writes exactly the fields of its kind. `body` is "" for delete and reaction.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "WireEvent")]
pub struct RoomEvent {
    pub v: u32,
    pub kind: EventKind,
    pub room: RoomId,
    pub from: UserId,
    pub body: String,
    pub client_id: String,
    pub ts: i64,
    /// The message a change is about (edit, delete, reaction).
    pub target: Option<u64>,
    /// Reaction only.
    pub emoji: Option<String>,
    /// Reaction only: add (true) or remove (false).
    pub on: Option<bool>,
    /// Message only: the message it quotes.
    pub reply_to: Option<u64>,
    /// Message only: the root of its thread.
    pub thread: Option<u64>,
}

/// The stored JSON, every field optional, for precise refusals.
#[derive(Serialize, Deserialize)]
struct WireEvent {
    v: u32,
    kind: EventKind,
    room: RoomId,
    from: UserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    emoji: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    on: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reply_to: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    thread: Option<u64>,
    client_id: String,
    ts: i64,
}

/// Borrowed twin of [`WireEvent`] for writing without copying.
#[derive(Serialize)]
struct WireEventRef<'a> {
    v: u32,
    kind: EventKind,
    room: &'a RoomId,
    from: &'a UserId,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    emoji: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    on: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thread: Option<u64>,
    client_id: &'a str,
    ts: i64,
}

impl Serialize for RoomEvent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let is = |k: EventKind| self.kind == k;
        WireEventRef {
            v: self.v,
            kind: self.kind,
            room: &self.room,
            from: &self.from,
            target: if is(EventKind::Message) {
                None
            } else {
                self.target
            },
            body: self.kind.has_body().then_some(self.body.as_str()),
            emoji: if is(EventKind::Reaction) {
                self.emoji.as_deref()
            } else {
                None
            },
            on: if is(EventKind::Reaction) {
                Some(self.on.unwrap_or(true))
            } else {
                None
            },
            reply_to: if is(EventKind::Message) {
                self.reply_to
            } else {
                None
            },
            thread: if is(EventKind::Message) {
                self.thread
            } else {
                None
            },
            client_id: &self.client_id,
            ts: self.ts,
        }
        .serialize(s)
    }
}

impl TryFrom<WireEvent> for RoomEvent {
    type Error = String;

    fn try_from(w: WireEvent) -> Result<Self, String> {
        let kind = w.kind;
        let need_target = || {
            w.target
                .ok_or_else(|| format!("{} without target", kind.as_str()))
        };
        let target = match kind {
            EventKind::Message => None,
            _ => Some(need_target()?),
        };
        let body = match (kind.has_body(), w.body) {
            (true, Some(b)) => b,
            (true, None) => return Err(format!("{} without body", kind.as_str())),
            (false, _) => String::new(),
        };
        let (emoji, on) = match kind {
            EventKind::Reaction => {
                let emoji = w.emoji.ok_or("reaction without emoji")?;
                if !chat_proto::valid_emoji(&emoji) {
                    return Err("reaction with an invalid emoji".into());
                }
                // `on` defaults to true, as in the client frame.
                (Some(emoji), Some(w.on.unwrap_or(true)))
            }
            _ => (None, None),
        };
        let (reply_to, thread) = match kind {
            EventKind::Message => (w.reply_to, w.thread),
            _ => (None, None),
        };
        Ok(RoomEvent {
            v: w.v,
            kind,
            room: w.room,
            from: w.from,
            body,
            client_id: w.client_id,
            ts: w.ts,
            target,
            emoji,
            on,
            reply_to,
            thread,
        })
    }
}

impl RoomEvent {
    pub fn message(room: RoomId, from: UserId, body: String, client_id: String, ts: i64) -> Self {
        RoomEvent {
            v: 1,
            kind: EventKind::Message,
            room,
            from,
            body,
            client_id,
            ts,
            target: None,
            emoji: None,
            on: None,
            reply_to: None,
            thread: None,
        }
    }

    /// A change of message `target` of `kind` edit/delete/reaction; set `body` (edit) or
    /// `emoji`/`on` (reaction) on the result.
    pub fn change(
        kind: EventKind,
        room: RoomId,
        from: UserId,
        target: u64,
        client_id: String,
        ts: i64,
    ) -> Self {
        RoomEvent {
            kind,
            target: Some(target),
            ..RoomEvent::message(room, from, String::new(), client_id, ts)
        }
    }

    /// The deduplication id: a retried send with the same client_id is stored once.
    pub fn msg_id(&self) -> String {
        format!("{}:{}", self.from, self.client_id)
    }

    /// Decodes the shape of a stored message, refusing versions and shapes this code does not
    /// know. It does not check validity (the room of the subject, ids, lengths, control
    /// characters): whatever is delivered, archived or counted goes through [`validate`].
    pub fn decode(payload: &[u8]) -> Result<Self, serde_json::Error> {
        let event: RoomEvent = serde_json::from_slice(payload)?;
        if event.v != 1 {
            return Err(serde::de::Error::custom(format!(
                "unsupported event version {}",
                event.v
            )));
        }
        Ok(event)
    }

    /// The messages this event refers to: its target, `reply_to` and `thread` (protocol.md#nats: each
    /// must be a valid message of the room at a lower seq).
    pub fn references(&self) -> impl Iterator<Item = u64> {
        [self.target, self.reply_to, self.thread]
            .into_iter()
            .flatten()
    }

    /// The event as clients see it, live or replayed (without state).
    pub fn into_frame(self, seq: u64, prev_seq: u64) -> RoomEventFrame {
        let target = self.target.unwrap_or(0);
        match self.kind {
            EventKind::Message => RoomEventFrame::Message(self.into_message(seq, prev_seq)),
            EventKind::Edit => RoomEventFrame::Edit(EditEvent {
                room: self.room,
                seq,
                prev_seq,
                from: self.from,
                target,
                body: self.body,
                client_id: self.client_id,
                ts: self.ts,
            }),
            EventKind::Delete => RoomEventFrame::Delete(DeleteEvent {
                room: self.room,
                seq,
                prev_seq,
                from: self.from,
                target,
                client_id: self.client_id,
                ts: self.ts,
            }),
            EventKind::Reaction => RoomEventFrame::Reaction(ReactionEvent {
                room: self.room,
                seq,
                prev_seq,
                from: self.from,
                target,
                emoji: self.emoji.unwrap_or_default(),
                on: self.on.unwrap_or(true),
                client_id: self.client_id,
                ts: self.ts,
            }),
        }
    }

    /// A `message` event as a message object (other kinds give their body, if any).
    pub fn into_message(self, seq: u64, prev_seq: u64) -> ChatMessage {
        ChatMessage {
            reply_to: self.reply_to,
            thread: self.thread,
            ..ChatMessage::new(
                self.room,
                seq,
                prev_seq,
                self.from,
                self.body,
                self.client_id,
                self.ts,
            )
        }
    }
}

/// Longest `body` an event may carry, in characters: the ceiling of `CHAT_MAX_BODY` (the edge
/// refuses a larger setting), so that what the edge accepts is always a valid event, and one
/// event always fits in a history page (protocol.md#ws-limits).
pub const MAX_EVENT_BODY_CHARS: usize = 16_384;
/// Longest `client_id`, in characters (protocol.md#ws `send`).
pub const MAX_CLIENT_ID_CHARS: usize = 64;
/// The kinds of event this code knows (protocol.md#nats); any other `kind` is not an event.
pub const KNOWN_KINDS: &[&str] = &["message", "edit", "delete", "reaction"];

/// Why a stored entry is not an event (protocol.md#nats: never delivered, archived or counted; the
/// chains of `prev_seq` skip it; dead-lettered with this reason).
///
/// Every reason is a fixed, short ASCII text naming at most a field: nothing of the entry
/// itself, no `\r` or `\n`, so it is safe in logs, metrics labels and NATS header values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Invalid {
    /// Not a JSON object of the event shape (a mistyped or duplicate field, not JSON).
    Undecodable,
    /// The named required field is missing (or `null`).
    Missing(&'static str),
    /// `v` missing or other than 1.
    UnknownVersion,
    /// `kind` missing or not one of [`KNOWN_KINDS`].
    UnknownKind,
    /// `room` other than the room of the subject the entry was stored under.
    RoomMismatch,
    /// The named field is not a valid id (protocol.md#identities).
    InvalidId(&'static str),
    /// The named field is empty.
    Empty(&'static str),
    /// The named field is longer than allowed.
    TooLong(&'static str),
    /// The named field holds a control character protocol.md#ws (Hostile input) forbids.
    ControlCharacter(&'static str),
    /// The named field is out of range (a negative `ts`).
    OutOfRange(&'static str),
    /// The named field refers to no message of the room that it may refer to (the stateful
    /// step, [`Candidate::resolve`]).
    NoSuchTarget(&'static str),
    /// `from` may not make this change to its target (only the author edits or deletes).
    NotAllowed,
    /// The named field holds whitespace where none is allowed (a reaction's `emoji`).
    Whitespace(&'static str),
}

impl Invalid {
    /// The reason as dead-letter header value, metric label or log field.
    pub fn reason(&self) -> String {
        self.to_string()
    }

    /// A short, stable name of the kind of reason (for a metrics label).
    pub fn code(&self) -> &'static str {
        match self {
            Invalid::Undecodable => "undecodable",
            Invalid::Missing(_) => "missing",
            Invalid::UnknownVersion => "unknown_version",
            Invalid::UnknownKind => "unknown_kind",
            Invalid::RoomMismatch => "room_mismatch",
            Invalid::InvalidId(_) => "invalid_id",
            Invalid::Empty(_) => "empty",
            Invalid::TooLong(_) => "too_long",
            Invalid::ControlCharacter(_) => "control_character",
            Invalid::OutOfRange(_) => "out_of_range",
            Invalid::NoSuchTarget(_) => "no_such_target",
            Invalid::NotAllowed => "not_allowed",
            Invalid::Whitespace(_) => "whitespace",
        }
    }
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::Undecodable => f.write_str("undecodable entry"),
            Invalid::Missing(field) => write!(f, "missing {field}"),
            Invalid::UnknownVersion => f.write_str("unknown event version"),
            Invalid::UnknownKind => f.write_str("unknown event kind"),
            Invalid::RoomMismatch => f.write_str("room differs from the subject's room"),
            Invalid::InvalidId(field) => write!(f, "invalid id in {field}"),
            Invalid::Empty(field) => write!(f, "empty {field}"),
            Invalid::TooLong(field) => write!(f, "{field} too long"),
            Invalid::ControlCharacter(field) => write!(f, "control character in {field}"),
            Invalid::OutOfRange(field) => write!(f, "{field} out of range"),
            Invalid::NoSuchTarget(field) => write!(f, "{field} names no such message"),
            Invalid::NotAllowed => f.write_str("change not allowed to its sender"),
            Invalid::Whitespace(field) => write!(f, "whitespace in {field}"),
        }
    }
}

impl std::error::Error for Invalid {}

/// A valid room event: what is delivered, archived, counted and chained by `prev_seq`.
///
/// One variant per kind of protocol.md#nats. A new kind adds a variant here, its name to
/// [`KNOWN_KINDS`], its stateless checks to [`validate`] and, if it refers to other events,
/// its stateful checks to [`Candidate::resolve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Message(RoomEvent),
    /// *(v1.1)* Its target is a message of the room by the same author.
    Edit(RoomEvent),
    /// *(v1.1)* Its target is a message of the room by the same author.
    Delete(RoomEvent),
    /// *(v1.1)* Its target is a message of the room (anyone may react).
    Reaction(RoomEvent),
}

impl Event {
    fn wrap(event: RoomEvent) -> Event {
        match event.kind {
            EventKind::Message => Event::Message(event),
            EventKind::Edit => Event::Edit(event),
            EventKind::Delete => Event::Delete(event),
            EventKind::Reaction => Event::Reaction(event),
        }
    }

    /// The stored event, whatever its kind.
    pub fn event(&self) -> &RoomEvent {
        match self {
            Event::Message(e) | Event::Edit(e) | Event::Delete(e) | Event::Reaction(e) => e,
        }
    }

    pub fn into_event(self) -> RoomEvent {
        match self {
            Event::Message(e) | Event::Edit(e) | Event::Delete(e) | Event::Reaction(e) => e,
        }
    }

    /// The room the event belongs to (always its subject's room).
    pub fn room(&self) -> &RoomId {
        &self.event().room
    }

    pub fn from(&self) -> &UserId {
        &self.event().from
    }

    /// The kind, as spelled in the stored entry.
    pub fn kind(&self) -> &'static str {
        self.event().kind.as_str()
    }
}

/// What the stateful step needs to know of an earlier event an entry refers to (by seq).
/// All of it is immutable once the event is in the log, so a lookup may be memoized forever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The event is a valid `message` of the same room (not an edit, delete or reaction).
    pub is_message: bool,
    /// Its author.
    pub from: UserId,
    /// The root of the thread the message belongs to, if any (a thread's root is top-level).
    pub thread: Option<u64>,
}

impl Target {
    /// What a valid event says of itself to later events that refer to it.
    pub fn of(event: &Event) -> Target {
        let e = event.event();
        Target {
            is_message: matches!(event, Event::Message(_)),
            from: e.from.clone(),
            thread: e.thread,
        }
    }
}

/// A stored entry that passed every check needing nothing but the entry and its subject
/// ([`validate`]). Whether it is an event may still depend on earlier events it refers to:
/// look up each of [`references`](Candidate::references) (in the same room, below the entry's
/// own seq) and hand the answers to [`resolve`](Candidate::resolve). A `message` without
/// `reply_to`/`thread` refers to nothing, so `resolve(|_| None)` is exact for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate(Event);

impl Candidate {
    /// The seqs of the room's earlier events this entry refers to: a change's `target`, a
    /// message's `reply_to` and `thread`.
    pub fn references(&self) -> Vec<u64> {
        self.0.event().references().collect()
    }

    /// The stateful step (protocol.md#nats): checks what the entry says of the events it refers to.
    /// `lookup(seq)` answers with the event `seq` of the same room if it is a valid event
    /// below the entry's own seq (`None`: no such event, or not a valid one). Pure: the same
    /// answers give the same result, so every component that looks up the same log decides
    /// the same. A change is valid whatever later happened to its target (a change after a
    /// delete is an event that changes nothing, protocol.md#ws-lifecycle).
    pub fn resolve(self, mut lookup: impl FnMut(u64) -> Option<Target>) -> Result<Event, Invalid> {
        let e = self.0.event();
        let mut message = |seq: u64, field: &'static str| match lookup(seq) {
            Some(t) if t.is_message => Ok(t),
            _ => Err(Invalid::NoSuchTarget(field)),
        };
        match &self.0 {
            Event::Message(_) => {
                if let Some(r) = e.reply_to {
                    message(r, "reply_to")?;
                }
                if let Some(t) = e.thread {
                    // A thread's root is a top-level message.
                    if message(t, "thread")?.thread.is_some() {
                        return Err(Invalid::NoSuchTarget("thread"));
                    }
                }
            }
            Event::Edit(_) | Event::Delete(_) => {
                let t = message(e.target.unwrap_or(0), "target")?;
                if t.from != e.from {
                    return Err(Invalid::NotAllowed);
                }
            }
            Event::Reaction(_) => {
                message(e.target.unwrap_or(0), "target")?;
            }
        }
        Ok(self.0)
    }

    /// The event as the entry states it, before the stateful step (for logs and tests).
    pub fn peek(&self) -> &Event {
        &self.0
    }
}

/// The shape of every kind of stored entry, all fields optional so that a missing one is told
/// apart from a malformed entry. Unknown fields are ignored (newer producers may add some).
#[derive(Deserialize)]
struct RawEntry {
    v: Option<u64>,
    kind: Option<String>,
    room: Option<String>,
    from: Option<String>,
    body: Option<String>,
    client_id: Option<String>,
    ts: Option<i64>,
    target: Option<u64>,
    emoji: Option<String>,
    on: Option<bool>,
    reply_to: Option<u64>,
    thread: Option<u64>,
}

/// Just `v` and `kind`, of any type: to name the reason when the whole shape does not decode.
#[derive(Deserialize)]
struct Probe {
    v: Option<serde_json::Value>,
    kind: Option<serde_json::Value>,
}

/// The stateless half of event validity (protocol.md#nats): decodes the stored entry `payload` of
/// the subject of room `subject_room` and checks everything that needs no other event — the
/// version and kind, that `room` is the subject's, the ids, lengths and control characters.
/// Pure and cheap (one decode); never panics, whatever the bytes.
pub fn validate(payload: &[u8], subject_room: &RoomId) -> Result<Candidate, Invalid> {
    let raw: RawEntry = match serde_json::from_slice(payload) {
        Ok(raw) => raw,
        Err(_) => return Err(why_undecodable(payload)),
    };
    if raw.v != Some(1) {
        return Err(Invalid::UnknownVersion);
    }
    let Some(kind) = raw.kind.as_deref().and_then(EventKind::parse) else {
        return Err(Invalid::UnknownKind);
    };
    let room = RoomId::new(required(raw.room, "room")?).map_err(|_| Invalid::InvalidId("room"))?;
    if &room != subject_room {
        return Err(Invalid::RoomMismatch);
    }
    let from = UserId::new(required(raw.from, "from")?).map_err(|_| Invalid::InvalidId("from"))?;
    // Fields of other kinds are ignored, like unknown fields.
    let target = match kind {
        EventKind::Message => None,
        _ => Some(required(raw.target, "target")?),
    };
    let body = if kind.has_body() {
        let body = required(raw.body, "body")?;
        check_text(&body, "body", MAX_EVENT_BODY_CHARS, true)?;
        body
    } else {
        String::new()
    };
    let (emoji, on) = if kind == EventKind::Reaction {
        let emoji = required(raw.emoji, "emoji")?;
        check_text(&emoji, "emoji", chat_proto::MAX_EMOJI_CHARS, false)?;
        if emoji.chars().any(char::is_whitespace) {
            return Err(Invalid::Whitespace("emoji"));
        }
        // `on` defaults to true, as in the client frame (protocol.md#ws `react`).
        (Some(emoji), Some(raw.on.unwrap_or(true)))
    } else {
        (None, None)
    };
    let (reply_to, thread) = match kind {
        EventKind::Message => (raw.reply_to, raw.thread),
        _ => (None, None),
    };
    let client_id = required(raw.client_id, "client_id")?;
    check_text(&client_id, "client_id", MAX_CLIENT_ID_CHARS, false)?;
    let ts = required(raw.ts, "ts")?;
    if ts < 0 {
        return Err(Invalid::OutOfRange("ts"));
    }
    Ok(Candidate(Event::wrap(RoomEvent {
        v: 1,
        kind,
        room,
        from,
        body,
        client_id,
        ts,
        target,
        emoji,
        on,
        reply_to,
        thread,
    })))
}

/// [`validate`] for an entry stored under `subject` (`chat.room.<room>.msg`); a subject that
/// names no valid room makes every entry a [`Invalid::RoomMismatch`].
pub fn validate_stored(subject: &str, payload: &[u8]) -> Result<Candidate, Invalid> {
    let room = crate::subjects::room_of(subject).ok_or(Invalid::RoomMismatch)?;
    validate(payload, &room)
}

fn required<T>(field: Option<T>, name: &'static str) -> Result<T, Invalid> {
    field.ok_or(Invalid::Missing(name))
}

/// 1..=`max` characters, and no control character but (where `tab_newline`) tab and newline.
fn check_text(s: &str, field: &'static str, max: usize, tab_newline: bool) -> Result<(), Invalid> {
    if s.is_empty() {
        return Err(Invalid::Empty(field));
    }
    let mut n = 0usize;
    for c in s.chars() {
        n += 1;
        if c.is_control() && !(tab_newline && (c == '\t' || c == '\n')) {
            return Err(Invalid::ControlCharacter(field));
        }
    }
    if n > max {
        return Err(Invalid::TooLong(field));
    }
    Ok(())
}

fn why_undecodable(payload: &[u8]) -> Invalid {
    let Ok(probe) = serde_json::from_slice::<Probe>(payload) else {
        return Invalid::Undecodable;
    };
    if probe.v.as_ref().and_then(|v| v.as_u64()) != Some(1) {
        return Invalid::UnknownVersion;
    }
    match probe.kind.as_ref().and_then(|k| k.as_str()) {
        Some(k) if KNOWN_KINDS.contains(&k) => Invalid::Undecodable,
        _ => Invalid::UnknownKind,
    }
}

/// `s` made safe as a NATS header value or log field: printable ASCII only (anything else
/// becomes `?`), at most `max` characters. Header values with `\r` or `\n` panic on conversion.
pub fn header_safe(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect()
}

/// Reads a numeric header.
pub fn header_u64(headers: Option<&HeaderMap>, name: &str) -> Option<u64> {
    headers?.get(name)?.as_str().parse().ok()
}

/// One stored entry as the live feed `chat.fanout.<room>` carries it (protocol.md#nats).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanoutEntry {
    /// Its stream sequence (`Nats-Sequence`).
    pub seq: u64,
    /// The previous stored entry of the same subject, valid or not (`Nats-Last-Sequence`). It is
    /// the event's `prev_seq` only if that entry is an event: the feed's reader keeps the chain
    /// of valid events itself (an invalid entry is skipped by `prev_seq`).
    pub last_entry: u64,
    /// The stateless half of its validity ([`validate`]).
    pub candidate: Result<Candidate, Invalid>,
}

/// Decodes a message of the live feed of `room` (payload plus republish headers); `None` if it
/// carries no sequence (not a republished entry).
pub fn decode_fanout(
    headers: Option<&HeaderMap>,
    payload: &[u8],
    room: &RoomId,
) -> Option<FanoutEntry> {
    Some(FanoutEntry {
        seq: header_u64(headers, SEQUENCE_HEADER)?,
        last_entry: header_u64(headers, LAST_SEQUENCE_HEADER).unwrap_or(0),
        candidate: validate(payload, room),
    })
}

impl Event {
    /// The live or replayed frame of the event with its seq and `prev_seq`, as it was sent.
    pub fn into_frame(self, seq: u64, prev_seq: u64) -> RoomEventFrame {
        self.into_event().into_frame(seq, prev_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_has_the_contract_shape() {
        let e = RoomEvent::message(
            RoomId::new("r").unwrap(),
            UserId::new("a").unwrap(),
            "hi".into(),
            "c1".into(),
            5,
        );
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["kind"], "message");
        assert_eq!(e.msg_id(), "a:c1");
        assert!(RoomEvent::decode(br#"{"v":2,"kind":"message","room":"r","from":"a","body":"","client_id":"c","ts":1}"#).is_err());
    }

    fn lobby() -> RoomId {
        RoomId::new("lobby").unwrap()
    }

    fn entry(fields: serde_json::Value) -> Vec<u8> {
        let mut base = serde_json::json!({
            "v": 1, "kind": "message", "room": "lobby", "from": "bot",
            "body": "hello", "client_id": "c1", "ts": 1
        });
        for (k, v) in fields.as_object().unwrap() {
            if v.is_null() {
                base.as_object_mut().unwrap().remove(k);
            } else {
                base[k] = v.clone();
            }
        }
        serde_json::to_vec(&base).unwrap()
    }

    fn check(fields: serde_json::Value) -> Result<Event, Invalid> {
        validate(&entry(fields), &lobby())?.resolve(|_| None)
    }

    #[test]
    fn a_valid_message_is_an_event() {
        let e = check(serde_json::json!({"body": "tab\tand\nnewline ok 😀"})).unwrap();
        let Event::Message(m) = e else {
            panic!("not a message: {e:?}")
        };
        assert_eq!(m.room, lobby());
        assert_eq!(m.body, "tab\tand\nnewline ok 😀");
        // What the edge publishes is valid as it is.
        let sent = RoomEvent::message(
            lobby(),
            UserId::new("a").unwrap(),
            "x".into(),
            "c".into(),
            9,
        );
        let payload = serde_json::to_vec(&sent).unwrap();
        assert_eq!(
            validate(&payload, &lobby()).unwrap().resolve(|_| None),
            Ok(Event::Message(sent))
        );
    }

    #[test]
    fn each_invalid_entry_has_its_reason() {
        use serde_json::json;
        let cases = [
            (json!({"kind": "x\ny"}), Invalid::UnknownKind),
            (json!({"kind": null}), Invalid::UnknownKind),
            (json!({"kind": 7}), Invalid::UnknownKind),
            (json!({"v": 2}), Invalid::UnknownVersion),
            (json!({"v": "1"}), Invalid::UnknownVersion),
            (json!({"v": null}), Invalid::UnknownVersion),
            // Issue 15 item 3: an event on lobby's subject claiming another room.
            (json!({"room": "secret1"}), Invalid::RoomMismatch),
            (json!({"room": "a b"}), Invalid::InvalidId("room")),
            (json!({"room": null}), Invalid::Missing("room")),
            (json!({"from": "ev\r\nil"}), Invalid::InvalidId("from")),
            (json!({"from": ""}), Invalid::InvalidId("from")),
            (json!({"body": ""}), Invalid::Empty("body")),
            (
                json!({"body": "a\u{1}b"}),
                Invalid::ControlCharacter("body"),
            ),
            (json!({"body": "a\rb"}), Invalid::ControlCharacter("body")),
            (json!({"body": "\u{85}"}), Invalid::ControlCharacter("body")),
            (
                json!({"body": "é".repeat(MAX_EVENT_BODY_CHARS + 1)}),
                Invalid::TooLong("body"),
            ),
            (json!({"body": 5}), Invalid::Undecodable),
            (
                json!({"client_id": "x\ny"}),
                Invalid::ControlCharacter("client_id"),
            ),
            (
                json!({"client_id": "\t"}),
                Invalid::ControlCharacter("client_id"),
            ),
            (json!({"client_id": ""}), Invalid::Empty("client_id")),
            (
                json!({"client_id": "c".repeat(65)}),
                Invalid::TooLong("client_id"),
            ),
            (json!({"ts": -1}), Invalid::OutOfRange("ts")),
            (json!({"ts": 1.5}), Invalid::Undecodable),
            (json!({"ts": null}), Invalid::Missing("ts")),
        ];
        for (fields, want) in cases {
            assert_eq!(check(fields.clone()), Err(want), "{fields}");
        }
        assert!(check(serde_json::json!({"body": "é".repeat(MAX_EVENT_BODY_CHARS)})).is_ok());
        assert!(check(serde_json::json!({"client_id": "ü".repeat(64)})).is_ok());
        for junk in [&b""[..], b"null", b"[]", b"{", b"\xff\xfe", b"\"x\""] {
            assert_eq!(validate(junk, &lobby()), Err(Invalid::Undecodable));
        }
        // A duplicate field is refused, not silently resolved one way or the other.
        let dup = br#"{"v":1,"kind":"message","room":"lobby","room":"secret1","from":"a","body":"x","client_id":"c","ts":1}"#;
        assert_eq!(validate(dup, &lobby()), Err(Invalid::Undecodable));
        assert_eq!(
            validate_stored("chat.room.secret1.msg", &entry(serde_json::json!({}))),
            Err(Invalid::RoomMismatch)
        );
        assert!(validate_stored("chat.room.lobby.msg", &entry(serde_json::json!({}))).is_ok());
    }

    #[test]
    fn reasons_are_safe_header_values() {
        let all = [
            Invalid::Undecodable,
            Invalid::Missing("room"),
            Invalid::UnknownVersion,
            Invalid::UnknownKind,
            Invalid::RoomMismatch,
            Invalid::InvalidId("from"),
            Invalid::Empty("body"),
            Invalid::TooLong("body"),
            Invalid::ControlCharacter("client_id"),
            Invalid::OutOfRange("ts"),
            Invalid::NoSuchTarget("target"),
            Invalid::NotAllowed,
        ];
        for reason in all {
            let text = reason.reason();
            assert!(!text.is_empty() && text.len() <= 64, "{text}");
            assert!(text.bytes().all(|b| (0x20..0x7f).contains(&b)), "{text:?}");
            // The conversion that panicked in issue 15 item 2.
            let mut h = HeaderMap::new();
            h.insert(DLQ_REASON_HEADER, text.as_str());
            assert!(!reason.code().is_empty());
        }
    }

    #[test]
    fn header_safe_keeps_printable_ascii_only() {
        assert_eq!(header_safe("a\r\nb\u{1}é", 10), "a??b??");
        assert_eq!(header_safe(&"x".repeat(300), 200).len(), 200);
    }

    #[test]
    fn fanout_reads_seq_headers() {
        let mut h = HeaderMap::new();
        h.insert(SEQUENCE_HEADER, "12");
        h.insert(LAST_SEQUENCE_HEADER, "7");
        let payload =
            br#"{"v":1,"kind":"message","room":"r","from":"a","body":"x","client_id":"c","ts":1}"#;
        let r = RoomId::new("r").unwrap();
        let e = decode_fanout(Some(&h), payload, &r).unwrap();
        assert_eq!((e.seq, e.last_entry), (12, 7));
        assert!(e.candidate.is_ok());
        assert!(decode_fanout(None, payload, &r).is_none());
        let other = RoomId::new("other").unwrap();
        let e = decode_fanout(Some(&h), payload, &other).unwrap();
        assert_eq!(e.candidate, Err(Invalid::RoomMismatch));
    }

    #[test]
    fn every_kind_has_the_contract_shape() {
        let room = RoomId::new("r").unwrap();
        let a = UserId::new("a").unwrap();
        let mut m = RoomEvent::message(room.clone(), a.clone(), "hi".into(), "c1".into(), 5);
        m.reply_to = Some(3);
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["reply_to"], 3);
        assert!(v.get("thread").is_none() && v.get("target").is_none());
        assert_eq!(
            RoomEvent::decode(&serde_json::to_vec(&m).unwrap()).unwrap(),
            m
        );

        let mut e = RoomEvent::change(EventKind::Edit, room.clone(), a.clone(), 3, "c2".into(), 6);
        e.body = "new".into();
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"v":1,"kind":"edit","room":"r","from":"a","target":3,"body":"new","client_id":"c2","ts":6})
        );
        let d = RoomEvent::change(
            EventKind::Delete,
            room.clone(),
            a.clone(),
            3,
            "c3".into(),
            7,
        );
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            serde_json::json!({"v":1,"kind":"delete","room":"r","from":"a","target":3,"client_id":"c3","ts":7})
        );
        let mut r = RoomEvent::change(EventKind::Reaction, room, a, 3, "c4".into(), 8);
        r.emoji = Some("👍".into());
        r.on = Some(false);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"v":1,"kind":"reaction","room":"r","from":"a","target":3,"emoji":"👍","on":false,"client_id":"c4","ts":8})
        );
        for e in [&e, &d, &r] {
            assert_eq!(
                &RoomEvent::decode(&serde_json::to_vec(e).unwrap()).unwrap(),
                e
            );
        }
        assert_eq!(r.references().collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn incomplete_changes_do_not_decode() {
        for bad in [
            r#"{"v":1,"kind":"edit","room":"r","from":"a","body":"x","client_id":"c","ts":1}"#,
            r#"{"v":1,"kind":"edit","room":"r","from":"a","target":1,"client_id":"c","ts":1}"#,
            r#"{"v":1,"kind":"delete","room":"r","from":"a","client_id":"c","ts":1}"#,
            r#"{"v":1,"kind":"reaction","room":"r","from":"a","target":1,"on":true,"client_id":"c","ts":1}"#,
            r#"{"v":1,"kind":"reaction","room":"r","from":"a","target":1,"emoji":"a b","client_id":"c","ts":1}"#,
            r#"{"v":1,"kind":"message","room":"r","from":"a","client_id":"c","ts":1}"#,
            r#"{"v":1,"kind":"poll","room":"r","from":"a","body":"x","client_id":"c","ts":1}"#,
        ] {
            assert!(RoomEvent::decode(bad.as_bytes()).is_err(), "{bad}");
        }
        let r = RoomEvent::decode(
            br#"{"v":1,"kind":"reaction","room":"r","from":"a","target":1,"emoji":"x","client_id":"c","ts":1}"#,
        )
        .unwrap();
        assert_eq!(r.on, Some(true));
    }

    #[test]
    fn changes_and_replies_resolve_against_their_targets() {
        use serde_json::json;
        let alice = UserId::new("alice").unwrap();
        // seq 1: alice's top-level message; seq 2: bob's message in 1's thread; 3: an edit.
        let lookup = |seq: u64| match seq {
            1 => Some(Target {
                is_message: true,
                from: alice.clone(),
                thread: None,
            }),
            2 => Some(Target {
                is_message: true,
                from: UserId::new("bob").unwrap(),
                thread: Some(1),
            }),
            3 => Some(Target {
                is_message: false,
                from: alice.clone(),
                thread: None,
            }),
            _ => None,
        };
        let run = |fields: serde_json::Value| {
            validate(&entry(fields), &lobby()).and_then(|c| c.resolve(lookup))
        };
        let edit = |from: &str, target: u64| json!({"kind": "edit", "from": from, "target": target, "body": "new"});
        assert!(matches!(run(edit("alice", 1)), Ok(Event::Edit(_))));
        assert_eq!(run(edit("bob", 1)), Err(Invalid::NotAllowed));
        assert_eq!(run(edit("alice", 3)), Err(Invalid::NoSuchTarget("target")));
        assert_eq!(run(edit("alice", 9)), Err(Invalid::NoSuchTarget("target")));
        assert_eq!(
            run(json!({"kind": "edit", "from": "alice", "target": 1, "body": null})),
            Err(Invalid::Missing("body"))
        );
        let delete = json!({"kind": "delete", "from": "bob", "target": 2, "body": null});
        assert!(matches!(run(delete), Ok(Event::Delete(_))));
        let react = |emoji: &str, target: u64| json!({"kind": "reaction", "from": "carol", "target": target, "emoji": emoji, "on": false, "body": null});
        assert!(matches!(run(react("👍", 1)), Ok(Event::Reaction(_))));
        assert_eq!(run(react("a b", 1)), Err(Invalid::Whitespace("emoji")));
        assert_eq!(run(react("", 1)), Err(Invalid::Empty("emoji")));
        assert_eq!(run(react("👍", 3)), Err(Invalid::NoSuchTarget("target")));
        assert_eq!(
            run(json!({"kind": "reaction", "target": 1, "emoji": null})),
            Err(Invalid::Missing("emoji"))
        );
        assert_eq!(
            run(json!({"kind": "delete"})),
            Err(Invalid::Missing("target"))
        );
        assert!(matches!(
            run(json!({"reply_to": 2, "thread": 1})),
            Ok(Event::Message(_))
        ));
        assert_eq!(
            run(json!({"reply_to": 3})),
            Err(Invalid::NoSuchTarget("reply_to"))
        );
        // A thread's root is a top-level message.
        assert_eq!(
            run(json!({"thread": 2})),
            Err(Invalid::NoSuchTarget("thread"))
        );
        assert_eq!(
            run(json!({"thread": 7})),
            Err(Invalid::NoSuchTarget("thread"))
        );
    }
}
