//! Sesame's ScyllaDB backend of [`Storage`], for deployments where many
//! `challenge` and `verifier` replicas share devices, challenges, verdicts
//! and limits.
//!
//! How it uses the cluster (data model: `schema/`, ARCHITECTURE.md):
//! - every statement is prepared once, with its partition key bound, so the
//!   driver routes it to a replica that owns the data (token-aware, and
//!   shard-aware on ScyllaDB);
//! - `LOCAL_QUORUM` for reads and writes, `LOCAL_SERIAL` for lightweight
//!   transactions; idempotent statements are marked so (the driver may
//!   retry them), and only idempotent reads run speculatively on a second
//!   replica when the first is slow;
//! - each one-time transition (consuming an enrollment ticket, the first
//!   answer to a challenge, revocation, the guard's compare-and-set) is a
//!   lightweight transaction; when its outcome is unknown (timeout, broken
//!   connection) it is read back at SERIAL consistency, never guessed;
//! - the caller's remaining deadline becomes the statement's timeout
//!   (`USING TIMEOUT` on ScyllaDB); short-lived rows carry TTLs, so
//!   `purge_expired` has nothing to do.

pub mod config;
pub mod cql;
pub mod errors;
pub mod rows;
pub mod schema;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use scylla::client::execution_profile::{ExecutionProfile, ExecutionProfileHandle};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::speculative_execution::SimpleSpeculativeExecutionPolicy;
use scylla::response::query_result::QueryResult;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, Row};
use sesame_core::audit::{AuditRecord, ChainHead};
use sesame_core::model::{UsageReport, UserGuardState};
use sesame_core::time::{now_ms, UnixMillis};
use sesame_core::webhook::{DeadDelivery, WebhookEndpoint};
use sesame_core::{
    ApiKeyRecord, Challenge, ChallengeId, Device, DeviceId, EnrollmentTicket, Resolution, Tenant,
    TenantId,
};
use sesame_storage::{AuditCursor, AuditQuery, Created, Result, Storage, StorageError};

pub use config::{ConfigError, FlavorSetting, ScyllaConfig, ScyllaSection, TlsSection};
pub use cql::Flavor;
use cql::{cql_duration, render, statement_timeout, ttl_secs};
use errors::{applied_of, lwt_failure, storage_error, Lwt};
use rows::*;

/// Usage reports matter for a day or two (quota sharing per UTC day).
const USAGE_TTL_SECS: i32 = 2 * 24 * 3600;
/// Extra time the driver waits beyond the server-side timeout, so the
/// server's own timeout answer arrives instead of a client-side one.
const CLIENT_SLACK: Duration = Duration::from_millis(50);
/// Positions of one audit chain per partition of `audit_records`.
const AUDIT_BLOCK: i64 = 65_536;
const DAY_MS: i64 = 86_400_000;

/// A chain position as CQL's signed bigint.
fn seq_value(seq: u64) -> Result<i64> {
    i64::try_from(seq)
        .map_err(|_| StorageError::Backend(format!("audit position {seq} out of range")))
}

fn decode_json<T: serde::de::DeserializeOwned>(table: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::Corrupt {
        table: table.to_owned(),
        message: e.to_string(),
    })
}

/// Rounds of a compare-and-set loop (enrollment slots) before giving up.
const CAS_ROUNDS: usize = 8;

/// One bound value: `None` is CQL null.
type Value = Option<CqlValue>;

fn text(s: impl Into<String>) -> Value {
    Some(CqlValue::Text(s.into()))
}
fn big(v: i64) -> Value {
    Some(CqlValue::BigInt(v))
}
fn int(v: i32) -> Value {
    Some(CqlValue::Int(v))
}
fn boolean(v: bool) -> Value {
    Some(CqlValue::Boolean(v))
}
fn blob(v: impl Into<Vec<u8>>) -> Value {
    Some(CqlValue::Blob(v.into()))
}
fn opt_text(v: Option<String>) -> Value {
    v.map(CqlValue::Text)
}
fn opt_big(v: Option<i64>) -> Value {
    v.map(CqlValue::BigInt)
}

/// A tenant's columns, in the order `put_tenant` and `create_tenant` bind them.
fn tenant_values(t: &Tenant) -> Vec<Value> {
    vec![
        text(t.id.as_str()),
        text(&t.display_name),
        boolean(t.disabled),
        big(t.created_at),
        text(&t.client_identity),
    ]
}

/// A prepared statement and where its timeout is bound.
struct Stmt {
    prepared: PreparedStatement,
    timeout_at: Option<usize>,
}

/// What kind of statement, for its execution settings.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Idempotent read: may be retried and run speculatively.
    Read,
    /// Read at LOCAL_SERIAL: sees (and completes) any Paxos round in
    /// flight; used to learn what a lightweight transaction did.
    SerialRead,
    /// Idempotent write (a plain upsert of the same values).
    Write,
    /// Lightweight transaction: never retried blindly.
    Conditional,
}

struct Statements {
    put_tenant: Stmt,
    get_tenant: Stmt,
    get_tenant_serial: Stmt,
    create_tenant: Stmt,
    list_tenants_first: Stmt,
    list_tenants_after: Stmt,
    put_api_key: Stmt,
    index_api_key: Stmt,
    get_api_key: Stmt,
    list_api_key_ids: Stmt,
    put_audit_record: Stmt,
    put_audit_head: Stmt,
    put_audit_by_time: Stmt,
    put_audit_day: Stmt,
    put_audit_by_user: Stmt,
    put_audit_by_challenge: Stmt,
    list_audit_heads_first: Stmt,
    create_webhook: Stmt,
    update_webhook: Stmt,
    get_webhook: Stmt,
    delete_webhook: Stmt,
    put_dead_delivery: Stmt,
    list_dead_first: Stmt,
    list_dead_after: Stmt,
    delete_dead_delivery: Stmt,
    list_audit_heads_after: Stmt,
    read_audit_block: Stmt,
    audit_days: Stmt,
    audit_by_time: Stmt,
    audit_by_user: Stmt,
    audit_by_challenge: Stmt,
    put_enrollment: Stmt,
    get_enrollment: Stmt,
    get_enrollment_serial: Stmt,
    consume_enrollment: Stmt,
    restore_enrollment: Stmt,
    put_device: Stmt,
    get_device: Stmt,
    get_device_serial: Stmt,
    list_user_devices: Stmt,
    revoke_device: Stmt,
    update_push_token: Stmt,
    disable_push: Stmt,
    claim_idempotency_key: Stmt,
    get_idempotency_key: Stmt,
    put_challenge: Stmt,
    put_pending: Stmt,
    get_challenge: Stmt,
    get_challenge_serial: Stmt,
    list_pending: Stmt,
    delete_pending: Stmt,
    resolve_challenge: Stmt,
    get_guard: Stmt,
    get_guard_serial: Stmt,
    insert_guard: Stmt,
    update_guard: Stmt,
    put_usage: Stmt,
    list_usage: Stmt,
    health: Stmt,
    /// The conditional batch that takes an enrollment slot (no timeout
    /// markers: statements inside a batch cannot carry `USING TIMEOUT`).
    take_slot: Batch,
}

/// The ScyllaDB backend.
pub struct ScyllaStorage {
    session: Session,
    config: ScyllaConfig,
    flavor: Flavor,
    st: Statements,
}

impl std::fmt::Debug for ScyllaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaStorage")
            .field("nodes", &self.config.nodes)
            .field("keyspace", &self.config.keyspace)
            .field("flavor", &self.flavor)
            .finish()
    }
}

/// Connects a driver session as configured (contact points, datacenter,
/// credentials, TLS) and works out the cluster's dialect.
pub async fn connect(config: &ScyllaConfig) -> Result<(Session, Flavor)> {
    let s = &config.section;
    let default_timeout = Duration::from_millis(s.request_timeout_ms);
    let profile = ExecutionProfile::builder()
        .consistency(Consistency::LocalQuorum)
        .serial_consistency(Some(SerialConsistency::LocalSerial))
        .request_timeout(Some(default_timeout + CLIENT_SLACK))
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(&config.nodes)
        .connection_timeout(Duration::from_millis(s.connect_timeout_ms))
        .default_execution_profile_handle(profile.into_handle());
    if !s.local_datacenter.is_empty() {
        builder = builder.prefer_datacenter(s.local_datacenter.clone());
    }
    if !s.username.is_empty() {
        let password = config
            .password()
            .map_err(|e| StorageError::Backend(e.to_string()))?
            .unwrap_or_default();
        builder = builder.user(s.username.clone(), password);
    }
    if s.tls.enabled {
        let tls = tls_config(&s.tls)?;
        builder = builder.tls_context(Some(tls));
    }
    let session = builder.build().await.map_err(|e| {
        StorageError::Unavailable(format!(
            "cannot connect to ScyllaDB at {}: {e}",
            config.nodes.join(",")
        ))
    })?;
    let flavor = match s.flavor {
        FlavorSetting::Scylla => Flavor::Scylla,
        FlavorSetting::Cassandra => Flavor::Cassandra,
        FlavorSetting::Auto => detect_flavor(&session),
    };
    Ok((session, flavor))
}

