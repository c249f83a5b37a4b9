//! Configuration: defaults, then a TOML file (`--config`), then `SESAME_*`
//! environment variables (`SESAME_LISTEN`, `SESAME_DISPATCHER__CONCURRENCY`,
//! ...: upper-case key, `__` between sections). Unknown keys in the file are
//! errors; environment variables that name no key are ignored, since client
//! commands share the `SESAME_` prefix.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sesame_queue::KafkaConfig;
use sesame_ratelimit::{DescriptorLimit, GuardPolicy, TenantQuota};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC listen address (tenant and device APIs, health, reflection).
    pub listen: String,
    /// Admin address: `/metrics` (Prometheus), `/live`, `/ready`; empty disables it.
    pub admin_listen: String,
    /// Where the embedded store and the development tenant's key live.
    pub data_dir: PathBuf,
    /// `embedded` (durable, default), `memory` (lost on exit; tests) or
    /// `scylla://host[:port][,host...]/keyspace` (settings in `[scylla]`).
    pub storage: String,
    /// ScyllaDB settings (with `storage = "scylla://..."`).
    pub scylla: sesame_storage_scylla::ScyllaSection,
    /// `memory`: the in-process bounded queue; `kafka://host:port[,host:port]`:
    /// Kafka (settings in `[kafka]`).
    pub queue: String,
    /// Kafka topics, partitions and client settings (with `queue = "kafka://..."`).
    pub kafka: KafkaConfig,
    /// Roles this process runs: `all`, or any of `challenge`, `verifier`, `dispatcher`, `ratelimit`.
    pub roles: Vec<String>,
    /// Device API URL put into enrollment URIs; empty means `http://<listen>`.
    pub public_device_url: String,
    /// fsync every commit of the embedded store.
    pub durable_writes: bool,
    /// The embedded store's page cache, in MiB: the largest part of the
    /// all-in-one server's memory once the store outgrows it. Pages beyond
    /// it are read again from the OS's page cache; 64 measured as fast as
    /// redb's default of 1024 (docs/performance.md).
    pub embedded_cache_mib: usize,
    /// Create the `dev` tenant and write its API key to `<data_dir>/dev-tenant.key`.
    pub dev_tenant: bool,
    /// The `dev` tenant's API key, given instead of generated (e.g. from a
    /// Kubernetes Secret through `SESAME_DEV_TENANT_KEY`, so that every
    /// replica accepts the same key): `sk_<16 hex>_<secret>`. When set, no
    /// key file is written.
    pub dev_tenant_key: String,
    /// A file holding the admin key (`adm_...`, e.g. a mounted Kubernetes
    /// Secret) that the tenant-administration API
    /// (`sesame.admin.v1.TenantAdminService`) demands. Empty: with
    /// `dev_tenant`, one is generated into `<data_dir>/admin.key`; without,
    /// the admin API is off.
    pub admin_key_file: String,
    /// `text` (development) or `json` (production).
    pub log_format: String,
    /// A tracing filter, e.g. `info` or `sesame=debug,info`.
    pub log_level: String,
    /// Where spans are exported over OTLP/gRPC (an OpenTelemetry Collector,
    /// Jaeger, Tempo), e.g. `http://otel-collector:4317`; empty: nowhere.
    pub otlp_endpoint: String,
    /// The `service.name` of exported spans.
    pub otlp_service_name: String,
    pub max_devices_per_user: usize,
    /// Hours a challenge (and its verdict) is kept after it expires.
    pub challenge_retention_hours: u64,
    /// `simulator`: the built-in simulated provider; `apns_fcm`: the real
    /// APNs and FCM clients, with each tenant's credentials in `push_apps`.
    pub push_provider: String,
    /// `[push_apps.<app id>]`: one tenant's app on one platform, with its
    /// APNs key or FCM service account (see `sesame_push::apps`).
    pub push_apps: BTreeMap<String, sesame_push::apps::PushAppConfig>,
    /// Where a dispatcher sends simulated pushes: empty for this process's
    /// own simulator, or the URL of the process that serves it
    /// (`sesame.simulator.v1.PushGateway`), so that dispatchers in other
    /// processes deliver into one set of phone inboxes.
    pub simulator_url: String,
    /// How often a `WatchChallenge` stream re-reads its challenge when no
    /// event woke it (a lost event then costs this long at most).
    pub watch_resync_ms: u64,
    /// Seconds to drain in-flight work on SIGTERM.
    pub shutdown_grace_seconds: u64,
    /// Seconds between announcing shutdown (health NOT_SERVING, `/ready` 503)
    /// and closing the listener, so load balancers stop sending first. In
    /// Kubernetes set it above readiness period × failure threshold.
    pub shutdown_announce_seconds: u64,
    /// Seconds after which the server asks a client connection to go away
    /// (HTTP/2 GOAWAY; calls in flight finish, within 120 s), so that
    /// long-lived clients reconnect and spread over replicas added since.
    /// 0: connections live as long as the client keeps them.
    pub max_connection_age_seconds: u64,
    pub dispatcher: DispatcherSection,
    /// `[webhook]`: delivery of signed verdict webhooks (the `challenge` role).
    pub webhook: WebhookSection,
    pub guard: GuardSection,
    pub quotas: QuotaSection,
    pub ratelimit: RateLimitSection,
    pub admission: AdmissionSection,
    /// TLS on the gRPC listener and the admin port, tenant mTLS, and the
    /// certificates this process presents to other Sesame roles.
    pub tls: TlsSection,
    /// This process's name in quota usage reports; empty: random per start.
    pub instance_id: String,
}

