//! The `qtisocketsrc` implementation: a live `GstPushSrc` on [`Receiver`].
//!
//! The element holds three things (as gst-plugins-rs' filesrc and ndisrc do):
//! - `settings`, the properties;
//! - `state`, what other threads need while it runs: the receiver's [`ReceiverHandle`]
//!   (stats, DISCONNECT, interrupt) and a few flags, locked briefly, never while waiting;
//! - `stream`, the streaming side (the [`Receiver`] itself, negotiated caps, the memory
//!   cache, timestamps), which `create()` takes for as long as it runs, so that no lock
//!   is held while it waits on the socket or calls downstream.
//!
//! Each received buffer becomes a `GstBuffer` whose memories wrap the sender's fds (see
//! [`memory`]); the return goes to the sender when the last of its memories is released,
//! from whatever thread releases it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use crate::elements::lock;
use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::base_src::CreateSuccess;
use gst_base::subclass::prelude::*;

use super::memory;
use super::TimestampMode;
use crate::elements::caps::{add_video_meta, frame_rate, FormatKey};
use crate::elements::meta;
use crate::protocol::{DataMessage, MemoryBlock, CLOCK_TIME_NONE};
use crate::{
    Error, Event, ReceivedBuffer, Receiver, ReceiverHandle, ReceiverOptions, ReceiverStats, DEFAULT_SOCKET_MODE,
};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "qtisocketsrc",
        gst::DebugColorFlags::empty(),
        Some("Receives buffers from a qtisocketsink over a UNIX socket"),
    )
});

const DEFAULT_TIMEOUT_MS: u64 = 1000;
const DEFAULT_KEEP_LISTENING: bool = false;
const DEFAULT_TIMESTAMP_MODE: TimestampMode = TimestampMode::Rebased;

/// `timestamp-mode=rebased`: a sender timestamp that maps further than this from the
/// buffer's arrival (the sender paused, or restarted its clock) takes a new offset.
const REBASE_TOLERANCE: Duration = Duration::from_millis(250);

/// Name of the element message posted after `timeout` ms without a message.
pub(crate) const TIMEOUT_MESSAGE: &str = "GstQtiSocketSrcTimeout";
/// Name of the element message posted when a sender hangs up and the element keeps going.
pub(crate) const SENDER_GONE_MESSAGE: &str = "GstQtiSocketSrcSenderGone";

#[derive(Debug, Clone)]
struct Settings {
    socket: Option<String>,
    timeout_ms: u64,
    keep_listening: bool,
    timestamp_mode: TimestampMode,
    socket_mode: u32,
    allowed_uids: Vec<u32>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            socket_mode: DEFAULT_SOCKET_MODE,
            allowed_uids: Vec::new(),
            socket: None,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            keep_listening: DEFAULT_KEEP_LISTENING,
            timestamp_mode: DEFAULT_TIMESTAMP_MODE,
        }
    }
}

/// What other threads see of a run (start → stop).
enum State {
    Stopped {
        /// The counters of the last run, for `stats` once stopped.
        last_stats: ReceiverStats,
    },
    Started(Started),
}

impl Default for State {
    fn default() -> Self {
        State::Stopped { last_stats: ReceiverStats::default() }
    }
}

struct Started {
    handle: ReceiverHandle,
    /// GstBaseSrc asked `create()` to return (`unlock` until `unlock_stop`).
    flushing: bool,
    /// PLAYING; a live source produces nothing in PAUSED.
    playing: bool,
    /// Played before, so a PAUSED→PLAYING is a resume; `resumed` until `create()` saw it.
    played: bool,
    resumed: bool,
    /// We sent DISCONNECT to the connected sender: its hang-up is expected.
    disconnect_sent: bool,
    /// The frame duration the latency is reported from, once a message gave one.
    frame_duration: Option<gst::ClockTime>,
}

/// What the stream's caps were derived from, kept to renegotiate on `reconfigure`.
#[derive(Debug, Clone)]
struct Negotiated {
    key: FormatKey,
    dmabuf: bool,
    rate: gst::Fraction,
}

/// The streaming side of a run: only `create()` (and `negotiate()`, on the same thread)
/// uses it; start and stop put it in place and take it away.
struct Stream {
    receiver: Receiver,
    socket: String,
    /// The `timestamp-mode` property (it only changes in NULL or READY): read without a
    /// lock per buffer.
    timestamp_mode: TimestampMode,
    negotiated: Option<Negotiated>,
    memories: memory::Memories,
    /// The next buffer starts a new stream of data (new sender).
    discont: bool,
    /// When the last message arrived (or waiting began): the `timeout` counts from it.
    last_message: Instant,
    /// `timestamp-mode=rebased`: this pipeline's running time minus the sender's PTS.
    rebase_offset: Option<i128>,
    /// Senders refused for their uid, and turned away while another was connected: how
    /// many were reported on the bus, and when.
    refusals: RateLimited,
    turned_away: RateLimited,
    /// The last refusal, as the receiver worded it.
    last_refusal: String,
}

