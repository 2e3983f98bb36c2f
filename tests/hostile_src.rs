//! The hostile-sender table (`tests/lies`) told to `qtisocketsrc` in a real pipeline:
//! `qtisocketsrc ! fakesink`, with a probe on the sink that maps every memory of every
//! buffer and reads its last byte (a block the element let through past the end of its
//! fd would SIGBUS this process). A sender in this process tells each lie on a real
//! socket, then sends one valid message. For every lie:
//!  - the element posts a warning (not an error: the stream goes on) that names the
//!    socket and holds the words of the rule that was broken;
//!  - no buffer of the lie reaches downstream: the sink sees exactly the valid buffers,
//!    each mapping the memory its message sent;
//!  - no fd of the lie is kept: once the warning is out, none of the lie's memfds is
//!    open in this process;
//!  - no GLib warning or critical is logged;
//!
//! and after the pipeline is set to NULL the process holds exactly the fds it held
//! before it existed.
//!
//! Every test counts this process's fds, so they take one global lock.

mod common;
mod lies;

use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use gst::prelude::*;
use gstqtisocket::transport::Connection;
use lies::*;

const WAIT: Duration = Duration::from_secs(5);
/// The lies' memfds hold indices 900.. (`lies::memfds`); the valid messages 1000.. .
const LIE_INDICES: std::ops::Range<u64> = 900..1000;
const FIRST_VALID_INDEX: u64 = 1000;

for_each_lie!(lie_tests);

/// A playing `qtisocketsrc ! fakesink` pipeline and a sender connected to it.
struct Scene {
    pipeline: gst::Pipeline,
    src: gst::Element,
    bus: gst::Bus,
    sender: Connection,
    /// The index (first 8 bytes of memory 0) of every buffer the sink got, in order.
    seen: Arc<Mutex<Vec<u64>>>,
    socket: String,
}

