//! chat-notify's configuration (protocol.md#ops plus its own tuning variables).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chat_bus::stream::StreamSettings;
use chat_runtime::nats::NatsConfig;
use chat_runtime::{ConfigError, Env};

/// Default admin address of chat-notify.
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:9104";

#[derive(Debug, Clone)]
pub struct NotifyConfig {
    pub nats: NatsConfig,
    /// `DATABASE_URL`; tables live in the `notify` schema.
    pub database_url: String,
    /// `ADMIN_LISTEN`: /healthz, /readyz, /metrics.
    pub admin_listen: SocketAddr,
    pub stream: StreamSettings,
    /// `NOTIFY_BATCH_MAX`: most events per transaction.
    pub batch_max: usize,
    /// `NOTIFY_BATCH_WAIT` (50ms): longest a partial batch waits for more events; as chat-history's
    /// `HISTORY_BATCH_WAIT`, a larger batch spreads each transaction's fixed cost (a mention's
    /// notification may wait that much longer).
    pub batch_wait: Duration,
    /// `NOTIFY_ACK_WAIT`: how long an event handed to a process that died waits before it is
    /// delivered again (set when the durable consumer is created).
    pub ack_wait: Duration,
    /// `CHAT_REQUEST_TIMEOUT`: how long to wait for chat-history (room members).
    pub request_timeout: Duration,
    /// `NOTIFY_MEMBERS_TTL`: how long a room's member list is trusted without a membership event.
    pub members_ttl: Duration,
    /// `NOTIFY_MEMBERS_CACHE_MAX` (10000): most rooms whose members are cached.
    pub members_cache_max: usize,
    /// `NOTIFY_STATE_CATCH_UP`: how long a state request (an edge building `hello`) waits for the
    /// consumer to reach the rooms' last events, so that counts are exact after an outage.
    pub state_catch_up: Duration,
    pub webhook: Option<WebhookConfig>,
}

/// Where notifications of users with no live session are POSTed.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// `NOTIFY_WEBHOOK_URL`: an `https://` URL (rustls, the system-independent Mozilla roots
    /// plus `NOTIFY_WEBHOOK_CA`), or `http://` for a gateway on a trusted network.
    pub url: String,
    /// `NOTIFY_WEBHOOK_SECRET`: key of the HMAC-SHA256 signature; required with a URL (an empty
    /// key makes signatures anyone can forge).
    pub secret: String,
    /// `NOTIFY_WEBHOOK_CA`: a PEM file of extra CA certificates to trust for `https://` (a
    /// private CA); read at start.
    pub ca: Option<PathBuf>,
    /// `NOTIFY_WEBHOOK_TIMEOUT`: one attempt, connect to status line.
    pub timeout: Duration,
    /// `NOTIFY_WEBHOOK_RETRY_MIN`: the first backoff (doubling, with full jitter).
    pub retry_min: Duration,
    /// `NOTIFY_WEBHOOK_RETRY_MAX`: the longest backoff.
    pub retry_max: Duration,
    /// `NOTIFY_WEBHOOK_GIVE_UP`: how long one notification is retried before it is dropped.
    pub give_up: Duration,
    /// `NOTIFY_PRESENCE_TIMEOUT`: how long to wait for chat-presence; no answer means offline.
    pub presence_timeout: Duration,
}

