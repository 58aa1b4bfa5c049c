//! Issue 8, item 3, authorization: a non-member tries every operation on a private room and on a
//! DM, over WebSocket and through the NATS requests an edge makes on a user's behalf (as a buggy
//! or compromised edge would), and gets nothing; a membership revoked mid-session stops delivery
//! to every session of the user within a second.
//!
//! The non-members: `eve`, who never was a member of anything here, and `lena`, who was a member
//! of the private room and left it; on the DM of alice and bob both are third users.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use chat_bus::api::{RoomInfo, rooms};
use chat_bus::subjects;
use chat_proto::{RoomId, UserId};
use chat_testkit::WsClient;
use chat_tests::{Stack, nats_request};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::time::Instant;

/// Text in every body the members write: no frame a non-member receives may contain it.
const SECRET: &str = "SECRET";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Private,
    Dm,
}

/// A room the non-members are not in.
#[derive(Debug, Clone)]
struct Target {
    kind: Kind,
    room: String,
    /// The room's newest seq (a plausible cursor or read position).
    last_seq: u64,
}

/// Who tries, and what they know.
struct Caller<'a> {
    user: &'a str,
    epoch: &'a str,
}

/// What a non-member gets, by protocol.md#ws, #nats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// An error with this code.
    Refused(&'static str),
    /// `leave` answers `left` even for a non-member; nothing changes.
    NoEffect,
    /// An answer that names nothing of the room (chat.internal.notify.state).
    Empty,
}

fn forbidden(_: Kind) -> Expect {
    Expect::Refused("forbidden")
}

/// `create` over an existing room id: a conflict; over a `dm-` id: reserved, a bad request.
fn taken(kind: Kind) -> Expect {
    match kind {
        Kind::Private => Expect::Refused("conflict"),
        Kind::Dm => Expect::Refused("bad_request"),
    }
}

fn no_effect(_: Kind) -> Expect {
    Expect::NoEffect
}

fn empty(_: Kind) -> Expect {
    Expect::Empty
}

/// One operation, listed once, tried by each non-member on each room.
struct Op {
    name: &'static str,
    /// A WebSocket frame (without `ref`), or the payload of a NATS request.
    frame: fn(&Target, &Caller) -> Value,
    expect: fn(Kind) -> Expect,
}

/// Every client frame of protocol.md#ws that names a room.
fn ws_ops() -> Vec<Op> {
    vec![
        Op {
            name: "join",
            frame: |t, _| json!({"type": "join", "room": t.room}),
            expect: forbidden,
        },
        Op {
            name: "join since, current epoch (recovery)",
            frame: |t, c| json!({"type": "join", "room": t.room, "since": 0, "epoch": c.epoch}),
            expect: forbidden,
        },
        Op {
            name: "join since, another epoch",
            frame: |t, _| json!({"type": "join", "room": t.room, "since": 0, "epoch": "other"}),
            expect: forbidden,
        },
        Op {
            name: "join since, no epoch",
            frame: |t, _| json!({"type": "join", "room": t.room, "since": 0}),
            expect: forbidden,
        },
        Op {
            name: "send",
            frame: |t, c| {
                json!({"type": "send", "room": t.room, "body": format!("from {} @alice", c.user),
                       "client_id": format!("{}-intrusion", c.user)})
            },
            expect: forbidden,
        },
        Op {
            name: "history",
            frame: |t, _| json!({"type": "history", "room": t.room}),
            expect: forbidden,
        },
        Op {
            name: "history before",
            frame: |t, _| json!({"type": "history", "room": t.room, "before": t.last_seq + 1}),
            expect: forbidden,
        },
        Op {
            name: "history after",
            frame: |t, _| json!({"type": "history", "room": t.room, "after": 0, "limit": 200}),
            expect: forbidden,
        },
        Op {
            name: "typing",
            frame: |t, _| json!({"type": "typing", "room": t.room}),
            expect: forbidden,
        },
        Op {
            name: "read",
            frame: |t, _| json!({"type": "read", "room": t.room, "seq": t.last_seq}),
            expect: forbidden,
        },
        Op {
            name: "invite oneself",
            frame: |t, c| json!({"type": "invite", "room": t.room, "user": c.user}),
            expect: forbidden,
        },
        Op {
            name: "invite someone else",
            frame: |t, _| json!({"type": "invite", "room": t.room, "user": "mallory"}),
            expect: forbidden,
        },
        Op {
            name: "presence snapshot",
            frame: |t, _| json!({"type": "presence", "room": t.room}),
            expect: forbidden,
        },
        Op {
            name: "create a private room over it",
            frame: |t, c| json!({"type": "create", "room": t.room, "private": true, "members": [c.user]}),
            expect: taken,
        },
        Op {
            name: "create a public room over it",
            frame: |t, _| json!({"type": "create", "room": t.room, "private": false, "members": []}),
            expect: taken,
        },
        Op {
            name: "leave",
            frame: |t, _| json!({"type": "leave", "room": t.room}),
            expect: no_effect,
        },
    ]
}

