//! The safe Rust receiver: listens at a socket path, accepts one sender at a time, and
//! hands out [`ReceivedBuffer`]s that own their fds and send the return when dropped.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::event::epoll;

use crate::fd_cache::FdCache;
use crate::protocol::{DataMessage, MemoryKind, ReceiverMessage, ReturnMessage, SenderMessage, MAX_RECORD_LEN};
pub use crate::transport::PeerCredentials;
use crate::transport::{
    wait, Connection, Listener, MessageIn, MessageReader, OwnerProcess, Queued, ReadError, WakeUp, Want,
};
use crate::Error;

/// What [`Receiver::recv`] brought.
// One value per message, moved once to the caller: boxing the buffer would cost an
// allocation per message for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Event {
    /// A sender connected (and passed the `allowed_uids` check), with its process
    /// credentials (`SO_PEERCRED`) when the kernel gave them.
    SenderConnected(Option<PeerCredentials>),
    /// A buffer; dropping it sends its return to the sender.
    Buffer(ReceivedBuffer),
    /// The sender ended its stream. It may still send more after this.
    Eos,
    /// The sender closed the connection (or died). Its cached fds are closed; the next
    /// call waits for a new sender.
    SenderGone,
    /// Nothing arrived in time.
    Timeout,
    /// [`Interrupter::interrupt`] (or [`ReceiverHandle::interrupt`]) was called.
    Interrupted,
}

/// How a [`Receiver`] guards its socket. `Default` is the restrictive choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverOptions {
    /// Permission bits of the socket file (at most 0o777): connecting needs write
    /// permission on it. Default [`DEFAULT_SOCKET_MODE`], only this user (and root).
    pub socket_mode: u32,
    /// When not empty, only senders whose process runs as one of these uids
    /// (`SO_PEERCRED`) are accepted; others are disconnected at once.
    pub allowed_uids: Vec<u32>,
}

/// The socket file's default mode: read and write for the owner only.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;

impl Default for ReceiverOptions {
    fn default() -> ReceiverOptions {
        ReceiverOptions { socket_mode: DEFAULT_SOCKET_MODE, allowed_uids: Vec::new() }
    }
}

/// Counters over the receiver's whole life (all connections).
#[derive(Debug, Default)]
struct Counters {
    buffers: AtomicU64,
    bytes_described: AtomicU64,
    fds_received: AtomicU64,
    returns_sent: AtomicU64,
    protocol_errors: AtomicU64,
    senders_accepted: AtomicU64,
    senders_refused: AtomicU64,
    senders_turned_away: AtomicU64,
    /// The current connection's cache size, stored after each message.
    fds_cached: AtomicU64,
    /// Times the socket file was found gone and bound again.
    socket_rebinds: AtomicU64,
}

/// A snapshot of the receiver's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// Buffers handed out.
    pub buffers: u64,
    /// Sum of the handed-out blocks' `size`: the bytes that moved without a copy.
    pub bytes_described: u64,
    /// fds received from senders.
    pub fds_received: u64,
    /// fds cached now, for the current sender's pooled buffers.
    pub fds_cached: u64,
    /// Return messages sent (or queued, while the sender's socket is full, to go out
    /// as soon as it has room).
    pub returns_sent: u64,
    /// Messages rejected for breaking the protocol.
    pub protocol_errors: u64,
    /// Senders accepted so far.
    pub senders_accepted: u64,
    /// Senders disconnected at once because their uid is not in `allowed_uids`.
    pub senders_refused: u64,
    /// Senders accepted and closed at once because another sender was connected (one at a
    /// time), or because they had waited while the receiver was not receiving
    /// ([`Receiver::turn_away_waiting_senders`]): their queued frames are never delivered.
    pub senders_turned_away: u64,
    /// Times the socket file was found removed (the deployed sender unlinks it when it
    /// handles DISCONNECT) and was bound again at the same path.
    pub socket_rebinds: u64,
    /// Whether a sender is connected now.
    pub connected: bool,
    /// The connected sender's credentials.
    pub peer: Option<PeerCredentials>,
}

struct Active {
    connection: Arc<Connection>,
    cache: FdCache,
}

