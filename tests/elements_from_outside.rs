//! The elements as `gst-launch-1.0` users drive them (issue 13): each test runs at least one
//! side as a `gst-launch-1.0` child process with the plugin from the build output, the
//! other in this process when its stats or bus are what is checked. Receivers in child
//! processes print every buffer (`fakesink silent=false` under `-v`), which the tests parse.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use gst::prelude::*;

const NOBODY: u32 = 65534;
const NV12_64X48: &str = "video/x-raw,format=NV12,width=64,height=48,framerate=30/1";

/// A `gst-launch-1.0 -e -v` child whose stdout and stderr go to a file (read at any time,
/// and never a full pipe that would block it); interrupted and reaped when dropped.
struct Launched {
    child: Child,
    log: PathBuf,
}

impl Launched {
    /// `pipeline` with `SOCKET` replaced by `dir`'s socket path `s`.
    fn new(dir: &TempDir, name: &str, pipeline: &str) -> Launched {
        Launched::spawn(dir, name, pipeline, None)
    }

    /// The same, run as `uid` (group `uid` too): another user, as a sender in another
    /// container would be.
    fn as_user(dir: &TempDir, name: &str, pipeline: &str, uid: u32) -> Launched {
        Launched::spawn(dir, name, pipeline, Some(uid))
    }

    fn spawn(dir: &TempDir, name: &str, pipeline: &str, uid: Option<u32>) -> Launched {
        assert!(plugin_dir().join("libgstqtisocket.so").exists(), "run `cargo build` first");
        let log = dir.path(&format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        // A registry per child, in a directory the child's user may write.
        let registry_dir = dir.path(&format!("{name}-registry"));
        std::fs::create_dir_all(&registry_dir).unwrap();
        let mut command = Command::new("gst-launch-1.0");
        command
            .args(["-e", "-v"])
            .args(pipeline.replace("SOCKET", path_str(&dir.path("s"))).split_whitespace())
            .env("GST_PLUGIN_PATH", plugin_dir())
            .env("GST_REGISTRY", registry_dir.join("registry.bin"))
            .env("G_DEBUG", "fatal-criticals")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        if let Some(uid) = uid {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&registry_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
            command.uid(uid).gid(uid).env("HOME", &registry_dir);
        }
        Launched { child: command.spawn().unwrap(), log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The buffers its `fakesink silent=false` has printed so far.
    fn buffers(&self) -> Vec<Printed> {
        self.output().lines().filter_map(Printed::parse).collect()
    }

    /// Ends it as Ctrl-C does (`-e`: EOS first) and waits; its whole output.
    fn finish(mut self) -> String {
        self.interrupt_and_wait();
        self.output()
    }

    /// Waits for it to exit on its own (up to 20 s); whether it succeeded, and its output.
    fn wait_exit(mut self) -> (bool, String) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.success(), self.output());
            }
            assert!(Instant::now() < deadline, "still running after 20 s:\n{}", self.output());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// CPU time (user + system) it has used so far.
    fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name (which may hold spaces) in parentheses.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // /proc counts in USER_HZ, 100 on every Linux.
        Duration::from_millis(ticks * 10)
    }

    fn interrupt_and_wait(&mut self) {
        if self.child.try_wait().unwrap().is_some() {
            return;
        }
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        self.interrupt_and_wait();
    }
}

/// One buffer as `fakesink silent=false` prints it.
#[derive(Debug, Clone, PartialEq)]
struct Printed {
    pts: Option<Duration>,
    flags: u32,
    size: usize,
}

impl Printed {
    fn parse(line: &str) -> Option<Printed> {
        let rest = &line[line.find("last-message = chain")?..];
        let size = rest[rest.find(") (")? + 3..].split(' ').next()?.parse().ok()?;
        let pts = rest[rest.find("pts: ")? + 5..].split(',').next()?;
        let flags = rest[rest.find("flags: ")? + 7..].split(' ').next()?;
        Some(Printed { pts: parse_clock_time(pts), flags: u32::from_str_radix(flags, 16).ok()?, size })
    }

    fn discont(&self) -> bool {
        self.flags & gst::BufferFlags::DISCONT.bits() != 0
    }
}

