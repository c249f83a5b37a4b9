//! Firebase Cloud Messaging HTTP v1 client:
//! `POST {base}/v1/projects/{project}/messages:send` with an OAuth2 access
//! token obtained from a service-account key (JWT-bearer grant, RFC 7523,
//! at the `token_uri` the key file names).
//!
//! Why not `gcp_auth`/`yup-oauth2`: FCM's plain 401 means "your access
//! token is no longer good, get another", and neither crate can be told to
//! drop a cached token; both also bring a second TLS stack with fixed trust
//! roots. The grant is one signed JWT and one form POST, done here with the
//! same HTTP stack as the sends.
//!
//! Error codes follow Google's table: `UNREGISTERED` and an invalid token
//! are dead tokens; `SENDER_ID_MISMATCH` too (the token belongs to another
//! project: it never works through this app); `QUOTA_EXCEEDED`,
//! `UNAVAILABLE` and `INTERNAL` are retried after `Retry-After` (at least a
//! minute for quota, as Google asks); `THIRD_PARTY_AUTH_ERROR` and refused
//! permissions are misconfiguration; a plain 401 refreshes the token once.

use std::sync::RwLock;
use std::time::{Duration, Instant};

use serde::Deserialize;
use sesame_core::time::{now_ms, UnixMillis};
use sesame_queue::PushJob;

use crate::http::{any_client, error_chain, h2_client, retry_after};
use crate::jwt::Rs256Signer;
use crate::payload::{fcm_request, AlertText};
use crate::{metrics, PushConfigError, PushOutcome, TlsOptions};

pub const PRODUCTION_URL: &str = "https://fcm.googleapis.com";
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// An access token is replaced this long before Google says it expires.
pub const TOKEN_MARGIN_MS: i64 = 60_000;
/// Google's advice for `QUOTA_EXCEEDED` without `Retry-After`.
pub const QUOTA_BACKOFF: Duration = Duration::from_secs(60);

/// The fields of a Google service-account key file that matter here.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceAccount {
    #[serde(rename = "type", default)]
    pub kind: String,
    pub project_id: String,
    pub client_email: String,
    pub private_key: String,
    pub token_uri: String,
}

impl ServiceAccount {
    pub fn from_json(json: &str) -> Result<Self, PushConfigError> {
        let sa: ServiceAccount = serde_json::from_str(json).map_err(|e| {
            PushConfigError::Invalid(format!(
                "not a Google service-account key file (needs project_id, client_email, private_key, token_uri): {e}"
            ))
        })?;
        if !sa.kind.is_empty() && sa.kind != "service_account" {
            return Err(PushConfigError::Invalid(format!(
                "key file type is {:?}, not \"service_account\"",
                sa.kind
            )));
        }
        if !(sa.token_uri.starts_with("https://") || sa.token_uri.starts_with("http://")) {
            return Err(PushConfigError::Invalid(format!(
                "token_uri {:?} is not an http(s) URL",
                sa.token_uri
            )));
        }
        Ok(sa)
    }
}

pub struct FcmConfig {
    /// `https://fcm.googleapis.com` or any URL (a simulator).
    pub base_url: String,
    pub service_account: ServiceAccount,
    pub tls: TlsOptions,
    pub request_timeout: Duration,
    pub alert: AlertText,
}

struct AccessToken {
    token: String,
    expires_at: UnixMillis,
}

pub struct FcmClient {
    client: reqwest::Client,
    oauth_client: reqwest::Client,
    send_url: String,
    account: ServiceAccount,
    signer: Rs256Signer,
    current: RwLock<Option<AccessToken>>,
    fetch: tokio::sync::Mutex<()>,
    alert: AlertText,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    status: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    details: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: i64,
}

/// FCM's error codes and the static metric labels for them.
const CODES: &[&str] = &[
    "UNREGISTERED",
    "INVALID_ARGUMENT",
    "SENDER_ID_MISMATCH",
    "QUOTA_EXCEEDED",
    "UNAVAILABLE",
    "INTERNAL",
    "THIRD_PARTY_AUTH_ERROR",
    "UNSPECIFIED_ERROR",
    "UNAUTHENTICATED",
    "PERMISSION_DENIED",
    "NOT_FOUND",
];

fn label(code: &str) -> &'static str {
    CODES
        .iter()
        .find(|c| **c == code)
        .copied()
        .unwrap_or("other")
}

