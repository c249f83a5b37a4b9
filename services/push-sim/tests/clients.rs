#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! Sesame's real APNs and FCM clients against the simulators, over TLS and
//! HTTP/2 on loopback: every mapped reason, the faults, token refresh,
//! `Retry-After`, and the local payload-size check.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use std::time::Duration;

use sesame_core::model::Platform;
use sesame_core::time::now_ms;
use sesame_core::{ChallengeId, DeviceId, TenantId};
use sesame_push::apns::{ApnsAuth, ApnsClient, ApnsConfig};
use sesame_push::fcm::{FcmClient, FcmConfig, ServiceAccount};
use sesame_push::payload::AlertText;
use sesame_push::{PushOutcome, SimulatorProvider, TlsOptions};
use sesame_push_sim::apns::ApnsSimulator;
use sesame_push_sim::credentials::{ApnsKeyMaterial, FcmAccountMaterial};
use sesame_push_sim::fcm::FcmSimulator;
use sesame_push_sim::tls::SimTls;
use sesame_push_sim::{DeviceState, Fault, FaultRule, Running, SimControl};
use sesame_queue::PushJob;

const TOPIC: &str = "com.example.bank";

fn job(platform: Platform, token: &str) -> PushJob {
    PushJob {
        tenant_id: TenantId::parse("bank").unwrap(),
        user_id: String::new(),
        device_id: DeviceId::generate(),
        challenge_id: ChallengeId::generate(),
        platform,
        push_token: token.into(),
        push_app: "bank-app".into(),
        expires_at: now_ms() + 120_000,
        enqueued_at: now_ms(),
        attempt: 0,
        trace_id: String::new(),
        not_before: 0,
    }
}

struct Apns {
    _running: Running,
    control: Arc<SimControl>,
    key: ApnsKeyMaterial,
    tls: SimTls,
    url: String,
}

impl Apns {
    async fn start() -> Apns {
        let tls = SimTls::generate().unwrap();
        let control = SimControl::new(Arc::new(SimulatorProvider::new()));
        let (running, sim) = ApnsSimulator::start("127.0.0.1:0", &tls, control.clone())
            .await
            .unwrap();
        let key = ApnsKeyMaterial::generate("KEY1234567", "TEAM123456");
        sim.register_key(&key, &[TOPIC]);
        let url = running.url();
        Apns {
            _running: running,
            control,
            key,
            tls,
            url,
        }
    }

    /// A client configuration signing with `key` and trusting the simulator's CA.
    fn config(&self, key: &ApnsKeyMaterial) -> ApnsConfig {
        ApnsConfig {
            base_url: self.url.clone(),
            topic: TOPIC.into(),
            auth: ApnsAuth::Token {
                p8_pem: key.p8_pem.clone(),
                key_id: key.key_id.clone(),
                team_id: key.team_id.clone(),
            },
            tls: TlsOptions {
                extra_ca_pem: Some(self.tls.ca_pem.clone()),
                client_identity_pem: None,
            },
            connections: 1,
            request_timeout: Duration::from_secs(5),
            alert: AlertText::default(),
        }
    }

    fn client_with(&self, topic: &str, alert: AlertText) -> ApnsClient {
        ApnsClient::new(ApnsConfig {
            topic: topic.into(),
            alert,
            ..self.config(&self.key)
        })
        .unwrap()
    }

    fn client(&self) -> ApnsClient {
        self.client_with(TOPIC, AlertText::default())
    }
}

const GOOD: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