/// What a [`Receiver`] shares with its [`ReceiverHandle`]s and its buffers' returns.
/// `current` is locked only when a sender comes or goes and by other threads' reads:
/// never on the per-buffer path.
struct Shared {
    /// The process that bound the receiver. A forked child's copies of the receiver and
    /// its buffers never speak on the connection nor touch the socket file: closing them
    /// closes that process's fds, nothing more.
    owner: OwnerProcess,
    counters: Counters,
    /// Set by [`Interrupter::interrupt`]; its eventfd is in the epoll set.
    wake: WakeUp,
    current: Mutex<Option<Current>>,
    /// DISCONNECT went to the current sender: what it still sends is answered with a
    /// return, not delivered (it was sent before the sender stopped: stale by now).
    disconnecting: AtomicBool,
    /// The last sender turned away, for whoever reports it.
    last_turned_away: Mutex<Option<PeerCredentials>>,
}

/// The connected sender, as other threads see it.
struct Current {
    connection: Arc<Connection>,
    peer: Option<PeerCredentials>,
}

impl Shared {
    fn current(&self) -> std::sync::MutexGuard<'_, Option<Current>> {
        // Only plain assignments happen under this lock: a poisoned one is still consistent.
        self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether this is the process that bound the receiver (not a forked child).
    fn in_owner_process(&self) -> bool {
        self.owner.is_this()
    }
}

/// What a wait saw ready.
#[derive(Debug, Default, Clone, Copy)]
struct Ready {
    path: bool,
    listener: bool,
    wake: bool,
}

const TOKEN_LISTENER: u64 = 1;
const TOKEN_CONNECTION: u64 = 2;
const TOKEN_WAKE: u64 = 3;
const TOKEN_PATH: u64 = 4;

/// The receiving end: binds the socket path and receives buffers.
///
/// Dropping it (or [`Receiver::close`]) answers every message still queued on the
/// socket with a return, stops reading, closes every cached fd that no buffer still
/// uses and removes the socket file (if it is still ours). Buffers still held stay
/// valid; their returns are still sent when they are dropped.
///
/// Returns never wait: dropping a buffer sends its return if the sender's socket has
/// room, and otherwise queues it; a thread of the receiver's (`qsock-returns`, started
/// only while something is queued) sends what is queued as soon as the sender reads,
/// whether or not `recv` is ever called again. The queue holds at most one return per
/// buffer the sender has out with us.
///
/// After `fork`, the child's copy of a receiver (and of its buffers) is inert: dropping
/// it closes the child's fds only, and sends nothing, shuts nothing down and removes no
/// file; the parent's receiver goes on unaffected. Only the process that bound the
/// receiver may receive with it.
///
/// The socket file is watched (inotify on its directory): when it is removed, as the
/// deployed sender does when it handles DISCONNECT, the receiver binds the path again
/// the next time it waits, so that senders can reach it. A file that somebody else put
/// there is left alone.
pub struct Receiver {
    listener: Listener,
    options: ReceiverOptions,
    /// Readable whenever `recv` has something to do: the app's event-loop fd.
    poller: OwnedFd,
    /// inotify on the socket file's directory; `None` where it cannot be watched.
    path_watch: Option<OwnedFd>,
    shared: Arc<Shared>,
    active: Option<Active>,
    record: Box<[u8]>,
    reader: MessageReader,
    /// The last wait saw a sender waiting to be accepted.
    listener_ready: bool,
}

impl Receiver {
    /// Binds at `path` (removing a stale socket file there; refusing anything else) and
    /// listens for a sender, with the default [`ReceiverOptions`].
    pub fn bind(path: impl AsRef<Path>) -> Result<Receiver, Error> {
        Receiver::bind_with(path, &ReceiverOptions::default())
    }

