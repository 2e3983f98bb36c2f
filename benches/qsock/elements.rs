//! Element level, two processes: a sender (`qtisocketsink`, or `shmsink` / `unixfdsink`
//! for the baselines) fed NV12 frames from the buffer pool its sink proposes (so neither
//! side copies unless its sink must), pushed from the producer's own thread as a source
//! element pushes from its streaming thread, and a
//! receiver pipeline (`qtisocketsrc ! fakesink`, `shmsrc ! fakesink` or
//! `unixfdsrc ! fakesink`) whose probe reads each frame's
//! first 16 bytes: the sender's index (each must follow the last) and its send time.
//! Each side reports its CPU time while streaming and its peak RSS.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;
use serde::{Deserialize, Serialize};

use crate::measure::{cpu_time, now_ns, open_fds, peak_rss_kib, percentiles_us, rss_kib};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transport {
    Ours,
    /// shmsink → shmsrc, upstream writing into the shared memory shmsink offers.
    Shm,
    /// shmsink → shmsrc, frames from the producer's own pool (a camera's or decoder's
    /// memory): shmsink copies each into its shared memory.
    ShmCopy,
    /// unixfdsink → unixfdsrc (GStreamer ≥ 1.24, in gst-plugins-bad): fds over a UNIX
    /// socket too, upstream writing into the memfds of the allocator unixfdsink proposes.
    /// One unixfdsink serves any number of unixfdsrc clients.
    UnixFd,
}

impl Transport {
    pub fn parse(s: &str) -> Transport {
        match s {
            "ours" => Transport::Ours,
            "shm" => Transport::Shm,
            "shm-copy" => Transport::ShmCopy,
            "unixfd" => Transport::UnixFd,
            other => panic!("unknown transport {other}"),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Transport::Ours => "ours",
            Transport::Shm => "shm",
            Transport::ShmCopy => "shm-copy",
            Transport::UnixFd => "unixfd",
        }
    }
}

/// What a sender process reports.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct SendReport {
    pub buffers: u64,
    pub cpu_s: f64,
    pub peak_rss_kib: u64,
    /// (RSS KiB, open fds) after the first 10,000 buffers and at the end (soak).
    pub rss_fds_early: (u64, usize),
    pub rss_fds_end: (u64, usize),
}

/// What a receiver process reports.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct RecvReport {
    pub buffers: u64,
    /// From the first buffer to the last.
    pub seconds: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub cpu_s: f64,
    pub peak_rss_kib: u64,
    /// Buffers whose index was not the one after the previous buffer's.
    pub out_of_order: u64,
    pub rss_fds_early: (u64, usize),
    pub rss_fds_end: (u64, usize),
    /// `stats` reads made by a thread polling them meanwhile (`STATS_READER_ENV` set).
    #[serde(default)]
    pub stats_reads: u64,
}

/// Set in a receiver's environment: a thread reads the source's `stats` in a loop while
/// the stream runs, as an application polling them would.
pub const STATS_READER_ENV: &str = "QSOCK_BENCH_STATS_READER";

fn frame_bytes(width: u32, height: u32) -> usize {
    (width * height * 3 / 2) as usize
}

fn caps(width: u32, height: u32) -> gst::Caps {
    gst_video::VideoInfo::builder(gst_video::VideoFormat::Nv12, width, height)
        .fps(gst::Fraction::new(30, 1))
        .build()
        .unwrap()
        .to_caps()
        .unwrap()
}

/// The most buffers a pair's producer has (as a camera driver has a fixed number): the
/// same for every transport, so that none queues deeper than another. 8: what the
/// producer gets when the sink proposes no pool (shmsink, unixfdsink), and what
/// qtisocketsink's pool (up to 16) is cut to.
pub const PAIR_PRODUCER_BUFFERS: u32 = 8;

/// The pool the sink proposes for `caps`, or one of ours with the allocator it proposes,
/// with at most `buffers` out.
fn pool_from_sink(src: &gst::Pad, caps: &gst::Caps, size: usize, buffers: u32) -> gst::BufferPool {
    let mut query = gst::query::Allocation::new(Some(caps), true);
    assert!(src.peer_query(&mut query), "the sink answers the allocation query");
    let (pool, min, max) = match query.allocation_pools().next() {
        Some((Some(pool), _, min, max)) => (pool, min, max),
        _ => (gst_video::VideoBufferPool::new().upcast(), 2, buffers),
    };
    let allocator = query.allocation_params().next();
    let mut config = pool.config();
    config.set_params(Some(caps), size as u32, min.max(2), if max == 0 { buffers } else { max.min(buffers) });
    config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META.as_ref());
    if let Some((allocator, params)) = allocator {
        config.set_allocator(allocator.as_ref(), Some(&params));
    }
    pool.set_config(config).unwrap();
    pool.set_active(true).unwrap();
    pool
}

