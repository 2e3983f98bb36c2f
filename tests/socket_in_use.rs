//! A socket path already served: a second receiver on the path of a live one is refused
//! with an error naming the path and the process listening there, and the first keeps
//! its senders; a stale socket file (nobody listening) is still replaced. For the Rust
//! API, `qtisocketsrc` in a pipeline and a `gst-launch-1.0` receiver in another process
//! (c-tests/test_socket_in_use.c does the same through the C API).

mod common;

use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::Duration;

use common::*;
use gst::prelude::*;
use gstqtisocket::{Error, Event, Receiver};

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

/// The reason `Receiver::bind(path)` was refused with; fails the test if it was not.
fn refusal(path: &Path) -> String {
    match Receiver::bind(path) {
        Err(Error::SocketPath { path: named, reason }) => {
            assert_eq!(named, path);
            reason
        }
        Err(other) => panic!("refused, but not for its path: {other}"),
        Ok(_) => panic!("a second receiver took {} from a live one", path.display()),
    }
}

/// Whether a sender could connect at `path` now (only for sockets of this test).
fn connects(path: &Path) -> bool {
    gstqtisocket::transport::Connection::connect(path).is_ok()
}

/// A socket bound at `path` (and listening if `listen`), as a receiver would leave it.
fn raw_socket_at(path: &Path, listen: bool) -> OwnedFd {
    let fd = rustix::net::socket(rustix::net::AddressFamily::UNIX, rustix::net::SocketType::SEQPACKET, None).unwrap();
    rustix::net::bind(&fd, &rustix::net::SocketAddrUnix::new(path).unwrap()).unwrap();
    if listen {
        rustix::net::listen(&fd, 1).unwrap();
    }
    fd
}

/// Whether the kernel lists a socket listening at `path` (`__SO_ACCEPTCON` in
/// /proc/net/unix): how a test waits for another process to be listening.
fn listening_at(path: &Path) -> bool {
    std::fs::read_to_string("/proc/net/unix").unwrap().lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() == 8
            && u32::from_str_radix(fields[3], 16).is_ok_and(|flags| flags & 0x1_0000 != 0)
            && Path::new(fields[7]) == path
    })
}

/// Receives a whole capture of `n` buffers, then its end of stream.
fn receive_all(receiver: &mut Receiver, n: usize) {
    for i in 0..n {
        assert!(matches!(recv_after_connect(receiver, WAIT).unwrap(), Event::Buffer(_)), "buffer {i}");
    }
    assert!(matches!(receiver.recv(WAIT).unwrap(), Event::Eos));
}

#[test]
fn a_second_receiver_is_refused_and_the_first_keeps_its_path_and_its_senders() {
    let dir = TempDir::new("in-use");
    let socket = dir.path("s");
    let mut first = Receiver::bind(&socket).unwrap();
    let file = std::fs::symlink_metadata(&socket).unwrap();
    let reason = refusal(&socket);
    assert!(reason.contains("another receiver is listening on it"), "{reason}");
    assert!(reason.contains(&format!("(pid {}, ", std::process::id())), "the process is named: {reason}");
    let message = Receiver::bind(&socket).err().unwrap().to_string();
    assert!(message.contains(path_str(&socket)), "the path is named: {message}");
    let now = std::fs::symlink_metadata(&socket).unwrap();
    assert_eq!(
        (now.ino(), now.dev(), now.mode()),
        (file.ino(), file.dev(), file.mode()),
        "the live receiver's socket file was touched"
    );
    // The first receiver still gets the next sender, and every buffer.
    let child = spawn_replay(&socket, "video-nopool.jsonl", &[]);
    receive_all(&mut first, 5);
    let (ok, output) = finish_replay(child);
    assert!(ok, "the sender did not get every buffer back: {output}");
    // Gone, it frees the path.
    drop(first);
    let mut again = Receiver::bind(&socket).unwrap();
    let child = spawn_replay(&socket, "video-nopool.jsonl", &[]);
    receive_all(&mut again, 5);
    assert!(finish_replay(child).0);
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = TempDir::new("stale");
    // A receiver's socket closed without its file being removed (a receiver that
    // crashed), and one bound but never listening: nobody can connect to either.
    for (name, listened) in [("closed", true), ("never-listened", false)] {
        let socket = dir.path(name);
        drop(raw_socket_at(&socket, listened));
        // (Another test's child may hold a copy for the moment between its fork and exec.)
        wait_until("nobody listens on the closed socket", || !connects(&socket));
        assert!(socket.exists());
        let receiver = bind_stale(&socket);
        assert!(connects(&socket), "{name}: the stale file was not replaced by a listening socket");
        drop(receiver);
        assert!(!socket.exists());
    }
    // A socket somebody holds but does not listen on takes no sender: stale too.
    let socket = dir.path("bound");
    let _bound = raw_socket_at(&socket, false);
    let receiver = Receiver::bind(&socket).unwrap();
    assert!(connects(receiver.path()));
}

