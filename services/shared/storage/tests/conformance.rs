//! The storage conformance suite against every backend available here.

mod mem {
    use std::sync::Arc;

    sesame_storage::storage_suite!(Arc::new(sesame_storage::MemStorage::new()));

    #[tokio::test]
    async fn guarded_create_is_atomic() {
        sesame_storage::testsuite::guarded_create_is_atomic(Arc::new(
            sesame_storage::MemStorage::new(),
        ))
        .await;
    }
}

mod embedded {
    use std::sync::Arc;

    use sesame_storage::{EmbeddedConfig, EmbeddedStorage, Storage};

    fn open() -> Arc<dyn Storage> {
        // The directory must outlive the store: leak it for the test's life.
        let dir = tempfile::tempdir().expect("tempdir").keep();
        Arc::new(
            EmbeddedStorage::open(EmbeddedConfig::new(EmbeddedStorage::path_in(&dir)))
                .expect("open embedded store"),
        )
    }

    sesame_storage::storage_suite!(open());

    #[tokio::test]
    async fn guarded_create_is_atomic() {
        sesame_storage::testsuite::guarded_create_is_atomic(open()).await;
    }
}

/// The metrics decorator must be transparent: the whole suite through it.
mod metered {
    use std::sync::Arc;

    sesame_storage::storage_suite!(Arc::new(sesame_storage::MeteredStorage::new(Arc::new(
        sesame_storage::MemStorage::new()
    ))));

    /// It forwards the atomic method instead of falling back on the trait's default.
    #[tokio::test]
    async fn guarded_create_is_atomic() {
        sesame_storage::testsuite::guarded_create_is_atomic(Arc::new(
            sesame_storage::MeteredStorage::new(Arc::new(sesame_storage::MemStorage::new())),
        ))
        .await;
    }
}
