//! chat-edge's configuration (protocol.md#ops).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chat_bus::event::MAX_EVENT_BODY_CHARS;
use chat_bus::stream::StreamSettings;
use chat_runtime::nats::NatsConfig;
use chat_runtime::{ConfigError, Env};

/// Default admin address of chat-edge.
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:9101";
/// Shortest `CHAT_JWT_SECRET` accepted outside development (protocol.md#ops): HS256 with a
/// shorter key is open to offline guessing.
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, Clone)]
pub struct EdgeConfig {
    pub nats: NatsConfig,
    /// `EDGE_LISTEN`: where clients connect.
    pub listen: SocketAddr,
    /// `ADMIN_LISTEN`.
    pub admin_listen: SocketAddr,
    /// `EDGE_TLS_CERT` + `EDGE_TLS_KEY`: PEM certificate chain and key; when set, clients
    /// connect with `wss://` to `EDGE_LISTEN` (plain `ws://` is no longer served there).
    pub tls: Option<TlsFiles>,
    /// `CHAT_JWT_SECRET`: HS256 shared secret, at least [`MIN_SECRET_BYTES`] long. `None` when
    /// only a JWKS is configured: then HS256 tokens are refused. With neither and
    /// `CHAT_DEV_LOGIN=true`, a random secret of this process ([`JwtSecret::Ephemeral`]).
    pub jwt_secret: Option<JwtSecret>,
    /// `CHAT_JWT_JWKS`: the provider's key set (a file path or an https:// URL).
    pub jwt_jwks: Option<String>,
    /// `CHAT_JWT_JWKS_CA`: extra CA (PEM) trusted for an https JWKS URL (a private provider).
    pub jwt_jwks_ca: Option<PathBuf>,
    /// `CHAT_JWT_ISSUER`: required `iss` when set.
    pub jwt_issuer: Option<String>,
    /// `CHAT_JWT_AUDIENCE`: required `aud` when set.
    pub jwt_audience: Option<String>,
    /// `CHAT_ALLOWED_ORIGINS`: exact origins; empty means "same host as the request".
    pub allowed_origins: Vec<String>,
    /// `CHAT_MAX_BODY` in characters.
    pub max_body: usize,
    /// `CHAT_MAX_FRAME` in bytes.
    pub max_frame: usize,
    /// `CHAT_RATE_PER_S`: sustained client frames per second per connection (and the burst).
    pub rate_per_s: u32,
    /// `CHAT_HEARTBEAT_MS`: WebSocket pings and presence heartbeats.
    pub heartbeat: Duration,
    /// `CHAT_OUTBOUND_QUEUE`: frames a connection may have waiting before it is closed with 4008.
    pub outbound_queue: usize,
    /// `CHAT_AUTH_TIMEOUT`: time to send the `auth` frame.
    pub auth_timeout: Duration,
    /// `CHAT_DRAIN_GRACE`: how long a drain waits for sockets to close.
    pub drain_grace: Duration,
    /// `CHAT_REQUEST_TIMEOUT`: how long the edge waits for a service.
    pub request_timeout: Duration,
    /// `CHAT_MEMBERSHIP_RECONCILE` (60s): how often a session compares its rooms with those
    /// chat-history stores, so that a lost membership announcement is repaired within it
    /// (rounded up to whole heartbeats).
    pub membership_reconcile: Duration,
    /// `CHAT_DEV_LOGIN`: serve `POST /dev/token` (development only).
    pub dev_login: bool,
    /// `CHAT_WEB_DIR`: static web client served at `/`.
    pub web_dir: PathBuf,
    /// `CHAT_WS_BUFFER`: read/write buffer per socket in bytes (small keeps idle sockets cheap).
    pub ws_buffer: usize,
    pub stream: StreamSettings,
    /// `CHAT_ADMISSION_PER_S`: new connections accepted per second (burst the same); a reconnect
    /// storm beyond it gets 503 with Retry-After instead of overloading the edge and NATS.
    pub admission_per_s: u32,
    /// `CHAT_HEADER_TIMEOUT`: time for a client to send its upgrade request's headers.
    pub header_timeout: Duration,
    /// `CHAT_MAX_CONNECTIONS`: authenticated connections at most; more get 503 (or, when they
    /// authenticate with a frame, `unavailable` and close 1013).
    pub max_connections: usize,
    /// `CHAT_MAX_UNAUTHENTICATED`: connections not yet authenticated at most (they count apart
    /// from `CHAT_MAX_CONNECTIONS`); more get 503.
    pub max_unauthenticated: usize,
    /// `CHAT_ADMISSION_PER_IP_PER_S`: new connections per second from one client address (an
    /// IPv6 /64 is one address), burst the same; beyond: 503 with Retry-After. 0: off (behind
    /// a proxy every client has the proxy's address).
    pub admission_per_ip_per_s: u32,
    /// `CHAT_MAX_SESSIONS_PER_USER` (protocol.md#ws-limits): open sessions of one user on this
    /// edge; beyond: HTTP 429, or `limit_exceeded` and close 4029 after the `auth` frame.
    pub max_sessions_per_user: usize,
}