/// A pool of system-memory frames, as a producer with memory of its own has.
fn own_pool(caps: &gst::Caps, size: usize, buffers: u32) -> gst::BufferPool {
    let pool: gst::BufferPool = gst_video::VideoBufferPool::new().upcast();
    let mut config = pool.config();
    config.set_params(Some(caps), size as u32, 2, buffers);
    pool.set_config(config).unwrap();
    pool.set_active(true).unwrap();
    pool
}

/// Sends frames for `duration` (or `count` frames), then EOS; prints a [`SendReport`].
pub fn sender(transport: Transport, socket: &Path, width: u32, height: u32, duration: Duration, count: Option<u64>) {
    let size = frame_bytes(width, height);
    let sink = match transport {
        Transport::Ours => format!("qtisocketsink socket={} wait-for-receiver=true sync=false", socket.display()),
        Transport::Shm | Transport::ShmCopy => format!(
            "shmsink socket-path={} wait-for-connection=true sync=false shm-size={}",
            socket.display(),
            size * 12 + (1 << 20)
        ),
        Transport::UnixFd => format!("unixfdsink socket-path={} wait-for-connection=true sync=false", socket.display()),
    };
    let frames = Frames {
        width,
        height,
        duration,
        count,
        own_pool: transport == Transport::ShmCopy,
        pace: None,
        buffers: PAIR_PRODUCER_BUFFERS,
    };
    let eos_answered = matches!(transport, Transport::Ours | Transport::UnixFd);
    send_frames(&sink, frames, eos_answered, |_| {});
}

/// What a sender pushes: `width`x`height` NV12 frames for `duration` (or `count` frames),
/// from the pool the sink proposes, or with `own_pool` from a system-memory pool.
pub struct Frames {
    pub width: u32,
    pub height: u32,
    pub duration: Duration,
    pub count: Option<u64>,
    pub own_pool: bool,
    /// One frame per this interval; `None`: as fast as the sink takes them.
    pub pace: Option<Duration>,
    /// The most frames the producer's pool has out at once.
    pub buffers: u32,
}

