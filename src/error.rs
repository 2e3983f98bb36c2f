//! The library's [`Error`], and how the transport's errors become it.

use std::io;
use std::path::{Path, PathBuf};

use crate::protocol::ProtocolError;
use crate::transport::{PeerCredentials, ReadError};

/// Everything that can go wrong for a user of the receiver or sender.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket path cannot be used: too long, taken by something that is not a socket,
    /// or by a receiver listening there.
    #[error("{}", socket_path_error(path, reason))]
    SocketPath { path: PathBuf, reason: String },
    /// A system call failed.
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    /// A buffer given to the sender is not one a receiver would accept.
    #[error("invalid buffer: {0}")]
    InvalidBuffer(String),
    /// The peer broke the protocol; the message was rejected and its fds closed.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// A sender connected whose uid is not in the allowed list; it was disconnected and
    /// the receiver goes on listening.
    #[error("refused a sender {}: its uid is not in the allowed uids {allowed_uids:?}", peer.map_or("of unknown credentials".into(), |p| format!("(pid {}, uid {}, gid {})", p.pid, p.uid, p.gid)))]
    SenderRefused { peer: Option<PeerCredentials>, allowed_uids: Vec<u32> },
}

/// "socket path P: reason", or the reason alone for an empty path, which it names.
fn socket_path_error(path: &Path, reason: &str) -> String {
    match path.as_os_str().is_empty() {
        true => reason.to_owned(),
        false => format!("socket path {}: {reason}", path.display()),
    }
}

impl Error {
    /// A failure of `transport::Listener::bind` at `path`: the path's own problems (the
    /// transport says `InvalidInput`) are [`Error::SocketPath`], the rest [`Error::Io`].
    pub(crate) fn binding(path: &Path, source: io::Error) -> Error {
        if source.kind() == io::ErrorKind::InvalidInput {
            Error::SocketPath { path: path.to_owned(), reason: source.to_string() }
        } else {
            Error::Io { what: format!("socket {}", path.display()), source }
        }
    }
}

impl From<ReadError> for Error {
    fn from(e: ReadError) -> Error {
        match e {
            ReadError::Protocol(e) => Error::Protocol(e),
            ReadError::Io(source) => Error::Io { what: "receiving from the peer".into(), source },
        }
    }
}
