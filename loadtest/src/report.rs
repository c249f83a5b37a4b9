//! Results: JSON for machines, an SVG chart for people.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

/// One second of the run: the logins *scheduled* in that second, whenever
/// they ended.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    pub t: u64,
    pub offered: u64,
    /// `CreateChallenge` answered OK.
    pub accepted: u64,
    /// Shed by the server for overload (`UNAVAILABLE`); a limit's
    /// `RESOURCE_EXHAUSTED` counts as failed, with its reason.
    pub refused: u64,
    pub failed: u64,
    /// Whole logins that ended `APPROVED`.
    pub approved: u64,
    /// Not started: the tester had no idle phone or too many in flight.
    pub client_dropped: u64,
    /// Latency of the approved logins that were scheduled in this second
    /// (none when none was approved).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// The server's resident memory, when its pid was given.
    pub rss_mib: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    /// (logins per second, seconds) of each phase.
    pub phases: Vec<(f64, u64)>,
    pub wall_secs: f64,
    pub offered: u64,
    pub accepted: u64,
    pub refused: u64,
    pub failed: u64,
    pub approved: u64,
    pub client_dropped: u64,
    /// Whole login, scheduled start to verdict, think time excluded:
    /// p50, p90, p99, p99.9, max (ms).
    pub login_ms: Vec<f64>,
    /// `CreateChallenge` answered OK: p50, p90, p99, p99.9, max (ms).
    pub create_ms: Vec<f64>,
    /// A refused `CreateChallenge`: p50, p90, p99, p99.9, max (ms).
    pub refusal_ms: Vec<f64>,
    pub failures: BTreeMap<String, u64>,
    /// Phone and verdict calls answered `UNAVAILABLE` and tried again after
    /// the server's pushback, as an app would.
    pub retries_after_pushback: u64,
    pub server_cpu_ms_per_login: Option<f64>,
    pub tester_cpu_ms_per_login: Option<f64>,
    pub max_rss_mib: Option<f64>,
    pub seconds: Vec<Second>,
}

