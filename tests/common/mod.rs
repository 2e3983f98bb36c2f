//! Shared by the integration tests: temporary socket paths, memfds, fd counting, and
//! the replay sender as a child process.
#![allow(dead_code)]

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use gst::glib;

pub const CAPTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");

pub fn capture(name: &str) -> PathBuf {
    Path::new(CAPTURES).join(name)
}

/// A fresh directory for socket files, removed at the end.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("qsock-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A memfd of `size` bytes whose first 8 bytes are `index` (little-endian).
pub fn memfd(size: u64, index: u64) -> OwnedFd {
    let mut file = memfd::MemfdOptions::default().create("qsock-test").unwrap().into_file();
    file.set_len(size).unwrap();
    if size >= 8 {
        file.write_all(&index.to_le_bytes()).unwrap();
    }
    file.into()
}

/// The first 8 bytes of the object behind `fd`, as the index the sender wrote there.
pub fn first8(fd: BorrowedFd<'_>) -> u64 {
    let mut bytes = [0u8; 8];
    assert_eq!(rustix::io::pread(fd, &mut bytes, 0).unwrap(), 8);
    u64::from_le_bytes(bytes)
}

/// How many threads this process runs: the kernel's count (`Threads:` in
/// /proc/self/status), exact at one instant, where listing /proc/self/task can miss a
/// thread while another exits; less GLib's `pool-spawner` (GLib 2.76 and later start it
/// with the first shared thread pool and keep it for the life of the process: GLib's, not
/// a thread anything here could leak).
pub fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Threads:")).unwrap();
    let all: usize = line["Threads:".len()..].trim().parse().unwrap();
    all - thread_names().iter().filter(|name| *name == "pool-spawner").count()
}

/// Waits (up to 5 s) until this process runs no more than `limit` threads once GLib's
/// idle pool threads (kept for reuse, named after their last task) are told to exit;
/// false if it never does.
pub fn threads_settle_to(limit: usize) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        glib::ThreadPool::stop_unused_threads();
        if threads() <= limit {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The names of this process's threads, sorted.
pub fn thread_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .map(|name| name.trim_end().to_owned())
        .collect();
    names.sort();
    names
}

/// How many fds this process has open.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count() - 1 // read_dir's own fd
}

/// What a `stats` structure is read from: an element (its `stats` property, read now) or
/// a structure read before.
pub trait HasStats {
    fn stats_structure(&self) -> gst::Structure;
}

impl HasStats for gst::Element {
    fn stats_structure(&self) -> gst::Structure {
        use gst::prelude::*;
        self.property("stats")
    }
}

impl HasStats for gst::Structure {
    fn stats_structure(&self) -> gst::Structure {
        self.clone()
    }
}

/// Field `field` of the stats, as a `T`: `stat::<u64>(&src, "buffers")`,
/// `stat::<bool>(&sink, "connected")`. Fails the test, naming the field and showing the
/// structure, if there is no such field of that type.
pub fn stat<T: for<'a> glib::value::FromValue<'a> + 'static>(from: &impl HasStats, field: &str) -> T {
    let stats = from.stats_structure();
    stats.get::<T>(field).unwrap_or_else(|e| panic!("no {field} in {stats}: {e}"))
}

