//! Presence end to end (protocol.md#ws "Presence", §3): real edges, chat-presence, chat-history,
//! nats-server and PostgreSQL. Heartbeats are shortened so that edge deaths are quick to see.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use chat_bus::api::{self, PresenceReply, PresenceRequest};
use chat_bus::subjects;
use chat_proto::UserId;
use chat_testkit::{WsClient, free_port, workspace_root};
use chat_tests::{SECRET, Stack, eventually};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Short enough to see edge deaths quickly; clients that the test does not read from are kept
/// alive by [`Pumped`] (the edge drops a peer silent for 3 heartbeats).
const HEARTBEAT_MS: u64 = 500;

async fn stack() -> Stack {
    stack_with_heartbeat(HEARTBEAT_MS).await
}

/// A stack whose edges beat every `ms` (tests that hold many idle clients on a busy machine
/// use a longer one, so that a stalled test process is not mistaken for dead clients).
async fn stack_with_heartbeat(ms: u64) -> Stack {
    Stack::start_with(&[("CHAT_HEARTBEAT_MS", &ms.to_string())]).await
}

/// The next `presence` frame about `user`.
async fn presence_of(c: &mut WsClient, user: &str) -> Value {
    c.recv_until(|f| f["type"] == "presence" && f["user"] == user)
        .await
        .unwrap_or_else(|e| panic!("no presence frame for {user}: {e:?}"))
}

/// A client the test does not read from: a task reads (and so answers pings) and discards its
/// frames, and sends what it is told to.
struct Pumped {
    tx: tokio::sync::mpsc::Sender<Option<Value>>,
    task: tokio::task::JoinHandle<()>,
}

impl Pumped {
    fn new(mut c: WsClient) -> Pumped {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<Value>>(16);
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    cmd = rx.recv() => match cmd {
                        Some(Some(frame)) => c.send(frame).await,
                        _ => {
                            c.close().await;
                            return;
                        }
                    },
                    f = c.recv_within(Duration::from_secs(3600)) => {
                        if let Err(e) = f {
                            eprintln!("an idle test client lost its connection: {e:?}");
                            return;
                        }
                    }
                }
            }
        });
        Pumped { tx, task }
    }

    async fn send(&self, frame: Value) {
        self.tx.send(Some(frame)).await.expect("client task alive");
    }

    /// Closes the connection cleanly and waits for it.
    async fn close(self) {
        let _ = self.tx.send(None).await;
        let _ = self.task.await;
    }
}

/// Asserts that every `presence` frame about `user` within `wait` says `status`.
async fn no_status_but(c: &mut WsClient, user: &str, status: &str, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.recv_within(left).await {
            Err(chat_testkit::WsError::Timeout) => return,
            Ok(f) if f["type"] == "presence" && f["user"] == user => {
                assert_eq!(f["status"], status, "unexpected presence frame: {f}")
            }
            Ok(_) => continue,
            Err(e) => panic!("connection failed while waiting: {e:?}"),
        }
    }
}

/// Statuses from `chat.api.presence {users}`.
async fn statuses(nats: &async_nats::Client, users: &[String]) -> BTreeMap<String, String> {
    try_statuses(nats, users)
        .await
        .expect("chat.api.presence answers")
}

/// The same; an error when the request is lost (sent to an instance as it is killed).
async fn try_statuses(
    nats: &async_nats::Client,
    users: &[String],
) -> Result<BTreeMap<String, String>, api::ApiError> {
    let req = PresenceRequest::Users {
        users: users.iter().map(|u| UserId::new(u).unwrap()).collect(),
    };
    let reply: PresenceReply =
        chat_bus::rpc::request_on(nats, subjects::API_PRESENCE, &req, Duration::from_secs(2))
            .await?;
    Ok(reply
        .users
        .into_iter()
        .map(|e| {
            let status = serde_json::to_value(e.status).unwrap();
            (e.user.to_string(), status.as_str().unwrap().to_owned())
        })
        .collect())
}

