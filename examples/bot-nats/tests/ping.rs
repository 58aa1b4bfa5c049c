//! The bot against a real nats-server with the `CHAT` stream: a `!ping` stored in the room is
//! answered once with a `pong` quoting it; other messages, and its own, are not.

use std::time::Duration;

use chat_bus::event::{self, RoomEvent};
use chat_bus::{stream, subjects};
use chat_proto::{RoomId, UserId};
use chat_testkit::NatsServer;
use futures::StreamExt;

#[tokio::test]
async fn answers_ping_with_pong() {
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    stream::ensure_chat_stream(&js, &stream::StreamSettings::default())
        .await
        .unwrap();
    let room = RoomId::new("bots").unwrap();
    let bot = UserId::new("bot-ping").unwrap();
    let mut feed = client.subscribe(subjects::fanout(&room)).await.unwrap();
    let follower = chat_example_bot_nats::follow(nats.client().await, room.clone(), bot.clone())
        .await
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let bot_task = tokio::spawn(follower.run(async {
        let _ = stop_rx.await;
    }));
    // A ping is answered with a pong quoting it.
    let ping1 = publish(&js, &room, "!ping", "c1").await;
    let pong = next_from(&mut feed, &bot).await;
    assert_eq!(pong.body, "pong");
    assert_eq!(
        pong.reply_to,
        Some(ping1),
        "the pong quotes the ping it answers"
    );
    // Anything else is not: the bot reads the feed in order, so its next message answers the
    // second ping, not the hello before it.
    publish(&js, &room, "hello", "c2").await;
    let ping2 = publish(&js, &room, "!ping", "c3").await;
    let pong = next_from(&mut feed, &bot).await;
    assert_eq!(pong.reply_to, Some(ping2));
    stop_tx.send(()).unwrap();
    assert_eq!(bot_task.await.unwrap().unwrap(), 2);
}

/// Publishes alice's `body` to the room as an integration does; returns its seq.
async fn publish(
    js: &async_nats::jetstream::Context,
    room: &RoomId,
    body: &str,
    client_id: &str,
) -> u64 {
    let ev = RoomEvent::message(
        room.clone(),
        UserId::new("alice").unwrap(),
        body.into(),
        client_id.into(),
        chat_bus::now_ms(),
    );
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(event::MSG_ID_HEADER, ev.msg_id().as_str());
    js.publish_with_headers(
        subjects::room_msg(room),
        headers,
        serde_json::to_vec(&ev).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap()
    .sequence
}

/// The next event of the feed from `who`.
async fn next_from(feed: &mut async_nats::Subscriber, who: &UserId) -> RoomEvent {
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(m) = feed.next().await {
            let ev = RoomEvent::decode(&m.payload).unwrap();
            if ev.from == *who {
                return ev;
            }
        }
        panic!("the feed ended");
    })
    .await
    .expect("an answer within 10 s")
}

#[test]
fn answers_only_pings_of_others() {
    let room = RoomId::new("r").unwrap();
    let bot = UserId::new("bot-ping").unwrap();
    let alice = UserId::new("alice").unwrap();
    let ping = RoomEvent::message(
        room.clone(),
        alice.clone(),
        " !ping ".into(),
        "c1".into(),
        1,
    );
    let pong = chat_example_bot_nats::answer(&ping, 7, &bot, 2).expect("an answer");
    assert_eq!(
        (pong.body.as_str(), pong.reply_to, pong.from.as_str()),
        ("pong", Some(7), "bot-ping")
    );
    assert_eq!(pong.msg_id(), "bot-ping:pong-7");
    let own = RoomEvent::message(room.clone(), bot.clone(), "!ping".into(), "c2".into(), 1);
    assert!(chat_example_bot_nats::answer(&own, 8, &bot, 2).is_none());
    let other = RoomEvent::message(room, alice, "!pingpong".into(), "c3".into(), 1);
    assert!(chat_example_bot_nats::answer(&other, 9, &bot, 2).is_none());
}
