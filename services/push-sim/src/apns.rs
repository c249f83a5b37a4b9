//! The APNs simulator. Requests are checked in the order Pushy's mock
//! server (and, as far as anyone has observed, Apple) checks them, and
//! answered with Apple's status and reason. Provider tokens are bound to a
//! connection: the first accepted token sets the team; a different token on
//! the same connection within 20 minutes is `TooManyProviderTokenUpdates`.

use std::sync::{Arc, Mutex, RwLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use p256::ecdsa::signature::Verifier;
use sesame_push::SimulatedPush;

use crate::control::{DeviceState, Recorded, SimControl};
use crate::credentials::ApnsKeyMaterial;
use crate::server::{empty_response, json_response, serve, BoxFut, ConnAction, Handler, Reply};
use crate::tls::SimTls;
use crate::Running;

pub const MAX_PAYLOAD: usize = 4096;
const TOKEN_MAX_AGE_MS: i64 = 3_600_000;
const TOKEN_MIN_INTERVAL_MS: i64 = 20 * 60_000;
const PUSH_TYPES: &[&str] = &[
    "alert",
    "background",
    "location",
    "voip",
    "complication",
    "fileprovider",
    "mdm",
    "liveactivity",
    "pushtotalk",
    "widgets",
    "controls",
];

struct Key {
    material_key_id: String,
    team_id: String,
    verifying_key: p256::ecdsa::VerifyingKey,
    topics: Vec<String>,
}

pub struct ApnsSimulator {
    keys: RwLock<Vec<Key>>,
    pub control: Arc<SimControl>,
}

#[derive(Default)]
pub struct ConnAuth {
    /// The accepted token on this connection: (jwt, team, kid, accepted
    /// at, its iat, its key's topics).
    #[allow(clippy::type_complexity)]
    current: Mutex<Option<(String, String, String, i64, i64, Vec<String>)>>,
}

impl ApnsSimulator {
    pub async fn start(
        listen: &str,
        tls: &SimTls,
        control: Arc<SimControl>,
    ) -> Result<(Running, Arc<ApnsSimulator>), String> {
        let sim = Arc::new(ApnsSimulator {
            keys: RwLock::new(Vec::new()),
            control,
        });
        let cannot = |e: std::io::Error| format!("APNs simulator cannot listen on {listen}: {e}");
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(cannot)?;
        let running = serve(listener, tls.server_config(&[b"h2"])?, sim.clone()).map_err(cannot)?;
        Ok((running, sim))
    }

    /// Trusts `key` for pushes to `topics`.
    pub fn register_key(&self, key: &ApnsKeyMaterial, topics: &[&str]) {
        if let Ok(mut k) = self.keys.write() {
            k.push(Key {
                material_key_id: key.key_id.clone(),
                team_id: key.team_id.clone(),
                verifying_key: key.verifying_key,
                topics: topics.iter().map(|t| t.to_string()).collect(),
            });
        }
    }

    /// Checks the provider token; `Ok(topics)` of its key.
    fn check_token(&self, auth: &str, conn: &ConnAuth) -> Result<Vec<String>, (u16, &'static str)> {
        let jwt = auth
            .strip_prefix("bearer ")
            .or_else(|| auth.strip_prefix("Bearer "))
            .ok_or((403, "MissingProviderToken"))?;
        let invalid = (403, "InvalidProviderToken");
        // The token this connection already accepted is not verified again
        // (its signature cannot have changed), only its age.
        if let Ok(cur) = conn.current.lock() {
            if let Some((j, _, _, _, iat, topics)) = cur.as_ref() {
                if j == jwt {
                    if self.control.now() - iat * 1000 > TOKEN_MAX_AGE_MS {
                        return Err((403, "ExpiredProviderToken"));
                    }
                    return Ok(topics.clone());
                }
            }
        }
        let parts: Vec<&str> = jwt.split('.').collect();
        let [h, c, s] = parts.as_slice() else {
            return Err(invalid);
        };
        let header: serde_json::Value = URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(invalid)?;
        let claims: serde_json::Value = URL_SAFE_NO_PAD
            .decode(c)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(invalid)?;
        if header["alg"] != "ES256" {
            return Err(invalid);
        }
        let kid = header["kid"].as_str().ok_or(invalid)?;
        let iss = claims["iss"].as_str().ok_or(invalid)?;
        let iat = claims["iat"].as_i64().ok_or(invalid)?;
        let keys = self.keys.read().map_err(|_| invalid)?;
        let key = keys
            .iter()
            .find(|k| k.material_key_id == kid && k.team_id == iss)
            .ok_or(invalid)?;
        let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| invalid)?;
        let sig = p256::ecdsa::Signature::from_slice(&sig).map_err(|_| invalid)?;
        key.verifying_key
            .verify(format!("{h}.{c}").as_bytes(), &sig)
            .map_err(|_| invalid)?;
        let now = self.control.now();
        if now - iat * 1000 > TOKEN_MAX_AGE_MS {
            return Err((403, "ExpiredProviderToken"));
        }
        let mut cur = conn.current.lock().map_err(|_| invalid)?;
        let accepted = Some((
            jwt.to_owned(),
            iss.to_owned(),
            kid.to_owned(),
            now,
            iat,
            key.topics.clone(),
        ));
        if let Some((_, team, _, at, _, _)) = cur.as_ref() {
            if team != iss {
                return Err((403, "UnrelatedKeyIdInToken"));
            }
            if now - at < TOKEN_MIN_INTERVAL_MS {
                return Err((429, "TooManyProviderTokenUpdates"));
            }
        }
        *cur = accepted;
        self.control.count_event("provider_token_accepted");
        Ok(key.topics.clone())
    }

    fn validate(
        &self,
        req: &http::Request<Bytes>,
        conn: &ConnAuth,
    ) -> Result<(String, String), (u16, &'static str)> {
        if req.method() != http::Method::POST {
            return Err((405, "MethodNotAllowed"));
        }
        let token = req
            .uri()
            .path()
            .strip_prefix("/3/device/")
            .ok_or((404, "BadPath"))?
            .to_owned();
        if token.is_empty() {
            return Err((400, "MissingDeviceToken"));
        }
        if !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err((400, "BadDeviceToken"));
        }
        let h = req.headers();
        for name in [
            "apns-id",
            "apns-topic",
            "apns-push-type",
            "apns-priority",
            "apns-expiration",
            "apns-collapse-id",
            "authorization",
        ] {
            if h.get_all(name).iter().count() > 1 {
                return Err((400, "DuplicateHeaders"));
            }
        }
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok());
        let apns_id = match get("apns-id") {
            Some(id) if !is_uuid(id) => return Err((400, "BadMessageId")),
            Some(id) => id.to_owned(),
            None => "00000000-0000-4000-8000-000000000000".to_owned(),
        };
        let topics = match get("authorization") {
            Some(auth) => self.check_token(auth, conn)?,
            None => return Err((403, "MissingProviderToken")),
        };
        let topic = get("apns-topic").ok_or((400, "MissingTopic"))?;
        if !topics.iter().any(|t| t == topic) {
            return Err((400, "TopicDisallowed"));
        }
        let push_type = get("apns-push-type").unwrap_or("alert");
        if !PUSH_TYPES.contains(&push_type) {
            return Err((400, "InvalidPushType"));
        }
        let priority = get("apns-priority").unwrap_or("10");
        if !["10", "5", "1"].contains(&priority) {
            return Err((400, "BadPriority"));
        }
        if push_type == "background" && priority == "10" {
            return Err((400, "BadPriority"));
        }
        if let Some(exp) = get("apns-expiration") {
            if exp.parse::<u64>().is_err() {
                return Err((400, "BadExpirationDate"));
            }
        }
        if get("apns-collapse-id").is_some_and(|c| c.len() > 64) {
            return Err((400, "BadCollapseId"));
        }
        if req.body().is_empty() {
            return Err((400, "PayloadEmpty"));
        }
        if req.body().len() > MAX_PAYLOAD {
            return Err((413, "PayloadTooLarge"));
        }
        match self.control.device(&token) {
            DeviceState::Good
            | DeviceState::SenderIdMismatch
            | DeviceState::ThirdPartyAuthError => {}
            DeviceState::Unregistered => return Err((410, "Unregistered")),
            DeviceState::ExpiredToken => return Err((410, "ExpiredToken")),
            DeviceState::BadToken => return Err((400, "BadDeviceToken")),
            DeviceState::NotForTopic => return Err((400, "DeviceTokenNotForTopic")),
            DeviceState::RateLimited => return Err((429, "TooManyRequests")),
        }
        Ok((token, apns_id))
    }

    fn deliver(&self, token: &str, req: &http::Request<Bytes>) {
        let v: serde_json::Value = serde_json::from_slice(req.body()).unwrap_or_default();
        let alert = &v["aps"]["alert"];
        let collapse = req
            .headers()
            .get("apns-collapse-id")
            .and_then(|c| c.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let expires = req
            .headers()
            .get("apns-expiration")
            .and_then(|c| c.to_str().ok())
            .and_then(|c| c.parse::<i64>().ok())
            .unwrap_or(0);
        self.control.inbox.accept(
            token,
            SimulatedPush {
                challenge_id: v["challenge_id"].as_str().unwrap_or_default().to_owned(),
                alert_title: alert["title"].as_str().unwrap_or_default().to_owned(),
                alert_body: alert["body"].as_str().unwrap_or_default().to_owned(),
                collapse_id: collapse,
                expires_at: expires * 1000,
            },
        );
    }
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn fault_reason(status: u16) -> &'static str {
    match status {
        429 => "TooManyRequests",
        500 => "InternalServerError",
        _ => "ServiceUnavailable",
    }
}

