//! JetStream KV access with compare-and-set: read a record and its revision, apply a rule, write
//! only if nobody wrote in between, else read again and retry. Two instances handling the same
//! user at once therefore never lose an update.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use serde::{Serialize, de::DeserializeOwned};

/// How many times a compare-and-set is retried before giving up (each retry means another writer
/// won the race, so this is only reached under pathological contention).
const MAX_ATTEMPTS: u32 = 64;

/// Most keys one [`Records::get_many`] reads.
pub const MAX_BATCH_KEYS: usize = 1_000;

/// How long a batched read may take.
const BATCH_READ_TIMEOUT: Duration = Duration::from_secs(3);

/// What went wrong talking to the bucket.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("kv: {0}")]
    Kv(String),
    #[error("compare-and-set on {0} lost {MAX_ATTEMPTS} races in a row")]
    Contention(String),
}

fn kv_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Kv(e.to_string())
}

/// Creates (or reuses) a bucket keeping one revision per key.
pub async fn ensure_bucket(
    js: &jetstream::Context,
    name: &str,
    replicas: usize,
) -> Result<kv::Store, StoreError> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    js.create_key_value(kv::Config {
        bucket: name.to_owned(),
        description: "chat-presence state".to_owned(),
        history: 1,
        num_replicas: replicas,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(kv_err)
}

/// A typed view of a bucket of JSON records.
#[derive(Clone)]
pub struct Records<T> {
    pub store: kv::Store,
    _t: std::marker::PhantomData<fn() -> T>,
}

/// The outcome of [`Records::update`].
#[derive(Debug, Clone)]
pub struct Updated<T> {
    /// The record before (None: there was none).
    pub before: Option<T>,
    /// The record after (equal to `before` when the rule made no change and nothing was written).
    pub after: Option<T>,
}

impl<T> Records<T>
where
    T: Serialize + DeserializeOwned + Clone + PartialEq,
{
    pub fn new(store: kv::Store) -> Self {
        Records {
            store,
            _t: std::marker::PhantomData,
        }
    }

    /// The record and its revision (0 when absent or deleted).
    pub async fn get(&self, key: &str) -> Result<(Option<T>, u64), StoreError> {
        let entry = self.store.entry(key).await.map_err(kv_err)?;
        Ok(match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let value = serde_json::from_slice(&e.value)
                    .map_err(|err| {
                        tracing::warn!(key, error = %err, "undecodable record, starting afresh");
                    })
                    .ok();
                (value, e.revision)
            }
            Some(e) => (None, e.revision),
            None => (None, 0),
        })
    }

    /// Applies `rule` to the record under compare-and-set. `rule` gets the current record (None
    /// when absent) and returns the new one, or None to write nothing.
    pub async fn update(
        &self,
        key: &str,
        mut rule: impl FnMut(Option<&T>) -> Option<T>,
    ) -> Result<Updated<T>, StoreError> {
        for attempt in 0..MAX_ATTEMPTS {
            let (before, revision) = self.get(key).await?;
            let Some(after) = rule(before.as_ref()) else {
                return Ok(Updated {
                    after: before.clone(),
                    before,
                });
            };
            if before.as_ref() == Some(&after) {
                return Ok(Updated {
                    after: before.clone(),
                    before,
                });
            }
            let bytes = serde_json::to_vec(&after).map_err(kv_err)?;
            match self.store.update(key, bytes.into(), revision).await {
                Ok(_) => {
                    return Ok(Updated {
                        before,
                        after: Some(after),
                    });
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    metrics::counter!("chat_presence_cas_conflicts_total").increment(1);
                    // Spread the retries of racing writers a little.
                    let jitter = u64::from(rand::random::<u8>() % 4) * (attempt.min(8) as u64);
                    if jitter > 0 {
                        tokio::time::sleep(Duration::from_millis(jitter)).await;
                    }
                }
                Err(e) => return Err(kv_err(e)),
            }
        }
        Err(StoreError::Contention(key.to_owned()))
    }

    /// Writes `value`, whatever is there (last writer wins).
    pub async fn put(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(kv_err)?;
        self.store
            .put(key, bytes.into())
            .await
            .map(|_| ())
            .map_err(kv_err)
    }

    /// Writes `value` unless the key holds a record already (false then).
    pub async fn create(&self, key: &str, value: &T) -> Result<bool, StoreError> {
        let bytes = serde_json::to_vec(value).map_err(kv_err)?;
        match self.store.create(key, bytes.into()).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(kv_err(e)),
        }
    }

    /// Writes `value` if the record is still at `revision` (false: someone wrote since).
    pub async fn put_if(&self, key: &str, value: &T, revision: u64) -> Result<bool, StoreError> {
        let bytes = serde_json::to_vec(value).map_err(kv_err)?;
        match self.store.update(key, bytes.into(), revision).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                metrics::counter!("chat_presence_cas_conflicts_total").increment(1);
                Ok(false)
            }
            Err(e) => Err(kv_err(e)),
        }
    }

    /// Removes the record if it is still at `revision` (false: someone wrote since).
    pub async fn remove_if(&self, key: &str, revision: u64) -> Result<bool, StoreError> {
        match self.store.purge_expect_revision(key, Some(revision)).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(kv_err(e)),
        }
    }

    /// Removes the record, whatever its revision.
    pub async fn remove(&self, key: &str) -> Result<(), StoreError> {
        self.store
            .purge_expect_revision(key, None)
            .await
            .map_err(kv_err)
    }

    /// The records of `keys` in one batched read of the bucket's stream (JetStream's batch direct
    /// get, `multi_last`): one request and one answer stream instead of one round trip per key.
    /// Absent and deleted keys are left out. At most [`MAX_BATCH_KEYS`] keys per call.
    pub async fn get_many(
        &self,
        nats: &async_nats::Client,
        keys: &[&str],
    ) -> Result<std::collections::HashMap<String, T>, StoreError> {
        use futures::StreamExt;
        let mut out = std::collections::HashMap::with_capacity(keys.len());
        if keys.is_empty() {
            return Ok(out);
        }
        if keys.len() > MAX_BATCH_KEYS {
            return Err(StoreError::Kv(format!(
                "at most {MAX_BATCH_KEYS} keys per batched read"
            )));
        }
        let prefix = format!("$KV.{}.", self.store.name);
        let subjects: Vec<String> = keys.iter().map(|k| format!("{prefix}{k}")).collect();
        let request = serde_json::json!({"multi_last": subjects, "batch": keys.len()});
        let inbox = nats.new_inbox();
        let mut answers = nats.subscribe(inbox.clone()).await.map_err(kv_err)?;
        nats.publish_with_reply(
            format!("$JS.API.DIRECT.GET.{}", self.store.stream_name),
            inbox,
            request.to_string().into(),
        )
        .await
        .map_err(kv_err)?;
        let deadline = tokio::time::Instant::now() + BATCH_READ_TIMEOUT;
        loop {
            let msg = match tokio::time::timeout_at(deadline, answers.next()).await {
                Ok(Some(msg)) => msg,
                Ok(None) => return Err(StoreError::Kv("batched read: subscription ended".into())),
                Err(_) => return Err(StoreError::Kv("batched read timed out".into())),
            };
            if let Some(status) = msg.status {
                match status.as_u16() {
                    // End of the batch, or nothing matched at all.
                    204 | 404 => return Ok(out),
                    code => {
                        return Err(StoreError::Kv(format!(
                            "batched read answered {code} {}",
                            msg.description.unwrap_or_default()
                        )));
                    }
                }
            }
            let headers = msg.headers.as_ref();
            let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
            let Some(key) = header("Nats-Subject").and_then(|s| s.strip_prefix(&prefix)) else {
                continue;
            };
            if matches!(header("KV-Operation"), Some("DEL") | Some("PURGE")) {
                continue;
            }
            match serde_json::from_slice(&msg.payload) {
                Ok(value) => {
                    out.insert(key.to_owned(), value);
                }
                Err(err) => tracing::warn!(key, error = %err, "undecodable record, as absent"),
            }
        }
    }

    /// Every key of the bucket.
    pub async fn keys(&self) -> Result<Vec<String>, StoreError> {
        use futures::TryStreamExt;
        self.store
            .keys()
            .await
            .map_err(kv_err)?
            .try_collect()
            .await
            .map_err(kv_err)
    }
}
