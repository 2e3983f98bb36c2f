//! `qsock_receiver_*`: open a socket path, receive buffers, close.

use std::ffi::{c_char, c_int, CStr};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use super::buffer::qsock_buffer;
use super::*;
use crate::{Event, Receiver, ReceiverOptions, DEFAULT_SOCKET_MODE};

/// A receiver: the listening socket, the connected sender and its cached fds. Opaque.
/// Use one receiver from one thread at a time; buffers it gives out may be released
/// from any thread.
pub struct qsock_receiver {
    receiver: Receiver,
}

/// The receiver's counters, over its whole life.
#[repr(C)]
pub struct qsock_receiver_stats {
    /// Buffers received.
    pub buffers: u64,
    /// Sum of the received blocks' sizes: the bytes that moved without a copy.
    pub bytes_described: u64,
    /// fds received from senders.
    pub fds_received: u64,
    /// fds cached now for the current sender's pooled buffers.
    pub fds_cached: u64,
    /// Return messages sent to senders.
    pub returns_sent: u64,
    /// Messages rejected for breaking the protocol.
    pub protocol_errors: u64,
    /// Senders accepted so far.
    pub senders_accepted: u64,
    /// Senders disconnected at once because their uid is not in `allowed_uids`.
    pub senders_refused: u64,
    /// Whether a sender is connected now.
    pub connected: bool,
    /// The connected sender's process id, uid and gid (SO_PEERCRED); -1 when none is.
    pub peer_pid: i64,
    pub peer_uid: i64,
    pub peer_gid: i64,
}

/// How a receiver guards its socket. Fill it with `qsock_receiver_options_init` first,
/// then change what you need; the defaults are the restrictive choice.
#[repr(C)]
pub struct qsock_receiver_options {
    /// Permission bits of the socket file (at most 0777): connecting needs write
    /// permission on it. Default 0600: only this user (and root) may connect.
    pub socket_mode: u32,
    /// If `n_allowed_uids` > 0: only senders whose process runs as one of these uids
    /// are accepted; others are disconnected at once (`QSOCK_SENDER_REFUSED`). The array
    /// is copied by `qsock_receiver_open_with_options`. Default: none, anyone who can
    /// open the socket.
    pub allowed_uids: *const u32,
    pub n_allowed_uids: usize,
}

/// Fills `*options` with the defaults: socket mode 0600, no uid allow-list.
#[no_mangle]
pub extern "C" fn qsock_receiver_options_init(options: *mut qsock_receiver_options) -> qsock_status {
    guard(|| {
        let defaults = qsock_receiver_options { socket_mode: DEFAULT_SOCKET_MODE, allowed_uids: std::ptr::null(), n_allowed_uids: 0 };
        write_out(options, "options", defaults)?;
        Ok(QSOCK_OK)
    })
}

/// Creates the socket at `socket_path` and listens for one sender (the deployed
/// `qtisocketsink`, or a `qsock_sender`), with the default options (socket mode 0600,
/// any uid). A stale socket file at the path is replaced; a regular file, directory or
/// symlink there is refused (`QSOCK_BAD_SOCKET_PATH`) and left untouched. Paths are at
/// most 107 bytes.
///
/// On `QSOCK_OK`, `*receiver_out` is a new receiver, owned by the caller, who must free
/// it with `qsock_receiver_close`. On failure `*receiver_out` is left unchanged.
#[no_mangle]
pub extern "C" fn qsock_receiver_open(socket_path: *const c_char, receiver_out: *mut *mut qsock_receiver) -> qsock_status {
    guard(|| open(socket_path, &ReceiverOptions::default(), receiver_out))
}

/// `qsock_receiver_open` with `options` (see `qsock_receiver_options`); NULL options
/// are the defaults. A socket mode outside 0777 is `QSOCK_BAD_SOCKET_PATH`.
#[no_mangle]
pub extern "C" fn qsock_receiver_open_with_options(
    socket_path: *const c_char,
    options: *const qsock_receiver_options,
    receiver_out: *mut *mut qsock_receiver,
) -> qsock_status {
    guard(|| {
        let mut rust_options = ReceiverOptions::default();
        if !options.is_null() {
            let options = arg(options, "options")?;
            rust_options.socket_mode = options.socket_mode;
            if options.n_allowed_uids > 0 {
                arg(options.allowed_uids, "options->allowed_uids")?;
                // SAFETY: non-NULL (checked); the caller documents n_allowed_uids entries there.
                let uids = unsafe { std::slice::from_raw_parts(options.allowed_uids, options.n_allowed_uids) };
                rust_options.allowed_uids = uids.to_vec();
            }
        }
        open(socket_path, &rust_options, receiver_out)
    })
}

fn open(socket_path: *const c_char, options: &ReceiverOptions, receiver_out: *mut *mut qsock_receiver) -> Result<qsock_status, Failure> {
    arg(socket_path, "socket_path")?;
    arg(receiver_out, "receiver_out")?;
    // SAFETY: checked non-NULL above; the caller passes a NUL-terminated string.
    let path = unsafe { CStr::from_ptr(socket_path) };
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(path.to_bytes()));
    let receiver = Receiver::bind_with(path, options)?;
    write_out(receiver_out, "receiver_out", Box::into_raw(Box::new(qsock_receiver { receiver })))?;
    Ok(QSOCK_OK)
}

