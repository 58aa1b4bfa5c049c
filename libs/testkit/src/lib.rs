//! Real servers for tests, never mocks: a nats-server with JetStream on a free port and a
//! temporary store ([`NatsServer`], or a cluster of them: [`NatsCluster`]), a fresh PostgreSQL
//! database per test ([`fresh_database`]), a WebSocket client that speaks JSON frames
//! ([`WsClient`]) and JWTs ([`token`]); and the one way tests wait for something: [`eventually`].

mod eventually;
mod nats;
mod pg;
mod ws;

pub use eventually::{Probe, eventually, try_eventually};
pub use nats::{NatsCluster, NatsOptions, NatsServer};
pub use pg::{PgCluster, fresh_database};
pub use ws::{WsClient, WsError};

use std::path::PathBuf;

/// The workspace root (where `.venv/` and `target/` live).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// A free TCP port on the loopback interface.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// Minting test tokens (HS256 unless stated).
pub mod token {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    use serde_json::{Value, json};

    /// Seconds since the Unix epoch.
    pub fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }

    /// An HS256 token for `sub`, valid for `ttl_s` seconds (negative: already expired).
    pub fn hs256(secret: &str, sub: &str, ttl_s: i64) -> String {
        with_claims(
            secret,
            json!({"sub": sub, "exp": now() + ttl_s, "iat": now()}),
        )
    }

    /// An HS256 token with arbitrary claims.
    pub fn with_claims(secret: &str, claims: Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()).expect("a non-empty secret"),
        )
        .expect("encode token")
    }

    /// An unsigned `alg: none` token.
    pub fn unsigned(sub: &str, ttl_s: i64) -> String {
        use base64_url::encode as b64;
        let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let claims = b64(json!({"sub": sub, "exp": now() + ttl_s})
            .to_string()
            .as_bytes());
        format!("{header}.{claims}.")
    }

    mod base64_url {
        /// Unpadded base64url, enough for building hostile tokens by hand.
        pub fn encode(bytes: &[u8]) -> String {
            const A: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut out = String::new();
            for chunk in bytes.chunks(3) {
                let b = [
                    chunk[0],
                    *chunk.get(1).unwrap_or(&0),
                    *chunk.get(2).unwrap_or(&0),
                ];
                let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
                let chars = chunk.len() + 1;
                for i in 0..chars {
                    out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
                }
            }
            out
        }
    }
}
