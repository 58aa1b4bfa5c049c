//! Issue 15 items 2, 3, 4 (history) and 10 (history): stored entries that are not events
//! (protocol.md#nats) are dead-lettered and skipped everywhere — archive, notifications, the live
//! feed, history pages and replays, and the `prev_seq` chains — and history pages stay bounded.

use std::time::Duration;

use async_nats::jetstream;
use chat_proto::NotificationKind;
use chat_tests::procs::http_get;
use chat_tests::{Stack, eventually, notify_state, wait_archived};
use serde_json::{Value, json};

/// Publishes `payload` to `chat.room.<room>.msg` through JetStream, as an integration does;
/// returns its seq.
async fn publish_raw(js: &jetstream::Context, room: &str, payload: Vec<u8>) -> u64 {
    js.publish(format!("chat.room.{room}.msg"), payload.into())
        .await
        .expect("publish")
        .await
        .expect("stored")
        .sequence
}

fn event(room: &str, from: &str, body: &str, client_id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "v": 1, "kind": "message", "room": room, "from": from,
        "body": body, "client_id": client_id, "ts": chat_bus::now_ms()
    }))
    .unwrap()
}

/// The dead letters so far: (stream seq, reason).
async fn dead_letters(js: &jetstream::Context) -> Vec<(u64, String)> {
    let Ok(mut stream) = js.get_stream(chat_bus::subjects::DEAD_LETTER_STREAM).await else {
        return Vec::new();
    };
    let Ok(info) = stream.info().await else {
        return Vec::new();
    };
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut out = Vec::new();
    for seq in first..=last {
        if seq == 0 {
            continue;
        }
        let m = stream.get_raw_message(seq).await.expect("dead letter");
        let h = |name: &str| {
            m.headers
                .get(name)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        out.push((
            h(chat_history::archive::DLQ_SEQ_HEADER)
                .parse()
                .unwrap_or(0),
            h(chat_history::archive::DLQ_REASON_HEADER),
        ));
    }
    out
}

async fn readyz(port: u16) -> u16 {
    http_get(port, "/readyz").await.map(|(s, _)| s).unwrap_or(0)
}

/// Issue 15 item 2 (one event from an integration stopped the archive for good: the error text
/// with its `\n` went into a dead-letter header and panicked every writer) and item 3 (an event
/// on lobby's subject naming `"room":"secret1"` was archived into secret1 and counted there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_entries_are_dead_lettered_and_the_archive_goes_on() {
    let stack = Stack::start().await;
    let js = jetstream::new(stack.nats.client().await);
    let db = stack.db().await;
    let (mut carol, _) = stack.login(0, "carol").await;
    let r = carol
        .request(
            json!({"type": "create", "room": "secret1", "private": true, "members": ["bob"]}),
            "c",
        )
        .await;
    assert_eq!(r["type"], "joined", "{r}");
    let (mut alice, _) = stack.login(0, "alice").await;
    alice.join("lobby").await;

    let bad_kind = publish_raw(
        &js,
        "lobby",
        br#"{"v":1,"kind":"x\ny","room":"lobby","from":"bot","body":"b","client_id":"bad1","ts":1}"#
            .to_vec(),
    )
    .await;
    let mismatch = publish_raw(
        &js,
        "lobby",
        event("secret1", "mallory", "@bob pwned", "bad2"),
    )
    .await;
    let bad_client_id = publish_raw(
        &js,
        "lobby",
        event("lobby", "bot", "hi", "c\r\nX-Injected: 1"),
    )
    .await;
    let undecodable = publish_raw(&js, "lobby", b"\xff{not json".to_vec()).await;

    // Normal messages after them, from a client and from an integration.
    for i in 0..3 {
        alice
            .post_as("lobby", &format!("after {i}"), &format!("ok-{i}"))
            .await;
    }
    publish_raw(&js, "lobby", event("lobby", "bot", "from a bot", "ok-bot")).await;
    wait_archived(&db, "lobby", 4).await;

    let (in_secret,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM history.messages WHERE room = 'secret1'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(
        in_secret, 0,
        "an event of lobby's subject landed in secret1"
    );
    let bad = [bad_kind, mismatch, bad_client_id, undecodable];
    let (archived_bad,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM history.messages WHERE seq = ANY($1)")
            .bind(bad.iter().map(|s| *s as i64).collect::<Vec<_>>())
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(archived_bad, 0);

    // Each bad entry is in the dead-letter stream once, with its reason.
    let mut letters = eventually(
        "every bad entry is in the dead-letter stream",
        Duration::from_secs(30),
        async || {
            let l = dead_letters(&js).await;
            if l.len() >= bad.len() { Ok(l) } else { Err(l) }
        },
    )
    .await;
    letters.sort();
    assert_eq!(
        letters,
        vec![
            (bad_kind, "unknown event kind".to_owned()),
            (mismatch, "room differs from the subject's room".to_owned()),
            (bad_client_id, "control character in client_id".to_owned()),
            (undecodable, "undecodable entry".to_owned()),
        ]
    );
    // No writer died, so chat-history is (truthfully) ready.
    assert_eq!(readyz(stack.histories[0].admin.port()).await, 200);

    // chat-notify neither counted nor notified the entry that claimed secret1: once it has
    // handled a later message of secret1, bob has that one unread and its mention only.
    let later = carol.post_as("secret1", "@bob real", "real-1").await;
    let later = later["seq"].as_u64().unwrap();
    let nats = stack.nats.client().await;
    let state = eventually(
        "chat-notify has handled the later mention",
        Duration::from_secs(30),
        async || {
            let s = notify_state(&nats, "bob", &["secret1"]).await;
            let mentioned = s
                .notifications
                .iter()
                .any(|n| n.kind == NotificationKind::Mention);
            if mentioned { Ok(s) } else { Err(s) }
        },
    )
    .await;
    let seqs: Vec<u64> = state
        .notifications
        .iter()
        .filter(|n| n.kind == NotificationKind::Mention)
        .map(|n| n.seq)
        .collect();
    assert_eq!(seqs, vec![later], "{state:?}");
    assert_eq!(state.rooms[0].unread, 1, "{state:?}");
}

/// (seq, prev_seq) of each message of a `history` page.
fn links(page: &Value) -> Vec<(u64, u64)> {
    assert_eq!(page["type"], "history", "{page}");
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| (m["seq"].as_u64().unwrap(), m["prev_seq"].as_u64().unwrap()))
        .collect()
}

/// The next `message` frame of any room, as (room, seq, prev_seq).
async fn next_message(c: &mut chat_testkit::WsClient) -> (String, u64, u64) {
    let f = c.recv_type("message").await.expect("a message");
    (
        f["room"].as_str().unwrap().to_owned(),
        f["seq"].as_u64().unwrap(),
        f["prev_seq"].as_u64().unwrap(),
    )
}

/// `join{since, epoch}`: the replayed messages as (seq, prev_seq).
async fn replay(
    c: &mut chat_testkit::WsClient,
    room: &str,
    since: u64,
    epoch: &str,
) -> Vec<(u64, u64)> {
    c.send(json!({"type": "join", "room": room, "since": since, "epoch": epoch}))
        .await;
    let mut got = Vec::new();
    loop {
        let f = c.recv().await.expect("replay");
        match f["type"].as_str() {
            Some("message") => {
                assert_eq!(f["room"], room, "{f}");
                got.push((f["seq"].as_u64().unwrap(), f["prev_seq"].as_u64().unwrap()));
            }
            Some("joined") => {
                assert_eq!(f["recovered"], true, "{f}");
                return got;
            }
            Some("error") => panic!("join failed: {f}"),
            _ => {}
        }
    }
}

async fn history(c: &mut chat_testkit::WsClient, frame: Value) -> Value {
    let mut frame = frame;
    frame["type"] = json!("history");
    c.request(frame, "h").await
}

fn seq_of(ack: &Value) -> u64 {
    ack["seq"].as_u64().expect("seq")
}

/// protocol.md#nats: the chains of `prev_seq` skip entries that are not events. Live (the edge's
/// feed carries `Nats-Last-Sequence`, the previous *stored entry*), in history pages from the
/// archive and from the stream's tail (archive writer stopped), and in `join{since}` replays,
/// every component gives the same unbroken chain; a new edge's first event after an invalid
/// entry too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prev_seq_skips_invalid_entries_live_in_history_and_in_replays() {
    let mut stack = Stack::start().await;
    let js = jetstream::new(stack.nats.client().await);
    let room = "chain";
    let bad_kind =
        br#"{"v":1,"kind":"x\ny","room":"chain","from":"bot","body":"b","client_id":"k","ts":1}"#;
    let (mut alice, hello) = stack.login(0, "alice").await;
    let epoch = hello["epoch"].as_str().unwrap().to_owned();
    alice.join(room).await;
    let (mut bob, _) = stack.login(0, "bob").await;
    bob.join(room).await;

    let a = seq_of(&alice.post_as(room, "A", "a").await);
    assert_eq!(next_message(&mut bob).await, (room.into(), a, 0));
    publish_raw(&js, room, bad_kind.to_vec()).await;
    publish_raw(&js, room, event("lobby", "mallory", "elsewhere", "m1")).await;
    let b = seq_of(&alice.post_as(room, "B", "b").await);
    // The invalid entries were not delivered (they came in between), and B links to A.
    assert_eq!(next_message(&mut bob).await, (room.into(), b, a));

    let page = history(&mut bob, json!({"room": room})).await;
    assert_eq!(links(&page), vec![(a, 0), (b, a)]);
    let (mut carol, _) = stack.login(0, "carol").await;
    assert_eq!(
        replay(&mut carol, room, 0, &epoch).await,
        vec![(a, 0), (b, a)]
    );
    wait_archived(&stack.db().await, room, 2).await;
    let page = history(&mut bob, json!({"room": room})).await;
    assert_eq!(links(&page), vec![(a, 0), (b, a)], "from the archive");

    // The archive writer stopped: what follows is read from the stream's tail.
    stack.histories.remove(0).shutdown().await;
    stack
        .add_history_with(&[("HISTORY_ARCHIVE", "false")])
        .await;
    let c = seq_of(&alice.post_as(room, "C", "c").await);
    publish_raw(&js, room, bad_kind.to_vec()).await;
    publish_raw(&js, room, event(room, "bot", "", "empty")).await;
    let d = seq_of(&alice.post_as(room, "D", "d").await);
    assert_eq!(next_message(&mut bob).await, (room.into(), c, b));
    assert_eq!(next_message(&mut bob).await, (room.into(), d, c));
    let all = vec![(a, 0), (b, a), (c, b), (d, c)];
    assert_eq!(links(&history(&mut bob, json!({"room": room})).await), all);
    let page = history(&mut bob, json!({"room": room, "after": a, "limit": 2})).await;
    assert_eq!(
        (links(&page), page["has_more"].clone()),
        (all[1..3].to_vec(), json!(true))
    );
    let page = history(&mut bob, json!({"room": room, "after": c})).await;
    assert_eq!(
        (links(&page), page["has_more"].clone()),
        (all[3..].to_vec(), json!(false))
    );
    let page = history(&mut bob, json!({"room": room, "before": d, "limit": 1})).await;
    assert_eq!(
        (links(&page), page["has_more"].clone()),
        (all[2..3].to_vec(), json!(true))
    );
    let (mut carol2, _) = stack.login(0, "carol2").await;
    assert_eq!(
        replay(&mut carol2, room, b, &epoch).await,
        all[2..].to_vec()
    );

    // A new edge: its feed's first entry follows an invalid one, and still links to D.
    publish_raw(&js, room, bad_kind.to_vec()).await;
    let second = stack.add_edge().await;
    let (mut dave, _) = stack.login(second, "dave").await;
    dave.join(room).await;
    let e = seq_of(&alice.post_as(room, "E", "e").await);
    assert_eq!(next_message(&mut dave).await, (room.into(), e, d));
    assert_eq!(next_message(&mut bob).await, (room.into(), e, d));
}