/// Every NATS request an edge makes on a user's behalf that names a room, with the non-member's
/// user id, sent straight to the services.
fn nats_ops() -> Vec<(&'static str, Op)> {
    vec![
        (
            subjects::ROOMS,
            Op {
                name: "rooms join",
                frame: |t, c| json!({"op": "join", "user": c.user, "room": t.room}),
                expect: forbidden,
            },
        ),
        (
            subjects::ROOMS,
            Op {
                name: "rooms invite oneself",
                frame: |t, c| json!({"op": "invite", "user": c.user, "room": t.room, "target": c.user}),
                expect: forbidden,
            },
        ),
        (
            subjects::ROOMS,
            Op {
                name: "rooms invite someone else",
                frame: |t, c| json!({"op": "invite", "user": c.user, "room": t.room, "target": "mallory"}),
                expect: forbidden,
            },
        ),
        (
            subjects::ROOMS,
            Op {
                name: "rooms create over it",
                frame: |t, c| {
                    json!({"op": "create", "user": c.user, "room": t.room, "private": true,
                           "members": [c.user]})
                },
                expect: taken,
            },
        ),
        (
            subjects::API_HISTORY,
            Op {
                name: "history page on the user's behalf",
                frame: |t, c| json!({"room": t.room, "user": c.user}),
                expect: forbidden,
            },
        ),
        (
            subjects::API_HISTORY,
            Op {
                name: "history before, on the user's behalf",
                frame: |t, c| json!({"room": t.room, "user": c.user, "before": t.last_seq + 1}),
                expect: forbidden,
            },
        ),
        (
            subjects::API_HISTORY,
            Op {
                name: "history after (recovery), on the user's behalf",
                frame: |t, c| json!({"room": t.room, "user": c.user, "after": 0, "limit": 200}),
                expect: forbidden,
            },
        ),
        (
            subjects::NOTIFY_READ,
            Op {
                name: "notify read marker",
                frame: |t, c| json!({"user": c.user, "room": t.room, "seq": t.last_seq}),
                expect: forbidden,
            },
        ),
        (
            subjects::NOTIFY_STATE,
            Op {
                name: "notify state (unread count, pending notifications)",
                frame: |t, c| json!({"user": c.user, "rooms": [t.room]}),
                expect: empty,
            },
        ),
        (
            subjects::ROOMS,
            Op {
                name: "rooms leave",
                frame: |t, c| json!({"op": "leave", "user": c.user, "room": t.room}),
                expect: no_effect,
            },
        ),
    ]
}

/// Whether a frame a non-member received says anything of one of `rooms`.
fn about(f: &Value, rooms: &[String]) -> bool {
    let text = f.to_string();
    text.contains(SECRET) || rooms.iter().any(|r| f["room"] == r.as_str())
}

/// Sends `frame` with a `ref` and returns the reply to it; every other frame goes to `seen`.
async fn ask(c: &mut WsClient, mut frame: Value, reference: &str, seen: &mut Vec<Value>) -> Value {
    frame["ref"] = Value::String(reference.to_owned());
    c.send(frame).await;
    loop {
        let f = c.recv().await.expect("a reply");
        if f["ref"] == reference {
            return f;
        }
        seen.push(f);
    }
}