impl Report {
    /// Appends a later run (the next ramp step): totals add up, its seconds
    /// follow. Percentiles and CPU per login cannot be combined from two
    /// summaries, so they are cleared (each step keeps its own).
    pub fn append(&mut self, r: Report) {
        let offset = self.seconds.len() as u64;
        self.phases.extend(r.phases.iter().copied());
        self.wall_secs += r.wall_secs;
        self.offered += r.offered;
        self.accepted += r.accepted;
        self.refused += r.refused;
        self.failed += r.failed;
        self.approved += r.approved;
        self.client_dropped += r.client_dropped;
        self.retries_after_pushback += r.retries_after_pushback;
        for (k, v) in r.failures {
            *self.failures.entry(k).or_default() += v;
        }
        self.seconds.extend(r.seconds.into_iter().map(|mut s| {
            s.t += offset;
            s
        }));
        self.server_cpu_ms_per_login = None;
        self.tester_cpu_ms_per_login = None;
        self.login_ms.clear();
        self.create_ms.clear();
        self.refusal_ms.clear();
        self.max_rss_mib = match (self.max_rss_mib, r.max_rss_mib) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    /// Approved logins per second over the whole run.
    pub fn approved_per_sec(&self) -> f64 {
        if self.wall_secs > 0.0 {
            self.approved as f64 / self.wall_secs
        } else {
            0.0
        }
    }

    pub fn summary(&self) -> String {
        let q = |v: &[f64]| {
            if v.len() == 5 {
                format!("p50 {:.1} / p99 {:.1} / max {:.1} ms", v[0], v[2], v[4])
            } else {
                "-".into()
            }
        };
        let mut s = format!(
            "{}: offered {}, accepted {}, refused {}, failed {}, approved {} ({:.0}/s), client-dropped {}\n  login {}\n  create {}\n  refusal {}",
            self.scenario,
            self.offered,
            self.accepted,
            self.refused,
            self.failed,
            self.approved,
            self.approved_per_sec(),
            self.client_dropped,
            q(&self.login_ms),
            q(&self.create_ms),
            q(&self.refusal_ms),
        );
        if let (Some(server), Some(tester)) =
            (self.server_cpu_ms_per_login, self.tester_cpu_ms_per_login)
        {
            let _ = write!(
                s,
                "\n  CPU per approved login: server {server:.3} ms + tester {tester:.3} ms = {:.3} ms",
                server + tester
            );
        }
        if self.retries_after_pushback > 0 {
            let _ = write!(
                s,
                "\n  retried after pushback: {} calls",
                self.retries_after_pushback
            );
        }
        if let Some(m) = self.max_rss_mib {
            let _ = write!(s, "\n  server resident memory: max {m:.0} MiB");
        }
        for (why, n) in &self.failures {
            let _ = write!(s, "\n  failure: {why} x{n}");
        }
        s
    }

    /// Three stacked panels over time: logins per second (offered,
    /// accepted, refused, approved), latency (p50, p99), server memory.
    pub fn svg(&self) -> String {
        const W: f64 = 960.0;
        const PANEL_H: f64 = 190.0;
        const LEFT: f64 = 70.0;
        const RIGHT: f64 = 20.0;
        let panels = 3.0;
        let height = 40.0 + panels * (PANEL_H + 40.0);
        let n = self.seconds.len().max(2) as f64;
        let x = |t: f64| LEFT + (W - LEFT - RIGHT) * t / (n - 1.0);
        let mut out = String::new();
        let _ = write!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="22" font-size="15">sesame-loadtest: {} ({} approved, {:.0}/s)</text>"#,
            xml(&self.scenario),
            self.approved,
            self.approved_per_sec()
        );
        type Series<'a> = (&'a str, &'a str, Vec<Option<f64>>);
        let mut panel = |i: f64, title: &str, unit: &str, series: Vec<Series>| {
            let top = 40.0 + i * (PANEL_H + 40.0) + 20.0;
            let max = series
                .iter()
                .flat_map(|(_, _, v)| v.iter().flatten().copied())
                .fold(0.0f64, f64::max)
                .max(1e-9)
                * 1.1;
            let y = |v: f64| top + PANEL_H - PANEL_H * v / max;
            let _ = write!(
                out,
                r##"<text x="{LEFT}" y="{}" font-weight="bold">{title}</text><rect x="{LEFT}" y="{top}" width="{}" height="{PANEL_H}" fill="none" stroke="#999"/>"##,
                top - 6.0,
                W - LEFT - RIGHT
            );
            for k in 0..=4 {
                let v = max * k as f64 / 4.0;
                let _ = write!(
                    out,
                    r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{} {unit}</text>"##,
                    W - RIGHT,
                    LEFT - 4.0,
                    y(v) + 4.0,
                    short(v),
                    y = y(v)
                );
            }
            // The legend sits at the right end of the title line.
            let mut legend_x = W - RIGHT - 90.0 * series.len() as f64;
            for (name, color, values) in &series {
                let pts: Vec<String> = values
                    .iter()
                    .enumerate()
                    .filter_map(|(t, v)| v.map(|v| format!("{:.1},{:.1}", x(t as f64), y(v))))
                    .collect();
                let _ = write!(
                    out,
                    r#"<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{}"/><text x="{legend_x}" y="{}" fill="{color}">{name}</text>"#,
                    pts.join(" "),
                    top - 6.0
                );
                legend_x += 90.0;
            }
            let _ = write!(
                out,
                r#"<text x="{}" y="{}" text-anchor="end">time (s), 0 to {}</text>"#,
                W - RIGHT,
                top + PANEL_H + 16.0,
                self.seconds.len()
            );
        };
        let col =
            |f: fn(&Second) -> f64| self.seconds.iter().map(|s| Some(f(s))).collect::<Vec<_>>();
        panel(
            0.0,
            "logins per second",
            "/s",
            vec![
                ("offered", "#555", col(|s| s.offered as f64)),
                ("accepted", "#1f77b4", col(|s| s.accepted as f64)),
                ("approved", "#2ca02c", col(|s| s.approved as f64)),
                ("refused", "#d62728", col(|s| s.refused as f64)),
            ],
        );
        panel(
            1.0,
            "login latency (scheduled start to verdict)",
            "ms",
            vec![
                (
                    "p50",
                    "#1f77b4",
                    self.seconds.iter().map(|s| s.p50_ms).collect(),
                ),
                (
                    "p99",
                    "#ff7f0e",
                    self.seconds.iter().map(|s| s.p99_ms).collect(),
                ),
            ],
        );
        panel(
            2.0,
            "server resident memory",
            "MiB",
            vec![(
                "RSS",
                "#9467bd",
                self.seconds.iter().map(|s| s.rss_mib).collect(),
            )],
        );
        out.push_str("</svg>\n");
        out
    }
}

fn short(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(t: u64) -> Second {
        Second {
            t,
            offered: 100,
            accepted: 90,
            refused: 10,
            failed: 0,
            approved: 90,
            client_dropped: 0,
            p50_ms: Some(3.0),
            p99_ms: Some(9.0 + t as f64),
            rss_mib: Some(40.0),
        }
    }

    #[test]
    fn chart_and_json_carry_the_run() {
        let mut r = Report {
            scenario: "surge <10x>".into(),
            phases: vec![(100.0, 3)],
            wall_secs: 3.0,
            offered: 300,
            accepted: 270,
            refused: 30,
            failed: 0,
            approved: 270,
            client_dropped: 0,
            login_ms: vec![3.0, 5.0, 9.0, 11.0, 12.0],
            create_ms: vec![1.0; 5],
            refusal_ms: vec![0.1; 5],
            failures: BTreeMap::new(),
            retries_after_pushback: 0,
            server_cpu_ms_per_login: Some(0.2),
            tester_cpu_ms_per_login: Some(0.1),
            max_rss_mib: Some(40.0),
            seconds: (0..3).map(second).collect(),
        };
        let svg = r.svg();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("surge &lt;10x&gt;"), "escaped title");
        assert_eq!(svg.matches("<polyline").count(), 7);
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(json["seconds"][2]["p99_ms"], 11.0);
        assert!(r.summary().contains("= 0.300 ms"), "{}", r.summary());
        assert!((r.approved_per_sec() - 90.0).abs() < 1e-9);

        // A second step appended: totals add, seconds follow, the merged
        // percentiles are gone (they cannot be added).
        r.append(r.clone());
        assert_eq!((r.offered, r.approved, r.seconds.len()), (600, 540, 6));
        assert_eq!(r.seconds[5].t, 5);
        assert!(r.login_ms.is_empty() && r.server_cpu_ms_per_login.is_none());
    }
}
