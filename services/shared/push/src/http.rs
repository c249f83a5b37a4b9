//! The one HTTP/2 + TLS stack both provider clients use: reqwest over
//! rustls with the ring provider, trusting the Mozilla roots (webpki-roots)
//! plus any CA the operator names (a simulator's, a corporate proxy's).

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::PushConfigError;

/// TLS settings of one push app.
#[derive(Clone, Default)]
pub struct TlsOptions {
    /// Extra trusted CA certificates (PEM), on top of the public roots.
    pub extra_ca_pem: Option<String>,
    /// A client certificate chain and its key (PEM): APNs certificate auth.
    pub client_identity_pem: Option<(String, String)>,
}

pub(crate) fn read_file(path: &str) -> Result<String, PushConfigError> {
    std::fs::read_to_string(path).map_err(|e| PushConfigError::Read {
        path: path.into(),
        error: e.to_string(),
    })
}

/// A rustls client configuration: the public roots plus `tls`'s CA, its
/// client identity if any, offering `alpn`. Also what the webhook sender
/// uses towards tenants' receivers.
pub fn client_tls_config(
    tls: &TlsOptions,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, PushConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = &tls.extra_ca_pem {
        let mut n = 0;
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert =
                cert.map_err(|e| PushConfigError::Invalid(format!("ca_file: not PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| PushConfigError::Invalid(format!("ca_file: {e}")))?;
            n += 1;
        }
        if n == 0 {
            return Err(PushConfigError::Invalid(
                "ca_file holds no PEM certificate".into(),
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PushConfigError::Http(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match &tls.client_identity_pem {
        None => builder.with_no_client_auth(),
        Some((chain_pem, key_pem)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .map_err(|e| PushConfigError::Invalid(format!("cert_file: {e}")))?;
            if chain.is_empty() {
                return Err(PushConfigError::Invalid(
                    "cert_file holds no PEM certificate".into(),
                ));
            }
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .map_err(|e| PushConfigError::Key(format!("cert_key_file: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| PushConfigError::Key(format!("client certificate: {e}")))?
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// An HTTP/2-only client (APNs refuses HTTP/1.1; FCM is fastest on h2):
/// long-lived, multiplexed, PINGed when idle so a dead connection is
/// noticed before a push waits on it.
pub(crate) fn h2_client(
    tls: &TlsOptions,
    timeout: Duration,
) -> Result<reqwest::Client, PushConfigError> {
    let config = client_tls_config(tls, &[b"h2"])?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .http2_prior_knowledge()
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_idle_timeout(None)
        .http2_keep_alive_interval(Some(Duration::from_secs(60)))
        .http2_keep_alive_timeout(Duration::from_secs(10))
        .http2_keep_alive_while_idle(true)
        .build()
        .map_err(|e| PushConfigError::Http(e.to_string()))
}

/// A client for OAuth token endpoints: HTTP/1.1 or HTTP/2, whatever the
/// server offers (a local `http://` token URI included).
pub(crate) fn any_client(
    tls: &TlsOptions,
    timeout: Duration,
) -> Result<reqwest::Client, PushConfigError> {
    let config = client_tls_config(tls, &[b"h2", b"http/1.1"])?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .map_err(|e| PushConfigError::Http(e.to_string()))
}

/// `Retry-After` in seconds (the form APNs and FCM send); an HTTP date or
/// garbage is ignored and the caller backs off on its own.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    parse_retry_after(headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?)
}

/// A `Retry-After` value in seconds, capped at an hour (a provider cannot
/// park a push longer); an HTTP date or anything else is ignored.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let secs: u64 = v.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(3_600)))
}

/// `e` with its sources: reqwest's top-level message alone hides whether
/// it was a reset, a GOAWAY or a TLS failure.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
