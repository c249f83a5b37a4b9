//! Durability: SIGKILL the real `sesame serve` process mid-run, restart it on
//! the same data directory, and find every enrollment and every verdict
//! whose RPC had been answered OK before the kill.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sesame_core::crypto::KeyAlgorithm;
use sesame_core::model::{Decision, Platform};
use sesame_device_sim::{Answer, SimDevice};
use sesame_proto::tenant::v1 as pb;
use sesame_proto::tenant::v1::challenge_service_client::ChallengeServiceClient;
use sesame_proto::tenant::v1::enrollment_service_client::EnrollmentServiceClient;
use sesame_proto::types::v1 as types;

mod common;

use common::tansu::free_port;
use common::{spawn_server, wait_ready};

fn authed<T>(key: &str, m: T) -> tonic::Request<T> {
    sesame::cli::authed(key, m).expect("request")
}

#[derive(Default)]
struct Acknowledged {
    devices: Vec<(String, String)>,
    verdicts: Vec<(String, i32)>,
}

async fn worker(url: String, key: String, n: usize, acked: Arc<Mutex<Acknowledged>>) {
    let Ok(channel) = sesame_device_sim::connect(&url).await else {
        return;
    };
    let auth = |m| authed(&key, m);
    let mut enrollment = EnrollmentServiceClient::new(channel.clone());
    let mut challenges = ChallengeServiceClient::new(channel.clone());
    for i in 0.. {
        let user = format!("user-{n}-{i}");
        let Ok(r) = enrollment
            .begin_enrollment(auth(pb::BeginEnrollmentRequest {
                user_id: user.clone(),
                ttl_seconds: 0,
            }))
            .await
        else {
            return;
        };
        let Ok(phone) = SimDevice::enroll(
            channel.clone(),
            &url,
            &r.into_inner().enrollment_token,
            KeyAlgorithm::EcdsaP256Sha256,
            Platform::Ios,
            "t",
            "",
        )
        .await
        else {
            return;
        };
        acked
            .lock()
            .expect("lock")
            .devices
            .push((user.clone(), phone.device_id().to_owned()));
        let request = pb::CreateChallengeRequest {
            user_id: user,
            context: Some(types::ChallengeContext {
                client_name: "crash test".into(),
                action: types::Action::Login as i32,
                ..Default::default()
            }),
            options: Some(pb::ChallengeOptions {
                number_match: types::NumberMatchMode::None as i32,
                ..Default::default()
            }),
        };
        let Ok(c) = challenges.create_challenge(authed(&key, request)).await else {
            return;
        };
        let c = c.into_inner().challenge.expect("challenge");
        let Ok(d) = phone.details(&c.challenge_id).await else {
            return;
        };
        let decision = if i % 2 == 0 {
            Decision::Approve
        } else {
            Decision::Deny
        };
        let Ok(resp) = phone
            .respond(
                &d,
                &Answer {
                    decision,
                    number: String::new(),
                },
            )
            .await
        else {
            return;
        };
        acked
            .lock()
            .expect("lock")
            .verdicts
            .push((c.challenge_id, resp.status));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_loses_no_acknowledged_enrollment_or_verdict() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut server = spawn_server(dir.path(), port);
    wait_ready(&url).await;
    let key_file = dir.path().join("dev-tenant.key");
    let key = std::fs::read_to_string(&key_file)
        .expect("dev key")
        .trim()
        .to_owned();

    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    let workers: Vec<_> = (0..4)
        .map(|n| tokio::spawn(worker(url.clone(), key.clone(), n, acked.clone())))
        .collect();
    // Let real traffic build up, then kill without warning, mid-flight.
    for _ in 0..400 {
        if acked.lock().expect("lock").verdicts.len() >= 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    server.kill().expect("SIGKILL");
    server.wait().expect("reap");
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(10), w).await;
    }
    let acked = std::mem::take(&mut *acked.lock().expect("lock"));
    assert!(
        acked.verdicts.len() >= 10,
        "workload ran before the kill: {}",
        acked.verdicts.len()
    );

    // Restart on the same data directory.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut server = spawn_server(dir.path(), port);
    let channel = wait_ready(&url).await;
    let key_after = std::fs::read_to_string(&key_file)
        .expect("dev key")
        .trim()
        .to_owned();
    assert_eq!(key_after, key, "the development key survives a restart");
    let mut enrollment = EnrollmentServiceClient::new(channel.clone());
    let mut challenges = ChallengeServiceClient::new(channel);
    for (user, device) in &acked.devices {
        let list = enrollment
            .list_devices(authed(
                &key,
                pb::ListDevicesRequest {
                    user_id: user.clone(),
                },
            ))
            .await
            .expect("list devices")
            .into_inner();
        assert!(
            list.devices
                .iter()
                .any(|d| &d.device_id == device && !d.revoked),
            "enrolled device {device} of {user} lost"
        );
    }
    for (id, status) in &acked.verdicts {
        let c = challenges
            .get_challenge(authed(
                &key,
                pb::GetChallengeRequest {
                    challenge_id: id.clone(),
                },
            ))
            .await
            .expect("get challenge")
            .into_inner();
        assert_eq!(c.status, *status, "verdict of {id} lost or changed");
    }
    println!(
        "after SIGKILL and restart: {} devices and {} verdicts all found",
        acked.devices.len(),
        acked.verdicts.len()
    );
    server.kill().expect("stop");
    let _ = server.wait();
}

/// The README's quick start, with the real binaries: `sesame serve` in a
/// fresh directory, then `sesame demo --server URL` from the same directory
/// finds the development key by itself and reaches APPROVED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_start_demo_reaches_approved() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut server = Command::new(env!("CARGO_BIN_EXE_sesame"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(dir.path())
        .env("SESAME_LOG", "warn")
        .env("SESAME_ADMIN_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn sesame serve");
    wait_ready(&url).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sesame"))
        .args(["demo", "--server", &url])
        .current_dir(dir.path())
        .env_remove("SESAME_API_KEY")
        .output()
        .await
        .expect("run sesame demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("push received"), "{stdout}");
    assert!(stdout.trim_end().ends_with("verdict: APPROVED"), "{stdout}");
    // SIGTERM drains and exits cleanly.
    let pid = server.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    let status = server.wait().expect("wait");
    assert!(status.success(), "serve exited with {status}");
}
