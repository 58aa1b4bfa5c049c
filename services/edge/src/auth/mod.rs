//! Token verification (protocol.md#ws): HS256 with a shared secret, and RS256/ES256 (or any
//! asymmetric algorithm a key declares) against the JWKS of an OAuth2/OIDC provider
//! ([`jwks`]). `exp` and `sub` are required, `iss`/`aud` checked when configured.
//!
//! The algorithm is never the token's choice: an HS256 token is checked against the secret only
//! (never against a public key, which would let anyone who has the public key forge tokens),
//! and an asymmetric token against the key its `kid` names, with that key's algorithm; a header
//! naming another algorithm is refused. `alg: none` is refused.

pub mod jwks;

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use chat_proto::UserId;

use crate::EdgeConfig;
use jwks::JwksCache;

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
    /// Not before (seconds): checked with [`NBF_LEEWAY_S`] of clock skew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
}

/// Clock skew allowed on `nbf` (a provider's clock a little ahead of ours).
pub const NBF_LEEWAY_S: i64 = 30;

#[derive(Clone)]
struct Secret {
    key: DecodingKey,
    encoding: EncodingKey,
}

/// Verifies client tokens.
#[derive(Clone)]
pub struct Authenticator {
    /// HS256 shared secret; `None` when only the JWKS is trusted.
    secret: Option<Secret>,
    jwks: Option<Arc<JwksCache>>,
    issuer: Option<String>,
    audience: Option<String>,
}

impl Authenticator {
    /// HS256 with a shared secret only.
    pub fn hs256(secret: &str, issuer: Option<&str>, audience: Option<&str>) -> Self {
        Self::new(None, issuer, audience).with_secret(secret)
    }

    /// Tokens signed by the keys of a JWKS (when given) only; add a secret with
    /// [`with_secret`](Self::with_secret).
    pub fn new(jwks: Option<Arc<JwksCache>>, issuer: Option<&str>, audience: Option<&str>) -> Self {
        Authenticator {
            secret: None,
            jwks,
            issuer: issuer.map(str::to_owned),
            audience: audience.map(str::to_owned),
        }
    }

    /// Also accepts HS256 tokens signed with `secret`.
    /// (jsonwebtoken refuses an empty secret, and so does the configuration, `CHAT_JWT_SECRET`:
    /// with one, no HS256 token is accepted.)
    pub fn with_secret(mut self, secret: &str) -> Self {
        if let (Ok(key), Ok(encoding)) = (
            DecodingKey::from_secret(secret.as_bytes()),
            EncodingKey::from_secret(secret.as_bytes()),
        ) {
            self.secret = Some(Secret { key, encoding });
        }
        self
    }

    /// The rules for a token verified with `alg`: that algorithm only, required claims, no leeway.
    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        // A configured iss/aud must also be present: jsonwebtoken only checks claims that exist
        // unless they are listed as required.
        let mut required = vec!["exp", "sub"];
        required.extend(self.issuer.as_ref().map(|_| "iss"));
        required.extend(self.audience.as_ref().map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        validation.leeway = 0;
        match &self.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        validation
    }

    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        // An unknown `alg` (including "none") fails here.
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        let data = match header.alg {
            Algorithm::HS256 => {
                let secret = self.secret.as_ref().ok_or(AuthError::Invalid)?;
                decode(token, &secret.key, &self.validation(Algorithm::HS256))?
            }
            // Other HMAC variants are not offered; a JWKS never holds symmetric keys.
            Algorithm::HS384 | Algorithm::HS512 => return Err(AuthError::Invalid),
            alg => {
                let jwks = self.jwks.as_ref().ok_or(AuthError::Invalid)?;
                let kid = header.kid.as_deref().ok_or(AuthError::Invalid)?;
                let key = jwks.key(kid).await.ok_or(AuthError::Invalid)?;
                if key.algorithm != alg {
                    return Err(AuthError::Invalid);
                }
                decode(token, &key.key, &self.validation(key.algorithm))?
            }
        };
        // A token not valid yet is refused (issue 15 item 12); `exp` keeps no leeway.
        if data.nbf.is_some_and(|nbf| nbf > now_s() + NBF_LEEWAY_S) {
            return Err(AuthError::Invalid);
        }
        let user = UserId::new(data.sub).map_err(|_| AuthError::Invalid)?;
        Ok(Identity {
            user,
            exp: data.exp,
        })
    }

    /// Mints a token (development sign-in only; needs the shared secret).
    pub fn mint(&self, user: &UserId, ttl_s: i64) -> Option<String> {
        let secret = self.secret.as_ref()?;
        let claims = Claims {
            sub: user.to_string(),
            exp: now_s() + ttl_s,
            nbf: None,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &secret.encoding).ok()
    }
}

