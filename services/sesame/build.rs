//! `SESAME_SCYLLA_NODES` at build time decides whether the ScyllaDB
//! end-to-end tests run against that cluster or are listed as ignored
//! (never as passed); a change of it rebuilds them.
fn main() {
    println!("cargo:rustc-check-cfg=cfg(scylla_live)");
    println!("cargo:rerun-if-env-changed=SESAME_SCYLLA_NODES");
    if std::env::var("SESAME_SCYLLA_NODES").is_ok_and(|v| !v.trim().is_empty()) {
        println!("cargo:rustc-cfg=scylla_live");
    }
}