/// The most often a kind of refusal is reported on the bus after its first.
const REFUSAL_REPORT_PERIOD: Duration = Duration::from_secs(10);

/// A counter reported on the bus rate-limited: its first at once, then how many more, at
/// most once per [`REFUSAL_REPORT_PERIOD`].
#[derive(Debug, Default)]
struct RateLimited {
    reported: u64,
    last_report: Option<Instant>,
}

/// What a [`RateLimited`] report says: how many since the last, and whether it is the first.
#[derive(Debug, PartialEq, Eq)]
struct Due {
    new: u64,
    first: bool,
}

impl RateLimited {
    /// Given the counter's `total` now: what to report, when a report is due.
    fn due(&mut self, total: u64, now: Instant) -> Option<Due> {
        if total <= self.reported {
            return None;
        }
        let first = self.last_report.is_none();
        if self.last_report.is_some_and(|last| now.duration_since(last) < REFUSAL_REPORT_PERIOD) {
            return None;
        }
        let new = total - self.reported;
        self.reported = total;
        self.last_report = Some(now);
        Some(Due { new, first })
    }

    /// `n` more that need no report (expected ones).
    fn absorb(&mut self, n: u64) {
        self.reported += n;
    }
}

#[derive(Default)]
pub struct QtiSocketSrc {
    settings: Mutex<Settings>,
    state: Mutex<State>,
    stream: Mutex<Option<Stream>>,
    /// Memory blocks served from a cached GstMemory (pooled buffers), over the element's life.
    memories_reused: AtomicU64,
}

#[glib::object_subclass]
impl ObjectSubclass for QtiSocketSrc {
    const NAME: &'static str = "GstQtiSocketSrc";
    type Type = super::QtiSocketSrc;
    type ParentType = gst_base::PushSrc;
}