/// `0:00:01.033333333` (or `none`).
fn parse_clock_time(text: &str) -> Option<Duration> {
    let mut parts = text.split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    let (secs, nanos) = s.split_once('.')?;
    let total = h.parse::<u64>().ok()? * 3600 + m.parse::<u64>().ok()? * 60 + secs.parse::<u64>().ok()?;
    Some(Duration::new(total, nanos.parse().ok()?))
}

fn wait_for_state(pipeline: &gst::Pipeline, state: gst::State) {
    pipeline.set_state(state).unwrap();
    let (result, current, _) = pipeline.state(gst::ClockTime::from_seconds(10));
    assert!(result.is_ok() && current == state, "{result:?}: {current:?}, not {state:?}");
}

fn sink_stats(sink: &gst::Element) -> gst::Structure {
    sink.property("stats")
}

// ---------------------------------------------------------------------------------------
// 2. qtisocketsink connects on READY→PAUSED and leaves on PAUSED→READY

#[test]
fn the_sink_connects_on_ready_to_paused_to_the_socket_set_in_ready_and_leaves_on_paused_to_ready() {
    init();
    let dir = TempDir::new("outside-ready");
    let receiver_pipeline = "qtisocketsrc socket=SOCKET keep-listening=true ! fakesink silent=false";
    let first = TempDir::new("outside-ready-a");
    let receiver_a = Launched::new(&first, "a", receiver_pipeline);
    let receiver_b = Launched::new(&dir, "b", receiver_pipeline);
    let running = Running::launch(&format!(
        "videotestsrc is-live=true ! {NV12_64X48} ! qtisocketsink name=sink socket={}",
        path_str(&first.path("s"))
    ));
    let (pipeline, sink) = (&running.0, running.element("sink"));
    wait_until("receiver a has frames", || receiver_a.buffers().len() >= 10);

    // The socket changed in READY is the one the next run connects to.
    wait_for_state(pipeline, gst::State::Ready);
    sink.set_property("socket", path_str(&dir.path("s")));
    wait_for_state(pipeline, gst::State::Playing);
    wait_until("receiver b has frames", || receiver_b.buffers().len() >= 10);
    let at_a = receiver_a.buffers().len();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(receiver_a.buffers().len(), at_a, "frames still go to the old path");

    // Ten READY↔PLAYING cycles: ten new connections, counters from 0 each time.
    for cycle in 0..10 {
        wait_for_state(pipeline, gst::State::Ready);
        let s = sink_stats(&sink);
        assert!(!stat::<bool>(&s, "connected"), "cycle {cycle}: still connected in READY: {s}");
        let before = receiver_b.buffers().len();
        wait_for_state(pipeline, gst::State::Paused);
        let s = sink_stats(&sink);
        assert_eq!(stat::<u64>(&s, "buffers-sent"), 0, "cycle {cycle}: the counters did not start again: {s}");
        wait_for_state(pipeline, gst::State::Playing);
        wait_until("receiver b has the new run's frames", || receiver_b.buffers().len() >= before + 3);
        assert_eq!(stat::<u64>(&sink_stats(&sink), "reconnects"), 0);
    }
    drop(running);
    let buffers = receiver_b.buffers();
    drop(receiver_b);
    let disconts = buffers.iter().filter(|b| b.discont()).count();
    assert!(disconts >= 11, "{disconts} DISCONT buffers for 11 connections");
    for pair in buffers.windows(2) {
        assert!(pair[1].pts >= pair[0].pts || pair[1].discont(), "PTS went back without a DISCONT: {pair:?}");
    }
    assert_no_glib_warnings();
}

// ---------------------------------------------------------------------------------------
// 4. A socket path no UNIX socket can have

