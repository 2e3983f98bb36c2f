//! `qtisocketsrc` driven as users drive a live pipeline: paused and resumed mid-stream,
//! senders stopped, killed and restarted (ours, and one that behaves as the deployed
//! sink does: it removes the socket file when it handles DISCONNECT or a hang-up), a
//! `sync=true` sink rendering at the sender's pace, and `stats` read from another thread
//! while the stream runs. Every sender is another process.

mod common;

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use gst::prelude::*;
use gstqtisocket::protocol::{Metas, CLOCK_TIME_NONE};
use gstqtisocket::{Event, OutgoingBlock, OutgoingBuffer, Receiver, Sender, SenderEvent};

const WAIT: Duration = Duration::from_secs(10);
const FRAME: Duration = Duration::from_nanos(33_333_333);

/// One buffer as the receiving application saw it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// The buffer's PTS (with `timestamp-mode=sender`: the sender's running time).
    pts: u64,
    /// The first 8 bytes of its memory (the frame index, from the deployed-like sender).
    first8: u64,
    arrival: Instant,
}

/// `qtisocketsrc socket=SOCKET PROPS ! appsink`, recording every buffer.
struct ReceivingPipeline {
    running: Running,
    seen: Arc<Mutex<Vec<Seen>>>,
    eos: Arc<AtomicBool>,
}

impl ReceivingPipeline {
    fn start(socket: &Path, props: &str) -> ReceivingPipeline {
        let running = Running::launch(&format!(
            "qtisocketsrc name=src socket={} {props} ! appsink name=sink sync=false enable-last-sample=false",
            path_str(socket)
        ));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let eos = Arc::new(AtomicBool::new(false));
        // Recorded as the source pushes them: a sink holds the buffer it prerolled on
        // through a pause, which says nothing about the transport.
        let (seen_probe, eos_cb) = (seen.clone(), eos.clone());
        running.element("src").static_pad("src").unwrap().add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(buffer) = info.buffer() {
                let map = buffer.map_readable().unwrap();
                let first8 = u64::from_le_bytes(map[..8].try_into().unwrap());
                let pts = buffer.pts().unwrap().nseconds();
                seen_probe.lock().unwrap().push(Seen { pts, first8, arrival: Instant::now() });
            }
            gst::PadProbeReturn::Ok
        });
        let sink = running.element("sink").downcast::<gst_app::AppSink>().unwrap();
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(|sink| {
                    sink.pull_sample().map(drop).map(|_| gst::FlowSuccess::Ok).map_err(|_| gst::FlowError::Eos)
                })
                .eos(move |_| eos_cb.store(true, Ordering::SeqCst))
                .build(),
        );
        ReceivingPipeline { running, seen, eos }
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn src(&self) -> gst::Element {
        self.running.element("src")
    }

    fn set_state(&self, state: gst::State) {
        self.running.0.set_state(state).unwrap();
        let (result, current, _) = self.running.0.state(gst::ClockTime::from_seconds(5));
        result.unwrap();
        assert_eq!(current, state);
    }

    /// Waits for `n` more buffers than now, failing the test after `within`.
    fn wait_for_more(&self, n: usize, within: Duration, what: &str) -> Instant {
        let start = self.count();
        let asked = Instant::now();
        while self.count() < start + n {
            assert!(asked.elapsed() < within, "{what}: {} of {n} buffers within {within:?}", self.count() - start);
            assert_no_error(&self.running.0);
            std::thread::sleep(Duration::from_millis(2));
        }
        asked
    }

    fn wait_for_eos(&self) {
        wait_until("EOS at the appsink", || {
            assert_no_error(&self.running.0);
            self.eos.load(Ordering::SeqCst)
        });
    }
}

fn assert_no_error(pipeline: &gst::Pipeline) {
    let bus = pipeline.bus().unwrap();
    if let Some(message) = bus.pop_filtered(&[gst::MessageType::Error]) {
        panic!("error on the receiving pipeline: {message:?}");
    }
}

