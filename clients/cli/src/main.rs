//! `chat`: a command-line client of chat-edge, for scripting and debugging a deployment.
//!
//! ```text
//! chat token   --secret S --user U [--ttl 3600] [--iss I] [--aud A]
//! chat send    --url ws://HOST/ws --token T --room R [--body B] [--client-id ID] [--json]
//! chat tail    --url ws://HOST/ws --token T --room R [--since SEQ --epoch E] [--count N] [--json]
//! chat history --url ws://HOST/ws --token T --room R [--before N | --after N] [--limit N] [--json]
//! chat search  --url ws://HOST/ws --token T --query Q [--room R] [--before SEQ] [--limit N] [--json]
//! chat edit    --url ws://HOST/ws --token T --room R --seq SEQ --body B [--client-id ID] [--json]
//! chat delete  --url ws://HOST/ws --token T --room R --seq SEQ [--client-id ID] [--json]
//! chat react   --url ws://HOST/ws --token T --room R --seq SEQ --emoji E [--off] [--client-id ID] [--json]
//! chat reply   --url ws://HOST/ws --token T --room R --seq SEQ [--in-thread] --body B [--client-id ID] [--json]
//! ```
//! `send` also takes `--reply-to SEQ` and `--thread SEQ`, `history` takes `--thread SEQ` (the
//! root and its thread's messages). `reply` quotes message SEQ, or with `--in-thread` posts in the
//! thread of SEQ. `edit`, `delete`, `react` and `reply` print the `ack` (with `--json`, as JSON);
//! a retry with the same `--client-id` is answered with the original seq (`duplicate`).
//! `--url` defaults to `$CHAT_URL` (else `ws://127.0.0.1:8080/ws`) and `--token` to `$CHAT_TOKEN`;
//! a `wss://` URL trusts Mozilla's roots plus the PEM file `--ca FILE` (or `$CHAT_CA`), for a
//! private CA or a self-signed development certificate (chat-tls: rustls with ring);
//! `--secret S --user U` instead of `--token` mints a development token on the fly.
//! `send` without `--body` sends each non-empty line of stdin as one message. `send` and `tail`
//! join the room first when the user is not a member yet (an unknown id creates a public room).
//! `tail` reconnects on its own and recovers what it missed with `join{since, epoch}`.
//! `--json` prints one JSON object per line (the protocol's `message` objects, or the `ack` of a
//! send with the log's `epoch`); otherwise `#SEQ HH:MM:SS FROM: BODY` (`search` puts the room
//! first). `search` prints the results newest first; `--before` the last seq shown pages back.
//! Diagnostics go to stderr.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use chat_proto::{
    ClientFrame, ErrorCode, RoomEventFrame, RoomId, RoomSummary, ServerFrame, UserId,
};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

type Ws = tokio_tungstenite::WebSocketStream<chat_tls::WsStream>;

const USAGE: &str = "usage:
  chat token   --secret S --user U [--ttl 3600] [--iss I] [--aud A]
  chat send    [--url URL] (--token T | --secret S --user U) --room R [--body B] [--client-id ID] [--json]
  chat tail    [--url URL] (--token T | --secret S --user U) --room R [--since SEQ --epoch E] [--count N] [--json]
  chat history [--url URL] (--token T | --secret S --user U) --room R [--before N | --after N] [--limit N] [--json]
  chat search  [--url URL] (--token T | --secret S --user U) --query Q [--room R] [--before SEQ] [--limit N] [--json]
  chat edit    [--url URL] (--token T | --secret S --user U) --room R --seq SEQ --body B [--client-id ID] [--json]
  chat delete  [--url URL] (--token T | --secret S --user U) --room R --seq SEQ [--client-id ID] [--json]
  chat react   [--url URL] (--token T | --secret S --user U) --room R --seq SEQ --emoji E [--off] [--client-id ID] [--json]
  chat reply   [--url URL] (--token T | --secret S --user U) --room R --seq SEQ [--in-thread] --body B [--client-id ID] [--json]
