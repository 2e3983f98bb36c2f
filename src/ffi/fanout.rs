//! `qsock_fanout_*`: one sender, every receiver listening in a directory (the library's
//! [`Fanout`]), for C. What C holds on to a sent buffer is a ticket: the fan-out's hold
//! on the buffer is a [`Ticket`] whose drop (when no receiver holds the buffer any more)
//! queues its number for `qsock_fanout_next_released` and makes the release eventfd
//! readable.

use std::collections::VecDeque;
use std::ffi::{c_char, c_int};
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::transport::OwnerProcess;
use rustix::event::{EventfdFlags, PollFd, PollFlags};

use super::sender::{forked, outgoing_buffer};
use super::*;
use crate::{Delivery, Destination, Fanout, FanoutEvent, FanoutOptions, PeerStats, SlowReceiver};

/// A fan-out: one sender, every receiver listening on a socket in a directory. Opaque.
/// Every call but `qsock_fanout_close` may be made from any thread, also while another
/// thread is in another call on the same fan-out (buffers sent from several threads at
/// once go out in the order the fan-out takes them).
pub struct qsock_fanout {
    /// `ManuallyDrop`: dropped only in the process that opened it (a forked child must
    /// not join a thread it does not have, nor touch a lock another thread held at fork).
    fanout: ManuallyDrop<Fanout<Ticket>>,
    releases: ManuallyDrop<Arc<Releases>>,
    /// Written by `qsock_fanout_interrupt`; read by the `next_released` wait it ends.
    interrupt: ManuallyDrop<OwnedFd>,
    /// Set once the directory could not be followed any more (the fan-out's report).
    directory_failed: Arc<AtomicBool>,
    next_ticket: AtomicU64,
    wait_for_receiver: bool,
    /// The process that opened it: after fork, the child may only close its copy.
    owner: OwnerProcess,
}

impl Handle for qsock_fanout {}
const _: fn() = || {
    fn sync<T: Sync>() {}
    sync::<qsock_fanout>();
};

impl qsock_fanout {
    /// Refuses a call from a forked child.
    fn check_process(&self) -> Result<&qsock_fanout, Failure> {
        match self.owner.is_this() {
            true => Ok(self),
            false => Err(forked(self.owner.pid(), "fan-out", "qsock_fanout_close")),
        }
    }
}

impl Drop for qsock_fanout {
    fn drop(&mut self) {
        if !self.owner.is_this() {
            // A forked child's copy: nothing of it is touched (see qsock_fanout_close).
            return;
        }
        // SAFETY: each field is dropped once, here, and never used again. The fan-out
        // first: its thread stops and the tickets it still holds are dropped (queued).
        unsafe {
            ManuallyDrop::drop(&mut self.fanout);
            ManuallyDrop::drop(&mut self.releases);
            ManuallyDrop::drop(&mut self.interrupt);
        }
    }
}

/// The fan-out's hold on one sent buffer: dropped when no receiver holds it any more.
struct Ticket {
    number: u64,
    releases: Arc<Releases>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.releases.release(self.number);
    }
}

/// The tickets released and not yet taken, and the eventfd that is readable while there
/// are some.
struct Releases {
    queue: Mutex<ReleaseQueue>,
    /// Readable exactly while `queue.released` is not empty (both change under the lock).
    ready: OwnedFd,
}

#[derive(Default)]
struct ReleaseQueue {
    released: VecDeque<u64>,
    /// Tickets whose `qsock_fanout_send` has not returned yet: a release of one of them is
    /// put in `early`, not queued, and the send gives the caller no ticket at all.
    sending: Vec<u64>,
    early: Vec<u64>,
}

