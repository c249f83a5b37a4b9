//! A real Prometheus (Debian's, installed by scripts/setup.sh) scrapes a
//! running Sesame with the project's alert and recording rules loaded, while
//! it serves logins with its pushes going through Kafka (tansu); then every
//! query of the Grafana dashboard in deploy/grafana, the Kafka row's too,
//! must return data through Prometheus's HTTP API.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::tansu::{free_port, Broker};
use common::*;
use sesame_core::model::Decision;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    // HTTP/1.0: the answer comes whole, not chunked.
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let (_, body) = text.split_once("\r\n\r\n")?;
    let body = body.to_owned();
    Some((code, body))
}

/// Number of series an instant query returns.
async fn series(addr: &str, query: &str) -> usize {
    let path = format!("/api/v1/query?query={}", percent_encode(query));
    let Some((200, body)) = http_get(addr, &path).await else {
        return 0;
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["result"].as_array().map_or(0, |r| r.len())
}

fn dashboard_queries() -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/grafana/sesame-dashboard.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    let mut out = Vec::new();
    // Rows (`"type": "row"`) group panels and have no queries.
    for panel in dash["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            continue;
        }
        for target in panel["targets"].as_array().expect("targets") {
            out.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let broker = Broker::start();
    let kafka = broker.uri();
    let h = Harness::start_configured(move |c| {
        c.queue = kafka;
        c.kafka.replication_factor = 1;
        c.kafka.push_partitions = 2;
        c.kafka.events_partitions = 1;
        c.quotas.tenants.insert(
            "other-bank".into(),
            sesame_ratelimit::TenantQuota {
                per_second: 0.01,
                per_day: 0,
            },
        );
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/prometheus/sesame-rules.yml")
        .canonicalize()
        .expect("rules file");
    let target = h.admin_url.trim_start_matches("http://");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: sesame\n    static_configs:\n      - targets: ['{target}']\n",
        rules.display()
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).expect("config");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).expect("log file"))
        .spawn()
        .expect("prometheus not runnable: run scripts/setup.sh (Debian package prometheus)");
    let _prometheus = Prometheus(child);
    let mut ready = false;
    for _ in 0..100 {
        if matches!(http_get(&addr, "/-/ready").await, Some((200, _))) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        ready,
        "prometheus did not become ready:\n{}",
        std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
    );

    // Traffic: logins approved and reported as fraud, a quota refusal, a bad signature.
    let phone = h.enroll("dash-user").await;
    let mut inbox = phone.push_inbox().await.unwrap();
    for decision in [Decision::Approve, Decision::Approve, Decision::DenyFraud] {
        let c = h.create("dash-user", ENTER, 0).await;
        next_push(&phone, &mut inbox).await;
        let d = details(&phone, &c.challenge_id).await;
        let a = if decision == Decision::Approve {
            approve(&c.number_match_code)
        } else {
            answer(decision)
        };
        phone.respond(&d, &a).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    h.refusal_and_bad_signature(&phone).await;
    // A call without time left: shed by admission control before any work.
    let mut late = h.req(Harness::login_request("dash-user", ENTER, 0));
    late.set_timeout(Duration::from_millis(1));
    let shed = h.challenges().create_challenge(late).await;
    assert_eq!(status_of(shed).code(), tonic::Code::DeadlineExceeded);

    let mut queries = dashboard_queries();
    assert!(queries.len() >= 12, "{queries:?}");
    // The recording rules must evaluate too.
    queries.push("sesame:login_success_ratio:rate5m".into());
    queries.push("sesame:grpc_server_error_ratio:rate5m".into());
    queries.push("sesame:push_failure_ratio:rate10m".into());
    queries.push("sesame:push_dead_token_ratio:rate10m".into());
    let mut missing = queries.clone();
    for _ in 0..40 {
        let mut still = Vec::new();
        for q in &missing {
            if series(&addr, q).await == 0 {
                still.push(q.clone());
            }
        }
        missing = still;
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(missing.is_empty(), "queries without data: {missing:#?}");
    println!(
        "all {} dashboard and recording-rule queries returned data",
        queries.len()
    );
    // A shutdown that hangs is a failure with a message, not a stuck CI job.
    let stopped = tokio::time::timeout(Duration::from_secs(60), h.shutdown()).await;
    assert!(stopped.is_ok(), "server shutdown still waiting after 60 s");
    drop(broker);
}
