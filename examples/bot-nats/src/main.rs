//! `bot-nats`: answers `!ping` with `pong` in one room. `NATS_URL` (nats://127.0.0.1:4222),
//! `NATS_USER` + `NATS_PASSWORD` (e.g. deploy/nats/auth.conf's `integrations`), `NATS_INBOX_PREFIX`
//! (optional: reply subjects, where JetStream acks come, for a client configured that way),
//! `BOT_ROOM` (required), `BOT_USER` (bot-ping: in a secured deployment, one of the credential's
//! bot identities). Stops on Ctrl-C.

use chat_proto::{RoomId, UserId};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let url = var("NATS_URL").unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let room =
        var("BOT_ROOM").ok_or_else(|| anyhow::anyhow!("set BOT_ROOM to the room to follow"))?;
    let room = RoomId::new(&room).map_err(|e| anyhow::anyhow!("BOT_ROOM {room:?}: {e}"))?;
    let bot = var("BOT_USER").unwrap_or_else(|| "bot-ping".into());
    let bot = UserId::new(&bot).map_err(|e| anyhow::anyhow!("BOT_USER {bot:?}: {e}"))?;
    let mut opts = async_nats::ConnectOptions::new().name("bot-nats");
    if let Some(prefix) = var("NATS_INBOX_PREFIX") {
        opts = opts.custom_inbox_prefix(prefix);
    }
    if let (Some(user), Some(password)) = (var("NATS_USER"), var("NATS_PASSWORD")) {
        opts = opts.user_and_password(user, password);
    }
    let client = opts
        .connect(url.as_str())
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to NATS at {url}: {e}"))?;
    let announce = format!("bot-nats: {bot} follows {room}; say !ping there");
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let bot = chat_example_bot_nats::follow(client, room, bot).await?;
    eprintln!("{announce}");
    let answered = bot.run(stop).await?;
    eprintln!("bot-nats: stopped after {answered} pong(s)");
    Ok(())
}
