//! Issue 15, hardening of the services: what an attacker with a NATS credential or a hostile
//! user tried, against the real services, nats-server and PostgreSQL. Each scenario prints a
//! `FIGURES` line: what was tried, and what was lost, crashed or leaked (zero).

use std::time::Duration;

use async_nats::jetstream;
use chat_bus::api::{PresenceReply, PresenceRequest};
use chat_bus::subjects;
use chat_tests::{Stack, eventually, nats_request};
use futures::StreamExt;
use serde_json::json;

/// Item 7: a request whose reply subject is not an inbox is dropped unanswered (protocol.md#nats), so
/// a service cannot be made to publish into its own KV bucket or a stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_foreign_reply_subjects_are_dropped() {
    let stack = Stack::start().await;
    let client = async_nats::connect(stack.nats.url.as_str()).await.unwrap();
    let kv = jetstream::new(client.clone())
        .get_key_value(subjects::PRESENCE_USERS_BUCKET)
        .await
        .expect("chat-presence made its bucket");
    let mut spy = client.subscribe("evil.>").await.unwrap();
    client.flush().await.unwrap();

    let hostile = [
        format!("$KV.{}.zed", subjects::PRESENCE_USERS_BUCKET),
        "evil.reply".to_owned(),
        "chat.room.lobby.msg".to_owned(),
    ];
    let request = json!({"users": ["zed"]}).to_string();
    for reply in &hostile {
        client
            .publish_with_reply(
                subjects::API_PRESENCE,
                reply.clone(),
                request.clone().into(),
            )
            .await
            .unwrap();
    }
    // The same service answers a proper request after the hostile ones (its reader takes them
    // in order), twice so that any answer to the hostile ones has had time to be published.
    for _ in 0..2 {
        let ok: PresenceReply = nats_request(
            &client,
            subjects::API_PRESENCE,
            &PresenceRequest::Users {
                users: vec![chat_proto::UserId::new("zed").unwrap()],
            },
        )
        .await
        .expect("an inbox is answered");
        assert_eq!(ok.users.len(), 1);
    }
    client.flush().await.unwrap();

    let written = kv.entry("zed").await.unwrap();
    assert!(
        written.is_none(),
        "chat-presence wrote {written:?} into its bucket"
    );
    let spied = tokio::time::timeout(Duration::from_millis(300), spy.next()).await;
    assert!(
        spied.is_err(),
        "a foreign reply subject was answered: {spied:?}"
    );
    let stream = jetstream::new(client.clone())
        .get_stream(subjects::STREAM)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(stream, 0, "an answer was stored in the CHAT stream");
    println!(
        "FIGURES foreign reply subjects: {} requests with $KV/stream/other reply subjects, 0 answered, 0 keys written, 0 events stored",
        hostile.len()
    );
}

