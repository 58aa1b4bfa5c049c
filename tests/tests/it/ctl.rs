//! `chatctl` (issue 16's operator CLI) as a process against a real nats-server and, where it
//! needs them, the real services: consumer lags that move, dead letters produced for real and
//! replayed once, API keys through their KV bucket, disconnect, room info, and its refusals.

use std::time::Duration;

use async_nats::jetstream;
use chat_bus::apikey::{self, ApiKeyRecord, Scope};
use chat_bus::subjects;
use chat_testkit::NatsServer;
use chat_tests::{Stack, eventually, procs::bin_dir};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::process::Command;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `chatctl --nats URL ARGS` with none of the `NATS_*` variables of this process.
async fn ctl(nats: &str, args: &[&str]) -> Out {
    let bin = bin_dir().join("chatctl");
    assert!(
        bin.exists(),
        "{} is missing: build with `cargo build --workspace --bins`",
        bin.display()
    );
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars() {
        if k.starts_with("NATS_") || k.starts_with("CHAT_") {
            cmd.env_remove(k);
        }
    }
    cmd.arg("--nats").arg(nats).args(args).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("chatctl finished in time")
        .expect("chatctl ran");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).expect("utf-8"),
        stderr: String::from_utf8(out.stderr).expect("utf-8"),
    }
}

/// `chatctl ARGS --json`, which must succeed, parsed.
async fn ctl_json(nats: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = ctl(nats, &all).await;
    assert_eq!(out.code, 0, "chatctl {args:?} failed: {}", out.stderr);
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("chatctl {args:?}: not JSON ({e}): {}", out.stdout))
}

async fn publish_raw(js: &jetstream::Context, room: &str, payload: Vec<u8>) -> u64 {
    js.publish(format!("chat.room.{room}.msg"), payload.into())
        .await
        .expect("publish")
        .await
        .expect("stored")
        .sequence
}

fn event(room: &str, body: &str, client_id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "v": 1, "kind": "message", "room": room, "from": "bot",
        "body": body, "client_id": client_id, "ts": chat_bus::now_ms()
    }))
    .unwrap()
}

async fn chat_last_seq(js: &jetstream::Context) -> u64 {
    let mut s = js.get_stream(subjects::STREAM).await.unwrap();
    s.info().await.unwrap().state.last_sequence
}

fn consumer<'a>(lags: &'a Value, name: &str) -> &'a Value {
    lags.as_array()
        .expect("an array")
        .iter()
        .find(|c| c["consumer"] == name)
        .unwrap_or_else(|| panic!("no consumer {name} in {lags}"))
}

