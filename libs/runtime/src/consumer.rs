//! The batch loop of a durable pull consumer of the `CHAT` stream (chat-history's archive
//! writer, chat-notify): pull a batch, hand it to the service, start over after a failure; and
//! while a batch in hand waits for an outage to end, keep it from being redelivered elsewhere.

use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{PullConsumer, pull};
use async_nats::jetstream::{self, AckKind};
use tokio_util::sync::CancellationToken;

/// A durable consumer and how it is pulled.
pub struct BatchLoop {
    /// The consumer, created if missing.
    pub consumer: pull::Config,
    /// Most messages per batch.
    pub batch_max: usize,
    /// How long a batch waits for more messages after its first.
    pub batch_wait: Duration,
}

impl BatchLoop {
    pub fn new(consumer: pull::Config, batch_max: usize, batch_wait: Duration) -> Self {
        BatchLoop {
            consumer,
            batch_max,
            batch_wait,
        }
    }

    /// Hands each batch to `handle` until `shutdown`; after a failure of the consumer (NATS
    /// away, the stream gone) starts over half a second later. What `handle` does not
    /// acknowledge is redelivered after the consumer's `ack_wait`.
    pub async fn run<F, Fut>(
        &self,
        stream: &jetstream::stream::Stream,
        shutdown: &CancellationToken,
        mut handle: F,
    ) where
        F: FnMut(Vec<jetstream::Message>) -> Fut,
        Fut: Future<Output = ()>,
    {
        let name = self.consumer.durable_name.as_deref().unwrap_or_default();
        while !shutdown.is_cancelled() {
            if let Err(e) = self.consume(stream, shutdown, &mut handle).await {
                tracing::warn!(consumer = name, error = %e, "{name} consumer interrupted, restarting");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }

    async fn consume<F, Fut>(
        &self,
        stream: &jetstream::stream::Stream,
        shutdown: &CancellationToken,
        handle: &mut F,
    ) -> Result<(), async_nats::Error>
    where
        F: FnMut(Vec<jetstream::Message>) -> Fut,
        Fut: Future<Output = ()>,
    {
        let name = self.consumer.durable_name.as_deref().unwrap_or_default();
        let consumer: PullConsumer = stream
            .get_or_create_consumer(name, self.consumer.clone())
            .await?;
        let batch_max = self.batch_max.max(1);
        let mut messages = chat_bus::stream::pull_messages(&consumer, batch_max).await?;
        while let Some(batch) =
            chat_bus::stream::next_batch(&mut messages, batch_max, self.batch_wait, shutdown)
                .await?
        {
            handle(batch).await;
        }
        Ok(())
    }
}

/// How a batch is kept in hand while an outage lasts.
#[derive(Debug, Clone, Copy)]
pub struct InHand {
    /// The consumer's `ack_wait`: a message not acknowledged within it is redelivered.
    pub ack_wait: Duration,
    /// The counter of failed attempts (e.g. `chat_history_write_errors_total`).
    pub errors: &'static str,
}

impl InHand {
    /// How often the messages of a batch in hand are marked in progress: three times per
    /// `ack_wait`, so that one lost or late mark does not let the server redeliver them.
    pub fn progress_every(&self) -> Duration {
        self.ack_wait / 3
    }

    /// Runs `op` until it succeeds, backing off from 100 ms to 5 s, while `batch` stays in hand
    /// (marked in progress every [`progress_every`](Self::progress_every)); `None` if
    /// `shutdown` came first.
    pub async fn retry<T, E, F, Fut>(
        &self,
        what: &str,
        batch: &[jetstream::Message],
        shutdown: &CancellationToken,
        op: F,
    ) -> Option<T>
    where
        E: std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        match self.retry_while(what, batch, shutdown, |_| true, op).await {
            Some(Ok(v)) => Some(v),
            _ => None,
        }
    }

    /// [`retry`](Self::retry) while the failure is `transient`; `Some(Err(e))` for the first
    /// failure that is not (the caller decides what becomes of the batch).
    pub async fn retry_while<T, E, F, Fut>(
        &self,
        what: &str,
        batch: &[jetstream::Message],
        shutdown: &CancellationToken,
        transient: impl Fn(&E) -> bool,
        mut op: F,
    ) -> Option<Result<T, E>>
    where
        E: std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut delay = Duration::from_millis(100);
        let mut last_progress = Instant::now();
        loop {
            match op().await {
                Ok(v) => return Some(Ok(v)),
                Err(e) if !transient(&e) => return Some(Err(e)),
                Err(e) => {
                    metrics::counter!(self.errors).increment(1);
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "{what} failed");
                    if last_progress.elapsed() > self.progress_every() {
                        for m in batch {
                            let _ = m.ack_with(AckKind::Progress).await;
                        }
                        last_progress = Instant::now();
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_transient_failures_and_stops_at_the_first_other() {
        let hand = InHand {
            ack_wait: Duration::from_secs(30),
            errors: "test_consumer_errors_total",
        };
        assert_eq!(hand.progress_every(), Duration::from_secs(10));
        let stop = CancellationToken::new();
        let mut tries = 0;
        let got = hand
            .retry("op", &[], &stop, || {
                tries += 1;
                let t = tries;
                async move { if t < 4 { Err("down") } else { Ok(t) } }
            })
            .await;
        assert_eq!(got, Some(4));

        let mut tries = 0;
        let got = hand
            .retry_while(
                "op",
                &[],
                &stop,
                |e: &&str| *e == "down",
                || {
                    tries += 1;
                    let t = tries;
                    async move {
                        if t < 3 {
                            Err("down")
                        } else {
                            Err::<(), _>("refused")
                        }
                    }
                },
            )
            .await;
        assert_eq!(got, Some(Err("refused")));
        assert_eq!(tries, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_retry() {
        let hand = InHand {
            ack_wait: Duration::from_secs(30),
            errors: "test_consumer_errors_total",
        };
        let stop = CancellationToken::new();
        stop.cancel();
        let got = hand
            .retry("op", &[], &stop, || async { Err::<(), _>("down") })
            .await;
        assert_eq!(got, None);
    }
}
