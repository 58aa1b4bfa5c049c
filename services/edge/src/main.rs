//! chat-edge: see the crate documentation.

use chat_edge::{App, EdgeConfig};
use chat_runtime::{Env, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = Env::from_process();
    let _telemetry = telemetry::init(&env, "chat-edge");
    let config = EdgeConfig::from_env(&env)?;
    let stop = shutdown::on_signal();
    // The sockets get CHAT_DRAIN_GRACE; the rest of the drain (flushes to a NATS that may be
    // unreachable) a few seconds more, then the process exits (issue 15 item 13).
    let grace = config.drain_grace + std::time::Duration::from_secs(3);
    let app = App::build(config, stop.clone()).await?;
    shutdown::drain_within(&stop, grace, app.run()).await;
    Ok(())
}
