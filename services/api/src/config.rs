//! chat-api's configuration (protocol.md#ops plus its own variables).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chat_bus::event::MAX_EVENT_BODY_CHARS;
use chat_bus::stream::StreamSettings;
use chat_runtime::nats::NatsConfig;
use chat_runtime::{ConfigError, Env};

/// Default address of the HTTP API (a listener of its own, firewalled apart from the edge's
/// `/ws`).
pub const DEFAULT_API_ADDR: &str = "0.0.0.0:8090";
/// Default admin address of chat-api.
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:9105";

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub nats: NatsConfig,
    /// `CHAT_API_ADDR`: the HTTP API.
    pub listen: SocketAddr,
    /// `ADMIN_LISTEN`: /healthz, /readyz, /metrics.
    pub admin_listen: SocketAddr,
    /// `CHAT_STREAM_MAX_AGE`: the `CHAT` stream's deduplication window follows from it.
    pub stream: StreamSettings,
    /// `CHAT_MAX_BODY` (4000) in characters: as the edge's.
    pub max_body: usize,
    /// `CHAT_MAX_FRAME` (65536) in bytes: the largest request body (as the edge's largest frame).
    pub max_request: usize,
    /// `CHAT_REQUEST_TIMEOUT` (5s): each NATS request and publish.
    pub request_timeout: Duration,
    /// `CHAT_API_RATE_PER_KEY` (100): requests per second one key may make (burst as many);
    /// beyond, `429 rate_limited`.
    pub rate_per_key: u32,
    /// `CHAT_API_MEMBERSHIP_TTL` (1s): how long a bot's rooms are trusted before asked again.
    pub membership_ttl: Duration,
    /// `CHAT_API_KEYS_FILE`: a JSON array of key records loaded at start, besides the bucket
    /// (bootstrap; revoked by editing the file and restarting).
    pub keys_file: Option<PathBuf>,
    /// `CHAT_API_KV_REPLICAS` (`CHAT_STREAM_REPLICAS`, as chatctl): replicas of the key bucket
    /// when chat-api creates it.
    pub kv_replicas: usize,
}

impl ApiConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let max_body = env.parse("CHAT_MAX_BODY", 4000usize)?;
        if max_body == 0 || max_body > MAX_EVENT_BODY_CHARS {
            return Err(ConfigError {
                key: "CHAT_MAX_BODY".into(),
                value: max_body.to_string(),
                problem: format!("must be 1..={MAX_EVENT_BODY_CHARS} characters"),
            });
        }
        let stream = env.stream_settings()?;
        Ok(ApiConfig {
            nats: NatsConfig::from_env(env)?,
            listen: env.addr("CHAT_API_ADDR", DEFAULT_API_ADDR)?,
            admin_listen: env.addr("ADMIN_LISTEN", DEFAULT_ADMIN_LISTEN)?,
            kv_replicas: env
                .parse("CHAT_API_KV_REPLICAS", stream.replicas)?
                .clamp(1, 5),
            stream,
            max_body,
            max_request: env.parse("CHAT_MAX_FRAME", 65_536usize)?.max(1024),
            request_timeout: env.duration("CHAT_REQUEST_TIMEOUT", Duration::from_secs(5))?,
            rate_per_key: env.parse("CHAT_API_RATE_PER_KEY", 100u32)?.max(1),
            membership_ttl: env.duration("CHAT_API_MEMBERSHIP_TTL", Duration::from_secs(1))?,
            keys_file: env
                .get("CHAT_API_KEYS_FILE")
                .filter(|f| !f.is_empty())
                .map(PathBuf::from),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_limits() {
        let c = ApiConfig::from_env(&Env::default()).unwrap();
        assert_eq!(c.listen.port(), 8090);
        assert_eq!(c.admin_listen.port(), 9105);
        assert_eq!(
            (c.max_body, c.max_request, c.rate_per_key),
            (4000, 65_536, 100)
        );
        assert!(c.keys_file.is_none());
        let err = ApiConfig::from_env(&Env::from_pairs([("CHAT_MAX_BODY", "0")])).unwrap_err();
        assert!(err.to_string().contains("CHAT_MAX_BODY"));
    }
}
