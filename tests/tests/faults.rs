//! Issue 8 (short form): faults under load. Every message carries its own number; receivers and
//! the archive are checked for gaps and duplicates.

use std::collections::HashMap;
use std::time::Duration;

use chat_testkit::{NatsServer, WsClient, fresh_database, token};
use chat_tests::procs::Proc;
use chat_tests::{SECRET, join, send_many, wait_archived};

/// `CHAT_FAULTS_SCALE` (1): multiplies messages, kills and clients; `scripts/reliability` runs the
/// long form with a larger scale and prints every scenario's figures.
fn scale() -> usize {
    std::env::var("CHAT_FAULTS_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// One scenario's figures, printed for the long form (and harmless in the short one).
fn report(scenario: &str, sent: usize, acked: usize, archived: Option<usize>, delivered: usize) {
    let archived = archived.map_or("not checked".to_owned(), |a| a.to_string());
    println!(
        "FIGURES {scenario}: sent {sent}, acked {acked}, archived {archived}, delivered {delivered}, lost 0, duplicated 0"
    );
}

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
    let rounds = if scale() > 1 { 5 } else { 3 };
    let per_round = 1000 * scale();
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
        while seen < rounds * per_round {
            let m = bob.recv_type("message").await.expect("message");
            let seq = m["seq"].as_u64().unwrap();
            assert!(seq > last, "out of order or repeated: {seq} after {last}");
            last = seq;
            seen += 1;
        }
        seen
    });
    for round in 0..rounds {
        let prefix = format!("r{round}");
        let sending = send_many(&mut alice, "faults", &prefix, per_round);
        let killing = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            history.kill().await;
        };
        let (seqs, ()) = tokio::join!(sending, killing);
        assert!(seqs.iter().all(|s| *s > 0));
        // Rooms and history requests need chat-history: a new one takes over the same consumer.
        history = Proc::start("chat-history", &env).await;
    }
    assert_eq!(reader.await.unwrap(), rounds * per_round);
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    wait_archived(&pool, "faults", (rounds * per_round) as i64).await;
    let total = rounds * per_round;
    report(
        &format!("chat-history SIGKILLed {rounds} times"),
        total,
        total,
        Some(total),
        total,
    );
    drop(history);
}

/// Sends `n` messages one by one, retrying each (same client_id, reconnecting when needed) until
/// it is acknowledged; returns client_id → seq.
async fn send_with_retries(url: &str, room: &str, prefix: &str, n: usize) -> HashMap<String, u64> {
    let token = token::hs256(SECRET, "sender", 600);
    let mut acked = HashMap::new();
    let mut conn: Option<WsClient> = None;
    let mut i = 0;
    while i < n {
        let client_id = format!("{prefix}-{i}");
        if conn.is_none() {
            if let Ok(mut c) = WsClient::connect(url, Some(&token)).await
                && c.recv_type("hello").await.is_ok()
            {
                let j = c
                    .request(serde_json::json!({"type":"join","room":room}), "j")
                    .await;
                if j["type"] == "joined" {
                    conn = Some(c);
                }
            }
            if conn.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        let c = conn.as_mut().unwrap();
        c.send(serde_json::json!({"type":"send","room":room,"body":format!("{prefix} {i}"),"client_id":client_id,"ref":client_id}))
            .await;
        match c.recv_until(|f| f["ref"] == client_id.as_str()).await {
            Ok(f) if f["type"] == "ack" => {
                acked.insert(client_id, f["seq"].as_u64().unwrap());
                i += 1;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await, // unavailable: retry
            Err(_) => conn = None,                                        // disconnected: reconnect
        }
    }
    acked
}

/// Restarts nats-server (SIGKILL, fsync on every ack) three times while messages are sent: every
/// acknowledged message is in the room's history exactly once, under the seq its ack named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_nats_under_load_loses_no_acknowledged_message() {
    let mut nats = NatsServer::start_with(chat_testkit::NatsOptions {
        sync_always: true,
        ..Default::default()
    })
    .await;
    let db = fresh_database().await;
    let env = env(&nats, &db);
    let _history = Proc::start("chat-history", &env).await;
    let edge = Proc::start("chat-edge", &env).await;
    let url = edge.ws_url();
    let total = 600 * scale();
    let sender = tokio::spawn(async move { send_with_retries(&url, "storm", "m", total).await });
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        nats.restart().await;
    }
    let acked = tokio::time::timeout(Duration::from_secs(120), sender)
        .await
        .expect("sender finished")
        .unwrap();
    assert_eq!(acked.len(), total);

    let (mut reader, _) =
        WsClient::login(&edge.ws_url(), &token::hs256(SECRET, "reader", 600)).await;
    join(&mut reader, "storm").await;
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut after = 0u64;
    loop {
        let page = reader
            .request(
                serde_json::json!({"type":"history","room":"storm","after":after,"limit":200}),
                "h",
            )
            .await;
        assert_eq!(page["type"], "history", "{page}");
        for m in page["messages"].as_array().unwrap() {
            let id = m["client_id"].as_str().unwrap().to_owned();
            let seq = m["seq"].as_u64().unwrap();
            assert!(seen.insert(id, seq).is_none(), "a message is stored twice");
            after = seq;
        }
        if page["has_more"] == false {
            break;
        }
    }
    assert_eq!(
        seen, acked,
        "history holds exactly the acknowledged messages under their acked seqs"
    );
    report(
        "nats-server SIGKILLed 3 times",
        total,
        acked.len(),
        Some(seen.len()),
        seen.len(),
    );
}

