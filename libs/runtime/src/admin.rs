//! The admin listener every service has: `/healthz` (alive), `/readyz` (dependencies reachable)
//! and `/metrics` (Prometheus text).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Checks that a service's dependencies answer; `Err` names the one that does not.
pub type ReadinessCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Histogram buckets of latencies, in seconds (the default for every histogram).
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Histogram buckets of counts (`history_batch_size`: events per archive write, up to
/// `HISTORY_BATCH_MAX`).
const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0,
];

/// The process-wide Prometheus recorder (installed on first use).
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(SECONDS_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full("history_batch_size".into()), COUNT_BUCKETS)
            })
            .unwrap_or_else(|_| PrometheusBuilder::new());
        match builder.install_recorder() {
            Ok(handle) => handle,
            // Another recorder is installed already (a test harness): render an empty registry.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    })
}

#[derive(Clone)]
struct AdminState {
    ready: ReadinessCheck,
}

/// The admin routes.
pub fn router(ready: ReadinessCheck) -> Router {
    metrics_handle();
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(|| async { metrics_handle().render() }))
        .with_state(AdminState { ready })
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    match (state.ready)().await {
        Ok(()) => (StatusCode::OK, "ready".to_owned()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
    }
}

/// Serves the admin routes on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, ready: ReadinessCheck, shutdown: CancellationToken) {
    let app = router(ready);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "admin server failed");
    }
}

/// A readiness check that passes while `client` is connected to NATS.
pub fn nats_ready(client: async_nats::Client) -> ReadinessCheck {
    Arc::new(move || {
        let client = client.clone();
        Box::pin(async move {
            if crate::nats::is_connected(&client) {
                Ok(())
            } else {
                Err("nats disconnected".into())
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes_have_count_buckets_and_latencies_second_buckets() {
        let handle = metrics_handle();
        metrics::histogram!("history_batch_size").record(37.0);
        metrics::histogram!("test_latency_seconds").record(0.003);
        let text = handle.render();
        if text.is_empty() {
            // Another recorder was installed first in this test process: nothing to check.
            return;
        }
        assert!(
            text.contains(r#"history_batch_size_bucket{le="50"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"history_batch_size_bucket{le="2000"} 1"#),
            "{text}"
        );
        assert!(
            !text.contains(r#"history_batch_size_bucket{le="0.0001"}"#),
            "{text}"
        );
        assert!(
            text.contains(r#"test_latency_seconds_bucket{le="0.005"} 1"#),
            "{text}"
        );
    }
}