/// The bundled replay sender, playing `capture` into `socket` in a child process.
pub fn spawn_replay(socket: &Path, capture_name: &str, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_qsock-replay"))
        .arg(socket)
        .arg(capture(capture_name))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for the replay child and returns (success, its output).
pub fn finish_replay(child: Child) -> (bool, String) {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

pub fn borrow_all(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(|fd| fd.as_fd()).collect()
}

static GLIB_WARNINGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// GStreamer, our plugin registered statically, and a log handler that records every
/// GLib warning or critical (a test fails if any appeared).
pub fn init() {
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

pub fn assert_no_glib_warnings() {
    let warnings = GLIB_WARNINGS.lock().unwrap();
    assert!(warnings.is_empty(), "GLib warnings or criticals: {warnings:?}");
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Whether this is the child process that runs `test` alone (with GLib criticals fatal);
/// in the parent, runs that child and checks it passed.
pub fn alone_in_a_child_process(test: &str) -> bool {
    if std::env::var_os("QSOCK_ALONE_CHILD").is_some() {
        return true;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("QSOCK_ALONE_CHILD", "1")
        .env("G_DEBUG", "fatal-criticals")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    println!("{text}");
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "{text}");
    false
}

/// Polls `condition` until it holds, failing the test after 20 s.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Where cargo built the plugin (libgstqtisocket.so), next to the binaries.
pub fn plugin_dir() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_qsock-replay")).parent().unwrap()
}

/// `gst-launch-1.0 -e PIPELINE` in a child process, `SOCKET` replaced by `dir`'s socket
/// path, with the plugin from the build output and GLib criticals fatal.
pub fn gst_launch_child(dir: &TempDir, pipeline: &str) -> Child {
    assert!(plugin_dir().join("libgstqtisocket.so").exists(), "run `cargo build` first");
    Command::new("gst-launch-1.0")
        .arg("-e")
        .args(pipeline.replace("SOCKET", path_str(&dir.path("s"))).split_whitespace())
        .env("GST_PLUGIN_PATH", plugin_dir())
        .env("GST_REGISTRY", dir.path("registry.bin"))
        .env("G_DEBUG", "fatal-criticals")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A pipeline set to NULL when dropped, also when an assertion failed on the way.
pub struct Running(pub gst::Pipeline);

impl Running {
    /// Parses `description` and sets it PLAYING.
    pub fn launch(description: &str) -> Running {
        use gst::prelude::*;
        init();
        let pipeline = gst::parse::launch(description).unwrap().downcast::<gst::Pipeline>().unwrap();
        pipeline.set_state(gst::State::Playing).unwrap();
        Running(pipeline)
    }

    pub fn element(&self, name: &str) -> gst::Element {
        use gst::prelude::*;
        self.0.by_name(name).unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        use gst::prelude::*;
        let _ = self.0.set_state(gst::State::Null);
    }
}

/// `receiver.recv(timeout)`, passing over `Event::SenderConnected`: for tests about what
/// comes after a sender arrives (tests/receiver.rs checks the arrival itself).
#[allow(dead_code)]
pub fn recv_after_connect(
    receiver: &mut gstqtisocket::Receiver,
    timeout: Option<std::time::Duration>,
) -> Result<gstqtisocket::Event, gstqtisocket::Error> {
    loop {
        match receiver.recv(timeout) {
            Ok(gstqtisocket::Event::SenderConnected(_)) => continue,
            other => return other,
        }
    }
}

/// The description of a 64x48 NV12 frame in a block of `size` bytes (4608 and up).
#[allow(dead_code)]
pub fn nv12_64x48(size: u64) -> gstqtisocket::protocol::MemoryBlock {
    gstqtisocket::protocol::MemoryBlock::Frame(gstqtisocket::protocol::FramePayload {
        width: 64,
        height: 48,
        format: 23,
        n_planes: 2,
        offsets: [0, 3072, 0, 0],
        strides: [64, 64, 0, 0],
        flags: 0,
        size,
        maxsize: size,
    })
}

/// `Receiver::bind(path)` on a stale socket file, allowing for the moment in which another
/// test's child, between its fork and its exec, still holds a copy of the listener that
/// made it (somebody does listen there until that child execs).
#[allow(dead_code)]
pub fn bind_stale(path: &Path) -> gstqtisocket::Receiver {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match gstqtisocket::Receiver::bind(path) {
            Ok(receiver) => return receiver,
            Err(e) if e.to_string().contains("is listening") && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) => panic!("the stale socket {} was not replaced: {e}", path.display()),
        }
    }
}

/// `appsrc ! qtisocketsink socket=SOCKET` (both named), PLAYING.
#[allow(dead_code)]
pub fn sender_pipeline(
    socket: &Path,
    caps: &str,
    sink_properties: &str,
) -> (gst::Pipeline, gst_app::AppSrc, gst::Element) {
    appsrc_into_sink(caps, &format!("socket={} {sink_properties}", path_str(socket)))
}

/// `appsrc ! qtisocketsink SINK_PROPERTIES sync=false` (both named), PLAYING.
#[allow(dead_code)]
pub fn appsrc_into_sink(caps: &str, sink_properties: &str) -> (gst::Pipeline, gst_app::AppSrc, gst::Element) {
    use gst::prelude::*;
    init();
    let pipeline = gst::parse::launch(&format!(
        "appsrc name=src format=time caps={caps} ! qtisocketsink name=sink sync=false {sink_properties}"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = pipeline.by_name("src").unwrap().downcast::<gst_app::AppSrc>().unwrap();
    let sink = pipeline.by_name("sink").unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    (pipeline, src, sink)
}