impl FcmClient {
    pub fn new(config: FcmConfig) -> Result<Self, PushConfigError> {
        let base = match config.base_url.as_str() {
            "" | "production" => PRODUCTION_URL.to_owned(),
            url if url.starts_with("https://") => url.trim_end_matches('/').to_owned(),
            url => {
                return Err(PushConfigError::Invalid(format!(
                    "FCM base_url {url:?}: \"production\" or an https:// URL"
                )))
            }
        };
        let sa = config.service_account;
        let project_ok = !sa.project_id.is_empty()
            && sa
                .project_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !project_ok {
            return Err(PushConfigError::Invalid(format!(
                "FCM project_id {:?} is not a Firebase project id",
                sa.project_id
            )));
        }
        Ok(FcmClient {
            client: h2_client(&config.tls, config.request_timeout)?,
            oauth_client: any_client(&config.tls, config.request_timeout)?,
            send_url: format!("{base}/v1/projects/{}/messages:send", sa.project_id),
            signer: Rs256Signer::from_pkcs8_pem(&sa.private_key)?,
            account: sa,
            current: RwLock::new(None),
            fetch: tokio::sync::Mutex::new(()),
            alert: config.alert,
        })
    }

    fn cached(&self) -> Option<String> {
        let cur = self.current.read().ok()?;
        let t = cur.as_ref()?;
        (now_ms() < t.expires_at - TOKEN_MARGIN_MS).then(|| t.token.clone())
    }

    fn forget(&self, token: &str) {
        if let Ok(mut cur) = self.current.write() {
            if cur.as_ref().is_some_and(|t| t.token == token) {
                *cur = None;
            }
        }
    }

    /// A valid access token, fetched by one task at a time.
    async fn access_token(&self) -> Result<String, PushOutcome> {
        if let Some(t) = self.cached() {
            return Ok(t);
        }
        let _one_at_a_time = self.fetch.lock().await;
        if let Some(t) = self.cached() {
            return Ok(t);
        }
        let iat = now_ms() / 1000;
        let assertion = self
            .signer
            .sign(&serde_json::json!({
                "iss": self.account.client_email,
                "scope": SCOPE,
                "aud": self.account.token_uri,
                "iat": iat,
                "exp": iat + 3600,
            }))
            .map_err(|e| PushOutcome::Misconfigured {
                reason: e.to_string(),
            })?;
        // The JWT is base64url and dots: nothing to percent-encode.
        let form = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
        );
        let resp = self
            .oauth_client
            .post(&self.account.token_uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(|e| {
                metrics::refresh("fcm", "transport_error");
                PushOutcome::Retry {
                    after: None,
                    reason: format!("OAuth token endpoint: {}", error_chain(&e)),
                }
            })?;
        let status = resp.status().as_u16();
        let after = retry_after(resp.headers());
        let body = resp.bytes().await.unwrap_or_default();
        if status != 200 {
            let text = String::from_utf8_lossy(&body);
            let text: String = text.chars().take(300).collect();
            if status == 429 || status >= 500 {
                metrics::refresh("fcm", "unavailable");
                return Err(PushOutcome::Retry {
                    after,
                    reason: format!("OAuth token endpoint {status}: {text}"),
                });
            }
            metrics::refresh("fcm", "refused");
            tracing::error!(status, body = %text, client_email = %self.account.client_email,
                "Google refuses the service account's token request");
            return Err(PushOutcome::Misconfigured {
                reason: format!(
                    "OAuth token endpoint refused the service account ({status}): {text}"
                ),
            });
        }
        let tok: TokenResponse = serde_json::from_slice(&body).map_err(|e| PushOutcome::Retry {
            after: None,
            reason: format!("OAuth token endpoint sent an unreadable answer: {e}"),
        })?;
        metrics::refresh("fcm", "fetched");
        if let Ok(mut cur) = self.current.write() {
            *cur = Some(AccessToken {
                token: tok.access_token.clone(),
                expires_at: now_ms() + tok.expires_in.clamp(0, 86_400) * 1000,
            });
        }
        Ok(tok.access_token)
    }

    pub async fn send(&self, job: &PushJob, now: UnixMillis) -> PushOutcome {
        let body = match fcm_request(job, &self.alert, now) {
            Ok(b) => b,
            Err(reason) => {
                metrics::response("fcm", "payload_too_large_local");
                return PushOutcome::Failed { reason };
            }
        };
        for refreshed in [false, true] {
            let token = match self.access_token().await {
                Ok(t) => t,
                Err(outcome) => return outcome,
            };
            let started = Instant::now();
            let resp = self
                .client
                .post(&self.send_url)
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            metrics::request_time("fcm", started.elapsed().as_secs_f64());
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    metrics::response("fcm", "transport");
                    return PushOutcome::Retry {
                        after: None,
                        reason: format!("FCM transport error: {}", error_chain(&e)),
                    };
                }
            };
            let status = resp.status().as_u16();
            if status == 200 {
                metrics::response("fcm", "success");
                return PushOutcome::Delivered;
            }
            let after = retry_after(resp.headers());
            let bytes = resp.bytes().await.unwrap_or_default();
            let (reply, metric, detail) = read_error(status, after, &bytes, refreshed);
            metrics::response("fcm", metric);
            match reply {
                FcmReply::NewAccessToken => {
                    self.forget(&token);
                    continue;
                }
                FcmReply::Outcome(outcome) => {
                    if matches!(outcome, PushOutcome::Misconfigured { .. }) {
                        tracing::error!(%detail, project = %self.account.project_id, "FCM refuses this app's pushes: check its service account and Firebase settings");
                    }
                    return outcome;
                }
            }
        }
        PushOutcome::Misconfigured {
            reason: "FCM refused a freshly fetched access token (401)".into(),
        }
    }
}

