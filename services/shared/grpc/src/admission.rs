//! Admission control: under overload, shed early and by priority instead of
//! queueing, so the logins a server accepts keep their latency and the rest
//! hear "come back later" in microseconds.
//!
//! - **Priorities** by method: finishing a started login first (the phone's
//!   answer and details, verdict reads and watches, polling), then new
//!   challenges, then enrollment, then everything else ([`Priority::of`]).
//!   Health checks, reflection and the push simulator (a stand-in for
//!   APNs/FCM) are never shed.
//! - **One adaptive concurrency limit** per process, Gradient2-style (after
//!   Netflix's concurrency-limits): the limit follows the ratio of the
//!   long-term to the recent latency, so it shrinks as soon as requests start
//!   to queue inside the server and grows back when they do not, and a
//!   latency ceiling ([`AdmissionConfig::target_latency`]) above which it
//!   shrinks whatever the long-term latency has become. A priority may use
//!   only part of it: enrollment up to 50 %, new challenges up to 85 %, so
//!   lower priorities are shed first. Answers to started logins are bounded
//!   by the hard ceiling (`max_limit`) only: the challenges admitted already
//!   bound them, and shedding one makes an accepted login wait out a
//!   pushback.
//! - **No queue**: a request over its share is refused at once with
//!   `UNAVAILABLE` and a jittered `grpc-retry-pushback-ms`.
//! - **Deadlines**: a request whose `grpc-timeout` leaves less than
//!   [`AdmissionConfig::min_deadline`] is refused with `DEADLINE_EXCEEDED`
//!   before any work.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// `sesame_admission_shed_total{priority, reason}`: requests refused before any work.
pub const SHED: &str = "sesame_admission_shed_total";
/// `sesame_admission_limit`: the current adaptive concurrency limit.
pub const LIMIT: &str = "sesame_admission_limit";
/// `sesame_admission_in_flight`: admitted requests not answered yet.
pub const IN_FLIGHT: &str = "sesame_admission_in_flight";

pub fn describe() {
    metrics::describe_counter!(
        SHED,
        "requests refused by admission control, by priority and reason (overload, deadline)"
    );
    metrics::describe_gauge!(LIMIT, "adaptive concurrency limit of this process");
    metrics::describe_gauge!(IN_FLIGHT, "requests admitted and not yet answered");
}

/// Who goes first when the server is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// Never shed: health checks, reflection.
    Exempt,
    /// Finishing a started login: answers, details, verdict reads.
    Critical,
    /// New challenges.
    Normal,
    /// Enrollment and device management.
    Low,
    /// Anything else (rate-limit queries, unknown paths).
    Background,
}

impl Priority {
    pub fn of(path: &str) -> Priority {
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let (service, method) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        match (service, method) {
            (s, _) if s.starts_with("grpc.") => Priority::Exempt,
            ("sesame.device.v1.DeviceService", m) => match m {
                "Respond" | "GetChallengeDetails" | "ListPendingChallenges" => Priority::Critical,
                _ => Priority::Low,
            },
            ("sesame.tenant.v1.ChallengeService", m) => match m {
                "CreateChallenge" => Priority::Normal,
                _ => Priority::Critical,
            },
            ("sesame.tenant.v1.EnrollmentService", _) => Priority::Low,
            // The simulator stands in for APNs/FCM, outside Sesame: its
            // traffic is not Sesame's load to shed.
            ("sesame.simulator.v1.PushInbox" | "sesame.simulator.v1.PushGateway", _) => {
                Priority::Exempt
            }
            _ => Priority::Background,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Priority::Exempt => "exempt",
            Priority::Critical => "critical",
            Priority::Normal => "normal",
            Priority::Low => "low",
            Priority::Background => "background",
        }
    }

