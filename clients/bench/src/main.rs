//! `chat-bench`: measures a running chat system from outside, as clients see it.
//!
//! ```text
//! chat-bench idle       --url ws://127.0.0.1:8080/ws --secret S --connections 1000 --pid EDGE_PID
//! chat-bench throughput --url ws://127.0.0.1:8080/ws --secret S --rooms 10 --members 100 --senders 2 --rate 5000 --seconds 10
//! chat-bench nats-floor --nats nats://127.0.0.1:4222 --rate 20000 --seconds 5
//! chat-bench js-floor   --nats nats://127.0.0.1:4222 --rate 100 --seconds 5
//! chat-bench trace      --url ws://127.0.0.1:8080/ws --nats nats://127.0.0.1:4222 --secret S --receivers 3 --messages 50
//! chat-bench history    --nats nats://127.0.0.1:4222 --messages 200000 --rooms 100 --lag-rate 50000 --page-rate 1000
//! ```
//! `--url` may be `wss://`: it trusts Mozilla's roots plus the PEM file `--ca FILE` (or
//! `$CHAT_CA`), for a self-signed development certificate.
//! Every sender follows a fixed schedule (constant offered rate) and latency is measured from the
//! scheduled send time, so queueing delay is not hidden. Output: a table and a JSON line.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<chat_tls::WsStream>;

struct Args(HashMap<String, String>);

impl Args {
    fn parse() -> (String, Args) {
        let mut it = std::env::args().skip(1);
        let cmd = it.next().unwrap_or_default();
        let mut map = HashMap::new();
        while let Some(k) = it.next() {
            if let Some(k) = k.strip_prefix("--") {
                map.insert(k.to_owned(), it.next().unwrap_or_default());
            }
        }
        (cmd, Args(map))
    }
    fn get(&self, k: &str, default: &str) -> String {
        self.0.get(k).cloned().unwrap_or_else(|| default.to_owned())
    }
    fn num(&self, k: &str, default: u64) -> u64 {
        self.0
            .get(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn token(secret: &str, user: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": user, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).expect("a non-empty secret"),
    )
    .expect("token")
}

/// The extra CA file for `wss://` (`--ca`, else `$CHAT_CA`), read once by `main`.
static CA: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();

async fn connect(url: &str, secret: &str, user: &str) -> anyhow::Result<Ws> {
    let ca = CA.get().and_then(|c| c.as_deref());
    let mut ws = chat_tls::connect_ws(url, ca).await.context("connect")?;
    ws.send(Message::Text(
        json!({"type":"auth","token": token(secret, user)})
            .to_string()
            .into(),
    ))
    .await?;
    wait_for(&mut ws, "hello").await?;
    Ok(ws)
}

async fn wait_for(ws: &mut Ws, ty: &str) -> anyhow::Result<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t)?;
                if v["type"] == ty {
                    return Ok(v);
                }
                if v["type"] == "error" {
                    bail!("server error while waiting for {ty}: {v}");
                }
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => bail!("socket error: {e}"),
            Ok(None) => bail!("closed while waiting for {ty}"),
            Err(_) => bail!("timed out waiting for {ty}"),
        }
    }
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).context("read /proc/PID/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS not found")
}

async fn idle(a: &Args) -> anyhow::Result<()> {
    let url = a.get("url", "ws://127.0.0.1:8080/ws");
    let secret = a.get("secret", "local-dev-secret-at-least-32-bytes");
    let n = a.num("connections", 1000) as usize;
    let pid = a.num("pid", 0) as u32;
    if pid == 0 {
        bail!("--pid of the edge process is required");
    }
    // Warm up: a first batch of connections so that lazily allocated structures exist.
    let mut warm = Vec::new();
    for i in 0..50 {
        warm.push(connect(&url, &secret, &format!("warm{i}")).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid)?;
    let mut conns = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        conns.push(connect(&url, &secret, &format!("idle{i}")).await?);
    }
    let connect_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid)?;
    let per = (after.saturating_sub(before)) as f64 / n as f64;
    println!(
        "idle connections: {n}, edge RSS before {before} KiB, after {after} KiB, {per:.2} KiB per connection"
    );
    println!(
        "connect+auth+hello: {:.0} connections/s",
        n as f64 / connect_s
    );
    println!(
        "{}",
        json!({"bench":"idle","connections":n,"rss_before_kib":before,"rss_after_kib":after,"kib_per_connection":per})
    );
    drop(conns);
    drop(warm);
    Ok(())
}

