//! chat-history: archives every event of the `CHAT` stream in PostgreSQL, answers history pages
//! (`chat.api.history`) that stay complete while the archive lags, searches the archive
//! (`chat.api.search`), owns rooms and membership, and delivers integration events to the
//! operator's webhook endpoints ([`integration`]).

pub mod archive;
pub mod config;
pub mod intake;
pub mod integration;
pub mod metrics_catalogue;
pub mod query;
pub mod rooms;
pub mod search;
pub mod state;
pub mod stream_read;

use std::net::SocketAddr;

use anyhow::Context as _;
use async_nats::jetstream;
use chat_bus::{rpc, stream, subjects};
use chat_runtime::metrics::Metric;
use chat_runtime::nats::{Serve as _, serve_requests};
use chat_runtime::service::{self, Admin, Base, Service};
use chat_runtime::{ConfigError, Env, db, retry};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use config::HistoryConfig;

/// Schema of chat-history's tables.
pub const SCHEMA: &str = "history";

// The migrations of `migrations/`, compiled in, and the test that holds this list to the folder.
chat_runtime::embedded_migrations! {
    MIGRATOR:
    (1, "init", "0001_init.sql"),
    (3, "lifecycle", "0003_lifecycle.sql"),
    (5, "search", "0005_search.sql"),
    (6, "integration", "0006_integration.sql"),
    (7, "search rooms", "0007_search_rooms.sql"),
}

/// A started chat-history, ready to [`run`](App::run).
pub struct App {
    config: HistoryConfig,
    nats: async_nats::Client,
    js: jetstream::Context,
    pool: PgPool,
    stream: jetstream::stream::Stream,
    epoch_id: i32,
    search: search::Search,
    admin: Admin,
}

impl Service for App {
    const NAME: &'static str = "chat-history";
    const METRICS: &'static [Metric] = metrics_catalogue::CATALOGUE;
    type Config = HistoryConfig;

    fn config(env: &Env) -> Result<HistoryConfig, ConfigError> {
        HistoryConfig::from_env(env)
    }

    async fn build(config: HistoryConfig, shutdown: &CancellationToken) -> anyhow::Result<App> {
        App::build(config, shutdown).await
    }

    async fn run(self, shutdown: CancellationToken) {
        App::run(self, shutdown).await
    }

    fn admin_addr(&self) -> SocketAddr {
        App::admin_addr(self)
    }
}

impl App {
    /// Connects, creates the stream if missing and applies migrations, waiting for NATS and
    /// PostgreSQL as long as they are down (or until `shutdown`).
    pub async fn build(config: HistoryConfig, shutdown: &CancellationToken) -> anyhow::Result<App> {
        let Base { admin, nats, js } =
            Base::start::<App>(config.admin_listen, &config.nats).await?;
        let (stream, epoch) = service::chat_stream(&js, &config.stream, shutdown).await?;
        retry::at_start("create the dead-letter stream", shutdown, || {
            stream::ensure_dead_letter_stream(&js, config.stream.replicas)
        })
        .await?;
        let pool = db::migrated(&config.database_url, SCHEMA, 16, &MIGRATOR, shutdown).await?;
        let epoch_id = retry::at_start("register the epoch", shutdown, || {
            archive::epoch_id(&pool, &epoch)
        })
        .await?;
        if let Some(endpoints) = &config.integration.endpoints {
            retry::at_start("sync the integration endpoints", shutdown, || {
                integration::sync_endpoints(&pool, endpoints)
            })
            .await?;
        }
        let search = search::Search::new(&config.database_url, SCHEMA, epoch_id)
            .context("DATABASE_URL")?
            .with_window(config.search_window)
            .with_room_terms_factor(config.search_room_terms_factor);
        tracing::info!(epoch, "chat-history started");
        Ok(App {
            config,
            nats,
            js,
            pool,
            stream,
            epoch_id,
            search,
            admin,
        })
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.addr()
    }