/// ScyllaDB nodes announce their shards (the driver keeps a sharder for
/// each); Cassandra nodes do not.
fn detect_flavor(session: &Session) -> Flavor {
    let state = session.get_cluster_state();
    let nodes = state.get_nodes_info();
    if !nodes.is_empty() && nodes.iter().all(|n| n.sharder().is_some()) {
        Flavor::Scylla
    } else {
        Flavor::Cassandra
    }
}

fn tls_config(t: &TlsSection) -> Result<Arc<rustls::ClientConfig>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        StorageError::Backend(format!("scylla.tls: {what}: {e}"))
    };
    let mut roots = rustls::RootCertStore::empty();
    if t.ca_file.as_os_str().is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    } else {
        for cert in CertificateDer::pem_file_iter(&t.ca_file)
            .map_err(|e| bad(&t.ca_file.display().to_string(), &e))?
        {
            let cert = cert.map_err(|e| bad(&t.ca_file.display().to_string(), &e))?;
            roots
                .add(cert)
                .map_err(|e| bad(&t.ca_file.display().to_string(), &e))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("protocol versions", &e))?
        .with_root_certificates(roots);
    let config = if t.cert_file.as_os_str().is_empty() {
        builder.with_no_client_auth()
    } else {
        let certs = CertificateDer::pem_file_iter(&t.cert_file)
            .map_err(|e| bad(&t.cert_file.display().to_string(), &e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad(&t.cert_file.display().to_string(), &e))?;
        let key = PrivateKeyDer::from_pem_file(&t.key_file)
            .map_err(|e| bad(&t.key_file.display().to_string(), &e))?;
        builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| bad("client certificate", &e))?
    };
    Ok(Arc::new(config))
}

/// Applies the migrations the keyspace lacks (creating the keyspace first);
/// returns the versions applied now.
pub async fn migrate(session: &Session, config: &ScyllaConfig, flavor: Flavor) -> Result<Vec<i32>> {
    let run = |cql: String| async move {
        session
            .query_unpaged(cql.clone(), &[])
            .await
            .map_err(|e| storage_error(&format!("run `{cql}`"), &e))?;
        Ok::<_, StorageError>(())
    };
    run(schema::keyspace_statement(config, flavor)).await?;
    run(schema::migrations_table_statement(&config.keyspace)).await?;
    let applied = applied_versions(session, &config.keyspace).await?;
    let mut now_applied = Vec::new();
    for m in schema::MIGRATIONS {
        if applied.contains(&m.version) {
            continue;
        }
        for statement in schema::statements(m.cql, &config.keyspace) {
            match run(statement.clone()).await {
                // CQL has no `ADD IF NOT EXISTS` before Cassandra 5: a
                // migration interrupted after its ALTER finds the column there.
                Err(e)
                    if schema::is_add_column(&statement)
                        && schema::column_exists_error(&e.to_string()) =>
                {
                    tracing::info!(%statement, "column already present");
                }
                r => r?,
            }
        }
        session
            .query_unpaged(
                format!(
                    "INSERT INTO {}.schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    config.keyspace
                ),
                (m.version, m.name, now_ms()),
            )
            .await
            .map_err(|e| storage_error("record the schema version", &e))?;
        now_applied.push(m.version);
    }
    Ok(now_applied)
}

/// Datacenters whose configured replication factor exceeds the nodes the
/// driver sees there: writes at `LOCAL_QUORUM` would fail (a common
/// mistake: the default factor 3 on a one-node development cluster).
pub fn replication_warnings(session: &Session, config: &ScyllaConfig) -> Vec<String> {
    let state = session.get_cluster_state();
    let nodes = state.get_nodes_info();
    config
        .section
        .replication
        .iter()
        .filter_map(|(dc, rf)| {
            let n = nodes
                .iter()
                .filter(|node| node.datacenter.as_deref() == Some(dc.as_str()))
                .count();
            (n < *rf as usize).then(|| {
                format!(
                    "datacenter {dc:?} has {n} node(s) but scylla.replication asks for {rf} replicas: \
                     LOCAL_QUORUM needs {} of them",
                    rf / 2 + 1
                )
            })
        })
        .collect()
}

/// Schema versions recorded in the keyspace.
pub async fn applied_versions(session: &Session, keyspace: &str) -> Result<Vec<i32>> {
    let rows = session
        .query_unpaged(
            format!("SELECT version FROM {keyspace}.schema_migrations"),
            &[],
        )
        .await
        .map_err(|e| match storage_error("read the schema version", &e) {
            StorageError::Backend(m) => StorageError::Backend(format!(
                "{m} (has `sesame migrate` created keyspace {keyspace}?)"
            )),
            other => other,
        })?
        .into_rows_result()
        .map_err(backend)?;
    rows.rows::<(i32,)>()
        .map_err(backend)?
        .map(|r| r.map(|(v,)| v).map_err(backend))
        .collect()
}

fn backend(e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(format!("ScyllaDB answer: {e}"))
}

impl ScyllaStorage {
    /// Connects, checks that the schema is current (`sesame migrate`
    /// creates it) and prepares every statement.
    pub async fn open(config: ScyllaConfig) -> Result<ScyllaStorage> {
        let (session, flavor) = connect(&config).await?;
        let applied = applied_versions(&session, &config.keyspace).await?;
        let latest = schema::latest_version();
        if !applied.contains(&latest) {
            return Err(StorageError::Backend(format!(
                "keyspace {} has schema versions {applied:?}; this build needs {latest}: run `sesame migrate`",
                config.keyspace
            )));
        }
        let st = prepare_all(&session, &config, flavor).await?;
        tracing::info!(nodes = %config.nodes.join(","), keyspace = %config.keyspace, ?flavor, "ScyllaDB storage ready");
        Ok(ScyllaStorage {
            session,
            config,
            flavor,
            st,
        })
    }

    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    fn default_timeout(&self) -> Duration {
        Duration::from_millis(self.config.section.request_timeout_ms)
    }

    /// The statement ready to run within the caller's deadline, and its values
    /// with the timeout bound where the statement expects it.
    fn bind(
        &self,
        s: &Stmt,
        mut values: Vec<Value>,
        what: &str,
    ) -> Result<(PreparedStatement, Vec<Value>)> {
        let timeout = statement_timeout(
            sesame_storage::deadline::remaining(),
            self.default_timeout(),
        )
        .ok_or_else(|| {
            StorageError::Unavailable(format!("no time left in the call's deadline to {what}"))
        })?;
        let mut prepared = s.prepared.clone();
        if timeout < self.default_timeout() {
            prepared.set_request_timeout(Some(timeout + CLIENT_SLACK));
        }
        if let Some(at) = s.timeout_at {
            values.insert(at.min(values.len()), Some(cql_duration(timeout)));
        }
        Ok((prepared, values))
    }

    /// Independent writes, at most 32 in flight at once.
    async fn execute_all(&self, writes: Vec<(&Stmt, Vec<Value>)>, what: &str) -> Result<()> {
        let mut writes = writes.into_iter().peekable();
        while writes.peek().is_some() {
            let wave: Vec<_> = writes
                .by_ref()
                .take(32)
                .map(|(s, v)| self.execute(s, v, what))
                .collect();
            futures::future::try_join_all(wave).await?;
        }
        Ok(())
    }

    async fn execute(&self, s: &Stmt, values: Vec<Value>, what: &str) -> Result<QueryResult> {
        let (p, v) = self.bind(s, values, what)?;
        self.session
            .execute_unpaged(&p, v)
            .await
            .map_err(|e| storage_error(what, &e))
    }

