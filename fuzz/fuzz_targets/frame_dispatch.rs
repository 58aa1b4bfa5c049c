//! Bytes → a session's run of frames through the edge's pure path
//! (`chat_edge::dispatch::classify`), checked against the contract model that
//! `services/edge/tests/dispatch_props.rs` also runs in CI: never panics, every refusal is one
//! of the contract's client-error codes, closes are 1009 or 4029 exactly when due, and an
//! accepted frame round-trips with valid ids and within the limits.

#![no_main]

#[path = "../../services/edge/tests/support/dispatch_model.rs"]
mod dispatch_model;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dispatch_model::run_bytes(data));
