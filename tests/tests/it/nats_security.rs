//! Issue 6, NATS security: the users of deploy/nats/auth.conf, tested against a real
//! nats-server running that very file. Each user may do what its service (or an integration)
//! needs, a forbidden subject is refused, and the four services run end to end with only their
//! own users' permissions.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::{ConnectOptions, Event, ServerError};
use chat_testkit::{NatsOptions, NatsServer, WsClient, fresh_database, token, workspace_root};
use chat_tests::procs::Proc;
use chat_tests::{SECRET, eventually, wait_archived};
use futures::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;

const USERS: [&str; 6] = [
    "edge",
    "history",
    "presence",
    "notify",
    "api",
    "integrations",
];

fn password(user: &str) -> String {
    format!("pw-{user}-secret")
}

/// deploy/nats/auth.conf with the `$NATS_<USER>_PASSWORD` variables replaced by test passwords,
/// and a log file, so that a test can look for permission violations of the services.
fn auth_config(log: &std::path::Path) -> String {
    let path = workspace_root().join("deploy/nats/auth.conf");
    let mut text = std::fs::read_to_string(&path).expect("read deploy/nats/auth.conf");
    for user in USERS {
        let var = format!("$NATS_{}_PASSWORD", user.to_ascii_uppercase());
        assert!(text.contains(&var), "auth.conf has no {var}");
        text = text.replace(&var, &format!("{:?}", password(user)));
    }
    format!("{text}\nlog_file: {:?}\n", log)
}

async fn server() -> (NatsServer, tempfile::TempDir) {
    let logs = tempfile::tempdir().expect("temp dir");
    let nats = NatsServer::start_with(NatsOptions {
        extra_config: auth_config(&logs.path().join("nats.log")),
        ..NatsOptions::default()
    })
    .await;
    (nats, logs)
}

/// A connection as one user that records the server's permission errors.
struct Probe {
    client: async_nats::Client,
    violations: mpsc::UnboundedReceiver<String>,
}

impl Probe {
    async fn connect(nats: &NatsServer, user: &str) -> Probe {
        Self::connect_with(nats, user, ConnectOptions::new()).await
    }

    async fn connect_with(nats: &NatsServer, user: &str, opts: ConnectOptions) -> Probe {
        let (tx, violations) = mpsc::unbounded_channel();
        let client = opts
            .user_and_password(user.into(), password(user))
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    if let Event::ServerError(ServerError::Other(e)) = event
                        && e.contains("Permissions Violation")
                    {
                        let _ = tx.send(e);
                    }
                }
            })
            .connect(nats.url.as_str())
            .await
            .unwrap_or_else(|e| panic!("connect as {user}: {e}"));
        Probe { client, violations }
    }

    /// The violations reported after everything sent so far was processed by the server.
    async fn settle(&mut self) -> Vec<String> {
        // A marker every user is refused (nothing is allowed that is not listed): the server
        // answers in order and the callback forwards in order, so once the marker's violation
        // is in, so is that of everything sent before it.
        static MARKER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = MARKER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let marker = format!("test.settle.marker{n}");
        self.publish(&marker).await;
        self.client.flush().await.expect("flush");
        let mut out = Vec::new();
        loop {
            let v = tokio::time::timeout(Duration::from_secs(10), self.violations.recv())
                .await
                .expect("the marker's violation arrives")
                .expect("violations channel");
            if v.contains(&marker) {
                return out;
            }
            out.push(v);
        }
    }

    async fn publish(&self, subject: &str) {
        self.client
            .publish(subject.to_owned(), "{}".into())
            .await
            .expect("publish");
    }

    async fn subscribe(&self, subject: &str) -> async_nats::Subscriber {
        self.client
            .subscribe(subject.to_owned())
            .await
            .expect("subscribe")
    }

    async fn allowed_publish(&mut self, subject: &str) {
        self.publish(subject).await;
        let v = self.settle().await;
        assert!(v.is_empty(), "publish to {subject} was refused: {v:?}");
    }

    async fn refused_publish(&mut self, subject: &str) {
        self.publish(subject).await;
        let v = self.settle().await;
        assert!(
            v.iter()
                .any(|e| e.contains("Publish") && e.contains(subject)),
            "publish to {subject} was not refused: {v:?}"
        );
    }

    async fn allowed_subscribe(&mut self, subject: &str) -> async_nats::Subscriber {
        let sub = self.subscribe(subject).await;
        let v = self.settle().await;
        assert!(v.is_empty(), "subscription to {subject} was refused: {v:?}");
        sub
    }

    async fn refused_subscribe(&mut self, subject: &str) {
        let _sub = self.subscribe(subject).await;
        let v = self.settle().await;
        assert!(
            v.iter()
                .any(|e| e.contains("Subscription") && e.contains(subject)),
            "subscription to {subject} was not refused: {v:?}"
        );
    }
}

