//! The durable embedded backend: one redb file, written by one writer thread
//! with group commit.
//!
//! redb allows one write transaction at a time and each durable commit costs
//! an fsync. Instead of serialising callers on that lock, writes are sent to
//! a dedicated thread that takes every write waiting in its channel, applies
//! them in one transaction, commits once (one fsync for the whole batch), then
//! answers each caller. A caller is answered only after the commit that holds
//! its write is on disk, so an acknowledged enrollment or verdict survives
//! `kill -9`. Conditional writes (first answer wins, one-time tokens) are
//! correct because the writer applies them one after another.
//!
//! Each write closure must do all its checks before its first mutation: a
//! closure that refuses (conflict, not found) leaves nothing behind in the
//! shared transaction. A backend error inside any closure aborts the whole
//! batch and every caller in it gets the error.
//!
//! Reads use redb's MVCC read transactions directly on the caller's thread:
//! they never wait for the writer.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{
    Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
    WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sesame_core::audit::{AuditRecord, ChainHead};
use sesame_core::model::{UsageReport, UserGuardState};
use sesame_core::time::UnixMillis;
use sesame_core::webhook::{DeadDelivery, WebhookEndpoint};
use sesame_core::{
    ApiKeyRecord, Challenge, ChallengeId, Device, DeviceId, EnrollmentTicket, Resolution, Tenant,
    TenantId,
};

use crate::metered::{EMBEDDED_COMMIT_DURATION, EMBEDDED_COMMIT_WRITES};
use crate::{AuditQuery, Created, GuardedCreate, Result, Storage, StorageError};

type Table = TableDefinition<'static, &'static [u8], &'static [u8]>;

const TENANTS: Table = TableDefinition::new("tenants");
const API_KEYS: Table = TableDefinition::new("api_keys");
const ENROLLMENTS: Table = TableDefinition::new("enrollments");
const DEVICES: Table = TableDefinition::new("devices");
/// tenant \0 user \0 device_id -> ()
const USER_DEVICES: Table = TableDefinition::new("user_devices");
const CHALLENGES: Table = TableDefinition::new("challenges");
/// device_id \0 challenge_id -> () while the challenge is unresolved.
const DEVICE_PENDING: Table = TableDefinition::new("device_pending");
/// tenant \0 idempotency key -> challenge_id
const IDEMPOTENCY: Table = TableDefinition::new("idempotency");
/// expires_at (8 bytes BE) ++ challenge_id -> (), for purging.
const CHALLENGE_EXPIRY: Table = TableDefinition::new("challenge_expiry");

/// tenant \0 user -> {version, state} of the push-bombing guard.
const USER_GUARDS: Table = TableDefinition::new("user_guards");

#[derive(serde::Serialize, serde::Deserialize)]
struct GuardRecord {
    version: u64,
    state: UserGuardState,
}

/// tenant \0 instance -> usage report.
const USAGE: Table = TableDefinition::new("usage");

/// chain \0 seq (8 bytes BE) -> audit record.
const AUDIT: Table = TableDefinition::new("audit");
/// chain -> its head.
const AUDIT_HEADS: Table = TableDefinition::new("audit_heads");
/// tenant \0 at (8 BE) chain \0 seq (8 BE) -> (): the tenant's trail by time.
const AUDIT_BY_TIME: Table = TableDefinition::new("audit_by_time");
/// tenant \0 user \0 at chain \0 seq -> ().
const AUDIT_BY_USER: Table = TableDefinition::new("audit_by_user");
/// tenant \0 challenge \0 at chain \0 seq -> ().
const AUDIT_BY_CHALLENGE: Table = TableDefinition::new("audit_by_challenge");

/// tenant -> its webhook endpoint.
const WEBHOOKS: Table = TableDefinition::new("webhooks");
/// tenant \0 delivery id -> a dead delivery.
const DEAD_DELIVERIES: Table = TableDefinition::new("webhook_dead_deliveries");

const ALL_TABLES: [Table; 18] = [
    WEBHOOKS,
    DEAD_DELIVERIES,
    AUDIT,
    AUDIT_HEADS,
    AUDIT_BY_TIME,
    AUDIT_BY_USER,
    AUDIT_BY_CHALLENGE,
    USAGE,
    USER_GUARDS,
    TENANTS,
    API_KEYS,
    ENROLLMENTS,
    DEVICES,
    USER_DEVICES,
    CHALLENGES,
    DEVICE_PENDING,
    IDEMPOTENCY,
    CHALLENGE_EXPIRY,
];

#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// The database file.
    pub path: PathBuf,
    /// fsync every commit (default). Off only for throw-away benchmarks.
    pub durable: bool,
    /// Most writes applied in one transaction.
    pub max_batch: usize,
    /// Writes that may wait for the writer before callers get `Unavailable`.
    pub queue_capacity: usize,
    /// redb's page cache (a tenth of it for pages being written): a bound
    /// on the store's memory, reached once the file outgrows it.
    pub cache_bytes: usize,
}

impl EmbeddedConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        EmbeddedConfig {
            path: path.into(),
            durable: true,
            max_batch: 1024,
            queue_capacity: 65_536,
            cache_bytes: 64 << 20,
        }
    }
}

