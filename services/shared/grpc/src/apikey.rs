//! Tenant API keys: `sk_<key id: 16 hex>_<secret: 32 random bytes, base64url>`.
//! The key id finds the record; only the SHA-256 of the secret is stored,
//! and it is compared in constant time.

use base64::Engine;
use sesame_core::time::UnixMillis;
use sesame_core::{ApiKeyRecord, TenantId};
use sha2::{Digest, Sha256};

const PREFIX: &str = "sk_";

/// A new key: the plaintext (shown once) and the record to store.
pub fn generate(tenant: &TenantId, now: UnixMillis) -> (String, ApiKeyRecord) {
    let key_id = hex::encode(sesame_core::ids::random_bytes::<8>());
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sesame_core::ids::random_bytes::<32>());
    let record = ApiKeyRecord {
        key_id: key_id.clone(),
        tenant_id: tenant.clone(),
        secret_sha256: Sha256::digest(secret.as_bytes()).into(),
        created_at: now,
        revoked: false,
        expires_at: 0,
    };
    (format!("{PREFIX}{key_id}_{secret}"), record)
}

/// Splits a presented key into (key id, SHA-256 of the secret).
pub fn parse(key: &str) -> Option<(&str, [u8; 32])> {
    let rest = key.strip_prefix(PREFIX)?;
    if rest.len() < 18 || !rest.is_char_boundary(16) {
        return None;
    }
    let (key_id, secret) = rest.split_at(16);
    let secret = secret.strip_prefix('_')?;
    if !key_id.bytes().all(|b| b.is_ascii_hexdigit()) || secret.is_empty() || secret.len() > 128 {
        return None;
    }
    Some((key_id, Sha256::digest(secret.as_bytes()).into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_parses_to_its_record() {
        let t = TenantId::parse("bank").unwrap();
        let (key, rec) = generate(&t, 1);
        let (id, hash) = parse(&key).unwrap();
        assert_eq!(id, rec.key_id);
        assert_eq!(hash, rec.secret_sha256);
        assert!(parse("sk_short").is_none());
        assert!(parse("nope").is_none());
        assert!(parse(&key.replace("sk_", "pk_")).is_none());
        assert!(parse("sk_zzzzzzzzzzzzzzzz_abc").is_none());
    }
}
