//! The storage boundary of Sesame: one trait, [`Storage`], with
//!
//! - [`EmbeddedStorage`]: the durable default, a redb file with group commit
//!   (many concurrent writes share one fsync), so `cargo run` needs no
//!   infrastructure and enrolled devices and verdicts survive `kill -9`;
//! - [`MemStorage`]: in memory, for unit tests;
//! - [`MeteredStorage`]: wraps any backend with latency and error metrics.
//!
//! Every backend passes the same conformance suite (`testsuite`, run by
//! `tests/conformance.rs`). Every method that takes a tenant enforces tenant
//! isolation itself, so a caller cannot forget it; methods keyed only by a
//! random 128-bit id return the record and leave the tenant check to the
//! caller, which holds the authenticated identity (device or tenant).

pub mod deadline;
mod embedded;
mod error;
mod mem;
pub mod metered;
#[cfg(feature = "testsuite")]
pub mod testsuite;

use async_trait::async_trait;
use sesame_core::audit::{AuditRecord, ChainHead};
use sesame_core::model::{UsageReport, UserGuardState};
use sesame_core::time::UnixMillis;
use sesame_core::webhook::{DeadDelivery, WebhookEndpoint};
use sesame_core::{
    ApiKeyRecord, Challenge, ChallengeId, Device, DeviceId, EnrollmentTicket, Resolution, Tenant,
    TenantId,
};

pub use embedded::{EmbeddedConfig, EmbeddedStorage};
pub use error::StorageError;
pub use mem::MemStorage;
pub use metered::MeteredStorage;

pub type Result<T> = std::result::Result<T, StorageError>;

/// What `create_challenge` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The challenge was stored.
    New,
    /// The tenant already created a challenge with this idempotency key: that one.
    Existing(Box<Challenge>),
}

/// What [`Storage::create_challenge_guarded`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardedCreate {
    /// The challenge and the guard record were both stored.
    New,
    /// The tenant already created a challenge with this idempotency key:
    /// that one. This challenge was not stored.
    Existing(Box<Challenge>),
    /// The guard record's version was no longer the expected one: nothing
    /// was written; the caller re-reads the record and decides again.
    Stale,
}

/// Which of one tenant's audit records to read: those in `[from, to)` (by
/// the entry's time), of one user or one challenge when set, in order of
/// (time, chain, seq), starting after `after` (the last record of the
/// previous page).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub user_id: Option<String>,
    pub challenge_id: Option<String>,
    pub from: UnixMillis,
    /// Exclusive; `UnixMillis::MAX` for no end.
    pub to: UnixMillis,
    pub after: Option<AuditCursor>,
}

/// A position in a tenant's audit trail.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AuditCursor {
    pub at: UnixMillis,
    pub chain: String,
    pub seq: u64,
}

impl AuditQuery {
    /// Whether `r` is one of this query's records (the tenant is the
    /// caller's to check).
    pub fn matches(&self, r: &AuditRecord) -> bool {
        let e = &r.entry;
        e.at >= self.from
            && e.at < self.to
            && self.user_id.as_ref().is_none_or(|u| &e.user_id == u)
            && self
                .challenge_id
                .as_ref()
                .is_none_or(|c| &e.challenge_id == c)
            && self.after.as_ref().is_none_or(|a| &AuditCursor::of(r) > a)
    }
}

impl AuditCursor {
    pub fn of(r: &AuditRecord) -> AuditCursor {
        AuditCursor {
            at: r.entry.at,
            chain: r.chain.clone(),
            seq: r.seq,
        }
    }
}

