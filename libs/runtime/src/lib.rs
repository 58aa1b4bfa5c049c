//! What every chat service does the same way: read its configuration from the environment,
//! set up telemetry, connect to NATS, serve `/healthz`, `/readyz` and `/metrics`, stop on
//! SIGINT/SIGTERM, and sign and POST webhooks.

pub mod admin;
pub mod config;
pub mod consumer;
pub mod metrics;
pub mod nats;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod webhook;

pub use config::{ConfigError, Env};
#[cfg(feature = "db")]
pub mod db;
pub mod retry;
