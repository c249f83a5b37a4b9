//! Assembles the roles of one process from a [`Config`] and serves them on
//! one gRPC listener, with health and reflection. Tests build it in-process
//! on `127.0.0.1:0`; the binary is a thin wrapper.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sesame_challenge::{
    apikey, AuditApi, ChallengeApi, ChallengeConfig, EnrollmentApi, Shutdown, TenantAdminApi,
    TenantAuth, WatchHub,
};
use sesame_core::time::now_ms;
use sesame_core::{Tenant, TenantId};
use sesame_dispatcher::{Dispatcher, DispatcherConfig};
use sesame_proto::admin::v1::audit_admin_service_server::AuditAdminServiceServer;
use sesame_proto::admin::v1::tenant_admin_service_server::TenantAdminServiceServer;
use sesame_proto::device::v1::device_service_server::DeviceServiceServer;
use sesame_proto::ratelimit::v1::rate_limit_service_server::RateLimitServiceServer;
use sesame_proto::simulator::v1::push_gateway_server::PushGatewayServer;
use sesame_proto::simulator::v1::push_inbox_server::PushInboxServer;
use sesame_proto::tenant::v1::audit_service_server::AuditServiceServer;
use sesame_proto::tenant::v1::challenge_service_server::ChallengeServiceServer;
use sesame_proto::tenant::v1::enrollment_service_server::EnrollmentServiceServer;
use sesame_proto::tenant::v1::webhook_service_server::WebhookServiceServer;
use sesame_push::SimulatorProvider;
use sesame_queue::{KafkaConfig, KafkaQueue, MemQueue, MemQueueConfig, Queue};
use sesame_ratelimit::{
    DescriptorLimiter, GuardPolicy, RateLimitApi, TenantLimiter, TenantQuota, UserGuard,
};
use sesame_storage::{EmbeddedConfig, EmbeddedStorage, MemStorage, MeteredStorage, Storage};
use sesame_verifier::{DeviceApi, ReplayGuard};
use tokio::net::TcpListener;

use crate::config::{Config, Roles};
use crate::inbox::{GatewayApi, InboxApi};

/// The development tenant created by a zero-configuration `serve`.
pub const DEV_TENANT: &str = "dev";
/// Its API key file, inside the data directory.
pub const DEV_KEY_FILE: &str = "dev-tenant.key";
/// The generated admin key's file, inside the data directory.
pub const ADMIN_KEY_FILE: &str = "admin.key";
const ADMIN_SERVICE: &str = "sesame.admin.v1.TenantAdminService";
const AUDIT_ADMIN_SERVICE: &str = "sesame.admin.v1.AuditAdminService";
const AUDIT_SERVICE: &str = "sesame.tenant.v1.AuditService";
const WEBHOOK_SERVICE: &str = "sesame.tenant.v1.WebhookService";
const ENROLLMENT_SERVICE: &str = "sesame.tenant.v1.EnrollmentService";
const CHALLENGE_SERVICE: &str = "sesame.tenant.v1.ChallengeService";
const DEVICE_SERVICE: &str = "sesame.device.v1.DeviceService";
const RATELIMIT_SERVICE: &str = "sesame.ratelimit.v1.RateLimitService";

/// Largest request message accepted, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// One process's roles, ready to serve.
pub struct Sesame {
    pub config: Config,
    pub roles: Roles,
    pub storage: Arc<dyn Storage>,
    pub queue: Arc<dyn Queue>,
    pub simulator: Arc<SimulatorProvider>,
    pub hub: WatchHub,
    /// Lets `PUT /log_level` on the admin port change the log filter.
    pub log_control: Option<crate::telemetry::LogControl>,
}

