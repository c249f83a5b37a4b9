//! Tenant authentication: `authorization: Bearer <api key>` metadata.
//!
//! Verified keys are cached for a short time so that the hot path costs no
//! storage read; a revoked key or disabled tenant stops working within
//! [`CACHE_TTL`]. The cache is bounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ApiError;
use dashmap::DashMap;
use sesame_core::TenantId;
use sesame_storage::Storage;
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;

use crate::apikey;

pub const CACHE_TTL: Duration = Duration::from_secs(10);
const CACHE_MAX: usize = 10_000;

/// A verified key: (SHA-256 of its secret, its tenant, when it was read from storage).
type CachedKey = ([u8; 32], TenantId, Instant);

#[derive(Clone)]
pub struct TenantAuth {
    storage: Arc<dyn Storage>,
    /// key id -> verified key
    cache: Arc<DashMap<String, CachedKey>>,
}

impl TenantAuth {
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        TenantAuth {
            storage,
            cache: Arc::new(DashMap::new()),
        }
    }

    /// The tenant whose valid key the call carries.
    pub async fn authenticate(&self, md: &MetadataMap) -> Result<TenantId, ApiError> {
        let header = md
            .get("authorization")
            .ok_or_else(|| {
                ApiError::Unauthenticated(
                    "missing credential: send the tenant API key as `authorization: Bearer <key>`"
                        .into(),
                )
            })?
            .to_str()
            .map_err(|_| ApiError::Unauthenticated("authorization header is not ASCII".into()))?;
        let key = header.strip_prefix("Bearer ").ok_or_else(|| {
            ApiError::Unauthenticated("authorization must be `Bearer <key>`".into())
        })?;
        let bad = || ApiError::Unauthenticated("invalid API key".into());
        let (key_id, presented) = apikey::parse(key.trim()).ok_or_else(bad)?;

        if let Some(e) = self.cache.get(key_id) {
            let (hash, tenant, at) = e.value();
            if at.elapsed() < CACHE_TTL {
                return if bool::from(hash.ct_eq(&presented)) {
                    Ok(tenant.clone())
                } else {
                    Err(bad())
                };
            }
        }
        let record = self.storage.get_api_key(key_id).await?.ok_or_else(bad)?;
        if record.revoked || !bool::from(record.secret_sha256.ct_eq(&presented)) {
            return Err(bad());
        }
        let tenant = self
            .storage
            .get_tenant(&record.tenant_id)
            .await?
            .ok_or_else(bad)?;
        if tenant.disabled {
            return Err(ApiError::PermissionDenied("tenant is disabled".into()));
        }
        if self.cache.len() >= CACHE_MAX {
            self.cache.clear();
        }
        self.cache.insert(
            key_id.to_owned(),
            (
                record.secret_sha256,
                record.tenant_id.clone(),
                Instant::now(),
            ),
        );
        Ok(record.tenant_id)
    }
}