#[test]
fn a_receiver_in_another_process_is_named_and_its_path_freed_when_it_dies() {
    let dir = TempDir::new("in-use-launch");
    let socket = dir.path("s");
    let mut launch = gst_launch_child(&dir, "qtisocketsrc socket=SOCKET ! fakesink");
    wait_until("gst-launch-1.0 listens", || listening_at(&socket));
    let reason = refusal(&socket);
    assert!(reason.contains(&format!("(pid {}, gst-launch-1.0)", launch.id())), "{reason}");
    // Killed, it leaves its socket file behind: stale, so replaced.
    launch.kill().unwrap();
    launch.wait().unwrap();
    assert!(socket.exists());
    let mut receiver = Receiver::bind(&socket).unwrap();
    let child = spawn_replay(&socket, "video-nopool.jsonl", &[]);
    receive_all(&mut receiver, 5);
    assert!(finish_replay(child).0);
}

#[test]
fn a_second_qtisocketsrc_fails_its_state_change_naming_the_path_and_the_first_keeps_receiving() {
    let dir = TempDir::new("in-use-src");
    let socket = dir.path("s");
    let first = Running::launch(&format!("qtisocketsrc name=src socket={} ! fakesink", path_str(&socket)));
    wait_until("the first qtisocketsrc listens", || listening_at(&socket));

    let second = gst::parse::launch(&format!("qtisocketsrc socket={} ! fakesink", path_str(&socket)))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    assert!(second.set_state(gst::State::Playing).is_err(), "the second qtisocketsrc started");
    let error = second.bus().unwrap().timed_pop_filtered(gst::ClockTime::from_seconds(10), &[gst::MessageType::Error]);
    let Some(gst::MessageView::Error(error)) = error.as_ref().map(|m| m.view()) else { panic!("no error: {error:?}") };
    let text = format!("{} {:?}", error.error(), error.debug());
    assert!(text.contains(path_str(&socket)), "the path is not named: {text}");
    assert!(text.contains("another receiver is listening on it"), "{text}");
    second.set_state(gst::State::Null).unwrap();
    drop(second);

    let child = spawn_replay(&socket, "video-nopool.jsonl", &[]);
    let end = first
        .0
        .bus()
        .unwrap()
        .timed_pop_filtered(gst::ClockTime::from_seconds(10), &[gst::MessageType::Eos, gst::MessageType::Error]);
    assert!(matches!(end.as_ref().map(|m| m.view()), Some(gst::MessageView::Eos(_))), "{end:?}");
    assert_eq!(stat::<u64>(&first.element("src"), "buffers"), 5, "the first qtisocketsrc received every buffer");
    drop(first);
    let (ok, output) = finish_replay(child);
    assert!(ok, "the sender did not get every buffer back: {output}");
    assert!(!socket.exists(), "the first qtisocketsrc removed its socket file at NULL");
}
