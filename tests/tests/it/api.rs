//! Issue 16: the server HTTP API (chat-api) against real servers: every endpoint's happy path
//! and its refusals (no key, bad key, wrong scope, posting as an identity the key does not own,
//! non-existent room, oversized body, quotas and rate), key revocation, a removal that stops
//! delivery to a connected WebSocket client within a second, a disconnect that closes a session
//! with 4001, and docs/openapi.json matched to the router and the handlers' types.

use std::time::{Duration, Instant};

use chat_bus::apikey::{ApiKeyRecord, Scope, generate};
use chat_proto::UserId;
use chat_testkit::NatsServer;
use chat_tests::{HttpAnswer, Stack, eventually, http, http_json, put_api_key, revoke_api_key};
use serde_json::{Value, json};

fn bots(names: &[&str]) -> Vec<UserId> {
    names.iter().map(|n| UserId::new(*n).unwrap()).collect()
}

/// A key with every scope, posting as `bot-a`.
fn full_key() -> (String, ApiKeyRecord) {
    generate("backend", Scope::ALL.to_vec(), bots(&["bot-a"]), 1)
}

fn expect(a: &HttpAnswer, status: u16, code: &str) {
    assert_eq!(
        (a.status, a.code()),
        (status, code),
        "unexpected answer {a:?}"
    );
    if status >= 400 {
        assert!(
            a.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "no message: {a:?}"
        );
    }
}

