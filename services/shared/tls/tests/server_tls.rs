//! ServerTls and TlsIncoming over real loopback TLS handshakes.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sesame_tls::testing::{server_files, Issued, TestCa};
use sesame_tls::{Alpn, PeerInfo, ServerTls, TlsFiles, TlsIncoming};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn connector(trust: &[&TestCa], client: Option<&Issued>) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for ca in trust {
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
            .unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut c = match client {
        Some(i) => b
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(i.cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(i.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = vec![b"h2".to_vec()];
    TlsConnector::from(Arc::new(c))
}

/// Handshakes, returns the server certificate's DER and what the server
/// made of the client certificate.
async fn handshake(
    addr: std::net::SocketAddr,
    c: &TlsConnector,
    incoming: &mut TlsIncoming,
    tls: &ServerTls,
) -> Result<(Vec<u8>, Option<Arc<PeerInfo>>), String> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let client = c
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, session) = client.get_ref();
    assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]));
    let server_cert = session.peer_certificates().unwrap()[0].to_vec();
    let (stream, _) = tokio::time::timeout(Duration::from_secs(5), incoming.next())
        .await
        .map_err(|_| "server saw no connection".to_string())?
        .unwrap();
    let peer = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| tls.peer(c));
    Ok((server_cert, peer))
}

async fn bind() -> (TcpListener, std::net::SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

#[tokio::test]
async fn reload_swaps_the_certificate_for_new_connections_and_refuses_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let (ca1, ca2) = (TestCa::new("CA one"), TestCa::new("CA two"));
    let files = server_files(&ca1, dir.path());
    let tls = ServerTls::load(files.clone()).unwrap();
    let (l, addr) = bind().await;
    let mut incoming = TlsIncoming::new(l, tls.clone(), Alpn::H2, "grpc").unwrap();
    let both = connector(&[&ca1, &ca2], None);
    let (first, _) = handshake(addr, &both, &mut incoming, &tls).await.unwrap();
    assert!(!tls.reload().unwrap(), "unchanged files are not a reload");

    // Half-written rotation: a truncated certificate. Refused, old one kept.
    let pem = std::fs::read_to_string(&files.cert).unwrap();
    std::fs::write(&files.cert, &pem[..pem.len() / 2]).unwrap();
    let e = tls.reload().unwrap_err().to_string();
    assert!(e.contains("server.crt"), "{e}");
    let (still, _) = handshake(addr, &both, &mut incoming, &tls).await.unwrap();
    assert_eq!(still, first);

    // A key that does not go with the certificate: refused too.
    let other = ca2.server("other");
    std::fs::write(&files.cert, &pem).unwrap();
    std::fs::write(&files.key, &other.key_pem).unwrap();
    let e = tls.reload().unwrap_err().to_string();
    assert!(e.contains("does not go with"), "{e}");

    // A whole new pair from another CA: served to the next connection.
    other.write(dir.path(), "server");
    assert!(tls.reload().unwrap());
    let (now, _) = handshake(addr, &both, &mut incoming, &tls).await.unwrap();
    assert_ne!(now, first);
    let only_ca1 = connector(&[&ca1], None);
    assert!(handshake(addr, &only_ca1, &mut incoming, &tls)
        .await
        .is_err());
    let only_ca2 = connector(&[&ca2], None);
    handshake(addr, &only_ca2, &mut incoming, &tls)
        .await
        .unwrap();
}

#[tokio::test]
async fn client_certificates_are_optional_and_tell_their_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, tenants, internal, stranger) = (
        TestCa::new("server CA"),
        TestCa::new("tenant CA"),
        TestCa::new("internal CA"),
        TestCa::new("stranger CA"),
    );
    let files = TlsFiles {
        client_ca: Some(tenants.write(dir.path(), "tenants")),
        internal_ca: Some(internal.write(dir.path(), "internal")),
        ..server_files(&server_ca, dir.path())
    };
    let tls = ServerTls::load(files).unwrap();
    assert!(tls.accepts_client_certs() && tls.has_internal_ca());
    let (l, addr) = bind().await;
    let mut incoming = TlsIncoming::new(l, tls.clone(), Alpn::H2, "grpc").unwrap();

    // No certificate (a phone): accepted, no peer identity.
    let (_, peer) = handshake(addr, &connector(&[&server_ca], None), &mut incoming, &tls)
        .await
        .unwrap();
    assert!(peer.is_none());

    let bank = tenants.client("Bank", "idp", Some("spiffe://bank.example/idp"));
    let (_, peer) = handshake(
        addr,
        &connector(&[&server_ca], Some(&bank)),
        &mut incoming,
        &tls,
    )
    .await
    .unwrap();
    let peer = peer.unwrap();
    assert!(peer.tenant_ca && !peer.internal_ca);
    assert!(peer.matches("spiffe://bank.example/idp"));
    assert!(!peer.matches("spiffe://bank.example/other"));
    assert!(peer.matches("O=Bank, CN=idp"), "{}", peer.subject);

    let role = internal.client("Sesame", "dispatcher", Some("spiffe://sesame/dispatcher"));
    let (_, peer) = handshake(
        addr,
        &connector(&[&server_ca], Some(&role)),
        &mut incoming,
        &tls,
    )
    .await
    .unwrap();
    let peer = peer.unwrap();
    assert!(peer.internal_ca && !peer.tenant_ca);

    // A certificate from a CA the server does not know: no connection.
    let rogue = stranger.client("Bank", "idp", Some("spiffe://bank.example/idp"));
    let r = handshake(
        addr,
        &connector(&[&server_ca], Some(&rogue)),
        &mut incoming,
        &tls,
    )
    .await;
    // TLS 1.3: the client learns of the refusal on its first read, so the
    // server never hands the connection on.
    if let Ok((_, peer)) = r {
        panic!("a stranger's certificate was accepted: {peer:?}");
    }
}

#[tokio::test]
async fn a_silent_client_does_not_hold_up_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("CA");
    let tls = ServerTls::load(server_files(&ca, dir.path())).unwrap();
    let (l, addr) = bind().await;
    let mut incoming = TlsIncoming::new(l, tls.clone(), Alpn::H2, "grpc").unwrap();
    // Connects and never says hello.
    let _silent: Vec<TcpStream> = futures_join(addr, 20).await;
    let c = connector(&[&ca], None);
    tokio::time::timeout(
        Duration::from_secs(3),
        handshake(addr, &c, &mut incoming, &tls),
    )
    .await
    .expect("a handshake waited behind silent connections")
    .unwrap();
}

async fn futures_join(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(TcpStream::connect(addr).await.unwrap());
    }
    v
}
