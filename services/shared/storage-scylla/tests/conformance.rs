//! The storage conformance suite against a live ScyllaDB (or Cassandra)
//! cluster: `SESAME_SCYLLA_NODES=host:9042[,host...] cargo test -p
//! sesame-storage-scylla`. Without it every case is listed as ignored.
//!
//! Optional: `SESAME_SCYLLA_KEYSPACE` (default `sesame_conformance`),
//! `SESAME_SCYLLA_DC` / `SESAME_SCYLLA_RF` (replication of a keyspace it
//! creates: `datacenter1` / 1), `SESAME_SCYLLA_USER` / `SESAME_SCYLLA_PASSWORD`.

use std::sync::Arc;
use std::time::Duration;

use sesame_storage::Storage;
use sesame_storage_scylla::{ScyllaConfig, ScyllaSection, ScyllaStorage};
use tokio::sync::OnceCell;

static MIGRATED: OnceCell<()> = OnceCell::const_new();

fn env(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

fn config() -> ScyllaConfig {
    let nodes = env("SESAME_SCYLLA_NODES", "127.0.0.1:9042");
    let keyspace = env("SESAME_SCYLLA_KEYSPACE", "sesame_conformance");
    let rf: u32 = env("SESAME_SCYLLA_RF", "1")
        .parse()
        .expect("SESAME_SCYLLA_RF: a number");
    let section = ScyllaSection {
        replication: [(env("SESAME_SCYLLA_DC", "datacenter1"), rf)].into(),
        username: env("SESAME_SCYLLA_USER", ""),
        password: env("SESAME_SCYLLA_PASSWORD", ""),
        // Small pages, so every list in the suite spans several.
        page_size: 7,
        request_timeout_ms: 10_000,
        ..Default::default()
    };
    let mut c = ScyllaConfig::from_uri(&format!("scylla://{nodes}/{keyspace}"), section)
        .expect("SESAME_SCYLLA_NODES and SESAME_SCYLLA_KEYSPACE");
    c.challenge_retention = Duration::from_secs(24 * 3600);
    c.guard_retention = Duration::from_secs(3600);
    c
}

async fn open() -> Arc<dyn Storage> {
    let config = config();
    MIGRATED
        .get_or_init(|| async {
            let (session, flavor) = sesame_storage_scylla::connect(&config)
                .await
                .expect("connect to the cluster");
            sesame_storage_scylla::migrate(&session, &config, flavor)
                .await
                .expect("migrate the test keyspace");
        })
        .await;
    Arc::new(
        ScyllaStorage::open(config)
            .await
            .expect("open the ScyllaDB backend"),
    )
}

#[cfg(scylla_live)]
sesame_storage::storage_suite!(open().await);

#[cfg(not(scylla_live))]
sesame_storage::storage_suite!(@attrs [
    #[ignore = "needs a cluster: set SESAME_SCYLLA_NODES=host:9042[,host...] and rebuild"]
] open().await);
