//! Test harness: a real `sesame` server (all roles, durable embedded store in
//! a temporary directory) on `127.0.0.1:0`, reached over real gRPC.

#![allow(dead_code)]

pub mod tansu;

use std::time::Duration;

use sesame::{Config, Sesame};
use sesame_core::crypto::KeyAlgorithm;
use sesame_core::model::{Decision, Platform};
use sesame_core::time::now_ms;
use sesame_core::{Tenant, TenantId};
use sesame_device_sim::{Answer, SimDevice};
use sesame_proto::device::v1 as dpb;
use sesame_proto::tenant::v1 as pb;
use sesame_proto::tenant::v1::challenge_service_client::ChallengeServiceClient;
use sesame_proto::tenant::v1::enrollment_service_client::EnrollmentServiceClient;
use sesame_proto::types::v1 as types;
pub use sesame_ratelimit::GuardPolicy;
use tonic::transport::Channel;
use tonic::{Code, Request};

/// Replaces a server's queue with a wrapper around it.
pub type QueueWrap = Box<
    dyn FnOnce(std::sync::Arc<dyn sesame_queue::Queue>) -> std::sync::Arc<dyn sesame_queue::Queue>,
>;

pub struct Harness {
    pub url: String,
    /// `http://127.0.0.1:<port>` of the admin endpoints (/metrics, /live, /ready).
    pub admin_url: String,
    pub channel: Channel,
    /// The `dev` tenant's key.
    pub key: String,
    /// A second tenant's key, for isolation tests.
    pub other_key: String,
    pub storage: std::sync::Arc<dyn sesame_storage::Storage>,
    pub simulator: std::sync::Arc<sesame_push::SimulatorProvider>,
    pub queue: std::sync::Arc<dyn sesame_queue::Queue>,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// A guard that stays out of the way of the flow tests, which run many
/// challenges per user; the guard's own tests use the real defaults.
pub fn lenient_guard() -> GuardPolicy {
    GuardPolicy {
        one_pending: false,
        max_prompts: 10_000,
        force_number_match_after: 0,
        lock_after: 0,
        ..GuardPolicy::default()
    }
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(lenient_guard()).await
    }

    /// A server whose tenants all get this push-bombing guard policy.
    pub async fn start_with(guard: GuardPolicy) -> Harness {
        Self::start_custom(move |c| c.guard.defaults = guard).await
    }

    /// A server with the lenient guard and any other configuration change.
    pub async fn start_configured(tweak: impl FnOnce(&mut Config)) -> Harness {
        Self::start_custom(move |c| {
            c.guard.defaults = lenient_guard();
            tweak(c);
        })
        .await
    }

    /// A server configured by `tweak` (its `[tls]` section set), reached
    /// over `https://127.0.0.1:<port>` with the client settings `client`.
    pub async fn start_tls(
        tweak: impl FnOnce(&mut Config),
        client: sesame_tls::ClientTls,
    ) -> Harness {
        Self::start_full(
            move |c| {
                c.guard.defaults = lenient_guard();
                tweak(c);
            },
            client,
        )
        .await
    }

    async fn start_custom(tweak: impl FnOnce(&mut Config)) -> Harness {
        Self::start_full(tweak, sesame_tls::ClientTls::default()).await
    }

    /// A server (lenient guard) whose queue is `wrap` of the one its
    /// configuration opens: a test can make the queue fail on cue.
    pub async fn start_wrapping_queue(wrap: QueueWrap) -> Harness {
        Self::start_full_with(
            |c| c.guard.defaults = lenient_guard(),
            sesame_tls::ClientTls::default(),
            Some(wrap),
        )
        .await
    }

    async fn start_full(tweak: impl FnOnce(&mut Config), client: sesame_tls::ClientTls) -> Harness {
        Self::start_full_with(tweak, client, None).await
    }