    /// The first row of a read, typed.
    async fn read_one<R>(&self, s: &Stmt, values: Vec<Value>, what: &str) -> Result<Option<R>>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let rows = self
            .execute(s, values, what)
            .await?
            .into_rows_result()
            .map_err(backend)?;
        rows.maybe_first_row::<R>().map_err(backend)
    }

    /// Every row of a read, page by page.
    async fn read_all<R>(&self, s: &Stmt, values: Vec<Value>, what: &str) -> Result<Vec<R>>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm> + Send + 'static,
    {
        let (p, v) = self.bind(s, values, what)?;
        let pager =
            self.session.execute_iter(p, v).await.map_err(|e| {
                StorageError::Unavailable(format!("ScyllaDB could not {what}: {e}"))
            })?;
        let stream = pager.rows_stream::<R>().map_err(backend)?;
        stream
            .try_collect()
            .await
            .map_err(|e| StorageError::Unavailable(format!("ScyllaDB could not {what}: {e}")))
    }

    /// Runs a lightweight transaction.
    async fn lwt(&self, s: &Stmt, values: Vec<Value>, what: &str) -> Result<Lwt> {
        let (p, v) = self.bind(s, values, what)?;
        match self.session.execute_unpaged(&p, v).await {
            Ok(r) => lwt_answer(r),
            Err(e) => lwt_failure(what, &e),
        }
    }

    async fn device_serial(&self, id: &DeviceId) -> Result<Option<Device>> {
        self.read_one::<DeviceRow>(
            &self.st.get_device_serial,
            vec![text(id.as_str())],
            "read a device",
        )
        .await?
        .map(device_of)
        .transpose()
    }

    async fn challenge_serial(&self, id: &ChallengeId) -> Result<Option<Challenge>> {
        self.read_one::<ChallengeRow>(
            &self.st.get_challenge_serial,
            vec![text(id.as_str())],
            "read a challenge",
        )
        .await?
        .map(challenge_of)
        .transpose()
    }

    /// The user's devices (index rows in enrollment order, then each device).
    async fn user_devices(
        &self,
        tenant: &TenantId,
        user_id: &str,
    ) -> Result<(Option<i64>, Vec<Device>)> {
        let index: Vec<(Option<String>, Option<i64>)> = self
            .read_all(
                &self.st.list_user_devices,
                vec![text(tenant.as_str()), text(user_id)],
                "list a user's devices",
            )
            .await?;
        let version = index.first().and_then(|(_, v)| *v);
        let ids: Vec<DeviceId> = index
            .into_iter()
            .filter_map(|(id, _)| id)
            .map(|id| DeviceId::parse(&id))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| StorageError::Corrupt {
                table: "devices_by_user".into(),
                message: e.to_string(),
            })?;
        let devices =
            futures::future::try_join_all(ids.iter().map(|id| self.get_device(id))).await?;
        // An index row whose device row is missing is the trace of an
        // enrollment that failed half-way: it holds no slot.
        let devices = devices
            .into_iter()
            .flatten()
            .filter(|d| &d.tenant_id == tenant && d.user_id == user_id)
            .collect();
        Ok((version, devices))
    }

    fn challenge_ttl(&self, c: &Challenge) -> i32 {
        let keep = self.config.challenge_retention.as_millis() as i64;
        ttl_secs(c.expires_at.saturating_add(keep), now_ms())
    }
}

fn lwt_answer(r: QueryResult) -> Result<Lwt> {
    let rows = r.into_rows_result().map_err(backend)?;
    let names: Vec<String> = rows
        .column_specs()
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let row = rows.maybe_first_row::<Row>().map_err(backend)?;
    Ok(if applied_of(&names, row.as_ref())? {
        Lwt::Applied
    } else {
        Lwt::NotApplied
    })
}