impl ObjectImpl for QtiSocketSrc {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("socket")
                    .nick("Socket path")
                    .blurb(
                        "Path of the UNIX socket file this element creates and listens on; the sender \
                         (qtisocketsink) connects to it. A stale socket file there is replaced; any other \
                         kind of file is refused. The file is removed on the way to READY.",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("timeout")
                    .nick("Timeout (ms)")
                    .blurb(
                        "Milliseconds without a message (while waiting for a sender or for its next \
                         buffer) after which an element message 'GstQtiSocketSrcTimeout' is posted on the \
                         bus, and again after every further such period; the element keeps waiting. \
                         0 = never post.",
                    )
                    .default_value(DEFAULT_TIMEOUT_MS)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("keep-listening")
                    .nick("Keep listening")
                    .blurb(
                        "When the sender hangs up without EOS: false = post an error naming the socket and \
                         stop (as the deployed element does); true = post a 'GstQtiSocketSrcSenderGone' \
                         element message and wait for the next sender on the same socket, marking its \
                         first buffer DISCONT.",
                    )
                    .default_value(DEFAULT_KEEP_LISTENING)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("timestamp-mode", DEFAULT_TIMESTAMP_MODE)
                    .nick("Timestamp mode")
                    .blurb(
                        "rebased (default): the sender's PTS/DTS moved onto this pipeline's running time, \
                         so frames keep the sender's spacing and play at its pace in a sync=true sink (the \
                         offset is taken at the first buffer, after each new sender or DISCONT, and again \
                         when a timestamp would land more than 250 ms in the past); sender: \
                         PTS/DTS as the sender stamped them, in its pipeline's running time (the deployed \
                         element's behaviour; use with sync=false); arrival: PTS = DTS = this pipeline's \
                         running time when the message arrived. Duration: the sender's, in every mode.",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("socket-mode")
                    .nick("Socket file mode")
                    .blurb(
                        "Permission bits of the socket file (octal in gst-launch-1.0: socket-mode=0660): \
                         a sender needs write permission on it to connect. The default, 0600, lets only \
                         this user (and root) in; use 0660 and a shared group, or 0666, for senders \
                         running as other users (e.g. in other containers).",
                    )
                    .maximum(0o777)
                    .default_value(DEFAULT_SOCKET_MODE)
                    .mutable_ready()
                    .build(),
                gst::ParamSpecArray::builder("allowed-uids")
                    .nick("Allowed sender uids")
                    .blurb(
                        "If not empty, only senders whose process runs as one of these uids (checked with \
                         SO_PEERCRED when they connect) are accepted; any other is disconnected at once \
                         (the first with a warning naming its pid and uid, later ones counted and reported \
                         at most every 10 s), and the element waits for the next. \
                         gst-launch-1.0: allowed-uids=\"<1000,1001>\". Empty (the default): any sender \
                         that may open the socket file (see socket-mode).",
                    )
                    .element_spec(&glib::ParamSpecUInt::builder("uid").build())
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "Read-only counters since the element started (the last run's once stopped): \
                         buffers, bytes-described (bytes that arrived without a copy), fds-received, \
                         fds-cached (pooled fds held now), returns-sent, protocol-errors (messages \
                         rejected), senders-accepted, senders-refused (uid not allowed), senders-turned-away \
                         (closed at once: another sender was connected, or they came while paused), socket-rebinds \
                         (times the socket file was removed by someone, e.g. a deployed sender on \
                         DISCONNECT, and created again), memories-reused (blocks served from a cached \
                         GstMemory), connected, peer-pid, peer-uid, peer-gid (the connected sender's \
                         credentials; -1 when none is connected). Reading it never disturbs the stream.",
                    )
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let name = pspec.name();
        let state = self.obj().current_state();
        let only_when_stopped = matches!(name, "socket" | "timestamp-mode" | "socket-mode" | "allowed-uids");
        if only_when_stopped && state > gst::State::Ready {
            gst::warning!(CAT, imp = self, "Property '{name}' can only be changed in NULL or READY, not {state:?}");
            return;
        }
        let mut settings = lock(&self.settings);
        match name {
            "socket" => {
                settings.socket = value.get::<Option<String>>().expect("type checked upstream");
                gst::info!(CAT, imp = self, "socket: {:?}", settings.socket);
            }
            "timeout" => settings.timeout_ms = value.get().expect("type checked upstream"),
            "keep-listening" => settings.keep_listening = value.get().expect("type checked upstream"),
            "timestamp-mode" => settings.timestamp_mode = value.get().expect("type checked upstream"),
            "socket-mode" => settings.socket_mode = value.get().expect("type checked upstream"),
            "allowed-uids" => {
                let uids = value.get::<gst::Array>().expect("type checked upstream");
                // Fail closed: an entry that is no uid must not leave an empty list (anyone).
                settings.allowed_uids = uids
                    .iter()
                    .map(|uid| {
                        uid.get::<u32>().unwrap_or_else(|_| {
                            gst::warning!(
                                CAT,
                                imp = self,
                                "allowed-uids: {uid:?} is not a uid (guint); it matches nobody"
                            );
                            u32::MAX // (uid_t)-1: no process runs as it
                        })
                    })
                    .collect();
                gst::info!(CAT, imp = self, "allowed uids: {:?}", settings.allowed_uids);
            }
            other => unreachable!("unknown property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        match pspec.name() {
            "socket" => lock(&self.settings).socket.to_value(),
            "timeout" => lock(&self.settings).timeout_ms.to_value(),
            "keep-listening" => lock(&self.settings).keep_listening.to_value(),
            "timestamp-mode" => lock(&self.settings).timestamp_mode.to_value(),
            "socket-mode" => lock(&self.settings).socket_mode.to_value(),
            "allowed-uids" => gst::Array::new(lock(&self.settings).allowed_uids.iter().copied()).to_value(),
            "stats" => self.stats().to_value(),
            other => unreachable!("unknown property {other}"),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        obj.set_live(true);
        obj.set_format(gst::Format::Time);
    }
}

impl GstObjectImpl for QtiSocketSrc {}

impl ElementImpl for QtiSocketSrc {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "QTI Socket Source",
                "Source/Network",
                "Receives video frames, ML tensors and text from a qtisocketsink in another process over \
                 a UNIX socket, without copying: each DMA-BUF or memfd becomes a GstMemory, returned to \
                 the sender when released. Wire-compatible with the deployed qtisocketsrc.",
                "qtisocket contributors",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let caps = "neural-network/tensors; video/x-raw(ANY); text/x-raw".parse::<gst::Caps>().expect("valid caps");
            vec![gst::PadTemplate::new("src", gst::PadDirection::Src, gst::PadPresence::Always, &caps)
                .expect("a valid pad template")]
        });
        TEMPLATES.as_ref()
    }

    fn change_state(&self, transition: gst::StateChange) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        match transition {
            gst::StateChange::PausedToPlaying => {
                if let State::Started(started) = &mut *lock(&self.state) {
                    started.playing = true;
                    started.resumed = started.played;
                    started.played = true;
                    // GstBaseSrc 1.26 calls unlock() on the way to PAUSED and no
                    // unlock_stop() on the way back (1.22 calls neither): that unlock was
                    // the pause's, not a flush's. A real flush ends with unlock_stop().
                    started.flushing = false;
                }
            }
            gst::StateChange::PlayingToPaused => self.pause(),
            _ => {}
        }
        self.parent_change_state(transition)
    }
}

