//! The server side: PEM files -> rustls configurations, reloaded in place.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::peer::PeerCache;
use crate::{metrics as m, provider, TlsError};

/// Where a listener's certificate material lives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// CAs whose client certificates identify tenants (mTLS); optional.
    pub client_ca: Option<PathBuf>,
    /// The CA of Sesame's own roles' client certificates; optional.
    pub internal_ca: Option<PathBuf>,
}

/// The protocol a listener speaks, offered by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// gRPC: HTTP/2 only.
    H2,
    /// The admin port (Prometheus, probes): HTTP/1.1.
    Http1,
}

/// One generation of the files, made usable.
pub(crate) struct Loaded {
    grpc: Arc<ServerConfig>,
    admin: Arc<ServerConfig>,
    /// Verifies against `client_ca` alone / `internal_ca` alone, to tell
    /// which of the two a certificate accepted at the handshake chains to.
    pub(crate) tenant_verifier: Option<Arc<dyn ClientCertVerifier>>,
    pub(crate) internal_verifier: Option<Arc<dyn ClientCertVerifier>>,
    digest: [u8; 32],
    not_after: i64,
}

/// A listener's TLS configuration; cheap to clone, all clones see reloads.
#[derive(Clone)]
pub struct ServerTls {
    files: Arc<TlsFiles>,
    current: Arc<RwLock<Arc<Loaded>>>,
    pub(crate) peers: Arc<PeerCache>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish()
    }
}

impl ServerTls {
    /// Reads and checks the files; an error names the file and what is wrong.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        m::describe();
        let (raw, digest) = read_all(&files)?;
        let loaded = build(&files, &raw, digest)?;
        metrics::gauge!(m::CERT_EXPIRY).set(loaded.not_after as f64);
        Ok(ServerTls {
            files: Arc::new(files),
            current: Arc::new(RwLock::new(Arc::new(loaded))),
            peers: Arc::new(PeerCache::default()),
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Whether client certificates are accepted at all.
    pub fn accepts_client_certs(&self) -> bool {
        let l = self.loaded();
        l.tenant_verifier.is_some() || l.internal_verifier.is_some()
    }

    /// Whether internal services demand a certificate from the internal CA.
    pub fn has_internal_ca(&self) -> bool {
        self.loaded().internal_verifier.is_some()
    }

    /// The server certificate's expiry, Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.loaded().not_after
    }

    pub(crate) fn loaded(&self) -> Arc<Loaded> {
        // A poisoned lock only means a reload panicked mid-swap; the Arc
        // inside is whole either way.
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The configuration a new connection gets.
    pub fn config(&self, alpn: Alpn) -> Arc<ServerConfig> {
        let l = self.loaded();
        match alpn {
            Alpn::H2 => l.grpc.clone(),
            Alpn::Http1 => l.admin.clone(),
        }
    }

    /// Re-reads the files: `Ok(true)` if they changed and are now served,
    /// `Ok(false)` if unchanged, `Err` (previous configuration kept) if the
    /// new files do not make a valid configuration.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (raw, digest) = read_all(&self.files)?;
        if digest == self.loaded().digest {
            return Ok(false);
        }
        let loaded = build(&self.files, &raw, digest)?;
        metrics::gauge!(m::CERT_EXPIRY).set(loaded.not_after as f64);
        let mut g = match self.current.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *g = Arc::new(loaded);
        // Verdicts about client certificates may differ under new CAs.
        self.peers.clear();
        Ok(true)
    }

    /// Re-reads the files every `every` until the returned task is aborted.
    /// A refused reload is logged (and counted) and retried next tick: the
    /// usual cause is a file caught half-written during a rotation.
    pub fn spawn_reloader(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut last_error = String::new();
            loop {
                tick.tick().await;
                let t = tls.clone();
                let r = tokio::task::spawn_blocking(move || t.reload()).await;
                match r {
                    Ok(Ok(false)) => {}
                    Ok(Ok(true)) => {
                        last_error.clear();
                        metrics::counter!(m::RELOADS, "result" => "changed").increment(1);
                        tracing::info!(
                            cert = %tls.files.cert.display(),
                            not_after = tls.not_after(),
                            "TLS certificate files changed; new connections get them"
                        );
                    }
                    Ok(Err(e)) => {
                        let msg = e.to_string();
                        // Once per distinct problem, not every tick.
                        if msg != last_error {
                            metrics::counter!(m::RELOADS, "result" => "refused").increment(1);
                            tracing::error!(error = %msg, "TLS files not reloaded; still serving the previous certificate");
                            last_error = msg;
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "TLS reload task failed"),
                }
            }
        })
    }
}

