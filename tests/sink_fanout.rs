//! `qtisocketsink socket-dir=…`: one sender, every receiver in a directory, each in a
//! process of its own. No receiver, stuck, killed or coming and going, may stall the
//! producer or make another receiver miss a frame; the directory's junk is ignored, and
//! a directory that goes away is an error naming it.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use gst::prelude::*;
use gstqtisocket::Receiver;

const CAPS: &str = "video/x-raw,format=NV12,width=64,height=48,framerate=200/1";
const FRAME_SIZE: usize = 4608;
const FRAME_NS: u64 = 5_000_000;

/// Frame `i`: its index in the first 8 bytes, then a pattern that depends on it.
fn frame(i: u64) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..FRAME_SIZE).map(|b| (b % 251) as u8 ^ i as u8).collect();
    bytes[..8].copy_from_slice(&i.to_le_bytes());
    bytes
}

/// `appsrc ! qtisocketsink socket-dir=DIR` in this process, PLAYING.
fn dir_sender(dir: &Path, sink_properties: &str) -> (gst::Pipeline, gst_app::AppSrc, gst::Element) {
    appsrc_into_sink(CAPS, &format!("socket-dir={} {sink_properties}", path_str(dir)))
}

/// A `gst-launch-1.0` receiver in a child process (`pipeline` starts at the source).
fn launch(tmp: &TempDir, pipeline: &str) -> Child {
    gst_launch_child(tmp, pipeline)
}

/// A receiver that writes every frame to `out`.
fn file_receiver(tmp: &TempDir, socket: &Path, out: &Path) -> Child {
    launch(
        tmp,
        &format!(
            "qtisocketsrc socket={} ! {CAPS} ! filesink buffer-mode=unbuffered location={}",
            path_str(socket),
            path_str(out)
        ),
    )
}

/// Two receivers on `dir`/a.sock and `dir`/b.sock writing every frame to a.raw and
/// b.raw in `tmp`; the processes and the two files.
fn two_file_receivers(tmp: &TempDir, dir: &Path) -> (Vec<Child>, [PathBuf; 2]) {
    let outs = [tmp.path("a.raw"), tmp.path("b.raw")];
    let children = ["a", "b"]
        .iter()
        .zip(&outs)
        .map(|(name, out)| file_receiver(tmp, &dir.join(format!("{name}.sock")), out))
        .collect();
    (children, outs)
}

/// A receiver that takes one buffer and never lets go of it, nor reads on.
fn stuck_receiver(tmp: &TempDir, socket: &Path) -> Child {
    launch(tmp, &format!("qtisocketsrc socket={} ! identity sleep-time=3600000000 ! fakesink", path_str(socket)))
}

/// A `socket-dir` sender (`sink_properties` beside), two receivers writing what they get
/// to files and a third stuck on its first buffer (`stuck.sock`), all three connected.
struct TwoHealthyOneStuck {
    tmp: TempDir,
    dir: PathBuf,
    pipeline: gst::Pipeline,
    src: gst_app::AppSrc,
    sink: gst::Element,
    healthy: Vec<Child>,
    outs: [PathBuf; 2],
    stuck: Child,
}

fn two_healthy_one_stuck(name: &str, sink_properties: &str) -> TwoHealthyOneStuck {
    let tmp = TempDir::new(name);
    let dir = tmp.path("cams");
    std::fs::create_dir(&dir).unwrap();
    let (pipeline, src, sink) = dir_sender(&dir, sink_properties);
    let (healthy, outs) = two_file_receivers(&tmp, &dir);
    let stuck = stuck_receiver(&tmp, &dir.join("stuck.sock"));
    wait_until("three receivers are connected", || connected_receivers(&sink) == 3);
    TwoHealthyOneStuck { tmp, dir, pipeline, src, sink, healthy, outs, stuck }
}

