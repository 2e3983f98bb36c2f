//! The socket: `AF_UNIX`/`SOCK_SEQPACKET`, one message = a 4-byte length record and the
//! message record, fds in `SCM_RIGHTS`. Every fd is an [`OwnedFd`] from the kernel on;
//! rustix does the `cmsg` work, except for `recvmmsg`, which rustix lacks
//! ([`Connection::recv_two_records`]). That and the fork counter of [`OwnerProcess`] are
//! this module's only `unsafe`.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::fs::FileTypeExt as _;
use rustix::net::{
    AddressFamily, MMsgHdr, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, Shutdown, SocketAddrUnix, SocketFlags, SocketType,
};

use crate::protocol::{encode_length_record, parse_length_record, ProtocolError, MAX_MEMORY_BLOCKS};
use crate::socket_owner;

/// `sun_path` holds 108 bytes, the terminating NUL included.
pub const MAX_SOCKET_PATH_LEN: usize = 107;

/// A peer that stops reading must not block our sends forever: after this long without
/// room, a waiting send fails and the connection is shut down.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// Room for every fd a message may carry, and a little more, so that a sender that
/// attaches too many is seen (an error, with every fd closed) rather than truncated.
const RECV_FDS_CAPACITY: usize = MAX_MEMORY_BLOCKS + 6;

/// Room for the control data of one received record: `SCM_RIGHTS` with
/// [`RECV_FDS_CAPACITY`] fds.
const RECV_CONTROL_LEN: usize = rustix::cmsg_space!(ScmRights(RECV_FDS_CAPACITY));

/// A control buffer for `recvmmsg`, aligned for the `cmsghdr`s the kernel writes in it.
#[repr(C, align(8))]
struct ControlBuffer([u8; RECV_CONTROL_LEN]);
const _: () = assert!(std::mem::align_of::<libc::cmsghdr>() <= 8);

/// A problem with the socket path itself (not a failed syscall): `InvalidInput`.
fn path_error(reason: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, reason)
}

/// What the path refers to before we bind, as far as our checks care.
fn check_socket_path(path: &Path) -> io::Result<()> {
    let len = path.as_os_str().len();
    if len == 0 {
        return Err(path_error("the socket path is empty: name the socket file to create, e.g. /tmp/cam.sock".into()));
    }
    if len > MAX_SOCKET_PATH_LEN {
        return Err(path_error(format!(
            "the path is {len} bytes long; a UNIX socket path holds at most {MAX_SOCKET_PATH_LEN}"
        )));
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(path_error(format!("cannot inspect it: {e}"))),
        // A socket somebody listens on is theirs (asked of the kernel: a probing connect
        // would be taken for a sender). One nobody listens on is stale: replaced.
        Ok(meta) if meta.file_type().is_socket() => match socket_owner::listening_on(path, meta.dev(), meta.ino()) {
            Ok(None) => {
                std::fs::remove_file(path).map_err(|e| path_error(format!("cannot remove the stale socket there: {e}")))
            }
            Ok(Some(listening)) => Err(path_error(format!(
                "another receiver is listening on it ({}); stop that one or choose another path",
                listening.describe()
            ))),
            Err(e) => Err(path_error(format!(
                "a socket is there and whether a receiver listens on it cannot be told ({e}); remove it if none does"
            ))),
        },
        Ok(meta) => {
            let what = if meta.is_dir() {
                "a directory"
            } else if meta.file_type().is_symlink() {
                "a symbolic link"
            } else if meta.is_file() {
                "a regular file"
            } else {
                "not a socket"
            };
            Err(path_error(format!("it exists and is {what}; refusing to replace it with a socket")))
        }
    }
}

fn seqpacket_socket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?)
}

/// The receiver's listening socket. Removes its socket file when dropped, in the process
/// that bound it only (a forked child's copy leaves it to the parent).
pub struct Listener {
    fd: OwnedFd,
    path: PathBuf,
    owner: OwnerProcess,
    /// Identity of the socket file we created, so that we never remove a file that
    /// somebody else put at the path after us.
    file_id: (u64, u64),
}

