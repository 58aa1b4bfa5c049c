//! Issue 6: one trace per message across the services, metrics, health and readiness.

use std::collections::HashMap;
use std::time::Duration;

use chat_testkit::{NatsServer, WsClient, fresh_database, token};
use chat_tests::otlp::OtlpReceiver;
use chat_tests::procs::{Proc, http_get};
use chat_tests::{SECRET, Stack, eventually};
use serde_json::json;

/// A nats-server, a database and an OTLP receiver, and the environment that points services at
/// them (exporting every 100 ms).
async fn traced_env() -> (NatsServer, OtlpReceiver, HashMap<String, String>) {
    let nats = NatsServer::start().await;
    let db = fresh_database().await;
    let otlp = OtlpReceiver::start().await;
    let env = [
        ("NATS_URL", nats.url.as_str()),
        ("DATABASE_URL", db.as_str()),
        ("CHAT_JWT_SECRET", SECRET),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint().as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    (nats, otlp, env)
}

/// The environment of service processes on `nats` and `db`, plus `extra`.
fn service_env(nats: &NatsServer, db: &str, extra: &[(&str, &str)]) -> HashMap<String, String> {
    [
        ("NATS_URL", nats.url.as_str()),
        ("DATABASE_URL", db),
        ("CHAT_JWT_SECRET", SECRET),
    ]
    .iter()
    .chain(extra)
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_is_one_trace_across_edge_history_and_delivery() {
    let (_nats, otlp, env) = traced_env().await;
    let _history = Proc::start("chat-history", &env).await;
    let _notify = Proc::start("chat-notify", &env).await;
    let _presence = Proc::start("chat-presence", &env).await;
    let edge1 = Proc::start("chat-edge", &env).await;
    let edge2 = Proc::start("chat-edge", &env).await;

    let (mut alice, _) =
        WsClient::login(&edge1.ws_url(), &token::hs256(SECRET, "alice", 600)).await;
    let (mut bob, _) = WsClient::login(&edge2.ws_url(), &token::hs256(SECRET, "bob", 600)).await;
    alice.join("traced").await;
    bob.join("traced").await;
    // carol is a member but offline: the mention makes a notification.
    let (mut carol, _) =
        WsClient::login(&edge2.ws_url(), &token::hs256(SECRET, "carol", 600)).await;
    carol.join("traced").await;
    carol.close().await;
    let ack = alice.post_as("traced", "hello @carol", "t1").await;
    let seq = ack["seq"].as_u64().unwrap().to_string();
    bob.recv_type("message").await.unwrap();

    let spans = eventually(
        "the send's trace reaches every service",
        Duration::from_secs(30),
        async || {
            let spans = otlp.spans();
            (|spans: &[chat_tests::otlp::SpanRecord]| {
                let Some(root) = spans
                    .iter()
                    .find(|s| s.name == "send" && s.attr("seq") == Some(seq.as_str()))
                else {
                    return false;
                };
                let in_trace = |service: &str, name: &str| {
                    spans
                        .iter()
                        .filter(|s| {
                            s.trace_id == root.trace_id && s.service == service && s.name == name
                        })
                        .count()
                };
                in_trace("chat-history", "history.archive") >= 1
                    && in_trace("chat-edge", "edge.deliver") >= 2
                    && in_trace("chat-notify", "notify.event") >= 1
                    && in_trace("chat-notify", "notify.notification") >= 1
            })(&spans)
            .then_some(spans)
        },
    )
    .await;
    let root = spans
        .iter()
        .find(|s| s.name == "send" && s.attr("seq") == Some(seq.as_str()))
        .unwrap();
    assert_eq!(root.service, "chat-edge");
    assert_eq!(root.parent_span_id, "", "the send span is the root");
    assert_eq!(root.attr("room"), Some("traced"));
    // OpenTelemetry messaging semantic conventions: the send is a PRODUCER span, each
    // processing of the message a CONSUMER span, with the system, destination, operation and
    // message id (the Nats-Msg-Id) that let Jaeger and Tempo show the message's flow.
    const PRODUCER: i32 = 4;
    const CONSUMER: i32 = 5;
    assert_eq!(root.kind, PRODUCER);
    assert_eq!(root.attr("messaging.system"), Some("nats"));
    assert_eq!(root.attr("messaging.operation.type"), Some("send"));
    assert_eq!(
        root.attr("messaging.destination.name"),
        Some("chat.room.traced.msg")
    );
    assert_eq!(root.attr("messaging.message.id"), Some("alice:t1"));
    for (service, name, destination, group) in [
        (
            "chat-history",
            "history.archive",
            "chat.room.traced.msg",
            Some("history-archive"),
        ),
        (
            "chat-notify",
            "notify.event",
            "chat.room.traced.msg",
            Some("notify"),
        ),
        ("chat-edge", "edge.deliver", "chat.fanout.traced", None),
    ] {
        let s = spans
            .iter()
            .find(|s| s.trace_id == root.trace_id && s.service == service && s.name == name)
            .unwrap();
        assert_eq!(s.kind, CONSUMER, "{name}");
        assert_eq!(s.attr("messaging.system"), Some("nats"), "{name}");
        assert_eq!(
            s.attr("messaging.operation.type"),
            Some("process"),
            "{name}"
        );
        assert_eq!(
            s.attr("messaging.destination.name"),
            Some(destination),
            "{name}"
        );
        assert_eq!(s.attr("messaging.consumer.group.name"), group, "{name}");
        assert_eq!(s.attr("messaging.message.id"), Some("alice:t1"), "{name}");
    }
    for s in spans
        .iter()
        .filter(|s| s.trace_id == root.trace_id && s.span_id != root.span_id)
    {
        // Every span descends from the send span; all but the notification are its children.
        let mut cur = s;
        while cur.parent_span_id != root.span_id {
            cur = spans
                .iter()
                .find(|p| p.trace_id == root.trace_id && p.span_id == cur.parent_span_id)
                .unwrap_or_else(|| panic!("{} of {} has an unknown parent", s.name, s.service));
        }
        if s.name != "notify.notification" {
            assert_eq!(
                s.parent_span_id, root.span_id,
                "{} is a child of send",
                s.name
            );
        }
        assert!(
            s.attributes
                .iter()
                .all(|(_, v)| !v.contains("hello @carol")),
            "no message body in spans"
        );
    }
    // Every span in the trace is from this message: one trace per message.
    let other_sends = spans
        .iter()
        .filter(|s| s.name == "send" && s.trace_id == root.trace_id)
        .count();
    assert_eq!(other_sends, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_traceparent_makes_the_send_part_of_its_trace() {
    let (_nats, otlp, env) = traced_env().await;
    let _history = Proc::start("chat-history", &env).await;
    let edge = Proc::start("chat-edge", &env).await;
    let (mut alice, _) = WsClient::login(&edge.ws_url(), &token::hs256(SECRET, "alice", 600)).await;
    alice.join("r").await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let r = alice
        .request(
            json!({"type":"send","room":"r","body":"x","client_id":"c",
                   "traceparent": format!("00-{trace_id}-{parent}-01")}),
            "s",
        )
        .await;
    assert_eq!(r["type"], "ack");
    let spans = eventually(
        "the send span of the client's trace arrives",
        Duration::from_secs(30),
        async || {
            let spans = otlp.spans();
            spans
                .iter()
                .any(|s| s.name == "send" && s.trace_id == trace_id)
                .then_some(spans)
        },
    )
    .await;
    let send = spans
        .iter()
        .find(|s| s.name == "send" && s.trace_id == trace_id)
        .unwrap();
    assert_eq!(send.parent_span_id, parent);
}

/// Issue 17: traces reach an `https://` collector whose CA the operator gives in
/// `OTEL_EXPORTER_OTLP_CERTIFICATE` (rustls with ring; gRPC is not built in any more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_reach_an_https_collector() {
    let nats = NatsServer::start().await;
    let db = fresh_database().await;
    let (otlp, ca_pem) = OtlpReceiver::start_tls().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let env = service_env(
        &nats,
        &db,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint().as_str()),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.to_str().unwrap()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    assert!(otlp.endpoint().starts_with("https://"));
    let _history = Proc::start("chat-history", &env).await;
    let edge = Proc::start("chat-edge", &env).await;
    let (mut alice, _) = WsClient::login(&edge.ws_url(), &token::hs256(SECRET, "alice", 600)).await;
    alice.join("tls").await;
    let ack = alice.post_as("tls", "over https", "t1").await;
    let seq = ack["seq"].as_u64().unwrap().to_string();
    eventually(
        "chat-edge's send span arrives over https",
        Duration::from_secs(30),
        async || {
            let spans = otlp.spans();
            spans
                .iter()
                .any(|s| {
                    s.service == "chat-edge"
                        && s.name == "send"
                        && s.attr("seq") == Some(seq.as_str())
                })
                .then_some(spans)
        },
    )
    .await;
}

/// Issue 17 / protocol.md#nats: with no OTLP endpoint configured, every event still carries a
/// well-formed `traceparent` (integrators and logs correlate on it), and a client's trace id
/// is kept in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_carry_a_traceparent_without_an_otlp_endpoint() {
    use futures::StreamExt as _;
    let nats = NatsServer::start().await;
    let db = fresh_database().await;
    let env = service_env(&nats, &db, &[]);
    let _history = Proc::start("chat-history", &env).await;
    let edge = Proc::start("chat-edge", &env).await;
    let client = nats.client().await;
    let mut feed = client.subscribe("chat.fanout.plain").await.unwrap();
    client.flush().await.unwrap();
    let (mut alice, _) = WsClient::login(&edge.ws_url(), &token::hs256(SECRET, "alice", 600)).await;
    alice.join("plain").await;

    let well_formed = |tp: &str| {
        let parts: Vec<&str> = tp.split('-').collect();
        parts.len() == 4
            && parts[0] == "00"
            && parts[1].len() == 32
            && parts[2].len() == 16
            && parts[1] != "0".repeat(32)
            && parts
                .iter()
                .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
    };
    alice.post_as("plain", "no trace asked", "p1").await;
    let event = tokio::time::timeout(Duration::from_secs(10), feed.next())
        .await
        .unwrap()
        .unwrap();
    let tp = event
        .headers
        .as_ref()
        .and_then(|h| h.get("traceparent"))
        .map(|v| v.as_str().to_owned())
        .expect("an event without traceparent");
    assert!(well_formed(&tp), "{tp}");

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = alice
        .request(
            json!({"type":"send","room":"plain","body":"traced","client_id":"p2",
                   "traceparent": format!("00-{trace_id}-00f067aa0ba902b7-01")}),
            "s",
        )
        .await;
    assert_eq!(r["type"], "ack", "{r}");
    let event = tokio::time::timeout(Duration::from_secs(10), feed.next())
        .await
        .unwrap()
        .unwrap();
    let tp = event
        .headers
        .as_ref()
        .unwrap()
        .get("traceparent")
        .unwrap()
        .as_str()
        .to_owned();
    assert!(well_formed(&tp) && tp.contains(trace_id), "{tp}");
}

/// Parses Prometheus text: every sample line is `name{labels} value`.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad metrics line {line:?}"));
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        out.insert(name.to_owned(), v);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_and_readiness_follows_nats() {
    let mut stack = Stack::start().await;
    let admin = stack.edges[0].admin.port();
    let (mut alice, _) = stack.login(0, "alice").await;
    alice.join("m").await;
    let before = parse_metrics(&http_get(admin, "/metrics").await.unwrap().1);
    alice.post_as("m", "one", "1").await;
    alice.post_as("m", "two", "2").await;
    let (status, text) = http_get(admin, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    let after = parse_metrics(&text);
    let key = "chat_edge_frames_in_total{type=\"send\"}";
    assert!(
        after[key] >= before.get(key).copied().unwrap_or(0.0) + 2.0,
        "{key} moved"
    );
    assert!(
        after
            .keys()
            .any(|k| k.starts_with("chat_edge_send_ack_seconds_bucket"))
    );
    assert!(after.keys().any(|k| k.starts_with("chat_edge_connections")));
    assert_eq!(http_get(admin, "/healthz").await.unwrap().0, 200);
    assert_eq!(http_get(admin, "/readyz").await.unwrap().0, 200);

    stack.nats.kill().await;
    eventually(
        "readyz says not ready without NATS",
        Duration::from_secs(10),
        async || http_get(admin, "/readyz").await.unwrap().0 != 200,
    )
    .await;
    // Each service notices on its own connection: the edge having noticed says nothing of
    // chat-history.
    let history_admin = stack.histories[0].admin.port();
    eventually(
        "chat-history's readyz says not ready without NATS",
        Duration::from_secs(10),
        async || http_get(history_admin, "/readyz").await.unwrap().0 == 503,
    )
    .await;
    assert_eq!(
        http_get(admin, "/healthz").await.unwrap().0,
        200,
        "alive while not ready"
    );
    stack.nats.restart().await;
    eventually(
        "readyz is ready again",
        Duration::from_secs(20),
        async || http_get(admin, "/readyz").await.unwrap().0 == 200,
    )
    .await;
}

/// Issue 15 item 5, protocol.md#ops: without `CHAT_JWT_SECRET` and `CHAT_JWT_JWKS` (and without
/// `CHAT_DEV_LOGIN=true`), or with a secret under 32 bytes, chat-edge refuses to start — it once
/// accepted tokens signed with a built-in development secret for any user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_edge_refuses_to_start_without_a_real_secret() {
    let bin = chat_tests::procs::bin_dir().join("chat-edge");
    assert!(bin.exists(), "build with `cargo build --workspace --bins`");
    // (extra environment, names the refusal must mention)
    type Case = (
        &'static [(&'static str, &'static str)],
        &'static [&'static str],
    );
    let cases: [Case; 2] = [
        (&[], &["CHAT_JWT_SECRET", "CHAT_JWT_JWKS"]),
        (
            &[("CHAT_JWT_SECRET", "too-short-a-secret")],
            &["CHAT_JWT_SECRET", "32"],
        ),
    ];
    for (extra, named) in cases {
        let out = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::process::Command::new(&bin)
                .env_remove("CHAT_JWT_SECRET")
                .env_remove("CHAT_JWT_JWKS")
                .env_remove("CHAT_DEV_LOGIN")
                // Nothing listens there: a refusal must come before any connection attempt.
                .env("NATS_URL", "nats://127.0.0.1:1")
                .env("EDGE_LISTEN", "127.0.0.1:0")
                .env("ADMIN_LISTEN", "127.0.0.1:0")
                .envs(extra.iter().copied())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("chat-edge exits at once")
        .expect("run chat-edge");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?}: started anyway");
        for name in named {
            assert!(
                stderr.contains(name),
                "{extra:?}: {name} not named in {stderr}"
            );
        }
        assert!(
            !stderr.contains("too-short-a-secret"),
            "the secret was echoed: {stderr}"
        );
    }
}