type Completion = Box<dyn FnOnce(Option<&StorageError>) + Send>;
/// A write: runs inside the batch transaction; returns its completion and
/// whether it hit a backend error (which aborts the batch).
type Job = Box<dyn FnOnce(&WriteTransaction) -> (Completion, bool) + Send>;

pub struct EmbeddedStorage {
    db: Arc<Database>,
    jobs: mpsc::SyncSender<Job>,
    /// False once the writer thread has exited: health checks must fail then.
    writer_alive: Arc<std::sync::atomic::AtomicBool>,
}

/// Clears the liveness flag when the writer thread exits, however it exits.
struct AliveGuard(Arc<std::sync::atomic::AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

fn backend(e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(e.to_string())
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(backend)
}

fn decode<T: DeserializeOwned>(table: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::Corrupt {
        table: table.to_owned(),
        message: e.to_string(),
    })
}

fn key2(a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + b.len() + 1);
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

fn key3(a: &str, b: &str, c: &str) -> Vec<u8> {
    let mut k = key2(a, b);
    k.push(0);
    k.extend_from_slice(c.as_bytes());
    k
}

/// Which audit index a key goes to.
#[derive(Clone, Copy)]
enum AuditIndex {
    Time,
    User,
    Challenge,
}

fn audit_key(chain: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(chain.len() + 9);
    k.extend_from_slice(chain.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `prefix \0`, then the position (time, chain, seq) in byte order.
fn audit_index_key(prefix: &[u8], at: UnixMillis, chain: &str, seq: u64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.push(0);
    k.extend_from_slice(&at.max(0).to_be_bytes());
    k.extend_from_slice(&audit_key(chain, seq));
    k
}

/// The (chain, seq) at the end of an index key made by `audit_index_key`.
fn audit_index_target(key: &[u8], prefix_len: usize) -> Option<(String, u64)> {
    let rest = key.get(prefix_len + 9..)?;
    let (chain, seq) = rest.split_at(rest.len().checked_sub(9)?);
    let seq = u64::from_be_bytes(seq.get(1..)?.try_into().ok()?);
    Some((String::from_utf8(chain.to_vec()).ok()?, seq))
}

fn expiry_key(expires_at: UnixMillis, id: &ChallengeId) -> Vec<u8> {
    let mut k = expires_at.max(0).to_be_bytes().to_vec();
    k.extend_from_slice(id.as_str().as_bytes());
    k
}

/// Keys under `prefix` are `prefix \0 rest` (text never contains \0), so
/// they all lie in `[prefix \0, prefix \x01)`; `prefix2...` lies outside.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    end.push(1);
    end
}

fn get_in<T: DeserializeOwned>(
    txn: &WriteTransaction,
    def: Table,
    key: &[u8],
) -> Result<Option<T>> {
    let table = txn.open_table(def).map_err(backend)?;
    let v = table.get(key).map_err(backend)?;
    match v {
        Some(g) => Ok(Some(decode(def.name(), g.value())?)),
        None => Ok(None),
    }
}

fn put_in(txn: &WriteTransaction, def: Table, key: &[u8], value: &[u8]) -> Result<()> {
    let mut table = txn.open_table(def).map_err(backend)?;
    table.insert(key, value).map_err(backend)?;
    Ok(())
}

fn remove_in(txn: &WriteTransaction, def: Table, key: &[u8]) -> Result<()> {
    let mut table = txn.open_table(def).map_err(backend)?;
    table.remove(key).map_err(backend)?;
    Ok(())
}

/// The tenant's earlier challenge with this one's idempotency key, if any.
fn idempotent_original(txn: &WriteTransaction, c: &Challenge) -> Result<Option<Challenge>> {
    let Some(k) = &c.idempotency_key else {
        return Ok(None);
    };
    let existing_id = {
        let t = txn.open_table(IDEMPOTENCY).map_err(backend)?;
        let v = t
            .get(key2(c.tenant_id.as_str(), k).as_slice())
            .map_err(backend)?;
        v.map(|g| g.value().to_vec())
    };
    match existing_id {
        Some(id) => get_in::<Challenge>(txn, CHALLENGES, &id),
        None => Ok(None),
    }
}

/// The stored version of a guard record (0: none yet).
fn guard_version(txn: &WriteTransaction, key: &[u8]) -> Result<u64> {
    Ok(get_in::<GuardRecord>(txn, USER_GUARDS, key)?
        .map(|r| r.version)
        .unwrap_or(0))
}

/// Writes a new challenge (`value`: its encoding) and its index entries.
fn insert_challenge(txn: &WriteTransaction, c: &Challenge, value: &[u8]) -> Result<()> {
    let id = c.id.as_str();
    put_in(txn, CHALLENGES, id.as_bytes(), value)?;
    if let Some(k) = &c.idempotency_key {
        put_in(
            txn,
            IDEMPOTENCY,
            &key2(c.tenant_id.as_str(), k),
            id.as_bytes(),
        )?;
    }
    for d in &c.devices {
        put_in(txn, DEVICE_PENDING, &key2(d.as_str(), id), &[])?;
    }
    put_in(txn, CHALLENGE_EXPIRY, &expiry_key(c.expires_at, &c.id), &[])
}

impl EmbeddedStorage {
    /// Opens (or creates) the database file and starts the writer thread.
    pub fn open(config: EmbeddedConfig) -> Result<Self> {
        if let Some(dir) = config.path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StorageError::Backend(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
        }
        let db = redb::Builder::new()
            .set_cache_size(config.cache_bytes)
            .create(&config.path)
            .map_err(|e| {
                StorageError::Backend(format!("cannot open {}: {e}", config.path.display()))
            })?;
        // Create every table up front so that reads never meet a missing one.
        let txn = db.begin_write().map_err(backend)?;
        for t in ALL_TABLES {
            txn.open_table(t).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;

        let db = Arc::new(db);
        let (tx, rx) = mpsc::sync_channel::<Job>(config.queue_capacity);
        let writer_db = db.clone();
        let durability = if config.durable {
            Durability::Immediate
        } else {
            Durability::Eventual
        };
        let max_batch = config.max_batch.max(1);
        let writer_alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let guard = AliveGuard(writer_alive.clone());
        std::thread::Builder::new()
            .name("sesame-storage-writer".into())
            .spawn(move || {
                let _guard = guard;
                writer_loop(&writer_db, &rx, durability, max_batch)
            })
            .map_err(backend)?;
        Ok(EmbeddedStorage {
            db,
            jobs: tx,
            writer_alive,
        })
    }

    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join("sesame.redb")
    }

    /// Runs `f` in the writer's next batch and waits for its commit.
    async fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<R> + Send + 'static,
    {
        let (tx, rx) = futures_channel::oneshot::channel::<Result<R>>();
        let job: Job = Box::new(move |txn| {
            let res = f(txn);
            // A closure that failed this way may have written part of its
            // change: the whole batch must not commit.
            let fatal = matches!(
                res,
                Err(StorageError::Backend(_) | StorageError::Corrupt { .. })
            );
            let completion: Completion = Box::new(move |commit_err| {
                let out = match commit_err {
                    Some(e) => Err(e.clone()),
                    None => res,
                };
                let _ = tx.send(out);
            });
            (completion, fatal)
        });
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => {
                StorageError::Unavailable("embedded store write queue is full".into())
            }
            mpsc::TrySendError::Disconnected(_) => {
                StorageError::Unavailable("embedded store writer has stopped".into())
            }
        })?;
        rx.await
            .map_err(|_| StorageError::Unavailable("embedded store writer has stopped".into()))?
    }

    fn read<T: DeserializeOwned>(&self, def: Table, key: &[u8]) -> Result<Option<T>> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(def).map_err(backend)?;
        match table.get(key).map_err(backend)? {
            Some(g) => Ok(Some(decode(def.name(), g.value())?)),
            None => Ok(None),
        }
    }
}

