//! Outgoing webhooks, shared by chat-notify (push gateways) and chat-history (integration
//! events): target URLs, [Standard Webhooks](https://www.standardwebhooks.com/) signatures, a
//! minimal HTTP/1.1 POST client and the retry backoff.
//!
//! Signature (Standard Webhooks v1): `webhook-id` (the message id, the same on every retry),
//! `webhook-timestamp` (the attempt's time in Unix seconds) and `webhook-signature`:
//! `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, keyed with the base64-decoded part of
//! a `whsec_<base64>` secret. Each attempt is signed afresh, so a receiver can refuse old
//! timestamps (the reference libraries allow five minutes).
//!
//! The client is one connection per attempt (`Connection: close`) over TCP, or over TLS for
//! `https://` (rustls with the ring provider, [`crate::tls::client_config`]). An attempt is over
//! when the status line arrives: 2xx is a delivery, anything else a failure.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

/// Header of the message id (Standard Webhooks).
pub const ID_HEADER: &str = "webhook-id";
/// Header of the attempt's time, Unix seconds (Standard Webhooks).
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// Header of the signatures, `v1,<base64>` (Standard Webhooks).
pub const SIGNATURE_HEADER: &str = "webhook-signature";

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
        if authority.is_empty() || authority.contains('@') || has_control(authority) {
            return None;
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse().ok()?),
            _ => (authority, if tls { 443 } else { 80 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || path.contains([' ', '\r', '\n']) || has_control(&path) {
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

fn has_control(s: &str) -> bool {
    s.chars().any(|c| c.is_control())
}

/// The key of a Standard Webhooks secret `whsec_<base64>` (24 to 64 bytes, as the reference
/// libraries generate and accept); an error says what is wrong, never the secret.
pub fn whsec_key(secret: &str) -> Result<Vec<u8>, String> {
    let Some(b64) = secret.strip_prefix("whsec_") else {
        return Err("expected whsec_<base64> (e.g. whsec_ + base64 of 32 random bytes)".into());
    };
    let key = B64
        .decode(b64.trim())
        .map_err(|_| "the part after whsec_ is not valid base64".to_owned())?;
    if !(24..=64).contains(&key.len()) {
        return Err(format!(
            "the key is {} bytes; Standard Webhooks keys are 24 to 64 bytes",
            key.len()
        ));
    }
    Ok(key)
}

/// `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, keyed with `key` (the decoded
/// secret).
pub fn sign_v1(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

/// The three Standard Webhooks headers of one attempt at `timestamp` (Unix seconds).
pub fn standard_headers(
    key: &[u8],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    vec![
        (ID_HEADER, id.to_owned()),
        (TIMESTAMP_HEADER, timestamp.to_string()),
        (SIGNATURE_HEADER, sign_v1(key, id, timestamp, body)),
    ]
}

/// The current time in Unix seconds, as `webhook-timestamp` carries it.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A TLS connector for `https://` webhooks: Mozilla's roots plus the CAs of `ca` (a PEM file).
pub fn connector(ca: Option<&std::path::Path>) -> Result<TlsConnector, String> {
    crate::tls::client_config(ca).map(|c| TlsConnector::from(Arc::new(c)))
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("https:// webhook without a TLS configuration")]
    NoTls,
    #[error("a header value holds a line break")]
    BadHeader,
    #[error("no answer within the timeout")]
    Timeout,
    #[error("unreadable answer")]
    BadResponse,
    #[error("status {0}")]
    Status(u16),
}

impl AttemptError {
    /// Is another attempt worth it? A 4xx other than 408 and 429 will not change.
    pub fn retryable(&self) -> bool {
        match self {
            AttemptError::Status(s) => *s >= 500 || *s == 408 || *s == 429,
            AttemptError::BadHeader => false,
            _ => true,
        }
    }
}

/// One POST of `body` (JSON) with `headers`; Ok when the receiver answered 2xx. `tls` is
/// required for an `https://` target (the certificate must verify for the URL's host).
pub async fn post_once(
    target: &Target,
    tls: Option<&TlsConnector>,
    user_agent: &str,
    headers: &[(&str, String)],
    body: &[u8],
    timeout: Duration,
) -> Result<(), AttemptError> {
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {user_agent}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        target.path,
        target.authority,
        body.len()
    );
    for (name, value) in headers {
        if has_control(name) || has_control(value) {
            return Err(AttemptError::BadHeader);
        }
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    let attempt = async {
        let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
        if !target.tls {
            return exchange(tcp, &head, body).await;
        }
        let tls = tls.ok_or(AttemptError::NoTls)?;
        let name = ServerName::try_from(target.host.clone())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let stream = tls.connect(name, tcp).await?;
        exchange(stream, &head, body).await
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(AttemptError::Timeout),
    }
}

/// The request and the status line of its answer, over a connected stream.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    head: &str,
    body: &[u8],
) -> Result<(), AttemptError> {
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
/// "equal jitter" (half fixed, half random) so that receivers coming back are not stampeded.
pub fn backoff(n: u32, min: Duration, max: Duration) -> Duration {
    let exp = min
        .saturating_mul(1u32 << n.saturating_sub(1).min(20))
        .min(max);
    let half = exp / 2;
    let jitter_ms = rand::random_range(0..=half.as_millis().max(1) as u64);
    half + Duration::from_millis(jitter_ms)
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
        assert!(Target::parse("http://gw/a\tb").is_none());
    }

    /// The test vector of the Standard Webhooks specification's reference libraries
    /// (standard-webhooks/standard-webhooks, libraries/python/tests/test_webhooks.py and the
    /// JavaScript tests): secret, id, timestamp and payload give this exact signature.
    #[test]
    fn signature_matches_the_standard_webhooks_test_vector() {
        let key = whsec_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = sign_v1(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let h = standard_headers(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(h[0], (ID_HEADER, "msg_p5jXN8AQM9LWM0D4loKWxJek".into()));
        assert_eq!(h[1], (TIMESTAMP_HEADER, "1614265330".into()));
        assert_eq!(h[2].1, sig);
        assert_ne!(
            sig,
            sign_v1(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265331,
                br#"{"test": 2432232314}"#
            )
        );
    }

    #[test]
    fn secrets_must_be_whsec_base64_of_24_to_64_bytes() {
        assert_eq!(
            whsec_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .unwrap()
                .len(),
            24
        );
        assert!(whsec_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(whsec_key("whsec_not base64!").is_err());
        let short = whsec_key("whsec_c2hvcnQ=").unwrap_err();
        assert!(short.contains("5 bytes"), "{short}");
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

    #[tokio::test]
    async fn a_header_with_a_line_break_is_never_sent() {
        let target = Target::parse("http://127.0.0.1:9/x").unwrap();
        let err = post_once(
            &target,
            None,
            "t",
            &[("webhook-id", "a\r\nInjected: 1".into())],
            b"{}",
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, AttemptError::BadHeader), "{err}");
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
