//! `sesame enroll` and `sesame challenge`: what an identity server does, from
//! the command line, for trying Sesame by hand with `sesame device`.

use anyhow::Context;
use sesame_grpc::convert;
use sesame_proto::tenant::v1 as pb;
use sesame_proto::tenant::v1::challenge_service_client::ChallengeServiceClient;
use sesame_proto::tenant::v1::enrollment_service_client::EnrollmentServiceClient;
use sesame_proto::types::v1 as types;

use super::authed;

pub async fn enroll(server: &str, api_key: &str, user: &str) -> anyhow::Result<()> {
    let channel = sesame_device_sim::connect(server).await?;
    let r = EnrollmentServiceClient::new(channel)
        .begin_enrollment(authed(
            api_key,
            pb::BeginEnrollmentRequest {
                user_id: user.to_owned(),
                ttl_seconds: 0,
            },
        )?)
        .await
        .context("BeginEnrollment")?
        .into_inner();
    println!("enrollment token: {}", r.enrollment_token);
    println!("enrollment URI (show as QR code): {}", r.enrollment_uri);
    println!("next: sesame device enroll --uri '{}'", r.enrollment_uri);
    Ok(())
}

pub struct ChallengeArgs {
    pub user: String,
    pub client_name: String,
    pub amount: Option<String>,
    pub currency: String,
    pub payee: String,
    pub mode: types::NumberMatchMode,
    pub ttl_seconds: u32,
}

/// Creates a challenge, prints the number for the "sign-in page", and waits
/// for the verdict. Returns the final status name.
pub async fn challenge(server: &str, api_key: &str, a: ChallengeArgs) -> anyhow::Result<String> {
    let channel = sesame_device_sim::connect(server).await?;
    let mut client = ChallengeServiceClient::new(channel);
    let (action, transaction) = match a.amount {
        Some(amount) => (
            types::Action::Transaction,
            Some(types::Transaction {
                amount,
                currency: a.currency,
                payee: a.payee,
            }),
        ),
        None => (types::Action::Login, None),
    };
    let c = client
        .create_challenge(authed(
            api_key,
            pb::CreateChallengeRequest {
                user_id: a.user,
                context: Some(types::ChallengeContext {
                    client_name: a.client_name,
                    action: action as i32,
                    transaction,
                    ..Default::default()
                }),
                options: Some(pb::ChallengeOptions {
                    ttl_seconds: a.ttl_seconds,
                    number_match: a.mode as i32,
                    idempotency_key: String::new(),
                    replace_pending: false,
                }),
            },
        )?)
        .await
        .context("CreateChallenge")?
        .into_inner()
        .challenge
        .context("no challenge in the response")?;
    println!(
        "challenge {} sent to {} device(s)",
        c.challenge_id, c.devices_notified
    );
    if !c.number_match_code.is_empty() {
        println!("the sign-in page shows: {}", c.number_match_code);
    }
    let mut stream = client
        .watch_challenge(authed(
            api_key,
            pb::WatchChallengeRequest {
                challenge_id: c.challenge_id.clone(),
            },
        )?)
        .await?
        .into_inner();
    while let Some(update) = stream.message().await? {
        let status = convert::status_in(update.status).context("unknown status")?;
        println!("status: {}", status.as_str());
        if status.is_final() {
            return Ok(status.as_str().to_owned());
        }
    }
    anyhow::bail!("watch stream ended without a final state")
}
