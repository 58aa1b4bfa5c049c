//! `chatctl api-key`: server API keys in the JetStream KV bucket
//! [`subjects::API_KEYS_BUCKET`] (one entry per key id, the value an [`ApiKeyRecord`] as JSON),
//! which every chat-api instance watches.
//!
//! `create` prints the key once: only its SHA-256 is stored. `list` never shows the hashes.
//! `revoke` deletes the entry (chat-api stops accepting the key when its watch sees it).
//! The bucket is created on the first `create` if missing: file storage, the last 5 revisions
//! of each key kept (an audit trail of changes), `CHAT_STREAM_REPLICAS` replicas.

use async_nats::jetstream::kv::{self, Operation, Store};
use chat_bus::apikey::{self, ApiKeyRecord, Scope};
use chat_bus::subjects;
use chat_proto::UserId;
use futures::TryStreamExt;
use serde::Serialize;

use crate::args::Args;
use crate::{Ctx, UsageError, push_json, push_table, rfc3339_ms};

/// A checked `create`.
#[derive(Debug)]
pub struct CreatePlan {
    pub name: String,
    pub scopes: Vec<Scope>,
    pub bots: Vec<UserId>,
}

impl CreatePlan {
    pub fn of(args: &Args) -> Result<CreatePlan, UsageError> {
        args.operands(2, 0)?;
        let name = args
            .value("name")
            .ok_or_else(|| UsageError("api-key create needs --name".into()))?
            .trim()
            .to_owned();
        if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
            return Err(UsageError(
                "--name: 1 to 100 bytes, no control characters".into(),
            ));
        }
        let mut scopes = Vec::new();
        for s in args.values("scope") {
            let scope = Scope::parse(&s).ok_or_else(|| {
                let all: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
                UsageError(format!("unknown scope {s:?}; scopes: {}", all.join(", ")))
            })?;
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        if scopes.is_empty() {
            return Err(UsageError(
                "api-key create needs at least one --scope".into(),
            ));
        }
        scopes.sort();
        let mut bots = Vec::new();
        for b in args.values("bot") {
            let bot = UserId::new(&b).map_err(|e| UsageError(format!("--bot {b:?}: {e}")))?;
            if !bots.contains(&bot) {
                bots.push(bot);
            }
        }
        if scopes.contains(&Scope::MessagesWrite) && bots.is_empty() {
            return Err(UsageError(
                "scope messages:write posts as a bot identity: give it one with --bot".into(),
            ));
        }
        Ok(CreatePlan { name, scopes, bots })
    }
}

/// A key id as `parse_key` accepts it: 12 of `[a-z0-9]`.
pub fn check_id(id: &str) -> Result<String, UsageError> {
    let ok = id.len() == 12
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(id.to_owned())
    } else {
        Err(UsageError(format!(
            "{id:?} is not a key id (12 lowercase letters or digits, as `chatctl api-key list` shows)"
        )))
    }
}

/// The bucket, or `None` when no key was ever created.
async fn bucket(ctx: &Ctx) -> anyhow::Result<Option<Store>> {
    match ctx.js.get_key_value(subjects::API_KEYS_BUCKET).await {
        Ok(kv) => Ok(Some(kv)),
        Err(e) if crate::is_stream_not_found(&e) => Ok(None),
        Err(e) => anyhow::bail!("cannot open bucket {}: {e}", subjects::API_KEYS_BUCKET),
    }
}

async fn ensure_bucket(ctx: &Ctx) -> anyhow::Result<Store> {
    if let Some(kv) = bucket(ctx).await? {
        return Ok(kv);
    }
    let replicas = ctx.env.stream_settings()?.replicas;
    ctx.js
        .create_key_value(apikey::bucket_config(replicas))
        .await
        .map_err(|e| anyhow::anyhow!("cannot create bucket {}: {e}", subjects::API_KEYS_BUCKET))
}

/// What `create` prints.
#[derive(Debug, Serialize)]
struct Created<'a> {
    /// The key itself: shown this once.
    key: &'a str,
    #[serde(flatten)]
    listed: Listed,
}

/// A key as `list` shows it: everything but the hash.
#[derive(Debug, Serialize)]
pub struct Listed {
    pub id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub bots: Vec<UserId>,
    pub created_ms: i64,
    pub created: String,
}

