//! Logs and traces. Traces go out over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces
//! variant) is set, over HTTP/protobuf (`http://` or `https://`) or, with
//! `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`, gRPC (plain text only);
//! sampling follows `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG`. No endpoint, no export —
//! but spans still get W3C trace context, so every event still carries a `traceparent` header
//! (protocol.md#nats: integrators and logs correlate on it) and a client's trace id is kept.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::Env;

/// Keeps the exporter alive; flushes the spans still buffered when dropped.
#[must_use = "dropping the guard stops trace export"]
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Which OTLP transport to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    HttpProtobuf,
    Grpc,
}

/// The OTLP endpoint and protocol from the standard variables, if export is on.
pub fn otlp_target(env: &Env) -> Option<(String, OtlpProtocol)> {
    let endpoint = env
        .get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .map(|e| (e.to_owned(), true))
        .or_else(|| {
            env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(|e| (e.to_owned(), false))
        })?;
    let protocol = env
        .get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| env.get("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or("http/protobuf");
    let protocol = if protocol == "grpc" {
        OtlpProtocol::Grpc
    } else {
        OtlpProtocol::HttpProtobuf
    };
    let (base, is_traces_specific) = endpoint;
    let url = match protocol {
        // The OTLP spec: the generic endpoint gets /v1/traces appended for HTTP.
        OtlpProtocol::HttpProtobuf if !is_traces_specific => {
            format!("{}/v1/traces", base.trim_end_matches('/'))
        }
        _ => base,
    };
    Some((url, protocol))
}

/// Builds the tracer provider for `service`, or `None` when no endpoint is configured (or the
/// configuration cannot work, which is said on stderr: telemetry never stops a service).
pub fn tracer_provider(env: &Env, service: &str) -> Option<SdkTracerProvider> {
    let (url, protocol) = otlp_target(env)?;
    let exporter = match protocol {
        // gRPC (protocol.md#ops) is plain text: for an https:// collector use http/protobuf.
        OtlpProtocol::Grpc if url.starts_with("https://") => Err(
            "OTLP over gRPC has no TLS here: use http/protobuf for an https:// collector".into(),
        ),
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(url)
            .build()
            .map_err(|e| e.to_string()),
        OtlpProtocol::HttpProtobuf => http_client(env).and_then(|client| {
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(client)
                .with_endpoint(url)
                .build()
                .map_err(|e| e.to_string())
        }),
    };
    let exporter = match exporter {
        Ok(e) => e,
        Err(e) => {
            eprintln!("OTLP trace export disabled: {e}");
            return None;
        }
    };
    let name = env.string("OTEL_SERVICE_NAME", service);
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(name)
        .build();
    Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    )
}

/// The exporter's HTTP client: `https://` with rustls (ring) and Mozilla's roots plus the CA
/// file of `OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE` / `OTEL_EXPORTER_OTLP_CERTIFICATE` (the
/// OTLP exporter spec's variables), 10 s per export.
fn http_client(env: &Env) -> Result<reqwest::blocking::Client, String> {
    let ca = env
        .get("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE")
        .or_else(|| env.get("OTEL_EXPORTER_OTLP_CERTIFICATE"))
        .map(std::path::PathBuf::from);
    let tls = crate::tls::client_config(ca.as_deref())?;
    // reqwest's blocking client runs a runtime of its own: it is built (and later dropped) off
    // any async runtime, like the exporter's default client.
    std::thread::spawn(move || {
        reqwest::blocking::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(std::time::Duration::from_secs(10))
            .build()
    })
    .join()
    .map_err(|_| "building the OTLP HTTP client panicked".to_owned())?
    .map_err(|e| format!("OTLP HTTP client: {e}"))
}

/// Libraries that log frame payloads or connection credentials at their most verbose levels
/// (tungstenite logs every received message, with tokens; async-nats logs its CONNECT, with the
/// password), and the most verbose level each may log at, whatever `RUST_LOG` asks for.
const CAPPED: &[(&str, tracing::Level)] = &[
    ("tungstenite", tracing::Level::INFO),
    ("tokio_tungstenite", tracing::Level::INFO),
    ("async_nats", tracing::Level::DEBUG),
    ("hyper", tracing::Level::INFO),
    ("h2", tracing::Level::INFO),
];

