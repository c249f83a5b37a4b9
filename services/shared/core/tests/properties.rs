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

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, failure_persistence: None, ..ProptestConfig::default() })]

    /// Endpoint URLs, address ranges and secrets as a tenant or an operator
    /// types them: accepted or refused, never a panic; an accepted URL is
    /// https with a host.
    #[test]
    fn webhook_inputs_never_panic(
        s in prop_oneof![".{0,120}".boxed(), "https://[a-z0-9.:\\[\\]@#/?%-]{0,60}".boxed()],
        cidr in "[0-9a-f.:/]{0,45}",
    ) {
        use sesame_core::webhook::{AddressPolicy, Cidr, EndpointUrl, Secret};
        if let Ok(u) = EndpointUrl::parse(&s) {
            prop_assert!(u.as_str().starts_with("https://"));
            prop_assert!(u.url().host().is_some());
            if let Some(ip) = u.literal_ip() {
                let _ = AddressPolicy::default().check(ip);
            }
        }
        if let Ok(c) = Cidr::parse(&cidr) {
            prop_assert!(Cidr::parse(&c.to_string()).is_ok());
        }
        let _ = Secret::parse(&s);
    }

    /// What a receiver checks: a request it did not get from the secret's
    /// holder never verifies, whatever the headers say; one that did, does.
    #[test]
    fn webhook_signatures_verify_only_when_untouched(
        id in "[a-zA-Z0-9_]{1,40}",
        body in prop::collection::vec(any::<u8>(), 0..256),
        ts in 1_600_000_000i64..2_000_000_000,
        junk in ".{0,120}",
        flip in any::<usize>(),
    ) {
        use sesame_core::webhook::{signature_header, verify, Secret};
        let s = Secret::generate();
        let sig = signature_header(std::slice::from_ref(&s), &id, ts, &body);
        prop_assert!(verify(&s, &id, &ts.to_string(), &sig, &body, ts, 300).is_ok());
        // Any header value at all: refused or verified, never a panic, and
        // never verified without the right tag.
        prop_assert!(verify(&s, &id, &ts.to_string(), &junk, &body, ts, 300).is_err());
        let _ = verify(&s, &junk, &junk, &junk, &body, ts, 300);
        if !body.is_empty() {
            let mut b = body.clone();
            b[flip % body.len()] ^= 1;
            prop_assert!(verify(&s, &id, &ts.to_string(), &sig, &b, ts, 300).is_err());
        }
        prop_assert!(verify(&Secret::generate(), &id, &ts.to_string(), &sig, &body, ts, 300).is_err());
    }
}
