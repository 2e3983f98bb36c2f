//! The `qtisocketsink` element: its bytes against the deployed sink's captures (a raw
//! socket reads them), ours → ours for every data kind and meta, zero copies from
//! `videotestsrc` and counted copies from system memory with the receiver in another
//! process (`gst-launch-1.0`), waiting for or dropping without a receiver, bad input.

mod common;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::process::Child;
use std::str::FromStr;
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use common::*;
use gst::prelude::*;
use gstqtisocket::protocol::{ReceiverMessage, ReturnMessage, SenderMessage, MAX_RECORD_LEN};
use gstqtisocket::transport::{wait_readable, Listener, MessageIn, MessageReader};

const WAIT: Duration = Duration::from_secs(10);
const FRAME_NS: u64 = 33_333_333;

fn stats(element: &gst::Element) -> gst::Structure {
    element.property::<gst::Structure>("stats")
}

/// Waits for EOS or an error on `pipeline`'s bus; returns the error's text, if any.
fn wait_end(pipeline: &gst::Pipeline) -> Option<String> {
    let bus = pipeline.bus().unwrap();
    let message = bus
        .timed_pop_filtered(gst::ClockTime::from_seconds(20), &[gst::MessageType::Eos, gst::MessageType::Error])
        .expect("neither EOS nor an error within 20 s");
    match message.view() {
        gst::MessageView::Error(e) => Some(format!("{} ({:?})", e.error(), e.debug())),
        _ => None,
    }
}

/// Asks `sink` what it offers upstream for `caps`: (pool, allocator).
fn offered(sink: &gst::Element, caps: &str) -> (Option<gst::BufferPool>, gst::Allocator) {
    let caps = gst::Caps::from_str(caps).unwrap();
    let mut query = gst::query::Allocation::new(Some(&caps), true);
    assert!(sink.static_pad("sink").unwrap().query(&mut query), "allocation query refused");
    let pool = query.allocation_pools().next().and_then(|(pool, ..)| pool.clone());
    let allocator = query.allocation_params().next().and_then(|(a, _)| a.clone()).expect("an allocator is offered");
    (pool, allocator)
}

fn timestamped(mut buffer: gst::Buffer, i: u64) -> gst::Buffer {
    let b = buffer.get_mut().unwrap();
    b.set_pts(gst::ClockTime::from_nseconds(i * 100_000_000 / 3));
    b.set_duration(gst::ClockTime::from_nseconds(FRAME_NS));
    buffer
}

fn write_index(buffer: &mut gst::Buffer, i: u64) {
    let mut map = buffer.get_mut().unwrap().map_writable().unwrap();
    map[..8].copy_from_slice(&i.to_le_bytes());
}

/// A buffer of `size` bytes of memfd memory from `allocator` (not pooled).
fn memfd_buffer(allocator: &gst::Allocator, size: usize, i: u64) -> gst::Buffer {
    let memory = allocator.alloc(size, None).unwrap();
    let mut buffer = gst::Buffer::new();
    buffer.get_mut().unwrap().append_memory(memory);
    write_index(&mut buffer, i);
    timestamped(buffer, i)
}

// ---------------------------------------------------------------------------------------
// Golden: the records our sink writes are the deployed sink's, byte for byte

