//! Benchmark of chat-notify, end to end through the edge (ignored by default):
//!
//! ```text
//! cargo nextest run -p chat-tests --run-ignored only --no-capture -E 'test(/^notify_bench::/)'
//! ```
//!
//! `USERS` receivers sit in one room, each with a live session; a sender mentions them in turn,
//! so every message makes one notification and `USERS - 1`… `USERS` unread frames. It prints
//! the delay from the sender's `ack` to the mentioned user's `notification` frame at a paced
//! load, then notifications/s when the sender pipelines as fast as it can.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_bus::event::RoomEvent;
use chat_bus::subjects;
use chat_proto::{RoomId, UserId};
use chat_testkit::{WsClient, WsError};
use chat_tests::{Stack, eventually};
use futures::StreamExt;
use serde_json::json;

const USERS: usize = 20;
const PACED_RATE: u64 = 200;
const PACED_MESSAGES: usize = 1000;
const BURST_MESSAGES: usize = 5000;
const DIRECT_MESSAGES: usize = 20_000;

type Seen = Arc<Mutex<HashMap<u64, Instant>>>;

/// Records when each notification (by seq) reached a receiver.
async fn receive(mut c: WsClient, seen: Seen, stop: tokio_util::sync::CancellationToken) {
    loop {
        let f = tokio::select! {
            _ = stop.cancelled() => return,
            f = c.recv_within(Duration::from_secs(60)) => f,
        };
        match f {
            Ok(f) if f["type"] == "notification" => {
                let seq = f["seq"].as_u64().unwrap();
                seen.lock().unwrap().insert(seq, Instant::now());
            }
            Ok(_) => {}
            Err(WsError::Timeout) => return,
            Err(e) => panic!("receiver failed: {e:?}"),
        }
    }
}

/// Sends `n` messages (`rate` per second, or pipelined when 0); returns the ack time per seq.
async fn sender(c: &mut WsClient, n: usize, rate: u64, tag: &str) -> HashMap<u64, Instant> {
    let mut acks = HashMap::new();
    let period = Duration::from_micros(1_000_000u64.checked_div(rate).unwrap_or(0));
    let mut next = Instant::now();
    let mut sent = 0;
    while acks.len() < n {
        if sent < n && Instant::now() >= next {
            let body = format!("@u{} {tag} message {sent}", sent % USERS);
            c.send(json!({"type": "send", "room": "bench", "body": body, "client_id": format!("{tag}-{sent}")}))
                .await;
            sent += 1;
            next += period;
            continue;
        }
        let wait = if sent < n {
            next.saturating_duration_since(Instant::now())
        } else {
            Duration::from_secs(30)
        };
        match c.recv_within(wait.max(Duration::from_micros(100))).await {
            Ok(f) if f["type"] == "ack" => {
                acks.insert(f["seq"].as_u64().unwrap(), Instant::now());
            }
            Ok(f) => assert_ne!(f["type"], "error", "{f}"),
            Err(WsError::Timeout) => {}
            Err(e) => panic!("sender failed: {e:?}"),
        }
    }
    acks
}

