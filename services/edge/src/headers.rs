//! The NATS headers of a room event the edge publishes (CONTRACT §3): the W3C trace context,
//! then `Nats-Msg-Id` (after the trace fields: the dedup id must never be lost). A pure function
//! that cannot panic: async-nats panics on a header value holding CR or LF (a `client_id` sent
//! as `"a\r\nb"` once killed the session task, issue 15), so every value is checked first and
//! a bad one is an error. The `event_headers` fuzz target (`fuzz/`) drives it with any input.

use async_nats::{HeaderMap, HeaderValue};
use chat_bus::event::MSG_ID_HEADER;

/// A header value async-nats would refuse (it holds CR or LF) or a name that is not a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("header {0} cannot carry this value")]
pub struct InvalidHeader(pub String);

/// Is `name` a header name async-nats accepts (visible ASCII, no `:`)?
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// The headers of an event with dedup id `msg_id` and the trace `fields` a propagator wrote.
pub fn event_headers(
    msg_id: &str,
    fields: &[(String, String)],
) -> Result<HeaderMap, InvalidHeader> {
    let mut headers = HeaderMap::new();
    for (name, value) in fields {
        if !valid_name(name) || name.eq_ignore_ascii_case(MSG_ID_HEADER) {
            return Err(InvalidHeader(name.clone()));
        }
        let value: HeaderValue = value.parse().map_err(|_| InvalidHeader(name.clone()))?;
        headers.insert(name.as_str(), value);
    }
    let id: HeaderValue = msg_id
        .parse()
        .map_err(|_| InvalidHeader(MSG_ID_HEADER.to_owned()))?;
    headers.insert(MSG_ID_HEADER, id);
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(v: &str) -> Vec<(String, String)> {
        vec![("traceparent".to_owned(), v.to_owned())]
    }

    #[test]
    fn builds_trace_then_msg_id() {
        let h = event_headers("alice:c1", &tp("00-ab-cd-01")).unwrap();
        assert_eq!(h.get(MSG_ID_HEADER).map(|v| v.as_str()), Some("alice:c1"));
        assert_eq!(
            h.get("traceparent").map(|v| v.as_str()),
            Some("00-ab-cd-01")
        );
    }

    #[test]
    fn cr_or_lf_anywhere_is_an_error_not_a_panic() {
        for id in ["a\rb", "a\nb", "alice:\r\nNats-Msg-Id: x"] {
            assert!(event_headers(id, &[]).is_err(), "{id:?}");
        }
        assert!(event_headers("ok", &tp("00-\r\n")).is_err());
        let bad_name = vec![("trace parent".to_owned(), "x".to_owned())];
        assert!(event_headers("ok", &bad_name).is_err());
        // A trace field may not override the dedup id.
        let sneaky = vec![("nats-msg-id".to_owned(), "other".to_owned())];
        assert!(event_headers("ok", &sneaky).is_err());
    }
}
