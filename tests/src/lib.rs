//! A whole chat system in one test process: a nats-server and a fresh database of their own,
//! and any number of edges and chat-history instances started on port 0.

use std::net::SocketAddr;

use chat_bus::subjects;
use chat_runtime::Env;
use chat_testkit::{NatsServer, fresh_database, token};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use chat_testkit::{self, WsClient, eventually};

pub mod otlp;
pub mod procs;

/// The signing secret of every test stack.
pub const SECRET: &str = "test-secret-at-least-32-bytes-long";

/// A service running in this process; stopped (drained) when dropped.
pub struct Running {
    pub stop: CancellationToken,
    pub task: JoinHandle<()>,
    pub addr: Option<SocketAddr>,
    pub admin: SocketAddr,
}

impl Running {
    /// Drains and waits for the end.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        let _ = (&mut self.task).await;
    }

    /// Stops abruptly, as a crash would: no drain, no goodbye.
    pub fn kill(self) {
        self.task.abort();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A test stack.
pub struct Stack {
    pub nats: NatsServer,
    pub db_url: String,
    pub edges: Vec<Running>,
    pub histories: Vec<Running>,
    pub presences: Vec<Running>,
    pub notifies: Vec<Running>,
    /// chat-api instances (none unless a test adds one: [`Stack::add_api`]).
    pub apis: Vec<Running>,
    /// Extra environment for services started from now on.
    pub env: Vec<(String, String)>,
}

impl Stack {
    /// NATS, a database, one instance of each service.
    pub async fn start() -> Stack {
        Self::start_with(&[]).await
    }

    /// The same, with extra environment variables for the services.
    pub async fn start_with(env: &[(&str, &str)]) -> Stack {
        let db_url = fresh_database().await;
        Self::start_on(env, db_url).await
    }

    /// The same, on a given database (a test's own cluster, for outage tests).
    pub async fn start_on(env: &[(&str, &str)], db_url: String) -> Stack {
        chat_runtime::telemetry::init_for_tests();
        let nats = NatsServer::start().await;
        let mut stack = Stack {
            nats,
            db_url,
            edges: Vec::new(),
            histories: Vec::new(),
            presences: Vec::new(),
            notifies: Vec::new(),
            apis: Vec::new(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        stack.add_history().await;
        stack.add_presence().await;
        stack.add_notify().await;
        stack.add_edge().await;
        stack
    }

    /// The environment every service gets.
    pub fn service_env(&self) -> Env {
        let mut env = Env::from_pairs([
            ("NATS_URL", self.nats.url.as_str()),
            ("DATABASE_URL", self.db_url.as_str()),
            ("CHAT_JWT_SECRET", SECRET),
            ("EDGE_LISTEN", "127.0.0.1:0"),
            ("ADMIN_LISTEN", "127.0.0.1:0"),
            ("CHAT_HEARTBEAT_MS", "5000"),
            ("CHAT_REQUEST_TIMEOUT", "5s"),
            // Every test client comes from 127.0.0.1: one address may use the edge's whole
            // default admission rate (hostile_input tests the per-address rate itself).
            ("CHAT_ADMISSION_PER_IP_PER_S", "1000"),
        ]);
        for (k, v) in &self.env {
            env = env.with(k.clone(), v.clone());
        }
        env
    }

    pub async fn add_history(&mut self) -> usize {
        self.add_history_with(&[]).await
    }

    /// A chat-history with extra variables (e.g. `HISTORY_ARCHIVE=false`), returned once its
    /// requests are served (as are presence's and notify's by `add_presence`, `add_notify`).
    pub async fn add_history_with(&mut self, extra: &[(&str, &str)]) -> usize {
        let running = start::<chat_history::App>(&with(self.service_env(), extra)).await;
        self.histories.push(running);
        self.wait_served(&[
            subjects::ROOMS,
            subjects::API_HISTORY,
            subjects::API_SEARCH,
            subjects::HISTORY_MESSAGE,
        ])
        .await;
        self.histories.len() - 1
    }

    /// Waits until each of the subjects `names` has a subscriber: a request is answered (an empty body
    /// gets a `bad_request` error) instead of NATS's "no responders". A service subscribes in
    /// its `run`, after [`start`] returns; a test that replaced the only chat-history and logged
    /// in at once raced it (`hello` then closed with 1013, no room list to send).
    async fn wait_served(&self, names: &[&'static str]) {
        let client = self.nats.client().await;
        for &subject in names {
            eventually(
                &format!("a subscriber of {subject}"),
                std::time::Duration::from_secs(10),
                || {
                    let client = client.clone();
                    async move {
                        client
                            .request(subject, bytes::Bytes::new())
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    }
                },
            )
            .await;
        }
    }

    pub async fn add_presence(&mut self) -> usize {
        let running = start::<chat_presence::App>(&self.service_env()).await;
        self.presences.push(running);
        self.wait_served(&[subjects::API_PRESENCE]).await;
        self.presences.len() - 1
    }

    pub async fn add_notify(&mut self) -> usize {
        let running = start::<chat_notify::App>(&self.service_env()).await;
        self.notifies.push(running);
        self.wait_served(&[subjects::NOTIFY_STATE, subjects::NOTIFY_READ])
            .await;
        self.notifies.len() - 1
    }

    pub async fn add_edge(&mut self) -> usize {
        let running = start::<chat_edge::App>(&self.service_env()).await;
        self.edges.push(running);
        self.edges.len() - 1
    }

    /// A chat-api with extra variables; returns its index (its HTTP address is `addr`).
    pub async fn add_api_with(&mut self, extra: &[(&str, &str)]) -> usize {
        let env = with(
            self.service_env().with("CHAT_API_ADDR", "127.0.0.1:0"),
            extra,
        );
        let running = start::<chat_api::App>(&env).await;
        self.apis.push(running);
        self.apis.len() - 1
    }

    /// ws://…/ws of edge `i`.
    pub fn ws_url(&self, i: usize) -> String {
        format!(
            "ws://{}/ws",
            self.edges[i].addr.expect("edges have an address")
        )
    }

    /// A valid token for `user`.
    pub fn token(&self, user: &str) -> String {
        token::hs256(SECRET, user, 3600)
    }

    /// `user`, signed in on the first edge (`alice.join("r")`, `alice.post("r", "hi")`).
    pub async fn client(&self, user: &str) -> WsClient {
        self.login(0, user).await.0
    }

    /// Connects `user` to edge `i` and returns the client and its `hello`.
    pub async fn login(&self, i: usize, user: &str) -> (WsClient, Value) {
        WsClient::login(&self.ws_url(i), &self.token(user)).await
    }

    /// A pool on the test database.
    pub async fn db(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.db_url)
            .await
            .expect("connect to test database")
    }
}

/// Waits until the archive holds `n` rows of `room` (polling PostgreSQL), then checks none is doubled.
pub async fn wait_archived(db: &sqlx::PgPool, room: &str, n: i64) {
    let (rows, distinct) = eventually(
        &format!("the archive holds {n} rows of {room}"),
        std::time::Duration::from_secs(60),
        async || {
            let (rows, distinct): (i64, i64) = sqlx::query_as(
                "SELECT count(*), count(DISTINCT client_id) FROM history.messages WHERE room = $1",
            )
            .bind(room)
            .fetch_one(db)
            .await
            .ok()?;
            assert!(rows <= n, "more rows than messages: {rows} > {n}");
            (rows == n).then_some((rows, distinct))
        },
    )
    .await;
    assert_eq!(rows, distinct, "a message was archived twice");
}

/// chat-notify's state of `user` in `rooms`, asked over NATS as an edge does.
pub async fn notify_state(
    client: &async_nats::Client,
    user: &str,
    rooms: &[&str],
) -> chat_bus::api::NotifyState {
    chat_bus::rpc::request_on(
        client,
        chat_bus::subjects::NOTIFY_STATE,
        &chat_bus::api::NotifyStateRequest {
            user: chat_proto::UserId::new(user).expect("user id"),
            rooms: rooms
                .iter()
                .map(|r| chat_proto::RoomId::new(*r).expect("room id"))
                .collect(),
            last_seqs: Vec::new(),
        },
        std::time::Duration::from_secs(10),
    )
    .await
    .expect("notify state")
}

/// What [`send_until_acked`] got: every message acknowledged, and when.
#[derive(Debug, Default)]
pub struct Acked {
    /// client_id → the seq its ack named.
    pub seqs: std::collections::HashMap<String, u64>,
    /// When each ack arrived, in send order.
    pub at: Vec<std::time::Instant>,
    /// Acks that said `duplicate:true` (a retry of a send the stream had already stored).
    pub duplicates: usize,
    /// Sends refused (`unavailable`, …) or lost with their connection, then retried.
    pub retries: usize,
}

/// Sends numbered messages (body `<prefix> <i>`, client_id `<prefix>-<i>`) one at a time, each
/// retried with the same client_id (reconnecting when needed) until acknowledged, until `stop`
/// is cancelled or `max` are acknowledged; the message in hand is always finished.
pub async fn send_until_acked(
    url: &str,
    user: &str,
    room: &str,
    prefix: &str,
    stop: CancellationToken,
    max: usize,
) -> Acked {
    use std::time::Duration;
    let tok = token::hs256(SECRET, user, 3600);
    let mut acked = Acked::default();
    let mut conn: Option<WsClient> = None;
    let mut i = 0usize;
    // Set once message i has gone out: it must be acknowledged even after `stop`.
    let mut in_hand = false;
    while (!stop.is_cancelled() && i < max) || in_hand {
        let client_id = format!("{prefix}-{i}");
        let Some(c) = conn.as_mut() else {
            if let Ok(mut c) = WsClient::connect(url, Some(&tok)).await
                && c.recv_type("hello").await.is_ok()
                && c.request(serde_json::json!({"type": "join", "room": room}), "j")
                    .await["type"]
                    == "joined"
            {
                conn = Some(c);
            } else {
                // A client's pause between attempts while the edge is down (a retry, not a
                // wait for an event: this loops until it gets in).
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            continue;
        };
        in_hand = true;
        c.send(
            serde_json::json!({"type": "send", "room": room, "body": format!("{prefix} {i}"),
                                  "client_id": client_id, "ref": client_id}),
        )
        .await;
        match c.recv_until(|f| f["ref"] == client_id.as_str()).await {
            Ok(f) if f["type"] == "ack" => {
                acked.duplicates += usize::from(f["duplicate"] == true);
                acked
                    .seqs
                    .insert(client_id, f["seq"].as_u64().expect("seq"));
                acked.at.push(std::time::Instant::now());
                in_hand = false;
                i += 1;
            }
            Ok(_) => {
                acked.retries += 1;
                // Refused (unavailable, …): a client's pause before the retry.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => {
                acked.retries += 1;
                conn = None;
            }
        }
    }
    acked
}

/// What a [`live_reader`] has been given so far.
#[derive(Debug, Default, Clone)]
pub struct Received {
    /// (seq, prev_seq, client_id) of each `message` frame, in arrival order.
    pub messages: Vec<(u64, u64, String)>,
    /// How many times the reader had to connect again.
    pub reconnects: usize,
    /// Set at the first `joined`: from then on nothing sent to the room is missed.
    pub joined: bool,
}

/// A reader of `room` that stays for good: it records every message into `into`, and when its
/// connection ends it reconnects and recovers with `join{since, epoch}` from the last seq seen.
pub async fn live_reader(
    url: String,
    user: String,
    room: String,
    into: std::sync::Arc<std::sync::Mutex<Received>>,
) {
    use std::time::Duration;
    let tok = token::hs256(SECRET, &user, 3600);
    let mut epoch = String::new();
    let mut first = true;
    loop {
        if !first {
            into.lock().unwrap().reconnects += 1;
        }
        first = false;
        let Ok(mut c) = WsClient::connect(&url, Some(&tok)).await else {
            // A client's pause between attempts while the edge is down.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(hello) = c.recv_type("hello").await else {
            continue;
        };
        epoch = hello["epoch"].as_str().unwrap_or(&epoch).to_owned();
        let since = into.lock().unwrap().messages.iter().map(|m| m.0).max();
        let join = match since {
            Some(since) => {
                serde_json::json!({"type": "join", "room": room, "since": since, "epoch": epoch})
            }
            None => serde_json::json!({"type": "join", "room": room}),
        };
        c.send(join).await;
        loop {
            match c.recv_within(Duration::from_secs(3600)).await {
                Ok(f) if f["type"] == "message" && f["room"] == room.as_str() => {
                    let m = (
                        f["seq"].as_u64().expect("seq"),
                        f["prev_seq"].as_u64().expect("prev_seq"),
                        f["client_id"].as_str().unwrap_or("").to_owned(),
                    );
                    into.lock().unwrap().messages.push(m);
                }
                Ok(f) if f["type"] == "joined" => into.lock().unwrap().joined = true,
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
}

/// A request to an internal or public NATS subject, decoded as the services' replies are.
pub async fn nats_request<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
    client: &async_nats::Client,
    subject: &'static str,
    req: &Req,
) -> Result<Resp, chat_bus::api::ApiError> {
    chat_bus::rpc::request_on(client, subject, req, std::time::Duration::from_secs(10)).await
}

/// `CHAT_FAULTS_SCALE` (1): multiplies the loads, kills and clients of the fault scenarios;
/// `scripts/reliability long` runs them larger and prints every scenario's figures.
pub fn faults_scale() -> usize {
    std::env::var("CHAT_FAULTS_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// The seqs of a `history` page's messages, in page order.
pub fn page_seqs(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .expect("a history page")
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect()
}

/// Waits until chat-notify has set `user`'s read marker in `room` (the floor a join sets), so
/// that what is sent next counts as unread for the joiner whatever the timing.
pub async fn wait_read_marker(db: &sqlx::PgPool, user: &str, room: &str) {
    eventually(
        &format!("chat-notify has seen the join of {user} to {room}"),
        std::time::Duration::from_secs(10),
        async || {
            sqlx::query_as::<_, (i32,)>(
                "SELECT 1 FROM notify.read_markers WHERE user_id = $1 AND room = $2",
            )
            .bind(user)
            .bind(room)
            .fetch_optional(db)
            .await
            .expect("read markers")
        },
    )
    .await;
}

/// An HTTP/1.1 answer: status, lowercase header names and values, the body as JSON (`Null` when
/// empty or not JSON).
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The error code of an error body (`{"error":{"code"}}`).
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`), with `Authorization:
/// Bearer <key>` when given and a raw body (sent as `application/json`).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&[u8]>,
) -> HttpAnswer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the HTTP API");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(k) = key {
        req.push_str(&format!("Authorization: Bearer {k}\r\n"));
    }
    let body = body.unwrap_or_default();
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .expect("write request");
    // A server may answer (413) before reading a large body and close: a failed write is fine.
    let _ = stream.write_all(body).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        stream.read_to_end(&mut raw),
    )
    .await
    .expect("HTTP answer within 30 s");
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = serde_json::from_str(rest).unwrap_or(Value::Null);
    HttpAnswer {
        status,
        headers,
        body,
    }
}

/// [`http`] with a JSON body.
pub async fn http_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &Value,
) -> HttpAnswer {
    let bytes = serde_json::to_vec(body).expect("json");
    http(addr, method, path, key, Some(&bytes)).await
}

/// Stores an API key record in the key bucket, as `chatctl api-key create` does (the bucket is
/// created by chat-api at start).
pub async fn put_api_key(client: &async_nats::Client, record: &chat_bus::apikey::ApiKeyRecord) {
    let js = async_nats::jetstream::new(client.clone());
    let kv = js
        .get_key_value(chat_bus::subjects::API_KEYS_BUCKET)
        .await
        .expect("key bucket");
    kv.put(&record.id, serde_json::to_vec(record).expect("json").into())
        .await
        .expect("put key");
}

/// Waits until chat-api at each of `addrs` knows `key` (its bucket watch has seen the entry
/// [`put_api_key`] wrote): asked for a room that does not exist, it answers anything but 401.
pub async fn wait_key_known(addrs: &[std::net::SocketAddr], key: &str) {
    for addr in addrs {
        eventually(
            &format!("chat-api at {addr} knows the key"),
            std::time::Duration::from_secs(10),
            async || {
                let answer = http(
                    *addr,
                    "GET",
                    "/api/v1/rooms/no-such-room-probe",
                    Some(key),
                    None,
                )
                .await;
                (answer.status != 401).then_some(()).ok_or(answer)
            },
        )
        .await;
    }
}

/// Revokes an API key (deletes its entry), as `chatctl api-key revoke` does.
pub async fn revoke_api_key(client: &async_nats::Client, id: &str) {
    let js = async_nats::jetstream::new(client.clone());
    let kv = js
        .get_key_value(chat_bus::subjects::API_KEYS_BUCKET)
        .await
        .expect("key bucket");
    kv.delete(id).await.expect("delete key");
}

/// Starts service `S` in this process as its `main` would (configuration from `env`, `build`,
/// `run` until the returned handle's `stop`).
async fn start<S: chat_runtime::service::Service>(env: &Env) -> Running {
    let config = S::config(env).unwrap_or_else(|e| panic!("{} configuration: {e}", S::NAME));
    let stop = CancellationToken::new();
    let app = S::build(config, &stop)
        .await
        .unwrap_or_else(|e| panic!("start {}: {e:#}", S::NAME));
    let (addr, admin) = (app.listen_addr(), app.admin_addr());
    let task = tokio::spawn(app.run(stop.clone()));
    Running {
        stop,
        task,
        addr,
        admin,
    }
}

/// `env` with the `extra` variables set.
fn with(mut env: Env, extra: &[(&str, &str)]) -> Env {
    for (k, v) in extra {
        env = env.with(*k, *v);
    }
    env
}
