//! Faults with real processes and real limits: a sender killed with SIGKILL mid-stream,
//! a receiver that never returns a buffer, fd exhaustion (`RLIMIT_NOFILE`) while fds
//! arrive, and a sender that shrinks a memfd it already sent. Each test counts this
//! process's fds and threads (or lowers its limits), so each runs alone in a child
//! process of its own.

mod common;
mod lies;

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use common::*;
use gst::prelude::*;
use gstqtisocket::protocol::MAX_RECORD_LEN;
use gstqtisocket::transport::{wait_readable, Connection, Listener, MessageIn, MessageReader};
use gstqtisocket::{Error, Event, Receiver, DEFAULT_SOCKET_MODE};
use lies::{data, info, nv12, MemoryBlock, Metas, ProtocolError, FRAME_BYTES};

const WAIT: Duration = Duration::from_secs(10);

/// The next message of one of `types` on `running`'s bus, or None after `WAIT`.
fn next(running: &Running, types: &[gst::MessageType]) -> Option<gst::Message> {
    running.0.bus().unwrap().timed_pop_filtered(gst::ClockTime::from_seconds(WAIT.as_secs()), types)
}

fn counting_probe(element: &gst::Element) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = count.clone();
    element.static_pad("sink").unwrap().add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        gst::PadProbeReturn::Ok
    });
    count
}

fn kill(mut child: Child) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

#[test]
fn a_sender_killed_mid_stream_is_an_error_or_waited_for_and_leaves_nothing_behind() {
    if !alone_in_a_child_process("a_sender_killed_mid_stream_is_an_error_or_waited_for_and_leaves_nothing_behind") {
        return;
    }
    let dir = TempDir::new("sigkill-sender");
    let socket = dir.path("s");
    // The first run starts GStreamer's once-per-process threads and fds; a second run
    // that ends with more than the first one did has leaked them.
    senders_killed_then_a_good_one(&socket);
    threads_settle_to(2); // the main thread and this test's: GLib's idle pool threads gone
    let before = (open_fds(), threads());
    let names_before = thread_names();
    senders_killed_then_a_good_one(&socket);
    let after = (open_fds(), threads());
    println!("sender SIGKILL: (fds, threads) before {before:?} after {after:?}");
    assert_eq!(after.0, before.0, "fds leaked");
    assert!(threads_settle_to(before.1), "threads leaked: {names_before:?} -> {:?}", thread_names());
    assert_no_glib_warnings();
}

/// A sender SIGKILLed under keep-listening=false, then three under keep-listening=true
/// and a sender that runs to its EOS.
fn senders_killed_then_a_good_one(socket: &Path) {
    let socket = socket.to_owned();

    // keep-listening=false (the deployed behaviour): an error that names the socket.
    {
        let running = Running::launch(&format!(
            "qtisocketsrc name=src socket={} ! fakesink name=sink enable-last-sample=false",
            path_str(&socket)
        ));
        let buffers = counting_probe(&running.element("sink"));
        let sender = spawn_replay(&socket, "video-pool.jsonl", &["--repeat", "100000", "--quiet"]);
        wait_until("20 buffers arrived", || buffers.load(std::sync::atomic::Ordering::SeqCst) >= 20);
        kill(sender);
        let message = next(&running, &[gst::MessageType::Error]).expect("an error after the sender died");
        let gst::MessageView::Error(error) = message.view() else { unreachable!() };
        let text = format!("{} {:?}", error.error(), error.debug());
        assert!(text.contains(path_str(&socket)) && text.contains("hung up"), "{text}");
    }

    // keep-listening=true: a message, then the next sender's stream, to its EOS.
    {
        let running = Running::launch(&format!(
            "qtisocketsrc name=src keep-listening=true socket={} ! fakesink name=sink enable-last-sample=false",
            path_str(&socket)
        ));
        let src = running.element("src");
        let buffers = counting_probe(&running.element("sink"));
        for round in 1..=3 {
            let sender = spawn_replay(&socket, "video-pool.jsonl", &["--repeat", "100000", "--quiet"]);
            let at_least = buffers.load(std::sync::atomic::Ordering::SeqCst) + 20;
            wait_until("20 more buffers", || buffers.load(std::sync::atomic::Ordering::SeqCst) >= at_least);
            kill(sender);
            let gone = next(&running, &[gst::MessageType::Element, gst::MessageType::Error]).unwrap();
            assert!(gone.structure().is_some_and(|s| s.name() == "GstQtiSocketSrcSenderGone"), "{gone:?}");
            wait_until("the dead sender's cached fds are closed", || stat::<u64>(&src, "fds-cached") == 0);
            assert_eq!(stat::<u64>(&src, "senders-accepted"), round);
        }
        let (ok, output) = finish_replay(spawn_replay(&socket, "video-nopool.jsonl", &[]));
        assert!(ok, "the next sender got every buffer back: {output}");
        next(&running, &[gst::MessageType::Eos]).expect("the next sender's EOS");
        assert_eq!(stat::<u64>(&src, "protocol-errors"), 0);
    }
}