impl Scene {
    fn start(dir: &TempDir) -> Scene {
        init();
        let socket = path_str(&dir.path("s")).to_owned();
        let pipeline = gst::parse::launch(&format!(
            "qtisocketsrc name=src socket={socket} ! fakesink name=sink sync=false enable-last-sample=false"
        ))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
        let src = pipeline.by_name("src").unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink_pad = pipeline.by_name("sink").unwrap().static_pad("sink").unwrap();
        let record = seen.clone();
        sink_pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(buffer) = info.buffer() {
                record.lock().unwrap().push(touch_every_byte_range(buffer));
            }
            gst::PadProbeReturn::Ok
        });
        pipeline.set_state(gst::State::Playing).unwrap();
        let bus = pipeline.bus().unwrap();
        let started = Instant::now();
        let sender = loop {
            match Connection::connect(&dir.path("s")) {
                Ok(sender) => break sender,
                Err(e) if started.elapsed() > WAIT => panic!("connecting to {socket}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        Scene { pipeline, src, bus, sender, seen, socket }
    }

    fn wait_seen(&self, name: &str, index: u64) {
        let started = Instant::now();
        while !self.seen.lock().unwrap().contains(&index) {
            assert!(started.elapsed() < WAIT, "{name}: buffer {index} never reached the sink");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The next warning or error on the bus, as its text and debug string.
    fn next_warning(&self, name: &str) -> String {
        let message = self
            .bus
            .timed_pop_filtered(
                gst::ClockTime::from_mseconds(WAIT.as_millis() as u64),
                &[gst::MessageType::Warning, gst::MessageType::Error],
            )
            .unwrap_or_else(|| panic!("{name}: no warning posted"));
        match message.view() {
            gst::MessageView::Warning(w) => format!("{} {}", w.error(), w.debug().unwrap_or_default()),
            gst::MessageView::Error(e) => panic!("{name}: the lie stopped the pipeline: {} {:?}", e.error(), e.debug()),
            _ => unreachable!(),
        }
    }
}

impl Drop for Scene {
    /// A failed assertion must not leave a playing pipeline behind to be disposed.
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Maps every memory of `buffer` and reads its last byte; returns the first 8 bytes of
/// memory 0 as the index the sender wrote there (text buffers: 0).
fn touch_every_byte_range(buffer: &gst::BufferRef) -> u64 {
    let mut index = 0;
    for (i, memory) in buffer.iter_memories().enumerate() {
        let map = memory.map_readable().expect("a delivered memory maps");
        if let Some(last) = map.as_slice().last() {
            std::hint::black_box(*last);
        }
        if i == 0 && map.len() >= 8 {
            index = u64::from_le_bytes(map[..8].try_into().unwrap());
        }
    }
    index
}

/// The indices held by the memfds of the test's senders that are open in this process.
fn open_test_memfds() -> Vec<u64> {
    let mut indices = vec![];
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let is_test_memfd = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("/memfd:qsock-test"));
        if !is_test_memfd {
            continue;
        }
        if let Ok(file) = std::fs::File::open(entry.path()) {
            indices.push(first8(file.as_fd()));
        }
    }
    indices
}

fn tell(name: &str, lie: &Lie, scene: &Scene, valid_index: u64, expected: &mut Vec<u64>) {
    for step in (lie.build)() {
        match step {
            Message(record, fds) => scene.sender.send_message(&record, &borrow_all(&fds)),
            Raw(record, fds) => send_raw(&scene.sender, &record, &fds),
            Receive(index) => {
                scene.wait_seen(name, index);
                expected.push(index);
                Ok(())
            }
        }
        .unwrap_or_else(|e| panic!("{name}: sending: {e}"));
    }

    let warning = scene.next_warning(name);
    for word in lie.says.iter().chain([&"breaks the protocol", &scene.socket.as_str()]) {
        assert!(warning.contains(word), "{name}: the warning does not say {word:?}: \"{warning}\"");
    }
    let kept: Vec<u64> = open_test_memfds().into_iter().filter(|i| LIE_INDICES.contains(i)).collect();
    assert!(kept.is_empty(), "{name}: the lie's memfds {kept:?} are still open after its rejection");

    let fd = memfd(FRAME_BYTES, valid_index);
    scene.sender.send_message(&video(VALID_BUF_ID), &[fd.as_fd()]).unwrap();
    drop(fd);
    scene.wait_seen(name, valid_index);
    expected.push(valid_index);
    assert_eq!(*scene.seen.lock().unwrap(), *expected, "{name}: the sink got other buffers than the valid ones");
}

/// Tells `lies`, in order, to one `qtisocketsrc` pipeline from one sender.
fn run(lies: &[(&str, Lie)]) {
    let _serial = serial();
    init();
    // GStreamer's once-per-process fds before counting: the system clock's (a socket
    // pair, made when a pipeline first reaches PLAYING, after its first buffer).
    static WARM_UP: OnceLock<()> = OnceLock::new();
    WARM_UP.get_or_init(|| {
        let dir = TempDir::new("hostile-warm-up");
        let scene = Scene::start(&dir);
        let fd = memfd(FRAME_BYTES, FIRST_VALID_INDEX);
        scene.sender.send_message(&video(VALID_BUF_ID), &[fd.as_fd()]).unwrap();
        scene.wait_seen("warm-up", FIRST_VALID_INDEX);
        assert_eq!(scene.pipeline.state(gst::ClockTime::from_seconds(5)).1, gst::State::Playing);
    });
    let before = open_fds();
    {
        let dir = TempDir::new("hostile");
        let scene = Scene::start(&dir);
        let mut expected = vec![];
        for (i, (name, lie)) in lies.iter().enumerate() {
            tell(name, lie, &scene, FIRST_VALID_INDEX + i as u64, &mut expected);
        }
        assert_eq!(stat::<u64>(&scene.src, "protocol-errors"), lies.len() as u64);
        assert_eq!(stat::<u64>(&scene.src, "buffers"), expected.len() as u64);
    }
    let names: Vec<&str> = lies.iter().map(|(name, _)| *name).collect();
    // GStreamer's threads let go of the last references (and so fds) a moment after NULL
    // returns: wait for them, with a deadline, then check the counts are exactly back.
    let deadline = Instant::now() + Duration::from_secs(5);
    while (open_fds() != before || !open_test_memfds().is_empty()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(open_test_memfds(), Vec::<u64>::new(), "sender memfds outlived the pipeline: {names:?}");
    assert_eq!(open_fds(), before, "fds outlived the pipeline and the sender: {names:?}");
    assert_no_glib_warnings();
}

/// All the lies on one connection, one after another.
#[test]
fn every_lie_in_a_row_on_one_pipeline() {
    run(LIES);
}
