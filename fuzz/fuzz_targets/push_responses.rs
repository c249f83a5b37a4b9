//! What APNs and FCM answer: any status, any body, any `Retry-After`, read
//! by the clients' response readers. Each answer gets a verdict, never a
//! panic; an error is never taken for a delivery.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sesame_push::fcm::FcmReply;
use sesame_push::PushOutcome;

fuzz_target!(|data: &[u8]| {
    let (head, body) = data.split_at(data.len().min(3));
    let status = head.iter().fold(0u16, |s, b| s.wrapping_mul(256).wrapping_add(*b as u16)) % 1000;
    let refreshed = head.first().is_some_and(|b| b & 1 == 1);
    let _ = sesame_push::apns::read_error(status, body);
    let (reply, _, _) = sesame_push::fcm::read_error(status, None, body, refreshed);
    assert!(reply != FcmReply::Outcome(PushOutcome::Delivered));
    if let Ok(s) = std::str::from_utf8(body) {
        let _ = sesame_push::parse_retry_after(s);
    }
});