/// Whether an event may be logged at all: the [`CAPPED`] libraries are held down (never raised:
/// `RUST_LOG` still decides below the cap).
pub fn secret_safe(meta: &tracing::Metadata<'_>) -> bool {
    match CAPPED
        .iter()
        .find(|(target, _)| meta.target().starts_with(target))
    {
        Some((_, max)) => meta.level() <= max,
        None => true,
    }
}

/// `RUST_LOG` as a filter (`info` when it cannot be parsed).
pub fn log_filter(spec: &str) -> EnvFilter {
    EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// What the log output lets through: `filter` (RUST_LOG), and only what [`secret_safe`] allows.
/// One combined filter, so that its level hint is RUST_LOG's: with a bare `filter_fn` outside it
/// (no hint), the subscriber's max level — and `log::max_level()`, which tracing-log sets from
/// it — was TRACE, so every disabled `trace!`/`debug!` (tungstenite's per frame, through `log`)
/// was built and filtered at run time: ~10 % of chat-edge's user time at RUST_LOG=warn (issue 12).
pub fn log_output_filter<S>(filter: EnvFilter) -> impl tracing_subscriber::layer::Filter<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::filter::FilterExt as _;
    filter.and(
        tracing_subscriber::filter::filter_fn(secret_safe)
            .with_max_level_hint(tracing::level_filters::LevelFilter::TRACE),
    )
}

/// Installs logging (`RUST_LOG`, default `info`) and, when configured, OTLP trace export.
/// Call once, from `main`.
pub fn init(env: &Env, service: &str) -> TelemetryGuard {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = log_filter(&env.string("RUST_LOG", "info"));
    let json = env.get("LOG_FORMAT") == Some("json");
    let fmt = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_filter(log_output_filter(filter))
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_filter(log_output_filter(filter))
            .boxed()
    };
    let provider = tracer_provider(env, service).unwrap_or_else(context_only_provider);
    let tracer = provider.tracer(service.to_owned());
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(EnvFilter::new(
            "info,h2=off,hyper=off,tonic=off,tower=off,reqwest=off",
        ));
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    TelemetryGuard {
        provider: Some(provider),
    }
}

/// A provider that exports nothing and records nothing of its own (spans are sampled out
/// unless a remote parent was sampled, and then go nowhere), but gives every span a trace and
/// span id, so that context is propagated in `traceparent` headers whatever is configured.
pub fn context_only_provider() -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
        .build()
}

/// For tests: logs only when `TEST_LOG` is set, so test output stays quiet.
pub fn init_for_tests() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        if std::env::var_os("TEST_LOG").is_some() {
            let filter = log_filter(&std::env::var("TEST_LOG").unwrap_or_else(|_| "debug".into()));
            let _ = tracing_subscriber::registry()
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_test_writer()
                        .with_filter(log_output_filter(filter)),
                )
                .try_init();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_filter_keeps_rust_logs_level_hint() {
        use tracing::Subscriber as _;
        use tracing::level_filters::LevelFilter;
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer().with_filter(log_output_filter(log_filter("warn"))),
        );
        // Without the hint, every disabled trace!/debug! (and every `log` record) is built and
        // filtered at run time.
        assert_eq!(subscriber.max_level_hint(), Some(LevelFilter::WARN));
    }

    #[test]
    fn otlp_endpoint_follows_the_spec() {
        assert_eq!(otlp_target(&Env::default()), None);
        let env = Env::from_pairs([("OTEL_EXPORTER_OTLP_ENDPOINT", "http://j:4318/")]);
        assert_eq!(
            otlp_target(&env),
            Some(("http://j:4318/v1/traces".into(), OtlpProtocol::HttpProtobuf))
        );
        let env = env.with("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
        assert_eq!(otlp_target(&env).unwrap().1, OtlpProtocol::Grpc);
        let env = Env::from_pairs([("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://x/custom")]);
        assert_eq!(otlp_target(&env).unwrap().0, "http://x/custom");
    }
}