#[tokio::test]
async fn apns_push_carries_apples_headers_and_reaches_the_phone() {
    let a = Apns::start().await;
    let c = a.client();
    let j = job(Platform::Ios, GOOD);
    assert_eq!(c.send(&j, now_ms()).await, PushOutcome::Delivered);
    let rec = a.control.last().unwrap();
    let h = |n: &str| {
        rec.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(rec.path, format!("/3/device/{GOOD}"));
    assert_eq!(h("apns-topic"), TOPIC);
    assert_eq!(h("apns-push-type"), "alert");
    assert_eq!(h("apns-priority"), "10");
    assert_eq!(h("apns-expiration"), (j.expires_at / 1000).to_string());
    assert_eq!(h("apns-collapse-id"), j.challenge_id.as_str());
    assert_eq!(h("apns-id").len(), 36);
    assert!(h("authorization").starts_with("bearer "));
    // Only the challenge id and the generic alert go through Apple.
    let body: serde_json::Value = serde_json::from_slice(&rec.body).unwrap();
    assert_eq!(body["challenge_id"], j.challenge_id.as_str());
    assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
    let push = a.control.inbox.recv(GOOD).await.unwrap();
    assert_eq!(push.challenge_id, j.challenge_id.as_str());
    assert_eq!(push.collapse_id, j.challenge_id.as_str());
}

#[tokio::test]
async fn apns_device_states_map_to_dead_token_or_retry() {
    let a = Apns::start().await;
    let c = a.client();
    for (i, (state, reason)) in [
        (DeviceState::Unregistered, "Unregistered"),
        (DeviceState::ExpiredToken, "ExpiredToken"),
        (DeviceState::BadToken, "BadDeviceToken"),
        (DeviceState::NotForTopic, "DeviceTokenNotForTopic"),
    ]
    .into_iter()
    .enumerate()
    {
        let token = format!("{:064x}", i + 1);
        a.control.set_device(&token, state);
        assert_eq!(
            c.send(&job(Platform::Ios, &token), now_ms()).await,
            PushOutcome::DeadToken,
            "{reason}"
        );
        assert_eq!(a.control.count(reason), 1, "{reason}");
    }
    a.control.set_device(GOOD, DeviceState::RateLimited);
    match c.send(&job(Platform::Ios, GOOD), now_ms()).await {
        PushOutcome::Retry { after, reason } => {
            assert_eq!(after, Some(Duration::from_secs(1)));
            assert!(reason.contains("TooManyRequests"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // A token that is not hex never leaves: APNs would say BadDeviceToken.
    assert_eq!(
        c.send(&job(Platform::Ios, "not-hex"), now_ms()).await,
        PushOutcome::DeadToken
    );
    assert_eq!(a.control.count("BadDeviceToken"), 1);
}

#[tokio::test]
async fn apns_faults_are_retried_with_retry_after_and_connections_recover() {
    let a = Apns::start().await;
    let c = a.client();
    let fault = |f: Fault| FaultRule {
        fault: f,
        token: None,
        times: Some(1),
    };
    a.control.add_fault(fault(Fault::Status {
        status: 503,
        retry_after: Some(7),
    }));
    match c.send(&job(Platform::Ios, GOOD), now_ms()).await {
        PushOutcome::Retry { after, reason } => {
            assert_eq!(after, Some(Duration::from_secs(7)));
            assert!(reason.contains("503 ServiceUnavailable"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    a.control.add_fault(fault(Fault::Status {
        status: 500,
        retry_after: None,
    }));
    assert!(matches!(
        c.send(&job(Platform::Ios, GOOD), now_ms()).await,
        PushOutcome::Retry { after: None, .. }
    ));
    // The connection is dropped under the request: a retry, then a new
    // connection serves the next push.
    a.control.add_fault(fault(Fault::Reset));
    match c.send(&job(Platform::Ios, GOOD), now_ms()).await {
        PushOutcome::Retry {
            after: None,
            reason,
        } => assert!(reason.contains("transport"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        c.send(&job(Platform::Ios, GOOD), now_ms()).await,
        PushOutcome::Delivered
    );
    // GOAWAY after an answer: that push is delivered, the next goes over a new connection.
    a.control.add_fault(fault(Fault::GoAway));
    assert_eq!(
        c.send(&job(Platform::Ios, GOOD), now_ms()).await,
        PushOutcome::Delivered
    );
    assert_eq!(
        c.send(&job(Platform::Ios, GOOD), now_ms()).await,
        PushOutcome::Delivered
    );
    // Latency is only latency.
    a.control
        .add_fault(fault(Fault::Latency(Duration::from_millis(200))));
    let t = std::time::Instant::now();
    assert_eq!(
        c.send(&job(Platform::Ios, GOOD), now_ms()).await,
        PushOutcome::Delivered
    );
    assert!(t.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn apns_provider_token_is_refreshed_by_apples_rules() {
    let a = Apns::start().await;
    let c = a.client();
    let t0 = now_ms();
    let min = 60_000;
    assert_eq!(
        c.send(&job(Platform::Ios, GOOD), t0).await,
        PushOutcome::Delivered
    );
    assert_eq!(a.control.count("provider_token_accepted"), 1);
    // 30 minutes on: the same token.
    a.control.advance_clock(Duration::from_secs(30 * 60));
    assert_eq!(
        c.send(&job(Platform::Ios, GOOD), t0 + 30 * min).await,
        PushOutcome::Delivered
    );
    assert_eq!(a.control.count("provider_token_accepted"), 1);
    // 51 minutes on: a new one, before Apple would refuse the old one.
    a.control.advance_clock(Duration::from_secs(21 * 60));
    assert_eq!(
        c.send(&job(Platform::Ios, GOOD), t0 + 51 * min).await,
        PushOutcome::Delivered
    );
    assert_eq!(a.control.count("provider_token_accepted"), 2);

    // APNs' clock runs 61 minutes ahead of ours: it calls the token expired.
    // It is younger than 20 minutes by our clock, so no new token yet.
    a.control.advance_clock(Duration::from_secs(61 * 60));
    match c.send(&job(Platform::Ios, GOOD), t0 + 52 * min).await {
        PushOutcome::Retry {
            after: Some(wait),
            reason,
        } => {
            assert!(reason.contains("ExpiredProviderToken"), "{reason}");
            assert_eq!(wait, Duration::from_secs(19 * 60));
        }
        other => panic!("{other:?}"),
    }
    // Once 20 minutes have passed: a new token and the push in one send.
    assert_eq!(
        c.send(&job(Platform::Ios, GOOD), t0 + 72 * min).await,
        PushOutcome::Delivered
    );
    assert_eq!(a.control.count("ExpiredProviderToken"), 2);
    assert_eq!(a.control.count("provider_token_accepted"), 3);
}

#[tokio::test]
async fn apns_simulator_enforces_the_20_minute_rule_per_connection() {
    let a = Apns::start().await;
    let signer =
        sesame_push::jwt::Es256Signer::from_p8_pem(&a.key.p8_pem, &a.key.key_id, &a.key.team_id)
            .unwrap();
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(a.tls.ca_pem.as_bytes()) {
            r.add(c.unwrap()).unwrap();
        }
        r
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(cfg)
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let now = now_ms() / 1000;
    let send = |jwt: String| {
        http.post(format!("{}/3/device/{GOOD}", a.url))
            .header("apns-topic", TOPIC)
            .header("authorization", format!("bearer {jwt}"))
            .body(r#"{"aps":{"alert":"x"}}"#)
            .send()
    };
    assert_eq!(send(signer.token(now)).await.unwrap().status(), 200);
    let second = send(signer.token(now - 5)).await.unwrap();
    assert_eq!(second.status(), 429);
    assert!(second
        .text()
        .await
        .unwrap()
        .contains("TooManyProviderTokenUpdates"));
    // Raw requests with Apple's other refusals.
    let r = send("a.b.c".into()).await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("InvalidProviderToken"));
}

#[tokio::test]
async fn apns_oversized_payload_is_refused_before_sending_and_by_the_simulator() {
    let a = Apns::start().await;
    let alert = AlertText {
        body: "x".repeat(5000),
        ..AlertText::default()
    };
    let c = a.client_with(TOPIC, alert);
    match c.send(&job(Platform::Ios, GOOD), now_ms()).await {
        PushOutcome::Failed { reason } => assert!(reason.contains("4096"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(a.control.received(), 0, "nothing was sent");
}

#[tokio::test]
async fn apns_wrong_topic_or_key_is_a_configuration_alarm() {
    let a = Apns::start().await;
    match a
        .client_with("com.other.app", AlertText::default())
        .send(&job(Platform::Ios, GOOD), now_ms())
        .await
    {
        PushOutcome::Misconfigured { reason } => {
            assert!(reason.contains("TopicDisallowed"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let stranger = ApnsKeyMaterial::generate("OTHER12345", "TEAM123456");
    let c = ApnsClient::new(ApnsConfig {
        connections: 2,
        ..a.config(&stranger)
    })
    .unwrap();
    match c.send(&job(Platform::Ios, GOOD), now_ms()).await {
        PushOutcome::Misconfigured { reason } => {
            assert!(reason.contains("InvalidProviderToken"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // A simulator whose CA is not trusted is not talked to at all.
    let untrusting = ApnsClient::new(ApnsConfig {
        tls: TlsOptions::default(),
        ..a.config(&a.key)
    })
    .unwrap();
    assert!(matches!(
        untrusting.send(&job(Platform::Ios, GOOD), now_ms()).await,
        PushOutcome::Retry { .. }
    ));
}

struct Fcm {
    _running: Running,
    sim: Arc<FcmSimulator>,
    control: Arc<SimControl>,
    tls: SimTls,
    url: String,
    account: FcmAccountMaterial,
}

impl Fcm {
    async fn start() -> Fcm {
        let tls = SimTls::generate().unwrap();
        let control = SimControl::new(Arc::new(SimulatorProvider::new()));
        let (running, sim) = FcmSimulator::start("127.0.0.1:0", &tls, control.clone())
            .await
            .unwrap();
        let account = FcmAccountMaterial::generate("bank-prod", &sim.token_uri()).unwrap();
        sim.register_account(&account);
        let url = running.url();
        Fcm {
            _running: running,
            sim,
            control,
            tls,
            url,
            account,
        }
    }

    fn client_for(&self, json: &str) -> FcmClient {
        FcmClient::new(FcmConfig {
            base_url: self.url.clone(),
            service_account: ServiceAccount::from_json(json).unwrap(),
            tls: TlsOptions {
                extra_ca_pem: Some(self.tls.ca_pem.clone()),
                client_identity_pem: None,
            },
            request_timeout: Duration::from_secs(5),
            alert: AlertText::default(),
        })
        .unwrap()
    }

    fn client(&self) -> FcmClient {
        self.client_for(&self.account.json)
    }
}

const FCM_TOKEN: &str = "fcm-token_1:APA91bHun4MxP5egoKMwt2KZFBaFUH-1RYqx";

#[tokio::test]
async fn fcm_message_is_v1_with_high_priority_ttl_and_collapse_key() {
    let f = Fcm::start().await;
    let c = f.client();
    let j = job(Platform::Android, FCM_TOKEN);
    assert_eq!(c.send(&j, now_ms()).await, PushOutcome::Delivered);
    let rec = f.control.last().unwrap();
    assert_eq!(rec.path, "/v1/projects/bank-prod/messages:send");
    let body: serde_json::Value = serde_json::from_slice(&rec.body).unwrap();
    let m = &body["message"];
    assert_eq!(m["token"], FCM_TOKEN);
    assert_eq!(m["android"]["priority"], "HIGH");
    let ttl = m["android"]["ttl"].as_str().unwrap();
    let secs: i64 = ttl.trim_end_matches('s').parse().unwrap();
    assert!((118..=120).contains(&secs), "{ttl}");
    assert_eq!(m["android"]["collapse_key"], j.challenge_id.as_str());
    assert_eq!(
        m["data"].as_object().unwrap().len(),
        1,
        "only the challenge id"
    );
    let push = f.control.inbox.recv(FCM_TOKEN).await.unwrap();
    assert_eq!(push.challenge_id, j.challenge_id.as_str());
    // One OAuth token served both the first and a second push.
    assert_eq!(
        c.send(&job(Platform::Android, FCM_TOKEN), now_ms()).await,
        PushOutcome::Delivered
    );
    assert_eq!(f.control.count("token_issued"), 1);
}

#[tokio::test]
async fn fcm_error_codes_map_as_googles_table_says() {
    let f = Fcm::start().await;
    let c = f.client();
    for (i, (state, code, expect)) in [
        (DeviceState::Unregistered, "UNREGISTERED", "dead"),
        (DeviceState::BadToken, "INVALID_ARGUMENT", "dead"),
        (DeviceState::SenderIdMismatch, "SENDER_ID_MISMATCH", "dead"),
        (
            DeviceState::ThirdPartyAuthError,
            "THIRD_PARTY_AUTH_ERROR",
            "alarm",
        ),
        (DeviceState::RateLimited, "QUOTA_EXCEEDED", "retry60"),
    ]
    .into_iter()
    .enumerate()
    {
        let token = format!("tok-{i}");
        f.control.set_device(&token, state);
        let out = c.send(&job(Platform::Android, &token), now_ms()).await;
        match (expect, &out) {
            ("dead", PushOutcome::DeadToken) => {}
            ("alarm", PushOutcome::Misconfigured { reason }) => {
                assert!(reason.contains(code), "{reason}")
            }
            ("retry60", PushOutcome::Retry { after, .. }) => {
                assert_eq!(*after, Some(Duration::from_secs(60)))
            }
            _ => panic!("{code}: {out:?}"),
        }
        assert_eq!(f.control.count(code), 1, "{code}");
    }
    for (status, retry_after, code) in [
        (503, Some(3), "UNAVAILABLE"),
        (500, None, "INTERNAL"),
        (429, Some(5), "QUOTA_EXCEEDED"),
    ] {
        f.control.add_fault(FaultRule {
            fault: Fault::Status {
                status,
                retry_after,
            },
            token: None,
            times: Some(1),
        });
        match c.send(&job(Platform::Android, FCM_TOKEN), now_ms()).await {
            PushOutcome::Retry { after, reason } => {
                assert_eq!(after, retry_after.map(Duration::from_secs));
                assert!(reason.contains(code), "{reason}");
            }
            other => panic!("{code}: {other:?}"),
        }
    }
    f.control.add_fault(FaultRule {
        fault: Fault::Reset,
        token: None,
        times: Some(1),
    });
    assert!(matches!(
        c.send(&job(Platform::Android, FCM_TOKEN), now_ms()).await,
        PushOutcome::Retry { .. }
    ));
    assert_eq!(
        c.send(&job(Platform::Android, FCM_TOKEN), now_ms()).await,
        PushOutcome::Delivered
    );
}

#[tokio::test]
async fn fcm_plain_401_refreshes_the_access_token_once() {
    let f = Fcm::start().await;
    let c = f.client();
    assert_eq!(
        c.send(&job(Platform::Android, FCM_TOKEN), now_ms()).await,
        PushOutcome::Delivered
    );
    f.sim.revoke_tokens();
    assert_eq!(
        c.send(&job(Platform::Android, FCM_TOKEN), now_ms()).await,
        PushOutcome::Delivered
    );
    assert_eq!(f.control.count("UNAUTHENTICATED"), 1);
    assert_eq!(f.control.count("token_issued"), 2);
}

#[tokio::test]
async fn fcm_unknown_service_account_and_oversized_message_are_not_retried() {
    let f = Fcm::start().await;
    let stranger = FcmAccountMaterial::generate("bank-prod", &f.sim.token_uri()).unwrap();
    // Same e-mail, another key: Google refuses the assertion's signature.
    match f
        .client_for(&stranger.json)
        .send(&job(Platform::Android, FCM_TOKEN), now_ms())
        .await
    {
        PushOutcome::Misconfigured { reason } => {
            assert!(reason.contains("invalid_grant"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let big = FcmClient::new(FcmConfig {
        base_url: f.url.clone(),
        service_account: ServiceAccount::from_json(&f.account.json).unwrap(),
        tls: TlsOptions {
            extra_ca_pem: Some(f.tls.ca_pem.clone()),
            client_identity_pem: None,
        },
        request_timeout: Duration::from_secs(5),
        alert: AlertText {
            title: "x".repeat(4100),
            ..AlertText::default()
        },
    })
    .unwrap();
    assert!(matches!(
        big.send(&job(Platform::Android, FCM_TOKEN), now_ms()).await,
        PushOutcome::Failed { .. }
    ));
    assert_eq!(f.control.received(), 0);
}

/// Someone answering at APNs' address without a certificate the client
/// trusts (here: the simulator, its CA not given) gets no push: the TLS
/// handshake fails, the outcome is a retry naming the certificate, and
/// nothing reached the server.
#[tokio::test]
async fn a_server_with_an_untrusted_certificate_gets_no_push() {
    let a = Apns::start().await;
    let c = ApnsClient::new(ApnsConfig {
        tls: TlsOptions {
            extra_ca_pem: None,
            client_identity_pem: None,
        },
        ..a.config(&a.key)
    })
    .unwrap();
    match c.send(&job(Platform::Ios, GOOD), now_ms()).await {
        PushOutcome::Retry { reason, .. } => {
            assert!(
                reason.to_lowercase().contains("certificate"),
                "the refusal names the certificate: {reason}"
            );
        }
        other => panic!("expected a refused handshake, got {other:?}"),
    }
    assert!(a.control.last().is_none(), "the server saw a request");
}

/// The dispatcher's own check, behind the one at enrollment: a job naming
/// another tenant's push app (a forged or mis-routed job on the queue) is
/// refused as misconfigured, and nothing reaches Apple with that app's key.
#[tokio::test]
async fn a_job_naming_another_tenants_push_app_is_not_sent() {
    use sesame_push::apps::{ApnsAppConfig, PushAppConfig, PushApps};
    use sesame_push::PushProvider;
    let a = Apns::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (key_file, ca_file) = (dir.path().join("key.p8"), dir.path().join("ca.pem"));
    std::fs::write(&key_file, &a.key.p8_pem).unwrap();
    std::fs::write(&ca_file, &a.tls.ca_pem).unwrap();
    let apps = PushApps::from_config(&std::collections::BTreeMap::from([(
        "bank-app".to_owned(),
        PushAppConfig {
            tenant: "bank".into(),
            platform: "ios".into(),
            apns: Some(ApnsAppConfig {
                base_url: a.url.clone(),
                topic: TOPIC.into(),
                key_file: key_file.display().to_string(),
                key_id: a.key.key_id.clone(),
                team_id: a.key.team_id.clone(),
                ca_file: ca_file.display().to_string(),
                ..Default::default()
            }),
            fcm: None,
            alert: AlertText::default(),
        },
    )]))
    .unwrap();
    // The app's own tenant: delivered.
    assert_eq!(
        apps.send(&job(Platform::Ios, GOOD), now_ms()).await,
        PushOutcome::Delivered
    );
    let sent = a.control.received();
    // Another tenant's job naming that app: refused, never sent.
    let mut foreign = job(Platform::Ios, GOOD);
    foreign.tenant_id = TenantId::parse("other-bank").unwrap();
    match apps.send(&foreign, now_ms()).await {
        PushOutcome::Misconfigured { reason } => {
            assert!(
                reason.contains("does not belong to tenant other-bank"),
                "{reason}"
            )
        }
        other => panic!("a foreign tenant's job was {other:?}"),
    }
    assert_eq!(
        a.control.received(),
        sent,
        "the simulator saw the foreign push"
    );
}
