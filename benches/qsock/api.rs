//! API level: messages/s and round trip of our Rust sender/receiver (two processes)
//! against the floor: the same two records each way over bare sendmsg/recvmsg.
//!
//! A message is what the protocol carries for one pooled-less NV12 frame: a 4-byte
//! length record, then the 168-byte message record with one memfd attached; its answer
//! a length record and the 52-byte return. `in_flight` messages are kept outstanding;
//! the round trip of each is from just before its send to its return's arrival.

use std::collections::VecDeque;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use gstqtisocket::protocol::{
    encode_length_record, BufferInfo, DataMessage, FramePayload, MemoryBlock, Metas, ReceiverMessage, ReturnMessage,
    SenderMessage, CLOCK_TIME_NONE, MAX_MEMORY_BLOCKS,
};
use gstqtisocket::{Event, OutgoingBlock, OutgoingBuffer, Receiver, Sender, SenderEvent};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags, SocketAddrUnix, SocketType,
};
use serde::{Deserialize, Serialize};

use crate::measure::{now_ns, percentiles_us};

const FRAME_BYTES: u64 = 64 * 48 * 3 / 2;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiResult {
    pub who: String,
    pub in_flight: usize,
    pub messages: u64,
    pub per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

pub fn frame() -> FramePayload {
    FramePayload {
        width: 64,
        height: 48,
        format: 23,
        n_planes: 2,
        offsets: [0, 64 * 48, 0, 0],
        strides: [64, 64, 0, 0],
        flags: 0,
        size: FRAME_BYTES,
        maxsize: FRAME_BYTES,
    }
}

pub fn memfd() -> OwnedFd {
    let file = memfd::MemfdOptions::default().create("qsock-bench").unwrap().into_file();
    file.set_len(FRAME_BYTES).unwrap();
    file.into()
}

/// The record the floor sends: the same bytes our sender sends for one unpooled frame.
fn floor_record(buf_id: i32) -> Vec<u8> {
    let mut buf_ids = [-1; MAX_MEMORY_BLOCKS];
    buf_ids[0] = buf_id;
    let info = BufferInfo { buf_ids, pts: 0, dts: CLOCK_TIME_NONE, duration: 0, use_buffer_pool: false };
    let blocks = vec![MemoryBlock::Frame(frame())];
    SenderMessage::Data(DataMessage { n_fds: Some(1), info, blocks, metas: Metas::default() }).encode()
}

// ---------------------------------------------------------------------------------------
// The floor: blocking sockets, one sendmsg/recvmsg per record, nothing else.

fn send_record(socket: BorrowedFd<'_>, record: &[u8], fd: Option<BorrowedFd<'_>>) {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = fd.map(|fd| [fd]);
    if let Some(fds) = &fds {
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    }
    let sent = rustix::net::sendmsg(socket, &[IoSlice::new(record)], &mut control, SendFlags::NOSIGNAL).unwrap();
    assert_eq!(sent, record.len());
}

/// One record; its fds are closed at once. 0 = the peer hung up.
fn recv_record(socket: BorrowedFd<'_>, buf: &mut [u8]) -> usize {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(socket, &mut [IoSliceMut::new(buf)], &mut control, RecvFlags::CMSG_CLOEXEC).unwrap();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            drop(fds.collect::<Vec<OwnedFd>>());
        }
    }
    msg.bytes
}

/// The floor's receiver (a child process): read both records, close the fd, answer
/// with both records of a return.
pub fn floor_receiver(path: &Path) {
    let listener = rustix::net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None).unwrap();
    rustix::net::bind(&listener, &SocketAddrUnix::new(path).unwrap()).unwrap();
    rustix::net::listen(&listener, 1).unwrap();
    let connection = rustix::net::accept(&listener).unwrap();
    let answer = ReceiverMessage::Return(ReturnMessage::new(&[3]).unwrap()).encode();
    let answer_length = encode_length_record(answer.len());
    let mut buf = [0u8; 1024];
    loop {
        if recv_record(connection.as_fd(), &mut buf) == 0 || recv_record(connection.as_fd(), &mut buf) == 0 {
            return;
        }
        send_record(connection.as_fd(), &answer_length, None);
        send_record(connection.as_fd(), &answer, None);
    }
}

