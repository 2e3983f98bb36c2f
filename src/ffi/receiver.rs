//! `qsock_receiver_*`: open a socket path, receive buffers, close.

use std::ffi::{c_char, c_int};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::transport::OwnerProcess;

use super::buffer::qsock_buffer;
use super::sender::forked;
use super::*;
use crate::{Event, Receiver, ReceiverHandle, ReceiverOptions};

/// A receiver: the listening socket, the connected sender and its cached fds. Opaque.
/// Receive from one thread at a time; buffers it gives out may be released from any
/// thread, and its fd, counters, DISCONNECT and interrupt are reachable from any thread too.
pub struct qsock_receiver {
    /// Locked by `qsock_receiver_recv_buffer` for as long as it waits, and by nothing
    /// else: two threads receiving on one receiver take turns.
    receiver: Mutex<Receiver>,
    /// Counters and DISCONNECT without the receiver: `get_stats` and `send_disconnect`
    /// never wait for a `recv_buffer` in progress.
    handle: ReceiverHandle,
    /// The receiver's event-loop fd: the same for its whole life, so read without the lock.
    poll_fd: c_int,
    /// The process that opened it: after fork, the child may only close its copy.
    owner: OwnerProcess,
}

impl Handle for qsock_receiver {}
// get_fd, get_stats and send_disconnect may run on other threads than recv_buffer, on
// the same receiver.
const _: fn() = || {
    fn sync<T: Sync>() {}
    sync::<qsock_receiver>();
};

impl qsock_receiver {
    fn new(receiver: Receiver) -> qsock_receiver {
        let poll_fd = receiver.as_fd().as_raw_fd();
        qsock_receiver {
            handle: receiver.handle(),
            receiver: Mutex::new(receiver),
            poll_fd,
            owner: OwnerProcess::this(),
        }
    }

    /// Refuses a call from a forked child: only the process that opened the receiver
    /// may use it.
    fn check_process(&self) -> Result<&qsock_receiver, Failure> {
        match self.owner.is_this() {
            true => Ok(self),
            false => Err(forked(self.owner.pid(), "receiver", "qsock_receiver_close")),
        }
    }