/// The HS256 secret and where it came from.
#[derive(Clone)]
pub enum JwtSecret {
    /// `CHAT_JWT_SECRET`.
    Configured(String),
    /// Neither `CHAT_JWT_SECRET` nor `CHAT_JWT_JWKS` with `CHAT_DEV_LOGIN=true`: random, of this
    /// process only (development tokens stop working when the edge restarts). Never a built-in
    /// value: one known to everyone let anyone sign tokens for any user (issue 15 item 5).
    Ephemeral(String),
}

impl JwtSecret {
    pub fn as_str(&self) -> &str {
        match self {
            JwtSecret::Configured(s) | JwtSecret::Ephemeral(s) => s,
        }
    }
}

impl std::fmt::Debug for JwtSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the value: configs are logged.
        match self {
            JwtSecret::Configured(_) => f.write_str("Configured(..)"),
            JwtSecret::Ephemeral(_) => f.write_str("Ephemeral(..)"),
        }
    }
}

/// The HS256 secret of the configuration, or why chat-edge must not start (protocol.md#ops).
fn jwt_secret(
    secret: Option<&str>,
    has_jwks: bool,
    dev_login: bool,
) -> Result<Option<JwtSecret>, ConfigError> {
    match secret {
        Some(s) if s.len() < MIN_SECRET_BYTES && !dev_login => Err(ConfigError {
            key: "CHAT_JWT_SECRET".into(),
            // Not echoed: it is a secret.
            value: "…".into(),
            problem: format!(
                "is {} bytes long; at least {MIN_SECRET_BYTES} are required \
                 (a shorter one only with CHAT_DEV_LOGIN=true)",
                s.len()
            ),
        }),
        Some(s) => Ok(Some(JwtSecret::Configured(s.to_owned()))),
        None if has_jwks => Ok(None),
        None if dev_login => {
            let bytes: [u8; 32] = rand::random();
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            Ok(Some(JwtSecret::Ephemeral(hex)))
        }
        None => Err(ConfigError {
            key: "CHAT_JWT_SECRET".into(),
            value: String::new(),
            problem: "neither CHAT_JWT_SECRET nor CHAT_JWT_JWKS is set, so no token could be \
                      verified: set CHAT_JWT_SECRET (at least 32 bytes) or CHAT_JWT_JWKS \
                      (CHAT_DEV_LOGIN=true runs with a random development secret instead)"
                .into(),
        }),
    }
}

/// The certificate and key chat-edge serves `wss://` with.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    fn from_env(env: &Env) -> Result<Option<Self>, ConfigError> {
        match (env.get("EDGE_TLS_CERT"), env.get("EDGE_TLS_KEY")) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert: PathBuf::from(cert),
                key: PathBuf::from(key),
            })),
            (Some(cert), None) => Err(ConfigError {
                key: "EDGE_TLS_KEY".into(),
                value: String::new(),
                problem: format!("EDGE_TLS_CERT={cert} needs EDGE_TLS_KEY as well"),
            }),
            (None, Some(key)) => Err(ConfigError {
                key: "EDGE_TLS_CERT".into(),
                value: String::new(),
                problem: format!("EDGE_TLS_KEY={key} needs EDGE_TLS_CERT as well"),
            }),
        }
    }
}