impl Listener {
    /// Binds at `path` and listens for one sender. A stale socket file at the path (one
    /// nobody listens on) is removed; a live one, or anything else there, is refused and
    /// left untouched. The socket file gets the permission bits `mode` (at most 0o777):
    /// who may connect.
    /// Errors: `InvalidInput` for the path's own problems (the message says which),
    /// another kind for a failed syscall (the message names the step).
    pub fn bind(path: &Path, mode: u32) -> io::Result<Listener> {
        if mode & !0o777 != 0 {
            return Err(path_error(format!("socket mode {mode:#o} has bits outside 0o777")));
        }
        check_socket_path(path)?;
        let io_error = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
        let fd = seqpacket_socket().map_err(|e| io_error("creating the socket", e))?;
        let mode = rustix::fs::Mode::from_raw_mode(mode);
        // Linux creates the socket file with the socket inode's mode (less the umask):
        // set before bind, the file is never more open than asked, not even briefly.
        rustix::fs::fchmod(&fd, mode).map_err(|e| io_error("setting the mode of the socket", e.into()))?;
        let addr = SocketAddrUnix::new(path).map_err(|e| io_error("building its address", e.into()))?;
        rustix::net::bind(&fd, &addr).map_err(|e| io_error("binding", e.into()))?;
        let stat = rustix::fs::stat(path).map_err(|e| io_error("inspecting", e.into()))?;
        let listener =
            Listener { fd, path: path.to_owned(), owner: OwnerProcess::this(), file_id: (stat.st_dev, stat.st_ino) };
        // The umask may have taken bits the caller asked for; nobody can connect before
        // listen(), so setting them now opens no window.
        rustix::fs::chmod(path, mode).map_err(|e| io_error("setting the mode of the socket file", e.into()))?;
        rustix::net::listen(&listener.fd, 1).map_err(|e| io_error("listening", e.into()))?;
        Ok(listener)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file at the path is still the socket file this listener created.
    pub fn is_path_ours(&self) -> bool {
        rustix::fs::lstat(&self.path).is_ok_and(|s| (s.st_dev, s.st_ino) == self.file_id)
    }

    /// Accepts a waiting sender, if there is one.
    pub fn accept(&self) -> io::Result<Option<Connection>> {
        match rustix::net::accept_with(&self.fd, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK) {
            Ok(fd) => Connection::new(fd).map(Some),
            Err(rustix::io::Errno::AGAIN) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if self.owner.is_this() && self.is_path_ours() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// One record received.
#[derive(Debug)]
pub enum Incoming {
    /// A record of `len` bytes (the full length even when it did not fit the buffer)
    /// and the fds that came with it.
    Record { len: usize, fds: Vec<OwnedFd>, control_truncated: bool },
    /// Nothing to read now.
    WouldBlock,
    /// The peer closed its end.
    Hangup,
}

/// A connected socket. Sends are serialized: a message's two records are never
/// interleaved with another thread's.
///
/// Two ways to send: [`Connection::send_message`] waits for room (at most
/// [`SEND_TIMEOUT`]); [`Connection::try_send_message`] and [`Connection::queue_message`]
/// never wait. What `queue_message` cannot send at once waits in the connection's
/// outbox, in order, until [`Connection::flush_queued`] (or the next send) finds room.
#[derive(Debug)]
pub struct Connection {
    fd: OwnedFd,
    outbox: Mutex<Outbox>,
}

/// Records owed to the peer, oldest first: what a full socket could not take yet. Only
/// records without fds are queued (a queued record cannot keep borrowed fds).
#[derive(Debug, Default)]
struct Outbox {
    records: VecDeque<Vec<u8>>,
    /// Somebody has promised to flush the outbox until it is empty ([`Queued::FlushNeeded`]).
    flusher: bool,
}

/// How far a send that does not wait got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The whole message is on its way.
    Sent,
    /// Only the length record went: the message record must follow, and nothing else
    /// may be sent before it ([`Connection::try_send_record`]).
    LengthRecordOnly,
    /// Nothing went: the socket is full.
    Nothing,
}

/// What [`Connection::queue_message`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Sent, and the outbox is empty.
    Sent,
    /// Waiting in the outbox; somebody flushes it already.
    Queued,
    /// Waiting in the outbox, and nobody flushes it yet: the caller is the flusher now,
    /// and calls [`Connection::flush_queued`] when the socket is writable until it says
    /// the outbox is empty (or [`Connection::give_up_flushing`]).
    FlushNeeded,
}

impl Connection {
    fn new(fd: OwnedFd) -> io::Result<Connection> {
        Ok(Connection { fd, outbox: Mutex::new(Outbox::default()) })
    }

    /// Connects to a receiver listening at `path` (one attempt).
    pub fn connect(path: &Path) -> io::Result<Connection> {
        let fd = seqpacket_socket()?;
        let addr = SocketAddrUnix::new(path)?;
        match rustix::net::connect(&fd, &addr) {
            Ok(()) | Err(rustix::io::Errno::INPROGRESS) => Connection::new(fd),
            Err(e) => Err(e.into()),
        }
    }

    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        // Every change under the lock is a plain push or pop: a poisoned one is consistent.
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends one message: the length record, then `record` with `fds` attached, after
    /// what the outbox holds; waits for room at most [`SEND_TIMEOUT`].
    /// On failure the connection is shut down, since the framing can no longer be trusted.
    pub fn send_message(&self, record: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let mut outbox = self.outbox();
        let deadline = Instant::now() + SEND_TIMEOUT;
        let result = (|| {
            while !self.flush_locked(&mut outbox)? {
                self.wait_writable(deadline)?;
            }
            let mut progress = self.try_send_message_locked(record, fds)?;
            loop {
                progress = match progress {
                    Progress::Sent => return Ok(()),
                    Progress::Nothing => self.try_send_message_locked(record, fds)?,
                    Progress::LengthRecordOnly if self.try_send_record_locked(record, fds)? => Progress::Sent,
                    Progress::LengthRecordOnly => Progress::LengthRecordOnly,
                };
                if progress != Progress::Sent {
                    self.wait_writable(deadline)?;
                }
            }
        })();
        if result.is_err() {
            self.fail(&mut outbox);
        }
        result
    }

    /// Sends one message without waiting: see [`Progress`]. After
    /// [`Progress::LengthRecordOnly`], the caller must send `record` next with
    /// [`Connection::try_send_record`]. Not for a connection whose outbox is in use: the
    /// outbox would go out after this message. On failure the connection is shut down.
    pub fn try_send_message(&self, record: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<Progress> {
        let mut outbox = self.outbox();
        debug_assert!(outbox.records.is_empty(), "try_send_message would jump the outbox");
        self.try_send_message_locked(record, fds).inspect_err(|_| self.fail(&mut outbox))
    }

    /// Sends the message record that [`Progress::LengthRecordOnly`] left owed, without
    /// waiting; false when the socket is still full. On failure the connection is shut down.
    pub fn try_send_record(&self, record: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<bool> {
        let mut outbox = self.outbox();
        self.try_send_record_locked(record, fds).inspect_err(|_| self.fail(&mut outbox))
    }

    /// Sends a message without fds, never waiting: what the socket cannot take now waits
    /// in the outbox, after what waits there already (see [`Queued`]). Fails only when
    /// the socket failed (the peer is gone); the connection is shut down then.
    pub fn queue_message(&self, record: &[u8]) -> io::Result<Queued> {
        let mut outbox = self.outbox();
        let result = (|| {
            if self.flush_locked(&mut outbox)? {
                match self.try_send_message_locked(record, &[])? {
                    Progress::Sent => return Ok(Queued::Sent),
                    Progress::LengthRecordOnly => outbox.records.push_back(record.to_vec()),
                    Progress::Nothing => {
                        outbox.records.push_back(encode_length_record(record.len()).to_vec());
                        outbox.records.push_back(record.to_vec());
                    }
                }
            } else {
                outbox.records.push_back(encode_length_record(record.len()).to_vec());
                outbox.records.push_back(record.to_vec());
            }
            Ok(match std::mem::replace(&mut outbox.flusher, true) {
                true => Queued::Queued,
                false => Queued::FlushNeeded,
            })
        })();
        if result.is_err() {
            self.fail(&mut outbox);
        }
        result
    }

    /// For the flusher ([`Queued::FlushNeeded`]): sends what the outbox holds, without
    /// waiting. True when it is empty: the flusher's job is done. On failure the outbox
    /// is dropped, the connection shut down and the job done too.
    pub fn flush_queued(&self) -> io::Result<bool> {
        let mut outbox = self.outbox();
        match self.flush_locked(&mut outbox) {
            Ok(true) => {
                outbox.flusher = false;
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(e) => {
                self.fail(&mut outbox);
                Err(e)
            }
        }
    }

    /// For a flusher that cannot go on (no thread to wait in): the next
    /// [`Connection::queue_message`] that leaves records queued names a new one.
    pub fn give_up_flushing(&self) {
        self.outbox().flusher = false;
    }

    /// Records waiting in the outbox.
    pub fn queued_records(&self) -> usize {
        self.outbox().records.len()
    }

    /// Sends the outbox's records in order while the socket takes them; true when empty.
    fn flush_locked(&self, outbox: &mut Outbox) -> io::Result<bool> {
        while let Some(record) = outbox.records.front() {
            if !self.try_send_record_locked(record, &[])? {
                return Ok(false);
            }
            outbox.records.pop_front();
        }
        Ok(true)
    }

    /// A send failed: the framing can no longer be trusted, and nothing queued will go.
    fn fail(&self, outbox: &mut Outbox) {
        outbox.records.clear();
        outbox.flusher = false;
        self.shutdown();
    }

    /// Both records in one `sendmmsg`: the same two records on the wire, one syscall.
    fn try_send_message_locked(&self, record: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<Progress> {
        let length_record = encode_length_record(record.len());
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(RECV_FDS_CAPACITY))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many fds for one record"));
        }
        let mut no_control = SendAncillaryBuffer::default();
        let (length_iov, record_iov) = ([IoSlice::new(&length_record)], [IoSlice::new(record)]);
        let mut messages = [MMsgHdr::new(&length_iov, &mut no_control), MMsgHdr::new(&record_iov, &mut control)];
        loop {
            // NOSIGNAL: a peer that went away must give us EPIPE, not kill the process.
            match rustix::net::sendmmsg(&self.fd, &mut messages, SendFlags::NOSIGNAL | SendFlags::DONTWAIT) {
                Ok(2) => return Ok(Progress::Sent),
                // The queue had room for the length record only: the message record follows alone.
                Ok(1) => return Ok(Progress::LengthRecordOnly),
                Ok(_) | Err(rustix::io::Errno::AGAIN) => return Ok(Progress::Nothing),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends one record without waiting; false when the socket is full.
    fn try_send_record_locked(&self, record: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<bool> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(RECV_FDS_CAPACITY))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many fds for one record"));
        }
        loop {
            let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
            match rustix::net::sendmsg(&self.fd, &[IoSlice::new(record)], &mut control, flags) {
                Ok(n) if n == record.len() => return Ok(true),
                Ok(n) => return Err(io::Error::other(format!("sent {n} of a {}-byte record", record.len()))),
                Err(rustix::io::Errno::AGAIN) => return Ok(false),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends one raw record, with no length record before it, waiting for room at most
    /// [`SEND_TIMEOUT`]. For tests that play a lying peer; a real message goes through
    /// [`Connection::send_message`].
    pub fn send_raw_record(&self, record: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let _outbox = self.outbox();
        let deadline = Instant::now() + SEND_TIMEOUT;
        while !self.try_send_record_locked(record, fds)? {
            self.wait_writable(deadline)?;
        }
        Ok(())
    }

    fn wait_writable(&self, deadline: Instant) -> io::Result<()> {
        match wait(self.fd.as_fd(), Want::Write, None, Some(deadline))? {
            Ready::TimedOut => Err(peer_not_reading()),
            _ => Ok(()),
        }
    }

    /// Receives one record and its fds without blocking. `buf` should be one byte
    /// longer than the largest record expected, so an oversized one is seen as such.
    pub fn recv_record(&self, buf: &mut [u8]) -> io::Result<Incoming> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(RECV_FDS_CAPACITY))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let flags = RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC | RecvFlags::TRUNC;
        let msg = loop {
            match rustix::net::recvmsg(&self.fd, &mut [IoSliceMut::new(buf)], &mut control, flags) {
                Ok(msg) => break msg,
                Err(rustix::io::Errno::AGAIN) => return Ok(Incoming::WouldBlock),
                // A peer that closed with our records unread in its queue leaves ECONNRESET
                // here, reported once and before the records it sent us that are still
                // queued: read on, and its end of stream comes after them.
                Err(rustix::io::Errno::INTR | rustix::io::Errno::CONNRESET) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let mut fds = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        self.incoming((msg.bytes, fds, msg.flags.contains(ReturnFlags::CTRUNC)))
    }

    /// Receives up to two records with one `recvmmsg`, without blocking: the first into
    /// `first` and, when the next one is queued already, that one into `second`. The
    /// same records and fds as two [`Connection::recv_record`] calls, with one syscall:
    /// a message's length record and message record usually arrive together.
    pub fn recv_two_records(&self, first: &mut [u8], second: &mut [u8]) -> io::Result<(Incoming, Option<Incoming>)> {
        let mut controls = [ControlBuffer([0; RECV_CONTROL_LEN]), ControlBuffer([0; RECV_CONTROL_LEN])];
        let mut iovs = [
            libc::iovec { iov_base: first.as_mut_ptr().cast(), iov_len: first.len() },
            libc::iovec { iov_base: second.as_mut_ptr().cast(), iov_len: second.len() },
        ];
        // SAFETY: mmsghdr is a C struct of integers and pointers, for which all zeroes is valid (empty).
        let mut messages: [libc::mmsghdr; 2] = unsafe { std::mem::zeroed() };
        for ((message, iov), control) in messages.iter_mut().zip(&mut iovs).zip(&mut controls) {
            message.msg_hdr.msg_iov = iov;
            message.msg_hdr.msg_iovlen = 1;
            message.msg_hdr.msg_control = control.0.as_mut_ptr().cast();
            message.msg_hdr.msg_controllen = RECV_CONTROL_LEN as _;
        }
        let flags = libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC | libc::MSG_TRUNC;
        let received = loop {
            // SAFETY: every pointer in `messages` is to a live buffer of the length beside it (iovs, controls), all outliving the call.
            let n = unsafe {
                libc::recvmmsg(self.fd.as_raw_fd(), messages.as_mut_ptr(), 2, flags as _, std::ptr::null_mut())
            };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => return Ok((Incoming::WouldBlock, None)),
                // As in `recv_record`: a reset is reported before the records still queued.
                Some(libc::EINTR | libc::ECONNRESET) => continue,
                _ => return Err(e),
            }
        };
        // Every fd received is owned before anything else can fail.
        let mut records = messages[..received.min(2)].iter().map(|message| {
            // SAFETY: recvmmsg just filled this header: its control data is the kernel's, and the fds in it are new ones of ours.
            let fds = unsafe { take_received_fds(&message.msg_hdr) };
            let control_truncated = message.msg_hdr.msg_flags & libc::MSG_CTRUNC != 0;
            (message.msg_len as usize, fds, control_truncated)
        });
        let (Some(first), second) = (records.next(), records.next()) else { return Ok((Incoming::WouldBlock, None)) };
        let first = self.incoming(first)?;
        if matches!(first, Incoming::Hangup) {
            return Ok((first, None));
        }
        Ok((first, second.map(|second| self.incoming(second)).transpose()?))
    }

    /// What a received record is: a record, or the peer's end of stream.
    fn incoming(&self, (len, fds, control_truncated): (usize, Vec<OwnedFd>, bool)) -> io::Result<Incoming> {
        // A zero-byte read is the peer's end of stream, unless the peer sent an empty
        // record and is still there.
        if len == 0 && fds.is_empty() && self.peer_hung_up()? {
            return Ok(Incoming::Hangup);
        }
        Ok(Incoming::Record { len, fds, control_truncated })
    }

    fn peer_hung_up(&self) -> io::Result<bool> {
        use rustix::event::PollFlags;
        let mut fds = [rustix::event::PollFd::new(&self.fd, PollFlags::RDHUP)];
        rustix::event::poll(&mut fds, Some(&rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 }))?;
        Ok(fds[0].revents().intersects(PollFlags::RDHUP | PollFlags::HUP))
    }

    /// Stops reading: the peer's sends fail from now on, while our sends (returns for
    /// buffers still held) still go out.
    pub fn shutdown_read(&self) {
        let _ = rustix::net::shutdown(&self.fd, Shutdown::Read);
    }

    pub fn shutdown(&self) {
        let _ = rustix::net::shutdown(&self.fd, Shutdown::Both);
    }

    /// The peer's process credentials (`SO_PEERCRED`).
    pub fn peer_credentials(&self) -> io::Result<PeerCredentials> {
        let c = rustix::net::sockopt::socket_peercred(&self.fd)?;
        Ok(PeerCredentials { pid: c.pid.as_raw_nonzero().get(), uid: c.uid.as_raw(), gid: c.gid.as_raw() })
    }
}

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The fds in the `SCM_RIGHTS` control messages of a received message header, owned.
///
/// # Safety
/// `header` was just filled by `recvmsg`/`recvmmsg`: its first `msg_controllen` control
/// bytes are well-formed `cmsghdr`s written by the kernel, and the fds in them are new
/// fds of this process that nothing else owns. Call it once per receive.
unsafe fn take_received_fds(header: &libc::msghdr) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    // SAFETY: the caller's promise: the control buffer holds `msg_controllen` bytes of cmsgs.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(header) };
    while !cmsg.is_null() {
        // SAFETY: a non-null header from CMSG_FIRSTHDR/CMSG_NXTHDR lies inside the control bytes, aligned.
        let (level, kind, len) = unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type, (*cmsg).cmsg_len as usize) };
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a constant computation on no pointer.
            let data_len = len.saturating_sub(unsafe { libc::CMSG_LEN(0) } as usize);
            // SAFETY: SCM_RIGHTS data follows its header, `data_len` bytes inside the control bytes.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<libc::c_int>();
            for i in 0..data_len / std::mem::size_of::<libc::c_int>() {
                // SAFETY: the i-th fd of this message, inside its data; read unaligned as cmsg data may be.
                let fd = unsafe { data.add(i).read_unaligned() };
                // SAFETY: the kernel installed this fd for this receive; nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: `cmsg` is a header inside `header`'s control bytes; NXTHDR checks the bounds.
        cmsg = unsafe { libc::CMSG_NXTHDR(header, cmsg) };
    }
    fds
}

/// Forks this process's line has been through, counted in each child as it starts (a
/// `pthread_atfork` child handler).
static FORKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

extern "C" fn count_fork_in_child() {
    FORKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// A number that is different in a child after `fork()` from what its parent read
/// before, read without a syscall (a process's own `getpid` is one, on every buffer's
/// return); `None` if the fork handler could not be registered (then ask `getpid`).
/// Counts the forks of libc's `fork()`, which every runtime's fork goes through.
fn fork_generation() -> Option<u64> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // SAFETY: the handler only increments an atomic, which is async-signal-safe as a fork child handler must be.
    let registered =
        *REGISTERED.get_or_init(|| unsafe { libc::pthread_atfork(None, None, Some(count_fork_in_child)) } == 0);
    registered.then(|| FORKS.load(std::sync::atomic::Ordering::Relaxed))
}

/// The process that made something (a receiver, a sender, a C handle): a forked child's
/// copy must not speak on its connections nor touch its socket file. Told without a
/// syscall ([`fork_generation`]; `getpid` is one, and was made on every buffer).
#[derive(Debug, Clone, Copy)]
pub struct OwnerProcess {
    pid: rustix::process::Pid,
    fork_generation: Option<u64>,
}

impl OwnerProcess {
    /// This process.
    pub fn this() -> OwnerProcess {
        OwnerProcess { pid: rustix::process::getpid(), fork_generation: fork_generation() }
    }

    /// Whether this is still that process. Async-signal-safe once [`OwnerProcess::this`]
    /// ran (an atomic load; `getpid` only if the fork handler could not be registered).
    pub fn is_this(&self) -> bool {
        match self.fork_generation {
            Some(generation) if fork_generation() == Some(generation) => true,
            _ => rustix::process::getpid() == self.pid,
        }
    }

    pub fn pid(&self) -> rustix::process::Pid {
        self.pid
    }
}

/// The size of the object behind a memory fd: `st_size` for memfds and files,
/// `lseek(SEEK_END)` for DMA-BUFs (whose `st_size` is not reliable on older kernels).
pub fn object_size(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let stat = rustix::fs::fstat(fd)?;
    if stat.st_size > 0 {
        return Ok(stat.st_size as u64);
    }
    let file_type = rustix::fs::FileType::from_raw_mode(stat.st_mode);
    if file_type == rustix::fs::FileType::RegularFile {
        return Ok(0);
    }
    Ok(rustix::fs::seek(fd, rustix::fs::SeekFrom::End(0))?)
}

/// Whether the object behind a memory fd can get smaller under a reader: a regular file
/// (a memfd, a tmpfs or shm file) unless sealed with `F_SEAL_SHRINK`. A DMA-BUF's size
/// is fixed when it is exported.
pub fn object_can_shrink(fd: BorrowedFd<'_>) -> bool {
    let regular = rustix::fs::fstat(fd)
        .is_ok_and(|stat| rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::RegularFile);
    regular && !rustix::fs::fcntl_get_seals(fd).is_ok_and(|seals| seals.contains(rustix::fs::SealFlags::SHRINK))
}

/// A whole message read from a connection.
#[derive(Debug)]
pub enum MessageIn {
    /// A message record of `len` bytes (at the start of the caller's buffer) and its fds.
    Message {
        len: usize,
        fds: Vec<OwnedFd>,
    },
    WouldBlock,
    Hangup,
}

/// Pairs each length record with the message record that follows it, across calls
/// that return early because the second record has not arrived yet.
#[derive(Debug, Default)]
pub struct MessageReader {
    pending_len: Option<usize>,
    /// Why the awaited message is rejected already (fds rode on its length record).
    pending_rejection: Option<ProtocolError>,
    /// A record read together with a length record that turned out not to be one: it is
    /// the next record, read as a length record by the next call (its first bytes copied).
    read_ahead: Option<(Incoming, [u8; 4])>,
}

impl MessageReader {
    /// Reads the next whole message without blocking. A framing error rejects the
    /// records involved (their fds closed) and leaves the reader ready for the next.
    ///
    /// A length record and the message record after it are read with one syscall when
    /// both are there ([`Connection::recv_two_records`]).
    pub fn read(&mut self, connection: &Connection, buf: &mut [u8]) -> Result<MessageIn, ReadError> {
        let mut length_bytes = [0u8; 4];
        // Read with the length record, still to be handled: the message record, in `buf`.
        let mut next: Option<Incoming> = None;
        loop {
            let incoming = if let Some(incoming) = next.take() {
                length_bytes = head(buf);
                Ok(incoming)
            } else if let Some((incoming, bytes)) = self.read_ahead.take() {
                length_bytes = bytes;
                Ok(incoming)
            } else if self.pending_len.is_none() {
                connection.recv_two_records(&mut length_bytes, buf).map(|(first, second)| {
                    next = second;
                    first
                })
            } else {
                connection.recv_record(buf)
            };
            // Where the record's bytes are: a length record's in `length_bytes`, a message
            // record's in `buf`.
            let (len, fds) = match incoming {
                Ok(Incoming::Record { control_truncated: true, .. }) => {
                    self.reset(next, buf);
                    return Err(ProtocolError::ControlTruncated.into());
                }
                Ok(Incoming::Record { len, fds, .. }) => (len, fds),
                Ok(Incoming::WouldBlock) => return Ok(MessageIn::WouldBlock),
                Ok(Incoming::Hangup) => {
                    *self = MessageReader::default();
                    return Ok(MessageIn::Hangup);
                }
                Err(e) => return Err(ReadError::Io(e)),
            };
            match self.pending_len.take() {
                None => {
                    let announced = match len {
                        4 => parse_length_record(&length_bytes),
                        // The size the record had when it was read whole into `buf`.
                        _ => Err(ProtocolError::LengthRecordSize { got: len.min(buf.len()) }),
                    };
                    let announced = match announced {
                        Ok(announced) => announced,
                        Err(e) => {
                            self.reset(next, buf);
                            return Err(e.into());
                        }
                    };
                    self.pending_len = Some(announced);
                    if !fds.is_empty() {
                        // Keep the framing: the message record that follows is this
                        // message's, and is rejected with it, once.
                        self.pending_rejection =
                            Some(ProtocolError::FdCountMismatch { announced: 0, received: fds.len() });
                    }
                }
                Some(announced) if len != announced => {
                    self.pending_rejection = None;
                    return Err(ProtocolError::RecordLengthMismatch { announced, got: len }.into());
                }
                Some(_) => match self.pending_rejection.take() {
                    Some(rejection) => return Err(rejection.into()),
                    None => return Ok(MessageIn::Message { len, fds }),
                },
            }
        }
    }

    /// After a framing error: the next record is read as a length record. `next`, read
    /// already (into the caller's buffer), is that record: its first bytes are kept.
    fn reset(&mut self, next: Option<Incoming>, buf: &[u8]) {
        *self = MessageReader::default();
        // `next` came into `buf`, which the caller may reuse: its first bytes go with it.
        self.read_ahead = next.map(|incoming| (incoming, head(buf)));
    }
}

/// The first 4 bytes of `buf` (zeroes where it is shorter).
fn head(buf: &[u8]) -> [u8; 4] {
    let mut bytes = [0; 4];
    let n = buf.len().min(4);
    bytes[..n].copy_from_slice(&buf[..n]);
    bytes
}

/// Why [`MessageReader::read`] failed: the socket, or a message that breaks the protocol
/// (rejected, its fds closed; the next read goes on).
#[derive(Debug)]
pub enum ReadError {
    Io(io::Error),
    Protocol(ProtocolError),
}

impl From<ProtocolError> for ReadError {
    fn from(e: ProtocolError) -> ReadError {
        ReadError::Protocol(e)
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => e.fmt(f),
            ReadError::Protocol(e) => e.fmt(f),
        }
    }
}

/// A peer's process, as the kernel saw it when it connected (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// The error of a send that found no room for [`SEND_TIMEOUT`].
pub fn peer_not_reading() -> io::Error {
    let seconds = SEND_TIMEOUT.as_secs();
    io::Error::new(io::ErrorKind::TimedOut, format!("the peer has not read its socket for {seconds} s"))
}

/// What [`wait`] waits for on its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Read,
    Write,
    /// Either: a sender waiting for room reads what its peer says meanwhile.
    ReadOrWrite,
}

/// What ends a wait from another thread (an interrupt): a flag, looked at before each
/// wait (a load, where reading the eventfd would be a syscall per wait), and an eventfd,
/// which ends a wait in progress (poll or epoll it).
#[derive(Debug)]
pub struct WakeUp {
    owed: std::sync::atomic::AtomicBool,
    fd: OwnedFd,
}

impl WakeUp {
    pub fn new() -> io::Result<WakeUp> {
        let flags = rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK;
        let fd = rustix::event::eventfd(0, flags)?;
        Ok(WakeUp { owed: std::sync::atomic::AtomicBool::new(false), fd })
    }

    /// Owes the waiter an interrupt, and ends its wait if it is in one. From any thread,
    /// and from a signal handler (a store and a `write`).
    pub fn wake(&self) {
        // The flag first: a waiter that sees the eventfd readable finds the flag set.
        self.owed.store(true, std::sync::atomic::Ordering::Release);
        // An eventfd write only fails when the counter would overflow: already woken.
        let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
    }

    /// Whether an interrupt is owed (and no longer); a load when none is.
    pub fn take(&self) -> bool {
        let owed = self.owed.swap(false, std::sync::atomic::Ordering::Acquire);
        if owed {
            self.drain();
        }
        owed
    }

    /// Empties the eventfd, so that the next wait does not end at once for an interrupt
    /// already taken (its write may come after the flag was seen).
    pub fn drain(&self) {
        let _ = rustix::io::read(&self.fd, &mut [0u8; 8]);
    }
}

impl AsFd for WakeUp {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// What [`wait`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Readiness {
    pub readable: bool,
    pub writable: bool,
    /// The peer hung up or the socket failed: the next read or send says how.
    pub hung_up: bool,
    /// The wake fd was readable.
    pub woken: bool,
}

/// How [`wait`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    Ready(Readiness),
    /// A signal interrupted the wait: the caller decides whether to wait again.
    Interrupted,
    TimedOut,
}

/// Waits until `socket` is ready for what `want` says, or `wake` (an eventfd) is
/// readable, or `deadline` passes (`None`: for ever).
pub fn wait(
    socket: BorrowedFd<'_>,
    want: Want,
    wake: Option<BorrowedFd<'_>>,
    deadline: Option<Instant>,
) -> io::Result<Ready> {
    use rustix::event::{PollFd, PollFlags};
    let flags = match want {
        Want::Read => PollFlags::IN,
        Want::Write => PollFlags::OUT,
        Want::ReadOrWrite => PollFlags::IN | PollFlags::OUT,
    };
    let wake_fd = wake.unwrap_or(socket);
    let mut fds = [PollFd::new(&socket, flags), PollFd::new(&wake_fd, PollFlags::IN)];
    let n = if wake.is_some() { 2 } else { 1 };
    // A day at most per poll: the caller's loop waits again.
    let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()).min(Duration::from_secs(86_400)));
    let timespec = timeout.map(|t| rustix::event::Timespec::try_from(t).expect("a day fits"));
    match rustix::event::poll(&mut fds[..n], timespec.as_ref()) {
        Ok(0) if deadline.is_some_and(|d| Instant::now() >= d) => Ok(Ready::TimedOut),
        Ok(0) => Ok(Ready::Ready(Readiness::default())),
        Ok(_) => {
            let socket = fds[0].revents();
            Ok(Ready::Ready(Readiness {
                readable: socket.contains(PollFlags::IN),
                writable: socket.contains(PollFlags::OUT),
                hung_up: socket.intersects(PollFlags::HUP | PollFlags::ERR),
                woken: n == 2 && fds[1].revents().contains(PollFlags::IN),
            }))
        }
        Err(rustix::io::Errno::INTR) => Ok(Ready::Interrupted),
        Err(e) => Err(e.into()),
    }
}

