//! The one error type request handlers return, and its mapping from the
//! lower layers' errors.

use keycard_proto::{ErrorCode, PathError};
use keycard_store::StoreError;

/// An error answered to one request: a stable code and a readable text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The stable code.
    pub code: ErrorCode,
    /// What went wrong, for humans. Never contains a secret.
    pub text: String,
    /// When a retry may succeed, in seconds (throttling), for front ends
    /// that say so (HTTP's `Retry-After`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with this code and text.
    pub fn new(code: ErrorCode, text: impl Into<String>) -> ApiError {
        ApiError {
            code,
            text: text.into(),
            retry_after: None,
        }
    }

    /// The same error, saying a retry may succeed in `secs` seconds.
    pub fn with_retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs);
        self
    }

    /// `bad_request` with this text.
    pub fn bad(text: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::BadRequest, text)
    }
}

impl From<PathError> for ApiError {
    fn from(e: PathError) -> ApiError {
        ApiError::bad(format!("bad path: {e}"))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Conflict { reason, .. } => {
                ApiError::new(ErrorCode::Conflict, format!("condition failed: {reason}"))
            }
            StoreError::HistoryGone { oldest } => ApiError::new(
                ErrorCode::HistoryGone,
                format!("changes before tock {oldest} are no longer kept; fetch the current state"),
            ),
            StoreError::Closed => {
                ApiError::new(ErrorCode::ShuttingDown, "the server is shutting down")
            }
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %e, "store unavailable");
                ApiError::new(ErrorCode::BackendUnavailable, e.to_string())
            }
            StoreError::Backend(_) | StoreError::Corrupt(_) => {
                tracing::error!(error = %e, "store failure");
                ApiError::new(ErrorCode::StoreFailed, format!("storage failed: {e}"))
            }
        }
    }
}

/// Handler result.
pub type ApiResult<T = ()> = Result<T, ApiError>;
