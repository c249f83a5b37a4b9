//! The alert and recording rules in deploy/prometheus, checked and unit
//! tested by the real `promtool` (installed by scripts/setup.sh). A missing
//! promtool fails the test: it is not skipped.

use std::path::PathBuf;
use std::process::Command;

fn rules_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(rules_dir())
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool not runnable ({e}): run scripts/setup.sh, which installs Debian's prometheus package")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn rules_are_valid() {
    let out = promtool(&["check", "rules", "sesame-rules.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_has_a_passing_unit_test_and_a_runbook_entry() {
    let out = promtool(&["test", "rules", "sesame-rules.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    let rules = std::fs::read_to_string(rules_dir().join("sesame-rules.yml")).unwrap();
    let tests = std::fs::read_to_string(rules_dir().join("sesame-rules.test.yml")).unwrap();
    let runbook = std::fs::read_to_string(rules_dir().join("../../docs/runbook.md"))
        .expect("docs/runbook.md");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 8, "{alerts:?}");
    for alert in alerts {
        // A firing case: the alert name followed by a non-empty exp_alerts list.
        assert!(
            tests.contains(&format!("alertname: {alert}\n        exp_alerts:\n")),
            "{alert} has no promtool unit test in which it fires"
        );
        assert!(
            runbook.contains(&format!("## {alert}")),
            "{alert} has no runbook entry in docs/runbook.md"
        );
    }
}