/// The sink's figures for the receiver on `socket`.
fn receiver_stats(sink: &gst::Element, socket: &Path) -> Option<gst::Structure> {
    let stats: gst::Structure = sink.property("stats");
    let receivers = stats.get::<gst::Array>("receiver-stats").unwrap();
    receivers
        .iter()
        .map(|value| value.get::<gst::Structure>().unwrap())
        .find(|r| r.get::<String>("socket").unwrap() == path_str(socket))
}

fn connected_receivers(sink: &gst::Element) -> u32 {
    stat::<u32>(&sink.property::<gst::Structure>("stats"), "receivers")
}

/// Pushes frames `range` at 200 frames/s; `at` runs before frame `i` is pushed.
fn push_paced(src: &gst_app::AppSrc, range: std::ops::Range<u64>, mut at: impl FnMut(u64)) -> Duration {
    let started = Instant::now();
    let first = range.start;
    for i in range {
        at(i);
        let mut buffer = gst::Buffer::from_mut_slice(frame(i));
        let b = buffer.get_mut().unwrap();
        b.set_pts(gst::ClockTime::from_nseconds(i * FRAME_NS));
        b.set_duration(gst::ClockTime::from_nseconds(FRAME_NS));
        src.push_buffer(buffer).unwrap();
        let due = started + Duration::from_nanos((i + 1 - first) * FRAME_NS);
        if let Some(early) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(early);
        }
    }
    started.elapsed()
}

/// Ends the stream and waits for the sink's EOS; returns its final stats.
fn finish(pipeline: &gst::Pipeline, src: &gst_app::AppSrc) {
    src.end_of_stream().unwrap();
    let bus = pipeline.bus().unwrap();
    let end = bus
        .timed_pop_filtered(gst::ClockTime::from_seconds(30), &[gst::MessageType::Eos, gst::MessageType::Error])
        .expect("the sender stalled: neither EOS nor an error within 30 s");
    if let gst::MessageView::Error(e) = end.view() {
        panic!("the sender failed: {} ({:?})", e.error(), e.debug());
    }
}

/// Waits for a `gst-launch-1.0` child to end on its own; returns its output.
fn output_of(child: Child) -> String {
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "a receiver failed: {text}");
    text
}

/// Checks that `out` holds exactly frames `range`, in order.
fn assert_frames(out: &Path, range: std::ops::Range<u64>) {
    let bytes = std::fs::read(out).unwrap();
    let expected = (range.end - range.start) as usize;
    assert_eq!(
        bytes.len(),
        expected * FRAME_SIZE,
        "{}: {} of {expected} frames",
        out.display(),
        bytes.len() / FRAME_SIZE
    );
    for (received, i) in bytes.chunks(FRAME_SIZE).zip(range) {
        assert!(
            received == frame(i),
            "{}: frame {i} differs (got index {})",
            out.display(),
            u64::from_le_bytes(received[..8].try_into().unwrap())
        );
    }
}

fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn three_receivers_one_stuck_the_healthy_two_get_every_frame_and_the_stuck_one_max_in_flight() {
    const FRAMES: u64 = 400;
    const MAX_IN_FLIGHT: u64 = 8;
    let TwoHealthyOneStuck { tmp: _tmp, dir, pipeline, src, sink, healthy, outs, stuck } =
        two_healthy_one_stuck("fanout-stuck", &format!("max-in-flight={MAX_IN_FLIGHT}"));

    let elapsed = push_paced(&src, 0..FRAMES, |_| {});
    let stuck_stats = receiver_stats(&sink, &dir.join("stuck.sock")).expect("the stuck receiver is still connected");
    finish(&pipeline, &src);
    let stats: gst::Structure = sink.property("stats");
    println!("{FRAMES} frames pushed in {elapsed:?}; {stats}");
    kill(stuck);
    for child in healthy {
        output_of(child);
    }
    pipeline.set_state(gst::State::Null).unwrap();

    for out in &outs {
        assert_frames(out, 0..FRAMES);
    }
    assert_eq!(stat::<u64>(&stuck_stats, "buffers-sent"), MAX_IN_FLIGHT, "{stuck_stats}");
    assert_eq!(stat::<u64>(&stuck_stats, "skipped"), FRAMES - MAX_IN_FLIGHT, "{stuck_stats}");
    assert_eq!(stat::<u64>(&stuck_stats, "in-flight"), MAX_IN_FLIGHT, "{stuck_stats}");
    assert_eq!(stat::<u64>(&stats, "buffers-sent"), FRAMES, "{stats}");
    assert_eq!(stat::<u64>(&stats, "skipped"), FRAMES - MAX_IN_FLIGHT, "{stats}");
    assert_eq!(stat::<u64>(&stats, "dropped"), 0, "{stats}");
    assert_no_glib_warnings();
}

