//! The shape of every chat service: read the configuration, `build` (bind the listeners, wait
//! for the dependencies), `run` until SIGINT/SIGTERM, drain within a grace. A service's
//! `main.rs` is one call to [`main`]; tests call `build` and `run` themselves.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, ReadinessCheck};
use crate::metrics::Metric;
use crate::nats::NatsConfig;
use crate::{ConfigError, Env, shutdown, telemetry};

/// `CHAT_DRAIN_GRACE` unless a service says otherwise.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(10);

/// A chat service.
pub trait Service: Sized + Send + 'static {
    /// The process's name: in traces (`service.name`), as the NATS connection name, and (without
    /// `chat-`) as the `service` label of `chat_build_info`.
    const NAME: &'static str;
    /// The service's own metrics, described at start (`chat_runtime::metrics::install`).
    const METRICS: &'static [Metric];

    type Config: Send + 'static;

    /// The configuration, from the environment.
    fn config(env: &Env) -> Result<Self::Config, ConfigError>;

    /// How long the drain may take after SIGTERM before the process exits with work unfinished
    /// (it is redelivered): `CHAT_DRAIN_GRACE`, [`DEFAULT_DRAIN_GRACE`] when unset.
    fn drain_grace(env: &Env, _config: &Self::Config) -> Result<Duration, ConfigError> {
        shutdown::drain_grace(env, DEFAULT_DRAIN_GRACE)
    }

    /// Binds the listeners and waits for the dependencies as long as they are down (or until
    /// `shutdown`). (Not required to be `Send`: `main` awaits it on its own thread, and sqlx's
    /// migrator cannot prove it is.)
    fn build(
        config: Self::Config,
        shutdown: &CancellationToken,
    ) -> impl Future<Output = anyhow::Result<Self>>;

    /// Serves until `shutdown`, then drains.
    fn run(self, shutdown: CancellationToken) -> impl Future<Output = ()> + Send;

    /// Where the admin routes listen (tests bind port 0 and ask).
    fn admin_addr(&self) -> SocketAddr;

    /// Where the service's own clients connect, for a service that has a listener of its own
    /// (the edge's WebSocket, chat-api's HTTP).
    fn listen_addr(&self) -> Option<SocketAddr> {
        None
    }
}

/// Everything a service's `main` does: telemetry, configuration, `build`, `run` until the first
/// SIGINT or SIGTERM, then the drain, bounded by [`Service::drain_grace`] whatever is down
/// (issue 15 item 13).
pub async fn main<S: Service>() -> anyhow::Result<()> {
    let env = Env::from_process();
    let _telemetry = telemetry::init(&env, S::NAME);
    let config = S::config(&env)?;
    let stop = shutdown::on_signal();
    let grace = S::drain_grace(&env, &config)?;
    let app = S::build(config, &stop).await?;
    shutdown::drain_within(&stop, grace, app.run(stop.clone())).await;
    Ok(())
}

/// What every service's `build` starts with: the admin listener bound (a port in use fails the
/// start rather than the first scrape) and a NATS connection named after the service, with its
/// JetStream context.
pub struct Base {
    pub admin: Admin,
    pub nats: async_nats::Client,
    pub js: async_nats::jetstream::Context,
}

impl Base {
    /// Binds `ADMIN_LISTEN`, then connects to NATS (retrying until the server answers: services
    /// may start before NATS does).
    pub async fn start<S: Service>(
        admin_listen: SocketAddr,
        nats: &NatsConfig,
    ) -> anyhow::Result<Base> {
        let listener = TcpListener::bind(admin_listen)
            .await
            .context("bind ADMIN_LISTEN")?;
        let addr = listener.local_addr().context("ADMIN_LISTEN address")?;
        let nats = nats
            .connect(S::NAME)
            .await
            .map_err(|e| anyhow::anyhow!("connect to NATS: {e}"))?;
        let admin = Admin {
            listener,
            addr,
            nats: nats.clone(),
            service: S::NAME.strip_prefix("chat-").unwrap_or(S::NAME),
            metrics: S::METRICS,
        };
        let js = async_nats::jetstream::new(nats.clone());
        Ok(Base { admin, nats, js })
    }
}

/// The `CHAT` stream (created if missing, protocol.md#identities) and its epoch, waiting for NATS as long
/// as it is down (or until `shutdown`).
pub async fn chat_stream(
    js: &async_nats::jetstream::Context,
    settings: &chat_bus::stream::StreamSettings,
    shutdown: &CancellationToken,
) -> anyhow::Result<(async_nats::jetstream::stream::Stream, String)> {
    crate::retry::at_start("create the CHAT stream", shutdown, || {
        chat_bus::stream::ensure_chat_stream(js, settings)
    })
    .await
}

/// A service's bound admin listener (`/healthz`, `/readyz`, `/metrics`), served by `run`.
pub struct Admin {
    listener: TcpListener,
    addr: SocketAddr,
    nats: async_nats::Client,
    service: &'static str,
    metrics: &'static [Metric],
}

impl Admin {
    /// Where the admin routes listen (tests bind port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Describes the service's metrics now, and returns the admin server: it serves until
    /// `shutdown`, `/readyz` passing while NATS is connected and every one of `checks` passes.
    pub fn serve(
        self,
        checks: Vec<ReadinessCheck>,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        crate::metrics::install(self.service, self.metrics);
        let mut all = vec![admin::nats_ready(self.nats)];
        all.extend(checks);
        admin::serve(self.listener, admin::all(all), shutdown)
    }
}
