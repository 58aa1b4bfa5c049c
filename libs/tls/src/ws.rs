//! WebSocket clients over `ws://` or `wss://`: the TCP connection, TLS with [`client_config`]
//! for `wss://`, then the WebSocket handshake. tokio-tungstenite is built without its own TLS
//! features, so there is one rustls configuration (ours) and one copy of the roots.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::client_config;

/// The byte stream under a client WebSocket: plain TCP for `ws://`, TLS for `wss://`.
#[derive(Debug)]
pub enum WsStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Why a connection could not be opened. Display gives a sentence for an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// A bad URL or CA file: retrying will not help.
    Config(String),
    /// The server's certificate is not trusted: retrying will not help either.
    Untrusted(String),
    /// The network, the TLS or the WebSocket handshake failed: a retry may succeed.
    Failed(String),
}

impl ConnectError {
    /// Whether trying again later cannot succeed without a change of configuration.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, ConnectError::Failed(_))
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Config(m) | ConnectError::Untrusted(m) | ConnectError::Failed(m) => {
                f.write_str(m)
            }
        }
    }
}

impl std::error::Error for ConnectError {}

/// Opens `url` (`ws://` or `wss://`) and completes the WebSocket handshake. For `wss://` the
/// server's certificate must chain to Mozilla's roots or to a certificate of the PEM file `ca`.
/// Errors are sentences for an operator: which step failed and, for an untrusted certificate,
/// what to do about it.
pub async fn connect_ws(
    url: &str,
    ca: Option<&Path>,
) -> Result<WebSocketStream<WsStream>, ConnectError> {
    use ConnectError::{Config, Failed};
    let request = url
        .into_client_request()
        .map_err(|e| Config(format!("invalid URL {url:?}: {e}")))?;
    let uri = request.uri();
    let tls = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => {
            return Err(Config(format!(
                "{url}: the URL must start with ws:// or wss://"
            )));
        }
    };
    let host = uri
        .host()
        .ok_or_else(|| Config(format!("{url}: no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    // The configuration first: a bad CA file is reported even when the server is down.
    let tls = match tls {
        true => {
            let config = client_config(ca).map_err(Config)?;
            let name = ServerName::try_from(host.clone())
                .map_err(|e| Config(format!("{url}: {host:?} is not a server name: {e}")))?;
            Some((TlsConnector::from(Arc::new(config)), name))
        }
        false => None,
    };
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| Failed(format!("cannot connect to {host}:{port}: {e}")))?;
    let stream = if let Some((connector, name)) = tls {
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| tls_error(&host, ca, &e))?;
        WsStream::Tls(Box::new(tls))
    } else {
        WsStream::Plain(tcp)
    };
    let (ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .map_err(|e| Failed(format!("WebSocket handshake with {url} failed: {e}")))?;
    Ok(ws)
}

/// The TLS handshake's failure, with the remedy when the certificate is not trusted.
fn tls_error(host: &str, ca: Option<&Path>, e: &io::Error) -> ConnectError {
    let untrusted = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<tokio_rustls::rustls::Error>())
        .is_some_and(|r| matches!(r, tokio_rustls::rustls::Error::InvalidCertificate(_)));
    if untrusted {
        let hint = match ca {
            Some(ca) => format!("it does not chain to {} nor to a public root", ca.display()),
            None => {
                "for a private or self-signed certificate give its CA file (--ca FILE or CHAT_CA)"
                    .to_owned()
            }
        };
        ConnectError::Untrusted(format!(
            "TLS: the certificate of {host} is not trusted ({e}); {hint}"
        ))
    } else {
        ConnectError::Failed(format!("TLS handshake with {host} failed: {e}"))
    }
}

impl AsyncRead for WsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WsStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            WsStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WsStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            WsStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WsStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            WsStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WsStream::Plain(s) => s.is_write_vectored(),
            WsStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WsStream::Plain(s) => Pin::new(s).poll_flush(cx),
            WsStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WsStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            WsStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_url_that_is_not_a_websocket_is_refused_by_name() {
        let e = connect_ws("http://127.0.0.1:1/ws", None).await.unwrap_err();
        assert!(
            e.is_permanent() && e.to_string().contains("ws:// or wss://"),
            "{e}"
        );
        let e = connect_ws("ws://127.0.0.1:1/ws", None).await.unwrap_err();
        assert!(!e.is_permanent(), "{e}");
        assert!(
            e.to_string().contains("cannot connect to 127.0.0.1:1"),
            "{e}"
        );
        let missing = std::path::Path::new("/nonexistent/ca.pem");
        let e = connect_ws("wss://127.0.0.1:1/ws", Some(missing)).await;
        let e = e.unwrap_err();
        assert!(
            e.is_permanent() && e.to_string().contains("/nonexistent/ca.pem"),
            "{e}"
        );
    }
}
