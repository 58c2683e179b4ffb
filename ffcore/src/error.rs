//! One error type for the whole stack. Plugins map it to their ABI's codes.

use std::io;

/// Everything that can go wrong between a client, the router and a peer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no FreeFlow router at {path}: {source} (is ffrouter running and its socket mounted? set FF_ROUTER_SOCKET)")]
    NoRouter { path: String, source: io::Error },
    #[error("router I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("unsupported protocol version {got} (this side speaks {want})")]
    Version { got: u16, want: u16 },
    #[error("router refused: {code:?}: {message}")]
    Router { code: ErrorCode, message: String },
    #[error("invalid handle: {0}")]
    InvalidHandle(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("message of {msg} bytes does not fit the posted {buf}-byte receive buffer")]
    Truncated { msg: u64, buf: u64 },
    #[error("message tag {got} does not match the posted receive's tag {want}")]
    TagMismatch { got: u32, want: u32 },
    #[error("peer closed the connection")]
    PeerClosed,
    #[error("peer corrupted the shared ring: {0}")]
    Corrupt(String),
    #[error("too many requests in flight on this connection (max {0})")]
    QueueFull(usize),
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Error codes carried in router replies (stable on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[repr(u32)]
pub enum ErrorCode {
    /// The frame or message could not be decoded.
    BadRequest = 1,
    /// Unknown protocol version.
    Version = 2,
    /// No such listener / connection / region (or not yours).
    NotFound = 3,
    /// The object exists but belongs to another tenant.
    PermissionDenied = 4,
    /// A limit was hit (memory, objects per client).
    ResourceExhausted = 5,
    /// Argument out of range.
    InvalidArgument = 6,
    /// The router failed internally (e.g. memfd creation).
    Internal = 7,
    /// The router serving the handle (on another host) cannot be reached,
    /// did not answer in time, or this router does not talk to other hosts.
    Unreachable = 8,
}

impl Error {
    pub(crate) fn protocol(msg: impl Into<String>) -> Self {
        Error::Protocol(msg.into())
    }

    /// The router's error code, when the router refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Router { code, .. } => Some(*code),
            _ => None,
        }
    }
}
