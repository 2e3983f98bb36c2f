//! While buffers flow, each send reads the returns that came meanwhile and the fan-out's
//! thread sleeps (`Fanout::set_handoff_below`): a return then wakes no thread. The
//! receivers are `gst-launch-1.0` processes. What must hold: every buffer still comes back,
//! also when the sends stop with buffers out (the thread takes over), and memory whose
//! pool the sink does not know keeps the thread reading every return at once. When the
//! sink's own pool runs dry, the thread asking for a buffer reads the returns itself.

mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use gst::prelude::*;
use gstqtisocket::protocol::{Metas, CLOCK_TIME_NONE};
use gstqtisocket::{Delivery, Destination, Fanout, FanoutOptions, OutgoingBlock, OutgoingBuffer, SlowReceiver};

const CAPS: &str = "video/x-raw,format=NV12,width=64,height=48,framerate=30/1";
const FRAME_SIZE: usize = 4608;
const FRAMES: u64 = 3000;
const WARM_UP: u64 = 200;
/// 4,000 frames/s: closer together than the handoff's 1 ms, and slow enough for a receiver
/// built for debugging to keep up (a receiver that falls behind by half the pool ends the
/// handoff: the thread reads the returns again).
const FRAME_INTERVAL: Duration = Duration::from_micros(250);
/// The sink's pool holds 64 buffers (max-in-flight + 4): the handoff goes on while the
/// receiver holds fewer than 32.
const SINK: &str = "max-in-flight=60 slow-receiver=wait";

/// `qtisocketsrc ! fakesink`, for a process of its own.
const RECEIVER: &str = "qtisocketsrc socket=SOCKET ! fakesink sync=false enable-last-sample=false";

/// A receiver that queues 12 frames and takes 100 µs for each.
const QUEUEING_RECEIVER: &str = "qtisocketsrc socket=SOCKET ! queue max-size-buffers=12 max-size-bytes=0 \
                                 max-size-time=0 ! identity sleep-time=100 ! fakesink sync=false \
                                 enable-last-sample=false";