/// What the throughput readers take from a server frame (the rest is skipped unparsed).
#[derive(serde::Deserialize)]
struct Seen<'a> {
    #[serde(rename = "type", borrow)]
    ty: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    body: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    client_id: Option<std::borrow::Cow<'a, str>>,
}

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Latencies by the second of the run they were scheduled in (max and the share over 10 and
/// 50 ms): whether a tail is spread over the run or a few stalls, and when they happen. A few
/// counters per second and reader, so that recording stays as cheap as the histogram's.
#[derive(Default, Clone)]
struct Timeline(Vec<Second>);

#[derive(Default, Clone, Copy)]
struct Second {
    n: u64,
    max_us: u64,
    over_10ms: u64,
    over_50ms: u64,
}

impl Timeline {
    fn record(&mut self, second: usize, us: u64) {
        if second >= self.0.len() {
            self.0.resize(second + 1, Second::default());
        }
        let s = &mut self.0[second];
        s.n += 1;
        s.max_us = s.max_us.max(us);
        s.over_10ms += u64::from(us > 10_000);
        s.over_50ms += u64::from(us > 50_000);
    }

    fn add(&mut self, other: &Timeline) {
        if other.0.len() > self.0.len() {
            self.0.resize(other.0.len(), Second::default());
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            a.n += b.n;
            a.max_us = a.max_us.max(b.max_us);
            a.over_10ms += b.over_10ms;
            a.over_50ms += b.over_50ms;
        }
    }

    fn print(&self, what: &str) {
        let col = |f: &dyn Fn(&Second) -> String| -> String {
            self.0.iter().map(f).collect::<Vec<_>>().join(" ")
        };
        let share = |k: u64, n: u64| {
            if n == 0 {
                0.0
            } else {
                100.0 * k as f64 / n as f64
            }
        };
        println!("{what} by second of the run (scheduled send time):");
        println!(
            "  max ms      {}",
            col(&|s| format!("{:.0}", s.max_us as f64 / 1000.0))
        );
        println!(
            "  % > 10 ms   {}",
            col(&|s| format!("{:.1}", share(s.over_10ms, s.n)))
        );
        println!(
            "  % > 50 ms   {}",
            col(&|s| format!("{:.1}", share(s.over_50ms, s.n)))
        );
    }

    fn json(&self) -> Value {
        json!(
            self.0
                .iter()
                .map(|s| json!({"n":s.n,"max_ms":s.max_us as f64 / 1000.0,
            "over_10ms":s.over_10ms,"over_50ms":s.over_50ms}))
                .collect::<Vec<_>>()
        )
    }
}

/// This process's CPU time so far (user + system), in seconds: whether the load generator itself
/// is the bound of what it measures (Linux `/proc/self/stat`, clock ticks of 1/100 s).
fn own_cpu_s() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command's closing parenthesis start at field 3; utime and stime are 14
    // and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    f.get(11)
        .zip(f.get(12))
        .map_or(0.0, |(u, s)| (u + s) / 100.0)
}

