//! docs/asyncapi.json (the public NATS API, protocol.md#nats) against the code: every channel's
//! address is what the subject functions of this crate produce, and every message schema has
//! exactly the fields the Rust types serialize (required = always present), recursively. Adding
//! or renaming a field or a subject without the document fails here.

use std::collections::{BTreeMap, BTreeSet};

use chat_bus::api::{
    ApiError, HistoryPage, HistoryRequest, PresenceReply, PresenceRequest, RoomPresenceEvent,
    SearchReply, SearchRequest, TypingEvent, UnreadUpdate, UserNotification, UserPresenceEvent,
    encode_reply,
};
use chat_bus::event::{EventKind, RoomEvent};
use chat_bus::subjects;
use chat_proto::{
    ChatMessage, ErrorCode, MessageState, Notification, NotificationKind, PresenceEntry,
    RoomEventFrame, RoomId, Status, UserId,
};
use serde_json::Value;

// The NATS document has no examples: the checker's `Fits` mode is the WebSocket test's.
#[allow(dead_code)]
#[path = "../../proto/tests/support/schema.rs"]
mod schema;
use schema::{Sample, check, resolve};

fn doc() -> Value {
    schema::load("asyncapi.json")
}

fn room() -> RoomId {
    RoomId::new("general").unwrap()
}
fn user(u: &str) -> UserId {
    UserId::new(u).unwrap()
}
fn json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap()
}