fn decode(token: &str, key: &DecodingKey, validation: &Validation) -> Result<Claims, AuthError> {
    jsonwebtoken::decode::<Claims>(token, key, validation)
        .map(|d| d.claims)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid,
        })
}

/// Seconds since the Unix epoch.
pub fn now_s() -> i64 {
    chat_bus::now_ms() / 1000
}

/// The token verifier of the configuration: the JWKS (loaded now, so that a broken file shows
/// at start; an unreachable URL is retried on use) and/or the HS256 secret.
pub(crate) async fn authenticator(config: &EdgeConfig) -> anyhow::Result<Authenticator> {
    let (iss, aud) = (config.jwt_issuer.as_deref(), config.jwt_audience.as_deref());
    let jwks = match &config.jwt_jwks {
        Some(value) => {
            let source = jwks::JwksSource::parse(value, config.jwt_jwks_ca.clone())?;
            let cache = Arc::new(jwks::JwksCache::new(source.clone(), jwks::MIN_REFETCH));
            match (cache.load().await, &source) {
                (Ok(n), _) => tracing::info!(keys = n, "JWKS loaded from CHAT_JWT_JWKS"),
                (Err(e), jwks::JwksSource::File(_)) => {
                    return Err(e.context("load CHAT_JWT_JWKS"));
                }
                (Err(e), jwks::JwksSource::Https { .. }) => {
                    tracing::warn!(error = %format!("{e:#}"), "JWKS not reachable yet; retrying on use");
                }
            }
            Some(cache)
        }
        None => None,
    };
    let mut auth = Authenticator::new(jwks, iss, aud);
    match &config.jwt_secret {
        Some(secret) => auth = auth.with_secret(secret.as_str()),
        None => tracing::info!("CHAT_JWT_SECRET is not set: HS256 tokens are refused"),
    }
    Ok(auth)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn token(secret: &str, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn accepts_valid_and_refuses_forged_expired_or_incomplete_tokens() {
        let auth = Authenticator::hs256("s3cret", None, None);
        let ok = token("s3cret", json!({"sub": "alice", "exp": now_s() + 60}));
        assert_eq!(auth.verify(&ok).await.unwrap().user.as_str(), "alice");
        let forged = token("other", json!({"sub": "alice", "exp": now_s() + 60}));
        assert_eq!(auth.verify(&forged).await, Err(AuthError::Invalid));
        let expired = token("s3cret", json!({"sub": "alice", "exp": now_s() - 5}));
        assert_eq!(auth.verify(&expired).await, Err(AuthError::Expired));
        let no_exp = token("s3cret", json!({"sub": "alice"}));
        assert_eq!(auth.verify(&no_exp).await, Err(AuthError::Invalid));
        // nbf: in the future (beyond the leeway) refused; within the leeway or past, fine.
        let early = token(
            "s3cret",
            json!({"sub": "alice", "exp": now_s() + 600, "nbf": now_s() + 120}),
        );
        assert_eq!(auth.verify(&early).await, Err(AuthError::Invalid));
        let skewed = token(
            "s3cret",
            json!({"sub": "alice", "exp": now_s() + 600, "nbf": now_s() + 5}),
        );
        assert!(auth.verify(&skewed).await.is_ok());
        let past = token(
            "s3cret",
            json!({"sub": "alice", "exp": now_s() + 600, "nbf": now_s() - 5}),
        );
        assert!(auth.verify(&past).await.is_ok());
        let bad_sub = token("s3cret", json!({"sub": "a b", "exp": now_s() + 60}));
        assert_eq!(auth.verify(&bad_sub).await, Err(AuthError::Invalid));
        assert_eq!(auth.verify("not.a.token").await, Err(AuthError::Invalid));
        // alg: none
        let none = format!(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
            "eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0"
        );
        assert_eq!(auth.verify(&none).await, Err(AuthError::Invalid));
    }

    #[tokio::test]
    async fn checks_issuer_and_audience_when_configured() {
        let auth = Authenticator::hs256("k", Some("https://idp"), Some("chat"));
        let good = token(
            "k",
            json!({"sub": "a", "exp": now_s() + 60, "iss": "https://idp", "aud": "chat"}),
        );
        assert!(auth.verify(&good).await.is_ok());
        let wrong_aud = token(
            "k",
            json!({"sub": "a", "exp": now_s() + 60, "iss": "https://idp", "aud": "x"}),
        );
        assert_eq!(auth.verify(&wrong_aud).await, Err(AuthError::Invalid));
        let no_iss = token("k", json!({"sub": "a", "exp": now_s() + 60, "aud": "chat"}));
        assert_eq!(auth.verify(&no_iss).await, Err(AuthError::Invalid));
    }
}
