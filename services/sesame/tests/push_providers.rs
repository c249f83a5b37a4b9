//! The whole login with the dispatcher sending through the real APNs and
//! FCM clients to the simulators (TLS, HTTP/2, provider tokens, OAuth):
//! an iPhone and an Android phone of one user, a dead token that disables
//! push for that device only while the user's other devices keep working,
//! and re-enabling it with a signed push-token update.

mod common;

use std::time::Duration;

use common::*;
use sesame::config::Config;
use sesame_core::crypto::KeyAlgorithm;
use sesame_core::model::Platform;
use sesame_core::DeviceId;
use sesame_device_sim::SimDevice;
use sesame_proto::types::v1::ChallengeStatus as S;
use sesame_push_sim::bundle::Bundle;
use sesame_push_sim::DeviceState;

const IPHONE_A: &str = "aaaa0000aaaa0000aaaa0000aaaa0000aaaa0000aaaa0000aaaa0000aaaa0000";
const IPHONE_B: &str = "bbbb1111bbbb1111bbbb1111bbbb1111bbbb1111bbbb1111bbbb1111bbbb1111";
const IPHONE_A2: &str = "cccc2222cccc2222cccc2222cccc2222cccc2222cccc2222cccc2222cccc2222";
const PIXEL: &str = "dGhpcyBpcyBhbiBGQ00:APA91bE-sim_token";

async fn pushed(bundle: &Bundle, token: &str) -> String {
    tokio::time::timeout(Duration::from_secs(10), bundle.control.inbox.recv(token))
        .await
        .expect("push within 10 s")
        .expect("inbox")
        .challenge_id
}

/// The simulators with two apps of `tenant`, and a server sending through
/// them with the configuration `sesame simulate-push` writes.
async fn start_with_simulators(tenant: &str) -> (tempfile::TempDir, Bundle, Harness) {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = Bundle::start(dir.path(), tenant, "127.0.0.1:0", "127.0.0.1:0")
        .await
        .expect("simulators");
    let apps: Config = toml::from_str(&bundle.config_toml).expect("push-apps.toml");
    let h = Harness::start_configured(|c| {
        c.push_provider = apps.push_provider;
        c.push_apps = apps.push_apps;
    })
    .await;
    (dir, bundle, h)
}

#[tokio::test]
async fn login_through_real_apns_and_fcm_clients_with_a_dead_token() {
    let (_dir, bundle, h) = start_with_simulators("dev").await;

    let a = h
        .enroll_with("alice", KeyAlgorithm::EcdsaP256Sha256, IPHONE_A)
        .await;
    let b = h
        .enroll_with("alice", KeyAlgorithm::EcdsaP256Sha256, IPHONE_B)
        .await;
    let token = h.begin("alice").await.enrollment_token;
    let pixel = SimDevice::enroll(
        h.channel.clone(),
        &h.url,
        &token,
        KeyAlgorithm::EcdsaP256Sha256,
        Platform::Android,
        PIXEL,
        "pixel",
    )
    .await
    .expect("android enrollment");
    for (d, app) in [(&a, "dev-ios"), (&b, "dev-ios"), (&pixel, "dev-android")] {
        let rec = h
            .storage
            .get_device(&DeviceId::parse(d.device_id()).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            rec.push_app, app,
            "tied to the tenant's only app for its platform"
        );
    }

    // Apple says iPhone A's token is gone.
    bundle
        .control
        .set_device(IPHONE_A, DeviceState::Unregistered);
    let c = h.create("alice", ENTER, 0).await;
    assert_eq!(pushed(&bundle, IPHONE_B).await, c.challenge_id);
    assert_eq!(pushed(&bundle, PIXEL).await, c.challenge_id);
    let d = details(&b, &c.challenge_id).await;
    let r = b.respond(&d, &approve(&c.number_match_code)).await.unwrap();
    assert_eq!(r.status, st(S::Approved));

    // Push is disabled for A only; it can still poll.
    let a_id = DeviceId::parse(a.device_id()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h
        .storage
        .get_device(&a_id)
        .await
        .unwrap()
        .unwrap()
        .push_enabled
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead token not applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(bundle.control.count("Unregistered"), 1);
    let c2 = h.create("alice", ENTER, 0).await;
    assert_eq!(pushed(&bundle, IPHONE_B).await, c2.challenge_id);
    assert_eq!(pushed(&bundle, PIXEL).await, c2.challenge_id);
    assert_eq!(
        bundle.control.count("Unregistered"),
        1,
        "no push to the dead token"
    );
    assert!(a
        .pending()
        .await
        .unwrap()
        .iter()
        .any(|p| p.challenge_id == c2.challenge_id));

    // A registers a new token (signed): pushes reach it again.
    let mut a = a;
    a.update_push_token(IPHONE_A2).await.unwrap();
    let c3 = h.create("alice", ENTER, 0).await;
    assert_eq!(pushed(&bundle, IPHONE_A2).await, c3.challenge_id);
    let d = details(&pixel, &c3.challenge_id).await;
    let r = pixel
        .respond(&d, &approve(&c3.number_match_code))
        .await
        .unwrap();
    assert_eq!(r.status, st(S::Approved));

    // One provider token, presented once on each of the app's two HTTP/2
    // connections; one OAuth token.
    let accepted = bundle.control.count("provider_token_accepted");
    assert!((1..=2).contains(&accepted), "{accepted}");
    assert_eq!(bundle.control.count("token_issued"), 1);
    assert!(bundle.control.count("success") >= 5);
    h.shutdown().await;
}

#[tokio::test]
async fn enrollment_names_a_push_app_of_its_own_tenant_only() {
    let (_dir, _bundle, h) = start_with_simulators("other-bank").await;
    // The dev tenant has no app: enrollment says so and consumes nothing.
    let token = h.begin("alice").await.enrollment_token;
    let err = SimDevice::enroll(
        h.channel.clone(),
        &h.url,
        &token,
        KeyAlgorithm::EcdsaP256Sha256,
        Platform::Ios,
        IPHONE_A,
        "x",
    )
    .await
    .err()
    .expect("refused");
    let msg = format!("{err:?}");
    assert!(
        msg.contains("push_app") && msg.contains("no push app"),
        "{msg}"
    );
    h.shutdown().await;
}
