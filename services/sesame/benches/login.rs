//! `cargo bench -p sesame --bench login`
//!
//! - signature verification (P-256 DER, Ed25519) and the canonical payloads;
//! - one full login in-process over real gRPC on loopback, with the durable
//!   embedded store (fsync on): create challenge -> push through the
//!   dispatcher to the simulated phone -> fetch details -> signed answer ->
//!   read the verdict. Measured one at a time (latency) and with 64 logins in
//!   flight (amortised time per login, i.e. 1/throughput; the client runs in
//!   the same process and on the same cores).
//! - enrollment with 64 in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sesame::{Config, Sesame};
use sesame_core::crypto::{KeyAlgorithm, PublicKey, SigningKey};
use sesame_core::model::{Action, ChallengeContext, Decision, Platform, Transaction};
use sesame_core::payload::{context_hash, AnswerPayload};
use sesame_device_sim::{Answer, SimDevice};
use sesame_proto::simulator::v1::Push;
use sesame_proto::tenant::v1 as pb;
use sesame_proto::tenant::v1::challenge_service_client::ChallengeServiceClient;
use sesame_proto::tenant::v1::enrollment_service_client::EnrollmentServiceClient;
use sesame_proto::types::v1 as types;
use tokio::sync::Mutex;
use tonic::transport::Channel;

fn crypto(c: &mut Criterion) {
    let ctx = ChallengeContext {
        client_name: "Example Bank".into(),
        action: Action::Transaction,
        transaction: Some(Transaction {
            amount: "125.50".into(),
            currency: "EUR".into(),
            payee: "ACME".into(),
        }),
        ip_address: "203.0.113.7".into(),
        location: "Brussels, BE".into(),
        binding_message: String::new(),
    };
    let hash = context_hash(&ctx);
    let msg = AnswerPayload {
        challenge_id: "ch_0123456789abcdef0123456789abcdef",
        device_id: "dv_0123456789abcdef0123456789abcdef",
        decision: Decision::Approve,
        number_match_answer: "42",
        context_hash: &hash,
        timestamp: 1_700_000_000_000,
    }
    .encode();
    let mut g = c.benchmark_group("crypto");
    g.bench_function("context_hash", |b| {
        b.iter(|| context_hash(std::hint::black_box(&ctx)))
    });
    for alg in [KeyAlgorithm::EcdsaP256Sha256, KeyAlgorithm::Ed25519] {
        let sk = SigningKey::generate(alg);
        let sig = sk.sign(&msg);
        let pk_bytes = sk.public_key_bytes();
        let pk = PublicKey::parse(alg, &pk_bytes).expect("key");
        g.bench_function(format!("verify_{alg:?}"), |b| {
            b.iter(|| pk.verify(std::hint::black_box(&msg), &sig).expect("valid"))
        });
        g.bench_function(format!("parse_key_and_verify_{alg:?}"), |b| {
            b.iter(|| {
                PublicKey::parse(alg, &pk_bytes)
                    .expect("key")
                    .verify(&msg, &sig)
                    .expect("valid")
            })
        });
    }
    g.finish();
}

struct Rig {
    channel: Channel,
    url: String,
    key: String,
    _dir: tempfile::TempDir,
}

async fn start() -> Rig {
    start_with(|_| {}).await
}

async fn start_with(tweak: impl FnOnce(&mut Config)) -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut config = Config {
        listen: addr.to_string(),
        admin_listen: String::new(),
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    // Each simulated user logs in thousands of times here, so the push-bombing
    // guard gets limits it never reaches; its check (a read and a
    // compare-and-set per challenge) still runs on every login.
    config.guard.defaults = sesame_ratelimit::GuardPolicy {
        one_pending: false,
        max_prompts: u32::MAX,
        force_number_match_after: 0,
        lock_after: 0,
        ..Default::default()
    };
    tweak(&mut config);
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
    Rig {
        channel,
        url,
        key,
        _dir: dir,
    }
}

fn req<T>(key: &str, m: T) -> tonic::Request<T> {
    sesame::cli::authed(key, m).expect("request")
}

struct Phone {
    user: String,
    device: SimDevice,
    inbox: tonic::Streaming<Push>,
}

async fn enroll(rig: &Rig, user: String) -> SimDevice {
    let token = EnrollmentServiceClient::new(rig.channel.clone())
        .begin_enrollment(req(
            &rig.key,
            pb::BeginEnrollmentRequest {
                user_id: user,
                ttl_seconds: 0,
            },
        ))
        .await
        .expect("begin")
        .into_inner()
        .enrollment_token;
    SimDevice::enroll(
        rig.channel.clone(),
        &rig.url,
        &token,
        KeyAlgorithm::EcdsaP256Sha256,
        Platform::Ios,
        &format!("bench-{}", sesame::cli::random_suffix()),
        "",
    )
    .await
    .expect("enroll")
}

async fn phone(rig: &Rig, user: String) -> Phone {
    let device = enroll(rig, user.clone()).await;
    let inbox = device.push_inbox().await.expect("inbox");
    Phone {
        user,
        device,
        inbox,
    }
}

