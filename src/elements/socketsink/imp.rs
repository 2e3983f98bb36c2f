//! The `qtisocketsink` implementation: a `GstBaseSink` on [`crate::Sender`].
//!
//! Threads: `render()` (the streaming thread) prepares each buffer (copying memory that
//! has no fd) without a lock, then sends it through the [`Link`], whose own thread keeps
//! the connection and lets go of buffers as the receiver returns them.

use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use crate::elements::lock;
use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::prelude::*;

use super::link::{Counters, Link, LinkEvent, Sent};
use super::memfd_allocator::MemfdAllocator;
use super::outgoing::{self, CopyPools, Refusal};
use crate::elements::caps::{Format, TEXT_CAPS};
use crate::transport::MAX_SOCKET_PATH_LEN;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "qtisocketsink",
        gst::DebugColorFlags::empty(),
        Some("Sends buffers to a qtisocketsrc over a UNIX socket"),
    )
});

const DEFAULT_WAIT_FOR_RECEIVER: bool = false;
/// How long EOS waits for the receiver to return what it holds before going on.
const EOS_RETURN_TIMEOUT: Duration = Duration::from_secs(2);
/// Most buffers the pool offered upstream hands out at once: a receiver that keeps
/// buffers makes upstream wait instead of memory grow.
const POOL_MAX_BUFFERS: u32 = 16;
const POOL_MIN_BUFFERS: u32 = 2;

#[derive(Debug, Clone)]
struct Settings {
    socket: Option<String>,
    wait_for_receiver: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { socket: None, wait_for_receiver: DEFAULT_WAIT_FOR_RECEIVER }
    }
}

#[derive(Default)]
pub struct QtiSocketSink {
    settings: Mutex<Settings>,
    /// From the caps: how buffers are described.
    format: Mutex<Option<Format>>,
    link: Mutex<Option<Arc<Link>>>,
    copy_pools: CopyPools,
    allocator: MemfdAllocator,
    /// The counters of the last run, for `stats` once stopped.
    last_counters: Mutex<Counters>,
}

#[glib::object_subclass]
impl ObjectSubclass for QtiSocketSink {
    const NAME: &'static str = "GstQtiSocketSink";
    type Type = super::QtiSocketSink;
    type ParentType = gst_base::BaseSink;
}

impl ObjectImpl for QtiSocketSink {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("socket")
                    .nick("Socket path")
                    .blurb(
                        "Path of the UNIX socket a qtisocketsrc listens on. The element connects to it, \
                         retrying every 10 ms until a receiver is there, and again after the receiver \
                         disconnects or goes away.",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("wait-for-receiver")
                    .nick("Wait for receiver")
                    .blurb(
                        "What a buffer does while no receiver is connected: false = it is dropped and \
                         counted (as the deployed element does); true = rendering waits until a receiver \
                         connects.",
                    )
                    .default_value(DEFAULT_WAIT_FOR_RECEIVER)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "Read-only counters since the element started (the last run's once stopped): \
                         buffers-sent, fds-sent, copies (memories that had no fd and were copied into a \
                         memfd), bytes-copied, bytes-described (bytes sent as fds), returns (blocks the \
                         receiver gave back), reconnects (connections after the first that carried buffers), dropped (buffers \
                         rendered while no receiver was connected), in-flight (buffers out with the \
                         receiver now), connected.",
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
        if name == "socket" && state > gst::State::Ready {
            gst::warning!(CAT, imp = self, "Property 'socket' can only be changed in NULL or READY, not {state:?}");
            return;
        }
        let mut settings = lock(&self.settings);
        match name {
            "socket" => {
                settings.socket = value.get::<Option<String>>().expect("type checked upstream");
                gst::info!(CAT, imp = self, "socket: {:?}", settings.socket);
            }
            "wait-for-receiver" => settings.wait_for_receiver = value.get().expect("type checked upstream"),
            other => unreachable!("unknown property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        match pspec.name() {
            "socket" => lock(&self.settings).socket.to_value(),
            "wait-for-receiver" => lock(&self.settings).wait_for_receiver.to_value(),
            "stats" => self.stats().to_value(),
            other => unreachable!("unknown property {other}"),
        }
    }
}

impl GstObjectImpl for QtiSocketSink {}

impl ElementImpl for QtiSocketSink {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "QTI Socket Sink",
                "Sink/Network",
                "Sends video frames, ML tensors and text to a qtisocketsrc in another process over a UNIX \
                 socket, without copying: memory travels as its DMA-BUF or memfd, and upstream is offered \
                 memfd-backed buffers so that it writes straight into shareable memory. Wire-compatible \
                 with the deployed qtisocketsink.",
                "qtisocket contributors",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            // Text: utf8 only. The TEXT payload carries bytes and no format, and receivers label
            // them utf8: markup must not arrive as plain text (subparse strips it for this caps).
            let caps = format!("neural-network/tensors; video/x-raw(ANY); {TEXT_CAPS}");
            let caps = caps.parse::<gst::Caps>().expect("valid caps");
            vec![gst::PadTemplate::new("sink", gst::PadDirection::Sink, gst::PadPresence::Always, &caps)
                .expect("a valid pad template")]
        });
        TEMPLATES.as_ref()
    }

    /// The connection lives from READY→PAUSED to PAUSED→READY, as documented: a `socket`
    /// changed in READY is used, and each run starts with a new connection and new counters.
    fn change_state(&self, transition: gst::StateChange) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        if transition == gst::StateChange::ReadyToPaused {
            // Before the pad is activated: no buffer can be rendered without a link.
            if let Err(message) = self.connect() {
                self.post_error_message(message);
                return Err(gst::StateChangeError);
            }
        }
        let result = self.parent_change_state(transition);
        match transition {
            // After the parent: the pad is deactivated, so no render is running or to come.
            gst::StateChange::PausedToReady => self.disconnect(),
            gst::StateChange::ReadyToPaused if result.is_err() => self.disconnect(),
            _ => {}
        }
        result
    }
}

