//! A simulated phone, doing what the authenticator app does: generate a
//! device key, enroll with a one-time token and a proof of possession,
//! receive pushes (from the built-in simulator's inbox) or poll, recompute
//! the hash of what it displays, and sign its answer over the canonical
//! payload.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sesame_core::crypto::{KeyAlgorithm, SigningKey};
use sesame_core::model::{Decision, Platform};
use sesame_core::payload::{self, AnswerPayload};
use sesame_core::time::now_ms;
use sesame_grpc::convert;
use sesame_proto::device::v1 as pb;
use sesame_proto::device::v1::device_service_client::DeviceServiceClient;
use sesame_proto::simulator::v1 as sim;
use sesame_proto::simulator::v1::push_inbox_client::PushInboxClient;
use tonic::transport::Channel;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("server refused: {} ({:?})", .0.message(), .0.code())]
    Rpc(#[from] tonic::Status),
    #[error("cannot connect: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("{0}")]
    Protocol(String),
    #[error("key file: {0}")]
    KeyFile(String),
}

pub type Result<T> = std::result::Result<T, SimError>;

/// Connects to a Sesame gRPC endpoint: `http://host:port`, or
/// `https://host:port` trusting `SESAME_TLS_CA` (else the public roots) and
/// presenting `SESAME_TLS_CLIENT_CERT` / `SESAME_TLS_CLIENT_KEY` if set.
pub async fn connect(url: &str) -> Result<Channel> {
    connect_with(url, &sesame_tls::ClientTls::from_env()).await
}

/// [`connect`] with explicit TLS settings.
pub async fn connect_with(url: &str, tls: &sesame_tls::ClientTls) -> Result<Channel> {
    Ok(tls
        .endpoint(url)
        .map_err(|e| SimError::Protocol(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?)
}

/// Splits `sesame://enroll?v=1&url=...&token=...` into (device API URL, token).
pub fn parse_enrollment_uri(uri: &str) -> Result<(String, String)> {
    let query = uri
        .strip_prefix("sesame://enroll?")
        .ok_or_else(|| SimError::Protocol("not a sesame://enroll URI".into()))?;
    let (mut url, mut token, mut version) = (None, None, None);
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v)?;
        match k {
            "url" => url = Some(v),
            "token" => token = Some(v),
            "v" => version = Some(v),
            _ => {}
        }
    }
    if version.as_deref() != Some("1") {
        return Err(SimError::Protocol(
            "unsupported enrollment URI version".into(),
        ));
    }
    match (url, token) {
        (Some(u), Some(t)) if !u.is_empty() && !t.is_empty() => Ok((u, t)),
        _ => Err(SimError::Protocol(
            "enrollment URI lacks url or token".into(),
        )),
    }
}

fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .ok_or_else(|| SimError::Protocol("truncated %-escape in URI".into()))?;
            out.push(
                u8::from_str_radix(hex, 16)
                    .map_err(|_| SimError::Protocol("bad %-escape in URI".into()))?,
            );
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| SimError::Protocol("URI is not UTF-8".into()))
}

/// What the simulated phone keeps between runs (its "secure storage").
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceIdentity {
    pub server_url: String,
    pub device_id: String,
    pub tenant_id: String,
    pub user_id: String,
    pub key_algorithm: KeyAlgorithm,
    /// Hex of the private key; a real phone keeps it in its secure element.
    pub secret_hex: String,
    pub push_token: String,
}

impl DeviceIdentity {
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SimError::KeyFile(format!("cannot read {}: {e}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| {
            SimError::KeyFile(format!("{} is not a device key file: {e}", path.display()))
        })
    }

    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        let text =
            serde_json::to_string_pretty(self).map_err(|e| SimError::KeyFile(e.to_string()))?;
        write_private(path, text.as_bytes())
            .map_err(|e| SimError::KeyFile(format!("cannot write {}: {e}", path.display())))
    }
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path)?;
    f.write_all(bytes)
}

