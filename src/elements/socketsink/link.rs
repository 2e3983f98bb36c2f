//! The sink's link to its receiver. A thread of its own connects (every 10 ms until a
//! receiver listens, as the deployed sink does), reads what the receiver says, lets go of
//! each buffer once all its blocks are returned, and on `DISCONNECT` or a hang-up closes
//! the connection and goes back to connecting. `render` sends through [`Link::send`].
//!
//! Only the thread changes the connection (connects, closes); `render` only marks it
//! broken. The thread polls a duplicate of the socket fd, so it waits without the lock.
//!
//! The link knows no element: it tells the element what happened through a
//! [`LinkEvent`] callback, called outside the lock, and the element logs it.
//!
//! A connection the receiver closes before it has said anything (no return, no
//! `DISCONNECT`) was not served: the receiver refused this sender (`allowed-uids`), serves
//! another one, or broke the protocol at once. After such a connection the link waits
//! longer before the next ([`backoff`]: 10 ms, doubling, at most 1 s), instead of
//! connecting again at once in a loop, and says so once per run of them.

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::elements::lock;
use rustix::event::{EventfdFlags, PollFd, PollFlags};

use super::outgoing::Prepared;
use crate::{Error, PeerCredentials, Sender, SenderEvent};

/// How often the deployed sink retries `connect()`; ours too.
const CONNECT_RETRY: Duration = Duration::from_millis(10);
/// The longest wait after connections the receiver closed unserved.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Unserved connections in a row after which the link reports them (once per run): one
/// alone is ordinary (a receiver resuming from a pause closes the connection a sender made
/// meanwhile), three in a row are a receiver that does not take this sender.
pub(super) const UNSERVED_TO_REPORT: u32 = 3;

/// How long to wait before connecting again after `unserved` connections in a row that
/// the receiver closed before serving them: 10 ms after the first, doubling, at most 1 s.
pub(super) fn backoff(unserved: u32) -> Duration {
    let doublings = unserved.saturating_sub(1).min(16);
    (CONNECT_RETRY * (1 << doublings)).min(MAX_BACKOFF)
}

/// What the `stats` property shows.
#[derive(Debug, Clone, Default)]
pub(super) struct Counters {
    pub buffers_sent: u64,
    pub fds_sent: u64,
    pub copies: u64,
    pub bytes_copied: u64,
    pub bytes_described: u64,
    pub returns: u64,
    /// Connections that carried at least one buffer: a connect() can succeed into the
    /// listen backlog of a receiver that is dying or stopping and never be served.
    pub connections_used: u64,
    pub dropped: u64,
    pub in_flight: u64,
    pub connected: bool,
}

/// What became of a buffer given to [`Link::send`].
#[derive(Debug)]
pub(super) enum Sent {
    /// On its way to the receiver; held until its return.
    Delivered,
    /// Not connected (or the connection just failed): dropped, as the deployed sink does.
    Dropped,
    Flushing,
    /// The sender refused the buffer (it breaks a rule of the protocol).
    Invalid(String),
}

/// What happened on the link, for the element to report.
#[derive(Debug)]
pub(super) enum LinkEvent {
    /// A receiver took the connection.
    Connected,
    /// The receiver said `DISCONNECT` (it paused): nothing more is sent, and the link
    /// connects again once the `still_out` buffers are back. `again`: the link was
    /// already draining (a receiver that paused twice), which changes nothing.
    Disconnect { still_out: usize, again: bool },
    /// Sending a buffer failed: the connection is given up (drained, then closed).
    /// `first`: the first failure reported on this connection (each connection warns once).
    SendFailed { error: Error, first: bool },
    /// Sending EOS failed.
    EosFailed { error: Error, first: bool },
    /// The receiver hung up; the link connects again.
    ReceiverGone,
    /// The receiver broke the protocol (or its socket failed); the link hung up and
    /// connects again.
    ReceiverFailed { error: Error, first: bool },
    /// `in_a_row` connections ([`UNSERVED_TO_REPORT`]) were closed by the receiver before
    /// it said anything valid; told once per run of them. `receiver`: who listens there;
    /// `broke_protocol`: the last one ended with a message that broke the protocol, not a
    /// hang-up.
    Unserved { receiver: Option<PeerCredentials>, in_a_row: u32, retry_in: Duration, broke_protocol: bool },
    /// A connection was served after a reported run of `after` unserved ones.
    ServedAgain { after: u32 },
    /// Every buffer came back after a `DISCONNECT` or a failed send; the link hung up
    /// and connects again.
    Drained,
}

