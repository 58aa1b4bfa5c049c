//! chat-edge: terminates client WebSockets (protocol.md#ws) and talks NATS to the services.
//!
//! A client frame's way: [`http::listener`] accepts the connection, [`http::upgrade`] admits the
//! upgrade, [`session`] runs the socket (its [`session::handshake`] to `hello`, then its loop),
//! [`dispatch`] checks each frame, and one file of [`commands`] carries it out over NATS. An
//! event's way back: the [`hub`]'s subscription of the room hands the ready frame to each local
//! session's queue, and [`session::writer`] writes it out.
//!
//! Where each concept lives:
//!
//! - [`app`]: the process — build (listeners, NATS, the stream, the token verifier), run, drain;
//! - [`service`]: the edge as a `chat_runtime::service::Service` (what `main` runs);
//! - [`state`]: [`Edge`], what every connection shares (configuration, NATS, hub, counters);
//! - [`config`]: the configuration from the environment (protocol.md#ops);
//! - [`http`]: the client listener — [`http::routes`] (routes, security headers, web client),
//!   [`http::upgrade`] (Origin check, admission, the WebSocket upgrade), [`http::listener`]
//!   (accept loop, `wss://`, header timeout), [`http::dev_login`] (`POST /dev/token`);
//! - [`admission`]: the connection quotas (rate per address, slots, sessions per user);
//! - [`auth`]: token verification (HS256, and JWKS in [`auth::jwks`]);
//! - [`session`]: one connection's state and loop (heartbeat, expiry, drain, kick);
//! - [`session::handshake`]: from the upgrade to `hello` (authentication, slots, `hello`);
//! - [`session::writer`]: every write rule (batches, flush, write deadline, 4008, closes);
//! - [`session::rooms`]: per-room delivery state, replay after `since`, membership changes;
//! - [`commands`]: one file per client frame (`join`, `send`, `history`…) and their dispatch;
//! - [`dispatch`]: the pure checks of a client frame (size, rate, decoding, membership, fields);
//! - [`ratelimit`]: the per-connection token bucket;
//! - [`hub`]: one NATS subscription per room and per user, shared by the local sessions;
//! - [`presence_reporter`]: what chat-presence is told (heartbeat, session up and down);
//! - [`headers`]: the NATS headers of a published event (for the fuzz and property tests);
//! - [`metrics_catalogue`]: the edge's metrics and their help text.

pub mod admission;
pub mod app;
pub mod auth;
pub mod commands;
pub mod config;
pub mod dispatch;
pub mod headers;
pub mod http;
pub mod hub;
pub mod metrics_catalogue;
pub mod presence_reporter;
pub mod ratelimit;
pub mod service;
pub mod session;
pub mod state;

pub use app::App;
pub use config::EdgeConfig;
pub use http::{MAX_SERVER_FRAME, WEB_CSP, origin_allowed, router};
pub use state::{Edge, EdgeInner};
