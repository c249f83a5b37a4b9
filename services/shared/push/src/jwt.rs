//! The two JSON Web Tokens the providers ask for, written out by hand
//! (RFC 7515 compact form): they are one header and two claims each, and a
//! JWT library would only add a second ECDSA/RSA stack.
//!
//! - APNs provider token: ES256, header `{alg, kid}`, claims `{iss, iat}`,
//!   signature the raw 64-byte `r || s` (not DER), every segment base64url
//!   without padding.
//! - Google OAuth2 service-account assertion (RFC 7523): RS256, claims
//!   `{iss, scope, aud, iat, exp}`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::pkcs8::DecodePrivateKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivatePkcs8KeyDer;

use crate::PushConfigError;

pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Signs APNs provider tokens with a team's `.p8` key.
pub struct Es256Signer {
    key: p256::ecdsa::SigningKey,
    key_id: String,
    team_id: String,
}

impl Es256Signer {
    /// `p8_pem`: the `AuthKey_<key id>.p8` file Apple hands out (PKCS#8 PEM).
    pub fn from_p8_pem(p8_pem: &str, key_id: &str, team_id: &str) -> Result<Self, PushConfigError> {
        let key = p256::ecdsa::SigningKey::from_pkcs8_pem(p8_pem).map_err(|e| {
            PushConfigError::Key(format!(
                "the APNs key is not a P-256 PKCS#8 PEM key (an AuthKey_*.p8 file): {e}"
            ))
        })?;
        // Apple's key and team ids are 10 characters; anything else would be
        // refused with InvalidProviderToken on every push, so say it now.
        for (what, v) in [("key_id", key_id), ("team_id", team_id)] {
            if v.len() != 10 || !v.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(PushConfigError::Invalid(format!(
                    "APNs {what} {v:?} must be the 10-character id from Apple's developer account"
                )));
            }
        }
        Ok(Es256Signer {
            key,
            key_id: key_id.into(),
            team_id: team_id.into(),
        })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// A provider token issued at `iat` (Unix seconds).
    pub fn token(&self, iat: i64) -> String {
        let header = serde_json::json!({ "alg": "ES256", "kid": self.key_id });
        let claims = serde_json::json!({ "iss": self.team_id, "iat": iat });
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let sig: p256::ecdsa::Signature = self.key.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", b64url(&sig.to_bytes()))
    }
}

/// Signs OAuth2 JWT-bearer assertions with a service account's RSA key.
pub struct Rs256Signer {
    key: ring::signature::RsaKeyPair,
    rng: ring::rand::SystemRandom,
}

impl Rs256Signer {
    /// `pem`: the `private_key` of a Google service-account JSON file.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, PushConfigError> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
            PushConfigError::Key(format!(
                "the service account's private_key is not a PKCS#8 PEM key: {e}"
            ))
        })?;
        let key = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).map_err(|e| {
            PushConfigError::Key(format!(
                "the service account's private_key is not a usable RSA key: {e}"
            ))
        })?;
        Ok(Rs256Signer {
            key,
            rng: ring::rand::SystemRandom::new(),
        })
    }

    /// The compact JWT for `claims`.
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String, PushConfigError> {
        let header = serde_json::json!({ "alg": "RS256", "typ": "JWT" });
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let mut sig = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &self.rng,
                signing_input.as_bytes(),
                &mut sig,
            )
            .map_err(|_| PushConfigError::Key("RSA signing failed".into()))?;
        Ok(format!("{signing_input}.{}", b64url(&sig)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;
    use p256::pkcs8::{EncodePrivateKey, LineEnding};

    #[test]
    fn es256_token_is_compact_base64url_with_raw_signature() {
        let key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        let signer = Es256Signer::from_p8_pem(&pem, "ABC123DEFG", "TEAM123456").unwrap();
        let jwt = signer.token(1_700_000_000);
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert!(!jwt.contains('=') && !jwt.contains('+') && !jwt.contains('/'));
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], "ABC123DEFG");
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["iss"], "TEAM123456");
        assert_eq!(claims["iat"], 1_700_000_000);
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        assert_eq!(sig.len(), 64, "JOSE wants r||s, not DER");
        let sig = p256::ecdsa::Signature::from_slice(&sig).unwrap();
        let input = format!("{}.{}", parts[0], parts[1]);
        key.verifying_key().verify(input.as_bytes(), &sig).unwrap();
    }

    #[test]
    fn bad_keys_and_ids_are_refused_with_a_reason() {
        assert!(matches!(
            Es256Signer::from_p8_pem("not a key", "ABC123DEFG", "TEAM123456"),
            Err(PushConfigError::Key(_))
        ));
        let key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        let err = Es256Signer::from_p8_pem(&pem, "short", "TEAM123456")
            .err()
            .unwrap();
        assert!(err.to_string().contains("key_id"), "{err}");
        assert!(
            Rs256Signer::from_pkcs8_pem(&pem).is_err(),
            "an EC key is not RSA"
        );
    }
}