/// How the link tells the element what happened. Called from the link's thread and
/// from `send`/`send_eos`, never with the link's lock held: it may read the counters.
pub(super) type Report = Box<dyn Fn(LinkEvent) + Send + Sync>;

enum Phase {
    Connecting,
    Connected(Sender),
    /// After `DISCONNECT` or a failed send: sends nothing more, closes once nothing is out.
    Draining(Sender),
}

impl Phase {
    /// Stops sending on the connection. The peer may say `DISCONNECT` again before the
    /// first is drained (a receiver that pauses twice while it keeps its last buffer),
    /// and a send may fail while draining: a phase that is not `Connected` stays as it
    /// is. Returns whether it was draining (or closed) already.
    fn start_draining(&mut self) -> bool {
        match std::mem::replace(self, Phase::Connecting) {
            Phase::Connected(sender) => {
                *self = Phase::Draining(sender);
                false
            }
            other => {
                *self = other;
                true
            }
        }
    }
}

/// A sent buffer awaiting its return: the GstBuffers that own its fds, and the buf_ids
/// not yet returned.
struct Held {
    #[expect(dead_code, reason = "never read: owned so that dropping it releases the buffers")]
    holds: Vec<gst::Buffer>,
    ids: Vec<i32>,
}

struct State {
    phase: Phase,
    held: VecDeque<Held>,
    counters: Counters,
    /// No buffer has been sent on the current connection yet.
    unused_connection: bool,
    /// The receiver has said something valid on the current connection (a return,
    /// `DISCONNECT`): it serves this sender.
    served: bool,
    /// A warning was reported for the current connection: later failures on it are not.
    warned: bool,
    /// The current connection's receiver (`SO_PEERCRED`).
    receiver: Option<PeerCredentials>,
    flushing: bool,
    stopping: bool,
}

impl State {
    /// Takes back returned buf_ids; the buffers fully returned are given to `released`.
    fn on_returned(&mut self, ids: &[i32], released: &mut Vec<Held>) {
        for &id in ids.iter().filter(|&&id| id >= 0) {
            self.counters.returns += 1;
            let Some(index) = self.held.iter().position(|h| h.ids.contains(&id)) else { continue };
            let held = &mut self.held[index];
            held.ids.retain(|&i| i != id);
            if held.ids.is_empty() {
                released.extend(self.held.remove(index));
            }
        }
    }

    /// Whether a warning about the current connection is the first one (then it is no more).
    fn first_warning(&mut self) -> bool {
        !std::mem::replace(&mut self.warned, true)
    }

    /// Closes the connection: nothing out with the receiver will come back.
    fn close(&mut self, released: &mut Vec<Held>) {
        self.phase = Phase::Connecting;
        released.extend(self.held.drain(..));
    }
}

struct Shared {
    socket: PathBuf,
    state: Mutex<State>,
    changed: Condvar,
    /// Wakes the thread from its poll (stop, or a send that failed).
    wake: OwnedFd,
    report: Report,
}

impl Shared {
    fn wake_thread(&self) {
        // An eventfd write only fails when the counter would overflow: already woken.
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }
}

/// The connection to the receiver and the thread that keeps it.
pub(super) struct Link {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Link {
    /// Starts the thread that connects to `socket`; what happens is told to `report`.
    pub(super) fn start(socket: PathBuf, report: Report) -> std::io::Result<Link> {
        let wake = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        let shared = Arc::new(Shared {
            socket,
            state: Mutex::new(State {
                phase: Phase::Connecting,
                held: VecDeque::new(),
                counters: Counters::default(),
                unused_connection: false,
                served: false,
                warned: false,
                receiver: None,
                flushing: false,
                stopping: false,
            }),
            changed: Condvar::new(),
            wake,
            report,
        });
        let thread = std::thread::Builder::new().name("qtisocketsink".into()).spawn({
            let shared = shared.clone();
            move || run(&shared)
        })?;
        Ok(Link { shared, thread: Some(thread) })
    }

