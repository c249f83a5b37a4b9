//! The operators' endpoints: `/live`, `/ready` and `/metrics` after real
//! traffic, with no per-user labels. (Its own test binary: the Prometheus
//! recorder is process-wide.)

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
    let h = Harness::start().await;
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

    let (code, m) = get(&h.admin_url, "/metrics").await;
    assert_eq!(code, 200);
    let create_ok = [
        ("service", "sesame.tenant.v1.ChallengeService"),
        ("method", "CreateChallenge"),
        ("code", "OK"),
    ];
    assert_eq!(
        sample(&m, "sesame_grpc_requests_total", &create_ok),
        Some(2.0),
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
    assert_eq!(sample(&m, "sesame_pushes_total", &delivered), Some(2.0));
    assert_eq!(
        sample(&m, "sesame_challenge_verdict_seconds_count", &[]),
        Some(2.0)
    );
    assert!(
        m.contains("# HELP sesame_pushes_total"),
        "metrics are described"
    );
    // No per-user, per-device or per-challenge labels.
    assert!(!m.contains("metrics-user-7"));
    assert!(!m.contains(phone.device_id()));
    assert!(!m.contains(&approved.challenge_id));
    h.shutdown().await;
}
