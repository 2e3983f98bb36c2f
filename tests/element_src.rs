//! The `qtisocketsrc` element: gst-check harness tests for every property and data kind,
//! application pipelines and `gst-launch-1.0`, always against a real socket and a sender
//! in another process (the bundled `qsock-replay` playing captures of the deployed sink)
//! or, for what no capture holds, the crate's `Sender` on a real socket.

mod common;

use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use gst::glib;
use gst::prelude::*;
use gst_base::prelude::BaseSrcExt;
use gst_check::Harness;
use gstqtisocket::protocol::{
    ClassLabel, ClassMeta, Keypoint, LandmarksMeta, Link, MemoryBlock, Metas, ProtectionMeta, CLOCK_TIME_NONE,
};
use gstqtisocket::vendor_meta::{
    TensorMeta, VendorClassLabel, VendorClassificationMeta, VendorKeypoint, VendorKeypointLink, VendorLandmarksMeta,
};
use gstqtisocket::{OutgoingBlock, OutgoingBuffer, Sender, SenderEvent};

const WAIT: Duration = Duration::from_secs(10);
/// The sender's pts of capture buffer `i`: 30 fps from 0.
const FRAME_NS: u64 = 33_333_333;

/// A harness around a `qtisocketsrc` on `socket`, with a bus to read its messages.
fn harness(socket: &Path, sink_caps: Option<&str>, properties: &[(&str, glib::Value)]) -> (Harness, gst::Bus) {
    init();
    let mut h = Harness::new("qtisocketsrc");
    let src = h.element().unwrap();
    src.set_property("socket", path_str(socket));
    for (name, value) in properties {
        src.set_property_from_value(name, value);
    }
    let bus = gst::Bus::new();
    src.set_bus(Some(&bus));
    if let Some(caps) = sink_caps {
        h.set_sink_caps_str(caps);
    }
    h.play();
    (h, bus)
}

/// Pulls every buffer until EOS, handing each to `inspect` and dropping it right away
/// (which returns it to the sender).
fn pull_all(h: &mut Harness, mut inspect: impl FnMut(&gst::BufferRef)) -> usize {
    let mut n = 0;
    while let Some(buffer) = h.pull_until_eos().expect("a buffer or EOS within 60 s") {
        inspect(&buffer);
        n += 1;
    }
    n
}

fn stats(element: &gst::Element) -> gst::Structure {
    element.property::<gst::Structure>("stats")
}

/// The index the sender wrote at the start of the memory: maps the buffer as any
/// downstream element would.
fn index_of(buffer: &gst::BufferRef) -> u64 {
    let map = buffer.map_readable().unwrap();
    u64::from_le_bytes(map[..8].try_into().unwrap())
}

fn is_fd_memory(memory: &gst::MemoryRef) -> bool {
    // SAFETY: a valid memory, only inspected.
    unsafe { gst_allocators::ffi::gst_is_fd_memory(memory.as_mut_ptr()) != 0 }
}

fn caps_events(h: &mut Harness) -> Vec<gst::Caps> {
    let mut caps = vec![];
    while let Some(event) = h.try_pull_event() {
        if let gst::EventView::Caps(c) = event.view() {
            caps.push(c.caps_owned());
        }
    }
    caps
}

/// Waits for a message on `bus` that `pick` accepts.
fn wait_message<T>(bus: &gst::Bus, within: Duration, mut pick: impl FnMut(&gst::Message) -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = bus.timed_pop(gst::ClockTime::from_nseconds(left.as_nanos() as u64))?;
        if let Some(found) = pick(&message) {
            return Some(found);
        }
    }
}

fn error_text(message: &gst::Message) -> Option<String> {
    match message.view() {
        gst::MessageView::Error(e) => Some(format!("{} ({})", e.error(), e.debug().unwrap_or_default())),
        _ => None,
    }
}

