//! Stopping: SIGINT or SIGTERM cancels a token that every long-lived task watches.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Resolves on the first SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received, draining"),
        _ = term => tracing::info!("SIGTERM received, draining"),
    }
}

/// A token cancelled by the first SIGINT or SIGTERM.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        signal().await;
        t.cancel();
    });
    token
}

/// `CHAT_DRAIN_GRACE` as the services read it: how long a drain may take after SIGTERM.
pub fn drain_grace(env: &crate::Env, default: Duration) -> Result<Duration, crate::ConfigError> {
    env.duration("CHAT_DRAIN_GRACE", default)
}

/// Runs `app` until it returns, or until `grace` after `stop` is cancelled, whichever is first;
/// returns false when the grace ran out. Whatever is down (NATS unreachable, PostgreSQL gone),
/// a drain ends: flushes and acknowledgements that cannot complete are abandoned, and what was
/// not acknowledged is delivered again later, as it would be after a crash.
pub async fn drain_within(
    stop: &CancellationToken,
    grace: Duration,
    app: impl std::future::Future<Output = ()>,
) -> bool {
    tokio::select! {
        () = app => true,
        () = async {
            stop.cancelled().await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(grace_ms = grace.as_millis() as u64, "drain grace elapsed: exiting with work unfinished (it will be redelivered)");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stuck_drain_ends_after_the_grace() {
        let stop = CancellationToken::new();
        let stuck = async {
            stop.cancelled().await;
            std::future::pending::<()>().await
        };
        stop.cancel();
        let started = tokio::time::Instant::now();
        assert!(!drain_within(&stop, Duration::from_secs(3), stuck).await);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        let quick = async {};
        assert!(drain_within(&stop, Duration::from_secs(3), quick).await);
    }
}
