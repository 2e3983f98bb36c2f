//! `qtisocketsink` → `qtisocketsrc` (another process) at about 1000 frames/s on a busy
//! machine (two busy loops for the test's duration): the sink's socket fills while the
//! receiver's returns fill the other way. Neither end may wait on the other: no send
//! that times out, no receiver dropped for "not reading", every frame delivered in order.
//! Upstream memory is not from a pool: system memory that the sink copies, and memfds
//! from the sink's allocator, a new one per frame (nothing then bounds what is in flight).
//! Its own test binary: the busy loops would slow every other test.

mod common;

use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use gst::prelude::*;

const CAPS: &str = "video/x-raw,format=NV12,width=64,height=48,framerate=1000/1";
const FRAME_SIZE: usize = 4608;
const FRAMES: u64 = 3000;
const FRAME_NS: u64 = 1_000_000;

/// Two threads that spin until dropped: a busy machine.
struct CpuLoad {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuLoad {
    fn start() -> CpuLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..2)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut spins = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        spins = std::hint::black_box(spins.wrapping_add(1));
                    }
                })
            })
            .collect();
        CpuLoad { stop, threads }
    }
}

impl Drop for CpuLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Frame `i`: its index in the first 8 bytes, then a pattern that depends on it.
fn frame(i: u64) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..FRAME_SIZE).map(|b| (b % 251) as u8 ^ i as u8).collect();
    bytes[..8].copy_from_slice(&i.to_le_bytes());
    bytes
}

/// `gst-launch-1.0 qtisocketsrc ! filesink` in a child process, writing every frame to `out`.
fn receiver_process(dir: &TempDir, out: &Path) -> Child {
    gst_launch_child(
        dir,
        &format!("qtisocketsrc socket=SOCKET ! {CAPS} ! filesink buffer-mode=unbuffered location={}", path_str(out)),
    )
}

/// What the sink offers upstream for memory: its memfd allocator.
fn offered_allocator(sink: &gst::Element) -> gst::Allocator {
    let caps = gst::Caps::builder_full().structure(CAPS.parse::<gst::Structure>().unwrap()).build();
    let mut query = gst::query::Allocation::new(Some(&caps), true);
    assert!(sink.static_pad("sink").unwrap().query(&mut query), "allocation query refused");
    query.allocation_params().next().and_then(|(a, _)| a.clone()).expect("an allocator is offered")
}

/// Pushes every frame at about 1000 frames/s (`make` builds the buffer), then EOS, and
/// checks what both ends saw. `expect_copies`: whether the sink had to copy the memory.
fn stream_under_load(tag: &str, mut make: impl FnMut(&gst::Element, u64) -> gst::Buffer, expect_copies: bool) {
    // One stream at a time: two would load the machine twice.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new(tag);
    let out = dir.path("frames.raw");
    let receiver = receiver_process(&dir, &out);
    let (pipeline, src, sink) = sender_pipeline(&dir.path("s"), CAPS, "wait-for-receiver=true");
    let load = CpuLoad::start();
    let started = Instant::now();
    for i in 0..FRAMES {
        let mut buffer = make(&sink, i);
        {
            let b = buffer.get_mut().unwrap();
            b.set_pts(gst::ClockTime::from_nseconds(i * FRAME_NS));
            b.set_duration(gst::ClockTime::from_nseconds(FRAME_NS));
        }
        src.push_buffer(buffer).unwrap();
        // About 1000 frames/s: never ahead of the clock, catching up when behind.
        let due = started + Duration::from_nanos((i + 1) * FRAME_NS);
        if let Some(early) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(early);
        }
    }
    src.end_of_stream().unwrap();
    let bus = pipeline.bus().unwrap();
    let end = bus
        .timed_pop_filtered(gst::ClockTime::from_seconds(60), &[gst::MessageType::Eos, gst::MessageType::Error])
        .expect("the sender stalled: neither EOS nor an error within 60 s");
    let elapsed = started.elapsed();
    drop(load);
    if let gst::MessageView::Error(e) = end.view() {
        panic!("the sender failed: {} ({:?})", e.error(), e.debug());
    }
    let stats: gst::Structure = sink.property("stats");
    pipeline.set_state(gst::State::Null).unwrap();
    let output = receiver.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the receiver failed (dropped by the sender?): {text}");
    assert!(!text.contains("hung up"), "{text}");

    assert_eq!(stat::<u64>(&stats, "buffers-sent"), FRAMES, "{stats}");
    assert_eq!(stat::<u64>(&stats, "dropped"), 0, "a send failed: {stats}");
    assert_eq!(stat::<u64>(&stats, "in-flight"), 0, "{stats}");
    assert_eq!(stat::<u64>(&stats, "copies") > 0, expect_copies, "{stats}");
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(bytes.len(), FRAMES as usize * FRAME_SIZE, "{} of {FRAMES} frames arrived", bytes.len() / FRAME_SIZE);
    for (i, received) in bytes.chunks(FRAME_SIZE).enumerate() {
        assert!(received == frame(i as u64), "frame {i} differs");
    }
    println!("{tag}: {FRAMES} frames in {elapsed:?}, {stats}");
    assert_no_glib_warnings();
}

#[test]
fn system_memory_at_1000_frames_per_second_under_cpu_load_never_stalls() {
    stream_under_load("backpressure-copied", |_, i| gst::Buffer::from_mut_slice(frame(i)), true);
}

#[test]
fn unpooled_memfds_at_1000_frames_per_second_under_cpu_load_never_stall() {
    let mut allocator = None;
    stream_under_load(
        "backpressure-memfds",
        |sink, i| {
            let memory = allocator.get_or_insert_with(|| offered_allocator(sink)).alloc(FRAME_SIZE, None).unwrap();
            let mut buffer = gst::Buffer::new();
            buffer.get_mut().unwrap().append_memory(memory);
            buffer.get_mut().unwrap().map_writable().unwrap().copy_from_slice(&frame(i));
            buffer
        },
        false,
    );
}