    /// [`Receiver::bind`] with `options`.
    pub fn bind_with(path: impl AsRef<Path>, options: &ReceiverOptions) -> Result<Receiver, Error> {
        let listener =
            Listener::bind(path.as_ref(), options.socket_mode).map_err(|e| Error::binding(path.as_ref(), e))?;
        let poller = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(io("creating the receiver's epoll fd"))?;
        let wake = WakeUp::new()
            .map_err(|source| Error::Io { what: "creating the receiver's wake-up eventfd".into(), source })?;
        let register = |fd: BorrowedFd<'_>, token| {
            epoll::add(&poller, fd, epoll::EventData::new_u64(token), epoll::EventFlags::IN)
                .map_err(io("registering with the receiver's epoll fd"))
        };
        register(listener.as_fd(), TOKEN_LISTENER)?;
        register(wake.as_fd(), TOKEN_WAKE)?;
        let path_watch = watch_directory_of(path.as_ref());
        if let Some(watch) = &path_watch {
            register(watch.as_fd(), TOKEN_PATH)?;
        }
        Ok(Receiver {
            listener,
            options: options.clone(),
            poller,
            path_watch,
            shared: Arc::new(Shared {
                owner: OwnerProcess::this(),
                counters: Counters::default(),
                wake,
                current: Mutex::new(None),
                disconnecting: AtomicBool::new(false),
                last_turned_away: Mutex::new(None),
            }),
            listener_ready: false,
            active: None,
            record: vec![0; MAX_RECORD_LEN + 1].into_boxed_slice(),
            reader: MessageReader::default(),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        self.listener.path()
    }

    /// Waits up to `timeout` (`None`: for ever) for the next event.
    ///
    /// A [`Error::Protocol`] rejects one message: its fds are closed, its buffer (if the
    /// message named one) is returned to the sender, and the next call goes on with the
    /// next message.
    pub fn recv(&mut self, timeout: Option<Duration>) -> Result<Event, Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(event) = self.try_recv()? {
                return Ok(event);
            }
            // Checked only before waiting, and a flag: no syscall unless interrupted.
            if self.shared.wake.take() {
                return Ok(Event::Interrupted);
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                // The eventfd may be readable for an interrupt taken already: emptied, so
                // that an app polling our fd is not woken for nothing; then the flag again,
                // for an interrupt that came meanwhile.
                self.shared.wake.drain();
                return Ok(if self.shared.wake.take() { Event::Interrupted } else { Event::Timeout });
            }
            let ready = self.wait(left)?;
            if ready.wake {
                // Emptied before the flag is looked at again (the top of the loop).
                self.shared.wake.drain();
            }
            self.listener_ready = ready.listener;
            if ready.path {
                self.on_path_event()?;
            }
        }
    }

    /// A handle that makes a blocked [`Receiver::recv`] return [`Event::Interrupted`], from
    /// any thread (a `recv` that finds a message ready returns it first).
    pub fn interrupter(&self) -> Interrupter {
        Interrupter(self.shared.clone())
    }

    /// A handle for other threads: stats, DISCONNECT and interrupt, none of which waits
    /// for this receiver (or for a thread blocked in [`Receiver::recv`]).
    pub fn handle(&self) -> ReceiverHandle {
        ReceiverHandle(self.shared.clone())
    }

    /// Tells the sender to stop sending (`DISCONNECT`): [`ReceiverHandle::send_disconnect`].
    pub fn send_disconnect(&self) -> Result<bool, Error> {
        self.handle().send_disconnect()
    }

    pub fn is_connected(&self) -> bool {
        self.active.is_some()
    }

    /// The connected sender's process credentials (`SO_PEERCRED`).
    pub fn peer_credentials(&self) -> Option<PeerCredentials> {
        self.shared.current().as_ref()?.peer
    }

    pub fn stats(&self) -> ReceiverStats {
        self.handle().stats()
    }

    /// Hangs up on a sender that was told to DISCONNECT and is still connected, after
    /// answering what it queued with returns; returns whether there was one. A sender
    /// waits for all its buffers before it leaves, and a buffer that downstream keeps
    /// across a pause (a video sink's last frame) would keep it waiting for ever: the
    /// hang-up lets it start over, as it does when a receiver goes away. Its buffers
    /// still held here stay valid (their fds are ours), but a pooled one may be reused by
    /// the sender from then on.
    pub fn drop_disconnected_sender(&mut self) -> bool {
        if self.active.is_none() || !self.shared.disconnecting.load(Relaxed) {
            return false;
        }
        self.answer_queued_messages();
        if let Some(active) = &self.active {
            // Both ways: the buffers still held keep the socket open, and the sender must
            // see the hang-up now, not when the last of them goes.
            active.connection.shutdown();
        }
        self.end_connection();
        true
    }

    /// Closes the receiver; the same as dropping it, spelled out.
    pub fn close(self) {}

    /// Waits until something is ready; says whether the socket's directory changed and
    /// whether a sender waits to be accepted.
    fn wait(&self, timeout: Option<Duration>) -> Result<Ready, Error> {
        // epoll_wait takes at most i32::MAX ms before Linux 5.11: wait a day at most, and again.
        let timeout = timeout.map(|t| t.min(Duration::from_secs(86_400)));
        let timeout = timeout.map(|t| rustix::event::Timespec::try_from(t).expect("a day fits"));
        let mut events = [std::mem::MaybeUninit::<epoll::Event>::uninit(); 4];
        match epoll::wait(&self.poller, &mut events, timeout.as_ref()) {
            Ok((ready, _)) => Ok(Ready {
                path: ready.iter().any(|e| e.data.u64() == TOKEN_PATH),
                listener: ready.iter().any(|e| e.data.u64() == TOKEN_LISTENER),
                wake: ready.iter().any(|e| e.data.u64() == TOKEN_WAKE),
            }),
            Err(rustix::io::Errno::INTR) => Ok(Ready::default()),
            Err(e) => Err(Error::Io { what: "waiting on the receiver's socket".into(), source: e.into() }),
        }
    }

    /// The socket file's directory changed: if our file is gone, bind the path again.
    fn on_path_event(&mut self) -> Result<(), Error> {
        let Some(watch) = &self.path_watch else { return Ok(()) };
        // Drain the events: only the state of the path matters, not their history.
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let mut reader = rustix::fs::inotify::Reader::new(watch, &mut buf);
        while reader.next().is_ok() {}
        if self.listener.is_path_ours() || rustix::fs::lstat(self.listener.path()).is_ok() {
            // Still ours, or somebody else's file now: never replaced.
            return Ok(());
        }
        // A receiver nobody can reach any more must say so rather than wait in silence.
        let again = |source| Error::Io {
            what: format!("socket {}: removed by someone, and binding it again failed", self.listener.path().display()),
            source,
        };
        let listener = Listener::bind(self.listener.path(), self.options.socket_mode).map_err(again)?;
        // The listener is watched always: while a sender is connected, to turn others away.
        // The new one is watched before the old one stops being, so a failure changes nothing.
        epoll::add(&self.poller, &listener, epoll::EventData::new_u64(TOKEN_LISTENER), epoll::EventFlags::IN)
            .map_err(|e| again(e.into()))?;
        let _ = epoll::delete(&self.poller, &self.listener);
        // Senders that had connected to the old socket stay in its backlog until it goes.
        self.listener = listener;
        self.shared.counters.socket_rebinds.fetch_add(1, Relaxed);
        Ok(())
    }

    /// One step without blocking: accept a sender, or read one message.
    fn try_recv(&mut self) -> Result<Option<Event>, Error> {
        let Some(active) = self.active.as_ref() else {
            return self.accept();
        };
        match self.reader.read(&active.connection, &mut self.record) {
            Ok(MessageIn::WouldBlock) => {
                // Only once the connected sender has nothing more (its hang-up comes first:
                // a sender that left and connects again is the next one, not turned away).
                if std::mem::take(&mut self.listener_ready) {
                    self.turn_away_waiting_senders();
                }
                Ok(None)
            }
            Ok(MessageIn::Hangup) => {
                self.end_connection();
                Ok(Some(Event::SenderGone))
            }
            Ok(MessageIn::Message { len, fds }) => {
                self.shared.counters.fds_received.fetch_add(fds.len() as u64, Relaxed);
                self.on_message(len, fds)
            }
            Err(ReadError::Protocol(e)) => Err(e.into()),
            Err(e) => {
                self.end_connection();
                Err(e.into())
            }
        }
        .inspect_err(|e| {
            if matches!(e, Error::Protocol(_)) {
                self.shared.counters.protocol_errors.fetch_add(1, Relaxed);
            }
        })
    }

    fn accept(&mut self) -> Result<Option<Event>, Error> {
        let io = |what: &str, source| Error::Io { what: what.into(), source };
        let Some(connection) = self.listener.accept().map_err(|e| io("accepting a sender", e))? else {
            return Ok(None);
        };
        let peer = connection.peer_credentials().ok();
        let allowed = &self.options.allowed_uids;
        if !allowed.is_empty() && !peer.is_some_and(|p| allowed.contains(&p.uid)) {
            // Dropping the connection closes it: the sender sees a hang-up at once.
            self.shared.counters.senders_refused.fetch_add(1, Relaxed);
            return Err(Error::SenderRefused { peer, allowed_uids: allowed.clone() });
        }
        // One sender at a time: the listener stays watched, and a sender that connects
        // while this one is here is turned away at once (see `turn_away_waiting_senders`).
        epoll::add(&self.poller, &connection, epoll::EventData::new_u64(TOKEN_CONNECTION), epoll::EventFlags::IN)
            .map_err(|e| io("updating the epoll fd", e.into()))?;
        let connection = Arc::new(connection);
        let mut current = self.shared.current();
        *current = Some(Current { connection: connection.clone(), peer });
        self.shared.disconnecting.store(false, Relaxed);
        drop(current);
        self.active = Some(Active { connection, cache: FdCache::default() });
        self.reader = MessageReader::default();
        // Whoever made the listener ready was this sender.
        self.listener_ready = false;
        self.shared.counters.senders_accepted.fetch_add(1, Relaxed);
        Ok(Some(Event::SenderConnected(peer)))
    }

    /// Forgets the current sender: cached fds close (once no buffer uses them), and the
    /// listener is watched again for the next one.
    fn end_connection(&mut self) {
        if let Some(active) = self.active.take() {
            *self.shared.current() = None;
            self.shared.counters.fds_cached.store(0, Relaxed);
            let _ = epoll::delete(&self.poller, &*active.connection);
            active.connection.shutdown_read();
        }
    }

    /// Accepts every sender waiting to be accepted and closes it at once; returns how many.
    ///
    /// One sender at a time: while one is connected, [`Receiver::recv`] does this by itself
    /// to each sender that connects, rather than leave it in the listen backlog, where it
    /// would believe itself connected, queue frames nobody reads and stall, and where those
    /// frames, stale by then, would be delivered when the first sender leaves. A sender
    /// turned away sees a hang-up before any message and connects again later (ours backs
    /// off; the deployed one retries every 10 ms). Call it also after not receiving for a
    /// while (the element does when it resumes from PAUSED): a sender that connected
    /// meanwhile has queued frames from that time. Counted in
    /// [`ReceiverStats::senders_turned_away`].
    pub fn turn_away_waiting_senders(&mut self) -> usize {
        let mut turned_away = 0;
        // Every waiting sender, but never more than could have queued up: not a loop that a
        // stream of connecting senders keeps going.
        while turned_away < 64 {
            let Ok(Some(connection)) = self.listener.accept() else { break };
            let peer = connection.peer_credentials().ok();
            // Both ways, at once: it sees the hang-up before reading anything.
            connection.shutdown();
            drop(connection);
            *self.shared.last_turned_away.lock().unwrap_or_else(|p| p.into_inner()) = peer;
            self.shared.counters.senders_turned_away.fetch_add(1, Relaxed);
            turned_away += 1;
        }
        turned_away
    }

    /// The last sender [`Receiver::turn_away_waiting_senders`] closed, if any.
    pub fn last_turned_away(&self) -> Option<PeerCredentials> {
        *self.shared.last_turned_away.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// (senders refused for their uid, senders turned away) so far: two atomic loads, for
    /// a streaming thread to notice new ones without taking any lock.
    pub fn refusal_counts(&self) -> (u64, u64) {
        let c = &self.shared.counters;
        (c.senders_refused.load(Relaxed), c.senders_turned_away.load(Relaxed))
    }

    fn on_message(&mut self, len: usize, fds: Vec<OwnedFd>) -> Result<Option<Event>, Error> {
        let message = match SenderMessage::parse(&self.record[..len], fds.len())? {
            SenderMessage::Eos => return Ok(Some(Event::Eos)),
            SenderMessage::Data(message) => message,
        };
        let active = self.active.as_mut().expect("a record came from a connection");
        let returner = (message.kind() != MemoryKind::Text)
            .then(|| Returner { connection: active.connection.clone(), shared: self.shared.clone() });
        if self.shared.disconnecting.load(Relaxed) {
            // Still cached, so that a later message reusing these buf_ids stays valid.
            let _ = active.cache.assign(&message, fds);
            if let Some(returner) = returner {
                returner.send_return(message.buf_ids());
            }
            return Ok(None);
        }
        let assigned = active.cache.assign(&message, fds);
        let counters = &self.shared.counters;
        counters.fds_cached.store(active.cache.len() as u64, Relaxed);
        match assigned {
            Ok(fds) => {
                counters.buffers.fetch_add(1, Relaxed);
                let described: u64 = message.blocks.iter().map(|b| b.size()).sum();
                counters.bytes_described.fetch_add(described, Relaxed);
                Ok(Some(Event::Buffer(ReceivedBuffer { message, fds, returner })))
            }
            Err(error) => {
                // The sender holds this buffer until it is returned; give it back.
                if let Some(returner) = returner {
                    returner.send_return(message.buf_ids());
                }
                Err(error.into())
            }
        }
    }

    /// Answers every message still queued with a return, as the deployed receiver does
    /// on its way to READY, so the sender gets all its buffers back.
    fn answer_queued_messages(&mut self) {
        let Some(active) = &self.active else { return };
        let returner = Returner { connection: active.connection.clone(), shared: self.shared.clone() };
        while let Ok(MessageIn::Message { len, fds }) = self.reader.read(&active.connection, &mut self.record) {
            if let Ok(SenderMessage::Data(message)) = SenderMessage::parse(&self.record[..len], fds.len()) {
                if message.kind() != MemoryKind::Text {
                    returner.send_return(message.buf_ids());
                }
            }
        }
    }
}

