//! Pushes per second per core from one dispatcher through the real APNs
//! client to the APNs simulator, over TLS and HTTP/2 on loopback.
//!
//! The simulator runs on its own runtime whose threads are named
//! `apns-sim`; the dispatcher's CPU is the process's CPU minus theirs
//! (read from /proc/self/task/*/stat), so the figure is the dispatcher's
//! cost alone: queue, client, JWT, TLS and HTTP/2 framing.
//!
//! `cargo bench -p sesame-push-sim --bench apns_push` (PUSHES=50000,
//! CONNECTIONS=2, CONCURRENCY=512 to change the run).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sesame_core::model::Platform;
use sesame_core::time::now_ms;
use sesame_core::{ChallengeId, DeviceId, TenantId};
use sesame_dispatcher::{Dispatcher, DispatcherConfig};
use sesame_push::apns::{ApnsAuth, ApnsClient, ApnsConfig};
use sesame_push::payload::AlertText;
use sesame_push::{PushOutcome, PushProvider, SimulatorProvider, TlsOptions};
use sesame_push_sim::apns::ApnsSimulator;
use sesame_push_sim::credentials::ApnsKeyMaterial;
use sesame_push_sim::tls::SimTls;
use sesame_push_sim::SimControl;
use sesame_queue::{MemQueue, MemQueueConfig, PushJob, Queue};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds of this process's threads, split by whether the thread's
/// name starts with `prefix`.
fn cpu_split(prefix: &str) -> (f64, f64) {
    let tick = 100.0; // USER_HZ on Linux
    let (mut with, mut without) = (0.0, 0.0);
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return (0.0, 0.0);
    };
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let name = stat
            .split('(')
            .nth(1)
            .and_then(|s| s.split(')').next())
            .unwrap_or("");
        let rest: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let (Some(u), Some(s)) = (rest.get(11), rest.get(12)) else {
            continue;
        };
        let secs = (u.parse::<f64>().unwrap_or(0.0) + s.parse::<f64>().unwrap_or(0.0)) / tick;
        if name.starts_with(prefix) {
            with += secs;
        } else {
            without += secs;
        }
    }
    (with, without)
}

/// Counts outcomes so the run knows when every push has its answer.
struct Counting(ApnsClient, std::sync::atomic::AtomicU64);

#[async_trait::async_trait]
impl PushProvider for Counting {
    fn name(&self) -> &'static str {
        "apns"
    }
    async fn send(&self, job: &PushJob, now: i64) -> PushOutcome {
        let out = self.0.send(job, now).await;
        self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        out
    }
}

fn main() {
    let pushes = env("PUSHES", 50_000);
    let connections = env("CONNECTIONS", 2);
    let concurrency = env("CONCURRENCY", 512);
    let sim_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("apns-sim")
        .enable_all()
        .build()
        .expect("runtime");
    let tls = SimTls::generate().expect("tls");
    let control = SimControl::new(Arc::new(SimulatorProvider::new()));
    let key = ApnsKeyMaterial::generate("BENCHKEY01", "BENCHTEAM1");
    let (running, sim) = sim_rt
        .block_on(ApnsSimulator::start("127.0.0.1:0", &tls, control.clone()))
        .expect("simulator");
    sim.register_key(&key, &["com.example.bench"]);
    let url = running.url();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("dispatcher")
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let client = ApnsClient::new(ApnsConfig {
            base_url: url,
            topic: "com.example.bench".into(),
            auth: ApnsAuth::Token { p8_pem: key.p8_pem.clone(), key_id: key.key_id.clone(), team_id: key.team_id.clone() },
            tls: TlsOptions { extra_ca_pem: Some(tls.ca_pem.clone()), client_identity_pem: None },
            connections,
            request_timeout: Duration::from_secs(10),
            alert: AlertText::default(),
        })
        .expect("client");
        let provider = Arc::new(Counting(client, Default::default()));
        let queue = Arc::new(MemQueue::new(MemQueueConfig { push_capacity: pushes + 1, ..Default::default() }));
        let q: Arc<dyn Queue> = queue.clone();
        let dispatcher = Dispatcher::new(q.clone(), provider.clone(), DispatcherConfig { concurrency, ..Default::default() });
        let task = tokio::spawn(dispatcher.run());
        let tenant = TenantId::parse("bench").expect("tenant");
        let jobs: Vec<PushJob> = (0..pushes)
            .map(|i| PushJob {
                tenant_id: tenant.clone(),
                user_id: String::new(),
                device_id: DeviceId::generate(),
                challenge_id: ChallengeId::generate(),
                platform: Platform::Ios,
                push_token: format!("{:064x}", i % 10_000),
                push_app: String::new(),
                expires_at: now_ms() + 600_000,
                enqueued_at: now_ms(),
                attempt: 0,
                trace_id: String::new(),
                not_before: 0,
            })
            .collect();
        let (sim0, disp0) = cpu_split("apns-sim");
        let started = Instant::now();
        for chunk in jobs.chunks(1000) {
            q.publish_pushes(chunk.to_vec()).await.expect("publish");
        }
        while provider.1.load(std::sync::atomic::Ordering::Relaxed) < pushes as u64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let wall = started.elapsed().as_secs_f64();
        let (sim1, disp1) = cpu_split("apns-sim");
        let ok = control.count("success");
        let disp_cpu = disp1 - disp0;
        println!("pushes: {pushes}, accepted by the simulator: {ok}, connections: {connections}, concurrency: {concurrency}");
        println!("wall: {wall:.2} s -> {:.0} pushes/s", pushes as f64 / wall);
        println!(
            "dispatcher CPU: {disp_cpu:.2} s -> {:.0} pushes/s per dispatcher core ({:.1} us CPU per push)",
            pushes as f64 / disp_cpu,
            disp_cpu * 1e6 / pushes as f64
        );
        println!("simulator CPU: {:.2} s", sim1 - sim0);
        assert_eq!(ok, pushes as u64, "every push accepted");
        queue.close();
        task.abort();
    });
    drop(running);
}
