//! The client listener's HTTP side: [`routes`] (what is served: `/ws`, the web client, dev
//! sign-in, and the security headers of every response), [`upgrade`] (a WebSocket upgrade's way
//! in: the Origin check, the drain, admission, the header token, the socket's buffers),
//! [`listener`] (the accept loop, `wss://`, the header timeout) and [`dev_login`]
//! (`POST /dev/token`).

pub mod dev_login;
pub mod listener;
pub mod routes;
pub mod upgrade;

pub use routes::{WEB_CSP, router};
pub use upgrade::{MAX_SERVER_FRAME, origin_allowed};
