//! Issue 17: the `chat` CLI and chat-bench talk to an edge serving `wss://` (EDGE_TLS_CERT,
//! EDGE_TLS_KEY) with a self-signed certificate, trusted through `--ca FILE` or `CHAT_CA`; a
//! certificate they do not trust is refused at once with a sentence saying what to do.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use chat_tests::{SECRET, Stack, procs::bin_dir};
use serde_json::Value;
use tokio::process::Command;

fn command(name: &str) -> Command {
    let bin = bin_dir().join(name);
    assert!(
        bin.exists(),
        "{} is missing: build with `cargo build --workspace --bins`",
        bin.display()
    );
    let mut cmd = Command::new(bin);
    cmd.env_remove("CHAT_URL")
        .env_remove("CHAT_TOKEN")
        .env_remove("CHAT_CA")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn output(mut cmd: Command) -> Output {
    tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("finished in time (a refused certificate must not be retried forever)")
        .expect("ran")
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8")
}

/// A self-signed certificate for `localhost`, written as `NAME.pem` (and `NAME.key`) in `dir`.
fn certificate(dir: &Path, name: &str) -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert, c.cert.pem()).unwrap();
    std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
    (
        cert.to_str().unwrap().to_owned(),
        key.to_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_and_bench_speak_wss_with_a_ca_file_and_refuse_an_untrusted_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "edge");
    let (other, _) = certificate(dir.path(), "other");
    let stack = Stack::start_with(&[("EDGE_TLS_CERT", &cert), ("EDGE_TLS_KEY", &key)]).await;
    let port = stack.edges[0].addr.unwrap().port();
    let url = format!("wss://localhost:{port}/ws");
    let room = "tls-room";

    // send over wss:// with --ca.
    let mut send = command("chat");
    send.args(["send", "--url", &url, "--secret", SECRET, "--user", "alice"])
        .args([
            "--room", room, "--body", "over wss", "--json", "--ca", &cert,
        ]);
    let ack: Value = serde_json::from_str(ok(&output(send).await, "chat send").trim()).unwrap();
    assert_eq!(ack["type"], "ack");
    let epoch = ack["epoch"].as_str().unwrap().to_owned();

    // tail over wss:// with CHAT_CA: the message comes back from seq 0.
    let mut tail = command("chat");
    tail.env("CHAT_CA", &cert)
        .args(["tail", "--url", &url, "--secret", SECRET, "--user", "alice"])
        .args([
            "--room", room, "--since", "0", "--epoch", &epoch, "--count", "1", "--json",
        ]);
    let m: Value = serde_json::from_str(ok(&output(tail).await, "chat tail").trim()).unwrap();
    assert_eq!(
        (m["type"].as_str(), m["body"].as_str()),
        (Some("message"), Some("over wss"))
    );
    assert_eq!(m["seq"], ack["seq"]);

    // A CA that did not sign the edge's certificate: refused at once, exit 1, a clear reason.
    // tail would reconnect after a lost connection; an untrusted certificate is not one.
    for (how, ca) in [("a wrong --ca", Some(other.as_str())), ("no --ca", None)] {
        let mut tail = command("chat");
        tail.args(["tail", "--url", &url, "--secret", SECRET, "--user", "alice"])
            .args(["--room", room]);
        if let Some(ca) = ca {
            tail.args(["--ca", ca]);
        }
        let out = output(tail).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{how}: {stderr}");
        assert!(
            stderr.contains("TLS: the certificate of localhost is not trusted"),
            "{how}: {stderr}"
        );
        // rustls says why: UnknownIssuer, or BadSignature for a CA of the same name.
        assert!(
            stderr.contains("invalid peer certificate"),
            "{how}: {stderr}"
        );
        assert!(!stderr.contains("reconnecting"), "{how}: {stderr}");
        match ca {
            Some(ca) => assert!(stderr.contains(ca), "{how} names the file: {stderr}"),
            None => assert!(
                stderr.contains("--ca FILE"),
                "{how} says what to do: {stderr}"
            ),
        }
    }

    // A CA file that is not one: named, exit 1.
    let mut send = command("chat");
    send.args(["send", "--url", &url, "--secret", SECRET, "--user", "alice"])
        .args(["--room", room, "--body", "x", "--ca", &key]);
    let out = output(send).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("edge.key"), "{stderr}");

    // chat-bench: a short throughput run over wss://, every message delivered.
    let mut bench = command("chat-bench");
    bench
        .args([
            "throughput",
            "--url",
            &url,
            "--secret",
            SECRET,
            "--ca",
            &cert,
        ])
        .args(["--rooms", "1", "--members", "2", "--senders", "1"])
        .args(["--rate", "20", "--seconds", "1"]);
    let out = ok(&output(bench).await, "chat-bench throughput");
    let summary: Value = out
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("the JSON summary line");
    assert_eq!(summary["bench"], "throughput");
    assert!(summary["sent"].as_u64() > Some(0), "{summary}");
    assert_eq!(
        summary["delivered"], summary["expected_deliveries"],
        "{summary}"
    );
}
