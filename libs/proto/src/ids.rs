//! Identifiers of protocol.md#identities: user and room ids, and the server-made DM room id.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidId(&'static str);

impl fmt::Display for InvalidId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {}: must be 1 to 64 characters of A-Z, a-z, 0-9, _ or -",
            self.0
        )
    }
}

impl std::error::Error for InvalidId {}

/// Is `s` of the form `^[A-Za-z0-9_-]{1,64}$`?
pub fn is_valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `s` against the id pattern of protocol.md#identities.
            pub fn new(s: impl Into<String>) -> Result<Self, InvalidId> {
                let s = s.into();
                if is_valid_id(&s) { Ok(Self(s)) } else { Err(InvalidId($what)) }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<Self, InvalidId> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// A user id, from the JWT `sub` claim.
    UserId,
    "user id"
);
id_type!(
    /// A room id. Ids beginning with `dm-` are reserved for direct-message rooms.
    RoomId,
    "room id"
);

/// Prefix of every direct-message room id.
pub const DM_PREFIX: &str = "dm-";

impl RoomId {
    /// The deterministic DM room of a pair (protocol.md#identities): `dm-` and 16 hex characters of
    /// SHA-256 of `"<a>\n<b>"` with a < b bytewise. `None` for a pair of one user.
    pub fn dm(x: &UserId, y: &UserId) -> Option<RoomId> {
        let (a, b) = match x.as_str().cmp(y.as_str()) {
            std::cmp::Ordering::Less => (x, y),
            std::cmp::Ordering::Greater => (y, x),
            std::cmp::Ordering::Equal => return None,
        };
        let digest = Sha256::digest(format!("{a}\n{b}").as_bytes());
        Some(RoomId(format!("{DM_PREFIX}{}", &hex::encode(digest)[..16])))
    }

    /// Is this a direct-message room id (reserved; never created by `join` or `create`)?
    pub fn is_dm(&self) -> bool {
        self.0.starts_with(DM_PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_pattern() {
        assert!(UserId::new("alice_01-x").is_ok());
        assert!(UserId::new("").is_err());
        assert!(UserId::new("a".repeat(64)).is_ok());
        assert!(UserId::new("a".repeat(65)).is_err());
        assert!(RoomId::new("room.1").is_err());
        assert!(RoomId::new("rööm").is_err());
        assert!(RoomId::new("a b").is_err());
    }

    #[test]
    fn dm_id_is_symmetric_and_matches_the_formula() {
        let a = UserId::new("alice").unwrap();
        let b = UserId::new("bob").unwrap();
        let ab = RoomId::dm(&a, &b).unwrap();
        assert_eq!(Some(ab.clone()), RoomId::dm(&b, &a));
        let expected = hex::encode(Sha256::digest(b"alice\nbob"));
        assert_eq!(ab.as_str(), format!("dm-{}", &expected[..16]));
        assert!(ab.is_dm());
        assert_eq!(RoomId::dm(&a, &a), None);
    }

    #[test]
    fn invalid_ids_fail_deserialization_with_a_clear_message() {
        let err = serde_json::from_str::<RoomId>("\"no spaces\"").unwrap_err();
        assert!(err.to_string().contains("invalid room id"), "{err}");
    }
}
