//! A decorator that measures every storage call: latency by backend and
//! operation, and failures by kind. Expected refusals (not found, conflict,
//! an already-answered challenge) are counted apart from backend failures,
//! so an operator can alert on the latter alone.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use sesame_core::audit::{AuditRecord, ChainHead};
use sesame_core::model::{UsageReport, UserGuardState};
use sesame_core::time::UnixMillis;
use sesame_core::webhook::{DeadDelivery, WebhookEndpoint};
use sesame_core::{
    ApiKeyRecord, Challenge, ChallengeId, Device, DeviceId, EnrollmentTicket, Resolution, Tenant,
    TenantId,
};

use crate::{AuditQuery, Created, GuardedCreate, Result, Storage, StorageError};

/// `sesame_storage_operation_duration_seconds{backend, op}`
pub const STORAGE_DURATION: &str = "sesame_storage_operation_duration_seconds";
/// `sesame_storage_errors_total{backend, op, kind}`
pub const STORAGE_ERRORS: &str = "sesame_storage_errors_total";
/// `sesame_embedded_commit_writes`: writes applied in one group commit.
pub const EMBEDDED_COMMIT_WRITES: &str = "sesame_embedded_commit_writes";
/// `sesame_embedded_commit_duration_seconds`: one group commit, fsync included.
pub const EMBEDDED_COMMIT_DURATION: &str = "sesame_embedded_commit_duration_seconds";

pub fn describe() {
    metrics::describe_histogram!(
        STORAGE_DURATION,
        metrics::Unit::Seconds,
        "storage call latency by backend and operation"
    );
    metrics::describe_counter!(
        STORAGE_ERRORS,
        "storage calls that failed, by kind: unavailable, backend and corrupt are failures; the others expected refusals"
    );
    metrics::describe_histogram!(
        EMBEDDED_COMMIT_WRITES,
        "writes applied in one group commit of the embedded store (its count: commits)"
    );
    metrics::describe_histogram!(
        EMBEDDED_COMMIT_DURATION,
        metrics::Unit::Seconds,
        "one group commit of the embedded store, from applying its first write to the end of its fsync"
    );
}

fn kind(e: &StorageError) -> &'static str {
    match e {
        StorageError::Conflict(_) => "conflict",
        StorageError::NotFound(_) => "not_found",
        StorageError::LimitExceeded(_) => "limit_exceeded",
        StorageError::Transition(_) => "transition",
        StorageError::Unavailable(_) => "unavailable",
        StorageError::Backend(_) => "backend",
        StorageError::Corrupt { .. } => "corrupt",
    }
}

pub struct MeteredStorage {
    inner: Arc<dyn Storage>,
}

impl MeteredStorage {
    pub fn new(inner: Arc<dyn Storage>) -> Self {
        MeteredStorage { inner }
    }

    async fn timed<T>(&self, op: &'static str, fut: impl Future<Output = Result<T>>) -> Result<T> {
        let start = Instant::now();
        let res = fut.await;
        let backend = self.inner.name();
        metrics::histogram!(STORAGE_DURATION, "backend" => backend, "op" => op)
            .record(start.elapsed().as_secs_f64());
        if let Err(e) = &res {
            metrics::counter!(STORAGE_ERRORS, "backend" => backend, "op" => op, "kind" => kind(e))
                .increment(1);
        }
        res
    }
}

#[async_trait]
impl Storage for MeteredStorage {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn ttl_expiry(&self) -> Option<std::time::Duration> {
        self.inner.ttl_expiry()
    }

    async fn health_check(&self) -> Result<()> {
        self.timed("health_check", self.inner.health_check()).await
    }

