//! `cargo bench -p sesame --bench kafka_push` (needs tansu: `./scripts/setup.sh`)
//!
//! Push delivery through a real Kafka-protocol broker (tansu, in-memory
//! storage, on loopback) to the built-in simulator, with 1 and then 2
//! dispatchers (each its own Kafka consumer in one group, in this process):
//!
//! - **end to end**: `CreateChallenge` over gRPC (the server waits for the
//!   broker's acknowledgement of the push job) with 64 calls in flight ->
//!   push topic -> dispatcher -> simulator. Pushes per second, and p50/p99
//!   from the challenge's creation to the push leaving the dispatcher;
//! - **drain**: a backlog of push jobs already in Kafka, consumed by the
//!   dispatchers: the dispatcher's own rate (first to last push).
//!
//! Broker, server, dispatchers and load all share this machine's cores, so
//! these are floors for a deployment where they do not.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sesame::{Config, Sesame};
use sesame_core::crypto::KeyAlgorithm;
use sesame_core::model::Platform;
use sesame_core::time::{now_ms, UnixMillis};
use sesame_core::{ChallengeId, DeviceId, TenantId};
use sesame_device_sim::SimDevice;
use sesame_dispatcher::{Dispatcher, DispatcherConfig};
use sesame_proto::tenant::v1 as pb;
use sesame_proto::tenant::v1::challenge_service_client::ChallengeServiceClient;
use sesame_proto::tenant::v1::enrollment_service_client::EnrollmentServiceClient;
use sesame_proto::types::v1 as types;
use sesame_push::{PushOutcome, PushProvider, SimulatorProvider};
use sesame_queue::{KafkaConfig, KafkaQueue, PushJob, Queue};

const USERS: usize = 500;
const END_TO_END: usize = 10_000;
const DRAIN: usize = 50_000;
const IN_FLIGHT: usize = 64;

struct Tansu(Child);

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_tansu() -> (Tansu, String) {
    let bin = std::env::var_os("TANSU_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            Some(PathBuf::from(home).join(".cargo/bin/tansu"))
        })
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("tansu"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(bin)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tansu (run ./scripts/setup.sh)");
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    (Tansu(child), format!("127.0.0.1:{port}"))
}

/// Hands pushes to the simulator and records when each left the dispatcher.
struct Recording {
    inner: SimulatorProvider,
    latencies_ms: Mutex<Vec<i64>>,
    sent: AtomicUsize,
    first_last: Mutex<Option<(Instant, Instant)>>,
}

#[async_trait]
impl PushProvider for Recording {
    fn name(&self) -> &'static str {
        "simulator"
    }

    async fn send(&self, job: &PushJob, now: UnixMillis) -> PushOutcome {
        let outcome = self.inner.send(job, now).await;
        let at = Instant::now();
        if let Ok(mut l) = self.latencies_ms.lock() {
            l.push(now_ms() - job.enqueued_at);
        }
        if let Ok(mut fl) = self.first_last.lock() {
            let first = fl.map(|(f, _)| f).unwrap_or(at);
            *fl = Some((first, at));
        }
        self.sent.fetch_add(1, Ordering::Relaxed);
        outcome
    }
}

impl Recording {
    fn new() -> Arc<Self> {
        Arc::new(Recording {
            inner: SimulatorProvider::new(),
            latencies_ms: Mutex::new(Vec::new()),
            sent: AtomicUsize::new(0),
            first_last: Mutex::new(None),
        })
    }

