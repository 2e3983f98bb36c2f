//! Reading what the receivers say (returns, DISCONNECT, hang-ups): by the fan-out's
//! thread; during a handoff, by each send while buffers flow (so that a return wakes no
//! thread); and by a send that waits for a receiver at its limit, polling that receiver's
//! connection itself. [`take_in_peer`] takes in one receiver's messages, under the lock,
//! for all three.

use std::os::fd::OwnedFd;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};

use super::peer::{backoff, Peer, Phase};
use super::{FanoutEvent, Shared, State, UNSERVED_TO_REPORT};
use crate::SenderEvent;

/// Connections read one by one, whether they have something or not; more are polled
/// first (see [`Shared::readable`]).
const READ_ALL_UP_TO: usize = 2;

/// The longest a send waiting for a receiver to return a buffer polls before it looks
/// at the fan-out again.
const RETURN_POLL: Duration = Duration::from_millis(10);

/// How long after a send the thread leaves the returns to the next send.
pub(super) const HANDOFF: Duration = Duration::from_millis(1);

impl<H> State<H> {
    /// While buffers flow (the last send less than [`HANDOFF`] ago), nobody waits and
    /// fewer than `handoff_below` are out, each send reads the returns that came
    /// meanwhile and the thread does not poll the connections: a return then wakes no
    /// thread (in both processes, waking a thread costs more than the return itself).
    /// Until when, if so.
    pub(super) fn handoff_until(&self, now: Instant) -> Option<Instant> {
        if self.waiting == 0 && self.polling_senders > 0 {
            return Some(now + HANDOFF);
        }
        let until = self.last_send? + HANDOFF;
        let nobody_waits = self.waiting == 0 && self.waiting_elsewhere == 0;
        (until > now && nobody_waits && self.held.len() < self.handoff_below).then_some(until)
    }

    /// A send waits for the connected receivers at `limit` to return a buffer: copies of
    /// their connections' fds, for the send to poll and read the returns itself (else the
    /// fan-out's thread would, and wake it: two wake-ups instead of one). `None` when
    /// some receiver at its limit has none.
    pub(super) fn at_limit_sockets(&self, limit: Option<usize>) -> Option<Vec<Arc<OwnedFd>>> {
        self.sockets_of(|p| p.is_connected() && p.at_limit(limit))
    }

    /// Copies of the connections of the receivers holding buffers, for a caller that
    /// waits for one to come back; `None` when none holds any.
    fn holding_sockets(&self) -> Option<Vec<Arc<OwnedFd>>> {
        self.sockets_of(|p| !p.out.is_empty())
    }

    /// Copies of the connections of the open peers `chosen`; `None` when there are none.
    fn sockets_of(&self, chosen: impl Fn(&Peer) -> bool) -> Option<Vec<Arc<OwnedFd>>> {
        let fds: Vec<_> = self.peers.iter().filter(|p| chosen(p)).filter_map(|p| p.poll_fd.clone()).collect();
        (!fds.is_empty()).then_some(fds)
    }

    /// Which connected peers may have something to take in, by index: with more than
    /// [`READ_ALL_UP_TO`] (reading a connection with nothing costs a syscall each), those
    /// one poll finds readable; `None`, every one (no poll, and no allocation per send).
    pub(super) fn readable(&self) -> Option<Vec<bool>> {
        if self.peers.iter().filter(|p| !matches!(p.phase, Phase::Idle(_))).count() <= READ_ALL_UP_TO {
            return None;
        }
        // Every open peer has a copy of its connection (`Peer::poll_fd`), in order.
        let mut fds: Vec<PollFd<'_>> =
            self.peers.iter().filter_map(|p| p.poll_fd.as_deref()).map(|fd| PollFd::new(fd, PollFlags::IN)).collect();
        if rustix::event::poll(&mut fds, Some(&rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 })).is_err() {
            return None;
        }
        let mut ready = fds.iter().map(|fd| !fd.revents().is_empty());
        let readable = self.peers.iter().map(|p| match &p.phase {
            Phase::Idle(_) => false,
            Phase::Connected(s) | Phase::Draining(s) => ready.next().unwrap_or(true) || s.has_taken_in(),
        });
        Some(readable.collect())
    }

    /// A send took in what a receiver said while it waited for room in its socket: read,
    /// so a poll of that socket would not see it.
    pub(super) fn has_taken_in(&self) -> bool {
        self.peers.iter().any(|p| matches!(&p.phase, Phase::Connected(s) | Phase::Draining(s) if s.has_taken_in()))
    }
}