    async fn put_tenant(&self, tenant: &Tenant) -> Result<()> {
        self.timed("put_tenant", self.inner.put_tenant(tenant))
            .await
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>> {
        self.timed("get_tenant", self.inner.get_tenant(id)).await
    }

    async fn create_tenant(&self, tenant: &Tenant) -> Result<bool> {
        self.timed("create_tenant", self.inner.create_tenant(tenant))
            .await
    }

    async fn list_tenants(&self, after: Option<&TenantId>, limit: usize) -> Result<Vec<Tenant>> {
        self.timed("list_tenants", self.inner.list_tenants(after, limit))
            .await
    }

    async fn list_api_keys(&self, tenant: &TenantId) -> Result<Vec<ApiKeyRecord>> {
        self.timed("list_api_keys", self.inner.list_api_keys(tenant))
            .await
    }

    async fn put_api_key(&self, key: &ApiKeyRecord) -> Result<()> {
        self.timed("put_api_key", self.inner.put_api_key(key)).await
    }

    async fn get_api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>> {
        self.timed("get_api_key", self.inner.get_api_key(key_id))
            .await
    }

    async fn create_enrollment(&self, ticket: &EnrollmentTicket) -> Result<()> {
        self.timed("create_enrollment", self.inner.create_enrollment(ticket))
            .await
    }

    async fn get_enrollment(&self, token_sha256: &[u8; 32]) -> Result<Option<EnrollmentTicket>> {
        self.timed("get_enrollment", self.inner.get_enrollment(token_sha256))
            .await
    }

    async fn complete_enrollment(
        &self,
        token_sha256: &[u8; 32],
        device: &Device,
        max_devices: usize,
    ) -> Result<()> {
        self.timed(
            "complete_enrollment",
            self.inner
                .complete_enrollment(token_sha256, device, max_devices),
        )
        .await
    }

    async fn get_device(&self, id: &DeviceId) -> Result<Option<Device>> {
        self.timed("get_device", self.inner.get_device(id)).await
    }

    async fn list_devices(&self, tenant: &TenantId, user_id: &str) -> Result<Vec<Device>> {
        self.timed("list_devices", self.inner.list_devices(tenant, user_id))
            .await
    }

    async fn revoke_device(
        &self,
        tenant: &TenantId,
        id: &DeviceId,
        now: UnixMillis,
    ) -> Result<Device> {
        self.timed("revoke_device", self.inner.revoke_device(tenant, id, now))
            .await
    }

    async fn update_push_token(&self, id: &DeviceId, push_token: &str) -> Result<Device> {
        self.timed(
            "update_push_token",
            self.inner.update_push_token(id, push_token),
        )
        .await
    }

    async fn disable_push(&self, id: &DeviceId, dead_token: &str) -> Result<bool> {
        self.timed("disable_push", self.inner.disable_push(id, dead_token))
            .await
    }

    // Forwarded explicitly: the trait's default would split an atomic
    // backend's single write into two.
    async fn create_challenge_guarded(
        &self,
        challenge: &Challenge,
        expected: u64,
        guard: &UserGuardState,
    ) -> Result<GuardedCreate> {
        self.timed(
            "create_challenge_guarded",
            self.inner
                .create_challenge_guarded(challenge, expected, guard),
        )
        .await
    }

    async fn create_challenge(&self, challenge: &Challenge) -> Result<Created> {
        self.timed("create_challenge", self.inner.create_challenge(challenge))
            .await
    }

    async fn get_challenge(&self, id: &ChallengeId) -> Result<Option<Challenge>> {
        self.timed("get_challenge", self.inner.get_challenge(id))
            .await
    }

    async fn pending_challenges(
        &self,
        device: &DeviceId,
        now: UnixMillis,
    ) -> Result<Vec<Challenge>> {
        self.timed(
            "pending_challenges",
            self.inner.pending_challenges(device, now),
        )
        .await
    }

    async fn resolve_challenge(
        &self,
        id: &ChallengeId,
        resolution: &Resolution,
        now: UnixMillis,
    ) -> Result<Challenge> {
        self.timed(
            "resolve_challenge",
            self.inner.resolve_challenge(id, resolution, now),
        )
        .await
    }

    async fn get_user_guard(
        &self,
        tenant: &TenantId,
        user_id: &str,
    ) -> Result<(u64, UserGuardState)> {
        self.timed("get_user_guard", self.inner.get_user_guard(tenant, user_id))
            .await
    }

    async fn put_user_guard(
        &self,
        tenant: &TenantId,
        user_id: &str,
        expected: u64,
        state: &UserGuardState,
    ) -> Result<bool> {
        self.timed(
            "put_user_guard",
            self.inner.put_user_guard(tenant, user_id, expected, state),
        )
        .await
    }

    async fn put_usage(&self, tenant: &TenantId, report: &UsageReport) -> Result<()> {
        self.timed("put_usage", self.inner.put_usage(tenant, report))
            .await
    }

    async fn list_usage(&self, tenant: &TenantId) -> Result<Vec<UsageReport>> {
        self.timed("list_usage", self.inner.list_usage(tenant))
            .await
    }

    async fn append_audit(&self, records: &[AuditRecord], heads: &[ChainHead]) -> Result<()> {
        self.timed("append_audit", self.inner.append_audit(records, heads))
            .await
    }

    async fn list_audit_chains(&self, after: Option<&str>, limit: usize) -> Result<Vec<ChainHead>> {
        self.timed(
            "list_audit_chains",
            self.inner.list_audit_chains(after, limit),
        )
        .await
    }

    async fn read_audit_chain(
        &self,
        chain: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>> {
        self.timed(
            "read_audit_chain",
            self.inner.read_audit_chain(chain, from_seq, limit),
        )
        .await
    }

    async fn query_audit(
        &self,
        tenant: &TenantId,
        query: &AuditQuery,
        limit: usize,
    ) -> Result<Vec<AuditRecord>> {
        self.timed("query_audit", self.inner.query_audit(tenant, query, limit))
            .await
    }

    async fn put_webhook(
        &self,
        endpoint: &WebhookEndpoint,
        expected: Option<UnixMillis>,
    ) -> Result<bool> {
        self.timed("put_webhook", self.inner.put_webhook(endpoint, expected))
            .await
    }

    async fn get_webhook(&self, tenant: &TenantId) -> Result<Option<WebhookEndpoint>> {
        self.timed("get_webhook", self.inner.get_webhook(tenant))
            .await
    }

    async fn delete_webhook(&self, tenant: &TenantId) -> Result<bool> {
        self.timed("delete_webhook", self.inner.delete_webhook(tenant))
            .await
    }

    async fn put_dead_delivery(&self, dead: &DeadDelivery) -> Result<()> {
        self.timed("put_dead_delivery", self.inner.put_dead_delivery(dead))
            .await
    }

    async fn list_dead_deliveries(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadDelivery>> {
        self.timed(
            "list_dead_deliveries",
            self.inner.list_dead_deliveries(tenant, after, limit),
        )
        .await
    }

    async fn delete_dead_delivery(&self, tenant: &TenantId, delivery_id: &str) -> Result<bool> {
        self.timed(
            "delete_dead_delivery",
            self.inner.delete_dead_delivery(tenant, delivery_id),
        )
        .await
    }

    async fn purge_expired(
        &self,
        now: UnixMillis,
        challenges_before: UnixMillis,
        guards_before: UnixMillis,
    ) -> Result<usize> {
        self.timed(
            "purge_expired",
            self.inner
                .purge_expired(now, challenges_before, guards_before),
        )
        .await
    }
}