async fn throughput(a: &Args) -> anyhow::Result<()> {
    let url = a.get("url", "ws://127.0.0.1:8080/ws");
    let secret = a.get("secret", "local-dev-secret-at-least-32-bytes");
    let rooms = a.num("rooms", 10);
    let members = a.num("members", 10);
    let senders = a.num("senders", 1).min(members);
    let rate = a.num("rate", 1000) as f64;
    let seconds = a.num("seconds", 10);
    let tag = format!("b{}", now_ns() % 1_000_000);
    let per_sender_rate = rate / (rooms * senders) as f64;
    let total_expected = (rate * seconds as f64) as u64;
    println!(
        "throughput: {rooms} rooms x {members} members ({senders} senders each), offered {rate} msgs/s for {seconds}s \
         ({per_sender_rate:.1} msgs/s per sender)"
    );
    let mut readers = Vec::new();
    let mut sender_tasks = Vec::new();
    let mut sender_sinks = Vec::new();
    // Sending starts only once every member has joined (a late joiner would miss messages that
    // the expected count includes); readers learn the end of the run through this cell.
    let deadline_cell: std::sync::Arc<std::sync::OnceLock<Instant>> = Default::default();
    // The wall-clock time of the first send's schedule, in ns: the timelines' second 0.
    let start_cell: std::sync::Arc<std::sync::OnceLock<u64>> = Default::default();
    for r in 0..rooms {
        let room = format!("{tag}-r{r}");
        for m in 0..members {
            let user = format!("{tag}-r{r}-u{m}");
            let mut ws = connect(&url, &secret, &user).await?;
            ws.send(Message::Text(
                json!({"type":"join","room": room}).to_string().into(),
            ))
            .await?;
            wait_for(&mut ws, "joined").await?;
            let (sink, mut stream) = ws.split();
            let expected_msgs = (per_sender_rate * seconds as f64) as u64 * senders;
            let deadline_cell = deadline_cell.clone();
            let start_cell = start_cell.clone();
            readers.push(tokio::spawn(async move {
                let mut lat_by_s = Timeline::default();
                let mut acks_by_s = Timeline::default();
                let second = |ts: u64| {
                    let start = start_cell.get().copied().unwrap_or(ts);
                    (ts.saturating_sub(start) / 1_000_000_000) as usize
                };
                let mut lat =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
                let mut acks =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
                let mut got = 0u64;
                while got < expected_msgs {
                    let deadline = deadline_cell
                        .get()
                        .copied()
                        .unwrap_or_else(|| Instant::now() + Duration::from_secs(600));
                    let next = tokio::time::timeout_at(deadline.into(), stream.next()).await;
                    let t = match next {
                        Ok(Some(Ok(Message::Text(t)))) => t,
                        // Heartbeat pings (answered by tungstenite) and other control frames.
                        Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Binary(_)))) => {
                            continue;
                        }
                        _ => break,
                    };
                    let now = now_ns();
                    // Only the fields measured, borrowed from the frame: a whole `Value` per
                    // frame cost the load generator's core more than the server's work per
                    // delivery is meant to (issue 12: the load must not be the bound).
                    let Ok(f) = serde_json::from_str::<Seen>(&t) else {
                        continue;
                    };
                    match &*f.ty {
                        "message" => {
                            got += 1;
                            if let Some(ts) = f
                                .body
                                .as_deref()
                                .and_then(|b| b.strip_prefix("t"))
                                .and_then(|b| b.parse::<u64>().ok())
                            {
                                let us = now.saturating_sub(ts) / 1000;
                                let _ = lat.record(us);
                                lat_by_s.record(second(ts), us);
                            }
                        }
                        "ack" => {
                            let ts = f.client_id.as_deref().and_then(|c| {
                                c.split('-').nth(1).and_then(|t| t.parse::<u64>().ok())
                            });
                            if let Some(ts) = ts {
                                let us = now.saturating_sub(ts) / 1000;
                                let _ = acks.record(us);
                                acks_by_s.record(second(ts), us);
                            }
                        }
                        _ => {}
                    }
                }
                (got, lat, acks, lat_by_s, acks_by_s)
            }));
            if m < senders {
                sender_sinks.push((room.clone(), sink));
            } else {
                drop(sink);
            }
        }
    }
    let start_at = Instant::now() + Duration::from_secs(1);
    let _ = deadline_cell.set(start_at + Duration::from_secs(seconds + 15));
    let _ = start_cell.set(
        now_ns()
            + start_at
                .saturating_duration_since(Instant::now())
                .as_nanos() as u64,
    );
    let (cpu0, wall0) = (own_cpu_s(), Instant::now());
    let all_senders = sender_sinks.len().max(1) as u32;
    for (k, (room, mut sink)) in sender_sinks.into_iter().enumerate() {
        let n = (per_sender_rate * seconds as f64) as u64;
        let interval = Duration::from_secs_f64(1.0 / per_sender_rate);
        // Sender k starts k/senders of an interval late, so the senders spread over the
        // interval as independent clients would (bench/socketio/load.mjs does the same). Without
        // it every sender fired at the same instant: at 25 msgs/s, a burst of 20 messages (2,000
        // deliveries) every 0.8 s, whose draining was most of the latency measured (issue 12).
        let start_at = start_at + interval * k as u32 / all_senders;
        sender_tasks.push(tokio::spawn(async move {
            let base_ns = now_ns() + start_at.saturating_duration_since(Instant::now()).as_nanos() as u64;
            tokio::time::sleep_until(start_at.into()).await;
            // How late each send left (written and flushed) against its schedule: what the
            // load generator itself adds to every latency it reports.
            let mut late = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            for i in 0..n {
                let due = start_at + interval * i as u32;
                tokio::time::sleep_until(due.into()).await;
                let scheduled = base_ns + (interval * i as u32).as_nanos() as u64;
                let frame = json!({"type":"send","room": room,"body": format!("t{scheduled}"),"client_id": format!("{i}-{scheduled}")});
                if sink.send(Message::Text(frame.to_string().into())).await.is_err() {
                    break;
                }
                let _ = late.record(now_ns().saturating_sub(scheduled) / 1000);
            }
            (n, late)
        }));
    }
    let mut sent = 0;
    let mut late = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for t in sender_tasks {
        let (n, l) = t.await?;
        sent += n;
        late.add(l)?;
    }
    let mut lat = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut acks = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut lat_by_s = Timeline::default();
    let mut acks_by_s = Timeline::default();
    let mut delivered = 0;
    for r in readers {
        let (got, l, a, lt, at) = r.await?;
        delivered += got;
        lat.add(l)?;
        acks.add(a)?;
        lat_by_s.add(&lt);
        acks_by_s.add(&at);
    }
    let (load_cpu, load_wall) = (own_cpu_s() - cpu0, wall0.elapsed().as_secs_f64());
    let expected_deliveries = sent * members;
    let elapsed = seconds as f64;
    println!(
        "sent {sent} (target {total_expected}), delivered {delivered} of {expected_deliveries}"
    );
    println!(
        "deliveries/s {:.0}; e2e latency ms p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}; send->ack ms p50 {:.3} p99 {:.3}",
        delivered as f64 / elapsed,
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 0.999),
        lat.max() as f64 / 1000.0,
        pct(&acks, 0.5),
        pct(&acks, 0.99)
    );
    println!(
        "sends left the load generator late by ms p50 {:.3} p99 {:.3} (scheduled -> written)",
        pct(&late, 0.5),
        pct(&late, 0.99)
    );
    println!(
        "load generator: {load_cpu:.2} CPU-s over {load_wall:.1} s of sending and receiving ({:.0}% of one core)",
        100.0 * load_cpu / load_wall.max(1e-9)
    );
    lat_by_s.print("e2e latency");
    acks_by_s.print("send->ack");
    println!(
        "{}",
        json!({"bench":"throughput","rooms":rooms,"members":members,"senders":senders,"offered_msgs_per_s":rate,
               "seconds":seconds,"sent":sent,"delivered":delivered,"expected_deliveries":expected_deliveries,
               "deliveries_per_s": delivered as f64 / elapsed,
               "e2e_ms":{"p50":pct(&lat,0.5),"p99":pct(&lat,0.99),"p999":pct(&lat,0.999)},
               "ack_ms":{"p50":pct(&acks,0.5),"p99":pct(&acks,0.99)},
               "send_late_ms":{"p50":pct(&late,0.5),"p99":pct(&late,0.99)},
               "load_cpu_s":load_cpu,"load_wall_s":load_wall,
               "e2e_by_second":lat_by_s.json(),"ack_by_second":acks_by_s.json()})
    );
    Ok(())
}

