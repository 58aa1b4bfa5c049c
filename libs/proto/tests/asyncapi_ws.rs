//! docs/asyncapi-ws.json (the WebSocket protocol as an AsyncAPI 3 document) against the code,
//! both ways:
//! - its `client.*` and `server.*` messages are exactly [`CLIENT_TYPES`] and [`SERVER_TYPES`];
//! - a sample of every [`ClientFrame`] and [`ServerFrame`] variant, serialized with every optional
//!   field set (Full) and, for server frames, with none (Minimal), has exactly the fields its
//!   schema declares (Full) or requires (Minimal), recursively, with the schema's types;
//! - for client frames, what the document calls optional is: a frame holding only the required
//!   fields decodes (through [`Envelope::decode`], as the edge does), and one missing any of them
//!   is refused;
//! - every example of the document fits its schema and decodes as a frame of its type.
//!
//! The schema checker (tests/support/schema.rs) is shared with libs/bus/tests/asyncapi.rs (NATS
//! document); its third mode is for examples. The document itself is validated by @asyncapi/parser (tools/asyncapi).

use std::collections::{BTreeMap, BTreeSet};

use chat_proto::{
    CLIENT_TYPES, ChatMessage, ClientFrame, DeleteEvent, EditEvent, Envelope, ErrorCode, Limits,
    MessageState, Notification, NotificationKind, PresenceEntry, ReactionEvent, RoomEventFrame,
    RoomId, RoomKind, RoomSummary, SERVER_TYPES, ServerFrame, Status, UserId,
};
use serde_json::Value;

#[path = "support/schema.rs"]
mod schema;
use schema::{Sample, check, resolve};

fn doc() -> Value {
    schema::load("asyncapi-ws.json")
}

/// The document's messages of one direction (`client` or `server`), by frame type.
fn messages<'a>(doc: &'a Value, side: &str) -> BTreeMap<&'a str, &'a Value> {
    let all = doc["components"]["messages"].as_object().expect("messages");
    all.iter()
        .filter_map(|(k, m)| {
            let t = k.strip_prefix(side)?.strip_prefix('.')?;
            assert_eq!(m["name"], t, "{k}: name is the frame type");
            Some((t, &m["payload"]))
        })
        .collect()
}

fn room() -> RoomId {
    RoomId::new("general").unwrap()
}

fn user(u: &str) -> UserId {
    UserId::new(u).unwrap()
}

fn json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("serializes")
}

/// Every client frame with every optional field set.
fn client_samples() -> Vec<ClientFrame> {
    let r = room;
    vec![
        ClientFrame::Auth { token: "t".into() },
        ClientFrame::Join {
            room: r(),
            since: Some(4),
            epoch: Some("e".into()),
        },
        ClientFrame::Leave { room: r() },
        ClientFrame::Create {
            room: r(),
            private: true,
            members: vec![user("bob")],
        },
        ClientFrame::Invite {
            room: r(),
            user: user("bob"),
        },
        ClientFrame::OpenDm { user: user("bob") },
        ClientFrame::Send {
            room: r(),
            body: "hi".into(),
            client_id: "c1".into(),
            reply_to: Some(2),
            thread: Some(1),
        },
        ClientFrame::Edit {
            room: r(),
            seq: 3,
            body: "hi!".into(),
            client_id: "c2".into(),
        },
        ClientFrame::Delete {
            room: r(),
            seq: 3,
            client_id: "c3".into(),
        },
        ClientFrame::React {
            room: r(),
            seq: 3,
            emoji: "👍".into(),
            on: false,
            client_id: "c4".into(),
        },
        ClientFrame::History {
            room: r(),
            before: Some(9),
            after: Some(1),
            limit: Some(20),
            thread: Some(1),
        },
        ClientFrame::Search {
            query: "q".into(),
            room: Some(r()),
            limit: Some(5),
            before: Some(9),
        },
        ClientFrame::Typing { room: r() },
        ClientFrame::Read { room: r(), seq: 3 },
        ClientFrame::Status {
            status: Status::Away,
        },
        ClientFrame::Presence { room: r() },
        ClientFrame::Ping,
    ]
}

fn message(full: bool) -> ChatMessage {
    let mut m = ChatMessage::new(room(), 5, 4, user("alice"), "hi".into(), "c1".into(), 10);
    if full {
        m.reply_to = Some(2);
        m.thread = Some(1);
        m.state = Some(MessageState {
            version: 7,
            edited: Some(11),
            deleted: true,
            reactions: [("👍".to_owned(), vec![user("bob")])].into(),
            replies: Some(3),
        });
    }
    m
}

fn edit() -> EditEvent {
    EditEvent {
        room: room(),
        seq: 6,
        prev_seq: 5,
        from: user("alice"),
        target: 5,
        body: "hi!".into(),
        client_id: "c2".into(),
        ts: 11,
    }
}

