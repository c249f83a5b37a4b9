//! Apple Push Notification service client: `POST /3/device/<token>` over
//! HTTP/2 and TLS, authenticated by an ES256 provider token (`.p8` key) or
//! a client certificate.
//!
//! Provider tokens follow Apple's two rules: refreshed before they are 60
//! minutes old (at 50), and never more than once per 20 minutes, or APNs
//! answers `TooManyProviderTokenUpdates` and the connection is useless for
//! a while. One token serves every connection of the app and is minted by
//! one task at a time. `ExpiredProviderToken` mints a new one and retries
//! once — unless the token is younger than 20 minutes, which means our
//! clock is off; then the push waits until a refresh is allowed.
//!
//! Every reason Apple documents is mapped to an outcome: delivered, dead
//! token, retry (`Retry-After` or the dispatcher's backoff with jitter),
//! misconfigured (credentials or topic: alarm), or failed (a request we
//! built wrong). An unknown reason is kept in the outcome and classified by
//! its status code.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use rand::RngCore;
use serde::Deserialize;
use sesame_core::time::UnixMillis;
use sesame_queue::PushJob;

use crate::http::{error_chain, h2_client, retry_after};
use crate::jwt::Es256Signer;
use crate::payload::{apns_payload, AlertText};
use crate::{metrics, PushConfigError, PushOutcome, TlsOptions};

pub const PRODUCTION_URL: &str = "https://api.push.apple.com";
pub const SANDBOX_URL: &str = "https://api.sandbox.push.apple.com";

/// A provider token is replaced once it is this old (Apple refuses it at 60 min).
pub const TOKEN_REFRESH_AFTER_MS: i64 = 50 * 60_000;
/// Apple refuses a new token sooner than this after the previous one.
pub const TOKEN_MIN_INTERVAL_MS: i64 = 20 * 60_000;

pub enum ApnsAuth {
    /// Token auth: the `.p8` key's PEM text, its key id and the team id.
    Token {
        p8_pem: String,
        key_id: String,
        team_id: String,
    },
    /// Certificate auth: the TLS client identity goes in [`ApnsConfig::tls`].
    Certificate,
}

pub struct ApnsConfig {
    /// `https://api.push.apple.com`, the sandbox, or any URL (a simulator).
    pub base_url: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    pub auth: ApnsAuth,
    pub tls: TlsOptions,
    /// HTTP/2 connections, used in turn (each multiplexes ~1,000 streams).
    pub connections: usize,
    pub request_timeout: Duration,
    pub alert: AlertText,
}

struct ProviderToken {
    jwt: String,
    issued_at: UnixMillis,
}

struct Tokens {
    signer: Es256Signer,
    current: RwLock<Option<ProviderToken>>,
    mint: tokio::sync::Mutex<()>,
}

impl Tokens {
    /// The token to send at `now`, minting one when none is fresh.
    async fn get(&self, now: UnixMillis) -> (String, UnixMillis) {
        if let Some(t) = self.fresh(now) {
            return t;
        }
        let _one_at_a_time = self.mint.lock().await;
        if let Some(t) = self.fresh(now) {
            return t;
        }
        let jwt = self.signer.token(now / 1000);
        metrics::refresh("apns", "minted");
        if let Ok(mut cur) = self.current.write() {
            *cur = Some(ProviderToken {
                jwt: jwt.clone(),
                issued_at: now,
            });
        }
        (jwt, now)
    }

    fn fresh(&self, now: UnixMillis) -> Option<(String, UnixMillis)> {
        let cur = self.current.read().ok()?;
        let t = cur.as_ref()?;
        (now - t.issued_at < TOKEN_REFRESH_AFTER_MS).then(|| (t.jwt.clone(), t.issued_at))
    }

    /// APNs said the token issued at `issued_at` expired. `Ok` if it was
    /// dropped (the next `get` mints), `Err(wait)` if Apple's 20-minute rule
    /// forbids a new one for `wait`.
    fn expire(&self, issued_at: UnixMillis, now: UnixMillis) -> Result<(), Duration> {
        let age = now - issued_at;
        if age < TOKEN_MIN_INTERVAL_MS {
            return Err(Duration::from_millis((TOKEN_MIN_INTERVAL_MS - age) as u64));
        }
        if let Ok(mut cur) = self.current.write() {
            if cur.as_ref().is_some_and(|t| t.issued_at == issued_at) {
                *cur = None;
            }
        }
        Ok(())
    }
}

pub struct ApnsClient {
    clients: Vec<reqwest::Client>,
    next: AtomicUsize,
    base_url: String,
    topic: String,
    tokens: Option<Tokens>,
    alert: AlertText,
}

#[derive(Deserialize)]
struct ErrorBody {
    reason: Option<String>,
}

/// What one reason code means for the push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasonClass {
    DeadToken,
    Retry,
    /// Refresh the provider token, then retry.
    RefreshToken,
    Misconfigured,
    /// A request we built wrong.
    OurBug,
}

