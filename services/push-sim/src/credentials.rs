//! Test credentials in the very formats Apple and Google hand out: an
//! `AuthKey_<kid>.p8` (P-256 PKCS#8 PEM) and a service-account JSON key
//! file (RSA, PKCS#8 PEM, with `token_uri` pointing at the simulator).

use p256::pkcs8::{EncodePrivateKey, LineEnding};

pub struct ApnsKeyMaterial {
    pub key_id: String,
    pub team_id: String,
    pub p8_pem: String,
    pub verifying_key: p256::ecdsa::VerifyingKey,
}

impl ApnsKeyMaterial {
    pub fn generate(key_id: &str, team_id: &str) -> ApnsKeyMaterial {
        let key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let p8_pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map(|p| p.to_string())
            .unwrap_or_default();
        ApnsKeyMaterial {
            key_id: key_id.into(),
            team_id: team_id.into(),
            verifying_key: *key.verifying_key(),
            p8_pem,
        }
    }
}

pub struct FcmAccountMaterial {
    pub project_id: String,
    pub client_email: String,
    /// The key file's JSON text.
    pub json: String,
    pub public_key: rsa::RsaPublicKey,
}

impl FcmAccountMaterial {
    /// A 2048-bit RSA service account of `project_id` whose tokens come
    /// from `token_uri`.
    pub fn generate(project_id: &str, token_uri: &str) -> Result<FcmAccountMaterial, String> {
        let key =
            rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).map_err(|e| e.to_string())?;
        let pem = key
            .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
            .map_err(|e| e.to_string())?
            .to_string();
        let client_email = format!("sesame-push@{project_id}.iam.gserviceaccount.com");
        let json = serde_json::json!({
            "type": "service_account",
            "project_id": project_id,
            "private_key_id": "simulator",
            "private_key": pem,
            "client_email": client_email,
            "client_id": "1",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
        })
        .to_string();
        Ok(FcmAccountMaterial {
            project_id: project_id.into(),
            client_email,
            json,
            public_key: key.to_public_key(),
        })
    }
}
