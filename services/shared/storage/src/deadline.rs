//! The caller's deadline, carried to the storage backends without widening
//! every trait method: the gRPC layer reads `grpc-timeout` and runs the
//! handler inside [`scope`]; a backend that can bound the server-side work
//! (ScyllaDB's `USING TIMEOUT`) asks [`remaining`] how long is left, so a
//! read never outlives the call that wanted it.

use std::future::Future;
use std::time::{Duration, Instant};

tokio::task_local! {
    static DEADLINE: Instant;
}

/// Runs `fut` with `deadline` as the current call's deadline.
pub async fn scope<F: Future>(deadline: Instant, fut: F) -> F::Output {
    DEADLINE.scope(deadline, fut).await
}

/// Time left before the current call's deadline (zero once it passed), or
/// `None` outside any deadline scope (background work, calls without
/// `grpc-timeout`).
pub fn remaining() -> Option<Duration> {
    DEADLINE
        .try_with(|d| d.saturating_duration_since(Instant::now()))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn remaining_is_scoped() {
        assert_eq!(remaining(), None);
        let left = scope(Instant::now() + Duration::from_secs(5), async {
            remaining()
        })
        .await;
        let left = left.expect("inside the scope");
        assert!(left > Duration::from_secs(4) && left <= Duration::from_secs(5));
        let past = scope(Instant::now(), async { remaining() }).await;
        assert_eq!(past, Some(Duration::ZERO));
    }
}
