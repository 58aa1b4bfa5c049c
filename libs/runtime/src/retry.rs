//! Bounded exponential backoff for start-up steps and outages.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Runs `op` until it succeeds, backing off from 100 ms to 5 s between tries; `None` if
/// `shutdown` is cancelled first. Each failure is logged with `what`.
pub async fn until_ok<T, E, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    mut op: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match op().await {
            Ok(v) => return Some(v),
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "{what} failed")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// [`until_ok`] for a step of a service's start: an error if `shutdown` came first (the start
/// is abandoned).
pub async fn at_start<T, E, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    op: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    until_ok(what, shutdown, op)
        .await
        .ok_or_else(|| anyhow::anyhow!("stopped during start ({what})"))
}
