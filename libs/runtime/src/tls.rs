//! TLS clients of the services (OTLP export; the same rules as the webhook and JWKS clients):
//! rustls with the ring provider only, Mozilla's roots plus an operator's CA file. The code
//! lives in chat-tls, shared with the `chat` CLI and chat-bench.

pub use chat_tls::client_config;
