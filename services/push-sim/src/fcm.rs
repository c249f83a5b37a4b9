//! The FCM HTTP v1 simulator: the OAuth2 token endpoint of a service
//! account's `token_uri` (`POST /token`, JWT-bearer grant with an RS256
//! assertion) and `POST /v1/projects/{project}/messages:send`, answering
//! with Google's error envelope (`error.status`, `FcmError.errorCode`,
//! `BadRequest.fieldViolations`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use rand::RngCore;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::signature::Verifier;
use sesame_push::SimulatedPush;
use sha2::Sha256;

use crate::control::{DeviceState, Recorded, SimControl};
use crate::credentials::FcmAccountMaterial;
use crate::server::{json_response, serve, BoxFut, ConnAction, Handler, Reply};
use crate::tls::SimTls;
use crate::Running;

pub const MAX_MESSAGE: usize = 4096;
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
const FCM_ERROR: &str = "type.googleapis.com/google.firebase.fcm.v1.FcmError";
const BAD_REQUEST: &str = "type.googleapis.com/google.rpc.BadRequest";

struct Account {
    project_id: String,
    client_email: String,
    key: VerifyingKey<Sha256>,
}

pub struct FcmSimulator {
    accounts: RwLock<Vec<Account>>,
    /// access token -> (project, expires at, simulator clock).
    tokens: RwLock<HashMap<String, (String, i64)>>,
    token_lifetime: RwLock<Duration>,
    url: String,
    pub control: Arc<SimControl>,
}

impl FcmSimulator {
    pub async fn start(
        listen: &str,
        tls: &SimTls,
        control: Arc<SimControl>,
    ) -> Result<(Running, Arc<FcmSimulator>), String> {
        // Bound first: the token URI in key files names the port.
        let cannot = |e: std::io::Error| format!("FCM simulator cannot listen on {listen}: {e}");
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(cannot)?;
        let addr = listener.local_addr().map_err(cannot)?;
        let sim = Arc::new(FcmSimulator {
            accounts: RwLock::new(Vec::new()),
            tokens: RwLock::new(HashMap::new()),
            token_lifetime: RwLock::new(Duration::from_secs(3599)),
            url: format!("https://{addr}"),
            control,
        });
        let running = serve(listener, tls.server_config(&[b"h2"])?, sim.clone()).map_err(cannot)?;
        Ok((running, sim))
    }

    /// The `token_uri` to put in key files.
    pub fn token_uri(&self) -> String {
        format!("{}/token", self.url)
    }

    pub fn register_account(&self, account: &FcmAccountMaterial) {
        if let Ok(mut a) = self.accounts.write() {
            a.push(Account {
                project_id: account.project_id.clone(),
                client_email: account.client_email.clone(),
                key: VerifyingKey::<Sha256>::new(account.public_key.clone()),
            });
        }
    }

    /// How long issued access tokens live (Google: 3599 s).
    pub fn set_token_lifetime(&self, d: Duration) {
        if let Ok(mut l) = self.token_lifetime.write() {
            *l = d;
        }
    }

    /// Forgets every issued access token (as if Google revoked them).
    pub fn revoke_tokens(&self) {
        if let Ok(mut t) = self.tokens.write() {
            t.clear();
        }
    }

