#![allow(clippy::unwrap_used)]
//! What APNs and FCM answer is input from across the network: any status,
//! any body, any `Retry-After`. These properties feed the clients' readers
//! random and provider-shaped answers: none may panic, each gives a
//! verdict the dispatcher can act on, and the documented codes keep their
//! meaning whatever surrounds them. (The coverage-guided twin is the
//! `push_responses` fuzz target in fuzz/.)

use std::time::Duration;

use proptest::prelude::*;
use sesame_push::apns::{self, ReasonClass};
use sesame_push::fcm::{self, FcmReply};
use sesame_push::{parse_retry_after, PushOutcome};

/// Bodies shaped like the providers' errors, with random parts.
fn apns_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<Vec<u8>>(),
        ".{0,80}".prop_map(|r| format!(r#"{{"reason":{}}}"#, serde_json_string(&r)).into_bytes()),
        prop::sample::select(apns::REASONS.iter().map(|(r, _)| *r).collect::<Vec<_>>())
            .prop_map(|r| format!(r#"{{"reason":"{r}","timestamp":1}}"#).into_bytes()),
        Just(b"{\"reason\":null}".to_vec()),
        Just(b"{\"reason\":42}".to_vec()),
        ".{0,4000}"
            .prop_map(|r| format!(r#"{{"reason":"{}"}}"#, r.replace(['"', '\\'], "")).into_bytes()),
    ]
}

fn serde_json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

const FCM_CODES: &[&str] = &[
    "UNREGISTERED",
    "SENDER_ID_MISMATCH",
    "INVALID_ARGUMENT",
    "QUOTA_EXCEEDED",
    "UNAVAILABLE",
    "INTERNAL",
    "THIRD_PARTY_AUTH_ERROR",
    "UNSPECIFIED_ERROR",
];

fn fcm_body() -> impl Strategy<Value = Vec<u8>> {
    let code = prop_oneof![
        prop::sample::select(FCM_CODES.to_vec()).prop_map(str::to_owned),
        "[A-Z_]{0,20}",
    ];
    let field = prop_oneof![Just("message.token".to_owned()), "[a-z.]{0,20}"];
    prop_oneof![
        any::<Vec<u8>>(),
        (code, prop::collection::vec(field, 0..4), ".{0,40}", any::<u16>()).prop_map(
            |(code, fields, msg, n)| {
                let violations: Vec<String> = fields
                    .iter()
                    .map(|f| format!(r#"{{"field":"{f}","description":"x"}}"#))
                    .collect();
                format!(
                    r#"{{"error":{{"code":{n},"message":{},"status":"X","details":[{{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"{code}"}},{{"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[{}]}}]}}}}"#,
                    serde_json_string(&msg),
                    violations.join(",")
                )
                .into_bytes()
            }
        ),
        Just(br#"{"error":{"details":[{"@type":7},{"errorCode":"UNREGISTERED"}]}}"#.to_vec()),
        Just(br#"{"error":null}"#.to_vec()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn apns_answers_always_get_a_class(status in 100u16..1000, body in apns_body()) {
        let (class, label, reason) = apns::read_error(status, &body);
        prop_assert!(reason.chars().count() <= 64 || reason.starts_with("HTTP "));
        // A documented reason keeps its class whatever the status.
        if let Some((_, want)) = apns::REASONS.iter().find(|(r, _)| *r == reason) {
            prop_assert_eq!(class, *want);
            prop_assert_eq!(label, reason.as_str());
        } else {
            prop_assert_eq!(label, "other");
            let by_status = match status {
                410 => ReasonClass::DeadToken,
                429 | 500..=599 => ReasonClass::Retry,
                403 => ReasonClass::Misconfigured,
                _ => ReasonClass::OurBug,
            };
            prop_assert_eq!(class, by_status);
        }
    }

    #[test]
    fn fcm_answers_always_get_an_outcome(
        status in 100u16..1000,
        body in fcm_body(),
        after in prop::option::of(0u64..7200),
        refreshed in any::<bool>(),
    ) {
        let after = after.map(Duration::from_secs);
        let (reply, _label, detail) = fcm::read_error(status, after, &body, refreshed);
        prop_assert!(detail.chars().count() < 400, "{}", detail.len());
        match reply {
            FcmReply::NewAccessToken => prop_assert!(status == 401 && !refreshed),
            FcmReply::Outcome(PushOutcome::Delivered) => prop_assert!(false, "an error is never a delivery"),
            FcmReply::Outcome(PushOutcome::Retry { after: a, .. }) => {
                prop_assert!(a.is_none_or(|a| a <= Duration::from_secs(7200)));
            }
            FcmReply::Outcome(_) => {}
        }
        let text = String::from_utf8_lossy(&body);
        // The code is set, so not even a 401 asks for a new token.
        if text.contains(r#""errorCode":"UNREGISTERED""#) && text.contains("FcmError") {
            prop_assert_eq!(
                fcm::read_error(status, after, &body, refreshed).0,
                FcmReply::Outcome(PushOutcome::DeadToken)
            );
        }
    }

    #[test]
    fn retry_after_is_seconds_capped_at_an_hour(v in ".{0,30}", n in any::<u64>()) {
        if let Some(d) = parse_retry_after(&v) {
            prop_assert!(d <= Duration::from_secs(3600));
        }
        prop_assert_eq!(parse_retry_after(&n.to_string()), Some(Duration::from_secs(n.min(3600))));
        prop_assert_eq!(parse_retry_after(&format!(" {n} ")), Some(Duration::from_secs(n.min(3600))));
    }
}

#[test]
fn documented_answers_mean_what_the_providers_say() {
    assert_eq!(
        apns::read_error(410, br#"{"reason":"Unregistered","timestamp":1}"#).0,
        ReasonClass::DeadToken
    );
    assert_eq!(apns::read_error(503, b"<html>").0, ReasonClass::Retry);
    assert_eq!(
        apns::read_error(403, br#"{"reason":"ExpiredProviderToken"}"#).0,
        ReasonClass::RefreshToken
    );
    let unregistered = br#"{"error":{"code":404,"status":"NOT_FOUND","message":"gone","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#;
    assert_eq!(
        fcm::read_error(404, None, unregistered, false).0,
        FcmReply::Outcome(PushOutcome::DeadToken)
    );
    assert_eq!(
        fcm::read_error(401, None, b"", false).0,
        FcmReply::NewAccessToken
    );
    assert!(matches!(
        fcm::read_error(401, None, b"", true).0,
        FcmReply::Outcome(PushOutcome::Misconfigured { .. })
    ));
    let quota = br#"{"error":{"details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"QUOTA_EXCEEDED"}]}}"#;
    assert_eq!(
        fcm::read_error(429, None, quota, false).0,
        FcmReply::Outcome(PushOutcome::Retry {
            after: Some(fcm::QUOTA_BACKOFF),
            reason: "FCM 429 QUOTA_EXCEEDED: ".into()
        })
    );
    let ours = br#"{"error":{"details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"INVALID_ARGUMENT"},{"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[{"field":"message.android.ttl"}]}]}}"#;
    assert!(matches!(
        fcm::read_error(400, None, ours, false).0,
        FcmReply::Outcome(PushOutcome::Failed { .. })
    ));
}
