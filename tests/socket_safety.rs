//! Socket safety: the socket file's mode decides who may connect, the sender's
//! credentials are known, and an allow-list of uids turns other senders away, for the
//! Rust receiver and for `qtisocketsrc`. Senders are `qsock-replay` child processes;
//! when the tests run as root (as CI does), they run as another user (nobody, 65534),
//! so the permission bits are really what keeps them out. As another user, the tests
//! use this user's own uid and a mode that leaves it out.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use gst::prelude::*;
use gstqtisocket::{Error, Event, Receiver, ReceiverOptions, DEFAULT_SOCKET_MODE};

const WAIT: Option<Duration> = Some(Duration::from_secs(10));
const NOBODY: u32 = 65534;

/// One test at a time: one of them counts this process's fds.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn my_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// The uid the sender runs as: another user's when we may switch to it.
fn sender_uid() -> u32 {
    if my_uid() == 0 {
        NOBODY
    } else {
        my_uid()
    }
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// `qsock-replay` playing the unpooled video capture, as `sender_uid()`.
fn sender(socket: &Path, connect_timeout_ms: u64) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_qsock-replay"));
    command
        .arg(socket)
        .arg(capture("video-nopool.jsonl"))
        .args(["--connect-timeout-ms", &connect_timeout_ms.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if sender_uid() != my_uid() {
        command.uid(sender_uid()).gid(NOBODY);
    }
    command.spawn().unwrap()
}

#[test]
fn the_socket_file_gets_exactly_the_mode_asked_for() {
    let _serial = serial();
    let dir = TempDir::new("mode");
    let receiver = Receiver::bind(dir.path("default")).unwrap();
    assert_eq!(mode_of(receiver.path()), DEFAULT_SOCKET_MODE);
    assert_eq!(DEFAULT_SOCKET_MODE, 0o600);
    // 0666 survives the process umask (022 here): the receiver sets it after bind.
    for mode in [0o666, 0o660, 0o640, 0o000] {
        let receiver =
            Receiver::bind_with(dir.path("s"), &ReceiverOptions { socket_mode: mode, ..Default::default() }).unwrap();
        assert_eq!(mode_of(receiver.path()), mode, "asked for {mode:#o}");
    }
    let options = ReceiverOptions { socket_mode: 0o4777, ..Default::default() };
    match Receiver::bind_with(dir.path("setuid"), &options) {
        Err(Error::SocketPath { reason, .. }) => {
            assert!(reason.contains("0o4777") && reason.contains("0o777"), "{reason}")
        }
        other => panic!("a mode with bits outside 0777 was taken: {:?}", other.map(|_| ())),
    }
    assert!(!dir.path("setuid").exists());
}

#[test]
fn a_sender_the_mode_leaves_out_cannot_connect_and_one_it_lets_in_can() {
    let _serial = serial();
    let dir = TempDir::new("mode-connect");
    // Root may connect whatever the mode: leave the sender out by the bits it falls under.
    let closed = if sender_uid() == my_uid() { 0o000 } else { DEFAULT_SOCKET_MODE };
    let socket = dir.path("s");
    let mut receiver =
        Receiver::bind_with(&socket, &ReceiverOptions { socket_mode: closed, ..Default::default() }).unwrap();
    let (ok, output) = finish_replay(sender(&socket, 300));
    assert!(!ok && output.contains("Permission denied"), "{output}");
    assert!(matches!(recv_after_connect(&mut receiver, Some(Duration::ZERO)), Ok(Event::Timeout)));
    assert_eq!(receiver.stats().senders_accepted, 0);
    drop(receiver);

    let mut receiver =
        Receiver::bind_with(&socket, &ReceiverOptions { socket_mode: 0o666, ..Default::default() }).unwrap();
    let child = sender(&socket, 5000);
    let pid = child.id() as i32;
    let mut buffers = 0;
    while let Event::Buffer(_) = recv_after_connect(&mut receiver, WAIT).unwrap() {
        let peer = receiver.stats().peer.expect("a connected sender's credentials");
        assert_eq!((peer.pid, peer.uid), (pid, sender_uid()));
        buffers += 1;
    }
    assert_eq!(buffers, 5);
    assert!(finish_replay(child).0);
}

#[test]
fn allowed_uids_turn_other_senders_away_and_the_receiver_goes_on() {
    let _serial = serial();
    let dir = TempDir::new("uids");
    let socket = dir.path("s");
    let allowed = sender_uid() + 1;
    let options = ReceiverOptions { socket_mode: 0o666, allowed_uids: vec![allowed] };
    let mut receiver = Receiver::bind_with(&socket, &options).unwrap();
    let fds_before = open_fds();
    for attempt in 1..=3 {
        let child = sender(&socket, 5000);
        let pid = child.id();
        match recv_after_connect(&mut receiver, WAIT) {
            Err(e @ Error::SenderRefused { .. }) => {
                let text = e.to_string();
                for word in [format!("pid {pid}"), format!("uid {}", sender_uid()), format!("[{allowed}]")] {
                    assert!(text.contains(&word), "{text} does not say {word}");
                }
            }
            other => panic!("attempt {attempt}: expected the sender to be refused, got {other:?}"),
        }
        let (ok, output) = finish_replay(child);
        assert!(!ok, "the refused sender believes it delivered: {output}");
        let stats = receiver.stats();
        assert_eq!((stats.senders_refused, stats.senders_accepted, stats.connected), (attempt, 0, false));
        assert_eq!(open_fds(), fds_before, "a refused connection left an fd");
    }
    // The receiver still listens: with the sender's uid allowed, the same sender gets through.
    drop(receiver);
    let options = ReceiverOptions { socket_mode: 0o666, allowed_uids: vec![allowed, sender_uid()] };
    let mut receiver = Receiver::bind_with(&socket, &options).unwrap();
    let child = sender(&socket, 5000);
    assert!(matches!(recv_after_connect(&mut receiver, WAIT), Ok(Event::Buffer(_))));
    while let Ok(Event::Buffer(_)) = recv_after_connect(&mut receiver, WAIT) {}
    assert!(finish_replay(child).0);
}

#[test]
fn qtisocketsrc_takes_mode_and_allowed_uids_from_gst_launch_syntax_and_warns_on_refusal() {
    let _serial = serial();
    init();
    let dir = TempDir::new("src-uids");
    let socket = dir.path("s");
    let allowed = sender_uid() + 1;
    let running = Running::launch(&format!(
        "qtisocketsrc name=src socket={} socket-mode=0666 allowed-uids=\"<{allowed}>\" ! fakesink",
        path_str(&socket)
    ));
    let pipeline = &running.0;
    let src = running.element("src");
    assert_eq!(src.property::<u32>("socket-mode"), 0o666);
    let uids: Vec<u32> = src.property::<gst::Array>("allowed-uids").iter().map(|v| v.get().unwrap()).collect();
    assert_eq!(uids, [allowed]);
    let bus = pipeline.bus().unwrap();
    let child = sender(&socket, 5000);
    let pid = child.id();
    let message = bus
        .timed_pop_filtered(gst::ClockTime::from_seconds(10), &[gst::MessageType::Warning, gst::MessageType::Error])
        .expect("a warning about the refused sender");
    let gst::MessageView::Warning(warning) = message.view() else { panic!("{message:?}") };
    let text = format!("{} {}", warning.error(), warning.debug().unwrap_or_default());
    for word in
        [format!("pid {pid}"), format!("uid {}", sender_uid()), path_str(&socket).to_owned(), "allowed-uids".into()]
    {
        assert!(text.contains(&word), "{text} does not say {word}");
    }
    assert_eq!(mode_of(&socket), 0o666);
    assert!(!finish_replay(child).0);
    let stats = src.property::<gst::Structure>("stats");
    assert_eq!(stat::<u64>(&stats, "senders-refused"), 1);
    assert_eq!(stat::<u64>(&stats, "buffers"), 0);
    assert_eq!(stat::<i64>(&stats, "peer-uid"), -1);
    // Still playing, still listening.
    assert_eq!(src.current_state(), gst::State::Playing);
    assert!(socket.exists());
    pipeline.set_state(gst::State::Null).unwrap();
    assert_no_glib_warnings();
}

#[test]
fn qtisocketsrc_reports_the_connected_senders_credentials() {
    let _serial = serial();
    init();
    let dir = TempDir::new("src-peer");
    let socket = dir.path("s");
    let running = Running::launch(&format!(
        "qtisocketsrc name=src socket={} socket-mode=0666 ! fakesink enable-last-sample=false",
        path_str(&socket)
    ));
    let pipeline = &running.0;
    let src = running.element("src");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let (probe_seen, probe_src) = (seen.clone(), src.clone());
    src.static_pad("src").unwrap().add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        let stats = probe_src.property::<gst::Structure>("stats");
        *probe_seen.lock().unwrap() = Some((stat::<i64>(&stats, "peer-pid"), stat::<i64>(&stats, "peer-uid")));
        gst::PadProbeReturn::Ok
    });
    let child = sender(&socket, 5000);
    let pid = child.id();
    let bus = pipeline.bus().unwrap();
    bus.timed_pop_filtered(gst::ClockTime::from_seconds(10), &[gst::MessageType::Eos, gst::MessageType::Error])
        .unwrap();
    assert!(finish_replay(child).0);
    assert_eq!(*seen.lock().unwrap(), Some((pid as i64, sender_uid() as i64)));
    pipeline.set_state(gst::State::Null).unwrap();
    assert_no_glib_warnings();
}
