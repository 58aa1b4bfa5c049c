//! The contract of [`chat_edge::dispatch::classify`] as an executable model, shared by
//! `tests/dispatch_props.rs` (CI, random bytes through proptest) and the `frame_dispatch` fuzz
//! target (`fuzz/`, coverage-guided bytes through libFuzzer), which includes this file with
//! `#[path]`. Both feed bytes to [`run_bytes`].
//!
//! Input format: four bytes of session set-up (max_frame, max_body, rate, membership), then
//! either `\n` and newline-separated raw text frames (the seed corpus is written so), or anything
//! else: a sequence of [`Step`]s read with `arbitrary` (structured frames, mangled frames, raw
//! text and binary frames, each after a pause).

#![allow(dead_code)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use chat_edge::dispatch::{
    Action, Inbound, MAX_CLIENT_ID_CHARS, MAX_CREATE_MEMBERS, Refusal, classify,
};
use chat_edge::ratelimit::{TokenBucket, Verdict};
use chat_proto::{
    CLIENT_TYPES, ClientFrame, Envelope, ErrorCode, Limits, MAX_REF_CHARS, MAX_TRACEPARENT_BYTES,
    RoomId, Status, close, is_valid_id,
};
use serde_json::{Map, Value};

/// Rooms the generator names; the membership byte picks among the first four (valid ids).
pub const ROOMS: &[&str] = &[
    "general",
    "r1",
    "team-a",
    "dm-0123456789abcdef",
    "bad room",
    "",
];
pub const USERS: &[&str] = &["alice", "bob", "a.b", ""];
pub const FIELDS: &[&str] = &[
    "room",
    "body",
    "client_id",
    "since",
    "epoch",
    "before",
    "after",
    "limit",
    "user",
    "members",
    "private",
    "seq",
    "status",
    "token",
    "query",
];
const STATUSES: &[&str] = &["online", "away", "busy", "offline", "idle"];
/// Characters of protocol.md#ws-limits: every one but tab and newline is refused in a
/// body, every one in an id-like field; the last two are not control characters (category Cf/Zl).
pub const CONTROLS: &[char] = &[
    '\r', '\n', '\t', '\0', '\u{7}', '\u{1b}', '\u{7f}', '\u{85}', '\u{9f}', '\u{200b}', '\u{2028}',
];
/// Longest run of steps per input: enough to reach 4029 at the lowest rate.
const MAX_STEPS: usize = 96;

#[derive(Debug, Arbitrary)]
pub struct Step {
    /// Pause before the frame, in units of 16 ms.
    pub pause: u8,
    pub frame: Frame,
}

#[derive(Debug, Arbitrary)]
pub enum Frame {
    Shaped(Shape),
    /// The shaped frame's text cut at a byte offset.
    Cut(Shape, u16),
    /// The shaped frame's text with a string spliced in at a byte offset.
    Spliced(Shape, u16, String),
    Raw(String),
    Binary {
        len: u32,
    },
}

/// A JSON object that looks like a client frame.
#[derive(Debug, Arbitrary)]
pub struct Shape {
    pub ty: Ty,
    pub fields: Vec<(Field, Val)>,
    pub reference: Option<Val>,
    pub traceparent: Option<Val>,
}

#[derive(Debug, Arbitrary)]
pub enum Ty {
    Known(u8),
    Other(String),
    NotAString(i64),
    Missing,
}

#[derive(Debug, Arbitrary)]
pub enum Field {
    Known(u8),
    Other(String),
}

#[derive(Debug, Arbitrary)]
pub enum Val {
    Room(u8),
    User(u8),
    Status(u8),
    Str(String),
    /// One character repeated: bodies around max_body, ids and refs around their limits.
    Repeat(char, u16),
    /// A string with one of [`CONTROLS`] spliced in at a byte offset.
    Control(String, u8, u16),
    /// A list of this many distinct valid user ids (a `create` around its 1,000 members).
    ManyUsers(u16),
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    Null,
    List(Vec<Leaf>),
    Object(Vec<(String, Leaf)>),
}