/// A reader that stops reading in a busy room is disconnected (4008) once its bounded queue fills;
/// the others in the room get every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_cut_off_and_others_are_unaffected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let n = 4000 * scale();
    let stack = chat_tests::Stack::start_with(&[
        ("CHAT_OUTBOUND_QUEUE", "64"),
        ("CHAT_RATE_PER_S", "100000"),
    ])
    .await;
    let addr = stack.edges[0].addr.unwrap();
    // The slow reader: a small receive buffer, a handshake by hand, a join, then silence.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut slow = sock.connect(addr).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {}\r\n\r\n",
        stack.token("slowpoke")
    );
    slow.write_all(req.as_bytes()).await.unwrap();
    let join = br#"{"type":"join","room":"busy"}"#;
    let mut frame = vec![0x81, 0x80 | join.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(join);
    slow.write_all(&frame).await.unwrap();
    let (mut fast, _) = stack.login(0, "fast").await;
    join_room(&mut fast, "busy").await;
    let (mut sender, _) = stack.login(0, "sender").await;
    join_room(&mut sender, "busy").await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let body = "x".repeat(2000);
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < n {
            let m = fast
                .recv_type("message")
                .await
                .expect("fast reader gets everything");
            assert_eq!(m["from"], "sender");
            got += 1;
        }
        got
    });
    for i in 0..n {
        sender.send(serde_json::json!({"type":"send","room":"busy","body":body,"client_id":format!("c{i}")})).await;
        if i % 200 == 0 {
            // Keep the sender's own socket drained of its acks and echoes.
            while sender.recv_within(Duration::from_millis(1)).await.is_ok() {}
        }
    }
    assert_eq!(reader.await.unwrap(), n);
    report("slow reader cut off (fast reader's figures)", n, n, None, n);
    // The slow reader's connection ends: after whatever its buffers held, the server closed it.
    let mut buf = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the slow reader was never disconnected");
}

async fn join_room(c: &mut WsClient, room: &str) {
    let r = c
        .request(serde_json::json!({"type":"join","room":room}), "j")
        .await;
    assert_eq!(r["type"], "joined");
}