/// One message as a raw receiver saw it.
struct RawMessage {
    record: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// Whether each `buf_id` of `data` is, in this process (the sink's), the fd of the
/// object that came with the message: buf_ids are the sender's fd numbers.
fn buf_ids_are_the_fds_sent(data: &gstqtisocket::protocol::DataMessage, fds: &[OwnedFd]) -> bool {
    data.buf_ids().iter().zip(fds).all(|(&buf_id, fd)| {
        // SAFETY: the sink is in this process and keeps the fd open until the return,
        // which is sent after this check; the borrow ends with it.
        let ours = unsafe { BorrowedFd::borrow_raw(buf_id) };
        same_object(ours, fd.as_fd())
    })
}

/// A receiver that is only a socket: accepts one sender, reads raw records, answers
/// every message with fds with a return at once, until EOS.
fn raw_receiver(socket: &Path) -> mpsc::Receiver<Vec<RawMessage>> {
    let listener = Listener::bind(socket, gstqtisocket::DEFAULT_SOCKET_MODE).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let connection = loop {
            if let Some(c) = listener.accept().unwrap() {
                break c;
            }
            wait_readable(listener.as_fd(), Some(WAIT)).unwrap();
        };
        let mut reader = MessageReader::default();
        let mut buf = vec![0u8; MAX_RECORD_LEN + 1];
        let mut messages = Vec::new();
        loop {
            match reader.read(&connection, &mut buf).unwrap() {
                MessageIn::Message { len, fds } => {
                    let record = buf[..len].to_vec();
                    let parsed = SenderMessage::parse(&record, fds.len()).unwrap();
                    if let SenderMessage::Data(data) = &parsed {
                        assert!(buf_ids_are_the_fds_sent(data, &fds), "buf_ids are not the fds sent");
                        let ids: Vec<i32> = data.buf_ids().iter().copied().filter(|&id| id >= 0).collect();
                        if let Some(ret) = ReturnMessage::new(&ids) {
                            connection.send_message(&ReceiverMessage::Return(ret).encode(), &[]).unwrap();
                        }
                    }
                    messages.push(RawMessage { record, fds });
                    if parsed == SenderMessage::Eos {
                        break;
                    }
                }
                MessageIn::WouldBlock => {
                    wait_readable(connection.as_fd(), Some(WAIT)).unwrap();
                }
                MessageIn::Hangup => break,
            }
        }
        tx.send(messages).unwrap();
        drop(listener);
    });
    rx
}

fn capture_records(name: &str) -> Vec<Vec<u8>> {
    std::fs::read_to_string(capture(name))
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            hex::decode(v["record"].as_str().unwrap()).unwrap()
        })
        .collect()
}

