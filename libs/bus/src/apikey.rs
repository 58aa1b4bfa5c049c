//! Server API keys (issue 16): what an operator creates with `chatctl api-key create`, chat-api
//! checks on every call, and the JetStream KV bucket [`crate::subjects::API_KEYS_BUCKET`] keeps
//! (one entry per key id; revoking deletes it, and every chat-api instance watches the bucket).
//!
//! A key is `chk_<id>_<secret>`: the id finds the record, the secret is checked against its
//! SHA-256. The secret is 32 random bytes (256 bits), so a fast hash is enough (as for GitHub's
//! tokens): there is nothing to brute-force, and the record at rest does not reveal the key.
//! Logs name the id, never the key.

use chat_proto::UserId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Prefix of every key, so secret scanners and operators recognise one.
pub const KEY_PREFIX: &str = "chk_";

/// What a key may do. Each HTTP operation needs one scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    /// Publish, edit, delete and react as one of the key's bot identities.
    #[serde(rename = "messages:write")]
    MessagesWrite,
    /// Create rooms, add and remove members.
    #[serde(rename = "rooms:write")]
    RoomsWrite,
    /// Read a room and its members.
    #[serde(rename = "rooms:read")]
    RoomsRead,
    /// History pages and search, on behalf of a user or as a trusted reader.
    #[serde(rename = "history:read")]
    HistoryRead,
    /// Presence of users or of a room.
    #[serde(rename = "presence:read")]
    PresenceRead,
    /// A user's unread state.
    #[serde(rename = "unread:read")]
    UnreadRead,
    /// Close every session of a user.
    #[serde(rename = "users:disconnect")]
    UsersDisconnect,
}

impl Scope {
    pub const ALL: [Scope; 7] = [
        Scope::MessagesWrite,
        Scope::RoomsWrite,
        Scope::RoomsRead,
        Scope::HistoryRead,
        Scope::PresenceRead,
        Scope::UnreadRead,
        Scope::UsersDisconnect,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::MessagesWrite => "messages:write",
            Scope::RoomsWrite => "rooms:write",
            Scope::RoomsRead => "rooms:read",
            Scope::HistoryRead => "history:read",
            Scope::PresenceRead => "presence:read",
            Scope::UnreadRead => "unread:read",
            Scope::UsersDisconnect => "users:disconnect",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// A key as stored (the value of its KV entry, JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Names the key in logs and in `chatctl api-key list`: `[a-z0-9]{12}`.
    pub id: String,
    /// What the operator called it ("billing-backend").
    pub name: String,
    /// Lowercase hex SHA-256 of the secret part.
    pub hash: String,
    pub scopes: Vec<Scope>,
    /// The bot identities it may post as.
    #[serde(default)]
    pub bots: Vec<UserId>,
    pub created_ms: i64,
}

impl ApiKeyRecord {
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    pub fn may_post_as(&self, user: &UserId) -> bool {
        self.bots.contains(user)
    }

    /// Whether `secret` is this key's, compared in constant time.
    pub fn matches(&self, secret: &str) -> bool {
        let want = self.hash.as_bytes();
        let got = hash_secret(secret);
        let got = got.as_bytes();
        want.len() == got.len() && want.iter().zip(got).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// Revisions kept per key in the bucket (an audit trail of changes).
pub const BUCKET_HISTORY: i64 = 5;

/// The key bucket's one configuration: chat-api and `chatctl` both create it when missing, and
/// two different configurations would make the second creator fail.
pub fn bucket_config(replicas: usize) -> async_nats::jetstream::kv::Config {
    async_nats::jetstream::kv::Config {
        bucket: crate::subjects::API_KEYS_BUCKET.to_owned(),
        description: "Server API keys (chatctl api-key): id -> ApiKeyRecord".to_owned(),
        history: BUCKET_HISTORY,
        num_replicas: replicas,
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    }
}

/// A presented key, split into its id and its secret; `None` for anything else.
pub fn parse_key(key: &str) -> Option<(&str, &str)> {
    let (id, secret) = key.strip_prefix(KEY_PREFIX)?.split_once('_')?;
    let ok_id = id.len() == 12
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok_secret = (32..=128).contains(&secret.len())
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (ok_id && ok_secret).then_some((id, secret))
}

/// Lowercase hex SHA-256.
pub fn hash_secret(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new key and its record: the key is shown once, only the record is stored.
pub fn generate(
    name: &str,
    scopes: Vec<Scope>,
    bots: Vec<UserId>,
    now_ms: i64,
) -> (String, ApiKeyRecord) {
    use rand::RngExt;
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let id: String = (0..12)
        .map(|_| ALNUM[rng.random_range(0..ALNUM.len())] as char)
        .collect();
    let bytes: [u8; 32] = rng.random();
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let key = format!("{KEY_PREFIX}{id}_{secret}");
    let record = ApiKeyRecord {
        id,
        name: name.to_owned(),
        hash: hash_secret(&secret),
        scopes,
        bots,
        created_ms: now_ms,
    };
    (key, record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_matches_its_record_only() {
        let bot = UserId::new("bot-billing").unwrap();
        let (key, rec) = generate("billing", vec![Scope::MessagesWrite], vec![bot.clone()], 1);
        let (id, secret) = parse_key(&key).expect("parses");
        assert_eq!(id, rec.id);
        assert!(rec.matches(secret));
        assert!(!rec.matches(&secret.replace('a', "b").replace('0', "1")));
        assert!(!key.contains(&rec.hash), "the stored hash is not the key");
        assert!(rec.allows(Scope::MessagesWrite) && !rec.allows(Scope::RoomsWrite));
        assert!(rec.may_post_as(&bot));
        assert!(!rec.may_post_as(&UserId::new("alice").unwrap()));
    }

    #[test]
    fn malformed_keys_do_not_parse() {
        for k in [
            "",
            "chk_",
            "chk_abc_def",
            "Bearer chk_x",
            "chk_ABCDEFGHIJKL_0123456789abcdef0123456789abcdef",
            "chk_abcdefghijkl_short",
            "chk_abcdefghijkl_0123456789abcdef0123456789abcdef\n",
        ] {
            assert!(parse_key(k).is_none(), "{k:?}");
        }
    }

    #[test]
    fn scopes_round_trip_by_name() {
        for s in Scope::ALL {
            assert_eq!(Scope::parse(s.as_str()), Some(s));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
        assert_eq!(Scope::parse("admin"), None);
    }
}
