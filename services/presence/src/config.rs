//! chat-presence's configuration (protocol.md#ops plus its own tuning variables).

use std::net::SocketAddr;
use std::time::Duration;

use chat_runtime::nats::NatsConfig;
use chat_runtime::{ConfigError, Env};

/// Default admin address of chat-presence.
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:9103";

#[derive(Debug, Clone)]
pub struct PresenceConfig {
    pub nats: NatsConfig,
    /// `ADMIN_LISTEN`: /healthz, /readyz, /metrics.
    pub admin_listen: SocketAddr,
    /// `CHAT_HEARTBEAT_MS` (5000): the edges' heartbeat, used for edges not heard from yet (each
    /// heartbeat carries its edge's own period) and to pace the sweeper.
    pub heartbeat: Duration,
    /// `PRESENCE_MAX_ROOM_FANOUT` (1000): rooms with more members get no presence broadcasts;
    /// their members ask (`presence{room}`, `chat.api.presence`) instead.
    pub max_room_fanout: usize,
    /// `CHAT_REQUEST_TIMEOUT` (5s): requests to chat-history.
    pub request_timeout: Duration,
    /// `PRESENCE_KV_REPLICAS` (1): replicas of the KV buckets when they are created.
    pub kv_replicas: usize,
    /// `PRESENCE_WORKERS` (64): events of different users handled at once per instance (one
    /// user's events are handled in order).
    pub workers: usize,
}

impl PresenceConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(PresenceConfig {
            nats: NatsConfig::from_env(env)?,
            admin_listen: env.addr("ADMIN_LISTEN", DEFAULT_ADMIN_LISTEN)?,
            heartbeat: Duration::from_millis(env.parse("CHAT_HEARTBEAT_MS", 5000u64)?.max(100)),
            max_room_fanout: env.parse("PRESENCE_MAX_ROOM_FANOUT", 1000usize)?,
            request_timeout: env.duration("CHAT_REQUEST_TIMEOUT", Duration::from_secs(5))?,
            kv_replicas: env.parse("PRESENCE_KV_REPLICAS", 1usize)?.clamp(1, 5),
            workers: env.parse("PRESENCE_WORKERS", 64usize)?.max(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = PresenceConfig::from_env(&Env::default()).unwrap();
        assert_eq!(c.heartbeat, Duration::from_millis(5000));
        assert_eq!(c.max_room_fanout, 1000);
        assert_eq!(c.admin_listen.port(), 9103);
        let c = PresenceConfig::from_env(&Env::from_pairs([("CHAT_HEARTBEAT_MS", "300")])).unwrap();
        assert_eq!(c.heartbeat, Duration::from_millis(300));
    }
}
