//! Integration events out (issue 16): chat-history's webhooks to operator endpoints, end to end
//! with real edges, two chat-history instances, nats-server and PostgreSQL, and a receiver that
//! refuses connections, then answers 503, then recovers.
//!
//! Signatures are checked here by an implementation of the Standard Webhooks specification
//! written from the spec (not chat-runtime's): HMAC-SHA256 keyed with the base64-decoded part of
//! the `whsec_` secret, over `"<webhook-id>.<webhook-timestamp>.<body>"`, base64, prefixed `v1,`.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use chat_tests::{Stack, eventually};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

const SECRET_ALL: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// 32 bytes, base64.
const SECRET_B: &str = "whsec_dGhpcnR5LXR3by1ieXRlcy1vZi1zZWNyZXQtc3R1ZmYh";

/// What the receiver recorded: (path, headers, body) of every POST it accepted.
#[derive(Clone, Default)]
struct Receiver {
    accepted: Arc<Mutex<Vec<(String, HeaderMap, Bytes)>>>,
    /// POSTs still to refuse with 503.
    refuse: Arc<AtomicU32>,
    refused: Arc<AtomicU32>,
}

async fn hook(
    State(r): State<Receiver>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    if r.refuse
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        r.refused.fetch_add(1, Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    r.accepted.lock().unwrap().push((path, headers, body));
    StatusCode::NO_CONTENT
}

async fn serve(r: &Receiver, addr: SocketAddr) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let app = Router::new()
        .route("/{path}", post(hook))
        .with_state(r.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
}

/// Standard Webhooks verification, from the specification: the signature header lists
/// space-separated `v1,<base64>` signatures; one must equal the HMAC of the signed content.
fn verify(secret: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64
        .decode(secret.strip_prefix("whsec_").unwrap())
        .map_err(|e| e.to_string())?;
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .ok_or(format!("no {n}"))
    };
    let (id, ts, sigs) = (
        h("webhook-id")?,
        h("webhook-timestamp")?,
        h("webhook-signature")?,
    );
    let ts_n: i64 = ts.parse().map_err(|_| "timestamp not an integer")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    if (now - ts_n).abs() > 300 {
        return Err(format!("timestamp {ts_n} not within 5 minutes of {now}"));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let expected = b64.encode(mac.finalize().into_bytes());
    if sigs
        .split(' ')
        .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
    {
        Ok(())
    } else {
        Err(format!("no signature matches: {sigs}"))
    }
}

/// The Python reference library of Standard Webhooks (PyPI `standardwebhooks`), when the
/// environment names a Python that has it (`CHAT_STANDARDWEBHOOKS_PYTHON`, e.g. a venv made with
/// `pip install standardwebhooks==1.1.0`): it verifies every request too, and refuses each one
/// with its body altered. Returns how many it verified (None when not configured).
fn verify_with_reference_library(requests: &[(&str, &HeaderMap, &Bytes)]) -> Option<usize> {
    let python = std::env::var("CHAT_STANDARDWEBHOOKS_PYTHON").ok()?;
    let input: Vec<Value> = requests
        .iter()
        .map(|(secret, h, body)| {
            json!({
                "secret": secret,
                "headers": {
                    "webhook-id": h["webhook-id"].to_str().unwrap(),
                    "webhook-timestamp": h["webhook-timestamp"].to_str().unwrap(),
                    "webhook-signature": h["webhook-signature"].to_str().unwrap(),
                },
                "body": std::str::from_utf8(body).unwrap(),
            })
        })
        .collect();
    const SCRIPT: &str = r#"
import json, sys
from standardwebhooks import Webhook, WebhookVerificationError
n = 0
for r in json.load(sys.stdin):
    wh = Webhook(r["secret"])
    wh.verify(r["body"], r["headers"])
    try:
        wh.verify(r["body"] + " ", r["headers"])
        sys.exit("an altered body verified")
    except WebhookVerificationError:
        pass
    n += 1
print(n)
"#;
    use std::io::Write as _;
    let mut child = std::process::Command::new(&python)
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run CHAT_STANDARDWEBHOOKS_PYTHON");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&input).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the reference library refused a request"
    );
    Some(
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap(),
    )
}