impl BaseSrcImpl for QtiSocketSrc {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = lock(&self.settings).clone();
        let socket = settings.socket.ok_or_else(|| {
            gst::error_msg!(
                gst::ResourceError::Settings,
                ("No socket path set"),
                ["Set the 'socket' property to the path the sender (qtisocketsink) connects to"]
            )
        })?;
        let options = ReceiverOptions { socket_mode: settings.socket_mode, allowed_uids: settings.allowed_uids };
        let receiver = Receiver::bind_with(&socket, &options).map_err(|e| {
            gst::error_msg!(gst::ResourceError::OpenRead, ("Cannot listen on socket {}: {}", socket, e))
        })?;
        gst::info!(
            CAT,
            imp = self,
            "listening on {socket}; classification/landmarks metas: {:?}",
            meta::classification_metas()
        );
        *lock(&self.state) = State::Started(Started {
            handle: receiver.handle(),
            flushing: false,
            playing: false,
            played: false,
            resumed: false,
            disconnect_sent: false,
            frame_duration: None,
        });
        *lock(&self.stream) = Some(Stream {
            receiver,
            socket,
            timestamp_mode: settings.timestamp_mode,
            negotiated: None,
            memories: memory::Memories::new(),
            discont: true,
            last_message: Instant::now(),
            rebase_offset: None,
            refusals: RateLimited::default(),
            turned_away: RateLimited::default(),
            last_refusal: String::new(),
        });
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        let mut state = lock(&self.state);
        if let State::Started(started) = &*state {
            let mut last_stats = started.handle.stats();
            last_stats.connected = false;
            last_stats.fds_cached = 0;
            last_stats.peer = None;
            *state = State::Stopped { last_stats };
        }
        drop(state);
        // The streaming thread has stopped: the stream is in its place. Dropping the
        // receiver answers every queued message with a return, closes the cached fds and
        // removes the socket file (the deployed receiver's way to READY); cached memories
        // let go of their fds (those still in use when released).
        drop(lock(&self.stream).take());
        gst::info!(CAT, imp = self, "stopped");
        Ok(())
    }

    fn is_seekable(&self) -> bool {
        false
    }

    fn query(&self, query: &mut gst::QueryRef) -> bool {
        if let gst::QueryViewMut::Latency(q) = query.view_mut() {
            let State::Started(started) = &*lock(&self.state) else { return false };
            // Frames arrive up to a frame apart: downstream must allow for one frame (as
            // a live videotestsrc does); nothing bounds how long they may be kept.
            let min = started.frame_duration.unwrap_or(gst::ClockTime::ZERO);
            q.set(true, min, gst::ClockTime::NONE);
            return true;
        }
        BaseSrcImplExt::parent_query(self, query)
    }

    fn negotiate(&self) -> Result<(), gst::LoggableError> {
        // The caps come from the messages: nothing to negotiate before the first one. On
        // reconfigure, negotiate again for the format the sender sends now.
        let Some(mut stream) = self.take_stream() else { return Ok(()) };
        let result = match stream.negotiated.clone() {
            Some(negotiated) => self
                .negotiate_for(&mut stream, negotiated)
                .map_err(|reason| gst::loggable_error!(CAT, "renegotiation failed: {reason}")),
            None => Ok(()),
        };
        self.put_stream(stream);
        result
    }

    fn unlock(&self) -> Result<(), gst::ErrorMessage> {
        if let State::Started(started) = &mut *lock(&self.state) {
            started.flushing = true;
            started.handle.interrupt();
        }
        Ok(())
    }

    fn unlock_stop(&self) -> Result<(), gst::ErrorMessage> {
        if let State::Started(started) = &mut *lock(&self.state) {
            started.flushing = false;
        }
        Ok(())
    }
}

impl PushSrcImpl for QtiSocketSrc {
    fn create(&self, _buffer: Option<&mut gst::BufferRef>) -> Result<CreateSuccess, gst::FlowError> {
        let Some(mut stream) = self.take_stream() else { return Err(gst::FlowError::Flushing) };
        let result = self.receive(&mut stream);
        self.put_stream(stream);
        result.map(CreateSuccess::NewBuffer)
    }
}

impl QtiSocketSrc {
    fn take_stream(&self) -> Option<Stream> {
        lock(&self.stream).take()
    }

    fn put_stream(&self, stream: Stream) {
        *lock(&self.stream) = Some(stream);
    }

    /// PLAYING → PAUSED: `create()` stops receiving until PLAYING again, and the sender
    /// is told to stop sending, as the deployed receiver does.
    fn pause(&self) {
        let mut state = lock(&self.state);
        let State::Started(started) = &mut *state else { return };
        started.playing = false;
        started.handle.interrupt();
        match started.handle.send_disconnect() {
            Ok(true) => {
                started.disconnect_sent = true;
                gst::info!(CAT, imp = self, "sent DISCONNECT: the sender stops until we play again");
            }
            Ok(false) => {}
            Err(e) => gst::info!(CAT, imp = self, "could not send DISCONNECT: {e}"),
        }
    }

