//! Webhooks for push gateways: notifications of users with no live session are POSTed as JSON
//! (a `UserNotification`) to `NOTIFY_WEBHOOK_URL`, signed, and retried with exponential backoff
//! and jitter for a bounded time. Deliveries are rows of `webhook_outbox`, written in the
//! transaction that made the notification, so a restart loses none; a dispatcher task claims due
//! rows with a lease (safe with several instances) and POSTs them from tasks of its own. The
//! consumer never waits for a gateway.
//!
//! Signature, the Standard Webhooks way ([`chat_runtime::webhook`]): `webhook-id` (the
//! notification id), `webhook-timestamp` (Unix seconds) and `webhook-signature`
//! (`v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`), keyed with the decoded key of a
//! `whsec_<base64>` `NOTIFY_WEBHOOK_SECRET`, or with the secret's bytes for an older secret.
//! Deprecated, kept for one version: `X-Chat-Timestamp` (milliseconds) and `X-Chat-Signature`,
//! the lowercase hex HMAC-SHA256 keyed with the secret's bytes of `"<timestamp>.<body>"`.
//! Each retry is signed afresh with a new timestamp. Delivery is at least once: the
//! notification `id` lets the gateway drop a repeat.
//!
//! The POST client, the backoff and the TLS setup (rustls with the ring provider; Mozilla's
//! roots plus the CAs of `NOTIFY_WEBHOOK_CA`) are [`chat_runtime::webhook`]'s, shared with the
//! integration events of chat-history.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chat_bus::api::PresenceRequest;
use chat_bus::{now_ms, rpc};
use chat_proto::{Status, UserId};
use chat_runtime::webhook::{self, Target, backoff, post_once};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::WebhookConfig;
use crate::store::{self, Claimed};

/// Deliveries in flight at once.
const CONCURRENCY: usize = 64;

/// The deprecated signature (`X-Chat-Signature`, kept for one version beside the Standard
/// Webhooks headers): lowercase hex HMAC-SHA256, keyed with the secret's bytes as configured, of
/// `"<timestamp ms>.<body>"`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The key of the Standard Webhooks signature: the decoded key of a `whsec_<base64>` secret, or
/// the secret's bytes as configured for any other (older) secret.
pub fn standard_key(secret: &str) -> Vec<u8> {
    webhook::whsec_key(secret).unwrap_or_else(|_| secret.as_bytes().to_vec())
}

/// Every header of one attempt: the Standard Webhooks three (`webhook-id` is the notification
/// id) and the deprecated `X-Chat-Timestamp` (ms) / `X-Chat-Signature`.
pub fn headers(secret: &str, id: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    let ms = now_ms();
    let mut h = webhook::standard_headers(&standard_key(secret), id, ms.div_euclid(1000), body);
    h.push(("X-Chat-Timestamp", ms.to_string()));
    h.push(("X-Chat-Signature", sign(secret.as_bytes(), ms, body)));
    h
}

/// The handle the consumer uses: after a commit that queued deliveries, it wakes the
/// dispatcher (which also polls, for retries and for rows left by a dead instance).
#[derive(Clone)]
pub struct Webhooks {
    wake: Arc<Notify>,
}

impl Webhooks {
    /// Starts the dispatcher; it stops at `shutdown`, leaving undelivered rows in the outbox.
    pub fn start(
        config: WebhookConfig,
        nats: async_nats::Client,
        pool: PgPool,
        shutdown: CancellationToken,
    ) -> (Webhooks, tokio::task::JoinHandle<()>) {
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn(dispatch(config, nats, pool, wake.clone(), shutdown));
        (Webhooks { wake }, task)
    }