/// Item 10: a room's snapshot reads its members' records in one batched read (not one KV read
/// per member) and lists at most 1,000 of them (protocol.md#ws v1.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_snapshots_are_one_bounded_read() {
    let stack = Stack::start().await;
    let db = stack.db().await;
    let members: i32 = 1_200;
    sqlx::query(
        "INSERT INTO history.rooms (id, kind, created_by, created_at) VALUES ('big', 'public', 'u0', 0)",
    )
    .execute(&db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO history.memberships (room, user_id, joined_at)
         SELECT 'big', 'u' || i, 0 FROM generate_series(0, $1 - 1) AS i",
    )
    .bind(members)
    .execute(&db)
    .await
    .unwrap();
    // Two of them are online (a session each).
    let (_u1, _) = stack.login(0, "u1").await;
    let (_u7, _) = stack.login(0, "u7").await;

    // Every JetStream direct get of the presence bucket, per key or batched.
    let client = async_nats::connect(stack.nats.url.as_str()).await.unwrap();
    let bucket = format!("$JS.API.DIRECT.GET.KV_{}", subjects::PRESENCE_USERS_BUCKET);
    let mut per_key = client.subscribe(format!("{bucket}.>")).await.unwrap();
    let mut batched = client.subscribe(bucket.clone()).await.unwrap();
    client.flush().await.unwrap();

    let (reply, took) = eventually(
        "two users online in the snapshot",
        Duration::from_secs(10),
        async || {
            let started = std::time::Instant::now();
            let reply: PresenceReply = nats_request(
                &client,
                subjects::API_PRESENCE,
                &PresenceRequest::Room {
                    room: chat_proto::RoomId::new("big").unwrap(),
                },
            )
            .await
            .expect("snapshot");
            let online: Vec<_> = reply
                .users
                .iter()
                .filter(|e| e.status == chat_proto::Status::Online)
                .map(|e| e.user.to_string())
                .collect();
            if online.len() == 2 {
                Ok((reply, started.elapsed()))
            } else {
                Err(online)
            }
        },
    )
    .await;
    assert_eq!(
        reply.users.len(),
        1_000,
        "a snapshot lists at most 1,000 users"
    );
    client.flush().await.unwrap();
    let mut batches = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), batched.next()).await {
        batches += 1;
    }
    // Reads of one key of the bucket: the two online users' own records are read when their
    // sessions open; any other member's key read alone would be the snapshot reading per member.
    let own = format!("$KV.{}.", subjects::PRESENCE_USERS_BUCKET);
    let mut singles = 0;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), per_key.next()).await {
        let key = m.subject.as_str().rsplit_once(own.as_str()).map(|(_, k)| k);
        if key.is_some_and(|k| k != "u1" && k != "u7") {
            singles += 1;
        }
    }
    assert_eq!(singles, 0, "no read per member");
    assert!(batches >= 1, "the snapshot read its records in a batch");
    println!(
        "FIGURES presence snapshot: room of {members} members, {} listed, {batches} batched read(s) over the polls, 0 per-member reads, {} ms",
        reply.users.len(),
        took.as_millis()
    );
}

/// Item 10: a request server runs at most `concurrency` handlers at once and answers each within
/// its deadline — `unavailable` past it — however slow the work (a handler that never returns
/// used to leave its requester unanswered and its task alive forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_servers_bound_concurrency_and_answer_by_the_deadline() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let nats = chat_tests::chat_testkit::NatsServer::start().await;
    let client = async_nats::connect(nats.url.as_str()).await.unwrap();
    let limits = chat_runtime::nats::ServeLimits {
        concurrency: 8,
        deadline: Duration::from_millis(300),
    };
    let (running, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(chat_runtime::nats::serve_requests(
        client.clone(),
        "test.slow",
        "test",
        limits,
        stop.clone(),
        {
            let (running, peak) = (running.clone(), peak.clone());
            move |_msg| {
                let (running, peak) = (running.clone(), peak.clone());
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    // Decrements even when the deadline drops this future.
                    struct Done(Arc<AtomicUsize>);
                    impl Drop for Done {
                        fn drop(&mut self) {
                            self.0.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    let _done = Done(running);
                    std::future::pending::<bytes::Bytes>().await
                }
            }
        },
    ));
    // The server subscribed once a first request is answered.
    let requester = async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(30)))
        .connect(nats.url.as_str())
        .await
        .unwrap();
    eventually(
        "the server answers a first request",
        Duration::from_secs(10),
        async || requester.request("test.slow", "x".into()).await,
    )
    .await;

    let n: usize = 64;
    let started = std::time::Instant::now();
    let answers = futures::future::join_all((0..n).map(|_| {
        let requester = requester.clone();
        async move {
            let t = std::time::Instant::now();
            let reply = requester.request("test.slow", "x".into()).await;
            (reply, t.elapsed())
        }
    }))
    .await;
    let total = started.elapsed();
    let mut slowest = Duration::ZERO;
    for (reply, took) in &answers {
        let reply = reply.as_ref().expect("every request is answered");
        let v: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(v["error"]["code"], "unavailable", "{v}");
        slowest = slowest.max(*took);
    }
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= limits.concurrency, "{peak} handlers at once");
    // 64 requests through 8 slots of 300 ms: 8 rounds.
    let rounds = n.div_ceil(limits.concurrency) as u32;
    assert!(
        slowest < limits.deadline * (rounds + 4),
        "slowest answer after {slowest:?}"
    );
    stop.cancel();
    server.await.unwrap().unwrap();
    assert_eq!(running.load(Ordering::SeqCst), 0, "no handler left running");
    println!(
        "FIGURES request bounds: {n} requests to a handler that never returns, concurrency {}, deadline {} ms: all {n} answered unavailable, peak {peak} at once, slowest {} ms, all in {} ms, 0 unanswered, 0 tasks leaked",
        limits.concurrency,
        limits.deadline.as_millis(),
        slowest.as_millis(),
        total.as_millis()
    );
}

