//! The message path end to end: real edges, chat-history, nats-server and PostgreSQL.

use std::collections::HashMap;
use std::time::Duration;

use chat_tests::Stack;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_on_two_edges_exchange_messages_both_ways() {
    let mut stack = Stack::start().await;
    stack.add_edge().await;
    let (mut alice, _) = stack.login(0, "alice").await;
    let (mut bob, _) = stack.login(1, "bob").await;
    alice.join("lobby").await;
    bob.join("lobby").await;

    let ack = alice.post_as("lobby", "hi bob", "a1").await;
    let m = bob.recv_type("message").await.unwrap();
    assert_eq!(
        (m["from"].as_str(), m["body"].as_str()),
        (Some("alice"), Some("hi bob"))
    );
    assert_eq!(m["seq"], ack["seq"]);
    // The sender's own session gets the message too.
    let own = alice.recv_type("message").await.unwrap();
    assert_eq!(own["seq"], ack["seq"]);

    let ack2 = bob.post_as("lobby", "hi alice", "b1").await;
    let m = alice.recv_type("message").await.unwrap();
    assert_eq!(
        (m["from"].as_str(), m["body"].as_str()),
        (Some("bob"), Some("hi alice"))
    );
    assert_eq!(m["prev_seq"], ack["seq"]);
    assert_eq!(m["seq"], ack2["seq"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_senders_reach_every_member_in_order_and_all_rows_are_archived() {
    const PER_SENDER: usize = 300;
    // Senders fire as fast as they can; the rate limit has its own test.
    let mut stack = Stack::start_with(&[("CHAT_RATE_PER_S", "100000")]).await;
    stack.add_edge().await;
    let mut senders = Vec::new();
    for (i, name) in ["s1", "s2", "s3"].iter().enumerate() {
        let (mut c, _) = stack.login(i % 2, name).await;
        c.join("busy").await;
        senders.push(c);
    }
    let mut readers = Vec::new();
    for (i, name) in ["r1", "r2"].iter().enumerate() {
        let (mut c, _) = stack.login(i % 2, name).await;
        c.join("busy").await;
        readers.push(c);
    }
    let mut tasks = Vec::new();
    for (i, mut c) in senders.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for n in 0..PER_SENDER {
                let id = format!("{i}-{n}");
                c.send(json!({"type": "send", "room": "busy", "body": format!("m {id}"), "client_id": id})).await;
            }
            c
        }));
    }
    let check = |mut c: chat_testkit::WsClient| async move {
        let mut last = 0u64;
        let mut seen = HashMap::new();
        while seen.len() < 3 * PER_SENDER {
            let m = c.recv_type("message").await.expect("message");
            let seq = m["seq"].as_u64().unwrap();
            assert!(seq > last, "seq {seq} after {last}");
            if last != 0 {
                assert_eq!(m["prev_seq"].as_u64().unwrap(), last, "prev_seq chains");
            }
            last = seq;
            assert!(
                seen.insert(m["client_id"].as_str().unwrap().to_owned(), seq)
                    .is_none(),
                "repeated message"
            );
        }
        seen
    };
    let mut counts = Vec::new();
    for r in readers {
        counts.push(tokio::spawn(check(r)));
    }
    let senders: Vec<_> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for s in senders {
        counts.push(tokio::spawn(check(s)));
    }
    for c in counts {
        assert_eq!(c.await.unwrap().len(), 3 * PER_SENDER);
    }
    let db = stack.db().await;
    chat_tests::wait_archived(&db, "busy", 3 * PER_SENDER as i64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_send_answers_the_same_seq_and_is_delivered_once() {
    let stack = Stack::start().await;
    let (mut alice, _) = stack.login(0, "alice").await;
    let (mut bob, _) = stack.login(0, "bob").await;
    alice.join("r").await;
    bob.join("r").await;
    let first = alice.post_as("r", "once", "same-id").await;
    assert_eq!(first["duplicate"], false);
    let again = alice
        .request(
            json!({"type": "send", "room": "r", "body": "once", "client_id": "same-id"}),
            "retry",
        )
        .await;
    assert_eq!(again["type"], "ack");
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["seq"], first["seq"]);
    assert_eq!(again["ts"], first["ts"]);
    alice.post_as("r", "marker", "marker").await;
    let m1 = bob.recv_type("message").await.unwrap();
    let m2 = bob.recv_type("message").await.unwrap();
    assert_eq!(
        (m1["body"].as_str(), m2["body"].as_str()),
        (Some("once"), Some("marker"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_members_are_kept_out_of_private_rooms_and_dms() {
    let stack = Stack::start().await;
    let (mut alice, _) = stack.login(0, "alice").await;
    let (mut bob, _) = stack.login(0, "bob").await;
    let (mut eve, _) = stack.login(0, "eve").await;
    let created = alice
        .request(
            json!({"type": "create", "room": "secret", "private": true, "members": ["bob"]}),
            "c",
        )
        .await;
    assert_eq!(created["type"], "joined");
    assert_eq!(created["kind"], "private");
    assert_eq!(created["members"], json!(["alice", "bob"]));
    // bob learns of his membership without asking
    let j = bob.recv_type("joined").await.unwrap();
    assert_eq!(j["room"], "secret");

    let dm = alice
        .request(json!({"type": "open_dm", "user": "bob"}), "dm")
        .await;
    let dm_room = dm["room"].as_str().unwrap().to_owned();
    assert!(dm_room.starts_with("dm-"));

    for room in ["secret", dm_room.as_str()] {
        let r = eve
            .request(json!({"type": "join", "room": room}), "j")
            .await;
        assert_eq!(r["code"], "forbidden", "{r}");
        let r = eve
            .request(
                json!({"type": "send", "room": room, "body": "x", "client_id": "e"}),
                "s",
            )
            .await;
        assert_eq!(r["code"], "forbidden");
        let r = eve
            .request(json!({"type": "history", "room": room}), "h")
            .await;
        assert_eq!(r["code"], "forbidden");
        let r = eve
            .request(json!({"type": "typing", "room": room}), "t")
            .await;
        assert_eq!(r["code"], "forbidden");
        let r = eve
            .request(json!({"type": "invite", "room": room, "user": "eve"}), "i")
            .await;
        assert_eq!(r["code"], "forbidden");
    }
    let r = eve
        .request(
            json!({"type": "create", "room": "dm-0123456789abcdef", "private": false}),
            "c",
        )
        .await;
    assert_eq!(r["type"], "error");

    // Members see each other's typing; eve sees nothing of it.
    alice
        .send(json!({"type": "typing", "room": "secret"}))
        .await;
    let t = bob.recv_type("typing").await.unwrap();
    assert_eq!(t["user"], "alice");
    eve.expect_no("typing", Duration::from_millis(300)).await;

    // After leave, none of bob's sessions receive the room's events.
    let (mut bob2, hello) = stack.login(0, "bob").await;
    assert!(
        hello["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["room"] == "secret")
    );
    let left = bob
        .request(json!({"type": "leave", "room": "secret"}), "l")
        .await;
    assert_eq!(left["type"], "left");
    let l2 = bob2.recv_type("left").await.unwrap();
    assert_eq!(l2["room"], "secret");
    alice.post_as("secret", "after bob left", "x1").await;
    bob.expect_no("message", Duration::from_millis(300)).await;
    bob2.expect_no("message", Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_walk_the_room_without_gap_or_overlap() {
    let stack = Stack::start().await;
    let (mut alice, _) = stack.login(0, "alice").await;
    alice.join("h").await;
    let mut seqs = Vec::new();
    for i in 0..25 {
        seqs.push(
            alice.post_as("h", &format!("n{i}"), &format!("c{i}")).await["seq"]
                .as_u64()
                .unwrap(),
        );
    }
    // newest page
    let page = alice
        .request(json!({"type": "history", "room": "h", "limit": 10}), "p")
        .await;
    let got: Vec<u64> = chat_tests::page_seqs(&page);
    assert_eq!(got, seqs[15..]);
    assert_eq!(page["has_more"], true);
    // walk backwards
    let mut walked: Vec<u64> = got.clone();
    let mut before = got[0];
    loop {
        let p = alice
            .request(
                json!({"type": "history", "room": "h", "before": before, "limit": 10}),
                "b",
            )
            .await;
        let ms: Vec<u64> = p["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        if ms.is_empty() {
            break;
        }
        before = ms[0];
        walked.splice(0..0, ms);
        if p["has_more"] == false {
            break;
        }
    }
    assert_eq!(walked, seqs);
    // walk forwards
    let mut fwd = Vec::new();
    let mut after = 0;
    loop {
        let p = alice
            .request(
                json!({"type": "history", "room": "h", "after": after, "limit": 7}),
                "a",
            )
            .await;
        let ms = p["messages"].as_array().unwrap().clone();
        for (i, m) in ms.iter().enumerate() {
            let expected_prev = if i == 0 {
                fwd.last().copied().unwrap_or(0)
            } else {
                ms[i - 1]["seq"].as_u64().unwrap()
            };
            assert_eq!(m["prev_seq"].as_u64().unwrap(), expected_prev);
        }
        fwd.extend(ms.iter().map(|m| m["seq"].as_u64().unwrap()));
        if p["has_more"] == false {
            break;
        }
        after = *fwd.last().unwrap();
    }
    assert_eq!(fwd, seqs);
    let bad = alice
        .request(
            json!({"type": "history", "room": "h", "after": 1, "before": 5}),
            "x",
        )
        .await;
    assert_eq!(bad["code"], "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_since_recovers_exactly_the_missed_messages() {
    let stack = Stack::start().await;
    let (mut alice, hello) = stack.login(0, "alice").await;
    let epoch = hello["epoch"].as_str().unwrap().to_owned();
    alice.join("rec").await;
    let first = alice.post_as("rec", "seen", "s0").await["seq"]
        .as_u64()
        .unwrap();
    let (mut bob, _) = stack.login(0, "bob").await;
    bob.join("rec").await;
    bob.close().await;
    let mut missed = Vec::new();
    for i in 0..30 {
        missed.push(
            alice
                .post_as("rec", &format!("m{i}"), &format!("m{i}"))
                .await["seq"]
                .as_u64()
                .unwrap(),
        );
    }
    let (mut bob, _) = stack.login(0, "bob").await;
    bob.send(json!({"type": "join", "room": "rec", "since": first, "epoch": epoch, "ref": "rj"}))
        .await;
    let mut got = Vec::new();
    loop {
        let f = bob.recv().await.unwrap();
        match f["type"].as_str() {
            Some("message") => got.push(f["seq"].as_u64().unwrap()),
            Some("joined") => {
                assert_eq!(f["recovered"], true);
                break;
            }
            _ => {}
        }
    }
    assert_eq!(got, missed);
    let live = alice.post_as("rec", "live", "live").await["seq"]
        .as_u64()
        .unwrap();
    let m = bob.recv_type("message").await.unwrap();
    assert_eq!(m["seq"].as_u64().unwrap(), live);

    let r = bob
        .request(
            json!({"type": "join", "room": "rec", "since": first, "epoch": "other"}),
            "x",
        )
        .await;
    assert_eq!(r["recovered"], false);
}

async fn expect_error(c: &mut chat_testkit::WsClient, frame: &str, code: &str) {
    c.send_text(frame.to_owned()).await;
    let f = c.recv_type("error").await.unwrap();
    assert_eq!(f["code"], code, "{frame} -> {f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_their_error_and_the_connection_stays_open() {
    let stack = Stack::start_with(&[("CHAT_MAX_BODY", "10"), ("CHAT_MAX_FRAME", "2048")]).await;
    let (mut c, hello) = stack.login(0, "alice").await;
    assert_eq!(hello["limits"]["max_body"], 10);
    c.join("r").await;
    expect_error(&mut c, "{not json", "bad_request").await;
    expect_error(&mut c, "[1,2,3]", "bad_request").await;
    expect_error(&mut c, r#"{"type":"teleport"}"#, "unknown_type").await;
    expect_error(&mut c, r#"{"type":"send","room":"r"}"#, "bad_request").await;
    expect_error(
        &mut c,
        r#"{"type":"send","room":"r","body":5,"client_id":"x"}"#,
        "bad_request",
    )
    .await;
    expect_error(
        &mut c,
        r#"{"type":"join","room":"no spaces"}"#,
        "bad_request",
    )
    .await;
    expect_error(
        &mut c,
        r#"{"type":"send","room":"r","body":"01234567890","client_id":"x"}"#,
        "too_large",
    )
    .await;
    expect_error(
        &mut c,
        r#"{"type":"send","room":"r","body":"","client_id":"x"}"#,
        "bad_request",
    )
    .await;
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    expect_error(&mut c, &deep[..2000], "bad_request").await;
    // Still serving: a ping gets its pong with the ref echoed.
    let p = c.request(json!({"type": "ping"}), "still-here").await;
    assert_eq!(p["type"], "pong");
    // An oversized frame closes with 1009; others are unaffected.
    let (mut other, _) = stack.login(0, "bob").await;
    c.send_text("x".repeat(4096)).await;
    assert_eq!(c.expect_close().await, Some(1009));
    let p = other.request(json!({"type": "ping"}), "ok").await;
    assert_eq!(p["type"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_rate_limited_then_closed_with_4029() {
    let stack = Stack::start_with(&[("CHAT_RATE_PER_S", "20")]).await;
    let (mut c, _) = stack.login(0, "alice").await;
    let (mut calm, _) = stack.login(0, "bob").await;
    let mut limited = None;
    let started = tokio::time::Instant::now();
    let code = loop {
        assert!(started.elapsed() < Duration::from_secs(15), "never closed");
        c.send(json!({"type": "ping"})).await;
        match c.recv_within(Duration::from_millis(5)).await {
            Ok(f) if f["code"] == "rate_limited" => {
                assert!(f["retry_after_ms"].as_u64().unwrap() > 0);
                limited.get_or_insert(f);
            }
            Ok(_) | Err(chat_testkit::WsError::Timeout) => {}
            Err(chat_testkit::WsError::Closed(code)) => break code,
            Err(e) => panic!("{e:?}"),
        }
        // The flood's pace (about 100 pings/s): what the rate limit is tested against.
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(limited.is_some());
    assert_eq!(code, Some(4029));
    assert_eq!(
        calm.request(json!({"type": "ping"}), "p").await["type"],
        "pong"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_and_foreign_origins_are_refused() {
    use chat_testkit::{WsClient, token};
    let stack = Stack::start_with(&[
        ("CHAT_JWT_AUDIENCE", "chat"),
        ("CHAT_AUTH_TIMEOUT", "500ms"),
    ])
    .await;
    let url = stack.ws_url(0);
    let now = token::now();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            token::with_claims(
                chat_tests::SECRET,
                json!({"sub":"a","exp":now-10,"aud":"chat"}),
            ),
            "token_expired",
        ),
        (
            "forged",
            token::with_claims("wrong", json!({"sub":"a","exp":now+60,"aud":"chat"})),
            "unauthorized",
        ),
        (
            "wrong audience",
            token::with_claims(
                chat_tests::SECRET,
                json!({"sub":"a","exp":now+60,"aud":"x"}),
            ),
            "unauthorized",
        ),
        (
            "no exp",
            token::with_claims(chat_tests::SECRET, json!({"sub":"a","aud":"chat"})),
            "unauthorized",
        ),
        ("alg none", token::unsigned("a", 60), "unauthorized"),
    ];
    for (what, tok, code) in cases {
        // by first frame
        let mut c = WsClient::connect(&url, None).await.unwrap();
        c.send(json!({"type": "auth", "token": tok})).await;
        let f = c.recv().await.unwrap();
        assert_eq!(f["code"], code, "{what}: {f}");
        assert_eq!(c.expect_close().await, Some(4001), "{what}");
        // by header
        let mut c = WsClient::connect(&url, Some(&tok)).await.unwrap();
        assert_eq!(c.recv().await.unwrap()["code"], code, "{what} (header)");
        assert_eq!(c.expect_close().await, Some(4001));
    }
    // No auth frame at all.
    let mut c = WsClient::connect(&url, None).await.unwrap();
    assert_eq!(c.expect_close().await, Some(4001));
    // A good token with the audience works, by header too.
    let good = token::with_claims(
        chat_tests::SECRET,
        json!({"sub":"a","exp":now+60,"aud":"chat"}),
    );
    let mut c = WsClient::connect(&url, Some(&good)).await.unwrap();
    assert_eq!(c.recv_type("hello").await.unwrap()["user"], "a");

    // Origin: same host passes, a foreign one gets 403, none at all passes.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let host = url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .to_owned();
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("Origin", "https://evil.example".parse().unwrap());
    match WsClient::connect_request(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("foreign origin accepted: {:?}", other.map(|_| ())),
    }
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("Origin", format!("http://{host}").parse().unwrap());
    assert!(WsClient::connect_request(req).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_refresh_extends_the_session_and_expiry_closes_it() {
    use chat_testkit::token;
    let stack = Stack::start().await;
    let short = token::hs256(chat_tests::SECRET, "alice", 2);
    let (mut c, _) = chat_testkit::WsClient::login(&stack.ws_url(0), &short).await;
    // refresh with a token for another user is refused, the session stays
    c.send(json!({"type": "auth", "token": token::hs256(chat_tests::SECRET, "mallory", 60), "ref": "r"})).await;
    assert_eq!(c.recv_type("error").await.unwrap()["code"], "unauthorized");
    // a proper refresh
    c.send(json!({"type": "auth", "token": token::hs256(chat_tests::SECRET, "alice", 3)}))
        .await;
    // Time itself is what is tested: past the first token's expiry (2 s), the refreshed one (3 s)
    // keeps the session.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        c.request(json!({"type": "ping"}), "alive").await["type"],
        "pong"
    );
    let f: Value = c.recv_type("error").await.unwrap();
    assert_eq!(f["code"], "token_expired");
    assert_eq!(c.expect_close().await, Some(4001));
}

/// Pipelined sends (issue 12): a client that sends 200 messages without waiting gets 200 acks,
/// in the order of its sends, none a duplicate, and every message reaches the room once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_sends_are_acknowledged_in_order_once_each() {
    const N: usize = 200;
    let stack = Stack::start_with(&[("CHAT_RATE_PER_S", "100000")]).await;
    let (mut alice, _) = stack.login(0, "alice").await;
    let (mut bob, _) = stack.login(0, "bob").await;
    alice.join("pipe").await;
    bob.join("pipe").await;
    for i in 0..N {
        alice
            .send(
                json!({"type": "send", "room": "pipe", "body": format!("m{i}"),
                         "client_id": format!("c{i}"), "ref": format!("r{i}")}),
            )
            .await;
    }
    let mut acks = Vec::new();
    while acks.len() < N {
        let f = alice.recv().await.expect("frame");
        assert_ne!(f["type"], "error", "{f}");
        if f["type"] == "ack" {
            acks.push(f);
        }
    }
    let mut last = 0;
    for (i, ack) in acks.iter().enumerate() {
        assert_eq!(
            ack["client_id"],
            format!("c{i}"),
            "acks out of order: {ack}"
        );
        assert_eq!(ack["ref"], format!("r{i}"));
        assert_eq!(ack["duplicate"], false, "{ack}");
        let seq = ack["seq"].as_u64().unwrap();
        assert!(seq > last, "seq {seq} after {last}");
        last = seq;
    }
    for i in 0..N {
        let m = bob.recv_type("message").await.unwrap();
        assert_eq!(m["client_id"], format!("c{i}"), "{m}");
    }
    // A retry of one of them is still answered as the same message.
    let again = alice.post_as("pipe", "m7", "c7").await;
    assert_eq!(
        (again["seq"].as_u64(), again["duplicate"].as_bool()),
        (acks[7]["seq"].as_u64(), Some(true))
    );
}

/// A session keeps reading while its sends wait for their acks: with nats-server down no ack
/// can come, yet a ping sent after three sends is answered at once; once NATS is back, the
/// three acks follow, in order. (Before, the session read nothing until each PubAck returned,
/// so the pong came after the acks.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_answers_other_frames_while_its_sends_await_acks() {
    let mut stack = Stack::start_with(&[("CHAT_REQUEST_TIMEOUT", "30s")]).await;
    let (mut alice, _) = stack.login(0, "alice").await;
    alice.join("wait").await;
    stack.nats.kill().await;
    for i in 0..3 {
        alice
            .send(
                json!({"type": "send", "room": "wait", "body": format!("w{i}"),
                         "client_id": format!("w{i}"), "ref": format!("s{i}")}),
            )
            .await;
    }
    alice.send(json!({"type": "ping", "ref": "p"})).await;
    let first = alice
        .recv_until(|f| ["pong", "ack", "error"].contains(&f["type"].as_str().unwrap_or("")))
        .await
        .expect("frame");
    assert_eq!(
        (first["type"].as_str(), first["ref"].as_str()),
        (Some("pong"), Some("p")),
        "{first}"
    );
    stack.nats.restart().await;
    let mut last = 0;
    for i in 0..3 {
        let f = alice
            .recv_until(|f| f["type"] == "ack" || f["type"] == "error")
            .await
            .expect("ack");
        assert_eq!(
            (f["type"].as_str(), f["ref"].as_str()),
            (Some("ack"), Some(format!("s{i}").as_str())),
            "{f}"
        );
        let seq = f["seq"].as_u64().unwrap();
        assert!(seq > last);
        last = seq;
    }
}