    /// The part of the limit this priority may fill (answers: see
    /// `try_acquire`, they answer to `max_limit`).
    fn share(self) -> f64 {
        match self {
            Priority::Exempt => 1.0,
            Priority::Critical => 1.25,
            Priority::Normal => 0.85,
            Priority::Low => 0.5,
            Priority::Background => 0.3,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    pub enabled: bool,
    pub initial_limit: usize,
    pub min_limit: usize,
    pub max_limit: usize,
    /// How much slower than the long-term latency recent requests may be
    /// before the limit shrinks.
    pub tolerance: f64,
    /// A ceiling on the recent mean latency of admitted calls: above it the
    /// limit shrinks (by up to half per window) and does not grow, whatever
    /// the long-term latency has become. Zero: no ceiling, Gradient2 alone.
    pub target_latency: Duration,
    /// A request with less time left than this is refused before any work.
    pub min_deadline: Duration,
    /// Pushback offered to refused callers: uniformly between these.
    pub pushback_min: Duration,
    pub pushback_max: Duration,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            enabled: true,
            // A server, not one client: room for a burst before anything is
            // learned; the limit comes down as soon as latency says so.
            initial_limit: 256,
            min_limit: 32,
            max_limit: 4096,
            tolerance: 2.0,
            // Tuned on the 2-core development machine with the embedded
            // store (docs/performance.md): admitted calls average 1-3 ms
            // there until it saturates. Raise it where every call pays a
            // network round trip to storage (ScyllaDB: 10-20 ms).
            target_latency: Duration::from_millis(3),
            min_deadline: Duration::from_millis(5),
            pushback_min: Duration::from_millis(250),
            pushback_max: Duration::from_millis(2000),
        }
    }
}

/// The adaptive limit: Gradient2. Every window of samples, the limit
/// becomes `limit * clamp(tolerance * long / short, 0.5, 1) + sqrt(limit)`
/// (smoothed), where `short` is the window's mean latency and `long` a slow
/// moving average of it: while requests do not queue the two are equal and
/// the limit grows by its square root per window; when they queue, `short`
/// rises first and the limit falls.
pub struct Limiter {
    config: AdmissionConfig,
    in_flight: AtomicUsize,
    /// The limit, as f64 bits (read on every request without a lock).
    limit: AtomicU64,
    /// Calls shed since the window began: the limit was binding.
    shed_in_window: AtomicUsize,
    window: Mutex<Window>,
}

struct Window {
    started: Instant,
    samples: u32,
    sum_us: f64,
    long_us: f64,
    /// The lowest window mean seen: what calls cost here when nothing
    /// queues (a network round trip to storage or brokers included).
    floor_us: f64,
    max_in_flight: usize,
}

/// A window closes after this many samples, or after this long once it has
/// at least [`MIN_WINDOW_SAMPLES`] (a handful of calls says nothing: one
/// slow call would move the limit).
const WINDOW_SAMPLES: u32 = 200;
const WINDOW_TIME: Duration = Duration::from_millis(250);
const MIN_WINDOW_SAMPLES: u32 = 20;
/// The latency ceiling is at least this multiple of the lowest window mean.
const FLOOR_FACTOR: f64 = 3.0;

impl Limiter {
    pub fn new(mut config: AdmissionConfig) -> Limiter {
        // Sane bounds whatever the caller passed (the server validates its
        // configuration; this keeps the arithmetic total).
        config.min_limit = config.min_limit.max(1);
        config.max_limit = config.max_limit.max(config.min_limit);
        if !config.tolerance.is_finite() || config.tolerance < 1.0 {
            config.tolerance = 1.0;
        }
        let initial = config
            .initial_limit
            .clamp(config.min_limit.max(1), config.max_limit.max(1)) as f64;
        metrics::gauge!(LIMIT).set(initial);
        Limiter {
            config,
            in_flight: AtomicUsize::new(0),
            limit: AtomicU64::new(initial.to_bits()),
            shed_in_window: AtomicUsize::new(0),
            window: Mutex::new(Window {
                started: Instant::now(),
                samples: 0,
                sum_us: 0.0,
                long_us: 0.0,
                floor_us: f64::INFINITY,
                max_in_flight: 0,
            }),
        }
    }