/// Waits up to `timeout_ms` milliseconds (negative: for ever; 0: just look) for the
/// next buffer, accepting a sender first if none is connected.
///
/// Returns `QSOCK_OK` with `*buffer_out` set to a new buffer, owned by the caller, who
/// must hand it back with `qsock_receiver_release` (that returns it to the sender).
/// Any other status leaves `*buffer_out` NULL: `QSOCK_TIMEOUT`, `QSOCK_EOS`,
/// `QSOCK_SENDER_GONE` (call again to wait for the next sender), `QSOCK_PROTOCOL_ERROR`
/// (one message rejected; call again to go on), `QSOCK_SENDER_REFUSED` (a sender of a
/// uid not allowed was disconnected; call again to go on), or an error.
#[no_mangle]
pub extern "C" fn qsock_receiver_recv_buffer(
    receiver: *mut qsock_receiver,
    timeout_ms: i32,
    buffer_out: *mut *mut qsock_buffer,
) -> qsock_status {
    guard(|| {
        let receiver = arg_mut(receiver, "receiver")?;
        write_out(buffer_out, "buffer_out", std::ptr::null_mut())?;
        let deadline = u64::try_from(timeout_ms).ok().map(|ms| Instant::now() + Duration::from_millis(ms));
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            return Ok(match receiver.receiver.recv(left)? {
                Event::Buffer(buffer) => {
                    write_out(buffer_out, "buffer_out", qsock_buffer::new(buffer))?;
                    QSOCK_OK
                }
                // The credentials are in qsock_receiver_get_stats; wait on for a buffer.
                Event::SenderConnected(_) => continue,
                Event::Eos => QSOCK_EOS,
                Event::SenderGone => QSOCK_SENDER_GONE,
                Event::Timeout | Event::Interrupted => QSOCK_TIMEOUT,
            });
        }
    })
}

/// Releases a buffer: its fds are closed (pooled ones stay cached for their next use)
/// and the return goes to the sender, so it can reuse the memory. Safe from any thread,
/// also after the receiver that gave it out was closed. `buffer` must not be used
/// afterwards. NULL is a no-op.
#[no_mangle]
pub extern "C" fn qsock_receiver_release(buffer: *mut qsock_buffer) {
    guard(|| {
        if !buffer.is_null() {
            // SAFETY: a buffer from qsock_receiver_recv_buffer, released once, as documented.
            drop(unsafe { Box::from_raw(buffer) });
        }
        Ok(QSOCK_OK)
    });
}

/// Closes the receiver: answers every message still queued with a return, stops
/// reading, closes the cached fds no buffer still uses, and removes the socket file.
/// Buffers not yet released stay valid; release them as usual. NULL is a no-op.
#[no_mangle]
pub extern "C" fn qsock_receiver_close(receiver: *mut qsock_receiver) {
    guard(|| {
        if !receiver.is_null() {
            // SAFETY: a receiver from qsock_receiver_open, closed once, as documented.
            drop(unsafe { Box::from_raw(receiver) });
        }
        Ok(QSOCK_OK)
    });
}

/// An fd to put in the app's event loop: it polls readable (POLLIN) whenever
/// `qsock_receiver_recv_buffer` has something to do. The same fd for the receiver's
/// whole life; owned by the receiver (do not close it). -1 if `receiver` is NULL.
#[no_mangle]
pub extern "C" fn qsock_receiver_get_fd(receiver: *const qsock_receiver) -> c_int {
    let mut fd = -1;
    guard(|| {
        fd = arg(receiver, "receiver")?.receiver.as_fd().as_raw_fd();
        Ok(QSOCK_OK)
    });
    fd
}

/// Sends DISCONNECT to the sender, as the deployed receiver does when it pauses: the
/// sender stops sending, waits for its buffers to come back, and reconnects later.
/// `QSOCK_SENDER_GONE` if no sender is connected.
#[no_mangle]
pub extern "C" fn qsock_receiver_send_disconnect(receiver: *mut qsock_receiver) -> qsock_status {
    guard(|| {
        let sent = arg_mut(receiver, "receiver")?.receiver.send_disconnect()?;
        Ok(if sent { QSOCK_OK } else { QSOCK_SENDER_GONE })
    })
}

/// Fills `*stats_out` with the receiver's counters.
#[no_mangle]
pub extern "C" fn qsock_receiver_get_stats(receiver: *const qsock_receiver, stats_out: *mut qsock_receiver_stats) -> qsock_status {
    guard(|| {
        let s = arg(receiver, "receiver")?.receiver.stats();
        write_out(
            stats_out,
            "stats_out",
            qsock_receiver_stats {
                buffers: s.buffers,
                bytes_described: s.bytes_described,
                fds_received: s.fds_received,
                fds_cached: s.fds_cached,
                returns_sent: s.returns_sent,
                protocol_errors: s.protocol_errors,
                senders_accepted: s.senders_accepted,
                senders_refused: s.senders_refused,
                connected: s.connected,
                peer_pid: s.peer.map_or(-1, |p| p.pid.into()),
                peer_uid: s.peer.map_or(-1, |p| p.uid.into()),
                peer_gid: s.peer.map_or(-1, |p| p.gid.into()),
            },
        )?;
        Ok(QSOCK_OK)
    })
}