    /// What `create()` does: receive until there is a buffer to push, or a reason to stop.
    fn receive(&self, stream: &mut Stream) -> Result<gst::Buffer, gst::FlowError> {
        loop {
            self.after_resume(stream)?;
            let (timeout_ms, keep_listening) = {
                let settings = lock(&self.settings);
                (settings.timeout_ms, settings.keep_listening)
            };
            let wait = (timeout_ms > 0).then(|| {
                (stream.last_message + Duration::from_millis(timeout_ms)).saturating_duration_since(Instant::now())
            });
            let received = stream.receiver.recv(wait);
            self.report_refusals(stream, received.as_ref().err());
            match received {
                Ok(Event::Buffer(buffer)) => {
                    stream.last_message = Instant::now();
                    if let Some(buffer) = self.gst_buffer(stream, buffer)? {
                        if self.is_playing() {
                            return Ok(buffer);
                        }
                        // Pausing: GstBaseSrc would push it after the resume, stale by then.
                        gst::debug!(CAT, imp = self, "pausing: buffer returned unpushed");
                    }
                }
                Ok(Event::SenderConnected(peer)) => {
                    stream.last_message = Instant::now();
                    stream.discont = true;
                    match peer {
                        Some(p) => {
                            gst::info!(CAT, imp = self, "sender connected: pid {}, uid {}, gid {}", p.pid, p.uid, p.gid)
                        }
                        None => gst::info!(CAT, imp = self, "sender connected; its credentials are unknown"),
                    }
                    let rebinds = stream.receiver.stats().socket_rebinds;
                    if rebinds > 0 {
                        gst::debug!(CAT, imp = self, "the socket file has been created again {rebinds} times so far");
                    }
                }
                Ok(Event::Eos) => {
                    gst::info!(CAT, imp = self, "the sender sent EOS");
                    return Err(gst::FlowError::Eos);
                }
                Ok(Event::SenderGone) => self.on_sender_gone(stream, keep_listening)?,
                Ok(Event::Timeout) => self.on_timeout(stream, timeout_ms),
                Ok(Event::Interrupted) => self.on_interrupted(stream)?,
                Err(Error::Protocol(e)) => {
                    gst::element_imp_warning!(
                        self,
                        gst::StreamError::Decode,
                        ("The sender on socket {} sent a message that breaks the protocol: {}", stream.socket, e),
                        ["The message was rejected, its fds closed and its buffer returned; the stream goes on"]
                    );
                }
                // Reported above, rate-limited.
                Err(Error::SenderRefused { .. }) => {}
                Err(e) => {
                    gst::element_imp_error!(
                        self,
                        gst::ResourceError::Read,
                        ("Receiving on socket {} failed: {}", stream.socket, e)
                    );
                    return Err(gst::FlowError::Error);
                }
            }
        }
    }

    /// Posts the senders refused (uid) and turned away (another sender connected) since the
    /// last report: the first of each kind at once, then how many more, at most every
    /// [`REFUSAL_REPORT_PERIOD`], so that a sender retrying in a loop cannot flood the bus.
    fn report_refusals(&self, stream: &mut Stream, error: Option<&Error>) {
        let (refused, turned_away) = stream.receiver.refusal_counts();
        if let Some(e @ Error::SenderRefused { .. }) = error {
            stream.last_refusal = e.to_string();
        }
        let now = Instant::now();
        if let Some(count) = stream.refusals.due(refused, now) {
            let (text, detail) = if count.first {
                (
                    format!("Socket {}: {}", stream.socket, stream.last_refusal),
                    format!(
                        "Set 'allowed-uids' to accept it; the element waits for the next sender. Further refusals \
                         are counted in stats (senders-refused) and reported at most every {}s",
                        REFUSAL_REPORT_PERIOD.as_secs()
                    ),
                )
            } else {
                (
                    format!(
                        "Socket {}: {} more senders refused; the last: {}",
                        stream.socket, count.new, stream.last_refusal
                    ),
                    "Set 'allowed-uids' to accept them".to_owned(),
                )
            };
            gst::element_imp_warning!(self, gst::ResourceError::NotAuthorized, ("{}", text), ["{}", detail]);
        }
        if let Some(count) = stream.turned_away.due(turned_away, now) {
            let peer = match stream.receiver.last_turned_away() {
                Some(p) => format!("pid {}, uid {}, gid {}", p.pid, p.uid, p.gid),
                None => "credentials unknown".to_owned(),
            };
            let text = if count.first {
                format!(
                    "Socket {}: a second sender ({peer}) connected while one is connected; it was closed at once \
                     (one sender at a time)",
                    stream.socket
                )
            } else {
                format!(
                    "Socket {}: {} more senders turned away while one is connected; the last: {peer}",
                    stream.socket, count.new
                )
            };
            gst::element_imp_warning!(
                self,
                gst::ResourceError::Busy,
                ("{}", text),
                ["Each qtisocketsrc serves one sender; give each sender its own socket. Counted in stats \
                  (senders-turned-away)"]
            );
        }
    }