impl Releases {
    fn lock(&self) -> MutexGuard<'_, ReleaseQueue> {
        // Only pushes and pops under it: a poisoned lock is consistent.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn release(&self, ticket: u64) {
        let mut queue = self.lock();
        if queue.sending.contains(&ticket) {
            queue.early.push(ticket);
        } else {
            queue.released.push_back(ticket);
            if queue.released.len() == 1 {
                // Only fails when the counter would overflow: readable already.
                let _ = rustix::io::write(&self.ready, &1u64.to_ne_bytes());
            }
        }
    }

    fn take(&self) -> Option<u64> {
        let mut queue = self.lock();
        let ticket = queue.released.pop_front()?;
        if queue.released.is_empty() {
            let mut counter = [0u8; 8];
            let _ = rustix::io::read(&self.ready, &mut counter);
        }
        Some(ticket)
    }
}

/// What a receiver that holds `max_in_flight` buffers already does to the next one.
/// (`qsock_fanout_options.slow_receiver` is an `int` holding one of these: qsock checks
/// the value it reads.)
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum qsock_slow_receiver {
    /// That receiver misses the buffer (counted in its `skipped`); the others get it at
    /// once. No receiver can hold the sender up. The default.
    QSOCK_SLOW_RECEIVER_SKIP = 1,
    /// Back-pressure: `qsock_fanout_send` waits until that receiver gives one back or
    /// leaves. A stuck receiver stops the sender (and so every other receiver).
    QSOCK_SLOW_RECEIVER_WAIT = 2,
}

/// How a fan-out treats its receivers. Fill it with `qsock_fanout_options_init` first,
/// then change what you need.
#[repr(C)]
pub struct qsock_fanout_options {
    /// Buffers one receiver may hold (not yet given back) before `slow_receiver` applies.
    /// Default 4. 0: no limit of the fan-out's own; then a receiver that never gives
    /// anything back holds every buffer you send, until it dies or leaves.
    pub max_in_flight: usize,
    /// A `qsock_slow_receiver`: `QSOCK_SLOW_RECEIVER_SKIP` (the default) or
    /// `QSOCK_SLOW_RECEIVER_WAIT`; any other value, 0 from a zeroed struct included, is
    /// `QSOCK_INVALID_ARGUMENT`.
    pub slow_receiver: c_int,
    /// When no receiver is connected: false (the default), `qsock_fanout_send` drops the
    /// buffer at once (`QSOCK_DELIVERY_NO_RECEIVER`), as the deployed sink does; true, it
    /// waits until a receiver connects.
    pub wait_for_receiver: bool,
}

/// What became of a buffer given to `qsock_fanout_send`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum qsock_delivery {
    /// The call did not return `QSOCK_OK`: nothing was sent.
    QSOCK_DELIVERY_NONE = 0,
    /// Sent to `receivers` receivers (each receiver at its limit, if any, missed it).
    QSOCK_DELIVERY_SENT = 1,
    /// No receiver was connected: dropped (counted in `dropped`).
    QSOCK_DELIVERY_NO_RECEIVER = 2,
    /// Every connected receiver held `max_in_flight` buffers already: each missed it
    /// (counted in their `skipped`). Only with `QSOCK_SLOW_RECEIVER_SKIP`.
    QSOCK_DELIVERY_SKIPPED = 3,
}

/// What `qsock_fanout_send` did with a buffer.
#[repr(C)]
pub struct qsock_fanout_sent {
    pub delivery: qsock_delivery,
    /// How many receivers got it (0 unless `QSOCK_DELIVERY_SENT`).
    pub receivers: usize,
    /// Not 0: some receiver holds the buffer. Keep its fds open and its memory unchanged
    /// until `qsock_fanout_next_released` gives this ticket, which it does exactly once.
    /// 0: nothing holds it (not sent, a buffer without fds, or every receiver gave it back
    /// already): its memory is yours again at once, and no ticket will come for it.
    pub ticket: u64,
}

/// Bytes in `qsock_fanout_receiver_info.socket_path`: a UNIX socket path (at most 107
/// bytes) and its NUL.
pub const QSOCK_SOCKET_PATH_SIZE: usize = 108;
const _: () = assert!(QSOCK_SOCKET_PATH_SIZE == crate::transport::MAX_SOCKET_PATH_LEN + 1);