send also takes --reply-to SEQ and --thread SEQ; history takes --thread SEQ.
--url defaults to $CHAT_URL or ws://127.0.0.1:8080/ws, --token to $CHAT_TOKEN.
wss:// URLs trust Mozilla's roots; --ca FILE (or $CHAT_CA) adds the PEM certificates of FILE
(a private CA or a self-signed development certificate).";

/// Flags that take no value.
const SWITCHES: &[&str] = &["json", "help", "off", "in-thread"];

/// A wrong command line: usage goes with it, exit code 2.
#[derive(Debug)]
struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

struct Args(HashMap<String, String>);

impl Args {
    fn parse(args: impl Iterator<Item = String>) -> anyhow::Result<Args> {
        let mut map = HashMap::new();
        let mut it = args.peekable();
        while let Some(a) = it.next() {
            let Some(flag) = a.strip_prefix("--") else {
                return Err(usage(format!("unexpected argument {a:?}")));
            };
            if let Some((k, v)) = flag.split_once('=') {
                map.insert(k.to_owned(), v.to_owned());
            } else if SWITCHES.contains(&flag) {
                map.insert(flag.to_owned(), "true".to_owned());
            } else {
                let v = it
                    .next()
                    .ok_or_else(|| usage(format!("--{flag} needs a value")))?;
                map.insert(flag.to_owned(), v);
            }
        }
        Ok(Args(map))
    }