/// The metric names a Prometheus text exposition declares (`# TYPE name kind`), each with
/// whether it has `# HELP`.
fn declared_metrics(text: &str) -> HashMap<String, bool> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap_or_default().to_owned();
            out.entry(name).or_insert(false);
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default().to_owned();
            out.insert(name, true);
        }
    }
    out
}

/// Every `chat_…` / `process_…` identifier in `text` (a PromQL expression, a rules file).
fn queried_metrics(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|t| t.starts_with("chat_") || t.starts_with("process_"))
        .map(str::to_owned)
        .collect()
}

/// Issue 17: every metric the Grafana dashboard and the alert rules query is one the services
/// really export (scraped from a running stack of the five programs), every exported metric
/// has `# HELP` and the project's `chat_` prefix, and the consumer lag is exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_query_only_exported_metrics() {
    let nats = NatsServer::start().await;
    let db = fresh_database().await;
    let env = service_env(&nats, &db, &[]);
    let procs = [
        Proc::start("chat-history", &env).await,
        Proc::start("chat-notify", &env).await,
        Proc::start("chat-presence", &env).await,
        Proc::start("chat-edge", &env).await,
        Proc::start("chat-api", &env).await,
    ];
    let edge = &procs[3];

    // What makes the labelled series appear: frames in and out, an error, a close by the
    // server (a bad token: 4001), a mention notification, a history page.
    let mut stranger = WsClient::connect(&edge.ws_url(), None).await.unwrap();
    stranger
        .send(json!({"type": "auth", "token": "not a token"}))
        .await;
    assert_eq!(stranger.expect_close().await, Some(4001));
    let (mut carol, _) = WsClient::login(&edge.ws_url(), &token::hs256(SECRET, "carol", 600)).await;
    carol.join("ops").await;
    carol.close().await;
    let (mut alice, _) = WsClient::login(&edge.ws_url(), &token::hs256(SECRET, "alice", 600)).await;
    alice.join("ops").await;
    alice.post_as("ops", "hello @carol", "o1").await;
    alice.send(json!({"type": "nonsense"})).await;
    assert_eq!(
        alice.recv_type("error").await.unwrap()["code"],
        "unknown_type"
    );
    let page = alice
        .request(json!({"type": "history", "room": "ops", "limit": 10}), "h")
        .await;
    assert_eq!(page["type"], "history", "{page}");

    let wanted = [
        "chat_consumer_pending",
        "chat_consumer_lag_seconds",
        "chat_notify_notifications_total",
        "chat_history_batch_size",
        "chat_history_page_seconds",
    ];
    let exported = eventually(
        "every service exports the wanted metrics",
        Duration::from_secs(20),
        async || {
            let mut exported: HashMap<String, bool> = HashMap::new();
            for p in &procs {
                let (status, text) = http_get(p.admin_port, "/metrics").await.unwrap();
                assert_eq!(status, 200, "{}", p.name);
                let declared = declared_metrics(&text);
                assert!(
                    declared.contains_key("chat_build_info"),
                    "{}: no build info",
                    p.name
                );
                exported.extend(declared);
            }
            let missing: Vec<_> = wanted
                .iter()
                .filter(|m| !exported.contains_key(**m))
                .collect();
            if missing.is_empty() {
                Ok(exported)
            } else {
                Err(format!("missing {missing:?}"))
            }
        },
    )
    .await;
    for (name, has_help) in &exported {
        assert!(*has_help, "{name} has no # HELP");
        assert!(
            name.starts_with("chat_") || name.starts_with("process_"),
            "{name} lacks the chat_ prefix"
        );
    }

    let root = chat_testkit::workspace_root();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/chat-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut queried = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queried.extend(queried_metrics(target["expr"].as_str().unwrap_or_default()));
        }
    }
    let dashboard_count = queried.len();
    assert!(
        dashboard_count > 20,
        "the dashboard's queries were not found"
    );
    let rules = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).unwrap();
    queried.extend(queried_metrics(&rules));
    assert!(
        queried.len() > dashboard_count,
        "the alert rules' queries were not found"
    );
    let unknown: Vec<_> = queried
        .iter()
        .filter(|q| {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| q.strip_suffix(s))
                .unwrap_or(q);
            !exported.contains_key(q.as_str()) && !exported.contains_key(base)
        })
        .collect();
    assert!(unknown.is_empty(), "queried but not exported: {unknown:?}");
}