/// `[tls]`: PEM file paths. With `cert` and `key` set, the gRPC listener
/// (and, unless `admin = false`, the admin port) serves TLS only; the files
/// are re-read every `reload_seconds` and new connections get the new ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    /// The server certificate chain, leaf first.
    pub cert: String,
    /// Its private key.
    pub key: String,
    /// CA bundle whose client certificates identify tenants (a tenant with
    /// a `client_identity` must present one); empty: no tenant mTLS.
    pub client_ca: String,
    /// CA of Sesame's own roles: when set, the role-to-role services
    /// (the push gateway) demand a client certificate it issued.
    pub internal_ca: String,
    /// Serve the admin port (metrics, probes) over TLS too.
    pub admin: bool,
    /// How often the files are compared with what is served.
    pub reload_seconds: u64,
    /// Calls this process makes to other roles (an `https://` `simulator_url`):
    /// the CA that signs their certificates (empty: public roots) ...
    pub server_ca: String,
    /// ... and the client certificate and key it presents (internal mTLS).
    pub client_cert: String,
    pub client_key: String,
}

impl Default for TlsSection {
    fn default() -> Self {
        TlsSection {
            cert: String::new(),
            key: String::new(),
            client_ca: String::new(),
            internal_ca: String::new(),
            admin: true,
            reload_seconds: 10,
            server_ca: String::new(),
            client_cert: String::new(),
            client_key: String::new(),
        }
    }
}

impl TlsSection {
    pub fn enabled(&self) -> bool {
        !self.cert.is_empty()
    }

    /// The listener's files, when TLS is on.
    pub fn files(&self) -> Option<sesame_tls::TlsFiles> {
        let opt = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
        self.enabled().then(|| sesame_tls::TlsFiles {
            cert: PathBuf::from(&self.cert),
            key: PathBuf::from(&self.key),
            client_ca: opt(&self.client_ca),
            internal_ca: opt(&self.internal_ca),
        })
    }

    /// What this process's own clients trust and present.
    pub fn client(&self) -> sesame_tls::ClientTls {
        let opt = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
        sesame_tls::ClientTls {
            ca: opt(&self.server_ca),
            cert: opt(&self.client_cert),
            key: opt(&self.client_key),
            server_name: None,
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.cert.is_empty() == self.key.is_empty(),
            "tls.cert and tls.key go together: set both (TLS) or neither (plaintext)"
        );
        anyhow::ensure!(
            self.enabled() || (self.client_ca.is_empty() && self.internal_ca.is_empty()),
            "tls.client_ca / tls.internal_ca need the listener on TLS: set tls.cert and tls.key"
        );
        anyhow::ensure!(
            self.client_cert.is_empty() == self.client_key.is_empty(),
            "tls.client_cert and tls.client_key go together"
        );
        anyhow::ensure!(
            (1..=3600).contains(&self.reload_seconds),
            "tls.reload_seconds = {}: 1-3600",
            self.reload_seconds
        );
        Ok(())
    }
}

/// Per-tenant quotas (approximate, shared among instances by demand):
/// `[quotas.defaults]` and `[quotas.tenants.<tenant id>]`; 0 = unlimited.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaSection {
    pub defaults: TenantQuota,
    pub tenants: BTreeMap<String, TenantQuota>,
}

/// The push-bombing guard: `[guard.defaults]` for every tenant, and
/// `[guard.tenants.<tenant id>]` for one tenant (a full policy: keys not given
/// there take the built-in defaults).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardSection {
    pub defaults: GuardPolicy,
    pub tenants: BTreeMap<String, GuardPolicy>,
}

/// Limits the `ratelimit` role applies to tenants' own keys, e.g.
/// `[[ratelimit.limits]]` `domain = "login"`, `keys = ["ip"]`,
/// `requests_per_unit = 10`, `unit = "minute"`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSection {
    pub limits: Vec<DescriptorLimit>,
}

/// Admission control (`[admission]`): one adaptive concurrency limit per
/// process, shared by priority, shedding at once instead of queueing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionSection {
    pub enabled: bool,
    pub initial_limit: usize,
    pub min_limit: usize,
    pub max_limit: usize,
    /// Recent latency may be this many times the long-term one before the
    /// limit shrinks.
    pub tolerance: f64,
    /// A call whose `grpc-timeout` leaves less is refused before any work.
    pub min_deadline_ms: u64,
    /// Ceiling on the mean latency of admitted calls (ms): above it the
    /// limit shrinks and does not grow. 0: none (Gradient2 alone). This one
    /// applies to a process with neither Kafka nor ScyllaDB (measured on
    /// the embedded all-in-one) ...
    pub target_latency_ms: u64,
    /// ... and this one to a process with either (default none: measured
    /// with Kafka, a 3 ms ceiling refused logins the setup served).
    pub distributed_target_latency_ms: u64,
}

impl Default for AdmissionSection {
    fn default() -> Self {
        let d = sesame_grpc::admission::AdmissionConfig::default();
        AdmissionSection {
            enabled: d.enabled,
            initial_limit: d.initial_limit,
            min_limit: d.min_limit,
            max_limit: d.max_limit,
            tolerance: d.tolerance,
            min_deadline_ms: d.min_deadline.as_millis() as u64,
            target_latency_ms: d.target_latency.as_millis() as u64,
            distributed_target_latency_ms: 0,
        }
    }
}

