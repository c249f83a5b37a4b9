//! Device-held keys: parsing public keys and verifying signatures.
//!
//! ECDSA P-256 with SHA-256 is mandatory (it is what the Secure Enclave and
//! Android Keystore offer); Ed25519 is accepted too. Public keys come as SEC1
//! points (iOS `SecKeyCopyExternalRepresentation`) or DER SubjectPublicKeyInfo
//! (Android `getEncoded()`); ECDSA signatures as ASN.1 DER (both platforms) or
//! fixed 64-byte r||s.
//!
//! P-256 keys are parsed and validated with the pure-Rust `p256` crate (every
//! encoding above, point on the curve), then kept as an uncompressed SEC1
//! point and verified with `ring`, whose assembly field arithmetic is several
//! times faster: verification is the largest CPU cost of a login
//! (`cargo bench -p sesame --bench login -- crypto`).

use p256::pkcs8::DecodePublicKey;
use serde::{Deserialize, Serialize};

use crate::limits::{MAX_PUBLIC_KEY_LEN, MAX_SIGNATURE_LEN};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyAlgorithm {
    EcdsaP256Sha256,
    Ed25519,
}

impl KeyAlgorithm {
    /// Wire code used inside canonical payloads (matches the proto enum numbers).
    pub fn code(self) -> u8 {
        match self {
            KeyAlgorithm::EcdsaP256Sha256 => 1,
            KeyAlgorithm::Ed25519 => 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("public key is malformed: {0}")]
    BadPublicKey(&'static str),
    #[error("signature is malformed: {0}")]
    MalformedSignature(&'static str),
    #[error("signature does not verify")]
    BadSignature,
}

/// A parsed, validated device public key.
#[derive(Debug, Clone)]
pub enum PublicKey {
    /// Uncompressed SEC1 point (65 bytes), checked to be on the curve.
    P256(Box<[u8]>),
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl PublicKey {
    /// Parses a public key received from a device.
    pub fn parse(alg: KeyAlgorithm, bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.is_empty() {
            return Err(CryptoError::BadPublicKey("empty"));
        }
        if bytes.len() > MAX_PUBLIC_KEY_LEN {
            return Err(CryptoError::BadPublicKey("longer than 256 bytes"));
        }
        match alg {
            KeyAlgorithm::EcdsaP256Sha256 => {
                let key = if bytes[0] == 0x30 {
                    p256::ecdsa::VerifyingKey::from_public_key_der(bytes).map_err(|_| {
                        CryptoError::BadPublicKey("not a P-256 DER SubjectPublicKeyInfo")
                    })?
                } else {
                    p256::ecdsa::VerifyingKey::from_sec1_bytes(bytes).map_err(|_| {
                        CryptoError::BadPublicKey("not a SEC1 P-256 point on the curve")
                    })?
                };
                let point = key.to_encoded_point(false);
                Ok(PublicKey::P256(point.as_bytes().into()))
            }
            KeyAlgorithm::Ed25519 => {
                let arr: [u8; 32] = bytes
                    .try_into()
                    .map_err(|_| CryptoError::BadPublicKey("Ed25519 keys are 32 bytes"))?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(&arr)
                    .map_err(|_| CryptoError::BadPublicKey("not a valid Ed25519 point"))?;
                if key.is_weak() {
                    return Err(CryptoError::BadPublicKey("weak Ed25519 key"));
                }
                Ok(PublicKey::Ed25519(key))
            }
        }
    }

    /// Verifies `signature` over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        if signature.is_empty() {
            return Err(CryptoError::MalformedSignature("empty"));
        }
        if signature.len() > MAX_SIGNATURE_LEN {
            return Err(CryptoError::MalformedSignature("longer than 256 bytes"));
        }
        match self {
            PublicKey::P256(point) => {
                // Classify malformed encodings first (cheap), so the caller
                // can tell a broken client from a wrong key.
                let alg: &'static ring::signature::EcdsaVerificationAlgorithm =
                    if signature.len() == 64 {
                        p256::ecdsa::Signature::from_slice(signature).map_err(|_| {
                            CryptoError::MalformedSignature("r||s is not a valid ECDSA signature")
                        })?;
                        &ring::signature::ECDSA_P256_SHA256_FIXED
                    } else {
                        p256::ecdsa::Signature::from_der(signature).map_err(|_| {
                            CryptoError::MalformedSignature("not a DER or r||s ECDSA signature")
                        })?;
                        &ring::signature::ECDSA_P256_SHA256_ASN1
                    };
                ring::signature::UnparsedPublicKey::new(alg, &point[..])
                    .verify(message, signature)
                    .map_err(|_| CryptoError::BadSignature)
            }
            PublicKey::Ed25519(key) => {
                let arr: [u8; 64] = signature.try_into().map_err(|_| {
                    CryptoError::MalformedSignature("Ed25519 signatures are 64 bytes")
                })?;
                let sig = ed25519_dalek::Signature::from_bytes(&arr);
                key.verify_strict(message, &sig)
                    .map_err(|_| CryptoError::BadSignature)
            }
        }
    }
}

/// A device's private key. Lives only on devices: the device simulator, the
/// load tester and tests use it; the server never sees one.
pub enum SigningKey {
    P256 {
        key: p256::ecdsa::SigningKey,
        /// The same key loaded into ring, which signs several times faster.
        fast: Box<ring::signature::EcdsaKeyPair>,
    },
    Ed25519(ed25519_dalek::SigningKey),
}

fn ring_p256(
    key: &p256::ecdsa::SigningKey,
) -> Result<Box<ring::signature::EcdsaKeyPair>, CryptoError> {
    let public = key.verifying_key().to_encoded_point(false);
    ring::signature::EcdsaKeyPair::from_private_key_and_public_key(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &key.to_bytes(),
        public.as_bytes(),
        &ring::rand::SystemRandom::new(),
    )
    .map(Box::new)
    .map_err(|_| CryptoError::BadPublicKey("P-256 key rejected"))
}

impl SigningKey {
    pub fn generate(alg: KeyAlgorithm) -> Self {
        match alg {
            KeyAlgorithm::EcdsaP256Sha256 => loop {
                let key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
                // ring accepts every valid scalar; the loop only guards the type.
                if let Ok(fast) = ring_p256(&key) {
                    break SigningKey::P256 { key, fast };
                }
            },
            KeyAlgorithm::Ed25519 => {
                SigningKey::Ed25519(ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng))
            }
        }
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        match self {
            SigningKey::P256 { .. } => KeyAlgorithm::EcdsaP256Sha256,
            SigningKey::Ed25519(_) => KeyAlgorithm::Ed25519,
        }
    }

    /// Secret scalar / seed bytes, for the simulator's key file.
    pub fn to_secret_bytes(&self) -> Vec<u8> {
        match self {
            SigningKey::P256 { key, .. } => key.to_bytes().to_vec(),
            SigningKey::Ed25519(k) => k.to_bytes().to_vec(),
        }
    }

    pub fn from_secret_bytes(alg: KeyAlgorithm, bytes: &[u8]) -> Result<Self, CryptoError> {
        match alg {
            KeyAlgorithm::EcdsaP256Sha256 => {
                let key = p256::ecdsa::SigningKey::from_slice(bytes)
                    .map_err(|_| CryptoError::BadPublicKey("bad P-256 secret"))?;
                let fast = ring_p256(&key)?;
                Ok(SigningKey::P256 { key, fast })
            }
            KeyAlgorithm::Ed25519 => {
                let arr: [u8; 32] = bytes
                    .try_into()
                    .map_err(|_| CryptoError::BadPublicKey("Ed25519 secrets are 32 bytes"))?;
                Ok(SigningKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(
                    &arr,
                )))
            }
        }
    }

