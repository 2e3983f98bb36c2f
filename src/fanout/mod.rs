//! One sender, many receivers: a fan-out that no slow or stuck receiver can stall.
//!
//! A [`Fanout`] sends to one socket path ([`Destination::Socket`], one receiver, as the
//! deployed sink does) or to every receiver listening in a directory
//! ([`Destination::Directory`], followed with inotify). Each receiver speaks the deployed
//! protocol on its own connection, with its own fd cache, buffers in flight, reconnect
//! state and counters. A buffer goes to every connected receiver under its
//! `max_in_flight`; a receiver at its limit makes [`Fanout::send`] wait
//! ([`SlowReceiver::Wait`]) or misses that buffer ([`SlowReceiver::Skip`]). The caller's
//! hold on a buffer (its memory, a pool slot) is dropped once every receiver that got it
//! has returned it, hung up or died.
//!
//! A thread of its own (`qsock-fanout`) connects (every 10 ms, as the deployed sink does;
//! in a directory with a growing delay for sockets nobody listens on), reads what the
//! receivers say, lets go of buffers as they come back, and on `DISCONNECT` or a hang-up
//! closes that connection and connects again. What happens is told to a [`Report`]
//! callback, outside the lock. While buffers flow, the sends can read the returns instead
//! ([`Fanout::set_handoff_below`]), so that a return wakes no thread.

mod directory;
mod peer;
mod returns;
mod thread;

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use peer::PeerStats;
use peer::{BufIds, Out, Peer, Phase};
pub use returns::WaitingElsewhere;

use crate::{Error, OutgoingBuffer, PeerCredentials};

/// Where a fan-out sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// The one receiver listening at this path.
    Socket(PathBuf),
    /// Every receiver listening on a socket in this directory, as they come and go.
    Directory(PathBuf),
}

/// What a buffer does about a receiver that holds `max_in_flight` buffers already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowReceiver {
    /// Back-pressure: the send waits until that receiver returns one (or leaves).
    Wait,
    /// That receiver misses this buffer (counted); the others get it at once.
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FanoutOptions {
    /// Buffers one receiver may hold; `None`: no limit of the fan-out's own (what the
    /// caller's pool bounds).
    pub max_in_flight: Option<usize>,
    pub slow_receiver: SlowReceiver,
}

/// What became of a buffer given to [`Fanout::send`].
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// On its way to this many receivers; held until each has returned it.
    Sent { receivers: usize },
    /// No receiver is connected: dropped, as the deployed sink does.
    NoReceiver,
    /// Every connected receiver was at its limit: each missed it.
    Skipped,
    /// [`Fanout::set_flushing`] made a waiting send return.
    Flushing,
    /// The buffer breaks a rule of the protocol.
    Invalid(String),
}

/// What happened, for the caller to log or post. `socket` names the receiver's path.
#[derive(Debug)]
pub enum FanoutEvent {
    /// A connection was made to the receiver at `socket`.
    Connected {
        socket: PathBuf,
    },
    /// A receiver took its first buffer on a new connection.
    Joined(PeerStats),
    /// A receiver that had joined is gone (hung up, died, paused and drained, failed):
    /// its last figures.
    Left(PeerStats),
    /// The receiver said `DISCONNECT` (it paused): nothing more is sent to it, and the
    /// fan-out connects again once the `still_out` buffers are back. `again`: it was
    /// draining already.
    Disconnect {
        socket: PathBuf,
        still_out: usize,
        again: bool,
    },
    /// Sending failed: the connection is given up (drained, then closed). `first`: the
    /// first failure reported on this connection.
    SendFailed {
        socket: PathBuf,
        error: Error,
        first: bool,
    },
    EosFailed {
        socket: PathBuf,
        error: Error,
        first: bool,
    },
    /// The receiver hung up; the fan-out connects again while its socket is there.
    ReceiverGone {
        socket: PathBuf,
    },
    /// The receiver broke the protocol (or its socket failed): hung up on.
    ReceiverFailed {
        socket: PathBuf,
        error: Error,
        first: bool,
    },
    /// [`UNSERVED_TO_REPORT`] connections in a row were closed before the receiver said
    /// anything valid; told once per run of them.
    Unserved {
        socket: PathBuf,
        receiver: Option<PeerCredentials>,
        in_a_row: u32,
        retry_in: Duration,
        broke_protocol: bool,
    },
    /// A connection was served after a reported run of `after` unserved ones.
    ServedAgain {
        socket: PathBuf,
        after: u32,
    },
    /// Every buffer came back after a `DISCONNECT` or a failed send; hung up.
    Drained {
        socket: PathBuf,
    },
    /// An entry of the directory that is no receiver's socket, or a socket nobody
    /// listens on (yet): skipped. Said once per entry.
    Ignored {
        path: PathBuf,
        why: String,
    },
    /// The directory is gone or cannot be read any more: no receiver can join. The
    /// connections already made go on.
    DirectoryFailed {
        dir: PathBuf,
        error: std::io::Error,
    },
}

