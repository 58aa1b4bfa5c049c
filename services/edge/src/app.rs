//! The edge process: [`App::build`] binds the listeners, connects to NATS, makes sure the stream
//! exists and loads the token verifier; [`App::run`] serves (client listener, admin server,
//! presence heartbeat) until shutdown, then drains: every session closes with 1012 within
//! `CHAT_DRAIN_GRACE`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};

use anyhow::Context as _;
use chat_runtime::service::{self, Admin, Base};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http;
use crate::state::{Edge, EdgeInner};
use crate::{EdgeConfig, admission, auth, config, hub, presence_reporter, ratelimit};

/// Client addresses whose admission buckets are remembered (twice this at most).
const PER_ADDRESS_CAP: usize = 65_536;

/// A started edge, ready to [`run`](App::run).
pub struct App {
    edge: Edge,
    listener: TcpListener,
    admin: Admin,
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
            Some(files) => Some(http::listener::acceptor(&files.cert, &files.key)?),
            None => None,
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .context("bind EDGE_LISTEN")?;
        let Base { admin, nats, js } =
            Base::start::<App>(config.admin_listen, &config.nats).await?;
        let (stream, epoch) = service::chat_stream(&js, &config.stream, &shutdown).await?;
        let auth = auth::authenticator(&config).await?;
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
        // The shutdown token is awaited once, here, instead of by every session's loop: a
        // drain raises Restart on each registered session's stop signal.
        edge.hub.stop_all_on(edge.shutdown.clone());
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
        self.admin.addr()
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
        let admin_task = tokio::spawn(admin.serve(Vec::new(), shutdown.clone()));
        metrics::gauge!("chat_edge_max_connections").set(edge.config.max_connections as f64);
        let heartbeat = tokio::spawn(presence_reporter::heartbeat(edge.clone()));
        let app = http::router(edge.clone());
        http::listener::serve(
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
