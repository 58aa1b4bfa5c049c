//! presence-bench: how many status changes per second chat-presence handles, and the delay from a
//! session's close to the `offline` frame a room-mate receives, on a whole stack in this process
//! (nats-server, PostgreSQL, chat-history, one chat-edge, N chat-presence instances).
//!
//! ```sh
//! export CHAT_TEST_DATABASE_URL=$(scripts/pg-temp /tmp/pg-bench)
//! cargo run -p chat-tests --example presence-bench -- [users=200] [changes_per_user=20] \
//!     [presence_instances=2] [background_changes_per_s=200] [probes=50]
//! ```
//!
//! Phase 1 (throughput): every user, each in a room of 20, flips between `away` and `busy` as fast
//! as it can. The rate is the number of status changes chat-presence handled (each a
//! compare-and-set on the user's record, `chat_presence_events_total{kind="status"}`) divided by the
//! time until the last was handled. Flips of one user that race each other may collapse (the
//! effective status does not change between them), so fewer are announced than handled.
//! Phase 2 (latency): while a background load of status changes runs, probe users join a room
//! with a watcher, then close; the delay is from the close to the watcher's `offline` frame.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chat_bus::subjects;
use chat_proto::UserId;
use chat_testkit::WsClient;
use chat_tests::Stack;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// A client whose frames are read (and counted) by a task, and which sends what it is told to.
struct Pumped {
    tx: mpsc::Sender<Option<Value>>,
}

impl Pumped {
    fn new(mut c: WsClient, frames: Arc<AtomicU64>) -> Pumped {
        let (tx, mut rx) = mpsc::channel::<Option<Value>>(1024);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    cmd = rx.recv() => match cmd {
                        Some(Some(frame)) => c.send(frame).await,
                        _ => {
                            c.close().await;
                            return;
                        }
                    },
                    f = c.recv_within(Duration::from_secs(3600)) => match f {
                        Ok(f) if f["type"] == "presence" => {
                            frames.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            eprintln!("a bench client lost its connection: {e:?}");
                            return;
                        }
                    }
                }
            }
        });
        Pumped { tx }
    }

    async fn send(&self, frame: Value) {
        let _ = self.tx.send(Some(frame)).await;
    }
}

