//! Bytes → the NATS headers of a published `send` (`chat_edge::headers::event_headers`, the
//! trace context of a client's `traceparent`), checked by the model that
//! `services/edge/tests/dispatch_props.rs` also runs in CI: never panics (async-nats panics on a
//! header value with CR or LF), builds exactly when every value is clean, and any frame the edge
//! accepts can be published.

#![no_main]

#[path = "../../services/edge/tests/support/headers_model.rs"]
mod headers_model;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| headers_model::run_bytes(data));
