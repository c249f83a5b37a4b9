//! Everything untrusted on the webhook path: endpoint URLs and allow-list
//! ranges as typed, the three signature headers and the body a receiver
//! checks, and the receiver's answer (status, `Retry-After`) as Sesame
//! reads it. Each gets a verdict, never a panic; nothing unsigned verifies;
//! only a 2xx is a delivery.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sesame_core::webhook::{verify, AddressPolicy, Cidr, EndpointUrl, Secret};
use sesame_webhook::sender::read_answer;
use sesame_webhook::Attempt;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\n');
    let (a, b, c, d) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if let Ok(u) = EndpointUrl::parse(a) {
        assert!(u.as_str().starts_with("https://"));
        if let Some(ip) = u.literal_ip() {
            let _ = AddressPolicy::default().check(ip);
        }
    }
    if let Ok(r) = Cidr::parse(b) {
        assert!(Cidr::parse(&r.to_string()).is_ok());
    }
    let _ = Secret::parse(a);
    // A fixed secret the input cannot know: nothing it sends verifies.
    let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    assert!(verify(&secret, a, b, c, d.as_bytes(), 1_700_000_000, 300).is_err());
    let status = data.iter().take(2).fold(0u16, |s, x| s.wrapping_mul(256).wrapping_add(*x as u16)) % 1000;
    let answer = read_answer(status, Some(c));
    assert_eq!(matches!(answer, Attempt::Delivered { .. }), (200..300).contains(&status));
});
