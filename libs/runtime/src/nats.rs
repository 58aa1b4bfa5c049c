//! Connecting to NATS with the credentials and TLS settings of the environment.

use std::path::PathBuf;
use std::time::Duration;

use crate::{ConfigError, Env};

/// How to reach NATS: `NATS_URL` (nats://127.0.0.1:4222; a comma-separated list names several
/// servers of a cluster, the client moving to another when its server dies), and optionally
/// `NATS_USER` + `NATS_PASSWORD`, `NATS_TOKEN`, `NATS_CREDS` (a .creds file), `NATS_TLS_CA`,
/// `NATS_TLS_CERT` + `NATS_TLS_KEY` (client certificate).
#[derive(Debug, Clone)]
pub struct NatsConfig {
    pub url: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub creds: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// How the requests this process serves are bounded.
    pub serve: ServeLimits,
}

/// Bounds of [`serve_requests`], per subject served by one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// `CHAT_REQUEST_CONCURRENCY` (256): requests handled at once. Beyond it the next request
    /// waits (in the subscription, in arrival order) until one finishes: the reader stops taking
    /// requests, so a flood costs at most this many tasks, and each waiting request is still
    /// bounded by its requester's own timeout.
    pub concurrency: usize,
    /// `CHAT_REQUEST_DEADLINE` (4s): how long one request may take once started; past it the
    /// requester is answered `unavailable` (rather than never) and the work is dropped. Shorter
    /// than the requesters' `CHAT_REQUEST_TIMEOUT` (5s), so that the answer still arrives.
    pub deadline: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            concurrency: 256,
            deadline: Duration::from_secs(4),
        }
    }
}

impl ServeLimits {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let d = ServeLimits::default();
        Ok(ServeLimits {
            concurrency: env.parse("CHAT_REQUEST_CONCURRENCY", d.concurrency)?.max(1),
            deadline: env
                .duration("CHAT_REQUEST_DEADLINE", d.deadline)?
                .max(Duration::from_millis(10)),
        })
    }
}

impl NatsConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let path = |k: &str| env.get(k).map(PathBuf::from);
        Ok(NatsConfig {
            url: env.string("NATS_URL", "nats://127.0.0.1:4222"),
            user: env.get("NATS_USER").map(str::to_owned),
            password: env.get("NATS_PASSWORD").map(str::to_owned),
            token: env.get("NATS_TOKEN").map(str::to_owned),
            creds: path("NATS_CREDS"),
            tls_ca: path("NATS_TLS_CA"),
            tls_cert: path("NATS_TLS_CERT"),
            tls_key: path("NATS_TLS_KEY"),
            serve: ServeLimits::from_env(env)?,
        })
    }

    /// A configuration for a plain URL (tests).
    pub fn url(url: impl Into<String>) -> Self {
        NatsConfig {
            url: url.into(),
            user: None,
            password: None,
            token: None,
            creds: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            serve: ServeLimits::default(),
        }
    }

    /// The servers of `url`: one, or several separated by commas.
    pub fn servers(&self) -> std::io::Result<Vec<async_nats::ServerAddr>> {
        let servers = self
            .url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<std::io::Result<Vec<async_nats::ServerAddr>>>()?;
        if servers.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "NATS_URL names no server",
            ));
        }
        Ok(servers)
    }

    /// Connects, retrying until the server answers: services may start before NATS does.
    pub async fn connect(&self, name: &str) -> Result<async_nats::Client, async_nats::Error> {
        let mut opts = async_nats::ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(5)))
            .subscription_capacity(1 << 16);
        if let (Some(u), Some(p)) = (&self.user, &self.password) {
            opts = opts.user_and_password(u.clone(), p.clone());
        }
        if let Some(t) = &self.token {
            opts = opts.token(t.clone());
        }
        if let Some(c) = &self.creds {
            opts = opts.credentials_file(c).await?;
        }
        if let Some(ca) = &self.tls_ca {
            opts = opts.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
        let client = opts.connect(self.servers()?).await?;
        Ok(client)
    }
}

/// How long a drain waits for NATS to take what is buffered.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Flushes, giving up after [`FLUSH_TIMEOUT`]: with the server unreachable a flush waits for a
/// reconnection that may never come, and a drain must end (issue 15 item 13).
pub async fn flush_within(client: &async_nats::Client) {
    match tokio::time::timeout(FLUSH_TIMEOUT, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "flush failed"),
        Err(_) => tracing::warn!("NATS unreachable: flush abandoned"),
    }
}

