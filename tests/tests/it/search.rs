//! Issue 14: full-text search (protocol.md#ws-search, #nats `chat.api.search`) against the real
//! services: the query language, membership at the time of the search, paging, the NATS API
//! with and without `user`, PostgreSQL down, and a body too big to index whole.

use std::time::Duration;

use chat_bus::api::{ApiError, SearchReply, SearchRequest};
use chat_bus::subjects;
use chat_proto::{ErrorCode, RoomId, UserId};
use chat_testkit::{PgCluster, WsClient};
use chat_tests::{Stack, eventually, wait_archived};
use serde_json::{Value, json};

const FAST: &[(&str, &str)] = &[
    ("CHAT_RATE_PER_S", "100000"),
    ("CHAT_OUTBOUND_QUEUE", "8192"),
];

/// Sends a `search` frame and returns the answer (`search_results` or `error`).
async fn search(c: &mut WsClient, mut frame: Value) -> Value {
    frame["type"] = "search".into();
    c.request(frame, "q").await
}

/// The `(room, body)` of each result, in order.
fn found(reply: &Value) -> Vec<(String, String)> {
    assert_eq!(reply["type"], "search_results", "{reply}");
    reply["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|m| {
            (
                m["room"].as_str().unwrap().to_owned(),
                m["body"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn seqs(reply: &Value) -> Vec<u64> {
    reply["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

fn code(reply: &Value) -> &str {
    assert_eq!(reply["type"], "error", "{reply}");
    reply["code"].as_str().unwrap()
}

async fn nats_search(
    client: &async_nats::Client,
    query: &str,
    user: Option<&str>,
    room: Option<&str>,
) -> Result<SearchReply, ApiError> {
    let req = SearchRequest {
        query: query.into(),
        user: user.map(|u| UserId::new(u).unwrap()),
        room: room.map(|r| RoomId::new(r).unwrap()),
        limit: None,
        before: None,
    };
    chat_bus::rpc::request_on(client, subjects::API_SEARCH, &req, Duration::from_secs(10)).await
}

fn bodies(reply: &SearchReply) -> Vec<&str> {
    reply.results.iter().map(|m| m.body.as_str()).collect()
}

/// alice is in `s-a` and `s-b`, bob alone in `s-c`; four archived messages.
async fn corpus(stack: &Stack) -> (WsClient, WsClient) {
    let (mut alice, _) = stack.login(0, "alice").await;
    let (mut bob, _) = stack.login(0, "bob").await;
    alice.join("s-a").await;
    alice.join("s-b").await;
    bob.join("s-c").await;
    alice
        .post_as("s-a", "Deploy the release notes on Friday", "a1")
        .await;
    alice.post_as("s-a", "release the notes, draft", "a2").await;
    alice.post_as("s-b", "deploy draft tomorrow", "b1").await;
    bob.post_as("s-c", "deploy the secret plan", "c1").await;
    let db = stack.db().await;
    wait_archived(&db, "s-a", 2).await;
    wait_archived(&db, "s-b", 1).await;
    wait_archived(&db, "s-c", 1).await;
    (alice, bob)
}

/// A search window of one row: every search below goes on to the text index (with the rooms as
/// lexemes), where with the default window the newest rows alone answer it.
const INDEX_PATH: &[(&str, &str)] = &[("HISTORY_SEARCH_WINDOW", "1")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn words_phrases_exclusions_and_the_room_filter() {
    query_language(Stack::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn words_phrases_exclusions_and_the_room_filter_through_the_index() {
    query_language(Stack::start_with(INDEX_PATH).await).await;
}

/// The index asked for the terms alone, the rooms checked on each row it finds (the way taken
/// when the terms are much rarer than the user's rooms' messages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn words_phrases_exclusions_and_the_room_filter_through_the_index_without_room_terms() {
    let env = [INDEX_PATH, &[("HISTORY_SEARCH_ROOM_TERMS_FACTOR", "0")]].concat();
    query_language(Stack::start_with(&env).await).await;
}

async fn query_language(stack: Stack) {
    let (mut alice, mut bob) = corpus(&stack).await;

    // Case-insensitive whole words, newest first, only alice's rooms.
    let r = search(&mut alice, json!({"query": "DEPLOY"})).await;
    assert_eq!(r["query"], "DEPLOY");
    assert_eq!(r["has_more"], false);
    assert_eq!(
        found(&r),
        [
            ("s-b".into(), "deploy draft tomorrow".into()),
            ("s-a".into(), "Deploy the release notes on Friday".into()),
        ]
    );
    let s = seqs(&r);
    assert!(s[0] > s[1], "descending seq: {s:?}");
    // A result is a message object.
    let m = &r["results"][0];
    for field in ["room", "seq", "prev_seq", "from", "body", "client_id", "ts"] {
        assert!(m.get(field).is_some(), "{field} missing in {m}");
    }
    assert_eq!(
        (m["from"].as_str(), m["client_id"].as_str()),
        (Some("alice"), Some("b1"))
    );
    assert!(found(&search(&mut alice, json!({"query": "deplo"})).await).is_empty());

    // A phrase matches adjacent words in order; the same words apart do not.
    let r = search(&mut alice, json!({"query": "\"release notes\""})).await;
    assert_eq!(found(&r).len(), 1);
    assert_eq!(found(&r)[0].1, "Deploy the release notes on Friday");
    let r = search(&mut alice, json!({"query": "\"notes release\""})).await;
    assert!(found(&r).is_empty());

    // Exclusions.
    let r = search(&mut alice, json!({"query": "notes -draft"})).await;
    assert_eq!(found(&r).len(), 1);
    assert_eq!(found(&r)[0].1, "Deploy the release notes on Friday");
    let r = search(&mut alice, json!({"query": "deploy -\"release notes\""})).await;
    assert_eq!(found(&r), [("s-b".into(), "deploy draft tomorrow".into())]);
    // An exclusion an included term implies leaves nothing to find (answered without reading
    // the archive); one it does not imply still excludes only its own matches.
    for q in [
        "deploy -deploy",
        "DEPLOY -\"deploy\"",
        "\"release notes\" -notes",
        "notes \"release notes\" -\"release  notes\"",
    ] {
        let r = search(&mut alice, json!({ "query": q })).await;
        assert_eq!(found(&r), vec![], "{q:?}");
        assert_eq!(r["has_more"], false);
    }
    let r = search(&mut alice, json!({"query": "notes -\"release notes\""})).await;
    assert_eq!(
        found(&r),
        [("s-a".into(), "release the notes, draft".into())]
    );

    // room: that room only; a room alice is not in: forbidden.
    let r = search(&mut alice, json!({"query": "deploy", "room": "s-a"})).await;
    assert_eq!(
        found(&r),
        [("s-a".into(), "Deploy the release notes on Friday".into())]
    );
    assert_eq!(
        code(&search(&mut alice, json!({"query": "deploy", "room": "s-c"})).await),
        "forbidden"
    );
    let r = search(&mut bob, json!({"query": "deploy"})).await;
    assert_eq!(found(&r), [("s-c".into(), "deploy the secret plan".into())]);

    // No positive term: bad_request, and the connection stays open.
    for q in [
        "-draft",
        "???",
        "- -\"release notes\"",
        "   ",
        "\"\"",
        "a\u{1}b",
    ] {
        let r = search(&mut alice, json!({"query": q})).await;
        assert_eq!(code(&r), "bad_request", "{q:?}: {r}");
        assert_eq!(r["ref"], "q");
    }
    let r = search(&mut alice, json!({"query": "x".repeat(1001)})).await;
    assert_eq!(code(&r), "bad_request");
    let r = search(&mut alice, json!({"query": 5})).await;
    assert_eq!(code(&r), "bad_request");
    assert_eq!(
        alice.request(json!({"type": "ping"}), "p").await["type"],
        "pong"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_is_checked_when_the_search_runs() {
    let stack = Stack::start().await;
    let (mut alice, _) = stack.login(0, "alice").await;
    alice.join("zoo").await;
    alice.post_as("zoo", "a zebra escaped", "z1").await;
    wait_archived(&stack.db().await, "zoo", 1).await;

    // carol joins after the message was sent: she finds it (membership now, not then).
    let (mut carol, _) = stack.login(0, "carol").await;
    assert!(found(&search(&mut carol, json!({"query": "zebra"})).await).is_empty());
    carol.join("zoo").await;
    let r = search(&mut carol, json!({"query": "zebra"})).await;
    assert_eq!(found(&r), [("zoo".into(), "a zebra escaped".into())]);

    // After leaving she finds nothing of that room, and asking for it is forbidden.
    let left = carol
        .request(json!({"type": "leave", "room": "zoo"}), "l")
        .await;
    assert_eq!(left["type"], "left");
    assert!(found(&search(&mut carol, json!({"query": "zebra"})).await).is_empty());
    let r = search(&mut carol, json!({"query": "zebra", "room": "zoo"})).await;
    assert_eq!(code(&r), "forbidden");

    // The same rule over NATS with `user`, whatever an edge thinks.
    let nats = stack.nats.client().await;
    let r = nats_search(&nats, "zebra", Some("carol"), None)
        .await
        .unwrap();
    assert!(r.results.is_empty());
    let e = nats_search(&nats, "zebra", Some("carol"), Some("zoo"))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Forbidden);
    let r = nats_search(&nats, "zebra", Some("alice"), Some("zoo"))
        .await
        .unwrap();
    assert_eq!(bodies(&r), ["a zebra escaped"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_pages_back_and_limit_is_clamped() {
    paging(Stack::start_with(FAST).await).await;
}

/// The same pages with small windows: with 3 rows a page is found partly in the newest rows and
/// partly through the index; with 40, in spans of the newest rows sized by what the first one
/// found (docs/protocol.md#ws-search). The parts join without a gap or a repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_join_across_the_window_and_the_index() {
    for window in ["3", "40"] {
        let env = [FAST, &[("HISTORY_SEARCH_WINDOW", window)]].concat();
        paging(Stack::start_with(&env).await).await;
    }
}

async fn paging(stack: Stack) {
    let (mut alice, _) = stack.login(0, "alice").await;
    alice.join("pages").await;
    alice.join("pages2").await;
    // 60 matches over two rooms: one order across rooms. (bob sends the second half: the
    // client ids are the same, and send is idempotent per user and client_id.)
    let (mut bob, _) = stack.login(0, "bob").await;
    bob.join("pages2").await;
    let mut all = alice.post_many("pages", "page", 30).await;
    all.extend(bob.post_many("pages2", "page", 30).await);
    alice.post_as("pages", "nothing to see", "other").await;
    let db = stack.db().await;
    wait_archived(&db, "pages", 31).await;
    wait_archived(&db, "pages2", 30).await;
    all.sort_unstable_by(|a, b| b.cmp(a));

    let r = search(&mut alice, json!({"query": "page"})).await;
    assert_eq!(seqs(&r), all[..20], "default limit 20, newest first");
    assert_eq!(r["has_more"], true);

    // Paging with before = the last seq seen walks every match exactly once.
    let mut got: Vec<u64> = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let mut frame = json!({"query": "page", "limit": 7});
        if let Some(b) = before {
            frame["before"] = b.into();
        }
        let r = search(&mut alice, frame).await;
        let page = seqs(&r);
        assert!(page.len() <= 7);
        got.extend(&page);
        if r["has_more"] == false {
            break;
        }
        before = page.last().copied();
    }
    assert_eq!(got, all);

    let r = search(&mut alice, json!({"query": "page", "limit": 0})).await;
    assert_eq!(seqs(&r), all[..1]);
    let r = search(&mut alice, json!({"query": "page", "limit": 1000})).await;
    assert_eq!(seqs(&r), all[..50]);
    assert_eq!(r["has_more"], true);
    let r = search(&mut alice, json!({"query": "page", "before": all[59]})).await;
    assert_eq!((seqs(&r).len(), &r["has_more"]), (0, &json!(false)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_search_is_trusted_without_user_and_bounded_with_it() {
    let stack = Stack::start().await;
    let _clients = corpus(&stack).await;
    let nats = stack.nats.client().await;

    // Without user: every room (a trusted integration).
    let r = nats_search(&nats, "deploy", None, None).await.unwrap();
    assert_eq!(
        bodies(&r),
        [
            "deploy the secret plan",
            "deploy draft tomorrow",
            "Deploy the release notes on Friday"
        ]
    );
    let r = nats_search(&nats, "deploy", None, Some("s-c"))
        .await
        .unwrap();
    assert_eq!(bodies(&r), ["deploy the secret plan"]);
    assert!(!r.has_more);

    // With user: only that user's rooms.
    let r = nats_search(&nats, "deploy", Some("bob"), None)
        .await
        .unwrap();
    assert_eq!(bodies(&r), ["deploy the secret plan"]);
    let r = nats_search(&nats, "deploy", Some("nobody"), None)
        .await
        .unwrap();
    assert!(r.results.is_empty());
    let e = nats_search(&nats, "deploy", Some("bob"), Some("s-a"))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Forbidden);

    // Bad requests.
    let e = nats_search(&nats, "-deploy", None, None).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
    let reply = nats
        .request(subjects::API_SEARCH, "{\"query\": 7}".into())
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(v["error"]["code"], "bad_request");
}

/// PostgreSQL down: search answers `unavailable` over WebSocket and NATS, nothing crashes,
/// sending goes on, and search works again once PostgreSQL is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_answers_unavailable_and_nothing_crashes() {
    let pg = PgCluster::start().await;
    let stack = Stack::start_on(&[], pg.url()).await;
    let (mut alice, _) = stack.login(0, "alice").await;
    alice.join("outage").await;
    alice.post_as("outage", "before the outage", "o1").await;
    wait_archived(&stack.db().await, "outage", 1).await;
    assert_eq!(
        found(&search(&mut alice, json!({"query": "outage"})).await).len(),
        1
    );

    pg.stop_server().await;
    let r = search(&mut alice, json!({"query": "outage"})).await;
    assert_eq!(code(&r), "unavailable", "{r}");
    let r = search(&mut alice, json!({"query": "outage", "room": "outage"})).await;
    assert_eq!(code(&r), "unavailable", "{r}");
    let nats = stack.nats.client().await;
    let e = nats_search(&nats, "outage", None, None).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable);
    // The session and the services live on: sending still works.
    alice.post_as("outage", "during the outage", "o2").await;
    assert!(!stack.histories[0].task.is_finished(), "chat-history died");
    assert!(!stack.edges[0].task.is_finished(), "chat-edge died");

    pg.start_server().await;
    wait_archived(&stack.db().await, "outage", 2).await;
    let r = eventually(
        "search answers again",
        Duration::from_secs(30),
        async || {
            let r = search(&mut alice, json!({"query": "outage"})).await;
            if r["type"] == "search_results" {
                return Ok(r);
            }
            assert_eq!(code(&r), "unavailable");
            Err(r)
        },
    )
    .await;
    assert_eq!(
        found(&r),
        [
            ("outage".into(), "during the outage".into()),
            ("outage".into(), "before the outage".into())
        ]
    );
}

/// A bot can publish a body of almost 1 MB through JetStream. Its tsvector would exceed
/// PostgreSQL's 1 MB limit (`string is too long for tsvector`), an error that is not a data
/// error, so the archive would retry that batch forever; the index covers the first 100,000
/// characters instead. The result is also cut to fit one frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_too_big_to_index_whole_does_not_block_the_archive() {
    let stack = Stack::start().await;
    let js = async_nats::jetstream::new(stack.nats.client().await);
    // ~950 KB of distinct words: its full tsvector would be about 1.1 MB.
    let mut body = String::from("needle ");
    let mut i = 0u64;
    while body.len() < 950_000 {
        body.push_str(&format!("w{:x}q ", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        i += 1;
    }
    body.push_str("tailword");
    for (client_id, text) in [
        ("big", body.as_str()),
        ("small", "needle after the big one"),
    ] {
        let event = chat_bus::event::RoomEvent::message(
            RoomId::new("bots").unwrap(),
            UserId::new("bot").unwrap(),
            text.into(),
            client_id.into(),
            chat_bus::now_ms(),
        );
        js.publish(
            "chat.room.bots.msg",
            serde_json::to_vec(&event).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    // Since event validity (main, MAX_EVENT_BODY_CHARS = 16,384) such a body is not an event:
    // it is dead-lettered before the archive, and the index bound stays as defence in depth.
    wait_archived(&stack.db().await, "bots", 1).await;
    let nats = stack.nats.client().await;
    let r = nats_search(&nats, "needle", None, None).await.unwrap();
    assert_eq!(bodies(&r), ["needle after the big one"]);
    assert!(!r.has_more);
    assert!(body.len() > 900_000);
}

/// Issue 15 item 4 (protocol.md#ws: no server frame is dropped, none is over 1 MiB): a page of
/// search results near its byte budget (768 KiB) still reaches the client over WebSocket. Before,
/// the edge's write buffer was capped at 4 × max_frame (256 KiB), so such a frame could not be
/// written at all and the session ended instead of answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_near_the_byte_budget_reach_the_client() {
    let stack = Stack::start_with(FAST).await;
    let (mut alice, _) = stack.login(0, "alice").await;
    alice.join("big").await;
    let js = async_nats::jetstream::new(stack.nats.client().await);
    // 30 bot messages of 12,000 four-byte characters (~47 KiB of JSON each): ~1.4 MB in all,
    // so the first page is cut near the budget, well above 256 KiB.
    let wide = "𝄞".repeat(12_000);
    for i in 0..30 {
        let event = chat_bus::event::RoomEvent::message(
            RoomId::new("big").unwrap(),
            UserId::new("bot").unwrap(),
            format!("needle {wide}"),
            format!("b{i}"),
            chat_bus::now_ms(),
        );
        js.publish(
            "chat.room.big.msg",
            serde_json::to_vec(&event).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    wait_archived(&stack.db().await, "big", 30).await;
    let reply = search(&mut alice, json!({"query": "needle", "limit": 50})).await;
    let n = found(&reply).len();
    assert!(n > 5, "{n} results: the page should be large");
    assert!(reply["has_more"].as_bool().unwrap());
    assert!(reply.to_string().len() > 256 * 1024);
    // The session is still open and answers.
    assert_eq!(
        alice.request(json!({"type": "ping"}), "p").await["type"],
        "pong"
    );
}

/// Issue 14 with issue 13: an edit re-indexes (the message is found by its current body only,
/// with its state), a delete removes it from the results; both in the archive's own write, so
/// a search answered after the change is archived never sees the old text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_reindexes_and_a_delete_removes_from_results() {
    let stack = Stack::start().await;
    let (mut alice, _) = stack.login(0, "alice").await;
    alice.join("s-life").await;
    let ack = alice
        .post_as("s-life", "ship the walrus release", "w1")
        .await;
    let m = ack["seq"].as_u64().unwrap();
    let db = stack.db().await;
    wait_archived(&db, "s-life", 1).await;
    let r = search(&mut alice, json!({"query": "walrus"})).await;
    assert_eq!(seqs(&r), vec![m]);
    assert_eq!(r["results"][0]["version"], m, "results carry their state");

    let edit = alice
        .request(
            json!({"type":"edit","room":"s-life","seq":m,"body":"ship the narwhal release","client_id":"w2"}),
            "e",
        )
        .await;
    assert_eq!(edit["type"], "ack", "{edit}");
    let e = edit["seq"].as_u64().unwrap();
    let react = alice
        .request(
            json!({"type":"react","room":"s-life","seq":m,"emoji":"🚀","client_id":"w3"}),
            "r",
        )
        .await;
    let r_seq = react["seq"].as_u64().unwrap();
    wait_archived(&db, "s-life", 3).await;
    assert_eq!(
        found(&search(&mut alice, json!({"query": "walrus"})).await),
        vec![]
    );
    let r = search(&mut alice, json!({"query": "narwhal"})).await;
    assert_eq!(
        found(&r),
        vec![("s-life".to_owned(), "ship the narwhal release".to_owned())]
    );
    let hit = &r["results"][0];
    assert_eq!(hit["seq"], m);
    assert_eq!(hit["version"], r_seq);
    assert!(hit["edited"].is_i64(), "{hit}");
    assert_eq!(hit["reactions"], json!({"🚀": ["alice"]}));
    assert!(e < r_seq);
    // The NATS API sees the same.
    let nats = stack.nats.client().await;
    let api = nats_search(&nats, "narwhal", Some("alice"), None)
        .await
        .unwrap();
    assert_eq!(bodies(&api), vec!["ship the narwhal release"]);
    assert_eq!(
        api.results[0].state.as_ref().map(|s| s.version),
        Some(r_seq)
    );

    let del = alice
        .request(
            json!({"type":"delete","room":"s-life","seq":m,"client_id":"w4"}),
            "d",
        )
        .await;
    assert_eq!(del["type"], "ack", "{del}");
    wait_archived(&db, "s-life", 4).await;
    for q in ["narwhal", "walrus", "release"] {
        assert_eq!(
            found(&search(&mut alice, json!({ "query": q })).await),
            vec![],
            "{q}"
        );
    }
    assert!(
        nats_search(&nats, "release", None, None)
            .await
            .unwrap()
            .results
            .is_empty()
    );
}

/// The planner's estimate that a search asks for before the index follows each query's own terms
/// (the bound tsquery is planned with its value, not as a generic parameter): it decides whether
/// the rooms go into the index's query (docs/protocol.md *Search*).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_estimate_before_the_index_follows_the_terms() {
    let stack = Stack::start().await;
    let db = stack.db().await;
    sqlx::query(
        "INSERT INTO history.rooms (id, kind, created_by, created_at) VALUES ('est', 'public', 'm', 0)",
    )
    .execute(&db)
    .await
    .unwrap();
    // 5,000 messages hold `common`, 50 of them `rare` too.
    sqlx::query(
        "INSERT INTO history.messages (epoch_id, seq, room, sender, body, client_id, ts)
         SELECT (SELECT max(id) FROM history.epochs), 1000000 + g, 'est', 'm',
                CASE WHEN g % 100 = 0 THEN 'rare common' ELSE 'common' END, 'c' || g, 0
         FROM generate_series(1, 5000) g",
    )
    .execute(&db)
    .await
    .unwrap();
    sqlx::query("ANALYZE history.messages")
        .execute(&db)
        .await
        .unwrap();
    let mut tx = db.begin().await.unwrap();
    sqlx::query("SET LOCAL search_path = history")
        .execute(&mut *tx)
        .await
        .unwrap();
    let common = chat_history::search::estimated_matches(&mut tx, "'common'")
        .await
        .unwrap();
    let rare = chat_history::search::estimated_matches(&mut tx, "'rare'")
        .await
        .unwrap();
    assert!(
        (4000.0..=6000.0).contains(&common) && rare <= 500.0,
        "estimates: common {common}, rare {rare}"
    );
}