    pub fn limit(&self) -> f64 {
        f64::from_bits(self.limit.load(Ordering::Relaxed))
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Admits a request of `priority` now, or refuses it (no waiting).
    /// Exempt calls always pass and take no slot.
    pub fn try_acquire(self: &Arc<Self>, priority: Priority) -> Option<Permit> {
        if priority == Priority::Exempt {
            return Some(Permit {
                limiter: self.clone(),
                started: Instant::now(),
                in_flight_at_start: 0,
                counted: false,
            });
        }
        let limit = self.limit();
        // Answers to started logins are the work admitted challenges
        // already committed to (a handful of calls each): they are bounded
        // by how many challenges got in, and shedding them turns a login
        // the server accepted into one that waits out a pushback. So they
        // answer to the hard ceiling, not to the adaptive limit.
        let cap = if priority == Priority::Critical {
            self.config.max_limit.max(1)
        } else {
            ((limit * priority.share()).floor() as usize).max(1)
        };
        let mut current = self.in_flight.load(Ordering::Relaxed);
        loop {
            if current >= cap {
                self.shed_in_window.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        metrics::gauge!(IN_FLIGHT).set((current + 1) as f64);
        Some(Permit {
            limiter: self.clone(),
            started: Instant::now(),
            in_flight_at_start: current + 1,
            counted: true,
        })
    }

    fn release(&self, latency: Duration, in_flight_at_start: usize, counted: bool) {
        if !counted {
            return;
        }
        let now_in_flight = self
            .in_flight
            .fetch_sub(1, Ordering::AcqRel)
            .saturating_sub(1);
        metrics::gauge!(IN_FLIGHT).set(now_in_flight as f64);
        let Ok(mut w) = self.window.lock() else {
            return;
        };
        w.samples += 1;
        w.sum_us += latency.as_secs_f64() * 1e6;
        w.max_in_flight = w.max_in_flight.max(in_flight_at_start);
        let full = w.samples >= WINDOW_SAMPLES
            || (w.samples >= MIN_WINDOW_SAMPLES && w.started.elapsed() >= WINDOW_TIME);
        if !full {
            return;
        }
        let short = w.sum_us / f64::from(w.samples.max(1));
        // The long-term latency: a slow average; it decays faster when the
        // recent latency has been far below it for a while (a load drop),
        // so the limit does not stay inflated.
        w.long_us = if w.long_us == 0.0 {
            short
        } else if w.long_us / short > 2.0 {
            w.long_us * 0.95
        } else {
            // About 50 windows (10,000 samples) to accept a new latency as
            // normal: a surge is answered by shedding, not by getting used to it.
            w.long_us * 0.98 + short * 0.02
        };
        let limit = self.limit();
        let gradient = (self.config.tolerance * w.long_us / short.max(1.0)).clamp(0.5, 1.0);
        // Over the latency ceiling: shrink in proportion, never grow. A
        // surge that lasts long enough for the long-term average to get used
        // to queueing is still answered by shedding.
        // The ceiling is never under FLOOR_FACTOR times the best this
        // process has done: where every call pays a round trip (ScyllaDB,
        // Kafka) the configured ceiling would otherwise bind at no load.
        w.floor_us = w.floor_us.min(short);
        let target_us = (self.config.target_latency.as_secs_f64() * 1e6).max(
            if self.config.target_latency.is_zero() {
                0.0
            } else {
                FLOOR_FACTOR * w.floor_us
            },
        );
        let over_target = target_us > 0.0 && short > target_us;
        let next = if over_target {
            limit * gradient.min((target_us / short).clamp(0.5, 1.0))
        } else {
            limit * gradient + limit.sqrt()
        };
        // The limit moves only while it binds: some call was shed, or calls
        // in flight reached half of it. Far below it, nothing queues behind
        // the limit, and a quiet server learns nothing about its capacity
        // (nor does a slow one: latency over the ceiling with little in
        // flight is the storage's, not overload, and shedding cures nothing).
        let shed = self.shed_in_window.swap(0, Ordering::Relaxed) > 0;
        let binding = shed || (w.max_in_flight as f64) >= limit / 2.0;
        let next = if binding { next } else { limit };
        let smoothed = (limit * 0.8 + next * 0.2).clamp(
            self.config.min_limit.max(1) as f64,
            self.config.max_limit.max(1) as f64,
        );
        self.limit.store(smoothed.to_bits(), Ordering::Relaxed);
        metrics::gauge!(LIMIT).set(smoothed);
        w.samples = 0;
        w.sum_us = 0.0;
        w.max_in_flight = 0;
        w.started = Instant::now();
    }
}

/// One admitted request; its latency is a sample when it ends.
pub struct Permit {
    limiter: Arc<Limiter>,
    started: Instant,
    in_flight_at_start: usize,
    /// Holds a slot (every priority but exempt).
    counted: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limiter.release(
            self.started.elapsed(),
            self.in_flight_at_start,
            self.counted,
        );
    }
}

/// The remaining time a `grpc-timeout` header gives (`<digits><unit>`).
pub fn grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn refusal(code: tonic::Code, message: String, pushback: Option<Duration>) -> tonic::Status {
    let mut md = tonic::metadata::MetadataMap::new();
    if let Some(p) = pushback {
        if let Ok(v) = p.as_millis().to_string().parse() {
            md.insert("grpc-retry-pushback-ms", v);
        }
    }
    tonic::Status::with_metadata(code, message, md)
}

/// The tower layer for the tonic server.
#[derive(Clone)]
pub struct AdmissionLayer {
    limiter: Option<Arc<Limiter>>,
    config: AdmissionConfig,
}

impl AdmissionLayer {
    pub fn new(config: AdmissionConfig) -> AdmissionLayer {
        AdmissionLayer {
            limiter: config
                .enabled
                .then(|| Arc::new(Limiter::new(config.clone()))),
            config,
        }
    }

    pub fn limiter(&self) -> Option<Arc<Limiter>> {
        self.limiter.clone()
    }
}

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            limiter: self.limiter.clone(),
            config: self.config.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    limiter: Option<Arc<Limiter>>,
    config: AdmissionConfig,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Admission<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let left = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(grpc_timeout);
        // The handler runs with the caller's deadline in scope, so storage
        // backends can bound their own server-side work by it.
        let deadline = left.map(|d| std::time::Instant::now() + d);
        let Some(limiter) = &self.limiter else {
            return Box::pin(with_deadline(deadline, self.inner.call(req)));
        };
        let priority = Priority::of(req.uri().path());
        if priority != Priority::Exempt && left.is_some_and(|d| d < self.config.min_deadline) {
            metrics::counter!(SHED, "priority" => priority.label(), "reason" => "deadline")
                .increment(1);
            let status = refusal(
                tonic::Code::DeadlineExceeded,
                format!(
                    "the call's deadline leaves less than {} ms: not started",
                    self.config.min_deadline.as_millis()
                ),
                None,
            );
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let Some(permit) = limiter.try_acquire(priority) else {
            metrics::counter!(SHED, "priority" => priority.label(), "reason" => "overload")
                .increment(1);
            let (lo, hi) = (
                self.config.pushback_min.as_millis() as u64,
                self.config.pushback_max.as_millis().max(1) as u64,
            );
            let pushback = Duration::from_millis(lo + rand_below(hi.saturating_sub(lo).max(1)));
            let status = refusal(
                tonic::Code::Unavailable,
                format!(
                    "server overloaded (a {} call, shed before any work): retry in {} ms",
                    priority.label(),
                    pushback.as_millis()
                ),
                Some(pushback),
            );
            return Box::pin(async move { Ok(status.into_http()) });
        };
        let fut = with_deadline(deadline, self.inner.call(req));
        Box::pin(async move {
            let r = fut.await;
            drop(permit);
            r
        })
    }
}

async fn with_deadline<F: Future>(deadline: Option<std::time::Instant>, fut: F) -> F::Output {
    match deadline {
        Some(d) => sesame_storage::deadline::scope(d, fut).await,
        None => fut.await,
    }
}

/// A cheap jitter source (not for secrets): the low bits of the clock.
fn rand_below(n: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    // Mix so that calls in the same microsecond still differ a little.
    let x = nanos.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (nanos >> 7);
    x % n.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_by_method() {
        assert_eq!(
            Priority::of("/sesame.device.v1.DeviceService/Respond"),
            Priority::Critical
        );
        assert_eq!(
            Priority::of("/sesame.tenant.v1.ChallengeService/WatchChallenge"),
            Priority::Critical
        );
        assert_eq!(
            Priority::of("/sesame.tenant.v1.ChallengeService/CreateChallenge"),
            Priority::Normal
        );
        assert_eq!(
            Priority::of("/sesame.device.v1.DeviceService/CompleteEnrollment"),
            Priority::Low
        );
        assert_eq!(
            Priority::of("/sesame.tenant.v1.EnrollmentService/BeginEnrollment"),
            Priority::Low
        );
        assert_eq!(
            Priority::of("/grpc.health.v1.Health/Check"),
            Priority::Exempt
        );
        assert_eq!(Priority::of("/x/y"), Priority::Background);
    }

    #[test]
    fn lower_priorities_are_shed_first() {
        let l = Arc::new(Limiter::new(AdmissionConfig {
            initial_limit: 20,
            min_limit: 20,
            max_limit: 25,
            ..Default::default()
        }));
        // (The limit starts at 20: `max_limit` is only the answers' ceiling.)
        // Enrollment may fill half of the limit.
        let low: Vec<_> = (0..20)
            .filter_map(|_| l.try_acquire(Priority::Low))
            .collect();
        assert_eq!(low.len(), 10);
        // New challenges fill up to 85 %.
        let normal: Vec<_> = (0..20)
            .filter_map(|_| l.try_acquire(Priority::Normal))
            .collect();
        assert_eq!(normal.len(), 7);
        // Answers to started logins are bounded by the hard ceiling, not by
        // the adaptive limit; exempt calls are never refused.
        let critical: Vec<_> = (0..20)
            .filter_map(|_| l.try_acquire(Priority::Critical))
            .collect();
        assert_eq!(critical.len(), 8);
        assert!(l.try_acquire(Priority::Normal).is_none());
        let exempt = l.try_acquire(Priority::Exempt);
        assert!(exempt.is_some());
        assert!(l.try_acquire(Priority::Critical).is_none());
        drop(exempt);
        drop(low);
        assert_eq!(l.in_flight(), 15);
        assert!(l.try_acquire(Priority::Low).is_none(), "still over half");
        drop(normal);
        drop(critical);
        assert!(l.try_acquire(Priority::Low).is_some());
    }

    fn feed(l: &Arc<Limiter>, n: usize, latency: Duration, concurrent: usize) {
        // Permits are released by hand with a chosen latency (and forgotten,
        // so that their drop does not release them a second time).
        for _ in 0..n {
            let held: Vec<_> = (0..concurrent)
                .filter_map(|_| l.try_acquire(Priority::Critical))
                .collect();
            for p in held {
                l.release(latency, concurrent, true);
                std::mem::forget(p);
            }
        }
    }

    #[test]
    fn the_limit_grows_while_latency_holds_and_shrinks_when_it_queues() {
        let l = Arc::new(Limiter::new(AdmissionConfig {
            initial_limit: 64,
            min_limit: 32,
            ..Default::default()
        }));
        let start = l.limit();
        // Busy (in flight near the limit) at a steady 2 ms: grows.
        feed(&l, 200, Duration::from_millis(2), 60);
        let grown = l.limit();
        assert!(grown > start, "{start} -> {grown}");
        // Latency jumps tenfold and more calls are in flight (they queue
        // inside): shrinks within a few windows.
        feed(&l, 20, Duration::from_millis(20), 90);
        let shrunk = l.limit();
        assert!(shrunk < grown * 0.8, "{grown} -> {shrunk}");
        assert!(shrunk >= 32.0, "never under the minimum");
    }

    #[test]
    fn over_the_latency_ceiling_the_limit_shrinks_even_once_used_to_it() {
        let mk = |target| {
            Arc::new(Limiter::new(AdmissionConfig {
                initial_limit: 256,
                min_limit: 16,
                target_latency: target,
                ..Default::default()
            }))
        };
        let (gradient_only, ceiling) = (mk(Duration::ZERO), mk(Duration::from_millis(10)));
        // Unloaded calls cost 2 ms here; then a long steady 30 ms, calls
        // near the limit: Gradient2 gets used to it (recent equals
        // long-term) and keeps growing; with a 10 ms ceiling the limit comes
        // down to its floor instead.
        for l in [&gradient_only, &ceiling] {
            feed(l, 20, Duration::from_millis(2), 10);
            feed(l, 400, Duration::from_millis(30), 200);
        }
        assert!(gradient_only.limit() >= 256.0, "{}", gradient_only.limit());
        assert!(ceiling.limit() < 64.0, "{}", ceiling.limit());
        assert!(ceiling.limit() >= 16.0, "never under the minimum");
        // Back under the ceiling and busy: it grows again.
        let low = ceiling.limit();
        feed(&ceiling, 400, Duration::from_millis(2), (low as usize) - 1);
        assert!(ceiling.limit() > low, "{low} -> {}", ceiling.limit());
    }

    #[test]
    fn the_ceiling_rises_to_three_times_what_calls_cost_here() {
        // Calls that cost 8 ms even unloaded (storage across the network):
        // a 3 ms ceiling would bind at once; the effective one is 24 ms.
        let l = Arc::new(Limiter::new(AdmissionConfig {
            initial_limit: 100,
            min_limit: 16,
            target_latency: Duration::from_millis(3),
            ..Default::default()
        }));
        feed(&l, 400, Duration::from_millis(8), 60);
        let steady = l.limit();
        assert!(steady >= 100.0, "shrank at its normal latency: {steady}");
        // Queueing to 40 ms (5x): over 24 ms, it comes down.
        feed(&l, 400, Duration::from_millis(40), 90);
        assert!(l.limit() < steady * 0.5, "{steady} -> {}", l.limit());
    }

    #[test]
    fn a_quiet_server_keeps_its_limit() {
        let l = Arc::new(Limiter::new(AdmissionConfig::default()));
        let start = l.limit();
        // Light traffic, some calls slow: the limit never binds, so it
        // neither grows nor shrinks.
        for i in 0..5000u64 {
            let latency = Duration::from_micros(if i % 7 == 0 { 20_000 } else { 1_000 });
            feed(&l, 1, latency, 1);
        }
        assert_eq!(l.limit(), start);
    }

    #[test]
    fn shedding_lets_a_small_share_grow_the_limit() {
        // Only enrollment (half the limit) is busy: it can never reach half
        // in flight by itself, but its refusals show the limit binds.
        let l = Arc::new(Limiter::new(AdmissionConfig {
            initial_limit: 40,
            min_limit: 32,
            ..Default::default()
        }));
        for _ in 0..400 {
            let held: Vec<_> = (0..30)
                .filter_map(|_| l.try_acquire(Priority::Low))
                .collect();
            let n = held.len();
            for p in held {
                l.release(Duration::from_millis(2), n, true);
                std::mem::forget(p);
            }
        }
        assert!(l.limit() > 40.0, "{}", l.limit());
    }

    /// An inner service whose calls finish only when told to.
    #[derive(Clone)]
    struct Gate(Arc<tokio::sync::Semaphore>);

    impl tower::Service<http::Request<()>> for Gate {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let gate = self.0.clone();
            Box::pin(async move {
                let _ = gate.acquire().await.map(|p| p.forget());
                Ok(http::Response::new(tonic::body::Body::empty()))
            })
        }
    }