    /// `unlock()` or a pause woke `create()`. A flush or stop ends it; a pause waits for
    /// PLAYING as GstBaseSrc asks of a live source that blocks in `create()`. (Returning
    /// FLUSHING on a pause would leave the streaming task paused for good after resuming.)
    fn on_interrupted(&self, stream: &mut Stream) -> Result<(), gst::FlowError> {
        let (flushing, playing) = match &*lock(&self.state) {
            State::Started(started) => (started.flushing, started.playing),
            State::Stopped { .. } => (true, false),
        };
        if !playing {
            // FLUSHING when the element stops or flushes meanwhile. GstBaseSrc hears of the
            // pause after us (change_state calls `pause()` before the parent): until it has,
            // wait_playing() returns at once. Only our own flag says the pause is over.
            loop {
                self.obj().wait_playing()?;
                if self.is_playing() {
                    break;
                }
                std::thread::yield_now();
            }
            stream.last_message = Instant::now();
        } else if flushing {
            return Err(gst::FlowError::Flushing);
        }
        Ok(())
    }

    /// After a resume (seen once, by the streaming thread): what senders queued while we
    /// were paused is stale. A sender told to DISCONNECT that is still connected was
    /// waiting for buffers downstream kept through the pause; senders that connected
    /// meanwhile have queued frames nobody read. Each is hung up on and connects again.
    fn after_resume(&self, stream: &mut Stream) -> Result<(), gst::FlowError> {
        let resumed = match &mut *lock(&self.state) {
            State::Started(started) => std::mem::take(&mut started.resumed),
            State::Stopped { .. } => false,
        };
        if !resumed {
            return Ok(());
        }
        stream.last_message = Instant::now();
        if stream.receiver.drop_disconnected_sender() {
            gst::info!(CAT, imp = self, "hung up on the sender told to DISCONNECT: it had not left; it connects again");
            self.on_sender_gone(stream, true)?;
        }
        if !stream.receiver.is_connected() {
            let stale = stream.receiver.turn_away_waiting_senders();
            if stale > 0 {
                stream.turned_away.absorb(stale as u64);
                gst::info!(CAT, imp = self, "closed {stale} senders that connected while paused; they connect again");
            }
        }
        Ok(())
    }

    fn is_playing(&self) -> bool {
        matches!(&*lock(&self.state), State::Started(started) if started.playing)
    }

    fn stats(&self) -> gst::Structure {
        let stats = match &*lock(&self.state) {
            State::Started(started) => started.handle.stats(),
            State::Stopped { last_stats } => *last_stats,
        };
        gst::Structure::builder("application/x-qtisocketsrc-stats")
            .field("buffers", stats.buffers)
            .field("bytes-described", stats.bytes_described)
            .field("fds-received", stats.fds_received)
            .field("fds-cached", stats.fds_cached)
            .field("returns-sent", stats.returns_sent)
            .field("protocol-errors", stats.protocol_errors)
            .field("senders-accepted", stats.senders_accepted)
            .field("senders-refused", stats.senders_refused)
            .field("senders-turned-away", stats.senders_turned_away)
            .field("socket-rebinds", stats.socket_rebinds)
            .field("memories-reused", self.memories_reused.load(Ordering::Relaxed))
            .field("connected", stats.connected)
            .field("peer-pid", stats.peer.map_or(-1, |p| i64::from(p.pid)))
            .field("peer-uid", stats.peer.map_or(-1, |p| i64::from(p.uid)))
            .field("peer-gid", stats.peer.map_or(-1, |p| i64::from(p.gid)))
            .build()
    }

    fn on_timeout(&self, stream: &mut Stream, timeout_ms: u64) {
        if timeout_ms == 0 || stream.last_message.elapsed() < Duration::from_millis(timeout_ms) {
            return;
        }
        stream.last_message = Instant::now();
        let connected = stream.receiver.is_connected();
        gst::debug!(CAT, imp = self, "no message for {timeout_ms} ms (connected: {connected})");
        let structure = gst::Structure::builder(TIMEOUT_MESSAGE)
            .field("timeout", timeout_ms)
            .field("connected", connected)
            .field("socket", &stream.socket)
            .build();
        let _ = self.obj().post_message(gst::message::Element::builder(structure).src(&*self.obj()).build());
    }

    fn on_sender_gone(&self, stream: &mut Stream, keep_listening: bool) -> Result<(), gst::FlowError> {
        // The connection's cached fds are closed: drop our memories of them.
        stream.memories.retire_all();
        stream.last_message = Instant::now();
        let told = match &mut *lock(&self.state) {
            State::Started(started) => std::mem::take(&mut started.disconnect_sent),
            State::Stopped { .. } => false,
        };
        if told {
            gst::info!(CAT, imp = self, "the sender we sent DISCONNECT to left; waiting for it to come back");
            return Ok(());
        }
        if keep_listening {
            gst::info!(CAT, imp = self, "the sender on {} hung up; waiting for the next one", stream.socket);
            let structure = gst::Structure::builder(SENDER_GONE_MESSAGE).field("socket", &stream.socket).build();
            let _ = self.obj().post_message(gst::message::Element::builder(structure).src(&*self.obj()).build());
            return Ok(());
        }
        gst::element_imp_error!(
            self,
            gst::ResourceError::Read,
            ("The sender on socket {} hung up without EOS", stream.socket),
            ["Set keep-listening=true to wait for the next sender instead of failing"]
        );
        Err(gst::FlowError::Error)
    }