    /// Serves until `shutdown`, then drains: stops taking requests and events, finishes those in
    /// hand, and acknowledges only what was committed.
    pub async fn run(self, shutdown: CancellationToken) {
        let writers = archive::WriterHealth::new(if self.config.archive {
            self.config.writers.max(1)
        } else {
            0
        });
        let admin = tokio::spawn(self.admin.serve(
            vec![db::ready(self.pool.clone()), writers.readiness()],
            shutdown.clone(),
        ));
        if self.config.archive {
            tokio::spawn(chat_runtime::metrics::track_consumer_lag(
                self.stream.clone(),
                subjects::HISTORY_CONSUMER,
                chat_runtime::metrics::LAG_EVERY,
                shutdown.clone(),
            ));
        }

        let integration_enabled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(
            self.config
                .integration
                .endpoints
                .as_ref()
                .is_some_and(|e| !e.is_empty()),
        ));
        let rooms = rooms::Rooms::new(self.pool.clone(), self.nats.clone())
            .with_max_rooms(self.config.max_rooms_per_user)
            .with_integration(integration::OrderHint {
                stream: self.stream.clone(),
                epoch_id: self.epoch_id,
                enabled: integration_enabled.clone(),
            });
        let rooms_server = rpc::Rooms::serve(
            self.nats.clone(),
            self.config.nats.serve,
            shutdown.clone(),
            move |req| {
                let rooms = rooms.clone();
                async move { rooms.handle(req).await }
            },
        );

        let query = query::HistoryQuery::new(
            self.pool.clone(),
            self.nats.clone(),
            self.stream.clone(),
            self.epoch_id,
            self.config.page_max_bytes,
            std::time::Duration::from_secs(5),
        );
        let floor = tokio::spawn(query.clone().track_floor(shutdown.clone()));
        let info_query = query.clone();
        let message_server = rpc::MessageLookup::serve(
            self.nats.clone(),
            self.config.nats.serve,
            shutdown.clone(),
            move |req| {
                let query = info_query.clone();
                async move { query.message_info(req).await }
            },
        );
        let history_server = rpc::History::serve(
            self.nats.clone(),
            self.config.nats.serve,
            shutdown.clone(),
            move |req| {
                let query = query.clone();
                async move {
                    let started = std::time::Instant::now();
                    let reply = query.page(req).await;
                    metrics::histogram!("chat_history_page_seconds")
                        .record(started.elapsed().as_secs_f64());
                    reply
                }
            },
        );

        let search = self.search.clone();
        let search_server = rpc::Search::serve(
            self.nats.clone(),
            self.config.nats.serve,
            shutdown.clone(),
            move |req| {
                let search = search.clone();
                async move {
                    let started = std::time::Instant::now();
                    let reply = search.search(req).await;
                    metrics::histogram!("chat_history_search_seconds")
                        .record(started.elapsed().as_secs_f64());
                    reply
                }
            },
        );

        // Integrations with an account of their own (crate::intake): checked, then relayed.
        let relay_nats = self.nats.clone();
        let bots = std::sync::Arc::new(self.config.integration_bots.clone());
        let limits = self.config.nats.serve;
        let relay_timeout = limits
            .deadline
            .saturating_sub(std::time::Duration::from_millis(250));
        let intake_server = serve_requests(
            self.nats.clone(),
            subjects::INTEGRATION_PUBLISH_ALL,
            subjects::HISTORY_QUEUE,
            limits,
            shutdown.clone(),
            move |msg| {
                let nats = relay_nats.clone();
                let bots = bots.clone();
                async move { intake::relay(&nats, &bots, relay_timeout, msg).await }
            },
        );

        let archive = archive::Archive {
            pool: self.pool.clone(),
            js: self.js.clone(),
            stream: self.stream.clone(),
            epoch_id: self.epoch_id,
            config: self.config.clone(),
            lookup: chat_bus::lookup::TargetLookup::new(
                self.stream.clone(),
                Some(query::pg_fallback(self.pool.clone(), self.epoch_id)),
            ),
        };
        let writer = async {
            if self.config.archive {
                archive.run(writers, shutdown.clone()).await;
            } else {
                tracing::info!("HISTORY_ARCHIVE=false: this process does not archive");
            }
        };
        let integration = integration::Integration {
            pool: self.pool.clone(),
            stream: self.stream.clone(),
            epoch_id: self.epoch_id,
            config: self.config.integration.clone(),
            enabled: integration_enabled,
        }
        .run(shutdown.clone());
        let (r, h, s, m, i, (), ()) = tokio::join!(
            rooms_server,
            history_server,
            search_server,
            message_server,
            intake_server,
            writer,
            integration
        );
        for res in [r, h, s, m, i] {
            if let Err(e) = res {
                tracing::error!(error = %e, "request server failed");
            }
        }
        let _ = admin.await;
        let _ = floor.await;
        chat_runtime::nats::flush_within(&self.nats).await;
        self.pool.close().await;
    }
}
