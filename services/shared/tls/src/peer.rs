//! What a client certificate proves, attached to each request.
//!
//! The handshake already checked the chain against the union of the tenant
//! and internal CAs. [`PeerLayer`] works out which of the two it chains to
//! and which names it carries, once per certificate (cached), and inserts an
//! `Arc<PeerInfo>` into the request's extensions. Calls over plaintext or
//! without a certificate carry none.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use rustls_pki_types::{CertificateDer, UnixTime};
use sha2::{Digest, Sha256};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use x509_parser::extensions::GeneralName;

use crate::ServerTls;

/// A verified client certificate, as the services see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerInfo {
    /// URI subject alternative names (SPIFFE IDs: `spiffe://trust-domain/path`).
    pub uris: Vec<String>,
    /// DNS subject alternative names.
    pub dns: Vec<String>,
    /// The subject distinguished name as printed by `sesame tls identity`,
    /// e.g. `C=BE, O=Bank, CN=idp`.
    pub subject: String,
    /// Chains to `client_ca`: may stand for a tenant bound to its identity.
    pub tenant_ca: bool,
    /// Chains to `internal_ca`: one of Sesame's own roles.
    pub internal_ca: bool,
}

impl PeerInfo {
    /// Reads the names of a certificate (no verification).
    pub fn from_der(der: &[u8]) -> Result<PeerInfo, String> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| format!("not X.509: {e}"))?;
        let mut info = PeerInfo {
            subject: cert.subject().to_string(),
            ..Default::default()
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => info.uris.push((*u).to_owned()),
                    GeneralName::DNSName(d) => info.dns.push((*d).to_owned()),
                    _ => {}
                }
            }
        }
        Ok(info)
    }

    /// Whether the certificate carries `identity`: a URI SAN when the
    /// identity has a scheme (`spiffe://bank.example/idp`), else the subject DN.
    pub fn matches(&self, identity: &str) -> bool {
        if identity.contains("://") {
            self.uris.iter().any(|u| u == identity)
        } else {
            self.subject == identity
        }
    }

    /// How a refusal names what was presented.
    pub fn describe(&self) -> String {
        match self.uris.first() {
            Some(u) => u.clone(),
            None => self.subject.clone(),
        }
    }
}

/// Verdicts per certificate chain (SHA-256 of its DER), re-checked after
/// [`PEER_TTL`] and dropped on reload; bounded.
#[derive(Default)]
pub(crate) struct PeerCache {
    map: DashMap<[u8; 32], (Arc<PeerInfo>, Instant)>,
}

const PEER_TTL: Duration = Duration::from_secs(300);
const PEER_MAX: usize = 10_000;

impl PeerCache {
    pub(crate) fn clear(&self) {
        self.map.clear();
    }
}

impl ServerTls {
    /// What `chain` (leaf first) proves under the CAs now loaded.
    pub fn peer(&self, chain: &[CertificateDer<'_>]) -> Option<Arc<PeerInfo>> {
        let (leaf, intermediates) = chain.split_first()?;
        let mut h = Sha256::new();
        for c in chain {
            h.update((c.len() as u64).to_be_bytes());
            h.update(c.as_ref());
        }
        let key: [u8; 32] = h.finalize().into();
        if let Some(e) = self.peers.map.get(&key) {
            if e.1.elapsed() < PEER_TTL {
                return Some(e.0.clone());
            }
        }
        let mut info = PeerInfo::from_der(leaf).ok()?;
        let loaded = self.loaded();
        let now = UnixTime::now();
        let verified = |v: &Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>| {
            v.as_ref()
                .is_some_and(|v| v.verify_client_cert(leaf, intermediates, now).is_ok())
        };
        info.tenant_ca = verified(&loaded.tenant_verifier);
        info.internal_ca = verified(&loaded.internal_verifier);
        let info = Arc::new(info);
        if self.peers.map.len() >= PEER_MAX {
            self.peers.map.clear();
        }
        self.peers.map.insert(key, (info.clone(), Instant::now()));
        Some(info)
    }
}

/// Inserts the caller's [`PeerInfo`] into each HTTP request.
#[derive(Clone)]
pub struct PeerLayer {
    tls: Option<ServerTls>,
}

impl PeerLayer {
    /// `None` (plaintext): requests pass through untouched.
    pub fn new(tls: Option<ServerTls>) -> Self {
        PeerLayer { tls }
    }
}

impl<S> tower::Layer<S> for PeerLayer {
    type Service = PeerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PeerService {
            inner,
            tls: self.tls.clone(),
        }
    }
}

#[derive(Clone)]
pub struct PeerService<S> {
    inner: S,
    tls: Option<ServerTls>,
}

impl<S, B> tower::Service<http::Request<B>> for PeerService<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if let Some(tls) = &self.tls {
            let chain = req
                .extensions()
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.peer_certs());
            if let Some(info) = chain.and_then(|c| tls.peer(&c)) {
                req.extensions_mut().insert(info);
            }
        }
        self.inner.call(req)
    }
}

/// For services only Sesame's own roles may call: when an internal CA is
/// configured, the caller must present a certificate issued by it.
#[allow(clippy::result_large_err)] // tonic::Status is what interceptors return
pub fn require_internal<T>(
    tls: Option<&ServerTls>,
    req: &tonic::Request<T>,
) -> Result<(), tonic::Status> {
    let Some(tls) = tls.filter(|t| t.has_internal_ca()) else {
        return Ok(());
    };
    match req.extensions().get::<Arc<PeerInfo>>() {
        Some(p) if p.internal_ca => Ok(()),
        Some(p) => Err(tonic::Status::permission_denied(format!(
            "this service is for Sesame's own roles; the client certificate {} is not from the internal CA ({})",
            p.describe(),
            tls.files().internal_ca.as_deref().map(|p| p.display().to_string()).unwrap_or_default()
        ))),
        None => Err(tonic::Status::permission_denied(
            "this service is for Sesame's own roles: connect over TLS with a client certificate from the internal CA",
        )),
    }
}