fn stat(element: &gst::Element, field: &str) -> u64 {
    element.property::<gst::Structure>("stats").get::<u64>(field).unwrap()
}

/// PTS strictly increasing; and fresh: a buffer's arrival minus its sender PTS is the same
/// for all (the transport's latency) within `slack`. A frame queued before a pause and
/// delivered after it would arrive late by the pause's length.
fn assert_in_order_and_fresh(seen: &[Seen], slack: Duration) {
    for pair in seen.windows(2) {
        assert!(pair[1].pts > pair[0].pts, "PTS went backwards: {:?} then {:?}", pair[0], pair[1]);
    }
    let origin = seen[0].arrival;
    let lag = |s: &Seen| s.arrival.duration_since(origin).as_nanos() as i128 - s.pts as i128;
    let least = seen.iter().map(lag).min().unwrap();
    if std::env::var_os("QSOCK_DEBUG_LAG").is_some() {
        for s in seen {
            eprintln!("{} {:?}", s.first8, Duration::from_nanos((lag(s) - least) as u64));
        }
    }
    for s in seen {
        let late = Duration::from_nanos((lag(s) - least) as u64);
        assert!(late < slack, "a stale buffer: {s:?} arrived {late:?} later than the freshest");
    }
}

/// Five pauses mid-stream, each resumed: fresh frames within a second of each resume.
fn pause_and_resume_five_times(receiver: &ReceivingPipeline) {
    receiver.wait_for_more(10, WAIT, "before the first pause");
    for cycle in 0..5 {
        receiver.set_state(gst::State::Paused);
        std::thread::sleep(Duration::from_millis(400));
        let during_pause = receiver.count();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(receiver.count(), during_pause, "cycle {cycle}: buffers came out while PAUSED");
        receiver.set_state(gst::State::Playing);
        receiver.wait_for_more(5, Duration::from_secs(1), &format!("cycle {cycle}: after resuming"));
    }
}

// ---------------------------------------------------------------------------------------
// A sender that behaves as the deployed qtisocketsink: 30 frames a second, each a new
// memfd whose first 8 bytes are its index; dropped while not connected; on DISCONNECT it
// stops, waits for its buffers, closes, removes the socket file and connects again every
// 10 ms; on a hang-up it also removes the file. It stops when the file `stop` exists:
// with EOS when it says "eos", else by hanging up (and removing the socket file).

const DEPLOYED_SENDER_ENV: &str = "QSOCK_DEPLOYED_LIKE_SENDER";

/// A sender process, killed and reaped when dropped: a failed assertion leaves none behind.
struct Reaped(Child);

impl std::ops::Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_deployed_like_sender(socket: &Path) -> Reaped {
    let _ = std::fs::remove_file(stop_file(socket));
    Reaped(
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "deployed_like_sender_unlinks_on_disconnect_and_the_receiver_binds_again", "--nocapture"])
            .env(DEPLOYED_SENDER_ENV, socket)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn stop_file(socket: &Path) -> PathBuf {
    socket.with_extension("stop")
}

fn stop_deployed_like_sender(socket: &Path, mut child: Reaped, with_eos: bool) {
    std::fs::write(stop_file(socket), if with_eos { "eos" } else { "hang up" }).unwrap();
    assert!(child.wait().unwrap().success());
}

