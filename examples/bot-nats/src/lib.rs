//! A bot over NATS (protocol.md#nats), the smallest useful one: it follows the live feed of a room
//! (`chat.fanout.<room>`, every stored event in order, with its seq in `Nats-Sequence`) and
//! answers each `!ping` with a `pong` that quotes it, published to `chat.room.<room>.msg` through
//! JetStream like any client's message.
//!
//! The reply's client id is derived from the seq it answers (`pong-<seq>`), so its
//! `Nats-Msg-Id` (`<bot>:pong-<seq>`) makes the stream drop a second answer to the same ping,
//! e.g. from a second instance of the bot or a retried publish.

use async_nats::HeaderMap;
use chat_bus::event::{self, EventKind, RoomEvent};
use chat_bus::subjects;
use chat_proto::{RoomId, UserId};
use futures::StreamExt;

/// The answer to the event stored at `seq`, if it is a `!ping` from someone else.
pub fn answer(event: &RoomEvent, seq: u64, bot: &UserId, now_ms: i64) -> Option<RoomEvent> {
    if event.kind != EventKind::Message || event.from == *bot || event.body.trim() != "!ping" {
        return None;
    }
    let mut pong = RoomEvent::message(
        event.room.clone(),
        bot.clone(),
        "pong".to_owned(),
        format!("pong-{seq}"),
        now_ms,
    );
    pong.reply_to = Some(seq);
    Some(pong)
}

/// A bot subscribed to its room's feed: whatever is stored from now on, it sees.
pub struct Bot {
    js: async_nats::jetstream::Context,
    feed: async_nats::Subscriber,
    room: RoomId,
    bot: UserId,
}

impl std::fmt::Debug for Bot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bot({} in {})", self.bot, self.room)
    }
}

/// Subscribes `bot` to the feed of `room`; when this returns the server has the subscription.
pub async fn follow(client: async_nats::Client, room: RoomId, bot: UserId) -> anyhow::Result<Bot> {
    let feed = client.subscribe(subjects::fanout(&room)).await?;
    let js = async_nats::jetstream::new(client);
    // A round trip on the same connection (a flush only writes): the server has handled the
    // subscription before it answers. It also checks that the `CHAT` stream is there.
    js.get_stream(subjects::STREAM).await.map_err(|e| {
        anyhow::anyhow!(
            "no {} stream ({e}): start the chat services first",
            subjects::STREAM
        )
    })?;
    Ok(Bot {
        js,
        feed,
        room,
        bot,
    })
}

impl Bot {
    /// Answers pings until the connection ends or `stop` resolves; returns how many answers
    /// the stream stored.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<u64> {
        let mut answered = 0;
        tokio::pin!(stop);
        loop {
            let msg = tokio::select! {
                _ = &mut stop => return Ok(answered),
                msg = self.feed.next() => match msg {
                    Some(m) => m,
                    None => return Ok(answered),
                },
            };
            let seq = msg
                .headers
                .as_ref()
                .and_then(|h| h.get(event::SEQUENCE_HEADER))
                .and_then(|v| v.as_str().parse::<u64>().ok());
            // Not an event (the stream stores whatever is published; consumers dead-letter
            // the rest).
            let (Some(seq), Ok(ev)) = (seq, RoomEvent::decode(&msg.payload)) else {
                continue;
            };
            let Some(pong) = answer(&ev, seq, &self.bot, chat_bus::now_ms()) else {
                continue;
            };
            let mut headers = HeaderMap::new();
            headers.insert(event::MSG_ID_HEADER, pong.msg_id().as_str());
            let payload = serde_json::to_vec(&pong)?.into();
            // Wait for the stream's ack: the answer is stored (and on the feed), or we say so
            // and go on (a refusal, e.g. 403 for a `from` that is not one of the credential's
            // bots, would repeat for every ping: fix the configuration).
            let stored = match self
                .js
                .publish_with_headers(subjects::room_msg(&self.room), headers, payload)
                .await
            {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match stored {
                Ok(()) => answered += 1,
                Err(e) => eprintln!("bot-nats: the pong to seq {seq} was not stored: {e}"),
            }
        }
    }
}