/// Is the client connected right now?
pub fn is_connected(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// Whether a request's reply subject may be answered (protocol.md#nats): only inboxes, `_INBOX.…` or
/// a client's own prefix such as `_INBOX_integrations.…`. Anything else (a stream's subject, a
/// KV key, another service's subject) is dropped unanswered.
pub fn trusted_reply_subject(reply: &str) -> bool {
    // `_R_.<x>.<y>`: the reply subject nats-server gives a request that came through a service
    // import from another account (an integration's own account, docs/deploy.md). It routes
    // back to that requester only.
    if let Some(rest) = reply.strip_prefix("_R_.") {
        return !rest.is_empty() && !rest.contains(['*', '>']);
    }
    let Some(rest) = reply.strip_prefix("_INBOX") else {
        return false;
    };
    // `_INBOX.x` or `_INBOX_<prefix>.x`, with something after the dot.
    let rest = match rest.strip_prefix('_') {
        Some(custom) => match custom.split_once('.') {
            Some((prefix, tail)) if !prefix.is_empty() => tail,
            _ => return false,
        },
        None => match rest.strip_prefix('.') {
            Some(tail) => tail,
            None => return false,
        },
    };
    !rest.is_empty() && !rest.contains(['*', '>'])
}

/// Serves request/reply on `subject` in queue group `queue` until `shutdown`, then drains: asks
/// the server to route nothing more here, answers every request already delivered (none is
/// dropped unanswered, to wait out its requester's timeout), waits for those in flight, and
/// returns only once the server has taken the unsubscription ([`await_unsubscribed`]), so that a
/// request sent after the return gets "no responders" at once. Each request runs in its own task, inside a span
/// continuing the requester's trace; `handle` returns the reply payload. `limits` bounds the
/// work: at most `concurrency` requests at once (the next one waits for a free slot), each
/// answered within `deadline` (`unavailable` past it). Only inbox reply subjects are answered
/// ([`trusted_reply_subject`]).
pub async fn serve_requests<F, Fut>(
    client: async_nats::Client,
    subject: &'static str,
    queue: &'static str,
    limits: ServeLimits,
    shutdown: tokio_util::sync::CancellationToken,
    handle: F,
) -> Result<(), async_nats::Error>
where
    F: Fn(async_nats::Message) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bytes::Bytes> + Send + 'static,
{
    use futures::StreamExt;
    use tracing::Instrument;

    let handle = std::sync::Arc::new(handle);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.concurrency.max(1)));
    let mut sub = client.queue_subscribe(subject, queue.to_owned()).await?;
    let tasks = tokio_util::task::TaskTracker::new();
    // Once draining, the subscription ends by itself after what the server had sent; with NATS
    // unreachable it may not, hence the bound. Not closed: a request still on the wire when the
    // drain begins can be lost, since async-nats forgets the subscription one read after it sends
    // the UNSUB, not at the server's answer to it.
    let mut draining = false;
    loop {
        let next = if draining {
            tokio::time::timeout(FLUSH_TIMEOUT, sub.next())
                .await
                .ok()
                .flatten()
        } else {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    draining = drain(&mut sub, subject).await;
                    if !draining {
                        break;
                    }
                    continue;
                }
                msg = sub.next() => msg,
            }
        };
        let Some(msg) = next else {
            break;
        };
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        if !trusted_reply_subject(&reply) {
            // protocol.md#nats: answering `$KV.…` or `chat.…` would publish into a bucket or a
            // stream with this service's permissions.
            metrics::counter!("chat_nats_requests_dropped_total", "reason" => "reply_subject")
                .increment(1);
            tracing::debug!(subject, reply = %reply, "request with a foreign reply subject dropped");
            continue;
        }
        // A free slot first: while every slot is busy, requests wait in the subscription. Slots
        // free within the deadline, so even a shutdown waits for one rather than drop `msg`; the
        // drain starts at the next turn of the loop.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                metrics::counter!("chat_nats_requests_waited_total", "subject" => subject)
                    .increment(1);
                match slots.clone().acquire_owned().await {
                    Ok(slot) => slot,
                    Err(_) => break,
                }
            }
        };
        let span = tracing::info_span!(
            "request",
            otel.kind = "server",
            messaging.system = chat_bus::trace::MESSAGING_SYSTEM,
            messaging.operation.type = "process",
            messaging.destination.name = subject,
            subject
        );
        chat_bus::trace::continue_from(&span, msg.headers.as_ref());
        let handle = handle.clone();
        let client = client.clone();
        tasks.spawn(
            async move {
                let payload = match tokio::time::timeout(limits.deadline, handle(msg)).await {
                    Ok(payload) => payload,
                    Err(_) => {
                        metrics::counter!("chat_nats_requests_timed_out_total", "subject" => subject)
                            .increment(1);
                        tracing::warn!(
                            deadline_ms = limits.deadline.as_millis() as u64,
                            "request past its deadline, answered unavailable"
                        );
                        chat_bus::api::encode_reply::<()>(&Err(
                            chat_bus::api::ApiError::unavailable(),
                        ))
                    }
                };
                drop(slot);
                if let Err(e) = client.publish(reply, payload).await {
                    tracing::debug!(error = %e, "reply not sent");
                }
            }
            .instrument(span),
        );
    }
    if !draining {
        let _ = sub.unsubscribe().await;
    }
    tasks.close();
    tasks.wait().await;
    // Also flushes the replies: they were written before the round trip's message.
    await_unsubscribed(&client).await;
    Ok(())
}

