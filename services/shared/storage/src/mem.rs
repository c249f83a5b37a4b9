//! In-memory backend for unit tests: one mutex over plain maps, so its
//! behaviour is easy to trust and it serves as the reference for the
//! conformance suite.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use sesame_core::audit::{AuditRecord, ChainHead};
use sesame_core::model::{UsageReport, UserGuardState};
use sesame_core::time::UnixMillis;
use sesame_core::webhook::{DeadDelivery, WebhookEndpoint};
use sesame_core::{
    ApiKeyRecord, Challenge, ChallengeId, Device, DeviceId, EnrollmentTicket, Resolution, Tenant,
    TenantId,
};

use crate::{AuditCursor, AuditQuery, Created, GuardedCreate, Result, Storage, StorageError};

#[derive(Default)]
struct Inner {
    tenants: HashMap<TenantId, Tenant>,
    api_keys: HashMap<String, ApiKeyRecord>,
    enrollments: HashMap<[u8; 32], EnrollmentTicket>,
    devices: HashMap<DeviceId, Device>,
    challenges: HashMap<ChallengeId, Challenge>,
    idempotency: HashMap<(TenantId, String), ChallengeId>,
    guards: HashMap<(TenantId, String), (u64, UserGuardState)>,
    usage: HashMap<(TenantId, String), UsageReport>,
    audit: BTreeMap<(String, u64), AuditRecord>,
    audit_heads: BTreeMap<String, ChainHead>,
    webhooks: HashMap<TenantId, WebhookEndpoint>,
    dead_deliveries: BTreeMap<(TenantId, String), DeadDelivery>,
}

impl Inner {
    /// Stores a new challenge, or returns the tenant's earlier one with the
    /// same idempotency key (storing nothing).
    fn insert_challenge(&mut self, challenge: &Challenge) -> Created {
        if let Some(key) = &challenge.idempotency_key {
            let k = (challenge.tenant_id.clone(), key.clone());
            if let Some(existing) = self
                .idempotency
                .get(&k)
                .and_then(|id| self.challenges.get(id))
            {
                return Created::Existing(Box::new(existing.clone()));
            }
            self.idempotency.insert(k, challenge.id.clone());
        }
        self.challenges
            .insert(challenge.id.clone(), challenge.clone());
        Created::New
    }

    /// The guard record's version (0: none yet).
    fn guard_version(&self, key: &(TenantId, String)) -> u64 {
        self.guards.get(key).map(|(v, _)| *v).unwrap_or(0)
    }
}

#[derive(Default)]
pub struct MemStorage {
    inner: Mutex<Inner>,
}

impl MemStorage {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| StorageError::Backend("mem storage mutex poisoned".into()))
    }
}

