//! `sesame demo`: one whole login against a running server, playing both the
//! tenant (an identity server) and the user's phone. Exits 0 on `APPROVED`.

use std::time::Duration;

use anyhow::Context;
use sesame_core::crypto::KeyAlgorithm;
use sesame_core::model::{ChallengeStatus, Decision, Platform};
use sesame_device_sim::{Answer, SimDevice};
use sesame_grpc::convert;
use sesame_proto::tenant::v1 as pb;
use sesame_proto::tenant::v1::challenge_service_client::ChallengeServiceClient;
use sesame_proto::tenant::v1::enrollment_service_client::EnrollmentServiceClient;
use sesame_proto::types::v1 as types;

use super::{authed, random_suffix};

pub struct DemoOptions {
    /// The tenant API (the challenge role).
    pub server: String,
    /// The device API (the verifier role); the same URL in one process.
    pub device_server: String,
    pub api_key: String,
    pub timeout: Duration,
    /// Print each step.
    pub verbose: bool,
    /// Where the phone reads pushes when they go through APNs/FCM
    /// (`sesame simulate-push`'s inbox); `None`: the server's own simulator.
    pub inbox: Option<String>,
}

/// Runs the demo login; returns the final status.
pub async fn run(opts: &DemoOptions) -> anyhow::Result<ChallengeStatus> {
    let say = |s: String| {
        if opts.verbose {
            println!("{s}");
        }
    };
    let channel = sesame_device_sim::connect(&opts.server)
        .await
        .with_context(|| format!("connecting to {}", opts.server))?;
    let user = format!("demo-user-{}", random_suffix());

    let enrollment = EnrollmentServiceClient::new(channel.clone())
        .begin_enrollment(authed(
            &opts.api_key,
            pb::BeginEnrollmentRequest {
                user_id: user.clone(),
                ttl_seconds: 0,
            },
        )?)
        .await
        .context("BeginEnrollment")?
        .into_inner();
    say(format!(
        "tenant: enrollment started for {user}\n        QR: {}",
        enrollment.enrollment_uri
    ));

    let push_token = super::simulated_push_token();
    let device_channel = if opts.device_server == opts.server {
        channel.clone()
    } else {
        sesame_device_sim::connect(&opts.device_server)
            .await
            .with_context(|| format!("connecting to {}", opts.device_server))?
    };
    let device = SimDevice::enroll(
        device_channel,
        &opts.device_server,
        &enrollment.enrollment_token,
        KeyAlgorithm::EcdsaP256Sha256,
        Platform::Android,
        &push_token,
        "Demo phone",
    )
    .await
    .context("CompleteEnrollment")?;
    say(format!(
        "phone:  enrolled as {} (ECDSA P-256 key)",
        device.device_id()
    ));
    let mut inbox = match &opts.inbox {
        None => device.push_inbox().await.ok(),
        Some(url) => match sesame_device_sim::connect(url).await {
            Ok(ch) => device.push_inbox_at(ch).await.ok(),
            Err(_) => None,
        },
    };

    let mut tenant = ChallengeServiceClient::new(channel.clone());
    let created = tenant
        .create_challenge(authed(
            &opts.api_key,
            pb::CreateChallengeRequest {
                user_id: user.clone(),
                context: Some(types::ChallengeContext {
                    client_name: "Sesame demo bank".into(),
                    action: types::Action::Transaction as i32,
                    transaction: Some(types::Transaction {
                        amount: "42.00".into(),
                        currency: "EUR".into(),
                        payee: "ACME Coffee".into(),
                    }),
                    ip_address: "127.0.0.1".into(),
                    location: "Brussels, BE".into(),
                    binding_message: String::new(),
                }),
                options: Some(pb::ChallengeOptions {
                    ttl_seconds: 0,
                    number_match: types::NumberMatchMode::Enter as i32,
                    idempotency_key: String::new(),
                    replace_pending: false,
                }),
            },
        )?)
        .await
        .context("CreateChallenge")?
        .into_inner()
        .challenge
        .context("CreateChallenge returned no challenge")?;
    say(format!(
        "tenant: challenge {} created; the sign-in page shows the number {}",
        created.challenge_id, created.number_match_code
    ));
    let mut watch = tenant
        .watch_challenge(authed(
            &opts.api_key,
            pb::WatchChallengeRequest {
                challenge_id: created.challenge_id.clone(),
            },
        )?)
        .await
        .context("WatchChallenge")?
        .into_inner();

    // Wait for the push; fall back to polling, as a real app does when a push is lost.
    let pushed = match inbox.as_mut() {
        Some(s) => tokio::time::timeout(Duration::from_secs(5), s.message())
            .await
            .ok()
            .and_then(|r| r.ok())
            .flatten(),
        None => None,
    };
    let challenge_id = match pushed {
        Some(p) => {
            say(format!(
                "phone:  push received: {:?} (challenge {})",
                p.alert_title, p.challenge_id
            ));
            p.challenge_id
        }
        None => {
            say("phone:  no push within 5 s; polling".into());
            device
                .pending()
                .await?
                .into_iter()
                .find(|c| c.challenge_id == created.challenge_id)
                .map(|c| c.challenge_id)
                .context("the challenge is not in the device's pending list")?
        }
    };
    let details = device
        .details(&challenge_id)
        .await
        .context("GetChallengeDetails")?;
    if let Some(ctx) = &details.context {
        let tx = ctx
            .transaction
            .as_ref()
            .map(|t| format!(" — pay {} {} to {}", t.amount, t.currency, t.payee))
            .unwrap_or_default();
        say(format!(
            "phone:  shows \"{}\"{tx}, from {} ({})",
            ctx.client_name, ctx.ip_address, ctx.location
        ));
    }
    let resp = device
        .respond(
            &details,
            &Answer {
                decision: Decision::Approve,
                number: created.number_match_code.clone(),
            },
        )
        .await
        .context("Respond")?;
    say(format!(
        "phone:  user typed {} and approved; signed answer accepted ({:?})",
        created.number_match_code,
        types::ChallengeStatus::try_from(resp.status).unwrap_or_default()
    ));

    let deadline = tokio::time::Instant::now() + opts.timeout;
    loop {
        let msg = tokio::time::timeout_at(deadline, watch.message())
            .await
            .context("timed out waiting for the verdict")?
            .context("WatchChallenge stream")?;
        let Some(c) = msg else {
            anyhow::bail!("watch stream ended without a final state");
        };
        let status = convert::status_in(c.status).context("unknown status")?;
        if status.is_final() {
            return Ok(status);
        }
    }
}