/// A sample of each message's payload: (full, minimal) values of the Rust type.
fn samples() -> BTreeMap<&'static str, Vec<(Value, Sample)>> {
    let event = RoomEvent::message(room(), user("alice"), "hi".into(), "c1".into(), 1);
    let mut reply = event.clone();
    reply.reply_to = Some(2);
    reply.thread = Some(1);
    let mut edit = RoomEvent::change(EventKind::Edit, room(), user("alice"), 7, "c2".into(), 2);
    edit.body = "hello".into();
    let delete = RoomEvent::change(EventKind::Delete, room(), user("alice"), 7, "c3".into(), 3);
    let mut reaction =
        RoomEvent::change(EventKind::Reaction, room(), user("bob"), 7, "c4".into(), 4);
    reaction.emoji = Some("👍".into());
    reaction.on = Some(true);
    let events = vec![
        (json(&reply), Sample::Full),
        (json(&event), Sample::Minimal),
        (json(&edit), Sample::Full),
        (json(&edit), Sample::Minimal),
        (json(&delete), Sample::Full),
        (json(&delete), Sample::Minimal),
        (json(&reaction), Sample::Full),
        (json(&reaction), Sample::Minimal),
    ];
    let minimal_message = ChatMessage {
        state: Some(MessageState {
            version: 7,
            ..Default::default()
        }),
        ..ChatMessage::new(room(), 7, 3, user("alice"), "hi".into(), "c1".into(), 1)
    };
    let full_message = ChatMessage {
        reply_to: Some(2),
        thread: Some(1),
        state: Some(MessageState {
            version: 9,
            edited: Some(2),
            deleted: true,
            reactions: [("👍".to_owned(), vec![user("bob")])].into(),
            replies: Some(3),
        }),
        ..minimal_message.clone()
    };
    let changes = [
        edit.clone().into_frame(8, 7),
        delete.clone().into_frame(9, 8),
        reaction.clone().into_frame(10, 9),
    ];
    let page = |m: ChatMessage| HistoryPage {
        room: room(),
        messages: std::iter::once(RoomEventFrame::Message(m))
            .chain(changes.iter().cloned())
            .collect(),
        has_more: false,
    };
    let notification = UserNotification {
        user: user("bob"),
        notification: Notification {
            id: "n1".into(),
            kind: NotificationKind::Mention,
            room: room(),
            seq: 7,
            from: user("alice"),
            preview: "hi @bob".into(),
            ts: 1,
        },
    };
    let full_history = HistoryRequest {
        room: room(),
        before: Some(10),
        after: Some(2),
        limit: Some(50),
        thread: Some(1),
        user: Some(user("alice")),
        replay: true,
    };
    let minimal_history = HistoryRequest {
        room: room(),
        before: None,
        after: None,
        limit: None,
        thread: None,
        user: None,
        replay: false,
    };
    let both = |v: Value| vec![(v.clone(), Sample::Full), (v, Sample::Minimal)];
    let error: Result<HistoryPage, ApiError> = Err(ApiError::new(ErrorCode::NotFound, "no"));
    let error: Value = serde_json::from_slice(&encode_reply(&error)).unwrap();
    BTreeMap::from([
        ("roomEvent", events.clone()),
        ("fanoutEvent", events),
        (
            "typing",
            both(json(&TypingEvent {
                room: room(),
                user: user("alice"),
                ts: 1,
            })),
        ),
        (
            "roomPresence",
            both(json(&RoomPresenceEvent {
                room: room(),
                user: user("alice"),
                status: Status::Away,
                last_seen: 1,
            })),
        ),
        ("userNotification", both(json(&notification))),
        (
            "unread",
            both(json(&UnreadUpdate {
                user: user("bob"),
                room: room(),
                count: 2,
                last_read: 5,
                as_of: 9,
            })),
        ),
        (
            "userPresence",
            both(json(&UserPresenceEvent {
                user: user("alice"),
                status: Status::Online,
                last_seen: 1,
                sessions: 2,
            })),
        ),
        (
            "historyRequest",
            vec![
                (json(&full_history), Sample::Full),
                (json(&minimal_history), Sample::Minimal),
            ],
        ),
        (
            "historyPage",
            vec![
                (json(&page(full_message.clone())), Sample::Full),
                (json(&page(minimal_message.clone())), Sample::Minimal),
            ],
        ),
        (
            "searchRequest",
            vec![
                (
                    json(&SearchRequest {
                        query: "deploy \"release notes\" -draft".into(),
                        user: Some(user("alice")),
                        room: Some(room()),
                        limit: Some(20),
                        before: Some(900),
                    }),
                    Sample::Full,
                ),
                (
                    json(&SearchRequest {
                        query: "deploy".into(),
                        user: None,
                        room: None,
                        limit: None,
                        before: None,
                    }),
                    Sample::Minimal,
                ),
            ],
        ),
        (
            "searchReply",
            vec![
                (
                    json(&SearchReply {
                        results: vec![full_message.clone()],
                        has_more: true,
                    }),
                    Sample::Full,
                ),
                (
                    json(&SearchReply {
                        results: vec![minimal_message.clone()],
                        has_more: false,
                    }),
                    Sample::Minimal,
                ),
            ],
        ),
        (
            "presenceRequest",
            [
                json(&PresenceRequest::Room { room: room() }),
                json(&PresenceRequest::Users {
                    users: vec![user("alice")],
                }),
            ]
            .into_iter()
            .flat_map(both)
            .collect(),
        ),
        (
            "presenceReply",
            both(json(&PresenceReply {
                users: vec![PresenceEntry {
                    user: user("alice"),
                    status: Status::Busy,
                    last_seen: 1,
                }],
            })),
        ),
        ("errorReply", both(error)),
    ])
}

/// The address of each channel, from the subject functions (ids become `{room}`/`{user}`).
fn addresses() -> BTreeMap<&'static str, Option<String>> {
    let r = RoomId::new("ROOMPARAM").unwrap();
    let u = UserId::new("USERPARAM").unwrap();
    let p = |s: String| {
        Some(
            s.replace("ROOMPARAM", "{room}")
                .replace("USERPARAM", "{user}"),
        )
    };
    BTreeMap::from([
        ("roomMessages", p(subjects::room_msg(&r))),
        ("roomFanout", p(subjects::fanout(&r))),
        ("roomTyping", p(subjects::room_typing(&r))),
        ("roomPresence", p(subjects::room_presence(&r))),
        ("userNotify", p(subjects::user_notify(&u))),
        ("userUnread", p(subjects::user_unread(&u))),
        ("userPresence", p(subjects::presence_user(&u))),
        ("apiHistory", Some(subjects::API_HISTORY.to_owned())),
        ("apiHistoryReply", None),
        ("apiSearch", Some(subjects::API_SEARCH.to_owned())),
        ("apiSearchReply", None),
        ("apiPresence", Some(subjects::API_PRESENCE.to_owned())),
        ("apiPresenceReply", None),
    ])
}