#[test]
fn the_sink_refuses_a_socket_path_longer_than_107_bytes_as_the_source_does() {
    let dir = TempDir::new("outside-path");
    let long = format!("/tmp/{}", "x".repeat(103));
    assert_eq!(long.len(), 108);
    let sender = Launched::new(&dir, "tx", &format!("videotestsrc is-live=true ! {NV12_64X48} ! qtisocketsink socket={long}"));
    let (ok, output) = sender.wait_exit();
    assert!(!ok, "{output}");
    assert!(output.contains("ERROR") && output.contains("108 bytes") && output.contains("107"), "{output}");
    let receiver = Launched::new(&dir, "rx", &format!("qtisocketsrc socket={long} ! fakesink"));
    let (ok, output) = receiver.wait_exit();
    assert!(!ok && output.contains("107"), "{output}");
    // 107 bytes is a path like any other (nobody listens there: the sink retries).
    let fits = &long[..107];
    let sender = Launched::new(&dir, "tx-107", &format!("videotestsrc is-live=true ! {NV12_64X48} ! qtisocketsink socket={fits}"));
    std::thread::sleep(Duration::from_millis(500));
    let output = sender.finish();
    assert!(!output.contains("ERROR"), "{output}");
}

// ---------------------------------------------------------------------------------------
// 7. Copied bytes are not described bytes

#[test]
fn behind_a_tee_each_sink_copies_and_counts_each_byte_once() {
    init();
    let (dir_a, dir_b) = (TempDir::new("outside-tee-a"), TempDir::new("outside-tee-b"));
    let receiver_a = Launched::new(&dir_a, "a", "qtisocketsrc socket=SOCKET ! fakesink silent=false");
    let receiver_b = Launched::new(&dir_b, "b", "qtisocketsrc socket=SOCKET ! fakesink silent=false");
    let running = Running::launch(&format!(
        "videotestsrc num-buffers=30 ! {NV12_64X48} ! tee name=t \
         t. ! queue ! qtisocketsink name=a socket={} wait-for-receiver=true sync=false \
         t. ! queue ! qtisocketsink name=b socket={} wait-for-receiver=true sync=false",
        path_str(&dir_a.path("s")),
        path_str(&dir_b.path("s"))
    ));
    let bus = running.0.bus().unwrap();
    let end = bus.timed_pop_filtered(gst::ClockTime::from_seconds(20), &[gst::MessageType::Eos, gst::MessageType::Error]);
    assert!(matches!(end.as_ref().map(|m| m.view()), Some(gst::MessageView::Eos(_))), "{end:?}");
    let frame = 64 * 48 * 3 / 2;
    for name in ["a", "b"] {
        let s = sink_stats(&running.element(name));
        assert_eq!(
            ["buffers-sent", "copies", "bytes-copied", "bytes-described"].map(|f| stat::<u64>(&s, f)),
            [30, 30, 30 * frame, 0],
            "sink {name}: {s}"
        );
    }
    drop(running);
    for receiver in [receiver_a, receiver_b] {
        wait_until("a receiver has every frame", || receiver.buffers().len() == 30);
    }
    // Without the tee the same frames are described, not copied.
    let dir = TempDir::new("outside-no-tee");
    let receiver = Launched::new(&dir, "rx", "qtisocketsrc socket=SOCKET ! fakesink silent=false");
    let running = Running::launch(&format!(
        "videotestsrc num-buffers=30 ! {NV12_64X48} ! qtisocketsink name=sink socket={} wait-for-receiver=true \
         sync=false",
        path_str(&dir.path("s"))
    ));
    let bus = running.0.bus().unwrap();
    bus.timed_pop_filtered(gst::ClockTime::from_seconds(20), &[gst::MessageType::Eos, gst::MessageType::Error]);
    let s = sink_stats(&running.element("sink"));
    assert_eq!(["copies", "bytes-copied", "bytes-described"].map(|f| stat::<u64>(&s, f)), [0, 0, 30 * frame], "{s}");
    drop(running);
    drop(receiver);
    assert_no_glib_warnings();
}

// ---------------------------------------------------------------------------------------
// 6. Pango markup never arrives labelled as plain text

/// An SRT file whose cues carry markup, as subparse turns them into pango-markup.
fn srt_with_markup(dir: &TempDir) -> PathBuf {
    let path = dir.path("cues.srt");
    let cues = "1\n00:00:00,000 --> 00:00:01,000\n<i>hello</i> & <b>world</b>\n\n\
                2\n00:00:01,000 --> 00:00:02,000\nplain\n\n";
    std::fs::write(&path, cues).unwrap();
    path
}

