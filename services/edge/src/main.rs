//! chat-edge: see the crate documentation.

use chat_edge::{App, EdgeConfig};
use chat_runtime::{Env, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = Env::from_process();
    let _telemetry = telemetry::init(&env, "chat-edge");
    let config = EdgeConfig::from_env(&env)?;
    let stop = shutdown::on_signal();
    let app = App::build(config, stop).await?;
    app.run().await;
    Ok(())
}
