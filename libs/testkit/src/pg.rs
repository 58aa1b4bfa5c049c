//! A fresh PostgreSQL database per test, on the cluster named by `CHAT_TEST_DATABASE_URL`
//! (the test command, `scripts/test`, starts a throwaway cluster and sets it).

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection;

/// Creates an empty database and returns its URL.
pub async fn fresh_database() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let admin = std::env::var("CHAT_TEST_DATABASE_URL").expect(
        "CHAT_TEST_DATABASE_URL is not set: run the tests with scripts/test, which starts a throwaway PostgreSQL",
    );
    let name = format!(
        "chat_test_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    );
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to the test PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let _ = conn.close().await;
    match admin.rfind('/') {
        Some(idx) if !admin[idx + 1..].contains('@') => {
            let (base, rest) = admin.split_at(idx + 1);
            let query = rest.find('?').map(|q| &rest[q..]).unwrap_or("");
            format!("{base}{name}{query}")
        }
        _ => format!("{}/{name}", admin.trim_end_matches('/')),
    }
}

/// A PostgreSQL cluster of a test's own, in a temporary folder, that the test may stop and start
/// (outage tests). Needs the server binaries (`scripts/setup` installs them); runs the server as
/// `postgres` when the tests run as root, since initdb refuses root.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    pub port: u16,
    as_root: bool,
}

impl std::fmt::Debug for PgCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgCluster(port {})", self.port)
    }
}

fn pg_bin_dir() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("CHAT_PG_BIN") {
        return p.into();
    }
    let mut dirs: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.pop()
        .expect("PostgreSQL server binaries not found: run scripts/setup")
}

impl PgCluster {
    pub async fn start() -> PgCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let as_root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        if as_root {
            let ok = std::process::Command::new("chown")
                .arg("postgres")
                .arg(dir.path())
                .status();
            assert!(
                ok.map(|s| s.success()).unwrap_or(false),
                "chown test cluster folder"
            );
        }
        let cluster = PgCluster {
            dir,
            bin: pg_bin_dir(),
            port: crate::free_port(),
            as_root,
        };
        let data = cluster.data();
        cluster
            .run(
                "initdb",
                &[
                    "-D",
                    &data,
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ],
            )
            .await;
        cluster.start_server().await;
        cluster
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    async fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_root {
            let mut c = tokio::process::Command::new("runuser");
            c.arg("-u").arg("postgres").arg("--").arg(exe);
            c
        } else {
            tokio::process::Command::new(exe)
        };
        let out = cmd.args(args).output().await.expect("run PostgreSQL tool");
        assert!(
            out.status.success(),
            "{tool} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts (or restarts) the server on the same port.
    pub async fn start_server(&self) {
        let data = self.data();
        let log = self.dir.path().join("log").display().to_string();
        let sock = self.dir.path().display().to_string();
        let opts = format!(
            "-p {} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port
        );
        self.run(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-w", "-t", "30", "-o", &opts, "start",
            ],
        )
        .await;
    }

    /// Stops the server at once, as a crash would.
    pub async fn stop_server(&self) {
        let data = self.data();
        self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"])
            .await;
    }

    /// URL of the `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let exe = self.bin.join("pg_ctl");
        let data = self.data();
        let mut cmd = if self.as_root {
            let mut c = std::process::Command::new("runuser");
            c.arg("-u").arg("postgres").arg("--").arg(exe);
            c
        } else {
            std::process::Command::new(exe)
        };
        let _ = cmd.args(["-D", &data, "-m", "immediate", "stop"]).output();
    }
}
