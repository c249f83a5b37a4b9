//! TLS for Sesame's own clients: the CLI, the load tester, simulated
//! phones and role-to-role calls.

use std::path::PathBuf;
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::TlsError;

/// What a client trusts and presents. Empty: the public web PKI roots
/// (webpki-roots) and no client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// CA certificates (PEM) that sign the server's certificate.
    pub ca: Option<PathBuf>,
    /// A client certificate chain and key (PEM), for mTLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name to check the server's certificate against, when it is not
    /// the URL's host (a port-forward to 127.0.0.1, an address in an IP-less
    /// certificate).
    pub server_name: Option<String>,
}

impl ClientTls {
    /// From `SESAME_TLS_CA`, `SESAME_TLS_CLIENT_CERT`, `SESAME_TLS_CLIENT_KEY`
    /// and `SESAME_TLS_SERVER_NAME` (empty or unset: none), so every tool
    /// reads the same variables.
    pub fn from_env() -> Self {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        ClientTls {
            ca: var("SESAME_TLS_CA"),
            cert: var("SESAME_TLS_CLIENT_CERT"),
            key: var("SESAME_TLS_CLIENT_KEY"),
            server_name: std::env::var("SESAME_TLS_SERVER_NAME")
                .ok()
                .filter(|v| !v.is_empty()),
        }
    }

    fn tonic_config(&self) -> Result<ClientTlsConfig, TlsError> {
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| TlsError::file(p, e));
        let mut c = ClientTlsConfig::new();
        if let Some(name) = &self.server_name {
            c = c.domain_name(name.clone());
        }
        match &self.ca {
            Some(ca) => c = c.ca_certificate(Certificate::from_pem(read(ca)?)),
            None => c = c.with_webpki_roots(),
        }
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                c = c.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            (None, None) => {}
            _ => {
                return Err(TlsError::Config(
                    "a client certificate needs both its certificate and its key file".into(),
                ))
            }
        }
        Ok(c)
    }

    /// An endpoint for `url`: `https://` gets TLS with these settings,
    /// `http://` stays plaintext.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, TlsError> {
        let e = Endpoint::from_shared(url.to_owned())
            .map_err(|e| TlsError::Config(format!("bad server URL {url:?}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        if url.starts_with("https://") {
            e.tls_config(self.tonic_config()?)
                .map_err(|e| TlsError::Config(format!("TLS settings for {url}: {e}")))
        } else {
            Ok(e)
        }
    }
}
