//! TLS on every listener, over real rustls on loopback: logins over TLS,
//! plaintext refused, the admin port over HTTPS, tenants bound to a client
//! certificate (accepted and refused), the push gateway kept to the internal
//! CA, and certificates rotated under load without losing a call.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use sesame::inbox::RemoteSimulator;
use sesame_core::{ChallengeId, DeviceId, Platform, Tenant, TenantId};
use sesame_proto::simulator::v1 as sim;
use sesame_proto::simulator::v1::push_gateway_client::PushGatewayClient;
use sesame_proto::tenant::v1 as pb;
use sesame_push::{PushOutcome, PushProvider};
use sesame_tls::testing::TestCa;
use sesame_tls::ClientTls;
use tonic::Code;

/// A server CA and certificate, a tenant CA and an internal CA, on disk.
struct Pki {
    dir: tempfile::TempDir,
    server_ca: TestCa,
    server_ca_file: PathBuf,
    tenants: TestCa,
    tenants_file: PathBuf,
    internal: TestCa,
    internal_file: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let server_ca = TestCa::new("Sesame test server CA");
        let tenants = TestCa::new("Tenant CA");
        let internal = TestCa::new("Sesame internal CA");
        let (cert, key) = server_ca.server("sesame").write(dir.path(), "server");
        Pki {
            server_ca_file: server_ca.write(dir.path(), "server-ca"),
            tenants_file: tenants.write(dir.path(), "tenant-ca"),
            internal_file: internal.write(dir.path(), "internal-ca"),
            dir,
            server_ca,
            tenants,
            internal,
            cert,
            key,
        }
    }

    fn configure(&self, c: &mut sesame::Config) {
        c.tls.cert = self.cert.display().to_string();
        c.tls.key = self.key.display().to_string();
        c.tls.client_ca = self.tenants_file.display().to_string();
        c.tls.internal_ca = self.internal_file.display().to_string();
    }

    /// Trusts the server CA, presents no certificate.
    fn client(&self) -> ClientTls {
        ClientTls {
            ca: Some(self.server_ca_file.clone()),
            ..Default::default()
        }
    }

    /// Trusts the server CA and presents a certificate from `ca`.
    fn client_with(&self, ca: &TestCa, stem: &str, uri: &str) -> ClientTls {
        let (cert, key) = ca
            .client("Bank", stem, Some(uri))
            .write(self.dir.path(), stem);
        ClientTls {
            ca: Some(self.server_ca_file.clone()),
            cert: Some(cert),
            key: Some(key),
            server_name: None,
        }
    }
}

fn begin(user: &str) -> pb::BeginEnrollmentRequest {
    pb::BeginEnrollmentRequest {
        user_id: user.into(),
        ttl_seconds: 0,
    }
}

/// Over a fresh connection with `tls`: BeginEnrollment with `key`.
async fn begin_with(h: &Harness, tls: &ClientTls, key: &str) -> Result<(), tonic::Status> {
    let channel = sesame_device_sim::connect_with(&h.url, tls).await.unwrap();
    let mut req = tonic::Request::new(begin("carol"));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    sesame_proto::tenant::v1::enrollment_service_client::EnrollmentServiceClient::new(channel)
        .begin_enrollment(req)
        .await
        .map(|_| ())
}