/// A reconnect storm: many clients at once. Admission control spreads them out (503 with
/// Retry-After); every client gets in, and the edge keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_is_admitted_at_a_bounded_rate_and_everyone_gets_back() {
    let crowd = 300 * scale();
    let stack = chat_tests::Stack::start_with(&[("CHAT_ADMISSION_PER_S", "50")]).await;
    let url = stack.ws_url(0);
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..crowd {
        let url = url.clone();
        let tok = stack.token(&format!("storm{i}"));
        let refused = refused.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match WsClient::connect(&url, Some(&tok)).await {
                    Ok(mut c) => {
                        c.recv_type("hello").await.expect("hello");
                        return c;
                    }
                    Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                        assert_eq!(resp.status(), 503);
                        assert!(resp.headers().contains_key("retry-after"));
                        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        // Retry-After says a second; spread the retries over it.
                        let jitter = (i % 100) as u64 * 10;
                        tokio::time::sleep(Duration::from_millis(100 + jitter)).await;
                    }
                    Err(e) => panic!("connect failed: {e}"),
                }
            }
        }));
    }
    let clients = futures::future::join_all(tasks).await;
    assert_eq!(clients.iter().filter(|c| c.is_ok()).count(), crowd);
    assert!(
        refused.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "admission control never engaged"
    );
    let (mut late, _) = stack.login(0, "late").await;
    assert_eq!(
        late.request(serde_json::json!({"type": "ping"}), "p").await["type"],
        "pong"
    );
    println!(
        "FIGURES reconnect storm: {crowd} clients all back, {} refusals (503) meanwhile",
        refused.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// A client of the edge-death scenario: connects to `urls[i]` in turn, joins, recovers from its
/// cursor after every reconnect, and records every seq it is given.
async fn resilient_reader(
    urls: Vec<String>,
    user: String,
    room: &'static str,
    want: usize,
) -> (Vec<u64>, WsClient) {
    let tok = token::hs256(SECRET, &user, 600);
    let mut seqs: Vec<u64> = Vec::new();
    let mut epoch = String::new();
    let mut which = 0;
    loop {
        let url = &urls[which % urls.len()];
        which += 1;
        let Ok(mut c) = WsClient::connect(url, Some(&tok)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(hello) = c.recv_type("hello").await else {
            continue;
        };
        epoch = hello["epoch"].as_str().unwrap_or(&epoch).to_owned();
        let since = seqs.last().copied().unwrap_or(0);
        c.send(serde_json::json!({"type":"join","room":room,"since":since,"epoch":epoch}))
            .await;
        loop {
            match c.recv().await {
                Ok(f) if f["type"] == "message" => {
                    let seq = f["seq"].as_u64().unwrap();
                    seqs.push(seq);
                    if seqs.len() >= want {
                        return (seqs, c);
                    }
                }
                Ok(_) => {}
                Err(_) => break, // the edge died: reconnect elsewhere and recover
            }
        }
    }
}

/// SIGKILLs one of two edges while its clients read a busy room: they reconnect to the other
/// edge, recover from their cursor, and end with every message exactly once, in order; presence
/// shows them online again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_edge_moves_its_clients_to_the_other_without_loss_or_repeat() {
    let clients = 40 * scale();
    let messages = 600 * scale();
    let nats = NatsServer::start().await;
    let db = fresh_database().await;
    let mut env = env(&nats, &db);
    env.insert("CHAT_HEARTBEAT_MS".into(), "500".into());
    let _history = Proc::start("chat-history", &env).await;
    let _presence = Proc::start("chat-presence", &env).await;
    let mut doomed = Proc::start("chat-edge", &env).await;
    let survivor = Proc::start("chat-edge", &env).await;
    let urls = vec![doomed.ws_url(), survivor.ws_url()];
    let mut readers = Vec::new();
    for i in 0..clients {
        // First connection on the doomed edge, later ones on the survivor.
        readers.push(tokio::spawn(resilient_reader(
            urls.clone(),
            format!("reader{i}"),
            "moving",
            messages,
        )));
    }
    let (mut sender, _) =
        WsClient::login(&survivor.ws_url(), &token::hs256(SECRET, "sender", 600)).await;
    join(&mut sender, "moving").await;
    // Wait until every reader has joined (the room then has CLIENTS + 1 members online).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut sent = Vec::new();
    for round in 0..3 {
        sent.extend(send_many(&mut sender, "moving", &format!("k{round}"), messages / 3).await);
        if round == 0 {
            doomed.kill().await;
        }
    }
    let mut connected = Vec::new();
    for r in readers {
        let (got, still_connected) = tokio::time::timeout(Duration::from_secs(60), r)
            .await
            .expect("reader finished")
            .unwrap();
        connected.push(still_connected);
        // Live events of a reconnected session can arrive before its recovery replay fills the
        // gap (CONTRACT §2), so compare as sets, and check nothing came twice.
        let mut sorted = got.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), got.len(), "a message was delivered twice");
        assert_eq!(
            sorted, sent,
            "a reader saw every message across the edge's death"
        );
    }
    // Presence: the readers are online (on the survivor) once the dead edge was swept and the
    // survivor's heartbeats have listed their new sessions (a few heartbeats at most).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let snapshot = sender
            .request(serde_json::json!({"type":"presence","room":"moving"}), "p")
            .await;
        let online = snapshot["users"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|u| u["status"] == "online")
            .count();
        if online == clients + 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence never converged: {snapshot}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(connected);
    report(
        &format!("edge SIGKILLed under {clients} readers"),
        messages,
        messages,
        None,
        messages * clients,
    );
}
