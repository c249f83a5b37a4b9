//! Tenant authentication: `authorization: Bearer <api key>` metadata, and,
//! for a tenant bound to a client-certificate identity, that certificate
//! (mTLS): a valid key presented without it is refused.
//!
//! Verified keys are cached for a short time so that the hot path costs no
//! storage read; a revoked key or disabled tenant stops working within
//! [`CACHE_TTL`] on every instance, and at once on the instance that made
//! the change ([`TenantAuth::forget_key`], [`TenantAuth::forget_tenant`]).
//! A rotated-out key's expiry is cached with it and checked on every call,
//! so it stops at its deadline, not up to a TTL later. The cache is bounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ApiError;
use dashmap::DashMap;
use sesame_core::time::{now_ms, UnixMillis};
use sesame_core::{ApiKeyState, TenantId};
use sesame_storage::Storage;
use sesame_tls::PeerInfo;
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;

use crate::apikey;

pub const CACHE_TTL: Duration = Duration::from_secs(10);
const CACHE_MAX: usize = 10_000;

/// A verified key, as read from storage.
struct CachedKey {
    secret_sha256: [u8; 32],
    tenant: TenantId,
    /// The client-certificate identity the tenant is bound to (empty: none).
    identity: Arc<str>,
    /// 0: never; otherwise the end of a rotation's grace period.
    expires_at: UnixMillis,
    read_at: Instant,
}

#[derive(Clone)]
pub struct TenantAuth {
    storage: Arc<dyn Storage>,
    /// key id -> verified key
    cache: Arc<DashMap<String, CachedKey>>,
    /// How long a verified key is trusted without reading storage.
    ttl: Duration,
}

impl TenantAuth {
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        TenantAuth {
            storage,
            cache: Arc::new(DashMap::new()),
            ttl: CACHE_TTL,
        }
    }

    /// Another cache lifetime than [`CACHE_TTL`] (tests).
    pub fn with_cache_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Drops a key from this instance's cache: the next call with it reads
    /// storage again (after a revocation or rotation made here).
    pub fn forget_key(&self, key_id: &str) {
        self.cache.remove(key_id);
    }

    /// Drops every cached key of a tenant (after it is disabled or its
    /// client-certificate binding changes).
    pub fn forget_tenant(&self, tenant: &TenantId) {
        self.cache.retain(|_, k| &k.tenant != tenant);
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
        let key = bearer(md, "the tenant API key")?;
        let bad = || ApiError::Unauthenticated("invalid API key".into());
        // Only a holder of the secret learns the key's state.
        let expired = || {
            ApiError::Unauthenticated(
                "API key has expired (rotated out): use the tenant's new key".into(),
            )
        };
        let (key_id, presented) = apikey::parse(key).ok_or_else(bad)?;

        let now = now_ms();
        if let Some(k) = self.cache.get(key_id) {
            if k.read_at.elapsed() < self.ttl {
                return if !bool::from(k.secret_sha256.ct_eq(&presented)) {
                    Err(bad())
                } else if k.expires_at != 0 && now >= k.expires_at {
                    Err(expired())
                } else {
                    Ok((k.tenant.clone(), k.identity.clone()))
                };
            }
        }
        let record = self.storage.get_api_key(key_id).await?.ok_or_else(bad)?;
        if !bool::from(record.secret_sha256.ct_eq(&presented)) {
            return Err(bad());
        }
        match record.state(now) {
            ApiKeyState::Active | ApiKeyState::Expiring => {}
            ApiKeyState::Expired => return Err(expired()),
            ApiKeyState::Revoked => {
                return Err(ApiError::Unauthenticated("API key is revoked".into()))
            }
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
            CachedKey {
                secret_sha256: record.secret_sha256,
                tenant: record.tenant_id.clone(),
                identity: identity.clone(),
                expires_at: record.expires_at,
                read_at: Instant::now(),
            },
        );
        Ok((record.tenant_id, identity))
    }
}

