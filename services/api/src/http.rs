//! The HTTP side of every call: the error body (the protocol's `{"error":{code,message}}`, with
//! the WebSocket protocol's codes), status codes, the key check, the per-key rate, the audit
//! line and the metrics.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chat_bus::api::ApiError;
use chat_bus::apikey::{ApiKeyRecord, Scope};
use chat_proto::ErrorCode;
use serde::Serialize;

use crate::Api;

/// The HTTP status of an error code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest | ErrorCode::UnknownType => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized | ErrorCode::TokenExpired => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::LimitExceeded | ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The error body, `{"error":{"code","message"}}` (docs/openapi.json `Error`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ErrorBody {
    pub error: ApiError,
}

/// An error answer; `retry_after` sets `Retry-After` (rate limit).
#[derive(Debug, Clone)]
pub struct HttpError {
    pub error: ApiError,
    pub retry_after: Option<Duration>,
}

impl From<ApiError> for HttpError {
    fn from(error: ApiError) -> Self {
        HttpError {
            error,
            retry_after: None,
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut error = self.error;
        if error.code == ErrorCode::Internal {
            // Never an internal detail, whatever a service said.
            error = ApiError::internal();
        }
        let status = status_of(error.code);
        let mut resp = (status, Json(ErrorBody { error })).into_response();
        if let Some(after) = self.retry_after {
            let secs = after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

/// What an audit line names besides the key.
#[derive(Debug, Default, Clone)]
pub struct Target {
    pub room: Option<String>,
    pub user: Option<String>,
}

impl Target {
    pub fn room(room: &str) -> Self {
        Target {
            room: Some(room.to_owned()),
            user: None,
        }
    }
    pub fn user(user: &str) -> Self {
        Target {
            room: None,
            user: Some(user.to_owned()),
        }
    }
    pub fn room_user(room: &str, user: &str) -> Self {
        Target {
            room: Some(room.to_owned()),
            user: Some(user.to_owned()),
        }
    }
}

/// Per-key token buckets (`CHAT_API_RATE_PER_KEY` per second, as many in a burst), per instance.
#[derive(Default)]
pub struct Rates {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Rates {
    /// Takes a token of `key`; `Err(wait)` when none is left.
    pub fn take(&self, key: &str, per_s: u32, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(per_s);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 100_000 {
            buckets.clear();
        }
        let (tokens, at) = buckets.entry(key.to_owned()).or_insert((rate, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate).min(rate);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / rate))
        }
    }
}

/// Runs one call: the key (401), its scope (403), its rate (429), then `work`; answers with
/// `ok` and the value, or the error; writes the audit line and the metrics.
pub async fn call<T, F, Fut>(
    api: &Api,
    headers: &HeaderMap,
    op: &'static str,
    scope: Scope,
    target: Target,
    work: F,
) -> Response
where
    T: Serialize,
    F: FnOnce(Api, Arc<ApiKeyRecord>) -> Fut,
    Fut: Future<Output = Result<(StatusCode, T), HttpError>>,
{
    let started = Instant::now();
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let record = match api.keys.authenticate(auth) {
        Ok(r) => r,
        Err(why) => {
            metrics::counter!("chat_api_auth_failures_total").increment(1);
            let e = ApiError::new(ErrorCode::Unauthorized, why.message());
            tracing::info!(target: "chat_api::audit", op, room = target.room.as_deref(),
                user = target.user.as_deref(), outcome = "unauthorized", why = ?why, "api call");
            return finish::<()>(op, started, Err(e.into()));
        }
    };
    let result = if !record.allows(scope) {
        Err(ApiError::forbidden(format!("this key lacks the {} scope", scope.as_str())).into())
    } else if let Err(wait) = api.rates.take(&record.id, api.config.rate_per_key, started) {
        Err(HttpError {
            error: ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "at most {} calls per second per key",
                    api.config.rate_per_key
                ),
            ),
            retry_after: Some(wait),
        })
    } else {
        work(api.clone(), record.clone()).await
    };
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.error.code.as_str(),
    };
    tracing::info!(target: "chat_api::audit", key_id = %record.id, key_name = %record.name, op,
        room = target.room.as_deref(), user = target.user.as_deref(), outcome,
        ms = started.elapsed().as_millis() as u64, "api call");
    finish(op, started, result)
}

fn finish<T: Serialize>(
    op: &'static str,
    started: Instant,
    result: Result<(StatusCode, T), HttpError>,
) -> Response {
    let code = match &result {
        Ok(_) => "ok",
        Err(e) => e.error.code.as_str(),
    };
    metrics::counter!("chat_api_requests_total", "op" => op, "code" => code).increment(1);
    metrics::histogram!("chat_api_request_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
    match result {
        Ok((status, value)) => (status, Json(value)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// An answer to a request that matched no route or no method.
pub fn no_route(status: StatusCode, message: &str) -> Response {
    let code = if status == StatusCode::NOT_FOUND {
        ErrorCode::NotFound
    } else {
        ErrorCode::BadRequest
    };
    (
        status,
        Json(ErrorBody {
            error: ApiError::new(code, message),
        }),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_refill() {
        let r = Rates::default();
        let t0 = Instant::now();
        assert!(r.take("k", 2, t0).is_ok());
        assert!(r.take("k", 2, t0).is_ok());
        let wait = r.take("k", 2, t0).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(500));
        assert!(r.take("other", 2, t0).is_ok());
        assert!(r.take("k", 2, t0 + Duration::from_millis(600)).is_ok());
    }

    #[test]
    fn internal_errors_leak_nothing() {
        let e: HttpError = ApiError::new(ErrorCode::Internal, "pg: relation x").into();
        let resp = e.into_response();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            status_of(ErrorCode::LimitExceeded),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            status_of(ErrorCode::TooLarge),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