impl AdmissionSection {
    /// The library's settings; `local`: no Kafka and no ScyllaDB (where
    /// the latency ceiling's default applies).
    pub fn to_config(&self, local: bool) -> sesame_grpc::admission::AdmissionConfig {
        let ceiling = std::time::Duration::from_millis(if local {
            self.target_latency_ms
        } else {
            self.distributed_target_latency_ms
        });
        sesame_grpc::admission::AdmissionConfig {
            enabled: self.enabled,
            initial_limit: self.initial_limit,
            min_limit: self.min_limit,
            max_limit: self.max_limit,
            tolerance: self.tolerance,
            min_deadline: std::time::Duration::from_millis(self.min_deadline_ms),
            target_latency: ceiling,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatcherSection {
    pub concurrency: usize,
    pub max_attempts: u32,
    /// Retries that may wait for their time at once (their own budget, apart
    /// from fresh pushes).
    pub max_waiting_retries: usize,
}

impl Default for DispatcherSection {
    fn default() -> Self {
        let d = sesame_dispatcher::DispatcherConfig::default();
        DispatcherSection {
            concurrency: d.concurrency,
            max_attempts: d.max_attempts,
            max_waiting_retries: d.max_waiting_retries,
        }
    }
}

/// `[webhook]`: how verdicts reach tenants' endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSection {
    /// Tries per delivery, the first included; then it is dead-lettered.
    pub max_attempts: u32,
    /// First retry delay; doubles each attempt, with full jitter.
    pub base_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// One request's limit (connect, TLS, answer).
    pub timeout_ms: u64,
    /// Requests in flight at once, and to one tenant's endpoint.
    pub concurrency: usize,
    pub per_tenant_concurrency: usize,
    /// Non-public address ranges (CIDR) webhooks may go to, e.g.
    /// `["10.20.0.0/16"]` for an internal gateway. Empty: public addresses
    /// only (loopback, private, link-local and metadata addresses refused).
    pub allow_private: Vec<String>,
    /// Extra trusted CA certificates (PEM file) for receivers, on top of
    /// the public roots. Empty: none.
    pub ca_file: String,
    /// How long a tenant's endpoint is cached per process.
    pub cache_ttl_ms: u64,
    /// A file holding 32 random bytes in base64 (`head -c 32 /dev/urandom |
    /// base64`): new signing secrets are stored sealed with it (AES-256-GCM,
    /// bound to the tenant). Empty: stored as shown. Every `challenge`
    /// process needs the same file.
    pub seal_key_file: String,
}

impl Default for WebhookSection {
    fn default() -> Self {
        let d = sesame_webhook::WebhookConfig::default();
        WebhookSection {
            max_attempts: d.max_attempts,
            base_backoff_ms: d.base_backoff.as_millis() as u64,
            max_backoff_ms: d.max_backoff.as_millis() as u64,
            timeout_ms: d.timeout.as_millis() as u64,
            concurrency: d.concurrency,
            per_tenant_concurrency: d.per_tenant_concurrency,
            allow_private: Vec::new(),
            ca_file: String::new(),
            cache_ttl_ms: d.cache_ttl.as_millis() as u64,
            seal_key_file: String::new(),
        }
    }
}

impl WebhookSection {
    /// The library's settings; reads `ca_file`.
    pub fn to_config(&self) -> anyhow::Result<sesame_webhook::WebhookConfig> {
        let allow = sesame_core::webhook::AddressPolicy::parse(&self.allow_private)
            .map_err(|e| anyhow::anyhow!("webhook.allow_private: {e}"))?;
        let extra_ca_pem = if self.ca_file.is_empty() {
            None
        } else {
            Some(
                std::fs::read_to_string(&self.ca_file)
                    .map_err(|e| anyhow::anyhow!("webhook.ca_file {}: {e}", self.ca_file))?,
            )
        };
        let seal_key = if self.seal_key_file.is_empty() {
            None
        } else {
            let text = std::fs::read_to_string(&self.seal_key_file).map_err(|e| {
                anyhow::anyhow!("webhook.seal_key_file {}: {e}", self.seal_key_file)
            })?;
            Some(std::sync::Arc::new(
                sesame_core::webhook::SealKey::parse(&text).map_err(|e| {
                    anyhow::anyhow!("webhook.seal_key_file {}: {e}", self.seal_key_file)
                })?,
            ))
        };
        Ok(sesame_webhook::WebhookConfig {
            seal_key,
            max_attempts: self.max_attempts,
            base_backoff: std::time::Duration::from_millis(self.base_backoff_ms),
            max_backoff: std::time::Duration::from_millis(self.max_backoff_ms),
            timeout: std::time::Duration::from_millis(self.timeout_ms),
            concurrency: self.concurrency,
            per_tenant_concurrency: self.per_tenant_concurrency,
            allow,
            extra_ca_pem,
            cache_ttl: std::time::Duration::from_millis(self.cache_ttl_ms),
            ..Default::default()
        })
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=100).contains(&self.max_attempts),
            "webhook.max_attempts: 1-100"
        );
        anyhow::ensure!(
            (1..=3_600_000).contains(&self.base_backoff_ms)
                && self.base_backoff_ms <= self.max_backoff_ms
                && self.max_backoff_ms <= 86_400_000,
            "webhook: need 1 <= base_backoff_ms <= max_backoff_ms <= 86400000"
        );
        anyhow::ensure!(
            (100..=120_000).contains(&self.timeout_ms),
            "webhook.timeout_ms: 100-120000"
        );
        anyhow::ensure!(
            (1..=100_000).contains(&self.concurrency)
                && (1..=self.concurrency).contains(&self.per_tenant_concurrency),
            "webhook: need 1 <= per_tenant_concurrency <= concurrency <= 100000"
        );
        anyhow::ensure!(
            self.cache_ttl_ms <= 600_000,
            "webhook.cache_ttl_ms: 0-600000"
        );
        // The files (ca_file, seal_key_file) are read when the server
        // starts, like the TLS files: a configuration can be checked where
        // its Secrets are not mounted.
        sesame_core::webhook::AddressPolicy::parse(&self.allow_private)
            .map_err(|e| anyhow::anyhow!("webhook.allow_private: {e}"))?;
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:50051".into(),
            admin_listen: "127.0.0.1:9464".into(),
            data_dir: PathBuf::from("sesame-data"),
            storage: "embedded".into(),
            scylla: Default::default(),
            queue: "memory".into(),
            kafka: KafkaConfig::default(),
            roles: vec!["all".into()],
            public_device_url: String::new(),
            durable_writes: true,
            embedded_cache_mib: 64,
            dev_tenant: true,
            dev_tenant_key: String::new(),
            admin_key_file: String::new(),
            log_format: "text".into(),
            log_level: "info".into(),
            otlp_endpoint: String::new(),
            otlp_service_name: "sesame".into(),
            max_devices_per_user: sesame_core::limits::MAX_DEVICES_PER_USER,
            challenge_retention_hours: 24,
            push_provider: "simulator".into(),
            push_apps: BTreeMap::new(),
            simulator_url: String::new(),
            watch_resync_ms: 5_000,
            shutdown_grace_seconds: 10,
            shutdown_announce_seconds: 0,
            max_connection_age_seconds: 0,
            dispatcher: DispatcherSection::default(),
            webhook: WebhookSection::default(),
            guard: GuardSection::default(),
            quotas: QuotaSection::default(),
            ratelimit: RateLimitSection::default(),
            admission: AdmissionSection::default(),
            tls: TlsSection::default(),
            instance_id: String::new(),
        }
    }
}