/// Starts the drain of a request subscription: the server is told to route nothing more to it,
/// and what it already sent stays readable. `false` when the client is closed (nothing more
/// will come either way).
async fn drain(sub: &mut async_nats::Subscriber, subject: &'static str) -> bool {
    match sub.drain().await {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, subject, "drain not started");
            false
        }
    }
}

/// Returns once the server has processed everything this client sent before, its
/// unsubscriptions included (within [`FLUSH_TIMEOUT`]). A flush only hands the bytes to the
/// socket; nats-server reads each connection in order, so a message this client publishes to a
/// fresh inbox of its own, and gets back, was read after them.
async fn await_unsubscribed(client: &async_nats::Client) {
    use futures::StreamExt;

    let round_trip = async {
        let inbox = client.new_inbox();
        let mut echo = client.subscribe(inbox.clone()).await?;
        client.publish(inbox, bytes::Bytes::new()).await?;
        echo.next().await;
        Ok::<_, async_nats::Error>(())
    };
    match tokio::time::timeout(FLUSH_TIMEOUT, round_trip).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "round trip to NATS failed"),
        Err(_) => tracing::warn!("NATS unreachable: unsubscription not confirmed"),
    }
}

/// Serving an endpoint of [`chat_bus::rpc`]: `rpc::History::serve(nats, limits, shutdown,
/// |req| …)`. Like [`serve_requests`], with each request decoded as the endpoint's request type
/// (a malformed one is answered `bad_request` without reaching `handle`) and the handler's
/// result encoded as the reply, a value or `{"error":{…}}`.
pub trait Serve: chat_bus::rpc::Endpoint + Sized {
    fn serve<F, Fut>(
        client: async_nats::Client,
        limits: ServeLimits,
        shutdown: tokio_util::sync::CancellationToken,
        handle: F,
    ) -> impl std::future::Future<Output = Result<(), async_nats::Error>> + Send
    where
        F: Fn(Self::Request) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Self::Reply, chat_bus::api::ApiError>>
            + Send
            + 'static,
    {
        use chat_bus::api::{decode_request, encode_reply};
        let handle = std::sync::Arc::new(handle);
        serve_requests(
            client,
            Self::SUBJECT,
            Self::QUEUE,
            limits,
            shutdown,
            move |msg| {
                let handle = handle.clone();
                async move {
                    let reply = match decode_request::<Self::Request>(&msg.payload) {
                        Ok(req) => handle(req).await,
                        Err(e) => Err(e),
                    };
                    encode_reply(&reply)
                }
            },
        )
    }
}

impl<E: chat_bus::rpc::Endpoint> Serve for E {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_inbox_reply_subjects_are_trusted() {
        for ok in [
            "_INBOX.abc.1",
            "_INBOX_integrations.x.y",
            "_INBOX_a.b",
            "_R_.abc.def",
        ] {
            assert!(trusted_reply_subject(ok), "{ok}");
        }
        for bad in [
            "$KV.chat_presence.zed",
            "chat.room.lobby.msg",
            "$JS.API.STREAM.DELETE.CHAT",
            "_INBOX",
            "_INBOX.",
            "_INBOXX.a",
            "_INBOX_.a",
            "_INBOX_x",
            "_INBOX.>",
            "_R_.",
            "_R_.>",
            "_R_x.a",
            "",
        ] {
            assert!(!trusted_reply_subject(bad), "{bad}");
        }
    }

    #[test]
    fn nats_url_takes_one_server_or_a_list() {
        let one = NatsConfig::url("nats://127.0.0.1:4222").servers().unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].port(), 4222);
        let three = NatsConfig::url("nats://127.0.0.1:4001, nats://127.0.0.1:4002,127.0.0.1:4003,")
            .servers()
            .unwrap();
        let ports: Vec<u16> = three.iter().map(|s| s.port()).collect();
        assert_eq!(ports, vec![4001, 4002, 4003]);
        assert!(NatsConfig::url(" , ").servers().is_err());
        assert!(NatsConfig::url("nats://a b").servers().is_err());
    }
}