fn same_object(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> bool {
    let (a, b) = (rustix::fs::fstat(a).unwrap(), rustix::fs::fstat(b).unwrap());
    (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
}

const PAYLOAD_SIZES: [usize; 12] = [4, 4, 72, 88, 60, 1044, 44, 8, 1044, 588, 9876, 4140];

/// `record` with the bytes that carry no meaning zeroed: the `buf_id`s (our fd numbers;
/// the deployed sink's, with garbage past the used ones) and the tensor dimensions past
/// `n_dimensions` (garbage in the deployed sink's records).
fn meaningful(record: &[u8]) -> Vec<u8> {
    let mut out = record.to_vec();
    let mut at = 0;
    while at + 4 <= out.len() {
        let identity = u32::from_le_bytes(out[at..at + 4].try_into().unwrap()) as usize;
        match identity {
            2 => out[at + 4..at + 44].fill(0),
            4 => {
                let n = u32::from_le_bytes(out[at + 8..at + 12].try_into().unwrap()) as usize;
                out[at + 12 + 4 * n.min(8)..at + 44].fill(0);
            }
            _ => {}
        }
        at += PAYLOAD_SIZES[identity];
    }
    out
}

/// Compares our records with the capture's, byte for byte where the bytes mean
/// something (see [`meaningful`]; the buf_ids were checked as they arrived).
fn assert_matches_capture(ours: &[RawMessage], capture_name: &str) {
    let expected = capture_records(capture_name);
    assert_eq!(ours.len(), expected.len(), "{capture_name}: message count");
    for (i, (message, want)) in ours.iter().zip(&expected).enumerate() {
        assert_eq!(message.record.len(), want.len(), "{capture_name} message {i}: record length");
        let (got, want) = (meaningful(&message.record), meaningful(want));
        if let Some(at) = got.iter().zip(&want).position(|(a, b)| a != b) {
            panic!(
                "{capture_name} message {i} differs at byte {at}: ours {:02x?}, deployed {:02x?}",
                &got[at..(at + 16).min(got.len())],
                &want[at..(at + 16).min(want.len())]
            );
        }
    }
}

/// Runs `push` (which pushes buffers into `appsrc caps ! qtisocketsink`), then EOS, and
/// returns what a raw receiver read.
fn sink_records(tag: &str, caps: &str, push: impl FnOnce(&gst_app::AppSrc, &gst::Element)) -> Vec<RawMessage> {
    let dir = TempDir::new(tag);
    let socket = dir.path("s");
    let received = raw_receiver(&socket);
    let (pipeline, src, sink) = sender_pipeline(&socket, caps, "wait-for-receiver=true");
    push(&src, &sink);
    src.end_of_stream().unwrap();
    assert_eq!(wait_end(&pipeline), None);
    let messages = received.recv_timeout(WAIT).unwrap();
    pipeline.set_state(gst::State::Null).unwrap();
    messages
}

const NV12_64X48: &str = "video/x-raw,format=NV12,width=64,height=48,framerate=30/1";

#[test]
fn pooled_frames_match_the_deployed_sinks_bytes() {
    let messages = sink_records("sink-golden-pool", NV12_64X48, |src, sink| {
        let pool = offered(sink, NV12_64X48).0.expect("a pool is offered for video");
        let mut config = pool.config();
        config.set_params(Some(&gst::Caps::from_str(NV12_64X48).unwrap()), 4608, 4, 4);
        pool.set_config(config).unwrap();
        pool.set_active(true).unwrap();
        // As the capture's 4-buffer pool: 8 frames, the last 4 reuse the first 4's memory
        // (acquire waits until the receiver returned them).
        for i in 0..8 {
            let mut buffer = pool.acquire_buffer(None).unwrap();
            write_index(&mut buffer, i);
            src.push_buffer(timestamped(buffer, i)).unwrap();
        }
    });
    assert_matches_capture(&messages, "video-pool.jsonl");
    assert!(messages[..4].iter().all(|m| m.fds.len() == 1) && messages[4..].iter().all(|m| m.fds.is_empty()));
    assert_no_glib_warnings();
}

#[test]
fn unpooled_frames_with_regions_of_interest_match_the_deployed_sinks_bytes() {
    let messages = sink_records("sink-golden-nopool", NV12_64X48, |src, sink| {
        let allocator = offered(sink, NV12_64X48).1;
        for i in 0..5 {
            src.push_buffer(memfd_buffer(&allocator, 4608, i)).unwrap();
        }
    });
    assert_matches_capture(&messages, "video-nopool.jsonl");

    let messages = sink_records("sink-golden-roi", NV12_64X48, |src, sink| {
        let allocator = offered(sink, NV12_64X48).1;
        for i in 0..3 {
            let mut buffer = memfd_buffer(&allocator, 4608, i);
            let mut roi =
                gst_video::VideoRegionOfInterestMeta::add(buffer.get_mut().unwrap(), "person", (10, 20, 30, 40));
            // What the capture's source set: id = frame index, no parent.
            roi.set_id(i as i32);
            roi.set_parent_id(-1);
            roi.add_param(
                gst::Structure::from_str("ObjectDetection, confidence=(double)87.5, color=(uint)4278190335;").unwrap(),
            );
            src.push_buffer(buffer).unwrap();
        }
    });
    assert_matches_capture(&messages, "video-roi.jsonl");
    assert_no_glib_warnings();
}

#[test]
fn tensors_and_text_match_the_deployed_sinks_bytes() {
    let tensor_caps = "neural-network/tensors,type=UINT8,dimensions=<<1,4,4,3>>";
    let messages = sink_records("sink-golden-tensor", tensor_caps, |src, sink| {
        let allocator = offered(sink, tensor_caps).1;
        for i in 0..4 {
            src.push_buffer(memfd_buffer(&allocator, 48, i)).unwrap();
        }
    });
    assert_matches_capture(&messages, "tensor.jsonl");

    let messages = sink_records("sink-golden-text", "text/x-raw,format=utf8", |src, _| {
        for i in 0..4 {
            let buffer = gst::Buffer::from_slice(format!("frame {i}").into_bytes());
            src.push_buffer(timestamped(buffer, i)).unwrap();
        }
    });
    assert_matches_capture(&messages, "text.jsonl");
    assert_no_glib_warnings();
}

// ---------------------------------------------------------------------------------------
// Ours → ours, the receiver in another process (gst-launch-1.0)

fn finish(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "gst-launch-1.0 failed: {text}");
    assert!(!text.contains("CRITICAL") && !text.contains("WARNING"), "{text}");
    text
}

/// The frames a `filesink` wrote, `frame_size` bytes each.
fn frames(path: &Path, frame_size: usize) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(bytes.len() % frame_size, 0, "{} bytes is not whole frames", bytes.len());
    bytes.chunks(frame_size).map(<[u8]>::to_vec).collect()
}