async fn prepare_all(
    session: &Session,
    config: &ScyllaConfig,
    flavor: Flavor,
) -> Result<Statements> {
    let s = &config.section;
    let speculative: Option<ExecutionProfileHandle> = (s.speculative_delay_ms > 0).then(|| {
        ExecutionProfile::builder()
            .consistency(Consistency::LocalQuorum)
            .serial_consistency(Some(SerialConsistency::LocalSerial))
            .request_timeout(Some(
                Duration::from_millis(s.request_timeout_ms) + CLIENT_SLACK,
            ))
            .speculative_execution_policy(Some(Arc::new(SimpleSpeculativeExecutionPolicy {
                max_retry_count: 1,
                retry_interval: Duration::from_millis(s.speculative_delay_ms),
            })))
            .build()
            .into_handle()
    });
    let ks = config.keyspace.as_str();
    let page_size = s.page_size as i32;
    let prep = |template: &'static str, kind: Kind| {
        let speculative = speculative.clone();
        async move {
            let (text, timeout_at) = render(template, ks, flavor);
            let mut p = session.prepare(text.clone()).await.map_err(|e| {
                StorageError::Backend(format!("ScyllaDB could not prepare `{text}`: {e}"))
            })?;
            p.set_page_size(page_size);
            match kind {
                Kind::Read => {
                    p.set_is_idempotent(true);
                    p.set_consistency(Consistency::LocalQuorum);
                    if let Some(h) = speculative {
                        p.set_execution_profile_handle(Some(h));
                    }
                }
                Kind::SerialRead => {
                    p.set_is_idempotent(true);
                    p.set_consistency(Consistency::LocalSerial);
                }
                Kind::Write => {
                    p.set_is_idempotent(true);
                    p.set_consistency(Consistency::LocalQuorum);
                }
                Kind::Conditional => {
                    p.set_is_idempotent(false);
                    p.set_consistency(Consistency::LocalQuorum);
                    p.set_serial_consistency(Some(SerialConsistency::LocalSerial));
                }
            }
            Ok::<_, StorageError>(Stmt {
                prepared: p,
                timeout_at,
            })
        }
    };
    use Kind::*;
    const DEVICE_SELECT: &str =
        "SELECT device_id, tenant_id, user_id, display_name, platform, key_algorithm, \
         public_key, push_token, push_app, push_enabled, enrolled_at, revoked_at \
         FROM {ks}.devices WHERE device_id = ? [USING TIMEOUT]";
    const CHALLENGE_SELECT: &str =
        "SELECT challenge_id, tenant_id, user_id, context, context_hash, number_match, \
         created_at, expires_at, idempotency_key, devices, outcome, resolved_by, resolved_at \
         FROM {ks}.challenges WHERE challenge_id = ? [USING TIMEOUT]";
    const ENROLLMENT_SELECT: &str =
        "SELECT tenant_id, user_id, created_at, expires_at, consumed_by \
         FROM {ks}.enrollments WHERE token_sha256 = ? [USING TIMEOUT]";
    const GUARD_SELECT: &str =
        "SELECT version, state FROM {ks}.user_guards WHERE tenant_id = ? AND user_id = ? [USING TIMEOUT]";

    let mut take_slot = Batch::new(BatchType::Logged);
    for template in [
        "UPDATE {ks}.devices_by_user SET slots_version = ? WHERE tenant_id = ? AND user_id = ? IF slots_version = ?",
        "INSERT INTO {ks}.devices_by_user (tenant_id, user_id, enrolled_at, device_id) VALUES (?, ?, ?, ?)",
    ] {
        let (text, _) = render(template, ks, flavor);
        let p = session.prepare(text.clone()).await.map_err(|e| {
            StorageError::Backend(format!("ScyllaDB could not prepare `{text}`: {e}"))
        })?;
        take_slot.append_statement(p);
    }
    take_slot.set_consistency(Consistency::LocalQuorum);
    take_slot.set_serial_consistency(Some(SerialConsistency::LocalSerial));
    take_slot.set_is_idempotent(false);

    Ok(Statements {
        put_tenant: prep(
            "INSERT INTO {ks}.tenants (tenant_id, display_name, disabled, created_at, client_identity) VALUES (?, ?, ?, ?, ?) [USING TIMEOUT]",
            Write,
        )
        .await?,
        get_tenant: prep(
            "SELECT tenant_id, display_name, disabled, created_at, client_identity FROM {ks}.tenants WHERE tenant_id = ? [USING TIMEOUT]",
            Read,
        )
        .await?,
        get_tenant_serial: prep(
            "SELECT tenant_id, display_name, disabled, created_at, client_identity FROM {ks}.tenants WHERE tenant_id = ? [USING TIMEOUT]",
            SerialRead,
        )
        .await?,
        // Created by a lightweight transaction, updated by plain writes:
        // an update comes seconds after the creation at the earliest, so
        // the two never contend for one Paxos round.
        create_tenant: prep(
            "INSERT INTO {ks}.tenants (tenant_id, display_name, disabled, created_at, client_identity) VALUES (?, ?, ?, ?, ?) IF NOT EXISTS [USING TIMEOUT]",
            Conditional,
        )
        .await?,
        // A whole-table walk in token order, one page per call: tenants are
        // few and listed only by administrators.
        list_tenants_first: prep(
            "SELECT tenant_id, display_name, disabled, created_at, client_identity FROM {ks}.tenants LIMIT ? [USING TIMEOUT]",
            Read,
        )
        .await?,
        list_tenants_after: prep(
            "SELECT tenant_id, display_name, disabled, created_at, client_identity FROM {ks}.tenants WHERE token(tenant_id) > token(?) LIMIT ? [USING TIMEOUT]",
            Read,
        )
        .await?,
        put_api_key: prep(
            "INSERT INTO {ks}.api_keys (key_id, tenant_id, secret_sha256, created_at, revoked, expires_at) VALUES (?, ?, ?, ?, ?, ?) [USING TIMEOUT]",
            Write,
        )
        .await?,
        index_api_key: prep(
            "INSERT INTO {ks}.api_keys_by_tenant (tenant_id, key_id) VALUES (?, ?) [USING TIMEOUT]",
            Write,
        )
        .await?,
        get_api_key: prep(
            "SELECT key_id, tenant_id, secret_sha256, created_at, revoked, expires_at FROM {ks}.api_keys WHERE key_id = ? [USING TIMEOUT]",
            Read,
        )
        .await?,
        put_audit_record: prep(
            "INSERT INTO {ks}.audit_records (chain, block, seq, record) VALUES (?, ?, ?, ?) [USING TIMEOUT]",
            Write,
        )
        .await?,
        put_audit_head: prep(
            "INSERT INTO {ks}.audit_heads (chain, head) VALUES (?, ?) [USING TIMEOUT]",
            Write,
        )
        .await?,
        put_audit_by_time: prep(
            "INSERT INTO {ks}.audit_by_time (tenant_id, day, at, chain, seq, record) VALUES (?, ?, ?, ?, ?, ?) [USING TIMEOUT]",
            Write,
        )
        .await?,
        put_audit_day: prep(
            "INSERT INTO {ks}.audit_days (tenant_id, day) VALUES (?, ?) [USING TIMEOUT]",
            Write,
        )
        .await?,
        put_audit_by_user: prep(
            "INSERT INTO {ks}.audit_by_user (tenant_id, user_id, at, chain, seq, record) VALUES (?, ?, ?, ?, ?, ?) [USING TIMEOUT]",
            Write,
        )
        .await?,
        put_audit_by_challenge: prep(
            "INSERT INTO {ks}.audit_by_challenge (tenant_id, challenge_id, at, chain, seq, record) VALUES (?, ?, ?, ?, ?, ?) [USING TIMEOUT]",
            Write,
        )
        .await?,
        create_webhook: prep(
            "INSERT INTO {ks}.webhooks (tenant_id, endpoint, updated_at) VALUES (?, ?, ?) IF NOT EXISTS [USING TIMEOUT]",
            Conditional,
        )
        .await?,
        update_webhook: prep(
            "UPDATE {ks}.webhooks [USING TIMEOUT] SET endpoint = ?, updated_at = ? WHERE tenant_id = ? IF updated_at = ?",
            Conditional,
        )
        .await?,
        get_webhook: prep(
            "SELECT endpoint FROM {ks}.webhooks WHERE tenant_id = ? [USING TIMEOUT]",
            Read,
        )
        .await?,
        delete_webhook: prep(
            "DELETE FROM {ks}.webhooks [USING TIMEOUT] WHERE tenant_id = ? IF EXISTS",
            Conditional,
        )
        .await?,
        put_dead_delivery: prep(
            "INSERT INTO {ks}.webhook_dead_deliveries (tenant_id, delivery_id, record) VALUES (?, ?, ?) USING TTL ? [AND TIMEOUT]",
            Write,
        )
        .await?,
        list_dead_first: prep(
            "SELECT record FROM {ks}.webhook_dead_deliveries WHERE tenant_id = ? LIMIT ? [USING TIMEOUT]",
            Read,
        )
        .await?,
        list_dead_after: prep(
            "SELECT record FROM {ks}.webhook_dead_deliveries WHERE tenant_id = ? AND delivery_id > ? LIMIT ? [USING TIMEOUT]",
            Read,
        )
        .await?,
        delete_dead_delivery: prep(
            "DELETE FROM {ks}.webhook_dead_deliveries [USING TIMEOUT] WHERE tenant_id = ? AND delivery_id = ? IF EXISTS",
            Conditional,
        )
        .await?,
        list_audit_heads_first: prep(
            "SELECT chain, head FROM {ks}.audit_heads LIMIT ? [USING TIMEOUT]",
            Read,
        )
        .await?,
        list_audit_heads_after: prep(
            "SELECT chain, head FROM {ks}.audit_heads WHERE token(chain) > token(?) LIMIT ? [USING TIMEOUT]",
            Read,
        )
        .await?,
        read_audit_block: prep(
            "SELECT record FROM {ks}.audit_records WHERE chain = ? AND block = ? AND seq >= ? LIMIT ? [USING TIMEOUT]",
            Read,
        )
        .await?,
        audit_days: prep(
            "SELECT day FROM {ks}.audit_days WHERE tenant_id = ? AND day >= ? AND day <= ? [USING TIMEOUT]",
            Read,
        )
        .await?,
        audit_by_time: prep(
            "SELECT record FROM {ks}.audit_by_time WHERE tenant_id = ? AND day = ? AND (at, chain, seq) > (?, ?, ?) LIMIT ? [USING TIMEOUT]",
            Read,
        )
        .await?,
        audit_by_user: prep(
            "SELECT record FROM {ks}.audit_by_user WHERE tenant_id = ? AND user_id = ? AND (at, chain, seq) > (?, ?, ?) LIMIT ? [USING TIMEOUT]",
            Read,
        )
        .await?,
        audit_by_challenge: prep(
            "SELECT record FROM {ks}.audit_by_challenge WHERE tenant_id = ? AND challenge_id = ? AND (at, chain, seq) > (?, ?, ?) LIMIT ? [USING TIMEOUT]",
            Read,
        )
        .await?,
        list_api_key_ids: prep(
            "SELECT key_id FROM {ks}.api_keys_by_tenant WHERE tenant_id = ? [USING TIMEOUT]",
            Read,
        )
        .await?,
        put_enrollment: prep(
            "INSERT INTO {ks}.enrollments (token_sha256, tenant_id, user_id, created_at, expires_at) VALUES (?, ?, ?, ?, ?) USING TTL ? [AND TIMEOUT]",
            Write,
        )
        .await?,
        get_enrollment: prep(ENROLLMENT_SELECT, Read).await?,
        get_enrollment_serial: prep(ENROLLMENT_SELECT, SerialRead).await?,
        consume_enrollment: prep(
            "UPDATE {ks}.enrollments USING TTL ? [AND TIMEOUT] SET consumed_by = ? WHERE token_sha256 = ? IF tenant_id = ? AND consumed_by = null",
            Conditional,
        )
        .await?,
        restore_enrollment: prep(
            "DELETE consumed_by FROM {ks}.enrollments [USING TIMEOUT] WHERE token_sha256 = ? IF consumed_by = ?",
            Conditional,
        )
        .await?,
        put_device: prep(
            "INSERT INTO {ks}.devices (device_id, tenant_id, user_id, display_name, platform, key_algorithm, \
             public_key, push_token, push_app, push_enabled, enrolled_at, revoked_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) [USING TIMEOUT]",
            Write,
        )
        .await?,
        get_device: prep(DEVICE_SELECT, Read).await?,
        get_device_serial: prep(DEVICE_SELECT, SerialRead).await?,
        list_user_devices: prep(
            "SELECT device_id, slots_version FROM {ks}.devices_by_user WHERE tenant_id = ? AND user_id = ? [USING TIMEOUT]",
            Read,
        )
        .await?,
        revoke_device: prep(
            "UPDATE {ks}.devices [USING TIMEOUT] SET revoked_at = ? WHERE device_id = ? IF tenant_id = ? AND revoked_at = null",
            Conditional,
        )
        .await?,
        update_push_token: prep(
            "UPDATE {ks}.devices [USING TIMEOUT] SET push_token = ?, push_enabled = true WHERE device_id = ? IF tenant_id = ? AND revoked_at = null",
            Conditional,
        )
        .await?,
        disable_push: prep(
            "UPDATE {ks}.devices [USING TIMEOUT] SET push_enabled = false WHERE device_id = ? IF push_token = ? AND push_enabled = true",
            Conditional,
        )
        .await?,
        claim_idempotency_key: prep(
            "INSERT INTO {ks}.challenge_keys (tenant_id, idempotency_key, challenge_id) VALUES (?, ?, ?) IF NOT EXISTS USING TTL ? [AND TIMEOUT]",
            Conditional,
        )
        .await?,
        get_idempotency_key: prep(
            "SELECT challenge_id FROM {ks}.challenge_keys WHERE tenant_id = ? AND idempotency_key = ? [USING TIMEOUT]",
            SerialRead,
        )
        .await?,
        put_challenge: prep(
            "INSERT INTO {ks}.challenges (challenge_id, tenant_id, user_id, context, context_hash, number_match, \
             created_at, expires_at, idempotency_key, devices) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ? [AND TIMEOUT]",
            Write,
        )
        .await?,
        put_pending: prep(
            "INSERT INTO {ks}.pending_by_device (device_id, expires_at, challenge_id) VALUES (?, ?, ?) USING TTL ? [AND TIMEOUT]",
            Write,
        )
        .await?,
        get_challenge: prep(CHALLENGE_SELECT, Read).await?,
        get_challenge_serial: prep(CHALLENGE_SELECT, SerialRead).await?,
        list_pending: prep(
            "SELECT challenge_id FROM {ks}.pending_by_device WHERE device_id = ? AND expires_at > ? [USING TIMEOUT]",
            Read,
        )
        .await?,
        delete_pending: prep(
            "DELETE FROM {ks}.pending_by_device [USING TIMEOUT] WHERE device_id = ? AND expires_at = ? AND challenge_id = ?",
            Write,
        )
        .await?,
        resolve_challenge: prep(
            "UPDATE {ks}.challenges USING TTL ? [AND TIMEOUT] SET outcome = ?, resolved_by = ?, resolved_at = ? \
             WHERE challenge_id = ? IF outcome = null AND expires_at > ?",
            Conditional,
        )
        .await?,
        get_guard: prep(GUARD_SELECT, Read).await?,
        get_guard_serial: prep(GUARD_SELECT, SerialRead).await?,
        insert_guard: prep(
            "INSERT INTO {ks}.user_guards (tenant_id, user_id, version, state) VALUES (?, ?, ?, ?) IF NOT EXISTS USING TTL ? [AND TIMEOUT]",
            Conditional,
        )
        .await?,
        update_guard: prep(
            "UPDATE {ks}.user_guards USING TTL ? [AND TIMEOUT] SET version = ?, state = ? WHERE tenant_id = ? AND user_id = ? IF version = ?",
            Conditional,
        )
        .await?,
        put_usage: prep(
            "INSERT INTO {ks}.usage_reports (tenant_id, instance, demand_per_s, day, day_used, reported_at) \
             VALUES (?, ?, ?, ?, ?, ?) USING TTL ? [AND TIMEOUT]",
            Write,
        )
        .await?,
        list_usage: prep(
            "SELECT instance, demand_per_s, day, day_used, reported_at FROM {ks}.usage_reports WHERE tenant_id = ? [USING TIMEOUT]",
            Read,
        )
        .await?,
        health: prep("SELECT version FROM {ks}.schema_migrations WHERE version = ? [USING TIMEOUT]", Read).await?,
        take_slot,
    })
}

