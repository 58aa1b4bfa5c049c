//! Issue 6: tokens from an OAuth2/OIDC provider. chat-edge is given the provider's JWKS
//! (`CHAT_JWT_JWKS`, here a file, and an https URL served by the test with its own CA); clients
//! sign in with ES256 and RS256 tokens signed by keys the test generates, while HS256 tokens with
//! the shared secret keep working.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chat_testkit::{WsClient, token};
use chat_tests::Stack;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::PrivateKeyDer;
use tokio_rustls::rustls::{self, ServerConfig};

/// A P-256 key pair: its JWK and its signing key.
fn provider_key(kid: &str) -> (Value, EncodingKey) {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = pair.public_key_raw();
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
                     "x": B64.encode(&raw[1..33]), "y": B64.encode(&raw[33..65])});
    let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    (jwk, key)
}

/// An RSA key pair made by the test (1024 bits keeps a debug build quick): JWK and signing key.
fn rsa_provider_key(kid: &str) -> (Value, EncodingKey) {
    use rsa::pkcs1::EncodeRsaPrivateKey as _;
    use rsa::traits::PublicKeyParts as _;
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap();
    let jwk = json!({"kty": "RSA", "kid": kid, "use": "sig",
                     "n": B64.encode(key.n().to_bytes_be()), "e": B64.encode(key.e().to_bytes_be())});
    let der = key.to_pkcs1_der().unwrap();
    (jwk, EncodingKey::from_rsa_der(der.as_bytes()))
}

fn es256(kid: &str, key: &EncodingKey, sub: &str) -> String {
    signed(Algorithm::ES256, kid, key, sub)
}

fn signed(alg: Algorithm, kid: &str, key: &EncodingKey, sub: &str) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    let claims = json!({"sub": sub, "exp": token::now() + 600});
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

async fn refused(url: &str, token: &str) {
    let mut c = WsClient::connect(url, None).await.expect("connect");
    c.send(json!({"type": "auth", "token": token})).await;
    let e = c.recv_type("error").await.expect("error");
    assert_eq!(e["code"], "unauthorized", "{e}");
    assert_eq!(c.expect_close().await, Some(4001));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_token_signs_in_through_a_jwks_file() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    let (jwk, key) = provider_key("k1");
    let (rsa_jwk, rsa_key) = rsa_provider_key("r1");
    std::fs::write(&jwks, json!({"keys": [jwk, rsa_jwk]}).to_string()).unwrap();
    let stack = Stack::start_with(&[("CHAT_JWT_JWKS", jwks.to_str().unwrap())]).await;
    let url = stack.ws_url(0);

    let (_alice, hello) = WsClient::login(&url, &es256("k1", &key, "alice")).await;
    assert_eq!(hello["user"], "alice");
    let rs256 = signed(Algorithm::RS256, "r1", &rsa_key, "carol");
    let (_carol, hello) = WsClient::login(&url, &rs256).await;
    assert_eq!(hello["user"], "carol");
    // The shared secret still signs tokens (CHAT_JWT_SECRET is set in test stacks).
    let (_bob, hello) = WsClient::login(&url, &stack.token("bob")).await;
    assert_eq!(hello["user"], "bob");

    // An unknown key, and HS256 "signed" with the provider's public key, are refused.
    let (_, stranger) = provider_key("k1");
    refused(&url, &es256("k1", &stranger, "mallory")).await;
    let public = EncodingKey::from_secret(jwk.to_string().as_bytes()).unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    let switched = jsonwebtoken::encode(
        &header,
        &json!({"sub": "mallory", "exp": token::now() + 600}),
        &public,
    )
    .unwrap();
    refused(&url, &switched).await;
}

/// Serves `body` over https on 127.0.0.1 with `cert`; returns the port.
async fn https_server(cert: &rcgen::CertifiedKey<rcgen::KeyPair>, body: String) -> u16 {
    let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_url_is_fetched_over_https() {
    let (jwk, key) = provider_key("k1");
    let server_cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let port = https_server(&server_cert, json!({"keys": [jwk]}).to_string()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, server_cert.cert.pem()).unwrap();
    let stack = Stack::start_with(&[
        ("CHAT_JWT_JWKS", &format!("https://localhost:{port}/certs")),
        ("CHAT_JWT_JWKS_CA", ca.to_str().unwrap()),
    ])
    .await;
    let (_alice, hello) = WsClient::login(&stack.ws_url(0), &es256("k1", &key, "alice")).await;
    assert_eq!(hello["user"], "alice");
}
