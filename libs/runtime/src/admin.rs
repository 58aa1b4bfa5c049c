//! The admin listener every service has: `/healthz` (alive), `/readyz` (dependencies reachable)
//! and `/metrics` (Prometheus text).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

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

/// Histogram buckets of counts, for every `…_batch_size` (events per archive write, up to
/// `HISTORY_BATCH_MAX`; events per notify batch).
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
                b.set_buckets_for_metric(Matcher::Suffix("_batch_size".into()), COUNT_BUCKETS)
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
        .route(
            "/metrics",
            get(|| async {
                crate::metrics::update_process();
                metrics_handle().render()
            }),
        )
        .with_state(AdminState { ready })
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    match (state.ready)().await {
        Ok(()) => (StatusCode::OK, "ready".to_owned()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
    }
}

/// How often histogram samples are folded into their buckets without a scrape.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Upkeep passes run so far (for tests).
static UPKEEP_RUNS: AtomicU64 = AtomicU64::new(0);

/// Upkeep passes run so far in this process.
pub fn upkeep_runs() -> u64 {
    UPKEEP_RUNS.load(Ordering::Relaxed)
}

/// Folds recorded histogram samples into their buckets every [`UPKEEP_EVERY`] until
/// `shutdown`. metrics-exporter-prometheus does it only when `/metrics` is rendered: without a
/// scraper (compose without the metrics profile, Helm without a ServiceMonitor) every sample
/// of every histogram stayed in memory forever (issue 15 item 12).
pub async fn upkeep(shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(UPKEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        metrics_handle().run_upkeep();
        UPKEEP_RUNS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Serves the admin routes on `listener` until `shutdown` is cancelled, and keeps the metrics'
/// memory bounded ([`upkeep`]).
pub async fn serve(listener: TcpListener, ready: ReadinessCheck, shutdown: CancellationToken) {
    let upkeep = tokio::spawn(upkeep(shutdown.clone()));
    let readiness = tokio::spawn(export_readiness(ready.clone(), shutdown.clone()));
    let app = router(ready);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "admin server failed");
    }
    upkeep.abort();
    readiness.abort();
}

/// Sets `chat_ready` to 1 or 0 from `ready` every [`UPKEEP_EVERY`], so that an alert can see a
/// service that is up but not ready (its `/readyz` is what a load balancer sees).
async fn export_readiness(ready: ReadinessCheck, shutdown: CancellationToken) {
    let gauge = metrics::gauge!("chat_ready");
    let mut tick = tokio::time::interval(UPKEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ok = tokio::time::timeout(UPKEEP_EVERY, ready()).await;
        gauge.set(if matches!(ok, Ok(Ok(()))) { 1.0 } else { 0.0 });
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

/// Every one of `checks` must pass, in order (the first failure names the dependency).
pub fn all(checks: Vec<ReadinessCheck>) -> ReadinessCheck {
    Arc::new(move || {
        let futs: Vec<_> = checks.iter().map(|c| c()).collect();
        Box::pin(async move {
            for f in futs {
                f.await?;
            }
            Ok(())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn upkeep_runs_without_a_scrape_until_shutdown() {
        let stop = CancellationToken::new();
        let before = upkeep_runs();
        let task = tokio::spawn(upkeep(stop.clone()));
        for _ in 0..1000 {
            metrics::histogram!("test_upkeep_seconds").record(0.001);
        }
        // The first tick is immediate, then one per period.
        tokio::time::sleep(UPKEEP_EVERY * 3 + Duration::from_millis(1)).await;
        let runs = upkeep_runs() - before;
        assert!(runs >= 3, "{runs} upkeep passes");
        stop.cancel();
        task.await.unwrap();
        let after_stop = upkeep_runs();
        tokio::time::sleep(UPKEEP_EVERY * 3).await;
        assert_eq!(upkeep_runs(), after_stop, "no upkeep after shutdown");
    }

    #[test]
    fn batch_sizes_have_count_buckets_and_latencies_second_buckets() {
        let handle = metrics_handle();
        metrics::histogram!("chat_history_batch_size").record(37.0);
        metrics::histogram!("test_latency_seconds").record(0.003);
        let text = handle.render();
        if text.is_empty() {
            // Another recorder was installed first in this test process: nothing to check.
            return;
        }
        assert!(
            text.contains(r#"chat_history_batch_size_bucket{le="50"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"chat_history_batch_size_bucket{le="2000"} 1"#),
            "{text}"
        );
        assert!(
            !text.contains(r#"chat_history_batch_size_bucket{le="0.0001"}"#),
            "{text}"
        );
        assert!(
            text.contains(r#"test_latency_seconds_bucket{le="0.005"} 1"#),
            "{text}"
        );
    }
}
