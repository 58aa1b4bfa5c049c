//! Issue 8: a three-node NATS cluster on loopback with the `CHAT` stream at 3 replicas, its
//! stream leader SIGKILLed again and again while clients send. Every acknowledged message is
//! stored, archived and delivered exactly once; the figures include how long sends were refused
//! after each kill (the leader failover).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_bus::subjects;
use chat_testkit::{NatsCluster, eventually, fresh_database, try_eventually};
use chat_tests::procs::Proc;
use chat_tests::{
    Received, SECRET, faults_scale as scale, live_reader, send_until_acked, wait_archived,
};
use tokio_util::sync::CancellationToken;

const ROOM: &str = "replicated";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_stream_leader_of_a_three_node_cluster_loses_and_doubles_nothing() {
    let kills = if scale() > 1 { 3 + scale() } else { 3 };
    let senders = 2 * scale();
    let mut cluster = NatsCluster::start(3).await;
    let db = fresh_database().await;
    let url = cluster.url();
    let env: HashMap<String, String> = [
        ("NATS_URL", url.as_str()),
        ("DATABASE_URL", db.as_str()),
        ("CHAT_JWT_SECRET", SECRET),
        ("CHAT_STREAM_REPLICAS", "3"),
        ("CHAT_RATE_PER_S", "100000"),
        ("CHAT_REQUEST_TIMEOUT", "2s"),
        ("HISTORY_ACK_WAIT", "2s"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let _history = Proc::start("chat-history", &env).await;
    let edge = Proc::start("chat-edge", &env).await;
    let js = async_nats::jetstream::new(cluster.client().await);
    cluster
        .wait_stream_healthy(&js, subjects::STREAM, Duration::from_secs(30))
        .await
        .expect("CHAT stream at 3 replicas");

    let received = Arc::new(Mutex::new(Received::default()));
    let reader = tokio::spawn(live_reader(
        edge.ws_url(),
        "reader".into(),
        ROOM.into(),
        received.clone(),
    ));
    eventually("the reader joined", Duration::from_secs(10), || async {
        received.lock().unwrap().joined
    })
    .await;
    let delivered = || received.lock().unwrap().messages.len();

    let stop = CancellationToken::new();
    let sending: Vec<_> = (0..senders)
        .map(|s| {
            let (url, stop) = (edge.ws_url(), stop.clone());
            tokio::spawn(async move {
                send_until_acked(
                    &url,
                    &format!("sender{s}"),
                    ROOM,
                    &format!("s{s}"),
                    stop,
                    usize::MAX,
                )
                .await
            })
        })
        .collect();

    let mut killed_at = Vec::new();
    for _ in 0..kills {
        // Each kill lands while messages flow.
        let before = delivered();
        eventually(
            "messages flow before a kill",
            Duration::from_secs(30),
            || async { delivered() >= before + 20 },
        )
        .await;
        let leader = cluster
            .wait_stream_healthy(&js, subjects::STREAM, Duration::from_secs(30))
            .await
            .expect("all replicas current before a kill");
        cluster.kill(leader).await;
        killed_at.push(Instant::now());
        // The outage itself: the leader stays dead this long while the senders go on (what the
        // failover figures measure), not a wait for something to happen.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cluster.restart(leader).await;
    }
    cluster
        .wait_stream_healthy(&js, subjects::STREAM, Duration::from_secs(30))
        .await
        .expect("the cluster re-forms");
    let before = delivered();
    eventually(
        "messages flow after the cluster re-formed",
        Duration::from_secs(30),
        || async { delivered() >= before + 20 },
    )
    .await;
    stop.cancel();
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut ack_times = Vec::new();
    let (mut duplicates, mut retries) = (0, 0);
    for s in sending {
        let a = tokio::time::timeout(Duration::from_secs(60), s)
            .await
            .expect("a sender finished")
            .unwrap();
        duplicates += a.duplicates;
        retries += a.retries;
        ack_times.extend(a.at);
        acked.extend(a.seqs);
    }
    let total = acked.len();
    let distinct_seqs: HashSet<u64> = acked.values().copied().collect();
    assert_eq!(
        distinct_seqs.len(),
        total,
        "two messages acked under one seq"
    );

    // The stream holds each acknowledged message once, under the seq its ack named.
    let mut stream = js.get_stream(subjects::STREAM).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    assert_eq!(
        state.messages as usize, total,
        "the stream holds exactly the acked messages"
    );
    for (client_id, seq) in &acked {
        let m = stream
            .direct_get(*seq)
            .await
            .expect("an acked seq is stored");
        let event: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(event["client_id"], client_id.as_str(), "seq {seq}");
    }

    // The archive: each once, under its seq.
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    wait_archived(&pool, ROOM, total as i64).await;
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT client_id, seq FROM history.messages WHERE room = $1")
            .bind(ROOM)
            .fetch_all(&pool)
            .await
            .unwrap();
    let archived: HashMap<String, u64> = rows.into_iter().map(|(c, s)| (c, s as u64)).collect();
    assert_eq!(
        archived, acked,
        "the archive holds the acked messages under their seqs"
    );

    // The live reader: every acked message once, in seq order.
    // Not a failure yet if some never arrive: the checks below say which are missing.
    let _ = try_eventually(
        "the reader has every acked message",
        Duration::from_secs(20),
        || async { delivered() >= total },
    )
    .await;
    let got = received.lock().unwrap().clone();
    reader.abort();
    let seqs: Vec<u64> = got.messages.iter().map(|m| m.0).collect();
    let unique: HashSet<u64> = seqs.iter().copied().collect();
    assert_eq!(unique.len(), seqs.len(), "a message was delivered twice");
    let missing: Vec<u64> = {
        let mut m: Vec<u64> = distinct_seqs.difference(&unique).copied().collect();
        m.sort_unstable();
        m
    };
    assert!(
        missing.is_empty(),
        "{} acked messages never reached the live reader, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(unique, distinct_seqs, "the reader got only acked messages");
    if got.reconnects == 0 {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "delivered out of order"
        );
        assert!(
            got.messages.windows(2).all(|w| w[1].1 == w[0].0),
            "prev_seq does not chain"
        );
    }

    // Failover: the longest pause between two acknowledgements (of any sender) across each kill
    // (ending before the next one): how long sends were refused while a new leader was elected.
    ack_times.sort_unstable();
    let failover_ms: Vec<u128> = killed_at
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let next = killed_at.get(i + 1);
            ack_times
                .windows(2)
                .filter(|w| w[1] > *k && next.is_none_or(|n| w[1] < *n))
                .map(|w| w[1].duration_since(w[0]).as_millis())
                .max()
                .unwrap_or(0)
        })
        .collect();
    println!(
        "FIGURES 3-node cluster, CHAT at R3, stream leader SIGKILLed {kills} times under {senders} senders: \
         sent {total}, acked {total}, archived {}, delivered {}, lost 0, duplicated 0 \
         ({duplicates} retries answered duplicate:true, {retries} sends retried, reader reconnects {})",
        archived.len(),
        seqs.len(),
        got.reconnects
    );
    println!(
        "FIGURES leader failover (longest pause in acks across each kill), ms: {failover_ms:?}"
    );
}