impl BaseSinkImpl for QtiSocketSink {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        // NULL→READY: only the settings are checked; the connection starts on READY→PAUSED.
        self.socket_path().map(drop)
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        self.disconnect();
        Ok(())
    }

    fn set_caps(&self, caps: &gst::Caps) -> Result<(), gst::LoggableError> {
        let format = Format::from_caps(caps).map_err(|reason| gst::loggable_error!(CAT, "{reason}"))?;
        gst::debug!(CAT, imp = self, "caps {caps}: {format:?}");
        *lock(&self.format) = Some(format);
        Ok(())
    }

    fn propose_allocation(&self, query: &mut gst::query::Allocation) -> Result<(), gst::LoggableError> {
        let (caps, need_pool) = query.get_owned();
        let format = caps.as_ref().and_then(|caps| Format::from_caps(caps).ok());
        if let (Some(caps), Some(Format::Video(info)), true) = (caps.as_ref(), format.as_ref(), need_pool) {
            let pool = gst_video::VideoBufferPool::new();
            let mut config = pool.config();
            let size = info.size() as u32;
            config.set_params(Some(caps), size, POOL_MIN_BUFFERS, POOL_MAX_BUFFERS);
            config.set_allocator(Some(&self.allocator), None);
            config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META);
            pool.set_config(config).map_err(|e| gst::loggable_error!(CAT, "cannot configure the memfd pool: {e}"))?;
            query.add_allocation_pool(Some(&pool), size, POOL_MIN_BUFFERS, POOL_MAX_BUFFERS);
            gst::debug!(CAT, imp = self, "offering a pool of memfd-backed {}x{} frames", info.width(), info.height());
        }
        // Tensor buffers hold one memory per tensor, which a pool cannot make: upstream
        // allocates each from the memfd allocator instead.
        query.add_allocation_param(Some(&self.allocator), gst::AllocationParams::default());
        query.add_allocation_meta::<gst_video::VideoMeta>(None);
        Ok(())
    }

    fn render(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        let Some(format) = lock(&self.format).clone() else {
            gst::element_imp_error!(self, gst::CoreError::Negotiation, ["A buffer arrived before any caps"]);
            return Err(gst::FlowError::NotNegotiated);
        };
        let Some(link) = lock(&self.link).clone() else { return Err(gst::FlowError::Flushing) };
        let prepared = match outgoing::prepare(buffer, &format, &self.copy_pools) {
            Ok(prepared) => prepared,
            Err(Refusal::Flushing) => return Err(gst::FlowError::Flushing),
            Err(Refusal::Invalid(reason)) => return Err(self.refuse(&reason)),
        };
        let wait = lock(&self.settings).wait_for_receiver;
        match link.send(prepared, wait) {
            Sent::Delivered => Ok(gst::FlowSuccess::Ok),
            Sent::Dropped => {
                gst::log!(CAT, imp = self, "no receiver connected: buffer {:?} dropped", buffer.pts());
                Ok(gst::FlowSuccess::Ok)
            }
            Sent::Flushing => Err(gst::FlowError::Flushing),
            Sent::Invalid(reason) => Err(self.refuse(&reason)),
        }
    }

    fn event(&self, event: gst::Event) -> bool {
        if let gst::EventView::Eos(_) = event.view() {
            if let Some(link) = lock(&self.link).clone() {
                let still_out = link.send_eos(EOS_RETURN_TIMEOUT);
                if still_out > 0 {
                    gst::warning!(
                        CAT,
                        imp = self,
                        "EOS: the receiver still holds {still_out} buffers after {EOS_RETURN_TIMEOUT:?}; \
                         they are released when the element stops"
                    );
                }
            }
        }
        self.parent_event(event)
    }

    fn unlock(&self) -> Result<(), gst::ErrorMessage> {
        if let Some(link) = lock(&self.link).as_ref() {
            link.set_flushing(true);
        }
        self.copy_pools.set_flushing(true);
        Ok(())
    }

    fn unlock_stop(&self) -> Result<(), gst::ErrorMessage> {
        if let Some(link) = lock(&self.link).as_ref() {
            link.set_flushing(false);
        }
        self.copy_pools.set_flushing(false);
        Ok(())
    }
}

