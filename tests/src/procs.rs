//! The services as separate processes (the built binaries), for what needs real processes:
//! per-service telemetry, SIGKILL, SIGTERM drains.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use chat_testkit::free_port;
use tokio::process::{Child, Command};

/// Where cargo put the binaries (`target/<profile>/`), next to this test executable's `deps/`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().expect("deps folder");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("profile folder")
    } else {
        dir
    };
    dir.to_path_buf()
}

/// Key of the environment map naming a file to capture the process's output in.
pub const LOG_FILE: &str = "CHAT_TEST_LOG_FILE";

/// A service process; killed when dropped.
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
    pub admin_port: u16,
    pub port: Option<u16>,
}

impl Proc {
    /// Starts `name` (chat-edge, chat-history, …) with `env`; waits until its admin port answers.
    pub async fn start(name: &'static str, env: &HashMap<String, String>) -> Proc {
        let admin_port = free_port();
        let port = matches!(name, "chat-edge" | "chat-api").then(free_port);
        let bin = bin_dir().join(name);
        assert!(
            bin.exists(),
            "{} is missing: build with `cargo build --workspace --bins`",
            bin.display()
        );
        let mut cmd = Command::new(bin);
        // LOG_FILE (test-only key): capture the service's whole output in that file.
        let log_file = env
            .get(LOG_FILE)
            .map(|p| std::fs::File::create(p).expect("create log file"));
        cmd.envs(env.iter().filter(|(k, _)| k.as_str() != LOG_FILE))
            .env("ADMIN_LISTEN", format!("127.0.0.1:{admin_port}"))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if !env.contains_key("RUST_LOG") {
            cmd.env(
                "RUST_LOG",
                std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
            );
        }
        match log_file {
            Some(f) => {
                cmd.stdout(f.try_clone().expect("log file")).stderr(f);
            }
            None => {
                let inherit = std::env::var_os("TEST_LOG").is_some();
                cmd.stdout(Stdio::null()).stderr(if inherit {
                    Stdio::inherit()
                } else {
                    Stdio::null()
                });
            }
        }
        if let Some(p) = port {
            let var = if name == "chat-api" {
                "CHAT_API_ADDR"
            } else {
                "EDGE_LISTEN"
            };
            cmd.env(var, format!("127.0.0.1:{p}"));
        }
        let child = cmd.spawn().expect("spawn service");
        let proc = Proc {
            name,
            child,
            admin_port,
            port,
        };
        proc.wait_ready().await;
        proc
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        chat_testkit::eventually(
            &format!("{} is ready", self.name),
            Duration::from_secs(30),
            async || {
                http_get(self.admin_port, "/readyz")
                    .await
                    .is_ok_and(|(s, _)| s == 200)
            },
        )
        .await;
    }

    /// Where chat-api's HTTP API listens.
    pub fn api_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port.expect("chat-api has a port")))
    }

    pub fn ws_url(&self) -> String {
        format!(
            "ws://127.0.0.1:{}/ws",
            self.port.expect("only edges have a client port")
        )
    }

    /// SIGKILL: no drain, no goodbye.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, then waits for the process to exit; returns whether it exited in `within`.
    pub async fn terminate(&mut self, within: Duration) -> bool {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        }
        tokio::time::timeout(within, self.child.wait())
            .await
            .is_ok()
    }
}

/// A minimal HTTP/1.1 GET on 127.0.0.1; returns the status and body.
pub async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("timeout"))??;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