#[test]
fn the_document_is_asyncapi_3_with_resolvable_references() {
    let doc = doc();
    assert_eq!(doc["asyncapi"], "3.0.0");
    for (id, op) in doc["operations"].as_object().unwrap() {
        let action = op["action"].as_str().unwrap();
        assert!(action == "send" || action == "receive", "{id}: {action}");
        resolve(&doc, &op["channel"]);
        for m in op["messages"].as_array().unwrap() {
            resolve(&doc, m);
        }
        if let Some(reply) = op.get("reply") {
            resolve(&doc, &reply["channel"]);
        }
    }
    // The headers integrators rely on are the ones the code sets and reads.
    let headers = &doc["components"]["messages"]["fanoutEvent"]["headers"]["properties"];
    for h in [
        chat_bus::event::MSG_ID_HEADER,
        chat_bus::event::SEQUENCE_HEADER,
        chat_bus::event::LAST_SEQUENCE_HEADER,
        chat_bus::event::TIMESTAMP_HEADER,
        "traceparent",
    ] {
        assert!(headers.get(h).is_some(), "fanoutEvent header {h}");
    }
    let posted = &doc["components"]["messages"]["roomEvent"]["headers"]["properties"];
    assert!(posted.get(chat_bus::event::MSG_ID_HEADER).is_some());
    // The stream subject the CHAT stream stores is the room channel's address with a wildcard.
    let addr = doc["channels"]["roomMessages"]["address"].as_str().unwrap();
    assert_eq!(addr.replace("{room}", "*"), subjects::ROOM_MSG_ALL);
}

#[test]
fn channel_addresses_are_the_subjects_of_the_code() {
    let doc = doc();
    let channels = doc["channels"].as_object().unwrap();
    let documented: BTreeMap<&str, Option<String>> = channels
        .iter()
        .map(|(id, c)| (id.as_str(), c["address"].as_str().map(str::to_owned)))
        .collect();
    assert_eq!(documented, addresses());
    for (id, c) in channels {
        // Every {parameter} of an address is declared.
        let Some(addr) = c["address"].as_str() else {
            continue;
        };
        for param in ["room", "user"] {
            assert_eq!(
                addr.contains(&format!("{{{param}}}")),
                c.get("parameters").and_then(|p| p.get(param)).is_some(),
                "{id}: parameter {param}"
            );
        }
    }
}

#[test]
fn message_payloads_are_the_serde_fields_of_the_rust_types() {
    let doc = doc();
    let messages = doc["components"]["messages"].as_object().unwrap();
    let samples = samples();
    assert_eq!(
        messages.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        samples.keys().copied().collect::<BTreeSet<_>>(),
        "every documented message has a sample of its Rust type"
    );
    for (name, cases) in &samples {
        let payload = &messages[*name]["payload"];
        for (value, mode) in cases {
            if let Err(e) = check(&doc, payload, value, *mode, name) {
                panic!("docs/asyncapi.json differs from the Rust type: {e}");
            }
        }
    }
    // Every channel's messages are documented messages.
    for (id, c) in doc["channels"].as_object().unwrap() {
        for m in c["messages"].as_object().unwrap().values() {
            let target = resolve(&doc, m);
            assert!(
                messages.values().any(|x| x == target),
                "{id}: unknown message"
            );
        }
    }
}

#[test]
fn the_checker_notices_a_missing_or_extra_field() {
    let doc = doc();
    let payload = &doc["components"]["messages"]["typing"]["payload"];
    let mut v = json(&TypingEvent {
        room: room(),
        user: user("a"),
        ts: 1,
    });
    assert!(check(&doc, payload, &v, Sample::Full, "t").is_ok());
    v["extra"] = Value::from(1);
    assert!(check(&doc, payload, &v, Sample::Full, "t").is_err());
    v.as_object_mut().unwrap().remove("extra");
    v.as_object_mut().unwrap().remove("ts");
    assert!(check(&doc, payload, &v, Sample::Full, "t").is_err());
}