/// Logs what the link reports. `socket`: the path it connects to.
fn log_link_event(element: &super::QtiSocketSink, socket: &str, event: LinkEvent) {
    match event {
        LinkEvent::Connected => gst::info!(CAT, obj = element, "connected to the receiver at {socket}"),
        LinkEvent::Disconnect { still_out, again: false } => gst::debug!(
            CAT,
            obj = element,
            "the receiver disconnected; connecting again once its {still_out} buffers are back"
        ),
        LinkEvent::Disconnect { still_out, again: true } => gst::debug!(
            CAT,
            obj = element,
            "the receiver disconnected again while {still_out} buffers are still out; still draining"
        ),
        // One warning per connection: what fails after the first is its consequence.
        LinkEvent::SendFailed { error, first: true } => {
            gst::warning!(CAT, obj = element, "sending failed, the receiver is gone: {error}")
        }
        LinkEvent::SendFailed { error, first: false } => gst::debug!(CAT, obj = element, "sending failed too: {error}"),
        LinkEvent::EosFailed { error, first: true } => gst::warning!(CAT, obj = element, "cannot send EOS: {error}"),
        LinkEvent::EosFailed { error, first: false } => gst::debug!(CAT, obj = element, "cannot send EOS: {error}"),
        LinkEvent::ReceiverGone => {
            gst::info!(CAT, obj = element, "the receiver closed the connection; connecting again")
        }
        LinkEvent::ReceiverFailed { error, first: true } => {
            gst::warning!(CAT, obj = element, "the receiver at {socket} broke the protocol: {error}; connecting again")
        }
        LinkEvent::ReceiverFailed { error, first: false } => {
            gst::debug!(CAT, obj = element, "the receiver at {socket} broke the protocol too: {error}")
        }
        LinkEvent::Unserved { receiver, in_a_row, retry_in, broke_protocol: true } => gst::element_warning!(
            element,
            gst::ResourceError::OpenWrite,
            (
                "The receiver at {} ({}) broke the protocol {} times in a row before taking anything",
                socket,
                receiver.map_or("credentials unknown".to_owned(), |p| format!("pid {}, uid {}", p.pid, p.uid)),
                in_a_row
            ),
            [
                "Connecting again after a growing delay (now {:?}, at most 1 s); each connection's error is in the \
                 log (qtisocketsink:2). Said once until a connection is served.",
                retry_in
            ]
        ),
        LinkEvent::Unserved { receiver, in_a_row, retry_in, broke_protocol: false } => {
            let by = match receiver {
                Some(p) => format!("pid {}, uid {}", p.pid, p.uid),
                None => "credentials unknown".to_owned(),
            };
            let uid = rustix::process::getuid().as_raw();
            let meanwhile = if element.property::<bool>("wait-for-receiver") { "wait" } else { "are dropped" };
            gst::element_warning!(
                element,
                gst::ResourceError::OpenWrite,
                (
                    "The receiver at {} ({}) closed the connection {} times in a row before taking anything: it \
                     refuses this sender (uid {}) or serves another sender already",
                    socket,
                    by,
                    in_a_row,
                    uid
                ),
                [
                    "Allow uid {} in the receiver's allowed-uids, or stop the other sender on {}. Connecting again \
                     after a growing delay (now {:?}, at most 1 s); buffers rendered meanwhile {}. Said once until \
                     a connection is served.",
                    uid,
                    socket,
                    retry_in,
                    meanwhile
                ]
            );
        }
        LinkEvent::ServedAgain { after } => gst::info!(
            CAT,
            obj = element,
            "the receiver at {socket} takes this sender now, after {after} connections it closed unserved"
        ),
        LinkEvent::Drained => {
            gst::info!(CAT, obj = element, "the receiver disconnected and has every buffer back; connecting again")
        }
    }
}