/// A request server that is shut down answers every request it was already sent, even those
/// waiting for a slot, and once it has returned a request finds no responder at once: none is
/// left to wait out its requester's timeout (the 5 s an HTTP call to chat-api waited when
/// chat-history stopped under it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_server_drains_what_it_was_sent_and_leaves_no_route_behind() {
    use std::sync::Arc;

    let nats = chat_tests::chat_testkit::NatsServer::start().await;
    let requester = async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(4)))
        .connect(nats.url.as_str())
        .await
        .unwrap();
    let (rounds, mut answered, mut refused, mut unanswered, mut late) = (20, 0, 0, 0, 0);
    for round in 0..rounds {
        let client = async_nats::connect(nats.url.as_str()).await.unwrap();
        // Published after the requests and routed to the serving connection after them: once
        // it is read there, so are they (nats-server keeps a connection's order).
        let mut marker = client.subscribe("test.drain.marker").await.unwrap();
        let limits = chat_runtime::nats::ServeLimits {
            concurrency: 1,
            deadline: Duration::from_secs(2),
        };
        let first = Arc::new(tokio::sync::Notify::new());
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(chat_runtime::nats::serve_requests(
            client,
            "test.drain",
            "test",
            limits,
            stop.clone(),
            {
                let (first, stop) = (first.clone(), stop.clone());
                move |msg| {
                    let (first, stop) = (first.clone(), stop.clone());
                    async move {
                        // A "go" request holds the one slot until the shutdown has begun.
                        if &msg.payload[..] == b"go" {
                            first.notify_one();
                            stop.cancelled().await;
                        }
                        bytes::Bytes::from_static(b"done")
                    }
                }
            },
        ));
        eventually(
            "the server is subscribed",
            Duration::from_secs(10),
            async || requester.request("test.drain", "x".into()).await,
        )
        .await;
        // Five requests to one slot: one runs, the others wait in the subscription. The shutdown
        // begins once all five reached the server's client: requests still on the wire when a
        // drain begins can be dropped by async-nats (see `serve_requests`).
        let asked =
            futures::future::join_all((0..5).map(|_| requester.request("test.drain", "go".into())));
        let stopper = async {
            first.notified().await;
            requester
                .publish("test.drain.marker", "".into())
                .await
                .unwrap();
            marker.next().await.unwrap();
            stop.cancel();
            server.await.unwrap().unwrap();
            // The server has returned: a request now must find nobody, not a dead route.
            let t = std::time::Instant::now();
            let after = requester.request("test.drain", "x".into()).await;
            (after, t.elapsed())
        };
        let (answers, (after, took)) = tokio::join!(asked, stopper);
        for a in &answers {
            match a {
                Ok(m) => {
                    assert_eq!(&m.payload[..], b"done", "round {round}");
                    answered += 1;
                }
                // Sent once the server had taken the unsubscription: nobody, said at once.
                Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => refused += 1,
                Err(_) => unanswered += 1,
            }
        }
        match after {
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {}
            other => panic!("round {round}: after the return, {other:?}"),
        }
        if took > Duration::from_millis(500) {
            late += 1;
        }
    }
    assert_eq!(
        unanswered, 0,
        "requests left unanswered by a draining server"
    );
    assert_eq!(late, 0, "a request after the return waited for an answer");
    println!(
        "FIGURES request drain: {rounds} shutdowns with 5 requests on 1 slot each: {answered} answered, {refused} no responders at once, 0 left to time out, 0 routed to a stopped server"
    );
}