/// SINK (the pipeline, its first pad free) fed by a pad of the producer's, which pushes
/// from this thread: sends `frames`, then EOS; prints a [`SendReport`]. `ready` runs once
/// the pipeline plays, before the first frame. `eos_answered`: the sink posts EOS once
/// its receivers are done (else a short wait).
///
/// No `appsrc`: its queue would hand every frame to a thread of its own, a hop a camera
/// or decoder element (which pushes from its streaming thread) does not make, and one
/// that would cost every transport measured here a thread wake-up per frame.
pub fn send_frames(sink: &str, frames: Frames, eos_answered: bool, ready: impl FnOnce(&gst::Pipeline)) {
    gst::init().unwrap();
    gstqtisocket::plugin_register_static().unwrap();
    let Frames { width, height, duration, count, own_pool: copied, pace, buffers } = frames;
    let size = frame_bytes(width, height);
    let caps = caps(width, height);
    let pipeline = gst::Pipeline::new();
    let bin = gst::parse::bin_from_description(sink, true).unwrap();
    pipeline.add(&bin).unwrap();
    let src = gst::Pad::builder(gst::PadDirection::Src).name("frames").build();
    src.link(&bin.static_pad("sink").unwrap()).unwrap();
    src.set_active(true).unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    src.push_event(gst::event::StreamStart::new("frames"));
    src.push_event(gst::event::Caps::new(&caps));
    src.push_event(gst::event::Segment::new(&gst::FormattedSegment::<gst::ClockTime>::new()));
    let pool = if copied { own_pool(&caps, size, buffers) } else { pool_from_sink(&src, &caps, size, buffers) };
    ready(&pipeline);

    let mut report = SendReport::default();
    let mut cpu_start = None;
    let started = Instant::now();
    let (done, watchdog) = std::sync::mpsc::channel::<()>();
    if count.is_none() {
        // A sink that blocks for good (unixfdsink waiting for clients that left) must not
        // hang the run: 3 s after its end the pipeline stops, which ends the push.
        let pipeline = pipeline.clone();
        std::thread::spawn(move || {
            if watchdog.recv_timeout(duration + Duration::from_secs(3)).is_err() {
                let _ = pipeline.set_state(gst::State::Null);
            }
        });
    }
    let mut index = 0u64;
    while count.map_or(started.elapsed() < duration, |n| index < n) {
        if let Some(pace) = pace {
            let due = started + pace * index as u32;
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let mut buffer = pool.acquire_buffer(None).unwrap();
        {
            let buffer = buffer.get_mut().unwrap();
            buffer.set_pts(gst::ClockTime::from_nseconds(index * 33_333_333));
            let mut map = buffer.map_writable().unwrap();
            map[..8].copy_from_slice(&index.to_le_bytes());
            map[8..16].copy_from_slice(&now_ns().to_le_bytes());
        }
        if src.push(buffer).is_err() {
            break;
        }
        if index == 0 {
            cpu_start = Some(cpu_time());
        }
        index += 1;
        if index == 10_000 {
            report.rss_fds_early = (rss_kib(), open_fds());
        }
    }
    let _ = done.send(());
    report.buffers = index;
    report.cpu_s = (cpu_time() - cpu_start.unwrap_or_default()).as_secs_f64();
    // From another thread: EOS waits in the sink until its receivers are done (ours for
    // at most a few seconds; unixfdsink for as long as a client holds a frame), and the
    // wait below is bounded. Setting the pipeline to NULL ends it.
    std::thread::spawn(move || src.push_event(gst::event::Eos::new()));
    let bus = pipeline.bus().unwrap();
    if eos_answered {
        // Our sink's EOS waits for the receiver to return every buffer; unixfdsink sends
        // its clients EOS.
        bus.timed_pop_filtered(gst::ClockTime::from_seconds(10), &[gst::MessageType::Eos, gst::MessageType::Error]);
    } else {
        std::thread::sleep(Duration::from_millis(500)); // let shmsrc read the last frames
    }
    report.rss_fds_end = (rss_kib(), open_fds());
    report.peak_rss_kib = peak_rss_kib();
    pipeline.set_state(gst::State::Null).unwrap();
    let _ = pool.set_active(false);
    println!("{}", serde_json::to_string(&report).unwrap());
}

const LATENCY_SAMPLES: usize = 1 << 17;

struct Probe {
    first: Option<Instant>,
    last: Option<Instant>,
    latencies: Vec<u64>,
    next_index: u64,
    out_of_order: u64,
    cpu_start: Duration,
    buffers: u64,
    early: (u64, usize),
}

/// Receives until no frame came for `idle` after the first; prints a [`RecvReport`].
pub fn receiver(transport: Transport, socket: &Path, idle: Duration) {
    gst::init().unwrap();
    gstqtisocket::plugin_register_static().unwrap();
    let src = match transport {
        Transport::Ours => format!("qtisocketsrc name=src socket={} socket-mode=0600", socket.display()),
        Transport::Shm | Transport::ShmCopy => format!("shmsrc socket-path={} is-live=true", socket.display()),
        Transport::UnixFd => format!("unixfdsrc socket-path={}", socket.display()),
    };
    let pipeline =
        gst::parse::launch(&format!("{src} ! fakesink name=sink sync=false enable-last-sample=false")).unwrap();
    let pipeline = pipeline.downcast::<gst::Pipeline>().unwrap();
    let probe = Arc::new(Mutex::new(Probe {
        first: None,
        last: None,
        // Written through before streaming, so that keeping samples does not grow the
        // RSS the soak watches; the last LATENCY_SAMPLES buffers' latencies are kept.
        latencies: vec![u64::MAX; LATENCY_SAMPLES],
        next_index: 0,
        out_of_order: 0,
        cpu_start: Duration::ZERO,
        buffers: 0,
        early: (0, 0),
    }));
    let state = probe.clone();
    let sink_pad = pipeline.by_name("sink").unwrap().static_pad("sink").unwrap();
    sink_pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let Some(buffer) = info.buffer() else { return gst::PadProbeReturn::Ok };
        let memory = buffer.peek_memory(0);
        let Ok(map) = memory.map_readable() else { return gst::PadProbeReturn::Ok };
        if map.len() < 16 {
            return gst::PadProbeReturn::Ok;
        }
        let index = u64::from_le_bytes(map[..8].try_into().unwrap());
        let sent = u64::from_le_bytes(map[8..16].try_into().unwrap());
        let mut s = state.lock().unwrap();
        let now = Instant::now();
        if s.first.is_none() {
            s.first = Some(now);
            s.cpu_start = cpu_time();
            // A unixfdsrc that joins a running unixfdsink (fan-out) starts mid-stream.
            s.next_index = index;
        }
        s.last = Some(now);
        let slot = s.buffers as usize % LATENCY_SAMPLES;
        s.latencies[slot] = now_ns().saturating_sub(sent);
        if index != s.next_index {
            s.out_of_order += 1;
        }
        s.next_index = index + 1;
        s.buffers += 1;
        if s.buffers == 10_000 {
            s.early = (rss_kib(), open_fds());
        }
        gst::PadProbeReturn::Ok
    });
    if transport != Transport::Ours {
        // shmsink (unixfdsink) makes the socket; shmsrc (unixfdsrc) fails to start until
        // it is there.
        let started = Instant::now();
        while !socket.exists() {
            assert!(started.elapsed() < Duration::from_secs(10), "no shmsink at {}", socket.display());
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let bus = pipeline.bus().unwrap();
    let started = Instant::now();
    // unixfdsink's socket file exists a moment before it listens: a unixfdsrc that
    // connects then is refused (at start, or by an error message). Started again until
    // its first frame, for up to 10 s.
    let restart = || {
        let retry = transport == Transport::UnixFd && started.elapsed() < Duration::from_secs(10);
        if retry {
            pipeline.set_state(gst::State::Null).unwrap();
            while bus.pop().is_some() {}
            std::thread::sleep(Duration::from_millis(10));
        }
        retry
    };
    while let Err(e) = pipeline.set_state(gst::State::Playing) {
        assert!(restart(), "the receiver did not start: {e}");
    }
    let reading = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let reader = (transport == Transport::Ours && std::env::var_os(STATS_READER_ENV).is_some()).then(|| {
        let (src, reading) = (pipeline.by_name("src").unwrap(), reading.clone());
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while reading.load(std::sync::atomic::Ordering::Relaxed) {
                drop(src.property::<gst::Structure>("stats"));
                reads += 1;
            }
            reads
        })
    });
    loop {
        let message = bus
            .timed_pop_filtered(gst::ClockTime::from_mseconds(50), &[gst::MessageType::Eos, gst::MessageType::Error]);
        if let Some(message) = message {
            if let gst::MessageView::Error(e) = message.view() {
                let not_yet = transport == Transport::UnixFd && probe.lock().unwrap().first.is_none();
                if not_yet && restart() {
                    while let Err(e) = pipeline.set_state(gst::State::Playing) {
                        assert!(restart(), "the receiver did not start: {e}");
                    }
                    continue;
                }
                // shmsrc reports its sender leaving as an error: that is its end of stream.
                if transport == Transport::Ours || not_yet {
                    eprintln!("receiver error: {} {:?}", e.error(), e.debug());
                }
            }
            break;
        }
        let s = probe.lock().unwrap();
        if s.last.is_some_and(|last| last.elapsed() > idle) {
            break;
        }
    }
    reading.store(false, std::sync::atomic::Ordering::Relaxed);
    let stats_reads = reader.map_or(0, |r| r.join().unwrap());
    let mut s = probe.lock().unwrap();
    let cpu_s = (cpu_time() - s.cpu_start).as_secs_f64();
    let seconds = match (s.first, s.last) {
        (Some(first), Some(last)) => (last - first).as_secs_f64(),
        _ => 0.0,
    };
    let kept = (s.buffers as usize).min(LATENCY_SAMPLES);
    let (p50_us, p99_us) = percentiles_us(&mut s.latencies[..kept]);
    let report = RecvReport {
        buffers: s.buffers,
        seconds,
        p50_us,
        p99_us,
        cpu_s,
        peak_rss_kib: peak_rss_kib(),
        out_of_order: s.out_of_order,
        rss_fds_early: s.early,
        rss_fds_end: (rss_kib(), open_fds()),
        stats_reads,
    };
    drop(s);
    pipeline.set_state(gst::State::Null).unwrap();
    println!("{}", serde_json::to_string(&report).unwrap());
}
