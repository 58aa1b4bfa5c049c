//! Token verification: HS256 with the algorithm pinned, `exp` and `sub` required, `iss`/`aud`
//! checked when configured. `alg: none` and any other algorithm are refused.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use chat_proto::UserId;

/// Why a token was refused (never echoed with detail to the client beyond this).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("token expired")]
    Expired,
    #[error("invalid token")]
    Invalid,
}

/// A verified identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: UserId,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
}

/// Verifies client tokens.
#[derive(Clone)]
pub struct Authenticator {
    key: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
}

impl Authenticator {
    pub fn hs256(secret: &str, issuer: Option<&str>, audience: Option<&str>) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        // A configured iss/aud must also be present: jsonwebtoken only checks claims that exist
        // unless they are listed as required.
        let mut required = vec!["exp", "sub"];
        required.extend(issuer.map(|_| "iss"));
        required.extend(audience.map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        validation.leeway = 0;
        match issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Authenticator {
            key: DecodingKey::from_secret(secret.as_bytes()),
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            },
        )?;
        let user = UserId::new(data.claims.sub).map_err(|_| AuthError::Invalid)?;
        Ok(Identity {
            user,
            exp: data.claims.exp,
        })
    }

    /// Mints a token (development sign-in only).
    pub fn mint(&self, user: &UserId, ttl_s: i64) -> Option<String> {
        let claims = Claims {
            sub: user.to_string(),
            exp: now_s() + ttl_s,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).ok()
    }
}

/// Seconds since the Unix epoch.
pub fn now_s() -> i64 {
    chat_bus::now_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn token(secret: &str, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn accepts_valid_and_refuses_forged_expired_or_incomplete_tokens() {
        let auth = Authenticator::hs256("s3cret", None, None);
        let ok = token("s3cret", json!({"sub": "alice", "exp": now_s() + 60}));
        assert_eq!(auth.verify(&ok).unwrap().user.as_str(), "alice");
        let forged = token("other", json!({"sub": "alice", "exp": now_s() + 60}));
        assert_eq!(auth.verify(&forged), Err(AuthError::Invalid));
        let expired = token("s3cret", json!({"sub": "alice", "exp": now_s() - 5}));
        assert_eq!(auth.verify(&expired), Err(AuthError::Expired));
        let no_exp = token("s3cret", json!({"sub": "alice"}));
        assert_eq!(auth.verify(&no_exp), Err(AuthError::Invalid));
        let bad_sub = token("s3cret", json!({"sub": "a b", "exp": now_s() + 60}));
        assert_eq!(auth.verify(&bad_sub), Err(AuthError::Invalid));
        assert_eq!(auth.verify("not.a.token"), Err(AuthError::Invalid));
        // alg: none
        let none = format!(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
            "eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0"
        );
        assert_eq!(auth.verify(&none), Err(AuthError::Invalid));
    }

    #[test]
    fn checks_issuer_and_audience_when_configured() {
        let auth = Authenticator::hs256("k", Some("https://idp"), Some("chat"));
        let good = token(
            "k",
            json!({"sub": "a", "exp": now_s() + 60, "iss": "https://idp", "aud": "chat"}),
        );
        assert!(auth.verify(&good).is_ok());
        let wrong_aud = token(
            "k",
            json!({"sub": "a", "exp": now_s() + 60, "iss": "https://idp", "aud": "x"}),
        );
        assert_eq!(auth.verify(&wrong_aud), Err(AuthError::Invalid));
        let no_iss = token("k", json!({"sub": "a", "exp": now_s() + 60, "aud": "chat"}));
        assert_eq!(auth.verify(&no_iss), Err(AuthError::Invalid));
    }
}