fn deployed_like_sender(socket: &Path) {
    let started = Instant::now();
    let mut index = 0u64;
    let mut sender: Option<Sender> = None;
    // Each memfd stays open until returned: its number is its buf_id.
    let mut in_flight: HashMap<i32, OwnedFd> = HashMap::new();
    let parent = rustix::process::getppid();
    let stop = loop {
        if let Ok(stop) = std::fs::read_to_string(stop_file(socket)) {
            break stop;
        }
        if rustix::process::getppid() != parent {
            return; // the test that started us failed and went
        }
        // Frame `index` is due at `index` frame durations.
        let due = started + FRAME * index as u32;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        if sender.is_none() {
            sender = Sender::connect(socket).ok(); // the deployed sink retries every 10 ms
        }
        if let Some(s) = &mut sender {
            let memory = memfd(4608, index);
            let pts = index * FRAME.as_nanos() as u64;
            let block = OutgoingBlock { fd: Some(memory.as_fd()), description: nv12_64x48(4608) };
            let buffer = OutgoingBuffer {
                blocks: vec![block],
                pts,
                dts: CLOCK_TIME_NONE,
                duration: FRAME.as_nanos() as u64,
                pooled: false,
                metas: Metas::default(),
            };
            let mut gone = s.send(&buffer).is_err();
            in_flight.insert(memory.as_raw_fd(), memory);
            while let Ok(Some(event)) = s.next_event(Some(Duration::ZERO)) {
                match event {
                    SenderEvent::Returned(ids) => ids.iter().for_each(|id| drop(in_flight.remove(id))),
                    SenderEvent::Disconnect => {
                        // Stop, take every buffer back, then go (the deployed sink's drain).
                        while s.in_flight() > 0
                            && matches!(s.next_event(Some(WAIT)), Ok(Some(SenderEvent::Returned(_))))
                        {
                        }
                        gone = true;
                        break;
                    }
                    SenderEvent::ReceiverGone => {
                        gone = true;
                        break;
                    }
                }
            }
            if gone {
                sender = None;
                in_flight.clear();
                let _ = std::fs::remove_file(socket); // what the deployed sink does
            }
        }
        // Frames due while it was busy (draining) were never made: a live source goes on.
        index = (index + 1).max((started.elapsed().as_nanos() / FRAME.as_nanos()) as u64 + 1);
    };
    if let Some(mut s) = sender {
        if stop == "eos" {
            s.send_eos().unwrap();
            while s.in_flight() > 0 && matches!(s.next_event(Some(WAIT)), Ok(Some(SenderEvent::Returned(_)))) {}
        }
        drop(s);
        let _ = std::fs::remove_file(socket);
    }
}

#[test]
fn deployed_like_sender_unlinks_on_disconnect_and_the_receiver_binds_again() {
    if let Some(socket) = std::env::var_os(DEPLOYED_SENDER_ENV) {
        return deployed_like_sender(Path::new(&socket));
    }
    // The library alone: a Receiver notices that the sender removed its socket file and
    // binds it again, so the same sender comes back.
    let dir = TempDir::new("deployed-rebind");
    let socket = dir.path("s");
    let mut receiver = Receiver::bind(&socket).unwrap();
    let mut child = spawn_deployed_like_sender(&socket);
    let mut connections = 0;
    let mut buffers_since_connect = 0;
    while connections < 3 || buffers_since_connect < 3 {
        match receiver.recv(Some(WAIT)).unwrap() {
            Event::SenderConnected(peer) => {
                assert_eq!(peer.unwrap().pid, child.id() as i32);
                connections += 1;
                buffers_since_connect = 0;
            }
            Event::Buffer(_) => {
                buffers_since_connect += 1;
                if buffers_since_connect == 3 && connections < 3 {
                    assert!(receiver.send_disconnect().unwrap());
                }
            }
            Event::SenderGone => {}
            other => panic!("{other:?}"),
        }
    }
    let stats = receiver.stats();
    assert_eq!(stats.senders_accepted, 3);
    assert!(stats.socket_rebinds >= 2, "{stats:?}");
    assert!(socket.exists());
    std::fs::write(stop_file(&socket), "eos").unwrap();
    loop {
        match recv_after_connect(&mut receiver, Some(WAIT)).unwrap() {
            Event::Buffer(_) => {}
            Event::Eos => break,
            other => panic!("{other:?}"),
        }
    }
    assert!(child.wait().unwrap().success());
}