/// An `Error::Io` maker for a syscall's `Errno`.
fn io(what: &str) -> impl FnOnce(rustix::io::Errno) -> Error {
    let what = what.to_owned();
    move |e| Error::Io { what, source: e.into() }
}

/// An inotify fd that reports removals and renames in `path`'s directory, or `None`
/// where the directory cannot be watched (the receiver then cannot bind again by itself).
fn watch_directory_of(path: &Path) -> Option<OwnedFd> {
    use rustix::fs::inotify;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let watch = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK).ok()?;
    let events = inotify::WatchFlags::DELETE | inotify::WatchFlags::MOVED_FROM | inotify::WatchFlags::ONLYDIR;
    inotify::add_watch(&watch, dir, events).ok()?;
    Some(watch)
}

impl AsFd for Receiver {
    /// An fd that polls readable whenever [`Receiver::recv`] has something to do (a
    /// sender to accept, a record to read, an interrupt, the socket file removed). It
    /// stays the same fd for the receiver's whole life, across senders.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.poller.as_fd()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if !self.shared.in_owner_process() {
            // A forked child's copy: its fds close as the fields drop, and that is all.
            return;
        }
        self.answer_queued_messages();
        self.end_connection();
    }
}

/// Makes a blocked [`Receiver::recv`] return [`Event::Interrupted`]. Cheap to clone,
/// usable from any thread.
#[derive(Clone)]
pub struct Interrupter(Arc<Shared>);