    /// A frame duration from the messages, for the latency query; tells the pipeline
    /// when it changes.
    fn learn_frame_duration(&self, duration_ns: u64) {
        if duration_ns == 0 || duration_ns == CLOCK_TIME_NONE {
            return;
        }
        let duration = Some(gst::ClockTime::from_nseconds(duration_ns));
        let changed = match &mut *lock(&self.state) {
            State::Started(started) if started.frame_duration != duration => {
                started.frame_duration = duration;
                true
            }
            _ => false,
        };
        if changed {
            gst::debug!(CAT, imp = self, "frame duration {duration:?}: latency changes");
            let _ = self.obj().post_message(gst::message::Latency::builder().src(&*self.obj()).build());
        }
    }

    /// The GstBuffer for a received buffer; `None` when the message was rejected (its
    /// return has gone out).
    fn gst_buffer(&self, stream: &mut Stream, received: ReceivedBuffer) -> Result<Option<gst::Buffer>, gst::FlowError> {
        let mode = stream.timestamp_mode;
        let message = received.message();
        let key = match FormatKey::of(message) {
            Ok(key) => key.following(stream.negotiated.as_ref().map(|n| &n.key)),
            Err(reason) => {
                self.reject(&stream.socket, message, &reason);
                return Ok(None);
            }
        };
        if stream.negotiated.as_ref().map(|n| &n.key) != Some(&key) {
            let negotiated = Negotiated {
                key,
                dmabuf: received.fd(0).is_some_and(memory::is_dmabuf),
                rate: frame_rate(message.info.duration),
            };
            self.learn_frame_duration(message.info.duration);
            if let Err(reason) = self.negotiate_for(stream, negotiated) {
                gst::element_imp_error!(
                    self,
                    gst::CoreError::Negotiation,
                    ("{}", reason),
                    ["Make the caps after qtisocketsrc match what the sender sends, or remove the capsfilter \
                     so that the element derives the caps from the messages"]
                );
                return Err(gst::FlowError::NotNegotiated);
            }
        }

        let frame: memory::Frame = Arc::new(received);
        let message = frame.message();
        let mut buffer = gst::Buffer::new();
        let built = self.fill(buffer.get_mut().expect("a new buffer"), stream, &frame, mode);
        if let Err(reason) = built {
            drop(buffer); // its memories go: the frame is returned to the sender
            self.reject(&stream.socket, message, &reason);
            return Ok(None);
        }
        if std::mem::take(&mut stream.discont) {
            buffer.get_mut().expect("ours alone").set_flags(gst::BufferFlags::DISCONT);
        }
        gst::trace!(CAT, imp = self, "buffer {:?} ({} blocks)", message.buf_ids(), message.blocks.len());
        Ok(Some(buffer))
    }

    fn reject(&self, socket: &str, message: &DataMessage, reason: &str) {
        gst::element_imp_warning!(
            self,
            gst::StreamError::Format,
            (
                "The sender on socket {} sent a buffer (buf_ids {:?}) that cannot be used: {}",
                socket,
                message.buf_ids(),
                reason
            ),
            ["The buffer was returned to the sender unused; the stream goes on"]
        );
    }

    /// Memories, metas and timestamps of one buffer.
    fn fill(
        &self,
        b: &mut gst::BufferRef,
        stream: &mut Stream,
        frame: &memory::Frame,
        mode: TimestampMode,
    ) -> Result<(), String> {
        let message = frame.message();
        let mut base = 0u64; // where block i starts in the buffer
        for (index, block) in message.blocks.iter().enumerate() {
            let memory = match block {
                MemoryBlock::Text(text) => gst::Memory::from_slice(text.contents.clone()),
                MemoryBlock::Frame(_) | MemoryBlock::Tensor(_) => {
                    let (memory, reused) = stream
                        .memories
                        .wrap(frame, index, block.maxsize(), block.size())
                        .map_err(|e| format!("block {index}: cannot wrap its fd as a GstMemory: {e}"))?;
                    if reused {
                        self.memories_reused.fetch_add(1, Ordering::Relaxed);
                    }
                    memory
                }
            };
            b.append_memory(memory);
            match block {
                MemoryBlock::Frame(f) => add_video_meta(b, f, base, index)?,
                MemoryBlock::Tensor(t) => {
                    if !meta::add_tensor(b, index as u32, t) {
                        gst::warning!(
                            CAT,
                            imp = self,
                            "no usable GstMLTensorMeta registration: tensor metas not attached"
                        );
                    }
                }
                MemoryBlock::Text(_) => {}
            }
            base += block.size();
        }
        for protection in &message.metas.protection {
            meta::add_protection(b, protection);
        }
        for roi in &message.metas.roi {
            meta::add_roi(b, roi);
        }
        for class in &message.metas.class {
            meta::add_classification(b, class);
        }
        for landmarks in &message.metas.landmarks {
            meta::add_landmarks(b, landmarks);
        }
        let time = |ns: u64| (ns != CLOCK_TIME_NONE).then(|| gst::ClockTime::from_nseconds(ns));
        let (pts, dts) = (time(message.info.pts), time(message.info.dts));
        match (mode, self.obj().current_running_time()) {
            (TimestampMode::Arrival, now) => {
                b.set_pts(now);
                b.set_dts(now);
            }
            (TimestampMode::Rebased, Some(now)) => {
                let offset = rebase_offset(&mut stream.rebase_offset, stream.discont, pts.or(dts), now);
                let rebase = |t: Option<gst::ClockTime>| {
                    t.and_then(|t| u64::try_from(i128::from(t.nseconds()) + offset).ok())
                        .map(gst::ClockTime::from_nseconds)
                };
                b.set_pts(rebase(pts).or(Some(now)));
                b.set_dts(rebase(dts));
            }
            // Sender's timestamps as they are (also rebased ones before a clock exists).
            _ => {
                b.set_pts(pts);
                b.set_dts(dts);
            }
        }
        b.set_duration(time(message.info.duration));
        Ok(())
    }

