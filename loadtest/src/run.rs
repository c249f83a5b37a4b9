//! The open-loop engine: logins start on schedule, each is classified
//! (approved, refused, failed) and timed from its scheduled start.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use sesame_core::model::Decision;
use sesame_device_sim::Answer;
use sesame_proto::tenant::v1 as pb;
use sesame_proto::tenant::v1::challenge_service_client::ChallengeServiceClient;
use sesame_proto::types::v1 as types;
use tonic::transport::Channel;
use tonic::Code;

use crate::authed;
use crate::population::Population;
use crate::report::{Report, Second};

#[derive(Debug, Clone)]
pub struct Options {
    pub api_key: String,
    /// The server's URL (the device API, where new phones enroll).
    pub server_url: String,
    /// Time the user takes to read and approve (not counted in latency).
    pub think: Duration,
    /// How long a phone waits for its push before the login counts as failed.
    pub push_timeout: Duration,
    /// Logins in flight at most; arrivals beyond are counted as dropped by
    /// the client (a finding: the tester itself was the limit).
    pub max_in_flight: usize,
    /// The server's process id, when it runs on this machine: its memory
    /// and CPU time go into the results.
    pub server_pid: Option<u32>,
    /// Print a progress line every second.
    pub progress: bool,
}

/// A stretch of the run at one arrival rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Phase {
    pub rate: f64,
    pub secs: u64,
}

/// What happened to one login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Approved,
    /// `UNAVAILABLE` or `RESOURCE_EXHAUSTED` on `CreateChallenge`: shed.
    Refused,
    Failed,
    NoIdlePhone,
}

struct Bucket {
    offered: u64,
    accepted: u64,
    refused: u64,
    failed: u64,
    approved: u64,
    client_dropped: u64,
    latency_us: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    // 1 us .. 120 s, 3 significant digits: constant, valid bounds.
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("constant histogram bounds are valid")
}

/// Per-second histograms: 2 significant digits (1 % resolution) keeps an
/// hour-long run's series small.
fn second_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 2).expect("constant histogram bounds are valid")
}

impl Bucket {
    fn new() -> Bucket {
        Bucket {
            offered: 0,
            accepted: 0,
            refused: 0,
            failed: 0,
            approved: 0,
            client_dropped: 0,
            latency_us: second_histogram(),
        }
    }
}

/// Shared tallies of a run.
struct Tally {
    start: Instant,
    seconds: Mutex<Vec<Bucket>>,
    login_us: Mutex<Histogram<u64>>,
    refusal_us: Mutex<Histogram<u64>>,
    create_us: Mutex<Histogram<u64>>,
    failures: Mutex<std::collections::BTreeMap<String, u64>>,
    in_flight: AtomicUsize,
    retries: AtomicUsize,
}

impl Tally {
    fn with_second<R>(&self, at: Instant, f: impl FnOnce(&mut Bucket) -> R) -> Option<R> {
        let s = at.saturating_duration_since(self.start).as_secs() as usize;
        let mut secs = self.seconds.lock().ok()?;
        while secs.len() <= s {
            secs.push(Bucket::new());
        }
        Some(f(&mut secs[s]))
    }

    fn record(hist: &Mutex<Histogram<u64>>, d: Duration) {
        if let Ok(mut h) = hist.lock() {
            h.saturating_record((d.as_micros() as u64).max(1));
        }
    }

    fn fail(&self, why: String) {
        if let Ok(mut f) = self.failures.lock() {
            *f.entry(why).or_default() += 1;
        }
    }
}

pub struct Engine {
    channel: Channel,
    population: Arc<Population>,
    options: Options,
}

impl Engine {
    pub fn new(channel: Channel, population: Population, options: Options) -> Engine {
        Engine {
            channel,
            population: Arc::new(population),
            options,
        }
    }