    fn opt(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    fn req(&self, k: &str) -> anyhow::Result<&str> {
        self.opt(k)
            .ok_or_else(|| usage(format!("--{k} is required")))
    }

    fn num(&self, k: &str) -> anyhow::Result<Option<u64>> {
        self.opt(k)
            .map(|v| {
                v.parse()
                    .map_err(|_| usage(format!("--{k} must be a non-negative integer, not {v:?}")))
            })
            .transpose()
    }

    fn flag(&self, k: &str) -> bool {
        self.0.contains_key(k)
    }

    fn room(&self) -> anyhow::Result<RoomId> {
        let r = self.req("room")?;
        RoomId::new(r).map_err(|_| usage(format!("invalid room id {r:?}")))
    }

    fn url(&self) -> String {
        self.opt("url")
            .map(str::to_owned)
            .or_else(|| std::env::var("CHAT_URL").ok())
            .unwrap_or_else(|| "ws://127.0.0.1:8080/ws".to_owned())
    }

    /// The extra CA file for `wss://`: `--ca`, else `$CHAT_CA` (empty means none).
    fn ca(&self) -> Option<std::path::PathBuf> {
        self.opt("ca")
            .map(str::to_owned)
            .or_else(|| std::env::var("CHAT_CA").ok())
            .filter(|c| !c.is_empty())
            .map(std::path::PathBuf::from)
    }

    /// Where and how to connect.
    fn target(&self) -> Target {
        Target {
            url: self.url(),
            ca: self.ca(),
        }
    }

    fn token(&self) -> anyhow::Result<String> {
        if let Some(t) = self.opt("token") {
            return Ok(t.to_owned());
        }
        if self.opt("secret").is_some() {
            return mint(self);
        }
        std::env::var("CHAT_TOKEN")
            .map_err(|_| usage("--token (or $CHAT_TOKEN, or --secret and --user) is required"))
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A development HS256 token: `sub`, `iat`, `exp` (and `iss`/`aud` when given).
fn mint(a: &Args) -> anyhow::Result<String> {
    let secret = a.req("secret")?;
    let user = a.req("user")?;
    UserId::new(user).map_err(|_| usage(format!("invalid user id {user:?}")))?;
    let ttl = a.num("ttl")?.unwrap_or(3600) as i64;
    let now = now_ms() / 1000;
    let mut claims = json!({"sub": user, "iat": now, "exp": now + ttl});
    if let Some(iss) = a.opt("iss") {
        claims["iss"] = iss.into();
    }
    if let Some(aud) = a.opt("aud") {
        claims["aud"] = aud.into();
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).context("an empty secret")?,
    )
    .context("sign the token")
}

/// The server to connect to: its URL and, for `wss://`, an extra CA file to trust.
struct Target {
    url: String,
    ca: Option<std::path::PathBuf>,
}

/// What `hello` told us.
struct Hello {
    epoch: String,
    rooms: Vec<RoomSummary>,
}

/// Why a connection ended.
enum Closed {
    /// The server refused us for good (bad token, forbidden): do not retry.
    Fatal(anyhow::Error),
    /// The connection dropped: reconnecting may help.
    Lost(anyhow::Error),
}

fn encode(frame: &ClientFrame, reference: Option<&str>) -> String {
    let mut v = serde_json::to_value(frame).expect("client frames serialize");
    if let (Some(r), Some(map)) = (reference, v.as_object_mut()) {
        map.insert("ref".into(), r.into());
    }
    v.to_string()
}

async fn put(ws: &mut Ws, frame: &ClientFrame, reference: Option<&str>) -> Result<(), Closed> {
    ws.send(Message::Text(encode(frame, reference).into()))
        .await
        .map_err(|e| Closed::Lost(anyhow!("send failed: {e}")))
}

/// The next server frame; frames this version does not know are skipped.
async fn next(ws: &mut Ws) -> Result<ServerFrame, Closed> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                if let Ok(f) = serde_json::from_str::<ServerFrame>(&t) {
                    return Ok(f);
                }
            }
            Some(Ok(Message::Close(c))) => {
                let (code, reason) = c
                    .map(|c| (u16::from(c.code), c.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                let err = anyhow!("server closed the connection: {code} {reason}");
                return Err(
                    if code == chat_proto::close::UNAUTHORIZED
                        || code == u16::from(CloseCode::Policy)
                    {
                        Closed::Fatal(err)
                    } else {
                        Closed::Lost(err)
                    },
                );
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(Closed::Lost(anyhow!("connection error: {e}"))),
            None => return Err(Closed::Lost(anyhow!("connection closed"))),
        }
    }
}

fn error_text(code: ErrorCode, message: &str) -> anyhow::Error {
    anyhow!("{}: {message}", code.as_str())
}

/// Connects, authenticates and waits for `hello`.
async fn connect(target: &Target, token: &str) -> Result<(Ws, Hello), Closed> {
    let url = &target.url;
    let mut ws = tokio::time::timeout(
        Duration::from_secs(10),
        chat_tls::connect_ws(url, target.ca.as_deref()),
    )
    .await
    .map_err(|_| Closed::Lost(anyhow!("connecting to {url} timed out")))?
    .map_err(|e| {
        let err = anyhow!("cannot connect to {url}: {e}");
        // An untrusted certificate or a bad CA file does not get better by retrying.
        if e.is_permanent() {
            Closed::Fatal(err)
        } else {
            Closed::Lost(err)
        }
    })?;
    put(
        &mut ws,
        &ClientFrame::Auth {
            token: token.to_owned(),
        },
        None,
    )
    .await?;
    loop {
        match next(&mut ws).await? {
            ServerFrame::Hello { epoch, rooms, .. } => return Ok((ws, Hello { epoch, rooms })),
            ServerFrame::Error { code, message, .. } => {
                let err = error_text(code, &message);
                return Err(match code {
                    ErrorCode::Unauthorized | ErrorCode::TokenExpired => Closed::Fatal(err),
                    _ => Closed::Lost(err),
                });
            }
            _ => {}
        }
    }
}

/// Connects once; any failure is final (for the one-shot commands).
async fn connect_once(target: &Target, token: &str) -> anyhow::Result<(Ws, Hello)> {
    connect(target, token).await.map_err(|c| match c {
        Closed::Fatal(e) | Closed::Lost(e) => e,
    })
}

/// Joins `room` unless `hello` listed it already.
async fn ensure_member(ws: &mut Ws, hello: &Hello, room: &RoomId) -> anyhow::Result<()> {
    if hello.rooms.iter().any(|r| &r.room == room) {
        return Ok(());
    }
    let frame = ClientFrame::Join {
        room: room.clone(),
        since: None,
        epoch: None,
    };
    match request(ws, &frame, "join").await? {
        ServerFrame::Joined { .. } => Ok(()),
        other => bail!("join answered {other:?}"),
    }
}

/// Sends `frame` with `ref` and returns the answer to it (an error answer is an `Err`).
async fn request(ws: &mut Ws, frame: &ClientFrame, reference: &str) -> anyhow::Result<ServerFrame> {
    let lost = |c: Closed| match c {
        Closed::Fatal(e) | Closed::Lost(e) => e,
    };
    put(ws, frame, Some(reference)).await.map_err(lost)?;
    loop {
        let f = tokio::time::timeout(Duration::from_secs(30), next(ws))
            .await
            .map_err(|_| anyhow!("no answer to {} in 30 s", frame.type_name()))?
            .map_err(lost)?;
        let answer_ref = match &f {
            ServerFrame::Ack { reference, .. }
            | ServerFrame::Joined { reference, .. }
            | ServerFrame::Left { reference, .. }
            | ServerFrame::Ok { reference, .. }
            | ServerFrame::History { reference, .. }
            | ServerFrame::SearchResults { reference, .. }
            | ServerFrame::PresenceSnapshot { reference, .. }
            | ServerFrame::Error { reference, .. }
            | ServerFrame::Pong { reference } => reference.as_deref(),
            _ => None,
        };
        if answer_ref != Some(reference) {
            continue;
        }
        if let ServerFrame::Error {
            code,
            message,
            retry_after_ms,
            ..
        } = &f
        {
            if *code == ErrorCode::RateLimited {
                let wait = retry_after_ms.unwrap_or(100).max(1);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                put(ws, frame, Some(reference)).await.map_err(lost)?;
                continue;
            }
            return Err(error_text(*code, message));
        }
        return Ok(f);
    }
}

fn clock(ts: i64) -> String {
    let s = ts.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// One line per room event: what a person reads, or the live frame's JSON with `--json`.
fn print_event(out: &mut impl Write, e: &RoomEventFrame, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        writeln!(out, "{}", serde_json::to_string(e)?)?;
    } else {
        let line = match e {
            RoomEventFrame::Message(m) => {
                let mut notes = String::new();
                if let Some(r) = m.reply_to {
                    notes.push_str(&format!(" (reply to #{r})"));
                }
                if let Some(t) = m.thread {
                    notes.push_str(&format!(" (in thread #{t})"));
                }
                let mut body = m.body.clone();
                if let Some(st) = &m.state {
                    if st.deleted {
                        body = "[deleted]".into();
                    } else if st.edited.is_some() {
                        body.push_str(" (edited)");
                    }
                    for (emoji, users) in &st.reactions {
                        body.push_str(&format!(" [{emoji} {}]", users.len()));
                    }
                    if let Some(n) = st.replies {
                        body.push_str(&format!(" [{n} in thread]"));
                    }
                }
                format!(
                    "#{} {} {}{notes}: {body}",
                    m.seq,
                    clock(m.ts),
                    m.from.as_str()
                )
            }
            RoomEventFrame::Edit(x) => format!(
                "#{} {} {} edited #{}: {}",
                x.seq,
                clock(x.ts),
                x.from.as_str(),
                x.target,
                x.body
            ),
            RoomEventFrame::Delete(x) => format!(
                "#{} {} {} deleted #{}",
                x.seq,
                clock(x.ts),
                x.from.as_str(),
                x.target
            ),
            RoomEventFrame::Reaction(x) => format!(
                "#{} {} {} {} {} #{}",
                x.seq,
                clock(x.ts),
                x.from.as_str(),
                if x.on { "reacted" } else { "took back" },
                x.emoji,
                x.target
            ),
        };
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(())
}

async fn send(a: &Args) -> anyhow::Result<()> {
    let room = a.room()?;
    let token = a.token()?;
    let as_json = a.flag("json");
    let bodies: Vec<String> = match a.opt("body") {
        Some(b) => vec![b.to_owned()],
        None => std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<Vec<_>, _>>()
            .context("read stdin")?
            .into_iter()
            .filter(|l| !l.trim().is_empty())
            .collect(),
    };
    if bodies.is_empty() {
        return Err(usage("nothing to send: give --body or lines on stdin"));
    }
    if a.opt("client-id").is_some() && bodies.len() > 1 {
        return Err(usage("--client-id goes with a single --body"));
    }
    let (mut ws, hello) = connect_once(&a.target(), &token).await?;
    ensure_member(&mut ws, &hello, &room).await?;
    let base = format!(
        "cli-{}-{}",
        std::process::id(),
        now_ms().rem_euclid(1_000_000_000)
    );
    let mut out = std::io::stdout().lock();
    for (i, body) in bodies.into_iter().enumerate() {
        let client_id = a
            .opt("client-id")
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{base}-{i}"));
        let frame = ClientFrame::Send {
            room: room.clone(),
            body,
            client_id,
            reply_to: a.num("reply-to")?,
            thread: a.num("thread")?,
        };
        match request(&mut ws, &frame, &format!("s{i}")).await? {
            ServerFrame::Ack {
                room,
                client_id,
                seq,
                ts,
                duplicate,
                ..
            } => {
                if as_json {
                    writeln!(
                        out,
                        "{}",
                        json!({"type":"ack","room":room,"client_id":client_id,"seq":seq,"ts":ts,
                               "duplicate":duplicate,"epoch":hello.epoch})
                    )?;
                } else {
                    writeln!(
                        out,
                        "sent #{seq} to {}{}",
                        room.as_str(),
                        if duplicate { " (duplicate)" } else { "" }
                    )?;
                }
            }
            other => bail!("send answered {other:?}"),
        }
    }
    let _ = ws.close(None).await;
    Ok(())
}

/// `chat edit`, `delete`, `react` and `reply` (protocol.md#ws-lifecycle): one frame, its `ack`.
async fn change(cmd: &str, a: &Args) -> anyhow::Result<()> {
    let room = a.room()?;
    let seq = a
        .num("seq")?
        .ok_or_else(|| usage("--seq (the message's seq) is required"))?;
    let token = a.token()?;
    let client_id = a.opt("client-id").map(str::to_owned).unwrap_or_else(|| {
        format!(
            "cli-{}-{}",
            std::process::id(),
            now_ms().rem_euclid(1_000_000_000)
        )
    });
    let frame = match cmd {
        "edit" => ClientFrame::Edit {
            room,
            seq,
            body: a.req("body")?.to_owned(),
            client_id,
        },
        "delete" => ClientFrame::Delete {
            room,
            seq,
            client_id,
        },
        "react" => ClientFrame::React {
            room,
            seq,
            emoji: a.req("emoji")?.to_owned(),
            on: !a.flag("off"),
            client_id,
        },
        _ => {
            let in_thread = a.flag("in-thread");
            ClientFrame::Send {
                room,
                body: a.req("body")?.to_owned(),
                client_id,
                reply_to: (!in_thread).then_some(seq),
                thread: in_thread.then_some(seq),
            }
        }
    };
    let (mut ws, hello) = connect_once(&a.target(), &token).await?;
    match request(&mut ws, &frame, "c").await? {
        ServerFrame::Ack {
            room,
            client_id,
            seq: event,
            ts,
            duplicate,
            ..
        } => {
            if a.flag("json") {
                println!(
                    "{}",
                    json!({"type":"ack","room":room,"client_id":client_id,"seq":event,"ts":ts,
                           "duplicate":duplicate,"epoch":hello.epoch})
                );
            } else {
                println!(
                    "{cmd} #{event} of #{seq} in {}{}",
                    room.as_str(),
                    if duplicate { " (duplicate)" } else { "" }
                );
            }
        }
        other => bail!("{cmd} answered {other:?}"),
    }
    let _ = ws.close(None).await;
    Ok(())
}

async fn history(a: &Args) -> anyhow::Result<()> {
    let room = a.room()?;
    let token = a.token()?;
    let (before, after) = (a.num("before")?, a.num("after")?);
    if before.is_some() && after.is_some() {
        return Err(usage("give --before or --after, not both"));
    }
    let limit = a.num("limit")?.map(|l| l as i64);
    let (mut ws, _hello) = connect_once(&a.target(), &token).await?;
    let frame = ClientFrame::History {
        room,
        before,
        after,
        limit,
        thread: a.num("thread")?,
    };
    let (messages, has_more) = match request(&mut ws, &frame, "h").await? {
        ServerFrame::History {
            messages, has_more, ..
        } => (messages, has_more),
        other => bail!("history answered {other:?}"),
    };
    let mut out = std::io::stdout().lock();
    for m in &messages {
        print_event(&mut out, m, a.flag("json"))?;
    }
    eprintln!(
        "{} message(s); {}",
        messages.len(),
        if has_more {
            "more exist beyond this page"
        } else {
            "no more in that direction"
        }
    );
    let _ = ws.close(None).await;
    Ok(())
}

/// `chat search`: one page of results, newest first (protocol.md#ws-search).
async fn search(a: &Args) -> anyhow::Result<()> {
    let query = a.req("query")?.to_owned();
    let room = a.opt("room").map(|_| a.room()).transpose()?;
    let token = a.token()?;
    let before = a.num("before")?;
    let limit = a.num("limit")?.map(|l| l as i64);
    let (mut ws, _hello) = connect_once(&a.target(), &token).await?;
    let frame = ClientFrame::Search {
        query,
        room,
        limit,
        before,
    };
    let (results, has_more) = match request(&mut ws, &frame, "q").await? {
        ServerFrame::SearchResults {
            results, has_more, ..
        } => (results, has_more),
        other => bail!("search answered {other:?}"),
    };
    let as_json = a.flag("json");
    let mut out = std::io::stdout().lock();
    for m in &results {
        if !as_json {
            write!(out, "{} ", m.room.as_str())?;
        }
        print_event(&mut out, &RoomEventFrame::Message(m.clone()), as_json)?;
    }
    match (has_more, results.last()) {
        (true, Some(last)) => eprintln!(
            "{} result(s); more with --before {}",
            results.len(),
            last.seq
        ),
        _ => eprintln!("{} result(s); no more", results.len()),
    }
    let _ = ws.close(None).await;
    Ok(())
}

async fn tail(a: &Args) -> anyhow::Result<()> {
    let room = a.room()?;
    let token = a.token()?;
    let as_json = a.flag("json");
    let count = a.num("count")?;
    let mut since = a.num("since")?;
    let mut epoch = a.opt("epoch").map(str::to_owned);
    if since.is_some() && epoch.is_none() {
        eprintln!(
            "chat: --since without --epoch cannot recover (the server answers recovered:false); showing live messages"
        );
    }
    let target = a.target();
    let mut printed = 0u64;
    let mut backoff = Duration::from_millis(500);
    let mut out = std::io::stdout().lock();
    loop {
        let result = async {
            let (mut ws, hello) = connect(&target, &token).await?;
            if epoch.as_deref().is_some_and(|e| e != hello.epoch) && since.is_some() {
                eprintln!(
                    "chat: the message log changed (epoch {} is now {}): what was missed cannot be recovered",
                    epoch.as_deref().unwrap_or(""),
                    hello.epoch
                );
            }
            let join = ClientFrame::Join {
                room: room.clone(),
                since,
                epoch: since.and(epoch.clone()),
            };
            epoch = Some(hello.epoch.clone());
            put(&mut ws, &join, Some("tail")).await?;
            backoff = Duration::from_millis(500);
            loop {
                match next(&mut ws).await? {
                    f @ (ServerFrame::Message(_)
                    | ServerFrame::Edit(_)
                    | ServerFrame::Delete(_)
                    | ServerFrame::Reaction(_)) => {
                        let m = match f {
                            ServerFrame::Message(m) => RoomEventFrame::Message(m),
                            ServerFrame::Edit(x) => RoomEventFrame::Edit(x),
                            ServerFrame::Delete(x) => RoomEventFrame::Delete(x),
                            ServerFrame::Reaction(x) => RoomEventFrame::Reaction(x),
                            _ => continue,
                        };
                        if *m.room() != room || since.is_some_and(|s| m.seq() <= s) {
                            continue;
                        }
                        since = Some(m.seq());
                        print_event(&mut out, &m, as_json).map_err(Closed::Fatal)?;
                        printed += 1;
                        if count.is_some_and(|c| printed >= c) {
                            return Ok(());
                        }
                    }
                    ServerFrame::Joined {
                        reference: Some(r),
                        last_seq,
                        recovered,
                        ..
                    } if r == "tail" => {
                        eprintln!(
                            "chat: tailing {} (epoch {}, last seq {last_seq}{})",
                            room.as_str(),
                            hello.epoch,
                            match recovered {
                                Some(true) => ", recovered what was missed",
                                Some(false) => ", could not recover what was missed",
                                None => "",
                            }
                        );
                        if since.is_none() {
                            since = Some(last_seq);
                        }
                    }
                    ServerFrame::Error {
                        reference: Some(r),
                        code,
                        message,
                        ..
                    } if r == "tail" => {
                        let err = error_text(code, &message);
                        return Err(if code == ErrorCode::Unavailable {
                            Closed::Lost(err)
                        } else {
                            Closed::Fatal(err)
                        });
                    }
                    ServerFrame::Error {
                        code: ErrorCode::TokenExpired,
                        message,
                        ..
                    } => return Err(Closed::Fatal(error_text(ErrorCode::TokenExpired, &message))),
                    _ => {}
                }
            }
        }
        .await;
        match result {
            Ok(()) => return Ok(()),
            Err(Closed::Fatal(e)) => return Err(e),
            Err(Closed::Lost(e)) => {
                eprintln!(
                    "chat: {e}; reconnecting in {} ms (from seq {})",
                    backoff.as_millis(),
                    since.unwrap_or(0)
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let mut argv = std::env::args().skip(1);
    let cmd = argv.next().unwrap_or_default();
    let a = Args::parse(argv)?;
    if a.flag("help") || matches!(cmd.as_str(), "help" | "-h" | "--help") {
        println!("{USAGE}");
        return Ok(());
    }
    match cmd.as_str() {
        "token" => {
            println!("{}", mint(&a)?);
            Ok(())
        }
        "send" => send(&a).await,
        "tail" => tail(&a).await,
        "history" => history(&a).await,
        "search" => search(&a).await,
        "edit" | "delete" | "react" | "reply" => change(&cmd, &a).await,
        "" => Err(usage("a command is required")),
        other => Err(usage(format!("unknown command {other:?}"))),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run().await {
        if e.is::<UsageError>() {
            eprintln!("chat: {e}\n{USAGE}");
            std::process::exit(2);
        }
        eprintln!("chat: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn args(s: &str) -> Args {
        Args::parse(s.split_whitespace().map(str::to_owned)).expect("parse")
    }

    #[test]
    fn parses_flags_switches_and_equals() {
        let a = args("--room r1 --json --limit=5");
        assert_eq!(a.opt("room"), Some("r1"));
        assert!(a.flag("json"));
        assert_eq!(a.num("limit").expect("num"), Some(5));
        assert!(Args::parse(["--room".to_owned()].into_iter()).is_err());
        assert!(Args::parse(["stray".to_owned()].into_iter()).is_err());
    }

    #[test]
    fn minted_token_carries_sub_and_exp() {
        let t = mint(&args("--secret s3 --user alice --ttl 60 --iss me")).expect("token");
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.set_issuer(&["me"]);
        let data = jsonwebtoken::decode::<Value>(
            &t,
            &jsonwebtoken::DecodingKey::from_secret(b"s3").unwrap(),
            &v,
        )
        .expect("valid");
        assert_eq!(data.claims["sub"], "alice");
        let exp = data.claims["exp"].as_i64().expect("exp");
        assert!((exp - now_ms() / 1000 - 60).abs() <= 2);
        assert!(mint(&args("--secret s --user bad!id")).is_err());
    }

    #[test]
    fn frames_carry_ref() {
        let f = ClientFrame::Ping;
        let v: Value = serde_json::from_str(&encode(&f, Some("x1"))).expect("json");
        assert_eq!(v, json!({"type":"ping","ref":"x1"}));
    }

    #[test]
    fn clock_is_utc_time_of_day() {
        assert_eq!(clock(0), "00:00:00");
        assert_eq!(clock(3_723_000), "01:02:03");
    }
}