    /// Sends `prepared`. With `wait`, waits until a receiver is connected (or flushing);
    /// without, drops the buffer when none is.
    pub(super) fn send(&self, prepared: Prepared, wait: bool) -> Sent {
        let mut state = lock(&self.shared.state);
        loop {
            if state.flushing {
                return Sent::Flushing;
            }
            match state.phase {
                Phase::Connected(_) => break,
                _ if wait => state = self.shared.changed.wait(state).unwrap_or_else(|p| p.into_inner()),
                _ => {
                    state.counters.dropped += 1;
                    return Sent::Dropped;
                }
            }
        }
        let Phase::Connected(sender) = &mut state.phase else { unreachable!("checked above") };
        let outgoing = prepared.outgoing();
        let (_, fds_before) = sender.counts();
        let result = sender.send(&outgoing);
        if sender.has_taken_in() {
            // The send found the socket full and read the receiver's returns while it
            // waited for room (else both sides wait on each other): the thread handles them.
            self.shared.wake_thread();
        }
        let fds_sent = sender.counts().1 - fds_before;
        let ids: Vec<i32> =
            outgoing.blocks.iter().filter_map(|b| b.fd).map(|fd| std::os::fd::AsRawFd::as_raw_fd(&fd)).collect();
        drop(outgoing);
        match result {
            Ok(()) => {
                if std::mem::take(&mut state.unused_connection) {
                    state.counters.connections_used += 1;
                }
                let c = &mut state.counters;
                c.buffers_sent += 1;
                c.fds_sent += fds_sent;
                c.copies += prepared.copies;
                c.bytes_copied += prepared.bytes_copied;
                c.bytes_described += prepared.bytes_described;
                if !ids.is_empty() {
                    state.held.push_back(Held { holds: prepared.holds, ids });
                }
                Sent::Delivered
            }
            Err(Error::InvalidBuffer(reason)) => Sent::Invalid(reason),
            Err(error) => {
                state.phase.start_draining();
                state.counters.dropped += 1;
                let first = state.first_warning();
                drop(state);
                (self.shared.report)(LinkEvent::SendFailed { error, first });
                self.shared.wake_thread();
                Sent::Dropped
            }
        }
    }