    /// `push-bomb`: normal logins at `phases`, while an attacker who knows
    /// one user's name asks for a challenge for that user `attack_rate`
    /// times a second and never answers. Reports the normal traffic, and
    /// what the attacked phone received.
    pub async fn push_bomb(
        &self,
        phases: &[Phase],
        attack_rate: f64,
    ) -> (Report, serde_json::Value) {
        let Some(victim) = self.population.take() else {
            return (
                self.run("push-bomb", phases).await,
                serde_json::json!({"error": "no phone for the victim"}),
            );
        };
        let phone = self.population.phones[victim].clone();
        // Pushes left from earlier runs are not the attack's.
        while phone.pushes.lock().await.try_recv().is_ok() {}
        let total: u64 = phases.iter().map(|p| p.secs).sum();
        let (channel, key, user) = (
            self.channel.clone(),
            self.options.api_key.clone(),
            phone.user.clone(),
        );
        let attacker = tokio::spawn(async move {
            let (mut accepted, mut guard_refused, mut other, mut sent) = (0u64, 0u64, 0u64, 0u64);
            let start = Instant::now();
            let end = start + Duration::from_secs(total);
            let mut k = 0u64;
            loop {
                let at = start + Duration::from_secs_f64(k as f64 / attack_rate.max(0.01));
                if at >= end {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                k += 1;
                sent += 1;
                let Ok(request) = authed(
                    &key,
                    pb::CreateChallengeRequest {
                        user_id: user.clone(),
                        context: Some(types::ChallengeContext {
                            client_name: "Attacker".into(),
                            action: types::Action::Login as i32,
                            ..Default::default()
                        }),
                        options: None,
                    },
                ) else {
                    other += 1;
                    continue;
                };
                match ChallengeServiceClient::new(channel.clone())
                    .create_challenge(request)
                    .await
                {
                    Ok(_) => accepted += 1,
                    Err(s) if s.code() == Code::ResourceExhausted => guard_refused += 1,
                    Err(_) => other += 1,
                }
            }
            (sent, accepted, guard_refused, other)
        });
        let report = self.run("push-bomb", phases).await;
        let (sent, accepted, guard_refused, other) = attacker.await.unwrap_or_default();
        // Pushes still on their way.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut received = std::collections::BTreeSet::new();
        {
            let mut pushes = phone.pushes.lock().await;
            while let Ok(id) = pushes.try_recv() {
                received.insert(id);
            }
        }
        self.population.give_back(victim);
        let extra = serde_json::json!({
            "attack_rate": attack_rate,
            "attack_secs": total,
            "attack_sent": sent,
            "attack_accepted": accepted,
            "attack_refused_by_guard": guard_refused,
            "attack_other_errors": other,
            "victim_pushes_received": received.len(),
        });
        (report, extra)
    }

    /// `enroll-storm`: normal logins at `phases` while a launch-day wave of
    /// new phones enrolls, open loop, at `enroll_rate` a second (each one
    /// `BeginEnrollment`, a fresh P-256 key, a signed `CompleteEnrollment`).
    /// Reports the logins, and the enrollments' counts and latency.
    pub async fn enroll_storm(
        &self,
        phases: &[Phase],
        enroll_rate: f64,
    ) -> (Report, serde_json::Value) {
        let total: u64 = phases.iter().map(|p| p.secs).sum();
        let (channel, key) = (self.channel.clone(), self.options.api_key.clone());
        let url = self.options.server_url.clone();
        let max_in_flight = self.options.max_in_flight;
        let storm = tokio::spawn(async move {
            let latency = Arc::new(Mutex::new(histogram()));
            let counts = Arc::new(Mutex::new(std::collections::BTreeMap::<String, u64>::new()));
            let in_flight = Arc::new(AtomicUsize::new(0));
            let mut tasks = tokio::task::JoinSet::new();
            let start = Instant::now();
            let end = start + Duration::from_secs(total);
            let tag = crate::population::random_hex();
            let count = |counts: &Mutex<std::collections::BTreeMap<String, u64>>, k: &str| {
                if let Ok(mut c) = counts.lock() {
                    *c.entry(k.to_owned()).or_default() += 1;
                }
            };
            let mut k = 0u64;
            loop {
                let at = start + Duration::from_secs_f64(k as f64 / enroll_rate.max(0.01));
                if at >= end {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                k += 1;
                count(&counts, "offered");
                if in_flight.load(Ordering::Relaxed) >= max_in_flight {
                    count(&counts, "client_dropped");
                    continue;
                }
                in_flight.fetch_add(1, Ordering::Relaxed);
                let (channel, key, url) = (channel.clone(), key.clone(), url.clone());
                let (latency, counts, in_flight) =
                    (latency.clone(), counts.clone(), in_flight.clone());
                let user = format!("storm-{tag}-{k}");
                tasks.spawn(async move {
                    let push_token = format!("lt-{user}");
                    let outcome =
                        crate::population::enroll_once(&channel, &url, &key, &user, &push_token)
                            .await;
                    match outcome.as_ref().map_err(crate::population::grpc_code) {
                        Ok(_) => {
                            Tally::record(&latency, at.elapsed());
                            count(&counts, "enrolled");
                        }
                        Err(Some(Code::Unavailable)) => count(&counts, "refused"),
                        Err(code) => count(&counts, &format!("failed_{code:?}")),
                    }
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                });
            }
            while tasks.join_next().await.is_some() {}
            let secs = start.elapsed().as_secs_f64();
            let counts = counts.lock().map(|c| c.clone()).unwrap_or_default();
            let h = latency
                .lock()
                .map(|h| h.clone())
                .unwrap_or_else(|_| histogram());
            let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            serde_json::json!({
                "enroll_rate": enroll_rate,
                "secs": total,
                "counts": counts,
                "enrolled_per_sec": counts.get("enrolled").copied().unwrap_or(0) as f64 / secs.max(1e-9),
                "enroll_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "max": h.max() as f64 / 1000.0},
            })
        });
        let report = self.run("enroll-storm", phases).await;
        let storm = storm
            .await
            .unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}));
        (report, storm)
    }

    /// Runs `phases` back to back and reports.
    pub async fn run(&self, scenario: &str, phases: &[Phase]) -> Report {
        let tally = Arc::new(Tally {
            start: Instant::now(),
            seconds: Mutex::new(Vec::new()),
            login_us: Mutex::new(histogram()),
            refusal_us: Mutex::new(histogram()),
            create_us: Mutex::new(histogram()),
            failures: Mutex::new(Default::default()),
            in_flight: AtomicUsize::new(0),
            retries: AtomicUsize::new(0),
        });
        let (stop_sampling, stop) = tokio::sync::watch::channel(false);
        let resources = tokio::spawn(sample_resources(
            tally.start,
            self.options.server_pid,
            self.options.progress.then(|| tally.clone()),
            stop,
        ));
        let cpu_before = self.options.server_pid.and_then(cpu_ticks);
        let self_before = cpu_ticks(std::process::id());
        let mut logins = tokio::task::JoinSet::new();
        let mut phase_start = tally.start;
        for phase in phases {
            let rate = phase.rate.max(0.001);
            let end = phase_start + Duration::from_secs(phase.secs);
            // Arrival k of the phase, computed from the phase's start (no
            // rounding error piles up over a long phase).
            let at = |k: u64| phase_start + Duration::from_secs_f64(k as f64 / rate);
            let mut k = 0u64;
            while at(k) < end {
                tokio::time::sleep_until(at(k).into()).await;
                let now = Instant::now();
                // Every arrival due by now starts now (timer granularity),
                // still timed from its own scheduled instant.
                while at(k) <= now && at(k) < end {
                    self.arrive(at(k), &tally, &mut logins);
                    k += 1;
                }
                while logins.try_join_next().is_some() {}
            }
            phase_start = end;
        }
        while logins.join_next().await.is_some() {}
        let wall = tally.start.elapsed();
        let _ = stop_sampling.send(true);
        let samples = resources.await.unwrap_or_default();
        let cpu_after = self.options.server_pid.and_then(cpu_ticks);
        let self_after = cpu_ticks(std::process::id());
        build_report(
            scenario,
            phases,
            &tally,
            wall,
            samples,
            cpu_before.zip(cpu_after).map(|(a, b)| b.saturating_sub(a)),
            self_before
                .zip(self_after)
                .map(|(a, b)| b.saturating_sub(a)),
        )
    }

    fn arrive(
        &self,
        scheduled: Instant,
        tally: &Arc<Tally>,
        logins: &mut tokio::task::JoinSet<()>,
    ) {
        tally.with_second(scheduled, |b| b.offered += 1);
        if tally.in_flight.load(Ordering::Relaxed) >= self.options.max_in_flight {
            tally.with_second(scheduled, |b| b.client_dropped += 1);
            return;
        }
        tally.in_flight.fetch_add(1, Ordering::Relaxed);
        let (tally, population) = (tally.clone(), self.population.clone());
        let (channel, options) = (self.channel.clone(), self.options.clone());
        logins.spawn(async move {
            let outcome = login(&channel, &population, &options, scheduled, &tally).await;
            let done = Instant::now();
            tally.with_second(scheduled, |b| match outcome {
                Outcome::Approved => {
                    b.approved += 1;
                    let _ = b.latency_us.record(
                        (done
                            .saturating_duration_since(scheduled)
                            .saturating_sub(options.think))
                        .as_micros()
                        .max(1) as u64,
                    );
                }
                Outcome::Refused => b.refused += 1,
                Outcome::Failed => b.failed += 1,
                Outcome::NoIdlePhone => b.client_dropped += 1,
            });
            if outcome == Outcome::Approved {
                Tally::record(
                    &tally.login_us,
                    done.saturating_duration_since(scheduled)
                        .saturating_sub(options.think),
                );
            }
            tally.in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn login(
    channel: &Channel,
    population: &Population,
    options: &Options,
    scheduled: Instant,
    tally: &Tally,
) -> Outcome {
    let Some(i) = population.take() else {
        return Outcome::NoIdlePhone;
    };
    let phone = population.phones[i].clone();
    let outcome = login_with(channel, &phone, options, scheduled, tally).await;
    population.give_back(i);
    outcome
}

async fn login_with(
    channel: &Channel,
    phone: &crate::population::Phone,
    options: &Options,
    scheduled: Instant,
    tally: &Tally,
) -> Outcome {
    let Ok(request) = authed(
        &options.api_key,
        pb::CreateChallengeRequest {
            user_id: phone.user.clone(),
            context: Some(types::ChallengeContext {
                client_name: "Load test bank".into(),
                action: types::Action::Login as i32,
                ..Default::default()
            }),
            options: Some(pb::ChallengeOptions {
                number_match: types::NumberMatchMode::Enter as i32,
                ..Default::default()
            }),
        },
    ) else {
        return Outcome::Failed;
    };
    let sent = Instant::now();
    let created = ChallengeServiceClient::new(channel.clone())
        .create_challenge(request)
        .await;
    let answered = sent.elapsed();
    let challenge = match created {
        Ok(r) => match r.into_inner().challenge {
            Some(c) => c,
            None => return Outcome::Failed,
        },
        // Shed for overload: what admission control answers.
        Err(s) if s.code() == Code::Unavailable => {
            Tally::record(&tally.refusal_us, answered);
            return Outcome::Refused;
        }
        Err(s) => {
            tally.fail(format!("CreateChallenge {:?}", s.code()));
            return Outcome::Failed;
        }
    };
    Tally::record(&tally.create_us, answered);
    tally.with_second(scheduled, |b| b.accepted += 1);

    // The push, skipping any left over from an earlier login of this phone.
    let mut pushes = phone.pushes.lock().await;
    let deadline = tokio::time::Instant::now() + options.push_timeout;
    loop {
        match tokio::time::timeout_at(deadline, pushes.recv()).await {
            Ok(Some(id)) if id == challenge.challenge_id => break,
            Ok(Some(_stale)) => continue,
            _ => {
                tally.fail("push not received in time".into());
                return Outcome::Failed;
            }
        }
    }
    drop(pushes);
    tokio::time::sleep(options.think).await;
    // What an app does when told to come back later: wait the pushback and
    // try again (a few times, within the push timeout).
    let details = match retrying(tally, || phone.device.details(&challenge.challenge_id)).await {
        Ok(d) => d,
        Err(e) => {
            tally.fail(format!("GetChallengeDetails {}", sim_code(&e)));
            return Outcome::Failed;
        }
    };
    let answer = Answer {
        decision: Decision::Approve,
        number: challenge.number_match_code.clone(),
    };
    if let Err(e) = retrying(tally, || phone.device.respond(&details, &answer)).await {
        tally.fail(format!("Respond {}", sim_code(&e)));
        return Outcome::Failed;
    }
    let verdict = retrying(tally, || async {
        let request = authed(
            &options.api_key,
            pb::GetChallengeRequest {
                challenge_id: challenge.challenge_id.clone(),
            },
        )
        .map_err(|e| sesame_device_sim::SimError::Protocol(e.to_string()))?;
        Ok(ChallengeServiceClient::new(channel.clone())
            .get_challenge(request)
            .await?
            .into_inner())
    })
    .await;
    match verdict {
        Ok(c) if c.status == types::ChallengeStatus::Approved as i32 => Outcome::Approved,
        Ok(c) => {
            tally.fail(format!("verdict {}", c.status));
            Outcome::Failed
        }
        Err(e) => {
            tally.fail(format!("GetChallenge {}", sim_code(&e)));
            Outcome::Failed
        }
    }
}

/// A call retried after the server's pushback when it answers `UNAVAILABLE`,
/// at most 3 times.
async fn retrying<T, F, Fut>(tally: &Tally, mut call: F) -> sesame_device_sim::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = sesame_device_sim::Result<T>>,
{
    let mut tries = 0;
    loop {
        match call().await {
            Err(sesame_device_sim::SimError::Rpc(s))
                if s.code() == Code::Unavailable && tries < 3 =>
            {
                tries += 1;
                tally.retries.fetch_add(1, Ordering::Relaxed);
                let pushback = s
                    .metadata()
                    .get("grpc-retry-pushback-ms")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(250)
                    .min(5_000);
                tokio::time::sleep(Duration::from_millis(pushback)).await;
            }
            other => return other,
        }
    }
}

fn sim_code(e: &sesame_device_sim::SimError) -> String {
    match e {
        sesame_device_sim::SimError::Rpc(s) => format!("{:?}", s.code()),
        other => other.to_string(),
    }
}

/// Per second: the server's resident memory (MiB) and the tester's progress.
async fn sample_resources(
    start: Instant,
    pid: Option<u32>,
    progress: Option<Arc<Tally>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<(u64, f64)> {
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return out,
        }
        let t = start.elapsed().as_secs();
        if let Some(rss) = pid.and_then(rss_mib) {
            out.push((t, rss));
        }
        if let (Some(tally), true) = (&progress, t > 0) {
            let last = (t - 1) as usize;
            if let Ok(secs) = tally.seconds.lock() {
                if let Some(b) = secs.get(last) {
                    let p99 = b.latency_us.value_at_quantile(0.99) as f64 / 1000.0;
                    eprintln!(
                        "[{t:>4}s] offered {:>6}/s  accepted {:>6}  refused {:>6}  failed {:>4}  approved {:>6}  p99 {p99:>8.1} ms  in flight {}",
                        b.offered, b.accepted, b.refused, b.failed, b.approved,
                        tally.in_flight.load(Ordering::Relaxed)
                    );
                }
            }
        }
    }
}

/// Resident memory of a process, MiB (Linux `/proc`).
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// User + system CPU time of a process, in clock ticks (Linux `/proc`).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn build_report(
    scenario: &str,
    phases: &[Phase],
    tally: &Tally,
    wall: Duration,
    rss: Vec<(u64, f64)>,
    server_ticks: Option<u64>,
    tester_ticks: Option<u64>,
) -> Report {
    let secs = tally.seconds.lock().map(|s| {
        s.iter()
            .enumerate()
            .map(|(t, b)| Second {
                t: t as u64,
                offered: b.offered,
                accepted: b.accepted,
                refused: b.refused,
                failed: b.failed,
                approved: b.approved,
                client_dropped: b.client_dropped,
                p50_ms: (b.approved > 0).then(|| ms(b.latency_us.value_at_quantile(0.50))),
                p99_ms: (b.approved > 0).then(|| ms(b.latency_us.value_at_quantile(0.99))),
                rss_mib: rss
                    .iter()
                    .find(|(s, _)| *s == t as u64 + 1)
                    .map(|(_, m)| *m),
            })
            .collect::<Vec<_>>()
    });
    let seconds = secs.unwrap_or_default();
    let sum = |f: fn(&Second) -> u64| seconds.iter().map(f).sum::<u64>();
    let quantiles = |h: &Mutex<Histogram<u64>>| {
        h.lock()
            .map(|h| {
                [0.5, 0.9, 0.99, 0.999, 1.0]
                    .map(|q| ms(h.value_at_quantile(q)))
                    .to_vec()
            })
            .unwrap_or_default()
    };
    let approved = sum(|s| s.approved);
    // Linux reports CPU time in clock ticks of 10 ms (USER_HZ = 100).
    let per_login = |ticks: Option<u64>| {
        ticks
            .filter(|_| approved > 0)
            .map(|t| t as f64 * 10.0 / approved as f64)
    };
    Report {
        scenario: scenario.to_owned(),
        phases: phases.iter().map(|p| (p.rate, p.secs)).collect(),
        wall_secs: wall.as_secs_f64(),
        offered: sum(|s| s.offered),
        accepted: sum(|s| s.accepted),
        refused: sum(|s| s.refused),
        failed: sum(|s| s.failed),
        approved,
        client_dropped: sum(|s| s.client_dropped),
        login_ms: quantiles(&tally.login_us),
        create_ms: quantiles(&tally.create_us),
        refusal_ms: quantiles(&tally.refusal_us),
        failures: tally.failures.lock().map(|f| f.clone()).unwrap_or_default(),
        retries_after_pushback: tally.retries.load(Ordering::Relaxed) as u64,
        server_cpu_ms_per_login: per_login(server_ticks),
        tester_cpu_ms_per_login: per_login(tester_ticks),
        max_rss_mib: rss
            .iter()
            .map(|(_, m)| *m)
            .fold(None, |a: Option<f64>, m| Some(a.map_or(m, |a| a.max(m)))),
        seconds,
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}