/// What an FCM error answer asks of the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FcmReply {
    /// A plain 401 before any refresh: fetch a new access token, send again.
    NewAccessToken,
    Outcome(PushOutcome),
}

/// What an FCM error answer means, read from bytes the server chose (any
/// status but 200, any body, `Retry-After` already parsed): the reply, the
/// metric label and a detail of at most a few hundred characters.
pub fn read_error(
    status: u16,
    after: Option<Duration>,
    bytes: &[u8],
    refreshed: bool,
) -> (FcmReply, &'static str, String) {
    let parsed = serde_json::from_slice::<ErrorEnvelope>(bytes)
        .ok()
        .map(|e| e.error);
    let (code, violations, message) = match &parsed {
        Some(b) => (
            error_code(b),
            field_violations(b),
            b.message.chars().take(200).collect::<String>(),
        ),
        None => (
            None,
            Vec::new(),
            String::from_utf8_lossy(bytes).chars().take(200).collect(),
        ),
    };
    let status_name: String = parsed
        .as_ref()
        .map(|b| b.status.chars().take(64).collect())
        .unwrap_or_default();
    let code: Option<String> = code.map(|c| c.chars().take(64).collect());
    let shown = code.as_deref().unwrap_or(&status_name);
    let metric = if shown.is_empty() {
        "other"
    } else {
        label(shown)
    };
    let detail = format!("FCM {status} {shown}: {message}");
    let outcome = match (status, code.as_deref()) {
        // A plain 401: our access token is no longer accepted.
        (401, None) if !refreshed => return (FcmReply::NewAccessToken, metric, detail),
        (_, Some("UNREGISTERED")) => PushOutcome::DeadToken,
        // The token belongs to another sender: push disabled for the device.
        (_, Some("SENDER_ID_MISMATCH")) => PushOutcome::DeadToken,
        (_, Some("INVALID_ARGUMENT")) => {
            // Field violations on anything but the token mean we built
            // the message wrong; otherwise the token is bad.
            let ours: Vec<&String> = violations
                .iter()
                .filter(|f| *f != "message.token")
                .take(8)
                .collect();
            if ours.is_empty() {
                PushOutcome::DeadToken
            } else {
                PushOutcome::Failed {
                    reason: format!("{detail} (fields: {ours:?})"),
                }
            }
        }
        (_, Some("QUOTA_EXCEEDED")) => PushOutcome::Retry {
            after: Some(after.unwrap_or(QUOTA_BACKOFF)),
            reason: detail.clone(),
        },
        (_, Some("UNAVAILABLE" | "INTERNAL")) => PushOutcome::Retry {
            after,
            reason: detail.clone(),
        },
        (_, Some("THIRD_PARTY_AUTH_ERROR")) => PushOutcome::Misconfigured {
            reason: format!(
                "{detail} (FCM cannot reach APNs for this app: its APNs credentials in Firebase are wrong)"
            ),
        },
        (401 | 403, _) => PushOutcome::Misconfigured {
            reason: detail.clone(),
        },
        (404, None) => PushOutcome::Misconfigured {
            reason: format!("{detail} (is project_id right?)"),
        },
        (429 | 500..=599, _) => PushOutcome::Retry {
            after,
            reason: detail.clone(),
        },
        _ => PushOutcome::Failed {
            reason: detail.clone(),
        },
    };
    (FcmReply::Outcome(outcome), metric, detail)
}

fn error_code(b: &ErrorBody) -> Option<String> {
    b.details.iter().find_map(|d| {
        let t = d.get("@type")?.as_str()?;
        if t.ends_with("google.firebase.fcm.v1.FcmError") {
            d.get("errorCode")?.as_str().map(str::to_owned)
        } else {
            None
        }
    })
}

fn field_violations(b: &ErrorBody) -> Vec<String> {
    b.details
        .iter()
        .filter(|d| {
            d.get("@type")
                .and_then(|t| t.as_str())
                .is_some_and(|t| t.ends_with("google.rpc.BadRequest"))
        })
        .flat_map(|d| {
            d.get("fieldViolations")
                .and_then(|v| v.as_array())
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|v| v.get("field").and_then(|f| f.as_str()).map(str::to_owned))
        .collect()
}