async fn nats_floor(a: &Args) -> anyhow::Result<()> {
    let url = a.get("nats", "nats://127.0.0.1:4222");
    let rate = a.num("rate", 10_000) as f64;
    let seconds = a.num("seconds", 5);
    let client = async_nats::connect(&url).await?;
    let mut sub = client.subscribe("bench.floor").await?;
    client.flush().await?;
    let n = (rate * seconds as f64) as u64;
    let pubc = client.clone();
    let publisher = tokio::spawn(async move {
        let start = Instant::now();
        let interval = Duration::from_secs_f64(1.0 / rate);
        for i in 0..n {
            tokio::time::sleep_until((start + interval * i as u32).into()).await;
            let _ = pubc
                .publish("bench.floor", now_ns().to_string().into())
                .await;
        }
    });
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for _ in 0..n {
        let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(10), sub.next()).await else {
            break;
        };
        if let Ok(ts) = std::str::from_utf8(&m.payload).unwrap_or("").parse::<u64>() {
            let _ = h.record(now_ns().saturating_sub(ts) / 1000);
        }
    }
    publisher.await?;
    println!(
        "nats core pub->sub at {rate} msgs/s: p50 {:.3} ms p99 {:.3} ms p99.9 {:.3} ms",
        pct(&h, 0.5),
        pct(&h, 0.99),
        pct(&h, 0.999)
    );
    println!(
        "{}",
        json!({"bench":"nats-floor","rate":rate,"p50_ms":pct(&h,0.5),"p99_ms":pct(&h,0.99)})
    );
    Ok(())
}