    /// The receiver, once a `recv_buffer` in progress on another thread is done. A panic
    /// caught in an earlier call leaves it usable: the lock guards no invariant of its own.
    fn lock(&self) -> MutexGuard<'_, Receiver> {
        self.receiver.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The receiver's handle for a call, from the process that opened it.
fn receiver_arg<'a>(receiver: *const qsock_receiver) -> Result<&'a qsock_receiver, Failure> {
    handle(receiver, "receiver")?.check_process()
}

/// Fills `*options` with the defaults: socket mode `QSOCK_DEFAULT_SOCKET_MODE` (0600),
/// no uid allow-list.
#[no_mangle]
pub extern "C" fn qsock_receiver_options_init(options: *mut qsock_receiver_options) -> qsock_status {
    call(|| {
        let defaults = qsock_receiver_options {
            socket_mode: QSOCK_DEFAULT_SOCKET_MODE,
            allowed_uids: std::ptr::null(),
            n_allowed_uids: 0,
        };
        write_out(options, "options", defaults)
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
pub extern "C" fn qsock_receiver_open(
    socket_path: *const c_char,
    receiver_out: *mut *mut qsock_receiver,
) -> qsock_status {
    call(|| open(socket_path, &ReceiverOptions::default(), receiver_out))
}

/// `qsock_receiver_open` with `options` (see `qsock_receiver_options`); NULL options
/// are the defaults. A socket mode outside 0777 is `QSOCK_BAD_SOCKET_PATH`.
#[no_mangle]
pub extern "C" fn qsock_receiver_open_with_options(
    socket_path: *const c_char,
    options: *const qsock_receiver_options,
    receiver_out: *mut *mut qsock_receiver,
) -> qsock_status {
    call(|| {
        let mut rust_options = ReceiverOptions::default();
        if !options.is_null() {
            let options = arg(options, "options")?;
            rust_options.socket_mode = options.socket_mode;
            let uids = items(options.allowed_uids, options.n_allowed_uids, usize::MAX, "options->allowed_uids")?;
            rust_options.allowed_uids = uids.to_vec();
        }
        open(socket_path, &rust_options, receiver_out)
    })
}

fn open(
    socket_path: *const c_char,
    options: &ReceiverOptions,
    receiver_out: *mut *mut qsock_receiver,
) -> Result<(), Failure> {
    let path = path(socket_path, "socket_path")?;
    give_out(receiver_out, "receiver_out", || Ok(qsock_receiver::new(Receiver::bind_with(path, options)?)))
}

/// Waits up to `timeout_ms` milliseconds (negative: for ever; 0: just look) for the
/// next buffer, accepting a sender first if none is connected.
///
/// Returns `QSOCK_OK` with `*buffer_out` set to a new buffer, owned by the caller, who
/// must hand it back with `qsock_receiver_release` (that returns it to the sender).
/// Any other status leaves `*buffer_out` NULL (when `buffer_out` is not NULL itself,
/// whatever else is wrong) and says why in `qsock_last_error()`:
/// `QSOCK_TIMEOUT`, `QSOCK_EOS`, `QSOCK_SENDER_GONE` (call again to wait for the next
/// sender), `QSOCK_PROTOCOL_ERROR` (one message rejected; call again to go on),
/// `QSOCK_SENDER_REFUSED` (a sender of a uid not allowed was disconnected; call again to
/// go on), `QSOCK_INTERRUPTED` (`qsock_receiver_interrupt` was called), or an error.
/// Calls on one receiver from several threads take turns.
///
/// Signals: a signal that arrives while it waits does not end the wait (it goes on for
/// the time left after the handler ran). To end it from a signal handler, or from
/// another thread, call `qsock_receiver_interrupt`.
///
/// What it waits for is the sender: the sender, in turn, blocks in `qsock_sender_send`
/// (at most 2 s, then it gives up on this receiver) while this receiver does not read.
/// An app that stops receiving for longer should say DISCONNECT first
/// (`qsock_receiver_send_disconnect`).
#[no_mangle]
pub extern "C" fn qsock_receiver_recv_buffer(
    receiver: *mut qsock_receiver,
    timeout_ms: i32,
    buffer_out: *mut *mut qsock_buffer,
) -> qsock_status {
    call(|| {
        // Set first, so that it is NULL on every path that fails.
        write_out(buffer_out, "buffer_out", std::ptr::null_mut())?;
        let receiver = receiver_arg(receiver)?;
        let deadline = u64::try_from(timeout_ms).ok().map(|ms| Instant::now() + Duration::from_millis(ms));
        let mut receiver = receiver.lock();
        loop {
            let event = receiver.recv(deadline.map(|d| d.saturating_duration_since(Instant::now())))?;
            let path = receiver.path().display();
            return match event {
                Event::Buffer(buffer) => give_out(buffer_out, "buffer_out", || Ok(qsock_buffer::new(buffer))),
                // The credentials are in qsock_receiver_get_stats; wait on for a buffer.
                Event::SenderConnected(_) => continue,
                Event::Eos => Err(Failure::new(
                    QSOCK_EOS,
                    format!("the sender on {path} ended its stream (EOS); it may send again"),
                )),
                Event::SenderGone => Err(Failure::new(
                    QSOCK_SENDER_GONE,
                    format!("the sender on {path} closed the connection; the next call waits for a new sender"),
                )),
                Event::Timeout => {
                    Err(Failure::new(QSOCK_TIMEOUT, format!("nothing arrived on {path} within {timeout_ms} ms")))
                }
                Event::Interrupted => Err(Failure::new(
                    QSOCK_INTERRUPTED,
                    format!("the wait on {path} was interrupted (qsock_receiver_interrupt)"),
                )),
            };
        }
    })
}

/// Makes a `qsock_receiver_recv_buffer` waiting on `receiver` return `QSOCK_INTERRUPTED`
/// at once; when none waits, the next one that would wait returns it instead (an
/// interrupt is never lost, and several before a wait count as one). A call that finds
/// a buffer ready returns the buffer first. Safe from any thread, also while another
/// waits in `qsock_receiver_recv_buffer`, and from a signal handler (it writes to an
/// eventfd, and does nothing else when `receiver` is valid). `receiver` must stay open
/// meanwhile.
#[no_mangle]
pub extern "C" fn qsock_receiver_interrupt(receiver: *const qsock_receiver) -> qsock_status {
    call(|| {
        receiver_arg(receiver)?.handle.interrupt();
        Ok(())
    })
}

/// Releases a buffer: its fds are closed (pooled ones stay cached for their next use)
/// and the return goes to the sender, so it can reuse the memory. Call it exactly once
/// per buffer; `buffer` is invalid afterwards. Safe from any thread, also after the
/// receiver that gave it out was closed. NULL is a no-op.
///
/// Never blocks: when the sender's socket is full (a sender that does not read its
/// returns), the return is queued, and a thread of qsock's sends what is queued as soon
/// as the sender reads, whether or not this receiver is called again. The queue holds at
/// most one return per buffer the sender has out. What is still queued when the process
/// exits is lost with its socket: the sender then sees the receiver gone, which gives it
/// all its memory back as well.
///
/// In a forked child, releasing an inherited buffer closes the child's copies of its fds
/// only: the parent's copy of the buffer is the one that returns it.
#[no_mangle]
pub extern "C" fn qsock_receiver_release(buffer: *mut qsock_buffer) {
    boundary(|| {
        free(buffer);
        Ok(())
    })
}

/// Closes the receiver: answers every message still queued with a return, stops
/// reading, closes the cached fds no buffer still uses, and removes the socket file.
/// Buffers not yet released stay valid; release them as usual. No other call on this
/// receiver may be in progress (`qsock_receiver_interrupt` one first if a thread waits
/// in `qsock_receiver_recv_buffer`). Call it exactly once per receiver; `receiver` is
/// invalid afterwards. NULL is a no-op. Never blocks.
///
/// After fork: in a process other than the one that opened it, close releases only
/// that process's copies (its fds): it removes no file, sends nothing and shuts nothing
/// down, and the parent's receiver goes on. It is the only call a forked child may make
/// on an inherited receiver, with `qsock_receiver_release` on inherited buffers; every
/// other is `QSOCK_INVALID_ARGUMENT`.
#[no_mangle]
pub extern "C" fn qsock_receiver_close(receiver: *mut qsock_receiver) {
    boundary(|| {
        free(receiver);
        Ok(())
    })
}

/// An fd to put in the app's event loop: it polls readable (POLLIN) whenever
/// `qsock_receiver_recv_buffer` has something to do. The same fd for the receiver's
/// whole life; owned by the receiver (do not close it). -1 if `receiver` is NULL.
/// Safe from any thread, also while another waits in `qsock_receiver_recv_buffer`.
#[no_mangle]
pub extern "C" fn qsock_receiver_get_fd(receiver: *const qsock_receiver) -> c_int {
    boundary(|| Ok(receiver_arg(receiver)?.poll_fd))
}

/// Sends DISCONNECT to the sender, as the deployed receiver does when it pauses: the
/// sender stops sending, waits for its buffers to come back, and reconnects later.
/// `QSOCK_SENDER_GONE` if no sender is connected. Safe from any thread, also while
/// another waits in `qsock_receiver_recv_buffer`. Never blocks: when the sender's socket
/// is full, DISCONNECT is queued with the returns.
#[no_mangle]
pub extern "C" fn qsock_receiver_send_disconnect(receiver: *mut qsock_receiver) -> qsock_status {
    call(|| match receiver_arg(receiver)?.handle.send_disconnect()? {
        true => Ok(()),
        false => Err(Failure::new(QSOCK_SENDER_GONE, "no sender is connected: there is none to send DISCONNECT to")),
    })
}

/// Fills `*stats_out` with the receiver's counters. Safe from any thread, also while
/// another waits in `qsock_receiver_recv_buffer`: it never waits for that call, nor slows
/// it down.
#[no_mangle]
pub extern "C" fn qsock_receiver_get_stats(
    receiver: *const qsock_receiver,
    stats_out: *mut qsock_receiver_stats,
) -> qsock_status {
    call(|| {
        let s = receiver_arg(receiver)?.handle.stats();
        let stats = qsock_receiver_stats {
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
        };
        write_out(stats_out, "stats_out", stats)
    })
}
