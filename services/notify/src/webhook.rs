//! Webhooks for push gateways: notifications of users with no live session are POSTed as JSON
//! (a `UserNotification`) to `NOTIFY_WEBHOOK_URL`, signed, and retried with exponential backoff
//! and jitter for a bounded time. Deliveries are rows of `webhook_outbox`, written in the
//! transaction that made the notification, so a restart loses none; a dispatcher task claims due
//! rows with a lease (safe with several instances) and POSTs them from tasks of its own. The
//! consumer never waits for a gateway.
//!
//! Signature: `X-Chat-Timestamp` is the send time in milliseconds since the Unix epoch and
//! `X-Chat-Signature` the lowercase hex HMAC-SHA256, keyed with `NOTIFY_WEBHOOK_SECRET`, of
//! `"<timestamp>.<body>"` (the raw body bytes). A gateway recomputes it over the exact bytes it
//! received, compares in constant time, and rejects timestamps older than a few minutes (each
//! retry is signed afresh with a new timestamp). Delivery is at least once: the notification
//! `id` lets the gateway drop a repeat.
//!
//! The client is a minimal HTTP/1.1 POST (one connection per attempt, `Connection: close`) over
//! TCP, or over TLS for `https://` (rustls with the ring provider; Mozilla's roots plus the CAs
//! of `NOTIFY_WEBHOOK_CA`), so that DM previews do not cross the network in clear text.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chat_bus::api::{self, PresenceReply, PresenceRequest};
use chat_bus::{now_ms, subjects};
use chat_proto::{Status, UserId};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use sqlx::PgPool;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::WebhookConfig;
use crate::store::{self, Claimed};

/// Deliveries in flight at once.
const CONCURRENCY: usize = 64;

/// An `https://` or `http://host[:port][/path]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `https://`: the POST goes over TLS.
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// `host` or `host:port` as the `Host` header carries it.
    pub authority: String,
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Option<Target> {
        let (tls, rest) = match url.strip_prefix("https://") {
            Some(rest) => (true, rest),
            None => (false, url.strip_prefix("http://")?),
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_owned()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_owned()),
        };
        if authority.is_empty() || authority.contains('@') {
            return None;
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse().ok()?),
            _ => (authority, if tls { 443 } else { 80 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || path.contains([' ', '\r', '\n']) {
            return None;
        }
        Some(Target {
            tls,
            host: host.to_owned(),
            port,
            authority: authority.to_owned(),
            path,
        })
    }
}

/// The TLS client configuration of `https://` webhooks: Mozilla's roots and the certificates of
/// `ca` (a PEM file), ring provider only.
pub fn tls_config(ca: Option<&std::path::Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = ca {
        let certs = CertificateDer::pem_file_iter(ca).map_err(|e| format!("unreadable: {e}"))?;
        let mut n = 0;
        for cert in certs {
            let cert = cert.map_err(|e| format!("not a PEM certificate: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("not a CA certificate: {e}"))?;
            n += 1;
        }
        if n == 0 {
            return Err("holds no certificate".into());
        }
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Hex HMAC-SHA256 of `"<timestamp>.<body>"`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("https:// webhook without a TLS configuration")]
    NoTls,
    #[error("no answer within the timeout")]
    Timeout,
    #[error("unreadable answer")]
    BadResponse,
    #[error("status {0}")]
    Status(u16),
}

impl AttemptError {
    /// Is another attempt worth it? A 4xx other than 408 and 429 will not change.
    fn retryable(&self) -> bool {
        match self {
            AttemptError::Status(s) => *s >= 500 || *s == 408 || *s == 429,
            _ => true,
        }
    }
}

/// One signed POST; Ok when the gateway answered 2xx. `tls` is required for an `https://`
/// target (the certificate must verify for the URL's host).
pub async fn post_once(
    target: &Target,
    tls: Option<&TlsConnector>,
    secret: &[u8],
    body: &[u8],
    timeout: Duration,
) -> Result<(), AttemptError> {
    let attempt = async {
        let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
        if !target.tls {
            return exchange(tcp, target, secret, body).await;
        }
        let tls = tls.ok_or(AttemptError::NoTls)?;
        let name = ServerName::try_from(target.host.clone())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let stream = tls.connect(name, tcp).await?;
        exchange(stream, target, secret, body).await
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(AttemptError::Timeout),
    }
}

/// The request and the status line of its answer, over a connected stream.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    target: &Target,
    secret: &[u8],
    body: &[u8],
) -> Result<(), AttemptError> {
    let ts = now_ms();
    let signature = sign(secret, ts, body);
    {
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: chat-notify\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Chat-Timestamp: {ts}\r\nX-Chat-Signature: {signature}\r\nConnection: close\r\n\r\n",
            target.path,
            target.authority,
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        stream.flush().await?;
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 512];
        while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 8192 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let status = parse_status(&buf).ok_or(AttemptError::BadResponse)?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(AttemptError::Status(status))
        }
    }
}

