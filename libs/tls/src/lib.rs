//! TLS clients of the chat system: the services' OTLP export (through chat-runtime), the `chat`
//! CLI and chat-bench. rustls with the ring provider only (no aws-lc, no native-tls), Mozilla's
//! roots (webpki-roots) plus an operator's CA file for a private or self-signed certificate.
//! With feature `ws`, [`connect_ws`] opens a `ws://` or `wss://` WebSocket with that configuration.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// A client configuration trusting Mozilla's roots (webpki-roots) and every certificate of the
/// PEM file `ca`, if given; an error names what is wrong with the file.
pub fn client_config(ca: Option<&Path>) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = ca {
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| format!("{}: unreadable: {e}", ca.display()))?;
        let mut n = 0;
        for cert in certs {
            let cert = cert.map_err(|e| format!("{}: not a PEM certificate: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: not a CA certificate: {e}", ca.display()))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!("{}: holds no certificate", ca.display()));
        }
    }
    Ok(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

#[cfg(feature = "ws")]
mod ws;
#[cfg(feature = "ws")]
pub use ws::{ConnectError, WsStream, connect_ws};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_ca_file_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("chat-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert!(
            client_config(Some(&empty))
                .unwrap_err()
                .contains("no certificate")
        );
        let missing = dir.join("missing.pem");
        assert!(
            client_config(Some(&missing))
                .unwrap_err()
                .contains("missing.pem")
        );
        assert!(client_config(None).is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