/// The credential of `authorization: Bearer <credential>`, trimmed; `what`
/// names it in the refusals (`the tenant API key`, `the admin key`).
pub fn bearer<'a>(md: &'a MetadataMap, what: &str) -> Result<&'a str, ApiError> {
    let header = md
        .get("authorization")
        .ok_or_else(|| {
            ApiError::Unauthenticated(format!(
                "missing credential: send {what} as `authorization: Bearer <key>`"
            ))
        })?
        .to_str()
        .map_err(|_| ApiError::Unauthenticated("authorization header is not ASCII".into()))?;
    let key = header
        .strip_prefix("Bearer ")
        .ok_or_else(|| ApiError::Unauthenticated("authorization must be `Bearer <key>`".into()))?;
    Ok(key.trim())
}

/// Where a call came from, for the audit trail: the peer address and, over
/// mTLS, the client certificate's identity.
pub fn source<T>(request: &tonic::Request<T>) -> String {
    let addr = request
        .remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".into());
    match request.extensions().get::<Arc<PeerInfo>>() {
        Some(p) => format!("{addr} {}", p.describe()),
        None => addr,
    }
}

/// The id of the API key a call presented (never its secret), for the
/// audit trail; empty when there is none that parses.
pub fn key_id<T>(request: &tonic::Request<T>) -> String {
    bearer(request.metadata(), "")
        .ok()
        .and_then(apikey::parse)
        .map(|(id, _)| format!("key:{id}"))
        .unwrap_or_default()
}

/// Who made a call and from where, as the audit trail records it.
#[derive(Debug, Clone)]
pub struct Origin {
    pub actor: String,
    pub source: String,
}

impl Origin {
    /// A tenant API call: its key id and peer.
    pub fn of<T>(request: &tonic::Request<T>) -> Origin {
        Origin {
            actor: key_id(request),
            source: source(request),
        }
    }

    /// An admin API call (one admin key: the actor is "admin").
    pub fn admin<T>(request: &tonic::Request<T>) -> Origin {
        Origin {
            actor: "admin".into(),
            source: source(request),
        }
    }

    /// A new entry for `tenant`, stamped now, with this origin.
    pub fn entry(
        &self,
        tenant: &str,
        action: sesame_core::audit::AuditAction,
    ) -> sesame_core::audit::AuditEntry {
        sesame_core::audit::AuditEntry::new(now_ms(), tenant, action)
            .actor(self.actor.clone())
            .source(self.source.clone())
    }
}

#[cfg(test)]
mod replica_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sesame_core::Tenant;
    use sesame_storage::MemStorage;

    fn call(key: &str) -> tonic::Request<()> {
        let mut r = tonic::Request::new(());
        r.metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        r
    }

    /// Two replicas over one store: the one that revokes refuses at once,
    /// the other keeps its cached key until the cache lifetime ends, then
    /// refuses too (the bound `docs/security.md` states).
    #[tokio::test]
    async fn a_revocation_reaches_another_replica_when_its_cache_expires() {
        let storage: Arc<dyn Storage> = Arc::new(MemStorage::new());
        let tenant = TenantId::parse("bank").unwrap();
        storage
            .put_tenant(&Tenant {
                id: tenant.clone(),
                display_name: "Bank".into(),
                disabled: false,
                created_at: 0,
                client_identity: String::new(),
            })
            .await
            .unwrap();
        let (key, mut record) = apikey::generate(&tenant, now_ms());
        storage.put_api_key(&record).await.unwrap();
        let ttl = Duration::from_millis(300);
        let (a, b) = (
            TenantAuth::new(storage.clone()).with_cache_ttl(ttl),
            TenantAuth::new(storage.clone()).with_cache_ttl(ttl),
        );
        assert_eq!(a.authenticate(&call(&key)).await.unwrap(), tenant);
        assert_eq!(b.authenticate(&call(&key)).await.unwrap(), tenant);
        record.revoked = true;
        storage.put_api_key(&record).await.unwrap();
        let revoked_at = Instant::now();
        a.forget_key(&record.key_id);
        assert!(a.authenticate(&call(&key)).await.is_err());
        // B still trusts its cached copy...
        assert!(b.authenticate(&call(&key)).await.is_ok());
        // ... until its lifetime ends, and not a moment longer than that.
        let refused = loop {
            if b.authenticate(&call(&key)).await.is_err() {
                break revoked_at.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(
            refused < ttl * 10,
            "still trusted {refused:?} after the revocation"
        );
        assert!(matches!(
            b.authenticate(&call(&key)).await,
            Err(ApiError::Unauthenticated(m)) if m.contains("revoked")
        ));
    }
}
