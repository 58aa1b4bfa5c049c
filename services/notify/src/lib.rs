//! chat-notify. For now a skeleton: it connects to NATS, serves its admin endpoints and drains on
//! SIGTERM; its issue fills in the service itself.

use std::net::SocketAddr;

use anyhow::Context as _;
use chat_runtime::nats::NatsConfig;
use chat_runtime::{ConfigError, Env, admin};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Default admin address of chat-notify.
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:9104";

#[derive(Debug, Clone)]
pub struct NotifyConfig {
    pub nats: NatsConfig,
    pub admin_listen: SocketAddr,
}

impl NotifyConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(NotifyConfig {
            nats: NatsConfig::from_env(env)?,
            admin_listen: env.addr("ADMIN_LISTEN", DEFAULT_ADMIN_LISTEN)?,
        })
    }
}

pub struct App {
    nats: async_nats::Client,
    admin: TcpListener,
}

impl App {
    pub async fn build(config: NotifyConfig, _shutdown: &CancellationToken) -> anyhow::Result<App> {
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .context("bind ADMIN_LISTEN")?;
        let nats = config
            .nats
            .connect("chat-notify")
            .await
            .map_err(|e| anyhow::anyhow!("connect to NATS: {e}"))?;
        Ok(App { nats, admin })
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("bound listener has an address")
    }

    pub async fn run(self, shutdown: CancellationToken) {
        admin::serve(self.admin, admin::nats_ready(self.nats.clone()), shutdown).await;
        let _ = self.nats.flush().await;
    }
}
