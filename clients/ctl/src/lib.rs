//! `chatctl`: the operator's command line, over NATS (see [`USAGE`]).
//!
//! - [`consumers`]: lags of the durable consumers;
//! - [`dead_letters`]: list, show and replay the `CHAT_DLQ` stream;
//! - [`ops`]: disconnect a user, room info;
//! - [`api_keys`]: server API keys in their KV bucket.
//!
//! Every command prints a human table, or JSON with `--json`; errors go to stderr with a non-zero
//! exit code (2 for a wrong command line, 1 for anything else).

pub mod api_keys;
pub mod args;
pub mod connect;
pub mod consumers;
pub mod dead_letters;
pub mod ops;

use std::time::Duration;

use args::Args;
use chat_runtime::Env;

pub const USAGE: &str = "chatctl: operate a chat deployment over NATS

usage:
  chatctl consumers [--stream S] [--json]
      lag of every durable consumer: pending, ack pending, redelivered, last delivered seq
      against the stream's last seq, and the age of the oldest unacknowledged event
  chatctl dead-letters list [--json]
  chatctl dead-letters show SEQ [--json]
  chatctl dead-letters replay SEQ | --all [--json]
      republish dead-lettered events to their original subject through JetStream (validated
      and ordered again), then remove them from CHAT_DLQ
  chatctl disconnect USER [--reason TEXT]
      close every session of USER on every edge (close code 4001)
  chatctl room ROOM [--json]
      kind, members and last seq of a room
  chatctl api-key create --name NAME --scope SCOPE... [--bot USER...] [--json]
      prints the new key once (only its hash is stored); scopes: messages:write, rooms:write,
      rooms:read, history:read, presence:read, unread:read, users:disconnect
  chatctl api-key list [--json]
  chatctl api-key revoke ID

connection (each defaults to the variable the services read):
  --nats URL            NATS_URL (nats://127.0.0.1:4222; a comma-separated list for a cluster)
  --nats-user U         NATS_USER       --nats-password P   NATS_PASSWORD
  --nats-token T        NATS_TOKEN      --nats-creds FILE   NATS_CREDS
  --nats-tls-ca FILE    NATS_TLS_CA
  --nats-tls-cert FILE  NATS_TLS_CERT   --nats-tls-key FILE NATS_TLS_KEY
  --timeout SECS        how long to wait for NATS and for each request (5)

exit codes: 0 done, 1 failed (the reason on stderr), 2 wrong command line";

/// A wrong command line: the usage goes with it, exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// What one run needs: the connection and how to print.
pub struct Ctx {
    pub nats: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub json: bool,
    pub timeout: Duration,
    pub env: Env,
    /// What the server refused so far.
    pub refusals: connect::Refusals,
}

/// Runs one command line, writing its output to `out`.
pub async fn run(argv: Vec<String>, env: Env, out: &mut String) -> anyhow::Result<()> {
    let args = Args::parse(argv)?;
    if args.switch("help") || args.positionals.is_empty() {
        if args.positionals.is_empty() && !args.switch("help") {
            return Err(UsageError("no command given".into()).into());
        }
        out.push_str(USAGE);
        out.push('\n');
        return Ok(());
    }
    let timeout = match args.value("timeout") {
        None => Duration::from_secs(5),
        Some(s) => match s.parse::<u64>() {
            Ok(n) if n > 0 => Duration::from_secs(n),
            _ => return Err(UsageError(format!("--timeout {s:?}: give whole seconds")).into()),
        },
    };
    // The command line is checked completely before connecting.
    let plan = Plan::of(&args)?;
    let cfg = connect::nats_config(env.clone(), &args)?;
    let (nats, refusals) = connect::connect(&cfg, timeout).await?;
    let mut js = async_nats::jetstream::new(nats.clone());
    js.set_timeout(timeout);
    let ctx = Ctx {
        nats,
        js,
        json: args.switch("json"),
        timeout,
        env,
        refusals: refusals.clone(),
    };
    let result = plan.apply(&ctx, out).await;
    chat_runtime::nats::flush_within(&ctx.nats).await;
    result.map_err(|e| refusals.explain(e))
}

/// A checked command, ready to run.
enum Plan {
    Consumers { stream: Option<String> },
    DlqList,
    DlqShow(u64),
    DlqReplay(Option<u64>),
    Disconnect(ops::DisconnectPlan),
    Room(chat_proto::RoomId),
    KeyCreate(api_keys::CreatePlan),
    KeyList,
    KeyRevoke(String),
}

fn seq_arg(s: &str) -> Result<u64, UsageError> {
    match s.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(UsageError(format!(
            "{s:?} is not a dead letter's seq (a number from `chatctl dead-letters list`)"
        ))),
    }
}