fn connect_retrying(path: &Path) -> OwnedFd {
    let started = Instant::now();
    loop {
        let socket = rustix::net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None).unwrap();
        match rustix::net::connect(&socket, &SocketAddrUnix::new(path).unwrap()) {
            Ok(()) => return socket,
            Err(e) if started.elapsed() > Duration::from_secs(10) => panic!("connecting to {}: {e}", path.display()),
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// Keeps `in_flight` outstanding for `duration`; returns (messages, round trips in ns).
fn windowed(
    in_flight: usize,
    duration: Duration,
    mut send: impl FnMut(),
    mut wait_return: impl FnMut(),
) -> (u64, Vec<u64>) {
    let mut sent_at = VecDeque::with_capacity(in_flight);
    let mut rtts = Vec::with_capacity(1 << 20);
    let started = Instant::now();
    for _ in 0..in_flight {
        sent_at.push_back(now_ns());
        send();
    }
    while started.elapsed() < duration {
        wait_return();
        rtts.push(now_ns() - sent_at.pop_front().unwrap());
        sent_at.push_back(now_ns());
        send();
    }
    while sent_at.pop_front().is_some() {
        wait_return();
    }
    (rtts.len() as u64, rtts)
}

fn result(who: &str, in_flight: usize, messages: u64, elapsed: Duration, rtts: &mut [u64]) -> ApiResult {
    let (p50_us, p99_us) = percentiles_us(rtts);
    ApiResult {
        who: who.into(),
        in_flight,
        messages,
        per_second: messages as f64 / elapsed.as_secs_f64(),
        p50_us,
        p99_us,
    }
}

/// The floor's sender, here; the receiver is `child`, already started.
pub fn floor_sender(path: &Path, in_flight: usize, duration: Duration) -> ApiResult {
    let socket = connect_retrying(path);
    let object = memfd();
    let record = floor_record(3);
    let length = encode_length_record(record.len());
    let mut buf = [0u8; 1024];
    let started = Instant::now();
    let (messages, mut rtts) = windowed(
        in_flight,
        duration,
        || {
            send_record(socket.as_fd(), &length, None);
            send_record(socket.as_fd(), &record, Some(object.as_fd()));
        },
        || {
            recv_record(socket.as_fd(), &mut buf);
            recv_record(socket.as_fd(), &mut buf);
        },
    );
    result("floor (bare sendmsg/recvmsg)", in_flight, messages, started.elapsed(), &mut rtts)
}

// ---------------------------------------------------------------------------------------
// Ours: the crate's Sender and Receiver.

/// Our receiver (a child process): every buffer dropped at once, which sends its return.
pub fn rust_receiver(path: &Path) {
    let mut receiver = Receiver::bind(path).unwrap();
    loop {
        match receiver.recv(None).unwrap() {
            Event::Buffer(buffer) => drop(buffer),
            Event::SenderGone | Event::Eos => return,
            _ => {}
        }
    }
}

pub fn rust_sender(path: &Path, in_flight: usize, duration: Duration, pooled: bool) -> ApiResult {
    let mut sender = Sender::connect_retrying(path, Duration::from_secs(10)).unwrap();
    // Pooled: one object per buffer in flight, as a pool has, sent once each.
    let objects: Vec<OwnedFd> = (0..if pooled { in_flight } else { 1 }).map(|_| memfd()).collect();
    let mut next = 0;
    let sender = std::cell::RefCell::new(&mut sender);
    let started = Instant::now();
    let (messages, mut rtts) = windowed(
        in_flight,
        duration,
        || {
            let object = &objects[next % objects.len()];
            next += 1;
            let buffer = OutgoingBuffer {
                blocks: vec![OutgoingBlock { fd: Some(object.as_fd()), description: MemoryBlock::Frame(frame()) }],
                pts: 0,
                dts: CLOCK_TIME_NONE,
                duration: 0,
                pooled,
                metas: Metas::default(),
            };
            sender.borrow_mut().send(&buffer).unwrap();
        },
        || loop {
            match sender.borrow_mut().next_event(None).unwrap() {
                Some(SenderEvent::Returned(_)) => return,
                Some(other) => panic!("{other:?}"),
                None => {}
            }
        },
    );
    let who = if pooled { "ours, Rust API (pooled: fd sent once)" } else { "ours, Rust API" };
    result(who, in_flight, messages, started.elapsed(), &mut rtts)
}