/// Unserved connections in a row after which the fan-out reports them (once per run):
/// one alone is ordinary (a receiver resuming from a pause closes the connection a
/// sender made meanwhile), three in a row are a receiver that does not take this sender.
pub const UNSERVED_TO_REPORT: u32 = 3;

/// How the fan-out tells the caller what happened. Called from its thread and from
/// [`Fanout::send`]/[`Fanout::send_eos`], never with the fan-out's lock held.
pub type Report = Box<dyn Fn(FanoutEvent) + Send + Sync>;

/// The fan-out's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FanoutStats {
    /// Buffers that went to at least one receiver.
    pub buffers_sent: u64,
    /// fds sent, all receivers together.
    pub fds_sent: u64,
    /// Blocks returned, all receivers together.
    pub returns: u64,
    /// Buffers sent while no receiver was connected.
    pub dropped: u64,
    /// Buffers a receiver missed, all receivers together.
    pub skipped: u64,
    /// Buffers some receiver still holds.
    pub in_flight: u64,
    /// Connections that carried at least one buffer.
    pub connections_used: u64,
    /// The receivers connected now.
    pub receivers: Vec<PeerStats>,
}

struct State<H> {
    /// Every socket known (and, for a directory, listed), by path.
    peers: Vec<Peer>,
    /// What the caller handed over with each buffer still out, by serial, and how many
    /// receivers hold that buffer.
    held: HashMap<u64, (H, usize)>,
    next_serial: u64,
    next_connection: u64,
    stats: FanoutStats,
    flushing: bool,
    stopping: bool,
    /// Threads waiting on `changed`: it is signalled only when there are some (a signal
    /// is a syscall, and the thread would make one for every return).
    waiting: usize,
    /// When the last buffer went to a receiver.
    last_send: Option<Instant>,
    /// Sends polling the connections themselves, for a receiver at its limit to return a
    /// buffer ([`State::at_limit_sockets`]): the thread does not read them meanwhile.
    polling_senders: usize,
    /// Callers waiting for a buffer some way of their own ([`Fanout::waiting_elsewhere`]):
    /// no handoff meanwhile.
    waiting_elsewhere: usize,
    /// See [`Fanout::set_handoff_below`].
    handoff_below: usize,
    /// The thread does not poll the connections: `send` reads the returns (see
    /// [`State::handoff_until`]).
    sends_read_returns: bool,
    /// Serials of the buffers a receiver gave back whole, kept to spare an allocation
    /// per return.
    whole: Vec<u64>,
}

impl<H> State<H> {
    /// One receiver gave back (or will never give back) the buffers `serials`: those no
    /// receiver holds any more are moved to `released`.
    fn let_go(&mut self, serials: &[u64], released: &mut Vec<H>) {
        for serial in serials {
            let Some((_, holders)) = self.held.get_mut(serial) else { continue };
            *holders -= 1;
            if *holders == 0 {
                released.extend(self.held.remove(serial).map(|(hold, _)| hold));
            }
        }
    }
}

struct Shared<H> {
    destination: Destination,
    options: FanoutOptions,
    state: Mutex<State<H>>,
    changed: Condvar,
    /// Wakes the thread from its poll (stop, a send that failed or read returns).
    wake: OwnedFd,
    /// Readable while flushing: ends the poll of a send that waits for a receiver to
    /// return a buffer ([`State::at_limit_sockets`]).
    flushing_fd: OwnedFd,
    report: Report,
}

impl<H> Shared<H> {
    fn lock(&self) -> MutexGuard<'_, State<H>> {
        // Every change under the lock leaves the state consistent between statements
        // that can panic: a poisoned lock is usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits on `changed` at most `timeout` (`None`: until signalled).
    fn wait<'a>(&self, mut state: MutexGuard<'a, State<H>>, timeout: Option<Duration>) -> MutexGuard<'a, State<H>> {
        state.waiting += 1;
        self.thread_reads_returns(&mut state);
        let mut state = match timeout {
            None => self.changed.wait(state).unwrap_or_else(PoisonError::into_inner),
            Some(t) => self.changed.wait_timeout(state, t).unwrap_or_else(PoisonError::into_inner).0,
        };
        state.waiting -= 1;
        state
    }

    /// Unlocks, and wakes the threads waiting on `changed` if there are any.
    fn signal(&self, state: MutexGuard<'_, State<H>>) {
        let waiting = state.waiting > 0;
        drop(state);
        if waiting {
            self.changed.notify_all();
        }
    }

    fn wake_thread(&self) {
        // An eventfd write only fails when the counter would overflow: already woken.
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }
}

