//! chat-notify end to end: unread counts, read markers, mentions, DMs, restarts and webhooks,
//! with real edges, chat-history, chat-notify, nats-server and PostgreSQL.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use chat_bus::api::{NotifyState, NotifyStateRequest};
use chat_bus::subjects;
use chat_proto::{RoomId, UserId};
use chat_tests::{Stack, eventually, notify_state as state};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// The `rooms` entry of a hello for `room`.
fn room_of<'a>(hello: &'a Value, room: &str) -> &'a Value {
    hello["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .find(|r| r["room"] == room)
        .unwrap_or_else(|| panic!("{room} not in hello: {hello}"))
}

/// Waits for the `unread` frame of `room`.
async fn unread_frame(c: &mut chat_testkit::WsClient, room: &str) -> Value {
    c.recv_until(|f| f["type"] == "unread" && f["room"] == room)
        .await
        .expect("unread frame")
}

/// Joins `room` and waits until chat-notify has set the join floor of `user`'s marker, so that
/// what the test sends next is counted for the joiner whatever the timing.
async fn settled_join(stack: &Stack, c: &mut chat_testkit::WsClient, user: &str, room: &str) {
    c.join(room).await;
    chat_tests::wait_read_marker(&stack.db().await, user, room).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_mentions_and_dms_wait_in_hello_until_a_read_clears_them_everywhere() {
    let stack = Stack::start().await;
    let (mut bob, _) = stack.login(0, "bob").await;
    settled_join(&stack, &mut bob, "bob", "proj").await;
    bob.close().await;
    let (mut carol, _) = stack.login(0, "carol").await;
    settled_join(&stack, &mut carol, "carol", "elsewhere").await;
    carol.close().await;

    let (mut alice, _) = stack.login(0, "alice").await;
    settled_join(&stack, &mut alice, "alice", "proj").await;
    let dm = alice
        .request(json!({"type": "open_dm", "user": "bob"}), "dm")
        .await;
    let dm_room = dm["room"].as_str().expect("dm room").to_owned();

    let proj_bodies = [
        "@bob first",
        "look here @bob",
        "(@bob) third, not `@bob` again, @bob",
        "mail alice@bob.example",
        "ping @dave and @carol, who are not here",
        "@alice talking to myself",
        "code only `@bob`",
    ];
    let mut last_proj = 0;
    for (i, body) in proj_bodies.iter().enumerate() {
        last_proj = alice.post_as("proj", body, &format!("p{i}")).await["seq"]
            .as_u64()
            .unwrap();
    }
    let mut last_dm = 0;
    for (i, body) in ["hi bob", "@bob are you there?"].iter().enumerate() {
        last_dm = alice.post_as(&dm_room, body, &format!("d{i}")).await["seq"]
            .as_u64()
            .unwrap();
    }
    // Her own messages never make an unread count for alice.
    alice.expect_no("unread", Duration::from_millis(500)).await;

    let (mut bob1, hello) = stack.login(0, "bob").await;
    let notes = hello["notifications"].as_array().expect("notifications");
    assert_eq!(notes.len(), 5, "{hello}");
    let mentions: Vec<&Value> = notes.iter().filter(|n| n["kind"] == "mention").collect();
    let dms: Vec<&Value> = notes.iter().filter(|n| n["kind"] == "dm").collect();
    assert_eq!(mentions.len(), 3, "{hello}");
    assert_eq!(dms.len(), 2, "{hello}");
    let previews: Vec<&str> = mentions
        .iter()
        .map(|n| n["preview"].as_str().unwrap())
        .collect();
    assert_eq!(previews, &proj_bodies[..3]);
    assert!(
        mentions
            .iter()
            .all(|n| n["room"] == "proj" && n["from"] == "alice")
    );
    assert!(dms.iter().all(|n| n["room"] == dm_room.as_str()));
    let ids: BTreeSet<&str> = notes.iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 5, "ids are distinct");
    assert_eq!(room_of(&hello, "proj")["unread"], proj_bodies.len());
    assert_eq!(room_of(&hello, "proj")["last_read"], 0);
    assert_eq!(room_of(&hello, &dm_room)["unread"], 2);

    // Neither the email nor the mentions of non-members notified anyone.
    let (_carol, hello_carol) = stack.login(0, "carol").await;
    assert_eq!(hello_carol["notifications"], json!([]));
    let (_alice2, hello_alice) = stack.login(0, "alice").await;
    assert_eq!(hello_alice["notifications"], json!([]));
    assert_eq!(room_of(&hello_alice, "proj")["unread"], 0);
    assert_eq!(room_of(&hello_alice, &dm_room)["unread"], 0);

    // Live: both of bob's sessions get the notification and the message, but no count: v1.1
    // pushes none per message (protocol.md#ws-unread); a client adds one to hello's count.
    let (mut bob2, hello2) = stack.login(0, "bob").await;
    assert_eq!(room_of(&hello2, "proj")["unread"], proj_bodies.len());
    let live = alice.post_as("proj", "@bob live one", "live").await;
    let last_proj_live = live["seq"].as_u64().unwrap();
    assert!(last_proj_live > last_proj);
    for b in [&mut bob1, &mut bob2] {
        let (mut n, mut m) = (None, None);
        while n.is_none() || m.is_none() {
            let f = b.recv().await.expect("frame");
            match f["type"].as_str() {
                // A notification listed in hello can also arrive live when notify published it
                // while the session was starting (pending and live at once, protocol.md#ws
                // Mentions): the client knows it by its id. Only a new one is this message's.
                Some("notification") if ids.contains(f["id"].as_str().unwrap_or("")) => {}
                Some("notification") => n = Some(f),
                Some("message") if f["client_id"] == "live" => m = Some(f),
                // v1.0 pushed a count per message (before the notification).
                Some("unread") => panic!("a count pushed for a message: {f}"),
                _ => {}
            }
        }
        let n = n.unwrap();
        assert_eq!(
            (n["kind"].as_str(), n["seq"].as_u64()),
            (Some("mention"), live["seq"].as_u64())
        );
    }
    // A read on one session clears the count on both.
    bob1.send(json!({"type": "read", "room": "proj", "seq": last_proj_live}))
        .await;
    for b in [&mut bob1, &mut bob2] {
        let u = unread_frame(b, "proj").await;
        assert_eq!(
            (u["count"].as_u64(), u["last_read"].as_u64()),
            (Some(0), Some(last_proj_live)),
            "{u}"
        );
        assert!(u["as_of"].as_u64().unwrap() >= last_proj_live, "{u}");
    }
    bob2.send(json!({"type": "read", "room": dm_room, "seq": last_dm}))
        .await;
    for b in [&mut bob1, &mut bob2] {
        let u = unread_frame(b, &dm_room).await;
        assert_eq!(
            (u["count"].as_u64(), u["last_read"].as_u64()),
            (Some(0), Some(last_dm))
        );
    }
    // The marker never moves back, and never beyond the room's last message; a read that moves
    // nothing pushes nothing: the next `unread` is that of the next read that moves the marker.
    bob1.send(json!({"type": "read", "room": "proj", "seq": 1}))
        .await;
    bob1.send(json!({"type": "read", "room": "proj", "seq": 1u64 << 40}))
        .await;
    let next = alice.post_as("proj", "one more", "more").await["seq"]
        .as_u64()
        .unwrap();
    bob1.send(json!({"type": "read", "room": "proj", "seq": next}))
        .await;
    let u = unread_frame(&mut bob1, "proj").await;
    assert_eq!(
        (u["count"].as_u64(), u["last_read"].as_u64()),
        (Some(0), Some(next)),
        "{u}"
    );
    let last_proj_live = next;

    let (_bob3, hello) = stack.login(0, "bob").await;
    assert_eq!(hello["notifications"], json!([]), "{hello}");
    assert_eq!(room_of(&hello, "proj")["unread"], 0);
    assert_eq!(room_of(&hello, "proj")["last_read"], last_proj_live);
    assert_eq!(room_of(&hello, &dm_room)["unread"], 0);
    // Alice never got an unread frame for her own messages.
    alice.expect_no("unread", Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_to_a_public_room_has_no_unread_history() {
    let stack = Stack::start().await;
    let (mut alice, _) = stack.login(0, "alice").await;
    alice.join("hist").await;
    for i in 0..3 {
        alice.post_as("hist", "old news", &format!("h{i}")).await;
    }
    let last = alice.post_as("hist", "latest", "h3").await["seq"]
        .as_u64()
        .unwrap();
    let (mut bob, _) = stack.login(0, "bob").await;
    settled_join(&stack, &mut bob, "bob", "hist").await;
    let (_b2, hello) = stack.login(0, "bob").await;
    assert_eq!(room_of(&hello, "hist")["unread"], 0, "{hello}");
    assert_eq!(room_of(&hello, "hist")["last_read"], last);
    alice.post_as("hist", "news", "h4").await;
    bob.recv_until(|f| f["type"] == "message" && f["client_id"] == "h4")
        .await
        .expect("the message");
    // The count covers exactly hello's last_seq, whether or not chat-notify has consumed it.
    let (_b3, hello) = stack.login(0, "bob").await;
    assert_eq!(room_of(&hello, "hist")["unread"], 1, "{hello}");
    assert_eq!(room_of(&hello, "hist")["last_read"], last);
}

/// v1.1 (protocol.md#ws-unread): `hello` and `joined` carry counts covering exactly their
/// `last_seq` even while chat-notify's consumer has not seen those messages (here it is paused),
/// and a read pushes the count as of the room's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_exact_while_the_consumer_lags_behind() {
    let stack = Stack::start().await;
    let (mut bob, _) = stack.login(0, "bob").await;
    settled_join(&stack, &mut bob, "bob", "lag").await;
    let (mut alice, _) = stack.login(0, "alice").await;
    settled_join(&stack, &mut alice, "alice", "lag").await;
    let client = stack.nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(subjects::STREAM).await.unwrap();
    stream
        .pause_consumer(
            subjects::NOTIFY_CONSUMER,
            time::OffsetDateTime::now_utc() + time::Duration::hours(1),
        )
        .await
        .unwrap();
    let mut seqs = Vec::new();
    for i in 0..5 {
        let body = if i == 2 { "@bob three" } else { "lagging" };
        seqs.push(
            alice.post_as("lag", body, &format!("l{i}")).await["seq"]
                .as_u64()
                .unwrap(),
        );
    }
    let (mut bob2, hello) = stack.login(0, "bob").await;
    assert_eq!(room_of(&hello, "lag")["unread"], 5, "{hello}");
    assert_eq!(room_of(&hello, "lag")["last_seq"], seqs[4], "{hello}");
    // Her own messages do not count for alice, wherever they are counted from.
    let (_a2, hello) = stack.login(0, "alice").await;
    assert_eq!(room_of(&hello, "lag")["unread"], 0, "{hello}");
    let joined = bob2
        .request(json!({"type": "join", "room": "lag"}), "j")
        .await;
    assert_eq!(
        (joined["unread"].as_u64(), joined["last_seq"].as_u64()),
        (Some(5), Some(seqs[4])),
        "{joined}"
    );
    bob2.send(json!({"type": "read", "room": "lag", "seq": seqs[1]}))
        .await;
    let u = unread_frame(&mut bob, "lag").await;
    assert_eq!(
        (
            u["count"].as_u64(),
            u["last_read"].as_u64(),
            u["as_of"].as_u64()
        ),
        (Some(3), Some(seqs[1]), Some(seqs[4])),
        "{u}"
    );
    stream
        .resume_consumer(subjects::NOTIFY_CONSUMER)
        .await
        .unwrap();
    // Once consumed, the same count from the table, and the mention is pending.
    eventually(
        "the mention is consumed",
        Duration::from_secs(20),
        async || {
            let s = state(&client, "bob", &["lag"]).await;
            assert_eq!(s.rooms[0].unread, 3, "{s:?}");
            if s.notifications.len() == 1 {
                Ok(())
            } else {
                Err(s)
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_into_a_private_room_notifies_until_read() {
    let stack = Stack::start().await;
    let (mut alice, _) = stack.login(0, "alice").await;
    let created = alice
        .request(
            json!({"type": "create", "room": "secret", "private": true, "members": []}),
            "c",
        )
        .await;
    assert_eq!(created["type"], "joined");
    let s = alice.post_as("secret", "before bob", "b1").await;
    let (mut bob, _) = stack.login(0, "bob").await;
    let ok = alice
        .request(
            json!({"type": "invite", "room": "secret", "user": "bob"}),
            "i",
        )
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let n = bob.recv_type("notification").await.unwrap();
    assert_eq!(
        (n["kind"].as_str(), n["room"].as_str(), n["from"].as_str()),
        (Some("invite"), Some("secret"), Some("alice"))
    );
    assert_eq!(n["seq"], s["seq"]);
    let (_b2, hello) = stack.login(0, "bob").await;
    assert_eq!(
        hello["notifications"].as_array().unwrap().len(),
        1,
        "{hello}"
    );
    bob.send(json!({"type": "read", "room": "secret", "seq": s["seq"]}))
        .await;
    // (The consumer may also have told bob about alice's message, if it saw it after the invite.)
    bob.recv_until(|f| {
        f["type"] == "unread" && f["room"] == "secret" && f["last_read"] == s["seq"]
    })
    .await
    .unwrap();
    let (_b3, hello) = stack.login(0, "bob").await;
    assert_eq!(hello["notifications"], json!([]), "{hello}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_notify_during_a_burst_leaves_every_count_exact() {
    const ALICE: usize = 1000;
    const CAROL: usize = 100;
    let mut stack =
        Stack::start_with(&[("CHAT_RATE_PER_S", "100000"), ("NOTIFY_ACK_WAIT", "2s")]).await;
    let (mut bob, _) = stack.login(0, "bob").await;
    settled_join(&stack, &mut bob, "bob", "burst").await;
    bob.close().await;
    // Everyone joins before anyone sends (a join starts the joiner's marker at the room's end).
    let mut clients = Vec::new();
    for (name, n) in [("alice", ALICE), ("carol", CAROL)] {
        let (mut c, _) = stack.login(0, name).await;
        settled_join(&stack, &mut c, name, "burst").await;
        clients.push((name, n, c));
    }
    let mut senders = Vec::new();
    for (name, n, mut c) in clients {
        senders.push(tokio::spawn(async move {
            for i in 0..n {
                let body = if i % 100 == 0 {
                    format!("@bob number {i}")
                } else {
                    format!("message {i}")
                };
                c.send(json!({"type": "send", "room": "burst", "body": body, "client_id": format!("{name}-{i}")}))
                    .await;
            }
            let mut acks = 0;
            while acks < n {
                let f = c.recv().await.expect("frame");
                if f["type"] == "ack" {
                    acks += 1;
                }
                assert_ne!(f["type"], "error", "{f}");
            }
        }));
    }
    // Kill chat-notify once it is into the burst, and start another.
    let db = stack.db().await;
    eventually(
        "chat-notify is into the burst",
        Duration::from_secs(20),
        async || {
            let (n,): (i64,) =
                sqlx::query_as("SELECT count(*) FROM notify.room_messages WHERE room = 'burst'")
                    .fetch_one(&db)
                    .await
                    .unwrap();
            if n >= 100 { Ok(()) } else { Err(n) }
        },
    )
    .await;
    let (at_kill,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM notify.room_messages WHERE room = 'burst'")
            .fetch_one(&db)
            .await
            .unwrap();
    stack.notifies.remove(0).kill();
    println!(
        "chat-notify killed after {at_kill} of {} events",
        ALICE + CAROL
    );
    stack.add_notify().await;
    for s in senders {
        s.await.unwrap();
    }

    let client = stack.nats.client().await;
    let expect = |who: &str| match who {
        "bob" => ALICE + CAROL,
        "alice" => CAROL,
        _ => ALICE,
    } as u64;
    let check = |client: async_nats::Client| async move {
        eventually(
            "bob's count caught up",
            Duration::from_secs(30),
            async || {
                let s = state(&client, "bob", &["burst"]).await;
                assert!(s.rooms[0].unread <= expect("bob"), "double counted: {s:?}");
                if s.rooms[0].unread == expect("bob") {
                    Ok(())
                } else {
                    Err(s)
                }
            },
        )
        .await;
        for who in ["alice", "bob", "carol"] {
            let s = state(&client, who, &["burst"]).await;
            assert_eq!(s.rooms[0].unread, expect(who), "{who}: {s:?}");
        }
        let s = state(&client, "bob", &["burst"]).await;
        let ids: BTreeSet<String> = s.notifications.iter().map(|n| n.id.clone()).collect();
        assert_eq!(
            s.notifications.len(),
            (ALICE + CAROL) / 100,
            "{:?}",
            s.notifications
        );
        assert_eq!(ids.len(), s.notifications.len());
    };
    check(client.clone()).await;

    // Every event delivered again from the start: nothing changes.
    stack.notifies.remove(0).shutdown().await;
    let js = async_nats::jetstream::new(client.clone());
    js.delete_consumer_from_stream(subjects::NOTIFY_CONSUMER, subjects::STREAM)
        .await
        .expect("delete the consumer");
    stack.add_notify().await;
    eventually(
        "the replay from the start finished",
        Duration::from_secs(30),
        async || {
            let mut c = js
                .get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
                    subjects::NOTIFY_CONSUMER,
                    subjects::STREAM,
                )
                .await
                .ok()?;
            let info = c.info().await.unwrap();
            (info.num_pending == 0
                && info.num_ack_pending == 0
                && info.delivered.stream_sequence > 0)
                .then_some(())
        },
    )
    .await;
    check(client).await;
}

/// Waits until chat-notify's webhook outbox is empty: every delivery made, none to retry, so no
/// further POST can come of what was sent so far.
async fn outbox_drained(stack: &Stack) {
    let db = stack.db().await;
    eventually(
        "the webhook outbox is empty",
        Duration::from_secs(20),
        async || {
            let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM notify.webhook_outbox")
                .fetch_one(&db)
                .await
                .unwrap();
            if n == 0 { Ok(()) } else { Err(n) }
        },
    )
    .await;
}

/// A push gateway for the test: checks nothing itself, records every accepted POST, and fails
/// the first two attempts of a notification whose preview says "flaky".
#[derive(Clone, Default)]
struct Gateway {
    accepted: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    flaky_attempts: Arc<AtomicU32>,
    /// While set, every POST fails (and is counted in `refused`).
    down: Arc<AtomicBool>,
    refused: Arc<AtomicU32>,
}

async fn gateway(State(g): State<Gateway>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if g.down.load(Ordering::SeqCst) {
        g.refused.fetch_add(1, Ordering::SeqCst);
        return StatusCode::BAD_GATEWAY;
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if v["preview"].as_str().is_some_and(|p| p.contains("flaky"))
        && g.flaky_attempts.fetch_add(1, Ordering::SeqCst) < 2
    {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    g.accepted.lock().unwrap().push((headers, body));
    StatusCode::NO_CONTENT
}

/// Starts a gateway on port 0; its URL.
async fn start_gateway(g: &Gateway) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/push", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/push", post(gateway))
        .with_state(g.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_webhook_survives_a_restart_of_notify() {
    let g = Gateway::default();
    g.down.store(true, Ordering::SeqCst);
    let url = start_gateway(&g).await;
    let mut stack = Stack::start_with(&[
        ("NOTIFY_WEBHOOK_URL", url.as_str()),
        ("NOTIFY_WEBHOOK_SECRET", "s"),
        ("NOTIFY_WEBHOOK_RETRY_MIN", "50ms"),
        ("NOTIFY_WEBHOOK_RETRY_MAX", "200ms"),
        ("NOTIFY_WEBHOOK_TIMEOUT", "1s"),
    ])
    .await;
    let (mut bob, _) = stack.login(0, "bob").await;
    settled_join(&stack, &mut bob, "bob", "r").await;
    bob.close().await;
    let (mut alice, _) = stack.login(0, "alice").await;
    settled_join(&stack, &mut alice, "alice", "r").await;
    alice.post_as("r", "@bob durable", "x").await;
    eventually(
        "two refused attempts",
        Duration::from_secs(20),
        async || g.refused.load(Ordering::SeqCst) >= 2,
    )
    .await;
    stack.notifies.remove(0).kill();
    let refused = g.refused.load(Ordering::SeqCst);
    g.down.store(false, Ordering::SeqCst);
    stack.add_notify().await;
    eventually(
        "a delivery after the restart",
        Duration::from_secs(20),
        async || !g.accepted.lock().unwrap().is_empty(),
    )
    .await;
    // Nothing more can arrive once the outbox is empty.
    outbox_drained(&stack).await;
    let accepted = g.accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), 1, "delivered once");
    let v: Value = serde_json::from_slice(&accepted[0].1).unwrap();
    assert_eq!(
        (v["user"].as_str(), v["preview"].as_str()),
        (Some("bob"), Some("@bob durable"))
    );
    assert!(refused >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_notifications_reach_the_webhook_once_signed_and_despite_failures() {
    // A Standard Webhooks secret: `webhook-signature` is keyed with its decoded bytes, the
    // deprecated `X-Chat-Signature` with the string as configured.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let g = Gateway::default();
    let url = start_gateway(&g).await;

    let stack = Stack::start_with(&[
        ("NOTIFY_WEBHOOK_URL", url.as_str()),
        ("NOTIFY_WEBHOOK_SECRET", SECRET),
        ("NOTIFY_WEBHOOK_RETRY_MIN", "50ms"),
    ])
    .await;
    let (mut bob, _) = stack.login(0, "bob").await;
    settled_join(&stack, &mut bob, "bob", "w").await;
    bob.close().await;
    let (mut alice, _) = stack.login(0, "alice").await;
    settled_join(&stack, &mut alice, "alice", "w").await;
    let mut seqs = BTreeSet::new();
    for (i, body) in ["@bob one", "@bob two", "@bob flaky", "no mention"]
        .iter()
        .enumerate()
    {
        let a = alice.post_as("w", body, &format!("w{i}")).await;
        seqs.insert(a["seq"].as_u64().unwrap());
    }
    let dm = alice
        .request(json!({"type": "open_dm", "user": "bob"}), "dm")
        .await;
    let dm_room = dm["room"].as_str().unwrap().to_owned();
    alice.post_as(&dm_room, "psst", "d").await;

    eventually(
        "four webhooks accepted",
        Duration::from_secs(20),
        async || g.accepted.lock().unwrap().len() >= 4,
    )
    .await;
    // Nothing more arrives (the outbox is empty): each notification exactly once.
    outbox_drained(&stack).await;
    let accepted = g.accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), 4);
    assert_eq!(
        g.flaky_attempts.load(Ordering::SeqCst),
        3,
        "two failures, then success"
    );
    let mut by_id = HashMap::new();
    for (headers, body) in &accepted {
        let ts = headers["x-chat-timestamp"].to_str().unwrap();
        let sig = headers["x-chat-signature"].to_str().unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(format!("{ts}.").as_bytes());
        mac.update(body);
        mac.verify_slice(&hex::decode(sig).unwrap())
            .expect("valid signature");
        let age = chat_bus::now_ms() - ts.parse::<i64>().unwrap();
        assert!((0..60_000).contains(&age), "timestamp is now: {age}");
        let v: Value = serde_json::from_slice(body).unwrap();
        // Standard Webhooks, verified from the specification: HMAC-SHA256 keyed with the
        // base64-decoded part of the secret, over "<webhook-id>.<webhook-timestamp>.<body>".
        let id = headers["webhook-id"].to_str().unwrap();
        assert_eq!(
            id,
            v["id"].as_str().unwrap(),
            "webhook-id is the notification id"
        );
        let secs = headers["webhook-timestamp"].to_str().unwrap();
        assert_eq!(
            secs.parse::<i64>().unwrap(),
            ts.parse::<i64>().unwrap() / 1000
        );
        let b64 = base64::engine::general_purpose::STANDARD;
        let key = b64.decode(SECRET.strip_prefix("whsec_").unwrap()).unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{secs}.").as_bytes());
        mac.update(body);
        assert_eq!(
            headers["webhook-signature"].to_str().unwrap(),
            format!("v1,{}", b64.encode(mac.finalize().into_bytes()))
        );
        assert_eq!(v["user"], "bob");
        assert_eq!(v["from"], "alice");
        assert!(
            by_id
                .insert(v["id"].as_str().unwrap().to_owned(), v.clone())
                .is_none(),
            "repeated {v}"
        );
    }
    let kinds: Vec<&str> = {
        let mut k: Vec<&str> = by_id
            .values()
            .map(|v| v["kind"].as_str().unwrap())
            .collect();
        k.sort();
        k
    };
    assert_eq!(kinds, ["dm", "mention", "mention", "mention"]);

    let metrics = http_get(stack.notifies[0].admin, "/metrics").await;
    assert!(
        metric(&metrics, "chat_notify_webhook_failures_total") >= 2.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "chat_notify_webhook_deliveries_total") >= 4.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "chat_notify_notifications_total{kind=\"mention\"}"
        ) >= 3.0,
        "{metrics}"
    );
}

/// A GET over a fresh connection; the body of the answer.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// The value of a sample line `name value` in Prometheus text (0 when absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter_map(|rest| rest.trim().parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_is_idempotent_and_never_revives_a_read_notification() {
    use chat_notify::store::{self, NewNotification, RoomMessage};
    use chat_proto::{Notification, NotificationKind};

    let stack = Stack::start().await;
    let pool = chat_runtime::db::pool(&stack.db_url, chat_notify::SCHEMA, 2).unwrap();
    let (room, alice, bob) = (
        RoomId::new("direct").unwrap(),
        UserId::new("alice").unwrap(),
        UserId::new("bob").unwrap(),
    );
    let msg = |seq: u64| RoomMessage {
        room: room.clone(),
        seq,
        sender: Some(alice.clone()),
    };
    let note = |seq: u64| NewNotification {
        user: bob.clone(),
        notification: Notification {
            id: chat_notify::mention::message_notification_id(seq, &bob),
            kind: NotificationKind::Mention,
            room: room.clone(),
            seq,
            from: alice.clone(),
            preview: "@bob".into(),
            ts: 1,
        },
    };
    let rows = [msg(10), msg(20), msg(30)];
    let notes = [note(10), note(30)];
    let new = store::store_batch(&pool, &rows, &notes, &[], true)
        .await
        .unwrap();
    assert_eq!(new.len(), 2);
    // The same batch again (a redelivery): nothing new, nothing counted twice.
    let again: Vec<String> = notes.iter().map(|n| n.notification.id.clone()).collect();
    let new = store::store_batch(&pool, &rows, &notes, &[], true)
        .await
        .unwrap();
    assert!(new.is_empty());
    let republish = store::store_batch(&pool, &rows, &notes, &again, true)
        .await
        .unwrap();
    assert_eq!(republish.len(), 2, "still pending: published again");
    let count = |user: &UserId| {
        let (pool, user, room) = (pool.clone(), user.clone(), room.clone());
        async move {
            store::unread_upto(&pool, &user, std::slice::from_ref(&room), u64::MAX)
                .await
                .unwrap()[&room]
        }
    };
    assert_eq!(count(&bob).await, (0, 3));
    // bob reads up to 20: one notification left, one message unread.
    assert_eq!(store::read(&pool, &bob, &room, 20).await.unwrap(), (0, 20));
    assert_eq!(count(&bob).await, (20, 1));
    // Only the part up to a bound is counted (the consumer's ack floor).
    let part = store::unread_upto(&pool, &bob, std::slice::from_ref(&room), 29)
        .await
        .unwrap();
    assert_eq!(part[&room], (20, 0));
    let (pending, total) = store::pending(&pool, &bob, std::slice::from_ref(&room))
        .await
        .unwrap();
    assert_eq!(pending.iter().map(|n| n.seq).collect::<Vec<_>>(), [30]);
    assert_eq!(total, 1);
    // A redelivery of 10 after the read does not bring its notification back.
    let new = store::store_batch(&pool, &rows[..1], &notes[..1], &again[..1], true)
        .await
        .unwrap();
    assert!(new.is_empty(), "{new:?}");
    // A mention the reader is already past (the consumer lagged behind the read) is not pending.
    assert_eq!(store::read(&pool, &bob, &room, 50).await.unwrap(), (20, 50));
    assert_eq!(count(&bob).await, (50, 0));
    let new = store::store_batch(&pool, &[msg(40)], &[note(40)], &[], true)
        .await
        .unwrap();
    assert!(new.is_empty());
    let (pending, total) = store::pending(&pool, &bob, std::slice::from_ref(&room))
        .await
        .unwrap();
    assert!(pending.is_empty() && total == 0, "{pending:?}");
    // The marker never moves back (and says it did not move).
    assert_eq!(store::read(&pool, &bob, &room, 5).await.unwrap(), (50, 50));
    // Alice's own messages never count for her.
    assert_eq!(count(&alice).await.1, 0);

    // A join floor hides history from the count, but is not a read: a mention that raced the
    // join (below the floor) still notifies, and a read clears it.
    let carol = UserId::new("carol").unwrap();
    assert!(store::start_marker(&pool, &carol, &room, 40).await.unwrap());
    assert!(
        !store::start_marker(&pool, &carol, &room, 30).await.unwrap(),
        "only forward"
    );
    let raced = NewNotification {
        user: carol.clone(),
        notification: Notification {
            id: chat_notify::mention::message_notification_id(35, &carol),
            ..note(35).notification
        },
    };
    let new = store::store_batch(&pool, &[msg(35), msg(60)], &[raced], &[], false)
        .await
        .unwrap();
    assert_eq!(new.len(), 1);
    assert_eq!(count(&carol).await, (40, 1));
    // A read below the floor moves no effective marker, but clears what it covers.
    assert_eq!(
        store::read(&pool, &carol, &room, 36).await.unwrap(),
        (40, 40)
    );
    assert_eq!(count(&carol).await, (40, 1));
    let (pending, total) = store::pending(&pool, &carol, std::slice::from_ref(&room))
        .await
        .unwrap();
    assert!(pending.is_empty() && total == 0, "{pending:?}");
}

/// A TCP proxy the test can cut: an outage of whatever is behind it, for one service only.
struct Proxy {
    url: String,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    /// Proxies the PostgreSQL of `db_url`; `url` is the same database through the proxy.
    async fn postgres(db_url: &str) -> Proxy {
        let (scheme_user, rest) = db_url
            .split_once('@')
            .expect("postgres://user@host:port/db");
        let (target, db) = rest.split_once('/').expect("host:port/db");
        let target = target.to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("{scheme_user}@{}/{db}", listener.local_addr().unwrap());
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (up2, conns2) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue;
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns2.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy { url, up, conns }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_of_notify_loses_nothing() {
    let mut stack = Stack::start().await;
    // chat-notify alone reaches PostgreSQL through a proxy the test can cut.
    let proxy = Proxy::postgres(&stack.db_url).await;
    stack.notifies.remove(0).shutdown().await;
    stack.env.push(("DATABASE_URL".into(), proxy.url.clone()));
    stack.add_notify().await;

    let (mut bob, _) = stack.login(0, "bob").await;
    settled_join(&stack, &mut bob, "bob", "o").await;
    let (mut alice, _) = stack.login(0, "alice").await;
    settled_join(&stack, &mut alice, "alice", "o").await;
    alice.post_as("o", "@bob before", "o0").await;
    bob.recv_type("notification").await.expect("notification");

    proxy.cut();
    // Messages still flow while chat-notify cannot write.
    for i in 1..=5 {
        let body = if i % 2 == 0 { "@bob during" } else { "during" };
        alice.post_as("o", body, &format!("o{i}")).await;
    }
    let m = bob
        .recv_until(|f| f["type"] == "message" && f["client_id"] == "o5")
        .await
        .unwrap();
    // A read cannot be recorded meanwhile: the client is told to retry.
    let r = bob
        .request(json!({"type": "read", "room": "o", "seq": m["seq"]}), "rd")
        .await;
    assert_eq!(r["code"], "unavailable", "{r}");
    // The outage goes on a little longer (its length is the scenario, not a wait for an event).
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.restore();

    let client = stack.nats.client().await;
    let s = eventually(
        "bob's state recovered",
        Duration::from_secs(30),
        async || {
            let s = chat_bus::rpc::request_on::<_, NotifyState>(
                &client,
                subjects::NOTIFY_STATE,
                &NotifyStateRequest {
                    user: UserId::new("bob").unwrap(),
                    rooms: vec![RoomId::new("o").unwrap()],
                    last_seqs: Vec::new(),
                },
                Duration::from_secs(5),
            )
            .await
            .map_err(|e| format!("{e:?}"))?;
            if s.rooms[0].unread == 6 {
                Ok(s)
            } else {
                Err(format!("{s:?}"))
            }
        },
    )
    .await;
    assert_eq!(s.notifications.len(), 3, "{s:?}");
    let (_b2, hello) = stack.login(0, "bob").await;
    assert_eq!(room_of(&hello, "o")["unread"], 6, "{hello}");
    assert_eq!(hello["notifications"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_notify_instances_share_the_work_without_double_counting() {
    const N: usize = 300;
    let mut stack = Stack::start_with(&[("CHAT_RATE_PER_S", "100000")]).await;
    stack.add_notify().await;
    let (mut bob, _) = stack.login(0, "bob").await;
    settled_join(&stack, &mut bob, "bob", "pair").await;
    bob.close().await;
    let (mut alice, _) = stack.login(0, "alice").await;
    settled_join(&stack, &mut alice, "alice", "pair").await;
    for i in 0..N {
        let body = if i % 10 == 0 { "@bob look" } else { "hello" };
        alice
            .send(
                json!({"type": "send", "room": "pair", "body": body, "client_id": format!("p{i}")}),
            )
            .await;
    }
    let mut acks = 0;
    while acks < N {
        if alice.recv().await.unwrap()["type"] == "ack" {
            acks += 1;
        }
    }
    let client = stack.nats.client().await;
    let s = eventually(
        "bob's count caught up",
        Duration::from_secs(20),
        async || {
            let s = state(&client, "bob", &["pair"]).await;
            assert!(s.rooms[0].unread <= N as u64, "double counted: {s:?}");
            if s.rooms[0].unread == N as u64 {
                Ok(s)
            } else {
                Err(s)
            }
        },
    )
    .await;
    let ids: BTreeSet<String> = s.notifications.iter().map(|n| n.id.clone()).collect();
    assert_eq!((s.notifications.len(), ids.len()), (N / 10, N / 10));
    // Every event stored once, whichever instance took it.
    let db = stack.db().await;
    let (rows,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM notify.room_messages WHERE room = 'pair'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(rows, N as i64);
}
