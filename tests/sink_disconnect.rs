//! `qtisocketsink` against a receiver that pauses twice in a row while it keeps a buffer
//! (as a receiver with `enable-last-sample` does): two `DISCONNECT`s arrive while the
//! sink is already draining. The sink must take the second one in its stride, drain,
//! reconnect once every buffer is back, and the stream goes on. The peer is the
//! library's bare [`Receiver`], doing what the deployed receiver does on a pause: it
//! sends `DISCONNECT` and keeps its socket.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use gst::prelude::*;
use gstqtisocket::{Event, ReceivedBuffer, Receiver};

const CAPS: &str = "video/x-raw,format=NV12,width=64,height=48,framerate=100/1";
const CYCLES: u64 = 3;
const WAIT: Duration = Duration::from_secs(20);

/// Set by a panic on the sink's connection thread (named `qtisocketsink`).
static SINK_THREAD_PANICKED: AtomicBool = AtomicBool::new(false);

fn watch_for_sink_thread_panics() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some("qtisocketsink") {
            SINK_THREAD_PANICKED.store(true, Ordering::SeqCst);
        }
        default_hook(info);
    }));
}

fn stats(sink: &gst::Element) -> gst::Structure {
    sink.property::<gst::Structure>("stats")
}

fn stat(sink: &gst::Element, name: &str) -> u64 {
    let s = stats(sink);
    s.get::<u64>(name).unwrap_or_else(|_| panic!("no {name} in {s}"))
}

fn connected(sink: &gst::Element) -> bool {
    stats(sink).get::<bool>("connected").unwrap()
}

/// The receiving side's view of the stream: the last PTS seen, and how many times the
/// sender hung up.
struct Stream {
    receiver: Receiver,
    last_pts: Option<u64>,
    senders_gone: u64,
}

impl Stream {
    /// The next buffer, checking its PTS is later than every one before it.
    fn next_buffer(&mut self) -> ReceivedBuffer {
        loop {
            match self.receiver.recv(Some(WAIT)).unwrap() {
                Event::Buffer(buffer) => {
                    let pts = buffer.message().info.pts;
                    assert_ne!(pts, gstqtisocket::protocol::CLOCK_TIME_NONE, "a buffer without PTS");
                    if let Some(last) = self.last_pts {
                        assert!(pts > last, "PTS {pts} after {last}: the stream went back");
                    }
                    self.last_pts = Some(pts);
                    return buffer;
                }
                Event::SenderGone => self.senders_gone += 1,
                Event::SenderConnected(_) => {}
                other => panic!("expected a buffer, got {other:?}"),
            }
        }
    }
}

#[test]
fn a_receiver_that_pauses_twice_while_keeping_a_buffer_gets_the_stream_back() {
    init();
    watch_for_sink_thread_panics();
    let dir = TempDir::new("sink-disconnect");
    let socket = dir.path("s");
    let mut stream = Stream { receiver: Receiver::bind(&socket).unwrap(), last_pts: None, senders_gone: 0 };
    let running = Running::launch(&format!(
        "videotestsrc is-live=true ! {CAPS} ! qtisocketsink name=sink socket={} sync=false",
        socket.display()
    ));
    let sink = running.element("sink");

    for cycle in 0..CYCLES {
        let kept = stream.next_buffer(); // the receiver's last sample
        let other = stream.next_buffer();
        let accepted = stream.receiver.stats().senders_accepted;
        let gone = stream.senders_gone;

        // It pauses twice in a row; both DISCONNECTs reach the sink while `kept` is out.
        assert!(stream.receiver.send_disconnect().unwrap(), "cycle {cycle}: no sender to tell");
        assert!(stream.receiver.send_disconnect().unwrap(), "cycle {cycle}: no sender to tell");
        drop(other);
        // That return was sent after both DISCONNECTs, on the same ordered socket: once
        // the sink has counted every return, its thread has read both.
        wait_until("the sink read both DISCONNECTs and the return after them", || {
            assert!(
                !SINK_THREAD_PANICKED.load(Ordering::SeqCst),
                "cycle {cycle}: the sink's connection thread panicked"
            );
            stat(&sink, "returns") == stream.receiver.stats().returns_sent
        });
        assert!(!connected(&sink), "cycle {cycle}: the sink still sends after DISCONNECT: {}", stats(&sink));
        assert!(stat(&sink, "in-flight") >= 1, "cycle {cycle}: the kept buffer is no longer held: {}", stats(&sink));
        // Rendering goes on meanwhile; what is rendered while draining is dropped.
        let dropped = stat(&sink, "dropped");
        wait_until("a buffer rendered while draining is dropped", || stat(&sink, "dropped") > dropped);
        assert_eq!(stream.receiver.stats().senders_accepted, accepted, "cycle {cycle}: reconnected before the drain");

        // Giving the last buffer back, and those the sink sent before it read the
        // DISCONNECT (still queued here), ends the drain: the sink hangs up and connects
        // again, once.
        drop(kept);
        let fresh = loop {
            let buffer = stream.next_buffer();
            if stream.senders_gone > gone {
                break buffer;
            }
        };
        assert_eq!(stream.senders_gone, gone + 1, "cycle {cycle}: the old connection did not end");
        assert_eq!(stream.receiver.stats().senders_accepted, accepted + 1, "cycle {cycle}: no single reconnect");
        drop(fresh);
        for _ in 0..5 {
            drop(stream.next_buffer());
        }
        assert!(connected(&sink), "cycle {cycle}: {}", stats(&sink));
    }

    // End of stream: everything comes back, nothing stays held.
    running.0.send_event(gst::event::Eos::new());
    loop {
        match stream.receiver.recv(Some(WAIT)).unwrap() {
            Event::Buffer(buffer) => drop(buffer),
            Event::SenderConnected(_) => {}
            Event::Eos => break,
            other => panic!("expected buffers then EOS, got {other:?}"),
        }
    }
    let bus = running.0.bus().unwrap();
    let end = bus
        .timed_pop_filtered(gst::ClockTime::from_seconds(20), &[gst::MessageType::Eos, gst::MessageType::Error])
        .expect("the pipeline never ended");
    assert!(matches!(end.view(), gst::MessageView::Eos(_)), "the sender failed: {end:?}");
    let s = stats(&sink);
    assert_eq!(stat(&sink, "in-flight"), 0, "{s}");
    assert_eq!(stat(&sink, "reconnects"), CYCLES, "{s}");
    assert!(stat(&sink, "dropped") >= CYCLES, "{s}");
    assert_eq!(stat(&sink, "returns"), stream.receiver.stats().returns_sent, "{s}");
    assert!(!SINK_THREAD_PANICKED.load(Ordering::SeqCst), "the sink's connection thread panicked");
    assert_no_glib_warnings();
}
