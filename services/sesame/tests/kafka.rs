//! Push delivery through a real Kafka-protocol broker: tansu, started here on
//! a free loopback port, with the real `sesame` binary in separate processes
//! (a server with the `challenge`, `verifier` and `ratelimit` roles, and
//! dispatcher processes that share one consumer group). The broker is not
//! optional: without tansu these tests fail and say how to install it
//! (`./scripts/setup.sh` does).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sesame::config::Config;
use sesame::server::Sesame;
use sesame_core::crypto::KeyAlgorithm;
use sesame_core::model::{Decision, Platform};
use sesame_device_sim::{Answer, SimDevice};
use sesame_proto::simulator::v1 as sim;
use sesame_proto::simulator::v1::push_gateway_client::PushGatewayClient;
use sesame_proto::tenant::v1 as pb;
use sesame_proto::tenant::v1::challenge_service_client::ChallengeServiceClient;
use sesame_proto::tenant::v1::enrollment_service_client::EnrollmentServiceClient;
use sesame_proto::types::v1 as types;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use tonic::Code;

mod common;

use common::tansu::{free_port, Broker, Proc};

/// Settings every process of a test shares: one small Kafka cluster.
fn kafka_env(broker: &Broker) -> Vec<(String, String)> {
    [
        ("SESAME_QUEUE", broker.uri()),
        ("SESAME_KAFKA__REPLICATION_FACTOR", "1".into()),
        ("SESAME_KAFKA__PUSH_PARTITIONS", "4".into()),
        ("SESAME_KAFKA__EVENTS_PARTITIONS", "2".into()),
        // A killed dispatcher's partitions move in seconds.
        ("SESAME_KAFKA__SESSION_TIMEOUT_MS", "3000".into()),
        ("SESAME_SHUTDOWN_GRACE_SECONDS", "3".into()),
        ("SESAME_DURABLE_WRITES", "false".into()),
        (
            "SESAME_LOG",
            std::env::var("TEST_SESAME_LOG").unwrap_or_else(|_| "warn".into()),
        ),
        // Many challenges per user in these tests.
        ("SESAME_GUARD__DEFAULTS__ONE_PENDING", "false".into()),
        ("SESAME_GUARD__DEFAULTS__MAX_PROMPTS", "1000".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

struct Node {
    proc: Option<Proc>,
    url: String,
    admin: String,
}

fn spawn_node(roles: &str, dir: &Path, env: &[(String, String)]) -> Node {
    let (port, admin_port) = (free_port(), free_port());
    let admin = format!("127.0.0.1:{admin_port}");
    let child = Command::new(env!("CARGO_BIN_EXE_sesame"))
        .args([
            "serve",
            "--roles",
            roles,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("SESAME_ADMIN_LISTEN", &admin)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn sesame serve");
    Node {
        proc: Some(Proc(child)),
        url: format!("http://127.0.0.1:{port}"),
        admin,
    }
}

async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let (_, body) = text.split_once("\r\n\r\n")?;
    Some((code, body.to_owned()))
}

/// Sum of the samples of `name` whose labels contain `labels` (Prometheus text).
async fn metric(admin: &str, name: &str, labels: &str) -> f64 {
    let Some((200, text)) = http_get(admin, "/metrics").await else {
        return 0.0;
    };
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn wait_ready(node: &Node) -> Channel {
    for _ in 0..400 {
        if let Some((200, _)) = http_get(&node.admin, "/ready").await {
            if let Ok(ch) = sesame_device_sim::connect(&node.url).await {
                return ch;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("sesame at {} did not become ready", node.url);
}

/// A server process and dispatcher processes around one broker.
/// Fields drop in order: processes stop before the broker does.
struct Cluster {
    dispatchers: Mutex<Vec<Node>>,
    server: Node,
    broker: Mutex<Broker>,
    brokers: String,
    channel: Channel,
    key: String,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
    spawned: std::sync::atomic::AtomicUsize,
}

impl Cluster {
    async fn start(dispatchers: usize, extra: &[(&str, &str)]) -> Arc<Cluster> {
        let broker = Broker::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut env = kafka_env(&broker);
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let server = spawn_node(
            "challenge,verifier,ratelimit",
            &dir.path().join("server"),
            &env,
        );
        let channel = wait_ready(&server).await;
        let key = std::fs::read_to_string(dir.path().join("server/dev-tenant.key"))
            .expect("dev tenant key")
            .trim()
            .to_owned();
        let c = Arc::new(Cluster {
            brokers: broker.brokers(),
            broker: Mutex::new(broker),
            server,
            dispatchers: Mutex::new(Vec::new()),
            channel,
            key,
            env,
            dir,
            spawned: Default::default(),
        });
        for _ in 0..dispatchers {
            c.add_dispatcher().await;
        }
        c
    }

    /// Starts a dispatcher process sending to the server's simulator gateway.
    async fn add_dispatcher(&self) {
        let n = self
            .spawned
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let mut env = self.env.clone();
        env.push(("SESAME_SIMULATOR_URL".into(), self.server.url.clone()));
        let dir = self.dir.path().join(format!("dispatcher-{n}"));
        let node = spawn_node("dispatcher", &dir, &env);
        wait_ready(&node).await;
        self.dispatchers.lock().expect("lock").push(node);
    }

    /// The pushes each running dispatcher counted with this outcome.
    async fn pushes(&self, outcome: &str) -> Vec<f64> {
        let admins: Vec<String> = self
            .dispatchers
            .lock()
            .expect("lock")
            .iter()
            .map(|d| d.admin.clone())
            .collect();
        let mut out = Vec::new();
        for a in admins {
            out.push(metric(&a, "sesame_pushes_total", &format!("outcome=\"{outcome}\"")).await);
        }
        out
    }

    fn req<T>(&self, m: T) -> tonic::Request<T> {
        sesame::cli::authed(&self.key, m).expect("request")
    }

    async fn enroll(&self, user: &str) -> SimDevice {
        let token = EnrollmentServiceClient::new(self.channel.clone())
            .begin_enrollment(self.req(pb::BeginEnrollmentRequest {
                user_id: user.into(),
                ttl_seconds: 0,
            }))
            .await
            .expect("begin enrollment")
            .into_inner()
            .enrollment_token;
        SimDevice::enroll(
            self.channel.clone(),
            &self.server.url,
            &token,
            KeyAlgorithm::EcdsaP256Sha256,
            Platform::Android,
            &format!("tok-{user}"),
            "test phone",
        )
        .await
        .expect("enroll")
    }

    /// Enrolls `n` users with one phone each, 16 at a time.
    async fn enroll_many(self: &Arc<Self>, prefix: &str, n: usize) -> Vec<SimDevice> {
        let mut tasks = tokio::task::JoinSet::new();
        let next = Arc::new(Mutex::new(0usize));
        for _ in 0..16 {
            let (me, next, prefix) = (self.clone(), next.clone(), prefix.to_owned());
            tasks.spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let i = {
                        let mut g = next.lock().expect("lock");
                        *g += 1;
                        *g - 1
                    };
                    if i >= n {
                        return mine;
                    }
                    mine.push((i, me.enroll(&format!("{prefix}-{i}")).await));
                }
            });
        }
        let mut all = Vec::new();
        while let Some(r) = tasks.join_next().await {
            all.extend(r.expect("enroll task"));
        }
        all.sort_by_key(|(i, _)| *i);
        all.into_iter().map(|(_, d)| d).collect()
    }

    async fn create(&self, user: &str, ttl: u32) -> Result<pb::Challenge, tonic::Status> {
        let req = pb::CreateChallengeRequest {
            user_id: user.into(),
            context: Some(types::ChallengeContext {
                client_name: "Test bank".into(),
                action: types::Action::Login as i32,
                transaction: None,
                ip_address: "203.0.113.7".into(),
                location: String::new(),
                binding_message: String::new(),
            }),
            options: Some(pb::ChallengeOptions {
                ttl_seconds: ttl,
                number_match: types::NumberMatchMode::Enter as i32,
                idempotency_key: String::new(),
                replace_pending: false,
            }),
        };
        ChallengeServiceClient::new(self.channel.clone())
            .create_challenge(self.req(req))
            .await
            .map(|r| r.into_inner().challenge.expect("challenge"))
    }

    /// `n` new users each get one challenge; every push must arrive.
    async fn pushes_arrive(self: &Arc<Self>, prefix: &str, n: usize) {
        let phones = self.enroll_many(prefix, n).await;
        let inboxes = Inboxes::open(&self.server.url, &phones).await;
        let mut want = HashSet::new();
        for i in 0..n {
            let c = self.create(&format!("{prefix}-{i}"), 120).await;
            want.insert(c.expect("create").challenge_id);
        }
        let missing = inboxes.wait_for(&want, Duration::from_secs(30)).await;
        assert!(
            missing.is_empty(),
            "{} of {n} pushes did not arrive",
            missing.len()
        );
    }

    async fn simulator_stats(&self) -> sim::SimulatorStats {
        PushGatewayClient::new(self.channel.clone())
            .get_stats(sim::GetStatsRequest {})
            .await
            .expect("simulator stats")
            .into_inner()
    }
}

/// Collects every push for a set of phones, keyed by push token.
struct Inboxes {
    seen: Arc<Mutex<HashMap<String, Vec<String>>>>,
    _tasks: tokio::task::JoinSet<()>,
}

impl Inboxes {
    /// One stream per phone, spread over several connections (a server
    /// accepts a bounded number of concurrent streams per connection).
    async fn open(url: &str, phones: &[SimDevice]) -> Inboxes {
        let seen: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
        let mut tasks = tokio::task::JoinSet::new();
        let mut ready = Vec::new();
        for chunk in phones.chunks(100) {
            let channel = sesame_device_sim::connect(url).await.expect("connect");
            for phone in chunk {
                let token = phone.identity.push_token.clone();
                let mut client =
                    sesame_proto::simulator::v1::push_inbox_client::PushInboxClient::new(
                        channel.clone(),
                    );
                let seen = seen.clone();
                let (tx, rx) = tokio::sync::oneshot::channel();
                ready.push(rx);
                tasks.spawn(async move {
                    let mut stream = client
                        .subscribe(sim::SubscribeRequest {
                            push_token: token.clone(),
                        })
                        .await
                        .expect("subscribe")
                        .into_inner();
                    let _ = tx.send(());
                    while let Ok(Some(p)) = stream.message().await {
                        seen.lock()
                            .expect("lock")
                            .entry(token.clone())
                            .or_default()
                            .push(p.challenge_id);
                    }
                });
            }
        }
        for r in ready {
            let _ = r.await;
        }
        Inboxes {
            seen,
            _tasks: tasks,
        }
    }

    fn received(&self) -> HashSet<String> {
        self.seen
            .lock()
            .expect("lock")
            .values()
            .flatten()
            .cloned()
            .collect()
    }

    /// Waits until every id in `want` arrived; returns the ones still missing.
    async fn wait_for(&self, want: &HashSet<String>, limit: Duration) -> HashSet<String> {
        let start = Instant::now();
        loop {
            let got = self.received();
            let missing: HashSet<String> = want.difference(&got).cloned().collect();
            if missing.is_empty() || start.elapsed() > limit {
                return missing;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The phone's side of a login: details, the typed number, a signed approval.
async fn approve(phone: &SimDevice, challenge: &pb::Challenge) {
    let details = phone
        .details(&challenge.challenge_id)
        .await
        .expect("details");
    let answer = Answer {
        decision: Decision::Approve,
        number: challenge.number_match_code.clone(),
    };
    phone.respond(&details, &answer).await.expect("respond");
}

async fn watch_until_final(cluster: &Cluster, id: &str) -> i32 {
    let mut stream = ChallengeServiceClient::new(cluster.channel.clone())
        .watch_challenge(cluster.req(pb::WatchChallengeRequest {
            challenge_id: id.into(),
        }))
        .await
        .expect("watch")
        .into_inner();
    let mut last = 0;
    while let Ok(Ok(Some(c))) =
        tokio::time::timeout(Duration::from_secs(20), stream.message()).await
    {
        last = c.status;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_logins_through_kafka_with_two_dispatcher_processes() {
    let cluster = Arc::new(Cluster::start(2, &[]).await);
    let phones = cluster.enroll_many("login", 8).await;
    let inboxes = Inboxes::open(&cluster.server.url, &phones).await;
    for (i, phone) in phones.iter().enumerate() {
        let c = cluster
            .create(&format!("login-{i}"), 120)
            .await
            .expect("create challenge");
        let want: HashSet<String> = [c.challenge_id.clone()].into();
        let missing = inboxes.wait_for(&want, Duration::from_secs(30)).await;
        assert!(missing.is_empty(), "push {i} did not arrive through Kafka");
        approve(phone, &c).await;
        assert_eq!(
            watch_until_final(&cluster, &c.challenge_id).await,
            types::ChallengeStatus::Approved as i32
        );
    }
    let split = cluster.pushes("delivered").await;
    eprintln!("pushes delivered per dispatcher process: {split:?}");
    // At least once: a consumer-group rebalance may deliver a push twice,
    // and then the simulator saw it as a duplicate.
    let duplicates = cluster.simulator_stats().await.duplicates as f64;
    assert_eq!(split.iter().sum::<f64>(), 8.0 + duplicates, "{split:?}");
    // Each dispatcher reports its consumer lag (librdkafka statistics, every 5 s).
    let admins: Vec<String> = cluster
        .dispatchers
        .lock()
        .expect("lock")
        .iter()
        .map(|d| d.admin.clone())
        .collect();
    for admin in admins {
        let mut seen = false;
        for _ in 0..100 {
            let text = http_get(&admin, "/metrics").await.map(|(_, t)| t);
            if text.is_some_and(|t| t.contains("sesame_queue_consumer_lag{topic=\"sesame.push\"}"))
            {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(seen, "no consumer lag reported by {admin}");
        // Every queue metric the alert rules use is exported here.
        let rules = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus/sesame-rules.yml"),
        )
        .expect("rules");
        let text = http_get(&admin, "/metrics").await.expect("metrics").1;
        for name in rules
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("sesame_queue_"))
        {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&format!("{name}{{"))
                        || l.starts_with(&format!("{name} "))),
                "{name} is used by the rules but not exported by a dispatcher"
            );
        }
    }
    // Dispatchers are stateless: they opened no store.
    for i in 1..=2 {
        assert!(!cluster.dir.path().join(format!("dispatcher-{i}")).exists());
    }

    // The audit topic holds every process's records, the dispatchers' push
    // outcomes included (they have no store of their own), in chains that
    // verify.
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::Message;
    let reader: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cluster.brokers)
        .set("group.id", "test-audit-topic")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    reader.subscribe(&["sesame.audit"]).expect("subscribe");
    let mut chains: std::collections::BTreeMap<
        String,
        std::collections::BTreeMap<u64, sesame_core::audit::AuditRecord>,
    > = Default::default();
    let count = |chains: &std::collections::BTreeMap<
        String,
        std::collections::BTreeMap<u64, sesame_core::audit::AuditRecord>,
    >,
                 action: &str| {
        chains
            .values()
            .flat_map(|c| c.values())
            .filter(|r| r.entry.action.as_str() == action)
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while count(&chains, "push_sent") < 8 || count(&chains, "answer_accepted") < 8 {
        assert!(
            std::time::Instant::now() < deadline,
            "audit topic incomplete after 60 s: {chains:#?}"
        );
        let Ok(m) = tokio::time::timeout(Duration::from_secs(5), reader.recv()).await else {
            continue;
        };
        let m = m.expect("audit message");
        let r: sesame_core::audit::AuditRecord =
            serde_json::from_slice(m.payload().expect("payload")).expect("an audit record");
        assert_eq!(m.key(), Some(r.chain.as_bytes()), "keyed by chain");
        chains.entry(r.chain.clone()).or_default().insert(r.seq, r);
    }
    let pushes: HashSet<&str> = chains
        .iter()
        .filter(|(_, c)| c.values().any(|r| r.entry.action.as_str() == "push_sent"))
        .map(|(id, _)| id.as_str())
        .collect();
    let created: HashSet<&str> = chains
        .iter()
        .filter(|(_, c)| {
            c.values()
                .any(|r| r.entry.action.as_str() == "challenge_created")
        })
        .map(|(id, _)| id.as_str())
        .collect();
    assert!(
        pushes.is_disjoint(&created),
        "push outcomes come from the dispatchers' chains"
    );
    for (id, c) in &chains {
        let records: Vec<_> = c.values().cloned().collect();
        let problems = sesame_core::audit::verify_chain(id, &records, None);
        assert!(problems.is_empty(), "{id}: {problems:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_a_dispatcher_with_1000_challenges_in_flight_loses_no_push() {
    let cluster = Cluster::start(2, &[]).await;
    // Both dispatchers own partitions before the run starts.
    cluster.pushes_arrive("warm", 8).await;

    const N: usize = 1000;
    let phones = cluster.enroll_many("crash", N).await;
    let inboxes = Inboxes::open(&cluster.server.url, &phones).await;
    let created = Arc::new(Mutex::new(HashSet::new()));
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut creators = tokio::task::JoinSet::new();
    for t in 0..8 {
        let (c, created, count) = (cluster.clone(), created.clone(), count.clone());
        creators.spawn(async move {
            for i in (t..N).step_by(8) {
                let ch = c.create(&format!("crash-{i}"), 120).await.expect("create");
                created.lock().expect("lock").insert(ch.challenge_id);
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
    // Kill one dispatcher (SIGKILL: no drain, no offset commit) mid-run.
    while count.load(std::sync::atomic::Ordering::Relaxed) < N / 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The victim is a dispatcher that is delivering right now, so it dies
    // with jobs taken and offsets not yet committed.
    let (victim_index, victim_delivered) = loop {
        let before = cluster.pushes("delivered").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = cluster.pushes("delivered").await;
        let busiest = (0..after.len())
            .max_by(|&a, &b| (after[a] - before[a]).total_cmp(&(after[b] - before[b])))
            .expect("dispatchers");
        if after[busiest] > before[busiest] {
            break (busiest, after[busiest]);
        }
        assert!(
            count.load(std::sync::atomic::Ordering::Relaxed) < N,
            "no dispatcher delivered while challenges were created"
        );
    };
    let killed_at = count.load(std::sync::atomic::Ordering::Relaxed);
    let victim = cluster
        .dispatchers
        .lock()
        .expect("lock")
        .remove(victim_index);
    drop(victim.proc);
    // Its replacement starts, as an orchestrator would restart it. (With
    // Apache Kafka the survivor also takes over once session.timeout.ms
    // passes; tansu 0.6 does not always evict a dead member, so that path
    // is not what this test relies on.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.add_dispatcher().await;
    while let Some(r) = creators.join_next().await {
        r.expect("creator");
    }
    let want = created.lock().expect("lock").clone();
    assert_eq!(want.len(), N);
    let started = Instant::now();
    let missing = inboxes.wait_for(&want, Duration::from_secs(90)).await;
    assert!(
        missing.is_empty(),
        "{} of {N} live challenges got no push, e.g. {:?}",
        missing.len(),
        missing.iter().next()
    );
    let stats = cluster.simulator_stats().await;
    eprintln!(
        "SIGKILL after {killed_at} of {N} challenges (the victim had delivered {victim_delivered}): \
         all {N} pushes delivered, {} duplicates (same collapse id, shown once); \
         the last arrived {:.1} s after the last challenge was created",
        stats.duplicates,
        started.elapsed().as_secs_f64()
    );
    assert!(stats.delivered >= (N + 8) as u64);
    // The victim died with deliveries whose offsets were not committed yet
    // (they are committed every second): those were delivered again.
    assert!(
        stats.duplicates > 0,
        "no job was delivered twice: the victim's uncommitted work was not re-delivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dispatchers_stopped_and_restarted_lose_nothing_and_drop_expired_jobs() {
    let cluster = Cluster::start(2, &[]).await;
    // Some work first, so that the clean stop has offsets to commit.
    cluster.pushes_arrive("early", 8).await;
    // Stop every dispatcher cleanly.
    let running = std::mem::take(&mut *cluster.dispatchers.lock().expect("lock"));
    for mut d in running {
        d.proc.take().expect("process").terminate();
    }
    let phones = cluster.enroll_many("restart", 20).await;
    let inboxes = Inboxes::open(&cluster.server.url, &phones).await;
    let (mut live, mut short) = (HashSet::new(), HashSet::new());
    for i in 0..20 {
        // Even users get a 1 s challenge that expires while no dispatcher runs.
        let ttl = if i % 2 == 0 { 1 } else { 120 };
        let c = cluster
            .create(&format!("restart-{i}"), ttl)
            .await
            .expect("create while no dispatcher runs");
        if ttl == 1 {
            short.insert(c.challenge_id);
        } else {
            live.insert(c.challenge_id);
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.add_dispatcher().await;
    cluster.add_dispatcher().await;
    let missing = inboxes.wait_for(&live, Duration::from_secs(30)).await;
    assert!(missing.is_empty(), "{} live pushes lost", missing.len());
    let mut dropped = 0.0;
    for _ in 0..100 {
        dropped = cluster.pushes("expired_dropped").await.iter().sum();
        if dropped >= 10.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dropped, 10.0, "every expired job is dropped");
    let received = inboxes.received();
    assert!(
        received.is_disjoint(&short),
        "a push went out for an expired challenge"
    );
    // A clean stop committed what it had done: nothing was sent twice.
    assert_eq!(cluster.simulator_stats().await.duplicates, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_message_goes_to_dead_letters_and_delivery_goes_on() {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let cluster = Cluster::start(1, &[]).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &cluster.brokers)
        .create()
        .expect("producer");
    producer
        .send(
            FutureRecord::to("sesame.push")
                .key("dv_0")
                .payload(&b"\xffnot a push job"[..]),
            Duration::from_secs(10),
        )
        .await
        .expect("produce poison");
    // Delivery goes on.
    cluster.pushes_arrive("poison", 4).await;
    // The poison is in the dead letters, as it was, with the reason.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cluster.brokers)
        .set("group.id", "test-dead-letters")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer
        .subscribe(&["sesame.push.dead"])
        .expect("subscribe");
    let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("a dead letter within 30 s")
        .expect("dead letter");
    assert_eq!(m.payload(), Some(&b"\xffnot a push job"[..]));
    let headers = m.headers().expect("headers");
    let reason = headers
        .iter()
        .find(|h| h.key == "sesame-dead-reason")
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .expect("reason header");
    assert!(reason.starts_with("undecodable push job"), "{reason}");
    assert!(headers.iter().any(|h| h.key == "sesame-dead-source"));

    // What a reader of the push topic sees besides the (opaque) payload: a
    // device id as the key and the trace id, never a push token.
    let reader: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cluster.brokers)
        .set("group.id", "test-push-headers")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    reader.subscribe(&["sesame.push"]).expect("subscribe");
    let mut traced = 0;
    for _ in 0..5 {
        let m = tokio::time::timeout(Duration::from_secs(30), reader.recv())
            .await
            .expect("a push message within 30 s")
            .expect("push message");
        let key = String::from_utf8_lossy(m.key().expect("key")).into_owned();
        assert!(key.starts_with("dv_"), "the key is a device id: {key}");
        for h in m.headers().iter().flat_map(|hs| hs.iter()) {
            assert_eq!(h.key, "sesame-trace-id", "no other header");
            let v = String::from_utf8_lossy(h.value.expect("value")).into_owned();
            assert!(
                v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()),
                "{v}"
            );
            traced += 1;
        }
    }
    assert_eq!(traced, 4, "the four real pushes carry their trace id");
    let admin = cluster.dispatchers.lock().expect("lock")[0].admin.clone();
    assert_eq!(
        metric(
            &admin,
            "sesame_queue_undecodable_messages_total",
            "stream=\"push\""
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_outage_answers_unavailable_fast_and_recovers_by_itself() {
    // A long message timeout: a quick UNAVAILABLE must come from noticing
    // the broker is gone, not from waiting for librdkafka to give up. A
    // session timeout longer than the outage: the dispatcher keeps its
    // partitions (tansu 0.6 does not reliably hand them back after it has
    // evicted every member of a group).
    let cluster = Cluster::start(
        1,
        &[
            ("SESAME_KAFKA__MESSAGE_TIMEOUT_MS", "60000"),
            ("SESAME_KAFKA__SESSION_TIMEOUT_MS", "30000"),
        ],
    )
    .await;
    let phone = cluster.enroll("outage").await;
    let inboxes = Inboxes::open(&cluster.server.url, std::slice::from_ref(&phone)).await;
    let first = cluster.create("outage", 120).await.expect("create");
    assert!(inboxes
        .wait_for(&[first.challenge_id].into(), Duration::from_secs(30))
        .await
        .is_empty());

    // The broker stops answering (hung, or cut off by the network).
    cluster.broker.lock().expect("lock").signal("STOP");
    let (first_refusal, known_down) = expect_fast_refusals(&cluster).await;
    eprintln!(
        "broker hung: first CreateChallenge refused after {first_refusal:?}, the next after {known_down:?}"
    );
    // A dispatcher can do nothing without Kafka: not ready. The server
    // still answers reads and approvals: ready.
    let dispatcher_admin = cluster.dispatchers.lock().expect("lock")[0].admin.clone();
    let mut dispatcher_ready = None;
    for _ in 0..50 {
        dispatcher_ready = http_get(&dispatcher_admin, "/ready").await;
        if dispatcher_ready.as_ref().is_some_and(|(c, _)| *c == 503) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        dispatcher_ready,
        Some((503, "queue unavailable\n".to_owned()))
    );
    let server_ready = http_get(&cluster.server.admin, "/ready").await;
    assert_eq!(server_ready.map(|(c, _)| c), Some(200));

    // It answers again: logins work without restarting anything.
    cluster.broker.lock().expect("lock").signal("CONT");
    let started = Instant::now();
    let c = loop {
        match cluster.create("outage", 120).await {
            Ok(c) => break c,
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "no recovery within 60 s"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    eprintln!(
        "recovered {:?} after the broker returned",
        started.elapsed()
    );
    assert!(inboxes
        .wait_for(&[c.challenge_id.clone()].into(), Duration::from_secs(60))
        .await
        .is_empty());
    approve(&phone, &c).await;
    assert_eq!(
        watch_until_final(&cluster, &c.challenge_id).await,
        types::ChallengeStatus::Approved as i32
    );

    // The broker process dies (connections refused): refused fast as well.
    cluster.broker.lock().expect("lock").kill();
    let (first_refusal, known_down) = expect_fast_refusals(&cluster).await;
    eprintln!(
        "broker killed: first CreateChallenge refused after {first_refusal:?}, the next after {known_down:?}"
    );
}

/// Two challenges refused with UNAVAILABLE while the broker is away; how
/// long the first and the second took. The first may wait for the outage
/// to be noticed (about a second), never for the 60 s message timeout.
async fn expect_fast_refusals(cluster: &Cluster) -> (Duration, Duration) {
    let started = Instant::now();
    let status = cluster
        .create("outage", 120)
        .await
        .expect_err("no broker: the challenge must be refused");
    let first = started.elapsed();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("retry"), "{}", status.message());
    assert!(
        first < Duration::from_secs(30),
        "refused only after {first:?}: the outage was not noticed"
    );
    let started = Instant::now();
    let again = cluster.create("outage", 120).await.expect_err("still down");
    assert_eq!(again.code(), Code::Unavailable);
    (first, started.elapsed())
}

/// A watcher on one replica sees a verdict that another replica verified:
/// the only thing that can wake it in time is the verdict event on Kafka
/// (the watch's own re-read is set to an hour here).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_verdict_reached_on_one_replica_wakes_a_watch_and_reaches_the_webhook_from_another() {
    let broker = Broker::start();
    let shared: Arc<dyn sesame_storage::Storage> = Arc::new(sesame_storage::MemStorage::new());
    let dir = tempfile::tempdir().expect("tempdir");
    // The tenant's webhook receiver, over TLS on loopback (allow-listed).
    let receiver_tls = sesame_push_sim::tls::SimTls::generate().expect("tls");
    let ca = dir.path().join("receiver-ca.pem");
    std::fs::write(&ca, &receiver_tls.ca_pem).expect("ca");
    let receiver = sesame_push_sim::webhook::WebhookReceiver::start(
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind"),
        &receiver_tls,
    )
    .expect("receiver");
    let replica = |roles: &[&str], sub: &str| Config {
        listen: "127.0.0.1:0".into(),
        admin_listen: String::new(),
        data_dir: dir.path().join(sub),
        storage: "memory".into(),
        queue: broker.uri(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        watch_resync_ms: 3_600_000,
        kafka: sesame_queue::KafkaConfig {
            replication_factor: 1,
            push_partitions: 2,
            events_partitions: 2,
            ..Default::default()
        },
        webhook: sesame::config::WebhookSection {
            allow_private: vec!["127.0.0.1/32".into(), "::1/128".into()],
            ca_file: ca.display().to_string(),
            ..Default::default()
        },
        ..Config::default()
    };
    // Replica A: tenant API only (and the webhook worker). Replica B: device
    // API and dispatcher: it commits the verdict and queues the webhook job.
    let mut a = Sesame::open(replica(&["challenge"], "a")).await.expect("a");
    let mut b = Sesame::open(replica(&["verifier", "dispatcher"], "b"))
        .await
        .expect("b");
    a.storage = shared.clone();
    b.storage = shared.clone();
    let key_file = a
        .ensure_dev_tenant()
        .await
        .expect("dev tenant")
        .expect("a key file");
    let key = std::fs::read_to_string(key_file)
        .expect("key")
        .trim()
        .to_owned();
    let la = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let lb = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (url_a, url_b) = (
        format!("http://{}", la.local_addr().expect("addr")),
        format!("http://{}", lb.local_addr().expect("addr")),
    );
    tokio::spawn(a.serve_with_admin(la, None, std::future::pending()));
    tokio::spawn(b.serve_with_admin(lb, None, std::future::pending()));
    let ch_a = sesame_device_sim::connect(&url_a).await.expect("a");
    let ch_b = sesame_device_sim::connect(&url_b).await.expect("b");
    fn req<T>(key: &str, m: T) -> tonic::Request<T> {
        sesame::cli::authed(key, m).expect("request")
    }

    let token = EnrollmentServiceClient::new(ch_a.clone())
        .begin_enrollment(req(
            &key,
            pb::BeginEnrollmentRequest {
                user_id: "alice".into(),
                ttl_seconds: 0,
            },
        ))
        .await
        .expect("begin")
        .into_inner()
        .enrollment_token;
    let phone = SimDevice::enroll(
        ch_b.clone(),
        &url_b,
        &token,
        KeyAlgorithm::EcdsaP256Sha256,
        Platform::Ios,
        "tok-alice",
        "",
    )
    .await
    .expect("enroll on B");
    let mut inbox = phone.push_inbox().await.expect("inbox on B");
    let secret =
        sesame_proto::tenant::v1::webhook_service_client::WebhookServiceClient::new(ch_a.clone())
            .set_webhook(req(
                &key,
                pb::SetWebhookRequest {
                    url: receiver.url("/hooks"),
                },
            ))
            .await
            .expect("set webhook on A")
            .into_inner()
            .secret;
    receiver.set_secrets(&[&secret]).expect("secret");
    let c = ChallengeServiceClient::new(ch_a.clone())
        .create_challenge(req(
            &key,
            pb::CreateChallengeRequest {
                user_id: "alice".into(),
                context: Some(types::ChallengeContext {
                    client_name: "Test bank".into(),
                    action: types::Action::Login as i32,
                    ..Default::default()
                }),
                options: None,
            },
        ))
        .await
        .expect("create on A")
        .into_inner()
        .challenge
        .expect("challenge");
    let mut watch = ChallengeServiceClient::new(ch_a.clone())
        .watch_challenge(req(
            &key,
            pb::WatchChallengeRequest {
                challenge_id: c.challenge_id.clone(),
            },
        ))
        .await
        .expect("watch on A")
        .into_inner();
    let pending = tokio::time::timeout(Duration::from_secs(30), watch.message())
        .await
        .expect("the current state within 30 s")
        .expect("stream")
        .expect("first state");
    assert_eq!(pending.status, types::ChallengeStatus::Pending as i32);
    // The push went A -> Kafka -> B's dispatcher -> B's simulator.
    let push = tokio::time::timeout(Duration::from_secs(30), inbox.message())
        .await
        .expect("push within 30 s")
        .expect("inbox")
        .expect("push");
    assert_eq!(push.challenge_id, c.challenge_id);
    approve(&phone, &c).await;
    let verdict = tokio::time::timeout(Duration::from_secs(30), watch.message())
        .await
        .expect("the verdict event from B reaches A's watcher")
        .expect("stream")
        .expect("verdict");
    assert_eq!(verdict.status, types::ChallengeStatus::Approved as i32);
    // B queued the webhook job on Kafka; A's worker delivered it, signed.
    let id = format!("vd_{}", c.challenge_id);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !receiver.accepted().contains_key(&id) {
        assert!(
            Instant::now() < deadline,
            "webhook not delivered: {:?}",
            receiver.received()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = receiver.received();
    assert!(got.iter().all(|r| r.verified.is_ok()), "{got:?}");
    assert_eq!(receiver.accepted().get(&id), Some(&1));
}

/// Dropping a group consumer runs librdkafka's consumer close, which
/// rust-rdkafka polls to the end without a time limit; a server whose broker
/// died must still stop, in bounded time (grace periods, the producers'
/// flush and the consumers' close wait), instead of blocking a runtime
/// thread on it. Measured: about 7 s here, 0.2 s with the broker alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_server_whose_broker_died_still_shuts_down() {
    let mut broker = Broker::start();
    let kafka = broker.uri();
    let h = common::Harness::start_configured(move |c| {
        c.queue = kafka;
        c.kafka.replication_factor = 1;
        c.kafka.push_partitions = 2;
        c.kafka.events_partitions = 1;
        c.shutdown_grace_seconds = 2;
    })
    .await;
    let phone = h.enroll("dead-broker").await;
    let mut inbox = phone.push_inbox().await.unwrap();
    let c = h.create("dead-broker", common::ENTER, 0).await;
    common::next_push(&phone, &mut inbox).await;
    let d = common::details(&phone, &c.challenge_id).await;
    phone
        .respond(&d, &common::approve(&c.number_match_code))
        .await
        .unwrap();
    broker.kill();
    let started = Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(30), h.shutdown()).await;
    assert!(
        stopped.is_ok(),
        "shutdown still waiting after 30 s with the broker gone"
    );
    println!("stopped in {:?} with the broker gone", started.elapsed());
}