#[async_trait]
impl Storage for MemStorage {
    fn name(&self) -> &'static str {
        "mem"
    }

    async fn health_check(&self) -> Result<()> {
        self.lock().map(|_| ())
    }

    async fn put_tenant(&self, tenant: &Tenant) -> Result<()> {
        self.lock()?
            .tenants
            .insert(tenant.id.clone(), tenant.clone());
        Ok(())
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>> {
        Ok(self.lock()?.tenants.get(id).cloned())
    }

    async fn create_tenant(&self, tenant: &Tenant) -> Result<bool> {
        let mut inner = self.lock()?;
        if inner.tenants.contains_key(&tenant.id) {
            return Ok(false);
        }
        inner.tenants.insert(tenant.id.clone(), tenant.clone());
        Ok(true)
    }

    async fn list_tenants(&self, after: Option<&TenantId>, limit: usize) -> Result<Vec<Tenant>> {
        let inner = self.lock()?;
        let mut all: Vec<&Tenant> = inner
            .tenants
            .values()
            .filter(|t| after.is_none_or(|a| t.id.as_str() > a.as_str()))
            .collect();
        all.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        Ok(all.into_iter().take(limit).cloned().collect())
    }

    async fn put_api_key(&self, key: &ApiKeyRecord) -> Result<()> {
        self.lock()?
            .api_keys
            .insert(key.key_id.clone(), key.clone());
        Ok(())
    }

    async fn get_api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>> {
        Ok(self.lock()?.api_keys.get(key_id).cloned())
    }

    async fn list_api_keys(&self, tenant: &TenantId) -> Result<Vec<ApiKeyRecord>> {
        let mut keys: Vec<ApiKeyRecord> = self
            .lock()?
            .api_keys
            .values()
            .filter(|k| &k.tenant_id == tenant)
            .cloned()
            .collect();
        keys.sort_by(|a, b| (a.created_at, &a.key_id).cmp(&(b.created_at, &b.key_id)));
        Ok(keys)
    }

    async fn create_enrollment(&self, ticket: &EnrollmentTicket) -> Result<()> {
        self.lock()?
            .enrollments
            .insert(ticket.token_sha256, ticket.clone());
        Ok(())
    }

    async fn get_enrollment(&self, token_sha256: &[u8; 32]) -> Result<Option<EnrollmentTicket>> {
        Ok(self.lock()?.enrollments.get(token_sha256).cloned())
    }

    async fn complete_enrollment(
        &self,
        token_sha256: &[u8; 32],
        device: &Device,
        max_devices: usize,
    ) -> Result<()> {
        let mut g = self.lock()?;
        if !g.enrollments.contains_key(token_sha256) {
            return Err(StorageError::Conflict(
                "enrollment token was already used".into(),
            ));
        }
        let active = g
            .devices
            .values()
            .filter(|d| {
                d.tenant_id == device.tenant_id && d.user_id == device.user_id && d.is_active()
            })
            .count();
        if active >= max_devices {
            return Err(StorageError::LimitExceeded(format!(
                "user already has {active} active devices (at most {max_devices})"
            )));
        }
        g.enrollments.remove(token_sha256);
        g.devices.insert(device.id.clone(), device.clone());
        Ok(())
    }

    async fn get_device(&self, id: &DeviceId) -> Result<Option<Device>> {
        Ok(self.lock()?.devices.get(id).cloned())
    }

    async fn list_devices(&self, tenant: &TenantId, user_id: &str) -> Result<Vec<Device>> {
        let g = self.lock()?;
        let mut v: Vec<Device> = g
            .devices
            .values()
            .filter(|d| &d.tenant_id == tenant && d.user_id == user_id)
            .cloned()
            .collect();
        v.sort_by(|a, b| (a.enrolled_at, &a.id).cmp(&(b.enrolled_at, &b.id)));
        Ok(v)
    }

    async fn revoke_device(
        &self,
        tenant: &TenantId,
        id: &DeviceId,
        now: UnixMillis,
    ) -> Result<Device> {
        let mut g = self.lock()?;
        match g.devices.get_mut(id) {
            Some(d) if &d.tenant_id == tenant => {
                if d.revoked_at.is_none() {
                    d.revoked_at = Some(now);
                }
                Ok(d.clone())
            }
            _ => Err(StorageError::NotFound("device")),
        }
    }

    async fn update_push_token(&self, id: &DeviceId, push_token: &str) -> Result<Device> {
        let mut g = self.lock()?;
        let d = g
            .devices
            .get_mut(id)
            .ok_or(StorageError::NotFound("device"))?;
        if !d.is_active() {
            return Err(StorageError::Conflict("device is revoked".into()));
        }
        d.push_token = push_token.to_owned();
        d.push_enabled = true;
        Ok(d.clone())
    }

    async fn disable_push(&self, id: &DeviceId, dead_token: &str) -> Result<bool> {
        let mut g = self.lock()?;
        match g.devices.get_mut(id) {
            Some(d) if d.push_token == dead_token && d.push_enabled => {
                d.push_enabled = false;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn create_challenge(&self, challenge: &Challenge) -> Result<Created> {
        Ok(self.lock()?.insert_challenge(challenge))
    }

    async fn create_challenge_guarded(
        &self,
        challenge: &Challenge,
        expected: u64,
        guard: &UserGuardState,
    ) -> Result<GuardedCreate> {
        // One lock for both: the version check, then the challenge, then the record.
        let mut g = self.lock()?;
        let guard_key = (challenge.tenant_id.clone(), challenge.user_id.clone());
        if g.guard_version(&guard_key) != expected {
            return Ok(GuardedCreate::Stale);
        }
        if let Created::Existing(e) = g.insert_challenge(challenge) {
            return Ok(GuardedCreate::Existing(e));
        }
        g.guards.insert(guard_key, (expected + 1, guard.clone()));
        Ok(GuardedCreate::New)
    }

    async fn get_challenge(&self, id: &ChallengeId) -> Result<Option<Challenge>> {
        Ok(self.lock()?.challenges.get(id).cloned())
    }

    async fn pending_challenges(
        &self,
        device: &DeviceId,
        now: UnixMillis,
    ) -> Result<Vec<Challenge>> {
        let g = self.lock()?;
        let mut v: BTreeMap<(UnixMillis, ChallengeId), Challenge> = BTreeMap::new();
        for c in g.challenges.values() {
            if c.devices.contains(device) && !c.status(now).is_final() {
                v.insert((c.created_at, c.id.clone()), c.clone());
            }
        }
        Ok(v.into_values().collect())
    }

    async fn resolve_challenge(
        &self,
        id: &ChallengeId,
        resolution: &Resolution,
        now: UnixMillis,
    ) -> Result<Challenge> {
        let mut g = self.lock()?;
        let c = g
            .challenges
            .get_mut(id)
            .ok_or(StorageError::NotFound("challenge"))?;
        c.check_transition(now)?;
        c.resolution = Some(resolution.clone());
        Ok(c.clone())
    }

    async fn get_user_guard(
        &self,
        tenant: &TenantId,
        user_id: &str,
    ) -> Result<(u64, UserGuardState)> {
        let g = self.lock()?;
        Ok(g.guards
            .get(&(tenant.clone(), user_id.to_owned()))
            .cloned()
            .unwrap_or_default())
    }

    async fn put_user_guard(
        &self,
        tenant: &TenantId,
        user_id: &str,
        expected: u64,
        state: &UserGuardState,
    ) -> Result<bool> {
        let mut g = self.lock()?;
        let key = (tenant.clone(), user_id.to_owned());
        if g.guard_version(&key) != expected {
            return Ok(false);
        }
        g.guards.insert(key, (expected + 1, state.clone()));
        Ok(true)
    }

    async fn put_usage(&self, tenant: &TenantId, report: &UsageReport) -> Result<()> {
        self.lock()?
            .usage
            .insert((tenant.clone(), report.instance.clone()), report.clone());
        Ok(())
    }

    async fn list_usage(&self, tenant: &TenantId) -> Result<Vec<UsageReport>> {
        let g = self.lock()?;
        let mut v: Vec<UsageReport> = g
            .usage
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|(_, r)| r.clone())
            .collect();
        v.sort_by(|a, b| a.instance.cmp(&b.instance));
        Ok(v)
    }

    async fn append_audit(&self, records: &[AuditRecord], heads: &[ChainHead]) -> Result<()> {
        let mut inner = self.lock()?;
        for r in records {
            inner.audit.insert((r.chain.clone(), r.seq), r.clone());
        }
        for h in heads {
            inner.audit_heads.insert(h.chain.clone(), h.clone());
        }
        Ok(())
    }

    async fn list_audit_chains(&self, after: Option<&str>, limit: usize) -> Result<Vec<ChainHead>> {
        let inner = self.lock()?;
        Ok(inner
            .audit_heads
            .values()
            .filter(|h| after.is_none_or(|a| h.chain.as_str() > a))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn read_audit_chain(
        &self,
        chain: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>> {
        let inner = self.lock()?;
        Ok(inner
            .audit
            .range((chain.to_owned(), from_seq)..=(chain.to_owned(), u64::MAX))
            .take(limit)
            .map(|(_, r)| r.clone())
            .collect())
    }

    async fn query_audit(
        &self,
        tenant: &TenantId,
        query: &AuditQuery,
        limit: usize,
    ) -> Result<Vec<AuditRecord>> {
        let inner = self.lock()?;
        let mut out: Vec<AuditRecord> = inner
            .audit
            .values()
            .filter(|r| r.entry.tenant_id == tenant.as_str() && query.matches(r))
            .cloned()
            .collect();
        out.sort_by_key(AuditCursor::of);
        out.truncate(limit);
        Ok(out)
    }

    async fn put_webhook(
        &self,
        endpoint: &WebhookEndpoint,
        expected: Option<UnixMillis>,
    ) -> Result<bool> {
        let mut g = self.lock()?;
        if g.webhooks.get(&endpoint.tenant_id).map(|e| e.updated_at) != expected {
            return Ok(false);
        }
        g.webhooks
            .insert(endpoint.tenant_id.clone(), endpoint.clone());
        Ok(true)
    }

    async fn get_webhook(&self, tenant: &TenantId) -> Result<Option<WebhookEndpoint>> {
        Ok(self.lock()?.webhooks.get(tenant).cloned())
    }

    async fn delete_webhook(&self, tenant: &TenantId) -> Result<bool> {
        Ok(self.lock()?.webhooks.remove(tenant).is_some())
    }

    async fn put_dead_delivery(&self, dead: &DeadDelivery) -> Result<()> {
        self.lock()?.dead_deliveries.insert(
            (dead.tenant_id.clone(), dead.delivery_id.clone()),
            dead.clone(),
        );
        Ok(())
    }

    async fn list_dead_deliveries(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadDelivery>> {
        let g = self.lock()?;
        Ok(g.dead_deliveries
            .iter()
            .filter(|((t, id), _)| t == tenant && after.is_none_or(|a| id.as_str() > a))
            .take(limit)
            .map(|(_, d)| d.clone())
            .collect())
    }

    async fn delete_dead_delivery(&self, tenant: &TenantId, delivery_id: &str) -> Result<bool> {
        Ok(self
            .lock()?
            .dead_deliveries
            .remove(&(tenant.clone(), delivery_id.to_owned()))
            .is_some())
    }

    async fn purge_expired(
        &self,
        now: UnixMillis,
        challenges_before: UnixMillis,
        guards_before: UnixMillis,
    ) -> Result<usize> {
        let mut g = self.lock()?;
        let dead_before = g.dead_deliveries.len();
        g.dead_deliveries
            .retain(|_, d| d.failed_at >= challenges_before);
        let dead_purged = dead_before - g.dead_deliveries.len();
        let before = g.enrollments.len() + g.challenges.len() + g.guards.len() + dead_purged;
        g.enrollments.retain(|_, t| t.expires_at > now);
        g.challenges
            .retain(|_, c| c.expires_at >= challenges_before);
        g.guards
            .retain(|_, (_, st)| st.last_relevant() >= guards_before);
        // Today's reports carry daily counts: keep them until the day ends.
        let today = now.div_euclid(86_400_000);
        g.usage
            .retain(|_, r| r.day >= today || r.reported_at >= guards_before);
        let Inner {
            idempotency,
            challenges,
            ..
        } = &mut *g;
        idempotency.retain(|_, id| challenges.contains_key(id));
        Ok(before - g.enrollments.len() - g.challenges.len() - g.guards.len())
    }
}