impl Interrupter {
    pub fn interrupt(&self) {
        self.0.wake.wake();
    }
}

/// A receiver's control handle for other threads: reads its counters, tells its sender
/// to stop (DISCONNECT), interrupts a blocked `recv`. Cheap to clone; no call waits for
/// the receiver or for the thread that receives.
#[derive(Clone)]
pub struct ReceiverHandle(Arc<Shared>);

impl ReceiverHandle {
    pub fn stats(&self) -> ReceiverStats {
        let c = &self.0.counters;
        let peer = self.0.current().as_ref().map(|current| current.peer);
        ReceiverStats {
            buffers: c.buffers.load(Relaxed),
            bytes_described: c.bytes_described.load(Relaxed),
            fds_received: c.fds_received.load(Relaxed),
            fds_cached: c.fds_cached.load(Relaxed),
            returns_sent: c.returns_sent.load(Relaxed),
            protocol_errors: c.protocol_errors.load(Relaxed),
            senders_accepted: c.senders_accepted.load(Relaxed),
            senders_refused: c.senders_refused.load(Relaxed),
            senders_turned_away: c.senders_turned_away.load(Relaxed),
            socket_rebinds: c.socket_rebinds.load(Relaxed),
            connected: peer.is_some(),
            peer: peer.flatten(),
        }
    }