/// Item 10: every pool has a `statement_timeout` (5 s by default, or the URL's own), so a
/// runaway query fails instead of holding a connection; migrations run without it.
#[tokio::test]
async fn pools_have_a_statement_timeout() {
    let url = chat_tests::chat_testkit::fresh_database().await;
    let pool = chat_runtime::db::pool(&url, "public", 2).unwrap();
    let (timeout,): (String,) = sqlx::query_as("SHOW statement_timeout")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(timeout, "5s");
    let sep = if url.contains('?') { '&' } else { '?' };
    let short = format!("{url}{sep}options=-c%20statement_timeout%3D200");
    let pool = chat_runtime::db::pool(&short, "public", 2).unwrap();
    let started = std::time::Instant::now();
    let err = sqlx::query("SELECT pg_sleep(3)")
        .execute(&pool)
        .await
        .expect_err("the statement is cancelled");
    let took = started.elapsed();
    assert!(err.to_string().contains("statement timeout"), "{err}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // The connection is usable afterwards, with its timeout.
    let (timeout,): (String,) = sqlx::query_as("SHOW statement_timeout")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(timeout, "200ms");
    println!(
        "FIGURES statement timeout: pg_sleep(3) under a 200 ms statement_timeout cancelled after {} ms",
        took.as_millis()
    );
}

/// Item 4 (service part): ~450 mentions of a victim in a private room used to make the victim's
/// `hello` (500 notifications of long previews) too large to send: the victim was locked out
/// until a `read`. `hello` lists the newest 100, oldest first, and counts them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_pending_notifications_do_not_lock_a_user_out() {
    let stack = Stack::start_with(&[("CHAT_RATE_PER_S", "2000")]).await;
    let (mut mallory, _) = stack.login(0, "mallory").await;
    let created = mallory
        .request(
            json!({"type": "create", "room": "trap", "private": true, "members": ["victim"]}),
            "c",
        )
        .await;
    assert_eq!(created["type"], "joined", "{created}");
    // 140 four-byte characters per preview: 450 of them (with their ids, rooms, senders) are
    // well over the 256 KiB the edge could send.
    let body = format!("@victim {}", "\u{1F600}".repeat(200));
    let n = 450;
    let mut last_seq = 0;
    let mut sent = 0;
    let mut acked = 0;
    while acked < n {
        while sent < n && sent - acked < 128 {
            mallory
                .send(json!({"type": "send", "room": "trap", "body": body,
                             "client_id": format!("m{sent}")}))
                .await;
            sent += 1;
        }
        let f = mallory.recv().await.expect("ack");
        assert_ne!(f["type"], "error", "{f}");
        if f["type"] == "ack" {
            acked += 1;
            last_seq = last_seq.max(f["seq"].as_u64().unwrap());
        }
    }
    // The mentions and the invite of `create`.
    let pending = n as u64 + 1;
    let client = stack.nats.client().await;
    eventually(
        &format!("{pending} notifications stored"),
        Duration::from_secs(30),
        async || {
            mallory.idle(Duration::from_millis(50)).await;
            let s = chat_tests::notify_state(&client, "victim", &["trap"]).await;
            if s.notifications_total == pending {
                Ok(())
            } else {
                Err(s.notifications_total)
            }
        },
    )
    .await;
    let started = std::time::Instant::now();
    let (_victim, hello) = stack.login(0, "victim").await;
    let took = started.elapsed();
    let listed = hello["notifications"].as_array().expect("notifications");
    assert_eq!(listed.len(), 100, "the newest 100");
    assert_eq!(
        hello["notifications_total"], pending,
        "{}",
        hello["notifications_total"]
    );
    let seqs: Vec<u64> = listed.iter().map(|x| x["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "oldest first");
    assert_eq!(seqs.last(), Some(&last_seq), "the newest is listed");
    let bytes = hello.to_string().len();
    println!(
        "FIGURES pending notifications: {n} mentions of one user, hello of {bytes} bytes arrived in {} ms listing 100 of {pending}, 0 sessions locked out",
        took.as_millis()
    );
}

/// Item 11: webhooks go over `https://` (rustls), trusting the extra CA of `NOTIFY_WEBHOOK_CA`;
/// a gateway that TLS receiver gets the signed notification of an offline user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_delivered_over_https() {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::{self, ServerConfig, pki_types::PrivateKeyDer};

    // A CA, and a certificate for localhost it signed.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();

    let server =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
            )
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mut received) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then Content-Length bytes of body.
                loop {
                    let Ok(n) = tls.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            let _ = tx.send(text.clone());
                            break;
                        }
                    }
                }
                let _ = tls
                    .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });

    let url = format!("https://localhost:{port}/push");
    let stack = Stack::start_with(&[
        ("NOTIFY_WEBHOOK_URL", url.as_str()),
        ("NOTIFY_WEBHOOK_SECRET", "tls-secret"),
        ("NOTIFY_WEBHOOK_CA", ca_path.to_str().unwrap()),
        ("NOTIFY_WEBHOOK_RETRY_MIN", "50ms"),
    ])
    .await;
    let (mut alice, _) = stack.login(0, "alice").await;
    let dm = alice
        .request(json!({"type": "open_dm", "user": "bob"}), "dm")
        .await;
    assert_eq!(dm["type"], "joined", "{dm}");
    let room = dm["room"].as_str().unwrap().to_owned();
    alice.post_as(&room, "secret plans", "s1").await;
    let request = tokio::time::timeout(Duration::from_secs(20), received.recv())
        .await
        .expect("the webhook arrives over TLS")
        .unwrap();
    assert!(request.starts_with("POST /push HTTP/1.1\r\n"), "{request}");
    assert!(
        request.contains("\"preview\":\"secret plans\""),
        "{request}"
    );
    let lower = request.to_ascii_lowercase();
    assert!(lower.contains("x-chat-signature:"), "{request}");
    // Standard Webhooks headers too (issue 16), over the same TLS client.
    assert!(lower.contains("\r\nwebhook-signature: v1,"), "{request}");
    assert!(lower.contains("\r\nwebhook-id: "), "{request}");
    assert!(lower.contains("\r\nwebhook-timestamp: "), "{request}");
    println!(
        "FIGURES https webhook: 1 DM notification of an offline user POSTed over TLS to a gateway with a private CA, 0 sent in clear text"
    );
}