#[test]
fn a_receiver_that_never_returns_holds_the_sender_to_its_pool_and_nothing_leaks() {
    if !alone_in_a_child_process("a_receiver_that_never_returns_holds_the_sender_to_its_pool_and_nothing_leaks") {
        return;
    }
    init();
    let dir = TempDir::new("hoarder");
    let socket = dir.path("s");
    let before = (open_fds(), threads());
    // Pooled memfds from the sink's own allocator, then system memory copied into memfds.
    for (source, copies) in [
        ("videotestsrc is-live=false ! video/x-raw,format=NV12,width=320,height=240", false),
        ("appsrc name=app format=time ! video/x-raw,format=NV12,width=320,height=240,framerate=30/1", true),
    ] {
        let listener = Listener::bind(&socket, DEFAULT_SOCKET_MODE).unwrap();
        let running = Running::launch(&format!(
            "{source} ! qtisocketsink name=sink wait-for-receiver=true socket={}",
            path_str(&socket)
        ));
        let sink = running.element("sink");
        let pusher = copies.then(|| {
            let app = running.element("app").downcast::<gst_app::AppSrc>().unwrap();
            std::thread::spawn(move || {
                for i in 0..100u64 {
                    let mut buffer = gst::Buffer::from_mut_slice(vec![i as u8; 320 * 240 * 3 / 2]);
                    buffer.get_mut().unwrap().set_pts(gst::ClockTime::from_mseconds(33 * i));
                    if app.push_buffer(buffer).is_err() {
                        break; // flushing: the pipeline went to NULL
                    }
                }
            })
        });
        // A receiver that reads every message and never sends a return.
        wait_readable(listener.as_fd(), Some(WAIT)).unwrap();
        let connection = listener.accept().unwrap().expect("the sink connected");
        let (mut reader, mut record) = (MessageReader::default(), vec![0; MAX_RECORD_LEN + 1]);
        let mut held = vec![];
        let deadline = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < deadline {
            wait_readable(connection.as_fd(), Some(Duration::from_millis(50))).unwrap();
            if let MessageIn::Message { fds, .. } = reader.read(&connection, &mut record).unwrap() {
                held.push(fds);
            }
        }
        let (sent, in_flight, copied) =
            (stat::<u64>(&sink, "buffers-sent"), stat::<u64>(&sink, "in-flight"), stat::<u64>(&sink, "copies"));
        println!("never returned ({source}): {} held, sent {sent}, in flight {in_flight}, copies {copied}", held.len());
        assert!((2..=16).contains(&held.len()), "the sender's pool bounds what it sends: {} held", held.len());
        assert_eq!((sent, in_flight), (held.len() as u64, held.len() as u64));
        assert_eq!(copied, if copies { sent } else { 0 });
        // The receiver dies holding everything: the sink lets every buffer go.
        drop((connection, listener, held));
        wait_until("the sink released what the dead receiver held", || stat::<u64>(&sink, "in-flight") == 0);
        let started = Instant::now();
        drop(running);
        assert!(started.elapsed() < Duration::from_secs(2), "NULL took {:?}", started.elapsed());
        if let Some(pusher) = pusher {
            pusher.join().unwrap();
        }
    }
    let after = (open_fds(), threads());
    println!("never returned: (fds, threads) before {before:?} after {after:?}");
    assert!(threads_settle_to(before.1), "threads leaked: {before:?} -> {:?}", thread_names());
    assert_no_glib_warnings();
}

// ---------------------------------------------------------------------------------------
// fd exhaustion and shrinking memfds, against the Rust receiver

/// NV12 64x48 frames (the lie table's), one block per buf_id.
fn nv12_message(buf_ids: &[i32], n_fds: usize, pooled: bool) -> Vec<u8> {
    let frames = vec![MemoryBlock::Frame(nv12(FRAME_BYTES, FRAME_BYTES)); buf_ids.len()];
    data(Some(n_fds), info(buf_ids, pooled), frames, Metas::default())
}

fn connected_pair(dir: &TempDir) -> (Receiver, Connection) {
    let mut receiver = Receiver::bind(dir.path("s")).unwrap();
    let sender = Connection::connect(&dir.path("s")).unwrap();
    assert!(matches!(recv_after_connect(&mut receiver, Some(Duration::from_millis(50))), Ok(Event::Timeout)));
    assert!(receiver.stats().connected);
    (receiver, sender)
}

fn set_fd_limit(limit: u64) {
    use rustix::process::{setrlimit, Resource, Rlimit};
    let hard = rustix::process::getrlimit(Resource::Nofile).maximum;
    setrlimit(Resource::Nofile, Rlimit { current: Some(limit), maximum: hard }).unwrap();
}

/// Lowers RLIMIT_NOFILE just above the highest fd open and fills every free number
/// below it but one: the process can open exactly one more fd until the fillers close.
fn leave_room_for_one_fd() -> Vec<OwnedFd> {
    let highest = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap();
    set_fd_limit(highest + 2);
    let mut fillers = vec![];
    while let Ok(fd) = rustix::io::fcntl_dupfd_cloexec(std::io::stdin(), 0) {
        fillers.push(fd);
    }
    fillers.pop();
    fillers
}