    fn request(path: &str, timeout: Option<&str>) -> http::Request<()> {
        let mut b = http::Request::builder().uri(format!("http://x{path}"));
        if let Some(t) = timeout {
            b = b.header("grpc-timeout", t);
        }
        b.body(()).expect("request")
    }

    fn status(r: &http::Response<tonic::body::Body>) -> Option<&str> {
        r.headers().get("grpc-status").and_then(|v| v.to_str().ok())
    }

    #[tokio::test]
    async fn over_the_limit_is_refused_at_once_with_pushback_and_health_still_answers() {
        use tower::{Layer, Service};
        let gate = Gate(Arc::new(tokio::sync::Semaphore::new(0)));
        let layer = AdmissionLayer::new(AdmissionConfig {
            initial_limit: 4,
            min_limit: 4,
            max_limit: 4,
            ..Default::default()
        });
        let mut svc = layer.layer(gate.clone());
        const ENROLL: &str = "/sesame.tenant.v1.EnrollmentService/BeginEnrollment";
        // Enrollment may hold half of the limit: two calls wait inside...
        let first = tokio::spawn(svc.call(request(ENROLL, None)));
        let second = tokio::spawn(svc.call(request(ENROLL, None)));
        tokio::task::yield_now().await;
        // ...the third is refused without waiting.
        let refused = svc.call(request(ENROLL, None)).await.expect("response");
        assert_eq!(status(&refused), Some("14"), "UNAVAILABLE");
        let pushback: u64 = refused
            .headers()
            .get("grpc-retry-pushback-ms")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("pushback header");
        assert!((250..=2000).contains(&pushback), "{pushback}");
        // An answer to a live challenge still gets in, and health always does.
        let answer =
            tokio::spawn(svc.call(request("/sesame.device.v1.DeviceService/Respond", None)));
        let health = tokio::spawn(svc.call(request("/grpc.health.v1.Health/Check", None)));
        tokio::task::yield_now().await;
        // Two enrollments and the answer hold slots; health takes none.
        assert_eq!(layer.limiter().expect("on").in_flight(), 3);
        gate.0.add_permits(4);
        for call in [first, second, answer, health] {
            let r = call.await.expect("task").expect("response");
            assert_eq!(status(&r), None, "served");
        }
        assert_eq!(layer.limiter().expect("on").in_flight(), 0);
    }