pub struct SimDevice {
    pub identity: DeviceIdentity,
    key: SigningKey,
    client: DeviceServiceClient<Channel>,
    channel: Channel,
}

/// How the simulated phone answers.
#[derive(Debug, Clone)]
pub struct Answer {
    pub decision: Decision,
    /// The number the user typed or picked ("" for mode NONE or a denial).
    pub number: String,
}

impl SimDevice {
    /// Enrolls a new device with a fresh key.
    pub async fn enroll(
        channel: Channel,
        server_url: &str,
        token: &str,
        alg: KeyAlgorithm,
        platform: Platform,
        push_token: &str,
        display_name: &str,
    ) -> Result<Self> {
        let key = SigningKey::generate(alg);
        let public_key = key.public_key_bytes();
        let proof = key.sign(&payload::enrollment_payload(
            token,
            alg,
            &public_key,
            platform,
            push_token,
        ));
        let mut client = DeviceServiceClient::new(channel.clone());
        let resp = client
            .complete_enrollment(pb::CompleteEnrollmentRequest {
                enrollment_token: token.to_owned(),
                key_algorithm: convert::key_algorithm_out(alg),
                public_key,
                platform: convert::platform_out(platform),
                push_token: push_token.to_owned(),
                proof,
                display_name: display_name.to_owned(),
                push_app: String::new(),
            })
            .await?
            .into_inner();
        let identity = DeviceIdentity {
            server_url: server_url.to_owned(),
            device_id: resp.device_id,
            tenant_id: resp.tenant_id,
            user_id: resp.user_id,
            key_algorithm: alg,
            secret_hex: hex::encode(key.to_secret_bytes()),
            push_token: push_token.to_owned(),
        };
        Ok(SimDevice {
            identity,
            key,
            client,
            channel,
        })
    }

    /// Restores a device from its key file.
    pub fn from_identity(identity: DeviceIdentity, channel: Channel) -> Result<Self> {
        let secret = hex::decode(&identity.secret_hex)
            .map_err(|_| SimError::KeyFile("secret_hex is not hex".into()))?;
        let key = SigningKey::from_secret_bytes(identity.key_algorithm, &secret)
            .map_err(|e| SimError::KeyFile(e.to_string()))?;
        Ok(SimDevice {
            identity,
            key,
            client: DeviceServiceClient::new(channel.clone()),
            channel,
        })
    }

    pub fn device_id(&self) -> &str {
        &self.identity.device_id
    }

    /// A fresh signed `DeviceAuth` for one request.
    pub fn auth(&self, method: &str, args: &[&str]) -> pb::DeviceAuth {
        let ts = now_ms();
        let nonce = sesame_core::ids::random_bytes::<16>().to_vec();
        let msg =
            payload::device_request_payload(method, &self.identity.device_id, ts, &nonce, args);
        pb::DeviceAuth {
            device_id: self.identity.device_id.clone(),
            timestamp_unix_ms: ts,
            nonce,
            signature: self.key.sign(&msg),
        }
    }

    pub async fn pending(&self) -> Result<Vec<pb::ChallengeDetails>> {
        let auth = self.auth("ListPendingChallenges", &[]);
        Ok(self
            .client
            .clone()
            .list_pending_challenges(pb::ListPendingChallengesRequest { auth: Some(auth) })
            .await?
            .into_inner()
            .challenges)
    }

    pub async fn details(&self, challenge_id: &str) -> Result<pb::ChallengeDetails> {
        let auth = self.auth("GetChallengeDetails", &[challenge_id]);
        Ok(self
            .client
            .clone()
            .get_challenge_details(pb::GetChallengeDetailsRequest {
                auth: Some(auth),
                challenge_id: challenge_id.to_owned(),
            })
            .await?
            .into_inner())
    }