#[tokio::test]
async fn unknown_users_and_wrong_passwords_are_refused() {
    let (nats, _logs) = server().await;
    let anonymous = ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(nats.url.as_str())
        .await;
    assert!(anonymous.is_err(), "anonymous access is refused");
    let wrong = ConnectOptions::new()
        .user_and_password("edge".into(), "not-the-password".into())
        .connection_timeout(Duration::from_secs(2))
        .connect(nats.url.as_str())
        .await;
    assert!(wrong.is_err(), "a wrong password is refused");
}

#[tokio::test]
async fn each_service_user_may_use_its_subjects_and_nothing_else() {
    let (nats, _logs) = server().await;

    let mut edge = Probe::connect(&nats, "edge").await;
    edge.allowed_publish("chat.room.general.typing").await;
    edge.allowed_publish("chat.internal.presence.heartbeat")
        .await;
    edge.allowed_subscribe("chat.fanout.general").await;
    edge.allowed_subscribe("chat.user.alice.>").await;
    edge.allowed_publish("chat.api.search").await;
    // The edge faces the internet: no notifications, no membership changes, no consumers.
    edge.refused_publish("chat.user.alice.notify").await;
    edge.refused_publish("chat.user.alice.membership").await;
    edge.refused_publish("$JS.API.CONSUMER.CREATE.CHAT").await;
    edge.refused_publish("$JS.API.STREAM.DELETE.CHAT").await;
    edge.refused_subscribe("chat.internal.rooms").await;
    edge.refused_subscribe("chat.internal.presence.up").await;

    let mut history = Probe::connect(&nats, "history").await;
    history.allowed_subscribe("chat.api.history").await;
    history.allowed_subscribe("chat.api.search").await;
    history.allowed_subscribe("chat.internal.rooms").await;
    history.allowed_publish("chat.user.alice.membership").await;
    // It relays integration accounts' events (crate chat_history::intake) and answers them
    // through their service import.
    history.allowed_subscribe("chat.integration.*.*.msg").await;
    history.allowed_publish("chat.room.general.msg").await;
    history.allowed_publish("_R_.abc.def").await;
    history.refused_publish("chat.room.general.typing").await;
    history.refused_publish("chat.user.alice.notify").await;
    history.refused_subscribe("chat.fanout.general").await;
    history.refused_subscribe("chat.internal.presence.up").await;
    // Issue 15 item 7: only its own streams' JetStream API, nobody's KV keys, replies to inboxes.
    history.allowed_publish("_INBOX.abc").await;
    history.allowed_publish("_INBOX_integrations.abc").await;
    history.refused_publish("$KV.chat_presence.zed").await;
    history.refused_publish("$JS.API.STREAM.DELETE.CHAT").await;
    history.refused_publish("$JS.API.STREAM.PURGE.CHAT").await;
    history
        .refused_publish("$JS.API.STREAM.CREATE.CHAT_PRESENCE")
        .await;
    history
        .refused_publish("$JS.API.CONSUMER.CREATE.CHAT_PRESENCE.x")
        .await;

    let mut presence = Probe::connect(&nats, "presence").await;
    presence.allowed_publish("presence.user.alice").await;
    presence.allowed_publish("chat.room.general.presence").await;
    presence
        .allowed_subscribe("chat.internal.presence.up")
        .await;
    presence.allowed_subscribe("chat.api.presence").await;
    presence.refused_publish("chat.room.general.msg").await;
    presence.refused_publish("chat.user.alice.notify").await;
    presence.refused_subscribe("chat.user.alice.notify").await;
    presence.refused_subscribe("chat.api.history").await;
    presence.allowed_publish("$KV.chat_presence.zed").await;
    presence
        .allowed_publish("$KV.chat_presence_alive.edge1")
        .await;
    presence.allowed_publish("_INBOX_integrations.abc").await;
    presence.refused_publish("$KV.other_bucket.zed").await;
    presence
        .refused_publish("$JS.API.STREAM.DELETE.KV_chat_presence")
        .await;
    presence.refused_publish("$JS.API.STREAM.DELETE.CHAT").await;
    presence.refused_publish("$JS.API.STREAM.INFO.CHAT").await;
    presence
        .refused_publish("$JS.API.CONSUMER.CREATE.CHAT.x")
        .await;
    presence
        .refused_publish("$JS.ACK.CHAT.history-archive.1.1.1.1.1")
        .await;
    presence.refused_subscribe("chat.api.search").await;

    let mut notify = Probe::connect(&nats, "notify").await;
    notify.allowed_publish("chat.user.alice.notify").await;
    notify.allowed_publish("chat.user.alice.unread").await;
    notify.allowed_subscribe("chat.internal.notify.state").await;
    notify.refused_publish("chat.room.general.msg").await;
    notify.refused_publish("chat.room.general.typing").await;
    notify.refused_subscribe("chat.internal.presence.up").await;
    notify.refused_subscribe("chat.fanout.general").await;
    notify.refused_publish("$KV.chat_presence.zed").await;
    notify.refused_publish("$JS.API.STREAM.DELETE.CHAT").await;
    notify
        .refused_publish("$JS.API.CONSUMER.DELETE.CHAT.history-archive")
        .await;
    notify
        .refused_publish("$JS.API.STREAM.CREATE.KV_chat_presence")
        .await;
    notify.refused_publish("_INBOX_integrations.abc").await;
}