const NV12_320X240: &str = "video/x-raw,format=NV12,width=320,height=240,framerate=30/1";

/// One frame of `videotestsrc pattern=smpte75` (a still pattern) as `caps`.
fn smpte_frame(caps: &str) -> Vec<u8> {
    init();
    let pipeline =
        gst::parse::launch(&format!("videotestsrc pattern=smpte75 num-buffers=1 ! {caps} ! appsink name=out"))
            .unwrap()
            .downcast::<gst::Pipeline>()
            .unwrap();
    let sink = pipeline.by_name("out").unwrap().downcast::<gst_app::AppSink>().unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let sample = sink.pull_sample().unwrap();
    let bytes = sample.buffer().unwrap().map_readable().unwrap().to_vec();
    pipeline.set_state(gst::State::Null).unwrap();
    bytes
}

#[test]
fn videotestsrc_frames_reach_a_receiver_process_without_a_copy() {
    init();
    let dir = TempDir::new("sink-zero-copy");
    let out = dir.path("frames.raw");
    let receiver = gst_launch_child(
        &dir,
        &format!(
            "qtisocketsrc socket=SOCKET ! {NV12_320X240} ! filesink buffer-mode=unbuffered location={}",
            path_str(&out)
        ),
    );
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc pattern=smpte75 num-buffers=60 ! {NV12_320X240} ! qtisocketsink name=sink socket={} \
         wait-for-receiver=true sync=false",
        path_str(&dir.path("s"))
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let sink = pipeline.by_name("sink").unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    assert_eq!(wait_end(&pipeline), None);
    let s = stats(&sink);
    pipeline.set_state(gst::State::Null).unwrap();
    finish(receiver);

    let frame_size = 320 * 240 * 3 / 2;
    assert_eq!(stat::<u64>(&s, "copies"), 0, "{s}");
    assert_eq!(stat::<u64>(&s, "bytes-copied"), 0, "{s}");
    assert_eq!(stat::<u64>(&s, "buffers-sent"), 60, "{s}");
    assert_eq!(stat::<u64>(&s, "bytes-described"), 60 * frame_size as u64, "{s}");
    assert!(stat::<u64>(&s, "fds-sent") <= 16, "pooled frames cross as fds once per pool buffer: {s}");
    assert_eq!(
        (stat::<u64>(&s, "returns"), stat::<u64>(&s, "in-flight")),
        (60, 0),
        "every frame came back by EOS: {s}"
    );
    let expected = smpte_frame(NV12_320X240);
    let received = frames(&out, frame_size);
    assert_eq!(received.len(), 60);
    let differing: Vec<(usize, Option<usize>)> = received
        .iter()
        .enumerate()
        .filter(|(_, f)| **f != expected)
        .map(|(i, f)| (i, f.iter().zip(&expected).position(|(a, b)| a != b)))
        .collect();
    assert!(differing.is_empty(), "frames (index, first differing byte) differ from videotestsrc's: {differing:?}");
    assert_no_glib_warnings();
}

