//! The Rust receiver against real sockets, real memfds and a sender in another process.

mod common;

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::time::Duration;

use common::*;
use gstqtisocket::protocol::{MemoryBlock, MemoryKind, ReceiverMessage, SenderMessage, MAX_RECORD_LEN};
use gstqtisocket::transport::{wait_readable, Connection, MessageIn, MessageReader};
use gstqtisocket::{Error, Event, Receiver};

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

/// What a capture's buffers hold, as the replay sender wrote it.
struct Seen {
    kinds: Vec<MemoryKind>,
    /// Per buffer: the index found in its first block's memory (None for text).
    indices: Vec<Option<u64>>,
    buf_ids: Vec<i32>,
    texts: Vec<Vec<u8>>,
    roi_labels: Vec<String>,
}

/// Plays `capture` from another process into a receiver and collects what arrives.
fn receive_capture(name: &str) -> Seen {
    let dir = TempDir::new("capture");
    let socket = dir.path("s");
    let mut receiver = Receiver::bind(&socket).unwrap();
    let child = spawn_replay(&socket, name, &[]);
    let mut seen = Seen { kinds: vec![], indices: vec![], buf_ids: vec![], texts: vec![], roi_labels: vec![] };
    loop {
        match recv_after_connect(&mut receiver, WAIT).unwrap() {
            Event::Buffer(buffer) => {
                let m = buffer.message();
                seen.kinds.push(m.kind());
                seen.buf_ids.push(m.buf_ids()[0]);
                seen.indices.push(buffer.fd(0).map(first8));
                if let MemoryBlock::Text(t) = &m.blocks[0] {
                    seen.texts.push(t.contents.clone());
                }
                seen.roi_labels.extend(m.metas.roi.iter().map(|r| r.label.to_str().unwrap().to_owned()));
            } // dropped here: the return goes to the sender
            Event::Eos => break,
            other => panic!("{name}: unexpected {other:?}"),
        }
    }
    let (ok, output) = finish_replay(child);
    assert!(ok, "{name}: the sender did not get every buffer back: {output}");
    assert!(matches!(recv_after_connect(&mut receiver, WAIT).unwrap(), Event::SenderGone));
    seen
}

#[test]
fn pooled_video_from_another_process_maps_the_senders_memory() {
    let seen = receive_capture("video-pool.jsonl");
    assert_eq!(seen.kinds, vec![MemoryKind::Video; 8]);
    assert_eq!(seen.buf_ids, [7, 8, 9, 11, 7, 8, 9, 11]);
    // Messages 4..8 carry no fd: the cached fd of the same pool buffer is mapped, and it
    // holds what the sender wrote when it first sent that buffer.
    assert_eq!(seen.indices, [0, 1, 2, 3, 0, 1, 2, 3].map(Some));
}

#[test]
fn unpooled_video_tensors_and_rois_arrive_whole() {
    let video = receive_capture("video-nopool.jsonl");
    assert_eq!(video.indices, (0..5).map(Some).collect::<Vec<_>>());
    let roi = receive_capture("video-roi.jsonl");
    assert_eq!(roi.roi_labels, ["person"; 3]);
    let tensor = receive_capture("tensor.jsonl");
    assert_eq!(tensor.kinds, vec![MemoryKind::Tensor; 4]);
    assert_eq!(tensor.indices, (0..4).map(Some).collect::<Vec<_>>());
    let pooled = receive_capture("tensor-pool.jsonl");
    assert_eq!(pooled.indices, [0, 1, 2, 3, 0, 1].map(Some));
}

#[test]
fn text_arrives_byte_exact() {
    let seen = receive_capture("text.jsonl");
    assert_eq!(seen.texts, (0..4).map(|i| format!("frame {i}").into_bytes()).collect::<Vec<_>>());
    assert_eq!(seen.indices, [None; 4]);
}

#[test]
fn a_sender_that_hangs_up_is_reported_and_the_next_one_is_served() {
    let dir = TempDir::new("hangup");
    let mut receiver = Receiver::bind(dir.path("s")).unwrap();
    let child = spawn_replay(&dir.path("s"), "video-pool.jsonl", &["--hangup-after", "2"]);
    let mut events = vec![];
    loop {
        match recv_after_connect(&mut receiver, WAIT).unwrap() {
            Event::Buffer(_) => events.push("buffer"),
            Event::SenderGone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(events, ["buffer", "buffer"]);
    assert!(finish_replay(child).0);
    assert_eq!(receiver.stats().fds_cached, 0, "the gone sender's cached fds must be closed");
    // A restarted sender picks up on the same socket.
    let child = spawn_replay(&dir.path("s"), "text.jsonl", &[]);
    let mut texts = 0;
    while let Event::Buffer(_) = recv_after_connect(&mut receiver, WAIT).unwrap() {
        texts += 1;
    }
    assert_eq!(texts, 4);
    assert!(finish_replay(child).0);
}

#[test]
fn timeout_interrupt_and_pollable_fd() {
    let dir = TempDir::new("timeout");
    let mut receiver = Receiver::bind(dir.path("s")).unwrap();
    assert!(matches!(recv_after_connect(&mut receiver, Some(Duration::from_millis(30))).unwrap(), Event::Timeout));
    let interrupter = receiver.interrupter();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        interrupter.interrupt();
    });
    assert!(matches!(recv_after_connect(&mut receiver, None).unwrap(), Event::Interrupted));
    t.join().unwrap();
    // The event-loop fd turns readable when a sender connects.
    assert!(!wait_readable(receiver.as_fd(), Some(Duration::ZERO)).unwrap());
    let _sender = Connection::connect(&dir.path("s")).unwrap();
    assert!(wait_readable(receiver.as_fd(), Some(Duration::from_secs(5))).unwrap());
}