/// The roles one process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub challenge: bool,
    pub verifier: bool,
    pub dispatcher: bool,
    pub ratelimit: bool,
}

impl Config {
    /// Loads from an optional file and an environment map.
    pub fn load(
        file: Option<&std::path::Path>,
        env: &BTreeMap<String, String>,
    ) -> anyhow::Result<Config> {
        let mut table = toml::Table::try_from(Config::default())?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
            let file_table: toml::Table = toml::from_str(&text)
                .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
            // Strict parse first, for a precise message about unknown keys.
            let _: Config = toml::Value::Table(file_table.clone())
                .try_into()
                .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
            merge(&mut table, file_table, "");
        }
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("SESAME_") else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            set_known(&mut table, &path, value)
                .map_err(|e| anyhow::anyhow!("environment variable {name}: {e}"))?;
        }
        let config: Config = toml::Value::Table(table).try_into()?;
        config.validate()?;
        Ok(config)
    }

    /// `SESAME_*` variables in `env` that name no configuration key (and
    /// are not one of the client commands' own variables): a typo there is
    /// otherwise silently ignored. `sesame check-config --strict-env` fails on them.
    pub fn unknown_env(env: &BTreeMap<String, String>) -> Vec<String> {
        let Ok(table) = toml::Table::try_from(Config::default()) else {
            return Vec::new();
        };
        env.keys()
            .filter(|name| !CLIENT_ENV.contains(&name.as_str()))
            .filter_map(|name| {
                let rest = name.strip_prefix("SESAME_")?;
                let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
                (!key_exists(&table, &path)).then(|| name.clone())
            })
            .collect()
    }

    /// The configuration as TOML, with secrets (`dev_tenant_key`, the
    /// ScyllaDB password, Kafka properties naming a password or secret)
    /// replaced by `"<redacted>"`, for `sesame check-config`.
    pub fn to_redacted_toml(&self) -> anyhow::Result<String> {
        let mut table = toml::Table::try_from(self)?;
        let redact = |v: &mut toml::Value| {
            if v.as_str().is_some_and(|s| !s.is_empty()) {
                *v = toml::Value::String("<redacted>".into());
            }
        };
        if let Some(v) = table.get_mut("dev_tenant_key") {
            redact(v);
        }
        if let Some(v) = table.get_mut("scylla").and_then(|s| s.get_mut("password")) {
            redact(v);
        }
        if let Some(toml::Value::Table(props)) =
            table.get_mut("kafka").and_then(|k| k.get_mut("properties"))
        {
            for (k, v) in props.iter_mut() {
                let k = k.to_ascii_lowercase();
                if k.contains("password") || k.contains("secret") || k.contains("jaas") {
                    redact(v);
                }
            }
        }
        Ok(toml::to_string(&table)?)
    }

    /// The ScyllaDB backend's settings when `storage` is a `scylla://` URI:
    /// its rows live as long as the challenge retention and the longest
    /// guard window say.
    pub fn scylla_config(&self) -> anyhow::Result<Option<sesame_storage_scylla::ScyllaConfig>> {
        if !self.storage.starts_with("scylla://") {
            return Ok(None);
        }
        let mut c =
            sesame_storage_scylla::ScyllaConfig::from_uri(&self.storage, self.scylla.clone())
                .map_err(|e| anyhow::anyhow!("storage / [scylla]: {e}"))?;
        c.challenge_retention =
            std::time::Duration::from_secs(self.challenge_retention_hours * 3600);
        c.guard_retention = std::time::Duration::from_millis(self.guard_horizon_ms().max(0) as u64);
        Ok(Some(c))
    }

    /// How long a push-bombing guard record matters after its last event:
    /// the longest window of any tenant's policy.
    pub fn guard_horizon_ms(&self) -> i64 {
        self.guard
            .tenants
            .values()
            .chain(std::iter::once(&self.guard.defaults))
            .map(GuardPolicy::longest_window_ms)
            .max()
            .unwrap_or(0)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| anyhow::anyhow!("listen = {:?}: {e}", self.listen))?;
        if !self.admin_listen.is_empty() {
            self.admin_listen
                .parse::<std::net::SocketAddr>()
                .map_err(|e| anyhow::anyhow!("admin_listen = {:?}: {e}", self.admin_listen))?;
        }
        if self.storage.starts_with("scylla://") {
            self.scylla_config()?;
        } else {
            anyhow::ensure!(
                matches!(self.storage.as_str(), "embedded" | "memory"),
                "storage = {:?}: use \"embedded\", \"memory\" or \"scylla://host[,host...]/keyspace\"",
                self.storage
            );
        }
        anyhow::ensure!(
            self.queue == "memory" || KafkaConfig::brokers_from_uri(&self.queue).is_some(),
            "queue = {:?}: use \"memory\" (in-process) or \"kafka://host:port[,host:port...]\"",
            self.queue
        );
        self.kafka.validate().map_err(|e| anyhow::anyhow!(e))?;
        if !self.otlp_endpoint.is_empty() {
            anyhow::ensure!(
                (self.otlp_endpoint.starts_with("http://")
                    || self.otlp_endpoint.starts_with("https://"))
                    && self.otlp_endpoint.parse::<tonic::codegen::http::Uri>().is_ok(),
                "otlp_endpoint = {:?}: an http:// or https:// URL of an OTLP/gRPC receiver, e.g. http://otel-collector:4317",
                self.otlp_endpoint
            );
            anyhow::ensure!(
                !self.otlp_service_name.trim().is_empty(),
                "otlp_service_name: must not be empty when otlp_endpoint is set"
            );
        }
        if !self.simulator_url.is_empty() {
            anyhow::ensure!(
                self.simulator_url.starts_with("http://")
                    || self.simulator_url.starts_with("https://"),
                "simulator_url = {:?}: an http:// or https:// URL",
                self.simulator_url
            );
        }
        anyhow::ensure!(
            matches!(self.push_provider.as_str(), "simulator" | "apns_fcm"),
            "push_provider = {:?}: \"simulator\" (built in) or \"apns_fcm\" (real clients, credentials in push_apps)",
            self.push_provider
        );
        sesame_push::apps::catalog(&self.push_apps).map_err(|e| anyhow::anyhow!(e))?;
        anyhow::ensure!(
            self.push_provider == "apns_fcm" || self.push_apps.is_empty(),
            "push_apps are configured but push_provider = {:?}: set push_provider = \"apns_fcm\"",
            self.push_provider
        );
        anyhow::ensure!(
            matches!(self.log_format.as_str(), "text" | "json"),
            "log_format = {:?}: use \"text\" or \"json\"",
            self.log_format
        );
        anyhow::ensure!(
            self.max_devices_per_user >= 1,
            "max_devices_per_user must be at least 1"
        );
        anyhow::ensure!(
            (1..=1 << 20).contains(&self.embedded_cache_mib),
            "embedded_cache_mib = {}: give the embedded store's cache in MiB, 1 or more",
            self.embedded_cache_mib
        );
        anyhow::ensure!(
            (100..=3_600_000).contains(&self.watch_resync_ms),
            "watch_resync_ms = {}: 100-3600000",
            self.watch_resync_ms
        );
        anyhow::ensure!(
            self.max_connection_age_seconds == 0
                || (10..=86_400).contains(&self.max_connection_age_seconds),
            "max_connection_age_seconds = {}: 0 (no limit) or 10-86400",
            self.max_connection_age_seconds
        );
        self.webhook.validate()?;
        anyhow::ensure!(
            self.dispatcher.concurrency >= 1,
            "dispatcher.concurrency must be at least 1"
        );
        anyhow::ensure!(
            self.dispatcher.max_attempts >= 1,
            "dispatcher.max_attempts must be at least 1"
        );
        let a = &self.admission;
        anyhow::ensure!(
            a.min_limit >= 1 && a.min_limit <= a.initial_limit && a.initial_limit <= a.max_limit,
            "admission: need 1 <= min_limit <= initial_limit <= max_limit"
        );
        anyhow::ensure!(
            a.max_limit <= 1_000_000,
            "admission.max_limit: at most 1000000"
        );
        anyhow::ensure!(
            a.tolerance.is_finite() && (1.0..=10.0).contains(&a.tolerance),
            "admission.tolerance: 1.0-10.0"
        );
        anyhow::ensure!(
            a.min_deadline_ms <= 60_000,
            "admission.min_deadline_ms: 0-60000"
        );
        anyhow::ensure!(
            a.target_latency_ms <= 60_000 && a.distributed_target_latency_ms <= 60_000,
            "admission.target_latency_ms and distributed_target_latency_ms: 0 (none) to 60000"
        );
        anyhow::ensure!(
            (1..=1_000_000).contains(&self.dispatcher.max_waiting_retries),
            "dispatcher.max_waiting_retries: 1-1000000"
        );
        self.guard
            .defaults
            .validate()
            .map_err(|e| anyhow::anyhow!("guard.defaults: {e}"))?;
        for (tenant, policy) in &self.guard.tenants {
            sesame_core::TenantId::parse(tenant)
                .map_err(|e| anyhow::anyhow!("guard.tenants.{tenant}: {e}"))?;
            policy
                .validate()
                .map_err(|e| anyhow::anyhow!("guard.tenants.{tenant}: {e}"))?;
        }
        self.quotas
            .defaults
            .validate()
            .map_err(|e| anyhow::anyhow!("quotas.defaults: {e}"))?;
        for (tenant, quota) in &self.quotas.tenants {
            sesame_core::TenantId::parse(tenant)
                .map_err(|e| anyhow::anyhow!("quotas.tenants.{tenant}: {e}"))?;
            quota
                .validate()
                .map_err(|e| anyhow::anyhow!("quotas.tenants.{tenant}: {e}"))?;
        }
        for (i, limit) in self.ratelimit.limits.iter().enumerate() {
            limit
                .validate()
                .map_err(|e| anyhow::anyhow!("ratelimit.limits[{i}]: {e}"))?;
        }
        anyhow::ensure!(
            self.dev_tenant_key.is_empty() || sesame_grpc::apikey::parse(&self.dev_tenant_key).is_some(),
            "dev_tenant_key is not an API key: write sk_<16 hex digits>_<secret of 1-128 characters>"
        );
        self.tls.validate()?;
        self.roles()?;
        Ok(())
    }

    pub fn roles(&self) -> anyhow::Result<Roles> {
        let mut r = Roles {
            challenge: false,
            verifier: false,
            dispatcher: false,
            ratelimit: false,
        };
        anyhow::ensure!(!self.roles.is_empty(), "roles is empty: use [\"all\"]");
        for role in &self.roles {
            match role.trim() {
                "all" => {
                    r.challenge = true;
                    r.verifier = true;
                    r.dispatcher = true;
                    r.ratelimit = true;
                }
                "challenge" => r.challenge = true,
                "verifier" => r.verifier = true,
                "dispatcher" => r.dispatcher = true,
                "ratelimit" => r.ratelimit = true,
                other => anyhow::bail!(
                    "unknown role {other:?}: use all, challenge, verifier, dispatcher or ratelimit"
                ),
            }
        }
        Ok(r)
    }

    pub fn device_url(&self) -> String {
        if self.public_device_url.is_empty() {
            let scheme = if self.tls.enabled() { "https" } else { "http" };
            format!("{scheme}://{}", self.listen)
        } else {
            self.public_device_url.clone()
        }
    }
}