/// The floor of our design on the running stack: a JetStream publish to the `CHAT` stream
/// (`chat.room.<probe room>.msg`) until its republished copy arrives on `chat.fanout.<room>` —
/// the path every message takes before the edge delivers it (stored, archived and consumed by
/// notify like any other message, so it costs what a message costs).
async fn js_floor(a: &Args) -> anyhow::Result<()> {
    let url = a.get("nats", "nats://127.0.0.1:4222");
    let rate = a.num("rate", 100) as f64;
    let seconds = a.num("seconds", 5);
    let room = format!("floor-probe-{}", now_ns() % 1_000_000);
    let client = async_nats::connect(&url).await?;
    let js = async_nats::jetstream::new(client.clone());
    let mut sub = client.subscribe(format!("chat.fanout.{room}")).await?;
    client.flush().await?;
    let n = (rate * seconds as f64) as u64;
    let subject = format!("chat.room.{room}.msg");
    let publisher = tokio::spawn(async move {
        let start = Instant::now();
        let interval = Duration::from_secs_f64(1.0 / rate);
        let mut acks = Vec::new();
        for i in 0..n {
            tokio::time::sleep_until((start + interval * i as u32).into()).await;
            let body = json!({"v":1,"kind":"message","room":room,"from":"bench-floor",
                "body":now_ns().to_string(),"client_id":format!("f{i}"),"ts":now_ns() / 1_000_000});
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("bench-floor:{room}:{i}").as_str());
            if let Ok(ack) = js
                .publish_with_headers(subject.clone(), headers, body.to_string().into())
                .await
            {
                acks.push(ack);
            }
        }
        for ack in acks {
            let _ = ack.await;
        }
    });
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for _ in 0..n {
        let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(10), sub.next()).await else {
            break;
        };
        let sent = serde_json::from_slice::<serde_json::Value>(&m.payload)
            .ok()
            .and_then(|v| v["body"].as_str().and_then(|b| b.parse::<u64>().ok()));
        if let Some(ts) = sent {
            let _ = h.record(now_ns().saturating_sub(ts) / 1000);
        }
    }
    publisher.await?;
    println!(
        "jetstream publish->republish at {rate} msgs/s: p50 {:.3} ms p99 {:.3} ms ({} samples)",
        pct(&h, 0.5),
        pct(&h, 0.99),
        h.len()
    );
    println!(
        "{}",
        json!({"bench":"js-floor","rate":rate,"samples":h.len(),"p50_ms":pct(&h,0.5),"p99_ms":pct(&h,0.99)})
    );
    Ok(())
}

/// The archive consumer's ack floor: every event at or below it is committed in PostgreSQL.
async fn ack_floor(js: &async_nats::jetstream::Context) -> u64 {
    match js.get_stream("CHAT").await {
        Ok(s) => s
            .consumer_info("history-archive")
            .await
            .map(|i| i.ack_floor.stream_sequence)
            .unwrap_or(0),
        Err(_) => 0,
    }
}