    /// An inner service that answers with the deadline its handler sees.
    #[derive(Clone)]
    struct SeesDeadline;

    impl tower::Service<http::Request<()>> for SeesDeadline {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            Box::pin(async move {
                let left = sesame_storage::deadline::remaining()
                    .map(|d| d.as_millis().to_string())
                    .unwrap_or_else(|| "none".into());
                let mut r = http::Response::new(tonic::body::Body::empty());
                r.headers_mut()
                    .insert("x-left-ms", left.parse().expect("header value"));
                Ok(r)
            })
        }
    }

    #[tokio::test]
    async fn the_handler_runs_within_the_callers_deadline() {
        use tower::{Layer, Service};
        const GET: &str = "/sesame.tenant.v1.ChallengeService/GetChallenge";
        let left = |r: &http::Response<tonic::body::Body>| {
            r.headers()
                .get("x-left-ms")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .expect("x-left-ms")
        };
        for enabled in [true, false] {
            let mut svc = AdmissionLayer::new(AdmissionConfig {
                enabled,
                ..Default::default()
            })
            .layer(SeesDeadline);
            let r = svc
                .call(request(GET, Some("300m")))
                .await
                .expect("response");
            let ms: u64 = left(&r).parse().expect("a number");
            assert!(
                (250..=300).contains(&ms),
                "{ms} ms left (admission {enabled})"
            );
            let r = svc.call(request(GET, None)).await.expect("response");
            assert_eq!(left(&r), "none", "no grpc-timeout, no deadline");
        }
    }

    #[tokio::test]
    async fn a_call_without_time_left_is_refused_before_any_work() {
        use tower::{Layer, Service};
        let gate = Gate(Arc::new(tokio::sync::Semaphore::new(0)));
        let mut svc = AdmissionLayer::new(AdmissionConfig::default()).layer(gate);
        const CREATE: &str = "/sesame.tenant.v1.ChallengeService/CreateChallenge";
        let r = svc
            .call(request(CREATE, Some("2m")))
            .await
            .expect("response");
        assert_eq!(status(&r), Some("4"), "DEADLINE_EXCEEDED");
        // Enough time left: admitted (and waits on the gate).
        let admitted = tokio::spawn(svc.call(request(CREATE, Some("50m"))));
        tokio::task::yield_now().await;
        assert!(!admitted.is_finished());
        admitted.abort();
    }

    #[test]
    fn grpc_timeout_header() {
        assert_eq!(grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(grpc_timeout("250u"), Some(Duration::from_micros(250)));
        assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        for bad in ["", "m", "10", "10x", "123456789m", "-1m", "1.5S"] {
            assert_eq!(grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
