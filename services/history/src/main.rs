//! chat-history: see the crate documentation.

use chat_history::{App, HistoryConfig};
use chat_runtime::{Env, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = Env::from_process();
    let _telemetry = telemetry::init(&env, "chat-history");
    let config = HistoryConfig::from_env(&env)?;
    let stop = shutdown::on_signal();
    let app = App::build(config, &stop).await?;
    app.run(stop).await;
    Ok(())
}
