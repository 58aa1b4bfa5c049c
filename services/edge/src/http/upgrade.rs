//! A WebSocket upgrade's way in (protocol.md#ws-limits): the Origin check, refusal while
//! draining, admission (the rate per client address and per edge, then a slot: authenticated
//! with a header token, else unauthenticated until the `auth` frame), then the socket's buffer
//! and frame limits, and the session.

use std::net::SocketAddr;

use axum::extract::{State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::{Edge, admission, ratelimit, session};

/// No server frame is larger than this (protocol.md#ws-limits).
pub const MAX_SERVER_FRAME: usize = 1 << 20;

/// Is this upgrade's Origin acceptable (protocol.md#ws)?
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if !allowed.is_empty() {
        return allowed.iter().any(|a| a == origin);
    }
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let origin_host = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("");
    !origin_host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

pub(super) async fn ws_upgrade(
    State(edge): State<Edge>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !origin_allowed(&headers, &edge.config.allowed_origins) {
        metrics::counter!("chat_edge_origin_refused_total").increment(1);
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    if edge.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    let peer = peer.map(|axum::Extension(axum::extract::ConnectInfo(addr))| addr.ip());
    if let Some(refusal) = admit(&edge, peer) {
        return refusal;
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_owned());
    // A token in the header is checked now, so that the quotas can answer in HTTP
    // (protocol.md#ws-limits: 429 past the sessions of the user); a bad one is refused by the
    // session (4001).
    let verified = match &token {
        Some(t) => edge.auth.verify(t).await.ok(),
        None => None,
    };
    let admitted = match verified {
        Some(identity) => match session::admit_session(&edge, &identity) {
            Ok(slots) => session::Admitted::Verified { identity, slots },
            Err(session::Refused::UserSessions) => {
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many sessions of this user",
                )
                    .into_response();
            }
            Err(session::Refused::Connections) => {
                return busy("too many connections", 5);
            }
        },
        None => match admission::Slot::try_take(
            &edge.pending,
            edge.config.max_unauthenticated,
            "chat_edge_unauthenticated_connections",
        ) {
            Some(slot) => session::Admitted::Pending {
                header_token: token,
                slot: Some(slot),
            },
            None => return busy("too many unauthenticated connections", 2),
        },
    };
    let buffer = edge.config.ws_buffer;
    let max = edge.config.max_frame;
    let tracker = edge.sessions.clone();
    ws.read_buffer_size(buffer)
        .write_buffer_size(buffer)
        // The largest legal server frame (protocol.md#ws-limits: 1 MiB; search results and
        // history pages are bounded below it) must always fit, with room for a batch queued
        // ahead of it: a frame the buffer cannot take would end the session unanswered.
        .max_write_buffer_size(
            max.saturating_mul(4)
                .max(buffer * 2)
                .max(MAX_SERVER_FRAME * 2),
        )
        // Slack above max_frame: a frame up to twice the limit is read whole and refused with a
        // clean 1009; only beyond that does the WebSocket layer itself give up mid-frame.
        .max_message_size(max.saturating_mul(2))
        .max_frame_size(max.saturating_mul(2))
        .on_upgrade(move |socket| {
            let token_guard = tracker.token();
            async move {
                // The slots in `admitted` and the tracker's token are given back by dropping,
                // however the session ends.
                let _token_guard = token_guard;
                session::run_admitted(edge, socket, admitted).await;
            }
        })
}

/// 503 with Retry-After, counted by reason.
fn busy(why: &'static str, retry_s: u64) -> Response {
    metrics::counter!("chat_edge_admission_refused_total", "why" => why).increment(1);
    let mut r = (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(retry_s));
    r
}

/// Admission control: refuses an upgrade (503, Retry-After) past the admission rate of its
/// client address, then past the edge's, so a reconnect storm is spread out instead of
/// overloading the edge and NATS, and one address cannot take the whole rate (issue 15 item 9).
/// The caps on connections are checked by the caller, by taking a slot.
fn admit(edge: &Edge, peer: Option<std::net::IpAddr>) -> Option<Response> {
    let now = std::time::Instant::now();
    if let Some(ip) = peer
        && edge.config.admission_per_ip_per_s > 0
        && !edge.per_address.admit(ip, now)
    {
        return Some(busy("too many new connections from this address", 1));
    }
    let verdict = edge.admission.lock().map(|mut b| b.check(now));
    match verdict {
        Ok(ratelimit::Verdict::Allow) => None,
        _ => Some(busy("too many new connections, retry shortly", 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn origin_rules() {
        assert!(origin_allowed(&headers(&[("host", "chat.example")]), &[]));
        assert!(origin_allowed(
            &headers(&[("host", "chat.example"), ("origin", "https://chat.example")]),
            &[]
        ));
        assert!(!origin_allowed(
            &headers(&[("host", "chat.example"), ("origin", "https://evil.example")]),
            &[]
        ));
        let allowed = vec!["https://app.example".to_owned()];
        assert!(origin_allowed(
            &headers(&[("host", "x"), ("origin", "https://app.example")]),
            &allowed
        ));
        assert!(!origin_allowed(
            &headers(&[("host", "x"), ("origin", "https://x")]),
            &allowed
        ));
    }
}
