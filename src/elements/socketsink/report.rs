//! What the sink says about its receivers: the fan-out's events as log lines, warnings,
//! element messages (a receiver joined or left) and errors (the directory is gone).

use std::time::UNIX_EPOCH;

use gst::prelude::*;

use super::imp::CAT;
use crate::fanout::{FanoutEvent, PeerStats};

/// The element message posted when a receiver joins.
pub const JOINED_MESSAGE: &str = "qtisocketsink-receiver-joined";
/// The element message posted when a receiver leaves.
pub const LEFT_MESSAGE: &str = "qtisocketsink-receiver-left";

/// A receiver's figures as a structure named `name`: for `stats` and the messages.
pub fn peer_structure(name: &str, peer: &PeerStats) -> gst::Structure {
    let since = peer.connected_since.duration_since(UNIX_EPOCH).unwrap_or_default();
    gst::Structure::builder(name)
        .field("socket", peer.socket.display().to_string())
        .field("pid", peer.credentials.map_or(0, |c| c.pid))
        .field("uid", peer.credentials.map_or(u32::MAX, |c| c.uid))
        .field("buffers-sent", peer.buffers_sent)
        .field("fds-sent", peer.fds_sent)
        .field("skipped", peer.skipped)
        .field("in-flight", peer.in_flight)
        .field("returns", peer.returns)
        .field("connected-since", since.as_nanos() as u64)
        .build()
}

fn credentials(receiver: Option<crate::PeerCredentials>) -> String {
    receiver.map_or("credentials unknown".to_owned(), |p| format!("pid {}, uid {}", p.pid, p.uid))
}

/// Logs, warns, posts or errors about what the fan-out reports.
pub fn report(element: &super::QtiSocketSink, event: FanoutEvent) {
    match event {
        FanoutEvent::Connected { socket } => {
            gst::info!(CAT, obj = element, "connected to the receiver at {}", socket.display())
        }
        FanoutEvent::Joined(peer) => {
            gst::info!(
                CAT,
                obj = element,
                "receiver at {} ({}) joined",
                peer.socket.display(),
                credentials(peer.credentials)
            );
            let _ = element.post_message(
                gst::message::Element::builder(peer_structure(JOINED_MESSAGE, &peer)).src(element).build(),
            );
        }
        FanoutEvent::Left(peer) => {
            gst::info!(
                CAT,
                obj = element,
                "receiver at {} left after {} buffers ({} skipped)",
                peer.socket.display(),
                peer.buffers_sent,
                peer.skipped
            );
            let _ = element
                .post_message(gst::message::Element::builder(peer_structure(LEFT_MESSAGE, &peer)).src(element).build());
        }
        FanoutEvent::Disconnect { socket, still_out, again: false } => gst::debug!(
            CAT,
            obj = element,
            "the receiver at {} disconnected; connecting again once its {still_out} buffers are back",
            socket.display()
        ),
        FanoutEvent::Disconnect { socket, still_out, again: true } => gst::debug!(
            CAT,
            obj = element,
            "the receiver at {} disconnected again while {still_out} buffers are still out; still draining",
            socket.display()
        ),
        // One warning per connection: what fails after the first is its consequence.
        FanoutEvent::SendFailed { socket, error, first: true } => {
            gst::warning!(CAT, obj = element, "sending to {} failed, the receiver is gone: {error}", socket.display())
        }
        FanoutEvent::SendFailed { socket, error, first: false } => {
            gst::debug!(CAT, obj = element, "sending to {} failed too: {error}", socket.display())
        }
        FanoutEvent::EosFailed { socket, error, first: true } => {
            gst::warning!(CAT, obj = element, "cannot send EOS to {}: {error}", socket.display())
        }
        FanoutEvent::EosFailed { socket, error, first: false } => {
            gst::debug!(CAT, obj = element, "cannot send EOS to {} either: {error}", socket.display())
        }
        FanoutEvent::ReceiverGone { socket } => {
            gst::info!(
                CAT,
                obj = element,
                "the receiver at {} closed the connection; connecting again",
                socket.display()
            )
        }
        FanoutEvent::ReceiverFailed { socket, error, first: true } => gst::warning!(
            CAT,
            obj = element,
            "the receiver at {} broke the protocol: {error}; connecting again",
            socket.display()
        ),
        FanoutEvent::ReceiverFailed { socket, error, first: false } => {
            gst::debug!(CAT, obj = element, "the receiver at {} broke the protocol too: {error}", socket.display())
        }
        FanoutEvent::Unserved { socket, receiver, in_a_row, retry_in, broke_protocol: true } => gst::element_warning!(
            element,
            gst::ResourceError::OpenWrite,
            (
                "The receiver at {} ({}) broke the protocol {} times in a row before taking anything",
                socket.display(),
                credentials(receiver),
                in_a_row
            ),
            [
                "Connecting again after a growing delay (now {:?}, at most 1 s); each connection's error is in the \
                 log (qtisocketsink:2). Said once until a connection is served.",
                retry_in
            ]
        ),
        FanoutEvent::Unserved { socket, receiver, in_a_row, retry_in, broke_protocol: false } => {
            let uid = rustix::process::getuid().as_raw();
            let meanwhile = if element.property::<bool>("wait-for-receiver") { "wait" } else { "are dropped" };
            gst::element_warning!(
                element,
                gst::ResourceError::OpenWrite,
                (
                    "The receiver at {} ({}) closed the connection {} times in a row before taking anything: it \
                     refuses this sender (uid {}) or serves another sender already",
                    socket.display(),
                    credentials(receiver),
                    in_a_row,
                    uid
                ),
                [
                    "Allow uid {} in the receiver's allowed-uids, or stop the other sender on {}. Connecting again \
                     after a growing delay (now {:?}, at most 1 s); buffers rendered meanwhile {}. Said once until \
                     a connection is served.",
                    uid,
                    socket.display(),
                    retry_in,
                    meanwhile
                ]
            );
        }
        FanoutEvent::ServedAgain { socket, after } => gst::info!(
            CAT,
            obj = element,
            "the receiver at {} takes this sender now, after {after} connections it closed unserved",
            socket.display()
        ),
        FanoutEvent::Drained { socket } => gst::info!(
            CAT,
            obj = element,
            "the receiver at {} disconnected and has every buffer back; connecting again",
            socket.display()
        ),
        FanoutEvent::Ignored { path, why } => {
            gst::debug!(CAT, obj = element, "ignoring {} in the socket directory: {why}", path.display())
        }
        FanoutEvent::DirectoryFailed { dir, error } => gst::element_error!(
            element,
            gst::ResourceError::Read,
            ("The socket directory {} cannot be followed any more: {}", dir.display(), error),
            ["No receiver can join; the receivers connected already are still served until the element stops."]
        ),
    }
}