fn delete() -> DeleteEvent {
    DeleteEvent {
        room: room(),
        seq: 7,
        prev_seq: 6,
        from: user("alice"),
        target: 5,
        client_id: "c3".into(),
        ts: 12,
    }
}

fn reaction() -> ReactionEvent {
    ReactionEvent {
        room: room(),
        seq: 8,
        prev_seq: 7,
        from: user("bob"),
        target: 5,
        emoji: "👍".into(),
        on: true,
        client_id: "c4".into(),
        ts: 13,
    }
}

fn notification() -> Notification {
    Notification {
        id: "mention:general:5:bob".into(),
        kind: NotificationKind::Mention,
        room: room(),
        seq: 5,
        from: user("alice"),
        preview: "@bob hi".into(),
        ts: 10,
    }
}

/// Every server frame, with every optional field set (`full`) or none.
fn server_samples(full: bool) -> Vec<ServerFrame> {
    let reference = || full.then(|| "r1".to_owned());
    vec![
        ServerFrame::Hello {
            user: user("alice"),
            session: "s".into(),
            epoch: "e".into(),
            heartbeat_ms: 5000,
            limits: Limits {
                max_body: 4000,
                max_frame: 65536,
                rate_per_s: 100,
            },
            rooms: vec![RoomSummary {
                room: room(),
                kind: RoomKind::Public,
                last_seq: 5,
                last_read: 4,
                unread: 1,
            }],
            notifications: vec![notification()],
            notifications_total: 1,
        },
        ServerFrame::Message(message(full)),
        ServerFrame::Edit(edit()),
        ServerFrame::Delete(delete()),
        ServerFrame::Reaction(reaction()),
        ServerFrame::Ack {
            reference: reference(),
            room: room(),
            client_id: "c1".into(),
            seq: 5,
            ts: 10,
            duplicate: false,
        },
        ServerFrame::Joined {
            reference: reference(),
            room: room(),
            kind: RoomKind::Private,
            last_seq: 5,
            recovered: full.then_some(true),
            members: full.then(|| vec![user("alice")]),
            last_read: 4,
            unread: 1,
        },
        ServerFrame::Left {
            reference: reference(),
            room: room(),
        },
        ServerFrame::Ok {
            reference: reference(),
            room: room(),
        },
        ServerFrame::History {
            reference: reference(),
            room: room(),
            messages: vec![
                RoomEventFrame::Message(message(full)),
                RoomEventFrame::Edit(edit()),
                RoomEventFrame::Delete(delete()),
                RoomEventFrame::Reaction(reaction()),
            ],
            has_more: true,
        },
        ServerFrame::SearchResults {
            reference: reference(),
            query: "hi".into(),
            results: vec![message(full)],
            has_more: false,
        },
        ServerFrame::Typing {
            room: room(),
            user: user("bob"),
        },
        ServerFrame::Presence {
            room: room(),
            user: user("bob"),
            status: Status::Busy,
            last_seen: 10,
        },
        ServerFrame::PresenceSnapshot {
            reference: reference(),
            room: room(),
            users: vec![PresenceEntry {
                user: user("bob"),
                status: Status::Offline,
                last_seen: 9,
            }],
        },
        ServerFrame::Unread {
            room: room(),
            count: 2,
            last_read: 3,
            as_of: 5,
        },
        ServerFrame::Notification(notification()),
        ServerFrame::Error {
            reference: reference(),
            code: ErrorCode::RateLimited,
            message: "slow down".into(),
            retry_after_ms: full.then_some(250),
        },
        ServerFrame::Pong {
            reference: reference(),
        },
    ]
}

fn sorted<'a>(xs: impl IntoIterator<Item = &'a str>) -> BTreeSet<&'a str> {
    xs.into_iter().collect()
}

#[test]
fn the_document_names_every_frame_type_of_the_code_and_no_other() {
    let doc = doc();
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(
        sorted(messages(&doc, "client").into_keys()),
        sorted(CLIENT_TYPES.iter().copied()),
        "client.* messages of docs/asyncapi-ws.json = CLIENT_TYPES"
    );
    assert_eq!(
        sorted(messages(&doc, "server").into_keys()),
        sorted(SERVER_TYPES.iter().copied()),
        "server.* messages of docs/asyncapi-ws.json = SERVER_TYPES"
    );
    assert_eq!(
        sorted(client_samples().iter().map(ClientFrame::type_name)),
        sorted(CLIENT_TYPES.iter().copied()),
        "a sample of every client frame"
    );
    assert_eq!(
        sorted(server_samples(true).iter().map(ServerFrame::type_name)),
        sorted(SERVER_TYPES.iter().copied()),
        "a sample of every server frame"
    );
    // The channel and its operations carry every message, each direction in its own operation.
    let channel = doc["channels"]["ws"]["messages"].as_object().unwrap();
    assert_eq!(channel.len(), CLIENT_TYPES.len() + SERVER_TYPES.len());
    for (op, side) in [
        ("receiveClientFrames", "client."),
        ("sendServerFrames", "server."),
    ] {
        let refs = doc["operations"][op]["messages"].as_array().unwrap();
        let expected = channel.keys().filter(|k| k.starts_with(side)).count();
        assert_eq!(refs.len(), expected, "{op}");
        for r in refs {
            let name = r["$ref"].as_str().unwrap().rsplit('/').next().unwrap();
            assert!(name.starts_with(side), "{op} carries {name}");
        }
    }
}