    pub async fn update_push_token(&mut self, token: &str) -> Result<()> {
        let auth = self.auth("UpdatePushToken", &[token]);
        self.client
            .update_push_token(pb::UpdatePushTokenRequest {
                auth: Some(auth),
                push_token: token.to_owned(),
            })
            .await?;
        self.identity.push_token = token.to_owned();
        Ok(())
    }

    /// Recomputes the hash of what it displays and refuses to sign if the
    /// server's differs (the app must sign what the user saw).
    pub fn displayed_context_hash(details: &pb::ChallengeDetails) -> Result<[u8; 32]> {
        let ctx = convert::context_in(details.context.clone())
            .map_err(|e| SimError::Protocol(format!("undisplayable context: {e:?}")))?;
        let hash = payload::context_hash(&ctx);
        if hash.as_slice() != details.context_hash.as_slice() {
            return Err(SimError::Protocol(
                "server's context hash differs from what is displayed; refusing to sign".into(),
            ));
        }
        Ok(hash)
    }

    /// Builds a signed answer without sending it (tests use it to replay or tamper).
    pub fn signed_answer(
        &self,
        details: &pb::ChallengeDetails,
        answer: &Answer,
    ) -> Result<pb::RespondRequest> {
        let hash = Self::displayed_context_hash(details)?;
        Ok(self.sign_answer_fields(&details.challenge_id, answer, &hash, now_ms()))
    }

    /// Signs exactly the given fields, trusting the caller (tests use it to
    /// sign what a misbehaving app would).
    pub fn sign_answer_fields(
        &self,
        challenge_id: &str,
        answer: &Answer,
        context_hash: &[u8],
        timestamp: i64,
    ) -> pb::RespondRequest {
        let msg = AnswerPayload {
            challenge_id,
            device_id: &self.identity.device_id,
            decision: answer.decision,
            number_match_answer: &answer.number,
            context_hash,
            timestamp,
        }
        .encode();
        pb::RespondRequest {
            device_id: self.identity.device_id.clone(),
            challenge_id: challenge_id.to_owned(),
            decision: convert::decision_out(answer.decision),
            number_match_answer: answer.number.clone(),
            context_hash: context_hash.to_vec(),
            timestamp_unix_ms: timestamp,
            signature: self.key.sign(&msg),
        }
    }

    pub async fn send_answer(&self, req: pb::RespondRequest) -> Result<pb::RespondResponse> {
        Ok(self.client.clone().respond(req).await?.into_inner())
    }

    pub async fn respond(
        &self,
        details: &pb::ChallengeDetails,
        answer: &Answer,
    ) -> Result<pb::RespondResponse> {
        let req = self.signed_answer(details, answer)?;
        self.send_answer(req).await
    }

    /// Opens this phone's push inbox on the built-in simulator.
    pub async fn push_inbox(&self) -> Result<tonic::Streaming<sim::Push>> {
        self.push_inbox_at(self.channel.clone()).await
    }

    /// Opens this phone's push inbox on another process (`sesame
    /// simulate-push`, where the APNs and FCM simulators deliver).
    pub async fn push_inbox_at(&self, channel: Channel) -> Result<tonic::Streaming<sim::Push>> {
        Ok(PushInboxClient::new(channel)
            .subscribe(sim::SubscribeRequest {
                push_token: self.identity.push_token.clone(),
            })
            .await?
            .into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrollment_uri_roundtrip() {
        let (url, token) = parse_enrollment_uri(
            "sesame://enroll?v=1&url=http%3A%2F%2F127.0.0.1%3A50051&token=et_abc-_",
        )
        .unwrap();
        assert_eq!(url, "http://127.0.0.1:50051");
        assert_eq!(token, "et_abc-_");
        assert!(parse_enrollment_uri("https://x").is_err());
        assert!(parse_enrollment_uri("sesame://enroll?v=2&url=a&token=b").is_err());
        assert!(parse_enrollment_uri("sesame://enroll?v=1&url=%G1&token=b").is_err());
    }
}