/// Runs `chatctl ARGS --json` until `done` holds (or fails after 30 s).
async fn ctl_until(nats: &str, args: &[&str], what: &str, done: impl Fn(&Value) -> bool) -> Value {
    eventually(what, Duration::from_secs(30), async || {
        let v = ctl_json(nats, args).await;
        if done(&v) { Ok(v) } else { Err(v) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_lag_grows_while_a_consumer_is_stopped_and_drains_after() {
    let mut stack = Stack::start().await;
    let url = stack.nats.url.clone();
    let js = jetstream::new(stack.nats.client().await);
    publish_raw(&js, "lag", event("lag", "first", "lag-0")).await;
    let lags = ctl_until(&url, &["consumers"], "history caught up", |v| {
        consumer(v, subjects::HISTORY_CONSUMER)["lag"] == 0
    })
    .await;
    let h = consumer(&lags, subjects::HISTORY_CONSUMER);
    assert_eq!(h["stream"], subjects::STREAM);
    assert_eq!(h["stream_last_seq"], 1);
    assert_eq!(h["last_delivered_seq"], 1);
    assert!(
        lags.as_array()
            .unwrap()
            .iter()
            .any(|c| c["consumer"] == subjects::NOTIFY_CONSUMER)
    );
    assert!(
        lags.as_array()
            .unwrap()
            .iter()
            .any(|c| c["consumer"] == subjects::PRESENCE_CONSUMER
                && c["stream"] == subjects::PRESENCE_EVENTS_STREAM)
    );

    // The archive writer stops; events keep arriving.
    stack.histories.remove(0).shutdown().await;
    for i in 1..=5 {
        publish_raw(
            &js,
            "lag",
            event("lag", "while stopped", &format!("lag-{i}")),
        )
        .await;
    }
    let lags = ctl_json(&url, &["consumers"]).await;
    let h = consumer(&lags, subjects::HISTORY_CONSUMER);
    assert_eq!(h["pending"], 5, "{h}");
    assert_eq!(h["lag"], 5, "{h}");
    assert_eq!(h["stream_last_seq"], 6);
    assert_eq!(h["last_delivered_seq"], 1);
    assert_eq!(h["ack_floor_seq"], 1);
    assert!(h["oldest_unacked_s"].as_f64().is_some(), "{h}");
    // The human table says the same.
    let table = ctl(&url, &["consumers"]).await;
    assert_eq!(table.code, 0, "{}", table.stderr);
    let row = table
        .stdout
        .lines()
        .find(|l| l.contains(subjects::HISTORY_CONSUMER))
        .expect("a row for the archive writer");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cells[..4],
        [subjects::STREAM, subjects::HISTORY_CONSUMER, "5", "5"]
    );
    assert!(row.contains("1/6"), "{row}");

    // It comes back and catches up.
    stack.add_history().await;
    let lags = ctl_until(&url, &["consumers"], "history drained", |v| {
        consumer(v, subjects::HISTORY_CONSUMER)["lag"] == 0
    })
    .await;
    assert_eq!(
        consumer(&lags, subjects::HISTORY_CONSUMER)["last_delivered_seq"],
        6
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_shown_and_replayed_once() {
    // The headers chatctl reads (reason, original seq and subject) are those chat-history
    // writes: the list below finds all three.
    let mut stack = Stack::start().await;
    let url = stack.nats.url.clone();
    let client = stack.nats.client().await;
    let js = jetstream::new(client);
    assert_eq!(
        ctl(&url, &["dead-letters", "list"]).await.stdout,
        "no dead letters\n"
    );

    // Two events from an integration that no consumer can take.
    let bad1 =
        br#"{"v":1,"kind":"shout","room":"dl","from":"bot","body":"b","client_id":"bad1","ts":1}"#;
    let seq1 = publish_raw(&js, "dl", bad1.to_vec()).await;
    let seq2 = publish_raw(&js, "dl", event("elsewhere", "wrong room", "bad2")).await;
    let list = ctl_until(&url, &["dead-letters", "list"], "two dead letters", |v| {
        v.as_array().is_some_and(|a| a.len() == 2)
    })
    .await;
    let letters = list.as_array().unwrap();
    let l1 = letters
        .iter()
        .find(|l| l["original_seq"] == seq1)
        .expect("first");
    let l2 = letters
        .iter()
        .find(|l| l["original_seq"] == seq2)
        .expect("second");
    assert_eq!(l1["subject"], "chat.room.dl.msg");
    assert_eq!(l1["consumer"], subjects::HISTORY_CONSUMER);
    assert_eq!(l1["reason"], "unknown event kind");
    assert_eq!(l2["reason"], "room differs from the subject's room");
    let (d1, d2) = (l1["seq"].as_u64().unwrap(), l2["seq"].as_u64().unwrap());
    let table = ctl(&url, &["dead-letters", "list"]).await;
    assert!(
        table.stdout.contains("unknown event kind"),
        "{}",
        table.stdout
    );

    let shown = ctl_json(&url, &["dead-letters", "show", &d1.to_string()]).await;
    assert_eq!(shown["payload"]["kind"], "shout");
    assert_eq!(shown["headers"]["Chat-Dlq-Reason"], "unknown event kind");
    let human = ctl(&url, &["dead-letters", "show", &d1.to_string()]).await;
    assert!(human.stdout.contains("\"shout\""), "{}", human.stdout);

    // Replays are checked with the archive writer stopped, so that nothing but chatctl moves
    // the streams; it validates them again when it comes back (below).
    stack.histories.remove(0).shutdown().await;
    let before = chat_last_seq(&js).await;
    let r = ctl_json(&url, &["dead-letters", "replay", &d1.to_string()]).await;
    let replayed = &r["replayed"][0];
    assert_eq!(replayed["seq"], d1);
    assert_eq!(replayed["subject"], "chat.room.dl.msg");
    assert_eq!(replayed["duplicate"], false);
    let new1 = replayed["new_seq"].as_u64().unwrap();
    assert_eq!(new1, before + 1);
    let stream = js.get_stream(subjects::STREAM).await.unwrap();
    let stored = stream.get_raw_message(new1).await.unwrap();
    assert_eq!(stored.subject.as_str(), "chat.room.dl.msg");
    assert_eq!(
        &stored.payload[..],
        &bad1[..],
        "the original payload, unchanged"
    );
    assert_eq!(
        stored.headers.get("Nats-Msg-Id").unwrap().as_str(),
        format!("chatctl-replay-{seq1}-chat.room.dl.msg")
    );
    assert!(stored.headers.get("Chat-Dlq-Reason").is_none());
    // The dead letter is gone: a second replay of it is refused and stores nothing.
    let again = ctl(&url, &["dead-letters", "replay", &d1.to_string()]).await;
    assert_eq!(again.code, 1);
    assert!(
        again.stderr.contains(&format!("no dead letter {d1}")),
        "{}",
        again.stderr
    );
    assert_eq!(chat_last_seq(&js).await, new1);

    // The same entry dead-lettered twice (as two consumers would): one replay stores it once.
    let dlq = js.get_stream(subjects::DEAD_LETTER_STREAM).await.unwrap();
    let copy = dlq.get_raw_message(d2).await.unwrap();
    let mut headers = copy.headers.clone();
    headers.insert("Nats-Msg-Id", "a-second-consumer");
    js.publish_with_headers(
        subjects::dead_letter("other"),
        headers,
        copy.payload.clone(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let r = ctl_json(&url, &["dead-letters", "replay", "--all"]).await;
    let done = r["replayed"].as_array().unwrap();
    assert_eq!(done.len(), 2, "{r}");
    assert_eq!(done[0]["seq"], d2);
    assert_eq!(done[0]["duplicate"], false);
    assert_eq!(done[1]["duplicate"], true, "{r}");
    assert_eq!(done[0]["new_seq"], done[1]["new_seq"]);
    let new2 = done[0]["new_seq"].as_u64().unwrap();
    assert_eq!(new2, new1 + 1);
    assert_eq!(chat_last_seq(&js).await, new2);
    // A second --all finds nothing to do.
    let r = ctl_json(&url, &["dead-letters", "replay", "--all"]).await;
    assert_eq!(r["replayed"], json!([]), "{r}");
    assert_eq!(chat_last_seq(&js).await, new2);
    assert_eq!(ctl_json(&url, &["dead-letters", "list"]).await, json!([]));

    // Replayed events are validated again like any event: still invalid, so dead-lettered again
    // under their new seqs.
    stack.add_history().await;
    let list = ctl_until(&url, &["dead-letters", "list"], "re-validated", |v| {
        v.as_array().is_some_and(|a| a.len() == 2)
    })
    .await;
    let mut orig: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["original_seq"].as_u64().unwrap())
        .collect();
    orig.sort();
    assert_eq!(orig, [new1, new2]);

    // Refusals.
    let bad = ctl(&url, &["dead-letters", "show", "x"]).await;
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    let bad = ctl(&url, &["dead-letters", "replay", "1", "--all"]).await;
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    let bad = ctl(&url, &["dead-letters", "show", "999"]).await;
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("no dead letter 999"), "{}", bad.stderr);
}

#[tokio::test]
async fn api_keys_round_trip_through_the_bucket() {
    let nats = NatsServer::start().await;
    let url = nats.url.clone();
    let js = jetstream::new(nats.client().await);
    assert_eq!(
        ctl(&url, &["api-key", "list"]).await.stdout,
        "no API keys\n"
    );

    let created = ctl(
        &url,
        &[
            "api-key",
            "create",
            "--name",
            "billing",
            "--scope",
            "messages:write",
            "--scope",
            "rooms:read,history:read",
            "--bot",
            "bot-billing",
        ],
    )
    .await;
    assert_eq!(created.code, 0, "{}", created.stderr);
    let key = created.stdout.trim();
    let (id, secret) = apikey::parse_key(key).expect("a well-formed key");
    assert!(created.stderr.contains("only time"), "{}", created.stderr);

    let kv = js
        .get_key_value(subjects::API_KEYS_BUCKET)
        .await
        .expect("bucket created");
    let status = kv.status().await.unwrap();
    assert_eq!(status.history(), 5);
    let entry = kv
        .get(id)
        .await
        .unwrap()
        .expect("a record under the key's id");
    let record: ApiKeyRecord = serde_json::from_slice(&entry).unwrap();
    assert!(
        record.matches(secret),
        "the stored hash is the printed key's"
    );
    assert_eq!(record.id, id);
    assert_eq!(record.name, "billing");
    assert_eq!(
        record.scopes,
        [Scope::MessagesWrite, Scope::RoomsRead, Scope::HistoryRead]
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    assert_eq!(
        record.bots.iter().map(|b| b.as_str()).collect::<Vec<_>>(),
        ["bot-billing"]
    );

    let second = ctl_json(
        &url,
        &[
            "api-key",
            "create",
            "--name",
            "reader",
            "--scope",
            "rooms:read",
        ],
    )
    .await;
    let id2 = second["id"].as_str().unwrap().to_owned();
    assert!(
        second["key"]
            .as_str()
            .unwrap()
            .starts_with(&format!("chk_{id2}_"))
    );

    let listed = ctl_json(&url, &["api-key", "list"]).await;
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["id"], id);
    assert_eq!(listed[0]["name"], "billing");
    assert_eq!(listed[0]["bots"], json!(["bot-billing"]));
    assert!(listed[0].get("hash").is_none() && listed[0].get("key").is_none());
    let table = ctl(&url, &["api-key", "list"]).await;
    assert!(
        table.stdout.contains(id) && table.stdout.contains(&id2),
        "{}",
        table.stdout
    );
    assert!(!table.stdout.contains(&record.hash) && !table.stdout.contains(secret));

    let revoked = ctl(&url, &["api-key", "revoke", id]).await;
    assert_eq!(revoked.code, 0, "{}", revoked.stderr);
    assert!(kv.get(id).await.unwrap().is_none(), "the record is gone");
    let listed = ctl_json(&url, &["api-key", "list"]).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], id2.as_str());
    let again = ctl(&url, &["api-key", "revoke", id]).await;
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("no API key"), "{}", again.stderr);

    // Refusals cost nothing: no entry is written.
    for args in [
        &["api-key", "create", "--name", "x", "--scope", "admin"][..],
        &["api-key", "create", "--name", "x"][..],
        &["api-key", "create", "--scope", "rooms:read"][..],
        &[
            "api-key",
            "create",
            "--name",
            "x",
            "--scope",
            "messages:write",
        ][..],
        &[
            "api-key",
            "create",
            "--name",
            "x",
            "--scope",
            "messages:write",
            "--bot",
            "no spaces",
        ][..],
        &["api-key", "revoke", "NOT-AN-ID"][..],
    ] {
        let out = ctl(&url, args).await;
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    assert_eq!(
        ctl_json(&url, &["api-key", "list"])
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn disconnect_publishes_the_disconnect_of_the_user() {
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let bob = chat_proto::UserId::new("bob").unwrap();
    let mut sub = client
        .subscribe(subjects::user_disconnect(&bob))
        .await
        .unwrap();
    // A round trip (a flush only writes): the server has the subscription when it answers.
    jetstream::new(client.clone())
        .query_account()
        .await
        .unwrap();
    let out = ctl(
        &nats.url,
        &["disconnect", "bob", "--reason", "banned for spam"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("a disconnect within 5 s")
        .unwrap();
    let d: chat_bus::api::Disconnect = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(
        d,
        chat_bus::api::Disconnect {
            user: bob,
            reason: "banned for spam".into()
        }
    );

    for args in [
        &["disconnect"][..],
        &["disconnect", "not a user"][..],
        &["disconnect", "bob", "--reason", &"x".repeat(121)][..],
    ] {
        let out = ctl(&nats.url, args).await;
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(200), sub.next())
            .await
            .is_err(),
        "a refused command published nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_info_shows_kind_members_and_last_seq() {
    let stack = Stack::start().await;
    let url = stack.nats.url.clone();
    let (mut carol, _) = stack.login(0, "carol").await;
    let r = carol
        .request(
            json!({"type": "create", "room": "ctl-secret", "private": true, "members": ["bob"]}),
            "c",
        )
        .await;
    assert_eq!(r["type"], "joined", "{r}");
    carol.post_as("ctl-secret", "one", "m1").await;
    let ack = carol.post_as("ctl-secret", "two", "m2").await;

    let info = ctl_json(&url, &["room", "ctl-secret"]).await;
    assert_eq!(info["room"], "ctl-secret");
    assert_eq!(info["kind"], "private");
    let mut members: Vec<&str> = info["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    members.sort();
    assert_eq!(members, ["bob", "carol"]);
    assert_eq!(info["last_seq"], ack["seq"]);
    let human = ctl(&url, &["room", "ctl-secret"]).await;
    assert!(
        human.stdout.contains("private") && human.stdout.contains("bob"),
        "{}",
        human.stdout
    );

    let missing = ctl(&url, &["room", "no-such-room"]).await;
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("no room no-such-room"),
        "{}",
        missing.stderr
    );
}

#[tokio::test]
async fn errors_are_clear_and_exit_non_zero() {
    let help = ctl("nats://127.0.0.1:1", &["--help"]).await;
    assert_eq!(help.code, 0);
    assert!(help.stdout.contains("dead-letters replay"));
    // Unreachable NATS: a clear error naming the URL, fast.
    let started = std::time::Instant::now();
    let down = ctl("nats://127.0.0.1:1", &["consumers"]).await;
    assert_eq!(down.code, 1);
    assert!(
        down.stderr
            .contains("cannot connect to NATS at nats://127.0.0.1:1"),
        "{}",
        down.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    for args in [
        &[][..],
        &["frobnicate"][..],
        &["consumers", "--jsn"][..],
        &["room"][..],
    ] {
        let out = ctl("nats://127.0.0.1:1", args).await;
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("usage:"), "{args:?}");
        assert!(!out.stderr.contains("panicked"));
    }
}

/// The operator user documented in docs/deploy.md ("Permissions"), as there.
fn documented_operator_user() -> String {
    let doc = std::fs::read_to_string(chat_testkit::workspace_root().join("docs/deploy.md"))
        .expect("read docs/deploy.md");
    let from = doc
        .find("**Permissions.**")
        .expect("a Permissions paragraph");
    let block = &doc[from..];
    let start = block.find("```json\n").expect("a json block") + "```json\n".len();
    let end = start + block[start..].find("```").expect("its end");
    block[start..end]
        .trim()
        .replace("$NATS_OPERATOR_PASSWORD", "\"pw-operator\"")
}

/// chatctl works with exactly the permissions docs/deploy.md gives its operator user: every
/// command against a server where that is all it may do (the streams, a consumer and a dead
/// letter made by an unrestricted `setup` user, which also answers `chat.internal.rooms`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_operator_permissions_are_enough() {
    let nats = NatsServer::start_with(chat_testkit::NatsOptions {
        extra_config: format!(
            "authorization {{ users: [ {}, {{ user: setup, password: \"pw-setup\" }}, \
             {{ user: narrow, password: \"pw-narrow\", permissions: {{ \
             publish: {{ allow: [\"$JS.API.>\"] }}, subscribe: {{ allow: [\"_INBOX.>\"] }} }} }} ] }}\n",
            documented_operator_user()
        ),
        ..Default::default()
    })
    .await;
    let setup = async_nats::ConnectOptions::new()
        .user_and_password("setup".into(), "pw-setup".into())
        .connect(nats.url.as_str())
        .await
        .expect("setup user connects");
    let js = jetstream::new(setup.clone());
    chat_bus::stream::ensure_chat_stream(&js, &chat_bus::stream::StreamSettings::default())
        .await
        .unwrap();
    let dlq = chat_bus::stream::ensure_dead_letter_stream(&js, 1)
        .await
        .unwrap();
    js.get_stream(subjects::STREAM)
        .await
        .unwrap()
        .get_or_create_consumer(
            subjects::HISTORY_CONSUMER,
            jetstream::consumer::pull::Config {
                durable_name: Some(subjects::HISTORY_CONSUMER.into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let orig = publish_raw(&js, "perm", b"not json".to_vec()).await;
    let mut h = async_nats::HeaderMap::new();
    h.insert("Chat-Dlq-Reason", "undecodable entry");
    h.insert("Chat-Dlq-Stream-Seq", orig.to_string().as_str());
    h.insert("Chat-Dlq-Subject", "chat.room.perm.msg");
    js.publish_with_headers(
        subjects::dead_letter(subjects::HISTORY_CONSUMER),
        h,
        "not json".into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let mut rooms = setup.subscribe(subjects::ROOMS).await.unwrap();
    let mut disconnects = setup.subscribe("chat.user.*.disconnect").await.unwrap();
    js.query_account().await.unwrap();
    let responder = setup.clone();
    tokio::spawn(async move {
        while let Some(m) = rooms.next().await {
            let info = chat_bus::api::RoomInfo {
                room: chat_proto::RoomId::new("perm").unwrap(),
                kind: chat_proto::RoomKind::Public,
                members: vec![],
            };
            if let Some(reply) = m.reply {
                let body = serde_json::to_vec(&info).unwrap();
                responder.publish(reply, body.into()).await.unwrap();
            }
        }
    });

    let url = nats.url.clone();
    let as_operator = |args: &[&str]| {
        let mut all = vec!["--nats-user", "operator", "--nats-password", "pw-operator"];
        all.extend_from_slice(args);
        all.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| {
        let url = url.clone();
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            ctl_json(&url, &refs).await
        }
    };
    let lags = run(as_operator(&["consumers"])).await;
    assert_eq!(consumer(&lags, subjects::HISTORY_CONSUMER)["pending"], 1);
    let letters = run(as_operator(&["dead-letters", "list"])).await;
    assert_eq!(letters[0]["original_seq"], orig);
    let d = letters[0]["seq"].as_u64().unwrap().to_string();
    let shown = run(as_operator(&["dead-letters", "show", &d])).await;
    assert_eq!(shown["payload_text"], "not json");
    let r = run(as_operator(&["dead-letters", "replay", "--all"])).await;
    assert_eq!(r["replayed"][0]["new_seq"], orig + 1, "{r}");
    assert_eq!(dlq.clone().info().await.unwrap().state.messages, 0);
    let room = run(as_operator(&["room", "perm"])).await;
    assert_eq!(
        (&room["kind"], &room["last_seq"]),
        (&json!("public"), &json!(orig + 1))
    );
    let key = run(as_operator(&[
        "api-key",
        "create",
        "--name",
        "p",
        "--scope",
        "rooms:read",
    ]))
    .await;
    let id = key["id"].as_str().unwrap().to_owned();
    let listed = run(as_operator(&["api-key", "list"])).await;
    assert_eq!(listed[0]["id"], id.as_str());
    run(as_operator(&["api-key", "revoke", &id])).await;
    run(as_operator(&["disconnect", "mallory", "--reason", "ban"])).await;
    let m = tokio::time::timeout(Duration::from_secs(5), disconnects.next())
        .await
        .expect("the disconnect arrives")
        .unwrap();
    assert_eq!(m.subject.as_str(), "chat.user.mallory.disconnect");

    // A user without the permission is told so, with what NATS refused.
    for args in [
        &["disconnect", "mallory"][..],
        &["api-key", "create", "--name", "n", "--scope", "rooms:read"][..],
    ] {
        let mut all = vec![
            "--nats-user",
            "narrow",
            "--nats-password",
            "pw-narrow",
            "--timeout",
            "1",
        ];
        all.extend_from_slice(args);
        let out = ctl(&nats.url, &all).await;
        assert_eq!(out.code, 1, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("NATS refused") && out.stderr.contains("Permissions Violation"),
            "{args:?}: {}",
            out.stderr
        );
    }

    // Without credentials nothing works, and it says why.
    let refused = ctl(&nats.url, &["consumers"]).await;
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("cannot connect to NATS"),
        "{}",
        refused.stderr
    );
}