/// The status code of an HTTP/1.x status line.
fn parse_status(buf: &[u8]) -> Option<u16> {
    let line = buf.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// The backoff before attempt `n + 1` (n ≥ 1): doubling from `min`, capped at `max`, with
/// "equal jitter" (half fixed, half random) so that gateways coming back are not stampeded.
pub fn backoff(n: u32, min: Duration, max: Duration) -> Duration {
    let exp = min
        .saturating_mul(1u32 << n.saturating_sub(1).min(20))
        .min(max);
    let half = exp / 2;
    let jitter_ms = rand::random_range(0..=half.as_millis().max(1) as u64);
    half + Duration::from_millis(jitter_ms)
}

/// The handle the consumer uses: after a commit that queued deliveries, it wakes the
/// dispatcher (which also polls, for retries and for rows left by a dead instance).
#[derive(Clone)]
pub struct Webhooks {
    wake: Arc<Notify>,
}

impl Webhooks {
    /// Starts the dispatcher; it stops at `shutdown`, leaving undelivered rows in the outbox.
    pub fn start(
        config: WebhookConfig,
        nats: async_nats::Client,
        pool: PgPool,
        shutdown: CancellationToken,
    ) -> (Webhooks, tokio::task::JoinHandle<()>) {
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn(dispatch(config, nats, pool, wake.clone(), shutdown));
        (Webhooks { wake }, task)
    }

    /// New rows are in the outbox.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

async fn dispatch(
    config: WebhookConfig,
    nats: async_nats::Client,
    pool: PgPool,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let Some(target) = Target::parse(&config.url) else {
        return;
    };
    let tls = match tls_config(config.ca.as_deref()) {
        Ok(c) => TlsConnector::from(c),
        Err(e) => {
            // Checked when the configuration was read; only a file changed since gets here.
            tracing::error!(error = %e, "NOTIFY_WEBHOOK_CA unusable: webhooks stopped");
            return;
        }
    };
    let target = Arc::new(target);
    let config = Arc::new(config);
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let tasks = TaskTracker::new();
    let poll = config
        .retry_min
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    // A claimed row is not taken by anyone else until its attempt must be over.
    let lease = config.timeout * 2 + Duration::from_secs(1);
    while !shutdown.is_cancelled() {
        loop {
            let free = permits.available_permits();
            if free == 0 {
                break;
            }
            let now = now_ms();
            let claimed = match store::claim_webhooks(
                &pool,
                now,
                now + lease.as_millis() as i64,
                free as i64,
            )
            .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook outbox unreadable");
                    break;
                }
            };
            if claimed.is_empty() {
                break;
            }
            let online = online_users(&nats, &claimed, config.presence_timeout).await;
            for c in claimed {
                if online.contains(&c.user) {
                    metrics::counter!("chat_notify_webhook_skipped_total").increment(1);
                    if let Err(e) = store::finish_webhook(&pool, &c.id).await {
                        tracing::debug!(error = %e, "skipped delivery not removed");
                    }
                    continue;
                }
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let (target, tls, config, pool, shutdown) = (
                    target.clone(),
                    tls.clone(),
                    config.clone(),
                    pool.clone(),
                    shutdown.clone(),
                );
                tasks.spawn(async move {
                    tokio::select! {
                        // Abandoned mid-attempt: the lease runs out and the row is tried again.
                        _ = shutdown.cancelled() => {}
                        _ = attempt(&target, &tls, &config, &pool, c) => {}
                    }
                    drop(permit);
                });
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
    tasks.close();
    tasks.wait().await;
}

/// Users with a live session, as chat-presence sees them. No answer (chat-presence down or not
/// deployed) counts everyone as offline: a push too many beats one missed.
async fn online_users(
    nats: &async_nats::Client,
    claimed: &[Claimed],
    timeout: Duration,
) -> BTreeSet<UserId> {
    let users: BTreeSet<UserId> = claimed.iter().map(|c| c.user.clone()).collect();
    let req = PresenceRequest::Users {
        users: users.into_iter().collect(),
    };
    match api::request::<_, PresenceReply>(nats, subjects::API_PRESENCE, &req, timeout).await {
        Ok(reply) => reply
            .users
            .into_iter()
            .filter(|e| e.status != Status::Offline)
            .map(|e| e.user)
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "no presence answer; treating users as offline");
            BTreeSet::new()
        }
    }
}

/// One attempt of a claimed delivery; then the row is removed (delivered, refused for good, or
/// out of time) or scheduled again with backoff.
async fn attempt(
    target: &Target,
    tls: &TlsConnector,
    config: &WebhookConfig,
    pool: &PgPool,
    c: Claimed,
) {
    let outcome = post_once(
        target,
        Some(tls),
        config.secret.as_bytes(),
        c.body.as_bytes(),
        config.timeout,
    )
    .await;
    let result = match outcome {
        Ok(()) => {
            metrics::counter!("chat_notify_webhook_deliveries_total").increment(1);
            store::finish_webhook(pool, &c.id).await
        }
        Err(e) => {
            metrics::counter!("chat_notify_webhook_failures_total").increment(1);
            let wait = backoff(c.attempts.max(1) as u32, config.retry_min, config.retry_max);
            let next = now_ms() + wait.as_millis() as i64;
            if !e.retryable() || next > c.created_at + config.give_up.as_millis() as i64 {
                metrics::counter!("chat_notify_webhook_dropped_total").increment(1);
                tracing::warn!(id = c.id, attempts = c.attempts, error = %e, "webhook delivery abandoned");
                store::finish_webhook(pool, &c.id).await
            } else {
                tracing::debug!(id = c.id, attempts = c.attempts, error = %e, retry_in_ms = wait.as_millis() as u64, "webhook attempt failed");
                store::retry_webhook(pool, &c.id, next).await
            }
        }
    };
    if let Err(e) = result {
        // The lease runs out and the row is claimed again: at least once.
        tracing::warn!(error = %e, "webhook outbox not updated");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("http://gw.local:8080/push/x?y=1").unwrap();
        assert_eq!(
            (
                t.host.as_str(),
                t.port,
                t.authority.as_str(),
                t.path.as_str()
            ),
            ("gw.local", 8080, "gw.local:8080", "/push/x?y=1")
        );
        let t = Target::parse("http://gw").unwrap();
        assert_eq!((t.port, t.path.as_str()), (80, "/"));
        let t = Target::parse("http://[::1]:9000/h").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9000));
        let t = Target::parse("https://gw.example/x").unwrap();
        assert_eq!((t.tls, t.port, t.path.as_str()), (true, 443, "/x"));
        assert!(!Target::parse("http://gw/x").unwrap().tls);
        assert!(Target::parse("ftp://gw/x").is_none());
        assert!(Target::parse("http://").is_none());
        assert!(Target::parse("http://u:p@gw/").is_none());
        assert!(Target::parse("http://gw:notaport/").is_none());
    }

    #[test]
    fn signature_matches_a_known_vector() {
        // python3: hmac.new(b"secret", b'1700000000000.{"a":1}', hashlib.sha256).hexdigest()
        let sig = sign(b"secret", 1_700_000_000_000, br#"{"a":1}"#);
        assert_eq!(
            sig,
            "4ef2732b0d632a6897af3a6d02a6de287f60d6c5f15dabdb0ceb045a34e3c5a7"
        );
        assert_eq!(sig.len(), 64);
        assert_ne!(sig, sign(b"other", 1_700_000_000_000, br#"{"a":1}"#));
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status(b"HTTP/1.0 500\r\n"), Some(500));
        assert_eq!(parse_status(b"SSH-2.0\r\n"), None);
        assert!(AttemptError::Status(503).retryable());
        assert!(AttemptError::Status(429).retryable());
        assert!(!AttemptError::Status(400).retryable());
    }

    #[test]
    fn backoff_doubles_within_bounds() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        for n in 1..30 {
            let d = backoff(n, min, max);
            let exp = (min * 2u32.pow((n - 1).min(20))).min(max);
            assert!(
                d >= exp / 2 && d <= exp + Duration::from_millis(1),
                "{n}: {d:?}"
            );
        }
    }
}