#[test]
fn five_pauses_mid_stream_with_a_deployed_like_sender_then_eos() {
    let dir = TempDir::new("pause-deployed");
    let socket = dir.path("s");
    let receiver = ReceivingPipeline::start(&socket, "timestamp-mode=sender");
    let child = spawn_deployed_like_sender(&socket);
    pause_and_resume_five_times(&receiver);
    let src = receiver.src();
    assert!(stat(&src, "socket-rebinds") >= 5, "{:?}", src.property::<gst::Structure>("stats"));
    assert_eq!(stat(&src, "senders-accepted"), 6);
    stop_deployed_like_sender(&socket, child, true);
    receiver.wait_for_eos();
    let seen = receiver.seen.lock().unwrap().clone();
    let indices: Vec<u64> = seen.iter().map(|s| s.first8).collect();
    assert!(indices.windows(2).all(|w| w[1] > w[0]), "frames out of order: {indices:?}");
    assert_in_order_and_fresh(&seen, Duration::from_millis(150));
}

#[test]
fn a_sender_that_connected_while_paused_delivers_nothing_stale() {
    let dir = TempDir::new("connect-while-paused");
    let socket = dir.path("s");
    let receiver = ReceivingPipeline::start(&socket, "timestamp-mode=sender");
    receiver.set_state(gst::State::Paused);
    // It connects into the listener's backlog and sends what nobody reads yet.
    let child = spawn_deployed_like_sender(&socket);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(receiver.count(), 0);
    receiver.set_state(gst::State::Playing);
    receiver.wait_for_more(10, Duration::from_secs(2), "after resuming");
    stop_deployed_like_sender(&socket, child, true);
    receiver.wait_for_eos();
    assert_in_order_and_fresh(&receiver.seen.lock().unwrap(), Duration::from_millis(150));
    assert_eq!(stat(&receiver.src(), "senders-accepted"), 1, "the paused-time connection was refused");
}

#[test]
fn five_pauses_mid_stream_with_our_sink_then_eos() {
    let dir = TempDir::new("pause-ours");
    let socket = dir.path("s");
    let receiver = ReceivingPipeline::start(&socket, "timestamp-mode=sender");
    let mut child = Reaped(gst_launch_child(
        &dir,
        "videotestsrc is-live=true ! video/x-raw,format=NV12,width=64,height=48,framerate=30/1 ! \
         qtisocketsink socket=SOCKET",
    ));
    pause_and_resume_five_times(&receiver);
    assert_eq!(stat(&receiver.src(), "senders-accepted"), 6);
    // gst-launch-1.0 -e turns SIGINT into EOS, which our sink sends.
    rustix::process::kill_process(rustix::process::Pid::from_child(&child), rustix::process::Signal::INT).unwrap();
    receiver.wait_for_eos();
    assert!(child.wait().unwrap().success());
    assert_in_order_and_fresh(&receiver.seen.lock().unwrap(), Duration::from_millis(150));
}

#[test]
fn deployed_like_senders_hanging_up_killed_and_restarted_the_stream_goes_on() {
    let dir = TempDir::new("restart-deployed");
    let socket = dir.path("s");
    let receiver = ReceivingPipeline::start(&socket, "keep-listening=true timestamp-mode=sender");
    for round in 0..4 {
        let mut child = spawn_deployed_like_sender(&socket);
        receiver.wait_for_more(10, WAIT, &format!("sender {round}"));
        match round {
            // Hangs up without EOS and removes the socket file, as the deployed sink does.
            0 | 2 => stop_deployed_like_sender(&socket, child, false),
            // Dies: the socket file stays.
            1 => {
                child.kill().unwrap();
                child.wait().unwrap();
            }
            _ => stop_deployed_like_sender(&socket, child, true),
        }
    }
    receiver.wait_for_eos();
    let src = receiver.src();
    assert_eq!(stat(&src, "senders-accepted"), 4);
    assert!(stat(&src, "socket-rebinds") >= 2, "{:?}", src.property::<gst::Structure>("stats"));
}

// ---------------------------------------------------------------------------------------
// Display timing

/// The fakesink's own counters: (rendered, dropped).
fn rendered_and_dropped(sink: &gst::Element) -> (u64, u64) {
    let stats = sink.property::<gst::Structure>("stats");
    (stats.get::<u64>("rendered").unwrap(), stats.get::<u64>("dropped").unwrap())
}