/// Item 13: SIGTERM while nats-server is unreachable. Each of the four services used to hang for
/// 25–30 s (flushes and acks to a dead server; chat-presence's sweeper retried for an hour); each
/// now exits within its drain grace, and what it had not acknowledged is delivered again once
/// NATS is back (nothing acknowledged to a client is lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_within_the_grace_period_while_nats_is_down() {
    use chat_tests::chat_testkit::{NatsOptions, NatsServer, WsClient, fresh_database, token};
    use chat_tests::procs::Proc;
    use std::collections::HashMap;

    let mut nats = NatsServer::start_with(NatsOptions::default()).await;
    let db = fresh_database().await;
    let grace = Duration::from_secs(2);
    let env: HashMap<String, String> = [
        ("NATS_URL", nats.url.as_str()),
        ("DATABASE_URL", db.as_str()),
        ("CHAT_JWT_SECRET", chat_tests::SECRET),
        ("CHAT_HEARTBEAT_MS", "500"),
        ("CHAT_DRAIN_GRACE", "2s"),
        ("CHAT_RATE_PER_S", "2000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let start_all = |env: HashMap<String, String>| async move {
        vec![
            Proc::start("chat-history", &env).await,
            Proc::start("chat-presence", &env).await,
            Proc::start("chat-notify", &env).await,
            Proc::start("chat-edge", &env).await,
        ]
    };
    let mut procs = start_all(env.clone()).await;
    let (mut alice, _) = WsClient::login(
        &procs[3].ws_url(),
        &token::hs256(chat_tests::SECRET, "alice", 600),
    )
    .await;
    alice.join("drain").await;
    // Work in hand when NATS dies: a burst, every message acknowledged to the client.
    let n = 200;
    let seqs = alice.post_many("drain", "d", n).await;
    assert_eq!(seqs.len(), n);
    nats.kill().await;

    let mut exits = Vec::new();
    for p in &mut procs {
        let started = std::time::Instant::now();
        let exited = p.terminate(grace + Duration::from_secs(5)).await;
        exits.push((p.name, exited, started.elapsed()));
    }
    for (name, exited, took) in &exits {
        assert!(
            exited,
            "{name} still running {took:?} after SIGTERM with NATS down"
        );
    }
    drop(alice);

    // NATS back, the services again: every acknowledged message is archived (what was not
    // acknowledged by the archive is delivered again) and counted once for bob.
    nats.restart().await;
    let procs = start_all(env.clone()).await;
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    chat_tests::wait_archived(&pool, "drain", n as i64).await;
    drop(procs);
    let slowest = exits.iter().map(|e| e.2).max().unwrap_or_default();
    println!(
        "FIGURES SIGTERM with NATS down: 4 services, all exited within {} ms (grace {} ms); {n} acked messages, {n} archived after restart, 0 lost",
        slowest.as_millis(),
        grace.as_millis()
    );
}

