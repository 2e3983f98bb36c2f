//! One receiver of a fan-out: its connection (or the wait before the next attempt), the
//! buffers it holds, and its counters. Everything here runs under the fan-out's lock.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::protocol::MAX_MEMORY_BLOCKS;
use crate::{PeerCredentials, Sender};

/// How often the deployed sink retries `connect()`; ours too.
pub(super) const CONNECT_RETRY: Duration = Duration::from_millis(10);
/// The longest wait after connections the receiver closed unserved (or, in a directory,
/// refused).
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How long to wait before connecting again after `failures` connections in a row that
/// the receiver closed before serving them: 10 ms after the first, doubling, at most 1 s.
pub(super) fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (CONNECT_RETRY * (1 << doublings)).min(MAX_BACKOFF)
}

pub(super) enum Phase {
    /// Not connected; the next attempt is due at this instant.
    Idle(Instant),
    Connected(Sender),
    /// After `DISCONNECT` or a failed send: sends nothing more, closes once nothing is out.
    Draining(Sender),
}

/// A receiver's figures, for [`super::FanoutStats`]: the current connection's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    /// The socket the receiver listens on.
    pub socket: PathBuf,
    /// The receiver's process, as the kernel saw it when it listened (`SO_PEERCRED`).
    pub credentials: Option<PeerCredentials>,
    pub buffers_sent: u64,
    pub fds_sent: u64,
    /// Buffers it missed because it held `max_in_flight` already (`SlowReceiver::Skip`).
    pub skipped: u64,
    /// Buffers it holds now.
    pub in_flight: u64,
    /// Blocks it gave back.
    pub returns: u64,
    /// When this connection was made.
    pub connected_since: SystemTime,
}

impl PeerStats {
    /// A connection's figures as it starts: nothing sent yet.
    fn new(socket: PathBuf, credentials: Option<PeerCredentials>) -> PeerStats {
        PeerStats {
            socket,
            credentials,
            buffers_sent: 0,
            fds_sent: 0,
            skipped: 0,
            in_flight: 0,
            returns: 0,
            connected_since: SystemTime::now(),
        }
    }
}

/// The buf_ids of one buffer (at most [`MAX_MEMORY_BLOCKS`]), kept without an
/// allocation: one copy per receiver per buffer is on the hot path.
#[derive(Debug, Clone, Copy)]
pub(super) struct BufIds {
    ids: [i32; MAX_MEMORY_BLOCKS],
    len: usize,
}

impl BufIds {
    /// The first [`MAX_MEMORY_BLOCKS`] of `ids` (a buffer has no more blocks).
    pub fn new(ids: impl IntoIterator<Item = i32>) -> BufIds {
        let mut this = BufIds { ids: [-1; MAX_MEMORY_BLOCKS], len: 0 };
        for id in ids.into_iter().take(MAX_MEMORY_BLOCKS) {
            this.ids[this.len] = id;
            this.len += 1;
        }
        this
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Takes `id` out; whether it was there.
    fn remove(&mut self, id: i32) -> bool {
        let Some(index) = self.ids[..self.len].iter().position(|&i| i == id) else { return false };
        self.ids.copy_within(index + 1..self.len, index);
        self.len -= 1;
        true
    }
}

/// A sent buffer this receiver has not given back entirely: its serial in the fan-out,
/// and the buf_ids still out.
pub(super) struct Out {
    pub serial: u64,
    pub ids: BufIds,
}

pub(super) struct Peer {
    /// Tells this peer's connection apart from the ones before (the thread's fd copies).
    pub connection_id: u64,
    /// A copy of the connection's fd to poll without the lock (the thread's, and a send's
    /// waiting for this receiver to return a buffer): `Some` exactly while connected or
    /// draining (set by [`Peer::connected`], taken by [`Peer::close`]).
    pub poll_fd: Option<Arc<OwnedFd>>,
    pub stats: PeerStats,
    pub phase: Phase,
    pub out: VecDeque<Out>,
    /// Its socket file is still there (always, for a lone `socket`): when not, the peer
    /// is forgotten once its connection ends.
    pub present: bool,
    /// No buffer has been sent on the current connection yet.
    pub unused_connection: bool,
    /// The receiver said something valid on the current connection: it serves us.
    pub served: bool,
    /// A warning was reported for the current connection: later failures on it are not.
    pub warned: bool,
    /// Connections in a row it closed before serving them.
    pub unserved: u32,
    /// Connection attempts in a row that failed (nobody listening).
    pub refused: u32,
}

impl Peer {
    pub fn new(socket: PathBuf) -> Peer {
        Peer {
            connection_id: 0,
            poll_fd: None,
            stats: PeerStats::new(socket, None),
            phase: Phase::Idle(Instant::now()),
            out: VecDeque::new(),
            present: true,
            unused_connection: false,
            served: false,
            warned: false,
            unserved: 0,
            refused: 0,
        }
    }

