//! Issue 16's benchmark: publishes through chat-api's HTTP API against publishing over NATS
//! (JetStream, as an integration does) in the same run, on the same stack: publishes/s and the
//! latency of one publish (p50/p99), each side with the same number of concurrent publishers
//! (each waiting for its answer before the next). The HTTP side uses keep-alive connections.
//!
//! Ignored (it measures, and wants a quiet machine):
//!   cargo nextest run -p chat-tests --run-ignored only --no-capture -E 'test(/^api_bench::/)'
//! `API_BENCH_N` (default 4000) messages per side, `API_BENCH_C` (16) concurrent publishers.

use std::time::{Duration, Instant};

use bytes::Bytes;
use chat_bus::apikey::{Scope, generate};
use chat_bus::event::RoomEvent;
use chat_proto::{RoomId, UserId};
use chat_tests::{Stack, http_json, put_api_key};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::json;

fn env_or(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn summary(name: &str, n: usize, wall: Duration, mut lat: Vec<Duration>) -> String {
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    format!(
        "{name}: {n} publishes in {:.2} s = {:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
        wall.as_secs_f64(),
        n as f64 / wall.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3
    )
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: run it on a quiet machine"]
async fn http_api_publishes_against_nats_direct() {
    let n = env_or("API_BENCH_N", 4000);
    let c = env_or("API_BENCH_C", 16).max(1);
    let mut stack = Stack::start().await;
    let i = stack
        .add_api_with(&[("CHAT_API_RATE_PER_KEY", "1000000")])
        .await;
    let api = stack.apis[i].addr.unwrap();
    let nats = stack.nats.client().await;
    let (key, rec) = generate(
        "bench",
        Scope::ALL.to_vec(),
        vec![UserId::new("bot-bench").unwrap()],
        1,
    );
    put_api_key(&nats, &rec).await;
    chat_tests::wait_key_known(&[api], &key).await;
    let created = http_json(
        api,
        "POST",
        "/api/v1/rooms",
        Some(&key),
        &json!({"room":"bench","members":["bot-bench"]}),
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");

    // HTTP: c keep-alive connections, each posting its share one after the other.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..c {
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(api).await.unwrap();
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut lat = Vec::new();
            for j in (w..n).step_by(c) {
                let body = serde_json::to_vec(&json!({"from":"bot-bench","body":format!("http {j}"),"client_id":format!("h{j}")})).unwrap();
                let req = Request::post("/api/v1/rooms/bench/messages")
                    .header("host", "bench")
                    .header("authorization", format!("Bearer {key}"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                let t = Instant::now();
                let resp = send.send_request(req).await.unwrap();
                let status = resp.status();
                let _ = resp.into_body().collect().await.unwrap();
                assert_eq!(status.as_u16(), 201);
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut http_lat = Vec::new();
    for t in tasks {
        http_lat.extend(t.await.unwrap());
    }
    let http_wall = started.elapsed();

    // NATS direct: c publishers through JetStream, each waiting for its acknowledgement.
    let js = async_nats::jetstream::new(nats.clone());
    let room = RoomId::new("bench").unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..c {
        let (js, room) = (js.clone(), room.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for j in (w..n).step_by(c) {
                let ev = RoomEvent::message(
                    room.clone(),
                    UserId::new("bot-bench").unwrap(),
                    format!("nats {j}"),
                    format!("n{j}"),
                    chat_bus::now_ms(),
                );
                let t = Instant::now();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                let ack = chat_bus::post::publish(&js, &ev, deadline).await.unwrap();
                ack.await.unwrap();
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut nats_lat = Vec::new();
    for t in tasks {
        nats_lat.extend(t.await.unwrap());
    }
    let nats_wall = started.elapsed();
    println!("api_bench: {c} concurrent publishers");
    println!("{}", summary("HTTP API  ", n, http_wall, http_lat));
    println!("{}", summary("NATS direct", n, nats_wall, nats_lat));
}
