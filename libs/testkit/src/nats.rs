//! A nats-server (2.11 or newer) with JetStream, on a free port with a temporary store; and a
//! cluster of three of them on loopback ([`NatsCluster`]), whose nodes can be killed and restarted.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
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
        let mut server = Self::prepare(crate::free_port(), &opts, "")?;
        server.spawn().await?;
        Ok(server)
    }

    /// Writes the configuration of a server on `port` (not started yet); `node` is more
    /// configuration text (a cluster node's name and routes).
    fn prepare(port: u16, opts: &NatsOptions, node: &str) -> anyhow::Result<NatsServer> {
        let store = tempfile::tempdir()?;
        let config = store.path().join("nats.conf");
        let sync = if opts.sync_always {
            "sync_interval: always"
        } else {
            ""
        };
        let text = format!(
            "listen: 127.0.0.1:{port}\nmax_payload: 1MB\n{node}\njetstream {{\n  store_dir: {:?}\n  {sync}\n}}\n{}\n",
            store.path().join("js"),
            opts.extra_config
        );
        std::fs::write(&config, text)?;
        Ok(NatsServer {
            child: None,
            port,
            url: format!("nats://127.0.0.1:{port}"),
            store,
            config,
        })
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
        let port = self.port;
        crate::try_eventually(
            &format!("nats-server listens on port {port}"),
            Duration::from_secs(5),
            async || tokio::net::TcpStream::connect(("127.0.0.1", port)).await,
        )
        .await
        .map_err(anyhow::Error::msg)?;
        Ok(())
    }

    /// Is the process running (not killed)?
    pub fn is_running(&self) -> bool {
        self.child.is_some()
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

/// A JetStream cluster of nats-servers on loopback, each with its own client port, cluster port
/// and temporary store; every node is killed when dropped.
#[derive(Debug)]
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

/// The cluster's name in the configuration.
const CLUSTER_NAME: &str = "chat-test";

impl NatsCluster {
    /// Starts `n` nodes (3 for a quorum that survives one death) and waits until JetStream has a
    /// meta leader; panics with the reason if it cannot.
    pub async fn start(n: usize) -> NatsCluster {
        Self::start_with(n, NatsOptions::default()).await
    }

    pub async fn start_with(n: usize, opts: NatsOptions) -> NatsCluster {
        Self::try_start(n, opts)
            .await
            .expect("start a nats cluster")
    }

    pub async fn try_start(n: usize, opts: NatsOptions) -> anyhow::Result<NatsCluster> {
        let ports: Vec<(u16, u16)> = (0..n)
            .map(|_| (crate::free_port(), crate::free_port()))
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, c)| format!("nats-route://127.0.0.1:{c}"))
            .collect();
        let mut nodes = Vec::with_capacity(n);
        for (i, (port, cluster_port)) in ports.iter().enumerate() {
            let node = format!(
                "server_name: {}\ncluster {{\n  name: {CLUSTER_NAME}\n  listen: 127.0.0.1:{cluster_port}\n  routes: [{}]\n}}",
                Self::server_name(i),
                routes.join(", ")
            );
            nodes.push(NatsServer::prepare(*port, &opts, &node)?);
        }
        for node in &mut nodes {
            node.spawn().await?;
        }
        let cluster = NatsCluster { nodes };
        cluster.wait_for_jetstream().await?;
        Ok(cluster)
    }

    /// The `server_name` of node `i`.
    pub fn server_name(i: usize) -> String {
        format!("n{i}")
    }

    /// Every node's client URL, comma-separated (what `NATS_URL` takes).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A client that may connect to any node (and moves on when its node dies).
    pub async fn client(&self) -> async_nats::Client {
        let urls: Vec<&str> = self.nodes.iter().map(|n| n.url.as_str()).collect();
        async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .request_timeout(Some(Duration::from_secs(2)))
            .connect(urls.as_slice())
            .await
            .expect("connect to the test nats cluster")
    }

    /// Waits until the JetStream API answers (a meta leader is elected), up to 30 s.
    pub async fn wait_for_jetstream(&self) -> anyhow::Result<()> {
        let js = async_nats::jetstream::new(self.client().await);
        crate::try_eventually(
            "JetStream of the cluster answers",
            Duration::from_secs(30),
            async || js.query_account().await.map(|_| ()),
        )
        .await
        .map_err(anyhow::Error::msg)
    }

    /// SIGKILLs node `i`, keeping its store.
    pub async fn kill(&mut self, i: usize) {
        self.nodes[i].kill().await;
    }

    /// Starts node `i` again on the same ports and store.
    pub async fn restart(&mut self, i: usize) {
        self.nodes[i].restart().await;
    }

    /// The index of the node leading `stream` now, if it has a leader.
    pub async fn stream_leader(
        &self,
        js: &async_nats::jetstream::Context,
        stream: &str,
    ) -> Option<usize> {
        let mut s = js.get_stream(stream).await.ok()?;
        let info = s.info().await.ok()?;
        let leader = info.cluster.as_ref()?.leader.as_deref()?;
        (0..self.nodes.len()).find(|&i| Self::server_name(i) == leader)
    }

    /// Waits until `stream` has a leader with every replica current (none offline or lagging),
    /// up to `within`; returns the leader's index.
    pub async fn wait_stream_healthy(
        &self,
        js: &async_nats::jetstream::Context,
        stream: &str,
        within: Duration,
    ) -> anyhow::Result<usize> {
        let healthy = async || {
            let mut s = js.get_stream(stream).await.ok()?;
            let info = s.info().await.ok()?;
            let c = info.cluster.as_ref()?;
            let leader = c.leader.as_deref()?;
            let all_current = c.replicas.len() + 1 == info.config.num_replicas
                && c.replicas.iter().all(|r| r.current && !r.offline);
            all_current
                .then(|| (0..self.nodes.len()).find(|&i| Self::server_name(i) == leader))
                .flatten()
        };
        crate::try_eventually(
            &format!("stream {stream} has a leader and every replica current"),
            within,
            healthy,
        )
        .await
        .map_err(anyhow::Error::msg)
    }
}