fn element_structure(message: &gst::Message, name: &str) -> Option<gst::Structure> {
    match message.view() {
        gst::MessageView::Element(e) => e.structure().filter(|s| s.name() == name).map(|s| s.to_owned()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// What gst-inspect shows

#[test]
fn inspect_shows_metadata_template_and_documented_properties() {
    init();
    let factory = gst::ElementFactory::find("qtisocketsrc").expect("registered by the plugin");
    assert!(factory.metadata("description").unwrap().contains("UNIX socket"));
    let template = factory.static_pad_templates().into_iter().next().unwrap();
    assert_eq!(template.name_template(), "src");
    assert_eq!(template.caps().to_string(), "neural-network/tensors; video/x-raw(ANY); text/x-raw");

    let src = factory.create().build().unwrap();
    assert!(src.is::<gst_base::PushSrc>());
    assert!(src.downcast_ref::<gst_base::BaseSrc>().unwrap().is_live());
    assert_eq!(src.property::<Option<String>>("socket"), None);
    assert_eq!(src.property::<u64>("timeout"), 1000);
    assert!(!src.property::<bool>("keep-listening"));
    let mode = src.find_property("timestamp-mode").unwrap();
    let mode = mode.downcast_ref::<glib::ParamSpecEnum>().unwrap();
    assert_eq!(mode.enum_class().value(mode.default_value_as_i32()).unwrap().nick(), "rebased");
    assert_eq!(
        mode.enum_class().values().iter().map(|v| v.nick()).collect::<Vec<_>>(),
        ["rebased", "sender", "arrival"]
    );

    let socket = src.find_property("socket").unwrap();
    assert!(socket.flags().contains(glib::ParamFlags::from_bits_truncate(gst::PARAM_FLAG_MUTABLE_READY.bits())));
    assert!(src.find_property("timeout").unwrap().blurb().unwrap().contains("Milliseconds without a message"));
    assert!(src.find_property("timeout").unwrap().blurb().unwrap().contains("0 = never"));
    let stats_spec = src.find_property("stats").unwrap();
    assert!(!stats_spec.flags().contains(glib::ParamFlags::WRITABLE));
    for pspec in src.list_properties() {
        assert!(pspec.blurb().is_some_and(|b| b.len() > 20), "{} needs a blurb", pspec.name());
    }
    let s = stats(&src);
    for field in [
        "buffers",
        "bytes-described",
        "fds-received",
        "fds-cached",
        "returns-sent",
        "protocol-errors",
        "senders-accepted",
        "memories-reused",
    ] {
        assert_eq!(stat::<u64>(&s, field), 0, "{field}");
    }
    assert!(!stat::<bool>(&s, "connected"));
    assert_no_glib_warnings();
}

// ---------------------------------------------------------------------------------------
// Data kinds, from a sender in another process

#[test]
fn pooled_video_with_fixed_caps_maps_the_senders_memory_and_reuses_it() {
    let dir = TempDir::new("src-pool");
    let socket = dir.path("cam.sock");
    let (mut h, bus) = harness(&socket, Some("video/x-raw,format=NV12,width=64,height=48"), &[]);
    let child = spawn_replay(&socket, "video-pool.jsonl", &[]);
    let mut indices = vec![];
    let mut pts = vec![];
    let mut memories = vec![];
    let n = pull_all(&mut h, |b| {
        indices.push(index_of(b));
        pts.push(b.pts().map(gst::ClockTime::nseconds));
        assert_eq!(b.n_memory(), 1);
        let memory = b.peek_memory(0);
        assert!(is_fd_memory(memory), "zero copy: the sender's fd wrapped as fd memory");
        assert_eq!((memory.size(), memory.maxsize()), (4608, 4608));
        let map = memory.map_readable().unwrap();
        memories.push((memory.as_ptr() as usize, map.as_ptr() as usize));
        let meta = b.meta::<gst_video::VideoMeta>().expect("a GstVideoMeta from FRAME");
        assert_eq!((meta.format(), meta.width(), meta.height()), (gst_video::VideoFormat::Nv12, 64, 48));
        assert_eq!((meta.offset(), meta.stride()), (&[0usize, 3072][..], &[64, 64][..]));
        assert_eq!(b.duration(), Some(gst::ClockTime::from_nseconds(FRAME_NS)));
    });
    assert_eq!(n, 8);
    assert_eq!(indices, [0, 1, 2, 3, 0, 1, 2, 3], "messages 4..8 carry no fd: the cached fds are mapped");
    let sender_pts = [0, 33_333_333, 66_666_666, 100_000_000, 133_333_333, 166_666_666, 200_000_000, 233_333_333];
    assert_eq!(pts, sender_pts.map(Some), "the sender's timestamps, passed through");
    for i in 0..4 {
        assert_eq!(
            memories[i],
            memories[i + 4],
            "buffer {i}: the same GstMemory and mapping serve the pooled buffer again"
        );
    }
    let caps = h.sinkpad().unwrap().current_caps().unwrap();
    let s = caps.structure(0).unwrap();
    assert_eq!((s.get::<&str>("format").unwrap(), s.get::<i32>("width").unwrap()), ("NV12", 64));
    assert_eq!(s.get::<gst::Fraction>("framerate").unwrap(), gst::Fraction::new(30, 1), "from the duration");

    let (ok, output) = finish_replay(child);
    assert!(ok, "every buffer must be returned: {output}");
    let s = stats(&h.element().unwrap());
    assert_eq!(
        ["buffers", "bytes-described", "fds-received", "returns-sent"].map(|field| stat::<u64>(&s, field)),
        [8, 8 * 4608, 4, 8]
    );
    let counts = ["memories-reused", "protocol-errors", "senders-accepted"].map(|field| stat::<u64>(&s, field));
    assert_eq!(counts, [4, 0, 1]);
    drop(h);
    assert!(!socket.exists(), "the socket file is removed on the way to READY");
    assert!(wait_message(&bus, Duration::ZERO, error_text).is_none());
    assert_no_glib_warnings();
}

#[test]
fn unpooled_video_with_open_caps_derives_them_from_the_messages() {
    let dir = TempDir::new("src-nopool");
    let socket = dir.path("s");
    let (mut h, _bus) = harness(&socket, None, &[]);
    let child = spawn_replay(&socket, "video-nopool.jsonl", &[]);
    let mut indices = vec![];
    let mut first_flags = None;
    pull_all(&mut h, |b| {
        first_flags.get_or_insert(b.flags());
        indices.push(index_of(b));
        assert!(is_fd_memory(b.peek_memory(0)));
    });
    assert_eq!(indices, [0, 1, 2, 3, 4]);
    assert!(first_flags.unwrap().contains(gst::BufferFlags::DISCONT));
    let caps = caps_events(&mut h);
    assert_eq!(caps.len(), 1);
    assert!(caps[0].is_fixed());
    assert_eq!(
        caps[0].to_string(),
        "video/x-raw, format=(string)NV12, width=(int)64, height=(int)48, framerate=(fraction)30/1, pixel-aspect-ratio=(fraction)1/1"
    );
    assert!(finish_replay(child).0, "every buffer must be returned");
    let s = stats(&h.element().unwrap());
    assert_eq!(
        ["buffers", "fds-received", "returns-sent", "memories-reused"].map(|field| stat::<u64>(&s, field)),
        [5, 5, 5, 0]
    );
    assert_no_glib_warnings();
}

fn tensor_metas(b: &gst::BufferRef) -> Vec<(u32, u32, Vec<u32>, f32)> {
    let api = glib::Type::from_name("GstMLTensorMetaAPI").expect("the tensor meta API is registered");
    b.iter_meta::<gst::Meta>()
        .filter(|m| m.api() == api)
        .map(|m| {
            // SAFETY: a meta of the GstMLTensorMeta API has the spec's layout.
            let t = unsafe { &*(m.as_ptr() as *const TensorMeta) };
            (t.id, t.tensor_type, t.dimensions[..t.n_dimensions as usize].to_vec(), t.qscale)
        })
        .collect()
}

#[test]
fn tensors_get_caps_and_one_tensor_meta_per_memory() {
    for (capture, expected) in [("tensor.jsonl", vec![0, 1, 2, 3]), ("tensor-pool.jsonl", vec![0, 1, 2, 3, 0, 1])] {
        let dir = TempDir::new("src-tensor");
        let socket = dir.path("s");
        let (mut h, _bus) = harness(&socket, None, &[]);
        let child = spawn_replay(&socket, capture, &[]);
        let mut indices = vec![];
        pull_all(&mut h, |b| {
            indices.push(index_of(b));
            assert_eq!(b.size(), 48);
            assert_eq!(tensor_metas(b), [(0, 2, vec![1, 4, 4, 3], 1.0)], "{capture}");
        });
        assert_eq!(indices, expected, "{capture}");
        let caps = caps_events(&mut h);
        assert_eq!(caps.len(), 1);
        assert_eq!(
            caps[0].to_string(),
            "neural-network/tensors, type=(string)UINT8, dimensions=(int)< < (int)1, (int)4, (int)4, (int)3 > >"
        );
        assert!(finish_replay(child).0, "{capture}: every buffer must be returned");
    }
    assert_no_glib_warnings();
}

#[test]
fn text_arrives_byte_exact() {
    let dir = TempDir::new("src-text");
    let socket = dir.path("s");
    let (mut h, _bus) = harness(&socket, Some("text/x-raw,format=utf8"), &[]);
    let child = spawn_replay(&socket, "text.jsonl", &[]);
    let mut texts = vec![];
    pull_all(&mut h, |b| texts.push(b.map_readable().unwrap().to_vec()));
    assert_eq!(texts, (0..4).map(|i| format!("frame {i}").into_bytes()).collect::<Vec<_>>());
    assert!(finish_replay(child).0);
    let caps = h.sinkpad().unwrap().current_caps().unwrap();
    assert_eq!(caps.to_string(), "text/x-raw, format=(string)utf8");
    let s = stats(&h.element().unwrap());
    assert_eq!(["buffers", "returns-sent", "bytes-described"].map(|field| stat::<u64>(&s, field)), [4, 0, 28]);
    assert_no_glib_warnings();
}

#[test]
fn fixed_caps_that_disagree_with_the_sender_fail_naming_both() {
    let dir = TempDir::new("src-mismatch");
    let socket = dir.path("s");
    let (h, bus) = harness(&socket, Some("video/x-raw,format=I420,width=1920,height=1080"), &[]);
    let child = spawn_replay(&socket, "video-pool.jsonl", &[]);
    let error = wait_message(&bus, WAIT, error_text).expect("a negotiation error");
    assert!(
        error.contains("NV12") && error.contains("64") && error.contains("I420") && error.contains("1920"),
        "{error}"
    );
    assert!(error.contains(path_str(&socket)), "{error}");
    drop(h);
    finish_replay(child);
    assert_no_glib_warnings();
}

#[test]
fn regions_of_interest_arrive_with_their_parameter_structures() {
    let dir = TempDir::new("src-roi");
    let socket = dir.path("s");
    let (mut h, _bus) = harness(&socket, None, &[]);
    let child = spawn_replay(&socket, "video-roi.jsonl", &[]);
    let mut rois = vec![];
    let n = pull_all(&mut h, |b| {
        let metas: Vec<_> = b.iter_meta::<gst_video::VideoRegionOfInterestMeta>().collect();
        assert_eq!(metas.len(), 1);
        let roi = &metas[0];
        let params: Vec<gst::Structure> = roi.params().map(|p| p.to_owned()).collect();
        rois.push((roi.roi_type().to_owned(), roi.rect(), params));
    });
    assert_eq!(n, 3);
    for (label, rect, params) in rois {
        assert_eq!((label.as_str(), rect), ("person", (10, 20, 30, 40)));
        let detection = params.iter().find(|p| p.name() == "ObjectDetection").expect("det_meta as a parameter");
        assert_eq!(detection.get::<f64>("confidence").unwrap(), 87.5);
        assert_eq!(detection.get::<u32>("color").unwrap(), 4278190335);
    }
    assert!(finish_replay(child).0);
    assert_no_glib_warnings();
}

/// NV12 64x48 in a memfd whose first 8 bytes are `index`.
fn nv12_block(fd: &std::os::fd::OwnedFd) -> OutgoingBlock<'_> {
    OutgoingBlock { fd: Some(fd.as_fd()), description: nv12_64x48(4608) }
}

fn frame(blocks: Vec<OutgoingBlock<'_>>, index: u64, pooled: bool, metas: Metas) -> OutgoingBuffer<'_> {
    OutgoingBuffer { blocks, pts: index * FRAME_NS, dts: CLOCK_TIME_NONE, duration: FRAME_NS, pooled, metas }
}

/// Waits until the sender got every buffer back (or the receiver said something else).
fn wait_returns(sender: &mut Sender) -> Vec<SenderEvent> {
    let mut events = vec![];
    while sender.in_flight() > 0 {
        match sender.next_event(Some(WAIT)).unwrap() {
            Some(event) => events.push(event),
            None => panic!("no return within {WAIT:?}; {} still out", sender.in_flight()),
        }
    }
    events
}

#[test]
fn classification_landmarks_and_protection_metas_are_readable() {
    let dir = TempDir::new("src-metas");
    let socket = dir.path("s");
    let (mut h, _bus) = harness(&socket, None, &[]);
    let mut sender = Sender::connect_retrying(&socket, WAIT).unwrap();
    let memory = memfd(4608, 7);
    let metas = Metas {
        protection: vec![ProtectionMeta {
            structure: c"application/x-cenc, iv_size=(uint)16, kid=(string)abc".into(),
            size: 54,
            maxsize: 1024,
        }],
        roi: vec![],
        class: vec![ClassMeta {
            id: 3,
            parent_id: 1,
            labels: vec![
                ClassLabel { name: c"cat".into(), confidence: 91.5, color: 0xff0000ff, xtraparams: None },
                ClassLabel {
                    name: c"dog".into(),
                    confidence: 8.5,
                    color: 0x00ff00ff,
                    xtraparams: Some(c"Extra, breed=(string)corgi;".into()),
                },
            ],
        }],
        landmarks: vec![LandmarksMeta {
            id: 4,
            parent_id: 1,
            confidence: 77.0,
            keypoints: vec![
                Keypoint { name: c"nose".into(), confidence: 90.0, color: 1, x: 10, y: 11 },
                Keypoint { name: c"eye".into(), confidence: 80.0, color: 2, x: 12, y: 13 },
            ],
            links: vec![Link { s_kp_idx: 0, d_kp_idx: 1 }],
            xtraparams: Some(c"Pose, kind=(string)face;".into()),
        }],
    };
    sender.send(&frame(vec![nv12_block(&memory)], 0, false, metas)).unwrap();
    sender.send_eos().unwrap();
    let buffer = h.pull().unwrap();
    assert_eq!(index_of(&buffer), 7);

    let protection = buffer.meta::<gst::ProtectionMeta>().expect("a protection meta");
    assert_eq!(protection.info().name(), "application/x-cenc");
    assert_eq!(protection.info().get::<&str>("kid").unwrap(), "abc");

    let class = gst::meta::CustomMeta::from_buffer(&buffer, "QtiSocketClassificationMeta")
        .expect("without the vendor library, a custom meta carries the classification");
    let s = class.structure();
    assert_eq!(s.name(), "VideoClassification");
    assert_eq!((s.get::<u32>("id").unwrap(), s.get::<i32>("parent-id").unwrap()), (3, 1));
    let labels = s.get::<gst::Array>("labels").unwrap();
    let labels: Vec<gst::Structure> = labels.iter().map(|v| v.get::<gst::Structure>().unwrap()).collect();
    assert_eq!(labels.len(), 2);
    assert_eq!((labels[0].get::<&str>("name").unwrap(), labels[0].get::<f64>("confidence").unwrap()), ("cat", 91.5));
    assert_eq!(labels[0].get::<u32>("color").unwrap(), 0xff0000ff);
    let extra = labels[1].get::<gst::Structure>("xtraparams").unwrap();
    assert_eq!((extra.name().as_str(), extra.get::<&str>("breed").unwrap()), ("Extra", "corgi"));

    let landmarks =
        gst::meta::CustomMeta::from_buffer(&buffer, "QtiSocketLandmarksMeta").expect("a landmarks custom meta");
    let s = landmarks.structure();
    assert_eq!(s.name(), "VideoLandmarks");
    assert_eq!((s.get::<u32>("id").unwrap(), s.get::<f64>("confidence").unwrap()), (4, 77.0));
    let keypoints: Vec<gst::Structure> =
        s.get::<gst::Array>("keypoints").unwrap().iter().map(|v| v.get::<gst::Structure>().unwrap()).collect();
    assert_eq!(keypoints[1].get::<&str>("name").unwrap(), "eye");
    assert_eq!((keypoints[1].get::<u32>("x").unwrap(), keypoints[1].get::<u32>("y").unwrap()), (12, 13));
    let links: Vec<gst::Structure> =
        s.get::<gst::Array>("links").unwrap().iter().map(|v| v.get::<gst::Structure>().unwrap()).collect();
    assert_eq!((links[0].get::<u32>("source").unwrap(), links[0].get::<u32>("destination").unwrap()), (0, 1));
    assert_eq!(s.get::<gst::Structure>("xtraparams").unwrap().name(), "Pose");

    // A copy (as any element that makes the buffer writable does) keeps the metas.
    let copy = buffer.copy();
    assert!(gst::meta::CustomMeta::from_buffer(&copy, "QtiSocketLandmarksMeta").is_ok());
    drop(copy);
    drop(buffer);
    assert!(matches!(wait_returns(&mut sender)[..], [SenderEvent::Returned(_)]));
    assert!(h.pull_until_eos().unwrap().is_none());
    assert_no_glib_warnings();
}

#[test]
fn a_sub_buffer_keeps_the_sender_memory_until_it_is_released() {
    let dir = TempDir::new("src-share");
    let socket = dir.path("s");
    let (mut h, _bus) = harness(&socket, None, &[]);
    let mut sender = Sender::connect_retrying(&socket, WAIT).unwrap();
    let memory = memfd(4608, 5);
    sender.send(&frame(vec![nv12_block(&memory)], 0, true, Metas::default())).unwrap();
    let buffer = h.pull().unwrap();
    // Downstream shares part of the memory into a buffer of its own, then drops ours.
    let part = buffer.copy_region(gst::BufferCopyFlags::MEMORY, 0..16).unwrap();
    drop(buffer);
    assert!(sender.next_event(Some(Duration::from_millis(200))).unwrap().is_none(), "returned while still in use");
    assert_eq!(index_of(&part), 5);
    // Released from another thread: the return goes out from there.
    std::thread::spawn(move || drop(part)).join().unwrap();
    assert!(matches!(wait_returns(&mut sender)[..], [SenderEvent::Returned(_)]));
    // The pooled buf_id comes again, without its fd: the cached memory serves it.
    sender.send(&frame(vec![nv12_block(&memory)], 1, true, Metas::default())).unwrap();
    assert_eq!(sender.counts(), (2, 1));
    assert_eq!(index_of(&h.pull().unwrap()), 5);
    wait_returns(&mut sender);
    assert_eq!(stat::<u64>(&h.element().unwrap(), "memories-reused"), 1);
    assert_no_glib_warnings();
}

// ---------------------------------------------------------------------------------------
// Properties

#[test]
fn timeout_posts_an_element_message_per_silent_period_and_keeps_waiting() {
    let dir = TempDir::new("src-timeout");
    let socket = dir.path("s");
    let (mut h, bus) = harness(&socket, None, &[("timeout", 100u64.to_value())]);
    let started = Instant::now();
    let mut posts = vec![];
    while posts.len() < 3 {
        let s =
            wait_message(&bus, WAIT, |m| element_structure(m, "GstQtiSocketSrcTimeout")).expect("a timeout message");
        posts.push(started.elapsed());
        assert_eq!(s.get::<u64>("timeout").unwrap(), 100);
        assert!(!s.get::<bool>("connected").unwrap());
        assert_eq!(s.get::<&str>("socket").unwrap(), path_str(&socket));
    }
    assert!(posts[0] >= Duration::from_millis(90), "{posts:?}");
    assert!(posts[2] >= Duration::from_millis(290) && posts[2] < Duration::from_secs(3), "{posts:?}");
    // Still waiting: a sender that comes late is served.
    let child = spawn_replay(&socket, "text.jsonl", &[]);
    assert_eq!(pull_all(&mut h, |_| {}), 4);
    assert!(finish_replay(child).0);
    assert_no_glib_warnings();
}

#[test]
fn timeout_zero_never_posts() {
    let dir = TempDir::new("src-timeout0");
    let socket = dir.path("s");
    let (h, bus) = harness(&socket, None, &[("timeout", 0u64.to_value())]);
    assert!(
        wait_message(&bus, Duration::from_millis(400), |m| element_structure(m, "GstQtiSocketSrcTimeout")).is_none()
    );
    drop(h);
    assert_no_glib_warnings();
}

#[test]
fn a_sender_hang_up_is_an_error_naming_the_socket() {
    let dir = TempDir::new("src-hangup");
    let socket = dir.path("cam.sock");
    let (mut h, bus) = harness(&socket, None, &[]);
    let child = spawn_replay(&socket, "video-nopool.jsonl", &["--hangup-after", "2"]);
    assert_eq!(index_of(&h.pull().unwrap()), 0);
    assert_eq!(index_of(&h.pull().unwrap()), 1);
    let error = wait_message(&bus, WAIT, error_text).expect("an error");
    assert!(error.contains(path_str(&socket)) && error.contains("hung up"), "{error}");
    assert!(finish_replay(child).0);
    assert_no_glib_warnings();
}

#[test]
fn keep_listening_serves_the_next_sender_and_renegotiates() {
    let dir = TempDir::new("src-keep");
    let socket = dir.path("s");
    let (mut h, bus) = harness(&socket, None, &[("keep-listening", true.to_value())]);
    let first = spawn_replay(&socket, "video-nopool.jsonl", &["--hangup-after", "2"]);
    assert_eq!(index_of(&h.pull().unwrap()), 0);
    assert_eq!(index_of(&h.pull().unwrap()), 1);
    assert!(finish_replay(first).0);
    let gone =
        wait_message(&bus, WAIT, |m| element_structure(m, "GstQtiSocketSrcSenderGone")).expect("sender-gone message");
    assert_eq!(gone.get::<&str>("socket").unwrap(), path_str(&socket));
    // The next sender sends text: new caps, and its first buffer is DISCONT.
    let second = spawn_replay(&socket, "text.jsonl", &[]);
    let mut texts = vec![];
    let mut flags = vec![];
    pull_all(&mut h, |b| {
        texts.push(b.map_readable().unwrap().to_vec());
        flags.push(b.flags().contains(gst::BufferFlags::DISCONT));
    });
    assert_eq!(texts[0], b"frame 0");
    assert_eq!(flags, [true, false, false, false]);
    assert!(finish_replay(second).0);
    let caps: Vec<String> = caps_events(&mut h).iter().map(|c| c.structure(0).unwrap().name().to_string()).collect();
    assert_eq!(caps, ["video/x-raw", "text/x-raw"]);
    assert!(wait_message(&bus, Duration::ZERO, error_text).is_none());
    assert_eq!(stat::<u64>(&h.element().unwrap(), "senders-accepted"), 2);
    assert_no_glib_warnings();
}

#[test]
fn timestamp_mode_sender_passes_the_senders_times_and_arrival_stamps_running_time() {
    let dir = TempDir::new("src-ts");
    let socket = dir.path("s");
    let (mut h, _bus) = harness(&socket, None, &[]);
    let child = spawn_replay(&socket, "text.jsonl", &[]);
    let mut times = vec![];
    pull_all(&mut h, |b| times.push((b.pts(), b.duration())));
    assert!(finish_replay(child).0);
    let expected: Vec<_> = (0..4u64)
        .map(|i| {
            (
                Some(gst::ClockTime::from_nseconds([0, 33_333_333, 66_666_666, 100_000_000][i as usize])),
                Some(gst::ClockTime::from_nseconds(FRAME_NS)),
            )
        })
        .collect();
    assert_eq!(times, expected);
    drop(h);

    let mut h = Harness::new("qtisocketsrc");
    let src = h.element().unwrap();
    src.set_property("socket", path_str(&socket));
    src.set_property_from_str("timestamp-mode", "arrival");
    h.use_systemclock();
    h.play();
    let running_time = || src.clock().unwrap().time() - src.base_time().unwrap();
    let before = running_time();
    let child = spawn_replay(&socket, "text.jsonl", &[]);
    let mut pts = vec![];
    pull_all(&mut h, |b| {
        pts.push(b.pts().unwrap());
        assert_eq!(b.dts(), b.pts());
        assert_eq!(b.duration(), Some(gst::ClockTime::from_nseconds(FRAME_NS)));
    });
    let after = running_time();
    assert!(finish_replay(child).0);
    assert_eq!(pts.len(), 4);
    assert!(pts.windows(2).all(|w| w[0] <= w[1]), "{pts:?}");
    assert!(before <= pts[0] && pts[3] <= after, "{before} <= {pts:?} <= {after}");
    assert_no_glib_warnings();
}

#[test]
fn socket_property_is_fixed_while_playing_and_a_bad_path_fails_to_start() {
    init();
    let dir = TempDir::new("src-socketprop");
    let (h, _bus) = harness(&dir.path("s"), None, &[]);
    let src = h.element().unwrap();
    src.set_property("socket", path_str(&dir.path("other")));
    assert_eq!(src.property::<Option<String>>("socket").as_deref(), Some(path_str(&dir.path("s"))));
    assert!(dir.path("s").exists() && !dir.path("other").exists());
    drop(h);

    // A path taken by a regular file is refused, and the file is left alone.
    let file = dir.path("precious");
    std::fs::write(&file, b"data").unwrap();
    let src = gst::ElementFactory::make("qtisocketsrc").property("socket", path_str(&file)).build().unwrap();
    let bus = gst::Bus::new();
    src.set_bus(Some(&bus));
    assert!(src.set_state(gst::State::Paused).is_err());
    let error = wait_message(&bus, WAIT, error_text).unwrap();
    assert!(error.contains(path_str(&file)) && error.contains("regular file"), "{error}");
    assert_eq!(std::fs::read(&file).unwrap(), b"data");
    src.set_state(gst::State::Null).unwrap();
    // No socket at all.
    let src = gst::ElementFactory::make("qtisocketsrc").build().unwrap();
    src.set_bus(Some(&bus));
    assert!(src.set_state(gst::State::Paused).is_err());
    let error = wait_message(&bus, WAIT, error_text).unwrap();
    assert!(error.contains("socket"), "{error}");
    src.set_state(gst::State::Null).unwrap();
    assert_no_glib_warnings();
}

#[test]
fn a_lying_message_is_a_warning_and_the_stream_goes_on() {
    let dir = TempDir::new("src-lie");
    let socket = dir.path("s");
    let (mut h, bus) = harness(&socket, None, &[]);
    let child = spawn_replay(&socket, "crafted/video-maxsize-lie.jsonl", &[]);
    let mut indices = vec![];
    pull_all(&mut h, |b| indices.push(index_of(b)));
    assert_eq!(indices, [0, 1, 3, 4], "the lying message (index 2) is dropped, the others arrive");
    let warning = wait_message(&bus, WAIT, |m| match m.view() {
        gst::MessageView::Warning(w) => Some(format!("{} {}", w.error(), w.debug().unwrap_or_default())),
        _ => None,
    })
    .unwrap();
    assert!(warning.contains("maxsize") && warning.contains(path_str(&socket)), "{warning}");
    assert_eq!(stat::<u64>(&h.element().unwrap(), "protocol-errors"), 1);
    finish_replay(child);
    assert_no_glib_warnings();
}

// ---------------------------------------------------------------------------------------
// State changes

fn pipeline(socket: &Path, tail: &str) -> (gst::Pipeline, gst::Element) {
    init();
    let pipeline = gst::parse::launch(&format!("qtisocketsrc name=src socket={} ! {tail}", path_str(socket)))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let src = pipeline.by_name("src").unwrap();
    (pipeline, src)
}

#[test]
fn pausing_sends_disconnect_and_ready_answers_queued_messages_and_removes_the_socket() {
    let dir = TempDir::new("src-states");
    let socket = dir.path("s");
    let (mut h, _bus) = harness(&socket, None, &[]);
    let src = h.element().unwrap();
    let mut sender = Sender::connect_retrying(&socket, WAIT).unwrap();
    let memories: Vec<_> = (0..3).map(|i| memfd(4608, i)).collect();
    let buf_id = |i: usize| memories[i].as_fd().as_raw_fd();
    sender.send(&frame(vec![nv12_block(&memories[0])], 0, false, Metas::default())).unwrap();
    assert_eq!(index_of(&h.pull().unwrap()), 0);
    assert_eq!(wait_returns(&mut sender), [SenderEvent::Returned(vec![buf_id(0)])]);

    src.set_state(gst::State::Paused).unwrap();
    assert_eq!(sender.next_event(Some(WAIT)).unwrap(), Some(SenderEvent::Disconnect));
    // Sent before the sender could act on the DISCONNECT: never pushed, returned (while
    // paused, if the streaming thread still reads, or at the latest on the way to READY).
    for (i, memory) in memories.iter().enumerate().skip(1) {
        sender.send(&frame(vec![nv12_block(memory)], i as u64, false, Metas::default())).unwrap();
    }
    let started = Instant::now();
    src.set_state(gst::State::Ready).unwrap();
    assert!(started.elapsed() < Duration::from_millis(100), "{:?}", started.elapsed());
    let returned: Vec<i32> = wait_returns(&mut sender)
        .iter()
        .flat_map(|e| match e {
            SenderEvent::Returned(ids) => ids.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(returned, [buf_id(1), buf_id(2)], "every queued message is answered with a return");
    assert!(!socket.exists(), "socket file left behind");
    assert_eq!(sender.next_event(Some(WAIT)).unwrap(), Some(SenderEvent::ReceiverGone));
    assert!(h.try_pull().is_none(), "the queued messages were never pushed");
    let s = stats(&src);
    // The last run's counters, as of the moment the receiver was closed (the returns sent
    // while closing are not counted: the receiver offers no counters after close; those
    // sent while paused are).
    assert_eq!((stat::<u64>(&s, "buffers"), stat::<u64>(&s, "fds-cached")), (1, 0));
    assert!((1..=3).contains(&stat::<u64>(&s, "returns-sent")), "{s}");
    assert!(!stat::<bool>(&s, "connected"));
    assert_no_glib_warnings();
}

#[test]
fn a_pause_and_resume_cycle_picks_the_sender_up_again() {
    // The sender we told to DISCONNECT leaves; that is no error, and when it comes back
    // the stream goes on.
    let dir = TempDir::new("src-resume");
    let socket = dir.path("s");
    let (mut h, bus) = harness(&socket, None, &[]);
    let src = h.element().unwrap();
    let memory = memfd(4608, 9);
    let mut sender = Sender::connect_retrying(&socket, WAIT).unwrap();
    sender.send(&frame(vec![nv12_block(&memory)], 0, true, Metas::default())).unwrap();
    drop(h.pull().unwrap());
    wait_returns(&mut sender);
    src.set_state(gst::State::Paused).unwrap();
    assert_eq!(sender.next_event(Some(WAIT)).unwrap(), Some(SenderEvent::Disconnect));
    drop(sender); // as the deployed sender does once its buffers are back
    src.set_state(gst::State::Playing).unwrap();
    // A sender that connects at the very moment of the resume may be taken for one that
    // connected while paused and be hung up on: it connects again, as senders do.
    // The hang-up shows as a send that fails or as the receiver gone after it.
    let mut sender = loop {
        let mut sender = Sender::connect_retrying(&socket, WAIT).unwrap();
        if let Err(error) = sender.send(&frame(vec![nv12_block(&memory)], 1, true, Metas::default())) {
            assert!(
                matches!(&error, gstqtisocket::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe),
                "{error}"
            );
            continue;
        }
        match sender.next_event(Some(Duration::from_millis(200))).unwrap() {
            Some(SenderEvent::ReceiverGone) => continue,
            None => break sender,
            Some(other) => panic!("{other:?}"),
        }
    };
    let buffer = h.pull().unwrap();
    assert_eq!(index_of(&buffer), 9);
    assert!(buffer.flags().contains(gst::BufferFlags::DISCONT), "a new sender's first buffer");
    drop(buffer);
    wait_returns(&mut sender);
    assert!(wait_message(&bus, Duration::ZERO, error_text).is_none());
    assert_eq!(stat::<u64>(&src, "senders-accepted"), 2);
    assert_no_glib_warnings();
}

#[test]
fn null_while_waiting_for_a_sender_or_a_message_returns_within_100_ms() {
    let dir = TempDir::new("src-null");
    let socket = dir.path("s");
    for connect in [false, true] {
        let (pipeline, _src) = pipeline(&socket, "fakesink");
        pipeline.set_state(gst::State::Playing).unwrap();
        let _sender = connect.then(|| Sender::connect_retrying(&socket, WAIT).unwrap());
        std::thread::sleep(Duration::from_millis(150)); // create() is blocked waiting
        let started = Instant::now();
        pipeline.set_state(gst::State::Null).unwrap();
        let took = started.elapsed();
        assert!(took < Duration::from_millis(100), "connected: {connect}: {took:?}");
        assert!(!socket.exists());
    }
    assert_no_glib_warnings();
}

// ---------------------------------------------------------------------------------------
// gst-launch-1.0, with the plugin loaded from the build output

/// Runs `gst-launch-1.0 ARGS` against a replay of `capture`; both must succeed.
fn gst_launch(dir: &TempDir, capture: &str, pipeline: &str) -> String {
    let socket = dir.path("s");
    let launch = gst_launch_child(dir, pipeline);
    let child = spawn_replay(&socket, capture, &[]);
    let out = launch.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "gst-launch-1.0 failed: {text}");
    assert!(!text.contains("CRITICAL") && !text.contains("WARNING"), "{text}");
    let (ok, replay) = finish_replay(child);
    assert!(ok, "the sender did not get every buffer back: {replay}");
    text
}

#[test]
fn gst_launch_receives_video_and_text_from_another_process() {
    let dir = TempDir::new("src-launch");
    let out = dir.path("frames.raw");
    gst_launch(
        &dir,
        "video-pool.jsonl",
        // filesink buffers 64 KiB (more than the sender's pool of 4) unless told not to.
        &format!(
            "qtisocketsrc socket=SOCKET ! video/x-raw,format=NV12,width=64,height=48 ! filesink buffer-mode=unbuffered location={}",
            path_str(&out)
        ),
    );
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(bytes.len(), 8 * 4608);
    let indices: Vec<u64> = bytes.chunks(4608).map(|f| u64::from_le_bytes(f[..8].try_into().unwrap())).collect();
    assert_eq!(indices, [0, 1, 2, 3, 0, 1, 2, 3]);

    // Open caps: no capsfilter needed, the caps come from the messages.
    let converted = dir.path("i420.raw");
    gst_launch(
        &dir,
        "video-nopool.jsonl",
        &format!(
            "qtisocketsrc socket=SOCKET ! videoconvert ! video/x-raw,format=I420 ! filesink location={}",
            path_str(&converted)
        ),
    );
    assert_eq!(std::fs::read(&converted).unwrap().len(), 5 * 4608);

    let text = dir.path("text.txt");
    gst_launch(
        &dir,
        "text.jsonl",
        &format!("qtisocketsrc socket=SOCKET ! text/x-raw ! filesink location={}", path_str(&text)),
    );
    assert_eq!(std::fs::read(&text).unwrap(), b"frame 0frame 1frame 2frame 3");
}

// ---------------------------------------------------------------------------------------
// Alone in a process

unsafe extern "C" fn vendor_init(
    meta: *mut gst::ffi::GstMeta,
    _: glib::ffi::gpointer,
    _: *mut gst::ffi::GstBuffer,
) -> glib::ffi::gboolean {
    // SAFETY: GStreamer passes a meta of the registered size; zero what follows GstMeta,
    // and mark tensor metas as initialized by the "vendor" (qscale 2).
    unsafe {
        let info = (*meta).info;
        let size = (*info).size;
        let header = std::mem::size_of::<gst::ffi::GstMeta>();
        std::ptr::write_bytes((meta as *mut u8).add(header), 0, size - header);
        if size == std::mem::size_of::<TensorMeta>() {
            (*(meta as *mut TensorMeta)).qscale = 2.0;
        }
    }
    glib::ffi::GTRUE
}

unsafe extern "C" fn vendor_class_free(meta: *mut gst::ffi::GstMeta, _: *mut gst::ffi::GstBuffer) {
    // SAFETY: as the vendor's free function: the labels array is the meta's.
    unsafe { glib::ffi::g_array_free((*(meta as *mut VendorClassificationMeta)).labels, glib::ffi::GTRUE) };
}

unsafe extern "C" fn vendor_landmarks_free(meta: *mut gst::ffi::GstMeta, _: *mut gst::ffi::GstBuffer) {
    // SAFETY: as the vendor's free function: arrays and structure are the meta's.
    unsafe {
        let m = &mut *(meta as *mut VendorLandmarksMeta);
        glib::ffi::g_array_free(m.keypoints, glib::ffi::GTRUE);
        glib::ffi::g_array_free(m.links, glib::ffi::GTRUE);
        if !m.xtraparams.is_null() {
            gst::ffi::gst_structure_free(m.xtraparams);
        }
    }
}

/// Registers the metas as the vendor libraries do, as if they were loaded.
fn register_vendor_metas() {
    type Free = unsafe extern "C" fn(*mut gst::ffi::GstMeta, *mut gst::ffi::GstBuffer);
    let metas: [(&std::ffi::CStr, &std::ffi::CStr, usize, Option<Free>); 3] = [
        (c"GstMLTensorMetaAPI", c"GstMLTensorMeta", std::mem::size_of::<TensorMeta>(), None),
        (
            c"GstVideoClassificationMetaAPI",
            c"GstVideoClassificationMeta",
            std::mem::size_of::<VendorClassificationMeta>(),
            Some(vendor_class_free),
        ),
        (
            c"GstVideoLandmarksMetaAPI",
            c"GstVideoLandmarksMeta",
            std::mem::size_of::<VendorLandmarksMeta>(),
            Some(vendor_landmarks_free),
        ),
    ];
    for (api, implementation, size, free) in metas {
        // SAFETY: NUL-terminated names and tags, functions matching the sizes.
        unsafe {
            let mut tags = [c"memory".as_ptr(), std::ptr::null()];
            let api = gst::ffi::gst_meta_api_type_register(api.as_ptr(), tags.as_mut_ptr());
            assert_ne!(api, 0);
            let info = gst::ffi::gst_meta_register(api, implementation.as_ptr(), size, Some(vendor_init), free, None);
            assert!(!info.is_null());
        }
    }
}

fn meta_of<'a, T>(b: &'a gst::BufferRef, api: &str) -> &'a T {
    let api = glib::Type::from_name(api).unwrap();
    let meta = b.iter_meta::<gst::Meta>().find(|m| m.api() == api).expect("the vendor meta");
    // SAFETY: metas of that API have the vendor's layout T, alive while the buffer is.
    unsafe { &*(meta.as_ptr() as *const T) }
}

fn g_array<T>(array: *mut glib::ffi::GArray) -> &'static [T] {
    // SAFETY: a GArray of T, read while its meta lives.
    unsafe { std::slice::from_raw_parts((*array).data as *const T, (*array).len as usize) }
}

fn quark_name(quark: u32) -> String {
    // SAFETY: a GQuark.
    unsafe { std::ffi::CStr::from_ptr(glib::ffi::g_quark_to_string(quark)).to_string_lossy().into_owned() }
}

#[test]
fn vendor_metas_are_attached_when_the_vendor_registered_them() {
    if !alone_in_a_child_process("vendor_metas_are_attached_when_the_vendor_registered_them") {
        return;
    }
    init();
    register_vendor_metas();
    let dir = TempDir::new("src-vendor");
    let socket = dir.path("s");
    let (mut h, _bus) = harness(&socket, None, &[]);
    let mut sender = Sender::connect_retrying(&socket, WAIT).unwrap();
    let memory = memfd(4608, 1);
    let metas = Metas {
        class: vec![ClassMeta {
            id: 3,
            parent_id: -1,
            labels: vec![
                ClassLabel { name: c"cat".into(), confidence: 91.5, color: 0xff0000ff, xtraparams: None },
                ClassLabel {
                    name: c"dog".into(),
                    confidence: 8.5,
                    color: 7,
                    xtraparams: Some(c"Extra, breed=(string)corgi;".into()),
                },
            ],
        }],
        landmarks: vec![LandmarksMeta {
            id: 4,
            parent_id: 2,
            confidence: 77.0,
            keypoints: vec![
                Keypoint { name: c"nose".into(), confidence: 90.0, color: 1, x: 10, y: 11 },
                Keypoint { name: c"eye".into(), confidence: 80.0, color: 2, x: 12, y: 13 },
            ],
            links: vec![Link { s_kp_idx: 0, d_kp_idx: 1 }],
            xtraparams: Some(c"Pose, kind=(string)face;".into()),
        }],
        ..Metas::default()
    };
    sender.send(&frame(vec![nv12_block(&memory)], 0, false, metas)).unwrap();
    let tensor = memfd(48, 2);
    let tensor_block = OutgoingBlock {
        fd: Some(tensor.as_fd()),
        description: MemoryBlock::Tensor(gstqtisocket::protocol::TensorPayload {
            tensor_type: 10,
            n_dimensions: 2,
            dimensions: [3, 4, 0, 0, 0, 0, 0, 0],
            size: 48,
            maxsize: 48,
        }),
    };
    sender.send(&frame(vec![tensor_block], 1, false, Metas::default())).unwrap();

    let video = h.pull().unwrap();
    assert!(gst::meta::CustomMeta::from_buffer(&video, "QtiSocketClassificationMeta").is_err());
    let class: &VendorClassificationMeta = meta_of(&video, "GstVideoClassificationMetaAPI");
    assert_eq!((class.id, class.parent_id), (3, -1));
    let labels = g_array::<VendorClassLabel>(class.labels);
    assert_eq!(labels.len(), 2);
    assert_eq!((quark_name(labels[0].name), labels[0].confidence, labels[0].color), ("cat".into(), 91.5, 0xff0000ff));
    assert!(labels[0].xtraparams.is_null());
    // SAFETY: a structure owned by the label.
    let extra = unsafe { gst::StructureRef::from_glib_borrow(labels[1].xtraparams) };
    assert_eq!(extra.get::<&str>("breed").unwrap(), "corgi");
    let landmarks: &VendorLandmarksMeta = meta_of(&video, "GstVideoLandmarksMetaAPI");
    assert_eq!((landmarks.id, landmarks.parent_id, landmarks.confidence), (4, 2, 77.0));
    let keypoints = g_array::<VendorKeypoint>(landmarks.keypoints);
    assert_eq!(
        keypoints.iter().map(|k| (quark_name(k.name), k.x, k.y)).collect::<Vec<_>>(),
        [("nose".into(), 10, 11), ("eye".into(), 12, 13)]
    );
    let links = g_array::<VendorKeypointLink>(landmarks.links);
    assert_eq!(links.iter().map(|l| (l.s_kp_idx, l.d_kp_idx)).collect::<Vec<_>>(), [(0, 1)]);
    // SAFETY: a structure owned by the meta.
    assert_eq!(unsafe { gst::StructureRef::from_glib_borrow(landmarks.xtraparams) }.name(), "Pose");
    drop(video);

    let tensor_buffer = h.pull().unwrap();
    assert_eq!(
        tensor_metas(&tensor_buffer),
        [(0, 10, vec![3, 4], 2.0)],
        "the vendor's registration (its init) is used"
    );
    drop(tensor_buffer);
    wait_returns(&mut sender);
    assert_no_glib_warnings();
}

// ---------------------------------------------------------------------------------------
// No leak

fn memfd_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps").unwrap().lines().filter(|l| l.contains("/memfd:")).count()
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Plays `capture` `repeat` times through `qtisocketsrc ! fakesink` with a probe that maps
/// every buffer and checks the sender's index; returns the number of buffers.
fn soak(socket: &Path, capture: &str, repeat: usize, indices: &[u64]) -> usize {
    let (pipeline, src) = pipeline(socket, "fakesink name=sink sync=false enable-last-sample=false");
    let seen = Arc::new(Mutex::new(0usize));
    let expected: Vec<u64> = indices.to_vec();
    let counter = seen.clone();
    src.static_pad("src").unwrap().add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let Some(buffer) = info.buffer() {
            let mut n = counter.lock().unwrap();
            assert_eq!(index_of(buffer), expected[*n % expected.len()], "buffer {n}");
            *n += 1;
        }
        gst::PadProbeReturn::Ok
    });
    pipeline.set_state(gst::State::Playing).unwrap();
    let child = spawn_replay(socket, capture, &["--repeat", &repeat.to_string(), "--quiet"]);
    let bus = pipeline.bus().unwrap();
    let end =
        bus.timed_pop_filtered(gst::ClockTime::from_seconds(300), &[gst::MessageType::Eos, gst::MessageType::Error]);
    assert!(matches!(end.as_ref().map(|m| m.view()), Some(gst::MessageView::Eos(_))), "{end:?}");
    let s = stats(&src);
    pipeline.set_state(gst::State::Null).unwrap();
    let (ok, output) = finish_replay(child);
    assert!(ok, "{capture}: returns missing: {output}");
    let n = *seen.lock().unwrap();
    let counts = ["buffers", "returns-sent", "protocol-errors"].map(|field| stat::<u64>(&s, field));
    assert_eq!(counts, [n as u64, n as u64, 0]);
    n
}