    /// The public key as the apps send it: SEC1 uncompressed for P-256 (as iOS
    /// exports it), raw 32 bytes for Ed25519.
    pub fn public_key_bytes(&self) -> Vec<u8> {
        match self {
            SigningKey::P256 { key, .. } => key
                .verifying_key()
                .to_encoded_point(false)
                .as_bytes()
                .to_vec(),
            SigningKey::Ed25519(k) => k.verifying_key().to_bytes().to_vec(),
        }
    }

    /// Signs like the platforms do: DER ECDSA over SHA-256, or pure Ed25519.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            SigningKey::P256 { key, fast } => {
                match fast.sign(&ring::rand::SystemRandom::new(), message) {
                    Ok(sig) => sig.as_ref().to_vec(),
                    // Only if the OS RNG fails; fall back to the RFC 6979 signer.
                    Err(_) => {
                        use p256::ecdsa::signature::Signer;
                        let sig: p256::ecdsa::Signature = key.sign(message);
                        sig.to_der().as_bytes().to_vec()
                    }
                }
            }
            SigningKey::Ed25519(k) => {
                use ed25519_dalek::Signer;
                k.sign(message).to_bytes().to_vec()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p256_sign_verify_der_and_fixed() {
        let sk = SigningKey::generate(KeyAlgorithm::EcdsaP256Sha256);
        let pk = PublicKey::parse(KeyAlgorithm::EcdsaP256Sha256, &sk.public_key_bytes()).unwrap();
        let sig = sk.sign(b"hello");
        pk.verify(b"hello", &sig).unwrap();
        assert_eq!(pk.verify(b"hellp", &sig), Err(CryptoError::BadSignature));
        let fixed = p256::ecdsa::Signature::from_der(&sig).unwrap().to_bytes();
        pk.verify(b"hello", &fixed).unwrap();
    }

    #[test]
    fn p256_accepts_der_spki_and_compressed() {
        use p256::pkcs8::EncodePublicKey;
        let sk = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let der = sk.verifying_key().to_public_key_der().unwrap();
        PublicKey::parse(KeyAlgorithm::EcdsaP256Sha256, der.as_bytes()).unwrap();
        let compressed = sk.verifying_key().to_encoded_point(true);
        PublicKey::parse(KeyAlgorithm::EcdsaP256Sha256, compressed.as_bytes()).unwrap();
    }

    /// Signatures made by an independent implementation (the `p256` crate,
    /// RFC 6979) verify through the ring path for every key encoding.
    #[test]
    fn p256_interop_with_independent_signer() {
        use p256::ecdsa::signature::Signer;
        use p256::pkcs8::EncodePublicKey;
        let sk = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let sig: p256::ecdsa::Signature = sk.sign(b"payload");
        let vk = sk.verifying_key();
        let der = vk.to_public_key_der().unwrap();
        for encoding in [
            der.as_bytes().to_vec(),
            vk.to_encoded_point(true).as_bytes().to_vec(),
            vk.to_encoded_point(false).as_bytes().to_vec(),
        ] {
            let pk = PublicKey::parse(KeyAlgorithm::EcdsaP256Sha256, &encoding).unwrap();
            pk.verify(b"payload", sig.to_der().as_bytes()).unwrap();
            pk.verify(b"payload", &sig.to_bytes()).unwrap();
            assert_eq!(
                pk.verify(b"other", &sig.to_bytes()),
                Err(CryptoError::BadSignature)
            );
        }
    }

    #[test]
    fn ed25519_sign_verify() {
        let sk = SigningKey::generate(KeyAlgorithm::Ed25519);
        let pk = PublicKey::parse(KeyAlgorithm::Ed25519, &sk.public_key_bytes()).unwrap();
        pk.verify(b"m", &sk.sign(b"m")).unwrap();
        assert!(pk.verify(b"n", &sk.sign(b"m")).is_err());
    }

    /// Small-order points (the identity, y = 1; and y = 0, of order 4) let
    /// one signature verify for many messages: refused at enrollment.
    #[test]
    fn weak_ed25519_keys_are_refused() {
        let mut identity = [0u8; 32];
        identity[0] = 1;
        for weak in [identity, [0u8; 32]] {
            assert_eq!(
                PublicKey::parse(KeyAlgorithm::Ed25519, &weak).err(),
                Some(CryptoError::BadPublicKey("weak Ed25519 key"))
            );
        }
        let sk = SigningKey::generate(KeyAlgorithm::Ed25519);
        assert!(PublicKey::parse(KeyAlgorithm::Ed25519, &sk.public_key_bytes()).is_ok());
    }

    #[test]
    fn malformed_keys_and_signatures_are_refused() {
        assert!(PublicKey::parse(KeyAlgorithm::EcdsaP256Sha256, &[]).is_err());
        assert!(PublicKey::parse(KeyAlgorithm::EcdsaP256Sha256, &[4u8; 65]).is_err());
        assert!(PublicKey::parse(KeyAlgorithm::Ed25519, &[1u8; 31]).is_err());
        let sk = SigningKey::generate(KeyAlgorithm::EcdsaP256Sha256);
        let pk = PublicKey::parse(KeyAlgorithm::EcdsaP256Sha256, &sk.public_key_bytes()).unwrap();
        assert!(matches!(
            pk.verify(b"m", &[0x30, 1, 2]),
            Err(CryptoError::MalformedSignature(_))
        ));
        assert!(pk.verify(b"m", &[]).is_err());
    }

    #[test]
    fn secret_roundtrip() {
        for alg in [KeyAlgorithm::EcdsaP256Sha256, KeyAlgorithm::Ed25519] {
            let sk = SigningKey::generate(alg);
            let back = SigningKey::from_secret_bytes(alg, &sk.to_secret_bytes()).unwrap();
            assert_eq!(sk.public_key_bytes(), back.public_key_bytes());
        }
    }
}