#[test]
fn system_memory_frames_are_copied_once_into_memfds_and_counted() {
    let dir = TempDir::new("sink-copies");
    let out = dir.path("frames.raw");
    let receiver = gst_launch_child(
        &dir,
        &format!(
            "qtisocketsrc socket=SOCKET ! {NV12_64X48} ! filesink buffer-mode=unbuffered location={}",
            path_str(&out)
        ),
    );
    let (pipeline, src, sink) = sender_pipeline(&dir.path("s"), NV12_64X48, "wait-for-receiver=true");
    let frame = |i: u64| {
        let mut bytes: Vec<u8> = (0..4608).map(|b| (b % 251) as u8 ^ i as u8).collect();
        bytes[..8].copy_from_slice(&i.to_le_bytes());
        bytes
    };
    for i in 0..20 {
        src.push_buffer(timestamped(gst::Buffer::from_mut_slice(frame(i)), i)).unwrap();
    }
    src.end_of_stream().unwrap();
    assert_eq!(wait_end(&pipeline), None);
    let s = stats(&sink);
    pipeline.set_state(gst::State::Null).unwrap();
    finish(receiver);

    assert_eq!((stat::<u64>(&s, "copies"), stat::<u64>(&s, "bytes-copied")), (20, 20 * 4608), "{s}");
    assert_eq!(stat::<u64>(&s, "buffers-sent"), 20, "{s}");
    assert!(stat::<u64>(&s, "fds-sent") <= 16, "copies come from a pool: {s}");
    assert_eq!(stat::<u64>(&s, "in-flight"), 0, "{s}");
    let received = frames(&out, 4608);
    assert_eq!(received, (0..20).map(frame).collect::<Vec<_>>());
    assert_no_glib_warnings();
}

// ---------------------------------------------------------------------------------------
// Ours → ours in one process: every data kind and meta

/// `qtisocketsrc ! appsink` on `socket`, PLAYING.
fn receiver_pipeline(socket: &Path) -> (gst::Pipeline, gst_app::AppSink) {
    init();
    let pipeline =
        gst::parse::launch(&format!("qtisocketsrc socket={} ! appsink name=out sync=false", path_str(socket)))
            .unwrap()
            .downcast::<gst::Pipeline>()
            .unwrap();
    let sink = pipeline.by_name("out").unwrap().downcast::<gst_app::AppSink>().unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    (pipeline, sink)
}

fn pull(sink: &gst_app::AppSink) -> gst::Sample {
    sink.try_pull_sample(gst::ClockTime::from_seconds(10)).expect("no buffer within 10 s")
}