/// Waits until `fd` is readable or `timeout` passes (`None`: for ever). Returns false on timeout.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let timespec = timeout.map(|t| {
        rustix::event::Timespec::try_from(t).unwrap_or(rustix::event::Timespec { tv_sec: i64::MAX, tv_nsec: 0 })
    });
    let mut fds = [rustix::event::PollFd::new(&fd, rustix::event::PollFlags::IN)];
    match rustix::event::poll(&mut fds, timespec.as_ref()) {
        Ok(n) => Ok(n > 0),
        Err(rustix::io::Errno::INTR) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MAX_RECORD_LEN;

    fn pair(name: &str) -> (Listener, Connection, Connection) {
        // The listener removes its socket file when dropped.
        let path = std::env::temp_dir().join(format!("qsock-transport-{}-{name}", std::process::id()));
        let listener = Listener::bind(&path, 0o600).unwrap();
        let sender = Connection::connect(listener.path()).unwrap();
        let receiver = listener.accept().unwrap().expect("a sender waits");
        (listener, sender, receiver)
    }

    fn memfd() -> OwnedFd {
        rustix::fs::memfd_create("qsock-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap()
    }

    /// Records queued together are read two at a time: a record that came with a length
    /// record that is not one is the next record, taken as a length record, with its fds.
    #[test]
    fn a_record_read_ahead_after_a_broken_length_record_is_the_next_one() {
        let (_listener, sender, receiver) = pair("read-ahead");
        let (record, fd) = (vec![7u8; 12], memfd());
        sender.send_raw_record(&[0, 0, 12], &[]).unwrap(); // 3 bytes: not a length record
        sender.send_message(&record, &[fd.as_fd()]).unwrap();
        sender.send_raw_record(&[], &[]).unwrap(); // empty: not a length record either
        sender.send_raw_record(&encode_length_record(12), &[fd.as_fd()]).unwrap(); // fds on a length record
        sender.send_raw_record(&record, &[fd.as_fd()]).unwrap();
        sender.send_message(&record, &[]).unwrap();
        let (mut reader, mut buf) = (MessageReader::default(), vec![0; MAX_RECORD_LEN + 1]);
        let mut read = || reader.read(&receiver, &mut buf);
        assert!(matches!(read(), Err(ReadError::Protocol(ProtocolError::LengthRecordSize { got: 3 }))));
        assert!(matches!(read(), Ok(MessageIn::Message { len: 12, ref fds }) if fds.len() == 1));
        assert!(matches!(read(), Err(ReadError::Protocol(ProtocolError::LengthRecordSize { got: 0 }))));
        let rejected = read();
        assert!(
            matches!(rejected, Err(ReadError::Protocol(ProtocolError::FdCountMismatch { announced: 0, received: 1 }))),
            "{rejected:?}"
        );
        assert!(matches!(read(), Ok(MessageIn::Message { len: 12, ref fds }) if fds.is_empty()));
        assert!(matches!(read(), Ok(MessageIn::WouldBlock)));
        assert_eq!(&buf[..12], &record[..]);
        drop(sender);
        assert!(matches!(reader.read(&receiver, &mut buf), Ok(MessageIn::Hangup)));
    }

    /// A length record whose message record has not come yet is paired with it later.
    #[test]
    fn a_message_record_that_comes_later_is_paired_with_its_length_record() {
        let (_listener, sender, receiver) = pair("later");
        let (mut reader, mut buf) = (MessageReader::default(), vec![0; MAX_RECORD_LEN + 1]);
        sender.send_raw_record(&encode_length_record(8), &[]).unwrap();
        assert!(matches!(reader.read(&receiver, &mut buf), Ok(MessageIn::WouldBlock)));
        sender.send_raw_record(&[1; 8], &[memfd().as_fd()]).unwrap();
        assert!(
            matches!(reader.read(&receiver, &mut buf), Ok(MessageIn::Message { len: 8, ref fds }) if fds.len() == 1)
        );
        assert_eq!(&buf[..8], &[1; 8]);
    }
}