/// `qtisocketsrc ! fakesink sync=true` with the default timestamps renders every frame
/// of a 30 fps sender, whether the sender started long before the receiver or after it,
/// and the source reports a live latency of one frame with no upper bound.
fn sync_sink_renders_every_frame(sender_first: bool) {
    let dir = TempDir::new("sync");
    let socket = dir.path("s");
    let launch_sender = || {
        Reaped(gst_launch_child(
            &dir,
            "videotestsrc is-live=true ! video/x-raw,format=NV12,width=64,height=48,framerate=30/1 ! \
             qtisocketsink socket=SOCKET",
        ))
    };
    let mut sender = None;
    if sender_first {
        sender = Some(launch_sender());
        std::thread::sleep(Duration::from_secs(2));
    }
    let receiver =
        Running::launch(&format!("qtisocketsrc name=src socket={} ! fakesink name=sink sync=true", path_str(&socket)));
    if !sender_first {
        std::thread::sleep(Duration::from_secs(1));
        sender = Some(launch_sender());
    }
    let sink = receiver.element("sink");
    wait_until("the first frames rendered", || rendered_and_dropped(&sink).0 >= 5);
    let (rendered_before, dropped_before) = rendered_and_dropped(&sink);
    std::thread::sleep(Duration::from_secs(2));
    let (rendered, dropped) = rendered_and_dropped(&sink);
    assert_eq!(dropped, dropped_before, "frames dropped as late");
    // About 60 frames in 2 s at 30 fps; a sync sink holding frames back would render few.
    assert!(rendered - rendered_before >= 45, "{} frames rendered in 2 s", rendered - rendered_before);
    let mut query = gst::query::Latency::new();
    assert!(receiver.element("src").query(&mut query));
    let (live, min, max) = query.result();
    assert!(live);
    // One frame duration as the sender stamped it (videotestsrc rounds them either way).
    assert!(min.nseconds().abs_diff(FRAME.as_nanos() as u64) <= 1, "latency {min}");
    assert_eq!(max, gst::ClockTime::NONE);
    let mut sender = sender.unwrap();
    sender.kill().unwrap();
    sender.wait().unwrap();
}

#[test]
fn a_sync_sink_renders_every_frame_of_a_sender_started_long_before() {
    sync_sink_renders_every_frame(true);
}

#[test]
fn a_sync_sink_renders_every_frame_of_a_sender_started_after() {
    sync_sink_renders_every_frame(false);
}

// ---------------------------------------------------------------------------------------
// Stats from another thread

#[test]
fn stats_read_from_another_thread_thousands_of_times_never_disturb_ten_thousand_buffers() {
    let dir = TempDir::new("stats-reader");
    let socket = dir.path("s");
    let receiver = ReceivingPipeline::start(&socket, "");
    let mut child = Reaped(gst_launch_child(
        &dir,
        "videotestsrc num-buffers=10000 ! video/x-raw,format=NV12,width=64,height=48,framerate=30/1 ! \
         qtisocketsink socket=SOCKET wait-for-receiver=true sync=false",
    ));
    let src = receiver.src();
    let done = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (src, done, reads) = (src.clone(), done.clone(), reads.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let _ = src.property::<gst::Structure>("stats");
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    receiver.wait_for_more(10_000, Duration::from_secs(120), "10,000 buffers with a stats reader");
    receiver.wait_for_eos();
    done.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    assert!(child.wait().unwrap().success());
    let seen = receiver.seen.lock().unwrap();
    assert_eq!(seen.len(), 10_000);
    assert!(seen.windows(2).all(|w| w[1].pts > w[0].pts), "out of order");
    assert_eq!(stat(&src, "buffers"), 10_000);
    let reads = reads.load(Ordering::Relaxed);
    assert!(reads >= 10_000, "only {reads} stats reads while 10,000 buffers streamed");
    println!("{reads} stats reads while 10,000 buffers streamed");
}