/// Polls `chat.api.presence` until it says `want` (within 15 s); panics with the last answer.
/// A request lost with a killed instance is asked again, as an integrator would.
async fn eventually_statuses(nats: &async_nats::Client, want: &BTreeMap<String, String>) {
    let users: Vec<String> = want.keys().cloned().collect();
    eventually(
        "presence says what is wanted",
        Duration::from_secs(15),
        async || {
            let got = try_statuses(nats, &users).await.unwrap_or_default();
            if &got == want {
                return Ok(());
            }
            let wrong: Vec<_> = want
                .iter()
                .filter(|(u, s)| got.get(*u) != Some(s))
                .map(|(u, s)| format!("{u}: want {s}, got {:?}", got.get(u)))
                .collect();
            Err(wrong)
        },
    )
    .await;
}

/// Waits for `n` edge heartbeats for which `pred` holds, from now on (subscribed by the caller
/// before what it waits after).
async fn heartbeats(
    sub: &mut async_nats::Subscriber,
    n: usize,
    pred: impl Fn(&api::EdgeHeartbeat) -> bool,
) {
    let mut seen = 0;
    while seen < n {
        let m = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .expect("an edge heartbeat within 30 s")
            .expect("heartbeat subscription");
        let hb: api::EdgeHeartbeat = serde_json::from_slice(&m.payload).expect("a heartbeat");
        seen += usize::from(pred(&hb));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_keep_a_user_online_until_both_close() {
    let stack = stack().await;
    let nats = stack.nats.client().await;
    let (mut bob, _) = stack.login(0, "bob").await;
    bob.join("pair").await;
    let (mut phone, _) = stack.login(0, "alice").await;
    phone.join("pair").await;
    let f = presence_of(&mut bob, "alice").await;
    assert_eq!(f["status"], "online", "{f}");
    assert_eq!(f["room"], "pair");

    let laptop = Pumped::new(stack.login(0, "alice").await.0);
    eventually_statuses(&nats, &[("alice".into(), "online".into())].into()).await;
    phone.close().await;
    // One device left: alice stays online (a repeated `online` is allowed, nothing else).
    no_status_but(
        &mut bob,
        "alice",
        "online",
        Duration::from_millis(3 * HEARTBEAT_MS),
    )
    .await;
    assert_eq!(statuses(&nats, &["alice".into()]).await["alice"], "online");

    laptop.close().await;
    let f = presence_of(&mut bob, "alice").await;
    assert_eq!(f["status"], "offline", "{f}");
    assert!(f["last_seen"].as_i64().unwrap() > 0);
    let snap = bob
        .request(json!({"type": "presence", "room": "pair"}), "snap")
        .await;
    assert_eq!(snap["type"], "presence_snapshot", "{snap}");
    let users: BTreeMap<&str, &str> = snap["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["user"].as_str().unwrap(), u["status"].as_str().unwrap()))
        .collect();
    assert_eq!(users, [("alice", "offline"), ("bob", "online")].into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_busy_reaches_a_room_mate_and_user_subscribers() {
    let stack = stack().await;
    let nats = stack.nats.client().await;
    let mut sub = nats
        .subscribe(subjects::presence_user(&UserId::new("alice").unwrap()))
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let (mut bob, _) = stack.login(0, "bob").await;
    bob.join("team").await;
    let (mut alice, _) = stack.login(0, "alice").await;
    alice.join("team").await;
    presence_of(&mut bob, "alice").await;

    alice
        .send(json!({"type": "status", "status": "busy"}))
        .await;
    let f = bob
        .recv_until(|f| f["type"] == "presence" && f["user"] == "alice" && f["status"] != "online")
        .await
        .unwrap();
    assert_eq!(
        (f["status"].as_str(), f["room"].as_str()),
        (Some("busy"), Some("team"))
    );

    // presence.user.alice saw her come online, then turn busy.
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("busy") {
        let msg = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("presence.user event")
            .unwrap();
        let ev: Value = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(ev["user"], "alice");
        assert_eq!(ev["sessions"], 1);
        seen.push(ev["status"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen, vec!["online", "busy"]);

    // The chosen status outlives the session: offline now, busy again on the next connect.
    alice.close().await;
    assert_eq!(presence_of(&mut bob, "alice").await["status"], "offline");
    let _alice = Pumped::new(stack.login(0, "alice").await.0);
    assert_eq!(presence_of(&mut bob, "alice").await["status"], "busy");
}

/// `target/debug/chat-edge` (or `CHAT_EDGE_BIN`). `scripts/test` builds it before the tests; if
/// it is missing or older than the sources of the edge and the libraries, it is built here (which
/// `cargo test` cannot do while it holds the build lock: run `cargo build --workspace` first).
fn edge_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CHAT_EDGE_BIN") {
        return PathBuf::from(p);
    }
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("debug").join("chat-edge");
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    let sources = ["services/edge", "libs/proto", "libs/bus", "libs/runtime"]
        .iter()
        .filter_map(|d| newest_file(&root.join(d)))
        .max();
    if built.is_none() || sources > built {
        let status = std::process::Command::new(option_env!("CARGO").unwrap_or("cargo"))
            .args(["build", "-q", "-p", "chat-edge", "--bin", "chat-edge"])
            .current_dir(&root)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build -p chat-edge failed");
    }
    bin
}

/// The modification time of the newest file under `dir`.
fn newest_file(dir: &std::path::Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest_file(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(t);
    }
    newest
}

/// An edge in a child process, so that SIGKILL really stops its heartbeats and its goodbyes.
struct EdgeProcess {
    child: tokio::process::Child,
    url: String,
}

async fn spawn_edge_process(stack: &Stack) -> EdgeProcess {
    let bin = tokio::task::spawn_blocking(edge_binary).await.unwrap();
    let (port, admin) = (free_port(), free_port());
    let child = tokio::process::Command::new(bin)
        .env("NATS_URL", &stack.nats.url)
        .env("CHAT_JWT_SECRET", SECRET)
        .env("EDGE_LISTEN", format!("127.0.0.1:{port}"))
        .env("ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .env("CHAT_HEARTBEAT_MS", HEARTBEAT_MS.to_string())
        .env("CHAT_REQUEST_TIMEOUT", "5s")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start chat-edge");
    eventually(
        "the chat-edge process is ready",
        Duration::from_secs(30),
        async || {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", admin))
                .await
                .ok()?;
            let _ = s
                .write_all(b"GET /readyz HTTP/1.0\r\nHost: x\r\n\r\n")
                .await;
            let mut out = String::new();
            let _ = s.read_to_string(&mut out).await;
            (out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200")).then_some(())
        },
    )
    .await;
    EdgeProcess {
        child,
        url: format!("ws://127.0.0.1:{port}/ws"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_killed_with_sigkill_takes_only_its_users_offline_within_3_heartbeats() {
    let stack = stack().await;
    let nats = stack.nats.client().await;
    let mut heartbeat_sub = nats.subscribe(subjects::PRESENCE_HEARTBEAT).await.unwrap();
    let mut doomed = spawn_edge_process(&stack).await;

    // carol is only on the doomed edge; dave is on both.
    let (mut carol, _) = WsClient::login(&doomed.url, &stack.token("carol")).await;
    carol.join("ops").await;
    let _carol = Pumped::new(carol);
    let (mut dave_there, _) = WsClient::login(&doomed.url, &stack.token("dave")).await;
    dave_there.join("ops").await;
    let _dave_there = Pumped::new(dave_there);
    let _dave_here = Pumped::new(stack.login(0, "dave").await.0);
    eventually_statuses(
        &nats,
        &[
            ("carol".into(), "online".into()),
            ("dave".into(), "online".into()),
        ]
        .into(),
    )
    .await;
    // A heartbeat of the doomed edge listing carol has passed, as in a steady state.
    heartbeats(&mut heartbeat_sub, 1, |hb| {
        hb.sessions.iter().any(|s| s.user.as_str() == "carol")
    })
    .await;
    // The watcher comes last: a client that is not read from is dropped after 3 heartbeats.
    let (mut watcher, _) = stack.login(0, "watcher").await;
    watcher.join("ops").await;

    doomed.child.start_kill().expect("SIGKILL chat-edge");
    let killed = tokio::time::Instant::now();
    let _ = doomed.child.wait().await;
    let f = watcher
        .recv_until(|f| f["type"] == "presence" && f["user"] == "carol" && f["status"] != "online")
        .await
        .unwrap();
    let took = killed.elapsed();
    assert_eq!(f["status"], "offline", "{f}");
    assert!(
        took <= Duration::from_millis(3 * HEARTBEAT_MS),
        "carol went offline {took:?} after the kill (heartbeat {HEARTBEAT_MS} ms)"
    );
    eprintln!("offline {took:?} after SIGKILL (heartbeat {HEARTBEAT_MS} ms)");
    // dave still has a session on the live edge.
    no_status_but(
        &mut watcher,
        "dave",
        "online",
        Duration::from_millis(3 * HEARTBEAT_MS),
    )
    .await;
    let now = statuses(&nats, &["carol".into(), "dave".into()]).await;
    assert_eq!(
        (now["carol"].as_str(), now["dave"].as_str()),
        ("offline", "online")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_and_restarting_one_of_two_presence_instances_loses_no_status() {
    let mut stack = stack_with_heartbeat(2000).await;
    stack.add_presence().await;
    let nats = stack.nats.client().await;
    let names: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
    let mut clients = Vec::new();
    for n in &names {
        clients.push(Pumped::new(stack.login(0, n).await.0));
    }
    let statuses_cycle = ["busy", "away", "online"];
    let mut want = BTreeMap::new();
    for (i, c) in clients.iter().enumerate() {
        let s = statuses_cycle[i % 3];
        c.send(json!({"type": "status", "status": s})).await;
        want.insert(names[i].clone(), s.to_owned());
    }
    eventually_statuses(&nats, &want).await;

    // One instance dies; the other carries on alone.
    stack.presences.remove(0).kill();
    for (i, c) in clients.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        c.send(json!({"type": "status", "status": "away"})).await;
        want.insert(names[i].clone(), "away".into());
    }
    let gone = clients.pop().unwrap();
    gone.close().await;
    want.insert(names[19].clone(), "offline".into());
    eventually_statuses(&nats, &want).await;

    // It comes back; both share the work again and nothing set before is lost.
    stack.add_presence().await;
    for (i, c) in clients.iter().enumerate().filter(|(i, _)| i % 3 == 1) {
        c.send(json!({"type": "status", "status": "busy"})).await;
        want.insert(names[i].clone(), "busy".into());
    }
    let mut heartbeat_sub = nats.subscribe(subjects::PRESENCE_HEARTBEAT).await.unwrap();
    nats.flush().await.unwrap();
    eventually_statuses(&nats, &want).await;
    // And it stays so over a few heartbeats (no reconciliation undoes anything).
    // (Each heartbeat comes in one part per shard: its first part counts it.)
    heartbeats(&mut heartbeat_sub, 3, |hb| hb.shard.is_none_or(|s| s == 0)).await;
    assert_eq!(statuses(&nats, &names).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_after_a_burst_of_200_connects_and_disconnects_matches_the_truth() {
    const USERS: usize = 200;
    // Every member gets a few frames for each of the 200 others; on a loaded machine the test's
    // clients may lag behind, which is not what this test is about.
    let mut stack = Stack::start_with(&[
        ("CHAT_HEARTBEAT_MS", "2000"),
        ("CHAT_OUTBOUND_QUEUE", "100000"),
    ])
    .await;
    stack.add_edge().await;
    stack.add_presence().await;

    // 200 users connect at once over two edges (and 50 of them on a second device too) and
    // join the room; then half of them leave, some of those with a device left behind.
    let urls = [stack.ws_url(0), stack.ws_url(1)];
    let logins = (0..USERS).map(|i| {
        let url = urls[i % 2].clone();
        let token = stack.token(&format!("b{i}"));
        async move {
            let (mut c, _) = WsClient::login(&url, &token).await;
            c.join("crowd").await;
            (i, Pumped::new(c))
        }
    });
    let first: BTreeMap<usize, Pumped> = futures::stream::iter(logins)
        .buffer_unordered(25)
        .collect()
        .await;
    let seconds = (0..USERS).step_by(4).map(|i| {
        let url = urls[(i + 1) % 2].clone();
        let token = stack.token(&format!("b{i}"));
        async move { (i, Pumped::new(WsClient::login(&url, &token).await.0)) }
    });
    let mut second: BTreeMap<usize, Pumped> = futures::stream::iter(seconds)
        .buffer_unordered(25)
        .collect()
        .await;
    let mut truth: BTreeMap<String, String> = (0..USERS)
        .map(|i| (format!("b{i}"), "online".to_owned()))
        .collect();
    truth.insert("watcher".into(), "online".into());
    let mut closes = Vec::new();
    let mut kept = Vec::new();
    for (i, c) in first {
        if i % 2 == 1 {
            kept.push(c);
            continue;
        }
        closes.push(c.close());
        // Users 0, 8, 16… keep their second device; 4, 12, 20… close it too.
        if i % 8 == 4 {
            closes.push(second.remove(&i).unwrap().close());
        }
        if !second.contains_key(&i) {
            truth.insert(format!("b{i}"), "offline".into());
        }
    }
    futures::future::join_all(closes).await;

    let (mut watcher, _) = stack.login(0, "watcher").await;
    watcher.join("crowd").await;
    let mut n = 0;
    eventually(
        "the snapshot matches the truth",
        Duration::from_secs(15),
        async || {
            n += 1;
            let snap = watcher
                .request(
                    json!({"type": "presence", "room": "crowd"}),
                    &format!("s{n}"),
                )
                .await;
            let got: BTreeMap<String, String> = snap["users"]
                .as_array()
                .unwrap_or_else(|| panic!("snapshot: {snap}"))
                .iter()
                .map(|u| {
                    (
                        u["user"].as_str().unwrap().to_owned(),
                        u["status"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            if got == truth {
                return Ok(());
            }
            Err(truth
                .iter()
                .filter(|(u, s)| got.get(*u) != Some(s))
                .map(|(u, s)| format!("{u}: want {s}, got {:?}", got.get(u)))
                .collect::<Vec<_>>())
        },
    )
    .await;
    eprintln!("snapshot matched after {n} tries");
    drop((second, kept));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_changing_one_user_at_once_lose_no_update() {
    let stack = stack().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut cores = Vec::new();
    for _ in 0..2 {
        let config = chat_presence::PresenceConfig::from_env(&stack.service_env()).unwrap();
        let app = chat_presence::App::build(config, &stop).await.unwrap();
        cores.push(app.presence());
    }
    let user = UserId::new("hot").unwrap();
    // 2 × 100 sessions of one user open at once through two instances, then all close.
    for closing in [false, true] {
        let writers = (0..200).map(|i| {
            let p = cores[i % 2].clone();
            let user = user.clone();
            async move {
                let session = format!("s{i}");
                let ts = chat_bus::now_ms();
                p.change_user(&user, |r| {
                    if closing {
                        r.session_down(&session, ts)
                    } else {
                        r.session_up("e1", &session, ts)
                    }
                })
                .await
                .expect("compare-and-set converges");
            }
        });
        futures::stream::iter(writers)
            .buffer_unordered(64)
            .collect::<Vec<()>>()
            .await;
        let record = cores[0].user_record(&user).await.unwrap().unwrap();
        if closing {
            assert!(record.sessions.is_empty(), "{:?}", record.sessions.keys());
            assert_eq!(record.closed.len(), 200);
        } else {
            assert_eq!(record.sessions.len(), 200, "every session is recorded");
        }
    }
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_above_the_fanout_limit_get_no_broadcast_but_answer_snapshots() {
    let stack = Stack::start_with(&[
        ("CHAT_HEARTBEAT_MS", "2000"),
        ("PRESENCE_MAX_ROOM_FANOUT", "2"),
    ])
    .await;
    let (mut bob, _) = stack.login(0, "bob").await;
    bob.join("big").await;
    bob.join("small").await;
    let (mut alice, _) = stack.login(0, "alice").await;
    alice.join("small").await;
    alice.join("big").await;
    let (mut carol, _) = stack.login(0, "carol").await;
    carol.join("big").await;
    let _carol = Pumped::new(carol);

    alice
        .send(json!({"type": "status", "status": "busy"}))
        .await;
    // "small" (2 members) hears it; "big" (3 members, over the limit of 2) does not.
    let f = bob
        .recv_until(|f| f["type"] == "presence" && f["user"] == "alice" && f["status"] == "busy")
        .await
        .unwrap();
    assert_eq!(f["room"], "small", "{f}");
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match bob.recv_within(left).await {
            Err(chat_testkit::WsError::Timeout) => break,
            Ok(f) => assert!(
                !(f["type"] == "presence" && f["room"] == "big" && f["status"] == "busy"),
                "a room over the limit got a broadcast: {f}"
            ),
            Err(e) => panic!("connection failed: {e:?}"),
        }
    }
    // Its members ask instead.
    let snap = bob
        .request(json!({"type": "presence", "room": "big"}), "big")
        .await;
    let alice_entry = snap["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user"] == "alice")
        .cloned()
        .unwrap_or_else(|| panic!("alice in {snap}"));
    assert_eq!(alice_entry["status"], "busy");
    drop(alice);
}

/// Two users in different shards of an edge's record (`edge_shard`).
fn users_in_two_shards() -> (String, String) {
    let a = "parts-a".to_owned();
    let b = (0..)
        .map(|i| format!("parts-b{i}"))
        .find(|b| api::edge_shard(b) != api::edge_shard(&a))
        .expect("some name in another shard");
    (a, b)
}

/// An edge's heartbeat comes in one part per shard (an edge of more than ~15,000 sessions could
/// not report them in one message): a part is the truth for its shard and says nothing of the
/// others. Parts of a made-up edge are published by hand; its long period keeps the sweeper
/// away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_part_speaks_for_its_own_shard_only() {
    let stack = stack().await;
    let nats = stack.nats.client().await;
    let (a, b) = users_in_two_shards();
    let edge = format!("eparts{}", free_port());
    let period = 60_000;
    let t0 = chat_bus::now_ms();
    let part = |user: Option<&str>, shard: u32, ts: i64| api::EdgeHeartbeat {
        edge: edge.clone(),
        heartbeat_ms: period,
        sessions: user
            .map(|u| api::SessionRef {
                session: format!("{edge}-{u}"),
                user: UserId::new(u).unwrap(),
            })
            .into_iter()
            .collect(),
        ts,
        shard: Some(shard),
    };
    let publish = async |hb: api::EdgeHeartbeat| {
        let payload = serde_json::to_vec(&hb).unwrap();
        nats.publish(subjects::PRESENCE_HEARTBEAT, payload.into())
            .await
            .unwrap();
        nats.flush().await.unwrap();
    };
    let (shard_a, shard_b) = (api::edge_shard(&a), api::edge_shard(&b));
    publish(part(Some(&a), shard_a, t0)).await;
    publish(part(Some(&b), shard_b, t0)).await;
    let online = |a_status: &str, b_status: &str| {
        BTreeMap::from([
            (a.clone(), a_status.to_owned()),
            (b.clone(), b_status.to_owned()),
        ])
    };
    eventually_statuses(&nats, &online("online", "online")).await;

    // b's shard, a period later, holds nothing: b is gone; a's shard is not b's part's business.
    publish(part(None, shard_b, t0 + 2 * period as i64)).await;
    eventually_statuses(&nats, &online("online", "offline")).await;
    // The shard records are written before any user is reconciled: by now a heartbeat taken for
    // the whole edge would have emptied a's shard too.
    let js = async_nats::jetstream::new(nats.clone());
    let edges = js
        .get_key_value(subjects::PRESENCE_EDGES_BUCKET)
        .await
        .unwrap();
    let record = edges
        .get(format!("{edge}.s{shard_a:02}"))
        .await
        .unwrap()
        .expect("a's shard is recorded");
    let record: Value = serde_json::from_slice(&record).unwrap();
    assert!(
        record["sessions"].get(format!("{edge}-{a}")).is_some(),
        "a's session is still listed: {record}"
    );
    assert_eq!(
        statuses(&nats, std::slice::from_ref(&a)).await[&a],
        "online"
    );

    // a's own shard, empty a period later, takes a offline.
    publish(part(None, shard_a, t0 + 2 * period as i64)).await;
    eventually_statuses(&nats, &online("offline", "offline")).await;
}
