//! chat-notify: unread counts, read markers and notifications (protocol.md#ws, #nats).
//!
//! - [`consumer`]: a durable consumer of the `CHAT` stream records every event per room and the
//!   notifications it makes (mentions, DMs), then publishes `chat.user.<user>.unread` and
//!   `chat.user.<user>.notify`;
//! - [`core`]: `chat.internal.notify.state` (what `hello` lists) and `chat.internal.notify.read`
//!   (a `read` frame), plus invites seen on membership events;
//! - [`webhook`]: signed POSTs to a push gateway for users with no live session;
//! - [`mention`]: the mention rules; [`store`]: the tables (schema `notify`).

pub mod config;
pub mod consumer;
pub mod core;
pub mod members;
pub mod mention;
pub mod metrics_catalogue;
pub mod store;
pub mod webhook;

use std::net::SocketAddr;

use async_nats::jetstream;
use chat_bus::api::MembershipChange;
use chat_bus::{rpc, subjects};
use chat_runtime::metrics::Metric;
use chat_runtime::nats::Serve as _;
use chat_runtime::service::{self, Admin, Base, Service};
use chat_runtime::{ConfigError, Env, db, retry};
use futures::StreamExt;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use config::{DEFAULT_ADMIN_LISTEN, NotifyConfig, WebhookConfig};

/// Schema of chat-notify's tables.
pub const SCHEMA: &str = "notify";

// The migrations of `migrations/`, compiled in, and the test that holds this list to the folder.
chat_runtime::embedded_migrations! {
    MIGRATOR:
    (1, "init", "0001_init.sql"),
    (2, "webhook outbox", "0002_webhook_outbox.sql"),
    (4, "reply notifications", "0004_reply_notifications.sql"),
}

/// A started chat-notify, ready to [`run`](App::run).
pub struct App {
    config: NotifyConfig,
    nats: async_nats::Client,
    pool: PgPool,
    stream: jetstream::stream::Stream,
    admin: Admin,
}

impl Service for App {
    const NAME: &'static str = "chat-notify";
    const METRICS: &'static [Metric] = metrics_catalogue::CATALOGUE;
    type Config = NotifyConfig;

    fn config(env: &Env) -> Result<NotifyConfig, ConfigError> {
        NotifyConfig::from_env(env)
    }

    async fn build(config: NotifyConfig, shutdown: &CancellationToken) -> anyhow::Result<App> {
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
    pub async fn build(config: NotifyConfig, shutdown: &CancellationToken) -> anyhow::Result<App> {
        let Base { admin, nats, js } =
            Base::start::<App>(config.admin_listen, &config.nats).await?;
        let (stream, epoch) = service::chat_stream(&js, &config.stream, shutdown).await?;
        let pool = db::migrated(&config.database_url, SCHEMA, 8, &MIGRATOR, shutdown).await?;
        let reset = retry::at_start("check the stream epoch", shutdown, || {
            store::ensure_epoch(&pool, &epoch)
        })
        .await?;
        if reset {
            tracing::warn!(
                epoch,
                "the CHAT stream was recreated: read markers and notifications reset"
            );
        }
        tracing::info!(epoch, "chat-notify started");
        Ok(App {
            config,
            nats,
            pool,
            stream,
            admin,
        })
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.addr()
    }

    /// Serves until `shutdown`, then drains: stops taking requests and events, finishes those in
    /// hand, and acknowledges only what was committed.
    pub async fn run(self, shutdown: CancellationToken) {
        let admin = tokio::spawn(
            self.admin
                .serve(vec![db::ready(self.pool.clone())], shutdown.clone()),
        );
        tokio::spawn(chat_runtime::metrics::track_consumer_lag(
            self.stream.clone(),
            subjects::NOTIFY_CONSUMER,
            chat_runtime::metrics::LAG_EVERY,
            shutdown.clone(),
        ));

        let (webhooks, webhook_task) = match self.config.webhook.clone() {
            Some(w) => {
                let (w, task) = webhook::Webhooks::start(
                    w,
                    self.nats.clone(),
                    self.pool.clone(),
                    shutdown.clone(),
                );
                (Some(w), Some(task))
            }
            None => (None, None),
        };
        let core = core::Core::new(
            self.pool.clone(),
            self.nats.clone(),
            self.stream.clone(),
            webhooks,
            self.config.clone(),
        );

        let c = core.clone();
        let state_server = rpc::NotifyStateEndpoint::serve(
            self.nats.clone(),
            self.config.nats.serve,
            shutdown.clone(),
            move |req| {
                let core = c.clone();
                async move { core.state(req).await }
            },
        );
        let c = core.clone();
        let read_server = rpc::Read::serve(
            self.nats.clone(),
            self.config.nats.serve,
            shutdown.clone(),
            move |req| {
                let core = c.clone();
                async move { core.read(req).await }
            },
        );

        let (s, r, (), ()) = tokio::join!(
            state_server,
            read_server,
            membership(core.clone(), shutdown.clone()),
            consumer::run(core, shutdown.clone()),
        );
        for res in [s, r] {
            if let Err(e) = res {
                tracing::error!(error = %e, "request server failed");
            }
        }
        if let Some(task) = webhook_task {
            let _ = task.await;
        }
        let _ = admin.await;
        chat_runtime::nats::flush_within(&self.nats).await;
        self.pool.close().await;
    }
}

/// Listens to membership changes: every instance drops stale member lists (plain subscription);
/// one instance of the queue group makes the invite notification.
async fn membership(core: core::Core, shutdown: CancellationToken) {
    let subscribed = retry::until_ok("subscribe to membership changes", &shutdown, || async {
        let all = core.nats.subscribe(subjects::USER_MEMBERSHIP_ALL).await?;
        let queued = core
            .nats
            .queue_subscribe(
                subjects::USER_MEMBERSHIP_ALL,
                subjects::NOTIFY_QUEUE.to_owned(),
            )
            .await?;
        Ok::<_, async_nats::Error>((all, queued))
    })
    .await;
    let Some((mut all, mut queued)) = subscribed else {
        return;
    };
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(msg) = all.next() => {
                if let Ok(change) = serde_json::from_slice::<MembershipChange>(&msg.payload) {
                    core.members.invalidate(&change.room);
                }
            }
            Some(msg) = queued.next() => {
                if let Ok(change) = serde_json::from_slice::<MembershipChange>(&msg.payload) {
                    let core = core.clone();
                    tasks.spawn(async move { core.membership(change).await });
                }
            }
            else => break,
        }
    }
    tasks.close();
    tasks.wait().await;
}
