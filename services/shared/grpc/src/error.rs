use sesame_core::ids::IdError;
use sesame_core::model::TransitionError;
use sesame_core::validate::ValidationError;
use sesame_queue::QueueError;
use sesame_storage::StorageError;
use std::collections::HashMap;

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Every way an RPC can fail, mapped once to a gRPC status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// Malformed or out-of-range input: `INVALID_ARGUMENT`.
    Invalid(String),
    /// Missing or wrong credential: `UNAUTHENTICATED`.
    Unauthenticated(String),
    /// Authenticated but not allowed (revoked device, wrong number): `PERMISSION_DENIED`.
    PermissionDenied(String),
    /// Unknown, or belongs to someone else: `NOT_FOUND` (never reveals which).
    NotFound(&'static str),
    /// The object's state forbids it (expired, already answered): `FAILED_PRECONDITION`.
    FailedPrecondition(String),
    /// Already exists / single-use item already used: `ALREADY_EXISTS`.
    AlreadyExists(String),
    /// A concurrent change won (read-modify-write lost its race): `ABORTED`;
    /// read again and retry.
    Aborted(String),
    /// A limit of the caller's: `RESOURCE_EXHAUSTED`.
    ResourceExhausted(String),
    /// A limit with a time when it lifts: `RESOURCE_EXHAUSTED` with
    /// `google.rpc.RetryInfo` and `google.rpc.ErrorInfo` (reason) details.
    Limited {
        message: String,
        reason: &'static str,
        retry_after: std::time::Duration,
        /// Per-user limits: tell gRPC clients not to retry on their own
        /// (`grpc-retry-pushback-ms: -1`); a person must act.
        do_not_retry: bool,
    },
    /// Overloaded or a dependency is down, retry later: `UNAVAILABLE`.
    Unavailable(String),
    /// Our bug or a corrupt record: `INTERNAL`, details only in the log.
    Internal(String),
}

impl ApiError {
    pub fn invalid(field: &str, message: impl std::fmt::Display) -> Self {
        ApiError::Invalid(format!("{field}: {message}"))
    }

    /// The status code's name and the message a caller sees, e.g. for the
    /// audit trail (an internal error's details stay in the log).
    pub fn summary(&self) -> String {
        match self {
            ApiError::Invalid(m) => format!("invalid_argument: {m}"),
            ApiError::Unauthenticated(m) => format!("unauthenticated: {m}"),
            ApiError::PermissionDenied(m) => format!("permission_denied: {m}"),
            ApiError::NotFound(what) => format!("not_found: {what} not found"),
            ApiError::FailedPrecondition(m) => format!("failed_precondition: {m}"),
            ApiError::AlreadyExists(m) => format!("already_exists: {m}"),
            ApiError::Aborted(m) => format!("aborted: {m}"),
            ApiError::ResourceExhausted(m) => format!("resource_exhausted: {m}"),
            ApiError::Limited {
                message, reason, ..
            } => format!("resource_exhausted ({reason}): {message}"),
            ApiError::Unavailable(m) => format!("unavailable: {m}"),
            ApiError::Internal(_) => "internal".into(),
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::Invalid(e.to_string())
    }
}

impl From<IdError> for ApiError {
    fn from(e: IdError) -> Self {
        ApiError::Invalid(e.to_string())
    }
}

impl From<TransitionError> for ApiError {
    fn from(e: TransitionError) -> Self {
        ApiError::FailedPrecondition(format!("{e}: it can no longer be answered or cancelled"))
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::NotFound(what) => ApiError::NotFound(what),
            StorageError::Transition(t) => t.into(),
            StorageError::Conflict(m) => ApiError::FailedPrecondition(m),
            StorageError::LimitExceeded(m) => ApiError::ResourceExhausted(m),
            StorageError::Unavailable(m) => ApiError::Unavailable(m),
            e @ (StorageError::Backend(_) | StorageError::Corrupt { .. }) => {
                ApiError::Internal(e.to_string())
            }
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Full(what) => {
                ApiError::Unavailable(format!("the {what} queue is full; retry in a moment"))
            }
            QueueError::Closed => ApiError::Unavailable("the server is shutting down".into()),
            // Not mended by retrying (e.g. the brokers refuse the message).
            QueueError::Backend(m) => ApiError::Internal(format!("push queue error: {m}")),
            QueueError::Unavailable(m) => {
                ApiError::Unavailable(format!("push delivery is unavailable ({m}); retry shortly"))
            }
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Invalid(m) => Status::new(Code::InvalidArgument, m),
            ApiError::Unauthenticated(m) => Status::new(Code::Unauthenticated, m),
            ApiError::PermissionDenied(m) => Status::new(Code::PermissionDenied, m),
            ApiError::NotFound(what) => Status::new(Code::NotFound, format!("{what} not found")),
            ApiError::FailedPrecondition(m) => Status::new(Code::FailedPrecondition, m),
            ApiError::AlreadyExists(m) => Status::new(Code::AlreadyExists, m),
            ApiError::Aborted(m) => Status::new(Code::Aborted, m),
            ApiError::ResourceExhausted(m) => Status::new(Code::ResourceExhausted, m),
            ApiError::Limited {
                message,
                reason,
                retry_after,
                do_not_retry,
            } => {
                let mut details = ErrorDetails::with_retry_info(Some(retry_after));
                details.set_error_info(reason, "sesame", HashMap::<String, String>::new());
                let mut status =
                    Status::with_error_details(Code::ResourceExhausted, message, details);
                if do_not_retry {
                    status
                        .metadata_mut()
                        .insert("grpc-retry-pushback-ms", MetadataValue::from_static("-1"));
                }
                status
            }
            ApiError::Unavailable(m) => Status::new(Code::Unavailable, m),
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                Status::new(Code::Internal, "internal error; it has been logged")
            }
        }
    }
}