/// No commit delay: writes that arrive while a commit's fsync runs wait in
/// the channel and form the next batch, so batches grow with the load by
/// themselves. A delay before committing (PostgreSQL's `commit_delay`) was
/// measured: at 800 logins/s a 500 µs delay saved 6 % of the server's CPU,
/// at 3,000/s it doubled the login latency (the one writer thread became
/// the bottleneck), so there is none (docs/benchmarks.md).
fn writer_loop(db: &Database, rx: &mpsc::Receiver<Job>, durability: Durability, max_batch: usize) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let writes = batch.len();
        let started = std::time::Instant::now();
        let mut txn = match db.begin_write() {
            Ok(t) => t,
            Err(e) => {
                // Dropping the jobs unrun drops their reply channels: every
                // caller in the batch gets `Unavailable`, and nothing was written.
                tracing::error!(error = %e, "embedded store cannot begin a write transaction");
                drop(batch);
                continue;
            }
        };
        txn.set_durability(durability);
        let mut completions = Vec::with_capacity(batch.len());
        let mut failed = false;
        for job in batch {
            // A panicking closure must not take the writer (and so every
            // later write) down: its caller sees its reply channel dropped
            // (`Unavailable`) and the batch is aborted.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&txn))) {
                Ok((completion, fatal)) => {
                    failed |= fatal;
                    completions.push(completion);
                }
                Err(_) => {
                    tracing::error!("embedded store write panicked; aborting its batch");
                    failed = true;
                }
            }
        }
        let commit_err = if failed {
            let _ = txn.abort();
            Some(StorageError::Backend(
                "write batch aborted after a backend error".into(),
            ))
        } else {
            txn.commit().err().map(backend)
        };
        if let Some(e) = &commit_err {
            tracing::error!(error = %e, "embedded store commit failed");
        }
        metrics::histogram!(EMBEDDED_COMMIT_WRITES).record(writes as f64);
        metrics::histogram!(EMBEDDED_COMMIT_DURATION).record(started.elapsed().as_secs_f64());
        for c in completions {
            c(commit_err.as_ref());
        }
    }
}

