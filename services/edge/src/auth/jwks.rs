//! The signing keys of an OAuth2/OIDC provider (`CHAT_JWT_JWKS`): a JWKS from a file or an
//! https:// URL, cached, fetched again when a token names an unknown `kid` (at most once per
//! [`JwksCache::min_refetch`]) or when the copy is older than [`MAX_AGE`].
//!
//! Each usable key carries its algorithm, taken from the key (its `alg`, else its `kty`/`crv`):
//! a token is verified with that algorithm only, so it cannot choose a weaker one. Symmetric
//! (`oct`) keys and encryption keys are ignored: a published key set has no business holding
//! either.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context as _, bail};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::time::Instant;

/// A cached key set is refreshed on use after this long, so removed keys stop working.
pub const MAX_AGE: Duration = Duration::from_secs(3600);
/// How long a key set whose refetch keeps failing may still be used (issue 15 item 12: stale
/// keys were valid forever): past it, tokens signed with its keys are refused until a fetch
/// succeeds, so a key the provider withdrew stops working even while the provider is down.
pub const MAX_STALE: Duration = Duration::from_secs(24 * 3600);
/// Default lower bound between two fetches.
pub const MIN_REFETCH: Duration = Duration::from_secs(30);
/// Largest JWKS document accepted.
const MAX_BYTES: usize = 1 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the key set comes from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    File(PathBuf),
    /// An https URL, trusted against the web PKI roots plus any extra CA (`CHAT_JWT_JWKS_CA`).
    Https {
        url: hyper::Uri,
        extra_ca: Option<PathBuf>,
    },
}

impl JwksSource {
    /// `https://…` is fetched; anything else is a file path (`file://` accepted). Plain http is
    /// refused: the keys decide who anyone is.
    pub fn parse(value: &str, extra_ca: Option<PathBuf>) -> anyhow::Result<Self> {
        if let Some(path) = value.strip_prefix("file://") {
            return Ok(JwksSource::File(PathBuf::from(path)));
        }
        if value.starts_with("http://") {
            bail!("CHAT_JWT_JWKS must be an https:// URL or a file path, not http://");
        }
        if value.starts_with("https://") {
            let url: hyper::Uri = value.parse().context("CHAT_JWT_JWKS is not a valid URL")?;
            return Ok(JwksSource::Https { url, extra_ca });
        }
        Ok(JwksSource::File(PathBuf::from(value)))
    }
}

/// A usable verification key.
#[derive(Clone)]
pub struct Key {
    pub algorithm: Algorithm,
    pub key: DecodingKey,
}

struct Loaded {
    keys: HashMap<String, Key>,
    fetched: Option<Instant>,
}

/// The cached key set.
pub struct JwksCache {
    source: JwksSource,
    keys: RwLock<Arc<Loaded>>,
    /// Serialises fetches and remembers the last attempt (successful or not).
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
    min_refetch: Duration,
    /// [`MAX_STALE`] unless set with [`with_max_stale`](Self::with_max_stale).
    max_stale: Duration,
}

impl JwksCache {
    /// An empty cache; the first lookup fetches.
    pub fn new(source: JwksSource, min_refetch: Duration) -> Self {
        JwksCache {
            source,
            keys: RwLock::new(Arc::new(Loaded {
                keys: HashMap::new(),
                fetched: None,
            })),
            last_attempt: tokio::sync::Mutex::new(None),
            min_refetch,
            max_stale: MAX_STALE,
        }
    }

    /// How long a copy may be used after its last successful fetch.
    pub fn with_max_stale(mut self, max_stale: Duration) -> Self {
        self.max_stale = max_stale;
        self
    }

    /// The key `kid` of `loaded`, unless that copy is past [`MAX_STALE`].
    fn usable(&self, loaded: &Loaded, kid: &str) -> Option<Key> {
        let young = loaded.fetched.is_some_and(|t| t.elapsed() < self.max_stale);
        if young {
            loaded.keys.get(kid).cloned()
        } else {
            None
        }
    }

    /// Fetches now (at start, so that a broken configuration shows early).
    pub async fn load(&self) -> anyhow::Result<usize> {
        let mut last = self.last_attempt.lock().await;
        *last = Some(Instant::now());
        self.fetch_and_store().await
    }