/// A sender to one receiver or to every receiver in a directory. `H` is what the caller
/// hands over with each buffer to keep its memory alive: it is dropped when no receiver
/// holds the buffer any more.
pub struct Fanout<H: Send + 'static> {
    shared: Arc<Shared<H>>,
    thread: Option<JoinHandle<()>>,
}

impl<H: Send + 'static> Fanout<H> {
    /// Starts the thread that connects to the receivers; what happens is told to
    /// `report`. A directory that cannot be watched fails here, naming it.
    pub fn start(destination: Destination, options: FanoutOptions, report: Report) -> Result<Fanout<H>, Error> {
        let io = |what: &str, source| Error::Io { what: what.to_owned(), source };
        let directory = match &destination {
            Destination::Directory(dir) => {
                Some(directory::Directory::watch(dir).map_err(|e| io("watching the receivers' socket directory", e))?)
            }
            Destination::Socket(_) => None,
        };
        let eventfd = || {
            rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK)
                .map_err(|e| io("making the fan-out's eventfd", e.into()))
        };
        let (wake, flushing_fd) = (eventfd()?, eventfd()?);
        let peers = match &destination {
            Destination::Socket(path) => vec![Peer::new(path.clone())],
            Destination::Directory(_) => Vec::new(),
        };
        let shared = Arc::new(Shared {
            destination,
            options,
            state: Mutex::new(State {
                peers,
                held: HashMap::new(),
                next_serial: 0,
                next_connection: 1,
                stats: FanoutStats::default(),
                flushing: false,
                stopping: false,
                waiting: 0,
                last_send: None,
                polling_senders: 0,
                waiting_elsewhere: 0,
                handoff_below: 0,
                sends_read_returns: false,
                whole: Vec::new(),
            }),
            changed: Condvar::new(),
            wake,
            flushing_fd,
            report,
        });
        let thread = std::thread::Builder::new()
            .name("qsock-fanout".into())
            .spawn({
                let shared = shared.clone();
                move || thread::run(&shared, directory)
            })
            .map_err(|e| io("starting the fan-out thread", e))?;
        Ok(Fanout { shared, thread: Some(thread) })
    }

    /// Sends `buffer` to every connected receiver under its limit, keeping `hold` until
    /// each has returned it. With `wait_for_receiver`, waits until a receiver is
    /// connected (or flushing); without, drops the buffer when none is.
    pub fn send(&self, buffer: &OutgoingBuffer<'_>, hold: H, wait_for_receiver: bool) -> Delivery {
        let limit = self.shared.options.max_in_flight;
        let mut state = self.shared.take_in_returns(self.shared.lock());
        loop {
            if state.flushing {
                return Delivery::Flushing;
            }
            let mut connected = state.peers.iter().filter(|p| p.is_connected()).peekable();
            let waits = match connected.peek() {
                None if wait_for_receiver => true,
                None => {
                    state.stats.dropped += 1;
                    return Delivery::NoReceiver;
                }
                Some(_) => {
                    self.shared.options.slow_receiver == SlowReceiver::Wait && connected.any(|p| p.at_limit(limit))
                }
            };
            if !waits {
                break;
            }
            state = match state.at_limit_sockets(limit) {
                Some(_) if state.has_taken_in() => self.shared.take_in(state),
                Some(sockets) => self.shared.read_returns_when_ready(state, &sockets),
                None => self.shared.wait(state, None),
            };
        }
        let ids = BufIds::new(buffer.blocks.iter().filter_map(|b| b.fd).map(|fd| fd.as_raw_fd()));
        let serial = state.next_serial;
        state.next_serial += 1;
        let mut receivers = 0;
        let mut failures = Vec::new();
        let mut read_returns = false;
        let mut joined = Vec::new();
        let State { peers, stats, .. } = &mut *state;
        for peer in peers.iter_mut().filter(|p| p.is_connected()) {
            if peer.at_limit(limit) {
                peer.stats.skipped += 1;
                stats.skipped += 1;
                continue;
            }
            let Phase::Connected(sender) = &mut peer.phase else { unreachable!("filtered above") };
            let (_, fds_before) = sender.counts();
            let result = sender.send(buffer);
            read_returns |= sender.has_taken_in();
            let fds_sent = sender.counts().1 - fds_before;
            match result {
                Ok(()) => {
                    receivers += 1;
                    peer.stats.buffers_sent += 1;
                    peer.stats.fds_sent += fds_sent;
                    stats.fds_sent += fds_sent;
                    if std::mem::take(&mut peer.unused_connection) {
                        stats.connections_used += 1;
                        joined.push(peer.snapshot());
                    }
                    if !ids.is_empty() {
                        peer.out.push_back(Out { serial, ids });
                    }
                }
                // The same for every receiver: nothing was sent to any.
                Err(Error::InvalidBuffer(reason)) => return Delivery::Invalid(reason),
                Err(error) => {
                    peer.start_draining();
                    let first = peer.first_warning();
                    failures.push(FanoutEvent::SendFailed { socket: peer.stats.socket.clone(), error, first });
                }
            }
        }
        let delivery = if receivers > 0 {
            stats.buffers_sent += 1;
            if !ids.is_empty() {
                state.held.insert(serial, (hold, receivers));
            }
            state.last_send = Some(Instant::now());
            if state.held.len() >= state.handoff_below {
                self.shared.thread_reads_returns(&mut state);
            }
            Delivery::Sent { receivers }
        } else if failures.is_empty() {
            Delivery::Skipped
        } else {
            state.stats.dropped += 1;
            Delivery::NoReceiver
        };
        drop(state);
        if read_returns || !failures.is_empty() {
            // A send that found a socket full read that receiver's returns while it waited
            // for room (else both sides wait on each other), or a connection failed: the
            // thread handles them.
            self.shared.wake_thread();
        }
        for event in joined.into_iter().map(FanoutEvent::Joined).chain(failures) {
            (self.shared.report)(event);
        }
        delivery
    }

    /// Sends EOS to every connected receiver, then waits up to `timeout` for every
    /// buffer out to come back. Returns how many are still out.
    pub fn send_eos(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        let mut failures = Vec::new();
        for peer in state.peers.iter_mut() {
            let Phase::Connected(sender) = &mut peer.phase else { continue };
            if let Err(error) = sender.send_eos() {
                let first = peer.first_warning();
                failures.push(FanoutEvent::EosFailed { socket: peer.stats.socket.clone(), error, first });
            }
        }
        if !failures.is_empty() {
            drop(state);
            failures.into_iter().for_each(|event| (self.shared.report)(event));
            state = self.shared.lock();
        }
        while !state.held.is_empty() && !state.flushing {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self.shared.wait(state, Some(left));
        }
        state.held.len()
    }

    /// Makes waiting `send`s and `send_eos` return (unlock), or lets them wait again.
    pub fn set_flushing(&self, flushing: bool) {
        let mut state = self.shared.lock();
        if flushing != std::mem::replace(&mut state.flushing, flushing) {
            // Readable while flushing; fails only when the counter would overflow (or, reading,
            // when empty): as wanted either way.
            let _ = match flushing {
                true => rustix::io::write(&self.shared.flushing_fd, &1u64.to_ne_bytes()),
                false => rustix::io::read(&self.shared.flushing_fd, &mut [0u8; 8]),
            };
        }
        self.shared.signal(state);
    }

    /// Lets each send read the returns that came meanwhile, while buffers flow and fewer
    /// than `buffers` are out, instead of the thread waking for each return (see
    /// [`State::handoff_until`]). 0, the default: the thread reads every return at once.
    ///
    /// For a caller that cannot run short of buffers otherwise than through the fan-out:
    /// one that waits for a buffer to come back (an empty pool) while fewer than
    /// `buffers` are out would wait until the thread takes over again: 1 ms after the last
    /// send, up to 8 ms after a long run of sends, unless it calls
    /// [`Fanout::wait_for_a_return`] instead of waiting. A send or `send_eos` that waits
    /// ends the handoff at once.
    pub fn set_handoff_below(&self, buffers: usize) {
        let mut state = self.shared.lock();
        state.handoff_below = buffers;
        if state.held.len() >= buffers {
            self.shared.thread_reads_returns(&mut state);
        }
    }

    pub fn stats(&self) -> FanoutStats {
        // What came back during a handoff counts at once, not once the thread looks.
        let state = self.shared.take_in_returns(self.shared.lock());
        let mut stats = state.stats.clone();
        stats.in_flight = state.held.len() as u64;
        stats.receivers = state.peers.iter().filter(|p| p.is_connected()).map(Peer::snapshot).collect();
        stats
    }
}

impl<H: Send + 'static> Drop for Fanout<H> {
    /// Stops the thread, closes every connection and drops every hold still out.
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.wake_thread();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let mut state = self.shared.lock();
        state.peers.clear();
        let held = std::mem::take(&mut state.held);
        drop(state);
        drop(held);
    }
}
