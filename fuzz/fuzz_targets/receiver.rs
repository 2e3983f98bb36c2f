//! A real `Receiver` on a real socket, fed arbitrary records with arbitrary memfds
//! attached by a peer in this process. After every operation everything the receiver
//! delivered is mapped and read to its last byte (a size it let through past the end of
//! its fd would SIGBUS here); after every input, once the peer is gone and every buffer
//! dropped, the process holds exactly the fds it held before.
#![no_main]

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use arbitrary::Arbitrary;
use gstqtisocket::protocol::encode_length_record;
use gstqtisocket::transport::Connection;
use gstqtisocket::{Event, Receiver};
use libfuzzer_sys::fuzz_target;

/// Records of the deployed sender (tests/data), for mutations to start from.
const SEEDS: &[&str] = &[
    include_str!("../../tests/data/video-pool.jsonl"),
    include_str!("../../tests/data/video-roi.jsonl"),
    include_str!("../../tests/data/tensor.jsonl"),
    include_str!("../../tests/data/text.jsonl"),
];

fn seed_records() -> Vec<Vec<u8>> {
    SEEDS
        .iter()
        .flat_map(|file| file.lines())
        .filter_map(|line| {
            let hex = line.split("\"record\": \"").nth(1)?.split('"').next()?;
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok()).collect()
        })
        .collect()
}

#[derive(Debug, Arbitrary)]
enum Op {
    /// One record as is (no length record), with memfds of these sizes attached.
    Raw { record: Vec<u8>, fds: Vec<u16> },
    /// A length record (maybe lying) and a record.
    Message { length_delta: i8, record: Vec<u8>, fds: Vec<u16> },
    /// A deployed sender's record with bytes overwritten, framed right.
    Mutated { seed: u8, edits: Vec<(u16, u8)>, fds: Vec<u16> },
    /// Hang up; the next operation connects again.
    Reconnect,
}

struct World {
    receiver: Receiver,
    path: PathBuf,
    seeds: Vec<Vec<u8>>,
}

static WORLD: Mutex<Option<World>> = Mutex::new(None);

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count() - 1
}

fn memfds(sizes: &[u16]) -> Vec<OwnedFd> {
    sizes
        .iter()
        .take(12)
        .map(|&size| {
            let mut file = memfd::MemfdOptions::default().create("fuzz").unwrap().into_file();
            file.set_len(size as u64).unwrap();
            let _ = file.write_all(&[0xa5; 8][..(size as usize).min(8)]);
            file.into()
        })
        .collect()
}

/// Maps every block of every delivered buffer to its maxsize and reads its last byte.
fn drain(receiver: &mut Receiver) -> bool {
    let mut gone = false;
    for _ in 0..64 {
        match receiver.recv(Some(Duration::ZERO)) {
            Ok(Event::Buffer(buffer)) => {
                for (i, block) in buffer.message().blocks.iter().enumerate() {
                    let Some(fd) = buffer.fd(i) else { continue };
                    touch(fd, block.maxsize());
                }
            }
            Ok(Event::SenderGone) => gone = true,
            Ok(Event::Timeout) => return gone,
            Ok(_) | Err(_) => {}
        }
    }
    gone
}

fn touch(fd: BorrowedFd<'_>, len: u64) {
    if len == 0 {
        return;
    }
    let len = len as usize;
    // SAFETY: a fresh shared read-only mapping of the received object, unmapped below;
    // the receiver promised `len` bytes exist (that is what this checks: SIGBUS if not).
    unsafe {
        let map = rustix::mm::mmap(std::ptr::null_mut(), len, rustix::mm::ProtFlags::READ, rustix::mm::MapFlags::SHARED, fd, 0)
            .expect("a block the receiver let through maps");
        std::ptr::read_volatile((map as *const u8).add(len - 1));
        rustix::mm::munmap(map, len).unwrap();
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut guard = WORLD.lock().unwrap();
    let world = guard.get_or_insert_with(|| {
        let path = std::env::temp_dir().join(format!("qsock-fuzz-{}.sock", std::process::id()));
        World { receiver: Receiver::bind(&path).unwrap(), path, seeds: seed_records() }
    });
    let fds_before = open_fds();
    let mut connection: Option<Connection> = None;
    for op in ops.iter().take(32) {
        let peer = connection.get_or_insert_with(|| Connection::connect(&world.path).unwrap());
        let result = match op {
            Op::Raw { record, fds } => {
                let fds = memfds(fds);
                let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
                peer.send_raw_record(record, &borrowed)
            }
            Op::Message { length_delta, record, fds } => {
                let fds = memfds(fds);
                let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
                let len = (record.len() as i64 + *length_delta as i64).max(0) as usize;
                peer.send_raw_record(&encode_length_record(len), &[])
                    .and_then(|()| peer.send_raw_record(record, &borrowed))
            }
            Op::Mutated { seed, edits, fds } => {
                let mut record = world.seeds[*seed as usize % world.seeds.len()].clone();
                for &(at, value) in edits.iter().take(16) {
                    let at = at as usize % record.len();
                    record[at] = value;
                }
                let fds = memfds(fds);
                let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
                peer.send_message(&record, &borrowed)
            }
            Op::Reconnect => {
                connection = None;
                while !drain(&mut world.receiver) {}
                continue;
            }
        };
        // A send can fail when the receiver's queue is full of what it has not read.
        let _ = result;
        drain(&mut world.receiver);
    }
    if connection.take().is_some() {
        while !drain(&mut world.receiver) {}
    }
    assert_eq!(open_fds(), fds_before, "fds left behind after the input");
});