#[async_trait]
impl Storage for EmbeddedStorage {
    fn name(&self) -> &'static str {
        "embedded"
    }

    async fn health_check(&self) -> Result<()> {
        if !self.writer_alive.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StorageError::Unavailable(
                "embedded store writer has stopped".into(),
            ));
        }
        let txn = self.db.begin_read().map_err(backend)?;
        txn.open_table(TENANTS).map_err(backend)?;
        Ok(())
    }

    async fn put_tenant(&self, tenant: &Tenant) -> Result<()> {
        let (k, v) = (tenant.id.as_str().as_bytes().to_vec(), encode(tenant)?);
        self.write(move |txn| put_in(txn, TENANTS, &k, &v)).await
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>> {
        self.read(TENANTS, id.as_str().as_bytes())
    }

    async fn create_tenant(&self, tenant: &Tenant) -> Result<bool> {
        let (k, v) = (tenant.id.as_str().as_bytes().to_vec(), encode(tenant)?);
        // The check and the insert share the writer's transaction: no race.
        self.write(move |txn| {
            let mut table = txn.open_table(TENANTS).map_err(backend)?;
            if table.get(k.as_slice()).map_err(backend)?.is_some() {
                return Ok(false);
            }
            table.insert(k.as_slice(), v.as_slice()).map_err(backend)?;
            Ok(true)
        })
        .await
    }

    async fn list_tenants(&self, after: Option<&TenantId>, limit: usize) -> Result<Vec<Tenant>> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(TENANTS).map_err(backend)?;
        let range = match after {
            // Ids are ASCII without NUL: the first key after `a` is `a\0`.
            Some(a) => {
                let mut start = a.as_str().as_bytes().to_vec();
                start.push(0);
                table.range(start.as_slice()..).map_err(backend)?
            }
            None => table.range::<&[u8]>(..).map_err(backend)?,
        };
        let mut out = Vec::new();
        for entry in range.take(limit) {
            let (_, v) = entry.map_err(backend)?;
            out.push(decode::<Tenant>("tenants", v.value())?);
        }
        Ok(out)
    }

    async fn put_api_key(&self, key: &ApiKeyRecord) -> Result<()> {
        let (k, v) = (key.key_id.as_bytes().to_vec(), encode(key)?);
        self.write(move |txn| put_in(txn, API_KEYS, &k, &v)).await
    }

    async fn get_api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>> {
        self.read(API_KEYS, key_id.as_bytes())
    }

    async fn list_api_keys(&self, tenant: &TenantId) -> Result<Vec<ApiKeyRecord>> {
        // Keys are few (a handful per tenant) and listed only by
        // administrators: a scan costs less than a second index to keep.
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(API_KEYS).map_err(backend)?;
        let mut keys = Vec::new();
        for entry in table.range::<&[u8]>(..).map_err(backend)? {
            let (_, v) = entry.map_err(backend)?;
            let k = decode::<ApiKeyRecord>("api_keys", v.value())?;
            if &k.tenant_id == tenant {
                keys.push(k);
            }
        }
        keys.sort_by(|a, b| (a.created_at, &a.key_id).cmp(&(b.created_at, &b.key_id)));
        Ok(keys)
    }

    async fn create_enrollment(&self, ticket: &EnrollmentTicket) -> Result<()> {
        let (k, v) = (ticket.token_sha256.to_vec(), encode(ticket)?);
        self.write(move |txn| put_in(txn, ENROLLMENTS, &k, &v))
            .await
    }

    async fn get_enrollment(&self, token_sha256: &[u8; 32]) -> Result<Option<EnrollmentTicket>> {
        self.read(ENROLLMENTS, token_sha256)
    }

    async fn complete_enrollment(
        &self,
        token_sha256: &[u8; 32],
        device: &Device,
        max_devices: usize,
    ) -> Result<()> {
        let token = token_sha256.to_vec();
        let device = device.clone();
        let value = encode(&device)?;
        self.write(move |txn| {
            let exists = txn
                .open_table(ENROLLMENTS)
                .map_err(backend)?
                .get(token.as_slice())
                .map_err(backend)?
                .is_some();
            if !exists {
                return Err(StorageError::Conflict(
                    "enrollment token was already used".into(),
                ));
            }
            let prefix = key2(device.tenant_id.as_str(), &device.user_id);
            let mut active = 0usize;
            {
                let idx = txn.open_table(USER_DEVICES).map_err(backend)?;
                let devices = txn.open_table(DEVICES).map_err(backend)?;
                let mut start = prefix.clone();
                start.push(0);
                for entry in idx
                    .range(start.as_slice()..prefix_end(&prefix).as_slice())
                    .map_err(backend)?
                {
                    let (k, _) = entry.map_err(backend)?;
                    let id = &k.value()[start.len()..];
                    if let Some(g) = devices.get(id).map_err(backend)? {
                        let d: Device = decode("devices", g.value())?;
                        if d.is_active() {
                            active += 1;
                        }
                    }
                }
            }
            if active >= max_devices {
                return Err(StorageError::LimitExceeded(format!(
                    "user already has {active} active devices (at most {max_devices})"
                )));
            }
            remove_in(txn, ENROLLMENTS, &token)?;
            put_in(txn, DEVICES, device.id.as_str().as_bytes(), &value)?;
            put_in(
                txn,
                USER_DEVICES,
                &key3(
                    device.tenant_id.as_str(),
                    &device.user_id,
                    device.id.as_str(),
                ),
                &[],
            )
        })
        .await
    }

    async fn get_device(&self, id: &DeviceId) -> Result<Option<Device>> {
        self.read(DEVICES, id.as_str().as_bytes())
    }

    async fn list_devices(&self, tenant: &TenantId, user_id: &str) -> Result<Vec<Device>> {
        let prefix = key2(tenant.as_str(), user_id);
        let mut start = prefix.clone();
        start.push(0);
        let txn = self.db.begin_read().map_err(backend)?;
        let idx = txn.open_table(USER_DEVICES).map_err(backend)?;
        let devices = txn.open_table(DEVICES).map_err(backend)?;
        let mut out = Vec::new();
        for entry in idx
            .range(start.as_slice()..prefix_end(&prefix).as_slice())
            .map_err(backend)?
        {
            let (k, _) = entry.map_err(backend)?;
            if let Some(g) = devices.get(&k.value()[start.len()..]).map_err(backend)? {
                out.push(decode::<Device>("devices", g.value())?);
            }
        }
        out.sort_by(|a, b| (a.enrolled_at, &a.id).cmp(&(b.enrolled_at, &b.id)));
        Ok(out)
    }

    async fn revoke_device(
        &self,
        tenant: &TenantId,
        id: &DeviceId,
        now: UnixMillis,
    ) -> Result<Device> {
        let (tenant, id) = (tenant.clone(), id.clone());
        self.write(move |txn| {
            let key = id.as_str().as_bytes();
            let mut d: Device = match get_in(txn, DEVICES, key)? {
                Some(d) => d,
                None => return Err(StorageError::NotFound("device")),
            };
            if d.tenant_id != tenant {
                return Err(StorageError::NotFound("device"));
            }
            if d.revoked_at.is_none() {
                d.revoked_at = Some(now);
                put_in(txn, DEVICES, key, &encode(&d)?)?;
            }
            Ok(d)
        })
        .await
    }

    async fn update_push_token(&self, id: &DeviceId, push_token: &str) -> Result<Device> {
        let (id, token) = (id.clone(), push_token.to_owned());
        self.write(move |txn| {
            let key = id.as_str().as_bytes();
            let mut d: Device =
                get_in(txn, DEVICES, key)?.ok_or(StorageError::NotFound("device"))?;
            if !d.is_active() {
                return Err(StorageError::Conflict("device is revoked".into()));
            }
            d.push_token = token;
            d.push_enabled = true;
            put_in(txn, DEVICES, key, &encode(&d)?)?;
            Ok(d)
        })
        .await
    }

    async fn disable_push(&self, id: &DeviceId, dead_token: &str) -> Result<bool> {
        let (id, token) = (id.clone(), dead_token.to_owned());
        self.write(move |txn| {
            let key = id.as_str().as_bytes();
            let Some(mut d): Option<Device> = get_in(txn, DEVICES, key)? else {
                return Ok(false);
            };
            if d.push_token != token || !d.push_enabled {
                return Ok(false);
            }
            d.push_enabled = false;
            put_in(txn, DEVICES, key, &encode(&d)?)?;
            Ok(true)
        })
        .await
    }

    async fn create_challenge(&self, challenge: &Challenge) -> Result<Created> {
        let c = challenge.clone();
        let value = encode(&c)?;
        self.write(move |txn| {
            if let Some(existing) = idempotent_original(txn, &c)? {
                return Ok(Created::Existing(Box::new(existing)));
            }
            insert_challenge(txn, &c, &value)?;
            Ok(Created::New)
        })
        .await
    }

    async fn create_challenge_guarded(
        &self,
        challenge: &Challenge,
        expected: u64,
        guard: &UserGuardState,
    ) -> Result<GuardedCreate> {
        let c = challenge.clone();
        let value = encode(&c)?;
        let guard_key = key2(c.tenant_id.as_str(), &c.user_id);
        let guard_value = encode(&GuardRecord {
            version: expected + 1,
            state: guard.clone(),
        })?;
        // One job in the writer's batch: both checks, then both writes, in
        // the same transaction and so the same group commit.
        self.write(move |txn| {
            if guard_version(txn, &guard_key)? != expected {
                return Ok(GuardedCreate::Stale);
            }
            if let Some(existing) = idempotent_original(txn, &c)? {
                return Ok(GuardedCreate::Existing(Box::new(existing)));
            }
            insert_challenge(txn, &c, &value)?;
            put_in(txn, USER_GUARDS, &guard_key, &guard_value)?;
            Ok(GuardedCreate::New)
        })
        .await
    }

    async fn get_challenge(&self, id: &ChallengeId) -> Result<Option<Challenge>> {
        self.read(CHALLENGES, id.as_str().as_bytes())
    }

    async fn pending_challenges(
        &self,
        device: &DeviceId,
        now: UnixMillis,
    ) -> Result<Vec<Challenge>> {
        let mut start = device.as_str().as_bytes().to_vec();
        start.push(0);
        let end = prefix_end(device.as_str().as_bytes());
        let txn = self.db.begin_read().map_err(backend)?;
        let idx = txn.open_table(DEVICE_PENDING).map_err(backend)?;
        let challenges = txn.open_table(CHALLENGES).map_err(backend)?;
        let mut out = Vec::new();
        for entry in idx
            .range(start.as_slice()..end.as_slice())
            .map_err(backend)?
        {
            let (k, _) = entry.map_err(backend)?;
            if let Some(g) = challenges.get(&k.value()[start.len()..]).map_err(backend)? {
                let c: Challenge = decode("challenges", g.value())?;
                if !c.status(now).is_final() {
                    out.push(c);
                }
            }
        }
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    async fn resolve_challenge(
        &self,
        id: &ChallengeId,
        resolution: &Resolution,
        now: UnixMillis,
    ) -> Result<Challenge> {
        let (id, resolution) = (id.clone(), resolution.clone());
        self.write(move |txn| {
            let key = id.as_str().as_bytes();
            let mut c: Challenge =
                get_in(txn, CHALLENGES, key)?.ok_or(StorageError::NotFound("challenge"))?;
            c.check_transition(now)?;
            c.resolution = Some(resolution);
            put_in(txn, CHALLENGES, key, &encode(&c)?)?;
            for d in &c.devices {
                remove_in(txn, DEVICE_PENDING, &key2(d.as_str(), id.as_str()))?;
            }
            Ok(c)
        })
        .await
    }

    async fn get_user_guard(
        &self,
        tenant: &TenantId,
        user_id: &str,
    ) -> Result<(u64, UserGuardState)> {
        Ok(self
            .read::<GuardRecord>(USER_GUARDS, &key2(tenant.as_str(), user_id))?
            .map(|r| (r.version, r.state))
            .unwrap_or_default())
    }

    async fn put_user_guard(
        &self,
        tenant: &TenantId,
        user_id: &str,
        expected: u64,
        state: &UserGuardState,
    ) -> Result<bool> {
        let key = key2(tenant.as_str(), user_id);
        let value = encode(&GuardRecord {
            version: expected + 1,
            state: state.clone(),
        })?;
        // The writer applies writes one at a time: the version check and the
        // write are atomic, like a ScyllaDB `UPDATE ... IF version = ?`.
        self.write(move |txn| {
            if guard_version(txn, &key)? != expected {
                return Ok(false);
            }
            put_in(txn, USER_GUARDS, &key, &value)?;
            Ok(true)
        })
        .await
    }

    async fn put_usage(&self, tenant: &TenantId, report: &UsageReport) -> Result<()> {
        let key = key2(tenant.as_str(), &report.instance);
        let value = encode(report)?;
        self.write(move |txn| put_in(txn, USAGE, &key, &value))
            .await
    }

    async fn list_usage(&self, tenant: &TenantId) -> Result<Vec<UsageReport>> {
        let prefix = tenant.as_str().as_bytes().to_vec();
        let mut start = prefix.clone();
        start.push(0);
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(USAGE).map_err(backend)?;
        let mut out = Vec::new();
        for entry in table
            .range(start.as_slice()..prefix_end(&prefix).as_slice())
            .map_err(backend)?
        {
            let (_, v) = entry.map_err(backend)?;
            out.push(decode::<UsageReport>("usage", v.value())?);
        }
        Ok(out)
    }

    async fn append_audit(&self, records: &[AuditRecord], heads: &[ChainHead]) -> Result<()> {
        let mut rows = Vec::with_capacity(records.len());
        for r in records {
            let e = &r.entry;
            let mut index = vec![(AuditIndex::Time, e.tenant_id.as_bytes().to_vec())];
            if !e.user_id.is_empty() {
                index.push((AuditIndex::User, key2(&e.tenant_id, &e.user_id)));
            }
            if !e.challenge_id.is_empty() {
                index.push((AuditIndex::Challenge, key2(&e.tenant_id, &e.challenge_id)));
            }
            let index: Vec<(AuditIndex, Vec<u8>)> = index
                .into_iter()
                .map(|(t, p)| (t, audit_index_key(&p, e.at, &r.chain, r.seq)))
                .collect();
            rows.push((audit_key(&r.chain, r.seq), encode(r)?, index));
        }
        let mut head_rows = Vec::with_capacity(heads.len());
        for h in heads {
            head_rows.push((h.chain.as_bytes().to_vec(), encode(h)?));
        }
        self.write(move |txn| {
            // Each table opened once for the whole batch.
            let mut records = txn.open_table(AUDIT).map_err(backend)?;
            let mut by_time = txn.open_table(AUDIT_BY_TIME).map_err(backend)?;
            let mut by_user = txn.open_table(AUDIT_BY_USER).map_err(backend)?;
            let mut by_challenge = txn.open_table(AUDIT_BY_CHALLENGE).map_err(backend)?;
            let mut heads = txn.open_table(AUDIT_HEADS).map_err(backend)?;
            for (key, value, index) in &rows {
                records
                    .insert(key.as_slice(), value.as_slice())
                    .map_err(backend)?;
                for (table, k) in index {
                    let t = match *table {
                        AuditIndex::Time => &mut by_time,
                        AuditIndex::User => &mut by_user,
                        AuditIndex::Challenge => &mut by_challenge,
                    };
                    t.insert(k.as_slice(), [].as_slice()).map_err(backend)?;
                }
            }
            for (k, v) in &head_rows {
                heads.insert(k.as_slice(), v.as_slice()).map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn list_audit_chains(&self, after: Option<&str>, limit: usize) -> Result<Vec<ChainHead>> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(AUDIT_HEADS).map_err(backend)?;
        let range = match after {
            Some(a) => {
                let mut start = a.as_bytes().to_vec();
                start.push(0);
                table.range(start.as_slice()..).map_err(backend)?
            }
            None => table.range::<&[u8]>(..).map_err(backend)?,
        };
        let mut out = Vec::new();
        for entry in range.take(limit) {
            let (_, v) = entry.map_err(backend)?;
            out.push(decode::<ChainHead>("audit_heads", v.value())?);
        }
        Ok(out)
    }

    async fn read_audit_chain(
        &self,
        chain: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(AUDIT).map_err(backend)?;
        let start = audit_key(chain, from_seq);
        let end = prefix_end(chain.as_bytes());
        let mut out = Vec::new();
        for entry in table
            .range(start.as_slice()..end.as_slice())
            .map_err(backend)?
            .take(limit)
        {
            let (_, v) = entry.map_err(backend)?;
            out.push(decode::<AuditRecord>("audit", v.value())?);
        }
        Ok(out)
    }

    async fn query_audit(
        &self,
        tenant: &TenantId,
        query: &AuditQuery,
        limit: usize,
    ) -> Result<Vec<AuditRecord>> {
        // The narrowest index that answers the query; the rest is filtered.
        let (def, prefix) = match (&query.challenge_id, &query.user_id) {
            (Some(c), _) => (AUDIT_BY_CHALLENGE, key2(tenant.as_str(), c)),
            (None, Some(u)) => (AUDIT_BY_USER, key2(tenant.as_str(), u)),
            (None, None) => (AUDIT_BY_TIME, tenant.as_str().as_bytes().to_vec()),
        };
        let mut start = prefix.clone();
        start.push(0);
        start.extend_from_slice(&query.from.max(0).to_be_bytes());
        if let Some(a) = &query.after {
            let mut after = audit_index_key(&prefix, a.at, &a.chain, a.seq);
            // The first key past the cursor's own.
            after.push(0);
            start = start.max(after);
        }
        let mut end = prefix.clone();
        end.push(0);
        end.extend_from_slice(&query.to.max(0).to_be_bytes());
        let txn = self.db.begin_read().map_err(backend)?;
        let index = txn.open_table(def).map_err(backend)?;
        let records = txn.open_table(AUDIT).map_err(backend)?;
        let mut out = Vec::new();
        if start >= end {
            return Ok(out);
        }
        for entry in index
            .range(start.as_slice()..end.as_slice())
            .map_err(backend)?
        {
            let (k, _) = entry.map_err(backend)?;
            let Some((chain, seq)) = audit_index_target(k.value(), prefix.len()) else {
                return Err(StorageError::Corrupt {
                    table: def.name().to_owned(),
                    message: "index key without a record position".into(),
                });
            };
            // An index row whose record is gone is the trail's problem to
            // report (`sesame audit verify`), not the query's.
            let Some(v) = records
                .get(audit_key(&chain, seq).as_slice())
                .map_err(backend)?
            else {
                continue;
            };
            let r = decode::<AuditRecord>("audit", v.value())?;
            if r.entry.tenant_id == tenant.as_str() && query.matches(&r) {
                out.push(r);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn put_webhook(
        &self,
        endpoint: &WebhookEndpoint,
        expected: Option<UnixMillis>,
    ) -> Result<bool> {
        let key = endpoint.tenant_id.as_str().as_bytes().to_vec();
        let value = encode(endpoint)?;
        // The writer applies writes one at a time: check and write are atomic.
        self.write(move |txn| {
            let current = get_in::<WebhookEndpoint>(txn, WEBHOOKS, &key)?.map(|e| e.updated_at);
            if current != expected {
                return Ok(false);
            }
            put_in(txn, WEBHOOKS, &key, &value)?;
            Ok(true)
        })
        .await
    }

    async fn get_webhook(&self, tenant: &TenantId) -> Result<Option<WebhookEndpoint>> {
        self.read(WEBHOOKS, tenant.as_str().as_bytes())
    }

    async fn delete_webhook(&self, tenant: &TenantId) -> Result<bool> {
        let key = tenant.as_str().as_bytes().to_vec();
        self.write(move |txn| {
            let mut t = txn.open_table(WEBHOOKS).map_err(backend)?;
            let removed = t.remove(key.as_slice()).map_err(backend)?.is_some();
            Ok(removed)
        })
        .await
    }

    async fn put_dead_delivery(&self, dead: &DeadDelivery) -> Result<()> {
        let key = key2(dead.tenant_id.as_str(), &dead.delivery_id);
        let value = encode(dead)?;
        self.write(move |txn| put_in(txn, DEAD_DELIVERIES, &key, &value))
            .await
    }

    async fn list_dead_deliveries(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadDelivery>> {
        let prefix = tenant.as_str().as_bytes().to_vec();
        let start = match after {
            // Just past `after`: its key followed by the smallest byte.
            Some(a) => {
                let mut k = key2(tenant.as_str(), a);
                k.push(0);
                k
            }
            None => {
                let mut k = prefix.clone();
                k.push(0);
                k
            }
        };
        let end = prefix_end(&prefix);
        let mut out = Vec::new();
        if start >= end {
            return Ok(out);
        }
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(DEAD_DELIVERIES).map_err(backend)?;
        for entry in table
            .range(start.as_slice()..end.as_slice())
            .map_err(backend)?
        {
            if out.len() >= limit {
                break;
            }
            let (_, v) = entry.map_err(backend)?;
            out.push(decode::<DeadDelivery>(
                "webhook_dead_deliveries",
                v.value(),
            )?);
        }
        Ok(out)
    }

    async fn delete_dead_delivery(&self, tenant: &TenantId, delivery_id: &str) -> Result<bool> {
        let key = key2(tenant.as_str(), delivery_id);
        self.write(move |txn| {
            let mut t = txn.open_table(DEAD_DELIVERIES).map_err(backend)?;
            let removed = t.remove(key.as_slice()).map_err(backend)?.is_some();
            Ok(removed)
        })
        .await
    }

    async fn purge_expired(
        &self,
        now: UnixMillis,
        challenges_before: UnixMillis,
        guards_before: UnixMillis,
    ) -> Result<usize> {
        self.write(move |txn| {
            let mut purged = 0usize;
            {
                let mut t = txn.open_table(DEAD_DELIVERIES).map_err(backend)?;
                let before = t.len().map_err(backend)?;
                t.retain(|_, v| {
                    // Its challenge is purged at the same bound: nothing
                    // left to redeliver.
                    serde_json::from_slice::<DeadDelivery>(v)
                        .map(|d| d.failed_at >= challenges_before)
                        .unwrap_or(false)
                })
                .map_err(backend)?;
                purged += (before - t.len().map_err(backend)?) as usize;
            }
            {
                let mut t = txn.open_table(USAGE).map_err(backend)?;
                let before = t.len().map_err(backend)?;
                t.retain(|_, v| {
                    // Today's reports carry daily counts: keep them until the day ends.
                    serde_json::from_slice::<UsageReport>(v)
                        .map(|r| {
                            r.day >= now.div_euclid(86_400_000) || r.reported_at >= guards_before
                        })
                        .unwrap_or(false)
                })
                .map_err(backend)?;
                purged += (before - t.len().map_err(backend)?) as usize;
            }
            {
                let mut t = txn.open_table(USER_GUARDS).map_err(backend)?;
                let before = t.len().map_err(backend)?;
                t.retain(|_, v| {
                    serde_json::from_slice::<GuardRecord>(v)
                        .map(|r| r.state.last_relevant() >= guards_before)
                        // Keep what cannot be read rather than lose a limit.
                        .unwrap_or(true)
                })
                .map_err(backend)?;
                purged += (before - t.len().map_err(backend)?) as usize;
            }
            {
                let mut t = txn.open_table(ENROLLMENTS).map_err(backend)?;
                let before = t.len().map_err(backend)?;
                t.retain(|_, v| {
                    serde_json::from_slice::<EnrollmentTicket>(v)
                        .map(|e| e.expires_at > now)
                        .unwrap_or(false)
                })
                .map_err(backend)?;
                purged += (before - t.len().map_err(backend)?) as usize;
            }
            // Expiry keys start with the 8-byte expiry: every key below this
            // bound expired before `challenges_before`.
            let bound = challenges_before.max(0).to_be_bytes();
            let expired: Vec<Vec<u8>> = {
                let t = txn.open_table(CHALLENGE_EXPIRY).map_err(backend)?;
                let mut v = Vec::new();
                for e in t.range(..&bound[..]).map_err(backend)? {
                    v.push(e.map_err(backend)?.0.value().to_vec());
                }
                v
            };
            for k in expired {
                let id = &k[8..];
                let c = match get_in::<Challenge>(txn, CHALLENGES, id) {
                    Ok(c) => c,
                    // Keep the undecodable record for inspection, but do not
                    // let it block every later purge.
                    Err(StorageError::Corrupt { message, .. }) => {
                        tracing::error!(%message, "corrupt challenge record left in place by purge");
                        remove_in(txn, CHALLENGE_EXPIRY, &k)?;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if let Some(c) = c {
                    if let Some(key) = &c.idempotency_key {
                        remove_in(txn, IDEMPOTENCY, &key2(c.tenant_id.as_str(), key))?;
                    }
                    for d in &c.devices {
                        remove_in(txn, DEVICE_PENDING, &key2(d.as_str(), c.id.as_str()))?;
                    }
                    remove_in(txn, CHALLENGES, id)?;
                    purged += 1;
                }
                remove_in(txn, CHALLENGE_EXPIRY, &k)?;
            }
            Ok(purged)
        })
        .await
    }
}