    /// Sets caps for `negotiated`: what the sender sends, as downstream accepts it.
    fn negotiate_for(&self, stream: &mut Stream, negotiated: Negotiated) -> Result<(), String> {
        let pad = self.obj().static_pad("src").expect("the always src pad");
        let ours = negotiated.key.caps(false);
        let downstream = pad.peer_query_caps(None);
        let common = downstream.intersect_with_mode(&negotiated.key.caps(true), gst::CapsIntersectMode::First);
        let chosen = common
            .iter_with_features()
            .find(|(_, features)| features.is_any() || !features.contains("memory:DMABuf") || negotiated.dmabuf);
        let Some((structure, features)) = chosen else {
            return Err(format!(
                "The sender on socket {} sends {} but downstream accepts only {}",
                stream.socket, ours, downstream
            ));
        };
        let mut structure = structure.to_owned();
        let features = if features.is_any() {
            gst::CapsFeatures::new([gst::CAPS_FEATURE_MEMORY_SYSTEM_MEMORY])
        } else {
            features.to_owned()
        };
        negotiated.key.complete(&mut structure, negotiated.rate);
        let mut caps = gst::Caps::new_empty();
        caps.get_mut().expect("new caps").append_structure_full(structure, Some(features));
        caps.fixate();
        gst::info!(CAT, imp = self, "the sender sends {ours}: caps {caps}");
        self.obj().set_caps(&caps).map_err(|e| {
            format!("Downstream refused caps {caps} for what the sender on socket {} sends: {e}", stream.socket)
        })?;
        stream.negotiated = Some(negotiated);
        Ok(())
    }
}

/// `timestamp-mode=rebased`: the offset from the sender's timestamps to this pipeline's
/// running time, taken at `sender_time`'s arrival `now` at a new start of the stream, and
/// taken again when the kept one would put `sender_time` more than [`REBASE_TOLERANCE`]
/// in the past (the sender paused; arrival jitter stays well inside). It only ever grows
/// within a stream, so timestamps never go backwards; a sender ahead of real time (not
/// live) keeps its lead, which a synchronising sink turns into the sender's pace.
fn rebase_offset(
    offset: &mut Option<i128>,
    discont: bool,
    sender_time: Option<gst::ClockTime>,
    now: gst::ClockTime,
) -> i128 {
    let now = i128::from(now.nseconds());
    let Some(sender) = sender_time.map(|t| i128::from(t.nseconds())) else { return offset.unwrap_or(0) };
    let fresh = now - sender;
    let keep = offset.filter(|&o| !discont && sender + o >= now - REBASE_TOLERANCE.as_nanos() as i128);
    *offset.insert(keep.unwrap_or(fresh))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_reported_first_at_once_then_counted_at_most_every_period() {
        let start = Instant::now();
        let mut report = RateLimited::default();
        assert_eq!(report.due(0, start), None);
        assert_eq!(report.due(1, start), Some(Due { new: 1, first: true }));
        // A sender retrying in a loop: nothing more until the period is over, then the count.
        for total in 2..=500 {
            assert_eq!(report.due(total, start + Duration::from_millis(total)), None);
        }
        assert_eq!(report.due(500, start + REFUSAL_REPORT_PERIOD), Some(Due { new: 499, first: false }));
        assert_eq!(report.due(500, start + 3 * REFUSAL_REPORT_PERIOD), None, "nothing new, nothing said");
        assert_eq!(report.due(501, start + 3 * REFUSAL_REPORT_PERIOD), Some(Due { new: 1, first: false }));
        // Expected ones are not reported.
        report.absorb(2);
        assert_eq!(report.due(503, start + 5 * REFUSAL_REPORT_PERIOD), None);
    }
}