impl QtiSocketSink {
    /// The `socket` property, checked as the receiver checks its path.
    fn socket_path(&self) -> Result<String, gst::ErrorMessage> {
        let socket = lock(&self.settings).socket.clone().ok_or_else(|| {
            gst::error_msg!(
                gst::ResourceError::Settings,
                ("No socket path set"),
                ["Set the 'socket' property to the path a qtisocketsrc listens on"]
            )
        })?;
        let len = socket.len();
        if len == 0 || len > MAX_SOCKET_PATH_LEN {
            return Err(gst::error_msg!(
                gst::ResourceError::Settings,
                (
                    "Cannot connect to socket '{}': the path is {} bytes long; a UNIX socket path holds 1 to {} \
                     bytes",
                    socket,
                    len,
                    MAX_SOCKET_PATH_LEN
                ),
                ["Set 'socket' to a shorter path (qtisocketsrc refuses this one too)"]
            ));
        }
        Ok(socket)
    }

    /// READY→PAUSED: starts the thread that connects to the receiver.
    fn connect(&self) -> Result<(), gst::ErrorMessage> {
        let socket = self.socket_path()?;
        let element = self.obj().downgrade();
        let path = socket.clone();
        // Weak: the element owns the link, and the link this callback.
        let report = Box::new(move |event: LinkEvent| {
            if let Some(element) = element.upgrade() {
                log_link_event(&element, &path, event);
            }
        });
        let link = Link::start(PathBuf::from(&socket), report).map_err(|e| {
            gst::error_msg!(gst::ResourceError::Failed, ("Cannot start the connection thread for {}: {}", socket, e))
        })?;
        *lock(&self.link) = Some(Arc::new(link));
        gst::info!(CAT, imp = self, "connecting to {socket}");
        Ok(())
    }

    /// PAUSED→READY (and stop): closes the connection, lets go of every buffer still out,
    /// keeps the run's counters for `stats`.
    fn disconnect(&self) {
        if let Some(link) = lock(&self.link).take() {
            let mut counters = link.counters();
            // The last reference (render has returned by now): closes the connection and
            // lets go of every buffer still out with the receiver.
            drop(link);
            counters.connected = false;
            counters.in_flight = 0;
            *lock(&self.last_counters) = counters;
            gst::info!(CAT, imp = self, "disconnected");
        }
        self.copy_pools.clear();
        *lock(&self.format) = None;
    }

    /// Posts an error for a buffer the protocol cannot carry.
    fn refuse(&self, reason: &str) -> gst::FlowError {
        let socket = lock(&self.settings).socket.clone().unwrap_or_default();
        gst::element_imp_error!(self, gst::StreamError::Format, ("Cannot send this buffer to {}: {}", socket, reason));
        gst::FlowError::Error
    }

    fn stats(&self) -> gst::Structure {
        let counters = match lock(&self.link).as_ref() {
            Some(link) => link.counters(),
            None => lock(&self.last_counters).clone(),
        };
        gst::Structure::builder("application/x-qtisocketsink-stats")
            .field("buffers-sent", counters.buffers_sent)
            .field("fds-sent", counters.fds_sent)
            .field("copies", counters.copies)
            .field("bytes-copied", counters.bytes_copied)
            .field("bytes-described", counters.bytes_described)
            .field("returns", counters.returns)
            .field("reconnects", counters.connections_used.saturating_sub(1))
            .field("dropped", counters.dropped)
            .field("in-flight", counters.in_flight)
            .field("connected", counters.connected)
            .build()
    }
}
