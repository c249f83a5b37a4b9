use sesame_core::model::TransitionError;

/// Storage failures, with lower-case messages and no trailing punctuation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The conditional write lost: the record was consumed or changed.
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// The challenge is not pending any more.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// The backend cannot serve now (overloaded, shutting down, unreachable).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// An I/O or backend failure.
    #[error("storage backend error: {0}")]
    Backend(String),
    /// A stored record could not be decoded.
    #[error("corrupt record in {table}: {message}")]
    Corrupt { table: String, message: String },
}
