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
