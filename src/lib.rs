//! qtisocket: zero-copy media buffers between processes over a UNIX socket, wire-compatible
//! with the `qtisocketsink`/`qtisocketsrc` deployed on Qualcomm devices.
//!
//! Layers, data flowing down (docs/architecture.md): [`protocol`] (pure parsing and
//! encoding) → [`transport`] (the socket and fd passing) → [`receiver`] (the safe API)
//! → `ffi` (the C ABI in include/qsock.h) and the GStreamer plugin.

pub mod protocol;
pub mod transport;
pub mod receiver;
pub mod sender;
mod fd_cache;
mod socket_owner;
mod ffi;
mod elements;

pub use receiver::{
    Event, Interrupter, PeerCredentials, ReceivedBuffer, Receiver, ReceiverHandle, ReceiverOptions, ReceiverStats,
    DEFAULT_SOCKET_MODE,
};
pub use sender::{OutgoingBlock, OutgoingBuffer, Sender, SenderEvent, SenderInterrupter, Waited};
/// The vendor's meta layouts (`GstMLTensorMeta`, `GstVideoClassificationMeta`,
/// `GstVideoLandmarksMeta` and their array elements) as the elements read and write them:
/// for the tests, which register and read those metas as the vendor's libraries do. Not a
/// stable API.
#[doc(hidden)]
pub use elements::meta::vendor as vendor_meta;

use std::path::PathBuf;

/// Everything that can go wrong for a user of the receiver or sender.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket path cannot be used: too long, or taken by something that is not a socket.
    #[error("{}", socket_path_error(path, reason))]
    SocketPath { path: PathBuf, reason: String },
    /// A system call failed.
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    /// A buffer given to the sender is not one a receiver would accept.
    #[error("invalid buffer: {0}")]
    InvalidBuffer(String),
    /// The peer broke the protocol; the message was rejected and its fds closed.
    #[error("protocol error: {0}")]
    Protocol(#[from] protocol::ProtocolError),
    /// A sender connected whose uid is not in the allowed list; it was disconnected and
    /// the receiver goes on listening.
    #[error("refused a sender {}: its uid is not in the allowed uids {allowed_uids:?}", peer.map_or("of unknown credentials".into(), |p| format!("(pid {}, uid {}, gid {})", p.pid, p.uid, p.gid)))]
    SenderRefused { peer: Option<receiver::PeerCredentials>, allowed_uids: Vec<u32> },
}

/// "socket path P: reason", or the reason alone for an empty path, which it names.
fn socket_path_error(path: &std::path::Path, reason: &str) -> String {
    match path.as_os_str().is_empty() {
        true => reason.to_owned(),
        false => format!("socket path {}: {reason}", path.display()),
    }
}

fn plugin_init(plugin: &gst::Plugin) -> Result<(), gst::glib::BoolError> {
    elements::register(plugin)
}

gst::plugin_define!(
    qtisocket,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    env!("CARGO_PKG_VERSION"),
    "MPL",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    // Where it comes from, and when: the HEAD commit's date (build.rs).
    env!("CARGO_PKG_REPOSITORY"),
    env!("QTISOCKET_RELEASE_DATE")
);
