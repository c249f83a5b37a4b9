//! Credentials and URIs as presented: tenant API keys, enrollment URIs
//! scanned from any QR code, ids. Parsed or refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = sesame_grpc::apikey::parse(s);
    let _ = sesame_device_sim::parse_enrollment_uri(s);
    let _ = sesame_core::ChallengeId::parse(s);
    let _ = sesame_core::DeviceId::parse(s);
    let _ = sesame_core::TenantId::parse(s);
});
