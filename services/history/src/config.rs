//! chat-history's configuration (protocol.md#ops plus its own tuning variables).

use std::net::SocketAddr;
use std::time::Duration;

use chat_bus::stream::StreamSettings;
use chat_runtime::nats::NatsConfig;
use chat_runtime::{ConfigError, Env};

/// Default admin address of chat-history.
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:9102";

#[derive(Debug, Clone)]
pub struct HistoryConfig {
    pub nats: NatsConfig,
    /// `DATABASE_URL`; tables live in the `history` schema.
    pub database_url: String,
    /// `ADMIN_LISTEN`: /healthz, /readyz, /metrics.
    pub admin_listen: SocketAddr,
    pub stream: StreamSettings,
    /// `HISTORY_BATCH_MAX`: most rows per archive transaction.
    pub batch_max: usize,
    /// `HISTORY_BATCH_WAIT` (50ms): longest a partial batch waits for more events. Each
    /// transaction costs PostgreSQL and this service a fixed ~0.5 ms of CPU whatever its size;
    /// at 5 ms a writer's batches held ~2 events at 500 msgs/s, and that CPU, on the core the
    /// edge shares, was most of the delivery latency (docs/benchmarks.md "Batch wait").
    pub batch_wait: Duration,
    /// `HISTORY_MAX_DELIVER`: deliveries of one event before it is dead-lettered.
    pub max_deliver: u64,
    /// `HISTORY_ACK_WAIT` (10s): how long an event handed to a writer that died waits before it
    /// is redelivered to another. A writer still retrying extends it with progress acks.
    pub ack_wait: Duration,
    /// `HISTORY_WRITERS` (4): concurrent writer loops in this process.
    pub writers: usize,
    /// `CHAT_MAX_ROOMS_PER_USER` (1000): rooms one user may be a member of (protocol.md#ws v1.1
    /// Quotas); a further join, create, open_dm or invite of that user gets `limit_exceeded`.
    pub max_rooms_per_user: u64,
    /// `HISTORY_ARCHIVE` (true): run the archive writer. Off, the process only answers requests
    /// (history pages, rooms), so readers and writers can be scaled separately.
    pub archive: bool,
    /// `HISTORY_PAGE_MAX_BYTES` (196608): most bytes of serialized events in one history page;
    /// a longer page is cut (`has_more` true) so that its frame always fits (protocol.md#ws-limits).
    pub page_max_bytes: usize,
    /// `HISTORY_SEARCH_WINDOW` (8000): most rows of the searched rooms a search reads newest first
    /// before it asks the text index (crate::search; tests make it small to reach the index with
    /// a few messages).
    pub search_window: i64,
    /// `HISTORY_SEARCH_ROOM_TERMS_FACTOR` (10): the text index is asked for the terms in the
    /// user's rooms unless the terms alone are estimated to match fewer than 1 / this of those
    /// rooms' messages, which are then checked on each match instead (crate::search; 0: always
    /// checked so, as tests do to reach that way).
    pub search_room_terms_factor: u32,
    /// `CHAT_INTEGRATION_BOTS` (`credential=bot,bot;…`): the bot identities each integration
    /// account may post as (crate::intake; docs/deploy.md *Integrations and scopes*).
    pub integration_bots: crate::intake::IntegrationBots,
    /// Integration webhooks (`CHAT_INTEGRATION_WEBHOOK*`, [`crate::integration`]).
    pub integration: crate::integration::IntegrationConfig,
}

impl HistoryConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(HistoryConfig {
            nats: NatsConfig::from_env(env)?,
            database_url: env.string("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/chat"),
            admin_listen: env.addr("ADMIN_LISTEN", DEFAULT_ADMIN_LISTEN)?,
            stream: env.stream_settings()?,
            batch_max: env.parse("HISTORY_BATCH_MAX", 1000)?,
            batch_wait: env.duration("HISTORY_BATCH_WAIT", Duration::from_millis(50))?,
            max_deliver: env.parse("HISTORY_MAX_DELIVER", 10)?,
            archive: env.bool("HISTORY_ARCHIVE", true)?,
            max_rooms_per_user: env.parse("CHAT_MAX_ROOMS_PER_USER", 1000)?,
            writers: env.parse("HISTORY_WRITERS", 4)?,
            page_max_bytes: env
                .parse(
                    "HISTORY_PAGE_MAX_BYTES",
                    crate::query::DEFAULT_PAGE_MAX_BYTES,
                )?
                .clamp(64 * 1024, 1024 * 1024),
            search_window: env
                .parse("HISTORY_SEARCH_WINDOW", crate::search::DEFAULT_WINDOW)?
                .clamp(1, 100_000),
            search_room_terms_factor: env.parse(
                "HISTORY_SEARCH_ROOM_TERMS_FACTOR",
                crate::search::DEFAULT_ROOM_TERMS_FACTOR,
            )?,
            integration_bots: crate::intake::IntegrationBots::parse(
                env.get("CHAT_INTEGRATION_BOTS").unwrap_or(""),
            )
            .map_err(|problem| chat_runtime::ConfigError {
                key: "CHAT_INTEGRATION_BOTS".into(),
                value: env.string("CHAT_INTEGRATION_BOTS", ""),
                problem,
            })?,
            ack_wait: env
                .duration("HISTORY_ACK_WAIT", Duration::from_secs(10))?
                .max(Duration::from_secs(1)),
            integration: crate::integration::IntegrationConfig::from_env(env)?,
        })
    }
}
