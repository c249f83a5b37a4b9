#![allow(clippy::unwrap_used)]
//! The tamper-evident audit trail, end to end: real gRPC on loopback, the
//! real `sesame` binary for `audit verify`, and the embedded store's file
//! edited behind the server's back (as an insider with disk access would)
//! to check that an edited, a dropped and a reordered record are caught.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use common::*;
use sesame_core::audit::AuditRecord;
use sesame_core::model::Decision;
use sesame_proto::admin::v1 as apb;
use sesame_proto::admin::v1::tenant_admin_service_client::TenantAdminServiceClient;
use sesame_proto::tenant::v1 as pb;
use sesame_proto::tenant::v1::audit_service_client::AuditServiceClient;
use tonic::Code;

fn admin_key(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("admin.key"))
        .unwrap()
        .trim()
        .to_owned()
}

async fn trail(
    h: &Harness,
    q: pb::ListAuditRecordsRequest,
) -> Vec<sesame_proto::types::v1::AuditRecord> {
    let mut out = Vec::new();
    let mut q = q;
    loop {
        let page = AuditServiceClient::new(h.channel.clone())
            .list_audit_records(h.req(q.clone()))
            .await
            .unwrap()
            .into_inner();
        out.extend(page.records);
        if page.next_page_token.is_empty() {
            return out;
        }
        q.page_token = page.next_page_token;
    }
}