    /// Tells the sender to stop sending (`DISCONNECT`), as the deployed receiver does
    /// when it pauses. Returns whether a sender was connected to be told. Buffers that
    /// sender still sends (they were on their way) are returned to it at once instead of
    /// being delivered; the next sender's are delivered again.
    pub fn send_disconnect(&self) -> Result<bool, Error> {
        let current = self.0.current();
        let Some(connection) = current.as_ref().map(|c| c.connection.clone()) else { return Ok(false) };
        // Set under the lock, so that a sender accepted meanwhile is not affected.
        self.0.disconnecting.store(true, Relaxed);
        drop(current);
        send_without_waiting(&connection, &ReceiverMessage::Disconnect.encode())
            .map_err(|source| Error::Io { what: "sending DISCONNECT".into(), source })?;
        Ok(true)
    }

    /// Makes a blocked [`Receiver::recv`] return [`Event::Interrupted`].
    pub fn interrupt(&self) {
        Interrupter(self.0.clone()).interrupt()
    }
}

/// Sends a buffer's return on the connection it came from, from whatever thread,
/// without ever waiting.
struct Returner {
    connection: Arc<Connection>,
    shared: Arc<Shared>,
}

impl Returner {
    fn send_return(&self, buf_ids: &[i32]) {
        if !self.shared.in_owner_process() {
            // A forked child's copy of the buffer: the parent's copy returns it.
            return;
        }
        let Some(ret) = ReturnMessage::new(buf_ids) else { return };
        // A failure means the sender is gone: nobody is left to give the buffer back to.
        if send_without_waiting(&self.connection, &ReceiverMessage::Return(ret).encode()).is_ok() {
            self.shared.counters.returns_sent.fetch_add(1, Relaxed);
        }
    }
}

