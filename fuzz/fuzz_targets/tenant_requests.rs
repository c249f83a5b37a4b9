//! Request bodies as they come off the wire: decoded by prost, then turned
//! into domain types and validated before any storage work (for
//! CreateChallenge by the handler's own `create_args`). Refused or
//! accepted, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use sesame_core::{payload, validate};
use sesame_grpc::convert;
use sesame_proto::tenant::v1 as pb;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = pb::CreateChallengeRequest::decode(data) {
        // The handler's own checks, then what it computes from them.
        if let Ok(args) = sesame_challenge::create_args(r) {
            let _ = payload::context_hash(&args.context);
        }
    }
    if let Ok(r) = pb::BeginEnrollmentRequest::decode(data) {
        let _ = validate::user_id(&r.user_id);
    }
    if let Ok(r) = sesame_proto::device::v1::CompleteEnrollmentRequest::decode(data) {
        let _ = convert::platform_in(r.platform);
        let _ = validate::push_token(&r.push_token);
        let _ = validate::device_name(&r.display_name);
        if let Ok(alg) = convert::key_algorithm_in(r.key_algorithm) {
            if let Ok(k) = sesame_core::crypto::PublicKey::parse(alg, &r.public_key) {
                let _ = k.verify(r.enrollment_token.as_bytes(), &r.proof);
            }
        }
    }
    if let Ok(r) = sesame_proto::device::v1::RespondRequest::decode(data) {
        let _ = convert::decision_in(r.decision);
        let _ = sesame_core::ChallengeId::parse(&r.challenge_id);
        let _ = sesame_core::DeviceId::parse(&r.device_id);
    }
});