/// One TLS handshake with `addr`: the leaf certificate the server sent.
async fn served_cert(addr: &str, ca: &Path, alpn: &[u8]) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    c.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let s = tokio_rustls::TlsConnector::from(Arc::new(c))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn a_login_runs_over_tls_and_plaintext_is_refused() {
    let pki = Pki::new();
    let h = Harness::start_tls(|c| pki.configure(c), pki.client()).await;
    assert!(h.url.starts_with("https://"), "{}", h.url);

    // Tenant API and device API over the one TLS listener.
    let phone = h.enroll("alice").await;
    let mut inbox = phone.push_inbox().await.unwrap();
    let c = h.create("alice", ENTER, 0).await;
    let pushed = next_push(&phone, &mut inbox).await;
    let d = details(&phone, &pushed).await;
    let r = phone
        .respond(&d, &approve(&c.number_match_code))
        .await
        .unwrap();
    assert_eq!(
        r.status,
        st(sesame_proto::types::v1::ChallengeStatus::Approved)
    );
    // The enrollment URI tells the phone to use TLS.
    assert!(h
        .begin("dave")
        .await
        .enrollment_uri
        .contains("https%3A%2F%2F"));

    // A plaintext client gets nowhere, whatever its key.
    let plain = h.url.replace("https://", "http://");
    let refused = match sesame_device_sim::connect_with(&plain, &ClientTls::default()).await {
        Err(_) => true,
        Ok(ch) => {
            sesame_proto::tenant::v1::enrollment_service_client::EnrollmentServiceClient::new(ch)
                .begin_enrollment(h.req(begin("eve")))
                .await
                .is_err()
        }
    };
    assert!(refused, "a plaintext call was answered by a TLS listener");
    // A client that does not trust the server's CA refuses it.
    let stranger = TestCa::new("unknown");
    let other_ca = stranger.write(pki.dir.path(), "unknown-ca");
    let untrusting = ClientTls {
        ca: Some(other_ca),
        ..Default::default()
    };
    assert!(sesame_device_sim::connect_with(&h.url, &untrusting)
        .await
        .is_err());
    // The name checked may differ from the address dialled (a
    // port-forward): it must still be one the certificate names.
    for (name, ok) in [("localhost", true), ("sesame.wrong.example", false)] {
        let tls = ClientTls {
            server_name: Some(name.into()),
            ..pki.client()
        };
        let r = sesame_device_sim::connect_with(&h.url, &tls).await;
        assert_eq!(r.is_ok(), ok, "server name {name}: {r:?}");
    }

    // The admin port speaks HTTPS (HTTP/1.1) with the same certificate.
    let admin = h.admin_url.strip_prefix("https://").unwrap().to_owned();
    let served = served_cert(&admin, &pki.server_ca_file, b"http/1.1").await;
    assert_eq!(
        served,
        CertificateDer::from_pem_file(&pki.cert).unwrap().to_vec()
    );
    let metrics = https_get(&admin, "/metrics", &pki.server_ca_file).await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics.contains("sesame_tls_handshakes_total{listener=\"grpc\",result=\"ok\"}"),
        "handshakes are counted"
    );
    assert!(metrics.contains("sesame_tls_cert_expiry_timestamp_seconds"));
    h.shutdown().await;
}

