//! The API keys chat-api knows: the JetStream KV bucket [`subjects::API_KEYS_BUCKET`] (one entry
//! per key id, written by `chatctl api-key`), watched so that a revocation (the entry deleted)
//! takes effect on every instance as soon as the bucket's change reaches it, plus the operator's
//! optional `CHAT_API_KEYS_FILE` for bootstrap.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use async_nats::jetstream::{self, kv};
use chat_bus::apikey::{ApiKeyRecord, parse_key};
use chat_bus::subjects;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// Why a presented key was refused (all of them are `401 unauthorized` to the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefused {
    Missing,
    Malformed,
    Unknown,
    WrongSecret,
}

impl KeyRefused {
    pub fn message(self) -> &'static str {
        match self {
            KeyRefused::Missing => "an API key is required: Authorization: Bearer chk_…",
            KeyRefused::Malformed => "the API key is malformed",
            KeyRefused::Unknown | KeyRefused::WrongSecret => "unknown or revoked API key",
        }
    }
}

/// The keys, by id. Cheap to clone.
#[derive(Clone, Default)]
pub struct KeyRing {
    bucket: Arc<RwLock<HashMap<String, Arc<ApiKeyRecord>>>>,
    file: Arc<HashMap<String, Arc<ApiKeyRecord>>>,
}

impl KeyRing {
    /// Reads `CHAT_API_KEYS_FILE` (a JSON array of records), if any.
    pub fn with_file(path: Option<&Path>) -> anyhow::Result<KeyRing> {
        let mut file = HashMap::new();
        if let Some(path) = path {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("read CHAT_API_KEYS_FILE {}: {e}", path.display()))?;
            let records: Vec<ApiKeyRecord> = serde_json::from_str(&text).map_err(|e| {
                anyhow::anyhow!(
                    "CHAT_API_KEYS_FILE {}: not a JSON array of key records: {e}",
                    path.display()
                )
            })?;
            for r in records {
                file.insert(r.id.clone(), Arc::new(r));
            }
        }
        let ring = KeyRing {
            bucket: Arc::default(),
            file: Arc::new(file),
        };
        ring.export();
        Ok(ring)
    }

    /// The record of a presented `Authorization` header value.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Arc<ApiKeyRecord>, KeyRefused> {
        let header = header.ok_or(KeyRefused::Missing)?;
        let key = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(KeyRefused::Malformed)?
            .trim();
        let (id, secret) = parse_key(key).ok_or(KeyRefused::Malformed)?;
        let record = self
            .bucket
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .or_else(|| self.file.get(id).cloned())
            .ok_or(KeyRefused::Unknown)?;
        if record.matches(secret) {
            Ok(record)
        } else {
            Err(KeyRefused::WrongSecret)
        }
    }

    pub fn len(&self) -> usize {
        self.bucket.read().unwrap_or_else(|e| e.into_inner()).len() + self.file.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn export(&self) {
        metrics::gauge!("chat_api_keys").set(self.len() as f64);
    }

    fn apply(&self, entry: &kv::Entry) {
        let mut keys = self.bucket.write().unwrap_or_else(|e| e.into_inner());
        match entry.operation {
            kv::Operation::Put => match serde_json::from_slice::<ApiKeyRecord>(&entry.value) {
                Ok(r) if r.id == entry.key => {
                    keys.insert(r.id.clone(), Arc::new(r));
                }
                Ok(_) | Err(_) => {
                    tracing::warn!(key_id = %entry.key, "an API key entry is not a valid record; ignored");
                    keys.remove(&entry.key);
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => {
                if keys.remove(&entry.key).is_some() {
                    tracing::info!(key_id = %entry.key, "API key revoked");
                }
            }
        }
        drop(keys);
        self.export();
    }
}

/// The key bucket, created if missing.
pub async fn ensure_bucket(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<kv::Store, async_nats::Error> {
    if let Ok(store) = js.get_key_value(subjects::API_KEYS_BUCKET).await {
        return Ok(store);
    }
    Ok(js
        .create_key_value(chat_bus::apikey::bucket_config(replicas))
        .await?)
}

/// Reads every key of the bucket now (so that the first request after start finds them).
pub async fn load(ring: &KeyRing, store: &kv::Store) -> Result<(), async_nats::Error> {
    let mut keys = store.keys().await?;
    let mut ids = Vec::new();
    while let Some(k) = keys.next().await {
        ids.push(k?);
    }
    for id in ids {
        if let Some(entry) = store.entry(&id).await? {
            ring.apply(&entry);
        }
    }
    Ok(())
}

/// Follows the bucket until `shutdown`: every put and delete is applied as it comes (the watch
/// replays the current values first, so a change made while it restarts is not missed).
pub async fn watch(ring: KeyRing, store: kv::Store, shutdown: CancellationToken) {
    loop {
        match store.watch_with_history(">").await {
            Ok(mut changes) => loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    next = changes.next() => match next {
                        Some(Ok(entry)) => ring.apply(&entry),
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "API key watch failed; restarting it");
                            break;
                        }
                        None => break,
                    },
                }
            },
            Err(e) => tracing::warn!(error = %e, "API key watch did not start; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_bus::apikey::{Scope, generate};

    #[test]
    fn file_keys_authenticate_and_wrong_ones_do_not() {
        let (key, rec) = generate("ops", vec![Scope::RoomsRead], vec![], 1);
        let dir = std::env::temp_dir().join(format!("chat-api-keys-{}", rec.id));
        std::fs::write(&dir, serde_json::to_string(&vec![rec.clone()]).unwrap()).unwrap();
        let ring = KeyRing::with_file(Some(&dir)).unwrap();
        let _ = std::fs::remove_file(&dir);
        assert_eq!(
            ring.authenticate(Some(&format!("Bearer {key}")))
                .unwrap()
                .id,
            rec.id
        );
        assert_eq!(ring.authenticate(None).unwrap_err(), KeyRefused::Missing);
        assert_eq!(
            ring.authenticate(Some(&key)).unwrap_err(),
            KeyRefused::Malformed
        );
        let other = format!("Bearer chk_{}_{}", rec.id, "0".repeat(64));
        assert_eq!(
            ring.authenticate(Some(&other)).unwrap_err(),
            KeyRefused::WrongSecret
        );
        let unknown = format!("Bearer chk_aaaaaaaaaaaa_{}", "0".repeat(64));
        assert_eq!(
            ring.authenticate(Some(&unknown)).unwrap_err(),
            KeyRefused::Unknown
        );
    }
}