    pub fn is_connected(&self) -> bool {
        matches!(self.phase, Phase::Connected(_))
    }

    /// The peer holds `limit` buffers already.
    pub fn at_limit(&self, limit: Option<usize>) -> bool {
        limit.is_some_and(|limit| self.out.len() >= limit)
    }

    /// A new connection: the counters start again.
    pub fn connected(&mut self, sender: Sender, connection_id: u64, poll_fd: Arc<OwnedFd>) {
        self.stats = PeerStats::new(std::mem::take(&mut self.stats.socket), sender.receiver_credentials());
        self.connection_id = connection_id;
        self.poll_fd = Some(poll_fd);
        self.phase = Phase::Connected(sender);
        self.unused_connection = true;
        self.served = false;
        self.warned = false;
        self.refused = 0;
    }

    /// Stops sending on the connection. The peer may say `DISCONNECT` again before the
    /// first is drained, and a send may fail while draining: a phase that is not
    /// `Connected` stays as it is. Returns whether it was draining (or closed) already.
    pub fn start_draining(&mut self) -> bool {
        match std::mem::replace(&mut self.phase, Phase::Idle(Instant::now())) {
            Phase::Connected(sender) => {
                self.phase = Phase::Draining(sender);
                false
            }
            other => {
                self.phase = other;
                true
            }
        }
    }

    /// Whether a warning about the current connection is the first one (then it is no more).
    pub fn first_warning(&mut self) -> bool {
        !std::mem::replace(&mut self.warned, true)
    }

    /// Takes back returned buf_ids; pushes the serial of every buffer it gave back whole.
    pub fn on_returned(&mut self, ids: &[i32], whole: &mut Vec<u64>) {
        for &id in ids.iter().filter(|&&id| id >= 0) {
            self.stats.returns += 1;
            let Some(index) = self.out.iter_mut().position(|out| out.ids.remove(id)) else { continue };
            if self.out[index].ids.is_empty() {
                whole.extend(self.out.remove(index).map(|out| out.serial));
            }
        }
    }

    /// Closes the connection, to try again after `retry_in`: nothing it holds will come
    /// back; pushes their serials.
    pub fn close(&mut self, retry_in: Duration, whole: &mut Vec<u64>) {
        self.phase = Phase::Idle(Instant::now() + retry_in);
        self.poll_fd = None;
        whole.extend(self.out.drain(..).map(|out| out.serial));
    }

    pub fn snapshot(&self) -> PeerStats {
        PeerStats { in_flight: self.out.len() as u64, ..self.stats.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_is_back_whole_once_each_of_its_ids_is_returned_in_any_order() {
        let mut peer = Peer::new(PathBuf::from("/x"));
        peer.out.push_back(Out { serial: 1, ids: BufIds::new([5, 6]) });
        peer.out.push_back(Out { serial: 2, ids: BufIds::new([5]) });
        let mut whole = Vec::new();
        peer.on_returned(&[6], &mut whole);
        assert!(whole.is_empty());
        peer.on_returned(&[5, -1, 9], &mut whole);
        assert_eq!(whole, [1]);
        peer.on_returned(&[5], &mut whole);
        assert_eq!(whole, [1, 2]);
        assert_eq!(peer.stats.returns, 4, "every id counts but -1 (the answer to text)");
    }

    #[test]
    fn the_wait_after_unserved_connections_starts_at_the_deployed_retry_and_doubles_to_a_second() {
        let waits: Vec<u128> = (1..=9).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(backoff(0), CONNECT_RETRY);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
