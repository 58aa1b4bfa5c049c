//! chat-edge: terminates client WebSockets (CONTRACT §2) and talks NATS to the services.
//!
//! - [`session`]: one connection, authentication to close; [`dispatch`]: the pure part of a
//!   client frame's way (size, rate, decoding, membership and field checks);
//! - [`hub`]: one NATS subscription per room and per user, shared by the local sessions;
//! - [`auth`]: JWT verification; [`ratelimit`]: the per-connection token bucket;
//! - this module: the HTTP side (upgrade, Origin check, static web client, dev sign-in), the
//!   presence heartbeat and the drain.

pub mod admission;
pub mod auth;
pub mod config;
pub mod dispatch;
pub mod headers;
pub mod hub;
pub mod jwks;
pub mod metrics_catalogue;
pub mod ratelimit;
pub mod search;
pub mod service;
pub mod session;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use anyhow::Context as _;
use async_nats::jetstream;
use axum::Router;
use axum::extract::{State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chat_bus::api::{EdgeHeartbeat, SessionRef};
use chat_bus::{now_ms, stream, subjects};
use chat_proto::UserId;
use chat_runtime::{admin, retry};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::EdgeConfig;

/// No server frame is larger than this (CONTRACT v1.1 §2 Limits).
pub const MAX_SERVER_FRAME: usize = 1 << 20;

/// What every connection of this edge shares: cheap handles only.
#[derive(Clone)]
pub struct Edge(Arc<EdgeInner>);

pub struct EdgeInner {
    pub config: EdgeConfig,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub stream: jetstream::stream::Stream,
    /// The log's incarnation (CONTRACT §1).
    pub epoch: String,
    pub hub: hub::Hub,
    pub auth: auth::Authenticator,
    /// Names this process in session ids and presence heartbeats.
    pub edge_id: String,
    next_session: AtomicU64,
    /// Upgrades admitted per second (reconnect storms).
    admission: std::sync::Mutex<ratelimit::TokenBucket>,
    /// Upgrades admitted per second per client address.
    per_address: admission::PerAddress,
    /// Authenticated connections, for `CHAT_MAX_CONNECTIONS`; each is an [`admission::Slot`].
    pub(crate) open: Arc<AtomicUsize>,
    /// Connections not authenticated yet, for `CHAT_MAX_UNAUTHENTICATED`.
    pending: Arc<AtomicUsize>,
    /// Open sessions per user, for `CHAT_MAX_SESSIONS_PER_USER`.
    pub user_sessions: Arc<admission::UserSessions>,
    /// Cancelled to drain: every session closes with 1012.
    pub shutdown: CancellationToken,
    sessions: TaskTracker,
}

impl std::ops::Deref for Edge {
    type Target = EdgeInner;
    fn deref(&self) -> &EdgeInner {
        &self.0
    }
}

impl Edge {
    fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// What [`chat_bus::post`]'s checks read: chat-history over NATS, the `CHAT` stream.
    pub fn post_reader(&self) -> chat_bus::post::Reader<'_> {
        chat_bus::post::Reader {
            nats: &self.nats,
            stream: &self.stream,
            timeout: self.config.request_timeout,
            window: chat_bus::stream::duplicate_window(&self.config.stream),
        }
    }

    /// Fire-and-forget publish of a JSON value.
    pub async fn publish_json<T: serde::Serialize>(
        &self,
        subject: impl async_nats::subject::ToSubject,
        value: &T,
    ) {
        let Ok(payload) = serde_json::to_vec(value) else {
            return;
        };
        if let Err(e) = self.nats.publish(subject, payload.into()).await {
            tracing::debug!(error = %e, "publish failed");
        }
    }
}

/// Client addresses whose admission buckets are remembered (twice this at most).
const PER_ADDRESS_CAP: usize = 65_536;

