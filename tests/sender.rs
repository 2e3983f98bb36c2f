//! Our sender against our receiver, over a real socket with real memfds.

mod common;

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use common::*;
use gstqtisocket::protocol::*;
use gstqtisocket::{Error, Event, OutgoingBlock, OutgoingBuffer, Receiver, Sender, SenderEvent};

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

fn frame(size: u64) -> MemoryBlock {
    nv12_64x48(size)
}

fn video<'a>(fd: &'a OwnedFd, pooled: bool, pts: u64) -> OutgoingBuffer<'a> {
    OutgoingBuffer {
        blocks: vec![OutgoingBlock { fd: Some(fd.as_fd()), description: frame(4608) }],
        pts,
        dts: CLOCK_TIME_NONE,
        duration: 33_333_333,
        pooled,
        metas: Metas::default(),
    }
}

fn expect_buffer(receiver: &mut Receiver) -> gstqtisocket::ReceivedBuffer {
    match recv_after_connect(receiver, WAIT).unwrap() {
        Event::Buffer(b) => b,
        other => panic!("expected a buffer, got {other:?}"),
    }
}

fn expect_return(sender: &mut Sender) -> Vec<i32> {
    match sender.next_event(WAIT).unwrap() {
        Some(SenderEvent::Returned(ids)) => ids,
        other => panic!("expected a return, got {other:?}"),
    }
}

fn pair(tag: &str) -> (TempDir, Receiver, Sender) {
    let dir = TempDir::new(tag);
    let receiver = Receiver::bind(dir.path("s")).unwrap();
    let sender = Sender::connect(dir.path("s")).unwrap();
    (dir, receiver, sender)
}

#[test]
fn pooled_fds_cross_once_and_come_back_as_returns() {
    let (_dir, mut receiver, mut sender) = pair("pool");
    let pool: Vec<OwnedFd> = (0..4).map(|i| memfd(4608, i)).collect();
    for round in 0..3u64 {
        for (i, fd) in pool.iter().enumerate() {
            sender.send(&video(fd, true, round * 4 + i as u64)).unwrap();
            let buffer = expect_buffer(&mut receiver);
            assert_eq!(buffer.message().buf_ids(), [fd.as_raw_fd()]);
            assert_eq!(first8(buffer.fd(0).unwrap()), i as u64, "the receiver maps the pool buffer it was sent");
            assert_eq!(buffer.message().info.pts, round * 4 + i as u64);
            assert!(sender.is_in_flight(fd.as_raw_fd()));
            drop(buffer);
            assert_eq!(expect_return(&mut sender), [fd.as_raw_fd()]);
            assert!(!sender.is_in_flight(fd.as_raw_fd()));
        }
    }
    assert_eq!(sender.counts(), (12, 4), "12 buffers, and each pool fd sent once");
    assert_eq!(receiver.stats().fds_received, 4);
}

#[test]
fn an_fd_number_reused_for_another_object_is_sent_again() {
    let (_dir, mut receiver, mut sender) = pair("reuse");
    let mut pooled = memfd(4608, 100);
    let number = pooled.as_raw_fd();
    sender.send(&video(&pooled, true, 0)).unwrap();
    drop(expect_buffer(&mut receiver));
    expect_return(&mut sender);
    // A new pool whose buffer got the same fd number: another object behind `number`.
    rustix::io::dup2(memfd(4608, 200), &mut pooled).unwrap();
    assert_eq!(pooled.as_raw_fd(), number);
    sender.send(&video(&pooled, true, 1)).unwrap();
    let buffer = expect_buffer(&mut receiver);
    assert_eq!(buffer.message().buf_ids(), [number]);
    assert_eq!(first8(buffer.fd(0).unwrap()), 200, "the receiver must map the new object, not its cached one");
    assert_eq!(sender.counts(), (2, 2), "the fd crossed again");
}