/// Variables of the client commands and the test suites, not configuration keys.
const CLIENT_ENV: &[&str] = &[
    "SESAME_LOG",
    "SESAME_API_KEY",
    "SESAME_ADMIN_KEY",
    "SESAME_SCYLLA_NODES",
    "SESAME_SCYLLA_DC",
    "SESAME_SCYLLA_RF",
    // What the client commands trust and present (sesame_tls::ClientTls).
    "SESAME_TLS_CA",
    "SESAME_TLS_CLIENT_CERT",
    "SESAME_TLS_CLIENT_KEY",
    "SESAME_TLS_SERVER_NAME",
];

fn key_exists(table: &toml::Table, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut t = table;
    for p in parents {
        match t.get(p) {
            Some(toml::Value::Table(inner)) => t = inner,
            _ => return false,
        }
    }
    t.contains_key(last)
}

/// Tables that hold data (one entry per datacenter, tenant, app or
/// property), not settings: a file's table replaces the default whole, so
/// `replication = { eu-west = 3 }` does not keep the default's `datacenter1`.
const DATA_TABLES: &[&str] = &[
    "scylla.replication",
    "kafka.properties",
    "guard.tenants",
    "quotas.tenants",
    "push_apps",
];

fn merge(base: &mut toml::Table, over: toml::Table, prefix: &str) {
    for (k, v) in over {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o))
                if !DATA_TABLES.contains(&path.as_str()) =>
            {
                merge(b, o, &path)
            }
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Sets `path` to `raw` if the key exists, typed like the existing value.
fn set_known(table: &mut toml::Table, path: &[String], raw: &str) -> anyhow::Result<()> {
    let Some((last, parents)) = path.split_last() else {
        return Ok(());
    };
    let mut t = table;
    for p in parents {
        match t.get_mut(p) {
            Some(toml::Value::Table(inner)) => t = inner,
            _ => return Ok(()),
        }
    }
    let Some(current) = t.get(last) else {
        return Ok(());
    };
    let value = match current {
        toml::Value::String(_) => toml::Value::String(raw.to_owned()),
        toml::Value::Integer(_) => toml::Value::Integer(
            raw.trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("{raw:?} is not an integer"))?,
        ),
        toml::Value::Boolean(_) => toml::Value::Boolean(match raw.trim() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => anyhow::bail!("{raw:?} is not a boolean (true/false)"),
        }),
        toml::Value::Array(_) => toml::Value::Array(
            raw.split(',')
                .map(|s| toml::Value::String(s.trim().to_owned()))
                .filter(|v| v.as_str() != Some(""))
                .collect(),
        ),
        // A map, whole: `key=value,key=value` (e.g. the replication
        // factor per datacenter, `eu-west=3,eu-central=3`).
        toml::Value::Table(_) => {
            let mut map = toml::Table::new();
            for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("{pair:?}: write key=value,key=value"))?;
                let v = v.trim();
                let v = v
                    .parse::<i64>()
                    .map(toml::Value::Integer)
                    .unwrap_or_else(|_| toml::Value::String(v.to_owned()));
                map.insert(k.trim().to_owned(), v);
            }
            toml::Value::Table(map)
        }
        _ => anyhow::bail!("cannot be set from the environment"),
    };
    t.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn connection_age_is_off_or_at_least_ten_seconds() {
        for (raw, ok) in [
            ("0", true),
            ("10", true),
            ("300", true),
            ("5", false),
            ("100000", false),
        ] {
            let r = Config::load(None, &env(&[("SESAME_MAX_CONNECTION_AGE_SECONDS", raw)]));
            assert_eq!(r.is_ok(), ok, "{raw}: {r:?}");
        }
    }

    #[test]
    fn a_files_data_tables_replace_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "[scylla]\nlocal_datacenter = \"eu-west\"\n[scylla.replication]\neu-west = 3\n",
        )
        .unwrap();
        let c = Config::load(Some(&f), &BTreeMap::new()).unwrap();
        assert_eq!(
            c.scylla.replication,
            BTreeMap::from([("eu-west".to_string(), 3)]),
            "the default datacenter1 must not survive"
        );
        // Settings tables still merge key by key.
        assert_eq!(c.scylla.local_datacenter, "eu-west");
        assert_eq!(c.scylla.page_size, Config::default().scylla.page_size);
    }

    #[test]
    fn unknown_environment_keys_are_listed() {
        let e = env(&[
            ("SESAME_LISTEN", "0.0.0.0:1"),
            ("SESAME_KAFKA__PUSH_PARTITIONS", "4"),
            ("SESAME_SCYLLA__REPLICATION", "dc1=3"),
            ("SESAME_LOG", "debug"),
            ("SESAME_LISTEN_ADDR", "x"),
            ("SESAME_KAFKA__PARTITIONS", "4"),
            ("SESAME_LISTEN__PORT", "1"),
            ("OTHER", "1"),
        ]);
        assert_eq!(
            Config::unknown_env(&e),
            vec![
                "SESAME_KAFKA__PARTITIONS".to_string(),
                "SESAME_LISTEN_ADDR".to_string(),
                "SESAME_LISTEN__PORT".to_string(),
            ]
        );
    }

    #[test]
    fn redacted_toml_hides_every_secret_and_keeps_the_rest() {
        let mut c = Config {
            dev_tenant_key: "sk_0011223344556677_topsecret".into(),
            ..Config::default()
        };
        c.scylla.password = "scylla-pass".into();
        c.kafka
            .properties
            .insert("sasl.password".into(), "kafka-pass".into());
        c.kafka
            .properties
            .insert("security.protocol".into(), "SASL_SSL".into());
        let text = c.to_redacted_toml().unwrap();
        for secret in ["topsecret", "scylla-pass", "kafka-pass"] {
            assert!(!text.contains(secret), "{secret} leaked:\n{text}");
        }
        assert!(text.contains("SASL_SSL"));
        assert!(text.contains("listen = \"127.0.0.1:50051\""));
        // The printed form loads back (secrets aside).
        let _: Config = toml::from_str(&text).unwrap();
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::load(None, &BTreeMap::new()).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.device_url(), "http://127.0.0.1:50051");
    }

    #[test]
    fn file_then_env_override() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "listen = \"127.0.0.1:6000\"\n[dispatcher]\nconcurrency = 8\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&f),
            &env(&[
                ("SESAME_DISPATCHER__CONCURRENCY", "16"),
                ("SESAME_ROLES", "challenge,verifier"),
                ("SESAME_API_KEY", "ignored: a client variable"),
                ("SESAME_DURABLE_WRITES", "false"),
                ("SESAME_EMBEDDED_CACHE_MIB", "64"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:6000");
        assert_eq!(c.dispatcher.concurrency, 16);
        assert_eq!(c.roles, vec!["challenge", "verifier"]);
        assert!(!c.durable_writes);
        assert_eq!(c.embedded_cache_mib, 64);
        let r = c.roles().unwrap();
        assert!(r.challenge && r.verifier && !r.dispatcher);
    }

    #[test]
    fn scylla_storage_from_file_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "storage = \"scylla://10.0.0.1,10.0.0.2:19042/sesame\"\nchallenge_retention_hours = 2\n\
             [scylla]\nlocal_datacenter = \"eu-west\"\nusername = \"sesame\"\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&f),
            &env(&[
                ("SESAME_SCYLLA__REPLICATION", "eu-west=3, eu-central=2"),
                ("SESAME_SCYLLA__PASSWORD", "from-a-secret"),
                ("SESAME_SCYLLA__TLS__ENABLED", "true"),
            ]),
        )
        .unwrap();
        let s = c.scylla_config().unwrap().expect("a scylla:// storage");
        assert_eq!(s.nodes, vec!["10.0.0.1:9042", "10.0.0.2:19042"]);
        assert_eq!(s.keyspace, "sesame");
        assert_eq!(
            s.section.replication,
            BTreeMap::from([("eu-central".to_owned(), 2), ("eu-west".to_owned(), 3)])
        );
        assert_eq!(s.section.password, "from-a-secret");
        assert!(s.section.tls.enabled);
        assert_eq!(s.challenge_retention, std::time::Duration::from_secs(7200));
        assert_eq!(s.guard_retention.as_millis() as i64, c.guard_horizon_ms());
        assert!(s.guard_retention > std::time::Duration::ZERO);

        for (storage, says) in [
            ("scylla://h", "name the keyspace"),
            ("postgres://h/db", "scylla://host"),
        ] {
            let e = Config::load(None, &env(&[("SESAME_STORAGE", storage)])).unwrap_err();
            assert!(format!("{e:#}").contains(says), "{storage}: {e:#}");
        }
        let e = Config::load(None, &env(&[("SESAME_SCYLLA__REPLICATION", "dc1")])).unwrap_err();
        assert!(format!("{e:#}").contains("key=value"), "{e:#}");
        assert_eq!(Config::default().scylla_config().unwrap(), None);
    }

    #[test]
    fn limits_guard_and_quotas_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            r#"
