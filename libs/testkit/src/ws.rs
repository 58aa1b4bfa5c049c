//! A WebSocket client for tests: JSON frames in and out, with timeouts instead of sleeps.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for an expected frame.
pub const WAIT: Duration = Duration::from_secs(10);

/// What went wrong while waiting for a frame.
#[derive(Debug)]
pub enum WsError {
    Timeout,
    /// The server closed the connection, with its close code if it sent one.
    Closed(Option<u16>),
    Transport(tungstenite::Error),
}

/// A test client of chat-edge.
pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl std::fmt::Debug for WsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WsClient")
    }
}

impl WsClient {
    /// Connects to `url` (ws://host:port/ws), with the token in the Authorization header if given.
    pub async fn connect(url: &str, bearer: Option<&str>) -> Result<WsClient, tungstenite::Error> {
        let mut req = url.into_client_request()?;
        if let Some(t) = bearer {
            req.headers_mut().insert(
                "Authorization",
                format!("Bearer {t}").parse().expect("header value"),
            );
        }
        Self::connect_request(req).await
    }

    /// Connects with a hand-made upgrade request (Origin tests).
    pub async fn connect_request(
        req: tungstenite::handshake::client::Request,
    ) -> Result<WsClient, tungstenite::Error> {
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(WsClient { ws })
    }

    /// Connects and authenticates with a first `auth` frame, returning the `hello`.
    pub async fn login(url: &str, token: &str) -> (WsClient, Value) {
        let mut c = Self::connect(url, None).await.expect("connect");
        c.send(serde_json::json!({"type": "auth", "token": token}))
            .await;
        let hello = c.recv_type("hello").await.expect("hello");
        (c, hello)
    }

    pub async fn send(&mut self, frame: Value) {
        self.send_text(frame.to_string()).await;
    }