/// Waits (at most `limit`) until no consumer of the `CHAT` stream has anything pending, so that
/// what is measured next does not share the machine with a backlog (chat-notify's, after the
/// archive stages); returns how long that took, or `None` if a backlog outlived `limit`.
/// Polled: JetStream tells a consumer's state only when asked.
async fn stream_consumers_idle(
    js: &async_nats::jetstream::Context,
    limit: Duration,
) -> anyhow::Result<Option<Duration>> {
    let start = Instant::now();
    let stream = js.get_stream("CHAT").await?;
    loop {
        let mut names = stream.consumer_names();
        let mut busy = false;
        while let Some(name) = names.next().await {
            let info = stream.consumer_info(name?).await?;
            busy |= info.num_pending > 0 || info.num_ack_pending > 0;
        }
        if !busy {
            return Ok(Some(start.elapsed()));
        }
        if start.elapsed() > limit {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn history(a: &Args) -> anyhow::Result<()> {
    use futures::stream::FuturesUnordered;
    let url = a.get("nats", "nats://127.0.0.1:4222");
    let n = a.num("messages", 200_000);
    let rooms = a.num("rooms", 100).max(1);
    let lag_rate = a.num("lag-rate", 50_000) as f64;
    let lag_seconds = a.num("lag-seconds", 5);
    let page_rate = a.num("page-rate", 1000) as f64;
    let page_seconds = a.num("page-seconds", 5);
    let client = async_nats::connect(&url).await?;
    let js = async_nats::jetstream::new(client.clone());
    let tag = format!("h{}", now_ns() % 1_000_000);
    let event = |room: u64, i: u64| {
        json!({"v":1,"kind":"message","room":format!("{tag}-{room}"),"from":"bench","body":format!("history bench message {i}"),
               "client_id":format!("{i}"),"ts": now_ns() / 1_000_000})
        .to_string()
    };

    // 1. Archive throughput: publish n events as fast as the stream takes them, then wait until
    // the archive's ack floor covers the last one.
    let start = Instant::now();
    let mut inflight = FuturesUnordered::new();
    let mut last_seq = 0;
    for i in 0..n {
        let room = i % rooms;
        let ack = js
            .publish(format!("chat.room.{tag}-{room}.msg"), event(room, i).into())
            .await?;
        inflight.push(std::future::IntoFuture::into_future(ack));
        while inflight.len() >= 4096 {
            if let Some(r) = inflight.next().await {
                last_seq = last_seq.max(r?.sequence);
            }
        }
    }
    while let Some(r) = inflight.next().await {
        last_seq = last_seq.max(r?.sequence);
    }
    let published_s = start.elapsed().as_secs_f64();
    while ack_floor(&js).await < last_seq {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let archived_s = start.elapsed().as_secs_f64();
    println!(
        "archive: {n} events published in {published_s:.2}s ({:.0}/s), all archived after {archived_s:.2}s: {:.0} rows/s",
        n as f64 / published_s,
        n as f64 / archived_s
    );

    // 2. Archive lag at a constant rate: from the stream's ack to the row's commit (seen as the
    // consumer's ack floor passing the event, polled every millisecond).
    let total = (lag_rate * lag_seconds as f64) as u64;
    let acked: std::sync::Arc<std::sync::Mutex<Vec<(u64, Instant)>>> = Default::default();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let js = js.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                samples.push((ack_floor(&js).await, Instant::now()));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            samples
        })
    };
    let pub_start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / lag_rate);
    let mut inflight = FuturesUnordered::new();
    for i in 0..total {
        tokio::time::sleep_until((pub_start + interval * i as u32).into()).await;
        let room = i % rooms;
        let fut = js
            .publish(
                format!("chat.room.{tag}-{room}.msg"),
                event(room, n + i).into(),
            )
            .await?;
        let acked = acked.clone();
        inflight.push(async move {
            if let Ok(ack) = fut.await {
                acked
                    .lock()
                    .expect("lock")
                    .push((ack.sequence, Instant::now()));
            }
        });
        while let Some(()) = futures::FutureExt::now_or_never(inflight.next()).flatten() {}
        // async-nats lends at most 5,000 unacknowledged publishes (a permit each, given back
        // when the ack future completes): past them `publish` waits for a permit while the ack
        // futures that hold them are polled only here — a deadlock. Wait here instead.
        while inflight.len() >= 4096 {
            inflight.next().await;
        }
    }
    while inflight.next().await.is_some() {}
    let last = acked
        .lock()
        .expect("lock")
        .iter()
        .map(|a| a.0)
        .max()
        .unwrap_or(0);
    while ack_floor(&js).await < last {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = poller.await?;
    let mut lag = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for (seq, at) in acked.lock().expect("lock").iter() {
        if let Some((_, seen)) = samples.iter().find(|(floor, t)| floor >= seq && t >= at) {
            let _ = lag.record(seen.duration_since(*at).as_micros().max(1) as u64);
        }
    }
    println!(
        "archive lag at {lag_rate} msgs/s: p50 {:.2} ms p99 {:.2} ms max {:.2} ms ({} samples, floor polled every ~1 ms)",
        pct(&lag, 0.5),
        pct(&lag, 0.99),
        lag.max() as f64 / 1000.0,
        lag.len()
    );

    // 3. chat.api.history page latency, 50-message pages, at a constant request rate, once the
    // other consumers have worked off the messages of the stages above.
    let limit = Duration::from_secs(120);
    match stream_consumers_idle(&js, limit).await? {
        Some(waited) => println!(
            "waited {:.1}s for every consumer of the stream to catch up before the pages",
            waited.as_secs_f64()
        ),
        None => println!(
            "a consumer of the stream still had a backlog after {}s: the pages share the machine with it",
            limit.as_secs()
        ),
    }
    let pages = (page_rate * page_seconds as f64) as u64;
    let mut tasks = FuturesUnordered::new();
    let page_start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / page_rate);
    let mut page_lat = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for i in 0..pages {
        let due = page_start + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let client = client.clone();
        let room = format!("{tag}-{}", i % rooms);
        tasks.push(tokio::spawn(async move {
            let req = json!({"room": room, "limit": 50}).to_string();
            let r = client.request("chat.api.history", req.into()).await;
            (r.map(|m| m.payload.len()).unwrap_or(0), due.elapsed())
        }));
        while let Some(Some(Ok((_, took)))) = futures::FutureExt::now_or_never(tasks.next()) {
            let _ = page_lat.record(took.as_micros().max(1) as u64);
        }
    }
    while let Some(r) = tasks.next().await {
        let (_, took) = r?;
        let _ = page_lat.record(took.as_micros().max(1) as u64);
    }
    println!(
        "chat.api.history 50-message pages at {page_rate} req/s over {rooms} rooms: p50 {:.3} ms p99 {:.3} ms",
        pct(&page_lat, 0.5),
        pct(&page_lat, 0.99)
    );
    println!(
        "{}",
        json!({"bench":"history","messages":n,"archive_rows_per_s": n as f64 / archived_s,
               "lag_rate":lag_rate,"lag_ms":{"p50":pct(&lag,0.5),"p99":pct(&lag,0.99)},
               "page_rate":page_rate,"page_ms":{"p50":pct(&page_lat,0.5),"p99":pct(&page_lat,0.99)}})
    );
    Ok(())
}

