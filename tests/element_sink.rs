//! The `qtisocketsink` element: its bytes against the deployed sink's captures (a raw
//! socket reads them), ours → ours for every data kind and meta, zero copies from
//! `videotestsrc` and counted copies from system memory with the receiver in another
//! process (`gst-launch-1.0`), waiting for or dropping without a receiver, bad input.

mod common;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use gst::glib;
use gst::prelude::*;
use gstqtisocket::protocol::{ReceiverMessage, ReturnMessage, SenderMessage, MAX_RECORD_LEN};
use gstqtisocket::transport::{wait_readable, Listener, MessageIn, MessageReader};

const WAIT: Duration = Duration::from_secs(10);
const FRAME_NS: u64 = 33_333_333;

static GLIB_WARNINGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// GStreamer, our plugin registered statically, and a log handler that records every
/// GLib warning or critical (a test fails if any appeared).
fn init() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        gst::init().unwrap();
        gstqtisocket::plugin_register_static().unwrap();
        glib::log_set_default_handler(|domain, level, message| {
            if matches!(level, glib::LogLevel::Error | glib::LogLevel::Critical | glib::LogLevel::Warning) {
                GLIB_WARNINGS.lock().unwrap().push(format!("{domain:?} {level:?}: {message}"));
            }
            glib::log_default_handler(domain, level, Some(message));
        });
    });
}

fn assert_no_glib_warnings() {
    let warnings = GLIB_WARNINGS.lock().unwrap();
    assert!(warnings.is_empty(), "GLib warnings or criticals: {warnings:?}");
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn stats(element: &gst::Element) -> gst::Structure {
    element.property::<gst::Structure>("stats")
}

fn stat(s: &gst::Structure, name: &str) -> u64 {
    s.get::<u64>(name).unwrap_or_else(|_| panic!("no {name} in {s}"))
}

/// `appsrc ! qtisocketsink` (both named), PLAYING.
fn sender_pipeline(socket: &Path, caps: &str, sink_properties: &str) -> (gst::Pipeline, gst_app::AppSrc, gst::Element) {
    init();
    let pipeline = gst::parse::launch(&format!(
        "appsrc name=src format=time caps={caps} ! qtisocketsink name=sink socket={} sync=false {sink_properties}",
        path_str(socket)
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = pipeline.by_name("src").unwrap().downcast::<gst_app::AppSrc>().unwrap();
    let sink = pipeline.by_name("sink").unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    (pipeline, src, sink)
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

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
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
    let listener = Listener::bind(socket).unwrap();
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