impl EdgeConfig {
    /// The client limits, as announced in `hello` and enforced per frame.
    pub fn limits(&self) -> chat_proto::Limits {
        chat_proto::Limits {
            max_body: self.max_body,
            max_frame: self.max_frame,
            rate_per_s: self.rate_per_s,
        }
    }

    /// `membership_reconcile` in heartbeat ticks (at least 1).
    pub fn reconcile_ticks(&self) -> u32 {
        let ticks = self
            .membership_reconcile
            .as_millis()
            .div_ceil(self.heartbeat.as_millis().max(1));
        ticks.clamp(1, u32::MAX as u128) as u32
    }

    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let opt = |k: &str| env.get(k).map(str::to_owned);
        let dev_login = env.bool("CHAT_DEV_LOGIN", false)?;
        let jwt_secret = jwt_secret(
            env.get("CHAT_JWT_SECRET"),
            env.get("CHAT_JWT_JWKS").is_some(),
            dev_login,
        )?;
        let max_body = env.parse("CHAT_MAX_BODY", 4000usize)?;
        if max_body == 0 || max_body > MAX_EVENT_BODY_CHARS {
            // A larger body would be published but not be a valid event: dead-lettered, never
            // delivered (protocol.md#nats), with an `ack` already sent. Refused at start.
            return Err(ConfigError {
                key: "CHAT_MAX_BODY".into(),
                value: max_body.to_string(),
                problem: format!(
                    "must be 1..={MAX_EVENT_BODY_CHARS} characters (the longest body an event \
                     may carry, chat_bus::event::MAX_EVENT_BODY_CHARS)"
                ),
            });
        }
        Ok(EdgeConfig {
            nats: NatsConfig::from_env(env)?,
            listen: env.addr("EDGE_LISTEN", "0.0.0.0:8080")?,
            admin_listen: env.addr("ADMIN_LISTEN", DEFAULT_ADMIN_LISTEN)?,
            tls: TlsFiles::from_env(env)?,
            jwt_secret,
            jwt_jwks: opt("CHAT_JWT_JWKS"),
            jwt_jwks_ca: env.get("CHAT_JWT_JWKS_CA").map(PathBuf::from),
            jwt_issuer: opt("CHAT_JWT_ISSUER"),
            jwt_audience: opt("CHAT_JWT_AUDIENCE"),
            allowed_origins: env.list("CHAT_ALLOWED_ORIGINS"),
            max_body,
            max_frame: env.parse("CHAT_MAX_FRAME", 65_536)?,
            rate_per_s: env.parse("CHAT_RATE_PER_S", 100)?,
            heartbeat: Duration::from_millis(env.parse("CHAT_HEARTBEAT_MS", 5000u64)?.max(100)),
            outbound_queue: env.parse("CHAT_OUTBOUND_QUEUE", 1024usize)?.max(16),
            auth_timeout: env.duration("CHAT_AUTH_TIMEOUT", Duration::from_secs(10))?,
            drain_grace: env.duration("CHAT_DRAIN_GRACE", Duration::from_secs(20))?,
            request_timeout: env.duration("CHAT_REQUEST_TIMEOUT", Duration::from_secs(5))?,
            membership_reconcile: env
                .duration("CHAT_MEMBERSHIP_RECONCILE", Duration::from_secs(60))?,
            dev_login,
            web_dir: PathBuf::from(env.string("CHAT_WEB_DIR", "clients/web")),
            ws_buffer: env.parse("CHAT_WS_BUFFER", 1024usize)?.max(256),
            stream: env.stream_settings()?,
            admission_per_s: env.parse("CHAT_ADMISSION_PER_S", 1000)?,
            max_connections: env.parse("CHAT_MAX_CONNECTIONS", 100_000)?,
            max_unauthenticated: env.parse("CHAT_MAX_UNAUTHENTICATED", 1000)?,
            admission_per_ip_per_s: env.parse("CHAT_ADMISSION_PER_IP_PER_S", 100)?,
            max_sessions_per_user: env.parse("CHAT_MAX_SESSIONS_PER_USER", 20)?,
            header_timeout: env.duration("CHAT_HEADER_TIMEOUT", Duration::from_secs(10))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn refuses_to_start_without_a_secret_or_jwks_or_with_a_short_secret() {
        // protocol.md#ops; issue 15 item 5 (a built-in secret let anyone forge tokens).
        let err = EdgeConfig::from_env(&Env::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CHAT_JWT_SECRET") && err.contains("CHAT_JWT_JWKS"),
            "{err}"
        );
        let short = "x".repeat(MIN_SECRET_BYTES - 1);
        let err = EdgeConfig::from_env(&Env::from_pairs([("CHAT_JWT_SECRET", short.as_str())]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("31 bytes") && !err.contains(&short), "{err}");
        // With CHAT_DEV_LOGIN=true: a random secret of this process, or a short one as given.
        let dev = Env::from_pairs([("CHAT_DEV_LOGIN", "true")]);
        let (a, b) = (
            EdgeConfig::from_env(&dev).unwrap().jwt_secret.unwrap(),
            EdgeConfig::from_env(&dev).unwrap().jwt_secret.unwrap(),
        );
        assert!(matches!(a, JwtSecret::Ephemeral(_)));
        assert_ne!(a.as_str(), b.as_str(), "never a fixed value");
        assert!(a.as_str().len() >= MIN_SECRET_BYTES);
        let dev_short = dev.clone().with("CHAT_JWT_SECRET", "short");
        let c = EdgeConfig::from_env(&dev_short).unwrap();
        assert_eq!(c.jwt_secret.unwrap().as_str(), "short");
        assert!(!format!("{:?}", EdgeConfig::from_env(&dev_short).unwrap()).contains("short"));
    }

    #[test]
    fn max_body_above_the_event_ceiling_is_refused() {
        let env = |v: &str| Env::from_pairs([("CHAT_JWT_SECRET", GOOD), ("CHAT_MAX_BODY", v)]);
        let max = MAX_EVENT_BODY_CHARS.to_string();
        assert_eq!(EdgeConfig::from_env(&env(&max)).unwrap().max_body, 16_384);
        for bad in ["16385", "100000", "0"] {
            let err = EdgeConfig::from_env(&env(bad)).unwrap_err().to_string();
            assert!(
                err.contains("CHAT_MAX_BODY") && err.contains("16384"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = EdgeConfig::from_env(&Env::from_pairs([("CHAT_JWT_SECRET", GOOD)])).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!((c.max_body, c.max_frame, c.rate_per_s), (4000, 65_536, 100));
        assert_eq!(c.heartbeat, Duration::from_millis(5000));
        assert_eq!(c.max_sessions_per_user, 20);
        assert!(!c.dev_login);
        assert!(c.tls.is_none());
        assert!(matches!(c.jwt_secret, Some(JwtSecret::Configured(ref s)) if s == GOOD));
        let c = EdgeConfig::from_env(&Env::from_pairs([("CHAT_JWT_JWKS", "/keys.json")])).unwrap();
        assert!(c.jwt_secret.is_none(), "a JWKS alone disables HS256");
        assert!(
            EdgeConfig::from_env(&Env::from_pairs([
                ("CHAT_JWT_SECRET", GOOD),
                ("EDGE_TLS_CERT", "/c.pem")
            ]))
            .is_err(),
            "a certificate without a key is refused"
        );
        let c = EdgeConfig::from_env(&Env::from_pairs([
            ("CHAT_JWT_SECRET", GOOD),
            ("CHAT_ALLOWED_ORIGINS", "https://a, https://b"),
        ]))
        .unwrap();
        assert_eq!(c.allowed_origins, vec!["https://a", "https://b"]);
    }
}