impl From<&ApiKeyRecord> for Listed {
    fn from(r: &ApiKeyRecord) -> Self {
        Listed {
            id: r.id.clone(),
            name: r.name.clone(),
            scopes: r.scopes.clone(),
            bots: r.bots.clone(),
            created_ms: r.created_ms,
            created: rfc3339_ms(r.created_ms),
        }
    }
}

pub async fn create(ctx: &Ctx, plan: CreatePlan, out: &mut String) -> anyhow::Result<()> {
    let kv = ensure_bucket(ctx).await?;
    // An id collision (36^12 ids) is improbable; `create` refuses to overwrite one anyway.
    for _ in 0..3 {
        let (key, record) = apikey::generate(
            &plan.name,
            plan.scopes.clone(),
            plan.bots.clone(),
            chat_bus::now_ms(),
        );
        let value = serde_json::to_vec(&record)?;
        match kv.create(&record.id, value.into()).await {
            Ok(_) => {
                let listed = Listed::from(&record);
                if ctx.json {
                    push_json(out, &Created { key: &key, listed });
                } else {
                    out.push_str(&format!("{key}\n"));
                    eprintln!(
                        "chatctl: API key {} ({}) created; this is the only time the key is \
                         shown: store it now",
                        record.id, record.name
                    );
                }
                return Ok(());
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => continue,
            Err(e) => anyhow::bail!("cannot store the key: {e}"),
        }
    }
    anyhow::bail!("cannot store the key: id collisions, try again")
}

/// Every key, by creation time.
pub async fn records(ctx: &Ctx) -> anyhow::Result<Vec<ApiKeyRecord>> {
    let Some(kv) = bucket(ctx).await? else {
        return Ok(Vec::new());
    };
    let keys: Vec<String> = kv
        .keys()
        .await
        .map_err(|e| anyhow::anyhow!("cannot list the keys: {e}"))?
        .try_collect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot list the keys: {e}"))?;
    let mut out = Vec::new();
    for id in keys {
        let Some(entry) = kv
            .entry(&id)
            .await
            .map_err(|e| anyhow::anyhow!("cannot read key {id}: {e}"))?
        else {
            continue;
        };
        if entry.operation != Operation::Put {
            continue;
        }
        match serde_json::from_slice::<ApiKeyRecord>(&entry.value) {
            Ok(r) => out.push(r),
            Err(e) => {
                eprintln!("chatctl: entry {id} of the bucket is not a key record ({e}); skipped")
            }
        }
    }
    out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
    Ok(out)
}

pub async fn list(ctx: &Ctx, out: &mut String) -> anyhow::Result<()> {
    let listed: Vec<Listed> = records(ctx).await?.iter().map(Listed::from).collect();
    if ctx.json {
        push_json(out, &listed);
        return Ok(());
    }
    if listed.is_empty() {
        out.push_str("no API keys\n");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = listed
        .iter()
        .map(|l| {
            let scopes: Vec<&str> = l.scopes.iter().map(|s| s.as_str()).collect();
            let bots: Vec<&str> = l.bots.iter().map(|b| b.as_str()).collect();
            vec![
                l.id.clone(),
                l.name.clone(),
                scopes.join(","),
                if bots.is_empty() {
                    "-".into()
                } else {
                    bots.join(",")
                },
                l.created.clone(),
            ]
        })
        .collect();
    push_table(out, &["ID", "NAME", "SCOPES", "BOTS", "CREATED"], &rows);
    Ok(())
}

pub async fn revoke(ctx: &Ctx, id: &str, out: &mut String) -> anyhow::Result<()> {
    let missing = || anyhow::anyhow!("no API key {id} (see `chatctl api-key list`)");
    let kv = bucket(ctx).await?.ok_or_else(missing)?;
    let entry = kv
        .entry(id)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read key {id}: {e}"))?;
    let Some(entry) = entry.filter(|e| e.operation == Operation::Put) else {
        return Err(missing());
    };
    // Only if unchanged since read: a concurrent revoke or rewrite is not silently overridden.
    kv.delete_expect_revision(id, Some(entry.revision))
        .await
        .map_err(|e| anyhow::anyhow!("cannot revoke key {id}: {e}"))?;
    if ctx.json {
        push_json(out, &serde_json::json!({"id": id, "revoked": true}));
    } else {
        out.push_str(&format!("API key {id} revoked\n"));
    }
    Ok(())
}
