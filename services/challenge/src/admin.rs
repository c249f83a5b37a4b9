//! `sesame.admin.v1.TenantAdminService`: the operator's API for tenants and
//! their API keys (`sesame tenant ...`, `sesame apikey ...`).
//!
//! Callers present the deployment's admin key (`adm_<32 random bytes,
//! base64url>`), compared in constant time against its SHA-256; tenant API
//! keys are refused here, so a tenant can never create or read another's
//! keys. Key secrets are returned once, when made, and only their SHA-256
//! is stored. Every change is logged under the `sesame::audit` target.
//!
//! A change takes effect at once on this instance (its key cache is told)
//! and within [`sesame_grpc::auth::CACHE_TTL`] on the others.

use std::sync::Arc;

use base64::Engine;
use sesame_audit::AuditLog;
use sesame_core::audit::AuditAction;
use sesame_core::limits::MAX_LIVE_API_KEYS_PER_TENANT;
use sesame_core::time::{now_ms, UnixMillis};
use sesame_core::{validate, ApiKeyRecord, ApiKeyState, Tenant, TenantId};
use sesame_grpc::auth::Origin;
use sesame_grpc::{apikey, ApiError};
use sesame_proto::admin::v1 as pb;
use sesame_storage::Storage;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status};

use crate::TenantAuth;

const ADMIN_KEY_PREFIX: &str = "adm_";
/// `RotateApiKey`'s grace period when none is given: one day.
pub const DEFAULT_ROTATION_GRACE_SECS: u32 = 86_400;
pub const MAX_ROTATION_GRACE_SECS: u32 = 30 * 86_400;
const DEFAULT_PAGE_SIZE: u32 = 100;
const MAX_PAGE_SIZE: u32 = 1_000;

/// A new admin key: `adm_` and 32 random bytes, base64url.
pub fn generate_admin_key() -> String {
    format!(
        "{ADMIN_KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sesame_core::ids::random_bytes::<32>())
    )
}

/// The SHA-256 of an admin key, if it is well formed (`adm_` and 32 to
/// 128 characters of base64url: at least 192 bits).
pub fn admin_key_sha256(key: &str) -> Option<[u8; 32]> {
    let secret = key.strip_prefix(ADMIN_KEY_PREFIX)?;
    let ok = (32..=128).contains(&secret.len())
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then(|| Sha256::digest(key.as_bytes()).into())
}

#[derive(Clone)]
pub struct TenantAdminApi {
    storage: Arc<dyn Storage>,
    /// The tenant API's key cache, told of every change made here.
    auth: TenantAuth,
    admin_key_sha256: [u8; 32],
    audit: AuditLog,
}

impl TenantAdminApi {
    pub fn new(storage: Arc<dyn Storage>, auth: TenantAuth, admin_key_sha256: [u8; 32]) -> Self {
        TenantAdminApi {
            storage,
            auth,
            admin_key_sha256,
            audit: AuditLog::disabled(),
        }
    }

    /// Records every change in the audit trail (the tenant's chain).
    pub fn with_audit(mut self, audit: AuditLog) -> Self {
        self.audit = audit;
        self
    }

    fn record(&self, caller: &str, tenant: &TenantId, action: AuditAction, detail: String) {
        let origin = Origin {
            actor: "admin".into(),
            source: caller.to_owned(),
        };
        self.audit
            .record(origin.entry(tenant.as_str(), action).detail(detail));
    }

    /// Refuses any call without the admin key; returns who called, for the
    /// audit log.
    fn admin<T>(&self, request: &Request<T>) -> Result<String, ApiError> {
        let key = sesame_grpc::auth::bearer(request.metadata(), "the admin key")?;
        if apikey::parse(key).is_some() {
            return Err(ApiError::Unauthenticated(
                "this is a tenant API key; the admin API takes the deployment's admin key (adm_...)"
                    .into(),
            ));
        }
        let ok = admin_key_sha256(key).is_some_and(|h| bool::from(h.ct_eq(&self.admin_key_sha256)));
        if !ok {
            tracing::warn!(target: "sesame::audit", peer = %peer(request), "admin call with a wrong key refused");
            return Err(ApiError::Unauthenticated("invalid admin key".into()));
        }
        Ok(peer(request))
    }

    async fn tenant(&self, id: &TenantId) -> Result<Tenant, ApiError> {
        self.storage
            .get_tenant(id)
            .await?
            .ok_or(ApiError::NotFound("tenant"))
    }