struct Raw {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
    internal_ca: Option<Vec<u8>>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::file(path, e))
}

fn read_all(files: &TlsFiles) -> Result<(Raw, [u8; 32]), TlsError> {
    let raw = Raw {
        cert: read(&files.cert)?,
        key: read(&files.key)?,
        client_ca: files.client_ca.as_deref().map(read).transpose()?,
        internal_ca: files.internal_ca.as_deref().map(read).transpose()?,
    };
    let mut h = Sha256::new();
    for part in [
        Some(&raw.cert),
        Some(&raw.key),
        raw.client_ca.as_ref(),
        raw.internal_ca.as_ref(),
    ] {
        let part = part.map(|p| p.as_slice()).unwrap_or(b"-");
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    Ok((raw, h.finalize().into()))
}

pub(crate) fn certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::file(path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::file(path, "no CERTIFICATE block in the file"));
    }
    Ok(certs)
}

fn roots(path: &Path, pem: &[u8]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for c in certs(path, pem)? {
        store
            .add(c)
            .map_err(|e| TlsError::file(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(store))
}

fn verifier(
    path: &Path,
    roots: Arc<RootCertStore>,
    optional: bool,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let b = WebPkiClientVerifier::builder_with_provider(roots, provider());
    let b = if optional {
        b.allow_unauthenticated()
    } else {
        b
    };
    b.build()
        .map_err(|e| TlsError::file(path, format!("cannot verify clients with it: {e}")))
}

fn build(files: &TlsFiles, raw: &Raw, digest: [u8; 32]) -> Result<Loaded, TlsError> {
    let chain = certs(&files.cert, &raw.cert)?;
    let not_after = x509_parser::parse_x509_certificate(&chain[0])
        .map_err(|e| TlsError::file(&files.cert, format!("unreadable certificate: {e}")))?
        .1
        .validity()
        .not_after
        .timestamp();
    let key = PrivateKeyDer::from_pem_slice(&raw.key)
        .map_err(|e| TlsError::file(&files.key, format!("no usable private key: {e}")))?;

    // The handshake accepts a client certificate from either CA, or none.
    let mut all = RootCertStore::empty();
    let mut tenant_verifier = None;
    let mut internal_verifier = None;
    for (path, pem, slot) in [
        (&files.client_ca, &raw.client_ca, &mut tenant_verifier),
        (&files.internal_ca, &raw.internal_ca, &mut internal_verifier),
    ] {
        if let (Some(path), Some(pem)) = (path, pem) {
            let r = roots(path, pem)?;
            all.roots.extend(r.roots.iter().cloned());
            *slot = Some(verifier(path, r, false)?);
        }
    }
    let handshake_verifier = if all.is_empty() {
        None
    } else {
        let path = files
            .client_ca
            .as_deref()
            .or(files.internal_ca.as_deref())
            .unwrap_or(&files.cert);
        Some(verifier(path, Arc::new(all), true)?)
    };

    let make = |alpn: &[u8], client_auth: bool| -> Result<Arc<ServerConfig>, TlsError> {
        let b = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let b = match (&handshake_verifier, client_auth) {
            (Some(v), true) => b.with_client_cert_verifier(v.clone()),
            _ => b.with_no_client_auth(),
        };
        let mut c = b
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| {
                TlsError::file(
                    &files.key,
                    format!("does not go with {}: {e}", files.cert.display()),
                )
            })?;
        c.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(c))
    };
    Ok(Loaded {
        grpc: make(b"h2", true)?,
        // Prometheus and the kubelet present no client certificate.
        admin: make(b"http/1.1", false)?,
        tenant_verifier,
        internal_verifier,
        digest,
        not_after,
    })
}