#[test]
fn a_receiver_killed_mid_stream_and_a_new_one_the_others_miss_nothing_and_the_new_one_starts_discont() {
    const FRAMES: u64 = 400;
    let tmp = TempDir::new("fanout-kill");
    let dir = tmp.path("cams");
    std::fs::create_dir(&dir).unwrap();
    let (pipeline, src, sink) = dir_sender(&dir, "max-in-flight=16");
    let (healthy, outs) = two_file_receivers(&tmp, &dir);
    let mut doomed = Some(launch(&tmp, &format!("qtisocketsrc socket={} ! fakesink", path_str(&dir.join("c.sock")))));
    wait_until("three receivers are connected", || connected_receivers(&sink) == 3);

    let late_socket = dir.join("d.sock");
    let mut late = None;
    push_paced(&src, 0..FRAMES, |i| {
        if i == 100 {
            // SIGKILL: no DISCONNECT, no goodbye.
            kill(doomed.take().unwrap());
        }
        if i == 200 {
            late = Some(launch(
                &tmp,
                &format!("-v qtisocketsrc socket={} ! fakesink silent=false", path_str(&late_socket)),
            ));
        }
    });
    let late_stats = receiver_stats(&sink, &late_socket).expect("the new receiver joined");
    let stats: gst::Structure = sink.property("stats");
    // Each join and leave was posted (before EOS, which pops the bus).
    let messages: Vec<(String, String)> = pipeline
        .bus()
        .unwrap()
        .iter()
        .filter_map(|m| match m.view() {
            gst::MessageView::Element(e) => {
                e.structure().map(|s| (s.name().to_string(), s.get::<String>("socket").unwrap()))
            }
            _ => None,
        })
        .collect();
    let posted =
        |name: &str, socket: &str| messages.contains(&(name.to_owned(), path_str(&dir.join(socket)).to_owned()));
    for socket in ["a.sock", "b.sock", "c.sock", "d.sock"] {
        assert!(posted("qtisocketsink-receiver-joined", socket), "no join of {socket}: {messages:?}");
    }
    assert!(posted("qtisocketsink-receiver-left", "c.sock"), "no leave of c.sock: {messages:?}");
    finish(&pipeline, &src);
    for child in healthy {
        output_of(child);
    }
    let late_output = output_of(late.unwrap());
    pipeline.set_state(gst::State::Null).unwrap();

    for out in &outs {
        assert_frames(out, 0..FRAMES);
    }
    assert!(receiver_stats(&sink, &dir.join("c.sock")).is_none());
    let got = stat::<u64>(&late_stats, "buffers-sent");
    assert!(got > 50, "the new receiver got {got} buffers: {late_stats}");
    // `-v` would print every buffer; fakesink's last-message is read from its output.
    let first_chain = late_output.lines().find(|l| l.contains("chain")).expect(&late_output);
    assert!(first_chain.contains("discont"), "the new receiver's first buffer is not DISCONT: {first_chain}");
    assert_eq!(stat::<u64>(&stats, "dropped"), 0, "{stats}");
}