/// The voluntary context switches of this process's `qsock-fanout` thread: how often
/// it went to sleep, so how often something woke it.
fn fanout_thread_sleeps() -> u64 {
    let find = || {
        let tasks = std::fs::read_dir("/proc/self/task").unwrap();
        tasks
            .map(|t| t.unwrap().path())
            .find(|t| std::fs::read_to_string(t.join("comm")).is_ok_and(|c| c.trim() == "qsock-fanout"))
    };
    // A new thread takes its name once it runs.
    wait_until("the sink runs a qsock-fanout thread", || find().is_some());
    let thread = find().unwrap();
    let status = std::fs::read_to_string(thread.join("status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("voluntary_ctxt_switches:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `receiver` (a pipeline for `gst-launch-1.0`) in a process of its own. Sends it
/// `WARM_UP` frames and waits until they are back (it started and caught up), then
/// `FRAMES` more, each from `next_frame`, one every `pace` (`None`: as fast as they
/// come), and waits until all are back; returns how often the fan-out thread slept
/// meanwhile.
fn thread_sleeps_over(
    receiver: &str,
    sink_properties: &str,
    pace: Option<Duration>,
    mut next_frame: impl FnMut(&gst::Element, u64) -> gst::Buffer,
) -> u64 {
    let tmp = TempDir::new("sink-handoff");
    let mut child = gst_launch_child(&tmp, receiver);
    let (pipeline, src, sink) = appsrc_into_sink(
        CAPS,
        &format!("socket={} wait-for-receiver=true {sink_properties}", path_str(&tmp.path("s"))),
    );
    let mut push = |frames: std::ops::Range<u64>| {
        let start = Instant::now();
        for i in frames.clone() {
            if let Some(pace) = pace {
                let due = start + pace * (i - frames.start) as u32;
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            src.push_buffer(next_frame(&sink, i)).unwrap();
        }
        // The sink renders from appsrc's queue, in its thread: every frame sent, then back.
        wait_until("every frame was sent", || stat::<u64>(&sink, "buffers-sent") == frames.end);
        wait_until("every frame came back", || stat::<u64>(&sink, "in-flight") == 0);
    };
    push(0..WARM_UP);
    let before = fanout_thread_sleeps();
    push(WARM_UP..WARM_UP + FRAMES);
    let sleeps = fanout_thread_sleeps() - before;
    assert_eq!(stat::<u64>(&sink, "dropped"), 0);
    src.end_of_stream().unwrap();
    pipeline.bus().unwrap().timed_pop_filtered(gst::ClockTime::from_seconds(20), &[gst::MessageType::Eos]).unwrap();
    pipeline.set_state(gst::State::Null).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    sleeps
}

/// `FRAMES` frames to a `qtisocketsrc ! fakesink`, one every `FRAME_INTERVAL`.
fn stream(sink_properties: &str, next_frame: impl FnMut(&gst::Element, u64) -> gst::Buffer) -> u64 {
    thread_sleeps_over(RECEIVER, sink_properties, Some(FRAME_INTERVAL), next_frame)
}

fn allocation_query(sink: &gst::Element) -> gst::query::Allocation<gst::Query> {
    let caps = gst::Caps::from_str(CAPS).unwrap();
    let mut query = gst::query::Allocation::new(Some(&caps), true);
    assert!(sink.static_pad("sink").unwrap().query(&mut query));
    query
}

fn offered_allocator(sink: &gst::Element) -> gst::Allocator {
    allocation_query(sink).allocation_params().next().unwrap().0.unwrap()
}

/// The pool the sink offers for CAPS, active.
fn offered_pool(sink: &gst::Element) -> gst::BufferPool {
    let caps = gst::Caps::from_str(CAPS).unwrap();
    let query = allocation_query(sink);
    let (pool, _, _, max) = query.allocation_pools().next().unwrap();
    let pool = pool.unwrap();
    let mut config = pool.config();
    config.set_params(Some(&caps), FRAME_SIZE as u32, 2, max);
    pool.set_config(config).unwrap();
    pool.set_active(true).unwrap();
    pool
}

/// One test at a time: what is counted is scheduling, which a receiver of the other
/// test would disturb (the counts converge on a machine too busy for the receiver to keep
/// up: the handoff then ends, as it should, and the thread reads returns by the batch).
static ALONE: Mutex<()> = Mutex::new(());

#[test]
fn frames_from_the_sinks_pool_come_back_without_waking_the_fanout_thread_for_each() {
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    let mut pool = None;
    let pooled = stream(SINK, |sink, i| {
        let pool = pool.get_or_insert_with(|| offered_pool(sink));
        let mut buffer = pool.acquire_buffer(None).unwrap();
        buffer.get_mut().unwrap().set_pts(gst::ClockTime::from_nseconds(i * 33_333_333));
        buffer
    });
    // The same frames in memfds of no pool (from the allocator the sink offers): the sink
    // cannot know what waits for them, so its thread reads every return at once (and the
    // count above is shown to tell the two apart).
    let unpooled = stream(SINK, |sink, i| {
        let memory = offered_allocator(sink).alloc(FRAME_SIZE, None).unwrap();
        let mut buffer = gst::Buffer::new();
        buffer.get_mut().unwrap().append_memory(memory);
        buffer.get_mut().unwrap().set_pts(gst::ClockTime::from_nseconds(i * 33_333_333));
        buffer
    });
    println!("fan-out thread slept {pooled} times for {FRAMES} pooled frames, {unpooled} for unpooled ones");
    // Pooled: every 1 to 8 ms (the thread looks whether the sends stopped); unpooled: once
    // per return, or per few when it runs late.
    assert!(pooled < FRAMES / 4, "woken {pooled} times for {FRAMES} frames from the sink's pool");
    assert!(pooled < unpooled, "woken {pooled} times for {FRAMES} frames from the sink's pool, {unpooled} unpooled");
}

/// `FRAMES` frames from the pool `make_pool` makes, as fast as it hands them out, into a
/// sink with its default pool size (16), to a `QUEUEING_RECEIVER`: the pool runs dry
/// again and again, with the receiver holding more than half of it.
fn flood(make_pool: impl Fn(&gst::Element) -> gst::BufferPool) -> u64 {
    let mut pool = None;
    thread_sleeps_over(QUEUEING_RECEIVER, "", None, |sink, i| {
        let pool = pool.get_or_insert_with(|| make_pool(sink));
        let mut buffer = pool.acquire_buffer(None).unwrap();
        buffer.get_mut().unwrap().set_pts(gst::ClockTime::from_nseconds(i * 33_333_333));
        buffer
    })
}

#[test]
fn a_dry_pool_of_the_sinks_reads_the_returns_itself_and_the_fanout_thread_sleeps_on() {
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    let ours = flood(offered_pool);
    // The same frames from a pool of someone else's with the same size and allocator: the
    // sink cannot tell who reads what it holds when that pool runs dry, so the sends read
    // the returns only while the receiver holds fewer than half of it.
    let foreign = flood(|sink| {
        let pool: gst::BufferPool = gst_video::VideoBufferPool::new().upcast();
        let (_, _, _, max) = allocation_query(sink).allocation_pools().next().unwrap();
        let mut config = pool.config();
        config.set_params(Some(&gst::Caps::from_str(CAPS).unwrap()), FRAME_SIZE as u32, 2, max);
        config.set_allocator(Some(&offered_allocator(sink)), None);
        pool.set_config(config).unwrap();
        pool.set_active(true).unwrap();
        pool
    });
    println!("fan-out thread slept {ours} times for {FRAMES} frames from the sink's pool, {foreign} from another");
    // The thread looks every 8 ms at most while sends go on, and never for a return;
    // with the other pool, it reads about every return.
    assert!(ours < FRAMES / 4, "woken {ours} times for {FRAMES} frames from the sink's own pool");
    assert!(
        ours * 5 < foreign,
        "woken {ours} times for {FRAMES} frames from the sink's own pool, {foreign} from another"
    );
}

#[test]
fn the_sinks_pool_gives_frames_a_video_meta_and_refuses_caps_that_are_not_video() {
    let tmp = TempDir::new("sink-handoff-pool");
    let (pipeline, _src, sink) = appsrc_into_sink(CAPS, &format!("socket={}", path_str(&tmp.path("s"))));
    let pool = offered_pool(&sink);
    assert!(pool.has_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META));
    let mut config = pool.config();
    assert_eq!(config.params().unwrap().1 as usize, FRAME_SIZE);
    pool.set_active(false).unwrap();
    config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META);
    pool.set_config(config).unwrap();
    pool.set_active(true).unwrap();
    let buffer = pool.acquire_buffer(None).unwrap();
    let info = gst_video::VideoInfo::from_caps(&gst::Caps::from_str(CAPS).unwrap()).unwrap();
    let meta = buffer.meta::<gst_video::VideoMeta>().expect("a video meta on a frame from the sink's pool");
    assert_eq!((meta.format(), meta.width(), meta.height()), (info.format(), 64, 48));
    assert_eq!((meta.offset(), meta.stride()), (info.offset(), info.stride()));
    assert!(buffer.memory(0).unwrap().is_memory_type::<gst_allocators::FdMemory>(), "memfd-backed");
    drop(buffer);
    pool.set_active(false).unwrap();
    let mut config = pool.config();
    config.set_params(Some(&gst::Caps::from_str("text/x-raw,format=utf8").unwrap()), 64, 2, 16);
    assert!(pool.set_config(config).is_err(), "a pool of frames takes video caps only");
    pipeline.set_state(gst::State::Null).unwrap();
}

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given; RUSAGE_THREAD is this thread's.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut usage), 0);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

#[test]
fn a_producer_waiting_on_the_sinks_dry_pool_sleeps_through_a_flush_and_gets_a_buffer_once_the_receiver_dies() {
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = TempDir::new("sink-handoff-flush");
    // Takes one buffer and keeps it (and reads no more): the pool runs dry.
    let mut child = gst_launch_child(&tmp, "qtisocketsrc socket=SOCKET ! identity sleep-time=100000000 ! fakesink");
    // Pushed from the producer's thread (as a source element does), so every buffer it
    // took is out by the time it asks for the next.
    init();
    let pipeline = gst::Pipeline::new();
    let sink = gst::ElementFactory::make("qtisocketsink")
        .property("socket", path_str(&tmp.path("s")))
        .property("wait-for-receiver", true)
        .property("sync", false)
        .build()
        .unwrap();
    pipeline.add(&sink).unwrap();
    let src = gst::Pad::builder(gst::PadDirection::Src).name("frames").build();
    src.link(&sink.static_pad("sink").unwrap()).unwrap();
    src.set_active(true).unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    src.push_event(gst::event::StreamStart::new("frames"));
    src.push_event(gst::event::Caps::new(&gst::Caps::from_str(CAPS).unwrap()));
    src.push_event(gst::event::Segment::new(&gst::FormattedSegment::<gst::ClockTime>::new()));
    let pool = offered_pool(&sink);
    let producer = std::thread::spawn({
        let pool = pool.clone();
        let src = src.clone();
        move || {
            let mut sent = 0;
            loop {
                let (cpu, started) = (thread_cpu(), Instant::now());
                let buffer = pool.acquire_buffer(None).expect("a buffer, in the end");
                let (cpu, waited) = (thread_cpu() - cpu, started.elapsed());
                if waited > Duration::from_millis(500) {
                    return (sent, cpu, waited);
                }
                src.push(buffer).unwrap();
                sent += 1;
            }
        }
    });
    wait_until("the pool ran dry", || stat::<u64>(&sink, "in-flight") == 16);
    std::thread::sleep(Duration::from_millis(100));
    let pad = sink.static_pad("sink").unwrap();
    assert!(pad.send_event(gst::event::FlushStart::new()));
    std::thread::sleep(Duration::from_millis(300));
    assert!(pad.send_event(gst::event::FlushStop::new(false)));
    std::thread::sleep(Duration::from_millis(100));
    assert!(!producer.is_finished(), "no buffer while the receiver holds them all");
    child.kill().unwrap();
    let _ = child.wait();
    let (sent, cpu, waited) = producer.join().unwrap();
    println!("sent {sent}, then waited {waited:?} for a buffer, using {cpu:?} of CPU");
    assert_eq!(sent, 16);
    assert!(cpu < Duration::from_millis(100), "a producer waiting for a buffer used {cpu:?} of CPU in {waited:?}");
    let _ = pool.set_active(false);
    pipeline.set_state(gst::State::Null).unwrap();
    src.set_active(false).unwrap();
}

/// A hold that counts itself dropped.
struct Hold(Arc<AtomicUsize>);

impl Drop for Hold {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn buffers_still_out_when_the_sends_stop_come_back() {
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    // A producer whose pool has run dry sends nothing more: the thread must take over
    // the returns the sends were reading.
    let tmp = TempDir::new("fanout-handoff");
    let mut child = gst_launch_child(&tmp, RECEIVER);
    let options = FanoutOptions { max_in_flight: None, slow_receiver: SlowReceiver::Wait };
    let fanout: Fanout<Hold> = Fanout::start(Destination::Socket(tmp.path("s")), options, Box::new(|_| {})).unwrap();
    fanout.set_handoff_below(usize::MAX);
    let memfds: Vec<OwnedFd> = (0..8).map(|i| memfd(FRAME_SIZE as u64, i)).collect();
    let dropped = Arc::new(AtomicUsize::new(0));
    for round in 0..20u64 {
        for (i, fd) in memfds.iter().enumerate() {
            let index = round * 8 + i as u64;
            let buffer = OutgoingBuffer {
                blocks: vec![OutgoingBlock { fd: Some(fd.as_fd()), description: nv12_64x48(FRAME_SIZE as u64) }],
                pts: index * 33_333_333,
                dts: CLOCK_TIME_NONE,
                duration: 33_333_333,
                pooled: true,
                metas: Metas::default(),
            };
            // Waits for the receiver the first time.
            assert_eq!(fanout.send(&buffer, Hold(dropped.clone()), true), Delivery::Sent { receivers: 1 });
        }
        // Every memfd is out: like a dry pool, wait for all of them to come back.
        let all = (round as usize + 1) * memfds.len();
        let deadline = Instant::now() + Duration::from_secs(20);
        while dropped.load(Ordering::SeqCst) < all {
            assert!(Instant::now() < deadline, "round {round}: {} of {all} back", dropped.load(Ordering::SeqCst));
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    assert_eq!(fanout.stats().in_flight, 0);
    assert_eq!(fanout.stats().returns, 160);
    drop(fanout);
    let _ = child.kill();
    let _ = child.wait();
}