    async fn start_full_with(
        tweak: impl FnOnce(&mut Config),
        client: sesame_tls::ClientTls,
        wrap: Option<QueueWrap>,
    ) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut config = Config {
            listen: addr.to_string(),
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        tweak(&mut config);
        let mut app = Sesame::open(config).await.expect("open");
        if let Some(wrap) = wrap {
            app.queue = wrap(app.queue.clone());
        }
        let key = match app.ensure_dev_tenant().await.expect("dev tenant") {
            Some(key_file) => std::fs::read_to_string(key_file)
                .expect("key")
                .trim()
                .to_owned(),
            None => app.config.dev_tenant_key.clone(),
        };
        let other = TenantId::parse("other-bank").expect("tenant id");
        app.storage
            .put_tenant(&Tenant {
                id: other.clone(),
                display_name: "Other bank".into(),
                disabled: false,
                created_at: now_ms(),
                client_identity: String::new(),
            })
            .await
            .expect("tenant");
        let (other_key, rec) = sesame_challenge::apikey::generate(&other, now_ms());
        app.storage.put_api_key(&rec).await.expect("key");
        let storage = app.storage.clone();
        let simulator = app.simulator.clone();
        let queue = app.queue.clone();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind admin");
        let tls = app.config.tls.enabled();
        let admin_scheme = if tls && app.config.tls.admin {
            "https"
        } else {
            "http"
        };
        let admin_url = format!(
            "{admin_scheme}://{}",
            admin.local_addr().expect("admin addr")
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.serve_with_admin(listener, Some(admin), async {
            let _ = stopped.await;
        }));
        let url = format!("{}://{addr}", if tls { "https" } else { "http" });
        let channel = sesame_device_sim::connect_with(&url, &client)
            .await
            .expect("connect");
        Harness {
            url,
            admin_url,
            channel,
            key,
            other_key,
            storage,
            simulator,
            queue,
            _dir: dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Signals shutdown without waiting for it (see [`Harness::shutdown`]).
    pub fn begin_shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    pub async fn shutdown(mut self) {
        self.begin_shutdown();
        if let Some(t) = self.task.take() {
            t.await.expect("join").expect("serve");
        }
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub fn req<T>(&self, msg: T) -> Request<T> {
        sesame::cli::authed(&self.key, msg).expect("request")
    }

    pub fn req_other<T>(&self, msg: T) -> Request<T> {
        sesame::cli::authed(&self.other_key, msg).expect("request")
    }

    pub fn enrollment(&self) -> EnrollmentServiceClient<Channel> {
        EnrollmentServiceClient::new(self.channel.clone())
    }

    pub fn challenges(&self) -> ChallengeServiceClient<Channel> {
        ChallengeServiceClient::new(self.channel.clone())
    }

    pub async fn begin(&self, user: &str) -> pb::BeginEnrollmentResponse {
        self.enrollment()
            .begin_enrollment(self.req(pb::BeginEnrollmentRequest {
                user_id: user.into(),
                ttl_seconds: 0,
            }))
            .await
            .expect("begin enrollment")
            .into_inner()
    }

    pub async fn enroll_with(&self, user: &str, alg: KeyAlgorithm, push_token: &str) -> SimDevice {
        let token = self.begin(user).await.enrollment_token;
        SimDevice::enroll(
            self.channel.clone(),
            &self.url,
            &token,
            alg,
            Platform::Ios,
            push_token,
            "test phone",
        )
        .await
        .expect("enroll")
    }

    pub async fn enroll(&self, user: &str) -> SimDevice {
        let token = format!("tok-{}", sesame::cli::random_suffix());
        self.enroll_with(user, KeyAlgorithm::EcdsaP256Sha256, &token)
            .await
    }

    /// A device of the second tenant.
    pub async fn enroll_other(&self, user: &str) -> SimDevice {
        let token = self
            .enrollment()
            .begin_enrollment(self.req_other(pb::BeginEnrollmentRequest {
                user_id: user.into(),
                ttl_seconds: 0,
            }))
            .await
            .expect("begin")
            .into_inner()
            .enrollment_token;
        SimDevice::enroll(
            self.channel.clone(),
            &self.url,
            &token,
            KeyAlgorithm::EcdsaP256Sha256,
            Platform::Android,
            "other-token",
            "",
        )
        .await
        .expect("enroll")
    }

    /// Traffic that fills the error series: one challenge refused by the
    /// other tenant's quota (configure it to 0.01/s) and one device request
    /// with a broken signature, which must be refused.
    pub async fn refusal_and_bad_signature(&self, phone: &SimDevice) {
        let _theirs = self.enroll_other("someone").await;
        for _ in 0..2 {
            let _ = self
                .challenges()
                .create_challenge(self.req_other(Self::login_request("someone", ENTER, 0)))
                .await;
        }
        let mut forged = phone.auth("ListPendingChallenges", &[]);
        forged.signature[8] ^= 1;
        let r = sesame_proto::device::v1::device_service_client::DeviceServiceClient::new(
            self.channel.clone(),
        )
        .list_pending_challenges(dpb::ListPendingChallengesRequest { auth: Some(forged) })
        .await;
        assert_eq!(status_of(r).code(), Code::Unauthenticated);
    }

    pub fn login_request(
        user: &str,
        mode: types::NumberMatchMode,
        ttl: u32,
    ) -> pb::CreateChallengeRequest {
        pb::CreateChallengeRequest {
            user_id: user.into(),
            context: Some(types::ChallengeContext {
                client_name: "Test bank".into(),
                action: types::Action::Login as i32,
                transaction: None,
                ip_address: "203.0.113.7".into(),
                location: "Ghent, BE".into(),
                binding_message: String::new(),
            }),
            options: Some(pb::ChallengeOptions {
                ttl_seconds: ttl,
                number_match: mode as i32,
                idempotency_key: String::new(),
                replace_pending: false,
            }),
        }
    }

    pub async fn create(
        &self,
        user: &str,
        mode: types::NumberMatchMode,
        ttl: u32,
    ) -> pb::Challenge {
        self.challenges()
            .create_challenge(self.req(Self::login_request(user, mode, ttl)))
            .await
            .expect("create challenge")
            .into_inner()
            .challenge
            .expect("challenge")
    }

    pub async fn get(&self, id: &str) -> pb::Challenge {
        self.challenges()
            .get_challenge(self.req(pb::GetChallengeRequest {
                challenge_id: id.into(),
            }))
            .await
            .expect("get challenge")
            .into_inner()
    }
}

pub fn approve(number: &str) -> Answer {
    Answer {
        decision: Decision::Approve,
        number: number.into(),
    }
}

pub fn answer(decision: Decision) -> Answer {
    Answer {
        decision,
        number: String::new(),
    }
}

/// The gRPC code of a failed device-simulator call.
pub fn code_of<T: std::fmt::Debug>(r: Result<T, sesame_device_sim::SimError>) -> Code {
    match r {
        Err(sesame_device_sim::SimError::Rpc(s)) => s.code(),
        other => panic!("expected a gRPC error, got {other:?}"),
    }
}

pub fn status_of<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> tonic::Status {
    match r {
        Err(s) => s,
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

pub async fn next_push(
    device: &SimDevice,
    stream: &mut tonic::Streaming<sesame_proto::simulator::v1::Push>,
) -> String {
    let _ = device;
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("push within 5 s")
        .expect("inbox stream")
        .expect("a push")
        .challenge_id
}

pub async fn details(device: &SimDevice, id: &str) -> dpb::ChallengeDetails {
    device.details(id).await.expect("details")
}

pub const ENTER: types::NumberMatchMode = types::NumberMatchMode::Enter;
pub const CHOOSE: types::NumberMatchMode = types::NumberMatchMode::Choose;
pub const NONE: types::NumberMatchMode = types::NumberMatchMode::None;

pub fn st(s: types::ChallengeStatus) -> i32 {
    s as i32
}

/// The real `sesame serve` binary on `dir` (all roles, zero configuration),
/// its admin port on a free loopback port.
pub fn spawn_server(dir: &std::path::Path, port: u16) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_sesame"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir)
        .env("SESAME_LOG", "warn")
        .env("SESAME_ADMIN_LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn sesame serve")
}

/// A channel to `url` once its gRPC health check says SERVING.
pub async fn wait_ready(url: &str) -> Channel {
    use tonic_health::pb::health_client::HealthClient;
    for _ in 0..200 {
        if let Ok(ch) = sesame_device_sim::connect(url).await {
            let ok = HealthClient::new(ch.clone())
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .is_ok_and(|r| r.into_inner().status == 1);
            if ok {
                return ch;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server at {url} did not become ready");
}