/// Issue 15 item 4 (history part): 100 messages of 4,000 four-byte characters are 1.6 MB of
/// page: past NATS's 1 MiB payload (the page was `unavailable` to everyone) and the edge's write
/// buffer. Pages are cut by serialized size (has_more true), so `history` and `join{since:0}`
/// answer and paging walks through everything with an unbroken chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_of_huge_messages_stay_bounded_and_complete() {
    let stack = Stack::start().await;
    let js = jetstream::new(stack.nats.client().await);
    let room = "big";
    let (mut alice, hello) = stack.login(0, "alice").await;
    let epoch = hello["epoch"].as_str().unwrap().to_owned();
    alice.join(room).await;
    let body = "𝄞".repeat(4000);
    let mut seqs = Vec::new();
    for i in 0..100 {
        seqs.push(publish_raw(&js, room, event(room, "bot", &body, &format!("big-{i}"))).await);
    }
    let page = history(&mut alice, json!({"room": room, "limit": 100})).await;
    let first = links(&page);
    assert!(!first.is_empty() && first.len() < 100, "{}", first.len());
    assert_eq!(page["has_more"], true);
    assert!(page.to_string().len() < 1024 * 1024);
    // Page back to the beginning: every message once, in order, chained.
    let mut all = first.clone();
    let mut more = true;
    while more {
        let oldest = all[0].0;
        let page = history(
            &mut alice,
            json!({"room": room, "before": oldest, "limit": 100}),
        )
        .await;
        more = page["has_more"] == true;
        let mut older = links(&page);
        assert!(!older.is_empty());
        older.extend(all);
        all = older;
    }
    let got: Vec<u64> = all.iter().map(|l| l.0).collect();
    assert_eq!(got, seqs);
    for w in all.windows(2) {
        assert_eq!(w[1].1, w[0].0, "chain broken at {:?}", w[1]);
    }
    let (mut carol, _) = stack.login(0, "carol").await;
    let replayed = replay(&mut carol, room, 0, &epoch).await;
    assert_eq!(replayed, all);
}
