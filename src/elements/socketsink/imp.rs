//! The `qtisocketsink` implementation: a `GstBaseSink` on [`crate::Fanout`].
//!
//! Threads: `render()` (the streaming thread) prepares each buffer (copying memory that
//! has no fd) without a lock, then sends it through the fan-out, whose own thread keeps
//! the connections (one `socket`, or every receiver in `socket-dir`) and lets go of
//! buffers as the receivers return them.

use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use crate::elements::lock;
use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::prelude::*;

use super::handoff::Handoff;
use super::memfd_allocator::MemfdAllocator;
use super::outgoing::{self, CopyPools, Refusal};
use super::pool::ReturnReadingPool;
use super::report::{self, peer_structure};
use crate::elements::caps::{Format, TEXT_CAPS};
use crate::fanout::{Delivery, Destination, Fanout, FanoutOptions, FanoutStats};
use crate::transport::MAX_SOCKET_PATH_LEN;

pub(super) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "qtisocketsink",
        gst::DebugColorFlags::empty(),
        Some("Sends buffers to a qtisocketsrc over a UNIX socket"),
    )
});

const DEFAULT_WAIT_FOR_RECEIVER: bool = false;
/// How long EOS waits for the receiver to return what it holds before going on.
const EOS_RETURN_TIMEOUT: Duration = Duration::from_secs(2);
/// With `socket`, the most buffers the pools offered upstream hand out at once (at
/// least): a receiver that keeps buffers makes upstream wait instead of memory grow.
const POOL_MAX_BUFFERS: u32 = 16;
const POOL_MIN_BUFFERS: u32 = 2;
/// `max-in-flight` 0 with `socket-dir`: what each receiver may hold.
const DIR_MAX_IN_FLIGHT: u32 = 4;
/// Buffers upstream and the sink itself may hold beside the receivers' share.
const POOL_HEADROOM: u32 = 4;

/// The `slow-receiver` property's values.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstQtiSocketSinkSlowReceiver")]
pub enum SlowReceiverMode {
    #[enum_value(name = "Wait: back-pressure, rendering waits until the receiver returns a buffer", nick = "wait")]
    Wait = 0,
    #[enum_value(name = "Skip: the receiver misses the buffer (counted), the others get it", nick = "skip")]
    Skip = 1,
}

impl From<SlowReceiverMode> for crate::SlowReceiver {
    fn from(mode: SlowReceiverMode) -> Self {
        match mode {
            SlowReceiverMode::Wait => crate::SlowReceiver::Wait,
            SlowReceiverMode::Skip => crate::SlowReceiver::Skip,
        }
    }
}

#[derive(Debug, Clone)]
struct Settings {
    socket: Option<String>,
    socket_dir: Option<String>,
    wait_for_receiver: bool,
    /// 0: automatic (none with `socket`, [`DIR_MAX_IN_FLIGHT`] with `socket-dir`).
    max_in_flight: u32,
    slow_receiver: SlowReceiverMode,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            socket: None,
            socket_dir: None,
            wait_for_receiver: DEFAULT_WAIT_FOR_RECEIVER,
            max_in_flight: 0,
            slow_receiver: SlowReceiverMode::Skip,
        }
    }
}

impl Settings {
    /// What each receiver may hold: `None` for no limit of the sink's own.
    fn max_in_flight(&self) -> Option<usize> {
        match (self.max_in_flight, &self.socket_dir) {
            (0, None) => None,
            (0, Some(_)) => Some(DIR_MAX_IN_FLIGHT as usize),
            (n, _) => Some(n as usize),
        }
    }

    /// The most buffers a pool offered upstream (or a copy pool) may have out (0: no
    /// limit). With `socket`: [`POOL_MAX_BUFFERS`], or more for a larger `max-in-flight`.
    /// With `socket-dir` the number of receivers is not known: no fixed limit, since each
    /// receiver holds at most `max-in-flight` (a receiver at its limit is skipped or
    /// waited for), so at most receivers × max-in-flight + a few are out at once.
    fn pool_max_buffers(&self) -> u32 {
        match (self.socket_dir.is_some(), self.max_in_flight()) {
            (true, _) => 0,
            (false, None) => POOL_MAX_BUFFERS,
            (false, Some(n)) => POOL_MAX_BUFFERS.max(n as u32 + POOL_HEADROOM),
        }
    }
}

/// Counters of `render`'s own, for `stats`.
#[derive(Debug, Clone, Default)]
struct RenderCounters {
    copies: u64,
    bytes_copied: u64,
    bytes_described: u64,
}