/// Waits until the writer has stored `n` records matching `q`.
async fn trail_of_at_least(
    h: &Harness,
    q: pb::ListAuditRecordsRequest,
    n: usize,
) -> Vec<sesame_proto::types::v1::AuditRecord> {
    for _ in 0..100 {
        let t = trail(h, q.clone()).await;
        if t.len() >= n {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    trail(h, q).await
}

fn actions(t: &[sesame_proto::types::v1::AuditRecord]) -> Vec<&str> {
    t.iter().map(|r| r.action.as_str()).collect()
}

fn sesame_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sesame"))
        .args(args)
        .env_remove("SESAME_ADMIN_KEY")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_is_on_the_tenants_trail_and_the_chain_verifies() {
    let h = Harness::start().await;
    let push_token = "tok-secret-of-alice";
    let phone = h
        .enroll_with(
            "alice",
            sesame_core::crypto::KeyAlgorithm::EcdsaP256Sha256,
            push_token,
        )
        .await;
    let mut inbox = phone.push_inbox().await.unwrap();

    // An approved login, a "this wasn't me", a cancelled challenge.
    let approved = h.create("alice", ENTER, 0).await;
    next_push(&phone, &mut inbox).await;
    let d = details(&phone, &approved.challenge_id).await;
    phone
        .respond(&d, &approve(&approved.number_match_code))
        .await
        .unwrap();
    let fraud = h.create("alice", ENTER, 0).await;
    next_push(&phone, &mut inbox).await;
    let d = details(&phone, &fraud.challenge_id).await;
    phone
        .respond(&d, &answer(Decision::DenyFraud))
        .await
        .unwrap();
    // Answering again is refused, and that is on the trail too.
    let late = phone.respond(&d, &answer(Decision::Approve)).await;
    assert_eq!(code_of(late), Code::FailedPrecondition);

    let by_challenge = |id: &str| pb::ListAuditRecordsRequest {
        challenge_id: id.into(),
        ..Default::default()
    };
    let t = trail_of_at_least(&h, by_challenge(&approved.challenge_id), 3).await;
    assert_eq!(
        actions(&t),
        ["challenge_created", "push_sent", "answer_accepted"],
        "{t:#?}"
    );
    assert_eq!(t[2].detail, "verdict: approved");
    assert_eq!(t[2].device_id, phone.device_id());
    assert!(t[0].actor.starts_with("key:"), "{:?}", t[0].actor);
    assert!(t[0].source.starts_with("127.0.0.1:"), "{:?}", t[0].source);

    let t = trail_of_at_least(&h, by_challenge(&fraud.challenge_id), 5).await;
    let got: HashSet<&str> = actions(&t).into_iter().collect();
    for want in [
        "challenge_created",
        "push_sent",
        "answer_accepted",
        "fraud_reported",
        "answer_refused",
    ] {
        assert!(got.contains(want), "{want} missing: {t:#?}");
    }
    let refused = t.iter().find(|r| r.action == "answer_refused").unwrap();
    assert!(
        refused.detail.starts_with("failed_precondition"),
        "{refused:?}"
    );

    // The guard now refuses alice's prompts (muted after the fraud report).
    let muted = h
        .challenges()
        .create_challenge(h.req(Harness::login_request("alice", ENTER, 0)))
        .await;
    assert_eq!(status_of(muted).code(), Code::ResourceExhausted);
    h.enrollment()
        .revoke_device(h.req(pb::RevokeDeviceRequest {
            device_id: phone.device_id().into(),
        }))
        .await
        .unwrap();

    let by_user = pb::ListAuditRecordsRequest {
        user_id: "alice".into(),
        page_size: 2,
        ..Default::default()
    };
    let all = trail_of_at_least(&h, by_user.clone(), 13).await;
    let got: HashSet<&str> = actions(&all).into_iter().collect();
    for want in [
        "enrollment_started",
        "device_enrolled",
        "challenge_refused",
        "device_revoked",
        "push_sent",
    ] {
        assert!(got.contains(want), "{want} missing: {all:#?}");
    }
    // Pages of 2 in order of time, nothing twice.
    let mut seen = HashSet::new();
    for w in all.windows(2) {
        assert!(w[0].at_unix_ms <= w[1].at_unix_ms);
    }
    for r in &all {
        assert!(seen.insert((r.chain.clone(), r.seq)), "{r:?} twice");
        assert_eq!(r.tenant_id, "dev");
    }
    // A time window.
    let first = all[0].at_unix_ms;
    let window = trail(
        &h,
        pb::ListAuditRecordsRequest {
            user_id: "alice".into(),
            start_unix_ms: first,
            end_unix_ms: first + 1,
            ..Default::default()
        },
    )
    .await;
    assert!(!window.is_empty() && window.iter().all(|r| r.at_unix_ms == first));

    // No secret on the trail: not the push token, not an API key.
    let text = format!("{all:?}");
    assert!(!text.contains(push_token), "push token on the trail");
    assert!(!text.contains(&h.key), "API key on the trail");

    // Another tenant sees none of it.
    let theirs = AuditServiceClient::new(h.channel.clone())
        .list_audit_records(h.req_other(by_user))
        .await
        .unwrap()
        .into_inner();
    assert!(theirs.records.is_empty(), "{:?}", theirs.records);

    // Bad queries get a clear INVALID_ARGUMENT.
    for bad in [
        pb::ListAuditRecordsRequest {
            page_token: "nonsense".into(),
            ..Default::default()
        },
        pb::ListAuditRecordsRequest {
            start_unix_ms: 10,
            end_unix_ms: 5,
            ..Default::default()
        },
        pb::ListAuditRecordsRequest {
            challenge_id: "not-an-id".into(),
            ..Default::default()
        },
        pb::ListAuditRecordsRequest {
            page_size: 5000,
            ..Default::default()
        },
    ] {
        let r = AuditServiceClient::new(h.channel.clone())
            .list_audit_records(h.req(bad))
            .await;
        assert_eq!(status_of(r).code(), Code::InvalidArgument);
    }

    // Administrative acts land on the tenant's trail.
    let key = admin_key(h.data_dir());
    let created = TenantAdminServiceClient::new(h.channel.clone())
        .create_tenant(
            sesame::cli::authed(
                &key,
                apb::CreateTenantRequest {
                    tenant_id: "audited-bank".into(),
                    ..Default::default()
                },
            )
            .unwrap(),
        )
        .await
        .unwrap()
        .into_inner();
    let new_key = created.api_key;
    let new_trail = {
        let mut t = Vec::new();
        for _ in 0..100 {
            t = AuditServiceClient::new(h.channel.clone())
                .list_audit_records(
                    sesame::cli::authed(&new_key, pb::ListAuditRecordsRequest::default()).unwrap(),
                )
                .await
                .unwrap()
                .into_inner()
                .records;
            if !t.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        t
    };
    assert_eq!(actions(&new_trail), ["tenant_created"]);
    assert_eq!(new_trail[0].actor, "admin");

    // The operator's check, by the real binary, over the admin API.
    let data_dir = h.data_dir().display().to_string();
    let out = sesame_cli(&[
        "audit",
        "verify",
        "--server",
        &h.url,
        "--data-dir",
        &data_dir,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("audit trail intact"), "{stderr}");

    // An export verifies too; the same export edited does not.
    let out = sesame_cli(&[
        "audit",
        "export",
        "--server",
        &h.url,
        "--data-dir",
        &data_dir,
    ]);
    assert!(out.status.success());
    let export = String::from_utf8(out.stdout).unwrap();
    assert_eq!(export.lines().count(), 13, "{export}");
    let file = h.data_dir().join("export.jsonl");
    std::fs::write(&file, &export).unwrap();
    let out = sesame_cli(&["audit", "verify", "--file", &file.display().to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let edited = export.replacen("verdict: approved", "verdict: denied", 1);
    assert_ne!(edited, export);
    std::fs::write(&file, edited).unwrap();
    let out = sesame_cli(&["audit", "verify", "--file", &file.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("was edited"));
    h.shutdown().await;
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// One way of tampering with the audit table.
type Edit = Box<dyn FnOnce(&mut redb::Table<&'static [u8], &'static [u8]>)>;

type Audit = redb::TableDefinition<'static, &'static [u8], &'static [u8]>;
const AUDIT: Audit = redb::TableDefinition::new("audit");

fn key(chain: &str, seq: u64) -> Vec<u8> {
    let mut k = chain.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The longest chain in a stopped server's store, and its records.
fn longest_chain(db: &Path) -> (String, Vec<AuditRecord>) {
    use redb::ReadableTable;
    let db = redb::Database::open(db).unwrap();
    let txn = db.begin_read().unwrap();
    let table = txn.open_table(AUDIT).unwrap();
    let mut chains: std::collections::BTreeMap<String, Vec<AuditRecord>> = Default::default();
    for row in table.iter().unwrap() {
        let (_, v) = row.unwrap();
        let r: AuditRecord = serde_json::from_slice(v.value()).unwrap();
        chains.entry(r.chain.clone()).or_default().push(r);
    }
    chains.into_iter().max_by_key(|(_, v)| v.len()).unwrap()
}

/// Edits the audit table of a stopped server's store directly.
fn tamper(db: &Path, f: impl FnOnce(&mut redb::Table<&'static [u8], &'static [u8]>)) {
    let db = redb::Database::open(db).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(AUDIT).unwrap();
        f(&mut table);
    }
    txn.commit().unwrap();
}

fn put(t: &mut redb::Table<&'static [u8], &'static [u8]>, at: &[u8], r: &AuditRecord) {
    t.insert(at, serde_json::to_vec(r).unwrap().as_slice())
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_a_dropped_and_a_reordered_record_are_caught_in_the_store() {
    // A real server does some logins, then stops.
    let dir = tempfile::tempdir().unwrap();
    let port = common::tansu::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let server = spawn_server(dir.path(), port);
    let channel = wait_ready(&url).await;
    let api_key = std::fs::read_to_string(dir.path().join("dev-tenant.key"))
        .unwrap()
        .trim()
        .to_owned();
    for _ in 0..3 {
        let status = sesame::cli::demo::run(&sesame::cli::demo::DemoOptions {
            server: url.clone(),
            device_server: url.clone(),
            api_key: api_key.clone(),
            timeout: Duration::from_secs(20),
            verbose: false,
            inbox: None,
        })
        .await;
        assert!(status.is_ok(), "{status:?}");
    }
    drop(channel);
    stop(server);
    let db = dir.path().join("sesame.redb");
    let (chain, records) = longest_chain(&db);
    assert!(records.len() >= 6, "{records:#?}");

    // Three copies of the store, each tampered with one way.
    let cases: [(&str, Edit, &str); 3] = [
        (
            "edited",
            Box::new({
                let (chain, mut r) = (chain.clone(), records[2].clone());
                move |t| {
                    r.entry.detail = "verdict: approved".into();
                    put(t, &key(&chain, 2), &r);
                }
            }),
            "record 2 was edited",
        ),
        (
            "dropped",
            Box::new({
                let chain = chain.clone();
                move |t| {
                    t.remove(key(&chain, 3).as_slice()).unwrap();
                }
            }),
            "record 3 is missing",
        ),
        (
            "reordered",
            Box::new({
                let (chain, a, b) = (chain.clone(), records[1].clone(), records[4].clone());
                move |t| {
                    put(t, &key(&chain, 1), &b);
                    put(t, &key(&chain, 4), &a);
                }
            }),
            "does not follow the record before it",
        ),
    ];
    for (name, edit, expect) in cases {
        let copy = tempfile::tempdir().unwrap();
        for f in ["sesame.redb", "admin.key", "dev-tenant.key"] {
            std::fs::copy(dir.path().join(f), copy.path().join(f)).unwrap();
        }
        tamper(&copy.path().join("sesame.redb"), edit);
        let port = common::tansu::free_port();
        let url = format!("http://127.0.0.1:{port}");
        let server = spawn_server(copy.path(), port);
        wait_ready(&url).await;
        let data_dir = copy.path().display().to_string();
        let out = sesame_cli(&["audit", "verify", "--server", &url, "--data-dir", &data_dir]);
        stop(server);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{name}: {stdout}");
        assert!(
            stdout.contains(&chain) && stdout.contains(expect),
            "{name}: wanted {expect:?} in\n{stdout}"
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("TAMPERED"));
    }

    // The untouched store still verifies.
    let port = common::tansu::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let server = spawn_server(dir.path(), port);
    wait_ready(&url).await;
    let data_dir = dir.path().display().to_string();
    let out = sesame_cli(&["audit", "verify", "--server", &url, "--data-dir", &data_dir]);
    stop(server);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