/// A `gst-launch-1.0` sender streaming into `dir`, in a child process; `env` added.
fn sender_process(tmp: &TempDir, dir: &Path, properties: &str, env: &[(&str, &str)]) -> Child {
    let pipeline =
        format!("videotestsrc is-live=true ! {CAPS} ! qtisocketsink socket-dir={} {properties}", path_str(dir));
    Command::new("gst-launch-1.0")
        .args(pipeline.split_whitespace())
        .env("GST_PLUGIN_PATH", plugin_dir())
        .env("GST_REGISTRY", tmp.path("registry.bin"))
        .env("G_DEBUG", "fatal-criticals")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// What a process holds: fds, memfds among them, threads, RSS in KiB.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Holdings {
    fds: usize,
    memfds: usize,
    threads: usize,
    rss_kib: u64,
}

fn holdings(pid: u32) -> Holdings {
    let fd_dir = PathBuf::from(format!("/proc/{pid}/fd"));
    let links: Vec<PathBuf> =
        std::fs::read_dir(&fd_dir).unwrap().filter_map(|e| std::fs::read_link(e.unwrap().path()).ok()).collect();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    Holdings {
        fds: links.len(),
        memfds: links.iter().filter(|l| l.to_string_lossy().starts_with("/memfd:")).count(),
        threads: field("Threads:") as usize,
        rss_kib: field("VmRSS:"),
    }
}

/// One receiver joins `dir` as `name`, takes `buffers` buffers and leaves.
fn join_take_leave(dir: &Path, name: &str, buffers: usize) {
    let mut receiver = Receiver::bind(dir.join(name)).unwrap();
    for _ in 0..buffers {
        match recv_after_connect(&mut receiver, Some(Duration::from_secs(10))).unwrap() {
            gstqtisocket::Event::Buffer(buffer) => drop(buffer),
            other => panic!("{name}: expected a buffer, got {other:?}"),
        }
    }
}

#[test]
fn a_hundred_receivers_joining_and_leaving_leave_the_sender_as_it_was() {
    let tmp = TempDir::new("fanout-churn");
    let dir = tmp.path("cams");
    std::fs::create_dir(&dir).unwrap();
    let mut sender = sender_process(&tmp, &dir, "", &[]);
    let pid = sender.id();
    for i in 0..5 {
        join_take_leave(&dir, &format!("warm{i}.sock"), 3);
    }
    let settle = || std::thread::sleep(Duration::from_millis(300));
    settle();
    let before = holdings(pid);
    let started = Instant::now();
    for i in 0..100 {
        join_take_leave(&dir, &format!("r{i}.sock"), 3);
    }
    println!("100 join/take 3/leave cycles in {:?}", started.elapsed());
    // Every fd but the pool's memfds, and every thread, is back; the pool keeps the memfds
    // it made, at most what was out at once: one receiver's max-in-flight (4 with
    // socket-dir) beside the pool's minimum (2) and the one upstream fills.
    const POOL_BOUND: usize = 4 + 2 + 1;
    let others = |h: Holdings| (h.fds - h.memfds, h.threads);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut after = holdings(pid);
    while others(after) != others(before) && Instant::now() < deadline {
        settle();
        after = holdings(pid);
    }
    assert!(sender.try_wait().unwrap().is_none(), "the sender exited");
    kill(sender);
    println!("sender before: {before:?}, after: {after:?}");
    assert_eq!(others(after), others(before), "fds other than memfds, and threads");
    assert!(after.memfds <= POOL_BOUND, "{} memfds: more than the pool can hold", after.memfds);
    assert!(after.rss_kib <= before.rss_kib + 2048, "RSS grew from {} to {} KiB", before.rss_kib, after.rss_kib);
}