impl<H: Send + 'static> super::Fanout<H> {
    /// For a caller that needs a buffer back now (its pool is empty): takes in what the
    /// receivers said, and if no buffer came back, waits in this thread for a receiver
    /// holding one to say something, at most [`RETURN_POLL`] (no other thread wakes for
    /// it). Returns whether the fan-out holds buffers still or let go of some: `false`,
    /// nothing was held, so waiting here cannot bring a buffer back, or it is flushing
    /// (the caller should wait its own way: the poll here would end at once, again and
    /// again, and the thread reads the returns meanwhile).
    pub fn wait_for_a_return(&self) -> bool {
        let state = self.shared.lock();
        let held = state.held.len();
        if held == 0 || state.flushing {
            return false;
        }
        let state = self.shared.take_in(state);
        if state.held.len() < held {
            return true;
        }
        match state.holding_sockets() {
            Some(sockets) => drop(self.shared.read_returns_when_ready(state, &sockets)),
            // A connection not yet polled by the thread: it reads the returns.
            None => drop(self.shared.wait(state, Some(RETURN_POLL))),
        }
        true
    }

    /// For a caller about to wait for a buffer some way of its own (its pool's wait,
    /// when [`Fanout::wait_for_a_return`] had nothing to wait for: the buffers were
    /// upstream, and may be sent meanwhile): until the guard is dropped, the thread reads
    /// every return at once, as when a send waits.
    pub fn waiting_elsewhere(&self) -> WaitingElsewhere<'_, H> {
        let mut state = self.shared.lock();
        state.waiting_elsewhere += 1;
        self.shared.thread_reads_returns(&mut state);
        WaitingElsewhere(self)
    }
}

/// See [`Fanout::waiting_elsewhere`].
pub struct WaitingElsewhere<'a, H: Send + 'static>(&'a super::Fanout<H>);

impl<H: Send + 'static> Drop for WaitingElsewhere<'_, H> {
    fn drop(&mut self) {
        self.0.shared.lock().waiting_elsewhere -= 1;
    }
}

impl<H> Shared<H> {
    /// Ends a handoff (see [`State::handoff_until`]): the thread polls the connections.
    pub(super) fn thread_reads_returns(&self, state: &mut State<H>) {
        if std::mem::take(&mut state.sends_read_returns) {
            self.wake_thread();
        }
    }

    /// During a handoff: takes in what the receivers said meanwhile (see [`Shared::take_in`]).
    pub(super) fn take_in_returns<'a>(&'a self, state: MutexGuard<'a, State<H>>) -> MutexGuard<'a, State<H>> {
        match state.sends_read_returns {
            true => self.take_in(state),
            false => state,
        }
    }

    /// Takes in what every receiver said already; unlocks to report it and let go of
    /// the buffers that came back, and locks again (when nothing came, it keeps the lock:
    /// nothing to tell anyone).
    pub(super) fn take_in<'a>(&'a self, mut state: MutexGuard<'a, State<H>>) -> MutexGuard<'a, State<H>> {
        let mut events = Vec::new();
        let mut released = Vec::new();
        let mut closed = false;
        let returns_before = state.stats.returns;
        let readable = state.readable();
        for index in (0..state.peers.len()).rev() {
            let open = !matches!(state.peers[index].phase, Phase::Idle(_));
            if open && readable.as_ref().is_none_or(|readable| readable[index]) {
                closed |= take_in_peer(&mut state, index, &mut events, &mut released);
            }
        }
        if !closed && events.is_empty() && state.stats.returns == returns_before {
            return state;
        }
        self.signal(state);
        if closed {
            // It closes its copy of the connection, and connects again when due.
            self.wake_thread();
        }
        for event in events {
            (self.report)(event);
        }
        drop(released);
        self.lock()
    }

    /// Waits (without the lock) until one of `sockets` has something to read or hung up,
    /// the fan-out is flushing, or [`RETURN_POLL`] passed, then takes in what every
    /// receiver said. The thread leaves the connections alone meanwhile: it would read
    /// what this caller waits for, and the caller would not see it.
    pub(super) fn read_returns_when_ready<'a>(
        &'a self,
        mut state: MutexGuard<'a, State<H>>,
        sockets: &[Arc<OwnedFd>],
    ) -> MutexGuard<'a, State<H>> {
        state.polling_senders += 1;
        if !state.sends_read_returns {
            self.wake_thread();
        }
        drop(state);
        self.poll_returns(sockets);
        let mut state = self.lock();
        state.polling_senders -= 1;
        self.take_in(state)
    }

    /// Waits (without the lock) until one of `sockets` has something to read or hung up,
    /// the fan-out is flushing, or [`RETURN_POLL`] passed (what only the thread sees, a
    /// receiver closed or gone from the directory, is then looked at again).
    fn poll_returns(&self, sockets: &[Arc<OwnedFd>]) {
        let mut fds: Vec<PollFd<'_>> = sockets.iter().map(|fd| PollFd::new(&**fd, PollFlags::IN)).collect();
        fds.push(PollFd::new(&self.flushing_fd, PollFlags::IN));
        let timeout = rustix::event::Timespec::try_from(RETURN_POLL).expect("fits");
        // EINTR and the like: the caller looks at everything again.
        let _ = rustix::event::poll(&mut fds, Some(&timeout));
    }
}

