//! The end-to-end suite as one test binary (one link of every service instead of one per file):
//! one module per area. Run an area with `cargo nextest run -p chat-tests -E 'test(/^faults::/)'`,
//! one test with `-E 'test(name)'`.

mod api;
mod api_bench;
mod authz;
mod cli;
mod client_tls;
mod cluster;
mod ctl;
mod edge_tls;
mod events;
mod faults;
mod hardening;
mod hostile_input;
mod integration_webhooks;
mod lifecycle;
mod message_path;
mod nats_security;
mod notify;
mod notify_bench;
mod oidc;
mod operations;
mod presence;
mod recovery;
mod search;