/// One connected receiver's figures, for its current connection (they start again at 0
/// when it reconnects).
#[repr(C)]
pub struct qsock_fanout_receiver_info {
    /// The socket it listens on, NUL-terminated.
    pub socket_path: [c_char; QSOCK_SOCKET_PATH_SIZE],
    /// The receiver's process id, uid and gid as the kernel saw them (SO_PEERCRED); -1
    /// when unknown.
    pub pid: i64,
    pub uid: i64,
    pub gid: i64,
    /// Buffers sent to it.
    pub buffers_sent: u64,
    /// fds sent to it (a pooled buffer's fds cross once).
    pub fds_sent: u64,
    /// Buffers it missed because it held `max_in_flight` already.
    pub skipped: u64,
    /// Buffers it holds now.
    pub in_flight: u64,
    /// Memory blocks it gave back.
    pub returns: u64,
    /// When this connection was made: ns since 1970 (CLOCK_REALTIME).
    pub connected_since_ns: u64,
}

/// A fan-out's counters, over its whole life, all receivers together.
#[repr(C)]
pub struct qsock_fanout_stats {
    /// Buffers that went to at least one receiver.
    pub buffers_sent: u64,
    /// fds sent.
    pub fds_sent: u64,
    /// Memory blocks given back.
    pub returns: u64,
    /// Buffers sent while no receiver was connected (`QSOCK_DELIVERY_NO_RECEIVER`).
    pub dropped: u64,
    /// Buffers a receiver missed, summed over the receivers.
    pub skipped: u64,
    /// Buffers some receiver still holds: tickets not released yet (not counting those
    /// released and waiting for `qsock_fanout_next_released`).
    pub in_flight: u64,
    /// Connections that carried at least one buffer (a receiver that reconnects counts again).
    pub connections_used: u64,
    /// Receivers connected now.
    pub receivers: usize,
    /// The directory could not be followed any more (removed, moved, or no longer
    /// readable): no new receiver can join. The connections made go on.
    pub directory_failed: bool,
}

/// Fills `*options` with the defaults: `max_in_flight` 4, `QSOCK_SLOW_RECEIVER_SKIP`,
/// `wait_for_receiver` false.
#[no_mangle]
pub extern "C" fn qsock_fanout_options_init(options: *mut qsock_fanout_options) -> qsock_status {
    call(|| write_out(options, "options", default_options()))
}

fn default_options() -> qsock_fanout_options {
    qsock_fanout_options {
        max_in_flight: 4,
        slow_receiver: qsock_slow_receiver::QSOCK_SLOW_RECEIVER_SKIP as c_int,
        wait_for_receiver: false,
    }
}