impl Sesame {
    /// Opens the backends named by the configuration.
    pub async fn open(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        // Backends record metrics from the start.
        crate::telemetry::prometheus();
        let roles = config.roles()?;
        // A dispatcher is stateless: a process with no other role opens no
        // store (an empty in-memory one stands in and is never written).
        let needs_storage = roles.challenge || roles.verifier || roles.ratelimit;
        let storage: Arc<dyn Storage> = match config.storage.as_str() {
            _ if !needs_storage => Arc::new(MemStorage::new()),
            "memory" => Arc::new(MemStorage::new()),
            _ if config.storage.starts_with("scylla://") => {
                let c = config
                    .scylla_config()?
                    .context("storage is not a scylla:// URI")?;
                let nodes = c.nodes.join(",");
                Arc::new(
                    sesame_storage_scylla::ScyllaStorage::open(c)
                        .await
                        .with_context(|| format!("opening ScyllaDB storage at {nodes}"))?,
                )
            }
            _ => {
                let mut c = EmbeddedConfig::new(EmbeddedStorage::path_in(&config.data_dir));
                c.durable = config.durable_writes;
                c.cache_bytes = config.embedded_cache_mib << 20;
                Arc::new(EmbeddedStorage::open(c).with_context(|| {
                    format!(
                        "opening the embedded store in {}",
                        config.data_dir.display()
                    )
                })?)
            }
        };
        let storage: Arc<dyn Storage> = Arc::new(MeteredStorage::new(storage));
        let queue: Arc<dyn Queue> = match KafkaConfig::brokers_from_uri(&config.queue) {
            Some(brokers) => {
                let kafka = KafkaConfig {
                    brokers,
                    ..config.kafka.clone()
                };
                Arc::new(
                    KafkaQueue::connect(kafka)
                        .await
                        .context("connecting to Kafka")?,
                )
            }
            None => Arc::new(MemQueue::new(MemQueueConfig::default())),
        };
        Ok(Sesame {
            config,
            roles,
            storage,
            queue,
            simulator: Arc::new(SimulatorProvider::new()),
            hub: WatchHub::new(),
            log_control: None,
        })
    }

    /// Makes sure the `dev` tenant exists and has a key: the configured
    /// `dev_tenant_key` (returns `None`), or one in `<data_dir>/dev-tenant.key`,
    /// reusing a still-valid one (returns the file).
    pub async fn ensure_dev_tenant(&self) -> anyhow::Result<Option<PathBuf>> {
        let tenant_id = TenantId::parse(DEV_TENANT)?;
        if self.storage.get_tenant(&tenant_id).await?.is_none() {
            self.storage
                .put_tenant(&Tenant {
                    id: tenant_id.clone(),
                    display_name: "Development tenant".into(),
                    disabled: false,
                    created_at: now_ms(),
                    client_identity: String::new(),
                })
                .await?;
        }
        let given = self.config.dev_tenant_key.trim();
        if !given.is_empty() {
            // Validated with the configuration; re-checked, never unwrapped.
            let (key_id, hash) =
                apikey::parse(given).context("dev_tenant_key is not an API key")?;
            match self.storage.get_api_key(key_id).await? {
                Some(r) if r.tenant_id != tenant_id => {
                    anyhow::bail!("dev_tenant_key: key id {key_id} belongs to another tenant")
                }
                // A revoked key stays revoked, whatever the configuration says.
                Some(r) if !r.is_live(now_ms()) => {
                    anyhow::bail!("dev_tenant_key: key {key_id} was revoked or rotated out; configure a new one")
                }
                Some(r) if r.secret_sha256 == hash => {}
                _ => {
                    self.storage
                        .put_api_key(&sesame_core::ApiKeyRecord {
                            key_id: key_id.to_owned(),
                            tenant_id,
                            secret_sha256: hash,
                            created_at: now_ms(),
                            revoked: false,
                            expires_at: 0,
                        })
                        .await?
                }
            }
            return Ok(None);
        }
        std::fs::create_dir_all(&self.config.data_dir)
            .with_context(|| format!("creating {}", self.config.data_dir.display()))?;
        let path = self.config.data_dir.join(DEV_KEY_FILE);
        if let Ok(existing) = std::fs::read_to_string(&path) {
            if let Some((key_id, hash)) = apikey::parse(existing.trim()) {
                if let Some(rec) = self.storage.get_api_key(key_id).await? {
                    if rec.secret_sha256 == hash
                        && rec.is_live(now_ms())
                        && rec.tenant_id == tenant_id
                    {
                        return Ok(Some(path));
                    }
                }
            }
        }
        let (key, record) = apikey::generate(&tenant_id, now_ms());
        self.storage.put_api_key(&record).await?;
        sesame_device_sim::write_private(&path, format!("{key}\n").as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Some(path))
    }

