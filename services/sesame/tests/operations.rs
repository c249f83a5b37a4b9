//! The operators' endpoints: `/live`, `/ready` and `/metrics` after real
//! traffic, with no per-user labels. (Its own test binary: the Prometheus
//! recorder is process-wide, so the other test here makes no call that the
//! metrics test counts exactly.)

mod common;

use common::*;
use sesame_core::model::Decision;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A plain HTTP/1.1 GET; returns (status code, body).
async fn get(base: &str, path: &str) -> (u16, String) {
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect admin");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// The value of the first sample of `name` whose labels include all `labels`.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn live_ready_and_metrics_after_real_traffic() {
    let h = Harness::start_configured(|c| {
        c.quotas.tenants.insert(
            "other-bank".into(),
            sesame_ratelimit::TenantQuota {
                per_second: 0.01,
                per_day: 0,
            },
        );
    })
    .await;
    assert_eq!(get(&h.admin_url, "/live").await.0, 200);
    assert_eq!(get(&h.admin_url, "/ready").await.0, 200);

    let phone = h.enroll("metrics-user-7").await;
    let mut inbox = phone.push_inbox().await.unwrap();
    let approved = h.create("metrics-user-7", ENTER, 0).await;
    next_push(&phone, &mut inbox).await;
    let d = details(&phone, &approved.challenge_id).await;
    phone
        .respond(&d, &approve(&approved.number_match_code))
        .await
        .unwrap();
    let denied = h.create("metrics-user-7", ENTER, 0).await;
    next_push(&phone, &mut inbox).await;
    let d = details(&phone, &denied.challenge_id).await;
    phone
        .respond(&d, &answer(Decision::DenyFraud))
        .await
        .unwrap();
    let bad = h
        .challenges()
        .create_challenge(h.req(Harness::login_request("", ENTER, 0)))
        .await;
    assert!(bad.is_err());
    // A quota refusal and a bad device signature, so those series exist too.
    h.refusal_and_bad_signature(&phone).await;
    // A call without time left: shed by admission control before any work.
    let mut late = h.req(Harness::login_request("late-user", ENTER, 0));
    late.set_timeout(std::time::Duration::from_millis(1));
    let shed = h.challenges().create_challenge(late).await;
    assert_eq!(status_of(shed).code(), tonic::Code::DeadlineExceeded);
    // An expected storage refusal: cancelling an answered challenge.
    let late_cancel = h
        .challenges()
        .cancel_challenge(h.req(sesame_proto::tenant::v1::CancelChallengeRequest {
            challenge_id: approved.challenge_id.clone(),
        }))
        .await;
    assert_eq!(
        status_of(late_cancel).code(),
        tonic::Code::FailedPrecondition
    );

    // A call to a method no service has must not mint label values.
    let mut grpc = tonic::client::Grpc::new(h.channel.clone());
    grpc.ready().await.unwrap();
    let bogus: Result<tonic::Response<()>, _> = grpc
        .unary(
            tonic::Request::new(()),
            http::uri::PathAndQuery::from_static("/sesame.bogus.v1.Nope/Random123"),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    assert_eq!(bogus.unwrap_err().code(), tonic::Code::Unimplemented);

    let (code, m) = get(&h.admin_url, "/metrics").await;
    assert_eq!(code, 200);
    let create_ok = [
        ("service", "sesame.tenant.v1.ChallengeService"),
        ("method", "CreateChallenge"),
        ("code", "OK"),
    ];
    assert_eq!(
        sample(&m, "sesame_grpc_requests_total", &create_ok),
        Some(3.0),
        "{m}"
    );
    let create_bad = [("method", "CreateChallenge"), ("code", "INVALID_ARGUMENT")];
    assert_eq!(
        sample(&m, "sesame_grpc_requests_total", &create_bad),
        Some(1.0)
    );
    assert!(
        sample(
            &m,
            "sesame_grpc_request_duration_seconds_count",
            &[("method", "Respond")]
        ) >= Some(2.0)
    );
    assert_eq!(
        sample(&m, "sesame_challenges_created_total", &[("tenant", "dev")]),
        Some(2.0)
    );
    let approved_l = [("tenant", "dev"), ("outcome", "approved")];
    assert_eq!(
        sample(&m, "sesame_challenges_resolved_total", &approved_l),
        Some(1.0)
    );
    let fraud_l = [("tenant", "dev"), ("outcome", "fraud")];
    assert_eq!(
        sample(&m, "sesame_challenges_resolved_total", &fraud_l),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "sesame_devices_enrolled_total", &[("tenant", "dev")]),
        Some(1.0)
    );
    let delivered = [("provider", "simulator"), ("outcome", "delivered")];
    // Both of this phone's pushes were received; the other tenant's may still be in flight.
    assert!(sample(&m, "sesame_pushes_total", &delivered) >= Some(2.0));
    assert_eq!(
        sample(&m, "sesame_challenge_verdict_seconds_count", &[]),
        Some(2.0)
    );
    assert!(
        m.contains("# HELP sesame_pushes_total"),
        "metrics are described"
    );
    let refused = [("tenant", "other-bank"), ("reason", "TENANT_RATE_QUOTA")];
    assert_eq!(
        sample(&m, "sesame_challenges_refused_total", &refused),
        Some(1.0)
    );
    assert!(sample(&m, "sesame_signature_failures_total", &[]).is_some());

    // Every metric the alert and recording rules use is exported.
    let rules = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/prometheus/sesame-rules.yml"),
    )
    .unwrap();
    let mut names: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("sesame_"))
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 6, "{names:?}");
    // Kafka-only metrics (this server runs the in-process queue) are
    // checked against dispatcher processes in tests/kafka.rs.
    names.retain(|n| !n.starts_with("sesame_queue_"));
    // TLS metrics exist only on a TLS listener: checked in tests/tls.rs.
    names.retain(|n| !n.starts_with("sesame_tls_"));
    for name in names {
        assert!(
            m.lines().any(|l| l.starts_with(&format!("{name}{{"))
                || l.starts_with(&format!("{name} "))
                || l.starts_with(&format!("{name}_bucket{{"))),
            "{name} is used by the rules but not exported"
        );
    }

    // A challenge and its guard record: one storage write.
    let storage_op = [("backend", "embedded"), ("op", "create_challenge_guarded")];
    assert!(
        sample(
            &m,
            "sesame_storage_operation_duration_seconds_count",
            &storage_op
        ) >= Some(3.0)
    );
    // The embedded store's group commits: at least one per write above.
    assert!(sample(&m, "sesame_embedded_commit_writes_count", &[]) >= Some(3.0));
    assert!(sample(&m, "sesame_embedded_commit_duration_seconds_count", &[]) >= Some(3.0));
    let transition = [("op", "resolve_challenge"), ("kind", "transition")];
    assert_eq!(
        sample(&m, "sesame_storage_errors_total", &transition),
        Some(1.0)
    );
    let unimplemented = [
        ("service", "other"),
        ("method", "other"),
        ("code", "UNIMPLEMENTED"),
    ];
    assert_eq!(
        sample(&m, "sesame_grpc_requests_total", &unimplemented),
        Some(1.0)
    );
    assert!(!m.contains("Random123") && !m.contains("sesame.bogus"));

    // No per-user, per-device or per-challenge labels.
    assert!(!m.contains("metrics-user-7"));
    assert!(!m.contains(phone.device_id()));
    assert!(!m.contains(&approved.challenge_id));
    h.shutdown().await;
}

/// On shutdown, readiness fails first, while the process still answers, for
/// `shutdown_announce_seconds`; then it stops.
#[tokio::test]
async fn readiness_fails_before_the_listener_closes() {
    let mut h = Harness::start_configured(|c| c.shutdown_announce_seconds = 1).await;
    assert_eq!(get(&h.admin_url, "/ready").await.0, 200);
    h.begin_shutdown();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (code, body) = get(&h.admin_url, "/ready").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("draining"));
    assert_eq!(get(&h.admin_url, "/live").await.0, 200);
    // gRPC still answers during the announcement.
    let r = h
        .enrollment()
        .list_devices(h.req(sesame_proto::tenant::v1::ListDevicesRequest {
            user_id: "u".into(),
        }))
        .await;
    assert!(r.is_ok(), "{r:?}");
    h.shutdown().await;
}