fn arg(n: usize, default: usize) -> usize {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let users = arg(1, 200);
    let per_user = arg(2, 20);
    let instances = arg(3, 2).max(1);
    let background = arg(4, 200);
    let probes = arg(5, 50);
    let mut stack = Stack::start_with(&[
        ("CHAT_RATE_PER_S", "1000000"),
        ("CHAT_HEARTBEAT_MS", "5000"),
    ])
    .await;
    for _ in 1..instances {
        stack.add_presence().await;
    }
    let nats = stack.nats.client().await;

    // Count presence.user.<user> events of every user.
    let events = Arc::new(AtomicU64::new(0));
    let mut subs = Vec::new();
    for i in 0..users {
        let user = UserId::new(format!("u{i}")).unwrap();
        subs.push(
            nats.subscribe(subjects::presence_user(&user))
                .await
                .unwrap(),
        );
    }
    nats.flush().await.unwrap();
    {
        let events = events.clone();
        tokio::spawn(async move {
            let mut all = futures::stream::select_all(subs);
            while all.next().await.is_some() {
                events.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    let frames = Arc::new(AtomicU64::new(0));
    let url = stack.ws_url(0);
    let logins = (0..users).map(|i| {
        let url = url.clone();
        let token = stack.token(&format!("u{i}"));
        let frames = frames.clone();
        async move {
            let (mut c, _) = WsClient::login(&url, &token).await;
            c.join(&format!("room{}", i / 20)).await;
            (i, Pumped::new(c, frames))
        }
    });
    let mut clients: Vec<(usize, Pumped)> = futures::stream::iter(logins)
        .buffer_unordered(25)
        .collect()
        .await;
    clients.sort_by_key(|(i, _)| *i);
    let clients: Vec<Pumped> = clients.into_iter().map(|(_, c)| c).collect();
    wait_for(&events, users as u64, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Phase 1: throughput.
    let admin = stack.presences[0].admin;
    let handled_before = metric(admin, "chat_presence_events_total{kind=\"status\"}").await;
    events.store(0, Ordering::Relaxed);
    frames.store(0, Ordering::Relaxed);
    let total = (users * per_user) as u64;
    let started = Instant::now();
    let senders = clients.iter().map(|c| async move {
        for n in 0..per_user {
            let status = if n % 2 == 0 { "away" } else { "busy" };
            c.send(json!({"type": "status", "status": status})).await;
        }
    });
    futures::future::join_all(senders).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut handled = 0;
    while Instant::now() < deadline {
        handled =
            metric(admin, "chat_presence_events_total{kind=\"status\"}").await - handled_before;
        if handled >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    // Let the last announcements arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!(
        "throughput: {users} users in rooms of 20, {per_user} status frames each, {instances} presence \
         instance(s): {handled}/{total} status changes handled in {:.2}s = {:.0} changes/s; \
         {} effective changes announced on presence.user.*, {} presence frames delivered",
        took.as_secs_f64(),
        handled as f64 / took.as_secs_f64(),
        events.load(Ordering::Relaxed),
        frames.load(Ordering::Relaxed)
    );

    // The last frame of every user said busy.
    let req = chat_bus::api::PresenceRequest::Users {
        users: (0..users)
            .map(|i| UserId::new(format!("u{i}")).unwrap())
            .collect(),
    };
    let reply: chat_bus::api::PresenceReply =
        chat_bus::rpc::request_on(&nats, subjects::API_PRESENCE, &req, Duration::from_secs(10))
            .await
            .expect("chat.api.presence");
    let mut by_status = std::collections::BTreeMap::new();
    for e in &reply.users {
        *by_status.entry(format!("{:?}", e.status)).or_insert(0) += 1;
    }
    println!("after the flips (the last frame of each said busy): {by_status:?}");

    // Phase 2: close → offline frame, under a background load.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_secs_f64(1.0 / background.max(1) as f64));
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let status = if (n / users).is_multiple_of(2) {
                    "online"
                } else {
                    "away"
                };
                clients[n % users]
                    .send(json!({"type": "status", "status": status}))
                    .await;
                n += 1;
            }
            clients
        })
    };
    let (mut watcher, _) = stack.login(0, "watcher").await;
    watcher.join("probe-room").await;
    let mut delays = Vec::new();
    for j in 0..probes {
        let name = format!("probe{j}");
        let (mut c, _) = stack.login(0, &name).await;
        c.join("probe-room").await;
        watcher
            .recv_until(|f| f["type"] == "presence" && f["user"] == name.as_str())
            .await
            .expect("online frame");
        let closed = Instant::now();
        c.close().await;
        watcher
            .recv_until(|f| {
                f["type"] == "presence" && f["user"] == name.as_str() && f["status"] == "offline"
            })
            .await
            .expect("offline frame");
        delays.push(closed.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    let _ = load.await;
    delays.sort();
    let pct = |p: f64| delays[((delays.len() as f64 * p) as usize).min(delays.len() - 1)];
    println!(
        "close -> offline frame, {probes} probes under {background} background changes/s: \
         p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        delays[delays.len() - 1]
    );
}

/// A counter of the process's Prometheus registry, read from `/metrics` (every service of the
/// stack shares the process's recorder).
async fn metric(admin: std::net::SocketAddr, name: &str) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await.expect("admin");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Waits until `counter` reaches `target` or `limit` passes; returns what it reached.
async fn wait_for(counter: &AtomicU64, target: u64, limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    loop {
        let n = counter.load(Ordering::Relaxed);
        if n >= target || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
