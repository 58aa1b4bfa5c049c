//! Reaching NATS the way the services do: the same `NATS_*` variables ([`NatsConfig`]), each
//! overridable by a `--nats*` flag. Unlike a service, an operator's command fails fast when the
//! server is unreachable instead of retrying forever.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_runtime::Env;
use chat_runtime::nats::NatsConfig;

use crate::args::Args;

/// The flags that override the environment, and the variable each one stands for.
pub const NATS_FLAGS: &[(&str, &str)] = &[
    ("nats", "NATS_URL"),
    ("nats-user", "NATS_USER"),
    ("nats-password", "NATS_PASSWORD"),
    ("nats-token", "NATS_TOKEN"),
    ("nats-creds", "NATS_CREDS"),
    ("nats-tls-ca", "NATS_TLS_CA"),
    ("nats-tls-cert", "NATS_TLS_CERT"),
    ("nats-tls-key", "NATS_TLS_KEY"),
];

/// The NATS settings of `env` with the command line's flags on top.
pub fn nats_config(env: Env, args: &Args) -> anyhow::Result<NatsConfig> {
    let mut env = env;
    for (flag, var) in NATS_FLAGS {
        if let Some(v) = args.value(flag) {
            env = env.with(*var, v);
        }
    }
    Ok(NatsConfig::from_env(&env)?)
}

/// What the server refused this connection (permission violations), as it said it: NATS reports
/// them asynchronously, so a command that failed says why through [`Refusals::explain`].
#[derive(Debug, Clone, Default)]
pub struct Refusals(Arc<Mutex<Vec<String>>>);

impl Refusals {
    fn push(&self, what: String) {
        if let Ok(mut v) = self.0.lock() {
            v.push(what);
        }
    }

    pub fn take(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }

    /// `error` with what the server refused, if it refused something.
    pub fn explain(&self, error: anyhow::Error) -> anyhow::Error {
        let refused = self.take();
        if refused.is_empty() {
            error
        } else {
            anyhow::anyhow!(
                "{error:#}; NATS refused: {} (check the permissions of the NATS user, \
                 docs/deploy.md#chatctl)",
                refused.join("; ")
            )
        }
    }
}

/// Connects once, within `timeout`; an unreachable server or refused credentials are an error
/// naming the URL (never the credentials).
pub async fn connect(
    cfg: &NatsConfig,
    timeout: Duration,
) -> anyhow::Result<(async_nats::Client, Refusals)> {
    let refusals = Refusals::default();
    let seen = refusals.clone();
    let mut opts = async_nats::ConnectOptions::new()
        .name("chatctl")
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    seen.push(e.to_string());
                }
            }
        })
        .connection_timeout(timeout)
        .request_timeout(Some(timeout))
        .max_reconnects(Some(3));
    if let (Some(u), Some(p)) = (&cfg.user, &cfg.password) {
        opts = opts.user_and_password(u.clone(), p.clone());
    }
    if let Some(t) = &cfg.token {
        opts = opts.token(t.clone());
    }
    if let Some(c) = &cfg.creds {
        opts = opts
            .credentials_file(c)
            .await
            .map_err(|e| anyhow::anyhow!("cannot read NATS credentials {}: {e}", c.display()))?;
    }
    if let Some(ca) = &cfg.tls_ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    let servers = cfg
        .servers()
        .map_err(|e| anyhow::anyhow!("invalid NATS URL {:?}: {e}", cfg.url))?;
    match tokio::time::timeout(timeout + Duration::from_secs(1), opts.connect(servers)).await {
        Ok(Ok(client)) => Ok((client, refusals)),
        Ok(Err(e)) => Err(anyhow::anyhow!(
            "cannot connect to NATS at {}: {e}",
            cfg.url
        )),
        Err(_) => Err(anyhow::anyhow!(
            "cannot connect to NATS at {}: no answer within {}s",
            cfg.url,
            timeout.as_secs()
        )),
    }
}