    /// A key of `tenant`: NOT_FOUND when it is another tenant's, so that an
    /// operator's typo cannot touch the wrong tenant.
    async fn key_of(&self, tenant: &TenantId, key_id: &str) -> Result<ApiKeyRecord, ApiError> {
        if key_id.len() != 16 || !key_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::invalid(
                "key_id",
                "must be the 16 hex digits after `sk_` in the key (see ListApiKeys)",
            ));
        }
        match self.storage.get_api_key(key_id).await? {
            Some(k) if &k.tenant_id == tenant => Ok(k),
            _ => Err(ApiError::NotFound("API key")),
        }
    }

    /// Refuses a new key when the tenant already has as many live keys as allowed.
    async fn room_for_a_key(&self, tenant: &TenantId, now: UnixMillis) -> Result<(), ApiError> {
        let live = self
            .storage
            .list_api_keys(tenant)
            .await?
            .iter()
            .filter(|k| k.is_live(now))
            .count();
        if live >= MAX_LIVE_API_KEYS_PER_TENANT {
            return Err(ApiError::FailedPrecondition(format!(
                "tenant {tenant} already has {live} live API keys (at most \
                 {MAX_LIVE_API_KEYS_PER_TENANT}); revoke one it no longer uses"
            )));
        }
        Ok(())
    }
}

fn peer<T>(request: &Request<T>) -> String {
    match request.extensions().get::<Arc<sesame_tls::PeerInfo>>() {
        Some(p) => p.describe(),
        None => request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "unknown".into()),
    }
}

/// A tenant id from a request, by the rules of [`TenantId`].
fn tenant_id(v: &str) -> Result<TenantId, ApiError> {
    Ok(TenantId::parse(v)?)
}

fn tenant_out(t: &Tenant) -> pb::Tenant {
    pb::Tenant {
        tenant_id: t.id.to_string(),
        display_name: t.display_name.clone(),
        disabled: t.disabled,
        created_at_unix_ms: t.created_at,
        client_identity: t.client_identity.clone(),
    }
}

fn key_out(k: &ApiKeyRecord, now: UnixMillis) -> pb::ApiKey {
    let state = match k.state(now) {
        ApiKeyState::Active => pb::ApiKeyState::Active,
        ApiKeyState::Expiring => pb::ApiKeyState::Expiring,
        ApiKeyState::Expired => pb::ApiKeyState::Expired,
        ApiKeyState::Revoked => pb::ApiKeyState::Revoked,
    };
    pb::ApiKey {
        key_id: k.key_id.clone(),
        tenant_id: k.tenant_id.to_string(),
        created_at_unix_ms: k.created_at,
        expires_at_unix_ms: k.expires_at,
        state: state as i32,
    }
}

