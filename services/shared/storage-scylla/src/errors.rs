//! Driver errors → [`StorageError`], and what a lightweight transaction's
//! answer (or failure) says about whether it was applied.

use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::value::{CqlValue, Row};
use sesame_storage::StorageError;

/// How a failed request failed, as far as the caller is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Refused before any write could happen (no replicas, overloaded,
    /// no connection): nothing changed; retrying later is safe.
    Refused,
    /// Timed out or lost its connection after being sent: a write may or
    /// may not have been applied.
    Unknown,
    /// A bug or a misconfiguration (bad statement, unauthorised, schema
    /// missing): retrying does not help.
    Fatal,
}

pub fn classify(e: &ExecutionError) -> Failure {
    match e {
        ExecutionError::RequestTimeout(_) => Failure::Unknown,
        ExecutionError::EmptyPlan | ExecutionError::ConnectionPoolError(_) => Failure::Refused,
        ExecutionError::LastAttemptError(attempt) => match attempt {
            RequestAttemptError::DbError(db, _) => match db {
                DbError::Unavailable { .. }
                | DbError::Overloaded
                | DbError::IsBootstrapping
                | DbError::RateLimitReached { .. } => Failure::Refused,
                DbError::ReadTimeout { .. }
                | DbError::WriteTimeout { .. }
                | DbError::ReadFailure { .. }
                | DbError::WriteFailure { .. } => Failure::Unknown,
                _ => Failure::Fatal,
            },
            RequestAttemptError::UnableToAllocStreamId => Failure::Refused,
            RequestAttemptError::BrokenConnectionError(_) => Failure::Unknown,
            _ => Failure::Fatal,
        },
        _ => Failure::Fatal,
    }
}

/// The error a caller sees: `Unavailable` (→ gRPC `UNAVAILABLE`, retry
/// later) when the cluster could not answer in time, `Backend` otherwise.
pub fn storage_error(what: &str, e: &ExecutionError) -> StorageError {
    match classify(e) {
        Failure::Refused | Failure::Unknown => {
            StorageError::Unavailable(format!("ScyllaDB could not {what}: {e}"))
        }
        Failure::Fatal => StorageError::Backend(format!("ScyllaDB refused to {what}: {e}")),
    }
}

/// What a lightweight transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lwt {
    Applied,
    NotApplied,
    /// It timed out or its connection broke after it was sent: the
    /// outcome must be read back (with SERIAL consistency, which completes
    /// any Paxos round in flight), never guessed.
    Unknown,
}

/// Reads `[applied]` from an LWT's result row (given its column names).
pub fn applied_of(columns: &[&str], row: Option<&Row>) -> Result<bool, StorageError> {
    let malformed = |m: &str| StorageError::Backend(format!("lightweight transaction answer {m}"));
    let i = columns
        .iter()
        .position(|c| *c == "[applied]")
        .ok_or_else(|| malformed("has no [applied] column"))?;
    let row = row.ok_or_else(|| malformed("has no row"))?;
    match row.columns.get(i) {
        Some(Some(CqlValue::Boolean(b))) => Ok(*b),
        other => Err(malformed(&format!("has [applied] = {other:?}"))),
    }
}

/// An LWT failure: `Unknown` when it may have been applied, an error otherwise.
pub fn lwt_failure(what: &str, e: &ExecutionError) -> Result<Lwt, StorageError> {
    match classify(e) {
        Failure::Unknown => {
            tracing::warn!(error = %e, "outcome of a lightweight transaction unknown ({what}); reading it back");
            Ok(Lwt::Unknown)
        }
        _ => Err(storage_error(what, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scylla::errors::WriteType;
    use scylla::statement::Consistency;
    use std::time::Duration;

    fn db(e: DbError) -> ExecutionError {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(e, "msg".into()))
    }

    #[test]
    fn timeouts_leave_an_lwt_unknown_and_refusals_do_not() {
        let cas_timeout = db(DbError::WriteTimeout {
            consistency: Consistency::LocalSerial,
            received: 1,
            required: 2,
            write_type: WriteType::Cas,
        });
        assert_eq!(lwt_failure("resolve", &cas_timeout), Ok(Lwt::Unknown));
        assert_eq!(
            lwt_failure(
                "resolve",
                &ExecutionError::RequestTimeout(Duration::from_millis(200))
            ),
            Ok(Lwt::Unknown)
        );
        let unavailable = db(DbError::Unavailable {
            consistency: Consistency::LocalQuorum,
            required: 2,
            alive: 1,
        });
        assert!(matches!(
            lwt_failure("resolve", &unavailable),
            Err(StorageError::Unavailable(m)) if m.contains("could not resolve")
        ));
        assert!(matches!(
            lwt_failure("resolve", &db(DbError::Unauthorized)),
            Err(StorageError::Backend(_))
        ));
    }

    #[test]
    fn failures_map_to_unavailable_or_backend() {
        assert_eq!(classify(&db(DbError::Overloaded)), Failure::Refused);
        assert_eq!(classify(&ExecutionError::EmptyPlan), Failure::Refused);
        assert_eq!(classify(&db(DbError::SyntaxError)), Failure::Fatal);
        assert!(matches!(
            storage_error(
                "read a device",
                &ExecutionError::RequestTimeout(Duration::from_millis(5))
            ),
            StorageError::Unavailable(_)
        ));
        assert!(matches!(
            storage_error("read a device", &db(DbError::Invalid)),
            StorageError::Backend(_)
        ));
    }

    #[test]
    fn applied_is_read_by_column_name() {
        let row = |v: Option<CqlValue>| Row {
            columns: vec![Some(CqlValue::Text("x".into())), v],
        };
        let cols = ["tenant_id", "[applied]"];
        assert_eq!(
            applied_of(&cols, Some(&row(Some(CqlValue::Boolean(true))))),
            Ok(true)
        );
        assert_eq!(
            applied_of(&cols, Some(&row(Some(CqlValue::Boolean(false))))),
            Ok(false)
        );
        assert!(applied_of(&cols, Some(&row(None))).is_err());
        assert!(applied_of(&cols, None).is_err());
        assert!(applied_of(&["tenant_id"], Some(&row(None))).is_err());
    }
}
