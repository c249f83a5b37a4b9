//! Property tests for the decoders and encoders that see untrusted bytes.

use proptest::prelude::*;
use sesame_core::canonical::Canonical;
use sesame_core::crypto::{KeyAlgorithm, PublicKey, SigningKey};
use sesame_core::ids::{ChallengeId, DeviceId, TenantId};

fn encode(fields: &[Vec<u8>]) -> Vec<u8> {
    let mut c = Canonical::new("t");
    for f in fields {
        c = c.bytes(f);
    }
    c.finish()
}

proptest! {
    /// Two different field lists never encode to the same bytes.
    #[test]
    fn canonical_encoding_is_injective(
        a in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..8), 0..6),
        b in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..8), 0..6),
    ) {
        prop_assert_eq!(encode(&a) == encode(&b), a == b);
    }

    /// Arbitrary bytes as a public key or signature are refused, never a panic.
    #[test]
    fn key_and_signature_parsing_never_panics(
        key in prop::collection::vec(any::<u8>(), 0..300),
        sig in prop::collection::vec(any::<u8>(), 0..300),
        msg in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        for alg in [KeyAlgorithm::EcdsaP256Sha256, KeyAlgorithm::Ed25519] {
            if let Ok(k) = PublicKey::parse(alg, &key) {
                let _ = k.verify(&msg, &sig);
            }
        }
    }

    /// Arbitrary signature bytes against a real key of each kind: refused, never a panic.
    #[test]
    fn verify_with_valid_keys_never_panics(sig in prop::collection::vec(any::<u8>(), 0..300)) {
        for alg in [KeyAlgorithm::EcdsaP256Sha256, KeyAlgorithm::Ed25519] {
            let sk = SigningKey::generate(alg);
            let pk = PublicKey::parse(alg, &sk.public_key_bytes()).unwrap();
            prop_assert!(pk.verify(b"message", &sig).is_err());
        }
    }

    /// DER-shaped garbage (a SEQUENCE of two INTEGERs with random content).
    #[test]
    fn der_shaped_signatures_never_panic(
        r in prop::collection::vec(any::<u8>(), 1..40),
        s in prop::collection::vec(any::<u8>(), 1..40),
    ) {
        let mut der = vec![0x30, (r.len() + s.len() + 4) as u8, 0x02, r.len() as u8];
        der.extend_from_slice(&r);
        der.extend_from_slice(&[0x02, s.len() as u8]);
        der.extend_from_slice(&s);
        let sk = SigningKey::generate(KeyAlgorithm::EcdsaP256Sha256);
        let pk = PublicKey::parse(KeyAlgorithm::EcdsaP256Sha256, &sk.public_key_bytes()).unwrap();
        prop_assert!(pk.verify(b"message", &der).is_err());
    }

    /// A valid key never accepts a mutated signature or message.
    #[test]
    fn mutations_do_not_verify(flip in 0usize..64, msg in prop::collection::vec(any::<u8>(), 1..64)) {
        for alg in [KeyAlgorithm::EcdsaP256Sha256, KeyAlgorithm::Ed25519] {
            let sk = SigningKey::generate(alg);
            let pk = PublicKey::parse(alg, &sk.public_key_bytes()).unwrap();
            let mut sig = sk.sign(&msg);
            let i = flip % sig.len();
            sig[i] ^= 0x01;
            prop_assert!(pk.verify(&msg, &sig).is_err());
            let mut m2 = msg.clone();
            m2[flip % msg.len()] ^= 0x80;
            prop_assert!(pk.verify(&m2, &sk.sign(&msg)).is_err());
        }
    }

    /// Id parsers accept exactly their own format.
    #[test]
    fn id_parsing_never_panics(s in ".{0,80}") {
        let _ = ChallengeId::parse(&s);
        let _ = DeviceId::parse(&s);
        let _ = TenantId::parse(&s);
    }
}