#[test]
fn every_meta_and_kind_survives_the_trip() {
    let (_dir, mut receiver, mut sender) = pair("metas");
    let c = |s: &str| CString::new(s).unwrap();
    let metas = Metas {
        protection: vec![ProtectionMeta { structure: c("application/x-cenc, iv=(string)abc;"), size: 35, maxsize: 35 }],
        roi: vec![RoiMeta {
            label: c("person"),
            id: 3,
            parent_id: -1,
            x: 10,
            y: 20,
            w: 30,
            h: 40,
            det_meta: Some(c("ObjectDetection, confidence=(double)87.5;")),
            xtraparams: None,
        }],
        class: vec![ClassMeta {
            id: 1,
            parent_id: 3,
            labels: vec![ClassLabel {
                name: c("cat"),
                confidence: 0.75,
                color: 0xff0000ff,
                xtraparams: Some(c("x, y=(int)1;")),
            }],
        }],
        landmarks: vec![LandmarksMeta {
            id: 2,
            parent_id: 3,
            confidence: 0.5,
            keypoints: vec![
                Keypoint { name: c("nose"), confidence: 0.9, color: 1, x: 5, y: 6 },
                Keypoint { name: c("eye"), confidence: 0.8, color: 2, x: 7, y: 8 },
            ],
            links: vec![Link { s_kp_idx: 0, d_kp_idx: 1 }],
            xtraparams: None,
        }],
    };
    let fd = memfd(4608, 7);
    let mut buffer = video(&fd, false, 5);
    buffer.metas = metas.clone();
    sender.send(&buffer).unwrap();
    let received = expect_buffer(&mut receiver);
    assert_eq!(received.message().metas, metas);
    drop(received);
    expect_return(&mut sender);

    let tensor_fd = memfd(48, 9);
    let tensor =
        TensorPayload { tensor_type: 2, n_dimensions: 4, dimensions: [1, 4, 4, 3, 0, 0, 0, 0], size: 48, maxsize: 48 };
    sender
        .send(&OutgoingBuffer {
            blocks: vec![OutgoingBlock { fd: Some(tensor_fd.as_fd()), description: MemoryBlock::Tensor(tensor) }],
            pts: 0,
            dts: 0,
            duration: 0,
            pooled: false,
            metas: Metas::default(),
        })
        .unwrap();
    let received = expect_buffer(&mut receiver);
    assert_eq!(received.message().blocks, [MemoryBlock::Tensor(tensor)]);
    assert_eq!(first8(received.fd(0).unwrap()), 9);
    drop(received);
    expect_return(&mut sender);

    let text = TextPayload { contents: b"hello".to_vec(), maxsize: 5 };
    sender
        .send(&OutgoingBuffer {
            blocks: vec![OutgoingBlock { fd: None, description: MemoryBlock::Text(text.clone()) }],
            pts: 1,
            dts: 1,
            duration: 1,
            pooled: false,
            metas: Metas::default(),
        })
        .unwrap();
    assert_eq!(expect_buffer(&mut receiver).message().blocks, [MemoryBlock::Text(text)]);
    assert_eq!(sender.in_flight(), 0, "text holds no memory of the sender's");
    sender.send_eos().unwrap();
    assert!(matches!(recv_after_connect(&mut receiver, WAIT).unwrap(), Event::Eos));
}

#[test]
fn the_sender_refuses_what_a_receiver_would_reject() {
    let (_dir, _receiver, mut sender) = pair("refuse");
    let small = memfd(1024, 0);
    let refused = |sender: &mut Sender, buffer: &OutgoingBuffer<'_>, why: &str| match sender.send(buffer) {
        Err(Error::InvalidBuffer(reason)) => assert!(reason.contains(why), "{reason}"),
        other => panic!("expected a refusal naming {why:?}, got {other:?}"),
    };
    refused(&mut sender, &video(&small, false, 0), "exceeds its fd's 1024 bytes");
    let mut no_fd = video(&small, false, 0);
    no_fd.blocks[0].fd = None;
    refused(&mut sender, &no_fd, "need an fd");
    let long_text = TextPayload { contents: vec![b'x'; 1025], maxsize: 1025 };
    let text = OutgoingBuffer {
        blocks: vec![OutgoingBlock { fd: None, description: MemoryBlock::Text(long_text) }],
        pts: 0,
        dts: 0,
        duration: 0,
        pooled: false,
        metas: Metas::default(),
    };
    refused(&mut sender, &text, "1024");
    assert_eq!(sender.counts(), (0, 0));
}