/// Sends a message to the sender without waiting: what its full socket cannot take yet
/// waits in the connection's outbox, and a `qsock-returns` thread sends it as room comes.
/// Whoever drops a buffer (a streaming thread, an app's thread) must not wait for the
/// sender to read: the sender may itself be waiting for us to read.
fn send_without_waiting(connection: &Arc<Connection>, record: &[u8]) -> std::io::Result<()> {
    if connection.queue_message(record)? == Queued::FlushNeeded {
        let spawned = std::thread::Builder::new().name("qsock-returns".into()).spawn({
            let connection = connection.clone();
            move || flush_when_writable(&connection)
        });
        if spawned.is_err() {
            // No thread to be had: what waits goes out with the next message sent.
            connection.give_up_flushing();
        }
    }
    Ok(())
}

/// The outbox's flusher: waits for room and sends, until the outbox is empty or the
/// connection failed (the sender hung up: nothing is owed to it any more).
fn flush_when_writable(connection: &Connection) {
    loop {
        if wait(connection.as_fd(), Want::Write, None, None).is_err() {
            connection.give_up_flushing();
            return;
        }
        if !matches!(connection.flush_queued(), Ok(false)) {
            return;
        }
    }
}

impl std::fmt::Debug for Returner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Returner")
    }
}

/// A received buffer: its description and its memory fds. Dropping it returns the
/// buffer to the sender (text buffers, which hold no sender memory, send nothing).
#[derive(Debug)]
pub struct ReceivedBuffer {
    message: DataMessage,
    /// One per block (none for text).
    fds: Vec<Arc<OwnedFd>>,
    returner: Option<Returner>,
}

impl ReceivedBuffer {
    /// The buffer's description: kind, timestamps, blocks, metas.
    pub fn message(&self) -> &DataMessage {
        &self.message
    }

    /// The fd of memory block `block`, valid while the buffer lives; `None` for text.
    pub fn fd(&self, block: usize) -> Option<BorrowedFd<'_>> {
        self.fds.get(block).map(|fd| fd.as_fd())
    }

    /// The shared fd of block `block`: the same `Arc` for every buffer that reuses a
    /// pooled `buf_id` on this connection, so a consumer can keep per-object state
    /// (mappings, wrapped memories) keyed by it.
    pub fn shared_fd(&self, block: usize) -> Option<&Arc<OwnedFd>> {
        self.fds.get(block)
    }
}

impl Drop for ReceivedBuffer {
    fn drop(&mut self) {
        if let Some(returner) = &self.returner {
            returner.send_return(self.message.buf_ids());
        }
    }
}