/// What the sink sends through: the fan-out, holding each buffer's memories until every
/// receiver has returned them.
type Sending = Fanout<Vec<gst::Buffer>>;

#[derive(Default)]
pub struct QtiSocketSink {
    settings: Mutex<Settings>,
    /// From the caps: how buffers are described.
    format: Mutex<Option<Format>>,
    fanout: Mutex<Option<Arc<Sending>>>,
    /// This run's: see handoff.rs.
    handoff: Mutex<Handoff>,
    copy_pools: CopyPools,
    allocator: MemfdAllocator,
    /// This run's (or, once stopped, the last run's).
    render_counters: Mutex<RenderCounters>,
    /// The fan-out's figures of the last run, for `stats` once stopped.
    last_stats: Mutex<FanoutStats>,
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
                glib::ParamSpecString::builder("socket-dir")
                    .nick("Socket directory")
                    .blurb(
                        "A directory of receivers' sockets, instead of 'socket': the element sends every \
                         buffer to each qtisocketsrc listening on a socket there, and follows the directory \
                         while running. A receiver joins by creating its socket there and leaves by removing \
                         it, pausing or exiting; anything else in the directory is ignored. No receiver can \
                         stall the others: see max-in-flight and slow-receiver. Setting both 'socket' and \
                         'socket-dir' is an error.",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("wait-for-receiver")
                    .nick("Wait for receiver")
                    .blurb(
                        "What a buffer does while no receiver is connected (with socket-dir: none at all): \
                         false = it is dropped and counted (as the deployed element does); true = rendering \
                         waits until a receiver connects.",
                    )
                    .default_value(DEFAULT_WAIT_FOR_RECEIVER)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("max-in-flight")
                    .nick("Buffers in flight per receiver")
                    .blurb(
                        "How many buffers one receiver may hold at once; a receiver at this limit is \
                         handled as slow-receiver says. 0 = automatic: no limit of its own with 'socket' \
                         (the pool offered upstream bounds it, as the deployed element does), 4 with \
                         'socket-dir'.",
                    )
                    .default_value(0)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("slow-receiver", SlowReceiverMode::Skip)
                    .nick("Slow receiver")
                    .blurb(
                        "What a buffer does when a receiver holds max-in-flight buffers already: wait = \
                         rendering waits until it returns one (back-pressure: one stuck receiver stalls \
                         everyone); skip = that receiver misses this buffer (counted in stats) while the \
                         producer and the other receivers go on.",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "Read-only counters since the element started (the last run's once stopped): \
                         buffers-sent (buffers that went to at least one receiver), fds-sent, copies \
                         (memories that had no fd and were copied into a memfd), bytes-copied, \
                         bytes-described (bytes sent as fds), returns (blocks the receivers gave back), \
                         reconnects (connections after the first that carried buffers), dropped (buffers \
                         rendered while no receiver was connected), skipped (buffers a receiver at its \
                         max-in-flight missed, all receivers together), in-flight (buffers out with some \
                         receiver now), connected, receivers (how many are connected now) and \
                         receiver-stats: one structure per connected receiver with socket, pid, uid \
                         (SO_PEERCRED), buffers-sent, fds-sent, skipped, in-flight, returns and \
                         connected-since (ns since the epoch).",
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
        if name != "wait-for-receiver" && state > gst::State::Ready {
            gst::warning!(CAT, imp = self, "Property '{name}' can only be changed in NULL or READY, not {state:?}");
            return;
        }
        let mut settings = lock(&self.settings);
        match name {
            "socket" => {
                settings.socket = value.get::<Option<String>>().expect("type checked upstream");
                gst::info!(CAT, imp = self, "socket: {:?}", settings.socket);
            }
            "socket-dir" => {
                settings.socket_dir = value.get::<Option<String>>().expect("type checked upstream");
                gst::info!(CAT, imp = self, "socket-dir: {:?}", settings.socket_dir);
            }
            "wait-for-receiver" => settings.wait_for_receiver = value.get().expect("type checked upstream"),
            "max-in-flight" => settings.max_in_flight = value.get().expect("type checked upstream"),
            "slow-receiver" => settings.slow_receiver = value.get().expect("type checked upstream"),
            other => unreachable!("unknown property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        match pspec.name() {
            "socket" => lock(&self.settings).socket.to_value(),
            "socket-dir" => lock(&self.settings).socket_dir.to_value(),
            "wait-for-receiver" => lock(&self.settings).wait_for_receiver.to_value(),
            "max-in-flight" => lock(&self.settings).max_in_flight.to_value(),
            "slow-receiver" => lock(&self.settings).slow_receiver.to_value(),
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
            // Before the pad is activated: no buffer can be rendered without a fan-out.
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
        // NULL→READY: only the settings are checked; the connections start on READY→PAUSED.
        self.destination().map(drop)
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
            let pool = ReturnReadingPool::new(&self.obj());
            let mut config = pool.config();
            let size = info.size() as u32;
            let max_buffers = lock(&self.settings).pool_max_buffers();
            config.set_params(Some(caps), size, POOL_MIN_BUFFERS, max_buffers);
            config.set_allocator(Some(&self.allocator), None);
            config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META);
            pool.set_config(config).map_err(|e| gst::loggable_error!(CAT, "cannot configure the memfd pool: {e}"))?;
            query.add_allocation_pool(Some(&pool), size, POOL_MIN_BUFFERS, max_buffers);
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
        let Some(fanout) = lock(&self.fanout).clone() else { return Err(gst::FlowError::Flushing) };
        let mut prepared = match outgoing::prepare(buffer, &format, &self.copy_pools) {
            Ok(prepared) => prepared,
            Err(Refusal::Flushing) => return Err(gst::FlowError::Flushing),
            Err(Refusal::Invalid(reason)) => return Err(self.refuse(&reason)),
        };
        let wait = lock(&self.settings).wait_for_receiver;
        let holds = prepared.take_holds();
        lock(&self.handoff).update(&holds, &fanout, &self.obj());
        // Counted before the buffer can reach a receiver: whoever reads `stats` after
        // the receiver got it sees it counted. Not described after all if not sent.
        self.count_prepared(&prepared);
        let delivery = fanout.send(&prepared.outgoing(), holds, wait);
        if !matches!(delivery, Delivery::Sent { .. }) {
            lock(&self.render_counters).bytes_described -= prepared.bytes_described;
        }
        match delivery {
            Delivery::Sent { .. } => Ok(gst::FlowSuccess::Ok),
            Delivery::NoReceiver => {
                gst::log!(CAT, imp = self, "no receiver connected: buffer {:?} dropped", buffer.pts());
                Ok(gst::FlowSuccess::Ok)
            }
            Delivery::Skipped => {
                gst::log!(CAT, imp = self, "every receiver is at max-in-flight: buffer {:?} skipped", buffer.pts());
                Ok(gst::FlowSuccess::Ok)
            }
            Delivery::Flushing => Err(gst::FlowError::Flushing),
            Delivery::Invalid(reason) => Err(self.refuse(&reason)),
        }
    }

    fn event(&self, event: gst::Event) -> bool {
        if let gst::EventView::Eos(_) = event.view() {
            if let Some(fanout) = lock(&self.fanout).clone() {
                let still_out = fanout.send_eos(EOS_RETURN_TIMEOUT);
                if still_out > 0 {
                    gst::warning!(
                        CAT,
                        imp = self,
                        "EOS: the receivers still hold {still_out} buffers after {EOS_RETURN_TIMEOUT:?}; \
                         they are released when the element stops"
                    );
                }
            }
        }
        self.parent_event(event)
    }

    fn unlock(&self) -> Result<(), gst::ErrorMessage> {
        if let Some(fanout) = lock(&self.fanout).as_ref() {
            fanout.set_flushing(true);
        }
        self.copy_pools.set_flushing(true);
        Ok(())
    }

    fn unlock_stop(&self) -> Result<(), gst::ErrorMessage> {
        if let Some(fanout) = lock(&self.fanout).as_ref() {
            fanout.set_flushing(false);
        }
        self.copy_pools.set_flushing(false);
        Ok(())
    }
}

impl QtiSocketSink {
    /// This run's fan-out, for the pool we proposed (pool.rs).
    pub(super) fn fanout(&self) -> Option<Arc<Sending>> {
        lock(&self.fanout).clone()
    }

    /// Where to send, from `socket` or `socket-dir` (exactly one), checked as the
    /// receiver checks its path.
    fn destination(&self) -> Result<Destination, gst::ErrorMessage> {
        let settings = lock(&self.settings).clone();
        let socket = match (settings.socket, settings.socket_dir) {
            (Some(socket), Some(dir)) => {
                return Err(gst::error_msg!(
                    gst::ResourceError::Settings,
                    ("Both 'socket' ({}) and 'socket-dir' ({}) are set", socket, dir),
                    ["Set 'socket' to send to one receiver, or 'socket-dir' to send to every receiver in a \
                      directory, not both"]
                ))
            }
            (None, None) => {
                return Err(gst::error_msg!(
                    gst::ResourceError::Settings,
                    ("No socket path set"),
                    ["Set the 'socket' property to the path a qtisocketsrc listens on (or 'socket-dir' to a \
                      directory of receivers' sockets)"]
                ))
            }
            (None, Some(dir)) => return Ok(Destination::Directory(PathBuf::from(dir))),
            (Some(socket), None) => socket,
        };
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
        Ok(Destination::Socket(PathBuf::from(socket)))
    }

    /// READY→PAUSED: starts the fan-out, which connects to the receivers.
    fn connect(&self) -> Result<(), gst::ErrorMessage> {
        let destination = self.destination()?;
        let settings = lock(&self.settings).clone();
        let options =
            FanoutOptions { max_in_flight: settings.max_in_flight(), slow_receiver: settings.slow_receiver.into() };
        self.copy_pools.set_max_buffers(settings.pool_max_buffers());
        let element = self.obj().downgrade();
        // Weak: the element owns the fan-out, and the fan-out this callback.
        let report = Box::new(move |event| {
            if let Some(element) = element.upgrade() {
                report::report(&element, event);
            }
        });
        let fanout = Fanout::start(destination.clone(), options, report).map_err(|e| match &destination {
            Destination::Directory(dir) => gst::error_msg!(
                gst::ResourceError::OpenRead,
                ("Cannot follow the socket directory {}: {}", dir.display(), e),
                ["Set 'socket-dir' to an existing directory this process can read"]
            ),
            Destination::Socket(socket) => {
                gst::error_msg!(gst::ResourceError::Failed, ("Cannot start sending to {}: {}", socket.display(), e))
            }
        })?;
        *lock(&self.fanout) = Some(Arc::new(fanout));
        *lock(&self.handoff) = Handoff::default();
        *lock(&self.render_counters) = RenderCounters::default();
        gst::info!(CAT, imp = self, "sending to {destination:?} ({options:?})");
        Ok(())
    }

    /// PAUSED→READY (and stop): closes the connections, lets go of every buffer still
    /// out, keeps the run's figures for `stats`.
    fn disconnect(&self) {
        if let Some(fanout) = lock(&self.fanout).take() {
            let mut stats = fanout.stats();
            // The last reference (render has returned by now): closes the connections and
            // lets go of every buffer still out with the receivers.
            drop(fanout);
            stats.in_flight = 0;
            stats.receivers.clear();
            *lock(&self.last_stats) = stats;
            gst::info!(CAT, imp = self, "disconnected");
        }
        self.copy_pools.clear();
        *lock(&self.format) = None;
    }

    /// Counts what preparing `prepared` copied, and the bytes it describes.
    fn count_prepared(&self, prepared: &outgoing::Prepared) {
        let mut counters = lock(&self.render_counters);
        counters.copies += prepared.copies;
        counters.bytes_copied += prepared.bytes_copied;
        counters.bytes_described += prepared.bytes_described;
    }

    /// Posts an error for a buffer the protocol cannot carry.
    fn refuse(&self, reason: &str) -> gst::FlowError {
        let settings = lock(&self.settings).clone();
        let to = settings.socket.or(settings.socket_dir).unwrap_or_default();
        gst::element_imp_error!(self, gst::StreamError::Format, ("Cannot send this buffer to {}: {}", to, reason));
        gst::FlowError::Error
    }

    fn stats(&self) -> gst::Structure {
        let stats = match lock(&self.fanout).as_ref() {
            Some(fanout) => fanout.stats(),
            None => lock(&self.last_stats).clone(),
        };
        let render = lock(&self.render_counters).clone();
        let receivers: Vec<gst::Structure> =
            stats.receivers.iter().map(|peer| peer_structure("receiver", peer)).collect();
        gst::Structure::builder("application/x-qtisocketsink-stats")
            .field("buffers-sent", stats.buffers_sent)
            .field("fds-sent", stats.fds_sent)
            .field("copies", render.copies)
            .field("bytes-copied", render.bytes_copied)
            .field("bytes-described", render.bytes_described)
            .field("returns", stats.returns)
            .field("reconnects", stats.connections_used.saturating_sub(1))
            .field("dropped", stats.dropped)
            .field("skipped", stats.skipped)
            .field("in-flight", stats.in_flight)
            .field("connected", !receivers.is_empty())
            .field("receivers", receivers.len() as u32)
            .field("receiver-stats", gst::Array::new(receivers))
            .build()
    }
}