/// `(type, code)` of a reply frame.
fn kind_code(f: &serde_json::Value) -> (Option<&str>, Option<&str>) {
    (f["type"].as_str(), f["code"].as_str())
}

/// Item 9, protocol.md#ws-limits, enforced where membership is stored (chat-history): with
/// CHAT_MAX_ROOMS_PER_USER=3 a user in 3 rooms gets `limit_exceeded` for a further `join`,
/// `create`, `open_dm` and when invited; a `create` listing a member at the quota is refused
/// whole (the room is not made); a `leave` frees a place. Before, one session joined 1,800 rooms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_per_user_are_capped_where_membership_is_stored() {
    let stack = Stack::start_with(&[("CHAT_MAX_ROOMS_PER_USER", "3")]).await;
    let (mut full, _) = stack.login(0, "full").await;
    let (mut other, _) = stack.login(0, "other").await;
    for r in ["q1", "q2", "q3"] {
        full.join(r).await;
    }
    let limit = (Some("error"), Some("limit_exceeded"));
    let r = full
        .request(json!({"type": "join", "room": "q4"}), "j4")
        .await;
    assert_eq!(kind_code(&r), limit, "{r}");
    let r = full
        .request(
            json!({"type": "create", "room": "mine", "private": true, "members": []}),
            "c1",
        )
        .await;
    assert_eq!(kind_code(&r), limit, "{r}");
    let r = full
        .request(json!({"type": "open_dm", "user": "other"}), "d1")
        .await;
    assert_eq!(kind_code(&r), limit, "{r}");
    // Added by others: an open_dm with, an invite of, a create listing the user at the quota.
    let r = other
        .request(json!({"type": "open_dm", "user": "full"}), "d2")
        .await;
    assert_eq!(kind_code(&r), limit, "{r}");
    let r = other
        .request(
            json!({"type": "create", "room": "team", "private": true, "members": ["full", "x"]}),
            "c2",
        )
        .await;
    assert_eq!(kind_code(&r), limit, "{r}");
    let pool = stack.db().await;
    let (rooms,): (i64,) = sqlx::query_as("SELECT count(*) FROM history.rooms WHERE id = 'team'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rooms, 0, "a refused create leaves no room behind");
    let r = other
        .request(
            json!({"type": "create", "room": "team2", "private": true, "members": []}),
            "c3",
        )
        .await;
    assert_eq!(r["type"], "joined", "{r}");
    let r = other
        .request(
            json!({"type": "invite", "room": "team2", "user": "full"}),
            "i1",
        )
        .await;
    assert_eq!(kind_code(&r), limit, "{r}");
    let (n,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM history.memberships WHERE user_id = 'full'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(n, 3, "still in exactly 3 rooms");
    // Re-joining a room one is in is no new membership; a leave frees a place.
    assert_eq!(full.join("q1").await["type"], "joined");
    let r = full
        .request(json!({"type": "leave", "room": "q3"}), "l1")
        .await;
    assert_eq!(r["type"], "left", "{r}");
    let r = other
        .request(
            json!({"type": "invite", "room": "team2", "user": "full"}),
            "i2",
        )
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    println!(
        "FIGURES rooms per user: quota 3; 6 attempts past it (join, create, open_dm ×2, create listing, invite) refused with limit_exceeded, 0 memberships over the quota"
    );
}

/// Item 9: chat-history itself refuses a `create` of more than 1,000 members (the edge does too,
/// but any NATS client with the rooms subject could ask history directly; 7,000 took 0.6 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_refuses_a_create_of_more_than_1000_members() {
    let stack = Stack::start().await;
    let client = async_nats::connect(stack.nats.url.as_str()).await.unwrap();
    let members: Vec<chat_proto::UserId> = (0..1001)
        .map(|i| chat_proto::UserId::new(format!("m{i}")).unwrap())
        .collect();
    let req = |room: &str, members: Vec<chat_proto::UserId>| chat_bus::api::rooms::Create {
        user: chat_proto::UserId::new("maker").unwrap(),
        room: chat_proto::RoomId::new(room).unwrap(),
        private: true,
        members,
    };
    let refused = nats_request::<_, serde_json::Value>(
        &client,
        subjects::ROOMS,
        &req("big", members.clone()),
    )
    .await;
    assert_eq!(
        refused.err().map(|e| e.code),
        Some(chat_proto::ErrorCode::LimitExceeded),
        "1,001 members"
    );
    let ok: serde_json::Value = nats_request(
        &client,
        subjects::ROOMS,
        &req("big", members[..1000].to_vec()),
    )
    .await
    .expect("1,000 members are fine");
    assert_eq!(ok["members"].as_array().map(Vec::len), Some(1001));
}