async fn wait_for(seen: &Seen, seqs: &HashMap<u64, Instant>) -> Instant {
    // The instant returned is when the last one was seen, whenever this notices.
    eventually(
        "every notification arrived",
        Duration::from_secs(120),
        async || {
            let s = seen.lock().unwrap();
            seqs.keys()
                .all(|k| s.contains_key(k))
                .then(|| seqs.keys().map(|k| s[k]).max().unwrap())
        },
    )
    .await
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run with --run-ignored only --no-capture"]
async fn notify_throughput_and_ack_to_notification_delay() {
    let stack = Stack::start_with(&[("CHAT_RATE_PER_S", "1000000")]).await;
    let seen: Seen = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut receivers = Vec::new();
    for i in 0..USERS {
        let (mut c, _) = stack.login(0, &format!("u{i}")).await;
        c.join("bench").await;
        receivers.push(tokio::spawn(receive(c, seen.clone(), stop.clone())));
    }
    let (mut alice, _) = stack.login(0, "alice").await;
    alice.join("bench").await;

    // Paced: the delay at a stated load.
    let acks = sender(&mut alice, PACED_MESSAGES, PACED_RATE, "paced").await;
    wait_for(&seen, &acks).await;
    let mut delays: Vec<Duration> = {
        let s = seen.lock().unwrap();
        acks.iter()
            .map(|(seq, at)| s[seq].saturating_duration_since(*at))
            .collect()
    };
    delays.sort();
    println!(
        "paced {PACED_RATE} msg/s, {USERS} members, {PACED_MESSAGES} mentions: ack -> notification p50 {:?} p90 {:?} p99 {:?} max {:?}",
        percentile(&delays, 0.5),
        percentile(&delays, 0.9),
        percentile(&delays, 0.99),
        delays.last().unwrap()
    );

    // Burst: notifications per second with the sender pipelining.
    let started = Instant::now();
    let acks = sender(&mut alice, BURST_MESSAGES, 0, "burst").await;
    let acked = started.elapsed();
    let last = wait_for(&seen, &acks).await;
    let total = last.duration_since(started);
    println!(
        "burst {BURST_MESSAGES} mentions, {USERS} members: sent+acked in {acked:?} ({:.0} msg/s); all notifications delivered in {total:?}: {:.0} notifications/s (and {:.0} unread frames/s)",
        BURST_MESSAGES as f64 / acked.as_secs_f64(),
        BURST_MESSAGES as f64 / total.as_secs_f64(),
        (BURST_MESSAGES * (USERS - 1)) as f64 / total.as_secs_f64(),
    );
    // The WebSocket receivers leave: at the next rate their sessions would be slow consumers.
    stop.cancel();
    for r in receivers {
        let _ = r.await;
    }
    drop(alice);

    // Direct: events published straight into the stream (as a bot does), so that the edge and
    // the sender's socket are out of the way and chat-notify's own rate shows.
    let client = stack.nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let mut subs = Vec::new();
    for i in 0..USERS {
        let user = UserId::new(format!("u{i}")).unwrap();
        subs.push(
            client
                .subscribe(subjects::user_notify(&user))
                .await
                .unwrap(),
        );
    }
    let received = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    for mut sub in subs {
        let (received, done) = (received.clone(), done.clone());
        tokio::spawn(async move {
            while sub.next().await.is_some() {
                if received.fetch_add(1, Ordering::SeqCst) + 1 == DIRECT_MESSAGES {
                    done.notify_one();
                }
            }
        });
    }
    client.flush().await.unwrap();
    let room = RoomId::new("bench").unwrap();
    let bot = UserId::new("bot").unwrap();
    let started = Instant::now();
    let mut pending = Vec::new();
    for i in 0..DIRECT_MESSAGES {
        let event = RoomEvent::message(
            room.clone(),
            bot.clone(),
            format!("@u{} direct {i}", i % USERS),
            format!("direct-{i}"),
            chat_bus::now_ms(),
        );
        let payload = serde_json::to_vec(&event).unwrap();
        pending.push(
            js.publish(subjects::room_msg(&room), payload.into())
                .await
                .unwrap(),
        );
        if pending.len() == 256 {
            for p in pending.drain(..) {
                p.await.unwrap();
            }
        }
    }
    for p in pending.drain(..) {
        p.await.unwrap();
    }
    let published = started.elapsed();
    tokio::time::timeout(Duration::from_secs(300), done.notified())
        .await
        .expect("all direct notifications");
    let total = started.elapsed();
    let metrics = http_get(stack.notifies[0].admin, "/metrics").await;
    let sample = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let batches = sample("chat_notify_batch_size_count");
    println!(
        "chat-notify over the whole run: {batches} batches, {:.0} events per batch, {:.2} ms per batch",
        sample("chat_notify_batch_size_sum") / batches,
        1000.0 * sample("chat_notify_batch_seconds_sum") / batches,
    );
    println!(
        "direct {DIRECT_MESSAGES} events into the stream ({:.0} events/s published), {USERS} members: all {DIRECT_MESSAGES} notifications on NATS in {total:?}: {:.0} notifications/s",
        DIRECT_MESSAGES as f64 / published.as_secs_f64(),
        DIRECT_MESSAGES as f64 / total.as_secs_f64(),
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