#[derive(Debug, Arbitrary)]
pub enum Leaf {
    User(u8),
    Str(String),
    U64(u64),
    Null,
}

fn pick<'a>(from: &[&'a str], i: u8) -> &'a str {
    from[usize::from(i) % from.len()]
}

impl Leaf {
    fn to_json(&self) -> Value {
        match self {
            Leaf::User(i) => pick(USERS, *i).into(),
            Leaf::Str(s) => s.as_str().into(),
            Leaf::U64(n) => (*n).into(),
            Leaf::Null => Value::Null,
        }
    }
}

impl Val {
    fn to_json(&self) -> Value {
        match self {
            Val::Room(i) => pick(ROOMS, *i).into(),
            Val::User(i) => pick(USERS, *i).into(),
            Val::Status(i) => pick(STATUSES, *i).into(),
            Val::Str(s) => s.as_str().into(),
            Val::Repeat(c, n) => c.to_string().repeat(usize::from(*n)).into(),
            Val::Control(base, which, at) => {
                let mut text = base.clone();
                let c = CONTROLS[usize::from(*which) % CONTROLS.len()];
                text.insert(floor_boundary(&text, *at), c);
                text.into()
            }
            Val::U64(n) => (*n).into(),
            Val::I64(n) => (*n).into(),
            Val::F64(f) => (*f).into(),
            Val::Bool(b) => (*b).into(),
            Val::ManyUsers(n) => Value::Array(
                (0..usize::from(*n) % 1200)
                    .map(|i| format!("u{i}").into())
                    .collect(),
            ),
            Val::Null => Value::Null,
            Val::List(items) => Value::Array(items.iter().map(Leaf::to_json).collect()),
            Val::Object(items) => Value::Object(
                items
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

impl Shape {
    pub fn to_text(&self) -> String {
        let mut map = Map::new();
        for (field, val) in &self.fields {
            let name = match field {
                Field::Known(i) => pick(FIELDS, *i).to_owned(),
                Field::Other(s) => s.clone(),
            };
            map.insert(name, val.to_json());
        }
        match &self.ty {
            Ty::Known(i) => {
                map.insert("type".into(), pick(CLIENT_TYPES, *i).into());
            }
            Ty::Other(s) => {
                map.insert("type".into(), s.as_str().into());
            }
            Ty::NotAString(n) => {
                map.insert("type".into(), (*n).into());
            }
            Ty::Missing => {}
        }
        if let Some(r) = &self.reference {
            map.insert("ref".into(), r.to_json());
        }
        if let Some(t) = &self.traceparent {
            map.insert("traceparent".into(), t.to_json());
        }
        Value::Object(map).to_string()
    }
}

fn floor_boundary(s: &str, at: u16) -> usize {
    let mut at = usize::from(at).min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// One session's view: its limits, its bucket, its clock and the rooms it is a member of.
pub struct Model {
    pub limits: Limits,
    pub bucket: TokenBucket,
    pub now: Instant,
    pub members: HashSet<RoomId>,
}

impl Model {
    /// A session set up from four bytes: max_frame, max_body, rate, membership bits.
    pub fn new(setup: [u8; 4]) -> Model {
        let [frame, body, rate, bits] = setup;
        let limits = Limits {
            max_frame: [64, 512, 4096, 65536][usize::from(frame % 4)],
            max_body: [1, 10, 140, 4000][usize::from(body % 4)],
            rate_per_s: 1 + u32::from(rate),
        };
        let members = (0..4)
            .filter(|i| bits & (1 << i) != 0)
            .map(|i| RoomId::new(ROOMS[i]).expect("the first four rooms are valid ids"))
            .collect();
        let now = Instant::now();
        Model {
            limits,
            bucket: TokenBucket::new(limits.rate_per_s, now),
            now,
            members,
        }
    }

    /// Classifies one frame after `pause`, checks the answer against the contract, and plays
    /// the session's part when the frame is handled (a join or create makes it a member).
    pub fn step(&mut self, pause: Duration, inbound: Inbound<'_>) -> Action {
        self.now += pause;
        let verdict = self.bucket.clone().check(self.now);
        let members = &self.members;
        let action = classify(inbound, self.now, &self.limits, &mut self.bucket, |r| {
            members.contains(r)
        });
        check(inbound, &self.limits, verdict, &self.members, &action);
        if let Action::Handle(env) = &action {
            match &env.frame {
                ClientFrame::Join { room, .. } | ClientFrame::Create { room, .. } => {
                    self.members.insert(room.clone());
                }
                ClientFrame::Leave { room } => {
                    self.members.remove(room);
                }
                _ => {}
            }
        }
        action
    }
}

/// Runs one input (see the module header); never panics unless the contract is broken.
pub fn run_bytes(data: &[u8]) {
    let Some((setup, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let mut model = Model::new(*setup);
    if let Some(lines) = rest.strip_prefix(b"\n") {
        for line in lines.split(|&b| b == b'\n').take(MAX_STEPS) {
            let text = String::from_utf8_lossy(line);
            model.step(Duration::ZERO, Inbound::Text(&text));
        }
        return;
    }
    let mut u = Unstructured::new(rest);
    for _ in 0..MAX_STEPS {
        if u.is_empty() {
            break;
        }
        let Ok(step) = Step::arbitrary(&mut u) else {
            break;
        };
        let pause = Duration::from_millis(16 * u64::from(step.pause));
        let text = match &step.frame {
            Frame::Shaped(shape) => shape.to_text(),
            Frame::Cut(shape, at) => {
                let mut text = shape.to_text();
                text.truncate(floor_boundary(&text, *at));
                text
            }
            Frame::Spliced(shape, at, insert) => {
                let mut text = shape.to_text();
                text.insert_str(floor_boundary(&text, *at), insert);
                text
            }
            Frame::Raw(text) => text.clone(),
            Frame::Binary { len } => {
                let len = usize::try_from(*len).unwrap_or(usize::MAX);
                model.step(pause, Inbound::Binary { len });
                continue;
            }
        };
        model.step(pause, Inbound::Text(&text));
    }
}

/// The room of a frame that requires membership (protocol.md#ws: every operation on a room but
/// `join` and `leave`; `create` makes one).
fn room_requiring_membership(frame: &ClientFrame) -> Option<&RoomId> {
    match frame {
        ClientFrame::Send { room, .. }
        | ClientFrame::Edit { room, .. }
        | ClientFrame::Delete { room, .. }
        | ClientFrame::React { room, .. }
        | ClientFrame::History { room, .. }
        | ClientFrame::Invite { room, .. }
        | ClientFrame::Typing { room }
        | ClientFrame::Read { room, .. }
        | ClientFrame::Presence { room } => Some(room),
        ClientFrame::Search { room, .. } => room.as_ref(),
        _ => None,
    }
}

/// The error the contract demands for a decoded frame, if any, read off protocol.md#ws.
fn contract_refusal(
    frame: &ClientFrame,
    max_body: usize,
    members: &HashSet<RoomId>,
) -> Option<ErrorCode> {
    if room_requiring_membership(frame).is_some_and(|room| !members.contains(room)) {
        return Some(ErrorCode::Forbidden);
    }
    match frame {
        ClientFrame::Delete { client_id, .. } => (client_id.is_empty()
            || client_id.chars().count() > MAX_CLIENT_ID_CHARS)
            .then_some(ErrorCode::BadRequest),
        ClientFrame::React {
            emoji, client_id, ..
        } => {
            let n = emoji.chars().count();
            (n == 0
                || n > 32
                || emoji.chars().any(|c| c.is_whitespace() || c.is_control())
                || client_id.is_empty()
                || client_id.chars().count() > MAX_CLIENT_ID_CHARS)
                .then_some(ErrorCode::BadRequest)
        }
        ClientFrame::Send {
            body, client_id, ..
        }
        | ClientFrame::Edit {
            body, client_id, ..
        } => {
            let n = body.chars().count();
            if n == 0 {
                Some(ErrorCode::BadRequest)
            } else if n > max_body {
                Some(ErrorCode::TooLarge)
            } else if client_id.is_empty() || client_id.chars().count() > MAX_CLIENT_ID_CHARS {
                Some(ErrorCode::BadRequest)
            } else {
                None
            }
        }
        // protocol.md#ws-search; the bound of 1,000 characters is the project's (docs/protocol.md).
        ClientFrame::Search { query, .. }
            if query.trim().is_empty()
                || query.chars().count() > 1000
                || query.chars().any(|c| c.is_control() && !c.is_whitespace()) =>
        {
            Some(ErrorCode::BadRequest)
        }
        ClientFrame::History {
            before: Some(_),
            after: Some(_),
            ..
        }
        | ClientFrame::Status {
            status: Status::Offline,
        } => Some(ErrorCode::BadRequest),
        ClientFrame::Create { members, .. } if members.len() > MAX_CREATE_MEMBERS => {
            Some(ErrorCode::LimitExceeded)
        }
        _ => None,
    }
}

/// Every id a frame carries.
fn ids(frame: &ClientFrame) -> Vec<&str> {
    match frame {
        ClientFrame::Join { room, .. }
        | ClientFrame::Leave { room }
        | ClientFrame::Send { room, .. }
        | ClientFrame::Edit { room, .. }
        | ClientFrame::Delete { room, .. }
        | ClientFrame::React { room, .. }
        | ClientFrame::History { room, .. }
        | ClientFrame::Typing { room }
        | ClientFrame::Read { room, .. }
        | ClientFrame::Presence { room } => vec![room.as_str()],
        ClientFrame::Create { room, members, .. } => std::iter::once(room.as_str())
            .chain(members.iter().map(|m| m.as_str()))
            .collect(),
        ClientFrame::Invite { room, user } => vec![room.as_str(), user.as_str()],
        ClientFrame::OpenDm { user } => vec![user.as_str()],
        ClientFrame::Search { room, .. } => room.iter().map(RoomId::as_str).collect(),
        ClientFrame::Auth { .. } | ClientFrame::Status { .. } | ClientFrame::Ping => vec![],
    }
}

fn check_envelope_fields(reference: Option<&str>) {
    if let Some(r) = reference {
        assert!(r.chars().count() <= MAX_REF_CHARS, "ref too long: {r:?}");
        assert!(
            !r.chars().any(char::is_control),
            "ref with a control character: {r:?}"
        );
    }
}

/// protocol.md#ws-limits, read off the frame: the reason to refuse it, if any.
fn hostile(frame: &ClientFrame) -> bool {
    match frame {
        ClientFrame::Send {
            body, client_id, ..
        } => {
            client_id.chars().any(char::is_control)
                || body
                    .chars()
                    .any(|c| c.is_control() && c != '\t' && c != '\n')
        }
        _ => false,
    }
}

/// The `ref` and `traceparent` fields of a text that is a JSON object, as the client sent them.
fn raw_envelope(text: &str) -> Option<(Option<Value>, Option<Value>)> {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) else {
        return None;
    };
    Some((map.get("ref").cloned(), map.get("traceparent").cloned()))
}

/// Checks one answer of `classify`; `verdict` is what the bucket said (or would have said).
pub fn check(
    inbound: Inbound<'_>,
    limits: &Limits,
    verdict: Verdict,
    members: &HashSet<RoomId>,
    action: &Action,
) {
    let len = match inbound {
        Inbound::Text(t) => t.len(),
        Inbound::Binary { len } => len,
    };
    if len > limits.max_frame {
        assert_eq!(*action, Action::Close(close::TOO_BIG, "frame too large"));
        return;
    }
    match verdict {
        Verdict::Abuse => {
            assert_eq!(
                *action,
                Action::Close(close::RATE_ABUSE, "rate limit exceeded")
            );
            return;
        }
        Verdict::Limited { .. } => {
            let Action::Refuse(r) = action else {
                panic!("a frame over the rate must be refused: {action:?}");
            };
            assert_eq!(r.code, ErrorCode::RateLimited);
            assert!(
                r.retry_after_ms.is_some_and(|ms| (1..=1000).contains(&ms)),
                "{r:?}"
            );
            let echoed = match inbound {
                Inbound::Text(t) => Envelope::decode(t).ok().and_then(|e| e.reference),
                Inbound::Binary { .. } => None,
            };
            assert_eq!(r.reference, echoed);
            return;
        }
        Verdict::Allow => {}
    }
    match action {
        Action::Close(..) => panic!("an allowed frame within max_frame closed: {action:?}"),
        Action::Refuse(r) => check_refusal(inbound, limits, members, r),
        Action::Handle(env) => check_accepted(inbound, limits, members, env),
    }
}

fn check_refusal(inbound: Inbound<'_>, limits: &Limits, members: &HashSet<RoomId>, r: &Refusal) {
    assert!(
        matches!(
            r.code,
            ErrorCode::BadRequest
                | ErrorCode::UnknownType
                | ErrorCode::Forbidden
                | ErrorCode::TooLarge
                | ErrorCode::LimitExceeded
        ),
        "no I/O happened, so only a client error may answer: {r:?}"
    );
    assert_eq!(r.retry_after_ms, None);
    assert!(!r.message.is_empty());
    assert!(
        r.message.len() < 1024,
        "error message is bounded, got {} bytes",
        r.message.len()
    );
    check_envelope_fields(r.reference.as_deref());
    let Inbound::Text(text) = inbound else {
        assert_eq!(r.code, ErrorCode::BadRequest, "binary frame: {r:?}");
        return;
    };
    match Envelope::decode(text) {
        Err(e) => {
            assert!(matches!(
                e.code,
                ErrorCode::BadRequest | ErrorCode::UnknownType
            ));
            assert_eq!((r.code, &r.reference), (e.code, &e.reference));
            assert_eq!(r.frame_type, None);
            // A ref with a control character is the bad field: never echoed.
            if let Some((Some(Value::String(sent)), _)) = raw_envelope(text)
                && sent.chars().any(char::is_control)
            {
                assert_eq!(r.reference, None, "a hostile ref was echoed");
                assert_eq!(r.code, ErrorCode::BadRequest);
            }
        }
        Ok(env) => {
            assert_eq!(
                Some(r.code),
                contract_refusal(&env.frame, limits.max_body, members),
                "refused {env:?}"
            );
            assert_eq!(r.reference, env.reference);
            assert_eq!(r.frame_type, Some(env.frame.type_name()));
        }
    }
}

fn check_accepted(
    inbound: Inbound<'_>,
    limits: &Limits,
    members: &HashSet<RoomId>,
    env: &Envelope,
) {
    let Inbound::Text(text) = inbound else {
        panic!("a binary frame was accepted: {env:?}");
    };
    assert_eq!(Envelope::decode(text).as_ref(), Ok(env));
    assert_eq!(
        contract_refusal(&env.frame, limits.max_body, members),
        None,
        "accepted {env:?}"
    );
    for id in ids(&env.frame) {
        assert!(is_valid_id(id), "invalid id {id:?} accepted");
    }
    check_envelope_fields(env.reference.as_deref());
    if let Some(t) = &env.traceparent {
        assert!(t.len() <= MAX_TRACEPARENT_BYTES);
        assert!(
            !t.chars().any(char::is_control),
            "traceparent {t:?} accepted"
        );
    }
    assert!(!hostile(&env.frame), "control characters accepted: {env:?}");
    // Round trip: the frame re-encoded decodes to the same envelope.
    let mut value = serde_json::to_value(&env.frame).expect("client frames serialize");
    let map = value.as_object_mut().expect("a frame is an object");
    if let Some(r) = &env.reference {
        map.insert("ref".into(), r.as_str().into());
    }
    if let Some(t) = &env.traceparent {
        map.insert("traceparent".into(), t.as_str().into());
    }
    assert_eq!(Envelope::decode(&value.to_string()).as_ref(), Ok(env));
}