    /// Sends EOS when connected, then waits up to `timeout` for every buffer out with the
    /// receiver to come back. Returns how many are still out.
    pub(super) fn send_eos(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.shared.state);
        let failed = match &mut state.phase {
            Phase::Connected(sender) => sender.send_eos().err(),
            _ => None,
        };
        if let Some(error) = failed {
            let first = state.first_warning();
            drop(state);
            (self.shared.report)(LinkEvent::EosFailed { error, first });
            state = lock(&self.shared.state);
        }
        while !state.held.is_empty() && !state.flushing {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self.shared.changed.wait_timeout(state, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        state.held.len()
    }

    /// Makes waiting `send`s and `send_eos` return (unlock), or lets them wait again.
    pub(super) fn set_flushing(&self, flushing: bool) {
        lock(&self.shared.state).flushing = flushing;
        self.shared.changed.notify_all();
    }

    pub(super) fn counters(&self) -> Counters {
        let state = lock(&self.shared.state);
        let mut counters = state.counters.clone();
        counters.in_flight = state.held.len() as u64;
        counters.connected = matches!(state.phase, Phase::Connected(_));
        counters
    }
}

impl Drop for Link {
    /// Stops the thread, closes the connection and lets go of every buffer still out.
    fn drop(&mut self) {
        lock(&self.shared.state).stopping = true;
        self.shared.wake_thread();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let mut released = Vec::new();
        lock(&self.shared.state).close(&mut released);
    }
}

fn run(shared: &Shared) {
    // A duplicate of the connected socket, to wait on without holding the lock.
    let mut socket: Option<OwnedFd> = None;
    // Connections in a row the receiver closed before serving them.
    let mut unserved = 0;
    loop {
        if lock(&shared.state).stopping {
            return;
        }
        match socket.as_ref() {
            None => {
                socket = try_connect(shared);
                if socket.is_none() {
                    wait(&[shared.wake.as_fd()], Some(CONNECT_RETRY));
                }
            }
            Some(fd) => {
                wait(&[fd.as_fd(), shared.wake.as_fd()], None);
                let mut counter = [0u8; 8];
                let _ = rustix::io::read(&shared.wake, &mut counter);
                let Served::Closed { served, receiver, broke_protocol } = serve(shared) else { continue };
                socket = None;
                if served {
                    if unserved >= UNSERVED_TO_REPORT {
                        (shared.report)(LinkEvent::ServedAgain { after: unserved });
                    }
                    unserved = 0;
                    continue;
                }
                unserved += 1;
                let retry_in = backoff(unserved);
                if unserved == UNSERVED_TO_REPORT {
                    (shared.report)(LinkEvent::Unserved { receiver, in_a_row: unserved, retry_in, broke_protocol });
                }
                // Woken early only to stop.
                wait(&[shared.wake.as_fd()], Some(retry_in));
            }
        }
    }
}

/// What became of the connection after [`serve`].
enum Served {
    Open,
    /// Closed; `served`: the receiver had said something valid on it; `broke_protocol`: it
    /// ended on a message that broke the protocol.
    Closed {
        served: bool,
        receiver: Option<PeerCredentials>,
        broke_protocol: bool,
    },
}

/// One connection attempt; on success the new connection is published.
fn try_connect(shared: &Shared) -> Option<OwnedFd> {
    let sender = Sender::connect(&shared.socket).ok()?;
    let fd = sender.as_fd().try_clone_to_owned().ok()?;
    let receiver = sender.receiver_credentials();
    let mut state = lock(&shared.state);
    state.unused_connection = true;
    state.served = false;
    state.warned = false;
    state.receiver = receiver;
    state.phase = Phase::Connected(sender);
    drop(state);
    shared.changed.notify_all();
    (shared.report)(LinkEvent::Connected);
    Some(fd)
}

/// Handles everything the receiver has said.
fn serve(shared: &Shared) -> Served {
    let mut released = Vec::new();
    let mut events = Vec::new();
    let mut state = lock(&shared.state);
    let mut ended = None;
    // Only this thread closes, so a connection is there; were it not, nothing to read.
    while let Phase::Connected(sender) | Phase::Draining(sender) = &mut state.phase {
        match sender.next_event(Some(Duration::ZERO)) {
            Ok(None) => break,
            Ok(Some(SenderEvent::Returned(ids))) => {
                state.served = true;
                state.on_returned(&ids, &mut released)
            }
            Ok(Some(SenderEvent::Disconnect)) => {
                state.served = true;
                let again = state.phase.start_draining();
                events.push(LinkEvent::Disconnect { still_out: state.held.len(), again });
            }
            Ok(Some(SenderEvent::ReceiverGone)) => {
                ended = Some(LinkEvent::ReceiverGone);
                break;
            }
            Err(error) => {
                let first = state.first_warning();
                ended = Some(LinkEvent::ReceiverFailed { error, first });
                break;
            }
        }
    }
    let drained = matches!(&state.phase, Phase::Draining(sender) if sender.in_flight() == 0);
    let closing = ended.is_some() || drained || state.stopping || matches!(state.phase, Phase::Connecting);
    let served = if closing {
        state.close(&mut released);
        let broke_protocol = matches!(ended, Some(LinkEvent::ReceiverFailed { .. }));
        Served::Closed { served: state.served, receiver: state.receiver, broke_protocol }
    } else {
        Served::Open
    };
    drop(state);
    shared.changed.notify_all();
    events.extend(ended.or(drained.then_some(LinkEvent::Drained)));
    for event in events {
        (shared.report)(event);
    }
    // Pooled buffers go back to their pools outside the lock.
    drop(released);
    served
}

/// Waits until one of `fds` is readable or `timeout` passes.
fn wait(fds: &[std::os::fd::BorrowedFd<'_>], timeout: Option<Duration>) {
    let mut poll_fds: Vec<PollFd<'_>> = fds.iter().map(|fd| PollFd::new(fd, PollFlags::IN)).collect();
    let timespec = timeout.and_then(|t| rustix::event::Timespec::try_from(t).ok());
    // EINTR and the like: the caller looks at the state and waits again.
    let _ = rustix::event::poll(&mut poll_fds, timespec.as_ref());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_after_unserved_connections_starts_at_the_deployed_retry_and_doubles_to_a_second() {
        let waits: Vec<u128> = (1..=9).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(backoff(0), CONNECT_RETRY);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