/// One message at a time through the whole stack, at near-zero load, with the time of each hop
/// as seen from outside the server: the send frame leaves the client (t0); the edge's publish
/// reaches NATS (`chat.room.<room>.msg`, seen by a core subscriber: t1); the stream's republish
/// (`chat.fanout.<room>`: t2); the sender's `ack` and each receiver's `message`. Attributes a
/// low-rate latency to the edge's inbound side, JetStream, or the edge's delivery side.
async fn trace_path(a: &Args) -> anyhow::Result<()> {
    let url = a.get("url", "ws://127.0.0.1:8080/ws");
    let nats = a.get("nats", "nats://127.0.0.1:4222");
    let secret = a.get("secret", "local-dev-secret-at-least-32-bytes");
    let receivers = a.num("receivers", 3) as usize;
    let n = a.num("messages", 50);
    let gap = Duration::from_millis(a.num("gap-ms", 100));
    let tag = format!("t{}", now_ns() % 1_000_000);
    let room = format!("{tag}-room");
    let client = async_nats::connect(&nats).await?;
    let mut published = client.subscribe(format!("chat.room.{room}.msg")).await?;
    let mut republished = client.subscribe(format!("chat.fanout.{room}")).await?;
    client.flush().await?;
    let mut socks = Vec::new();
    for i in 0..=receivers {
        let mut ws = connect(&url, &secret, &format!("{tag}-u{i}")).await?;
        ws.send(Message::Text(
            json!({"type":"join","room": room}).to_string().into(),
        ))
        .await?;
        wait_for(&mut ws, "joined").await?;
        socks.push(ws);
    }
    let mut sender = socks.remove(0);
    let hist = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let (mut h_pub, mut h_js, mut h_out, mut h_e2e, mut h_ack) =
        (hist(), hist(), hist(), hist(), hist());
    let us = |from: u64, to: u64| to.saturating_sub(from) / 1000;
    for i in 0..n {
        tokio::time::sleep(gap).await;
        let t0 = now_ns();
        let frame = json!({"type":"send","room": room,"body": format!("t{t0}"),"client_id": format!("p{i}")});
        sender.send(Message::Text(frame.to_string().into())).await?;
        let limit = Duration::from_secs(5);
        let t1 = tokio::time::timeout(limit, published.next())
            .await
            .ok()
            .flatten()
            .map(|_| now_ns());
        let t2 = tokio::time::timeout(limit, republished.next())
            .await
            .ok()
            .flatten()
            .map(|_| now_ns());
        let got: Vec<u64> = futures::future::join_all(socks.iter_mut().map(|ws| async move {
            loop {
                match tokio::time::timeout(limit, ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) if t.contains("\"message\"") => {
                        return Some(now_ns());
                    }
                    Ok(Some(Ok(_))) => continue,
                    _ => return None,
                }
            }
        }))
        .await
        .into_iter()
        .flatten()
        .collect();
        let ack = loop {
            match tokio::time::timeout(limit, sender.next()).await {
                Ok(Some(Ok(Message::Text(t)))) if t.contains("\"ack\"") => break Some(now_ns()),
                Ok(Some(Ok(_))) => continue,
                _ => break None,
            }
        };
        let (Some(t1), Some(t2)) = (t1, t2) else {
            bail!("message {i} not seen on NATS")
        };
        if i == 0 {
            continue; // the room's first event: the edge asks chat-history for its prev_seq
        }
        let _ = h_pub.record(us(t0, t1));
        let _ = h_js.record(us(t1, t2));
        for t in got {
            let _ = h_out.record(us(t2, t));
            let _ = h_e2e.record(us(t0, t));
        }
        if let Some(ack) = ack {
            let _ = h_ack.record(us(t0, ack));
        }
    }
    let row = |name: &str, h: &Histogram<u64>| {
        println!(
            "  {name:<44} p50 {:>8.3} ms  p99 {:>8.3} ms  ({} samples)",
            pct(h, 0.5),
            pct(h, 0.99),
            h.len()
        );
    };
    println!("one message at a time ({n} messages, {gap:?} apart, {receivers} receivers):");
    row("client send -> edge's publish seen on NATS", &h_pub);
    row("publish -> republish (JetStream)", &h_js);
    row("republish -> receiver's message (edge out)", &h_out);
    row("client send -> receiver's message (e2e)", &h_e2e);
    row("client send -> sender's ack", &h_ack);
    println!(
        "{}",
        json!({"bench":"trace","messages":n,"receivers":receivers,
               "publish_ms":{"p50":pct(&h_pub,0.5),"p99":pct(&h_pub,0.99)},
               "jetstream_ms":{"p50":pct(&h_js,0.5),"p99":pct(&h_js,0.99)},
               "deliver_ms":{"p50":pct(&h_out,0.5),"p99":pct(&h_out,0.99)},
               "e2e_ms":{"p50":pct(&h_e2e,0.5),"p99":pct(&h_e2e,0.99)},
               "ack_ms":{"p50":pct(&h_ack,0.5),"p99":pct(&h_ack,0.99)}})
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (cmd, args) = Args::parse();
    let ca = args
        .0
        .get("ca")
        .cloned()
        .or_else(|| std::env::var("CHAT_CA").ok())
        .filter(|c| !c.is_empty());
    CA.set(ca.map(std::path::PathBuf::from)).expect("set once");
    match cmd.as_str() {
        "idle" => idle(&args).await,
        "throughput" => throughput(&args).await,
        "nats-floor" => nats_floor(&args).await,
        "js-floor" => js_floor(&args).await,
        "history" => history(&args).await,
        "trace" => trace_path(&args).await,
        _ => {
            eprintln!(
                "usage: chat-bench idle|throughput|nats-floor|js-floor|history|trace [--flag value …] (see the source header)"
            );
            std::process::exit(2);
        }
    }
}