fn ok(a: &HttpAnswer, status: u16) -> &Value {
    assert_eq!(a.status, status, "unexpected answer {a:?}");
    &a.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_as_a_bot_and_every_refusal() {
    let mut stack = Stack::start().await;
    let i = stack
        .add_api_with(&[
            ("CHAT_MAX_BODY", "100"),
            ("CHAT_MAX_FRAME", "4096"),
            ("CHAT_API_RATE_PER_KEY", "1000"),
        ])
        .await;
    let api = stack.apis[i].addr.unwrap();
    let nats = stack.nats.client().await;
    let (key, rec) = full_key();
    put_api_key(&nats, &rec).await;
    let (reader, reader_rec) = generate("reader", vec![Scope::RoomsRead], bots(&["bot-a"]), 1);
    put_api_key(&nats, &reader_rec).await;
    chat_tests::wait_key_known(&[api], &key).await;
    chat_tests::wait_key_known(&[api], &reader).await;
    let k = Some(key.as_str());

    // A room with the bot and alice; alice's session learns of it.
    let (mut alice, _) = stack.login(0, "alice").await;
    let room = ok(
        &http_json(
            api,
            "POST",
            "/api/v1/rooms",
            k,
            &json!({"room":"ops","members":["bot-a","alice"]}),
        )
        .await,
        201,
    )
    .clone();
    assert_eq!(room["kind"], "public");
    alice
        .recv_until(|f| f["type"] == "joined" && f["room"] == "ops")
        .await
        .unwrap();
    expect(
        &http_json(api, "POST", "/api/v1/rooms", k, &json!({"room":"ops"})).await,
        409,
        "conflict",
    );

    // Post, deliver, retry.
    let msg = json!({"from":"bot-a","body":"deploy done","client_id":"c1"});
    let path = "/api/v1/rooms/ops/messages";
    let first = ok(&http_json(api, "POST", path, k, &msg).await, 201).clone();
    let seq = first["seq"].as_u64().unwrap();
    assert_eq!(first["duplicate"], false);
    let live = alice.recv_type("message").await.unwrap();
    assert_eq!(
        (live["seq"].as_u64(), live["from"].as_str()),
        (Some(seq), Some("bot-a"))
    );
    let again = ok(&http_json(api, "POST", path, k, &msg).await, 200).clone();
    assert_eq!(
        (again["seq"].as_u64(), again["duplicate"].as_bool()),
        (Some(seq), Some(true))
    );
    assert_eq!(
        again["ts"], first["ts"],
        "a retry answers with the original"
    );

    // Replies and threads, checked as the edge checks them.
    let reply = json!({"from":"bot-a","body":"re","client_id":"c2","reply_to":seq,"thread":seq});
    ok(&http_json(api, "POST", path, k, &reply).await, 201);
    let dangling = json!({"from":"bot-a","body":"re","client_id":"c3","reply_to":9999});
    expect(
        &http_json(api, "POST", path, k, &dangling).await,
        404,
        "not_found",
    );

    // Edit, react (on and off), delete; each reaches the client.
    let mpath = format!("/api/v1/rooms/ops/messages/{seq}");
    let edit = json!({"from":"bot-a","body":"deploy done (v2)","client_id":"e1"});
    ok(&http_json(api, "PATCH", &mpath, k, &edit).await, 201);
    alice.recv_until(|f| f["type"] == "edit").await.unwrap();
    let rpath = format!("{mpath}/reactions");
    ok(
        &http_json(
            api,
            "POST",
            &rpath,
            k,
            &json!({"from":"bot-a","emoji":"👍","client_id":"r1"}),
        )
        .await,
        201,
    );
    ok(
        &http_json(
            api,
            "POST",
            &rpath,
            k,
            &json!({"from":"bot-a","emoji":"👍","on":false,"client_id":"r2"}),
        )
        .await,
        201,
    );
    alice.recv_until(|f| f["type"] == "reaction").await.unwrap();
    expect(
        &http_json(
            api,
            "POST",
            &rpath,
            k,
            &json!({"from":"bot-a","emoji":"a b","client_id":"r3"}),
        )
        .await,
        400,
        "bad_request",
    );
    let del = format!("{mpath}?from=bot-a&client_id=d1");
    ok(&http(api, "DELETE", &del, k, None).await, 201);
    alice.recv_until(|f| f["type"] == "delete").await.unwrap();
    let del_again = ok(&http(api, "DELETE", &del, k, None).await, 200).clone();
    assert_eq!(
        del_again["duplicate"], true,
        "a retried delete is the original"
    );
    expect(
        &http(
            api,
            "DELETE",
            &format!("{mpath}?from=bot-a&client_id=d2"),
            k,
            None,
        )
        .await,
        404,
        "not_found",
    );

    // Refusals: key, scope, identity, room, membership, sizes, JSON.
    expect(
        &http_json(api, "POST", path, None, &msg).await,
        401,
        "unauthorized",
    );
    expect(
        &http_json(api, "POST", path, Some("chk_nope"), &msg).await,
        401,
        "unauthorized",
    );
    let forged = format!("chk_{}_{}", rec.id, "0".repeat(64));
    expect(
        &http_json(api, "POST", path, Some(&forged), &msg).await,
        401,
        "unauthorized",
    );
    expect(
        &http_json(api, "POST", path, Some(&reader), &msg).await,
        403,
        "forbidden",
    );
    let as_alice = json!({"from":"alice","body":"hi","client_id":"x1"});
    expect(
        &http_json(api, "POST", path, k, &as_alice).await,
        403,
        "forbidden",
    );
    let edit_alice = json!({"from":"alice","body":"x","client_id":"x2"});
    expect(
        &http_json(api, "PATCH", &mpath, k, &edit_alice).await,
        403,
        "forbidden",
    );
    let nowhere = json!({"from":"bot-a","body":"hi","client_id":"x3"});
    expect(
        &http_json(api, "POST", "/api/v1/rooms/nowhere/messages", k, &nowhere).await,
        404,
        "not_found",
    );
    http_json(
        api,
        "POST",
        "/api/v1/rooms",
        k,
        &json!({"room":"elsewhere","members":["alice"]}),
    )
    .await;
    expect(
        &http_json(api, "POST", "/api/v1/rooms/elsewhere/messages", k, &nowhere).await,
        403,
        "forbidden",
    );
    let long = json!({"from":"bot-a","body":"x".repeat(101),"client_id":"x4"});
    expect(
        &http_json(api, "POST", path, k, &long).await,
        413,
        "too_large",
    );
    let huge = json!({"from":"bot-a","body":"x".repeat(5000),"client_id":"x5"});
    expect(
        &http_json(api, "POST", path, k, &huge).await,
        413,
        "too_large",
    );
    expect(
        &http(api, "POST", path, k, Some(b"{not json")).await,
        400,
        "bad_request",
    );
    let extra = json!({"from":"bot-a","body":"hi","client_id":"x6","admin":true});
    expect(
        &http_json(api, "POST", path, k, &extra).await,
        400,
        "bad_request",
    );
    let control = json!({"from":"bot-a","body":"a\u{7}b","client_id":"x7"});
    expect(
        &http_json(api, "POST", path, k, &control).await,
        400,
        "bad_request",
    );
    expect(
        &http(api, "GET", "/api/v1/nothing", k, None).await,
        404,
        "not_found",
    );
    expect(
        &http(api, "PATCH", path, k, Some(b"{}")).await,
        405,
        "bad_request",
    );
    // No key beats a bad body: nothing about the body is told to a stranger.
    expect(
        &http(api, "POST", path, None, Some(b"{not json")).await,
        401,
        "unauthorized",
    );

    // Quotas: members of a create, and the per-key rate (Retry-After).
    let many: Vec<String> = (0..1001).map(|i| format!("u{i}")).collect();
    let big = serde_json::to_vec(&json!({"room":"big","members":many})).unwrap();
    let second = stack.add_api_with(&[("CHAT_API_RATE_PER_KEY", "5")]).await;
    let api2 = stack.apis[second].addr.unwrap();
    // The body is above CHAT_MAX_FRAME of the first instance: ask the second (64 KiB).
    expect(
        &http(api2, "POST", "/api/v1/rooms", k, Some(&big)).await,
        429,
        "limit_exceeded",
    );
    let (burst, burst_rec) = generate("burst", vec![Scope::RoomsRead], vec![], 1);
    put_api_key(&nats, &burst_rec).await;
    chat_tests::wait_key_known(&[api, api2], &burst).await;
    let burst = Some(burst.as_str());
    let limited = eventually("the rate limit", Duration::from_secs(10), || async move {
        let a = http(api2, "GET", "/api/v1/rooms/ops", burst, None).await;
        (a.status == 429).then_some(a)
    })
    .await;
    expect(&limited, 429, "rate_limited");
    assert!(limited.header("retry-after").is_some(), "{limited:?}");
    // Another key is not limited by that one.
    ok(
        &http(api2, "GET", "/api/v1/rooms/ops", Some(&reader), None).await,
        200,
    );

    // With chat-history gone, what needs it is 503 unavailable (no responder: at once).
    for h in std::mem::take(&mut stack.histories) {
        h.shutdown().await;
    }
    let asked = Instant::now();
    expect(
        &http(api, "GET", "/api/v1/rooms/ops", k, None).await,
        503,
        "unavailable",
    );
    let retry = json!({"from":"bot-a","body":"later","client_id":"late1"});
    let late = http_json(api, "POST", "/api/v1/rooms/elsewhere/messages", k, &retry).await;
    expect(&late, 503, "unavailable");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_members_reads_revocation_and_disconnect() {
    let mut stack = Stack::start_with(&[("CHAT_MAX_ROOMS_PER_USER", "3")]).await;
    let i = stack.add_api_with(&[]).await;
    let api = stack.apis[i].addr.unwrap();
    let nats = stack.nats.client().await;
    let (key, rec) = full_key();
    put_api_key(&nats, &rec).await;
    let k = Some(key.as_str());
    let (noscope, noscope_rec) = generate("none", vec![Scope::MessagesWrite], bots(&["bot-a"]), 1);
    put_api_key(&nats, &noscope_rec).await;
    chat_tests::wait_key_known(&[api], &key).await;
    chat_tests::wait_key_known(&[api], &noscope).await;
    let ns = Some(noscope.as_str());

    let (mut alice, _) = stack.login(0, "alice").await;
    let (mut carol, _) = stack.login(0, "carol").await;
    let created = http_json(
        api,
        "POST",
        "/api/v1/rooms",
        k,
        &json!({"room":"team","private":true,"members":["alice","bot-a"],"by":"bot-a"}),
    )
    .await;
    let info = ok(&created, 201);
    assert_eq!(info["kind"], "private");
    assert_eq!(info["members"], json!(["alice", "bot-a"]));
    alice
        .recv_until(|f| f["type"] == "joined" && f["room"] == "team")
        .await
        .unwrap();

    // Get a room; add carol (her session joins at once).
    let got = ok(&http(api, "GET", "/api/v1/rooms/team", k, None).await, 200).clone();
    assert_eq!(got["members"], json!(["alice", "bot-a"]));
    expect(
        &http(api, "GET", "/api/v1/rooms/nowhere", k, None).await,
        404,
        "not_found",
    );
    expect(
        &http(api, "GET", "/api/v1/rooms/team", ns, None).await,
        403,
        "forbidden",
    );
    expect(
        &http(api, "GET", "/api/v1/rooms/team", None, None).await,
        401,
        "unauthorized",
    );
    let added = ok(
        &http(api, "PUT", "/api/v1/rooms/team/members/carol", k, None).await,
        200,
    )
    .clone();
    assert_eq!(added["members"], json!(["alice", "bot-a", "carol"]));
    carol
        .recv_until(|f| f["type"] == "joined" && f["room"] == "team")
        .await
        .unwrap();
    expect(
        &http(api, "PUT", "/api/v1/rooms/nowhere/members/carol", k, None).await,
        404,
        "not_found",
    );
    expect(
        &http(api, "PUT", "/api/v1/rooms/team/members/carol", ns, None).await,
        403,
        "forbidden",
    );
    expect(
        &http(api, "PUT", "/api/v1/rooms/team/members/bad%20id", k, None).await,
        400,
        "bad_request",
    );
    // The user's room quota (CHAT_MAX_ROOMS_PER_USER=3): carol is in one room.
    for r in ["q1", "q2"] {
        ok(
            &http_json(
                api,
                "POST",
                "/api/v1/rooms",
                k,
                &json!({"room":r,"members":["carol"]}),
            )
            .await,
            201,
        );
    }
    http_json(api, "POST", "/api/v1/rooms", k, &json!({"room":"q3"})).await;
    expect(
        &http(api, "PUT", "/api/v1/rooms/q3/members/carol", k, None).await,
        429,
        "limit_exceeded",
    );

    // Messages for the reads.
    let post =
        |client_id: &str, body: &str| json!({"from":"bot-a","body":body,"client_id":client_id});
    let m1 = ok(
        &http_json(
            api,
            "POST",
            "/api/v1/rooms/team/messages",
            k,
            &post("h1", "invoice 77 paid"),
        )
        .await,
        201,
    )["seq"]
        .as_u64()
        .unwrap();
    alice
        .recv_until(|f| f["type"] == "message" && f["seq"].as_u64() == Some(m1))
        .await
        .unwrap();

    // History: trusted, on behalf of a member, refused for a stranger and an unknown room.
    let page = ok(
        &http(api, "GET", "/api/v1/rooms/team/messages?limit=10", k, None).await,
        200,
    )
    .clone();
    assert!(
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["seq"].as_u64() == Some(m1)),
        "{page}"
    );
    ok(
        &http(
            api,
            "GET",
            "/api/v1/rooms/team/messages?user=alice",
            k,
            None,
        )
        .await,
        200,
    );
    expect(
        &http(
            api,
            "GET",
            "/api/v1/rooms/team/messages?user=mallory",
            k,
            None,
        )
        .await,
        403,
        "forbidden",
    );
    expect(
        &http(api, "GET", "/api/v1/rooms/nowhere/messages", k, None).await,
        404,
        "not_found",
    );
    expect(
        &http(
            api,
            "GET",
            "/api/v1/rooms/team/messages?before=5&after=1",
            k,
            None,
        )
        .await,
        400,
        "bad_request",
    );
    expect(
        &http(api, "GET", "/api/v1/rooms/team/messages?limit=x", k, None).await,
        400,
        "bad_request",
    );
    expect(
        &http(api, "GET", "/api/v1/rooms/team/messages", ns, None).await,
        403,
        "forbidden",
    );

    // Search (once the archive indexed it), as alice and as a trusted reader.
    let found = eventually(
        "the message indexed",
        Duration::from_secs(20),
        || async move {
            let a = http(
                api,
                "GET",
                "/api/v1/search?query=invoice&user=alice",
                k,
                None,
            )
            .await;
            (a.status == 200 && !a.body["results"].as_array().unwrap().is_empty()).then_some(a)
        },
    )
    .await;
    assert_eq!(found.body["results"][0]["seq"].as_u64(), Some(m1));
    let mallory = ok(
        &http(
            api,
            "GET",
            "/api/v1/search?query=invoice&user=mallory",
            k,
            None,
        )
        .await,
        200,
    )
    .clone();
    assert_eq!(mallory["results"], json!([]), "a stranger finds nothing");
    ok(
        &http(api, "GET", "/api/v1/search?query=invoice", k, None).await,
        200,
    );
    expect(
        &http(api, "GET", "/api/v1/search?query=%20", k, None).await,
        400,
        "bad_request",
    );
    expect(
        &http(
            api,
            "GET",
            "/api/v1/search?query=x&user=mallory&room=team",
            k,
            None,
        )
        .await,
        403,
        "forbidden",
    );

    // Presence of a room and of users; unread state.
    let online = eventually("alice online", Duration::from_secs(20), || async move {
        let a = http(api, "GET", "/api/v1/presence?users=alice,zed", k, None).await;
        let users = a.body["users"].as_array().cloned().unwrap_or_default();
        users
            .iter()
            .any(|u| u["user"] == "alice" && u["status"] == "online")
            .then_some(users)
    })
    .await;
    assert!(
        online
            .iter()
            .any(|u| u["user"] == "zed" && u["status"] == "offline"),
        "{online:?}"
    );
    let room_presence = ok(
        &http(api, "GET", "/api/v1/rooms/team/presence", k, None).await,
        200,
    )
    .clone();
    assert!(
        room_presence["users"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["user"] == "carol"),
        "{room_presence}"
    );
    expect(
        &http(api, "GET", "/api/v1/presence?users=", k, None).await,
        400,
        "bad_request",
    );
    expect(
        &http(api, "GET", "/api/v1/presence?users=alice", ns, None).await,
        403,
        "forbidden",
    );
    let unread = eventually(
        "alice's unread count",
        Duration::from_secs(20),
        || async move {
            let a = http(api, "GET", "/api/v1/users/alice/unread", k, None).await;
            let rooms = a.body["rooms"].as_array().cloned().unwrap_or_default();
            rooms
                .into_iter()
                .find(|r| r["room"] == "team" && r["unread"].as_u64() == Some(1))
        },
    )
    .await;
    assert_eq!(unread["last_read"], 0);
    ok(
        &http(api, "GET", "/api/v1/users/alice/unread?rooms=team", k, None).await,
        200,
    );
    expect(
        &http(api, "GET", "/api/v1/users/alice/unread", ns, None).await,
        403,
        "forbidden",
    );

    // A removal stops delivery to alice's open session within a second.
    let asked = Instant::now();
    let removed = ok(
        &http(api, "DELETE", "/api/v1/rooms/team/members/alice", k, None).await,
        200,
    )
    .clone();
    assert_eq!(removed["members"], json!(["bot-a", "carol"]));
    alice
        .recv_until(|f| f["type"] == "left" && f["room"] == "team")
        .await
        .unwrap();
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(1), "left after {took:?}");
    let m2 = ok(
        &http_json(
            api,
            "POST",
            "/api/v1/rooms/team/messages",
            k,
            &post("h2", "after"),
        )
        .await,
        201,
    )["seq"]
        .as_u64()
        .unwrap();
    carol
        .recv_until(|f| f["type"] == "message" && f["seq"].as_u64() == Some(m2))
        .await
        .unwrap();
    alice.expect_no("message", Duration::from_millis(500)).await;
    expect(
        &http(
            api,
            "DELETE",
            "/api/v1/rooms/nowhere/members/alice",
            k,
            None,
        )
        .await,
        404,
        "not_found",
    );

    // Disconnect: carol's session closes with 4001.
    expect(
        &http_json(
            api,
            "POST",
            "/api/v1/users/carol/disconnect",
            ns,
            &json!({}),
        )
        .await,
        403,
        "forbidden",
    );
    let d = http_json(
        api,
        "POST",
        "/api/v1/users/carol/disconnect",
        k,
        &json!({"reason":"banned"}),
    )
    .await;
    assert_eq!(ok(&d, 202)["user"], "carol");
    assert_eq!(carol.expect_close().await, Some(4001));
    // An empty body is fine too.
    ok(
        &http(api, "POST", "/api/v1/users/nobody/disconnect", k, None).await,
        202,
    );

    // Revocation: deleting the key's entry refuses it on this instance and on another.
    let j = stack.add_api_with(&[]).await;
    let api_b = stack.apis[j].addr.unwrap();
    ok(
        &http(api_b, "GET", "/api/v1/rooms/team", k, None).await,
        200,
    );
    revoke_api_key(&nats, &rec.id).await;
    for addr in [api, api_b] {
        eventually(
            "the revoked key refused",
            Duration::from_secs(5),
            || async move {
                let a = http(addr, "GET", "/api/v1/rooms/team", k, None).await;
                (a.status == 401).then_some(())
            },
        )
        .await;
    }
    expect(
        &http(api, "GET", "/api/v1/rooms/team", k, None).await,
        401,
        "unauthorized",
    );
}