/// Reads what the receiver says to this test sender: returns' buf_ids and disconnects.
fn read_from_receiver(sender: &Connection, reader: &mut MessageReader) -> Option<ReceiverMessage> {
    let mut buf = vec![0; MAX_RECORD_LEN + 1];
    loop {
        match reader.read(sender, &mut buf).unwrap() {
            MessageIn::Message { len, fds } => return Some(ReceiverMessage::parse(&buf[..len], fds.len()).unwrap()),
            MessageIn::Hangup => return None,
            MessageIn::WouldBlock => assert!(wait_readable(sender.as_fd(), WAIT).unwrap(), "nothing from the receiver"),
        }
    }
}

fn returned_id(message: Option<ReceiverMessage>) -> i32 {
    match message {
        Some(ReceiverMessage::Return(r)) => r.buf_ids()[0],
        other => panic!("expected a return, got {other:?}"),
    }
}

#[test]
fn closing_returns_queued_and_held_buffers_and_removes_the_socket() {
    let dir = TempDir::new("close");
    let socket = dir.path("s");
    let mut receiver = Receiver::bind(&socket).unwrap();
    let sender = Connection::connect(&socket).unwrap();
    let captured = load_records("video-nopool.jsonl");
    for (i, record) in captured.iter().take(3).enumerate() {
        sender.send_message(record, &[memfd(4608, i as u64).as_fd()]).unwrap();
    }
    let Event::Buffer(held) = recv_after_connect(&mut receiver, WAIT).unwrap() else { panic!("no buffer") };
    assert!(receiver.send_disconnect().unwrap());
    drop(receiver); // two messages still queued
    assert!(!socket.exists(), "socket file left behind");
    let mut reader = MessageReader::default();
    assert_eq!(read_from_receiver(&sender, &mut reader), Some(ReceiverMessage::Disconnect));
    assert_eq!(
        [returned_id(read_from_receiver(&sender, &mut reader)), returned_id(read_from_receiver(&sender, &mut reader))],
        [7, 8]
    );
    // The held buffer still works, and its return still goes out, from another thread.
    assert_eq!(first8(held.fd(0).unwrap()), 0);
    std::thread::spawn(move || drop(held)).join().unwrap();
    assert_eq!(returned_id(read_from_receiver(&sender, &mut reader)), 6);
    assert!(sender.send_message(&captured[3], &[]).is_err(), "a closed receiver must not accept more");
}

/// The records of a capture, in order.
pub fn load_records(name: &str) -> Vec<Vec<u8>> {
    std::fs::read_to_string(capture(name))
        .unwrap()
        .lines()
        .filter_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            v["record"].as_str().map(|r| hex::decode(r).unwrap())
        })
        .collect()
}

#[test]
fn socket_path_safety() {
    let dir = TempDir::new("paths");
    let refused = |path: &std::path::Path, why: &str| match Receiver::bind(path) {
        Err(Error::SocketPath { reason, .. }) => assert!(reason.contains(why), "{reason}"),
        Err(other) => panic!("{}: {other}", path.display()),
        Ok(_) => panic!("{} accepted", path.display()),
    };
    let file = dir.path("file");
    std::fs::write(&file, b"precious").unwrap();
    refused(&file, "regular file");
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");
    refused(&dir.0, "directory");
    let link = dir.path("link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    refused(&link, "symbolic link");
    assert_eq!(std::fs::read_link(&link).unwrap(), file, "the symlink was touched");
    refused(&dir.path(&"x".repeat(120)), "at most 107");
    // A stale socket left by a receiver that died is replaced.
    let stale = dir.path("stale");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let receiver = bind_stale(&stale);
    assert!(receiver.path().exists());
    // A directory that does not exist is named in the error.
    let message = Receiver::bind(dir.path("missing/s")).err().unwrap().to_string();
    assert!(message.contains("missing/s"), "{message}");
}

#[test]
fn each_pooled_buffer_keeps_its_own_object_across_reuse() {
    let dir = TempDir::new("shared");
    let mut receiver = Receiver::bind(dir.path("s")).unwrap();
    let child = spawn_replay(&dir.path("s"), "video-pool.jsonl", &[]);
    let mut by_buf_id: HashMap<i32, usize> = HashMap::new();
    while let Event::Buffer(b) = recv_after_connect(&mut receiver, WAIT).unwrap() {
        let ptr = std::sync::Arc::as_ptr(b.shared_fd(0).unwrap()) as usize;
        assert_eq!(*by_buf_id.entry(b.message().buf_ids()[0]).or_insert(ptr), ptr, "a pooled buffer must reuse its fd");
    }
    assert_eq!(by_buf_id.len(), 4);
    assert!(finish_replay(child).0);
    // Parsing what the sender sent here must agree with the parser: EOS came last.
    assert!(matches!(SenderMessage::parse(&[0; 4], 0), Ok(SenderMessage::Eos)));
}

#[test]
fn a_socket_file_that_cannot_be_made_again_is_an_error_naming_it() {
    let dir = TempDir::new("rebind-fails");
    let sub = dir.path("sub");
    std::fs::create_dir(&sub).unwrap();
    let socket = sub.join("s");
    let mut receiver = Receiver::bind(&socket).unwrap();
    // Removed (as the deployed sender does), and its directory too: nowhere to bind again.
    std::fs::remove_file(&socket).unwrap();
    std::fs::remove_dir(&sub).unwrap();
    let error = receiver.recv(Some(Duration::from_secs(5))).unwrap_err().to_string();
    assert!(error.contains(&*socket.to_string_lossy()) && error.contains("binding it again failed"), "{error}");
    assert_eq!(receiver.stats().socket_rebinds, 0);
}