#[test]
fn frames_have_the_fields_and_types_of_their_schemas() {
    let doc = doc();
    let client = messages(&doc, "client");
    for frame in client_samples() {
        let t = frame.type_name();
        let mut v = json(&frame);
        v["ref"] = "r1".into();
        v["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into();
        if let Err(e) = check(&doc, client[t], &v, Sample::Full, &format!("client.{t}")) {
            panic!("docs/asyncapi-ws.json differs from ClientFrame: {e}");
        }
    }
    let server = messages(&doc, "server");
    for (full, mode) in [(true, Sample::Full), (false, Sample::Minimal)] {
        for frame in server_samples(full) {
            let t = frame.type_name();
            if let Err(e) = check(&doc, server[t], &json(&frame), mode, &format!("server.{t}")) {
                panic!("docs/asyncapi-ws.json differs from ServerFrame: {e}");
            }
        }
    }
}

#[test]
fn optional_client_fields_are_optional_and_required_ones_required() {
    let doc = doc();
    let client = messages(&doc, "client");
    for frame in client_samples() {
        let t = frame.type_name();
        let payload = resolve(&doc, client[t]);
        let required: Vec<&str> = payload["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let full = json(&frame);
        let minimal: serde_json::Map<String, Value> = full
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| required.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let text = Value::Object(minimal.clone()).to_string();
        if let Err(e) = Envelope::decode(&text) {
            panic!("client.{t}: only the required fields {text} are refused: {e:?}");
        }
        for field in required.iter().filter(|f| **f != "type") {
            let mut without = minimal.clone();
            without.remove(*field);
            let text = Value::Object(without).to_string();
            let err = Envelope::decode(&text).expect_err(&format!(
                "client.{t}: {field} is required by the document, but {text} decodes"
            ));
            assert_eq!(err.code, ErrorCode::BadRequest, "{text}");
        }
    }
}

#[test]
fn every_example_fits_its_schema_and_decodes() {
    let doc = doc();
    let mut seen = BTreeSet::new();
    for (key, m) in doc["components"]["messages"].as_object().unwrap() {
        let (side, t) = key.split_once('.').unwrap();
        for example in m["examples"].as_array().into_iter().flatten() {
            let v = &example["payload"];
            if let Err(e) = check(&doc, &m["payload"], v, Sample::Fits, key) {
                panic!("an example of docs/asyncapi-ws.json does not fit: {e}");
            }
            assert_eq!(v["type"], t, "{key}: example of another type");
            match side {
                "client" => {
                    let env = Envelope::decode(&v.to_string())
                        .unwrap_or_else(|e| panic!("{key}: example {v} refused: {e:?}"));
                    assert_eq!(env.frame.type_name(), t);
                }
                _ => {
                    let f: ServerFrame = serde_json::from_value(v.clone())
                        .unwrap_or_else(|e| panic!("{key}: example {v} does not decode: {e}"));
                    assert_eq!(f.type_name(), t);
                }
            }
            seen.insert(key.as_str());
        }
    }
    assert_eq!(
        seen.len(),
        CLIENT_TYPES.len() + SERVER_TYPES.len(),
        "every message has an example"
    );
}

#[test]
fn the_checker_notices_a_missing_extra_or_mistyped_field() {
    let doc = doc();
    let payload = messages(&doc, "server")["ack"];
    let frame = &server_samples(true)[5];
    let mut v = json(frame);
    assert!(check(&doc, payload, &v, Sample::Full, "ack").is_ok());
    v["extra"] = 1.into();
    assert!(check(&doc, payload, &v, Sample::Full, "ack").is_err());
    v.as_object_mut().unwrap().remove("extra");
    v["seq"] = "five".into();
    assert!(check(&doc, payload, &v, Sample::Full, "ack").is_err());
    v.as_object_mut().unwrap().remove("seq");
    assert!(check(&doc, payload, &v, Sample::Fits, "ack").is_err());
    let mut e = json(&ServerFrame::Edit(edit()));
    e["type"] = "delete".into();
    assert!(check(&doc, payload, &e, Sample::Fits, "ack").is_err());
}