#[test]
fn video_metas_go_through_ours_to_ours() {
    let dir = TempDir::new("sink-metas");
    let socket = dir.path("s");
    let (receiver, out) = receiver_pipeline(&socket);
    let (pipeline, src, _) = sender_pipeline(&socket, NV12_64X48, "wait-for-receiver=true");
    for name in ["QtiSocketClassificationMeta", "QtiSocketLandmarksMeta"] {
        if !gst::meta::CustomMeta::is_registered(name) {
            gst::meta::CustomMeta::register(name, &[]);
        }
    }
    let detection = "ObjectDetection, confidence=(double)87.5, color=(uint)4278190335;";
    let extra = "Extra, tracker=(string)kcf;";
    let protection = "application/x-cenc, iv=(string)abc, kid=(string)k1;";
    let classification = "VideoClassification, id=(uint)3, parent-id=(int)1, labels=(structure)< \
        \"ClassLabel\\,\\ name\\=\\(string\\)cat\\,\\ confidence\\=\\(double\\)0.75\\,\\ color\\=\\(uint\\)255\\;\" >;";
    let mut buffer = gst::Buffer::from_mut_slice(vec![7u8; 4608]);
    {
        let b = buffer.get_mut().unwrap();
        let mut roi = gst_video::VideoRegionOfInterestMeta::add(b, "person", (10, 20, 30, 40));
        roi.set_id(5);
        roi.set_parent_id(2);
        roi.add_param(gst::Structure::from_str(detection).unwrap());
        roi.add_param(gst::Structure::from_str(extra).unwrap());
        gst::ProtectionMeta::add(b, gst::Structure::from_str(protection).unwrap());
        let mut class = gst::meta::CustomMeta::add(b, "QtiSocketClassificationMeta").unwrap();
        let s = gst::Structure::from_str(classification).unwrap();
        for (field, value) in s.iter() {
            class.mut_structure().set_value(field, value.clone());
        }
        class.mut_structure().set_name("VideoClassification");
    }
    src.push_buffer(timestamped(buffer, 0)).unwrap();
    let sample = pull(&out);
    let received = sample.buffer().unwrap();
    assert_eq!(received.map_readable().unwrap().as_slice(), &[7u8; 4608][..]);
    let roi = received.meta::<gst_video::VideoRegionOfInterestMeta>().expect("ROI meta");
    assert_eq!((roi.roi_type(), roi.rect(), roi.id(), roi.parent_id()), ("person", (10, 20, 30, 40), 5, 2));
    let params: Vec<String> = roi.params().map(|p| p.to_string()).collect();
    assert_eq!(
        params,
        [
            gst::Structure::from_str(detection).unwrap().to_string(),
            gst::Structure::from_str(extra).unwrap().to_string()
        ]
    );
    let got_protection = received.meta::<gst::ProtectionMeta>().expect("protection meta");
    assert_eq!(got_protection.info().to_string(), gst::Structure::from_str(protection).unwrap().to_string());
    let class = received
        .iter_meta::<gst::Meta>()
        .find_map(|m| m.try_as_custom_meta().map(|c| c.structure().to_owned()))
        .expect("classification custom meta");
    assert_eq!(class.to_string(), gst::Structure::from_str(classification).unwrap().to_string());
    drop(sample);
    src.end_of_stream().unwrap();
    assert_eq!(wait_end(&pipeline), None);
    pipeline.set_state(gst::State::Null).unwrap();
    receiver.set_state(gst::State::Null).unwrap();
    assert_no_glib_warnings();
}

#[test]
fn tensors_and_text_go_through_ours_to_ours() {
    let dir = TempDir::new("sink-tensors");
    let socket = dir.path("s");
    let (receiver, out) = receiver_pipeline(&socket);
    let caps = "neural-network/tensors,type=UINT8,dimensions=<<1,4,4,3>,<1,2,2>>";
    let (pipeline, src, sink) = sender_pipeline(&socket, caps, "wait-for-receiver=true");
    let allocator = offered(&sink, caps).1;
    // Tensor 0 in a memfd from the offered allocator (sent as is), tensor 1 in system
    // memory (copied).
    let mut buffer = memfd_buffer(&allocator, 48, 11);
    buffer.get_mut().unwrap().append_memory(gst::Memory::from_slice([1u8, 2, 3, 4]));
    src.push_buffer(buffer).unwrap();
    let sample = pull(&out);
    let s = sample.caps().unwrap().structure(0).unwrap().to_owned();
    assert_eq!((s.name().as_str(), s.get::<&str>("type").unwrap()), ("neural-network/tensors", "UINT8"));
    let dimensions: Vec<Vec<i32>> = s
        .get::<gst::Array>("dimensions")
        .unwrap()
        .iter()
        .map(|inner| inner.get::<gst::Array>().unwrap().iter().map(|d| d.get::<i32>().unwrap()).collect())
        .collect();
    assert_eq!(dimensions, [vec![1, 4, 4, 3], vec![1, 2, 2]]);
    let received = sample.buffer().unwrap();
    assert_eq!(received.n_memory(), 2);
    assert_eq!(u64::from_le_bytes(received.peek_memory(0).map_readable().unwrap()[..8].try_into().unwrap()), 11);
    assert_eq!(received.peek_memory(1).map_readable().unwrap().as_slice(), [1, 2, 3, 4]);
    drop(sample);
    assert_eq!(stat::<u64>(&sink, "copies"), 1);
    src.end_of_stream().unwrap();
    assert_eq!(wait_end(&pipeline), None);
    pipeline.set_state(gst::State::Null).unwrap();
    receiver.set_state(gst::State::Null).unwrap();

    let dir = TempDir::new("sink-text");
    let socket = dir.path("s");
    let (receiver, out) = receiver_pipeline(&socket);
    let (pipeline, src, _) = sender_pipeline(&socket, "text/x-raw,format=utf8", "wait-for-receiver=true");
    for word in ["hello", "world"] {
        src.push_buffer(gst::Buffer::from_slice(word.as_bytes().to_vec())).unwrap();
        let sample = pull(&out);
        assert_eq!(sample.buffer().unwrap().map_readable().unwrap().as_slice(), word.as_bytes());
    }
    src.end_of_stream().unwrap();
    assert_eq!(wait_end(&pipeline), None);
    pipeline.set_state(gst::State::Null).unwrap();
    receiver.set_state(gst::State::Null).unwrap();
    assert_no_glib_warnings();
}

