//! The NATS headers of a room event the edge publishes (protocol.md#nats): built by
//! [`chat_bus::post::event_headers`] (shared with chat-api), re-exported here for the fuzz target
//! and the property tests that drive it with any input.

pub use chat_bus::post::{InvalidHeader, event_headers};
