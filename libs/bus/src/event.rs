//! The room event of the `CHAT` stream (CONTRACT §3) and how its live copy becomes a message.
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
use chat_proto::{ChatMessage, RoomId, UserId};
use serde::{Deserialize, Serialize};

/// Header with the JetStream deduplication id `<from>:<client_id>`.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// Header of a republished event: its stream sequence.
pub const SEQUENCE_HEADER: &str = "Nats-Sequence";
/// Header of a republished event: the previous sequence of the same subject (the room's prev_seq).
pub const LAST_SEQUENCE_HEADER: &str = "Nats-Last-Sequence";
/// Header of a republished event: when it was stored (RFC 3339).
pub const TIMESTAMP_HEADER: &str = "Nats-Time-Stamp";

/// What kind of event a stored object is; only `message` exists in v1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Message,
}

/// One event as stored in the stream: `{"v":1,"kind":"message","room","from","body","client_id","ts"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomEvent {
    pub v: u32,
    pub kind: EventKind,
    pub room: RoomId,
    pub from: UserId,
    pub body: String,
    pub client_id: String,
    pub ts: i64,
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

    pub fn into_message(self, seq: u64, prev_seq: u64) -> ChatMessage {
        ChatMessage {
            room: self.room,
            seq,
            prev_seq,
            from: self.from,
            body: self.body,
            client_id: self.client_id,
            ts: self.ts,
        }
    }
}

/// Longest `body` an event may carry, in characters: the ceiling of `CHAT_MAX_BODY` (the edge
/// refuses a larger setting), so that what the edge accepts is always a valid event, and one
/// event always fits in a history page (CONTRACT §2 Limits).
pub const MAX_EVENT_BODY_CHARS: usize = 16_384;
/// Longest `client_id`, in characters (CONTRACT §2 `send`).
pub const MAX_CLIENT_ID_CHARS: usize = 64;
/// The kinds of event this code knows (CONTRACT §3); any other `kind` is not an event.
pub const KNOWN_KINDS: &[&str] = &["message"];

/// Why a stored entry is not an event (CONTRACT §3: never delivered, archived or counted; the
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
    /// The named field is not a valid id (CONTRACT §1).
    InvalidId(&'static str),
    /// The named field is empty.
    Empty(&'static str),
    /// The named field is longer than allowed.
    TooLong(&'static str),
    /// The named field holds a control character CONTRACT §2 (Hostile input) forbids.
    ControlCharacter(&'static str),
    /// The named field is out of range (a negative `ts`).
    OutOfRange(&'static str),
    /// The named field refers to no message of the room that it may refer to (the stateful
    /// step, [`Candidate::resolve`]).
    NoSuchTarget(&'static str),
    /// `from` may not make this change to its target (only the author edits or deletes).
    NotAllowed,
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
        }
    }
}

impl std::error::Error for Invalid {}

/// A valid room event: what is delivered, archived, counted and chained by `prev_seq`.
///
/// One variant per kind of CONTRACT §3. A new kind adds a variant here, its name to
/// [`KNOWN_KINDS`], its stateless checks to [`validate`] and, if it refers to other events,
/// its stateful checks to [`Candidate::resolve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Message(RoomEvent),
}

impl Event {
    /// The room the event belongs to (always its subject's room).
    pub fn room(&self) -> &RoomId {
        match self {
            Event::Message(m) => &m.room,
        }
    }

    pub fn from(&self) -> &UserId {
        match self {
            Event::Message(m) => &m.from,
        }
    }

    /// The kind, as spelled in the stored entry.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Message(_) => "message",
        }
    }
}

/// What the stateful step needs to know of an earlier event an entry refers to (by seq).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The event is a valid `message` of the same room (not an edit, delete or reaction).
    pub is_message: bool,
    /// Its author.
    pub from: UserId,
}

/// A stored entry that passed every check needing nothing but the entry and its subject
/// ([`validate`]). Whether it is an event may still depend on earlier events it refers to:
/// look up each of [`references`](Candidate::references) (in the same room, below the entry's
/// own seq) and hand the answers to [`resolve`](Candidate::resolve). A `message` without
/// `reply_to`/`thread` refers to nothing, so `resolve(|_| None)` is exact for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate(Event);

impl Candidate {
    /// The seqs of the room's earlier events this entry refers to (none for a v1 message).
    pub fn references(&self) -> Vec<u64> {
        match &self.0 {
            Event::Message(_) => Vec::new(),
        }
    }

    /// The stateful step (CONTRACT §3): checks what the entry says of the events it refers to.
    /// `lookup(seq)` answers with the event `seq` of the same room if it is a valid event
    /// (`None`: no such event, or not a valid one). Pure: the same answers give the same result,
    /// so every component that looks up the same log decides the same.
    pub fn resolve(self, lookup: impl FnMut(u64) -> Option<Target>) -> Result<Event, Invalid> {
        let _ = lookup;
        match self.0 {
            Event::Message(m) => Ok(Event::Message(m)),
        }
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
}

/// Just `v` and `kind`, of any type: to name the reason when the whole shape does not decode.
#[derive(Deserialize)]
struct Probe {
    v: Option<serde_json::Value>,
    kind: Option<serde_json::Value>,
}

/// The stateless half of event validity (CONTRACT §3): decodes the stored entry `payload` of
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
    match raw.kind.as_deref() {
        Some("message") => {}
        _ => return Err(Invalid::UnknownKind),
    }
    let room = RoomId::new(required(raw.room, "room")?).map_err(|_| Invalid::InvalidId("room"))?;
    if &room != subject_room {
        return Err(Invalid::RoomMismatch);
    }
    let from = UserId::new(required(raw.from, "from")?).map_err(|_| Invalid::InvalidId("from"))?;
    let body = required(raw.body, "body")?;
    check_text(&body, "body", MAX_EVENT_BODY_CHARS, true)?;
    let client_id = required(raw.client_id, "client_id")?;
    check_text(&client_id, "client_id", MAX_CLIENT_ID_CHARS, false)?;
    let ts = required(raw.ts, "ts")?;
    if ts < 0 {
        return Err(Invalid::OutOfRange("ts"));
    }
    Ok(Candidate(Event::Message(RoomEvent {
        v: 1,
        kind: EventKind::Message,
        room,
        from,
        body,
        client_id,
        ts,
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

/// Decodes a message of the live feed `chat.fanout.<room>` (payload plus republish headers).
pub fn decode_fanout(headers: Option<&HeaderMap>, payload: &[u8]) -> Option<ChatMessage> {
    let seq = header_u64(headers, SEQUENCE_HEADER)?;
    let prev = header_u64(headers, LAST_SEQUENCE_HEADER).unwrap_or(0);
    let event = RoomEvent::decode(payload).ok()?;
    Some(event.into_message(seq, prev))
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
        let Event::Message(m) = e;
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
            h.insert("Chat-Dlq-Reason", text.as_str());
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
        let m = decode_fanout(Some(&h), payload).unwrap();
        assert_eq!((m.seq, m.prev_seq), (12, 7));
        assert!(decode_fanout(None, payload).is_none());
    }
}