    pub async fn send_text(&mut self, text: String) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send frame");
    }

    /// Sends a raw WebSocket message (binary, oversized, …).
    pub async fn send_raw(&mut self, msg: Message) -> Result<(), tungstenite::Error> {
        self.ws.send(msg).await
    }

    /// The next JSON frame within `wait`.
    pub async fn recv_within(&mut self, wait: Duration) -> Result<Value, WsError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| WsError::Timeout)?;
            match next {
                None => return Err(WsError::Closed(None)),
                Some(Err(e)) => return Err(WsError::Transport(e)),
                Some(Ok(Message::Text(t))) => {
                    return Ok(serde_json::from_str(&t).expect("server frames are JSON"));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(WsError::Closed(
                        frame.map(|f: CloseFrame| u16::from(f.code)),
                    ));
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next JSON frame.
    pub async fn recv(&mut self) -> Result<Value, WsError> {
        self.recv_within(WAIT).await
    }

    /// Skips frames until one of type `ty`.
    pub async fn recv_type(&mut self, ty: &str) -> Result<Value, WsError> {
        loop {
            let f = self.recv().await?;
            if f["type"] == ty {
                return Ok(f);
            }
        }
    }

    /// Skips frames until one matching `pred`.
    pub async fn recv_until(
        &mut self,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Result<Value, WsError> {
        loop {
            let f = self.recv().await?;
            if pred(&f) {
                return Ok(f);
            }
        }
    }

    /// Asserts that no frame of type `ty` arrives within `wait` (other frames are skipped).
    pub async fn expect_no(&mut self, ty: &str, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left).await {
                Err(WsError::Timeout) => return,
                Ok(f) if f["type"] == ty => panic!("unexpected {ty} frame: {f}"),
                Ok(_) => continue,
                Err(e) => panic!("connection failed while waiting: {e:?}"),
            }
        }
    }

    /// Waits for the server to close; returns its close code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.recv().await {
                Err(WsError::Closed(code)) => return code,
                Err(WsError::Timeout) => panic!("server did not close the connection"),
                Err(WsError::Transport(_)) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// Sends a frame and returns the reply carrying the same `ref` (other frames skipped).
    pub async fn request(&mut self, mut frame: Value, reference: &str) -> Value {
        frame["ref"] = Value::String(reference.to_owned());
        self.send(frame).await;
        self.recv_until(|f| f["ref"] == reference)
            .await
            .expect("reply with ref")
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    // What a chat client does (protocol.md#ws), each step checked: `alice.join("r")`,
    // `alice.post("r", "hi")`.

    /// Joins `room` and returns the `joined` frame.
    pub async fn join(&mut self, room: &str) -> Value {
        let r = self
            .request(
                json!({"type": "join", "room": room}),
                &format!("join-{room}"),
            )
            .await;
        assert_eq!(r["type"], "joined", "join {room}: {r}");
        r
    }

    /// Joins with a recovery cursor; returns the replayed seqs and the `joined` frame.
    pub async fn join_since(&mut self, room: &str, since: u64, epoch: &str) -> (Vec<u64>, Value) {
        self.send(json!({"type": "join", "room": room, "since": since, "epoch": epoch}))
            .await;
        let mut got = Vec::new();
        loop {
            let f = self.recv().await.expect("replay");
            match f["type"].as_str() {
                Some("message") if f["room"] == room => got.push(f["seq"].as_u64().expect("seq")),
                Some("joined") if f["room"] == room => return (got, f),
                Some("error") => panic!("join failed: {f}"),
                _ => {}
            }
        }
    }

    /// Sends a message with a fresh client_id and returns the `ack`.
    pub async fn post(&mut self, room: &str, body: &str) -> Value {
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.post_as(room, body, &format!("auto-{id}")).await
    }

    /// Sends a message with the given client_id (retries, duplicates) and returns the `ack`.
    pub async fn post_as(&mut self, room: &str, body: &str, client_id: &str) -> Value {
        let r = self
            .request(
                json!({"type": "send", "room": room, "body": body, "client_id": client_id}),
                &format!("send-{client_id}"),
            )
            .await;
        assert_eq!(r["type"], "ack", "send: {r}");
        r
    }

    /// Sends `n` messages `"<prefix> <i>"` with client ids `<prefix>-<i>`, keeping up to 256 in
    /// flight and reading while it sends (as a real client must: a peer that stops reading is cut
    /// off); returns each message's acked seq, by index.
    pub async fn post_many(&mut self, room: &str, prefix: &str, n: usize) -> Vec<u64> {
        const IN_FLIGHT: usize = 256;
        let mut seqs = vec![0u64; n];
        let (mut sent, mut got) = (0, 0);
        while got < n {
            while sent < n && sent - got < IN_FLIGHT {
                self.send(
                    json!({"type": "send", "room": room, "body": format!("{prefix} {sent}"),
                                 "client_id": format!("{prefix}-{sent}")}),
                )
                .await;
                sent += 1;
            }
            let f = self.recv().await.expect("ack");
            match f["type"].as_str() {
                Some("ack") => {
                    let id = f["client_id"].as_str().unwrap_or("");
                    if let Some(i) = id
                        .strip_prefix(&format!("{prefix}-"))
                        .and_then(|i| i.parse::<usize>().ok())
                    {
                        seqs[i] = f["seq"].as_u64().expect("seq");
                        got += 1;
                    }
                }
                Some("error") => panic!("send failed: {f}"),
                _ => {}
            }
        }
        seqs
    }

    /// Lets `d` pass while reading (and dropping) whatever arrives: a client that is not read
    /// answers no WebSocket ping, and a short heartbeat would drop it as a dead peer.
    pub async fn idle(&mut self, d: Duration) {
        let until = tokio::time::Instant::now() + d;
        while let Some(left) = until.checked_duration_since(tokio::time::Instant::now()) {
            if let Err(WsError::Closed(_) | WsError::Transport(_)) = self.recv_within(left).await {
                return;
            }
        }
    }

    /// Every frame received until `deadline`, each with when it arrived (the connection must
    /// stay open meanwhile).
    pub async fn frames_until(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> Vec<(tokio::time::Instant, Value)> {
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left).await {
                Ok(f) => out.push((tokio::time::Instant::now(), f)),
                Err(WsError::Timeout) => return out,
                Err(e) => panic!("connection failed while collecting frames: {e:?}"),
            }
        }
    }
}

/// The next automatic client_id ([`WsClient::post`]): unique in the test process, whichever
/// connection or user sends.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