// ---------------------------------------------------------------------------------------
// Without a receiver; bad input

#[test]
fn without_a_receiver_buffers_are_dropped_or_wait_as_configured() {
    let dir = TempDir::new("sink-wait");
    let socket = dir.path("s");
    let (pipeline, src, sink) = sender_pipeline(&socket, "text/x-raw,format=utf8", "");
    for i in 0..5 {
        src.push_buffer(gst::Buffer::from_slice(format!("early {i}").into_bytes())).unwrap();
    }
    wait_until("5 buffers were dropped", || stat::<u64>(&sink, "dropped") == 5);
    assert_eq!(stat::<u64>(&sink, "buffers-sent"), 0);
    pipeline.set_state(gst::State::Null).unwrap();

    let (pipeline, src, sink) = sender_pipeline(&socket, "text/x-raw,format=utf8", "wait-for-receiver=true");
    for i in 0..5 {
        src.push_buffer(gst::Buffer::from_slice(format!("kept {i}").into_bytes())).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let (receiver, out) = receiver_pipeline(&socket);
    for i in 0..5 {
        let sample = pull(&out);
        assert_eq!(sample.buffer().unwrap().map_readable().unwrap().as_slice(), format!("kept {i}").as_bytes());
    }
    let s = stats(&sink);
    assert_eq!((stat::<u64>(&s, "dropped"), stat::<u64>(&s, "buffers-sent")), (0, 5), "{s}");
    pipeline.set_state(gst::State::Null).unwrap();
    receiver.set_state(gst::State::Null).unwrap();
    assert_no_glib_warnings();
}

#[test]
fn text_over_1024_bytes_is_an_error_that_names_the_limit() {
    let dir = TempDir::new("sink-long-text");
    let socket = dir.path("s");
    let (receiver, _out) = receiver_pipeline(&socket);
    let (pipeline, src, _) = sender_pipeline(&socket, "text/x-raw,format=utf8", "wait-for-receiver=true");
    let _ = src.push_buffer(gst::Buffer::from_slice(vec![b'x'; 1025]));
    let error = wait_end(&pipeline).expect("an error");
    assert!(error.contains("1025 bytes") && error.contains("1024"), "{error}");
    pipeline.set_state(gst::State::Null).unwrap();
    receiver.set_state(gst::State::Null).unwrap();
}

#[test]
fn no_socket_path_is_an_error_that_says_which_property() {
    init();
    let pipeline = gst::parse::launch("appsrc ! qtisocketsink").unwrap();
    assert!(pipeline.set_state(gst::State::Playing).is_err());
    let bus = pipeline.bus().unwrap();
    let message = bus.timed_pop_filtered(gst::ClockTime::from_seconds(5), &[gst::MessageType::Error]).unwrap();
    let gst::MessageView::Error(e) = message.view() else { unreachable!() };
    let text = format!("{} {:?}", e.error(), e.debug());
    assert!(text.contains("socket"), "{text}");
    pipeline.set_state(gst::State::Null).unwrap();
}

/// `qtisocketsrc ! fakesink` on `socket`, PLAYING; the first 8 bytes of every frame
/// come out of the channel. Nothing holds a buffer after the probe (appsink keeps its
/// last one), so every buffer goes back to the sender.
fn index_receiver(socket: &Path) -> (gst::Pipeline, mpsc::Receiver<u64>) {
    init();
    let pipeline = gst::parse::launch(&format!(
        "qtisocketsrc socket={} ! fakesink name=out sync=false enable-last-sample=false",
        path_str(socket)
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    pipeline.by_name("out").unwrap().static_pad("sink").unwrap().add_probe(
        gst::PadProbeType::BUFFER,
        move |_, info| {
            if let Some(buffer) = info.buffer() {
                let map = buffer.map_readable().unwrap();
                let _ = tx.lock().unwrap().send(u64::from_le_bytes(map[..8].try_into().unwrap()));
            }
            gst::PadProbeReturn::Ok
        },
    );
    pipeline.set_state(gst::State::Playing).unwrap();
    (pipeline, rx)
}

#[test]
fn a_new_pool_reusing_fd_numbers_gets_its_fds_sent_again() {
    // It needs the fd numbers of the first pool free again for the second: alone.
    if !alone_in_a_child_process("a_new_pool_reusing_fd_numbers_gets_its_fds_sent_again") {
        return;
    }
    let dir = TempDir::new("sink-new-pool");
    let socket = dir.path("s");
    let (receiver, indices) = index_receiver(&socket);
    let (pipeline, src, sink) = sender_pipeline(&socket, NV12_64X48, "wait-for-receiver=true");
    let mut fd_numbers = Vec::new();
    for round in 0..2u64 {
        let pool = offered(&sink, NV12_64X48).0.unwrap();
        let mut config = pool.config();
        config.set_params(Some(&gst::Caps::from_str(NV12_64X48).unwrap()), 4608, 2, 2);
        pool.set_config(config).unwrap();
        pool.set_active(true).unwrap();
        for i in 0..4 {
            let index = round * 100 + i;
            let mut buffer = pool.acquire_buffer(None).unwrap();
            write_index(&mut buffer, index);
            let memory = buffer.peek_memory(0);
            fd_numbers.push(memory.downcast_memory_ref::<gst_allocators::FdMemory>().unwrap().fd());
            src.push_buffer(timestamped(buffer, index)).unwrap();
            assert_eq!(indices.recv_timeout(WAIT).unwrap(), index, "the receiver mapped another object");
        }
        // Every buffer back in the pool, then the pool and its memfds are gone: the next
        // pool's memfds get the same fd numbers.
        wait_until("every buffer came back", || stat::<u64>(&sink, "in-flight") == 0);
        pool.set_active(false).unwrap();
    }
    let (first, second) = fd_numbers.split_at(4);
    assert!(second.iter().any(|fd| first.contains(fd)), "the test needs reused fd numbers: {fd_numbers:?}");
    // Each pool's 2 memfds crossed the socket once: 4 in all, though the numbers repeat.
    assert_eq!(stat::<u64>(&sink, "fds-sent"), 4);
    src.end_of_stream().unwrap();
    assert_eq!(wait_end(&pipeline), None);
    pipeline.set_state(gst::State::Null).unwrap();
    receiver.set_state(gst::State::Null).unwrap();
    assert_no_glib_warnings();
}
