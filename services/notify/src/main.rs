//! chat-notify: see the crate documentation.

use chat_notify::{App, NotifyConfig};
use chat_runtime::{Env, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = Env::from_process();
    let _telemetry = telemetry::init(&env, "chat-notify");
    let config = NotifyConfig::from_env(&env)?;
    let stop = shutdown::on_signal();
    App::build(config, &stop).await?.run(stop).await;
    Ok(())
}
