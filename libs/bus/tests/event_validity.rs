//! Property tests of event validity (protocol.md#nats): `validate` against an independent model of
//! the rules, on entries built field by field from valid, invalid, mistyped and missing values;
//! and on arbitrary bytes, where it must never panic and always give a header-safe reason.

use chat_bus::event::{Event, Invalid, MAX_CLIENT_ID_CHARS, MAX_EVENT_BODY_CHARS, validate};
use chat_proto::RoomId;
use proptest::prelude::*;
use serde_json::{Value, json};

fn lobby() -> RoomId {
    RoomId::new("lobby").unwrap()
}

/// A field's value: `None` leaves it out.
type Field = Option<Value>;

fn version() -> impl Strategy<Value = Field> {
    prop_oneof![
        4 => Just(Some(json!(1))),
        1 => Just(None),
        1 => Just(Some(json!(2))),
        1 => Just(Some(json!("1"))),
        1 => Just(Some(json!(1.0))),
        1 => Just(Some(json!(-1))),
    ]
}

fn kind() -> impl Strategy<Value = Field> {
    prop_oneof![
        4 => Just(Some(json!("message"))),
        1 => Just(None),
        1 => Just(Some(json!("x\ny"))),
        1 => Just(Some(json!("edit-not-yet"))),
        1 => Just(Some(json!(3))),
    ]
}

fn id_like() -> impl Strategy<Value = Field> {
    prop_oneof![
        4 => "[A-Za-z0-9_-]{1,64}".prop_map(|s| Some(json!(s))),
        1 => Just(None),
        1 => Just(Some(json!(""))),
        1 => "[a-z]{1,5}[ .\r\n\u{0}é][a-z]{0,5}".prop_map(|s| Some(json!(s))),
        1 => "[a-z]{65,70}".prop_map(|s| Some(json!(s))),
        1 => Just(Some(json!(5))),
    ]
}

fn room() -> impl Strategy<Value = Field> {
    prop_oneof![
        6 => Just(Some(json!("lobby"))),
        2 => id_like(),
        1 => Just(Some(json!("secret1"))),
    ]
}

/// Text mixing ordinary, multi-byte, tab/newline and other control characters.
fn text(max: usize) -> impl Strategy<Value = Field> {
    let ch = prop_oneof![
        8 => proptest::char::range('a', 'z'),
        2 => Just('😀'),
        1 => Just('\t'),
        1 => Just('\n'),
        1 => Just('\r'),
        1 => Just('\u{1}'),
        1 => Just('\u{7f}'),
        1 => Just('\u{9f}'),
        1 => Just('\u{200b}'),
    ];
    prop_oneof![
        8 => proptest::collection::vec(ch, 0..12).prop_map(|v| Some(json!(v.into_iter().collect::<String>()))),
        1 => Just(None),
        1 => Just(Some(json!(12))),
        1 => (max - 1..max + 3).prop_map(|n| Some(json!("x".repeat(n)))),
    ]
}

fn ts() -> impl Strategy<Value = Field> {
    prop_oneof![
        4 => (0i64..i64::MAX).prop_map(|t| Some(json!(t))),
        1 => Just(None),
        1 => (i64::MIN..0).prop_map(|t| Some(json!(t))),
        1 => Just(Some(json!(1.5))),
        1 => Just(Some(json!("5"))),
    ]
}

#[derive(Debug, Clone)]
struct Entry {
    v: Field,
    kind: Field,
    room: Field,
    from: Field,
    body: Field,
    client_id: Field,
    ts: Field,
}

fn entries() -> impl Strategy<Value = Entry> {
    (
        version(),
        kind(),
        room(),
        id_like(),
        text(MAX_EVENT_BODY_CHARS),
        text(MAX_CLIENT_ID_CHARS),
        ts(),
    )
        .prop_map(|(v, kind, room, from, body, client_id, ts)| Entry {
            v,
            kind,
            room,
            from,
            body,
            client_id,
            ts,
        })
}

impl Entry {
    fn payload(&self) -> Vec<u8> {
        let mut m = serde_json::Map::new();
        for (k, v) in [
            ("v", &self.v),
            ("kind", &self.kind),
            ("room", &self.room),
            ("from", &self.from),
            ("body", &self.body),
            ("client_id", &self.client_id),
            ("ts", &self.ts),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), v.clone());
            }
        }
        serde_json::to_vec(&Value::Object(m)).unwrap()
    }
}

fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The rules of protocol.md#identities, #nats for a stored message, written out independently, in the order
/// the reasons are reported.
fn model(e: &Entry) -> Result<(), Invalid> {
    let string_or_absent = |f: &Field| f.as_ref().is_none_or(Value::is_string);
    let mistyped = !e.v.as_ref().is_none_or(|v| v.is_u64())
        || !string_or_absent(&e.kind)
        || !string_or_absent(&e.room)
        || !string_or_absent(&e.from)
        || !string_or_absent(&e.body)
        || !string_or_absent(&e.client_id)
        || !e.ts.as_ref().is_none_or(Value::is_i64);
    let version_ok = e.v.as_ref().and_then(Value::as_u64) == Some(1);
    let kind_ok = e.kind.as_ref().and_then(Value::as_str) == Some("message");
    if !version_ok {
        return Err(Invalid::UnknownVersion);
    }
    if !kind_ok {
        return Err(Invalid::UnknownKind);
    }
    if mistyped {
        return Err(Invalid::Undecodable);
    }
    let s = |f: &Field| f.as_ref().map(|v| v.as_str().unwrap().to_owned());
    let room = s(&e.room).ok_or(Invalid::Missing("room"))?;
    if !is_id(&room) {
        return Err(Invalid::InvalidId("room"));
    }
    if room != "lobby" {
        return Err(Invalid::RoomMismatch);
    }
    let from = s(&e.from).ok_or(Invalid::Missing("from"))?;
    if !is_id(&from) {
        return Err(Invalid::InvalidId("from"));
    }
    let text = |f: &Field, name: &'static str, max: usize, tab_nl: bool| {
        let t = s(f).ok_or(Invalid::Missing(name))?;
        if t.is_empty() {
            return Err(Invalid::Empty(name));
        }
        let allowed = |c: char| tab_nl && (c == '\t' || c == '\n');
        // Unicode category Cc: U+0000–U+001F and U+007F–U+009F.
        if t.chars()
            .any(|c| ((c as u32) < 0x20 || (0x7f..=0x9f).contains(&(c as u32))) && !allowed(c))
        {
            return Err(Invalid::ControlCharacter(name));
        }
        if t.chars().count() > max {
            return Err(Invalid::TooLong(name));
        }
        Ok(())
    };
    text(&e.body, "body", MAX_EVENT_BODY_CHARS, true)?;
    text(&e.client_id, "client_id", MAX_CLIENT_ID_CHARS, false)?;
    let ts = e.ts.as_ref().ok_or(Invalid::Missing("ts"))?;
    if ts.as_i64().unwrap() < 0 {
        return Err(Invalid::OutOfRange("ts"));
    }
    Ok(())
}

fn header_safe(reason: &Invalid) -> bool {
    let text = reason.reason();
    !text.is_empty() && text.len() <= 64 && text.bytes().all(|b| (0x20..0x7f).contains(&b))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn validate_agrees_with_the_model(e in entries()) {
        let got = validate(&e.payload(), &lobby()).and_then(|c| c.resolve(|_| None));
        match (model(&e), got) {
            (Ok(()), Ok(Event::Message(m))) => {
                prop_assert_eq!(m.room.as_str(), "lobby");
                prop_assert_eq!(Some(json!(m.body)), e.body.clone());
                prop_assert_eq!(Some(json!(m.client_id)), e.client_id.clone());
            }
            (Err(want), Err(got)) => {
                prop_assert_eq!(want, got);
                prop_assert!(header_safe(&got));
            }
            (want, got) => prop_assert!(false, "model {:?}, validate {:?}", want, got),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_reasons_stay_safe(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Err(reason) = validate(&bytes, &lobby()) {
            prop_assert!(header_safe(&reason));
        }
    }

    #[test]
    fn arbitrary_text_in_any_field_never_leaks_into_the_reason(field in 0usize..7, junk in "\\PC{0,30}[\r\u{0}]\\PC{0,5}") {
        let names = ["v", "kind", "room", "from", "body", "client_id", "ts"];
        let mut v = json!({"v":1,"kind":"message","room":"lobby","from":"a","body":"b","client_id":"c","ts":1});
        v[names[field]] = json!(junk.clone());
        let reason = validate(&serde_json::to_vec(&v).unwrap(), &lobby()).unwrap_err();
        prop_assert!(header_safe(&reason));
        prop_assert!(junk.len() < 3 || !reason.reason().contains(junk.as_str()));
    }
}