/// Item 12: `open_dm` checks that an existing room with the pair's DM id is that pair's DM (a
/// room of that id made any other way — here written straight into the database, as a
/// colliding id or an old bug would — is `conflict`, and nobody is added to it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_dm_refuses_a_room_that_is_not_the_pairs_dm() {
    let stack = Stack::start().await;
    let pool = stack.db().await;
    let (a, b) = (
        chat_proto::UserId::new("dma").unwrap(),
        chat_proto::UserId::new("dmb").unwrap(),
    );
    let id = chat_proto::RoomId::dm(&a, &b).unwrap();
    sqlx::query("INSERT INTO history.rooms (id, kind, created_by, created_at) VALUES ($1, 'private', 'mallory', 0)")
        .bind(id.as_str())
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO history.memberships (room, user_id, joined_at) VALUES ($1, 'mallory', 0)",
    )
    .bind(id.as_str())
    .execute(&pool)
    .await
    .unwrap();
    let (mut ca, _) = stack.login(0, "dma").await;
    let r = ca
        .request(json!({"type": "open_dm", "user": "dmb"}), "d")
        .await;
    assert_eq!(kind_code(&r), (Some("error"), Some("conflict")), "{r}");
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM history.memberships WHERE room = $1")
        .bind(id.as_str())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1, "nobody was added to mallory's room");
    // A DM with an invalid id is bad_request; the pair's real DM still opens for another pair.
    let r = ca
        .request(json!({"type": "open_dm", "user": "a b"}), "d2")
        .await;
    assert_eq!(kind_code(&r), (Some("error"), Some("bad_request")), "{r}");
    let r = ca
        .request(json!({"type": "open_dm", "user": "dmc"}), "d3")
        .await;
    assert_eq!(r["type"], "joined", "{r}");
    let r = ca
        .request(json!({"type": "open_dm", "user": "dmc"}), "d4")
        .await;
    assert_eq!(r["type"], "joined", "a second open_dm of the real DM: {r}");
}

