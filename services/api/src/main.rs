//! chat-api: see the crate documentation.

use chat_api::{ApiConfig, App};
use chat_runtime::{Env, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = Env::from_process();
    let _telemetry = telemetry::init(&env, "chat-api");
    let config = ApiConfig::from_env(&env)?;
    let stop = shutdown::on_signal();
    // CHAT_DRAIN_GRACE bounds the drain whatever is down (issue 15 item 13).
    let grace = shutdown::drain_grace(&env, std::time::Duration::from_secs(10))?;
    let app = App::build(config, &stop).await?;
    shutdown::drain_within(&stop.clone(), grace, app.run(stop)).await;
    Ok(())
}