impl Plan {
    fn of(args: &Args) -> Result<Plan, UsageError> {
        let words: Vec<&str> = args.positionals.iter().map(String::as_str).collect();
        Ok(match words.as_slice() {
            ["consumers", ..] => {
                args.operands(1, 0)?;
                Plan::Consumers {
                    stream: args.value("stream").map(str::to_owned),
                }
            }
            ["dead-letters", "list", ..] => {
                args.operands(2, 0)?;
                Plan::DlqList
            }
            ["dead-letters", "show", ..] => Plan::DlqShow(seq_arg(&args.operands(2, 1)?[0])?),
            ["dead-letters", "replay", ..] => {
                if args.switch("all") {
                    args.operands(2, 0)
                        .map_err(|_| UsageError("give a SEQ or --all, not both".into()))?;
                    Plan::DlqReplay(None)
                } else {
                    let ops = args
                        .operands(2, 1)
                        .map_err(|_| UsageError("replay takes one SEQ, or --all".into()))?;
                    Plan::DlqReplay(Some(seq_arg(&ops[0])?))
                }
            }
            ["disconnect", ..] => Plan::Disconnect(ops::DisconnectPlan::of(args)?),
            ["room", ..] => {
                let room = &args.operands(1, 1)?[0];
                Plan::Room(
                    chat_proto::RoomId::new(room)
                        .map_err(|e| UsageError(format!("room {room:?}: {e}")))?,
                )
            }
            ["api-key", "create", ..] => Plan::KeyCreate(api_keys::CreatePlan::of(args)?),
            ["api-key", "list", ..] => {
                args.operands(2, 0)?;
                Plan::KeyList
            }
            ["api-key", "revoke", ..] => {
                let id = &args.operands(2, 1)?[0];
                Plan::KeyRevoke(api_keys::check_id(id)?)
            }
            _ => {
                return Err(UsageError(format!(
                    "unknown command `{}`",
                    args.positionals.join(" ")
                )));
            }
        })
    }

    async fn apply(self, ctx: &Ctx, out: &mut String) -> anyhow::Result<()> {
        match self {
            Plan::Consumers { stream } => consumers::run(ctx, stream.as_deref(), out).await,
            Plan::DlqList => dead_letters::list(ctx, out).await,
            Plan::DlqShow(seq) => dead_letters::show(ctx, seq, out).await,
            Plan::DlqReplay(seq) => dead_letters::replay(ctx, seq, out).await,
            Plan::Disconnect(plan) => ops::disconnect(ctx, plan, out).await,
            Plan::Room(room) => ops::room(ctx, room, out).await,
            Plan::KeyCreate(plan) => api_keys::create(ctx, plan, out).await,
            Plan::KeyList => api_keys::list(ctx, out).await,
            Plan::KeyRevoke(id) => api_keys::revoke(ctx, &id, out).await,
        }
    }
}

/// Appends `value` as pretty JSON.
pub fn push_json<T: serde::Serialize>(out: &mut String, value: &T) {
    out.push_str(&serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into()));
    out.push('\n');
}

/// A table with a header row, columns padded to their widest cell.
pub fn push_table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            s.push_str(cell);
            s.extend(std::iter::repeat_n(' ', widths[i] - cell.chars().count()));
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(out, &mut header.iter().copied());
    for row in rows {
        line(out, &mut row.iter().map(String::as_str));
    }
}

/// RFC 3339 of a JetStream time (UTC).
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// RFC 3339 of milliseconds since the epoch.
pub fn rfc3339_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .map(rfc3339)
        .unwrap_or_else(|_| ms.to_string())
}

/// Whether a JetStream error is "no such stream" (nothing there yet, rather than a failure).
/// async-nats keeps the server's error code in the kind of some errors and in the source of
/// others; its debug form carries it in both cases.
pub fn is_stream_not_found(e: &impl std::fmt::Debug) -> bool {
    let code = async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND;
    format!("{e:?}").contains(&format!("{code:?}"))
}
