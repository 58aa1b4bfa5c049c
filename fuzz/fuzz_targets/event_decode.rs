//! Bytes → a stored entry of the CHAT stream, judged by the event decoder
//! (`chat_bus::event::validate_stored`, `decode_fanout`), checked by the model that
//! `libs/bus/tests/event_decode_fuzz.rs` also runs in CI: never panics, invalid entries get a
//! short header-safe reason, valid ones respect the v1.1 limits and round-trip (issue 15
//! item 2: one undecodable event once stopped the archive for good).

#![no_main]

#[path = "../../libs/bus/tests/support/event_model.rs"]
mod event_model;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| event_model::run_bytes(data));