impl NotifyConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let webhook = match env.get("NOTIFY_WEBHOOK_URL") {
            None => None,
            Some(url) => {
                if chat_runtime::webhook::Target::parse(url).is_none() {
                    return Err(ConfigError {
                        key: "NOTIFY_WEBHOOK_URL".into(),
                        value: url.into(),
                        problem: "expected https://host[:port][/path] or http://…".into(),
                    });
                }
                let Some(secret) = env.get("NOTIFY_WEBHOOK_SECRET") else {
                    return Err(ConfigError {
                        key: "NOTIFY_WEBHOOK_SECRET".into(),
                        value: String::new(),
                        problem: "required when NOTIFY_WEBHOOK_URL is set: without it anyone \
                                  could forge the webhook signatures (use 32 random bytes)"
                            .into(),
                    });
                };
                let ca = env.get("NOTIFY_WEBHOOK_CA").map(PathBuf::from);
                if let Some(ca) = &ca
                    && let Err(e) = chat_runtime::tls::client_config(Some(ca))
                {
                    return Err(ConfigError {
                        key: "NOTIFY_WEBHOOK_CA".into(),
                        value: ca.display().to_string(),
                        problem: e,
                    });
                }
                Some(WebhookConfig {
                    url: url.to_owned(),
                    secret: secret.to_owned(),
                    ca,
                    timeout: env.duration("NOTIFY_WEBHOOK_TIMEOUT", Duration::from_secs(5))?,
                    retry_min: env
                        .duration("NOTIFY_WEBHOOK_RETRY_MIN", Duration::from_millis(500))?,
                    retry_max: env.duration("NOTIFY_WEBHOOK_RETRY_MAX", Duration::from_secs(60))?,
                    give_up: env.duration("NOTIFY_WEBHOOK_GIVE_UP", Duration::from_secs(600))?,
                    presence_timeout: env
                        .duration("NOTIFY_PRESENCE_TIMEOUT", Duration::from_millis(500))?,
                })
            }
        };
        Ok(NotifyConfig {
            nats: NatsConfig::from_env(env)?,
            database_url: env.string("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/chat"),
            admin_listen: env.addr("ADMIN_LISTEN", DEFAULT_ADMIN_LISTEN)?,
            stream: env.stream_settings()?,
            batch_max: env.parse("NOTIFY_BATCH_MAX", 500)?,
            batch_wait: env.duration("NOTIFY_BATCH_WAIT", Duration::from_millis(50))?,
            ack_wait: env.duration("NOTIFY_ACK_WAIT", Duration::from_secs(30))?,
            request_timeout: env.duration("CHAT_REQUEST_TIMEOUT", Duration::from_secs(5))?,
            members_ttl: env.duration("NOTIFY_MEMBERS_TTL", Duration::from_secs(60))?,
            members_cache_max: env.parse("NOTIFY_MEMBERS_CACHE_MAX", 10_000)?,
            state_catch_up: env.duration("NOTIFY_STATE_CATCH_UP", Duration::from_millis(1500))?,
            webhook,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_webhook() {
        let c = NotifyConfig::from_env(&Env::default()).unwrap();
        assert!(c.webhook.is_none());
        assert_eq!(c.batch_max, 500);
        let env = Env::from_pairs([
            ("NOTIFY_WEBHOOK_URL", "http://127.0.0.1:9/hook"),
            ("NOTIFY_WEBHOOK_SECRET", "s"),
        ]);
        let c = NotifyConfig::from_env(&env).unwrap();
        assert_eq!(c.webhook.unwrap().secret, "s");
        let env = Env::from_pairs([("NOTIFY_WEBHOOK_URL", "ftp://example.com/hook")]);
        let err = NotifyConfig::from_env(&env).unwrap_err();
        assert!(err.to_string().contains("NOTIFY_WEBHOOK_URL"));
    }

    /// Issue 15 item 11: a webhook without a secret is refused at start (it used to default to
    /// the empty key, so anyone could forge a signature).
    #[test]
    fn a_webhook_needs_a_secret() {
        for secret in [None, Some(""), Some("   ")] {
            let mut env = Env::from_pairs([("NOTIFY_WEBHOOK_URL", "https://gw.example/hook")]);
            if let Some(s) = secret {
                env = env.with("NOTIFY_WEBHOOK_SECRET", s);
            }
            let err = NotifyConfig::from_env(&env).unwrap_err().to_string();
            assert!(err.contains("NOTIFY_WEBHOOK_SECRET"), "{err}");
            assert!(err.contains("required"), "{err}");
        }
        let env = Env::from_pairs([
            ("NOTIFY_WEBHOOK_URL", "https://gw.example/hook"),
            ("NOTIFY_WEBHOOK_SECRET", "k"),
            ("NOTIFY_WEBHOOK_CA", "/nonexistent/ca.pem"),
        ]);
        let err = NotifyConfig::from_env(&env).unwrap_err().to_string();
        assert!(err.contains("NOTIFY_WEBHOOK_CA"), "{err}");
        let env = env.with("NOTIFY_WEBHOOK_CA", "");
        let c = NotifyConfig::from_env(&env).unwrap().webhook.unwrap();
        assert!(c.url.starts_with("https://") && c.ca.is_none());
    }
}
