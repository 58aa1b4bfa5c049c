//! Issue 6: chat-edge serves `wss://` itself when given a certificate and key (EDGE_TLS_CERT,
//! EDGE_TLS_KEY). The test makes a self-signed certificate, trusts exactly it, and talks the
//! chat protocol over TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chat_tests::Stack;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// A client configuration trusting `roots` only (ring provider, as the server).
fn client_config(roots: &[CertificateDer<'static>]) -> Arc<ClientConfig> {
    let mut store = RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).expect("add root");
    }
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth(),
    )
}

async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

async fn wss_connect(addr: SocketAddr, config: Arc<ClientConfig>) -> Wss {
    let tls = tls_connect(addr, config).await.expect("TLS handshake");
    let url = format!("wss://localhost:{}/ws", addr.port());
    let (ws, response) = tokio_tungstenite::client_async(url, tls)
        .await
        .expect("WebSocket upgrade over TLS");
    assert_eq!(response.status(), 101);
    ws
}

async fn recv_type(ws: &mut Wss, ty: &str) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {ty} frame"))
            .expect("socket open")
            .expect("frame");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == ty {
                return v;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_serves_wss_with_the_configured_certificate() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();
    let (cert_path, key_path) = (cert_path.to_str().unwrap(), key_path.to_str().unwrap());

    let mut stack =
        Stack::start_with(&[("EDGE_TLS_CERT", cert_path), ("EDGE_TLS_KEY", key_path)]).await;
    let addr = stack.edges[0].addr.unwrap();
    let trusted = client_config(&[certified.cert.der().clone()]);

    // The chat protocol over wss://: hello, join, send, the message comes back.
    let mut ws = wss_connect(addr, trusted.clone()).await;
    let auth = json!({"type": "auth", "token": stack.token("alice")});
    ws.send(Message::Text(auth.to_string().into()))
        .await
        .unwrap();
    let hello = recv_type(&mut ws, "hello").await;
    assert_eq!(hello["user"], "alice");
    let join = json!({"type": "join", "room": "secure"});
    ws.send(Message::Text(join.to_string().into()))
        .await
        .unwrap();
    recv_type(&mut ws, "joined").await;
    let send = json!({"type": "send", "room": "secure", "body": "over TLS", "client_id": "t1"});
    ws.send(Message::Text(send.to_string().into()))
        .await
        .unwrap();
    let m = recv_type(&mut ws, "message").await;
    assert_eq!(m["body"], "over TLS");

    // A client that does not trust the certificate fails the handshake.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let untrusting = client_config(&[other.cert.der().clone()]);
    assert!(tls_connect(addr, untrusting).await.is_err());

    // Plain ws:// is not served on a TLS listener.
    let plain = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
    )
    .await
    .expect("the plain attempt ends");
    assert!(plain.is_err(), "plain WebSocket on the TLS port");

    // The drain works over TLS too: the session is closed with 1012.
    stack.edges[0].stop.cancel();
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("closed within the drain")
        {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("socket error instead of a close: {e}"),
            None => break None,
        }
    };
    assert_eq!(close, Some(1012));
    let edge = stack.edges.remove(0);
    tokio::time::timeout(Duration::from_secs(10), edge.shutdown())
        .await
        .expect("the TLS listener drains");
}