#[test]
fn ten_thousand_buffers_then_null_leave_no_fd_memory_or_thread_behind() {
    // It counts this process's fds and threads: run it alone, in a child process.
    if !alone_in_a_child_process("ten_thousand_buffers_then_null_leave_no_fd_memory_or_thread_behind") {
        return;
    }
    let dir = TempDir::new("src-soak");
    let socket = dir.path("s");
    // Warm up: GStreamer's own once-per-process allocations and its thread pool.
    soak(&socket, "video-pool.jsonl", 1, &[0, 1, 2, 3]);
    soak(&socket, "video-nopool.jsonl", 1, &[0, 1, 2, 3, 4]);
    // Each pipeline's streaming thread ("src:src") goes back to GLib's shared pool at NULL
    // and GLib retires such idle threads at its own pace, so a count taken at any moment
    // varies with the machine's load. Counted once they are told to exit and are gone,
    // before and after: what remains is the main thread and this test's.
    assert!(threads_settle_to(2), "GLib's idle pool threads did not exit: {:?}", thread_names());
    let before = (open_fds(), threads(), memfd_mappings(), rss_kib());
    let started = Instant::now();
    let pooled = soak(&socket, "video-pool.jsonl", 1250, &[0, 1, 2, 3]);
    let pooled_time = started.elapsed();
    let started = Instant::now();
    let unpooled = soak(&socket, "video-nopool.jsonl", 2000, &[0, 1, 2, 3, 4]);
    let unpooled_time = started.elapsed();
    let settled = threads_settle_to(before.1);
    let after = (open_fds(), threads(), memfd_mappings(), rss_kib());
    println!(
        "soak: {pooled} pooled buffers in {pooled_time:?}, {unpooled} unpooled in {unpooled_time:?}; \
         (fds, threads, memfd mappings, RSS KiB) before {before:?} after {after:?}"
    );
    assert_eq!((pooled, unpooled), (10_000, 10_000));
    assert_eq!(after.0, before.0, "fds leaked");
    assert!(settled && after.1 == before.1, "threads leaked: {before:?} -> {after:?}: {:?}", thread_names());
    assert_eq!(after.2, 0, "memfd mappings left");
    assert!(after.3 < before.3 + 4 * 1024, "RSS grew by {} KiB", after.3 - before.3);
    assert!(!socket.exists());
    assert_no_glib_warnings();
}
