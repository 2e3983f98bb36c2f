//! The wire protocol of the deployed `qtisocketsink`/`qtisocketsrc` (docs/protocol.md):
//! payload layouts, parsing and encoding of records, and the validation a receiver owes
//! its users. Pure: no I/O, no GStreamer, so it can be read, tested and fuzzed alone.
//! The rules that need the fds themselves (object sizes, the buf_id cache) are applied
//! by the receiver with the same [`ProtocolError`] variants.

mod error;
mod layout;
mod message;
mod payload;

pub use error::ProtocolError;
pub use message::*;
pub use payload::*;
