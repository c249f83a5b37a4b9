#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test

//! `sesame migrate`: the schema it would apply, printed without a cluster,
//! and clear refusals when there is nothing to migrate.

use std::process::Command;

fn sesame(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sesame"));
    c.args(args).env_remove("SESAME_STORAGE");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn dry_run_prints_the_whole_schema_without_connecting() {
    // Nothing listens on port 1: a connection attempt would fail the run.
    let out = sesame(
        &[
            "migrate",
            "--storage",
            "scylla://127.0.0.1:1/sesame_prod",
            "--dry-run",
        ],
        &[("SESAME_SCYLLA__REPLICATION", "eu-west=3,eu-central=3")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cql = String::from_utf8(out.stdout).unwrap();
    assert!(cql.contains(
        "CREATE KEYSPACE IF NOT EXISTS sesame_prod WITH replication = \
         {'class': 'NetworkTopologyStrategy', 'eu-central': 3, 'eu-west': 3}"
    ));
    for table in [
        "tenants",
        "api_keys",
        "enrollments",
        "devices",
        "devices_by_user",
        "challenges",
        "challenge_keys",
        "pending_by_device",
        "user_guards",
        "usage_reports",
        "schema_migrations",
    ] {
        assert!(
            cql.contains(&format!("CREATE TABLE IF NOT EXISTS sesame_prod.{table} (")),
            "{table} missing from:\n{cql}"
        );
    }
    assert_eq!(
        cql.matches(";\n").count(),
        cql.lines().filter(|l| l.ends_with(';')).count()
    );
}

#[test]
fn refuses_what_it_cannot_migrate() {
    let out = sesame(&["migrate", "--dry-run"], &[]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("migrate is for storage = \"scylla://"),
        "{err}"
    );

    let out = sesame(&["migrate", "--storage", "scylla://h", "--dry-run"], &[]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("name the keyspace"));
}