/// Starts a fan-out to every receiver listening on a socket in `socket_dir` (a
/// `qsock_receiver_open` on a path in it, or a `qtisocketsrc socket=...`). It follows the
/// directory while it runs (inotify): a receiver joins by creating its socket there, and
/// leaves by removing it, closing, pausing (DISCONNECT) or dying; it connects again to a
/// receiver that paused or reconnected. Anything else in the directory is ignored, and so
/// is a socket nobody listens on (tried again less and less often, at most every second).
/// `options` NULL: the defaults (`qsock_fanout_options_init`).
///
/// Starts a thread of qsock's (`qsock-fanout`), which connects, reads the receivers'
/// returns and releases tickets. Every fd it makes is close-on-exec.
///
/// `QSOCK_IO_ERROR`, naming the directory, when it does not exist, is not a directory or
/// cannot be read; `QSOCK_INVALID_ARGUMENT` for a bad option. On `QSOCK_OK`, `*fanout_out`
/// is a new fan-out owned by the caller, freed with `qsock_fanout_close`; on failure it is
/// left unchanged. Never blocks.
#[no_mangle]
pub extern "C" fn qsock_fanout_open(
    socket_dir: *const c_char,
    options: *const qsock_fanout_options,
    fanout_out: *mut *mut qsock_fanout,
) -> qsock_status {
    call(|| {
        let dir = path(socket_dir, "socket_dir")?;
        let options = match options.is_null() {
            true => default_options(),
            false => {
                let o = arg(options, "options")?;
                qsock_fanout_options {
                    max_in_flight: o.max_in_flight,
                    slow_receiver: o.slow_receiver,
                    wait_for_receiver: o.wait_for_receiver,
                }
            }
        };
        let slow_receiver = match options.slow_receiver {
            s if s == qsock_slow_receiver::QSOCK_SLOW_RECEIVER_SKIP as c_int => SlowReceiver::Skip,
            s if s == qsock_slow_receiver::QSOCK_SLOW_RECEIVER_WAIT as c_int => SlowReceiver::Wait,
            s => {
                return Err(invalid(format!(
                    "options->slow_receiver {s} is not a qsock_slow_receiver \
                     (QSOCK_SLOW_RECEIVER_SKIP 1, QSOCK_SLOW_RECEIVER_WAIT 2)"
                )))
            }
        };
        let fanout_options = FanoutOptions {
            max_in_flight: (options.max_in_flight > 0).then_some(options.max_in_flight),
            slow_receiver,
        };
        arg_mut(fanout_out, "fanout_out")?;
        // Read once here, so that what cannot be read fails now, naming it, and not later
        // in the fan-out's thread.
        let io = |what: String, source| Failure::from(crate::Error::Io { what, source });
        std::fs::read_dir(dir)
            .map_err(|e| io(format!("reading the receivers' socket directory {}", dir.display()), e))?;
        let eventfd = |what: &str| {
            rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
                .map_err(|e| io(format!("making the fan-out's {what} eventfd"), e.into()))
        };
        let releases = Arc::new(Releases { queue: Mutex::default(), ready: eventfd("release")? });
        let interrupt = eventfd("interrupt")?;
        let directory_failed = Arc::new(AtomicBool::new(false));
        let report: crate::fanout::Report = Box::new({
            let directory_failed = directory_failed.clone();
            move |event| {
                if let FanoutEvent::DirectoryFailed { .. } = event {
                    directory_failed.store(true, Ordering::Relaxed);
                }
            }
        });
        give_out(fanout_out, "fanout_out", || {
            let fanout = Fanout::start(Destination::Directory(dir.to_owned()), fanout_options, report)?;
            Ok(qsock_fanout {
                fanout: ManuallyDrop::new(fanout),
                releases: ManuallyDrop::new(releases),
                interrupt: ManuallyDrop::new(interrupt),
                directory_failed,
                next_ticket: AtomicU64::new(1),
                wait_for_receiver: options.wait_for_receiver,
                owner: OwnerProcess::this(),
            })
        })
    })
}