/// A started edge, ready to [`run`](App::run).
pub struct App {
    edge: Edge,
    listener: TcpListener,
    admin: TcpListener,
    /// Set when `EDGE_TLS_CERT`/`EDGE_TLS_KEY` are: the client listener speaks `wss://`.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl App {
    /// Binds the listeners, connects to NATS and makes sure the stream exists.
    pub async fn build(config: EdgeConfig, shutdown: CancellationToken) -> anyhow::Result<App> {
        if let Some(config::JwtSecret::Ephemeral(_)) = config.jwt_secret {
            tracing::warn!(
                "CHAT_JWT_SECRET and CHAT_JWT_JWKS are not set: development tokens are signed \
                 with a random secret of this process (they stop working at restart)"
            );
        }
        if config.dev_login {
            tracing::warn!("CHAT_DEV_LOGIN is on: anyone can mint a token at POST /dev/token");
        }
        let tls = match &config.tls {
            Some(files) => Some(tls::acceptor(&files.cert, &files.key)?),
            None => None,
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .context("bind EDGE_LISTEN")?;
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .context("bind ADMIN_LISTEN")?;
        let nats = config
            .nats
            .connect("chat-edge")
            .await
            .map_err(|e| anyhow::anyhow!("connect to NATS: {e}"))?;
        let js = jetstream::new(nats.clone());
        let (stream, epoch) = retry::until_ok("create the CHAT stream", &shutdown, || {
            stream::ensure_chat_stream(&js, &config.stream)
        })
        .await
        .context("stopped during start")?;
        let auth = authenticator(&config).await?;
        let edge_id = format!("e{:08x}", rand::random::<u32>());
        tracing::info!(%edge_id, epoch, listen = %listener.local_addr()?, tls = tls.is_some(), "chat-edge started");
        let admission =
            ratelimit::TokenBucket::new(config.admission_per_s, std::time::Instant::now());
        let per_address =
            admission::PerAddress::new(config.admission_per_ip_per_s, PER_ADDRESS_CAP);
        let user_sessions = admission::UserSessions::new(config.max_sessions_per_user);
        let edge = Edge(Arc::new(EdgeInner {
            hub: hub::Hub::new(
                nats.clone(),
                config.request_timeout,
                chat_bus::lookup::TargetLookup::new(
                    stream.clone(),
                    Some(chat_bus::lookup::TargetLookup::history_fallback(
                        nats.clone(),
                        config.request_timeout,
                    )),
                ),
            ),
            config,
            nats,
            js,
            stream,
            epoch,
            auth,
            edge_id,
            next_session: AtomicU64::new(1),
            admission: std::sync::Mutex::new(admission),
            per_address,
            open: Arc::new(AtomicUsize::new(0)),
            pending: Arc::new(AtomicUsize::new(0)),
            user_sessions,
            shutdown,
            sessions: TaskTracker::new(),
        }));
        Ok(App {
            edge,
            listener,
            admin,
            tls,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn edge(&self) -> Edge {
        self.edge.clone()
    }

    /// Serves until the edge's shutdown token is cancelled, then drains: stops accepting,
    /// closes every socket with 1012 and waits up to `CHAT_DRAIN_GRACE` for them to finish.
    pub async fn run(self) {
        let App {
            edge,
            listener,
            admin,
            tls,
        } = self;
        let shutdown = edge.shutdown.clone();
        chat_runtime::metrics::install("edge", metrics_catalogue::CATALOGUE);
        metrics::gauge!("chat_edge_max_connections").set(edge.config.max_connections as f64);
        let admin_task = tokio::spawn(admin::serve(
            admin,
            admin::nats_ready(edge.nats.clone()),
            shutdown.clone(),
        ));
        let heartbeat = tokio::spawn(presence_heartbeat(edge.clone()));
        let app = router(edge.clone());
        tls::serve(
            listener,
            tls,
            app,
            edge.config.header_timeout,
            shutdown.clone(),
        )
        .await;
        edge.sessions.close();
        if tokio::time::timeout(edge.config.drain_grace, edge.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!("drain grace elapsed with sessions still open");
        }
        heartbeat.abort();
        let _ = edge.nats.flush().await;
        let _ = admin_task.await;
    }
}

/// The token verifier of the configuration: the JWKS (loaded now, so that a broken file shows
/// at start; an unreachable URL is retried on use) and/or the HS256 secret.
async fn authenticator(config: &EdgeConfig) -> anyhow::Result<auth::Authenticator> {
    let (iss, aud) = (config.jwt_issuer.as_deref(), config.jwt_audience.as_deref());
    let jwks = match &config.jwt_jwks {
        Some(value) => {
            let source = jwks::JwksSource::parse(value, config.jwt_jwks_ca.clone())?;
            let cache = Arc::new(jwks::JwksCache::new(source.clone(), jwks::MIN_REFETCH));
            match (cache.load().await, &source) {
                (Ok(n), _) => tracing::info!(keys = n, "JWKS loaded from CHAT_JWT_JWKS"),
                (Err(e), jwks::JwksSource::File(_)) => {
                    return Err(e.context("load CHAT_JWT_JWKS"));
                }
                (Err(e), jwks::JwksSource::Https { .. }) => {
                    tracing::warn!(error = %format!("{e:#}"), "JWKS not reachable yet; retrying on use");
                }
            }
            Some(cache)
        }
        None => None,
    };
    let mut auth = auth::Authenticator::new(jwks, iss, aud);
    match &config.jwt_secret {
        Some(secret) => auth = auth.with_secret(secret.as_str()),
        None => tracing::info!("CHAT_JWT_SECRET is not set: HS256 tokens are refused"),
    }
    Ok(auth)
}

/// The HTTP routes of the client listener.
pub fn router(edge: Edge) -> Router {
    let mut app = Router::new().route("/ws", get(ws_upgrade));
    if edge.config.dev_login {
        app = app.route("/dev/token", post(dev_token));
    }
    let web = edge.config.web_dir.clone();
    if web.join("index.html").exists() {
        app = app.fallback_service(tower_http::services::ServeDir::new(web));
    }
    app.layer(axum::middleware::map_response(security_headers))
        .with_state(edge)
}

/// The web client's Content-Security-Policy: scripts, styles and connections to this origin
/// only (`connect-src 'self'` covers `ws:`/`wss:` to the same host), never framed.
pub const WEB_CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
    style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// Security headers on every response of the client listener (issue 15 item 6): a CSP that
/// lets the web app talk only to its own origin — a `<meta>` CSP cannot set `frame-ancestors`,
/// and a page that can be made to connect elsewhere hands its token over — plus `nosniff` and
/// no `Referer` (the app's URL is nobody else's business).
async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(WEB_CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    res
}

/// Is this upgrade's Origin acceptable (CONTRACT §2)?
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if !allowed.is_empty() {
        return allowed.iter().any(|a| a == origin);
    }
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let origin_host = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("");
    !origin_host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

async fn ws_upgrade(
    State(edge): State<Edge>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !origin_allowed(&headers, &edge.config.allowed_origins) {
        metrics::counter!("chat_edge_origin_refused_total").increment(1);
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    if edge.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    let peer = peer.map(|axum::Extension(axum::extract::ConnectInfo(addr))| addr.ip());
    if let Some(refusal) = admit(&edge, peer) {
        return refusal;
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_owned());
    // A token in the header is checked now, so that the quotas can answer in HTTP (CONTRACT
    // v1.1 §2: 429 past the sessions of the user); a bad one is refused by the session (4001).
    let verified = match &token {
        Some(t) => edge.auth.verify(t).await.ok(),
        None => None,
    };
    let admitted = match verified {
        Some(identity) => match session::admit_session(&edge, &identity) {
            Ok(slots) => session::Admitted::Verified { identity, slots },
            Err(session::Refused::UserSessions) => {
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many sessions of this user",
                )
                    .into_response();
            }
            Err(session::Refused::Connections) => {
                return busy("too many connections", 5);
            }
        },
        None => match admission::Slot::try_take(
            &edge.pending,
            edge.config.max_unauthenticated,
            "chat_edge_unauthenticated_connections",
        ) {
            Some(slot) => session::Admitted::Pending {
                header_token: token,
                slot: Some(slot),
            },
            None => return busy("too many unauthenticated connections", 2),
        },
    };
    let buffer = edge.config.ws_buffer;
    let max = edge.config.max_frame;
    let tracker = edge.sessions.clone();
    ws.read_buffer_size(buffer)
        .write_buffer_size(buffer)
        // The largest legal server frame (CONTRACT v1.1 §2 Limits: 1 MiB; search results and
        // history pages are bounded below it) must always fit, with room for a batch queued
        // ahead of it: a frame the buffer cannot take would end the session unanswered.
        .max_write_buffer_size(
            max.saturating_mul(4)
                .max(buffer * 2)
                .max(MAX_SERVER_FRAME * 2),
        )
        // Slack above max_frame: a frame up to twice the limit is read whole and refused with a
        // clean 1009; only beyond that does the WebSocket layer itself give up mid-frame.
        .max_message_size(max.saturating_mul(2))
        .max_frame_size(max.saturating_mul(2))
        .on_upgrade(move |socket| {
            let token_guard = tracker.token();
            async move {
                // The slots in `admitted` and the tracker's token are given back by dropping,
                // however the session ends.
                let _token_guard = token_guard;
                session::run_admitted(edge, socket, admitted).await;
            }
        })
}

/// 503 with Retry-After, counted by reason.
fn busy(why: &'static str, retry_s: u64) -> Response {
    metrics::counter!("chat_edge_admission_refused_total", "why" => why).increment(1);
    let mut r = (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(retry_s));
    r
}

/// Admission control: refuses an upgrade (503, Retry-After) past the admission rate of its
/// client address, then past the edge's, so a reconnect storm is spread out instead of
/// overloading the edge and NATS, and one address cannot take the whole rate (issue 15 item 9).
/// The caps on connections are checked by the caller, by taking a slot.
fn admit(edge: &Edge, peer: Option<std::net::IpAddr>) -> Option<Response> {
    let now = std::time::Instant::now();
    if let Some(ip) = peer
        && edge.config.admission_per_ip_per_s > 0
        && !edge.per_address.admit(ip, now)
    {
        return Some(busy("too many new connections from this address", 1));
    }
    let verdict = edge.admission.lock().map(|mut b| b.check(now));
    match verdict {
        Ok(ratelimit::Verdict::Allow) => None,
        _ => Some(busy("too many new connections, retry shortly", 1)),
    }
}

#[derive(Deserialize)]
struct DevTokenRequest {
    user: String,
}

/// Development sign-in: mints a one-hour token for any valid user id. Off unless `CHAT_DEV_LOGIN`.
async fn dev_token(State(edge): State<Edge>, body: axum::Json<DevTokenRequest>) -> Response {
    let Ok(user) = UserId::new(body.0.user) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({"error": "invalid user id"})),
        )
            .into_response();
    };
    match edge.auth.mint(&user, 3600) {
        Some(token) => {
            axum::Json(serde_json::json!({"token": token, "user": user, "expires_in": 3600}))
                .into_response()
        }
        None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Tells chat-presence, every heartbeat, which sessions this edge holds; an edge that stops
/// reporting is presumed dead.
async fn presence_heartbeat(edge: Edge) {
    let mut tick = tokio::time::interval(edge.config.heartbeat);
    loop {
        tick.tick().await;
        let sessions = edge
            .hub
            .sessions()
            .await
            .into_iter()
            .map(|(name, user)| SessionRef {
                session: name.to_string(),
                user,
            })
            .collect();
        let hb = EdgeHeartbeat {
            edge: edge.edge_id.clone(),
            heartbeat_ms: edge.config.heartbeat.as_millis() as u64,
            sessions,
            ts: now_ms(),
        };
        edge.publish_json(subjects::PRESENCE_HEARTBEAT, &hb).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn origin_rules() {
        assert!(origin_allowed(&headers(&[("host", "chat.example")]), &[]));
        assert!(origin_allowed(
            &headers(&[("host", "chat.example"), ("origin", "https://chat.example")]),
            &[]
        ));
        assert!(!origin_allowed(
            &headers(&[("host", "chat.example"), ("origin", "https://evil.example")]),
            &[]
        ));
        let allowed = vec!["https://app.example".to_owned()];
        assert!(origin_allowed(
            &headers(&[("host", "x"), ("origin", "https://app.example")]),
            &allowed
        ));
        assert!(!origin_allowed(
            &headers(&[("host", "x"), ("origin", "https://x")]),
            &allowed
        ));
    }
}