#[test]
fn disconnect_and_a_receiver_that_goes_away() {
    let (_dir, mut receiver, mut sender) = pair("disconnect");
    let fd = memfd(4608, 1);
    sender.send(&video(&fd, true, 0)).unwrap();
    let held = expect_buffer(&mut receiver);
    assert!(receiver.send_disconnect().unwrap());
    assert_eq!(sender.next_event(WAIT).unwrap(), Some(SenderEvent::Disconnect));
    assert_eq!(sender.next_event(Some(Duration::from_millis(20))).unwrap(), None, "nothing more yet");
    drop(receiver);
    drop(held); // its return still goes out after the receiver closed
    assert_eq!(expect_return(&mut sender), [fd.as_raw_fd()]);
    assert_eq!(sender.next_event(WAIT).unwrap(), Some(SenderEvent::ReceiverGone));
    assert_eq!(sender.in_flight(), 0);
}

/// The raw records our sender puts on the socket, read by a bare listener (no Receiver).
fn raw_records_of(send: impl FnOnce(&mut Sender)) -> Vec<(Vec<u8>, usize)> {
    use gstqtisocket::transport::{Listener, MessageIn, MessageReader};
    let dir = TempDir::new("raw");
    let listener = Listener::bind(&dir.path("s"), gstqtisocket::DEFAULT_SOCKET_MODE).unwrap();
    let mut sender = Sender::connect(dir.path("s")).unwrap();
    let connection = listener.accept().unwrap().expect("the sender is in the backlog");
    send(&mut sender);
    drop(sender);
    let (mut reader, mut buf, mut records) = (MessageReader::default(), vec![0; MAX_RECORD_LEN + 1], vec![]);
    while let MessageIn::Message { len, fds } = reader.read(&connection, &mut buf).unwrap() {
        records.push((buf[..len].to_vec(), fds.len()));
    }
    records
}

/// Our sender writes what the deployed one wrote: video-nopool.jsonl and text.jsonl,
/// byte for byte, but for the buf_id (an fd number, ours differs) and the uncleared
/// tail of the deployed sender's buf_id array.
#[test]
fn our_bytes_match_the_deployed_senders() {
    let captured = |name: &str| -> Vec<Vec<u8>> {
        std::fs::read_to_string(capture(name))
            .unwrap()
            .lines()
            .map(|l| {
                hex::decode(serde_json::from_str::<serde_json::Value>(l).unwrap()["record"].as_str().unwrap()).unwrap()
            })
            .collect()
    };
    let frames = captured("video-nopool.jsonl");
    let fds: Vec<OwnedFd> = (0..5).map(|i| memfd(4608, i)).collect();
    let ours = raw_records_of(|sender| {
        for (i, fd) in fds.iter().enumerate() {
            sender.send(&video(fd, false, i as u64 * 100_000_000 / 3)).unwrap();
        }
        sender.send_eos().unwrap();
    });
    assert_eq!(ours.len(), frames.len());
    // BUFFER_INFO.buf_id[] sits at bytes 12..52 of a record that starts with FD_COUNT.
    let buf_ids = 12..52;
    for (i, ((record, n_fds), theirs)) in ours.iter().zip(&frames).enumerate() {
        let mut expected = theirs.clone();
        if i < fds.len() {
            assert_eq!(*n_fds, 1);
            let mut ids = [-1i32; 10];
            ids[0] = fds[i].as_raw_fd();
            expected[buf_ids.clone()].copy_from_slice(&ids.map(i32::to_le_bytes).concat());
        }
        assert_eq!(hex::encode(record), hex::encode(&expected), "message {i}");
    }

    let text = captured("text.jsonl");
    let ours = raw_records_of(|sender| {
        for i in 0..4u64 {
            let contents = format!("frame {i}").into_bytes();
            let block = TextPayload { maxsize: contents.len() as u64, contents };
            sender
                .send(&OutgoingBuffer {
                    blocks: vec![OutgoingBlock { fd: None, description: MemoryBlock::Text(block) }],
                    pts: i * 100_000_000 / 3,
                    dts: CLOCK_TIME_NONE,
                    duration: 33_333_333,
                    pooled: false,
                    metas: Metas::default(),
                })
                .unwrap();
        }
        sender.send_eos().unwrap();
    });
    for (i, ((record, _), theirs)) in ours.iter().zip(&text).enumerate() {
        let mut expected = theirs.clone();
        if i < 4 {
            // Text's buf_id is -1; the deployed sender leaves zeros after it, we write -1s.
            expected[8..44].copy_from_slice(&[-1i32; 9].map(i32::to_le_bytes).concat());
        }
        assert_eq!(hex::encode(record), hex::encode(&expected), "text message {i}");
    }
}
