//! The safe Rust sender: one connection to a receiver. Sends buffers as fds plus their
//! description, sends a pooled fd only when the receiver does not hold that object yet,
//! and reports returns and `DISCONNECT`. Reconnecting is the caller's policy: a new
//! `Sender` is a new connection, with nothing cached on the other side.
//!
//! Neither end waits for ever on the other: a send that finds the receiver's socket full
//! waits for room at most [`SEND_TIMEOUT`], and takes in what the receiver says meanwhile
//! (its returns would otherwise fill the other direction, and a receiver that waits to
//! return a buffer before it reads on would wait for us). What it took in waits, in
//! order, for [`Sender::next_event`].

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::protocol::{
    BufferInfo, DataMessage, MemoryBlock, Metas, ProtocolError, ReceiverMessage, SenderMessage, MAX_MEMORY_BLOCKS,
    MAX_RECORD_LEN, MAX_TEXT_LEN,
};
use crate::transport::{
    object_size, peer_not_reading, wait, Connection, MessageIn, MessageReader, Progress, Readiness, Ready, WakeUp,
    Want, SEND_TIMEOUT,
};
use crate::Error;

/// One memory block to send: its description and, unless it is text, its fd.
#[derive(Debug)]
pub struct OutgoingBlock<'a> {
    /// The memory (a DMA-BUF or memfd) that `description`'s size and maxsize describe,
    /// from offset 0. Its number is the block's `buf_id`, as the deployed sender does:
    /// keep it open until the block is returned.
    pub fd: Option<BorrowedFd<'a>>,
    pub description: MemoryBlock,
}

/// A buffer to send.
#[derive(Debug)]
pub struct OutgoingBuffer<'a> {
    /// 1..=10 blocks, all of one kind.
    pub blocks: Vec<OutgoingBlock<'a>>,
    /// Running time in ns; [`crate::protocol::CLOCK_TIME_NONE`] when unset.
    pub pts: u64,
    pub dts: u64,
    pub duration: u64,
    /// The memory comes from a pool and will be sent again: the receiver keeps its fds,
    /// so they cross the socket only the first time (or when the object changed).
    pub pooled: bool,
    pub metas: Metas,
}

/// What the receiver said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderEvent {
    /// The receiver is done with these buf_ids (our fd numbers): their memory may be reused.
    Returned(Vec<i32>),
    /// The receiver is pausing: stop sending, wait for the outstanding returns, close,
    /// and connect again later.
    Disconnect,
    /// The receiver closed the connection or died. Nothing outstanding will come back.
    ReceiverGone,
}

/// How [`Sender::wait_event`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Waited {
    Event(SenderEvent),
    Timeout,
    /// [`SenderInterrupter::interrupt`] was called.
    Interrupted,
}

/// Makes a [`Sender::wait_event`] in progress (or the next one that would wait) return
/// [`Waited::Interrupted`]. Cheap to clone; usable from any thread, and from a signal
/// handler (it is one `write` to an eventfd).
#[derive(Debug, Clone)]
pub struct SenderInterrupter(Arc<WakeUp>);

impl SenderInterrupter {
    pub fn interrupt(&self) {
        self.0.wake();
    }
}

/// Identity of the object behind an fd, to notice a buf_id (an fd number) reused for
/// another object.
type ObjectId = (u64, u64);

/// The object behind `fd`: its identity and size, with one `fstat` on the hot path (a
/// memfd's size is in it; a DMA-BUF's, reported 0, is found by seeking).
fn object(fd: BorrowedFd<'_>) -> std::io::Result<(ObjectId, u64)> {
    let stat = rustix::fs::fstat(fd)?;
    let id = (stat.st_dev, stat.st_ino);
    if stat.st_size > 0 {
        return Ok((id, stat.st_size as u64));
    }
    Ok((id, object_size(fd)?))
}

/// A connection to a receiver.
pub struct Sender {
    connection: Connection,
    reader: MessageReader,
    record: Box<[u8]>,
    /// Pooled objects the receiver holds now, by buf_id.
    cached_by_receiver: HashMap<i32, ObjectId>,
    /// buf_id -> how many of its sends await a return.
    in_flight: HashMap<i32, usize>,
    fds_sent: u64,
    buffers_sent: u64,
    /// What the receiver said while a send waited for room, oldest first, for
    /// `next_event`. At most one entry per message the receiver sent: returns (one per
    /// buffer sent), DISCONNECT, the hang-up, or the error that ended reading.
    taken_in: VecDeque<Result<SenderEvent, Error>>,
    /// Set by [`SenderInterrupter::interrupt`].
    wake: Arc<WakeUp>,
}