/// Stops a child and returns what it wrote to stderr.
fn stderr_of_killed(mut child: Child) -> String {
    let _ = child.kill();
    let _ = child.wait();
    let mut text = String::new();
    child.stderr.take().unwrap().read_to_string(&mut text).unwrap();
    text
}

#[test]
fn files_symlinks_directories_and_stale_sockets_in_the_directory_are_ignored_with_a_debug_line() {
    let tmp = TempDir::new("fanout-junk");
    let dir = tmp.path("cams");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), "not a socket").unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    drop(std::os::unix::net::UnixListener::bind(dir.join("stale.sock")).unwrap());
    let mut receiver = Receiver::bind(tmp.path("elsewhere.sock")).unwrap();
    std::os::unix::fs::symlink(tmp.path("elsewhere.sock"), dir.join("link.sock")).unwrap();
    let sender = sender_process(&tmp, &dir, "", &[("GST_DEBUG", "qtisocketsink:5"), ("GST_DEBUG_NO_COLOR", "1")]);
    // A receiver that joins now gets buffers: the junk stopped nothing.
    join_take_leave(&dir, "live.sock", 5);
    // Nothing reached the receiver behind the symlink.
    assert!(matches!(receiver.recv(Some(Duration::from_millis(200))).unwrap(), gstqtisocket::Event::Timeout));
    let log = stderr_of_killed(sender);
    for (name, why) in [
        ("notes.txt", "a regular file"),
        ("sub", "a directory"),
        ("link.sock", "a symlink"),
        ("stale.sock", "nobody listens"),
    ] {
        let line = format!("ignoring {} in the socket directory: {why}", path_str(&dir.join(name)));
        assert!(log.contains(&line), "no debug line «{line}» in:\n{log}");
    }
    assert!(!log.contains("ERROR"), "{log}");
}

#[test]
fn the_directory_removed_while_playing_is_an_element_error_naming_it() {
    let tmp = TempDir::new("fanout-removed");
    let dir = tmp.path("cams");
    std::fs::create_dir(&dir).unwrap();
    let sender = sender_process(&tmp, &dir, "", &[]);
    join_take_leave(&dir, "live.sock", 3);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_fails_naming_the_directory(sender.wait_with_output().unwrap(), &dir);
}

#[test]
fn the_directory_made_unreadable_while_playing_is_an_element_error_naming_it() {
    let tmp = TempDir::new("fanout-unreadable");
    let dir = tmp.path("cams");
    std::fs::create_dir(&dir).unwrap();
    // Root reads any directory: the sender runs as nobody then, with a registry it can write.
    let as_root = rustix::process::geteuid().is_root();
    let registry = tmp.path("registry");
    std::fs::create_dir(&registry).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&registry, std::fs::Permissions::from_mode(0o777)).unwrap();
    let pipeline = format!("videotestsrc is-live=true ! {CAPS} ! qtisocketsink socket-dir={}", path_str(&dir));
    let mut command = if as_root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "gst-launch-1.0"]);
        c
    } else {
        Command::new("gst-launch-1.0")
    };
    let sender = command
        .args(pipeline.split_whitespace())
        .env("GST_PLUGIN_PATH", plugin_dir())
        .env("GST_REGISTRY", registry.join("registry.bin"))
        .env("HOME", &registry)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o000)).unwrap();
    let output = sender.wait_with_output().unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = assert_fails_naming_the_directory(output, &dir);
    assert!(text.contains("Permission denied"), "{text}");
}

/// Checks that a sender process failed with the element error naming `dir`; its output.
fn assert_fails_naming_the_directory(output: std::process::Output, dir: &Path) -> String {
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{text}");
    let error = format!("The socket directory {} cannot be followed any more", path_str(dir));
    assert!(text.contains(&error), "{text}");
    text
}