[guard.defaults]
max_prompts = 3
[guard.tenants.bank]
fraud_mute_secs = 60
[quotas.tenants.bank]
per_second = 50.0
per_day = 100000
[[ratelimit.limits]]
domain = "login"
keys = ["ip"]
requests_per_unit = 10
unit = "minute"
"#,
        )
        .unwrap();
        let c = Config::load(Some(&f), &BTreeMap::new()).unwrap();
        assert_eq!(c.guard.defaults.max_prompts, 3);
        assert_eq!(c.guard.tenants["bank"].fraud_mute_secs, 60);
        assert_eq!(c.guard.tenants["bank"].max_prompts, 5, "built-in default");
        assert_eq!(c.quotas.tenants["bank"].per_day, 100_000);
        assert_eq!(c.ratelimit.limits[0].requests_per_unit, 10);
        std::fs::write(&f, "[guard.tenants.Bad]\nmax_prompts = 1\n").unwrap();
        assert!(Config::load(Some(&f), &BTreeMap::new()).is_err());
        std::fs::write(&f, "[guard.defaults]\nmax_prompts = 0\n").unwrap();
        assert!(Config::load(Some(&f), &BTreeMap::new()).is_err());
    }

    #[test]
    fn kafka_from_the_uri_the_file_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            r#"
