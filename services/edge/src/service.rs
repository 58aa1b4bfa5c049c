//! chat-edge as a [`Service`]: what `main` runs.

use std::net::SocketAddr;
use std::time::Duration;

use chat_runtime::metrics::Metric;
use chat_runtime::service::Service;
use chat_runtime::{ConfigError, Env};
use tokio_util::sync::CancellationToken;

use crate::{App, EdgeConfig, metrics_catalogue};

impl Service for App {
    const NAME: &'static str = "chat-edge";
    const METRICS: &'static [Metric] = metrics_catalogue::CATALOGUE;
    type Config = EdgeConfig;

    fn config(env: &Env) -> Result<EdgeConfig, ConfigError> {
        EdgeConfig::from_env(env)
    }

    /// The sockets get `CHAT_DRAIN_GRACE` (20s, [`EdgeConfig::drain_grace`]); the rest of the
    /// drain (flushes to a NATS that may be unreachable) a few seconds more, then the process
    /// exits (issue 15 item 13).
    fn drain_grace(_env: &Env, config: &EdgeConfig) -> Result<Duration, ConfigError> {
        Ok(config.drain_grace + Duration::from_secs(3))
    }

    async fn build(config: EdgeConfig, shutdown: &CancellationToken) -> anyhow::Result<App> {
        App::build(config, shutdown.clone()).await
    }

    /// The edge watches the token it was built with (every session holds it).
    async fn run(self, _shutdown: CancellationToken) {
        App::run(self).await
    }

    fn admin_addr(&self) -> SocketAddr {
        App::admin_addr(self)
    }

    fn listen_addr(&self) -> Option<SocketAddr> {
        Some(App::local_addr(self))
    }
}