/// A port with nothing listening (connection refused) until the receiver binds it.
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The events of `path`'s POSTs, first delivery of each id only, in arrival order; checks each
/// signature, that `webhook-id` is the body's `id`, and that repeats are identical.
fn events(r: &Receiver, path: &str, secret: &str) -> Vec<Value> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (p, headers, body) in r.accepted.lock().unwrap().iter() {
        if p != path {
            continue;
        }
        verify(secret, headers, body).unwrap_or_else(|e| panic!("{path}: {e}"));
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(
            headers["webhook-id"].to_str().unwrap(),
            v["id"].as_str().unwrap()
        );
        assert_eq!(headers["content-type"], "application/json");
        if seen.insert(v["id"].as_str().unwrap().to_owned()) {
            out.push(v);
        }
    }
    out
}

/// (type, a short description) of each event of `room`.
fn room_log(events: &[Value], room: &str) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|v| v["room"] == room)
        .map(|v| {
            let d = &v["data"];
            let what = match v["type"].as_str().unwrap() {
                "member.joined" | "member.left" => d["user"].as_str().unwrap().to_owned(),
                "message.created" => format!("{}:{}", d["from"].as_str().unwrap(), d["body"]),
                "message.edited" => format!("{}->{}", d["target"], d["body"]),
                "message.deleted" => format!("{}", d["target"]),
                "reaction" => format!("{}{}{}", d["target"], d["emoji"], d["on"]),
                t => panic!("unknown type {t}"),
            };
            (v["type"].as_str().unwrap().to_owned(), what)
        })
        .collect()
}

fn log(entries: &[(&str, String)]) -> Vec<(String, String)> {
    entries
        .iter()
        .map(|(t, w)| (t.to_string(), w.clone()))
        .collect()
}

async fn ok_reply(c: &mut chat_testkit::WsClient, frame: Value, r: &str) -> Value {
    let reply = c.request(frame, r).await;
    assert_ne!(reply["type"], "error", "{reply}");
    reply
}

