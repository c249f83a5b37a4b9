//! `sesame-loadtest`: whole logins against a Sesame deployment, open loop.
//! See the crate documentation (`lib.rs`) and `loadtest/README.md`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sesame_loadtest::{Engine, Options, Phase, Population, Report};

#[derive(Parser)]
#[command(
    name = "sesame-loadtest",
    about = "Open-loop load of whole Sesame logins with simulated phones"
)]
struct Cli {
    /// The Sesame gRPC endpoint (tenant API, device API and the simulator's inbox).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    server: String,
    /// The phones' push inbox when pushes go through APNs/FCM (`sesame
    /// simulate-push` serves it); default: the server's built-in simulator.
    #[arg(long)]
    inbox: Option<String>,
    /// Tenant API key; default: `<data-dir>/dev-tenant.key`.
    #[arg(long, env = "SESAME_API_KEY")]
    api_key: Option<String>,
    #[arg(long, default_value = "sesame-data")]
    data_dir: PathBuf,
    /// Simulated phones (one user each); a phone does one login at a time.
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Milliseconds between the push and the approval (not counted in latency).
    #[arg(long, default_value_t = 0)]
    think_ms: u64,
    #[arg(long, default_value_t = 10_000)]
    push_timeout_ms: u64,
    #[arg(long, default_value_t = 20_000)]
    max_in_flight: usize,
    /// The server's pid, when it runs on this machine: memory and CPU per login.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write the result as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the chart (SVG) here.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Clone, Copy)]
enum Scenario {
    /// One rate for a while.
    Steady {
        #[arg(long)]
        rate: f64,
        #[arg(long, default_value_t = 30)]
        secs: u64,
    },
    /// Baseline, then `factor` times the rate, then baseline again.
    Surge {
        #[arg(long)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        factor: f64,
        #[arg(long, default_value_t = 20)]
        before: u64,
        #[arg(long, default_value_t = 60)]
        during: u64,
        #[arg(long, default_value_t = 20)]
        after: u64,
    },
    /// Normal logins at `rate` while an attacker asks `attack_rate` times a
    /// second for challenges to one user's phone (and never answers).
    PushBomb {
        #[arg(long)]
        rate: f64,
        #[arg(long, default_value_t = 60)]
        secs: u64,
        #[arg(long, default_value_t = 50.0)]
        attack_rate: f64,
    },
    /// Normal logins at `rate` while new phones enroll at `enroll_rate` a
    /// second (a launch-day wave of sign-ups).
    EnrollStorm {
        #[arg(long)]
        rate: f64,
        #[arg(long, default_value_t = 60)]
        secs: u64,
        #[arg(long, default_value_t = 500.0)]
        enroll_rate: f64,
    },
    /// Steps up the rate until p99 passes the target (or logins fail or are
    /// refused above 1 %): the capacity is the last step that passed.
    Ramp {
        #[arg(long, default_value_t = 100.0)]
        start: f64,
        #[arg(long, default_value_t = 1.25)]
        step_factor: f64,
        #[arg(long, default_value_t = 10)]
        step_secs: u64,
        #[arg(long, default_value_t = 50.0)]
        target_p99_ms: f64,
        #[arg(long, default_value_t = 100_000.0)]
        max_rate: f64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let api_key = match &cli.api_key {
        Some(k) => k.trim().to_owned(),
        None => {
            let path = cli.data_dir.join("dev-tenant.key");
            std::fs::read_to_string(&path)
                .with_context(|| format!("no --api-key and cannot read {}", path.display()))?
                .trim()
                .to_owned()
        }
    };
    anyhow::ensure!(cli.users >= 1, "--users must be at least 1");
    let prefix = format!("lt{}", std::process::id());
    eprintln!("enrolling {} simulated phones...", cli.users);
    let inbox = cli.inbox.clone().unwrap_or_else(|| cli.server.clone());
    let population =
        Population::enroll_at(&cli.server, &inbox, &api_key, &prefix, cli.users, 32).await?;
    let channel = sesame_device_sim::connect(&cli.server).await?;
    let engine = Engine::new(
        channel,
        population,
        Options {
            api_key,
            server_url: cli.server.clone(),
            think: Duration::from_millis(cli.think_ms),
            push_timeout: Duration::from_millis(cli.push_timeout_ms),
            max_in_flight: cli.max_in_flight.max(1),
            server_pid: cli.server_pid,
            progress: !cli.quiet,
        },
    );
    let (report, extra) = match cli.scenario {
        Scenario::Steady { rate, secs } => {
            check_rate(rate)?;
            (engine.run("steady", &[Phase { rate, secs }]).await, None)
        }
        Scenario::Surge {
            rate,
            factor,
            before,
            during,
            after,
        } => {
            check_rate(rate)?;
            check_rate(rate * factor)?;
            let phases = [
                Phase { rate, secs: before },
                Phase {
                    rate: rate * factor,
                    secs: during,
                },
                Phase { rate, secs: after },
            ];
            (engine.run("surge", &phases).await, None)
        }
        Scenario::PushBomb {
            rate,
            secs,
            attack_rate,
        } => {
            check_rate(rate)?;
            check_rate(attack_rate)?;
            let (r, bomb) = engine.push_bomb(&[Phase { rate, secs }], attack_rate).await;
            println!(
                "push-bomb: the attacker asked {} times; {} accepted, {} refused by the guard; the phone received {} pushes",
                bomb["attack_sent"], bomb["attack_accepted"], bomb["attack_refused_by_guard"], bomb["victim_pushes_received"]
            );
            (r, Some(("push_bomb", bomb)))
        }
        Scenario::EnrollStorm {
            rate,
            secs,
            enroll_rate,
        } => {
            check_rate(rate)?;
            check_rate(enroll_rate)?;
            let (r, storm) = engine
                .enroll_storm(&[Phase { rate, secs }], enroll_rate)
                .await;
            println!(
                "enroll-storm: {} enrollments offered, {} enrolled ({:.0}/s), {} refused; enroll p50 {} / p99 {} ms",
                storm["counts"]["offered"].as_u64().unwrap_or(0),
                storm["counts"]["enrolled"].as_u64().unwrap_or(0),
                storm["enrolled_per_sec"].as_f64().unwrap_or(0.0),
                storm["counts"]["refused"].as_u64().unwrap_or(0),
                storm["enroll_ms"]["p50"],
                storm["enroll_ms"]["p99"]
            );
            (r, Some(("enroll_storm", storm)))
        }
        Scenario::Ramp {
            start,
            step_factor,
            step_secs,
            target_p99_ms,
            max_rate,
        } => {
            check_rate(start)?;
            anyhow::ensure!(step_factor > 1.0, "--step-factor must be above 1");
            let (r, extra) = ramp(
                &engine,
                start,
                step_factor,
                step_secs,
                target_p99_ms,
                max_rate,
            )
            .await;
            (r, extra.map(|e| ("ramp", e)))
        }
    };
    println!("{}", report.summary());
    if let Some(path) = &cli.out {
        let mut json = serde_json::to_value(&report)?;
        if let (Some((name, extra)), Some(obj)) = (extra, json.as_object_mut()) {
            obj.insert(name.into(), extra);
        }
        std::fs::write(path, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &cli.chart {
        std::fs::write(path, report.svg())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn check_rate(rate: f64) -> anyhow::Result<()> {
    anyhow::ensure!(
        rate.is_finite() && (0.01..=1_000_000.0).contains(&rate),
        "rate {rate}: 0.01-1000000 logins per second"
    );
    Ok(())
}

async fn ramp(
    engine: &Engine,
    start: f64,
    factor: f64,
    step_secs: u64,
    target_p99_ms: f64,
    max_rate: f64,
) -> (Report, Option<serde_json::Value>) {
    let mut steps = Vec::new();
    let mut rate = start;
    let (mut merged, mut passed) =
        ramp_step(engine, rate, step_secs, target_p99_ms, &mut steps).await;
    merged.scenario = "ramp".into();
    let mut capacity = None;
    while passed {
        capacity = Some(rate);
        rate *= factor;
        if rate > max_rate {
            break;
        }
        let (r, p) = ramp_step(engine, rate, step_secs, target_p99_ms, &mut steps).await;
        merged.append(r);
        passed = p;
    }
    match capacity {
        Some(c) => println!("capacity: {c:.0} logins/s with p99 under {target_p99_ms} ms"),
        None => println!("capacity: below {start:.0} logins/s (the first step did not pass)"),
    }
    let extra = serde_json::json!({
        "target_p99_ms": target_p99_ms, "capacity_per_sec": capacity, "steps": steps,
    });
    (merged, Some(extra))
}

/// One step of the ramp at `rate`: its report, and whether it passed
/// (p99 within the target, at most 1 % refused, failed or dropped).
async fn ramp_step(
    engine: &Engine,
    rate: f64,
    step_secs: u64,
    target_p99_ms: f64,
    steps: &mut Vec<serde_json::Value>,
) -> (Report, bool) {
    let r = engine
        .run(
            &format!("ramp step {rate:.0}/s"),
            &[Phase {
                rate,
                secs: step_secs,
            }],
        )
        .await;
    let p99 = r.login_ms.get(2).copied().unwrap_or(f64::INFINITY);
    let bad = r.refused + r.failed + r.client_dropped;
    let passed = p99 <= target_p99_ms && (bad as f64) <= 0.01 * r.offered as f64;
    eprintln!(
        "ramp: {rate:.0}/s -> {:.0} approved/s, p99 {p99:.1} ms, {bad} refused/failed/dropped: {}",
        r.approved_per_sec(),
        if passed { "pass" } else { "over" }
    );
    steps.push(serde_json::json!({
        "rate": rate, "approved_per_sec": r.approved_per_sec(), "p99_ms": p99,
        "p50_ms": r.login_ms.first().copied(),
        "refused": r.refused, "failed": r.failed, "client_dropped": r.client_dropped,
        "server_cpu_ms_per_login": r.server_cpu_ms_per_login,
        "tester_cpu_ms_per_login": r.tester_cpu_ms_per_login,
        "passed": passed,
    }));
    (r, passed)
}
