//! What goes through Apple and Google: the challenge id and a generic,
//! localisable alert — never the user, the amount or the payee (the phone
//! fetches those from Sesame over its own authenticated channel).

use serde::{Deserialize, Serialize};
use sesame_core::time::UnixMillis;
use sesame_queue::PushJob;

/// APNs' limit for alert pushes (VoIP allows 5120; Sesame sends alerts).
pub const APNS_MAX_PAYLOAD: usize = 4096;
/// FCM's limit for a message to a token.
pub const FCM_MAX_MESSAGE: usize = 4096;

/// The alert a push app shows. The `*_loc_key`s name strings in the app's
/// own localisation tables, so each phone shows its user's language; the
/// plain texts are the fallback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertText {
    pub title: String,
    pub body: String,
    pub title_loc_key: String,
    pub body_loc_key: String,
}

impl Default for AlertText {
    fn default() -> Self {
        AlertText {
            title: crate::ALERT_TITLE.into(),
            body: crate::ALERT_BODY.into(),
            title_loc_key: "SESAME_SIGN_IN_TITLE".into(),
            body_loc_key: "SESAME_SIGN_IN_BODY".into(),
        }
    }
}

/// The APNs JSON payload, or why it cannot be sent.
pub fn apns_payload(job: &PushJob, alert: &AlertText) -> Result<Vec<u8>, String> {
    let body = serde_json::json!({
        "aps": {
            "alert": {
                "title": alert.title,
                "body": alert.body,
                "title-loc-key": alert.title_loc_key,
                "loc-key": alert.body_loc_key,
            },
            "sound": "default",
            // Shown at once, even in a Focus mode that allows time-sensitive alerts.
            "interruption-level": "time-sensitive",
        },
        "challenge_id": job.challenge_id.as_str(),
    });
    let bytes = body.to_string().into_bytes();
    if bytes.len() > APNS_MAX_PAYLOAD {
        return Err(format!(
            "APNs payload is {} bytes, over Apple's {APNS_MAX_PAYLOAD}: shorten the app's alert texts",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// Whole seconds left before the challenge expires (0 if none).
pub fn seconds_left(job: &PushJob, now: UnixMillis) -> i64 {
    (job.expires_at.saturating_sub(now) / 1000).max(0)
}

/// The FCM v1 `messages:send` body, or why it cannot be sent.
pub fn fcm_request(job: &PushJob, alert: &AlertText, now: UnixMillis) -> Result<Vec<u8>, String> {
    let ttl = format!("{}s", seconds_left(job, now));
    let body = serde_json::json!({
        "message": {
            "token": job.push_token,
            "data": { "challenge_id": job.challenge_id.as_str() },
            "android": {
                "priority": "HIGH",
                "ttl": ttl,
                "collapse_key": job.challenge_id.as_str(),
                "notification": {
                    "title": alert.title,
                    "body": alert.body,
                    "title_loc_key": alert.title_loc_key,
                    "body_loc_key": alert.body_loc_key,
                    "tag": job.challenge_id.as_str(),
                },
            },
        },
    });
    let bytes = body.to_string().into_bytes();
    // The token is not counted by FCM, but counting it keeps us on the safe side.
    if bytes.len() > FCM_MAX_MESSAGE {
        return Err(format!(
            "FCM message is {} bytes, over Google's {FCM_MAX_MESSAGE}: shorten the app's alert texts",
            bytes.len()
        ));
    }
    Ok(bytes)
}
