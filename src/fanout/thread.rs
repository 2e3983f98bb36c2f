//! The fan-out's thread: follows the directory, connects to the receivers, reads what
//! they say, lets go of buffers as they come back, and closes the connections that end.
//!
//! Only this thread connects. A connection that ended is closed by whoever reads that it
//! did (this thread, or a send reading the returns: returns.rs); a failed send only marks
//! it broken. The thread polls copies of the peers' sockets, taken at each wake-up, so it
//! waits without the lock.

use std::collections::BTreeSet;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, TryLockError};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};

use super::directory::Directory;
use super::peer::{backoff, Peer, Phase, CONNECT_RETRY};
use super::returns::{take_in_peer, HANDOFF};
use super::{Destination, FanoutEvent, Shared};
use crate::Sender;

pub(super) fn run<H>(shared: &Shared<H>, mut directory: Option<Directory>) {
    let mut look_at_directory = directory.is_some();
    // Copies of the connected sockets (the peers'), by connection id, taken at each plan;
    // kept across wake-ups, as `readable`: no allocation per wake-up for these.
    let mut connections: Vec<(u64, Arc<OwnedFd>)> = Vec::new();
    let mut readable: Vec<u64> = Vec::new();
    let mut last_plan = Plan { next_attempt: None, handoff: None, look_every: HANDOFF };
    let mut woken = false;
    loop {
        if look_at_directory {
            if let Some(dir) = directory.as_mut() {
                if let Err(error) = follow(shared, dir) {
                    (shared.report)(FanoutEvent::DirectoryFailed { dir: dir.path.clone(), error });
                    directory = None;
                }
            }
        }
        let Some(next) = plan(shared, &mut connections, last_plan, woken) else { return };
        last_plan = next;
        let Plan { next_attempt, handoff, .. } = next;

        let mut poll_fds = vec![PollFd::new(&shared.wake, PollFlags::IN)];
        if let Some(dir) = directory.as_ref() {
            poll_fds.push(PollFd::new(dir, PollFlags::IN));
        }
        let first_socket = poll_fds.len();
        if handoff.is_none() {
            poll_fds.extend(connections.iter().map(|(_, fd)| PollFd::new(&**fd, PollFlags::IN)));
        }
        let wake_at = [next_attempt, handoff].into_iter().flatten().min();
        let timeout = wake_at.map(|at| at.saturating_duration_since(Instant::now()));
        let timespec = timeout.and_then(|t| rustix::event::Timespec::try_from(t).ok());
        // EINTR and the like: the loop looks at everything again.
        let _ = rustix::event::poll(&mut poll_fds, timespec.as_ref());
        woken = !poll_fds[0].revents().is_empty();
        look_at_directory = directory.is_some() && !poll_fds[1].revents().is_empty();
        readable.clear();
        readable.extend(
            connections
                .iter()
                .enumerate()
                .filter(|&(i, _)| woken || poll_fds.get(first_socket + i).is_some_and(|fd| !fd.revents().is_empty()))
                .map(|(_, (id, _))| *id),
        );
        drop(poll_fds);
        if woken {
            let mut counter = [0u8; 8];
            let _ = rustix::io::read(&shared.wake, &mut counter);
        }
        for &id in &readable {
            serve(shared, id);
        }
    }
}

/// Takes in what changed in the directory: new sockets become receivers to connect to,
/// and receivers whose socket is gone are forgotten once their connection ends.
fn follow<H>(shared: &Shared<H>, dir: &mut Directory) -> std::io::Result<()> {
    dir.take_changes()?;
    let scan = dir.scan()?;
    for (path, why) in scan.newly_ignored {
        (shared.report)(FanoutEvent::Ignored { path, why: why.to_owned() });
    }
    let mut state = shared.lock();
    let known: BTreeSet<_> = state.peers.iter().map(|p| p.stats.socket.clone()).collect();
    for peer in state.peers.iter_mut() {
        peer.present = scan.sockets.contains(&peer.stats.socket);
    }
    state.peers.retain(|p| p.present || !matches!(p.phase, Phase::Idle(_)));
    state.peers.extend(scan.sockets.difference(&known).cloned().map(Peer::new));
    Ok(())
}

/// When the next connection attempt is due, if any peer waits for one.
fn next_attempt<H>(state: &super::State<H>) -> Option<Instant> {
    state
        .peers
        .iter()
        .filter_map(|p| match p.phase {
            Phase::Idle(at) => Some(at),
            _ => None,
        })
        .min()
}

/// What the thread waits for next.
#[derive(Clone, Copy)]
struct Plan {
    /// When the next connection attempt is due.
    next_attempt: Option<Instant>,
    /// Until when the sends read the returns ([`State::handoff_until`]): the thread does
    /// not poll the connections meanwhile.
    handoff: Option<Instant>,
    /// How long after the last send the thread looks again during a handoff: 1 ms, twice
    /// as long each time it finds the sends still going, up to [`LONGEST_LOOK`].
    look_every: Duration,
}