/// Apple's reason codes ("Handling notification responses from APNs"), the
/// static label for metrics, and what each means here.
pub const REASONS: &[(&str, ReasonClass)] = &[
    ("BadCollapseId", ReasonClass::OurBug),
    // The token is malformed or for the other environment: it will never
    // work through this app, so the device must register a new one.
    ("BadDeviceToken", ReasonClass::DeadToken),
    ("BadExpirationDate", ReasonClass::OurBug),
    ("BadMessageId", ReasonClass::OurBug),
    ("BadPriority", ReasonClass::OurBug),
    ("BadTopic", ReasonClass::Misconfigured),
    // The token belongs to another app (bundle id).
    ("DeviceTokenNotForTopic", ReasonClass::DeadToken),
    ("DuplicateHeaders", ReasonClass::OurBug),
    ("IdleTimeout", ReasonClass::Retry),
    ("InvalidPushType", ReasonClass::OurBug),
    ("MissingDeviceToken", ReasonClass::OurBug),
    ("MissingTopic", ReasonClass::Misconfigured),
    ("PayloadEmpty", ReasonClass::OurBug),
    ("TopicDisallowed", ReasonClass::Misconfigured),
    ("BadCertificate", ReasonClass::Misconfigured),
    ("BadCertificateEnvironment", ReasonClass::Misconfigured),
    ("ExpiredProviderToken", ReasonClass::RefreshToken),
    ("Forbidden", ReasonClass::Misconfigured),
    ("InvalidProviderToken", ReasonClass::Misconfigured),
    ("MissingProviderToken", ReasonClass::Misconfigured),
    ("UnrelatedKeyIdInToken", ReasonClass::Misconfigured),
    // Apple's docs spell it with "Id"; APNs has been seen sending it without.
    ("BadEnvironmentKeyIdInToken", ReasonClass::Misconfigured),
    ("BadEnvironmentKeyInToken", ReasonClass::Misconfigured),
    ("BadPath", ReasonClass::OurBug),
    ("MethodNotAllowed", ReasonClass::OurBug),
    ("ExpiredToken", ReasonClass::DeadToken),
    ("Unregistered", ReasonClass::DeadToken),
    ("PayloadTooLarge", ReasonClass::OurBug),
    ("TooManyProviderTokenUpdates", ReasonClass::Retry),
    ("TooManyRequests", ReasonClass::Retry),
    ("InternalServerError", ReasonClass::Retry),
    ("ServiceUnavailable", ReasonClass::Retry),
    ("Shutdown", ReasonClass::Retry),
];

/// What an APNs error answer means: its class, metric label and reason,
/// read from bytes the server chose (any status but 200, any body). A
/// body that is not APNs' JSON falls back on the status alone; the reason
/// shown is at most 64 characters of it.
pub fn read_error(status: u16, body: &[u8]) -> (ReasonClass, &'static str, String) {
    let reason: String = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|b| b.reason)
        .map(|r| r.chars().take(64).collect())
        .unwrap_or_else(|| format!("HTTP {status}"));
    let (class, label) = classify(status, &reason);
    (class, label, reason)
}

/// The class and metric label of `reason` under HTTP `status`.
pub fn classify(status: u16, reason: &str) -> (ReasonClass, &'static str) {
    if let Some((label, class)) = REASONS.iter().find(|(r, _)| *r == reason) {
        return (*class, label);
    }
    let class = match status {
        410 => ReasonClass::DeadToken,
        429 | 500..=599 => ReasonClass::Retry,
        403 => ReasonClass::Misconfigured,
        _ => ReasonClass::OurBug,
    };
    (class, "other")
}

