//! Issue 15 items 2, 3, 4 (history) and 10 (history): stored entries that are not events
//! (CONTRACT §3) are dead-lettered and skipped everywhere — archive, notifications, the live
//! feed, history pages and replays, and the `prev_seq` chains — and history pages stay bounded.

use std::time::Duration;

use async_nats::jetstream;
use chat_proto::NotificationKind;
use chat_tests::procs::http_get;
use chat_tests::{Stack, join, notify_state, send, wait_archived};
use serde_json::json;

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
    join(&mut alice, "lobby").await;

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
        send(
            &mut alice,
            "lobby",
            &format!("after {i}"),
            &format!("ok-{i}"),
        )
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let letters = loop {
        let l = dead_letters(&js).await;
        if l.len() >= bad.len() || tokio::time::Instant::now() > deadline {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut letters = letters;
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
    let later = send(&mut carol, "secret1", "@bob real", "real-1").await;
    let later = later["seq"].as_u64().unwrap();
    let nats = stack.nats.client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let state = loop {
        let s = notify_state(&nats, "bob", &["secret1"]).await;
        let mentions = s
            .notifications
            .iter()
            .filter(|n| n.kind == NotificationKind::Mention);
        if mentions.count() > 0 || tokio::time::Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let seqs: Vec<u64> = state
        .notifications
        .iter()
        .filter(|n| n.kind == NotificationKind::Mention)
        .map(|n| n.seq)
        .collect();
    assert_eq!(seqs, vec![later], "{state:?}");
    assert_eq!(state.rooms[0].unread, 1, "{state:?}");
}