    async fn wait_for(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(300);
        while self.sent.load(Ordering::Relaxed) < n {
            assert!(Instant::now() < deadline, "pushes stopped arriving");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn percentile(&self, p: f64) -> i64 {
        let mut l = self.latencies_ms.lock().expect("lock").clone();
        l.sort_unstable();
        l.get(((l.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0)
    }

    fn reset(&self) {
        self.latencies_ms.lock().expect("lock").clear();
        *self.first_last.lock().expect("lock") = None;
        self.sent.store(0, Ordering::Relaxed);
    }
}

/// `FETCH_WAIT_MS=500 cargo bench ...` measures with another
/// `fetch.wait.max.ms` (librdkafka's own default is 500).
fn kafka(brokers: &str) -> KafkaConfig {
    let defaults = KafkaConfig::default();
    KafkaConfig {
        brokers: brokers.to_owned(),
        replication_factor: 1,
        push_partitions: 12,
        fetch_wait_max_ms: std::env::var("FETCH_WAIT_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(defaults.fetch_wait_max_ms),
        ..defaults
    }
}

/// Starts `n` dispatchers (one Kafka consumer each) sending to `provider`.
async fn dispatchers(
    brokers: &str,
    n: usize,
    provider: Arc<Recording>,
) -> Vec<(Arc<KafkaQueue>, tokio::task::JoinHandle<()>)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let q = Arc::new(KafkaQueue::connect(kafka(brokers)).await.expect("kafka"));
        let d = Dispatcher::new(q.clone(), provider.clone(), DispatcherConfig::default());
        out.push((q, tokio::spawn(d.run())));
    }
    out
}

async fn stop(ds: Vec<(Arc<KafkaQueue>, tokio::task::JoinHandle<()>)>) {
    for (q, h) in ds {
        q.close();
        let _ = h.await;
    }
}

fn request(key: &str, user: usize) -> tonic::Request<pb::CreateChallengeRequest> {
    sesame::cli::authed(
        key,
        pb::CreateChallengeRequest {
            user_id: format!("user-{user}"),
            context: Some(types::ChallengeContext {
                client_name: "Bench bank".into(),
                action: types::Action::Login as i32,
                ..Default::default()
            }),
            options: None,
        },
    )
    .expect("request")
}

async fn run(n_dispatchers: usize) {
    let (_tansu, brokers) = start_tansu();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config {
        listen: addr.to_string(),
        admin_listen: String::new(),
        data_dir: dir.path().to_path_buf(),
        storage: "memory".into(),
        queue: format!("kafka://{brokers}"),
        roles: vec!["challenge".into(), "verifier".into()],
        kafka: kafka(&brokers),
        ..Config::default()
    };
    config.guard.defaults = sesame_ratelimit::GuardPolicy {
        one_pending: false,
        max_prompts: u32::MAX,
        force_number_match_after: 0,
        lock_after: 0,
        ..Default::default()
    };
    let app = Sesame::open(config).await.expect("open");
    let key_file = app
        .ensure_dev_tenant()
        .await
        .expect("tenant")
        .expect("a key file");
    let key = std::fs::read_to_string(key_file)
        .expect("key")
        .trim()
        .to_owned();
    tokio::spawn(app.serve(listener, std::future::pending()));
    let url = format!("http://{addr}");
    let channel = sesame_device_sim::connect(&url).await.expect("connect");
    for u in 0..USERS {
        let token = EnrollmentServiceClient::new(channel.clone())
            .begin_enrollment(
                sesame::cli::authed(
                    &key,
                    pb::BeginEnrollmentRequest {
                        user_id: format!("user-{u}"),
                        ttl_seconds: 0,
                    },
                )
                .expect("request"),
            )
            .await
            .expect("begin")
            .into_inner()
            .enrollment_token;
        SimDevice::enroll(
            channel.clone(),
            &url,
            &token,
            KeyAlgorithm::EcdsaP256Sha256,
            Platform::Android,
            &format!("tok-{u}"),
            "",
        )
        .await
        .expect("enroll");
    }

    let provider = Recording::new();
    let ds = dispatchers(&brokers, n_dispatchers, provider.clone()).await;
    // Warm up: consumers joined and partitions assigned.
    for u in 0..USERS {
        ChallengeServiceClient::new(channel.clone())
            .create_challenge(request(&key, u))
            .await
            .expect("create");
    }
    provider.wait_for(USERS).await;
    provider.reset();

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let (channel, key, next) = (channel.clone(), key.clone(), next.clone());
        tasks.spawn(async move {
            let mut client = ChallengeServiceClient::new(channel);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= END_TO_END {
                    return;
                }
                client
                    .create_challenge(request(&key, i % USERS))
                    .await
                    .expect("create");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    provider.wait_for(END_TO_END).await;
    let elapsed = started.elapsed();
    println!(
        "kafka_push/end_to_end/{n_dispatchers}_dispatcher(s): {END_TO_END} challenges, {:.0} pushes/s, \
         creation -> push sent p50 {} ms, p99 {} ms",
        END_TO_END as f64 / elapsed.as_secs_f64(),
        provider.percentile(0.50),
        provider.percentile(0.99),
    );
    stop(ds).await;

    // Drain: a backlog in Kafka, then the dispatchers.
    let producer = Arc::new(KafkaQueue::connect(kafka(&brokers)).await.expect("kafka"));
    let tenant = TenantId::parse("dev").expect("tenant");
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..256 {
        let (producer, tenant, next) = (producer.clone(), tenant.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= DRAIN {
                    return;
                }
                let job = PushJob {
                    tenant_id: tenant.clone(),
                    user_id: String::new(),
                    device_id: DeviceId::generate(),
                    challenge_id: ChallengeId::generate(),
                    platform: Platform::Android,
                    push_token: format!("tok-{}", i % USERS),
                    push_app: String::new(),
                    expires_at: now_ms() + 600_000,
                    enqueued_at: now_ms(),
                    attempt: 0,
                    trace_id: String::new(),
                    not_before: 0,
                };
                producer.publish_pushes(vec![job]).await.expect("publish");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    provider.reset();
    let ds = dispatchers(&brokers, n_dispatchers, provider.clone()).await;
    provider.wait_for(DRAIN).await;
    let (first, last) = provider
        .first_last
        .lock()
        .expect("lock")
        .expect("pushes were sent");
    println!(
        "kafka_push/drain/{n_dispatchers}_dispatcher(s): {DRAIN} jobs, {:.0} pushes/s",
        DRAIN as f64 / (last - first).as_secs_f64()
    );
    stop(ds).await;
}

fn main() {
    // `cargo test --benches` runs bench targets with no argument: nothing to do.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for n in [1, 2] {
        rt.block_on(run(n));
    }
}