/// Sends one buffer (described as for `qsock_sender_send`) to every connected receiver
/// under its `max_in_flight`. `QSOCK_OK` when it went to some, or to none for an ordinary
/// reason: `*sent_out` says which (`QSOCK_DELIVERY_SENT`, `_NO_RECEIVER`, `_SKIPPED`) and
/// gives the buffer's ticket. Keep the buffer's fds open and its memory unchanged until
/// `qsock_fanout_next_released` gives that ticket back (a ticket of 0: the memory is yours
/// again at once). `*sent_out` is set on every path (`QSOCK_DELIVERY_NONE`, ticket 0, when
/// the status is not `QSOCK_OK`).
///
/// Other statuses (nothing sent, the memory is yours): `QSOCK_INVALID_ARGUMENT` when the
/// buffer breaks a rule a receiver checks, as for `qsock_sender_send` (`kind`, the counts
/// and the fd numbers are checked on every call; the rest, such as sizes against the
/// fds' objects, only when a receiver is there to send to), `QSOCK_INTERRUPTED` while
/// flushing (`qsock_fanout_set_flushing`). A receiver whose socket fails is given up (it
/// gets buffers no more, and the fan-out connects again); that is no error of the send.
///
/// Blocks: with `QSOCK_SLOW_RECEIVER_WAIT`, while a receiver holds `max_in_flight`
/// buffers, until it gives one back or leaves; with `wait_for_receiver`, until a receiver
/// connects; `qsock_fanout_set_flushing` ends either wait. Besides, a receiver's full
/// socket makes it wait up to 2 s for room (then that receiver is given up). Never waits
/// otherwise.
#[no_mangle]
pub extern "C" fn qsock_fanout_send(
    fanout: *mut qsock_fanout,
    buffer: *const qsock_send_buffer,
    sent_out: *mut qsock_fanout_sent,
) -> qsock_status {
    call(|| {
        let nothing = qsock_fanout_sent { delivery: qsock_delivery::QSOCK_DELIVERY_NONE, receivers: 0, ticket: 0 };
        write_out(sent_out, "sent_out", nothing)?;
        let f = handle(fanout, "fanout")?.check_process()?;
        let outgoing = outgoing_buffer(arg(buffer, "buffer")?)?;
        let number = f.next_ticket.fetch_add(1, Ordering::Relaxed);
        f.releases.lock().sending.push(number);
        let ticket = Ticket { number, releases: Arc::clone(&f.releases) };
        let delivery = f.fanout.send(&outgoing, ticket, f.wait_for_receiver);
        // The ticket was dropped (and set aside) when nothing holds the buffer any more.
        let held = {
            let mut queue = f.releases.lock();
            queue.sending.retain(|&t| t != number);
            let early = queue.early.iter().position(|&t| t == number);
            early.map(|i| queue.early.swap_remove(i)).is_none()
        };
        let sent = |delivery, receivers| qsock_fanout_sent { delivery, receivers, ticket: 0 };
        let sent = match delivery {
            Delivery::Sent { receivers } => qsock_fanout_sent {
                ticket: if held { number } else { 0 },
                ..sent(qsock_delivery::QSOCK_DELIVERY_SENT, receivers)
            },
            Delivery::NoReceiver => sent(qsock_delivery::QSOCK_DELIVERY_NO_RECEIVER, 0),
            Delivery::Skipped => sent(qsock_delivery::QSOCK_DELIVERY_SKIPPED, 0),
            Delivery::Flushing => {
                let message = "the fan-out is flushing (qsock_fanout_set_flushing): nothing was sent";
                return Err(Failure::new(QSOCK_INTERRUPTED, message));
            }
            Delivery::Invalid(reason) => return Err(crate::Error::InvalidBuffer(reason).into()),
        };
        debug_assert!(sent.ticket == 0 || held);
        write_out(sent_out, "sent_out", sent)
    })
}

/// Waits up to `timeout_ms` (negative: for ever; 0: just look) for the next ticket that
/// no receiver holds any more (every receiver that got its buffer gave it back, hung up
/// or died): `QSOCK_OK` with `*ticket_out` set; its buffer's memory is yours again.
/// Tickets come in the order they were released, each exactly once, to one caller.
/// `QSOCK_TIMEOUT`, or `QSOCK_INTERRUPTED` (`qsock_fanout_interrupt`), leave
/// `*ticket_out` unchanged.
///
/// Signals: a signal that arrives while it waits does not end the wait (it goes on for
/// the time left after the handler ran). To end it from a signal handler, or from
/// another thread, call `qsock_fanout_interrupt`.
#[no_mangle]
pub extern "C" fn qsock_fanout_next_released(
    fanout: *mut qsock_fanout,
    timeout_ms: i32,
    ticket_out: *mut u64,
) -> qsock_status {
    call(|| {
        let f = handle(fanout, "fanout")?.check_process()?;
        arg_mut(ticket_out, "ticket_out")?;
        let deadline = u64::try_from(timeout_ms).ok().map(|ms| Instant::now() + Duration::from_millis(ms));
        loop {
            if let Some(ticket) = f.releases.take() {
                return write_out(ticket_out, "ticket_out", ticket);
            }
            let mut counter = [0u8; 8];
            if rustix::io::read(&*f.interrupt, &mut counter).is_ok() {
                let message = "the wait for a released ticket was interrupted (qsock_fanout_interrupt)";
                return Err(Failure::new(QSOCK_INTERRUPTED, message));
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|left| left.is_zero()) {
                return Err(Failure::new(QSOCK_TIMEOUT, format!("no ticket was released within {timeout_ms} ms")));
            }
            let timespec = left.and_then(|t| rustix::event::Timespec::try_from(t).ok());
            let mut fds = [PollFd::new(&f.releases.ready, PollFlags::IN), PollFd::new(&*f.interrupt, PollFlags::IN)];
            match rustix::event::poll(&mut fds, timespec.as_ref()) {
                // EINTR: a signal does not end the wait; the loop looks again.
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    return Err(
                        crate::Error::Io { what: "waiting for a released ticket".into(), source: e.into() }.into()
                    )
                }
            }
        }
    })
}