/// The value of a Prometheus gauge or counter (no labels) in `/metrics` of `admin`.
async fn metric(admin: std::net::SocketAddr, name: &str) -> Option<f64> {
    let (_, text) = chat_tests::procs::http_get(admin.port(), "/metrics")
        .await
        .expect("metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Item 12: chat-notify's cache of room members is bounded (it once kept every room ever
/// posted to): with NOTIFY_MEMBERS_CACHE_MAX=4, mentions in 12 rooms leave at most 4 cached,
/// every mention is still notified, and a membership change after caching is seen (a user who
/// joins a cached room is notified of the next mention there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_member_cache_is_bounded_and_sees_membership_changes() {
    let stack = Stack::start_with(&[("NOTIFY_MEMBERS_CACHE_MAX", "4")]).await;
    let (mut poster, _) = stack.login(0, "poster").await;
    let (mut watcher, _) = stack.login(0, "watcher").await;
    let rooms: Vec<String> = (0..12).map(|i| format!("cache{i}")).collect();
    for r in &rooms {
        watcher.join(r).await;
        poster.join(r).await;
    }
    for (i, r) in rooms.iter().enumerate() {
        poster.post_as(r, "@watcher look", &format!("w{i}")).await;
    }
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < rooms.len() {
        let n = watcher
            .recv_type("notification")
            .await
            .expect("a notification per room");
        seen.insert(n["room"].as_str().unwrap().to_owned());
    }
    let entries = metric(stack.notifies[0].admin, "chat_notify_member_cache_entries")
        .await
        .expect("the cache's size is exported");
    assert!(entries <= 4.0, "{entries} rooms cached, bound 4");
    // The newest room is cached; a membership change there is seen by the next message.
    let last = rooms.last().unwrap();
    let (mut late, _) = stack.login(0, "late").await;
    late.join(last).await;
    poster.post_as(last, "@late welcome", "late1").await;
    let n = late
        .recv_type("notification")
        .await
        .expect("late is notified");
    assert_eq!(n["room"], last.as_str());
    println!(
        "FIGURES notify member cache: 12 rooms mentioned, {entries} cached (bound 4), 12 of 12 notified, a join after caching seen"
    );
}

/// Item 12: a lost membership announcement is repaired. The announcement
/// (`chat.user.<user>.membership`, core NATS) is the only thing that told another edge's
/// session that its user left; lost, that session stayed subscribed and could send for as
/// long as it lived. Here bob's membership is removed where it is stored (chat-history's
/// database) with no announcement at all: within CHAT_MEMBERSHIP_RECONCILE his session on the
/// other edge gets `left`, stops receiving the room and gets `forbidden` on send; a membership
/// added the same way is joined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_leave_announcement_is_reconciled_within_a_bounded_time() {
    let mut stack = Stack::start_with(&[
        ("CHAT_HEARTBEAT_MS", "500"),
        ("CHAT_MEMBERSHIP_RECONCILE", "1s"),
    ])
    .await;
    stack.add_edge().await;
    let (mut alice, _) = stack.login(0, "alice").await;
    let (mut bob, _) = stack.login(1, "bob").await;
    alice.join("rec").await;
    bob.join("rec").await;
    alice.join("rec2").await;
    bob.post_as("rec", "before", "b1").await;

    let pool = stack.db().await;
    sqlx::query("DELETE FROM history.memberships WHERE user_id = 'bob' AND room = 'rec'")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO history.memberships (room, user_id, joined_at) VALUES ('rec2', 'bob', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let removed = std::time::Instant::now();
    let mut seen = Vec::new();
    let left = bob
        .recv_until(|f| {
            seen.push(f.clone());
            f["type"] == "left" && f["room"] == "rec"
        })
        .await
        .expect("left within the reconciliation interval");
    let took = removed.elapsed();
    assert!(left["ref"].is_null(), "{left}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    bob.send(json!({"type": "send", "room": "rec", "body": "x", "client_id": "b2", "ref": "s"}))
        .await;
    let r = bob
        .recv_until(|f| {
            seen.push(f.clone());
            f["ref"] == "s"
        })
        .await
        .expect("an answer to the send");
    assert_eq!(kind_code(&r), (Some("error"), Some("forbidden")), "{r}");
    alice.post_as("rec", "after", "a1").await;
    let marker = alice.post_as("rec2", "marker", "a2").await;
    // bob gets rec2 (added behind his session's back) and its marker, never rec's `after`.
    let mut got_rec2 = seen
        .iter()
        .any(|f| f["type"] == "joined" && f["room"] == "rec2");
    loop {
        let f = bob.recv().await.expect("the marker reaches bob");
        assert!(
            !(f["type"] == "message" && f["room"] == "rec"),
            "a message of a room bob left: {f}"
        );
        if f["type"] == "joined" && f["room"] == "rec2" {
            got_rec2 = true;
            // Joined after the marker was sent: the marker is history, which `last_seq`
            // covers (a join delivers what follows it live, not what came before).
            if let (Some(last), Some(seq)) = (f["last_seq"].as_u64(), marker["seq"].as_u64())
                && last >= seq
            {
                break;
            }
        }
        if f["type"] == "message" && f["room"] == "rec2" && f["seq"] == marker["seq"] {
            break;
        }
    }
    assert!(
        got_rec2,
        "the stored membership of rec2 was joined: {seen:?}"
    );
    println!(
        "FIGURES lost membership announcement: a leave and a join written only to the database; reconciled after {} ms (interval 1 s), send forbidden, 0 events of the left room delivered",
        took.as_millis()
    );
}
