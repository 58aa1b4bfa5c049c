//! W3C trace context in NATS headers, so that one message is one trace across the services.

use async_nats::HeaderMap;
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// `messaging.system` of every span that sends or processes a NATS message (OpenTelemetry
/// messaging semantic conventions; the other attributes are set where the span is made:
/// `otel.kind` producer/consumer/server, `messaging.destination.name`,
/// `messaging.operation.type` send/process, `messaging.message.id`).
pub const MESSAGING_SYSTEM: &str = "nats";

/// The `Nats-Msg-Id` of a message (its `messaging.message.id`), "" when it has none.
pub fn message_id(headers: Option<&HeaderMap>) -> &str {
    headers
        .and_then(|h| h.get(crate::event::MSG_ID_HEADER))
        .map(|v| v.as_str())
        .unwrap_or("")
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // async-nats panics on a value with CR or LF; a propagator never writes one, but a
        // header is no reason to crash a task.
        if let Ok(value) = value.parse::<async_nats::HeaderValue>() {
            self.0.insert(key, value);
        }
    }
}

/// Collects what a propagator writes, for building headers elsewhere.
struct FieldsInjector(Vec<(String, String)>);

impl Injector for FieldsInjector {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Writes the current span's context (`traceparent`, `tracestate`) into `headers`.
pub fn inject_current(headers: &mut HeaderMap) {
    let cx = tracing::Span::current().context();
    inject(&cx, headers);
}

/// The current span's context as header fields (`traceparent`, `tracestate`), unvalidated.
pub fn current_fields() -> Vec<(String, String)> {
    let cx = tracing::Span::current().context();
    let mut fields = FieldsInjector(Vec::new());
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut fields));
    fields.0
}

/// Writes `cx` into `headers`.
pub fn inject(cx: &Context, headers: &mut HeaderMap) {
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(cx, &mut HeaderInjector(headers))
    });
}

/// Reads the context carried by `headers` (an empty context when there is none).
pub fn extract(headers: Option<&HeaderMap>) -> Context {
    match headers {
        Some(h) => {
            opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(h)))
        }
        None => Context::new(),
    }
}

/// Makes `span` a child of the trace carried by `headers`, if any.
pub fn continue_from(span: &tracing::Span, headers: Option<&HeaderMap>) {
    let cx = extract(headers);
    let _ = span.set_parent(cx);
}

/// Reads a bare `traceparent` string (a client's frame field) as a context; an empty context
/// when it cannot be one (never a panic, whatever the client sent).
pub fn from_traceparent(traceparent: &str) -> Context {
    let Ok(value) = traceparent.parse::<async_nats::HeaderValue>() else {
        return Context::new();
    };
    let mut h = HeaderMap::new();
    h.insert("traceparent", value);
    extract(Some(&h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;

    #[test]
    fn a_hostile_traceparent_is_no_context_and_no_panic() {
        for tp in ["00-\r\n-01", "\n", "x\ry"] {
            let cx = from_traceparent(tp);
            assert!(!cx.span().span_context().is_valid(), "{tp:?}");
        }
    }
}
