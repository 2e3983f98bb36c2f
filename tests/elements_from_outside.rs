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

    /// The same, with a GST_DEBUG level: what the elements log goes to the output too.
    fn with_debug(dir: &TempDir, name: &str, pipeline: &str, debug: &str) -> Launched {
        Launched::spawn_with(dir, name, pipeline, None, Some(debug))
    }

    fn spawn(dir: &TempDir, name: &str, pipeline: &str, uid: Option<u32>) -> Launched {
        Launched::spawn_with(dir, name, pipeline, uid, None)
    }

    fn spawn_with(dir: &TempDir, name: &str, pipeline: &str, uid: Option<u32>, debug: Option<&str>) -> Launched {
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
        if let Some(debug) = debug {
            command.env("GST_DEBUG", debug).env("GST_DEBUG_NO_COLOR", "1");
        }
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
    let pipeline = |socket: &str| format!("videotestsrc is-live=true ! {NV12_64X48} ! qtisocketsink socket={socket}");
    let sender = Launched::new(&dir, "tx", &pipeline(&long));
    let (ok, output) = sender.wait_exit();
    assert!(!ok, "{output}");
    assert!(output.contains("ERROR") && output.contains("108 bytes") && output.contains("107"), "{output}");
    let receiver = Launched::new(&dir, "rx", &format!("qtisocketsrc socket={long} ! fakesink"));
    let (ok, output) = receiver.wait_exit();
    assert!(!ok && output.contains("107"), "{output}");
    // 107 bytes is a path like any other (nobody listens there: the sink retries).
    let fits = &long[..107];
    let sender = Launched::new(&dir, "tx-107", &pipeline(fits));
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
    let end =
        bus.timed_pop_filtered(gst::ClockTime::from_seconds(20), &[gst::MessageType::Eos, gst::MessageType::Error]);
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
    let running = Running::launch(&format!("qtisocketsrc socket={} ! appsink name=out sync=false", path_str(socket)));
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
            &format!(
                "filesrc location={} ! subparse ! qtisocketsink socket=SOCKET wait-for-receiver=true",
                path_str(&srt)
            ),
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

// ---------------------------------------------------------------------------------------
// 1. A refused sender backs off and says so; the receiver counts quietly

fn my_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// The uid a sender runs as: another user's (nobody) when this one may switch to it.
fn other_uid() -> u32 {
    if my_uid() == 0 {
        NOBODY
    } else {
        my_uid()
    }
}

/// A `gst-launch-1.0` sender as `other_uid()`.
fn sender_as_other_user(dir: &TempDir, name: &str, pipeline: &str) -> Launched {
    if other_uid() == my_uid() {
        Launched::new(dir, name, pipeline)
    } else {
        Launched::as_user(dir, name, pipeline, other_uid())
    }
}

/// The warnings (message and debug text) on `bus` so far.
fn warnings(bus: &gst::Bus) -> Vec<String> {
    let mut found = Vec::new();
    while let Some(message) = bus.pop_filtered(&[gst::MessageType::Warning]) {
        if let gst::MessageView::Warning(w) = message.view() {
            found.push(format!("{} | {}", w.error(), w.debug().unwrap_or_default()));
        }
    }
    found
}

#[test]
fn a_refused_sender_backs_off_and_says_once_who_refused_it_while_the_receiver_warns_once() {
    init();
    let dir = TempDir::new("outside-refused");
    let socket = dir.path("s");
    let allowed = other_uid() + 1;
    let running = Running::launch(&format!(
        "qtisocketsrc name=src socket={} socket-mode=0666 allowed-uids=\"<{allowed}>\" ! fakesink",
        path_str(&socket)
    ));
    let (src, bus) = (running.element("src"), running.0.bus().unwrap());
    let sender = sender_as_other_user(
        &dir,
        "tx",
        &format!("videotestsrc is-live=true ! {NV12_64X48} ! qtisocketsink socket=SOCKET"),
    );
    let refused = || stat::<u64>(&src, "senders-refused");
    wait_until("the sender is refused", || refused() >= 1);
    let (cpu_before, refused_before) = (sender.cpu_time(), refused());
    let span = Duration::from_secs(3);
    std::thread::sleep(span);
    let (cpu, refusals) = (sender.cpu_time() - cpu_before, refused() - refused_before);
    // Backing off 10, 20, 40 ... ms to 1 s: about ten in 3 s (it was ~24,000 a second).
    assert!((1..=15).contains(&refusals), "{refusals} refusals in {span:?}");
    assert!(cpu < span / 6, "the refused sender used {cpu:?} of CPU in {span:?}");
    assert_eq!(stat::<u64>(&src, "buffers"), 0);

    // The receiver: one warning naming the sender, the rest counted.
    let warned = warnings(&bus);
    assert_eq!(warned.len(), 1, "{warned:#?}");
    for word in [format!("pid {}", sender.pid()), format!("uid {}", other_uid()), "allowed-uids".into()] {
        assert!(warned[0].contains(&word), "{} does not say {word}", warned[0]);
    }
    // The sender: once, who refused it (this process listens there) and as whom it runs.
    let output = sender.finish();
    let said: Vec<&str> = output.lines().filter(|l| l.starts_with("WARNING: from element")).collect();
    assert_eq!(said.len(), 1, "{output}");
    for word in [
        "closed the connection 3 times in a row before taking anything".to_owned(),
        format!("pid {}, uid {}", std::process::id(), my_uid()),
        format!("refuses this sender (uid {})", other_uid()),
    ] {
        assert!(said[0].contains(&word), "{} does not say {word}", said[0]);
    }
    assert_no_glib_warnings();
}

// ---------------------------------------------------------------------------------------
// 5. A second sender to a busy receiver is turned away, and never delivers stale frames

/// A buffer as the receiving pipeline saw it: from which sender, its sender PTS, and when.
#[derive(Debug, Clone, Copy)]
struct Arrived {
    peer_pid: i64,
    pts: Duration,
    at: Instant,
}

#[test]
fn a_second_sender_is_turned_away_backs_off_and_takes_over_with_fresh_frames() {
    init();
    let dir = TempDir::new("outside-busy");
    let running = Running::launch(&format!(
        "qtisocketsrc name=src socket={} keep-listening=true timestamp-mode=sender ! fakesink name=out sync=false",
        path_str(&dir.path("s"))
    ));
    let (src, bus) = (running.element("src"), running.0.bus().unwrap());
    let arrived = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Arrived>::new()));
    let (seen, probe_src) = (arrived.clone(), src.clone());
    running.element("out").static_pad("sink").unwrap().add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let Some(buffer) = info.buffer() else { return gst::PadProbeReturn::Ok };
        let peer_pid = stat::<i64>(&probe_src, "peer-pid");
        let pts = Duration::from_nanos(buffer.pts().unwrap().nseconds());
        seen.lock().unwrap().push(Arrived { peer_pid, pts, at: Instant::now() });
        gst::PadProbeReturn::Ok
    });
    let from = |pid: u32| -> Vec<Arrived> {
        arrived.lock().unwrap().iter().filter(|a| a.peer_pid == i64::from(pid)).copied().collect()
    };
    let sender = format!("videotestsrc is-live=true ! {NV12_64X48} ! qtisocketsink socket=SOCKET");
    let mut first = Launched::new(&dir, "tx1", &sender);
    wait_until("the first sender's frames arrive", || from(first.pid()).len() >= 10);
    let second = Launched::new(&dir, "tx2", &sender);
    wait_until("the second sender is turned away", || stat::<u64>(&src, "senders-turned-away") >= 3);
    std::thread::sleep(Duration::from_secs(1));
    assert!(from(second.pid()).is_empty(), "the second sender's frames were delivered while the first was there");
    let turned_away = warnings(&bus);
    assert_eq!(turned_away.len(), 1, "{turned_away:#?}");
    assert!(turned_away[0].contains(&format!("a second sender (pid {}", second.pid())), "{}", turned_away[0]);

    // The first leaves: the second takes over within its backoff, with frames made now.
    first.kill();
    wait_until("the second sender's frames arrive", || from(second.pid()).len() >= 10);
    let frames = from(second.pid());
    let lag = |a: &Arrived| {
        a.at.duration_since(frames[0].at).as_secs_f64() - (a.pts.as_secs_f64() - frames[0].pts.as_secs_f64())
    };
    let lags: Vec<f64> = frames.iter().map(lag).collect();
    let spread = lags.iter().cloned().fold(f64::MIN, f64::max) - lags.iter().cloned().fold(f64::MAX, f64::min);
    assert!(spread < 0.2, "stale frames: arrival minus PTS varies by {spread:.3} s: {frames:?}");
    assert!(frames[0].pts > Duration::from_secs(1), "the second sender's first frame is from its start: {frames:?}");
    let output = second.finish();
    let said: Vec<&str> = output.lines().filter(|l| l.starts_with("WARNING: from element")).collect();
    assert_eq!(said.len(), 1, "{output}");
    assert!(said[0].contains("or serves another sender already"), "{}", said[0]);
    assert_no_glib_warnings();
}