async fn pending_deliveries(db: &sqlx::PgPool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*), COALESCE(max(attempts), 0)::bigint FROM history.integration_deliveries",
    )
    .fetch_one(db)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_type_reaches_the_endpoints_in_order_despite_failures_and_a_restart() {
    let addr = free_addr();
    let endpoints = json!([
        {"id": "all", "url": format!("http://{addr}/all"), "secret": SECRET_ALL, "events": ["*"]},
        {"id": "b-members", "url": format!("http://{addr}/b"), "secret": SECRET_B,
         "events": ["member.joined", "member.left"], "rooms": ["wh-b"]},
    ])
    .to_string();
    let mut stack = Stack::start_with(&[
        ("CHAT_INTEGRATION_WEBHOOKS", endpoints.as_str()),
        ("CHAT_INTEGRATION_WEBHOOK_RETRY_MIN", "50ms"),
        ("CHAT_INTEGRATION_WEBHOOK_RETRY_MAX", "300ms"),
        ("CHAT_INTEGRATION_WEBHOOK_TIMEOUT", "1s"),
        // What a killed writer had pulled comes back sooner.
        ("HISTORY_ACK_WAIT", "2s"),
    ])
    .await;
    // Two instances share the outbox.
    stack.add_history().await;
    let db = stack.db().await;

    let (mut alice, _) = stack.login(0, "alice").await;
    let (mut bob, _) = stack.login(0, "bob").await;
    alice.join("wh-a").await;
    alice.join("wh-b").await;
    bob.join("wh-a").await;
    let m1 = alice.post_as("wh-a", "one", "a1").await["seq"]
        .as_u64()
        .unwrap();
    let m2 = bob.post_as("wh-a", "two", "b1").await["seq"]
        .as_u64()
        .unwrap();
    alice.post_as("wh-b", "b-one", "a2").await;
    ok_reply(
        &mut alice,
        json!({"type": "edit", "room": "wh-a", "seq": m1, "body": "one, edited", "client_id": "a3"}),
        "e1",
    )
    .await;
    ok_reply(
        &mut alice,
        json!({"type": "react", "room": "wh-a", "seq": m2, "emoji": "👍", "on": true, "client_id": "a4"}),
        "r1",
    )
    .await;
    ok_reply(
        &mut alice,
        json!({"type": "delete", "room": "wh-a", "seq": m1, "client_id": "a5"}),
        "d1",
    )
    .await;
    ok_reply(&mut bob, json!({"type": "leave", "room": "wh-a"}), "l1").await;

    // Nothing listens: the deliveries fail and wait in PostgreSQL.
    eventually(
        "a delivery failed twice and waits",
        Duration::from_secs(20),
        async || {
            let (n, attempts) = pending_deliveries(&db).await;
            if n > 0 && attempts >= 2 {
                Ok(())
            } else {
                Err(format!("{n} pending, {attempts} attempts"))
            }
        },
    )
    .await;

    // Every chat-history dies mid-retry; the room goes on, and the restarted ones pick it all up.
    for h in stack.histories.drain(..) {
        h.kill();
    }
    for i in 0..3 {
        alice
            .post_as("wh-a", &format!("down {i}"), &format!("x{i}"))
            .await;
    }
    alice.post_as("wh-b", "down b", "xb").await;
    stack.add_history().await;
    stack.add_history().await;

    // The receiver comes up, refuses a few, then takes everything.
    let r = Receiver::default();
    r.refuse.store(4, Ordering::SeqCst);
    serve(&r, addr).await;

    let expected_a = log(&[
        ("member.joined", "alice".into()),
        ("member.joined", "bob".into()),
        // m1 was deleted before its events went out: nothing of its text is sent.
        ("message.created", "alice:\"\"".into()),
        ("message.created", "bob:\"two\"".into()),
        ("message.edited", format!("{m1}->\"\"")),
        ("reaction", format!("{m2}\"👍\"true")),
        ("message.deleted", format!("{m1}")),
        ("member.left", "bob".into()),
        ("message.created", "alice:\"down 0\"".into()),
        ("message.created", "alice:\"down 1\"".into()),
        ("message.created", "alice:\"down 2\"".into()),
    ]);
    let expected_b = log(&[
        ("member.joined", "alice".into()),
        ("message.created", "alice:\"b-one\"".into()),
        ("message.created", "alice:\"down b\"".into()),
    ]);
    eventually(
        "every event reached both endpoints",
        Duration::from_secs(30),
        async || {
            let all = events(&r, "all", SECRET_ALL);
            let b = events(&r, "b", SECRET_B);
            let done = all.len() >= expected_a.len() + expected_b.len() && !b.is_empty();
            if done {
                Ok(())
            } else {
                Err(format!("{} events, b: {}", all.len(), b.len()))
            }
        },
    )
    .await;
    // The queues drain: nothing left behind.
    eventually("no delivery is left", Duration::from_secs(10), async || {
        pending_deliveries(&db).await.0 == 0
    })
    .await;

    let all = events(&r, "all", SECRET_ALL);
    assert_eq!(room_log(&all, "wh-a"), expected_a, "{all:#?}");
    assert_eq!(room_log(&all, "wh-b"), expected_b, "{all:#?}");
    assert_eq!(all.len(), expected_a.len() + expected_b.len());
    // The filtered endpoint got only member events of its room.
    let b = events(&r, "b", SECRET_B);
    assert_eq!(
        room_log(&b, "wh-b"),
        log(&[("member.joined", "alice".into())])
    );
    assert_eq!(b.len(), 1, "{b:#?}");

    // The documented shape.
    let created = all
        .iter()
        .find(|v| v["type"] == "message.created" && v["data"]["seq"] == m1)
        .unwrap();
    assert_eq!(created["data"]["from"], "alice");
    assert_eq!(created["data"]["client_id"], "a1");
    assert!(created["ts"].as_i64().unwrap() > 1_700_000_000_000);
    let ids: BTreeMap<&str, &Value> = all.iter().map(|v| (v["id"].as_str().unwrap(), v)).collect();
    assert_eq!(ids.len(), all.len(), "ids are unique");
    let joined = all.iter().find(|v| v["type"] == "member.joined").unwrap();
    assert_eq!(joined["data"]["room_kind"], "public");
    assert!(r.refused.load(Ordering::SeqCst) >= 4);

    let accepted = r.accepted.lock().unwrap().clone();
    let requests: Vec<(&str, &HeaderMap, &Bytes)> = accepted
        .iter()
        .map(|(p, h, b)| (if p == "all" { SECRET_ALL } else { SECRET_B }, h, b))
        .collect();
    match verify_with_reference_library(&requests) {
        Some(n) => {
            assert_eq!(n, requests.len());
            println!(
                "FIGURES standardwebhooks (PyPI reference library) verified {n} of {n} requests"
            );
        }
        None => println!(
            "CHAT_STANDARDWEBHOOKS_PYTHON unset: signatures verified by this test's implementation of the spec only"
        ),
    }

    // A signature made with another key, or over another body, does not verify.
    let (_, headers, body) = r
        .accepted
        .lock()
        .unwrap()
        .iter()
        .find(|(p, _, _)| p == "all")
        .cloned()
        .unwrap();
    assert!(verify(SECRET_B, &headers, &body).is_err());
    assert!(verify(SECRET_ALL, &headers, b"{}").is_err());
}

