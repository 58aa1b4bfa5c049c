//! The `chat` command-line client against a real stack: it mints a token, sends (one body and
//! lines of stdin), reads back with `history`, and `tail` recovers from a seq and follows live.

use std::process::Stdio;
use std::time::Duration;

use chat_tests::{SECRET, Stack, procs::bin_dir};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

fn chat() -> Command {
    let bin = bin_dir().join("chat");
    assert!(
        bin.exists(),
        "{} is missing: build with `cargo build --workspace --bins`",
        bin.display()
    );
    let mut cmd = Command::new(bin);
    cmd.env_remove("CHAT_URL")
        .env_remove("CHAT_TOKEN")
        .kill_on_drop(true);
    cmd
}

/// Runs `chat ARGS` (with `stdin`), expects success, returns stdout.
async fn run(args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = chat();
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn chat");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes()).await.expect("write stdin");
        drop(pipe);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("chat finished in time")
        .expect("chat ran");
    assert!(
        out.status.success(),
        "chat {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

#[tokio::test]
async fn cli_sends_reads_history_and_tails() {
    let stack = Stack::start().await;
    let url = stack.ws_url(0);
    let token = run(&["token", "--secret", SECRET, "--user", "alice"], None).await;
    let token = token.trim();
    let room = "cli-room";
    let common = ["--url", url.as_str(), "--token", token, "--room", room];

    // One body, then two lines of stdin.
    let mut args = vec!["send"];
    args.extend(common);
    args.extend(["--body", "hello from the cli", "--json"]);
    let first = json_lines(&run(&args, None).await);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["type"], "ack");
    assert_eq!(first[0]["duplicate"], false);
    let seq1 = first[0]["seq"].as_u64().expect("seq");
    let epoch = first[0]["epoch"].as_str().expect("epoch").to_owned();
    let mut args = vec!["send"];
    args.extend(common);
    args.push("--json");
    let more = json_lines(&run(&args, Some("line two\n\nline three\n")).await);
    assert_eq!(more.len(), 2, "one ack per non-empty line: {more:?}");
    assert!(more[0]["seq"].as_u64() > Some(seq1));

    // A retry with the same client id is a duplicate, not a second message.
    let mut args = vec!["send"];
    args.extend(common);
    args.extend(["--body", "once", "--client-id", "fixed-1"]);
    assert!(run(&args, None).await.starts_with("sent #"));
    assert!(run(&args, None).await.contains("(duplicate)"));

    // History, newest page: the four messages in order, as alice sent them.
    let mut args = vec!["history"];
    args.extend(common);
    args.push("--json");
    let page = json_lines(&run(&args, None).await);
    let bodies: Vec<&str> = page
        .iter()
        .map(|m| m["body"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        bodies,
        ["hello from the cli", "line two", "line three", "once"]
    );
    assert!(
        page.iter()
            .all(|m| m["type"] == "message" && m["from"] == "alice")
    );

    // A cursor and a limit; the plain-text format.
    let after = seq1.to_string();
    let mut args = vec!["history"];
    args.extend(common);
    args.extend(["--after", after.as_str(), "--limit", "1"]);
    let text = run(&args, None).await;
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.ends_with("alice: line two\n"), "{text}");

    // Search, once archived: newest first; the plain-text format names the room.
    chat_tests::wait_archived(&stack.db().await, room, 4).await;
    let search = [
        "search",
        "--url",
        url.as_str(),
        "--token",
        token,
        "--query",
        "LINE",
    ];
    let mut args = search.to_vec();
    args.push("--json");
    let found = json_lines(&run(&args, None).await);
    let bodies: Vec<&str> = found
        .iter()
        .map(|m| m["body"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(bodies, ["line three", "line two"]);
    let mut args = search.to_vec();
    args.extend(["--room", room, "--limit", "1"]);
    let text = run(&args, None).await;
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with("cli-room #"), "{text}");
    assert!(text.ends_with("alice: line three\n"), "{text}");

    // bob tails from seq1: the replay (3 messages), then a live one, then exits (--count 4).
    let mut tail = chat();
    tail.args([
        "tail", "--url", &url, "--secret", SECRET, "--user", "bob", "--room", room, "--since",
        &after, "--epoch", &epoch, "--count", "4", "--json",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut tail = tail.spawn().expect("spawn chat tail");
    let mut lines = BufReader::new(tail.stdout.take().expect("tail's stdout")).lines();
    let mut next_line = async || {
        tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("tail prints in time")
            .expect("read tail's output")
    };
    let mut text = String::new();
    // The replay's three lines are out, so tail has joined: the live one sent now reaches it.
    for _ in 0..3 {
        text += &next_line().await.expect("a replayed message");
        text.push('\n');
    }
    let mut args = vec!["send"];
    args.extend(common);
    args.extend(["--body", "live one"]);
    run(&args, None).await;
    while let Some(line) = next_line().await {
        text += &line;
        text.push('\n');
    }
    let out = tokio::time::timeout(Duration::from_secs(30), tail.wait_with_output())
        .await
        .expect("tail got 4 messages in time")
        .expect("tail ran");
    assert!(
        out.status.success(),
        "tail failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tailed = json_lines(&text);
    let bodies: Vec<&str> = tailed
        .iter()
        .map(|m| m["body"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(bodies, ["line two", "line three", "once", "live one"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("recovered what was missed"), "{stderr}");

    // A bad token is refused with a clear message and a failing exit code.
    let out = chat()
        .args([
            "history",
            "--url",
            &url,
            "--token",
            "not-a-jwt",
            "--room",
            room,
        ])
        .output()
        .await
        .expect("run chat");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unauthorized"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `chat edit`, `delete`, `react` and `reply` (issue 13): each is answered with its event's
/// `ack` (a retry with the same `--client-id` with the original seq), and `history` shows the
/// state, `history --thread` a thread.
#[tokio::test]
async fn cli_edits_deletes_reacts_and_replies() {
    let stack = Stack::start().await;
    let url = stack.ws_url(0);
    let token = run(&["token", "--secret", SECRET, "--user", "alice"], None).await;
    let token = token.trim();
    let room = "cli-life";
    let common = ["--url", url.as_str(), "--token", token, "--room", room];
    let cmd = |name: &'static str, extra: &[&'static str]| {
        let mut args = vec![name];
        args.extend(common);
        args.extend_from_slice(extra);
        args.push("--json");
        args
    };
    let seq_of = |out: String| -> u64 {
        let v = json_lines(&out);
        assert_eq!(v[0]["type"], "ack", "{v:?}");
        v[0]["seq"].as_u64().unwrap()
    };
    let m = seq_of(run(&cmd("send", &["--body", "first"]), None).await);
    let gone = seq_of(run(&cmd("send", &["--body", "second"]), None).await);
    let ms = m.to_string();
    let gs = gone.to_string();
    let ms: &'static str = Box::leak(ms.into_boxed_str());
    let gs: &'static str = Box::leak(gs.into_boxed_str());
    let e = seq_of(
        run(
            &cmd(
                "edit",
                &["--seq", ms, "--body", "first!", "--client-id", "e1"],
            ),
            None,
        )
        .await,
    );
    let again = json_lines(
        &run(
            &cmd(
                "edit",
                &["--seq", ms, "--body", "first!", "--client-id", "e1"],
            ),
            None,
        )
        .await,
    );
    assert_eq!(
        (again[0]["seq"].as_u64(), again[0]["duplicate"].as_bool()),
        (Some(e), Some(true))
    );
    let r = seq_of(run(&cmd("react", &["--seq", ms, "--emoji", "👍"]), None).await);
    let q = seq_of(run(&cmd("reply", &["--seq", ms, "--body", "quoted"]), None).await);
    let t = seq_of(
        run(
            &cmd("reply", &["--seq", ms, "--in-thread", "--body", "threaded"]),
            None,
        )
        .await,
    );
    let d = seq_of(run(&cmd("delete", &["--seq", gs]), None).await);
    assert!(m < gone && gone < e && e < r && r < q && q < t && t < d);

    let page = json_lines(&run(&cmd("history", &[]), None).await);
    let first = page.iter().find(|x| x["seq"] == m).unwrap();
    assert_eq!(first["body"], "first!");
    assert_eq!(first["reactions"], serde_json::json!({"👍": ["alice"]}));
    assert_eq!(first["replies"], 1);
    assert_eq!(
        page.iter().find(|x| x["seq"] == gone).unwrap()["deleted"],
        true
    );
    assert_eq!(page.iter().find(|x| x["seq"] == q).unwrap()["reply_to"], m);
    let thread = json_lines(&run(&cmd("history", &["--thread", ms]), None).await);
    let seqs: Vec<u64> = thread.iter().map(|x| x["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![m, t]);
    // The plain-text form says what happened.
    let mut args = vec!["history"];
    args.extend(common);
    let text = run(&args, None).await;
    assert!(
        text.contains("first! (edited) [👍 1] [1 in thread]"),
        "{text}"
    );
    assert!(text.contains(&format!("deleted #{gone}")), "{text}");
}