    /// The SHA-256 of the admin key the tenant-administration API demands:
    /// the one in `admin_key_file`; else, with `dev_tenant`, the one in
    /// `<data_dir>/admin.key`, generated on first start; else `None` (the
    /// admin API is not served).
    pub fn admin_key(&self) -> anyhow::Result<Option<[u8; 32]>> {
        use sesame_challenge::admin::{admin_key_sha256, generate_admin_key};
        let file = self.config.admin_key_file.trim();
        if !file.is_empty() {
            let key = std::fs::read_to_string(file)
                .with_context(|| format!("reading admin_key_file {file}"))?;
            let hash = admin_key_sha256(key.trim()).with_context(|| {
                format!("admin_key_file {file} does not hold an admin key (adm_ and 32-128 base64url characters; `openssl rand -base64 32 | tr '+/' '-_' | tr -d '=' | sed 's/^/adm_/'` makes one)")
            })?;
            return Ok(Some(hash));
        }
        if !self.config.dev_tenant {
            return Ok(None);
        }
        let path = self.config.data_dir.join(ADMIN_KEY_FILE);
        if let Ok(existing) = std::fs::read_to_string(&path) {
            if let Some(hash) = admin_key_sha256(existing.trim()) {
                return Ok(Some(hash));
            }
        }
        std::fs::create_dir_all(&self.config.data_dir)
            .with_context(|| format!("creating {}", self.config.data_dir.display()))?;
        let key = generate_admin_key();
        sesame_device_sim::write_private(&path, format!("{key}\n").as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        tracing::info!(key_file = %path.display(), "admin key generated; `sesame tenant` and `sesame apikey` find it there");
        admin_key_sha256(&key)
            .context("a generated admin key is malformed")
            .map(Some)
    }

    /// Serves until `shutdown` resolves, then drains. The admin listener
    /// (`/metrics`, `/live`, `/ready`) is bound from `admin_listen` unless empty.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let admin = if self.config.admin_listen.is_empty() {
            None
        } else {
            Some(
                TcpListener::bind(&self.config.admin_listen)
                    .await
                    .with_context(|| {
                        format!("binding admin_listen {}", self.config.admin_listen)
                    })?,
            )
        };
        self.serve_with_admin(listener, admin, shutdown).await
    }

    /// Like [`Sesame::serve`], with the admin listener given (tests bind port 0).
    pub async fn serve_with_admin(
        self,
        listener: TcpListener,
        admin: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        // Every role records metrics whether or not this process serves them.
        crate::telemetry::prometheus();
        let admin_key = if self.roles.challenge {
            self.admin_key()?
        } else {
            None
        };
        let tls = match self.config.tls.files() {
            Some(files) => {
                let cert = files.cert.display().to_string();
                Some(
                    sesame_tls::ServerTls::load(files)
                        .with_context(|| format!("loading the TLS certificate {cert}"))?,
                )
            }
            None => None,
        };
        let reloader = tls
            .as_ref()
            .map(|t| t.spawn_reloader(Duration::from_secs(self.config.tls.reload_seconds)));
        warn_if_plaintext(
            &listener,
            admin.as_ref(),
            tls.is_some(),
            self.config.tls.admin,
        );
        let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (admin_stop_tx, admin_stop) = tokio::sync::oneshot::channel::<()>();
        if let Some(admin) = admin {
            let (storage, draining) = (self.storage.clone(), draining.clone());
            // Readiness follows the queue only where nothing else can be
            // served without it: a dispatcher. A tenant or device API still
            // answers reads and approvals while the brokers are away.
            let roles = self.roles;
            let queue_gates_ready = roles.dispatcher && !roles.challenge && !roles.verifier;
            let admin_tls = tls.clone().filter(|_| self.config.tls.admin);
            tracing::info!(addr = %admin.local_addr()?, tls = admin_tls.is_some(), "admin endpoints serving");
            let state = crate::telemetry::AdminState::new(
                storage,
                queue_gates_ready.then(|| self.queue.clone()),
                draining,
                self.log_control.clone(),
            );
            let stop = async {
                let _ = admin_stop.await;
            };
            match admin_tls {
                Some(t) => {
                    let l =
                        sesame_tls::TlsIncoming::new(admin, t, sesame_tls::Alpn::Http1, "admin")?;
                    tokio::spawn(crate::telemetry::serve_admin(
                        crate::telemetry::TlsListener(l),
                        state,
                        stop,
                    ));
                }
                None => {
                    tokio::spawn(crate::telemetry::serve_admin(admin, state, stop));
                }
            }
        }
        let Sesame {
            config,
            roles,
            storage,
            queue,
            simulator,
            hub,
            log_control: _,
        } = self;
        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(sesame_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;

        let mut background = tokio::task::JoinSet::new();
        let (stop_streams, streams_shutdown) = Shutdown::new();
        let auth = TenantAuth::new(storage.clone());
        let tenant_policies: HashMap<TenantId, GuardPolicy> = config
            .guard
            .tenants
            .iter()
            // Ids were validated with the configuration.
            .filter_map(|(t, p)| TenantId::parse(t).ok().map(|t| (t, p.clone())))
            .collect();
        let guard_horizon_ms = config.guard_horizon_ms();
        let guard = Arc::new(UserGuard::new(
            storage.clone(),
            config.guard.defaults.clone(),
            tenant_policies,
        ));
        let tenant_quotas: HashMap<TenantId, TenantQuota> = config
            .quotas
            .tenants
            .iter()
            .filter_map(|(t, q)| TenantId::parse(t).ok().map(|t| (t, q.clone())))
            .collect();
        let instance = if config.instance_id.is_empty() {
            format!("sesame-{}", hex_id())
        } else {
            config.instance_id.clone()
        };
        // This process's audit chains: one per tenant, named by instance
        // and start time, so no two processes (or two starts) share one.
        let (audit, audit_writer) = sesame_audit::AuditLog::start(
            storage.clone(),
            queue.clone(),
            format!("{instance}-{:x}", now_ms()),
            // A dispatcher alone has no store (see `open`): its records
            // go to the queue's audit topic only.
            roles.challenge || roles.verifier || roles.ratelimit,
        );
        let quotas = Arc::new(TenantLimiter::new(
            instance,
            storage.clone(),
            config.quotas.defaults.clone(),
            tenant_quotas,
        ));
        let challenge_config = ChallengeConfig {
            public_device_url: config.device_url(),
            max_devices_per_user: config.max_devices_per_user,
        };

        // `admin_key` is only ever read for the challenge role.
        let (tenant_admin, audit_admin) = match admin_key {
            Some(hash) => {
                for service in [ADMIN_SERVICE, AUDIT_ADMIN_SERVICE] {
                    health
                        .set_service_status(service, tonic_health::ServingStatus::Serving)
                        .await;
                }
                let api = TenantAdminApi::new(storage.clone(), auth.clone(), hash)
                    .with_audit(audit.clone());
                (
                    Some(
                        TenantAdminServiceServer::new(api.clone())
                            .max_decoding_message_size(MAX_MESSAGE_BYTES),
                    ),
                    Some(
                        AuditAdminServiceServer::new(api)
                            .max_decoding_message_size(MAX_MESSAGE_BYTES),
                    ),
                )
            }
            None if roles.challenge => {
                tracing::info!("tenant administration API off: set admin_key_file to serve it");
                (None, None)
            }
            None => (None, None),
        };
        // Verdict webhooks: whoever commits a verdict enqueues it; the
        // challenge role's worker delivers.
        let webhook_config = config.webhook.to_config()?;
        let endpoints = sesame_webhook::Endpoints::new(storage.clone(), webhook_config.cache_ttl);
        let notifier =
            sesame_webhook::Notifier::new(queue.clone(), storage.clone(), endpoints.clone());
        let webhook_api = roles.challenge.then(|| {
            WebhookServiceServer::new(sesame_challenge::WebhookApi::new(
                storage.clone(),
                queue.clone(),
                auth.clone(),
                audit.clone(),
                endpoints.clone(),
                webhook_config.allow.clone(),
                webhook_config.seal_key.clone(),
            ))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
        });
        let webhooks_done = if roles.challenge {
            health
                .set_service_status(WEBHOOK_SERVICE, tonic_health::ServingStatus::Serving)
                .await;
            let worker = sesame_webhook::Worker::new(
                queue.clone(),
                storage.clone(),
                endpoints.clone(),
                webhook_config.clone(),
                audit.clone(),
            )
            .map_err(|e| anyhow::anyhow!("webhook sender: {e}"))?;
            Some(tokio::spawn(worker.run()))
        } else {
            None
        };
        let audit_api = roles.challenge.then(|| {
            AuditServiceServer::new(AuditApi::new(storage.clone(), auth.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
        });
        let (enrollment, challenges) = if roles.challenge {
            background.spawn(sesame_challenge::run_event_loop(
                queue.clone(),
                storage.clone(),
                hub.clone(),
            ));
            let retention = Duration::from_secs(config.challenge_retention_hours * 3600);
            background.spawn(purge_loop(storage.clone(), retention, guard_horizon_ms));
            background.spawn(sesame_challenge::run_quota_sync(quotas.clone()));
            health
                .set_serving::<EnrollmentServiceServer<EnrollmentApi>>()
                .await;
            health
                .set_serving::<ChallengeServiceServer<ChallengeApi>>()
                .await;
            health.set_serving::<AuditServiceServer<AuditApi>>().await;
            (
                Some(
                    EnrollmentServiceServer::new(
                        EnrollmentApi::new(storage.clone(), auth.clone(), challenge_config)
                            .with_audit(audit.clone()),
                    )
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
                ),
                Some(
                    ChallengeServiceServer::new(
                        ChallengeApi::new(
                            storage.clone(),
                            queue.clone(),
                            auth.clone(),
                            hub,
                            guard.clone(),
                        )
                        .with_quotas(quotas.clone())
                        .with_audit(audit.clone())
                        .with_webhooks(notifier.clone())
                        .with_shutdown(streams_shutdown.clone())
                        .with_watch_resync(Duration::from_millis(config.watch_resync_ms)),
                    )
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
                ),
            )
        } else {
            (None, None)
        };

        // Checked by Config::validate already; an error here is a bug.
        let push_catalog =
            sesame_push::apps::catalog(&config.push_apps).map_err(|e| anyhow::anyhow!(e))?;
        let device = roles.verifier.then(|| {
            let replay = Arc::new(ReplayGuard::new(
                Duration::from_millis(sesame_core::limits::MAX_CLOCK_SKEW_MS as u64),
                1_000_000,
            ));
            DeviceServiceServer::new(
                DeviceApi::new(
                    storage.clone(),
                    queue.clone(),
                    guard.clone(),
                    replay,
                    config.max_devices_per_user,
                )
                .with_push_apps(push_catalog.clone())
                .with_audit(audit.clone())
                .with_webhooks(notifier.clone()),
            )
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
        });
        if device.is_some() {
            health.set_serving::<DeviceServiceServer<DeviceApi>>().await;
        }

        let ratelimit = roles.ratelimit.then(|| {
            let limiter = Arc::new(DescriptorLimiter::new(config.ratelimit.limits.clone()));
            RateLimitServiceServer::new(RateLimitApi::new(limiter, auth.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
        });
        if ratelimit.is_some() {
            health
                .set_serving::<RateLimitServiceServer<RateLimitApi>>()
                .await;
        }

        let dispatcher_done = if roles.dispatcher {
            // Pushes go to this process's simulator, or to the one named by
            // `simulator_url` (another process's PushGateway).
            let provider: Arc<dyn sesame_push::PushProvider> = if config.push_provider == "apns_fcm"
            {
                let apps = sesame_push::apps::PushApps::from_config(&config.push_apps)
                    .context("push_apps")?;
                tracing::info!(apps = apps.len(), "pushes go through APNs and FCM");
                Arc::new(apps)
            } else if config.simulator_url.is_empty() {
                simulator.clone()
            } else {
                Arc::new(crate::inbox::RemoteSimulator::new(
                    &config.simulator_url,
                    &config.tls.client(),
                )?)
            };
            let d = Dispatcher::new(
                queue.clone(),
                provider,
                DispatcherConfig {
                    concurrency: config.dispatcher.concurrency,
                    max_attempts: config.dispatcher.max_attempts,
                    max_waiting_retries: config.dispatcher.max_waiting_retries,
                    ..Default::default()
                },
            );
            Some(tokio::spawn(d.with_audit(audit.clone()).run()))
        } else {
            None
        };
        // The simulator's inbox (and the gateway where dispatchers of other
        // processes send) is served wherever the simulator lives.
        let local_simulator =
            config.push_provider == "simulator" && config.simulator_url.is_empty();
        let inbox = local_simulator.then(|| {
            PushInboxServer::new(InboxApi::new(simulator.clone(), streams_shutdown.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
        });
        // Dispatchers of other processes call the gateway: with an internal
        // CA configured, only holders of its certificates may.
        let gateway = local_simulator.then(|| {
            let tls = tls.clone();
            tonic::service::interceptor::InterceptedService::new(
                PushGatewayServer::new(GatewayApi::new(simulator.clone()))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
                move |req: tonic::Request<()>| {
                    sesame_tls::require_internal(tls.as_ref(), &req).map(|_| req)
                },
            )
        });

        let addr = listener.local_addr()?;
        tracing::info!(%addr, ?roles, storage = storage.name(), queue = queue.name(), tls = tls.is_some(), "sesame serving");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let health_for_drain = health.clone();
        let draining_flag = draining.clone();
        let announce = Duration::from_secs(config.shutdown_announce_seconds);
        tokio::spawn(async move {
            shutdown.await;
            draining_flag.store(true, std::sync::atomic::Ordering::SeqCst);
            // Readiness goes first, so load balancers stop sending new calls.
            for service in [
                "",
                ENROLLMENT_SERVICE,
                CHALLENGE_SERVICE,
                DEVICE_SERVICE,
                RATELIMIT_SERVICE,
                ADMIN_SERVICE,
                AUDIT_SERVICE,
                WEBHOOK_SERVICE,
                AUDIT_ADMIN_SERVICE,
            ] {
                health_for_drain
                    .set_service_status(service, tonic_health::ServingStatus::NotServing)
                    .await;
            }
            // Give load balancers time to see it before the listener closes.
            tokio::time::sleep(announce).await;
            // Long-lived streams end now; unary calls in flight finish.
            stop_streams.fire();
            let _ = stop_tx.send(());
        });
        let grace = Duration::from_secs(config.shutdown_grace_seconds);
        let (drain_started_tx, drain_started) = tokio::sync::oneshot::channel::<()>();
        let mut builder = tonic::transport::Server::builder();
        if config.max_connection_age_seconds > 0 {
            // Behind an L4 load balancer (a Kubernetes Service) a client's
            // one HTTP/2 connection pins it to one replica; asking it to
            // reconnect now and then spreads clients over new replicas.
            builder = builder
                .max_connection_age(Duration::from_secs(config.max_connection_age_seconds))
                .max_connection_age_grace(Duration::from_secs(120));
        }
        let router = builder
            // Metrics outermost, so shed calls are counted with their status.
            .layer(sesame_grpc::metrics::GrpcMetricsLayer)
            .layer(sesame_grpc::admission::AdmissionLayer::new(
                config.admission.to_config(
                    !config.queue.starts_with("kafka://")
                        && !config.storage.starts_with("scylla://"),
                ),
            ))
            // What the client certificate proves, for tenant and internal checks.
            .layer(sesame_tls::PeerLayer::new(tls.clone()))
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(health_service)
            .add_service(reflection)
            .add_optional_service(enrollment)
            .add_optional_service(challenges)
            .add_optional_service(device)
            .add_optional_service(ratelimit)
            .add_optional_service(tenant_admin)
            .add_optional_service(audit_admin)
            .add_optional_service(audit_api)
            .add_optional_service(webhook_api)
            .add_optional_service(inbox)
            .add_optional_service(gateway);
        let stop_signal = async {
            let _ = stop_rx.await;
            let _ = drain_started_tx.send(());
        };
        type Serving =
            std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;
        let mut server: Serving = match &tls {
            Some(t) => Box::pin(router.serve_with_incoming_shutdown(
                sesame_tls::TlsIncoming::new(listener, t.clone(), sesame_tls::Alpn::H2, "grpc")?,
                stop_signal,
            )),
            None => Box::pin(router.serve_with_incoming_shutdown(
                // `tcp_nodelay` above applies only to listeners tonic binds
                // itself; set it on each accepted socket, or Nagle's algorithm
                // and delayed ACKs add ~40 ms to small responses.
                tokio_stream::StreamExt::map(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    |conn| {
                        conn.and_then(|c| {
                            c.set_nodelay(true)?;
                            Ok(c)
                        })
                    },
                ),
                stop_signal,
            )),
        };
        // Graceful shutdown waits for every open call; bound it by the grace period.
        let forced = async {
            if drain_started.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            r = &mut server => r?,
            _ = forced => tracing::warn!("calls still open after the grace period; closing them"),
        }

        // Drain: no new jobs; let the dispatcher finish what it holds.
        queue.close();
        if let Some(done) = dispatcher_done {
            if tokio::time::timeout(grace, done).await.is_err() {
                tracing::warn!("dispatcher did not drain within the grace period");
            }
        }
        if let Some(done) = webhooks_done {
            if tokio::time::timeout(grace, done).await.is_err() {
                tracing::warn!("webhook deliveries did not drain within the grace period");
            }
        }
        // What the last calls and pushes recorded, before the store goes.
        drop(audit);
        audit_writer.shutdown(grace).await;
        // The event loop holds the events consumer: stop it first, so that
        // the flush below waits for that consumer's close too.
        background.abort_all();
        let _ = tokio::time::timeout(grace, async {
            while background.join_next().await.is_some() {}
        })
        .await;
        queue.flush().await;
        if let Some(r) = reloader {
            r.abort();
        }
        let _ = admin_stop_tx.send(());
        tracing::info!("sesame stopped");
        Ok(())
    }
}

/// Plaintext is for a developer's loopback: anywhere else API keys and
/// answers would cross the network readable by anyone on the path.
fn warn_if_plaintext(grpc: &TcpListener, admin: Option<&TcpListener>, tls: bool, admin_tls: bool) {
    let exposed = |l: &TcpListener| l.local_addr().is_ok_and(|a| !a.ip().is_loopback());
    if !tls && exposed(grpc) {
        tracing::warn!(
            addr = %grpc.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            "serving gRPC in PLAINTEXT on a non-loopback address: API keys, challenges and \
             answers cross the network unencrypted; set tls.cert and tls.key \
             (or terminate TLS in front, and keep this port private)"
        );
    }
    if let Some(a) = admin.filter(|a| exposed(a) && !(tls && admin_tls)) {
        tracing::warn!(
            addr = %a.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            "admin port (metrics, log level) in plaintext on a non-loopback address; \
             keep it on a private network or set tls.cert/tls.key with tls.admin = true"
        );
    }
}

fn hex_id() -> String {
    sesame_core::ids::random_bytes::<6>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn purge_loop(storage: Arc<dyn Storage>, retention: Duration, guard_horizon_ms: i64) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        let now = now_ms();
        match storage
            .purge_expired(
                now,
                now - retention.as_millis() as i64,
                now - guard_horizon_ms,
            )
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(purged = n, "expired records purged"),
            Err(e) => tracing::warn!(error = %e, "purge of expired records failed"),
        }
    }
}