    fn oauth(&self, body: &[u8]) -> (u16, serde_json::Value) {
        let refuse = |why: &str| {
            (
                400,
                serde_json::json!({ "error": "invalid_grant", "error_description": why }),
            )
        };
        let form = String::from_utf8_lossy(body);
        let mut grant = "";
        let mut assertion = "";
        for pair in form.split('&') {
            match pair.split_once('=') {
                Some(("grant_type", v)) => grant = v,
                Some(("assertion", v)) => assertion = v,
                _ => {}
            }
        }
        if grant != "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer" {
            return (
                400,
                serde_json::json!({ "error": "unsupported_grant_type" }),
            );
        }
        let parts: Vec<&str> = assertion.split('.').collect();
        let [h, c, s] = parts.as_slice() else {
            return refuse("Invalid JWT");
        };
        let decode = |x: &str| {
            URL_SAFE_NO_PAD
                .decode(x)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        };
        let (Some(header), Some(claims)) = (decode(h), decode(c)) else {
            return refuse("Invalid JWT");
        };
        if header["alg"] != "RS256" {
            return refuse("Invalid JWT signature algorithm");
        }
        let Ok(accounts) = self.accounts.read() else {
            return refuse("internal");
        };
        let Some(acct) = accounts
            .iter()
            .find(|a| claims["iss"] == a.client_email.as_str())
        else {
            return refuse("Invalid JWT: unknown service account");
        };
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .ok()
            .and_then(|b| Signature::try_from(b.as_slice()).ok());
        let Some(sig) = sig else {
            return refuse("Invalid JWT signature");
        };
        if acct
            .key
            .verify(format!("{h}.{c}").as_bytes(), &sig)
            .is_err()
        {
            return refuse("Invalid JWT signature");
        }
        if claims["aud"] != self.token_uri().as_str() {
            return refuse("Invalid JWT audience");
        }
        if !claims["scope"]
            .as_str()
            .unwrap_or("")
            .split(' ')
            .any(|s| s == SCOPE)
        {
            return (400, serde_json::json!({ "error": "invalid_scope" }));
        }
        let now = self.control.now() / 1000;
        let (iat, exp) = (
            claims["iat"].as_i64().unwrap_or(0),
            claims["exp"].as_i64().unwrap_or(0),
        );
        if exp - iat > 3600 || iat > now + 60 || exp <= now {
            return refuse("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe");
        }
        let mut b = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut b);
        let token = format!("ya29.sim-{}", URL_SAFE_NO_PAD.encode(b));
        let lifetime = self
            .token_lifetime
            .read()
            .map(|l| *l)
            .unwrap_or(Duration::from_secs(3599));
        if let Ok(mut t) = self.tokens.write() {
            let now_ms = self.control.now();
            t.retain(|_, (_, exp)| *exp > now_ms);
            t.insert(
                token.clone(),
                (
                    acct.project_id.clone(),
                    now_ms + lifetime.as_millis() as i64,
                ),
            );
        }
        self.control.count_event("token_issued");
        (
            200,
            serde_json::json!({ "access_token": token, "expires_in": lifetime.as_secs(), "token_type": "Bearer" }),
        )
    }

    fn send(
        &self,
        project: &str,
        req: &http::Request<Bytes>,
    ) -> (u16, &'static str, serde_json::Value) {
        let bearer = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let known = self.tokens.read().ok().and_then(|t| t.get(bearer).cloned());
        match known {
            Some((_, exp)) if exp <= self.control.now() => return unauthenticated(),
            None => return unauthenticated(),
            Some((p, _)) if p != project => {
                return (
                    403,
                    "PERMISSION_DENIED",
                    envelope(
                        403,
                        "PERMISSION_DENIED",
                        "Permission 'cloudmessaging.messages.create' denied on resource",
                        vec![],
                    ),
                )
            }
            Some(_) => {}
        }
        if req.body().len() > MAX_MESSAGE {
            return invalid(
                "Message is too big",
                vec![bad_request("message", "Message payload exceeds 4096 bytes")],
            );
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(req.body()) else {
            return invalid(
                "Invalid JSON payload received.",
                vec![bad_request("", "not JSON")],
            );
        };
        let m = &v["message"];
        let targets = ["token", "topic", "condition"]
            .iter()
            .filter(|k| !m[**k].is_null())
            .count();
        if targets != 1 {
            return invalid(
                "Exactly one of token, topic or condition is required",
                vec![bad_request("message", "exactly one target")],
            );
        }
        if let Some(data) = m["data"].as_object() {
            if data.values().any(|x| !x.is_string()) {
                return invalid(
                    "Invalid value at 'message.data'",
                    vec![bad_request("message.data", "values must be strings")],
                );
            }
        }
        let android = &m["android"];
        if let Some(ttl) = android.get("ttl") {
            let ok = ttl
                .as_str()
                .and_then(|t| t.strip_suffix('s'))
                .is_some_and(|n| !n.is_empty() && n.parse::<f64>().is_ok_and(|x| x >= 0.0));
            if !ok {
                return invalid(
                    "Invalid value at 'message.android.ttl'",
                    vec![bad_request(
                        "message.android.ttl",
                        "a duration like \"30s\"",
                    )],
                );
            }
        }
        if let Some(p) = android.get("priority") {
            if !(p == "HIGH" || p == "NORMAL") {
                return invalid(
                    "Invalid value at 'message.android.priority'",
                    vec![bad_request("message.android.priority", "HIGH or NORMAL")],
                );
            }
        }
        let token = m["token"].as_str().unwrap_or("");
        let well_formed = !token.is_empty()
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_:-".contains(&b));
        if !well_formed {
            return fcm_error(
                400,
                "INVALID_ARGUMENT",
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
            );
        }
        match self.control.device(token) {
            DeviceState::Unregistered | DeviceState::ExpiredToken => {
                return fcm_error(
                    404,
                    "NOT_FOUND",
                    "UNREGISTERED",
                    "Requested entity was not found.",
                )
            }
            DeviceState::BadToken | DeviceState::NotForTopic => {
                return fcm_error(
                    400,
                    "INVALID_ARGUMENT",
                    "INVALID_ARGUMENT",
                    "The registration token is not a valid FCM registration token",
                )
            }
            DeviceState::SenderIdMismatch => {
                return fcm_error(
                    403,
                    "PERMISSION_DENIED",
                    "SENDER_ID_MISMATCH",
                    "SenderId mismatch",
                )
            }
            DeviceState::ThirdPartyAuthError => {
                return fcm_error(
                    401,
                    "UNAUTHENTICATED",
                    "THIRD_PARTY_AUTH_ERROR",
                    "Auth error from APNS or Web Push Service",
                )
            }
            DeviceState::RateLimited => {
                return fcm_error(
                    429,
                    "RESOURCE_EXHAUSTED",
                    "QUOTA_EXCEEDED",
                    "Quota exceeded for the device",
                )
            }
            DeviceState::Good => {}
        }
        let an = &android["notification"];
        self.control.inbox.accept(
            token,
            SimulatedPush {
                challenge_id: m["data"]["challenge_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                alert_title: an["title"].as_str().unwrap_or_default().to_owned(),
                alert_body: an["body"].as_str().unwrap_or_default().to_owned(),
                collapse_id: android["collapse_key"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                expires_at: 0,
            },
        );
        let mut id = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut id);
        (
            200,
            "success",
            serde_json::json!({ "name": format!("projects/{project}/messages/0:{}", u64::from_le_bytes(id)) }),
        )
    }
}

fn envelope(
    code: u16,
    status: &str,
    message: &str,
    details: Vec<serde_json::Value>,
) -> serde_json::Value {
    serde_json::json!({ "error": { "code": code, "message": message, "status": status, "details": details } })
}

fn unauthenticated() -> (u16, &'static str, serde_json::Value) {
    (
        401,
        "UNAUTHENTICATED",
        envelope(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token.",
            vec![],
        ),
    )
}

fn bad_request(field: &str, description: &str) -> serde_json::Value {
    serde_json::json!({ "@type": BAD_REQUEST, "fieldViolations": [{ "field": field, "description": description }] })
}

fn invalid(
    message: &str,
    details: Vec<serde_json::Value>,
) -> (u16, &'static str, serde_json::Value) {
    let mut d = vec![serde_json::json!({ "@type": FCM_ERROR, "errorCode": "INVALID_ARGUMENT" })];
    d.extend(details);
    (
        400,
        "INVALID_ARGUMENT",
        envelope(400, "INVALID_ARGUMENT", message, d),
    )
}

fn fcm_error(
    code: u16,
    status: &str,
    error_code: &'static str,
    message: &str,
) -> (u16, &'static str, serde_json::Value) {
    (
        code,
        error_code,
        envelope(
            code,
            status,
            message,
            vec![serde_json::json!({ "@type": FCM_ERROR, "errorCode": error_code })],
        ),
    )
}

impl Handler for FcmSimulator {
    type Conn = ();

    fn handle<'a>(&'a self, req: http::Request<Bytes>, _conn: &'a ()) -> BoxFut<'a, Reply> {
        Box::pin(async move {
            let path = req.uri().path().to_owned();
            let record = |status: u16, reason: &str| Recorded::of(&req, status, reason);
            if path == "/token" && req.method() == http::Method::POST {
                let (status, body) = self.oauth(req.body());
                return Reply {
                    response: json_response(status, &[], body),
                    then: ConnAction::Keep,
                };
            }
            let project = path
                .strip_prefix("/v1/projects/")
                .and_then(|p| p.strip_suffix("/messages:send"))
                .map(str::to_owned);
            let Some(project) = project.filter(|_| req.method() == http::Method::POST) else {
                self.control.record(record(404, "NOT_FOUND"));
                return Reply {
                    response: json_response(
                        404,
                        &[],
                        envelope(404, "NOT_FOUND", "not found", vec![]),
                    ),
                    then: ConnAction::Keep,
                };
            };
            let token = serde_json::from_slice::<serde_json::Value>(req.body())
                .ok()
                .and_then(|v| v["message"]["token"].as_str().map(str::to_owned))
                .unwrap_or_default();
            let faults = self.control.apply_faults(&token).await;
            let then = faults.action();
            if then == ConnAction::Reset {
                self.control.record(record(0, "reset"));
                return Reply {
                    response: json_response(500, &[], serde_json::json!({})),
                    then,
                };
            }
            if let Some((status, retry_after)) = faults.status {
                let (st, code) = match status {
                    429 => ("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"),
                    500 => ("INTERNAL", "INTERNAL"),
                    _ => ("UNAVAILABLE", "UNAVAILABLE"),
                };
                let (_, _, body) = fcm_error(status, st, code, "simulated fault");
                self.control.record(record(status, code));
                let headers: Vec<(&str, String)> = retry_after
                    .map(|s| ("retry-after", s.to_string()))
                    .into_iter()
                    .collect();
                return Reply {
                    response: json_response(status, &headers, body),
                    then,
                };
            }
            let (status, reason, body) = self.send(&project, &req);
            self.control.record(record(status, reason));
            Reply {
                response: json_response(status, &[], body),
                then,
            }
        })
    }
}