#[tonic::async_trait]
impl pb::tenant_admin_service_server::TenantAdminService for TenantAdminApi {
    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::CreateTenantResponse>, Status> {
        let caller = self.admin(&request)?;
        let r = request.into_inner();
        let id = tenant_id(&r.tenant_id)?;
        if !r.tenant_id.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(ApiError::invalid("tenant_id", "must start with a letter or digit").into());
        }
        validate::tenant_display_name(&r.display_name).map_err(ApiError::from)?;
        validate::client_identity(&r.client_identity).map_err(ApiError::from)?;
        let now = now_ms();
        let tenant = Tenant {
            id: id.clone(),
            display_name: if r.display_name.trim().is_empty() {
                id.to_string()
            } else {
                r.display_name.trim().to_owned()
            },
            disabled: false,
            created_at: now,
            client_identity: r.client_identity,
        };
        if !self
            .storage
            .create_tenant(&tenant)
            .await
            .map_err(ApiError::from)?
        {
            return Err(ApiError::AlreadyExists(format!("tenant {id} already exists")).into());
        }
        let (api_key, record) = apikey::generate(&id, now);
        if let Err(e) = self.storage.put_api_key(&record).await {
            tracing::warn!(target: "sesame::audit", %caller, tenant = %id, error = %e, "tenant created without its first key");
            return Err(ApiError::Unavailable(format!(
                "tenant {id} was created but its first API key could not be stored ({e}); \
                 give it one with CreateApiKey (`sesame apikey create {id}`)"
            ))
            .into());
        }
        tracing::info!(target: "sesame::audit", %caller, tenant = %id, key_id = %record.key_id, "tenant created");
        self.record(
            &caller,
            &id,
            AuditAction::TenantCreated,
            format!(
                "first key {}; client identity {:?}",
                record.key_id, tenant.client_identity
            ),
        );
        Ok(Response::new(pb::CreateTenantResponse {
            tenant: Some(tenant_out(&tenant)),
            key: Some(key_out(&record, now)),
            api_key,
        }))
    }

    async fn get_tenant(
        &self,
        request: Request<pb::GetTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        self.admin(&request)?;
        let id = tenant_id(&request.get_ref().tenant_id)?;
        Ok(Response::new(tenant_out(&self.tenant(&id).await?)))
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        self.admin(&request)?;
        let r = request.into_inner();
        let size = page_size(r.page_size)?;
        // The token is the last id of the previous page: the backend lists
        // in an order it keeps stable (by id; by token on ScyllaDB), so a
        // tenant added meanwhile is seen or not, never twice.
        let after = if r.page_token.is_empty() {
            None
        } else {
            Some(TenantId::parse(&r.page_token).map_err(|_| {
                ApiError::invalid("page_token", "is not a next_page_token from ListTenants")
            })?)
        };
        let mut tenants = self
            .storage
            .list_tenants(after.as_ref(), size + 1)
            .await
            .map_err(ApiError::from)?;
        let more = tenants.len() > size;
        tenants.truncate(size);
        let next_page_token = match tenants.last() {
            Some(t) if more => t.id.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListTenantsResponse {
            tenants: tenants.iter().map(tenant_out).collect(),
            next_page_token,
        }))
    }

    async fn update_tenant(
        &self,
        request: Request<pb::UpdateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let caller = self.admin(&request)?;
        let r = request.into_inner();
        let id = tenant_id(&r.tenant_id)?;
        if r.disabled.is_none() && r.display_name.is_none() && r.client_identity.is_none() {
            return Err(ApiError::Invalid(
                "nothing to change: set disabled, display_name or client_identity".into(),
            )
            .into());
        }
        if let Some(name) = &r.display_name {
            validate::tenant_display_name(name).map_err(ApiError::from)?;
            if name.trim().is_empty() {
                return Err(ApiError::invalid("display_name", "must not be empty").into());
            }
        }
        if let Some(identity) = &r.client_identity {
            validate::client_identity(identity).map_err(ApiError::from)?;
        }
        let mut tenant = self.tenant(&id).await?;
        if let Some(d) = r.disabled {
            tenant.disabled = d;
        }
        if let Some(name) = r.display_name {
            tenant.display_name = name.trim().to_owned();
        }
        if let Some(identity) = r.client_identity {
            tenant.client_identity = identity;
        }
        self.storage
            .put_tenant(&tenant)
            .await
            .map_err(ApiError::from)?;
        self.auth.forget_tenant(&id);
        tracing::info!(
            target: "sesame::audit",
            %caller,
            tenant = %id,
            disabled = tenant.disabled,
            client_identity = %tenant.client_identity,
            "tenant updated"
        );
        self.record(
            &caller,
            &id,
            AuditAction::TenantChanged,
            format!(
                "disabled={} display_name={:?} client_identity={:?}",
                tenant.disabled, tenant.display_name, tenant.client_identity
            ),
        );
        Ok(Response::new(tenant_out(&tenant)))
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let caller = self.admin(&request)?;
        let id = tenant_id(&request.get_ref().tenant_id)?;
        self.tenant(&id).await?;
        let now = now_ms();
        self.room_for_a_key(&id, now).await?;
        let (api_key, record) = apikey::generate(&id, now);
        self.storage
            .put_api_key(&record)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(target: "sesame::audit", %caller, tenant = %id, key_id = %record.key_id, "API key created");
        self.record(
            &caller,
            &id,
            AuditAction::ApiKeyCreated,
            format!("key {}", record.key_id),
        );
        Ok(Response::new(pb::CreateApiKeyResponse {
            key: Some(key_out(&record, now)),
            api_key,
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        self.admin(&request)?;
        let id = tenant_id(&request.get_ref().tenant_id)?;
        self.tenant(&id).await?;
        let now = now_ms();
        let keys = self
            .storage
            .list_api_keys(&id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListApiKeysResponse {
            keys: keys.iter().map(|k| key_out(k, now)).collect(),
        }))
    }

    async fn rotate_api_key(
        &self,
        request: Request<pb::RotateApiKeyRequest>,
    ) -> Result<Response<pb::RotateApiKeyResponse>, Status> {
        let caller = self.admin(&request)?;
        let r = request.into_inner();
        let id = tenant_id(&r.tenant_id)?;
        let grace = r.grace_seconds.unwrap_or(DEFAULT_ROTATION_GRACE_SECS);
        if grace > MAX_ROTATION_GRACE_SECS {
            return Err(ApiError::invalid(
                "grace_seconds",
                format!("is {grace}; at most {MAX_ROTATION_GRACE_SECS} (30 days)"),
            )
            .into());
        }
        let mut old = self.key_of(&id, &r.key_id).await?;
        let now = now_ms();
        if !old.is_live(now) {
            return Err(ApiError::FailedPrecondition(format!(
                "key {} is {}: only a live key can be rotated; use CreateApiKey for a new one",
                old.key_id,
                if old.revoked { "revoked" } else { "expired" }
            ))
            .into());
        }
        self.room_for_a_key(&id, now).await?;
        // The new key is stored before the old one is given an end, so a
        // failure in between leaves two working keys, never none.
        let (api_key, new) = apikey::generate(&id, now);
        self.storage
            .put_api_key(&new)
            .await
            .map_err(ApiError::from)?;
        let end = now.saturating_add(i64::from(grace) * 1000);
        // Rotating a key already rotated out never extends its life.
        old.expires_at = if old.expires_at == 0 {
            end
        } else {
            old.expires_at.min(end)
        };
        self.storage
            .put_api_key(&old)
            .await
            .map_err(ApiError::from)?;
        self.auth.forget_key(&old.key_id);
        tracing::info!(
            target: "sesame::audit",
            %caller,
            tenant = %id,
            old_key_id = %old.key_id,
            new_key_id = %new.key_id,
            old_expires_at_unix_ms = old.expires_at,
            "API key rotated"
        );
        self.record(
            &caller,
            &id,
            AuditAction::ApiKeyRotated,
            format!(
                "key {} replaced by {}; old key ends at {} ms",
                old.key_id, new.key_id, old.expires_at
            ),
        );
        Ok(Response::new(pb::RotateApiKeyResponse {
            new_key: Some(key_out(&new, now)),
            api_key,
            old_key: Some(key_out(&old, now)),
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        let caller = self.admin(&request)?;
        let r = request.into_inner();
        let id = tenant_id(&r.tenant_id)?;
        let mut key = self.key_of(&id, &r.key_id).await?;
        if !key.revoked {
            key.revoked = true;
            self.storage
                .put_api_key(&key)
                .await
                .map_err(ApiError::from)?;
            tracing::info!(target: "sesame::audit", %caller, tenant = %id, key_id = %key.key_id, "API key revoked");
            self.record(
                &caller,
                &id,
                AuditAction::ApiKeyRevoked,
                format!("key {}", key.key_id),
            );
        }
        self.auth.forget_key(&key.key_id);
        Ok(Response::new(key_out(&key, now_ms())))
    }
}

/// A request's page size: 0 is the default (100), at most 1,000.
pub(crate) fn page_size(n: u32) -> Result<usize, ApiError> {
    match n {
        0 => Ok(DEFAULT_PAGE_SIZE as usize),
        n if n > MAX_PAGE_SIZE => Err(ApiError::invalid(
            "page_size",
            format!("is {n}; at most {MAX_PAGE_SIZE}"),
        )),
        n => Ok(n as usize),
    }
}

/// The same admin key guards the whole audit trail.
#[tonic::async_trait]
impl pb::audit_admin_service_server::AuditAdminService for TenantAdminApi {
    async fn list_audit_chains(
        &self,
        request: Request<pb::ListAuditChainsRequest>,
    ) -> Result<Response<pb::ListAuditChainsResponse>, Status> {
        self.admin(&request)?;
        let r = request.into_inner();
        let size = page_size(r.page_size)?;
        if r.page_token.len() > 512 {
            return Err(ApiError::invalid("page_token", "is not a next_page_token").into());
        }
        let after = (!r.page_token.is_empty()).then_some(r.page_token.as_str());
        let mut heads = self
            .storage
            .list_audit_chains(after, size + 1)
            .await
            .map_err(ApiError::from)?;
        let more = heads.len() > size;
        heads.truncate(size);
        let next_page_token = match heads.last() {
            Some(h) if more => h.chain.clone(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListAuditChainsResponse {
            chains: heads
                .into_iter()
                .map(|h| pb::AuditChainHead {
                    chain: h.chain,
                    tenant_id: h.tenant_id,
                    started_at_unix_ms: h.started_at,
                    seq: h.seq,
                    hash: h.hash.to_vec(),
                })
                .collect(),
            next_page_token,
        }))
    }

    async fn read_audit_chain(
        &self,
        request: Request<pb::ReadAuditChainRequest>,
    ) -> Result<Response<pb::ReadAuditChainResponse>, Status> {
        self.admin(&request)?;
        let r = request.into_inner();
        let size = page_size(r.page_size)?;
        if r.chain.is_empty() || r.chain.len() > 512 || r.chain.contains('\0') {
            return Err(
                ApiError::invalid("chain", "must be a chain id from ListAuditChains").into(),
            );
        }
        let records = self
            .storage
            .read_audit_chain(&r.chain, r.from_seq, size)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ReadAuditChainResponse {
            records: records
                .iter()
                .map(sesame_grpc::convert::audit_record_out)
                .collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_keys_are_long_random_and_recognised() {
        let a = generate_admin_key();
        let b = generate_admin_key();
        assert_ne!(a, b);
        assert!(a.starts_with("adm_") && a.len() == 4 + 43);
        assert_eq!(
            admin_key_sha256(&a),
            Some(Sha256::digest(a.as_bytes()).into())
        );
        assert!(admin_key_sha256("adm_short").is_none());
        assert!(admin_key_sha256(&a.replace("adm_", "sk_")).is_none());
        assert!(admin_key_sha256(&format!("{a}!")).is_none());
    }
}
