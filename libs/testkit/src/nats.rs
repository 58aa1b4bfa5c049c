//! A nats-server (2.11 or newer) with JetStream, on a free port with a temporary store.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// How to run the server.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// `sync_interval: always`: an acknowledged write is fsynced (slower).
    pub sync_always: bool,
    /// Extra text for the configuration file (users, permissions, TLS).
    pub extra_config: String,
}

/// A running nats-server; killed when dropped.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    pub url: String,
    store: tempfile::TempDir,
    config: PathBuf,
}

/// The nats-server binary: `CHAT_NATS_SERVER`, else the project's `.venv/bin/nats-server`
/// (installed by `scripts/setup`), else `nats-server` on the PATH.
pub fn nats_server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CHAT_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let venv = crate::workspace_root().join(".venv/bin/nats-server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("nats-server")
}

impl NatsServer {
    /// Starts a server with the default (lazy) fsync, which is enough for tests.
    pub async fn start() -> NatsServer {
        Self::start_with(NatsOptions::default()).await
    }

    /// Starts a server; panics with the reason if it cannot.
    pub async fn start_with(opts: NatsOptions) -> NatsServer {
        Self::try_start(opts).await.expect("start nats-server")
    }

    pub async fn try_start(opts: NatsOptions) -> anyhow::Result<NatsServer> {
        let store = tempfile::tempdir()?;
        let port = crate::free_port();
        let config = store.path().join("nats.conf");
        let sync = if opts.sync_always {
            "sync_interval: always"
        } else {
            ""
        };
        let text = format!(
            "listen: 127.0.0.1:{port}\nmax_payload: 1MB\njetstream {{\n  store_dir: {:?}\n  {sync}\n}}\n{}\n",
            store.path().join("js"),
            opts.extra_config
        );
        std::fs::write(&config, text)?;
        let mut server = NatsServer {
            child: None,
            port,
            url: format!("nats://127.0.0.1:{port}"),
            store,
            config,
        };
        server.spawn().await?;
        Ok(server)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let bin = nats_server_binary();
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "spawn {} (run scripts/setup, or set CHAT_NATS_SERVER)",
                    bin.display()
                )
            })?;
        self.child = Some(child);
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!(
            "nats-server did not listen on port {} within 5 s",
            self.port
        )
    }

    /// Kills the server (SIGKILL), keeping its store.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Starts it again on the same port and store.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await.expect("restart nats-server");
    }

    /// The temporary folder holding the store and configuration.
    pub fn dir(&self) -> &std::path::Path {
        self.store.path()
    }

    /// A connected client.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(&self.url)
            .await
            .expect("connect to test nats-server")
    }
}
