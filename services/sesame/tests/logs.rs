#![allow(clippy::unwrap_used)]
//! What the real `sesame serve` writes to its log: a warning when it
//! serves plaintext off loopback, none on loopback, and, at debug level
//! through a whole login, no push token and no API-key secret.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::tansu::free_port;
use common::{approve, wait_ready};
use sesame_core::crypto::KeyAlgorithm;
use sesame_core::model::Platform;
use sesame_device_sim::SimDevice;
use sesame_proto::tenant::v1 as pb;
use sesame_proto::tenant::v1::challenge_service_client::ChallengeServiceClient;
use sesame_proto::tenant::v1::enrollment_service_client::EnrollmentServiceClient;

fn serve(dir: &Path, listen: &str, log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sesame"))
        .args(["serve", "--listen", listen, "--data-dir"])
        .arg(dir)
        .env("SESAME_LOG", "debug")
        .env("SESAME_ADMIN_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_off_loopback_is_warned_and_logs_carry_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let port = free_port();
    let server = serve(&dir.path().join("data"), &format!("0.0.0.0:{port}"), &log);
    let url = format!("http://127.0.0.1:{port}");
    let channel = wait_ready(&url).await;
    let key = std::fs::read_to_string(dir.path().join("data/dev-tenant.key"))
        .unwrap()
        .trim()
        .to_owned();
    fn authed<T>(key: &str, m: T) -> tonic::Request<T> {
        sesame::cli::authed(key, m).unwrap()
    }

    // A whole login, with a push token we can look for.
    let push_token = "tok-must-not-be-logged-7f3a9c";
    let token = EnrollmentServiceClient::new(channel.clone())
        .begin_enrollment(authed(
            &key,
            pb::BeginEnrollmentRequest {
                user_id: "ivy".into(),
                ttl_seconds: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .enrollment_token;
    let phone = SimDevice::enroll(
        channel.clone(),
        &url,
        &token,
        KeyAlgorithm::EcdsaP256Sha256,
        Platform::Ios,
        push_token,
        "",
    )
    .await
    .unwrap();
    let c = ChallengeServiceClient::new(channel.clone())
        .create_challenge(authed(
            &key,
            common::Harness::login_request("ivy", common::ENTER, 0),
        ))
        .await
        .unwrap()
        .into_inner()
        .challenge
        .unwrap();
    let d = common::details(&phone, &c.challenge_id).await;
    phone
        .respond(&d, &approve(&c.number_match_code))
        .await
        .unwrap();
    drop(channel);
    stop(server);

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("PLAINTEXT on a non-loopback address"),
        "no plaintext warning:\n{text}"
    );
    assert!(text.contains("DEBUG"), "not a debug-level log:\n{text}");
    assert!(!text.contains(push_token), "a push token in the log");
    // `sk_<16 hex>_<secret>`; the secret itself may hold '_'.
    let secret = &key["sk_0123456789abcdef_".len()..];
    assert!(secret.len() >= 20, "{key}");
    assert!(!text.contains(secret), "the API key's secret in the log");
    assert!(!text.contains(&token), "an enrollment token in the log");

    // On loopback: no warning.
    let log = dir.path().join("loopback.log");
    let port = free_port();
    let server = serve(&dir.path().join("data"), &format!("127.0.0.1:{port}"), &log);
    wait_ready(&format!("http://127.0.0.1:{port}")).await;
    stop(server);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("PLAINTEXT"), "{text}");
}