/// Every route of the router is in docs/openapi.json and the reverse, and every example of the
/// document (request bodies, query strings, success responses, errors) decodes into the type
/// the handler takes or gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_matches_the_router() {
    let root = chat_testkit::workspace_root();
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("docs/openapi.json")).unwrap())
            .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            documented.push((
                method.clone(),
                path.clone(),
                op["operationId"].as_str().unwrap().to_owned(),
            ));
        }
    }
    let mut routed: Vec<(String, String, String)> = chat_api::routes::routes()
        .iter()
        .map(|(m, p, o)| (m.to_string(), p.to_string(), o.to_string()))
        .collect();
    documented.sort();
    routed.sort();
    assert_eq!(
        documented, routed,
        "docs/openapi.json and chat_api::routes::routes() differ"
    );

    // The types of every example.
    let types = chat_api::routes::example_types();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap();
            let (req, resp) = types.get(id).unwrap_or_else(|| panic!("no types for {id}"));
            let scope = op["x-scope"].as_str().unwrap();
            assert!(Scope::parse(scope).is_some(), "{id}: unknown scope {scope}");
            let body_ex = &op["requestBody"]["content"]["application/json"]["example"];
            let query_ex = &op["x-query-example"];
            match (req, body_ex.is_null(), query_ex.is_null()) {
                (Some(decode), false, true) | (Some(decode), true, false) => {
                    let ex = if body_ex.is_null() { query_ex } else { body_ex };
                    // Query strings carry strings: numbers and booleans as the router reads them.
                    decode(ex).unwrap_or_else(|e| panic!("{method} {path}: request example: {e}"));
                }
                (None, true, true) => {}
                other => panic!("{method} {path}: request example and type disagree: {other:?}"),
            }
            for (status, r) in op["responses"].as_object().unwrap() {
                let ex = &r["content"]["application/json"]["example"];
                assert!(!ex.is_null(), "{method} {path} {status}: no example");
                let code: u16 = status.parse().unwrap();
                if code < 300 {
                    resp(ex).unwrap_or_else(|e| panic!("{method} {path} {status}: {e}"));
                } else {
                    let e: chat_api::http::ErrorBody = serde_json::from_value(ex.clone())
                        .unwrap_or_else(|e| panic!("{method} {path} {status}: {e}"));
                    assert_eq!(
                        chat_api::http::status_of(e.error.code).as_u16(),
                        code,
                        "{method} {path}: {status} documented with code {:?}",
                        e.error.code
                    );
                }
            }
        }
    }

    // And the router really serves each route: without a key every one is 401 (an unrouted
    // path would be 404, a wrong method 405).
    chat_runtime::telemetry::init_for_tests();
    let nats = NatsServer::start().await;
    let env = chat_runtime::Env::from_pairs([
        ("NATS_URL", nats.url.as_str()),
        ("CHAT_API_ADDR", "127.0.0.1:0"),
        ("ADMIN_LISTEN", "127.0.0.1:0"),
    ]);
    let stop = tokio_util::sync::CancellationToken::new();
    let app = chat_api::App::build(chat_api::ApiConfig::from_env(&env).unwrap(), &stop)
        .await
        .unwrap();
    let addr = app.local_addr();
    let task = tokio::spawn(app.run(stop.clone()));
    for (method, path, id) in chat_api::routes::routes() {
        let concrete = path
            .replace("{room}", "r")
            .replace("{user}", "u")
            .replace("{seq}", "1");
        let a = http(addr, &method.to_uppercase(), &concrete, None, None).await;
        assert_eq!(
            (a.status, a.code()),
            (401, "unauthorized"),
            "{id}: {method} {path}"
        );
    }
    stop.cancel();
    let _ = task.await;
}

