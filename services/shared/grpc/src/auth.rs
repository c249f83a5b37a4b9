//! Tenant authentication: `authorization: Bearer <api key>` metadata, and,
//! for a tenant bound to a client-certificate identity, that certificate
//! (mTLS): a valid key presented without it is refused.
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
use sesame_tls::PeerInfo;
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;

use crate::apikey;

pub const CACHE_TTL: Duration = Duration::from_secs(10);
const CACHE_MAX: usize = 10_000;

/// A verified key: SHA-256 of its secret, its tenant, the identity the
/// tenant is bound to (empty: none), when it was read from storage.
type CachedKey = ([u8; 32], TenantId, Arc<str>, Instant);

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

    /// The tenant whose valid key the call carries, if the call also
    /// carries the client certificate the tenant is bound to.
    pub async fn authenticate<T>(&self, request: &tonic::Request<T>) -> Result<TenantId, ApiError> {
        let (tenant, identity) = self.key(request.metadata()).await?;
        if identity.is_empty() {
            return Ok(tenant);
        }
        match request.extensions().get::<Arc<PeerInfo>>() {
            Some(p) if p.tenant_ca && p.matches(&identity) => Ok(tenant),
            Some(p) => Err(ApiError::PermissionDenied(format!(
                "tenant {tenant} must call with the client certificate of {identity}; this one is {}{}",
                p.describe(),
                if p.tenant_ca { "" } else { " (not issued by the tenant CA)" }
            ))),
            None => Err(ApiError::PermissionDenied(format!(
                "tenant {tenant} must call over TLS with the client certificate of {identity}"
            ))),
        }
    }

    async fn key(&self, md: &MetadataMap) -> Result<(TenantId, Arc<str>), ApiError> {
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
            let (hash, tenant, identity, at) = e.value();
            if at.elapsed() < CACHE_TTL {
                return if bool::from(hash.ct_eq(&presented)) {
                    Ok((tenant.clone(), identity.clone()))
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
        let identity: Arc<str> = tenant.client_identity.trim().into();
        self.cache.insert(
            key_id.to_owned(),
            (
                record.secret_sha256,
                record.tenant_id.clone(),
                identity.clone(),
                Instant::now(),
            ),
        );
        Ok((record.tenant_id, identity))
    }
}