/// Makes a `qsock_fanout_next_released` waiting on `fanout` return `QSOCK_INTERRUPTED`
/// at once; when none waits, the next one that would wait returns it instead (an
/// interrupt is never lost, and several before a wait count as one). A call that finds
/// a ticket ready returns it first. It does not end a waiting `qsock_fanout_send`: that
/// is `qsock_fanout_set_flushing`. Safe from any thread and from a signal handler (it
/// writes to an eventfd, and does nothing else when `fanout` is valid). `fanout` must
/// stay open meanwhile.
#[no_mangle]
pub extern "C" fn qsock_fanout_interrupt(fanout: *const qsock_fanout) -> qsock_status {
    call(|| {
        let f = handle(fanout, "fanout")?.check_process()?;
        // Only fails when the counter would overflow: interrupted already.
        let _ = rustix::io::write(&*f.interrupt, &1u64.to_ne_bytes());
        Ok(())
    })
}

/// `flushing` true: a `qsock_fanout_send` or `qsock_fanout_send_eos` waiting (for a slow
/// receiver, for a receiver to connect, for buffers to come back) returns at once, and
/// every `qsock_fanout_send` returns `QSOCK_INTERRUPTED` without sending until it is set
/// back to false. Receivers keep what they hold, and tickets are released as before.
/// From any thread, not from a signal handler (it takes a lock).
#[no_mangle]
pub extern "C" fn qsock_fanout_set_flushing(fanout: *mut qsock_fanout, flushing: bool) -> qsock_status {
    call(|| {
        handle(fanout, "fanout")?.check_process()?.fanout.set_flushing(flushing);
        Ok(())
    })
}

/// An fd for the app's event loop: it polls readable (POLLIN) while a released ticket
/// waits for `qsock_fanout_next_released` (take them until `QSOCK_TIMEOUT` with a
/// timeout of 0, or one per wake-up: it stays readable while any is left). The same fd for
/// the fan-out's whole life; owned by it (do not close or read it). -1 if `fanout` is NULL
/// (or in a forked child). Safe from any thread.
#[no_mangle]
pub extern "C" fn qsock_fanout_get_fd(fanout: *const qsock_fanout) -> c_int {
    boundary(|| Ok(handle(fanout, "fanout")?.check_process()?.releases.ready.as_fd().as_raw_fd()))
}

/// Sends EOS to every connected receiver, then waits up to `timeout_ms` (negative: for
/// ever) for every buffer out to come back (or for `qsock_fanout_set_flushing`).
/// `*still_out` (NULL: not wanted): how many buffers some receiver still holds; their
/// tickets come later from `qsock_fanout_next_released`, or never when you close first.
/// The tickets released meanwhile wait for `qsock_fanout_next_released`. A receiver whose
/// socket fails is given up; that is no error of the call. Does not stop the fan-out: you
/// may send again (receivers take it as a new stream).
#[no_mangle]
pub extern "C" fn qsock_fanout_send_eos(
    fanout: *mut qsock_fanout,
    timeout_ms: i32,
    still_out: *mut usize,
) -> qsock_status {
    call(|| {
        let f = handle(fanout, "fanout")?.check_process()?;
        // For ever: a century, which any Instant holds.
        let timeout = u64::try_from(timeout_ms).map_or(Duration::from_secs(100 * 365 * 86400), Duration::from_millis);
        let left = f.fanout.send_eos(timeout);
        if !still_out.is_null() {
            write_out(still_out, "still_out", left)?;
        }
        Ok(())
    })
}