fn invalid(reason: String) -> Error {
    Error::InvalidBuffer(reason)
}

impl Sender {
    /// Connects to a receiver listening at `path` (one attempt).
    pub fn connect(path: impl AsRef<Path>) -> Result<Sender, Error> {
        let path = path.as_ref();
        let io = |source| Error::Io { what: format!("connecting to the receiver at {}", path.display()), source };
        let connection = Connection::connect(path).map_err(io)?;
        let wake =
            WakeUp::new().map_err(|source| Error::Io { what: "making the sender's wake-up eventfd".into(), source })?;
        Ok(Sender {
            connection,
            reader: MessageReader::default(),
            record: vec![0; MAX_RECORD_LEN + 1].into_boxed_slice(),
            cached_by_receiver: HashMap::new(),
            in_flight: HashMap::new(),
            fds_sent: 0,
            buffers_sent: 0,
            taken_in: VecDeque::new(),
            wake: Arc::new(wake),
        })
    }

    /// A handle that interrupts [`Sender::wait_event`] from another thread.
    pub fn interrupter(&self) -> SenderInterrupter {
        SenderInterrupter(self.wake.clone())
    }

    /// Connects, retrying every 10 ms (as the deployed sender does) until `timeout`.
    pub fn connect_retrying(path: impl AsRef<Path>, timeout: Duration) -> Result<Sender, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            match Sender::connect(path.as_ref()) {
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                result => return result,
            }
        }
    }

    /// Sends one buffer. Fails without sending anything when the buffer is not one a
    /// receiver would accept (the same rules a receiver checks), or when the socket fails.
    ///
    /// When the receiver's socket is full, waits for room at most [`SEND_TIMEOUT`] (then
    /// fails, and the connection is shut down), taking in what the receiver says
    /// meanwhile: [`Sender::next_event`] reports it.
    pub fn send(&mut self, buffer: &OutgoingBuffer<'_>) -> Result<(), Error> {
        let blocks = &buffer.blocks;
        if !(1..=MAX_MEMORY_BLOCKS).contains(&blocks.len()) {
            return Err(invalid(format!("a buffer needs 1..=10 memory blocks, got {}", blocks.len())));
        }
        let mut buf_ids = [-1; MAX_MEMORY_BLOCKS];
        let mut objects = Vec::with_capacity(blocks.len());
        for (i, block) in blocks.iter().enumerate() {
            let is_text = matches!(block.description, MemoryBlock::Text(_));
            if let MemoryBlock::Text(text) = &block.description {
                if text.contents.len() > MAX_TEXT_LEN {
                    let len = text.contents.len();
                    return Err(invalid(format!(
                        "block {i}: text of {len} bytes; a text block holds at most {MAX_TEXT_LEN}"
                    )));
                }
            }
            match (block.fd, is_text) {
                (Some(fd), false) => {
                    let (id, size) =
                        object(fd).map_err(|e| invalid(format!("block {i}: its fd is not memory: {e}")))?;
                    if block.description.maxsize() > size {
                        let maxsize = block.description.maxsize();
                        return Err(invalid(format!("block {i}: maxsize {maxsize} exceeds its fd's {size} bytes")));
                    }
                    buf_ids[i] = fd.as_raw_fd();
                    objects.push(Some((fd, id)));
                }
                (None, true) => objects.push(None),
                (Some(_), true) => return Err(invalid(format!("block {i}: text is carried inline, without an fd"))),
                (None, false) => return Err(invalid(format!("block {i}: video and tensor blocks need an fd"))),
            }
        }
        // Every block's fd goes when any must: the deployed receiver expects all or none.
        let must_send_fds = !buffer.pooled
            || objects.iter().flatten().any(|(fd, id)| self.cached_by_receiver.get(&fd.as_raw_fd()) != Some(id));
        let fds: Vec<BorrowedFd<'_>> =
            if must_send_fds { objects.iter().flatten().map(|(fd, _)| *fd).collect() } else { Vec::new() };
        let message = DataMessage {
            n_fds: (!fds.is_empty()).then_some(fds.len()),
            info: BufferInfo {
                buf_ids,
                pts: buffer.pts,
                dts: buffer.dts,
                duration: buffer.duration,
                use_buffer_pool: buffer.pooled,
            },
            blocks: blocks.iter().map(|b| b.description.clone()).collect(),
            metas: buffer.metas.clone(),
        };
        let record = SenderMessage::Data(message).encode();
        if record.len() > MAX_RECORD_LEN {
            let len = record.len();
            let max = MAX_RECORD_LEN;
            return Err(invalid(format!("the buffer's description takes {len} bytes; a message holds at most {max}")));
        }
        // The same rules a receiver applies: never send what ours would reject.
        SenderMessage::parse(&record, fds.len()).map_err(|e| invalid(e.to_string()))?;
        self.send_message(&record, &fds)
            .map_err(|source| Error::Io { what: "sending a buffer to the receiver".into(), source })?;
        self.buffers_sent += 1;
        self.fds_sent += fds.len() as u64;
        for (fd, id) in objects.iter().flatten() {
            *self.in_flight.entry(fd.as_raw_fd()).or_default() += 1;
            if buffer.pooled {
                self.cached_by_receiver.insert(fd.as_raw_fd(), *id);
            }
        }
        Ok(())
    }

    /// Sends EOS: the receiver ends its stream. Waits for room as [`Sender::send`] does.
    pub fn send_eos(&mut self) -> Result<(), Error> {
        self.send_message(&SenderMessage::Eos.encode(), &[])
            .map_err(|source| Error::Io { what: "sending EOS to the receiver".into(), source })
    }

    /// Sends a whole message; while the socket is full, takes in what the receiver says
    /// and waits for room, at most [`SEND_TIMEOUT`]. On failure the connection is shut down.
    fn send_message(&mut self, record: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
        let deadline = Instant::now() + SEND_TIMEOUT;
        let mut progress = self.connection.try_send_message(record, fds)?;
        loop {
            match progress {
                Progress::Sent => return Ok(()),
                Progress::LengthRecordOnly if self.connection.try_send_record(record, fds)? => return Ok(()),
                Progress::LengthRecordOnly => {}
                Progress::Nothing => {
                    progress = self.connection.try_send_message(record, fds)?;
                    if progress == Progress::Sent {
                        return Ok(());
                    }
                }
            }
            // No room: the receiver may be waiting for room for its returns to us.
            self.take_in();
            match wait(self.connection.as_fd(), Want::ReadOrWrite, None, Some(deadline)) {
                Ok(Ready::TimedOut) => {
                    self.connection.shutdown();
                    return Err(peer_not_reading());
                }
                Ok(_) => {}
                Err(e) => {
                    self.connection.shutdown();
                    return Err(e);
                }
            }
        }
    }

    /// Reads what the receiver said, without waiting, into `taken_in`.
    fn take_in(&mut self) {
        while !matches!(self.taken_in.back(), Some(Err(_) | Ok(SenderEvent::ReceiverGone))) {
            match self.read_event() {
                Ok(None) => return,
                Ok(Some(event)) => self.taken_in.push_back(Ok(event)),
                Err(e) => self.taken_in.push_back(Err(e)),
            }
        }
    }

    /// One message from the receiver, without waiting.
    fn read_event(&mut self) -> Result<Option<SenderEvent>, Error> {
        match self.reader.read(&self.connection, &mut self.record)? {
            MessageIn::Message { len, fds } => self.on_message(len, fds.len()).map(Some),
            MessageIn::Hangup => {
                self.in_flight.clear();
                self.cached_by_receiver.clear();
                Ok(Some(SenderEvent::ReceiverGone))
            }
            MessageIn::WouldBlock => Ok(None),
        }
    }

    /// What the receiver has said already, without waiting: `Ok(None)` when nothing is
    /// there (one `recvmmsg`; no interrupt is taken, as `next_event` would).
    pub fn try_next_event(&mut self) -> Result<Option<SenderEvent>, Error> {
        match self.taken_in.pop_front() {
            Some(taken_in) => taken_in.map(Some),
            None => self.read_event(),
        }
    }

    /// Waits up to `timeout` (`None`: for ever) for what the receiver says next.
    /// `Ok(None)` on timeout, and when interrupted ([`Sender::wait_event`] tells them apart).
    pub fn next_event(&mut self, timeout: Option<Duration>) -> Result<Option<SenderEvent>, Error> {
        Ok(match self.wait_event(timeout)? {
            Waited::Event(event) => Some(event),
            Waited::Timeout | Waited::Interrupted => None,
        })
    }

    /// Waits up to `timeout` (`None`: for ever) for what the receiver says next, or for
    /// [`SenderInterrupter::interrupt`]. What a send took in comes first. A signal does not
    /// end the wait: it goes on for the time left.
    pub fn wait_event(&mut self, timeout: Option<Duration>) -> Result<Waited, Error> {
        if let Some(taken_in) = self.taken_in.pop_front() {
            return taken_in.map(Waited::Event);
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(event) = self.read_event()? {
                return Ok(Waited::Event(event));
            }
            // Checked only before waiting, and a flag: no syscall unless interrupted.
            if self.wake.take() {
                return Ok(Waited::Interrupted);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(Waited::Timeout);
            }
            let ready = wait(self.connection.as_fd(), Want::Read, Some(self.wake.as_fd()), deadline)
                .map_err(|source| Error::Io { what: "waiting for the receiver".into(), source })?;
            if matches!(ready, Ready::Ready(Readiness { woken: true, .. })) {
                // Emptied before the flag is looked at again (the top of the loop).
                self.wake.drain();
            }
        }
    }

    /// Whether a send took in something that [`Sender::next_event`] has not reported yet.
    pub fn has_taken_in(&self) -> bool {
        !self.taken_in.is_empty()
    }

    fn on_message(&mut self, len: usize, n_fds: usize) -> Result<SenderEvent, Error> {
        match ReceiverMessage::parse(&self.record[..len], n_fds)? {
            ReceiverMessage::Disconnect => Ok(SenderEvent::Disconnect),
            ReceiverMessage::Return(ret) => {
                for &id in ret.buf_ids() {
                    match self.in_flight.get_mut(&id) {
                        Some(n) if *n > 1 => *n -= 1,
                        Some(_) => {
                            self.in_flight.remove(&id);
                        }
                        // The deployed receiver answers text with buf_id -1; anything else
                        // unknown is a receiver that lies.
                        None if id == -1 => {}
                        None => return Err(ProtocolError::UnknownReturn { buf_id: id }.into()),
                    }
                }
                Ok(SenderEvent::Returned(ret.buf_ids().to_vec()))
            }
        }
    }

    /// Memory blocks sent and not yet returned.
    pub fn in_flight(&self) -> usize {
        self.in_flight.values().sum()
    }

    /// Whether `buf_id` (an fd number of ours) is out with the receiver.
    pub fn is_in_flight(&self, buf_id: i32) -> bool {
        self.in_flight.contains_key(&buf_id)
    }

    /// (buffers sent, fds sent) on this connection.
    pub fn counts(&self) -> (u64, u64) {
        (self.buffers_sent, self.fds_sent)
    }

    /// The receiver's process, as the kernel saw it when it listened (`SO_PEERCRED`): who
    /// to name when a receiver turns this sender away.
    pub fn receiver_credentials(&self) -> Option<crate::PeerCredentials> {
        self.connection.peer_credentials().ok()
    }
}

impl AsFd for Sender {
    /// Polls readable when the receiver has said something ([`Sender::next_event`]).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.connection.as_fd()
    }
}

/// A new memfd of exactly `size` bytes to send (`name` shows in `/proc/PID/fd`), sealed
/// against shrinking and growing: a receiver can trust the size it was told for as long
/// as it holds the fd, whatever the sender does.
pub fn sealed_memfd(name: &str, size: usize) -> std::io::Result<std::fs::File> {
    use memfd::{FileSeal, MemfdOptions};
    let memfd =
        MemfdOptions::default().allow_sealing(true).close_on_exec(true).create(name).map_err(std::io::Error::other)?;
    memfd.as_file().set_len(size as u64)?;
    memfd.add_seals(&[FileSeal::SealShrink, FileSeal::SealGrow, FileSeal::SealSeal]).map_err(std::io::Error::other)?;
    Ok(memfd.into_file())
}
