//! Stable error codes, shared by every front end.

use std::fmt;

/// A stable, documented error code. Every error a client can see carries
/// one, on the msgpack wire as `code` beside the human-readable `error`
/// text; the REST API uses the same strings. Codes are never renamed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request is malformed: a missing or mistyped field, a bad path.
    BadRequest,
    /// The `action` is not one the server knows.
    UnknownAction,
    /// A new request reused the seq of one still outstanding.
    SeqInUse,
    /// A message exceeded the maximum size; the connection is closed.
    TooLarge,
    /// Too many requests outstanding on this connection.
    TooManyRequests,
    /// The server has as many connections as it takes; this one is closed.
    TooManyConnections,
    /// A data request named a path under the reserved (nil) root.
    ReservedPath,
    /// The server requires a login before this request.
    AuthRequired,
    /// The login failed (unknown user and wrong credentials look the same).
    AuthFailed,
    /// The auth method is unknown or not accepted by this server.
    AuthMethod,
    /// Too many failed logins on this connection; it is closed.
    TooManyAttempts,
    /// Too many recent failed logins from this address (or for this user
    /// from it); retry later. Says nothing about whether the user exists.
    Throttled,
    /// The caller lacks the capability or ACL mode this needs.
    PermissionDenied,
    /// A conditional write's condition did not hold.
    Conflict,
    /// The named record, stream or item does not exist.
    NotFound,
    /// A watch asked to resume from a tock older than the kept history.
    HistoryGone,
    /// The storage backend failed; nothing was changed.
    StoreFailed,
    /// The store's database cannot be reached now (down, restarting,
    /// failing over): nothing was done; try again shortly.
    BackendUnavailable,
    /// The connection's keycard has expired; log in again.
    KeycardExpired,
    /// The connection's keycard was revoked; the connection is closed.
    KeycardRevoked,
    /// The server or the user holds its maximum of keycards.
    TooManyKeycards,
    /// `test_acl` named an ACL that does not exist (it has no entry).
    NoSuchAcl,
    /// Changing one's own credential needs a more recent login (REST's
    /// `reauth_secs`): log in again, then retry.
    ReauthRequired,
    /// The server is shutting down.
    ShuttingDown,
    /// The client took too long (to log in, to finish a message, or idle);
    /// the connection is closed.
    Timeout,
    /// An unexpected internal failure.
    Internal,
}

impl ErrorCode {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownAction => "unknown_action",
            ErrorCode::SeqInUse => "seq_in_use",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::TooManyRequests => "too_many_requests",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::ReservedPath => "reserved_path",
            ErrorCode::AuthRequired => "auth_required",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::AuthMethod => "auth_method",
            ErrorCode::TooManyAttempts => "too_many_attempts",
            ErrorCode::Throttled => "throttled",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::Conflict => "conflict",
            ErrorCode::NotFound => "not_found",
            ErrorCode::HistoryGone => "history_gone",
            ErrorCode::StoreFailed => "store_failed",
            ErrorCode::BackendUnavailable => "backend_unavailable",
            ErrorCode::KeycardExpired => "keycard_expired",
            ErrorCode::KeycardRevoked => "keycard_revoked",
            ErrorCode::TooManyKeycards => "too_many_keycards",
            ErrorCode::NoSuchAcl => "no_such_acl",
            ErrorCode::ReauthRequired => "reauth_required",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
        }
    }

    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 26] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownAction,
        ErrorCode::SeqInUse,
        ErrorCode::TooLarge,
        ErrorCode::TooManyRequests,
        ErrorCode::TooManyConnections,
        ErrorCode::ReservedPath,
        ErrorCode::AuthRequired,
        ErrorCode::AuthFailed,
        ErrorCode::AuthMethod,
        ErrorCode::TooManyAttempts,
        ErrorCode::Throttled,
        ErrorCode::PermissionDenied,
        ErrorCode::Conflict,
        ErrorCode::NotFound,
        ErrorCode::HistoryGone,
        ErrorCode::StoreFailed,
        ErrorCode::BackendUnavailable,
        ErrorCode::KeycardExpired,
        ErrorCode::KeycardRevoked,
        ErrorCode::TooManyKeycards,
        ErrorCode::NoSuchAcl,
        ErrorCode::ReauthRequired,
        ErrorCode::ShuttingDown,
        ErrorCode::Timeout,
        ErrorCode::Internal,
    ];

    /// The code for a wire string.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_roundtrip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()));
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
        }
    }
}