/// The caps and texts an in-process receiver on `socket` gets until EOS (10 s at most).
fn received_texts(socket: &Path, until: impl FnOnce()) -> (Vec<String>, Vec<String>) {
    let running =
        Running::launch(&format!("qtisocketsrc socket={} ! appsink name=out sync=false", path_str(socket)));
    let appsink = running.element("out").downcast::<gst_app::AppSink>().unwrap();
    until();
    let (mut caps, mut texts) = (Vec::new(), Vec::new());
    while let Some(sample) = appsink.try_pull_sample(gst::ClockTime::from_seconds(10)) {
        caps.push(sample.caps().unwrap().to_string());
        let map = sample.buffer().unwrap().map_readable().unwrap();
        texts.push(String::from_utf8(map.to_vec()).unwrap());
        if texts.len() == 2 {
            break;
        }
    }
    (caps, texts)
}

#[test]
fn subparse_into_the_sink_sends_utf8_without_markup_and_markup_is_refused() {
    init();
    let dir = TempDir::new("outside-markup");
    let srt = srt_with_markup(&dir);
    let mut sender = None;
    let (caps, texts) = received_texts(&dir.path("s"), || {
        sender = Some(Launched::new(
            &dir,
            "tx",
            &format!("filesrc location={} ! subparse ! qtisocketsink socket=SOCKET wait-for-receiver=true", path_str(&srt)),
        ));
    });
    let output = sender.unwrap().finish();
    assert!(output.contains("subparse0.GstPad:src: caps = text/x-raw, format=(string)utf8"), "{output}");
    assert_eq!(texts, ["hello & world", "plain"], "{output}");
    assert!(caps.iter().all(|c| c == "text/x-raw, format=(string)utf8"), "{caps:?}");

    // Upstream that insists on markup: refused at the caps, nothing relabelled.
    let sender = Launched::new(
        &dir,
        "tx-markup",
        &format!(
            "filesrc location={} ! subparse ! text/x-raw,format=pango-markup ! qtisocketsink socket=SOCKET \
             wait-for-receiver=true",
            path_str(&srt)
        ),
    );
    let (ok, output) = sender.wait_exit();
    assert!(!ok && output.contains("can't handle caps text/x-raw, format=(string)pango-markup"), "{output}");
    assert_no_glib_warnings();
}

// ---------------------------------------------------------------------------------------
// 8. Interlacing travels as FRAME flags

#[test]
fn interleaved_top_field_first_arrives_as_caps_and_buffer_flags() {
    let dir = TempDir::new("outside-interlace");
    let receiver = Launched::new(&dir, "rx", "qtisocketsrc socket=SOCKET ! fakesink silent=false");
    let sender = Launched::new(
        &dir,
        "tx",
        "videotestsrc num-buffers=5 ! video/x-raw,format=NV12,width=64,height=48,interlace-mode=interleaved,\
         field-order=top-field-first ! qtisocketsink socket=SOCKET wait-for-receiver=true",
    );
    assert!(sender.wait_exit().0);
    wait_until("the receiver has every frame", || receiver.buffers().len() == 5);
    let buffers = receiver.buffers();
    let output = receiver.finish();
    assert!(
        output.contains(
            "qtisocketsrc0.GstPad:src: caps = video/x-raw, format=(string)NV12, width=(int)64, height=(int)48, \
             interlace-mode=(string)interleaved, field-order=(string)top-field-first"
        ),
        "{output}"
    );
    let interlaced = (gst_video::VideoBufferFlags::INTERLACED | gst_video::VideoBufferFlags::TFF).bits();
    assert!(buffers.iter().all(|b| b.flags & interlaced == interlaced), "{buffers:?}");

    // Progressive stays progressive: no interlace-mode, no field flags.
    let dir = TempDir::new("outside-progressive");
    let receiver = Launched::new(&dir, "rx", "qtisocketsrc socket=SOCKET ! fakesink silent=false");
    let sender = Launched::new(
        &dir,
        "tx",
        &format!("videotestsrc num-buffers=5 ! {NV12_64X48} ! qtisocketsink socket=SOCKET wait-for-receiver=true"),
    );
    assert!(sender.wait_exit().0);
    wait_until("the receiver has every frame", || receiver.buffers().len() == 5);
    let buffers = receiver.buffers();
    let output = receiver.finish();
    assert!(!output.contains("interlace-mode"), "{output}");
    assert!(buffers.iter().all(|b| b.flags & interlaced == 0), "{buffers:?}");
}