impl Handler for ApnsSimulator {
    type Conn = ConnAuth;

    fn handle<'a>(&'a self, req: http::Request<Bytes>, conn: &'a ConnAuth) -> BoxFut<'a, Reply> {
        Box::pin(async move {
            let token = req
                .uri()
                .path()
                .strip_prefix("/3/device/")
                .unwrap_or("")
                .to_owned();
            let faults = self.control.apply_faults(&token).await;
            let record = |status: u16, reason: &str| Recorded::of(&req, status, reason);
            let then = faults.action();
            if then == ConnAction::Reset {
                self.control.record(record(0, "reset"));
                return Reply {
                    response: empty_response(500, &[]),
                    then,
                };
            }
            if let Some((status, retry_after)) = faults.status {
                let reason = fault_reason(status);
                self.control.record(record(status, reason));
                let mut headers = vec![];
                if let Some(s) = retry_after {
                    headers.push(("retry-after", s.to_string()));
                }
                return Reply {
                    response: json_response(
                        status,
                        &headers,
                        serde_json::json!({ "reason": reason }),
                    ),
                    then,
                };
            }
            match self.validate(&req, conn) {
                Ok((token, apns_id)) => {
                    self.deliver(&token, &req);
                    self.control.record(record(200, "success"));
                    Reply {
                        response: empty_response(200, &[("apns-id", apns_id)]),
                        then,
                    }
                }
                Err((status, reason)) => {
                    self.control.record(record(status, reason));
                    let mut body = serde_json::json!({ "reason": reason });
                    let mut headers = vec![];
                    if status == 410 {
                        body["timestamp"] = self.control.now().into();
                    }
                    if status == 429 && reason == "TooManyRequests" {
                        headers.push(("retry-after", "1".to_owned()));
                    }
                    Reply {
                        response: json_response(status, &headers, body),
                        then,
                    }
                }
            }
        })
    }
}