    /// The key named `kid`, fetching the set again if it is unknown or the copy is old, no more
    /// often than `min_refetch`.
    pub async fn key(&self, kid: &str) -> Option<Key> {
        let current = self.current();
        let stale = current.fetched.is_none_or(|t| t.elapsed() >= MAX_AGE);
        if !stale && let Some(k) = current.keys.get(kid) {
            return Some(k.clone());
        }
        let known = self.usable(&current, kid);
        {
            let mut last = match (self.last_attempt.try_lock(), &known) {
                (Ok(guard), _) => guard,
                // An old copy that names the key: use it rather than wait for a fetch under way.
                (Err(_), Some(_)) => return known,
                (Err(_), None) => self.last_attempt.lock().await,
            };
            // Another lookup may have fetched while this one waited for the lock.
            let fresh = self.current();
            if !Arc::ptr_eq(&fresh, &current)
                && let Some(k) = fresh.keys.get(kid)
            {
                return Some(k.clone());
            }
            if last.is_none_or(|t| t.elapsed() >= self.min_refetch) {
                *last = Some(Instant::now());
                metrics::counter!("chat_edge_jwks_fetches_total").increment(1);
                if let Err(e) = self.fetch_and_store().await {
                    metrics::counter!("chat_edge_jwks_fetch_failures_total").increment(1);
                    tracing::warn!(error = %format!("{e:#}"), "JWKS fetch failed; keeping the cached keys");
                }
            }
        }
        match self.usable(&self.current(), kid) {
            Some(k) => Some(k),
            None => {
                if known.is_none() && current.keys.contains_key(kid) {
                    metrics::counter!("chat_edge_jwks_stale_refusals_total").increment(1);
                }
                // `known` was usable a moment ago; the copy does not age past it mid-call.
                known
            }
        }
    }

    fn current(&self) -> Arc<Loaded> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    async fn fetch_and_store(&self) -> anyhow::Result<usize> {
        let bytes = match &self.source {
            JwksSource::File(path) => tokio::fs::read(path)
                .await
                .with_context(|| format!("read {}", path.display()))?,
            JwksSource::Https { url, extra_ca } => {
                tokio::time::timeout(FETCH_TIMEOUT, https_get(url, extra_ca.as_ref()))
                    .await
                    .context("JWKS fetch timed out")??
            }
        };
        let set: JwkSet = serde_json::from_slice(&bytes).context("not a JWKS document")?;
        let keys = usable_keys(&set);
        let n = keys.len();
        *self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(Loaded {
            keys,
            fetched: Some(Instant::now()),
        });
        tracing::info!(keys = n, "JWKS loaded");
        Ok(n)
    }
}

/// The signing keys of a set, by kid, each with the one algorithm it verifies.
pub fn usable_keys(set: &JwkSet) -> HashMap<String, Key> {
    let mut out = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = &jwk.common.key_id else {
            continue;
        };
        if matches!(
            jwk.common.public_key_use,
            Some(PublicKeyUse::Encryption) | Some(PublicKeyUse::Other(_))
        ) {
            continue;
        }
        let Some(algorithm) = key_algorithm(jwk) else {
            tracing::debug!(kid, "JWK skipped: no usable signature algorithm");
            continue;
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                out.insert(kid.clone(), Key { algorithm, key });
            }
            Err(e) => tracing::warn!(kid, error = %e, "JWK skipped"),
        }
    }
    out
}

/// The algorithm a key verifies: its declared `alg` when that fits the key type, else the
/// usual one for its type. Symmetric keys never qualify.
fn key_algorithm(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    use Algorithm::*;
    let declared = jwk
        .common
        .key_algorithm
        .and_then(|a| Algorithm::try_from(a).ok());
    let fits = |a: &Algorithm| match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => matches!(a, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
        AlgorithmParameters::EllipticCurve(p) => matches!(
            (&p.curve, a),
            (EllipticCurve::P256, ES256) | (EllipticCurve::P384, ES384)
        ),
        AlgorithmParameters::OctetKeyPair(p) => {
            matches!((&p.curve, a), (EllipticCurve::Ed25519, EdDSA))
        }
        _ => false,
    };
    match declared {
        Some(a) => fits(&a).then_some(a),
        None if jwk.common.key_algorithm.is_some() => None,
        None => [RS256, ES256, ES384, EdDSA].into_iter().find(fits),
    }
}