/// Fills `*stats_out` with the fan-out's counters, and the first `capacity` entries of
/// `receivers` (NULL when `capacity` is 0) with the receivers connected now, in no
/// particular order: `stats_out->receivers` says how many there are. When there are more
/// than `capacity`, the rest are left out (call again with more room); when fewer, the
/// entries past them are left unchanged. Both come from one look, so they agree. Safe
/// from any thread. Never waits for a waiting `qsock_fanout_send`, but may wait while one
/// writes to the receivers' sockets (at most 2 s, when a receiver's socket is full).
#[no_mangle]
pub extern "C" fn qsock_fanout_get_stats(
    fanout: *const qsock_fanout,
    stats_out: *mut qsock_fanout_stats,
    receivers: *mut qsock_fanout_receiver_info,
    capacity: usize,
) -> qsock_status {
    call(|| {
        let f = handle(fanout, "fanout")?.check_process()?;
        arg_mut(stats_out, "stats_out")?;
        let s = f.fanout.stats();
        write_items(receivers, capacity, "receivers", s.receivers.iter().map(receiver_info))?;
        let stats = qsock_fanout_stats {
            buffers_sent: s.buffers_sent,
            fds_sent: s.fds_sent,
            returns: s.returns,
            dropped: s.dropped,
            skipped: s.skipped,
            in_flight: s.in_flight,
            connections_used: s.connections_used,
            receivers: s.receivers.len(),
            directory_failed: f.directory_failed.load(Ordering::Relaxed),
        };
        write_out(stats_out, "stats_out", stats)
    })
}

fn receiver_info(peer: &PeerStats) -> qsock_fanout_receiver_info {
    let mut socket_path = [0 as c_char; QSOCK_SOCKET_PATH_SIZE];
    // A directory entry's path holds no NUL, and the fan-out takes none longer than a
    // socket address holds; cut all the same rather than overrun.
    let bytes = peer.socket.as_os_str().as_bytes();
    for (to, &from) in socket_path.iter_mut().zip(bytes.iter().take(QSOCK_SOCKET_PATH_SIZE - 1)) {
        *to = from as c_char;
    }
    let credentials = peer.credentials;
    qsock_fanout_receiver_info {
        socket_path,
        pid: credentials.map_or(-1, |c| c.pid.into()),
        uid: credentials.map_or(-1, |c| c.uid.into()),
        gid: credentials.map_or(-1, |c| c.gid.into()),
        buffers_sent: peer.buffers_sent,
        fds_sent: peer.fds_sent,
        skipped: peer.skipped,
        in_flight: peer.in_flight,
        returns: peer.returns,
        connected_since_ns: peer
            .connected_since
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
    }
}

/// Stops the fan-out and frees it: its thread ends, every connection closes (each
/// receiver sees its sender gone, which gives it nothing back: it closes its fds), and
/// every buffer is let go. Tickets not released yet never will be (nor those released and
/// not taken): the memory of every buffer sent is yours again. No other call on this
/// fan-out may be in progress (end waits first: `qsock_fanout_interrupt`,
/// `qsock_fanout_set_flushing`). Blocks while the fan-out's thread stops: it finishes
/// what it is doing first (a connection attempt, reading what a receiver said). Call it
/// exactly once per fan-out; `fanout` is invalid afterwards. NULL is a no-op.
///
/// After fork: in a process other than the one that opened it, close frees the handle
/// only and touches nothing of the fan-out: it sends nothing, closes no connection of
/// the parent's, joins no thread. The child's copies of the fan-out's fds (its
/// connections, eventfds, inotify) stay open until the child exits or execs (they are
/// close-on-exec), so a child that lives on without exec keeps the connections of that
/// moment open: a receiver the parent closes then sees the hang-up when the child exits.
/// It is the only call a forked child may make on an inherited fan-out; every other is
/// `QSOCK_INVALID_ARGUMENT` (and `qsock_fanout_get_fd` -1).
#[no_mangle]
pub extern "C" fn qsock_fanout_close(fanout: *mut qsock_fanout) {
    boundary(|| {
        free(fanout);
        Ok(())
    })
}