/// One whole login; panics unless it ends APPROVED.
async fn login(rig: &Rig, phone: &mut Phone) {
    let mut tenant = ChallengeServiceClient::new(rig.channel.clone());
    let c = tenant
        .create_challenge(req(
            &rig.key,
            pb::CreateChallengeRequest {
                user_id: phone.user.clone(),
                context: Some(types::ChallengeContext {
                    client_name: "bench".into(),
                    action: types::Action::Login as i32,
                    ..Default::default()
                }),
                options: None,
            },
        ))
        .await
        .expect("create")
        .into_inner()
        .challenge
        .expect("challenge");
    let pushed = phone.inbox.message().await.expect("inbox").expect("push");
    assert_eq!(pushed.challenge_id, c.challenge_id);
    let d = phone
        .device
        .details(&pushed.challenge_id)
        .await
        .expect("details");
    phone
        .device
        .respond(
            &d,
            &Answer {
                decision: Decision::Approve,
                number: c.number_match_code.clone(),
            },
        )
        .await
        .expect("respond");
    let v = tenant
        .get_challenge(req(
            &rig.key,
            pb::GetChallengeRequest {
                challenge_id: c.challenge_id,
            },
        ))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(v.status, types::ChallengeStatus::Approved as i32);
}

const IN_FLIGHT: usize = 64;

/// `iters` whole logins spread over the phones, each phone one at a time.
async fn logins_in_flight(rig: &Arc<Rig>, phones: &[Arc<Mutex<Phone>>], iters: u64) {
    let mut tasks = Vec::new();
    for (i, p) in phones.iter().enumerate() {
        let n = iters as usize / phones.len() + usize::from(i < iters as usize % phones.len());
        let (rig, p) = (rig.clone(), p.clone());
        tasks.push(tokio::spawn(async move {
            let mut p = p.lock().await;
            for _ in 0..n {
                login(&rig, &mut p).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
}

fn full_login(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let rig = Arc::new(rt.block_on(start()));
    let phones: Vec<Arc<Mutex<Phone>>> = rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..IN_FLIGHT {
            v.push(Arc::new(Mutex::new(
                phone(&rig, format!("bench-user-{i}")).await,
            )));
        }
        v
    });

    let mut g = c.benchmark_group("login");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(1));
    g.bench_function("full_login_sequential", |b| {
        b.to_async(&rt).iter(|| {
            let (rig, p) = (rig.clone(), phones[0].clone());
            async move { login(&rig, &mut *p.lock().await).await }
        })
    });
    g.bench_function("full_login_64_in_flight_amortised", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (rig, phones) = (rig.clone(), phones.clone());
            async move {
                let start = Instant::now();
                logins_in_flight(&rig, &phones, iters).await;
                start.elapsed()
            }
        })
    });
    g.bench_function("enrollment_64_in_flight_amortised", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let rig = rig.clone();
            async move {
                let start = Instant::now();
                let mut tasks = Vec::new();
                for i in 0..IN_FLIGHT {
                    let n =
                        iters as usize / IN_FLIGHT + usize::from(i < iters as usize % IN_FLIGHT);
                    let rig = rig.clone();
                    tasks.push(tokio::spawn(async move {
                        for _ in 0..n {
                            enroll(&rig, format!("enroll-{}", sesame::cli::random_suffix())).await;
                        }
                    }));
                }
                for t in tasks {
                    t.await.expect("task");
                }
                start.elapsed()
            }
        })
    });
    g.finish();
}

/// The same 64-in-flight login with the tenant's verdict webhook on: each
/// login also queues a job, and the challenge role's worker signs and POSTs
/// it over TLS to a receiver in this process, which verifies it. The time
/// per login includes waiting until every delivery of the iteration was
/// answered 2xx; receiver and load generator share the 2 cores.
fn login_with_webhook(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let tls = sesame_push_sim::tls::SimTls::generate().expect("tls");
    let ca_dir = tempfile::tempdir().expect("tempdir");
    let ca = ca_dir.path().join("ca.pem");
    std::fs::write(&ca, &tls.ca_pem).expect("ca");
    let receiver = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        sesame_push_sim::webhook::WebhookReceiver::start(l, &tls).expect("receiver")
    });
    let ca_path = ca.display().to_string();
    let rig = Arc::new(rt.block_on(start_with(move |c| {
        c.webhook.ca_file = ca_path;
        c.webhook.allow_private = vec!["127.0.0.1/32".into(), "::1/128".into()];
    })));
    let receiver = Arc::new(receiver);
    rt.block_on(async {
        let secret = sesame_proto::tenant::v1::webhook_service_client::WebhookServiceClient::new(
            rig.channel.clone(),
        )
        .set_webhook(req(
            &rig.key,
            pb::SetWebhookRequest {
                url: receiver.url("/hook"),
            },
        ))
        .await
        .expect("set webhook")
        .into_inner()
        .secret;
        receiver.set_secrets(&[&secret]).expect("secret");
    });
    let phones: Vec<Arc<Mutex<Phone>>> = rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..IN_FLIGHT {
            v.push(Arc::new(Mutex::new(
                phone(&rig, format!("hook-user-{i}")).await,
            )));
        }
        v
    });
    let mut g = c.benchmark_group("login");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(1));
    g.bench_function("full_login_64_in_flight_with_webhook_amortised", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (rig, phones, receiver) = (rig.clone(), phones.clone(), receiver.clone());
            async move {
                let before = receiver.delivered();
                let start = Instant::now();
                logins_in_flight(&rig, &phones, iters).await;
                while receiver.delivered() < before + iters {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                start.elapsed()
            }
        })
    });
    g.finish();
    let bad = receiver
        .received()
        .iter()
        .filter(|r| r.verified.is_err())
        .count();
    assert_eq!(bad, 0, "deliveries that did not verify");
}

criterion_group!(benches, crypto, full_login, login_with_webhook);
criterion_main!(benches);
