//! The contract of the NATS header building of a `send` ([`chat_edge::headers::event_headers`]
//! and [`chat_bus::trace::from_traceparent`]) as an executable check, shared by
//! `tests/dispatch_props.rs` (CI: proptest, and the regression files under
//! `fuzz/regressions/event_headers/`) and the `event_headers` fuzz target (`fuzz/`), which
//! includes this file with `#[path]`. Both feed bytes to [`run_bytes`].
//!
//! Input format: up to three fields separated by `0xFF` (never a byte of UTF-8): the sender,
//! the `client_id` and the `traceparent`, each read as lossy UTF-8.

#![allow(dead_code)]

use std::time::Instant;

use chat_edge::dispatch::{Action, Inbound, classify};
use chat_edge::headers::event_headers;
use chat_edge::ratelimit::TokenBucket;
use chat_proto::{ClientFrame, Limits};

/// Checks one (from, client_id, traceparent): nothing panics; headers build exactly when no
/// value holds CR or LF, and then carry the dedup id unchanged; and a `send` frame carrying
/// these values that the edge accepts always builds its headers (so no accepted frame can fail
/// or panic at publish time).
pub fn check(from: &str, client_id: &str, traceparent: &str) {
    let _ = chat_bus::trace::from_traceparent(traceparent);
    let msg_id = format!("{from}:{client_id}");
    let fields = vec![("traceparent".to_owned(), traceparent.to_owned())];
    let crlf = |s: &str| s.contains(['\r', '\n']);
    match event_headers(&msg_id, &fields) {
        Ok(h) => {
            assert!(!crlf(&msg_id) && !crlf(traceparent));
            assert_eq!(
                h.get(chat_bus::event::MSG_ID_HEADER).map(|v| v.as_str()),
                Some(msg_id.as_str())
            );
            assert_eq!(h.get("traceparent").map(|v| v.as_str()), Some(traceparent));
        }
        Err(_) => assert!(
            crlf(&msg_id) || crlf(traceparent),
            "{msg_id:?} {traceparent:?}"
        ),
    }
    let frame = serde_json::json!({
        "type": "send", "room": "r", "body": "b", "client_id": client_id,
        "traceparent": traceparent,
    })
    .to_string();
    let limits = Limits {
        max_body: 4000,
        max_frame: 1 << 20,
        rate_per_s: 100,
    };
    let now = Instant::now();
    let mut bucket = TokenBucket::new(limits.rate_per_s, now);
    if let Action::Handle(env) =
        classify(Inbound::Text(&frame), now, &limits, &mut bucket, |_| true)
    {
        let ClientFrame::Send { client_id, .. } = &env.frame else {
            panic!("a send decoded as {env:?}");
        };
        let tp = env.traceparent.clone().unwrap_or_default();
        let fields = vec![("traceparent".to_owned(), tp)];
        // A valid user id as the sender, as the edge's are.
        assert!(
            event_headers(&format!("alice:{client_id}"), &fields).is_ok(),
            "accepted {env:?} cannot be published"
        );
    }
}

/// Runs one input (see the module header).
pub fn run_bytes(data: &[u8]) {
    let mut parts = data.split(|&b| b == 0xFF).map(String::from_utf8_lossy);
    let from = parts.next().unwrap_or_default();
    let client_id = parts.next().unwrap_or_default();
    let traceparent = parts.next().unwrap_or_default();
    check(&from, &client_id, &traceparent);
}
