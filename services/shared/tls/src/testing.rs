//! Throw-away certificate authorities for tests of TLS set-ups (feature
//! `testing`): a CA, server certificates for loopback, client certificates
//! with a SPIFFE ID or a subject DN.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::TlsFiles;

/// A CA that signs certificates on demand.
pub struct TestCa {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Issued {
    /// Writes `<stem>.crt` and `<stem>.key` into `dir`.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let (c, k) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        write(&c, &self.cert_pem);
        write(&k, &self.key_pem);
        (c, k)
    }
}

fn write(path: &Path, pem: &str) {
    if let Err(e) = std::fs::write(path, pem) {
        panic!("writing {}: {e}", path.display());
    }
}

fn ok<T>(r: Result<T, rcgen::Error>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("rcgen: {e}"),
    }
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = ok(KeyPair::generate());
        let mut p = ok(CertificateParams::new(Vec::<String>::new()));
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.distinguished_name.push(DnType::CommonName, name);
        let cert = ok(p.self_signed(&key));
        TestCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    /// Writes the CA certificate to `<dir>/<stem>.crt`.
    pub fn write(&self, dir: &Path, stem: &str) -> PathBuf {
        let p = dir.join(format!("{stem}.crt"));
        write(&p, &self.cert_pem);
        p
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    pub fn server(&self, cn: &str) -> Issued {
        let key = ok(KeyPair::generate());
        let mut p = ok(CertificateParams::new(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ]));
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = ok(p.signed_by(&key, &self.issuer));
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A client certificate with subject `O=<org>, CN=<cn>` and, if given, a
    /// URI SAN (a SPIFFE ID).
    pub fn client(&self, org: &str, cn: &str, uri: Option<&str>) -> Issued {
        let key = ok(KeyPair::generate());
        let mut p = ok(CertificateParams::new(Vec::<String>::new()));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, org);
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        if let Some(u) = uri {
            p.subject_alt_names = vec![SanType::URI(ok(u.try_into()))];
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = ok(p.signed_by(&key, &self.issuer));
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A server certificate from `ca` written into `dir`, as [`TlsFiles`].
pub fn server_files(ca: &TestCa, dir: &Path) -> TlsFiles {
    let (cert, key) = ca.server("sesame test server").write(dir, "server");
    TlsFiles {
        cert,
        key,
        client_ca: None,
        internal_ca: None,
    }
}