/// Every metric a service's source records is in its catalogue (so it has `# HELP` and the
/// dashboards' names can be checked), and every catalogue entry is named somewhere else in the
/// sources (recorded by a macro, or handed to code that records it).
#[test]
fn every_recorded_metric_is_in_a_catalogue() {
    use chat_runtime::metrics::COMMON;
    let catalogued: Vec<&str> = [
        chat_api::metrics_catalogue::CATALOGUE,
        chat_edge::metrics_catalogue::CATALOGUE,
        chat_history::metrics_catalogue::CATALOGUE,
        chat_notify::metrics_catalogue::CATALOGUE,
        chat_presence::metrics_catalogue::CATALOGUE,
        COMMON,
    ]
    .iter()
    .flat_map(|c| c.iter().map(|m| m.name))
    .collect();
    let root = chat_testkit::workspace_root();
    let mut recorded = std::collections::BTreeSet::new();
    let mut sources = String::new();
    let mut dirs = vec![root.join("services"), root.join("libs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                if !path.ends_with("metrics_catalogue.rs") {
                    sources.push_str(&text);
                }
                // A metric name is a string literal `"chat_…"` or `"process_…"` directly
                // after a metrics macro, possibly on the next line.
                for macro_ in ["counter!(", "gauge!(", "histogram!("] {
                    for (at, _) in text.match_indices(macro_) {
                        let rest = text[at + macro_.len()..].trim_start();
                        if let Some(lit) = rest.strip_prefix('"') {
                            let name = &lit[..lit.find('"').unwrap()];
                            if !name.starts_with("test_") {
                                recorded.insert(name.to_owned());
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(recorded.len() > 40, "found only {recorded:?}");
    let missing: Vec<_> = recorded
        .iter()
        .filter(|r| !catalogued.contains(&r.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "recorded but not in a catalogue: {missing:?}"
    );
    let unused: Vec<_> = catalogued
        .iter()
        .filter(|c| !recorded.contains(**c) && !sources.contains(&format!("\"{c}\"")))
        .collect();
    assert!(
        unused.is_empty(),
        "in a catalogue but never recorded: {unused:?}"
    );
}