/// A receiver that fails every `every`-th POST with 500 and records the rest.
#[derive(Clone, Default)]
struct Flaky {
    n: Arc<AtomicU32>,
    every: u32,
    accepted: Arc<Mutex<Vec<Value>>>,
}

async fn flaky(State(f): State<Flaky>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if f.n.fetch_add(1, Ordering::SeqCst) % f.every == f.every - 1 {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    verify(SECRET_ALL, &headers, &body).expect("signed");
    f.accepted
        .lock()
        .unwrap()
        .push(serde_json::from_slice(&body).unwrap());
    StatusCode::OK
}

/// Four busy rooms, archived by two chat-history instances with four writer loops each (so a
/// room's batches commit out of order), delivered by both to a receiver failing one POST in
/// four: every message arrives, each room's in stream order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_rooms_stay_in_order_with_two_instances_and_a_flaky_receiver() {
    const ROOMS: usize = 4;
    const PER_ROOM: usize = 150;
    let f = Flaky {
        every: 4,
        ..Flaky::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/hook", post(flaky))
        .with_state(f.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let endpoints = json!([{"id": "all", "url": format!("http://{addr}/hook"),
                            "secret": SECRET_ALL, "events": ["message.created"]}])
    .to_string();
    let mut stack = Stack::start_with(&[
        ("CHAT_INTEGRATION_WEBHOOKS", endpoints.as_str()),
        ("CHAT_INTEGRATION_WEBHOOK_RETRY_MIN", "20ms"),
        ("CHAT_INTEGRATION_WEBHOOK_RETRY_MAX", "100ms"),
        ("HISTORY_WRITERS", "4"),
        ("HISTORY_BATCH_MAX", "16"),
        ("CHAT_RATE_PER_S", "10000"),
    ])
    .await;
    stack.add_history().await;

    let mut sent = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..ROOMS {
        let (mut c, _) = stack.login(0, &format!("u{i}")).await;
        let room = format!("busy-{i}");
        c.join(&room).await;
        tasks.push(tokio::spawn(async move {
            let seqs = c.post_many(&room, &format!("m{i}"), PER_ROOM).await;
            (room, seqs)
        }));
    }
    for t in tasks {
        sent.push(t.await.unwrap());
    }
    eventually(
        &format!("{} deliveries accepted", ROOMS * PER_ROOM),
        Duration::from_secs(60),
        async || {
            let unique: HashSet<String> = f
                .accepted
                .lock()
                .unwrap()
                .iter()
                .map(|v| v["id"].as_str().unwrap().to_owned())
                .collect();
            if unique.len() >= ROOMS * PER_ROOM {
                Ok(())
            } else {
                Err(unique.len())
            }
        },
    )
    .await;
    let accepted = f.accepted.lock().unwrap().clone();
    for (room, seqs) in &sent {
        let mut expected = seqs.clone();
        expected.sort_unstable();
        // Every arrival, repeats included, in order: a repeat is only ever of the last one.
        let mut got: Vec<u64> = accepted
            .iter()
            .filter(|v| v["room"] == room.as_str())
            .map(|v| v["data"]["seq"].as_u64().unwrap())
            .collect();
        assert!(
            got.windows(2).all(|w| w[0] <= w[1]),
            "{room} out of order: {got:?}"
        );
        got.dedup();
        assert_eq!(got, expected, "{room}");
    }
    println!(
        "FIGURES integration webhooks: {} messages in {ROOMS} rooms, 2 instances x 4 writers, 1 POST in 4 failed: all delivered, each room in order, {} POSTs accepted",
        ROOMS * PER_ROOM,
        accepted.len()
    );
}
