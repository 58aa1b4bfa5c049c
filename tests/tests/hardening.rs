//! Issue 15, hardening of the services: what an attacker with a NATS credential or a hostile
//! user tried, against the real services, nats-server and PostgreSQL. Each scenario prints a
//! `FIGURES` line: what was tried, and what was lost, crashed or leaked (zero).

use std::time::Duration;

use async_nats::jetstream;
use chat_bus::api::{PresenceReply, PresenceRequest};
use chat_bus::subjects;
use chat_tests::{Stack, nats_request};
use futures::StreamExt;
use serde_json::json;

/// Item 7: a request whose reply subject is not an inbox is dropped unanswered (CONTRACT §3), so
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
/// per member) and lists at most 1,000 of them (CONTRACT §2 v1.1).
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

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (reply, took) = loop {
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
            break (reply, started.elapsed());
        }
        assert!(tokio::time::Instant::now() < deadline, "online: {online:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while requester.request("test.slow", "x".into()).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server never answered"
        );
    }

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