/// The reply is the refusal the contract names, and it carries nothing else.
fn assert_refused(reply: &Value, code: &str, what: &str) {
    assert_eq!(reply["type"], "error", "{what}: {reply}");
    assert_eq!(reply["code"], code, "{what}: {reply}");
    let keys: BTreeSet<&str> = reply
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    let allowed = BTreeSet::from(["type", "ref", "code", "message"]);
    assert!(keys.is_subset(&allowed), "{what}: extra fields in {reply}");
    assert!(!reply.to_string().contains(SECRET), "{what} leaks: {reply}");
}

/// Sets up alice and bob with a private room `vault` (lena was invited and left) and their DM,
/// each holding a few secret messages; returns the two targets.
async fn rooms_with_secrets(stack: &Stack) -> (WsClient, WsClient, Vec<Target>) {
    let (mut alice, _) = stack.login(0, "alice").await;
    let (mut bob, _) = stack.login(stack.edges.len() - 1, "bob").await;
    let (mut lena, _) = stack.login(0, "lena").await;
    let created = alice
        .request(
            json!({"type": "create", "room": "vault", "private": true, "members": ["bob", "lena"]}),
            "c",
        )
        .await;
    assert_eq!(
        created["members"],
        json!(["alice", "bob", "lena"]),
        "{created}"
    );
    for c in [&mut bob, &mut lena] {
        c.recv_until(|f| f["type"] == "joined" && f["room"] == "vault")
            .await
            .expect("joined");
    }
    alice
        .post_as("vault", "SECRET vault 1 @lena @bob", "v1")
        .await;
    let left = lena
        .request(json!({"type": "leave", "room": "vault"}), "l")
        .await;
    assert_eq!(left["type"], "left", "{left}");
    lena.close().await;
    let last_vault = alice
        .post_as("vault", "SECRET vault 2, after lena left", "v2")
        .await["seq"]
        .as_u64()
        .unwrap();
    let dm = alice
        .request(json!({"type": "open_dm", "user": "bob"}), "dm")
        .await;
    let dm_room = dm["room"].as_str().expect("dm room").to_owned();
    let last_dm = alice.post_as(&dm_room, "SECRET dm 1 @bob", "d1").await["seq"]
        .as_u64()
        .unwrap();
    bob.recv_until(|f| f["type"] == "message" && f["room"] == dm_room.as_str())
        .await
        .expect("bob gets the DM");
    let targets = vec![
        Target {
            kind: Kind::Private,
            room: "vault".into(),
            last_seq: last_vault,
        },
        Target {
            kind: Kind::Dm,
            room: dm_room,
            last_seq: last_dm,
        },
    ];
    (alice, bob, targets)
}

