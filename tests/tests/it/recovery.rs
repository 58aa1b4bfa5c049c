//! Issue 3: history that never has a hole — recovery for any gap length, with the archive
//! writer stopped, and with PostgreSQL down.

use chat_testkit::PgCluster;
use chat_tests::{Stack, wait_archived};
use serde_json::json;

const GAP: usize = 2000;
const FAST: &[(&str, &str)] = &[
    ("CHAT_RATE_PER_S", "100000"),
    ("CHAT_OUTBOUND_QUEUE", "8192"),
];

/// bob saw `seen`, went offline for GAP messages, comes back with join{since}: gets exactly
/// those, in order, then live ones without duplicates.
async fn offline_gap_is_recovered(stack: &Stack, room: &str) {
    let (mut alice, hello) = stack.login(0, "alice").await;
    let epoch = hello["epoch"].as_str().unwrap().to_owned();
    alice.join(room).await;
    let (mut bob, _) = stack.login(0, "bob").await;
    bob.join(room).await;
    let seen = alice.post_as(room, "seen", "seen").await["seq"]
        .as_u64()
        .unwrap();
    bob.close().await;
    let missed = alice.post_many(room, "gap", GAP).await;

    let (mut bob, _) = stack.login(0, "bob").await;
    let (got, joined) = bob.join_since(room, seen, &epoch).await;
    assert_eq!(joined["recovered"], true);
    assert_eq!(got.len(), GAP, "replayed {} of {GAP}", got.len());
    assert_eq!(got, missed, "replay is the missed messages in order");
    let live = alice.post_as(room, "live", "live").await["seq"]
        .as_u64()
        .unwrap();
    let m = bob.recv_type("message").await.unwrap();
    assert_eq!(
        m["seq"].as_u64().unwrap(),
        live,
        "first live message after the replay, no duplicate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_gap_is_recovered_exactly() {
    let stack = Stack::start_with(FAST).await;
    offline_gap_is_recovered(&stack, "gap").await;
    wait_archived(&stack.db().await, "gap", GAP as i64 + 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_is_complete_with_the_archive_writer_stopped() {
    let mut stack = Stack::start_with(FAST).await;
    // Replace the history process by one that answers requests but does not archive.
    stack.histories.remove(0).shutdown().await;
    stack
        .add_history_with(&[("HISTORY_ARCHIVE", "false")])
        .await;
    offline_gap_is_recovered(&stack, "nowriter").await;
    // Nothing is archived until a writer runs again; then everything is, once.
    let (n,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM history.messages WHERE room = 'nowriter'")
            .fetch_one(&stack.db().await)
            .await
            .unwrap();
    assert_eq!(n, 0);
    stack.add_history().await;
    wait_archived(&stack.db().await, "nowriter", GAP as i64 + 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_during_sends_loses_and_doubles_nothing() {
    let pg = PgCluster::start().await;
    let stack = Stack::start_on(FAST, pg.url()).await;
    let room = "outage";
    let (mut alice, hello) = stack.login(0, "alice").await;
    let epoch = hello["epoch"].as_str().unwrap().to_owned();
    alice.join(room).await;
    let (mut carol, _) = stack.login(0, "carol").await;
    carol.join(room).await;
    let (mut bob, _) = stack.login(0, "bob").await;
    bob.join(room).await;
    let seen = alice.post_as(room, "seen", "seen").await["seq"]
        .as_u64()
        .unwrap();
    bob.close().await;

    pg.stop_server().await;
    // Connected sessions keep sending and receiving.
    let missed = alice.post_many(room, "down", GAP).await;
    let m = carol
        .recv_until(|f| f["type"] == "message" && f["client_id"] == format!("down-{}", GAP - 1))
        .await;
    assert!(m.is_ok());
    // History is still complete, read from the stream.
    let page = carol
        .request(
            json!({"type": "history", "room": room, "after": seen, "limit": 200}),
            "h",
        )
        .await;
    assert_eq!(page["type"], "history", "{page}");
    let got: Vec<u64> = chat_tests::page_seqs(&page);
    assert_eq!(got, missed[..200]);
    assert_eq!(page["has_more"], true);
    assert_eq!(page["messages"][0]["prev_seq"].as_u64().unwrap(), seen);

    pg.start_server().await;
    let (mut bob, _) = stack.login(0, "bob").await;
    let (got, joined) = bob.join_since(room, seen, &epoch).await;
    assert_eq!(joined["recovered"], true);
    assert_eq!(got, missed);
    wait_archived(&stack.db().await, room, GAP as i64 + 1).await;
}

/// Entries the archive can never store (not decodable; a body with NUL, which PostgreSQL would
/// refuse and CONTRACT v1.1 makes an invalid event) go to the dead-letter stream with their
/// reason; they do not block their room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_are_dead_lettered_and_do_not_block_the_room() {
    use futures::StreamExt;
    let stack =
        Stack::start_with(&[("HISTORY_MAX_DELIVER", "2"), ("HISTORY_ACK_WAIT", "1s")]).await;
    let (mut alice, _) = stack.login(0, "alice").await;
    alice.join("poison").await;
    let js = async_nats::jetstream::new(stack.nats.client().await);
    // A bot publishing garbage, and one publishing a body PostgreSQL cannot store (NUL).
    js.publish("chat.room.poison.msg", "not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let nul = json!({"v":1,"kind":"message","room":"poison","from":"bot","body":"a\u{0}b","client_id":"nul","ts":1});
    js.publish("chat.room.poison.msg", nul.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    alice.post_as("poison", "after the poison", "ok1").await;
    wait_archived(&stack.db().await, "poison", 1).await;

    let dlq = js.get_stream("CHAT_DLQ").await.unwrap();
    let consumer = dlq
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut msgs = consumer.messages().await.unwrap();
    let mut reasons = Vec::new();
    while reasons.len() < 2 {
        let m = tokio::time::timeout(std::time::Duration::from_secs(20), msgs.next())
            .await
            .expect("dead letters arrive")
            .unwrap()
            .unwrap();
        let h = m.headers.clone().unwrap();
        reasons.push(h.get("Chat-Dlq-Reason").unwrap().as_str().to_owned());
        assert_eq!(
            h.get("Chat-Dlq-Subject").unwrap().as_str(),
            "chat.room.poison.msg"
        );
    }
    assert!(
        reasons.iter().any(|r| r.contains("undecodable")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r == "control character in body"),
        "{reasons:?}"
    );
}

/// Core NATS delivers the live feed at most once: events the edge never heard (here, the stream's
/// republish switched off for two sends, as a reconnect to another server would lose them) show
/// up as a `prev_seq` above the last seq seen, and the edge fills the gap from chat-history, so a
/// connected session still gets every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_the_live_feed_is_filled_before_the_next_event() {
    let stack = Stack::start().await;
    let (mut alice, _) = stack.login(0, "alice").await;
    let (mut bob, _) = stack.login(0, "bob").await;
    alice.join("gappy").await;
    bob.join("gappy").await;
    let first = alice.post_as("gappy", "one", "one").await["seq"]
        .as_u64()
        .unwrap();
    assert_eq!(bob.recv_type("message").await.unwrap()["seq"], first);

    let js = async_nats::jetstream::new(stack.nats.client().await);
    let mut stream = js.get_stream("CHAT").await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    let republish = config.republish.clone();
    assert!(republish.is_some());
    js.update_stream(async_nats::jetstream::stream::Config {
        republish: None,
        ..config.clone()
    })
    .await
    .unwrap();
    let unheard = [
        alice.post_as("gappy", "two", "two").await["seq"]
            .as_u64()
            .unwrap(),
        alice.post_as("gappy", "three", "three").await["seq"]
            .as_u64()
            .unwrap(),
    ];
    js.update_stream(config).await.unwrap();
    let next = alice.post_as("gappy", "four", "four").await["seq"]
        .as_u64()
        .unwrap();

    let mut got = Vec::new();
    for _ in 0..3 {
        let m = bob.recv_type("message").await.unwrap();
        got.push((
            m["seq"].as_u64().unwrap(),
            m["body"].as_str().unwrap().to_owned(),
        ));
    }
    assert_eq!(
        got,
        vec![
            (unheard[0], "two".to_owned()),
            (unheard[1], "three".to_owned()),
            (next, "four".to_owned())
        ],
        "the missed events, in order, before the next one"
    );
    // And nothing twice.
    while let Ok(f) = bob.recv_within(std::time::Duration::from_millis(300)).await {
        assert_ne!(f["type"], "message", "delivered twice: {f}");
    }
}
