//! chat-api: the server HTTP API for a team's own backends (issue 16). JSON under `/api/v1`,
//! described by `docs/openapi.json`, on a listener of its own (`CHAT_API_ADDR`, firewalled apart
//! from the edge's `/ws`). Stateless: it talks only NATS to the other services (chat-history for
//! rooms, members, history and search; chat-presence; chat-notify; the `CHAT` stream for
//! messages), so any number of instances run side by side.
//!
//! - [`keys`]: the API keys (`chk_<id>_<secret>`, hashed at rest in the `chat_api_keys` bucket,
//!   watched so that a revocation takes effect at once);
//! - [`http`]: authorization, the per-key rate, errors, the audit line and the metrics;
//! - [`routes`]: the routes and the JSON they take and give.
//!
//! Messages go through [`chat_bus::post`], the path the edge's sessions use: the same field
//! checks, the same target checks, the same deduplication (`from:client_id` as `Nats-Msg-Id`).

pub mod config;
pub mod http;
pub mod keys;
pub mod metrics_catalogue;
pub mod routes;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use chat_bus::stream;
use chat_proto::{RoomId, UserId};
use chat_runtime::metrics::Metric;
use chat_runtime::service::{self, Admin, Base, Service};
use chat_runtime::{ConfigError, Env, retry};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{ApiConfig, DEFAULT_ADMIN_LISTEN, DEFAULT_API_ADDR};

/// Each bot's rooms and when they were asked.
type BotRooms = HashMap<UserId, (Instant, Arc<BTreeSet<RoomId>>)>;

/// chat-api's state, shared by every request: cheap to clone.
#[derive(Clone)]
pub struct Api(Arc<Inner>);

pub struct Inner {
    pub config: ApiConfig,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub stream: jetstream::stream::Stream,
    pub keys: keys::KeyRing,
    rates: http::Rates,
    /// Each bot's rooms, as last asked of chat-history, and when.
    bot_rooms: Mutex<BotRooms>,
}

impl std::ops::Deref for Api {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Api {
    /// What [`chat_bus::post`]'s checks read.
    pub fn post_reader(&self) -> chat_bus::post::Reader<'_> {
        chat_bus::post::Reader {
            nats: &self.nats,
            stream: &self.stream,
            timeout: self.config.request_timeout,
            window: stream::duplicate_window(&self.config.stream),
        }
    }
}

/// A started chat-api, ready to [`run`](App::run).
pub struct App {
    api: Api,
    store: kv::Store,
    listener: TcpListener,
    admin: Admin,
}

impl Service for App {
    const NAME: &'static str = "chat-api";
    const METRICS: &'static [Metric] = metrics_catalogue::CATALOGUE;
    type Config = ApiConfig;

    fn config(env: &Env) -> Result<ApiConfig, ConfigError> {
        ApiConfig::from_env(env)
    }

    async fn build(config: ApiConfig, shutdown: &CancellationToken) -> anyhow::Result<App> {
        App::build(config, shutdown).await
    }

    async fn run(self, shutdown: CancellationToken) {
        App::run(self, shutdown).await
    }

    fn admin_addr(&self) -> SocketAddr {
        App::admin_addr(self)
    }

    fn listen_addr(&self) -> Option<SocketAddr> {
        Some(App::local_addr(self))
    }
}

impl App {
    /// Binds both listeners, connects, finds the `CHAT` stream and loads the keys, waiting for
    /// NATS as long as it is down (or until `shutdown`).
    pub async fn build(config: ApiConfig, shutdown: &CancellationToken) -> anyhow::Result<App> {
        let keys = keys::KeyRing::with_file(config.keys_file.as_deref())?;
        let listener = TcpListener::bind(config.listen)
            .await
            .context("bind CHAT_API_ADDR")?;
        let Base { admin, nats, js } =
            Base::start::<App>(config.admin_listen, &config.nats).await?;
        let (chat, _epoch) = service::chat_stream(&js, &config.stream, shutdown).await?;
        let store = retry::at_start("open the API key bucket", shutdown, || {
            keys::ensure_bucket(&js, config.kv_replicas)
        })
        .await?;
        retry::at_start("load the API keys", shutdown, || keys::load(&keys, &store)).await?;
        tracing::info!(keys = keys.len(), listen = %listener.local_addr()?, "chat-api started");
        let api = Api(Arc::new(Inner {
            config,
            nats,
            js,
            stream: chat,
            keys,
            rates: http::Rates::default(),
            bot_rooms: Mutex::new(HashMap::new()),
        }));
        Ok(App {
            api,
            store,
            listener,
            admin,
        })
    }

    /// Where the HTTP API listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.addr()
    }

    /// Serves until `shutdown`, then finishes the calls in hand.
    pub async fn run(self, shutdown: CancellationToken) {
        let api = self.api;
        let admin = self.admin.serve(Vec::new(), shutdown.clone());
        let watch = keys::watch(api.keys.clone(), self.store, shutdown.clone());
        let app = routes::router(api.clone());
        let serve = async {
            if let Err(e) = axum::serve(self.listener, app)
                .with_graceful_shutdown(shutdown.clone().cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "HTTP API server failed");
            }
        };
        tokio::join!(admin, watch, serve);
        chat_runtime::nats::flush_within(&api.nats).await;
    }
}