#[test]
fn fd_exhaustion_rejects_the_message_clearly_and_the_stream_goes_on() {
    if !alone_in_a_child_process("fd_exhaustion_rejects_the_message_clearly_and_the_stream_goes_on") {
        return;
    }
    let dir = TempDir::new("nofile");
    let (mut receiver, sender) = connected_pair(&dir);
    let fds: Vec<OwnedFd> = (0..4).map(|i| memfd(FRAME_BYTES, 700 + i)).collect();
    sender.send_message(&nv12_message(&[1, 2, 3, 4], 4, false), &borrow_all(&fds)).unwrap();
    drop(fds); // in flight now, in no fd table
    let before = open_fds();
    let fillers = leave_room_for_one_fd();
    let refused = recv_after_connect(&mut receiver, Some(WAIT));
    drop(fillers);
    set_fd_limit(4096);
    match refused {
        Err(Error::Protocol(e @ ProtocolError::ControlTruncated)) => {
            let text = e.to_string();
            assert!(text.contains("MSG_CTRUNC") && text.contains("fd limit"), "{text}");
        }
        other => panic!("expected the message to be refused for its fds, got {other:?}"),
    }
    assert_eq!(open_fds(), before, "the fds that did arrive were not closed");
    // With room again, the same sender's next message arrives whole.
    let fd = memfd(FRAME_BYTES, 701);
    sender.send_message(&nv12_message(&[5], 1, false), &[fd.as_fd()]).unwrap();
    match recv_after_connect(&mut receiver, Some(WAIT)) {
        Ok(Event::Buffer(buffer)) => assert_eq!(first8(buffer.fd(0).unwrap()), 701),
        other => panic!("expected the next buffer, got {other:?}"),
    }
    assert_eq!(receiver.stats().protocol_errors, 1);
}

fn shrink_sealed(fd: &OwnedFd) {
    rustix::fs::fcntl_add_seals(fd, rustix::fs::SealFlags::SHRINK).unwrap();
}

#[test]
fn a_pooled_memfd_shrunk_after_it_was_sent_is_caught_at_its_next_use() {
    if !alone_in_a_child_process("a_pooled_memfd_shrunk_after_it_was_sent_is_caught_at_its_next_use") {
        return;
    }
    let dir = TempDir::new("shrink");
    let (mut receiver, sender) = connected_pair(&dir);
    let object = {
        let file = memfd::MemfdOptions::default().allow_sealing(true).create("qsock-test").unwrap().into_file();
        file.set_len(FRAME_BYTES).unwrap();
        OwnedFd::from(file)
    };
    sender.send_message(&nv12_message(&[9], 1, true), &[object.as_fd()]).unwrap();
    drop(recv_after_connect(&mut receiver, Some(WAIT)).unwrap());
    // The sender shrinks the object it sent, then names its buf_id again (no fd).
    rustix::fs::ftruncate(&object, 16).unwrap();
    sender.send_message(&nv12_message(&[9], 0, true), &[]).unwrap();
    match recv_after_connect(&mut receiver, Some(WAIT)) {
        Err(Error::Protocol(e @ ProtocolError::MaxsizePastObject { buf_id: 9, object_size: 16, .. })) => {
            assert!(e.to_string().contains("16 bytes"), "{e}");
        }
        other => panic!("a shrunk object reached downstream: {other:?}"),
    }
    // Sealed against shrinking (as qtisocketsink's memfds are), it cannot be shrunk.
    rustix::fs::ftruncate(&object, FRAME_BYTES).unwrap();
    shrink_sealed(&object);
    assert_eq!(rustix::fs::ftruncate(&object, 16), Err(rustix::io::Errno::PERM));
}

#[test]
fn qtisocketsink_memfds_are_sealed_so_no_receiver_can_be_made_to_fault() {
    if !alone_in_a_child_process("qtisocketsink_memfds_are_sealed_so_no_receiver_can_be_made_to_fault") {
        return;
    }
    let dir = TempDir::new("sealed");
    let mut receiver = Receiver::bind(dir.path("s")).unwrap();
    let running = Running::launch(&format!(
        "videotestsrc num-buffers=3 ! video/x-raw,format=NV12,width=64,height=48 ! \
         qtisocketsink wait-for-receiver=true socket={}",
        path_str(&dir.path("s"))
    ));
    let mut checked = 0;
    while let Ok(Event::Buffer(buffer)) = recv_after_connect(&mut receiver, Some(WAIT)) {
        let fd = buffer.fd(0).unwrap();
        let seals = rustix::fs::fcntl_get_seals(fd).unwrap();
        use rustix::fs::SealFlags;
        assert!(seals.contains(SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL), "{seals:?}");
        assert_eq!(rustix::fs::ftruncate(fd, 0), Err(rustix::io::Errno::PERM));
        checked += 1;
    }
    assert_eq!(checked, 3);
    drop(running);
}