/// Nothing the non-members tried changed the rooms: same members, only the members' messages,
/// no read marker of a non-member.
async fn assert_rooms_untouched(stack: &Stack, targets: &[Target], intruders: &[&str]) {
    let nats = stack.nats.client().await;
    for t in targets {
        let info: RoomInfo = nats_request(
            &nats,
            subjects::ROOMS,
            &rooms::Members {
                room: RoomId::new(t.room.as_str()).unwrap(),
            },
        )
        .await
        .expect("members");
        let members: Vec<&str> = info.members.iter().map(UserId::as_str).collect();
        assert_eq!(members, ["alice", "bob"], "members of {}", t.room);
    }
    let db = stack.db().await;
    let rooms: Vec<&str> = targets.iter().map(|t| t.room.as_str()).collect();
    let (markers,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM notify.read_markers WHERE user_id = ANY($1) AND room = ANY($2)",
    )
    .bind(intruders)
    .bind(&rooms)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(markers, 0, "a non-member got a read marker");
    let (foreign,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM history.messages WHERE room = ANY($1) AND sender <> 'alice'",
    )
    .bind(&rooms)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(foreign, 0, "a non-member's message was stored");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_is_refused_every_operation_on_a_private_room_and_a_dm_over_websocket() {
    let mut stack = Stack::start_with(&[("CHAT_RATE_PER_S", "1000")]).await;
    stack.add_edge().await;
    let (mut alice, mut bob, targets) = rooms_with_secrets(&stack).await;
    let rooms: Vec<String> = targets.iter().map(|t| t.room.clone()).collect();

    // The non-members, one on each edge; their hello lists none of the rooms.
    let (mut eve, hello_eve) = stack.login(1, "eve").await;
    let (mut lena, hello_lena) = stack.login(0, "lena").await;
    for hello in [&hello_eve, &hello_lena] {
        assert!(
            !about(&hello["rooms"], &rooms) && hello["notifications"] == json!([]),
            "{hello}"
        );
        for r in hello["rooms"].as_array().unwrap() {
            assert!(
                !rooms.contains(&r["room"].as_str().unwrap().to_owned()),
                "{hello}"
            );
        }
    }
    let epoch = hello_eve["epoch"].as_str().unwrap().to_owned();

    let ops = ws_ops();
    let mut seen: Vec<Value> = Vec::new();
    let (mut refused, mut no_effect, mut accepted) = (0usize, 0usize, Vec::new());
    for (user, client) in [("eve", &mut eve), ("lena", &mut lena)] {
        let caller = Caller {
            user,
            epoch: &epoch,
        };
        for t in &targets {
            for (i, op) in ops.iter().enumerate() {
                let what = format!("{user}: {} on {:?} {}", op.name, t.kind, t.room);
                let reply = ask(client, (op.frame)(t, &caller), &format!("op{i}"), &mut seen).await;
                match (op.expect)(t.kind) {
                    Expect::Refused(code) => {
                        if reply["type"] != "error" {
                            accepted.push(format!("{what}: {reply}"));
                            continue;
                        }
                        assert_refused(&reply, code, &what);
                        refused += 1;
                    }
                    Expect::NoEffect => {
                        assert_eq!(reply["type"], "left", "{what}: {reply}");
                        assert_eq!(reply["room"], t.room.as_str(), "{what}: {reply}");
                        assert!(reply.get("members").is_none(), "{what}: {reply}");
                        no_effect += 1;
                    }
                    Expect::Empty => unreachable!("no WebSocket operation answers empty"),
                }
            }
        }
    }
    assert!(accepted.is_empty(), "accepted: {accepted:#?}");
    assert_rooms_untouched(&stack, &targets, &["eve", "lena"]).await;

    // The members go on: messages mentioning the non-members, typing, a status change, reads.
    // The members see all of it; the non-members nothing.
    let (vault, dm) = (targets[0].room.as_str(), targets[1].room.as_str());
    let v3 = alice
        .post_as(vault, "SECRET vault 3 @eve @lena @bob", "v3")
        .await;
    let d2 = alice.post_as(dm, "SECRET dm 2 @eve @lena", "d2").await;
    for room in [vault, dm] {
        alice.send(json!({"type": "typing", "room": room})).await;
    }
    alice
        .send(json!({"type": "status", "status": "away"}))
        .await;
    for (room, ack) in [(vault, &v3), (dm, &d2)] {
        bob.send(json!({"type": "read", "room": room, "seq": ack["seq"]}))
            .await;
    }
    // The member sees each kind of event of both rooms (in whatever order they come).
    let mut expected: Vec<(&str, &str)> = Vec::new();
    for room in [vault, dm] {
        expected.extend([
            ("message", room),
            ("typing", room),
            ("presence", room),
            ("unread", room),
        ]);
    }
    while !expected.is_empty() {
        let f = bob
            .recv()
            .await
            .unwrap_or_else(|e| panic!("bob still waits for {expected:?}: {e:?}"));
        expected.retain(|(ty, room)| !(f["type"] == *ty && f["room"] == *room));
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    for c in [&mut eve, &mut lena] {
        seen.extend(c.frames_until(deadline).await.into_iter().map(|(_, f)| f));
    }
    let leaked: Vec<&Value> = seen.iter().filter(|f| about(f, &rooms)).collect();
    assert!(leaked.is_empty(), "non-members received: {leaked:#?}");

    let n_ops = ops.len() - 1;
    println!(
        "FIGURES authorization: {n_ops} operations × {} rooms (private, DM) × 2 non-members \
         (never a member, left) refused over WebSocket, 0 accepted; leave answered `left` \
         {no_effect} times and changed nothing; 0 of their events reached a non-member",
        targets.len()
    );
    assert_eq!(refused, n_ops * targets.len() * 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_refuse_a_non_member_whatever_an_edge_asks_on_their_behalf() {
    let stack = Stack::start().await;
    let (mut alice, mut bob, targets) = rooms_with_secrets(&stack).await;
    let rooms: Vec<String> = targets.iter().map(|t| t.room.clone()).collect();
    let (mut eve, hello) = stack.login(0, "eve").await;
    let epoch = hello["epoch"].as_str().unwrap().to_owned();

    // A buggy or compromised edge: a plain NATS client speaking for the non-members. What the
    // services publish to the non-members meanwhile is watched too.
    let nats = stack.nats.client().await;
    let mut to_them = nats.subscribe("chat.user.*.>").await.unwrap();
    nats.flush().await.unwrap();

    let ops = nats_ops();
    let (mut refused, mut accepted) = (0usize, Vec::new());
    for user in ["eve", "lena"] {
        let caller = Caller {
            user,
            epoch: &epoch,
        };
        for t in &targets {
            for (subject, op) in &ops {
                let what = format!("{user}: {} on {:?} {}", op.name, t.kind, t.room);
                let payload = (op.frame)(t, &caller).to_string();
                let reply = nats
                    .request(*subject, payload.into())
                    .await
                    .unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
                let reply: Value = serde_json::from_slice(&reply.payload).expect("JSON reply");
                assert!(!reply.to_string().contains(SECRET), "{what} leaks: {reply}");
                match (op.expect)(t.kind) {
                    Expect::Refused(code) => {
                        if reply.get("error").is_none() {
                            accepted.push(format!("{what}: {reply}"));
                            continue;
                        }
                        assert_eq!(reply["error"]["code"], code, "{what}: {reply}");
                        refused += 1;
                    }
                    Expect::Empty => {
                        assert_eq!(reply["rooms"], json!([]), "{what}: {reply}");
                        assert_eq!(reply["notifications"], json!([]), "{what}: {reply}");
                        refused += 1;
                    }
                    Expect::NoEffect => {
                        assert_eq!(reply, json!({"room": t.room}), "{what}");
                    }
                }
            }
        }
    }
    assert!(accepted.is_empty(), "accepted: {accepted:#?}");
    assert_rooms_untouched(&stack, &targets, &["eve", "lena"]).await;

    // The room's JetStream subject is trusted by design (bots post through it, protocol.md#nats; only
    // the edge and integration credentials may publish there): a post "from eve" is stored, but
    // gives eve nothing of the room.
    let event = json!({"v": 1, "kind": "message", "room": "vault", "from": "eve",
                       "body": "posted around the edge @alice", "client_id": "js1", "ts": 1});
    let js = async_nats::jetstream::new(nats.clone());
    let seq = js
        .publish("chat.room.vault.msg", event.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;
    bob.recv_until(|f| f["type"] == "message" && f["seq"] == seq)
        .await
        .expect("the members see the post");
    alice
        .post_as("vault", "SECRET vault 3 @eve @lena", "v3")
        .await;

    let deadline = Instant::now() + Duration::from_secs(1);
    let seen = eve.frames_until(deadline).await;
    let leaked: Vec<&Value> = seen
        .iter()
        .map(|(_, f)| f)
        .filter(|f| about(f, &rooms))
        .collect();
    assert!(leaked.is_empty(), "eve's session received: {leaked:#?}");
    let mut published = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), to_them.next()).await {
        if m.subject.starts_with("chat.user.eve.") || m.subject.starts_with("chat.user.lena.") {
            published.push((
                m.subject.to_string(),
                String::from_utf8_lossy(&m.payload).into_owned(),
            ));
        }
    }
    assert!(
        published.is_empty(),
        "published to the non-members: {published:#?}"
    );

    let n_ops = ops.len() - 1;
    println!(
        "FIGURES authorization: {n_ops} operations × {} rooms (private, DM) × 2 non-members \
         refused by the services themselves over NATS (as a buggy edge would ask), 0 accepted",
        targets.len()
    );
    assert_eq!(refused, n_ops * targets.len() * 2);
}

/// What one of bob's sessions saw around a revocation.
struct Revoked {
    /// From the revocation to the session's `left`.
    left_after: Duration,
    /// From the revocation to the last frame of the room (the `left` itself included).
    last_after: Duration,
    /// Frames of the room received after `left`.
    after_left: Vec<Value>,
}

fn revoked(frames: &[(Instant, Value)], t0: Instant, room: &str) -> Revoked {
    let of_room = |f: &Value| f["room"] == room;
    let left = frames
        .iter()
        .position(|(_, f)| f["type"] == "left" && of_room(f))
        .unwrap_or_else(|| panic!("no `left` of {room}: {frames:#?}"));
    let last = frames
        .iter()
        .rev()
        .find(|(_, f)| of_room(f))
        .map(|(at, _)| *at)
        .expect("the left frame");
    Revoked {
        left_after: frames[left].0.duration_since(t0),
        last_after: last.duration_since(t0),
        after_left: frames[left + 1..]
            .iter()
            .filter(|(_, f)| of_room(f))
            .map(|(_, f)| f.clone())
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_membership_stops_delivery_to_every_session_within_a_second() {
    let mut stack = Stack::start_with(&[("CHAT_RATE_PER_S", "1000")]).await;
    stack.add_edge().await;
    let (mut admin, _) = stack.login(1, "alice").await;
    let created = admin
        .request(
            json!({"type": "create", "room": "vault", "private": true, "members": ["bob", "carol"]}),
            "c",
        )
        .await;
    assert_eq!(created["type"], "joined", "{created}");
    // bob on both edges.
    let (mut bob1, _) = stack.login(0, "bob").await;
    let (mut bob2, _) = stack.login(1, "bob").await;

    // Traffic of every kind that reaches a member goes on throughout: messages mentioning bob
    // (message, unread, notification), typing by carol, status changes of alice (presence).
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let (mut alice, _) = stack.login(0, "alice").await;
    let (mut carol, _) = stack.login(1, "carol").await;
    let traffic = tokio::spawn({
        let (stop, sent) = (stop.clone(), sent.clone());
        async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                alice
                    .post_as("vault", &format!("tick {i} @bob"), &format!("t{i}"))
                    .await;
                sent.fetch_add(1, Ordering::Relaxed);
                carol.send(json!({"type": "typing", "room": "vault"})).await;
                if i.is_multiple_of(20) {
                    let status = if i.is_multiple_of(40) {
                        "away"
                    } else {
                        "online"
                    };
                    alice
                        .send(json!({"type": "status", "status": status}))
                        .await;
                }
                while carol.recv_within(Duration::from_millis(1)).await.is_ok() {}
                // The pace of the background traffic, not a wait for an event.
                tokio::time::sleep(Duration::from_millis(10)).await;
                i += 1;
            }
        }
    });

    let mut figures = Vec::new();
    for path in [
        "bob leaves from one session",
        "removed over chat.internal.rooms",
    ] {
        // Delivery is flowing to both sessions.
        for b in [&mut bob1, &mut bob2] {
            b.recv_until(|f| f["type"] == "message" && f["room"] == "vault")
                .await
                .expect("bob receives the room");
        }
        let sent_before = sent.load(Ordering::Relaxed);
        let t0 = Instant::now();
        if path.starts_with("bob leaves") {
            bob1.send(json!({"type": "leave", "room": "vault", "ref": "bye"}))
                .await;
        } else {
            // There is no owner or admin "remove" in protocol.md#ws: an integrator with a service
            // credential asks chat-history directly, as an edge does for a leave.
            let nats = stack.nats.client().await;
            let _: chat_bus::api::Done = nats_request(
                &nats,
                subjects::ROOMS,
                &rooms::Leave {
                    user: UserId::new("bob").unwrap(),
                    room: RoomId::new("vault").unwrap(),
                },
            )
            .await
            .expect("removed");
        }
        let until = t0 + Duration::from_millis(2500);
        let (f1, f2) = tokio::join!(bob1.frames_until(until), bob2.frames_until(until));
        let sent_during = sent.load(Ordering::Relaxed) - sent_before;
        assert!(sent_during > 50, "traffic went on: {sent_during} messages");
        let r = [revoked(&f1, t0, "vault"), revoked(&f2, t0, "vault")];
        for (s, r) in r.iter().enumerate() {
            assert!(
                r.after_left.is_empty(),
                "{path}: session {} received after `left`: {:#?}",
                s + 1,
                r.after_left
            );
            assert!(
                r.left_after <= Duration::from_secs(1) && r.last_after <= Duration::from_secs(1),
                "{path}: session {} got `left` after {:?}, last event after {:?}",
                s + 1,
                r.left_after,
                r.last_after
            );
        }
        figures.push(format!(
            "{path}: `left` on his 2 sessions (2 edges) after {:.1}/{:.1} ms, last event of the \
             room {:.1} ms after the revocation, 0 events after `left` while {sent_during} \
             messages (with typing and presence) went on for 2.5 s",
            r[0].left_after.as_secs_f64() * 1e3,
            r[1].left_after.as_secs_f64() * 1e3,
            r[0].last_after.max(r[1].last_after).as_secs_f64() * 1e3,
        ));
        if path.starts_with("bob leaves") {
            // Back in, for the other path.
            let ok = admin
                .request(
                    json!({"type": "invite", "room": "vault", "user": "bob"}),
                    "inv",
                )
                .await;
            assert_eq!(ok["type"], "ok", "{ok}");
            for b in [&mut bob1, &mut bob2] {
                b.recv_until(|f| f["type"] == "joined" && f["room"] == "vault")
                    .await
                    .expect("bob is back");
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    // A new session of bob is not in the room either.
    let (_bob3, hello) = stack.login(0, "bob").await;
    assert_eq!(hello["rooms"], json!([]), "{hello}");
    for f in figures {
        println!("FIGURES revocation: {f}");
    }
}

/// What the services cannot check themselves, because the request names no user or the user's
/// own action: members and rooms of anyone (`chat.internal.rooms` members/user_rooms, and leave,
/// the integrator path above), markers and state (`chat.internal.notify.*`), typing and
/// presence reports. Those subjects are trusted-only by design: with deploy/nats/auth.conf, the
/// only credential that is not a service's (integrations) cannot reach them.
#[tokio::test]
async fn the_subjects_the_services_trust_are_closed_to_a_non_service_credential() {
    use async_nats::{ConnectOptions, Event, ServerError};
    use chat_testkit::{NatsOptions, NatsServer, workspace_root};

    let mut conf = std::fs::read_to_string(workspace_root().join("deploy/nats/auth.conf"))
        .expect("deploy/nats/auth.conf");
    for user in [
        "edge",
        "history",
        "presence",
        "notify",
        "api",
        "integrations",
    ] {
        let var = format!("$NATS_{}_PASSWORD", user.to_ascii_uppercase());
        conf = conf.replace(&var, &format!("\"pw-{user}\""));
    }
    let nats = NatsServer::start_with(NatsOptions {
        extra_config: conf,
        ..NatsOptions::default()
    })
    .await;
    let (tx, mut violations) = tokio::sync::mpsc::unbounded_channel::<String>();
    let bot = ConnectOptions::new()
        .user_and_password("integrations".into(), "pw-integrations".into())
        .custom_inbox_prefix("_INBOX_integrations")
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let Event::ServerError(ServerError::Other(e)) = event {
                    let _ = tx.send(e);
                }
            }
        })
        .connect(nats.url.as_str())
        .await
        .expect("connect as integrations");
    let trusted = [
        subjects::ROOMS,
        subjects::NOTIFY_READ,
        subjects::NOTIFY_STATE,
        subjects::PRESENCE_STATUS,
        subjects::PRESENCE_SESSION_UP,
        "chat.room.vault.typing",
        "chat.room.vault.presence",
        "chat.user.bob.membership",
        "chat.user.bob.unread",
    ];
    for subject in trusted {
        bot.publish(subject, "{}".into()).await.unwrap();
        bot.flush().await.unwrap();
        let v = tokio::time::timeout(Duration::from_secs(2), violations.recv())
            .await
            .unwrap_or_else(|_| panic!("publish to {subject} was not refused"))
            .unwrap();
        assert!(
            v.contains("Permissions Violation") && v.contains(subject),
            "{subject}: {v}"
        );
    }
    let _sub = bot.subscribe("chat.user.bob.membership").await.unwrap();
    bot.flush().await.unwrap();
    let v = tokio::time::timeout(Duration::from_secs(2), violations.recv())
        .await
        .expect("subscription refused")
        .unwrap();
    assert!(v.contains("Subscription"), "{v}");
    println!(
        "FIGURES authorization: {} trusted-only subjects closed to the integrations credential",
        trusted.len() + 1
    );
}