async fn https_get(addr: &str, path: &str, ca: &Path) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(c))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    // rustls reports a peer closing without close_notify as an error after
    // the data; what was read is what counts.
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_tenant_bound_to_a_certificate_is_refused_without_it() {
    let pki = Pki::new();
    let bank_id = "spiffe://bank.example/idp";
    let bank = pki.client_with(&pki.tenants, "bank-idp", bank_id);
    let h = Harness::start_tls(|c| pki.configure(c), bank.clone()).await;
    // Bind the dev tenant before its key is first used (and cached).
    let dev = TenantId::parse("dev").unwrap();
    let t = h.storage.get_tenant(&dev).await.unwrap().unwrap();
    h.storage
        .put_tenant(&Tenant {
            client_identity: bank_id.into(),
            ..t
        })
        .await
        .unwrap();

    // The bank's own certificate and key: accepted.
    begin_with(&h, &bank, &h.key).await.unwrap();
    h.enroll("alice").await;

    let deny = |r: Result<(), tonic::Status>, what: &str| {
        let s = r.expect_err(what);
        assert_eq!(s.code(), Code::PermissionDenied, "{what}: {s:?}");
        assert!(s.message().contains(bank_id), "{what}: {}", s.message());
        s.message().to_owned()
    };
    // The right key without a certificate: refused.
    let m = deny(
        begin_with(&h, &pki.client(), &h.key).await,
        "no certificate",
    );
    assert!(m.contains("over TLS with the client certificate"), "{m}");
    // Another certificate of the same CA (another service of the bank).
    let other = pki.client_with(&pki.tenants, "bank-web", "spiffe://bank.example/web");
    let m = deny(begin_with(&h, &other, &h.key).await, "other identity");
    assert!(m.contains("spiffe://bank.example/web"), "{m}");
    // The right name on a certificate from the wrong CA (the internal one).
    let forged = pki.client_with(&pki.internal, "forged", bank_id);
    let m = deny(begin_with(&h, &forged, &h.key).await, "wrong CA");
    assert!(m.contains("not issued by the tenant CA"), "{m}");

    // A tenant with no binding needs no certificate, and a certificate
    // does not turn one tenant into another: the key decides the tenant.
    begin_with(&h, &pki.client(), &h.other_key).await.unwrap();
    begin_with(&h, &bank, &h.other_key).await.unwrap();
    let theirs = h.enroll_other("zed").await;
    let r = h
        .challenges()
        .get_challenge(h.req(pb::GetChallengeRequest {
            challenge_id: ChallengeId::generate().to_string(),
        }))
        .await;
    assert_eq!(status_of(r).code(), Code::NotFound);
    drop(theirs);
    h.shutdown().await;
}

#[tokio::test]
async fn only_the_internal_ca_may_call_the_push_gateway() {
    let pki = Pki::new();
    let h = Harness::start_tls(|c| pki.configure(c), pki.client()).await;
    let deliver = || sim::DeliverRequest {
        push_token: "tok-internal".into(),
        challenge_id: ChallengeId::generate().to_string(),
        collapse_id: "c1".into(),
        expires_at_unix_ms: i64::MAX,
    };
    let call = |tls: ClientTls| {
        let url = h.url.clone();
        let req = deliver();
        async move {
            let ch = sesame_device_sim::connect_with(&url, &tls).await.unwrap();
            PushGatewayClient::new(ch).deliver(req).await.map(|_| ())
        }
    };
    let role = pki.client_with(&pki.internal, "dispatcher", "spiffe://sesame/dispatcher");
    call(role.clone()).await.unwrap();
    for (tls, what) in [
        (pki.client(), "no certificate"),
        (
            pki.client_with(&pki.tenants, "bank", "spiffe://sesame/dispatcher"),
            "a tenant's certificate",
        ),
    ] {
        let s = call(tls).await.expect_err(what);
        assert_eq!(s.code(), Code::PermissionDenied, "{what}: {s:?}");
        assert!(s.message().contains("Sesame's own roles"), "{s:?}");
    }

    // The dispatcher's client for the gateway, as a split deployment uses it.
    let job = sesame_queue::PushJob {
        tenant_id: TenantId::parse("dev").unwrap(),
        user_id: String::new(),
        device_id: DeviceId::generate(),
        challenge_id: ChallengeId::generate(),
        platform: Platform::Android,
        push_token: "tok-remote".into(),
        push_app: String::new(),
        expires_at: i64::MAX,
        enqueued_at: 0,
        attempt: 0,
        trace_id: String::new(),
        not_before: 0,
    };
    let good = RemoteSimulator::new(&h.url, &role).unwrap();
    assert!(matches!(good.send(&job, 0).await, PushOutcome::Delivered));
    let bad = RemoteSimulator::new(&h.url, &pki.client()).unwrap();
    match bad.send(&job, 0).await {
        PushOutcome::Misconfigured { reason } => assert!(reason.contains("refused"), "{reason}"),
        o => panic!("a dispatcher without the internal certificate got {o:?}"),
    }
    h.shutdown().await;
}