/// GET over https with a minimal client (rustls with ring, HTTP/1.1, no redirects).
async fn https_get(url: &hyper::Uri, extra_ca: Option<&PathBuf>) -> anyhow::Result<Vec<u8>> {
    use http_body_util::BodyExt as _;
    use hyper_util::rt::TokioIo;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

    let host = url.host().context("URL without a host")?.to_owned();
    let port = url.port_u16().unwrap_or(443);
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = extra_ca {
        for cert in CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("read CHAT_JWT_JWKS_CA {}", ca.display()))?
        {
            roots.add(cert.context("parse CHAT_JWT_JWKS_CA")?)?;
        }
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .with_context(|| format!("connect to {host}:{port}"))?;
    let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .context("invalid host name")?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    let driver = tokio::spawn(conn);
    let path = url.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let authority = url.authority().map(|a| a.as_str()).unwrap_or(&host);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::ACCEPT, "application/json")
        .header(hyper::header::USER_AGENT, "chat-edge")
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    if !status.is_success() {
        driver.abort();
        bail!("GET {url}: HTTP {status}");
    }
    let body = http_body_util::Limited::new(response.into_body(), MAX_BYTES)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("read JWKS body: {e}"))?
        .to_bytes();
    driver.abort();
    Ok(body.to_vec())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use rsa::pkcs1::EncodeRsaPrivateKey as _;
    use rsa::traits::PublicKeyParts as _;
    use serde_json::{Value, json};

    use super::super::{AuthError, Authenticator, now_s};
    use super::*;

    /// A P-256 key made by the test: its JWK and its signing key.
    fn ec_key(kid: &str) -> (Value, EncodingKey) {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = pair.public_key_raw();
        assert_eq!(raw.len(), 65, "uncompressed point");
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
                         "x": B64.encode(&raw[1..33]), "y": B64.encode(&raw[33..65])});
        (
            jwk,
            EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
        )
    }

    /// An RSA key made by the test (1024 bits keeps a debug build quick; size is not under
    /// test). Returns the JWK, the signing key and the public modulus bytes.
    fn rsa_key(kid: &str) -> (Value, EncodingKey, Vec<u8>) {
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap();
        let n = key.n().to_bytes_be();
        let jwk = json!({"kty": "RSA", "kid": kid, "alg": "RS256",
                         "n": B64.encode(&n), "e": B64.encode(key.e().to_bytes_be())});
        let der = key.to_pkcs1_der().unwrap();
        (jwk, EncodingKey::from_rsa_der(der.as_bytes()), n)
    }

    fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    }

    fn claims(sub: &str, ttl: i64) -> Value {
        json!({"sub": sub, "exp": now_s() + ttl})
    }

    fn write_jwks(path: &std::path::Path, keys: &[&Value]) {
        std::fs::write(path, json!({"keys": keys}).to_string()).unwrap();
    }

    async fn cache(path: &std::path::Path, min_refetch: Duration) -> Arc<JwksCache> {
        let cache = JwksCache::new(JwksSource::File(path.to_owned()), min_refetch);
        cache.load().await.unwrap();
        Arc::new(cache)
    }

    #[tokio::test]
    async fn rs256_and_es256_tokens_verify_against_the_key_their_kid_names() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jwks.json");
        let (rsa_jwk, rsa_sign, _) = rsa_key("r1");
        let (ec_jwk, ec_sign) = ec_key("e1");
        write_jwks(&file, &[&rsa_jwk, &ec_jwk]);
        let auth = Authenticator::new(Some(cache(&file, MIN_REFETCH).await), None, None);

        let rs = sign(Algorithm::RS256, Some("r1"), &rsa_sign, claims("alice", 60));
        assert_eq!(auth.verify(&rs).await.unwrap().user.as_str(), "alice");
        let es = sign(Algorithm::ES256, Some("e1"), &ec_sign, claims("bob", 60));
        assert_eq!(auth.verify(&es).await.unwrap().user.as_str(), "bob");

        // Expired.
        let old = sign(Algorithm::RS256, Some("r1"), &rsa_sign, claims("alice", -5));
        assert_eq!(auth.verify(&old).await, Err(AuthError::Expired));
        // Wrong kid, no kid, a kid naming the other key.
        let wrong = sign(
            Algorithm::RS256,
            Some("nope"),
            &rsa_sign,
            claims("alice", 60),
        );
        assert_eq!(auth.verify(&wrong).await, Err(AuthError::Invalid));
        let no_kid = sign(Algorithm::RS256, None, &rsa_sign, claims("alice", 60));
        assert_eq!(auth.verify(&no_kid).await, Err(AuthError::Invalid));
        let crossed = sign(Algorithm::ES256, Some("r1"), &ec_sign, claims("alice", 60));
        assert_eq!(auth.verify(&crossed).await, Err(AuthError::Invalid));
        // Signed by a key that is not in the set, under a kid that is.
        let (_, stranger, _) = rsa_key("r1");
        let forged = sign(Algorithm::RS256, Some("r1"), &stranger, claims("alice", 60));
        assert_eq!(auth.verify(&forged).await, Err(AuthError::Invalid));
        // The key says RS256: a PS256 header is refused even with the right key.
        let other_alg = sign(Algorithm::PS256, Some("r1"), &rsa_sign, claims("alice", 60));
        assert_eq!(auth.verify(&other_alg).await, Err(AuthError::Invalid));
    }

    #[tokio::test]
    async fn algorithm_switching_to_hs256_with_the_public_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jwks.json");
        let (rsa_jwk, _, n) = rsa_key("r1");
        let (ec_jwk, _) = ec_key("e1");
        write_jwks(&file, &[&rsa_jwk, &ec_jwk]);
        let jwks = cache(&file, MIN_REFETCH).await;
        // HMAC "signed" with what an attacker knows: the public key's bytes and its JWK text.
        let public_secrets = [
            n.clone(),
            rsa_jwk.to_string().into_bytes(),
            B64.encode(&n).into_bytes(),
        ];
        for with_secret in [false, true] {
            let mut auth = Authenticator::new(Some(jwks.clone()), None, None);
            if with_secret {
                auth = auth.with_secret("the-real-secret");
            }
            for secret in &public_secrets {
                for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
                    let t = sign(
                        alg,
                        Some("r1"),
                        &EncodingKey::from_secret(secret).unwrap(),
                        claims("eve", 60),
                    );
                    assert_eq!(auth.verify(&t).await, Err(AuthError::Invalid), "{alg:?}");
                }
            }
        }
        // A JWKS cannot smuggle in a symmetric key either.
        let oct = json!({"kty": "oct", "kid": "o1", "alg": "HS256", "k": B64.encode(b"shared")});
        write_jwks(&file, &[&oct]);
        let only_oct = JwksCache::new(JwksSource::File(file.clone()), MIN_REFETCH);
        assert_eq!(only_oct.load().await.unwrap(), 0);
        let auth = Authenticator::new(Some(Arc::new(only_oct)), None, None);
        let t = sign(
            Algorithm::HS256,
            Some("o1"),
            &EncodingKey::from_secret(b"shared").unwrap(),
            claims("eve", 60),
        );
        assert_eq!(auth.verify(&t).await, Err(AuthError::Invalid));
    }

    #[tokio::test]
    async fn hs256_with_the_secret_keeps_working_beside_the_jwks() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jwks.json");
        let (ec_jwk, ec_sign) = ec_key("e1");
        write_jwks(&file, &[&ec_jwk]);
        let jwks = cache(&file, MIN_REFETCH).await;
        let hs = sign(
            Algorithm::HS256,
            None,
            &EncodingKey::from_secret(b"s3cret").unwrap(),
            claims("carol", 60),
        );
        let es = sign(Algorithm::ES256, Some("e1"), &ec_sign, claims("dave", 60));
        let both = Authenticator::new(Some(jwks.clone()), None, None).with_secret("s3cret");
        assert_eq!(both.verify(&hs).await.unwrap().user.as_str(), "carol");
        assert_eq!(both.verify(&es).await.unwrap().user.as_str(), "dave");
        let jwks_only = Authenticator::new(Some(jwks), None, None);
        assert_eq!(jwks_only.verify(&hs).await, Err(AuthError::Invalid));
        // iss/aud apply to provider tokens as well.
        let strict = Authenticator::new(
            Some(cache(&file, MIN_REFETCH).await),
            Some("https://idp"),
            Some("chat"),
        );
        assert_eq!(strict.verify(&es).await, Err(AuthError::Invalid));
        let good = sign(
            Algorithm::ES256,
            Some("e1"),
            &ec_sign,
            json!({"sub": "dave", "exp": now_s() + 60, "iss": "https://idp", "aud": "chat"}),
        );
        assert!(strict.verify(&good).await.is_ok());
    }

    #[tokio::test]
    async fn an_unknown_kid_fetches_the_set_again_at_most_once_per_interval() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jwks.json");
        let (a, a_sign) = ec_key("a");
        let (b, b_sign) = ec_key("b");
        let (c, c_sign) = ec_key("c");
        write_jwks(&file, &[&a]);

        // Key rotation: the provider publishes b; a token signed with b is accepted.
        let rotating = Authenticator::new(Some(cache(&file, Duration::ZERO).await), None, None);
        write_jwks(&file, &[&a, &b]);
        let tb = sign(Algorithm::ES256, Some("b"), &b_sign, claims("u", 60));
        assert!(rotating.verify(&tb).await.is_ok());

        // With the 30 s limit, a burst of unknown kids does not hammer the provider: the set
        // was just fetched, so c stays unknown until the interval has passed.
        write_jwks(&file, &[&a]);
        let limited = Authenticator::new(Some(cache(&file, MIN_REFETCH).await), None, None);
        write_jwks(&file, &[&a, &c]);
        let tc = sign(Algorithm::ES256, Some("c"), &c_sign, claims("u", 60));
        assert_eq!(limited.verify(&tc).await, Err(AuthError::Invalid));
        let ta = sign(Algorithm::ES256, Some("a"), &a_sign, claims("u", 60));
        assert!(limited.verify(&ta).await.is_ok(), "known keys keep working");

        // A set that cannot be read keeps the cached keys.
        std::fs::write(&file, "not json").unwrap();
        let keeps = Authenticator::new(Some(cache_of(&file, &[&a]).await), None, None);
        assert_eq!(
            keeps.verify(&tc).await,
            Err(AuthError::Invalid),
            "fetch fails"
        );
        assert!(keeps.verify(&ta).await.is_ok());
    }

    /// Issue 15 item 12: while refetching fails, the cached keys keep working past the hourly
    /// refresh, but only up to the stale limit; then their tokens are refused, and a fetch that
    /// works again brings them back.
    #[tokio::test(start_paused = true)]
    async fn stale_keys_have_a_maximum_age_when_refetching_fails() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jwks.json");
        let (a, a_sign) = ec_key("a");
        write_jwks(&file, &[&a]);
        let cache = JwksCache::new(JwksSource::File(file.clone()), MIN_REFETCH)
            .with_max_stale(Duration::from_secs(6 * 3600));
        cache.load().await.unwrap();
        let auth = Authenticator::new(Some(Arc::new(cache)), None, None);
        let ta = || sign(Algorithm::ES256, Some("a"), &a_sign, claims("u", 600));
        std::fs::write(&file, "the provider is down").unwrap();
        tokio::time::advance(MAX_AGE + Duration::from_secs(60)).await;
        assert!(
            auth.verify(&ta()).await.is_ok(),
            "stale but within the limit"
        );
        tokio::time::advance(Duration::from_secs(6 * 3600)).await;
        assert_eq!(
            auth.verify(&ta()).await,
            Err(AuthError::Invalid),
            "past the limit"
        );
        write_jwks(&file, &[&a]);
        tokio::time::advance(MIN_REFETCH).await;
        assert!(auth.verify(&ta()).await.is_ok(), "a fetch that works again");
    }

    /// A cache loaded with `keys`, whose file then breaks.
    async fn cache_of(broken: &std::path::Path, keys: &[&Value]) -> Arc<JwksCache> {
        let good = broken.with_extension("good.json");
        write_jwks(&good, keys);
        let cache = JwksCache::new(JwksSource::File(good.clone()), Duration::ZERO);
        cache.load().await.unwrap();
        std::fs::copy(broken, &good).unwrap();
        Arc::new(cache)
    }

    #[test]
    fn sources() {
        assert!(matches!(
            JwksSource::parse("/etc/jwks.json", None),
            Ok(JwksSource::File(_))
        ));
        assert!(matches!(
            JwksSource::parse("file:///etc/jwks.json", None),
            Ok(JwksSource::File(_))
        ));
        assert!(matches!(
            JwksSource::parse(
                "https://idp.example/realms/x/protocol/openid-connect/certs",
                None
            ),
            Ok(JwksSource::Https { .. })
        ));
        assert!(JwksSource::parse("http://idp.example/certs", None).is_err());
    }
}