/// Issue 15 item 7: the services answer requests without `allow_responses`, so even a service
/// that forgot to check a reply subject (protocol.md#nats) could not publish into a bucket or a
/// stream through it: a reply goes to an inbox or nowhere.
#[tokio::test]
async fn a_service_user_cannot_answer_on_a_foreign_reply_subject() {
    let (nats, _logs) = server().await;
    let mut history = Probe::connect(&nats, "history").await;
    let mut requests = history.allowed_subscribe("chat.api.history").await;
    let edge = Probe::connect(&nats, "edge").await;
    for reply in ["$KV.chat_presence.zed", "_INBOX.fine"] {
        edge.client
            .publish_with_reply("chat.api.history", reply, "{}".into())
            .await
            .unwrap();
        let req = tokio::time::timeout(Duration::from_secs(5), requests.next())
            .await
            .expect("the request arrives")
            .unwrap();
        let reply = req.reply.expect("it names a reply subject");
        if reply.starts_with("_INBOX.") {
            history.allowed_publish(&reply).await;
        } else {
            history.refused_publish(&reply).await;
        }
    }
}

/// Issue 15 item 8: the `integrations` credential of auth.conf is an account of its own,
/// scoped (docs/deploy.md, "Integrations and scopes"): it posts through JetStream to its rooms
/// (`general`, `alerts`) — as one of its bot identities only: chat-history relays what it
/// publishes and refuses any other `from` — and reads their live feed, typing and presence, asks
/// chat.api.presence; it cannot post to or read any other room — a private room or a DM
/// (`dm-…`) —, read notifications or unread counts (previews of DMs), ask chat.api.history or
/// search (the room is in the payload, unscoped), use the JetStream API, or see the services'
/// replies. Before, it could post into and read every room, as anyone, and every user's previews.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrations_are_scoped_to_their_rooms_and_bots_and_read_no_dm_or_preview() {
    let (nats, _logs) = server().await;
    let db = fresh_database().await;
    // The real chat-history relays the integration's events, with its own NATS user; the bot
    // identities of the credential `integrations` are `bot` and `alertbot`.
    let history_env: HashMap<String, String> = [
        ("NATS_URL", nats.url.as_str()),
        ("DATABASE_URL", db.as_str()),
        ("NATS_USER", "history"),
        ("NATS_PASSWORD", password("history").as_str()),
        ("CHAT_INTEGRATION_BOTS", "integrations=bot,alertbot"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let _history = Proc::start("chat-history", &history_env).await;

    // A chat-presence stand-in answers chat.api.presence.
    let presence = Probe::connect(&nats, "presence").await;
    let mut requests = presence
        .client
        .queue_subscribe("chat.api.presence", "chat-presence".into())
        .await
        .unwrap();
    let responder = presence.client.clone();
    tokio::spawn(async move {
        while let Some(m) = requests.next().await {
            if let Some(reply) = m.reply {
                let users = json!({"users": []});
                let _ = responder.publish(reply, users.to_string().into()).await;
            }
        }
    });
    presence.client.flush().await.unwrap();

    let mut bot = Probe::connect(&nats, "integrations").await;
    let mut feed = bot.allowed_subscribe("chat.fanout.general").await;
    bot.allowed_subscribe("chat.fanout.alerts").await;
    bot.allowed_subscribe("chat.room.general.typing").await;
    bot.allowed_subscribe("chat.room.general.presence").await;
    bot.allowed_subscribe("presence.user.>").await;

    // Request/reply through the service import.
    let reply = bot
        .client
        .request(
            "chat.api.presence",
            json!({"users": ["alice"]}).to_string().into(),
        )
        .await
        .expect("chat.api.presence answers an integration");
    let users: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert!(users["users"].is_array());

    // Posting through JetStream, as protocol.md#nats says, to a room of its scope and as one of its
    // bots: chat-history relays it and the ack is the CHAT stream's.
    let js = async_nats::jetstream::new(bot.client.clone());
    let post = |from: &str, id: &str| {
        let event = chat_bus::event::RoomEvent::message(
            chat_proto::RoomId::new("general").unwrap(),
            chat_proto::UserId::new(from).unwrap(),
            format!("hello from {from}"),
            id.into(),
            chat_bus::now_ms(),
        );
        let js = js.clone();
        async move {
            let ack = js
                .publish(
                    "chat.room.general.msg",
                    serde_json::to_vec(&event).unwrap().into(),
                )
                .await
                .expect("publish")
                .await;
            (event, ack)
        }
    };
    // chat-history may still be starting: no responder yet.
    let (event, ack) = eventually(
        "a bot's publish is acknowledged",
        Duration::from_secs(20),
        async || {
            let (e, ack) = post("bot", "b1").await;
            ack.map(|a| (e, a))
        },
    )
    .await;
    assert_eq!(ack.stream, "CHAT");
    assert!(ack.sequence > 0 && !ack.duplicate);
    let live = tokio::time::timeout(Duration::from_secs(5), feed.next())
        .await
        .expect("the republished event arrives")
        .unwrap();
    assert_eq!(
        chat_bus::event::RoomEvent::decode(&live.payload).unwrap(),
        event
    );
    // A retry is the stream's duplicate; another bot of the credential posts too.
    let (_, again) = post("bot", "b1").await;
    let again = again.expect("a retry is acknowledged");
    assert_eq!((again.sequence, again.duplicate), (ack.sequence, true));
    let (_, other) = post("alertbot", "a1").await;
    assert!(other.expect("alertbot is one of its bots").sequence > ack.sequence);
    // Any other `from` — a person of the room, another credential's bot — is refused, and
    // nothing is stored.
    for forged in ["alice", "irc-bridge"] {
        let (_, refused) = post(forged, "f1").await;
        let e = refused.expect_err("a from it does not own is refused");
        assert!(e.to_string().contains("not a bot identity"), "{e}");
    }
    let edge = Probe::connect(&nats, "edge").await;
    let mut chat = async_nats::jetstream::new(edge.client.clone())
        .get_stream("CHAT")
        .await
        .unwrap();
    assert_eq!(
        chat.info().await.unwrap().state.messages,
        2,
        "only the two bots' events"
    );
    assert!(bot.settle().await.is_empty());
    bot.allowed_publish("chat.room.alerts.msg").await;

    // Outside its scope: other rooms, private ones and DMs, to post or to read.
    let dm = chat_proto::RoomId::dm(
        &chat_proto::UserId::new("alice").unwrap(),
        &chat_proto::UserId::new("bob").unwrap(),
    )
    .unwrap();
    for room in ["secret1", dm.as_str()] {
        bot.refused_publish(&format!("chat.room.{room}.msg")).await;
        bot.refused_subscribe(&format!("chat.fanout.{room}")).await;
        bot.refused_subscribe(&format!("chat.room.{room}.typing"))
            .await;
    }
    bot.refused_subscribe("chat.fanout.>").await;
    bot.refused_subscribe("chat.fanout.*").await;
    bot.refused_publish("chat.room.*.msg").await;
    bot.refused_publish("chat.integration.integrations.secret1.msg")
        .await;
    // No notifications (DM previews), unread counts or membership of anyone.
    bot.refused_subscribe("chat.user.alice.notify").await;
    bot.refused_subscribe("chat.user.alice.unread").await;
    bot.refused_subscribe("chat.user.>").await;
    bot.refused_subscribe("chat.user.alice.membership").await;
    // No unscoped reads: history and search take the room or user in the payload.
    bot.refused_publish("chat.api.history").await;
    bot.refused_publish("chat.api.search").await;
    // Nothing internal: rooms, presence reports, the JetStream API (no reading the stream's
    // messages of other rooms) or the key-value buckets.
    bot.refused_subscribe("chat.internal.>").await;
    bot.refused_subscribe("chat.api.history").await;
    bot.refused_publish("chat.internal.rooms").await;
    bot.refused_publish("chat.internal.presence.up").await;
    bot.refused_publish("chat.user.alice.notify").await;
    bot.refused_publish("chat.room.general.typing").await;
    bot.refused_publish("$JS.API.STREAM.INFO.CHAT").await;
    bot.refused_publish("$JS.API.STREAM.MSG.GET.CHAT").await;
    bot.refused_publish(&format!("$JS.API.DIRECT.GET.CHAT.chat.room.{dm}.msg"))
        .await;
    bot.refused_publish("$JS.API.CONSUMER.CREATE.CHAT").await;
    bot.refused_publish("$JS.API.STREAM.PURGE.CHAT").await;

    // The services' replies live in another account: the integration's own `_INBOX.>` never
    // sees them (here: the edge asking chat-history).
    let mut inboxes = bot.allowed_subscribe("_INBOX.>").await;
    let answer = edge
        .client
        .request(
            "chat.internal.rooms",
            json!({"op":"user_rooms","user":"alice"}).to_string().into(),
        )
        .await
        .expect("chat-history answers the edge");
    assert!(!answer.payload.is_empty());
    bot.client.flush().await.unwrap();
    let leaked = tokio::time::timeout(Duration::from_millis(300), inboxes.next()).await;
    assert!(
        leaked.is_err(),
        "a service's reply reached the integration: {leaked:?}"
    );
    println!(
        "FIGURES integration scope: posted as its 2 bots and read in its 2 rooms; 2 forged from refused (0 stored); 2 other rooms (private, DM) refused to post and read, 0 notification/unread/history/JetStream API access"
    );
}

/// The four binaries, each with its own NATS user: edge ↔ history (messages, history, rooms,
/// recovery), chat-notify (a mention), chat-presence (a snapshot, its sweeper), and no
/// permission violation in the nats-server log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_run_end_to_end_with_their_own_nats_users() {
    let (nats, logs) = server().await;
    let db = fresh_database().await;
    let base: HashMap<String, String> = [
        ("NATS_URL", nats.url.as_str()),
        ("DATABASE_URL", db.as_str()),
        ("CHAT_JWT_SECRET", SECRET),
        ("CHAT_HEARTBEAT_MS", "500"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let env = |user: &str| {
        let mut env = base.clone();
        env.insert("NATS_USER".into(), user.into());
        env.insert("NATS_PASSWORD".into(), password(user));
        env
    };
    let _history = Proc::start("chat-history", &env("history")).await;
    let _presence = Proc::start("chat-presence", &env("presence")).await;
    let _notify = Proc::start("chat-notify", &env("notify")).await;
    let edge1 = Proc::start("chat-edge", &env("edge")).await;
    let edge2 = Proc::start("chat-edge", &env("edge")).await;

    let (mut alice, _) =
        WsClient::login(&edge1.ws_url(), &token::hs256(SECRET, "alice", 600)).await;
    let (mut bob, _) = WsClient::login(&edge2.ws_url(), &token::hs256(SECRET, "bob", 600)).await;
    alice.join("perm").await;
    bob.join("perm").await;
    let ack = alice.post_as("perm", "hi @bob", "p1").await;
    let seq = ack["seq"].as_u64().unwrap();

    // Delivered to the other edge (the fan-out).
    let m = bob.recv_type("message").await.expect("message delivered");
    assert_eq!(
        (m["seq"].as_u64(), m["body"].as_str()),
        (Some(seq), Some("hi @bob"))
    );

    // Archived by chat-history, and served back through it.
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    wait_archived(&pool, "perm", 1).await;
    let h = bob
        .request(json!({"type": "history", "room": "perm"}), "h")
        .await;
    assert_eq!(h["type"], "history", "{h}");
    assert_eq!(h["messages"][0]["seq"].as_u64(), Some(seq));

    // Typing crosses edges (core NATS between edge users).
    alice.send(json!({"type": "typing", "room": "perm"})).await;
    bob.recv_type("typing").await.expect("typing crosses edges");

    // A new session's hello lists the user's rooms (chat-history answers the edge).
    let (_bob2, hello) = WsClient::login(&edge1.ws_url(), &token::hs256(SECRET, "bob", 600)).await;
    assert_eq!(hello["rooms"][0]["room"], "perm", "{hello}");

    // A retried send is deduplicated (the edge reads the original back from the stream).
    let again = alice.post_as("perm", "hi @bob", "p1").await;
    assert_eq!(
        (again["seq"].as_u64(), &again["duplicate"]),
        (Some(seq), &json!(true))
    );
    assert_eq!(again["ts"], ack["ts"]);

    // Recovery with a cursor replays what was missed (edge → chat-history, JetStream reads).
    let (mut carol, hello) =
        WsClient::login(&edge2.ws_url(), &token::hs256(SECRET, "carol", 600)).await;
    let epoch = hello["epoch"].as_str().unwrap().to_owned();
    let (replayed, joined) = carol.join_since("perm", 0, &epoch).await;
    assert_eq!(replayed, vec![seq]);
    assert_eq!(joined["recovered"], true);

    // chat-notify consumed the mention and notified bob; chat-presence answers a snapshot
    // from its bucket (and its sweeper lists the liveness bucket meanwhile).
    eventually(
        "bob is notified at sign-in",
        Duration::from_secs(10),
        async || {
            let (_bob3, hello) =
                WsClient::login(&edge1.ws_url(), &token::hs256(SECRET, "bob", 600)).await;
            if hello["notifications"][0]["seq"].as_u64() == Some(seq) {
                Ok(())
            } else {
                Err(hello)
            }
        },
    )
    .await;
    eventually(
        "alice online in the snapshot",
        Duration::from_secs(10),
        async || {
            let snap = bob
                .request(json!({"type": "presence", "room": "perm"}), "p")
                .await;
            assert_eq!(snap["type"], "presence_snapshot", "{snap}");
            let alice_online = snap["users"].as_array().is_some_and(|u| {
                u.iter()
                    .any(|e| e["user"] == "alice" && e["status"] == "online")
            });
            if alice_online { Ok(()) } else { Err(snap) }
        },
    )
    .await;

    // And no service ran into a permission it lacks along the way.
    let log = std::fs::read_to_string(logs.path().join("nats.log")).expect("nats-server log");
    assert!(log.contains("Server is ready"), "the log is written");
    let violations: Vec<_> = log
        .lines()
        .filter(|l| l.contains("Permissions Violation"))
        .collect();
    assert!(violations.is_empty(), "{violations:#?}");
}

/// Issue 16: chat-api runs with only its own NATS user (`api`): it posts as a bot (the publish,
/// the stream reads of a retry, the target checks through chat-history and the dedup-window
/// scan of a retried delete), creates rooms and adds members, reads history, presence and unread
/// state, and disconnects a user through the edges, with no permission violation on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_api_runs_with_its_own_nats_user() {
    use chat_bus::apikey::{Scope, generate};
    use chat_tests::{http, http_json};
    let (nats, logs) = server().await;
    let db = fresh_database().await;
    let (key, rec) = generate(
        "perm",
        Scope::ALL.to_vec(),
        vec![chat_proto::UserId::new("bot-perm").unwrap()],
        1,
    );
    let keys = logs.path().join("keys.json");
    std::fs::write(&keys, serde_json::to_vec(&vec![rec]).unwrap()).unwrap();
    let base: HashMap<String, String> = [
        ("NATS_URL", nats.url.as_str()),
        ("DATABASE_URL", db.as_str()),
        ("CHAT_JWT_SECRET", SECRET),
        ("CHAT_API_KEYS_FILE", keys.to_str().unwrap()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let env = |user: &str| {
        let mut env = base.clone();
        env.insert("NATS_USER".into(), user.into());
        env.insert("NATS_PASSWORD".into(), password(user));
        env
    };
    let _history = Proc::start("chat-history", &env("history")).await;
    let _presence = Proc::start("chat-presence", &env("presence")).await;
    let _notify = Proc::start("chat-notify", &env("notify")).await;
    let edge = Proc::start("chat-edge", &env("edge")).await;
    let api = Proc::start("chat-api", &env("api")).await;
    let (a, k) = (api.api_addr(), Some(key.as_str()));

    let made = http_json(
        a,
        "POST",
        "/api/v1/rooms",
        k,
        &json!({"room":"perm","members":["bot-perm"]}),
    )
    .await;
    assert_eq!(made.status, 201, "{made:?}");
    let added = http(a, "PUT", "/api/v1/rooms/perm/members/alice", k, None).await;
    assert_eq!(added.status, 200, "{added:?}");
    let (mut alice, _) = WsClient::login(&edge.ws_url(), &token::hs256(SECRET, "alice", 600)).await;

    let msg = json!({"from":"bot-perm","body":"hello","client_id":"m1"});
    let first = http_json(a, "POST", "/api/v1/rooms/perm/messages", k, &msg).await;
    assert_eq!(first.status, 201, "{first:?}");
    let seq = first.body["seq"].as_u64().unwrap();
    alice.recv_type("message").await.expect("delivered");
    let again = http_json(a, "POST", "/api/v1/rooms/perm/messages", k, &msg).await;
    assert_eq!(
        (again.status, &again.body["ts"]),
        (200, &first.body["ts"]),
        "{again:?}"
    );
    let edit = json!({"from":"bot-perm","body":"hello!","client_id":"e1"});
    let e = http_json(
        a,
        "PATCH",
        &format!("/api/v1/rooms/perm/messages/{seq}"),
        k,
        &edit,
    )
    .await;
    assert_eq!(e.status, 201, "{e:?}");
    let del = format!("/api/v1/rooms/perm/messages/{seq}?from=bot-perm&client_id=d1");
    assert_eq!(http(a, "DELETE", &del, k, None).await.status, 201);
    let retried = http(a, "DELETE", &del, k, None).await;
    assert_eq!(
        (retried.status, &retried.body["duplicate"]),
        (200, &json!(true)),
        "{retried:?}"
    );
    let page = http(a, "GET", "/api/v1/rooms/perm/messages", k, None).await;
    assert_eq!(page.status, 200, "{page:?}");
    assert_eq!(
        http(a, "GET", "/api/v1/presence?users=alice", k, None)
            .await
            .status,
        200
    );
    assert_eq!(
        http(a, "GET", "/api/v1/rooms/perm/presence", k, None)
            .await
            .status,
        200
    );
    assert_eq!(
        http(a, "GET", "/api/v1/users/alice/unread", k, None)
            .await
            .status,
        200
    );
    assert_eq!(
        http(a, "GET", "/api/v1/search?query=hello", k, None)
            .await
            .status,
        200
    );
    let d = http_json(
        a,
        "POST",
        "/api/v1/users/alice/disconnect",
        k,
        &json!({"reason":"bye"}),
    )
    .await;
    assert_eq!(d.status, 202, "{d:?}");
    assert_eq!(alice.expect_close().await, Some(4001));

    let log = std::fs::read_to_string(logs.path().join("nats.log")).expect("nats-server log");
    let violations: Vec<_> = log
        .lines()
        .filter(|l| l.contains("Permissions Violation"))
        .collect();
    assert!(violations.is_empty(), "{violations:#?}");
}