/// The operator's path end to end: a key made by `chatctl api-key create` is accepted by a
/// running chat-api at once (the bucket's watch), with the scopes it was given, and refused as
/// soon as `chatctl api-key revoke` deletes it. Only NATS and chat-api run: an accepted key meets
/// `503 unavailable` (no chat-history), a refused one `401`/`403` before anything is asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_from_chatctl_works_until_chatctl_revokes_it() {
    async fn chatctl(nats: &str, args: &[&str]) -> String {
        let bin = chat_tests::procs::bin_dir().join("chatctl");
        assert!(bin.exists(), "build with `cargo build --workspace --bins`");
        let mut cmd = tokio::process::Command::new(bin);
        for (k, _) in std::env::vars() {
            if k.starts_with("NATS_") || k.starts_with("CHAT_") {
                cmd.env_remove(k);
            }
        }
        let out = cmd
            .arg("--nats")
            .arg(nats)
            .args(args)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "chatctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
    chat_runtime::telemetry::init_for_tests();
    let nats = NatsServer::start().await;
    let env = chat_runtime::Env::from_pairs([
        ("NATS_URL", nats.url.as_str()),
        ("CHAT_API_ADDR", "127.0.0.1:0"),
        ("ADMIN_LISTEN", "127.0.0.1:0"),
        ("CHAT_REQUEST_TIMEOUT", "300ms"),
    ]);
    let stop = tokio_util::sync::CancellationToken::new();
    let app = chat_api::App::build(chat_api::ApiConfig::from_env(&env).unwrap(), &stop)
        .await
        .unwrap();
    let addr = app.local_addr();
    let task = tokio::spawn(app.run(stop.clone()));

    let key = chatctl(
        &nats.url,
        &[
            "api-key",
            "create",
            "--name",
            "ops",
            "--scope",
            "rooms:read",
        ],
    )
    .await;
    let key = key.trim().to_owned();
    let (id, _) = chat_bus::apikey::parse_key(&key).expect("chatctl printed a key");
    let id = id.to_owned();
    let k = Some(key.as_str());
    eventually(
        "the new key accepted",
        Duration::from_secs(5),
        || async move {
            let a = http(addr, "GET", "/api/v1/rooms/r", k, None).await;
            (a.status == 503).then_some(())
        },
    )
    .await;
    expect(
        &http(addr, "GET", "/api/v1/presence?users=a", k, None).await,
        403,
        "forbidden",
    );
    chatctl(&nats.url, &["api-key", "revoke", &id]).await;
    eventually(
        "the revoked key refused",
        Duration::from_secs(5),
        || async move {
            let a = http(addr, "GET", "/api/v1/rooms/r", k, None).await;
            (a.status == 401).then_some(())
        },
    )
    .await;
    stop.cancel();
    let _ = task.await;
}