    /// New rows are in the outbox.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

async fn dispatch(
    config: WebhookConfig,
    nats: async_nats::Client,
    pool: PgPool,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let Some(target) = Target::parse(&config.url) else {
        return;
    };
    let tls = match webhook::connector(config.ca.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            // Checked when the configuration was read; only a file changed since gets here.
            tracing::error!(error = %e, "NOTIFY_WEBHOOK_CA unusable: webhooks stopped");
            return;
        }
    };
    let target = Arc::new(target);
    let config = Arc::new(config);
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let tasks = TaskTracker::new();
    let poll = config
        .retry_min
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    // A claimed row is not taken by anyone else until its attempt must be over.
    let lease = config.timeout * 2 + Duration::from_secs(1);
    while !shutdown.is_cancelled() {
        loop {
            let free = permits.available_permits();
            if free == 0 {
                break;
            }
            let now = now_ms();
            let claimed = match store::claim_webhooks(
                &pool,
                now,
                now + lease.as_millis() as i64,
                free as i64,
            )
            .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook outbox unreadable");
                    break;
                }
            };
            if claimed.is_empty() {
                break;
            }
            let online = online_users(&nats, &claimed, config.presence_timeout).await;
            for c in claimed {
                if online.contains(&c.user) {
                    metrics::counter!("chat_notify_webhook_skipped_total").increment(1);
                    if let Err(e) = store::finish_webhook(&pool, &c.id).await {
                        tracing::debug!(error = %e, "skipped delivery not removed");
                    }
                    continue;
                }
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let (target, tls, config, pool, shutdown) = (
                    target.clone(),
                    tls.clone(),
                    config.clone(),
                    pool.clone(),
                    shutdown.clone(),
                );
                tasks.spawn(async move {
                    tokio::select! {
                        // Abandoned mid-attempt: the lease runs out and the row is tried again.
                        _ = shutdown.cancelled() => {}
                        _ = attempt(&target, &tls, &config, &pool, c) => {}
                    }
                    drop(permit);
                });
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
    tasks.close();
    tasks.wait().await;
}

/// Users with a live session, as chat-presence sees them. No answer (chat-presence down or not
/// deployed) counts everyone as offline: a push too many beats one missed.
async fn online_users(
    nats: &async_nats::Client,
    claimed: &[Claimed],
    timeout: Duration,
) -> BTreeSet<UserId> {
    let users: BTreeSet<UserId> = claimed.iter().map(|c| c.user.clone()).collect();
    let req = PresenceRequest::Users {
        users: users.into_iter().collect(),
    };
    match rpc::call(nats, &req, timeout).await {
        Ok(reply) => reply
            .users
            .into_iter()
            .filter(|e| e.status != Status::Offline)
            .map(|e| e.user)
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "no presence answer; treating users as offline");
            BTreeSet::new()
        }
    }
}

/// One attempt of a claimed delivery; then the row is removed (delivered, refused for good, or
/// out of time) or scheduled again with backoff.
async fn attempt(
    target: &Target,
    tls: &TlsConnector,
    config: &WebhookConfig,
    pool: &PgPool,
    c: Claimed,
) {
    let headers = headers(&config.secret, &c.id, c.body.as_bytes());
    let outcome = post_once(
        target,
        Some(tls),
        "chat-notify",
        &headers,
        c.body.as_bytes(),
        config.timeout,
    )
    .await;
    let result = match outcome {
        Ok(()) => {
            metrics::counter!("chat_notify_webhook_deliveries_total").increment(1);
            store::finish_webhook(pool, &c.id).await
        }
        Err(e) => {
            metrics::counter!("chat_notify_webhook_failures_total").increment(1);
            let wait = backoff(c.attempts.max(1) as u32, config.retry_min, config.retry_max);
            let next = now_ms() + wait.as_millis() as i64;
            if !e.retryable() || next > c.created_at + config.give_up.as_millis() as i64 {
                metrics::counter!("chat_notify_webhook_dropped_total").increment(1);
                tracing::warn!(id = c.id, attempts = c.attempts, error = %e, "webhook delivery abandoned");
                store::finish_webhook(pool, &c.id).await
            } else {
                tracing::debug!(id = c.id, attempts = c.attempts, error = %e, retry_in_ms = wait.as_millis() as u64, "webhook attempt failed");
                store::retry_webhook(pool, &c.id, next).await
            }
        }
    };
    if let Err(e) = result {
        // The lease runs out and the row is claimed again: at least once.
        tracing::warn!(error = %e, "webhook outbox not updated");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // python3: hmac.new(b"secret", b'1700000000000.{"a":1}', hashlib.sha256).hexdigest()
        let sig = sign(b"secret", 1_700_000_000_000, br#"{"a":1}"#);
        assert_eq!(
            sig,
            "4ef2732b0d632a6897af3a6d02a6de287f60d6c5f15dabdb0ceb045a34e3c5a7"
        );
        assert_eq!(sig.len(), 64);
        assert_ne!(sig, sign(b"other", 1_700_000_000_000, br#"{"a":1}"#));
    }

    #[test]
    fn both_header_sets_sign_the_same_body() {
        let body = br#"{"id":"n1"}"#;
        let h = headers("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "n1", body);
        let get = |n: &str| h.iter().find(|(k, _)| *k == n).unwrap().1.clone();
        let secs: i64 = get("webhook-timestamp").parse().unwrap();
        let ms: i64 = get("X-Chat-Timestamp").parse().unwrap();
        assert_eq!(secs, ms / 1000);
        assert_eq!(get("webhook-id"), "n1");
        let key = webhook::whsec_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            get("webhook-signature"),
            webhook::sign_v1(&key, "n1", secs, body)
        );
        assert_eq!(
            get("X-Chat-Signature"),
            sign(b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", ms, body)
        );
        // A secret that is not whsec_ keys the Standard signature with its bytes.
        assert_eq!(standard_key("plain"), b"plain");
    }
}