/// The error with which `videotestsrc num-buffers=1 ! qtisocketsink SINK_PROPERTIES`
/// fails to start.
fn start_error(sink_properties: &str) -> String {
    init();
    let pipeline = gst::parse::launch(&format!("videotestsrc num-buffers=1 ! qtisocketsink {sink_properties}"))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    assert!(pipeline.set_state(gst::State::Playing).is_err());
    let bus = pipeline.bus().unwrap();
    let error = bus.timed_pop_filtered(gst::ClockTime::from_seconds(5), &[gst::MessageType::Error]).unwrap();
    let gst::MessageView::Error(e) = error.view() else { unreachable!() };
    let text = e.error().to_string();
    pipeline.set_state(gst::State::Null).unwrap();
    text
}

#[test]
fn socket_and_socket_dir_together_fail_the_start_naming_both() {
    let tmp = TempDir::new("fanout-both");
    let text = start_error(&format!("socket={} socket-dir={}", path_str(&tmp.path("s")), path_str(&tmp.0)));
    assert!(text.contains("Both 'socket'") && text.contains("'socket-dir'"), "{text}");
}

#[test]
fn a_missing_socket_dir_fails_the_start_naming_it() {
    let tmp = TempDir::new("fanout-missing");
    let missing = tmp.path("no-such-dir");
    let text = start_error(&format!("socket-dir={}", path_str(&missing)));
    assert!(text.contains(path_str(&missing)), "{text}");
}

#[test]
fn with_slow_receiver_wait_a_stuck_receiver_holds_the_producer_until_it_dies_and_a_stop_ends_the_wait() {
    const FRAMES: u64 = 60;
    const MAX_IN_FLIGHT: u64 = 4;
    let TwoHealthyOneStuck { tmp, dir, pipeline, src, sink, healthy, outs, stuck } =
        two_healthy_one_stuck("fanout-wait", &format!("max-in-flight={MAX_IN_FLIGHT} slow-receiver=wait"));
    let sent_to = |name: &str| receiver_stats(&sink, &dir.join(name)).map(|s| stat::<u64>(&s, "buffers-sent"));
    let push = |range: std::ops::Range<u64>| {
        for i in range {
            let mut buffer = gst::Buffer::from_mut_slice(frame(i));
            buffer.get_mut().unwrap().set_pts(gst::ClockTime::from_nseconds(i * FRAME_NS));
            src.push_buffer(buffer).unwrap();
        }
    };

    // appsrc queues what the sink cannot take yet. The stuck receiver takes 4; then every
    // send waits for it (back-pressure): nothing is skipped, nobody gets the 5th.
    push(0..FRAMES);
    wait_until("the stuck receiver holds max-in-flight", || sent_to("stuck.sock") == Some(MAX_IN_FLIGHT));
    std::thread::sleep(Duration::from_millis(200));
    let stats: gst::Structure = sink.property("stats");
    assert_eq!(stat::<u64>(&stats, "buffers-sent"), MAX_IN_FLIGHT, "{stats}");
    assert_eq!(stat::<u64>(&stats, "skipped"), 0, "{stats}");
    // Gone, it holds nobody up: the waiting send sees its hang-up.
    kill(stuck);
    wait_until("every frame went out", || stat::<u64>(&sink, "buffers-sent") == FRAMES);

    // Another stuck one: the producer waits again, and stopping ends the wait at once.
    let stuck = stuck_receiver(&tmp, &dir.join("stuck2.sock"));
    wait_until("the new receiver is connected", || connected_receivers(&sink) == 3);
    push(FRAMES..FRAMES + 10);
    wait_until("the new stuck receiver holds max-in-flight", || sent_to("stuck2.sock") == Some(MAX_IN_FLIGHT));
    let started = Instant::now();
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(started.elapsed() < Duration::from_secs(1), "stopping took {:?}", started.elapsed());
    kill(stuck);
    for child in healthy {
        kill(child);
    }
    for out in &outs {
        assert_frames(out, 0..FRAMES + MAX_IN_FLIGHT);
    }
    assert_no_glib_warnings();
}
