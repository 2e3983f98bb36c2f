//! qtisocket: zero-copy media buffers between processes over a UNIX socket, wire-compatible
//! with the `qtisocketsink`/`qtisocketsrc` deployed on Qualcomm devices.
//!
//! Layers, data flowing down (docs/architecture.md): [`protocol`] (pure parsing and
//! encoding) → [`transport`] (the socket and fd passing) → [`receiver`] (the safe API)
//! → `ffi` (the C ABI in include/qsock.h) and the GStreamer plugin.

mod elements;
mod error;
pub mod fanout;
mod fd_cache;
mod ffi;
pub mod protocol;
pub mod receiver;
pub mod sender;
mod socket_owner;
pub mod transport;

/// The vendor's meta layouts (`GstMLTensorMeta`, `GstVideoClassificationMeta`,
/// `GstVideoLandmarksMeta` and their array elements) as the elements read and write them:
/// for the tests, which register and read those metas as the vendor's libraries do. Not a
/// stable API.
#[doc(hidden)]
pub use elements::meta::vendor as vendor_meta;
pub use error::Error;
pub use fanout::{
    Delivery, Destination, Fanout, FanoutEvent, FanoutOptions, FanoutStats, PeerStats, SlowReceiver, WaitingElsewhere,
};
pub use receiver::{
    Event, Interrupter, ReceivedBuffer, Receiver, ReceiverHandle, ReceiverOptions, ReceiverStats, DEFAULT_SOCKET_MODE,
};
pub use sender::{sealed_memfd, OutgoingBlock, OutgoingBuffer, Sender, SenderEvent, SenderInterrupter, Waited};
pub use transport::PeerCredentials;

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