// ---------------------------------------------------------------------------------------
// 9. A receiver that breaks the protocol: one warning per connection

#[test]
fn a_receiver_that_breaks_the_protocol_gets_one_warning_per_connection() {
    use gstqtisocket::protocol::{ReceiverMessage, ReturnMessage};
    use gstqtisocket::transport::{wait_readable, Listener, MessageIn, MessageReader};
    let dir = TempDir::new("outside-lying-receiver");
    let listener = Listener::bind(&dir.path("s"), 0o600).unwrap();
    let sender = Launched::with_debug(
        &dir,
        "tx",
        &format!("videotestsrc is-live=true ! {NV12_64X48} ! qtisocketsink socket=SOCKET"),
        "qtisocketsink:2",
    );
    // Three connections, each answered with a return of a buf_id never sent.
    let lie = ReceiverMessage::Return(ReturnMessage::new(&[9999]).unwrap()).encode();
    let mut record = vec![0; gstqtisocket::protocol::MAX_RECORD_LEN + 1];
    for _ in 0..3 {
        let connection = loop {
            wait_readable(std::os::fd::AsFd::as_fd(&listener), Some(Duration::from_secs(10))).unwrap();
            if let Some(connection) = listener.accept().unwrap() {
                break connection;
            }
        };
        let mut reader = MessageReader::default();
        loop {
            wait_readable(std::os::fd::AsFd::as_fd(&connection), Some(Duration::from_secs(10))).unwrap();
            if let MessageIn::Message { .. } = reader.read(&connection, &mut record).unwrap() {
                break;
            }
        }
        connection.send_message(&lie, &[]).unwrap();
        // The sink hangs up on it.
        loop {
            wait_readable(std::os::fd::AsFd::as_fd(&connection), Some(Duration::from_secs(10))).unwrap();
            if let MessageIn::Hangup = reader.read(&connection, &mut record).unwrap() {
                break;
            }
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let output = sender.finish();
    // The log: one warning per connection, naming the lie.
    let warned: Vec<&str> =
        output.lines().filter(|l| l.contains(" WARN ") && l.contains("broke the protocol: ")).collect();
    assert_eq!(warned.len(), 3, "one warning per connection:\n{output}");
    assert!(warned.iter().all(|l| l.contains("buf_id 9999")), "{warned:#?}");
    // The bus: once for the run of them, as for any receiver that takes nothing.
    let said: Vec<&str> = output.lines().filter(|l| l.starts_with("WARNING: from element")).collect();
    assert_eq!(said.len(), 1, "{output}");
    assert!(said[0].contains("broke the protocol 3 times in a row"), "{}", said[0]);
}

// ---------------------------------------------------------------------------------------
// 3. The live source's latency: a frame, no maximum, so synchronising pipelines work

#[test]
fn live_pipelines_after_the_source_configure_their_latency() {
    for (name, tail) in [
        ("arrival", "timestamp-mode=arrival ! fakesink silent=false sync=true"),
        ("encoder", "! videoconvert ! vp8enc deadline=1 ! fakesink silent=false sync=true"),
        ("compositor", "! compositor ! fakesink silent=false sync=true"),
    ] {
        let dir = TempDir::new(&format!("outside-latency-{name}"));
        let receiver = Launched::new(&dir, "rx", &format!("qtisocketsrc socket=SOCKET {tail}"));
        let sender = Launched::new(
            &dir,
            "tx",
            "videotestsrc is-live=true ! video/x-raw,format=I420,width=64,height=48,framerate=30/1 ! \
             qtisocketsink socket=SOCKET",
        );
        wait_until("frames reach the receiver's sink", || receiver.buffers().len() >= 15);
        drop(sender);
        let output = receiver.finish();
        for complaint in ["Pipeline construction is invalid", "Impossible to configure latency"] {
            assert!(!output.contains(complaint), "{name}: {output}");
        }
        assert!(output.contains("Redistribute latency"), "{name}: {output}");
    }
}

// ---------------------------------------------------------------------------------------
// 5, through the Rust API: the same rule for any user of Receiver

#[test]
fn a_receiver_turns_a_second_sender_away_before_it_can_queue_anything() {
    use gstqtisocket::{Event, Receiver, Sender, SenderEvent};
    let dir = TempDir::new("outside-api-busy");
    let socket = dir.path("s");
    let mut receiver = Receiver::bind(&socket).unwrap();
    let mut first = Sender::connect(&socket).unwrap();
    assert!(matches!(receiver.recv(Some(Duration::from_secs(5))).unwrap(), Event::SenderConnected(_)));
    let mut second = Sender::connect(&socket).unwrap();
    // The receiver, waiting for the first, turns the second away.
    assert!(matches!(receiver.recv(Some(Duration::from_millis(200))).unwrap(), Event::Timeout));
    assert_eq!(receiver.stats().senders_turned_away, 1);
    assert_eq!(second.next_event(Some(Duration::from_secs(5))).unwrap(), Some(SenderEvent::ReceiverGone));
    assert_eq!(receiver.last_turned_away().map(|p| p.pid), Some(std::process::id() as i32));
    // The first goes on; once it leaves, a new sender is taken.
    drop(first.send_eos());
    assert!(matches!(receiver.recv(Some(Duration::from_secs(5))).unwrap(), Event::Eos));
    drop(first);
    assert!(matches!(receiver.recv(Some(Duration::from_secs(5))).unwrap(), Event::SenderGone));
    let _third = Sender::connect(&socket).unwrap();
    assert!(matches!(receiver.recv(Some(Duration::from_secs(5))).unwrap(), Event::SenderConnected(_)));
    assert_eq!(receiver.stats().senders_accepted, 2);
}
