//! A device's public key and signature as they arrive at enrollment and with
//! each answer: any bytes are parsed and verified or refused, never a panic,
//! and never accepted for a message they did not sign.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sesame_core::crypto::{KeyAlgorithm, PublicKey};

fuzz_target!(|data: &[u8]| {
    let Some((&alg, rest)) = data.split_first() else {
        return;
    };
    let alg = if alg & 1 == 0 {
        KeyAlgorithm::EcdsaP256Sha256
    } else {
        KeyAlgorithm::Ed25519
    };
    // [key length] key [signature]: the rest is the signature.
    let Some((&len, rest)) = rest.split_first() else {
        return;
    };
    let (key, sig) = rest.split_at((len as usize).min(rest.len()));
    if let Ok(k) = PublicKey::parse(alg, key) {
        let _ = k.verify(b"sesame fuzz message", sig);
    }
});