#[async_trait]
impl Storage for ScyllaStorage {
    fn name(&self) -> &'static str {
        "scylla"
    }

    fn ttl_expiry(&self) -> Option<Duration> {
        // CQL TTLs count whole seconds; a row is gone within two.
        Some(Duration::from_secs(2))
    }

    async fn health_check(&self) -> Result<()> {
        self.execute(
            &self.st.health,
            vec![int(schema::latest_version())],
            "answer a health check",
        )
        .await
        .map(|_| ())
    }

    async fn put_tenant(&self, t: &Tenant) -> Result<()> {
        self.execute(&self.st.put_tenant, tenant_values(t), "store a tenant")
            .await
            .map(|_| ())
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>> {
        self.read_one::<TenantRow>(
            &self.st.get_tenant,
            vec![text(id.as_str())],
            "read a tenant",
        )
        .await?
        .map(tenant_of)
        .transpose()
    }

    async fn create_tenant(&self, t: &Tenant) -> Result<bool> {
        let answer = self
            .lwt(&self.st.create_tenant, tenant_values(t), "create a tenant")
            .await?;
        match answer {
            Lwt::Applied => Ok(true),
            Lwt::NotApplied => Ok(false),
            // Read back at SERIAL: the row is ours if it is what we wrote.
            Lwt::Unknown => {
                let now = self
                    .read_one::<TenantRow>(
                        &self.st.get_tenant_serial,
                        vec![text(t.id.as_str())],
                        "read a tenant",
                    )
                    .await?
                    .map(tenant_of)
                    .transpose()?;
                Ok(now.as_ref() == Some(t))
            }
        }
    }

    async fn list_tenants(&self, after: Option<&TenantId>, limit: usize) -> Result<Vec<Tenant>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = int(limit.min(10_000) as i32);
        let rows = match after {
            None => {
                self.read_all::<TenantRow>(&self.st.list_tenants_first, vec![limit], "list tenants")
                    .await?
            }
            Some(a) => {
                self.read_all::<TenantRow>(
                    &self.st.list_tenants_after,
                    vec![text(a.as_str()), limit],
                    "list tenants",
                )
                .await?
            }
        };
        rows.into_iter().map(tenant_of).collect()
    }

    async fn put_api_key(&self, k: &ApiKeyRecord) -> Result<()> {
        self.execute(
            &self.st.put_api_key,
            vec![
                text(&k.key_id),
                text(k.tenant_id.as_str()),
                blob(k.secret_sha256),
                big(k.created_at),
                boolean(k.revoked),
                big(k.expires_at),
            ],
            "store an API key",
        )
        .await?;
        // The index after the record: a key listed is a key that exists.
        self.execute(
            &self.st.index_api_key,
            vec![text(k.tenant_id.as_str()), text(&k.key_id)],
            "index an API key",
        )
        .await
        .map(|_| ())
    }

    async fn list_api_keys(&self, tenant: &TenantId) -> Result<Vec<ApiKeyRecord>> {
        let ids = self
            .read_all::<(String,)>(
                &self.st.list_api_key_ids,
                vec![text(tenant.as_str())],
                "list API keys",
            )
            .await?;
        let mut keys = Vec::with_capacity(ids.len());
        for (id,) in ids {
            if let Some(k) = self.get_api_key(&id).await? {
                if &k.tenant_id == tenant {
                    keys.push(k);
                }
            }
        }
        keys.sort_by(|a, b| (a.created_at, &a.key_id).cmp(&(b.created_at, &b.key_id)));
        Ok(keys)
    }

    async fn get_api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>> {
        let row = self
            .read_one::<(String, String, Vec<u8>, i64, bool, Option<i64>)>(
                &self.st.get_api_key,
                vec![text(key_id)],
                "read an API key",
            )
            .await?;
        let corrupt = |m: String| StorageError::Corrupt {
            table: "api_keys".into(),
            message: m,
        };
        // Rows written before schema version 3 have no expires_at.
        row.map(|(key_id, tenant, hash, created_at, revoked, expires_at)| {
            Ok(ApiKeyRecord {
                key_id,
                tenant_id: TenantId::parse(&tenant).map_err(|e| corrupt(e.to_string()))?,
                secret_sha256: hash
                    .try_into()
                    .map_err(|_| corrupt("secret_sha256 is not 32 bytes".into()))?,
                created_at,
                revoked,
                expires_at: expires_at.unwrap_or(0),
            })
        })
        .transpose()
    }

    async fn create_enrollment(&self, t: &EnrollmentTicket) -> Result<()> {
        self.execute(
            &self.st.put_enrollment,
            vec![
                blob(t.token_sha256),
                text(t.tenant_id.as_str()),
                text(&t.user_id),
                big(t.created_at),
                big(t.expires_at),
                int(ttl_secs(t.expires_at, now_ms())),
            ],
            "store an enrollment ticket",
        )
        .await
        .map(|_| ())
    }

    async fn get_enrollment(&self, token_sha256: &[u8; 32]) -> Result<Option<EnrollmentTicket>> {
        let row = self
            .read_one::<(String, String, i64, i64, Option<String>)>(
                &self.st.get_enrollment,
                vec![blob(*token_sha256)],
                "read an enrollment ticket",
            )
            .await?;
        ticket_of(token_sha256, row)
    }

    async fn complete_enrollment(
        &self,
        token_sha256: &[u8; 32],
        device: &Device,
        max_devices: usize,
    ) -> Result<()> {
        let used = || StorageError::Conflict("enrollment token was already used".into());
        let Some(ticket) = self.get_enrollment(token_sha256).await? else {
            return Err(used());
        };
        let (mut version, devices) = self
            .user_devices(&device.tenant_id, &device.user_id)
            .await?;
        let active = devices.iter().filter(|d| d.is_active()).count();
        if active >= max_devices {
            return Err(limit(active, max_devices));
        }
        // 1. The one-time ticket: exactly one completion consumes it.
        let consume = self
            .lwt(
                &self.st.consume_enrollment,
                vec![
                    int(ttl_secs(ticket.expires_at, now_ms())),
                    text(device.id.as_str()),
                    blob(*token_sha256),
                    text(device.tenant_id.as_str()),
                ],
                "consume an enrollment ticket",
            )
            .await?;
        let ours = match consume {
            Lwt::Applied => true,
            Lwt::NotApplied => false,
            Lwt::Unknown => {
                let row = self
                    .read_one::<(String, String, i64, i64, Option<String>)>(
                        &self.st.get_enrollment_serial,
                        vec![blob(*token_sha256)],
                        "read an enrollment ticket",
                    )
                    .await?;
                row.and_then(|r| r.4).as_deref() == Some(device.id.as_str())
            }
        };
        if !ours {
            return Err(used());
        }
        // 2. A slot among the user's devices: a compare-and-set on the
        // partition's version, so concurrent enrollments of one user are
        // counted one after the other.
        let mut active = active;
        for _ in 0..CAS_ROUNDS {
            if active >= max_devices {
                self.restore_ticket(token_sha256, &device.id).await?;
                return Err(limit(active, max_devices));
            }
            let next = version.unwrap_or(0) + 1;
            let values: Vec<Value> = vec![
                big(next),
                text(device.tenant_id.as_str()),
                text(&device.user_id),
                opt_big(version),
                text(device.tenant_id.as_str()),
                text(&device.user_id),
                big(device.enrolled_at),
                text(device.id.as_str()),
            ];
            let timeout = statement_timeout(
                sesame_storage::deadline::remaining(),
                self.default_timeout(),
            );
            let Some(timeout) = timeout else {
                self.restore_ticket(token_sha256, &device.id).await?;
                return Err(StorageError::Unavailable(
                    "no time left in the call's deadline to enroll the device".into(),
                ));
            };
            let mut batch = self.st.take_slot.clone();
            batch.set_request_timeout(Some(timeout + CLIENT_SLACK));
            let outcome = match self.session.batch(&batch, split_slot_values(values)).await {
                Ok(r) => lwt_answer(r)?,
                Err(e) => lwt_failure("take an enrollment slot", &e)?,
            };
            let (v, devices) = self
                .user_devices(&device.tenant_id, &device.user_id)
                .await?;
            let taken = match outcome {
                Lwt::Applied => true,
                // The index row is the evidence: read back, it says whether ours went in.
                Lwt::Unknown => v == Some(next) && devices_index_has(self, device).await?,
                Lwt::NotApplied => false,
            };
            if taken {
                return self
                    .execute(&self.st.put_device, device_values(device), "store a device")
                    .await
                    .map(|_| ());
            }
            version = v;
            active = devices.iter().filter(|d| d.is_active()).count();
        }
        self.restore_ticket(token_sha256, &device.id).await?;
        Err(StorageError::Unavailable(
            "too many concurrent enrollments for this user; retry".into(),
        ))
    }

    async fn get_device(&self, id: &DeviceId) -> Result<Option<Device>> {
        self.read_one::<DeviceRow>(
            &self.st.get_device,
            vec![text(id.as_str())],
            "read a device",
        )
        .await?
        .map(device_of)
        .transpose()
    }

    async fn list_devices(&self, tenant: &TenantId, user_id: &str) -> Result<Vec<Device>> {
        Ok(self.user_devices(tenant, user_id).await?.1)
    }

    async fn revoke_device(
        &self,
        tenant: &TenantId,
        id: &DeviceId,
        now: UnixMillis,
    ) -> Result<Device> {
        let outcome = self
            .lwt(
                &self.st.revoke_device,
                vec![big(now), text(id.as_str()), text(tenant.as_str())],
                "revoke a device",
            )
            .await?;
        // Applied or not, the device as it now is answers the call:
        // revoked (by us or earlier: idempotent), or not the tenant's.
        let d = self.device_serial(id).await?;
        match d {
            Some(d) if &d.tenant_id == tenant => {
                if d.revoked_at.is_some() {
                    Ok(d)
                } else {
                    debug_assert!(outcome != Lwt::Applied);
                    Err(StorageError::Unavailable(
                        "the revocation did not take effect; retry".into(),
                    ))
                }
            }
            _ => Err(StorageError::NotFound("device")),
        }
    }

    async fn update_push_token(&self, id: &DeviceId, push_token: &str) -> Result<Device> {
        let Some(before) = self.get_device(id).await? else {
            return Err(StorageError::NotFound("device"));
        };
        let outcome = self
            .lwt(
                &self.st.update_push_token,
                vec![
                    text(push_token),
                    text(id.as_str()),
                    text(before.tenant_id.as_str()),
                ],
                "update a push token",
            )
            .await?;
        match outcome {
            Lwt::Applied => Ok(Device {
                push_token: push_token.to_owned(),
                push_enabled: true,
                ..before
            }),
            Lwt::NotApplied | Lwt::Unknown => match self.device_serial(id).await? {
                None => Err(StorageError::NotFound("device")),
                Some(d) if d.revoked_at.is_some() => {
                    Err(StorageError::Conflict("device is revoked".into()))
                }
                Some(d) if d.push_token == push_token && d.push_enabled => Ok(d),
                Some(_) => Err(StorageError::Unavailable(
                    "the push token update did not take effect; retry".into(),
                )),
            },
        }
    }

    async fn disable_push(&self, id: &DeviceId, dead_token: &str) -> Result<bool> {
        match self
            .lwt(
                &self.st.disable_push,
                vec![text(id.as_str()), text(dead_token)],
                "disable a dead push token",
            )
            .await?
        {
            Lwt::Applied => Ok(true),
            Lwt::NotApplied => Ok(false),
            // Read back: disabled with this token means the report took effect.
            Lwt::Unknown => Ok(self
                .device_serial(id)
                .await?
                .is_some_and(|d| d.push_token == dead_token && !d.push_enabled)),
        }
    }

    async fn create_challenge(&self, c: &Challenge) -> Result<Created> {
        let ttl = self.challenge_ttl(c);
        if let Some(key) = &c.idempotency_key {
            let claim = self
                .lwt(
                    &self.st.claim_idempotency_key,
                    vec![
                        text(c.tenant_id.as_str()),
                        text(key),
                        text(c.id.as_str()),
                        int(ttl),
                    ],
                    "claim an idempotency key",
                )
                .await?;
            if claim != Lwt::Applied {
                let owner = self
                    .read_one::<(String,)>(
                        &self.st.get_idempotency_key,
                        vec![text(c.tenant_id.as_str()), text(key)],
                        "read an idempotency key",
                    )
                    .await?
                    .map(|(id,)| id);
                match owner {
                    Some(id) if id == c.id.as_str() => {} // ours after all (unknown outcome)
                    Some(id) => {
                        let id = ChallengeId::parse(&id).map_err(|e| StorageError::Corrupt {
                            table: "challenge_keys".into(),
                            message: e.to_string(),
                        })?;
                        return match self.get_challenge(&id).await? {
                            Some(existing) => Ok(Created::Existing(Box::new(existing))),
                            None => Err(StorageError::Unavailable(
                                "a challenge with this idempotency key is still being created; retry".into(),
                            )),
                        };
                    }
                    None => {
                        return Err(StorageError::Unavailable(
                            "could not claim the idempotency key; retry".into(),
                        ))
                    }
                }
            }
        }
        let row = new_challenge_row(c)?;
        let mut values = vec![
            text(row.0),
            text(row.1),
            text(row.2),
            text(row.3),
            blob(row.4),
            text(row.5),
            big(row.6),
            big(row.7),
            opt_text(row.8),
            Some(CqlValue::List(
                row.9.into_iter().map(CqlValue::Text).collect(),
            )),
        ];
        values.push(int(ttl));
        let pending_ttl = ttl_secs(c.expires_at, now_ms());
        let pending = c.devices.iter().map(|d| {
            self.execute(
                &self.st.put_pending,
                vec![
                    text(d.as_str()),
                    big(c.expires_at),
                    text(c.id.as_str()),
                    int(pending_ttl),
                ],
                "index a pending challenge",
            )
        });
        let (first, rest) = futures::join!(
            self.execute(&self.st.put_challenge, values, "store a challenge"),
            futures::future::try_join_all(pending)
        );
        first?;
        rest?;
        Ok(Created::New)
    }

    async fn get_challenge(&self, id: &ChallengeId) -> Result<Option<Challenge>> {
        self.read_one::<ChallengeRow>(
            &self.st.get_challenge,
            vec![text(id.as_str())],
            "read a challenge",
        )
        .await?
        .map(challenge_of)
        .transpose()
    }

    async fn pending_challenges(
        &self,
        device: &DeviceId,
        now: UnixMillis,
    ) -> Result<Vec<Challenge>> {
        let ids: Vec<(String,)> = self
            .read_all(
                &self.st.list_pending,
                vec![text(device.as_str()), big(now)],
                "list pending challenges",
            )
            .await?;
        let ids: Vec<ChallengeId> = ids
            .into_iter()
            .map(|(id,)| ChallengeId::parse(&id))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| StorageError::Corrupt {
                table: "pending_by_device".into(),
                message: e.to_string(),
            })?;
        let found =
            futures::future::try_join_all(ids.iter().map(|id| self.get_challenge(id))).await?;
        let mut pending: Vec<Challenge> = found
            .into_iter()
            .flatten()
            .filter(|c| c.devices.contains(device) && c.check_transition(now).is_ok())
            .collect();
        pending.sort_by(|a, b| (a.created_at, a.id.as_str()).cmp(&(b.created_at, b.id.as_str())));
        Ok(pending)
    }

    async fn resolve_challenge(
        &self,
        id: &ChallengeId,
        resolution: &Resolution,
        now: UnixMillis,
    ) -> Result<Challenge> {
        let Some(current) = self.get_challenge(id).await? else {
            return Err(StorageError::NotFound("challenge"));
        };
        current.check_transition(now)?;
        let (outcome, by, at) = resolution_columns(resolution);
        let answer = self
            .lwt(
                &self.st.resolve_challenge,
                vec![
                    int(self.challenge_ttl(&current)),
                    text(outcome),
                    opt_text(by),
                    big(at),
                    text(id.as_str()),
                    big(now),
                ],
                "record a verdict",
            )
            .await?;
        let resolved = match answer {
            Lwt::Applied => Challenge {
                resolution: Some(resolution.clone()),
                ..current
            },
            Lwt::NotApplied | Lwt::Unknown => {
                // The serial read completes any Paxos round in flight, so
                // what it shows is final: ours, another answer, or expiry.
                let Some(c) = self.challenge_serial(id).await? else {
                    return Err(StorageError::NotFound("challenge"));
                };
                if c.resolution.as_ref() != Some(resolution) {
                    c.check_transition(now)?;
                    return Err(StorageError::Unavailable(
                        "the verdict was not recorded; retry".into(),
                    ));
                }
                c
            }
        };
        // The pending index rows have done their job; they would also expire.
        for d in &resolved.devices {
            let r = self
                .execute(
                    &self.st.delete_pending,
                    vec![
                        text(d.as_str()),
                        big(resolved.expires_at),
                        text(id.as_str()),
                    ],
                    "clear a pending index row",
                )
                .await;
            if let Err(e) = r {
                tracing::debug!(error = %e, "pending index row left to its TTL");
            }
        }
        Ok(resolved)
    }

    async fn get_user_guard(
        &self,
        tenant: &TenantId,
        user_id: &str,
    ) -> Result<(u64, UserGuardState)> {
        let row = self
            .read_one::<(i64, String)>(
                &self.st.get_guard,
                vec![text(tenant.as_str()), text(user_id)],
                "read a user's guard record",
            )
            .await?;
        match row {
            None => Ok((0, UserGuardState::default())),
            Some((v, state)) => Ok((version_of(v)?, guard_of(&state)?)),
        }
    }

    async fn put_user_guard(
        &self,
        tenant: &TenantId,
        user_id: &str,
        expected: u64,
        state: &UserGuardState,
    ) -> Result<bool> {
        let keep = self.config.guard_retention.as_millis() as i64;
        let ttl = int(ttl_secs(
            state.last_relevant().saturating_add(keep),
            now_ms(),
        ));
        let next = i64::try_from(expected + 1)
            .map_err(|_| StorageError::Backend("guard version overflow".into()))?;
        let json = guard_json(state)?;
        let answer = if expected == 0 {
            self.lwt(
                &self.st.insert_guard,
                vec![
                    text(tenant.as_str()),
                    text(user_id),
                    big(next),
                    text(json.clone()),
                    ttl,
                ],
                "create a user's guard record",
            )
            .await?
        } else {
            self.lwt(
                &self.st.update_guard,
                vec![
                    ttl,
                    big(next),
                    text(json.clone()),
                    text(tenant.as_str()),
                    text(user_id),
                    big(next - 1),
                ],
                "update a user's guard record",
            )
            .await?
        };
        match answer {
            Lwt::Applied => Ok(true),
            Lwt::NotApplied => Ok(false),
            Lwt::Unknown => {
                let row = self
                    .read_one::<(i64, String)>(
                        &self.st.get_guard_serial,
                        vec![text(tenant.as_str()), text(user_id)],
                        "read a user's guard record",
                    )
                    .await?;
                Ok(row.is_some_and(|(v, s)| v == next && s == json))
            }
        }
    }

    async fn put_usage(&self, tenant: &TenantId, r: &UsageReport) -> Result<()> {
        self.execute(
            &self.st.put_usage,
            vec![
                text(tenant.as_str()),
                text(&r.instance),
                Some(CqlValue::Double(r.demand_per_s)),
                big(r.day),
                big(i64::try_from(r.day_used).unwrap_or(i64::MAX)),
                big(r.reported_at),
                int(USAGE_TTL_SECS),
            ],
            "store a usage report",
        )
        .await
        .map(|_| ())
    }

    async fn list_usage(&self, tenant: &TenantId) -> Result<Vec<UsageReport>> {
        let rows: Vec<(String, f64, i64, i64, i64)> = self
            .read_all(
                &self.st.list_usage,
                vec![text(tenant.as_str())],
                "list usage reports",
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(
                |(instance, demand_per_s, day, day_used, reported_at)| UsageReport {
                    instance,
                    demand_per_s,
                    day,
                    day_used: u64::try_from(day_used).unwrap_or(0),
                    reported_at,
                },
            )
            .collect())
    }

    async fn append_audit(&self, records: &[AuditRecord], heads: &[ChainHead]) -> Result<()> {
        let mut writes: Vec<(&Stmt, Vec<Value>)> = Vec::with_capacity(records.len() * 4);
        let mut days = std::collections::BTreeSet::new();
        for r in records {
            let json = serde_json::to_vec(r).map_err(backend)?;
            let e = &r.entry;
            let (seq, at) = (seq_value(r.seq)?, e.at);
            let day = at.div_euclid(DAY_MS);
            writes.push((
                &self.st.put_audit_record,
                vec![
                    text(&r.chain),
                    big(seq / AUDIT_BLOCK),
                    big(seq),
                    blob(json.clone()),
                ],
            ));
            let position = |first: Value, second: Value| {
                vec![
                    first,
                    second,
                    big(at),
                    text(&r.chain),
                    big(seq),
                    blob(json.clone()),
                ]
            };
            writes.push((
                &self.st.put_audit_by_time,
                position(text(&e.tenant_id), big(day)),
            ));
            if !e.user_id.is_empty() {
                writes.push((
                    &self.st.put_audit_by_user,
                    position(text(&e.tenant_id), text(&e.user_id)),
                ));
            }
            if !e.challenge_id.is_empty() {
                writes.push((
                    &self.st.put_audit_by_challenge,
                    position(text(&e.tenant_id), text(&e.challenge_id)),
                ));
            }
            days.insert((e.tenant_id.clone(), day));
        }
        for (tenant, day) in days {
            writes.push((&self.st.put_audit_day, vec![text(tenant), big(day)]));
        }
        self.execute_all(writes, "append audit records").await?;
        // Heads only once their records are stored: a head never names a
        // record that is missing for any reason but tampering.
        let mut head_writes = Vec::with_capacity(heads.len());
        for h in heads {
            let json = serde_json::to_vec(h).map_err(backend)?;
            head_writes.push((&self.st.put_audit_head, vec![text(&h.chain), blob(json)]));
        }
        self.execute_all(head_writes, "store audit chain heads")
            .await
    }

    async fn list_audit_chains(&self, after: Option<&str>, limit: usize) -> Result<Vec<ChainHead>> {
        let limit = int(i32::try_from(limit).unwrap_or(i32::MAX));
        let rows = match after {
            None => {
                self.read_all::<(String, Vec<u8>)>(
                    &self.st.list_audit_heads_first,
                    vec![limit],
                    "list audit chains",
                )
                .await?
            }
            Some(a) => {
                self.read_all::<(String, Vec<u8>)>(
                    &self.st.list_audit_heads_after,
                    vec![text(a), limit],
                    "list audit chains",
                )
                .await?
            }
        };
        rows.into_iter()
            .map(|(_, head)| decode_json("audit_heads", &head))
            .collect()
    }

    async fn read_audit_chain(
        &self,
        chain: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>> {
        let mut out: Vec<AuditRecord> = Vec::new();
        let mut next = seq_value(from_seq)?;
        while out.len() < limit {
            let block = next / AUDIT_BLOCK;
            let want = limit - out.len();
            let rows = self
                .read_all::<(Vec<u8>,)>(
                    &self.st.read_audit_block,
                    vec![
                        text(chain),
                        big(block),
                        big(next),
                        int(i32::try_from(want).unwrap_or(i32::MAX)),
                    ],
                    "read an audit chain",
                )
                .await?;
            let n = rows.len();
            for (record,) in rows {
                out.push(decode_json("audit_records", &record)?);
            }
            let block_end = (block + 1) * AUDIT_BLOCK - 1;
            // Go on in the next block only if this one was read to its
            // end; a chain that stops (or was cut) short ends here.
            match out.last() {
                Some(last) if n > 0 && n < want && last.seq == block_end as u64 => {
                    next = block_end + 1;
                }
                _ => break,
            }
        }
        Ok(out)
    }

    async fn query_audit(
        &self,
        tenant: &TenantId,
        query: &AuditQuery,
        limit: usize,
    ) -> Result<Vec<AuditRecord>> {
        // Start after the cursor, or at `from`: (from, "", -1) precedes
        // every record at `from`.
        let start = AuditCursor {
            at: query.from,
            chain: String::new(),
            seq: 0,
        };
        let mut cursor = match &query.after {
            Some(a) if a >= &start => (a.at, a.chain.clone(), seq_value(a.seq)?),
            _ => (query.from, String::new(), -1),
        };
        let partitions: Vec<(&Stmt, Vec<Value>)> = match (&query.challenge_id, &query.user_id) {
            (Some(c), _) => vec![(
                &self.st.audit_by_challenge,
                vec![text(tenant.as_str()), text(c)],
            )],
            (None, Some(u)) => vec![(&self.st.audit_by_user, vec![text(tenant.as_str()), text(u)])],
            (None, None) => {
                let first = cursor.0.max(0).div_euclid(DAY_MS);
                let last = query.to.min(now_ms() + DAY_MS).div_euclid(DAY_MS);
                self.read_all::<(i64,)>(
                    &self.st.audit_days,
                    vec![text(tenant.as_str()), big(first), big(last)],
                    "list a tenant's audit days",
                )
                .await?
                .into_iter()
                .map(|(day,)| {
                    (
                        &self.st.audit_by_time,
                        vec![text(tenant.as_str()), big(day)],
                    )
                })
                .collect()
            }
        };
        let mut out = Vec::new();
        'partitions: for (stmt, key) in partitions {
            loop {
                let want = (limit - out.len()).max(1);
                let mut values = key.clone();
                values.extend([
                    big(cursor.0),
                    text(&cursor.1),
                    big(cursor.2),
                    int(i32::try_from(want).unwrap_or(i32::MAX)),
                ]);
                let rows = self
                    .read_all::<(Vec<u8>,)>(stmt, values, "query the audit trail")
                    .await?;
                let n = rows.len();
                for (record,) in rows {
                    let r: AuditRecord = decode_json("audit", &record)?;
                    if r.entry.at >= query.to {
                        break 'partitions;
                    }
                    cursor = (r.entry.at, r.chain.clone(), seq_value(r.seq)?);
                    if r.entry.tenant_id == tenant.as_str() && query.matches(&r) {
                        out.push(r);
                        if out.len() >= limit {
                            break 'partitions;
                        }
                    }
                }
                if n < want {
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn put_webhook(&self, e: &WebhookEndpoint, expected: Option<UnixMillis>) -> Result<bool> {
        let json = serde_json::to_vec(e).map_err(backend)?;
        let answer = match expected {
            None => {
                self.lwt(
                    &self.st.create_webhook,
                    vec![text(e.tenant_id.as_str()), blob(json), big(e.updated_at)],
                    "store a webhook endpoint",
                )
                .await?
            }
            Some(v) => {
                self.lwt(
                    &self.st.update_webhook,
                    vec![
                        blob(json),
                        big(e.updated_at),
                        text(e.tenant_id.as_str()),
                        big(v),
                    ],
                    "store a webhook endpoint",
                )
                .await?
            }
        };
        match answer {
            Lwt::Applied => Ok(true),
            Lwt::NotApplied => Ok(false),
            // Ours if what is stored now is exactly what we wrote.
            Lwt::Unknown => Ok(self.get_webhook(&e.tenant_id).await?.as_ref() == Some(e)),
        }
    }

    async fn get_webhook(&self, tenant: &TenantId) -> Result<Option<WebhookEndpoint>> {
        self.read_one::<(Vec<u8>,)>(
            &self.st.get_webhook,
            vec![text(tenant.as_str())],
            "read a webhook endpoint",
        )
        .await?
        .map(|(json,)| decode_json("webhooks", &json))
        .transpose()
    }

    async fn delete_webhook(&self, tenant: &TenantId) -> Result<bool> {
        let answer = self
            .lwt(
                &self.st.delete_webhook,
                vec![text(tenant.as_str())],
                "delete a webhook endpoint",
            )
            .await?;
        match answer {
            Lwt::Applied => Ok(true),
            Lwt::NotApplied => Ok(false),
            // Gone either way; whether this call removed it is unknown.
            Lwt::Unknown => Ok(self.get_webhook(tenant).await?.is_none()),
        }
    }

    async fn put_dead_delivery(&self, d: &DeadDelivery) -> Result<()> {
        let json = serde_json::to_vec(d).map_err(backend)?;
        let keep = self.config.challenge_retention.as_millis() as i64;
        self.execute(
            &self.st.put_dead_delivery,
            vec![
                text(d.tenant_id.as_str()),
                text(&d.delivery_id),
                blob(json),
                int(ttl_secs(d.failed_at.saturating_add(keep), now_ms())),
            ],
            "store a dead webhook delivery",
        )
        .await
        .map(|_| ())
    }

    async fn list_dead_deliveries(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadDelivery>> {
        let limit = int(i32::try_from(limit).unwrap_or(i32::MAX));
        let rows = match after {
            None => {
                self.read_all::<(Vec<u8>,)>(
                    &self.st.list_dead_first,
                    vec![text(tenant.as_str()), limit],
                    "list dead webhook deliveries",
                )
                .await?
            }
            Some(a) => {
                self.read_all::<(Vec<u8>,)>(
                    &self.st.list_dead_after,
                    vec![text(tenant.as_str()), text(a), limit],
                    "list dead webhook deliveries",
                )
                .await?
            }
        };
        rows.into_iter()
            .map(|(json,)| decode_json("webhook_dead_deliveries", &json))
            .collect()
    }

    async fn delete_dead_delivery(&self, tenant: &TenantId, delivery_id: &str) -> Result<bool> {
        let answer = self
            .lwt(
                &self.st.delete_dead_delivery,
                vec![text(tenant.as_str()), text(delivery_id)],
                "delete a dead webhook delivery",
            )
            .await?;
        match answer {
            Lwt::Applied => Ok(true),
            Lwt::NotApplied => Ok(false),
            Lwt::Unknown => Ok(!self
                .list_dead_deliveries(tenant, None, usize::MAX)
                .await?
                .iter()
                .any(|d| d.delivery_id == delivery_id)),
        }
    }

    async fn purge_expired(
        &self,
        _now: UnixMillis,
        _challenges_before: UnixMillis,
        _guards_before: UnixMillis,
    ) -> Result<usize> {
        // Every short-lived row was written with its TTL: the cluster drops
        // it (and compacts by time window) without a sweeper.
        Ok(0)
    }
}

impl ScyllaStorage {
    /// Gives the ticket back after a refused enrollment (limit reached),
    /// so the user can enroll once a slot is free; only if it is still ours.
    async fn restore_ticket(&self, token_sha256: &[u8; 32], device: &DeviceId) -> Result<()> {
        match self
            .lwt(
                &self.st.restore_enrollment,
                vec![blob(*token_sha256), text(device.as_str())],
                "give an enrollment ticket back",
            )
            .await?
        {
            Lwt::Applied | Lwt::NotApplied => Ok(()),
            Lwt::Unknown => {
                tracing::warn!("could not confirm that an enrollment ticket was given back");
                Ok(())
            }
        }
    }
}

async fn devices_index_has(s: &ScyllaStorage, device: &Device) -> Result<bool> {
    let index: Vec<(Option<String>, Option<i64>)> = s
        .read_all(
            &s.st.list_user_devices,
            vec![text(device.tenant_id.as_str()), text(&device.user_id)],
            "list a user's devices",
        )
        .await?;
    Ok(index
        .iter()
        .any(|(id, _)| id.as_deref() == Some(device.id.as_str())))
}

/// The batch's values, statement by statement.
fn split_slot_values(mut v: Vec<Value>) -> (Vec<Value>, Vec<Value>) {
    let second = v.split_off(4);
    (v, second)
}

fn device_values(d: &Device) -> Vec<Value> {
    let r = device_row(d);
    vec![
        text(r.0),
        text(r.1),
        text(r.2),
        text(r.3),
        text(r.4),
        text(r.5),
        blob(r.6),
        text(r.7),
        opt_text(r.8),
        boolean(r.9),
        big(r.10),
        opt_big(r.11),
    ]
}

fn limit(active: usize, max: usize) -> StorageError {
    StorageError::LimitExceeded(format!(
        "user already has {active} active devices (at most {max})"
    ))
}

/// An enrollment row as a ticket: absent once consumed.
fn ticket_of(
    token_sha256: &[u8; 32],
    row: Option<(String, String, i64, i64, Option<String>)>,
) -> Result<Option<EnrollmentTicket>> {
    let Some((tenant, user_id, created_at, expires_at, consumed_by)) = row else {
        return Ok(None);
    };
    if consumed_by.is_some() {
        return Ok(None);
    }
    Ok(Some(EnrollmentTicket {
        token_sha256: *token_sha256,
        tenant_id: TenantId::parse(&tenant).map_err(|e| StorageError::Corrupt {
            table: "enrollments".into(),
            message: e.to_string(),
        })?,
        user_id,
        created_at,
        expires_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumed_ticket_is_gone() {
        let row = ("bank".to_owned(), "alice".to_owned(), 1, 2, None);
        let t = ticket_of(&[1; 32], Some(row.clone())).unwrap().unwrap();
        assert_eq!(
            (t.tenant_id.as_str(), t.user_id.as_str(), t.expires_at),
            ("bank", "alice", 2)
        );
        let mut consumed = row;
        consumed.4 = Some("dev-x".into());
        assert_eq!(ticket_of(&[1; 32], Some(consumed)).unwrap(), None);
        assert_eq!(ticket_of(&[1; 32], None).unwrap(), None);
    }

    #[test]
    fn slot_batch_values_split_per_statement() {
        let (a, b) = split_slot_values((0..8).map(big).collect());
        assert_eq!(a, (0..4).map(big).collect::<Vec<_>>());
        assert_eq!(b, (4..8).map(big).collect::<Vec<_>>());
    }

    #[test]
    fn device_values_match_the_insert_columns() {
        let cols = rows::DEVICE_COLUMNS.split(',').count();
        let d = sesame_storage_testkit_device();
        assert_eq!(device_values(&d).len(), cols);
    }

    fn sesame_storage_testkit_device() -> Device {
        Device {
            id: DeviceId::generate(),
            tenant_id: TenantId::parse("bank").unwrap(),
            user_id: "u".into(),
            display_name: "p".into(),
            platform: sesame_core::model::Platform::Ios,
            key_algorithm: sesame_core::model::KeyAlgorithm::Ed25519,
            public_key: vec![1; 32],
            push_token: "t".into(),
            push_app: String::new(),
            push_enabled: true,
            enrolled_at: 1,
            revoked_at: None,
        }
    }
}