/// A random canonical UUID for `apns-id` (APNs echoes it; logs carry it).
fn apns_id() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl ApnsClient {
    pub fn new(config: ApnsConfig) -> Result<Self, PushConfigError> {
        let base_url = match config.base_url.as_str() {
            "" | "production" => PRODUCTION_URL.to_owned(),
            "sandbox" | "development" => SANDBOX_URL.to_owned(),
            url if url.starts_with("https://") => url.trim_end_matches('/').to_owned(),
            url => {
                return Err(PushConfigError::Invalid(format!(
                    "APNs base_url {url:?}: \"production\", \"sandbox\" or an https:// URL (APNs is TLS only)"
                )))
            }
        };
        if config.topic.is_empty() {
            return Err(PushConfigError::Invalid(
                "APNs topic (the app's bundle id) is required".into(),
            ));
        }
        let tokens = match config.auth {
            ApnsAuth::Token {
                p8_pem,
                key_id,
                team_id,
            } => Some(Tokens {
                signer: Es256Signer::from_p8_pem(&p8_pem, &key_id, &team_id)?,
                current: RwLock::new(None),
                mint: tokio::sync::Mutex::new(()),
            }),
            ApnsAuth::Certificate => {
                if config.tls.client_identity_pem.is_none() {
                    return Err(PushConfigError::Invalid(
                        "APNs certificate auth needs cert_file and cert_key_file".into(),
                    ));
                }
                None
            }
        };
        // Each reqwest client holds its own HTTP/2 connection to the host.
        let clients = (0..config.connections.clamp(1, 64))
            .map(|_| h2_client(&config.tls, config.request_timeout))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ApnsClient {
            clients,
            next: AtomicUsize::new(0),
            base_url,
            topic: config.topic,
            tokens,
            alert: config.alert,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub async fn send(&self, job: &PushJob, now: UnixMillis) -> PushOutcome {
        let payload = match apns_payload(job, &self.alert) {
            Ok(p) => p,
            Err(reason) => {
                metrics::response("apns", "payload_too_large_local");
                return PushOutcome::Failed { reason };
            }
        };
        if job.push_token.is_empty() || !job.push_token.bytes().all(|b| b.is_ascii_hexdigit()) {
            // APNs tokens are hex; anything else would be BadDeviceToken.
            metrics::response("apns", "BadDeviceToken");
            return PushOutcome::DeadToken;
        }
        // At most two tries: the second only after a token refresh.
        for refreshed in [false, true] {
            let token = match &self.tokens {
                Some(t) => Some(t.get(now).await),
                None => None,
            };
            let client =
                &self.clients[self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len()];
            let url = format!("{}/3/device/{}", self.base_url, job.push_token);
            let mut req = client
                .post(url)
                .header("apns-topic", &self.topic)
                .header("apns-push-type", "alert")
                .header("apns-priority", "10")
                // The push is worthless after the challenge expires: Apple
                // stores it for an offline phone until then, not longer.
                .header(
                    "apns-expiration",
                    (job.expires_at / 1000).max(1).to_string(),
                )
                .header("apns-collapse-id", job.challenge_id.as_str())
                .header("apns-id", apns_id())
                .header("content-type", "application/json")
                .body(payload.clone());
            if let Some((jwt, _)) = &token {
                req = req.header("authorization", format!("bearer {jwt}"));
            }
            let started = Instant::now();
            let resp = req.send().await;
            metrics::request_time("apns", started.elapsed().as_secs_f64());
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    // Connection refused or reset, GOAWAY, timeout: the push
                    // may or may not have arrived; a retry carries the same
                    // collapse id, so the phone shows it once.
                    metrics::response("apns", "transport");
                    return PushOutcome::Retry {
                        after: None,
                        reason: format!("APNs transport error: {}", error_chain(&e)),
                    };
                }
            };
            let status = resp.status().as_u16();
            if status == 200 {
                metrics::response("apns", "success");
                return PushOutcome::Delivered;
            }
            let after = retry_after(resp.headers());
            let body = resp.bytes().await.unwrap_or_default();
            let (class, label, reason) = read_error(status, &body);
            metrics::response("apns", label);
            if label == "other" {
                tracing::warn!(status, %reason, "APNs answered with a reason Sesame does not know");
            }
            let detail = format!("APNs {status} {reason}");
            match class {
                ReasonClass::DeadToken => return PushOutcome::DeadToken,
                ReasonClass::Retry => {
                    return PushOutcome::Retry {
                        after,
                        reason: detail,
                    }
                }
                ReasonClass::OurBug => return PushOutcome::Failed { reason: detail },
                ReasonClass::Misconfigured => {
                    tracing::error!(topic = %self.topic, %detail, "APNs refuses this app's credentials or topic");
                    return PushOutcome::Misconfigured { reason: detail };
                }
                ReasonClass::RefreshToken => {
                    let (Some(tokens), Some((_, issued_at))) = (&self.tokens, token) else {
                        return PushOutcome::Misconfigured { reason: detail };
                    };
                    if refreshed {
                        return PushOutcome::Misconfigured {
                            reason: format!(
                                "{detail} right after a refresh: check the server clock"
                            ),
                        };
                    }
                    if let Err(wait) = tokens.expire(issued_at, now) {
                        metrics::refresh("apns", "refused_20_min_rule");
                        tracing::error!("APNs says a provider token younger than 20 minutes expired: is the clock right?");
                        return PushOutcome::Retry {
                            after: Some(wait),
                            reason: format!(
                                "{detail}; a new token is allowed in {}s",
                                wait.as_secs()
                            ),
                        };
                    }
                }
            }
        }
        PushOutcome::Retry {
            after: None,
            reason: "APNs: provider token refresh did not help".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_reason_has_a_class_and_unknown_ones_fall_back_on_status() {
        assert_eq!(
            classify(410, "Unregistered"),
            (ReasonClass::DeadToken, "Unregistered")
        );
        assert_eq!(
            classify(403, "ExpiredProviderToken").0,
            ReasonClass::RefreshToken
        );
        assert_eq!(classify(429, "TooManyRequests").0, ReasonClass::Retry);
        assert_eq!(classify(503, "SomethingNew"), (ReasonClass::Retry, "other"));
        assert_eq!(classify(410, "SomethingNew").0, ReasonClass::DeadToken);
        assert_eq!(classify(400, "SomethingNew").0, ReasonClass::OurBug);
        assert_eq!(classify(403, "SomethingNew").0, ReasonClass::Misconfigured);
        assert!(REASONS.len() >= 32);
    }

    #[test]
    fn apns_ids_are_canonical_v4_uuids() {
        let id = apns_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_eq!(id.matches('-').count(), 4);
    }
}