#[tokio::test]
async fn certificates_rotate_under_load_without_losing_a_call() {
    let pki = Pki::new();
    let h = Harness::start_tls(
        |c| {
            pki.configure(c);
            c.tls.reload_seconds = 1;
        },
        pki.client(),
    )
    .await;
    let h = Arc::new(h);
    let addr = h.url.strip_prefix("https://").unwrap().to_owned();
    let old = served_cert(&addr, &pki.server_ca_file, b"h2").await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (h, stop, ok, failed, errors) = (
            h.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
            errors.clone(),
        );
        let tls = pki.client();
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // Half the clients keep their connection, half open a new
                // one (a new handshake) for every call.
                let r = if i % 2 == 0 {
                    h.enrollment()
                        .begin_enrollment(h.req(begin(&format!("u{i}"))))
                        .await
                        .map(|_| ())
                } else {
                    begin_with(&h, &tls, &h.key).await
                };
                match r {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        errors.lock().unwrap().push(format!("{e:?}"));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    // A rotation done the careless way: the certificate first, the key a
    // moment later. In between the pair does not match and is refused;
    // the old pair keeps being served.
    let next = pki.server_ca.server("sesame rotated");
    std::fs::write(&pki.cert, &next.cert_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        served_cert(&addr, &pki.server_ca_file, b"h2").await,
        old,
        "a half-rotated pair was served"
    );
    std::fs::write(&pki.key, &next.key_pem).unwrap();
    let new = CertificateDer::from_pem_slice(next.cert_pem.as_bytes())
        .unwrap()
        .to_vec();
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_cert(&addr, &pki.server_ca_file, b"h2").await != new {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // More load on the new certificate, then stop.
    let before = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed,
        0,
        "calls lost during rotation: {:?}",
        errors.lock().unwrap()
    );
    // Both outcomes of the rotation are counted, for the alert rules.
    let admin = h.admin_url.strip_prefix("https://").unwrap().to_owned();
    let metrics = https_get(&admin, "/metrics", &pki.server_ca_file).await;
    for series in [
        "sesame_tls_reloads_total{result=\"refused\"}",
        "sesame_tls_reloads_total{result=\"changed\"}",
    ] {
        assert!(metrics.contains(series), "{series} not exported");
    }
    assert!(
        ok > before && before > 50,
        "too little load to mean anything: {before} then {ok}"
    );
    eprintln!("rotation under load: {ok} calls, 0 failed");
    match Arc::try_unwrap(h) {
        Ok(h) => h.shutdown().await,
        Err(_) => panic!("harness still shared"),
    }
}

/// TLS 1.0 and 1.1 are refused by the server (with an alert),
/// while the same client command with TLS 1.2 or 1.3 gets through: the
/// refusal is the server's, not the client's.
#[tokio::test]
async fn tls_before_1_2_is_refused() {
    let pki = Pki::new();
    let h = Harness::start_tls(|c| pki.configure(c), pki.client()).await;
    let addr = h.url.trim_start_matches("https://").to_owned();
    let s_client = |version: &'static str| {
        let (addr, ca) = (addr.clone(), pki.server_ca_file.clone());
        async move {
            let out = tokio::process::Command::new("openssl")
                .args(["s_client", "-connect", &addr, version, "-CAfile"])
                .arg(&ca)
                // Let the client offer old versions at all.
                .args(["-cipher", "DEFAULT:@SECLEVEL=0", "-alpn", "h2"])
                .stdin(std::process::Stdio::null())
                .output()
                .await
                .expect("openssl (Debian's openssl package) runs");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (out.status.success(), text)
        }
    };
    for ok in ["-tls1_2", "-tls1_3"] {
        let (success, text) = s_client(ok).await;
        assert!(
            success && text.contains("Verify return code: 0"),
            "{ok}: {text}"
        );
    }
    for old in ["-tls1", "-tls1_1"] {
        let (success, text) = s_client(old).await;
        assert!(!success, "{old} was accepted: {text}");
        // An alert read from the server (rustls answers handshake_failure):
        // the client offered the old version and the server refused it.
        assert!(text.contains("SSL alert number"), "{old}: {text}");
    }
}
