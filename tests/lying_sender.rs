//! A lying sender. For every rule of the spec's *Validation* section that a sender can
//! break (every `ProtocolError` but the receiver->sender `ReturnCountOutOfRange` and
//! `MalformedReturn`), a sender in this process sends, on a real socket of a real
//! `Receiver`, a message that breaks exactly that rule, with real memfds attached where
//! the rule is about fds or memory. Each lie must
//!  (a) come out of `recv` as `Error::Protocol` of the rule's variant, whose text names
//!      the problem, and count in `stats().protocol_errors`;
//!  (b) leave the receiver going: the same sender's next, valid, message arrives as a
//!      buffer holding the right memory;
//!  (c) leave no fd behind: right after the rejection the process holds exactly the fds
//!      it held before the receiver read the lie (every fd of the lie is in flight then,
//!      since the sender's copies are closed once sent), and after everything is dropped
//!      exactly the fds it held before the receiver existed.
//!
//! The table `lies!` below is the list of rules: each row is one test of its own, and
//! `every_lie_in_a_row_on_one_connection` tells them all, in order, to one receiver.
//!
//! Every test here counts this process's fds, so they take one global lock and never
//! run beside each other.

mod common;
mod lies;

use std::os::fd::AsFd;
use std::time::Duration;

use common::*;
use gstqtisocket::protocol::SenderMessage;
use gstqtisocket::transport::Connection;
use gstqtisocket::{Error, Event, Receiver};
use lies::*;

const WAIT: Option<Duration> = Some(Duration::from_secs(5));

for_each_lie!(lie_tests);

// ---------------------------------------------------------------------------------------
// Telling lies

/// The next event must be a buffer whose first block's memory holds `index`.
fn expect_buffer(name: &str, receiver: &mut Receiver, index: u64) {
    match recv_after_connect(receiver, WAIT) {
        Ok(Event::Buffer(buffer)) => {
            let fd = buffer.fd(0).unwrap_or_else(|| panic!("{name}: a video buffer without an fd"));
            assert_eq!(first8(fd), index, "{name}: the buffer maps the wrong memory");
        }
        other => panic!("{name}: expected a buffer with index {index}, got {other:?}"),
    }
}

#[derive(Default)]
struct Expected {
    buffers: u64,
    protocol_errors: u64,
}

/// Tells one lie on a connected pair, then one valid message, checking (a), (b) and the
/// per-lie part of (c).
fn tell(name: &str, lie: &Lie, receiver: &mut Receiver, sender: &Connection, expected: &mut Expected, index: u64) {
    for step in (lie.build)() {
        match step {
            Message(record, fds) => sender.send_message(&record, &borrow_all(&fds)),
            Raw(record, fds) => send_raw(sender, &record, &fds),
            Receive(index) => {
                expect_buffer(name, receiver, index);
                expected.buffers += 1;
                Ok(())
            }
        }
        .unwrap_or_else(|e| panic!("{name}: sending: {e}"));
        // The step's fds are closed here: from now on only the receiver can hold them.
    }
    // Everything the lie carried is in flight, in no fd table.
    let baseline = open_fds();

    // (a) rejected for the rule it breaks, in words a user can act on.
    let error = match recv_after_connect(receiver, WAIT) {
        Err(Error::Protocol(e)) => e,
        other => panic!("{name}: expected a protocol error, got {other:?}"),
    };
    assert!((lie.expect)(&error), "{name}: rejected for the wrong rule: {error:?} (\"{error}\")");
    let text = error.to_string();
    for word in lie.says {
        assert!(text.contains(word), "{name}: the error does not say {word:?}: \"{text}\"");
    }
    expected.protocol_errors += 1;
    assert_eq!(receiver.stats().protocol_errors, expected.protocol_errors, "{name}: stats().protocol_errors");
    // (c) every fd the lie brought is closed.
    assert_eq!(open_fds(), baseline, "{name}: the rejected message's fds were not all closed");

    // (b) the receiver goes on with the same sender.
    let fd = memfd(FRAME_BYTES, index);
    sender
        .send_message(&video(VALID_BUF_ID), &[fd.as_fd()])
        .unwrap_or_else(|e| panic!("{name}: sending the valid message: {e}"));
    drop(fd);
    expect_buffer(name, receiver, index);
    expected.buffers += 1;
    let stats = receiver.stats();
    assert_eq!(
        (stats.buffers, stats.protocol_errors, stats.connected),
        (expected.buffers, expected.protocol_errors, true),
        "{name}: (buffers, protocol_errors, connected) after the valid message"
    );
    assert_eq!(open_fds(), baseline, "{name}: the valid buffer's fd outlived the buffer");
}

/// Tells `lies`, in order, to one receiver from one sender; checks that no fd outlives them.
fn run(lies: &[(&str, Lie)]) {
    let _serial = serial();
    let before = open_fds();
    {
        let dir = TempDir::new("lie");
        let mut receiver = Receiver::bind(dir.path("s")).unwrap();
        let sender = Connection::connect(&dir.path("s")).unwrap();
        // Let the receiver accept, so its end of the connection is in every baseline.
        assert!(matches!(recv_after_connect(&mut receiver, Some(Duration::from_millis(20))), Ok(Event::Timeout)));
        assert!(receiver.stats().connected);
        let mut expected = Expected::default();
        for (i, (name, lie)) in lies.iter().enumerate() {
            tell(name, lie, &mut receiver, &sender, &mut expected, 1000 + i as u64);
        }
        drop(receiver);
        drop(sender);
    }
    let names: Vec<&str> = lies.iter().map(|(name, _)| *name).collect();
    assert_eq!(open_fds(), before, "fds outlived the receiver, the sender and every buffer: {names:?}");
}

/// All the lies on one connection, one after another: no lie leaves state (a pending
/// length, a cached fd, a half-read record) that spoils the next.
#[test]
fn every_lie_in_a_row_on_one_connection() {
    run(LIES);
}

/// The offsets the lies patch are those of the records they patch, and the valid
/// message is valid.
#[test]
fn the_valid_message_and_the_offsets_the_lies_use() {
    let _serial = serial();
    let record = video(VALID_BUF_ID);
    assert_eq!(record.len(), METAS_AT);
    assert_eq!(&record[INFO_AT..INFO_AT + 4], &(Identity::BufferInfo as u32).to_le_bytes());
    assert_eq!(&record[FRAME_AT..FRAME_AT + 4], &(Identity::Frame as u32).to_le_bytes());
    assert!(matches!(SenderMessage::parse(&record, 1), Ok(SenderMessage::Data(_))));
    let with_roi = video_with(7, false, nv12(FRAME_BYTES, FRAME_BYTES), roi(Some("x;")));
    assert_eq!(&with_roi[METAS_AT..METAS_AT + 4], &(Identity::VideoRoiMeta as u32).to_le_bytes());
    assert!(SenderMessage::parse(&with_roi, 1).is_ok());
    let text = data(
        None,
        info(&[-1], false),
        vec![MemoryBlock::Text(TextPayload { contents: vec![b'x'; 1024], maxsize: 2048 })],
        Metas::default(),
    );
    assert_eq!(&text[TEXT_SIZE_AT..TEXT_SIZE_AT + 8], &1024u64.to_le_bytes()[..]);
    assert!(SenderMessage::parse(&text, 0).is_ok());
    let links_ok =
        video_with(7, false, nv12(FRAME_BYTES, FRAME_BYTES), landmarks(vec![Link { s_kp_idx: 0, d_kp_idx: 1 }]));
    assert!(SenderMessage::parse(&links_ok, 1).is_ok());
}
