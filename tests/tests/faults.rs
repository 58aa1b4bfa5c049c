//! Issue 8 (short form): faults under load. Every message carries its own number; receivers and
//! the archive are checked for gaps and duplicates.

use std::collections::HashMap;
use std::time::Duration;

use chat_testkit::{NatsServer, WsClient, fresh_database, token};
use chat_tests::procs::Proc;
use chat_tests::{SECRET, join, send_many, wait_archived};

fn env(nats: &NatsServer, db: &str) -> HashMap<String, String> {
    [
        ("NATS_URL", nats.url.as_str()),
        ("DATABASE_URL", db),
        ("CHAT_JWT_SECRET", SECRET),
        ("CHAT_RATE_PER_S", "100000"),
        ("CHAT_OUTBOUND_QUEUE", "16384"),
        ("HISTORY_BATCH_MAX", "200"),
        ("HISTORY_ACK_WAIT", "2s"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// SIGKILLs chat-history repeatedly while thousands of messages are sent: every acknowledged
/// message is archived exactly once and delivered once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_chat_history_repeatedly_loses_and_doubles_nothing() {
    const ROUNDS: usize = 3;
    const PER_ROUND: usize = 1000;
    let nats = NatsServer::start().await;
    let db = fresh_database().await;
    let env = env(&nats, &db);
    let mut history = Proc::start("chat-history", &env).await;
    let edge = Proc::start("chat-edge", &env).await;
    let (mut alice, _) = WsClient::login(&edge.ws_url(), &token::hs256(SECRET, "alice", 600)).await;
    let (mut bob, _) = WsClient::login(&edge.ws_url(), &token::hs256(SECRET, "bob", 600)).await;
    join(&mut alice, "faults").await;
    join(&mut bob, "faults").await;

    let reader = tokio::spawn(async move {
        let mut last = 0u64;
        let mut seen = 0usize;
        while seen < ROUNDS * PER_ROUND {
            let m = bob.recv_type("message").await.expect("message");
            let seq = m["seq"].as_u64().unwrap();
            assert!(seq > last, "out of order or repeated: {seq} after {last}");
            last = seq;
            seen += 1;
        }
        seen
    });
    for round in 0..ROUNDS {
        let prefix = format!("r{round}");
        let sending = send_many(&mut alice, "faults", &prefix, PER_ROUND);
        let killing = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            history.kill().await;
        };
        let (seqs, ()) = tokio::join!(sending, killing);
        assert!(seqs.iter().all(|s| *s > 0));
        // Rooms and history requests need chat-history: a new one takes over the same consumer.
        history = Proc::start("chat-history", &env).await;
    }
    assert_eq!(reader.await.unwrap(), ROUNDS * PER_ROUND);
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    wait_archived(&pool, "faults", (ROUNDS * PER_ROUND) as i64).await;
    drop(history);
}