#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Short backend name for logs and metrics ("embedded", "mem", "scylla").
    fn name(&self) -> &'static str;

    /// Succeeds when the backend can serve reads and writes.
    async fn health_check(&self) -> Result<()>;

    /// `Some(lag)` when records carry time-to-live and the backend drops
    /// them itself, at most `lag` after they become purgeable (ScyllaDB);
    /// `purge_expired` may then find nothing to do. `None`: only
    /// `purge_expired` removes them.
    fn ttl_expiry(&self) -> Option<std::time::Duration> {
        None
    }

    async fn put_tenant(&self, tenant: &Tenant) -> Result<()>;
    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>>;
    /// Stores a new tenant unless one with its id exists: `false` then,
    /// and the existing one is untouched (two admins creating the same
    /// tenant at once get one tenant).
    async fn create_tenant(&self, tenant: &Tenant) -> Result<bool>;
    /// Up to `limit` tenants after `after` (the last one of the previous
    /// page), in an order the backend keeps stable: by id, or by token on
    /// ScyllaDB. A page shorter than `limit` is the last.
    async fn list_tenants(&self, after: Option<&TenantId>, limit: usize) -> Result<Vec<Tenant>>;
    async fn put_api_key(&self, key: &ApiKeyRecord) -> Result<()>;
    async fn get_api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>>;
    /// Every key record of one tenant (revoked and expired ones too), oldest first.
    async fn list_api_keys(&self, tenant: &TenantId) -> Result<Vec<ApiKeyRecord>>;

    async fn create_enrollment(&self, ticket: &EnrollmentTicket) -> Result<()>;
    async fn get_enrollment(&self, token_sha256: &[u8; 32]) -> Result<Option<EnrollmentTicket>>;
    /// Atomically consumes the ticket and stores the new device. Fails with
    /// `Conflict` when the ticket was already used (or never existed), and
    /// with `LimitExceeded` when the user already has `max_devices` active
    /// devices; nothing is stored then.
    async fn complete_enrollment(
        &self,
        token_sha256: &[u8; 32],
        device: &Device,
        max_devices: usize,
    ) -> Result<()>;

    async fn get_device(&self, id: &DeviceId) -> Result<Option<Device>>;
    /// All devices of one user of one tenant, oldest first.
    async fn list_devices(&self, tenant: &TenantId, user_id: &str) -> Result<Vec<Device>>;
    /// Marks a device revoked (idempotent). `NotFound` if it is not the tenant's.
    async fn revoke_device(
        &self,
        tenant: &TenantId,
        id: &DeviceId,
        now: UnixMillis,
    ) -> Result<Device>;
    /// Replaces the push token and re-enables push. `Conflict` if revoked.
    async fn update_push_token(&self, id: &DeviceId, push_token: &str) -> Result<Device>;
    /// Disables push for a device whose token the provider reported dead, but
    /// only while the device still has that token: a report about an old
    /// token must not disable the new one. Returns whether it changed.
    async fn disable_push(&self, id: &DeviceId, dead_token: &str) -> Result<bool>;

    /// Stores a new challenge, or returns the existing one with the same
    /// (tenant, idempotency key).
    async fn create_challenge(&self, challenge: &Challenge) -> Result<Created>;
    async fn get_challenge(&self, id: &ChallengeId) -> Result<Option<Challenge>>;
    /// Challenges that list this device and are still pending at `now`,
    /// oldest first.
    async fn pending_challenges(
        &self,
        device: &DeviceId,
        now: UnixMillis,
    ) -> Result<Vec<Challenge>>;
    /// The one final transition, atomic: applied only if the challenge is
    /// still pending at `now` (first answer wins). Returns the resolved
    /// challenge, or `Transition` saying what it already is.
    async fn resolve_challenge(
        &self,
        id: &ChallengeId,
        resolution: &Resolution,
        now: UnixMillis,
    ) -> Result<Challenge>;

    /// The push-bombing guard's record of one user, with its version
    /// (`(0, default)` when there is none).
    async fn get_user_guard(
        &self,
        tenant: &TenantId,
        user_id: &str,
    ) -> Result<(u64, UserGuardState)>;
    /// Compare-and-set: stores `state` as version `expected + 1` only if the
    /// stored version is still `expected` (0: no record). Returns whether it
    /// applied; a `false` means another writer won and the caller re-reads.
    async fn put_user_guard(
        &self,
        tenant: &TenantId,
        user_id: &str,
        expected: u64,
        state: &UserGuardState,
    ) -> Result<bool>;

    /// Stores a new challenge together with its user's guard record (the
    /// compare-and-set of [`Storage::put_user_guard`], version `expected`),
    /// so that a login costs one durable write instead of two.
    ///
    /// Backends with multi-key transactions (embedded, mem) apply both or
    /// neither. The default, for backends without them (ScyllaDB: a
    /// lightweight transaction covers one partition), runs the
    /// compare-and-set and then the insert; there, after `Existing` or an
    /// error, the guard record may hold the admission, and the caller undoes
    /// it (`UserGuard::release` does nothing when the record does not name
    /// this challenge). `Stale` always means nothing was written.
    async fn create_challenge_guarded(
        &self,
        challenge: &Challenge,
        expected: u64,
        guard: &UserGuardState,
    ) -> Result<GuardedCreate> {
        if !self
            .put_user_guard(&challenge.tenant_id, &challenge.user_id, expected, guard)
            .await?
        {
            return Ok(GuardedCreate::Stale);
        }
        Ok(match self.create_challenge(challenge).await? {
            Created::New => GuardedCreate::New,
            Created::Existing(e) => GuardedCreate::Existing(e),
        })
    }

    /// Replaces this instance's usage report for the tenant (idempotent overwrite).
    async fn put_usage(&self, tenant: &TenantId, report: &UsageReport) -> Result<()>;
    /// Every instance's latest usage report for the tenant.
    async fn list_usage(&self, tenant: &TenantId) -> Result<Vec<UsageReport>>;

    /// Appends chained audit records and the new heads of their chains.
    /// Append only: nothing in this trait edits or deletes a record. A
    /// backend that cannot write both at once writes the records first, so
    /// a head never names a record that is not stored.
    async fn append_audit(&self, records: &[AuditRecord], heads: &[ChainHead]) -> Result<()>;
    /// Up to `limit` chain heads after the chain id `after`, by chain id
    /// (by token on ScyllaDB), of every tenant.
    async fn list_audit_chains(&self, after: Option<&str>, limit: usize) -> Result<Vec<ChainHead>>;
    /// Up to `limit` records of one chain from position `from_seq` on, in
    /// order of position.
    async fn read_audit_chain(
        &self,
        chain: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>>;
    /// Up to `limit` of one tenant's records matching `query` (see
    /// [`AuditQuery`]); only that tenant's.
    async fn query_audit(
        &self,
        tenant: &TenantId,
        query: &AuditQuery,
        limit: usize,
    ) -> Result<Vec<AuditRecord>>;

    /// Sets the tenant's webhook endpoint if the stored one is the version
    /// the caller read: `expected` is its `updated_at`, `None` for "there
    /// is none". `false` when another change came first (read, retry), so
    /// a secret already shown to the tenant is never silently replaced.
    async fn put_webhook(
        &self,
        endpoint: &WebhookEndpoint,
        expected: Option<UnixMillis>,
    ) -> Result<bool>;
    async fn get_webhook(&self, tenant: &TenantId) -> Result<Option<WebhookEndpoint>>;
    /// `false` when the tenant had none.
    async fn delete_webhook(&self, tenant: &TenantId) -> Result<bool>;
    /// Keeps a verdict delivery that was given up on (replacing one with
    /// the same delivery id). Purged with the challenges' retention.
    async fn put_dead_delivery(&self, dead: &DeadDelivery) -> Result<()>;
    /// Up to `limit` of the tenant's dead deliveries with a delivery id
    /// after `after`, by delivery id; only that tenant's.
    async fn list_dead_deliveries(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadDelivery>>;
    /// `false` when the tenant has no such dead delivery.
    async fn delete_dead_delivery(&self, tenant: &TenantId, delivery_id: &str) -> Result<bool>;

    /// Deletes enrollment tickets expired before `now`, challenges that
    /// expired before `challenges_before` (and dead webhook deliveries
    /// that failed before it), guard records whose last relevant
    /// time is before `guards_before`, and usage reports older than that and
    /// from an earlier UTC day. Returns how many records went.
    async fn purge_expired(
        &self,
        now: UnixMillis,
        challenges_before: UnixMillis,
        guards_before: UnixMillis,
    ) -> Result<usize>;
}