/// Takes in everything receiver `state.peers[index]` has said already (without waiting):
/// lets go of the buffers it gave back, and closes its connection when it ended (a peer
/// whose socket is gone is then forgotten). What to report goes to `events`, the holds to
/// drop (outside the lock) to `released`. Returns whether the connection closed.
pub(super) fn take_in_peer<H>(
    state: &mut State<H>,
    index: usize,
    events: &mut Vec<FanoutEvent>,
    released: &mut Vec<H>,
) -> bool {
    let stopping = state.stopping;
    let mut whole = std::mem::take(&mut state.whole);
    let peer = &mut state.peers[index];
    let mut ended = None;
    let mut returns = 0;
    while let Phase::Connected(sender) | Phase::Draining(sender) = &mut peer.phase {
        match sender.try_next_event() {
            Ok(None) => break,
            Ok(Some(SenderEvent::Returned(ids))) => {
                peer.served = true;
                let before = peer.stats.returns;
                peer.on_returned(&ids, &mut whole);
                returns += peer.stats.returns - before;
                if peer.out.is_empty() {
                    // Everything is back: what else it may say (DISCONNECT, a hang-up) keeps
                    // its socket readable for the next look, and reading on now would
                    // mostly cost a syscall that finds nothing.
                    break;
                }
            }
            Ok(Some(SenderEvent::Disconnect)) => {
                peer.served = true;
                let again = peer.start_draining();
                let socket = peer.stats.socket.clone();
                events.push(FanoutEvent::Disconnect { socket, still_out: peer.out.len(), again });
            }
            Ok(Some(SenderEvent::ReceiverGone)) => {
                ended = Some(FanoutEvent::ReceiverGone { socket: peer.stats.socket.clone() });
                break;
            }
            Err(error) => {
                let first = peer.first_warning();
                ended = Some(FanoutEvent::ReceiverFailed { socket: peer.stats.socket.clone(), error, first });
                break;
            }
        }
    }
    let drained = matches!(&peer.phase, Phase::Draining(sender) if sender.in_flight() == 0);
    let closing = ended.is_some() || drained || stopping;
    if closing {
        let socket = peer.stats.socket.clone();
        if !peer.unused_connection {
            events.push(FanoutEvent::Left(peer.snapshot()));
        }
        let retry_in = if peer.served {
            if peer.unserved >= UNSERVED_TO_REPORT {
                events.push(FanoutEvent::ServedAgain { socket: socket.clone(), after: peer.unserved });
            }
            peer.unserved = 0;
            Duration::ZERO
        } else {
            peer.unserved += 1;
            let retry_in = backoff(peer.unserved);
            if peer.unserved == UNSERVED_TO_REPORT {
                events.push(FanoutEvent::Unserved {
                    socket: socket.clone(),
                    receiver: peer.stats.credentials,
                    in_a_row: peer.unserved,
                    retry_in,
                    broke_protocol: matches!(ended, Some(FanoutEvent::ReceiverFailed { .. })),
                });
            }
            retry_in
        };
        peer.close(retry_in, &mut whole);
        if !peer.present {
            state.peers.remove(index);
        }
        events.extend(ended.or(drained.then_some(FanoutEvent::Drained { socket })));
    }
    state.stats.returns += returns;
    state.let_go(&whole, released);
    whole.clear();
    state.whole = whole;
    closing
}