/// The longest the thread leaves a handoff alone: how late, at worst, the returns of a
/// stream that stopped after flowing for a while are read.
const LONGEST_LOOK: Duration = Duration::from_millis(8);

/// Connects to every receiver whose attempt is due, takes copies of the `connections` to
/// poll, and says what to wait for next (`last`: the plan it woke from, `woken`: by the
/// eventfd); `None` once the fan-out stops.
fn plan<H>(shared: &Shared<H>, connections: &mut Vec<(u64, Arc<OwnedFd>)>, last: Plan, woken: bool) -> Option<Plan> {
    // The common case, once per wake-up: nothing due, one look under the lock. During a
    // handoff, a lock held means a send under way: the handoff goes on, and the thread
    // does not sleep on the lock (and make the send wake it), unless it was woken for
    // something (a stop, a connection closed: its copy must go).
    let mut state = match shared.state.try_lock() {
        Ok(state) => state,
        Err(TryLockError::WouldBlock) if last.handoff.is_some() && !woken => {
            return Some(Plan { handoff: Some(Instant::now() + last.look_every), ..last });
        }
        Err(_) => shared.lock(),
    };
    if state.stopping {
        return None;
    }
    let now = Instant::now();
    if next_attempt(&state).is_some_and(|at| at <= now) {
        drop(state);
        connect_due(shared, now);
        state = shared.lock();
    }
    // Those of connections closed since go: the receiver sees the hang-up once the last
    // copy of its connection is closed.
    connections.clear();
    connections.extend(state.peers.iter().filter_map(|p| Some((p.connection_id, p.poll_fd.clone()?))));
    let handoff = state.handoff_until(Instant::now());
    state.sends_read_returns = handoff.is_some();
    let look_every = match (last.handoff, handoff) {
        (Some(_), Some(_)) => (last.look_every * 2).min(LONGEST_LOOK),
        _ => HANDOFF,
    };
    // From the last send: it was less than HANDOFF ago, so this is later than `handoff`.
    let handoff = handoff.map(|until| until - HANDOFF + look_every);
    Some(Plan { next_attempt: next_attempt(&state), handoff, look_every })
}

/// Tries to connect to every receiver whose attempt was due at `now`.
fn connect_due<H>(shared: &Shared<H>, now: Instant) {
    let due: Vec<_> = {
        let state = shared.lock();
        state
            .peers
            .iter()
            .filter(|p| matches!(p.phase, Phase::Idle(at) if at <= now))
            .map(|p| p.stats.socket.clone())
            .collect()
    };
    let in_directory = matches!(shared.destination, Destination::Directory(_));
    for socket in due {
        // Outside the lock: sends go on meanwhile.
        let connection = Sender::connect(&socket).and_then(|sender| {
            let copy = sender
                .as_fd()
                .try_clone_to_owned()
                .map_err(|source| crate::Error::Io { what: "copying the connection's fd".into(), source })?;
            Ok((sender, copy))
        });
        let mut state = shared.lock();
        let id = state.next_connection;
        let Some(peer) = state.peers.iter_mut().find(|p| p.stats.socket == socket) else { continue };
        match connection {
            Ok((sender, copy)) => {
                peer.connected(sender, id, Arc::new(copy));
                state.next_connection += 1;
                shared.signal(state);
                (shared.report)(FanoutEvent::Connected { socket });
            }
            Err(error) => {
                peer.refused += 1;
                // Alone, a receiver may be starting: try as often as the deployed sink. In a
                // directory, a socket nobody listens on is tried less and less often.
                let retry = if in_directory { backoff(peer.refused) } else { CONNECT_RETRY };
                peer.phase = Phase::Idle(Instant::now() + retry);
                let first = peer.refused == 1;
                drop(state);
                if in_directory && first {
                    let why = format!("nobody listens on this socket ({error}); trying again less and less often");
                    (shared.report)(FanoutEvent::Ignored { path: socket, why });
                }
            }
        }
    }
}

/// Handles everything receiver `id` has said.
fn serve<H>(shared: &Shared<H>, id: u64) {
    let mut events = Vec::new();
    let mut released = Vec::new();
    let mut state = shared.lock();
    let Some(index) = state.peers.iter().position(|p| p.connection_id == id && !matches!(p.phase, Phase::Idle(_)))
    else {
        return;
    };
    if state.polling_senders > 0 {
        // A send waits for a return and reads it itself: left to it.
        return;
    }
    take_in_peer(&mut state, index, &mut events, &mut released);
    shared.signal(state);
    for event in events {
        (shared.report)(event);
    }
    // The caller's holds (pooled buffers going back to their pools) outside the lock.
    drop(released);
}
