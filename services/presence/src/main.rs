//! chat-presence: see the crate documentation.

use chat_presence::{App, PresenceConfig};
use chat_runtime::{Env, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = Env::from_process();
    let _telemetry = telemetry::init(&env, "chat-presence");
    let config = PresenceConfig::from_env(&env)?;
    let stop = shutdown::on_signal();
    App::build(config, &stop).await?.run(stop).await;
    Ok(())
}