queue = "kafka://k1:9092,k2:9092"
simulator_url = "http://sim:50051"
[kafka]
push_partitions = 24
[kafka.properties]
"security.protocol" = "SASL_SSL"
"#,
        )
        .unwrap();
        let c = Config::load(Some(&f), &env(&[("SESAME_KAFKA__REPLICATION_FACTOR", "1")])).unwrap();
        assert_eq!(
            KafkaConfig::brokers_from_uri(&c.queue).as_deref(),
            Some("k1:9092,k2:9092")
        );
        assert_eq!(c.kafka.push_partitions, 24);
        assert_eq!(c.kafka.replication_factor, 1);
        assert_eq!(c.kafka.properties["security.protocol"], "SASL_SSL");
        for (key, value) in [
            ("SESAME_QUEUE", "kafka://"),
            ("SESAME_QUEUE", "redis://x:1"),
            ("SESAME_KAFKA__PUSH_PARTITIONS", "0"),
            ("SESAME_KAFKA__MESSAGE_TIMEOUT_MS", "700000"),
            ("SESAME_SIMULATOR_URL", "sim:50051"),
            ("SESAME_WATCH_RESYNC_MS", "1"),
        ] {
            assert!(
                Config::load(None, &env(&[(key, value)])).is_err(),
                "{key}={value} accepted"
            );
        }
        // The broker list comes from the URI only.
        std::fs::write(&f, "[kafka]\nbrokers = \"x:1\"\n").unwrap();
        assert!(Config::load(Some(&f), &BTreeMap::new()).is_err());
    }

    #[test]
    fn bad_values_are_refused_with_the_key_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "listne = \"x\"\n").unwrap();
        let e = Config::load(Some(&f), &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("listne"), "{e}");
        let e = Config::load(None, &env(&[("SESAME_DISPATCHER__CONCURRENCY", "many")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("SESAME_DISPATCHER__CONCURRENCY"), "{e}");
        assert!(Config::load(None, &env(&[("SESAME_ROLES", "pusher")])).is_err());
        assert!(Config::load(None, &env(&[("SESAME_STORAGE", "postgres")])).is_err());
        assert!(Config::load(None, &env(&[("SESAME_LISTEN", "nowhere")])).is_err());
        let e = Config::load(None, &env(&[("SESAME_EMBEDDED_CACHE_MIB", "0")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("embedded_cache_mib"), "{e}");
    }
}
