//! `qsock.FanoutSender`: one sender, every receiver listening in a directory, through
//! the library's fan-out (`gstqtisocket::Fanout`, the one `qtisocketsink socket-dir=`
//! uses). It shares everything but the link with `qsock.Sender` (`crate::sender::Core`):
//! the fan-out holds each buffer's memfds ([`SlotHold`]s) until every receiver that got
//! it has returned it or is gone, and drops them on its own thread, which puts the
//! memfds back in the pool.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use gstqtisocket::{
    Delivery, Destination, Fanout, FanoutEvent, FanoutOptions, FanoutStats, OutgoingBuffer, PeerStats, SlowReceiver,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::{new_err, to_py};
use crate::pool::SlotHold;
use crate::receiver::seconds;
use crate::sender::{sending_methods, Core, Inner, Link, SIGNAL_CHECK_INTERVAL};

/// How often a send that waits for a receiver (to connect, or to return a buffer) looks
/// again.
const POLL_INTERVAL: Duration = Duration::from_millis(2);

/// What the fan-out's report callback counts (it runs on the fan-out's thread, and in
/// sends, without the GIL).
#[derive(Default)]
struct Events {
    joined: AtomicU64,
    left: AtomicU64,
    eos_failed: AtomicU64,
}

/// The fan-out behind a `FanoutSender`.
pub(crate) struct FanoutLink {
    fanout: Option<Fanout<Vec<SlotHold>>>,
    options: FanoutOptions,
    wait_for_receiver: bool,
    events: Arc<Events>,
    /// The figures when it was closed.
    last_stats: FanoutStats,
}

impl FanoutLink {
    pub fn check(&self, py: Python<'_>) -> PyResult<&Fanout<Vec<SlotHold>>> {
        self.fanout.as_ref().ok_or_else(|| new_err(py, "Closed", "the sender is closed".into()))
    }

    /// Waits (in slices, without the GIL, Ctrl-C getting through) until the buffer can go
    /// without the fan-out waiting itself: a receiver is connected (`wait_for_receiver`),
    /// and, with `slow_receiver="wait"`, none holds `max_in_flight` buffers already. The
    /// second only our own sends change, and this sender's lock is held: once true, it
    /// stays true for the send. A receiver is waited for at most `timeout`.
    fn wait_until_ready(&self, py: Python<'_>, timeout: Duration) -> PyResult<()> {
        let fanout = self.check(py)?;
        let limit = match self.options.slow_receiver {
            SlowReceiver::Wait => self.options.max_in_flight,
            SlowReceiver::Skip => None,
        };
        if !self.wait_for_receiver && limit.is_none() {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        let mut last_check = Instant::now();
        loop {
            let receivers = fanout.stats().receivers;
            let full: Vec<&PeerStats> = match limit {
                Some(limit) => receivers.iter().filter(|p| p.in_flight >= limit as u64).collect(),
                None => Vec::new(),
            };
            if full.is_empty() && (!receivers.is_empty() || !self.wait_for_receiver) {
                return Ok(());
            }
            if !full.is_empty() && Instant::now() >= deadline {
                let names: Vec<String> = full.iter().map(|p| p.socket.display().to_string()).collect();
                return Err(new_err(
                    py,
                    "Timeout",
                    format!(
                        "{} hold{} max_in_flight={} buffers and returned none within {} s (slow_receiver=\"wait\")",
                        names.join(", "),
                        if names.len() == 1 { "s" } else { "" },
                        limit.unwrap_or_default(),
                        timeout.as_secs_f64()
                    ),
                ));
            }
            py.detach(|| std::thread::sleep(POLL_INTERVAL));
            if last_check.elapsed() >= SIGNAL_CHECK_INTERVAL {
                py.check_signals()?;
                last_check = Instant::now();
            }
        }
    }

    /// Sends `buffer` to every connected receiver (under its limit), the memfds held by
    /// `holds` until each has returned it. Returns how many receivers got it.
    pub fn send(
        &self,
        py: Python<'_>,
        buffer: &OutgoingBuffer<'_>,
        holds: Vec<SlotHold>,
        timeout: Duration,
    ) -> PyResult<usize> {
        // On an error (Ctrl-C, a timeout) `holds` is dropped: the memfds go back unsent.
        self.wait_until_ready(py, timeout)?;
        let fanout = self.check(py)?;
        // A receiver that left since `wait_until_ready` looked makes the fan-out wait for
        // the next one (what wait_for_receiver asks for), without the Ctrl-C check.
        let wait = self.wait_for_receiver;
        match py.detach(|| fanout.send(buffer, holds, wait)) {
            Delivery::Sent { receivers } => Ok(receivers),
            Delivery::NoReceiver | Delivery::Skipped => Ok(0),
            Delivery::Flushing => Err(new_err(py, "Closed", "the sender is closed".into())),
            Delivery::Invalid(reason) => Err(to_py(py, gstqtisocket::Error::InvalidBuffer(reason))),
        }
    }

    /// Sends EOS to every connected receiver; returns to how many it went.
    pub fn eos(&self, py: Python<'_>) -> PyResult<usize> {
        let fanout = self.check(py)?;
        let connected = fanout.stats().receivers.len();
        let failed_before = self.events.eos_failed.load(Ordering::Relaxed);
        // Sends without waiting for the returns (flush() does).
        let _still_out = py.detach(|| fanout.send_eos(Duration::ZERO));
        let failed = self.events.eos_failed.load(Ordering::Relaxed) - failed_before;
        Ok(connected.saturating_sub(failed as usize))
    }

    /// Stops the fan-out: closes every connection and lets go of every memfd still out.
    pub fn close(&mut self, py: Python<'_>) {
        if let Some(fanout) = self.fanout.take() {
            let mut stats = fanout.stats();
            fanout.set_flushing(true);
            // Joins the fan-out's thread: it never needs the GIL.
            py.detach(move || drop(fanout));
            stats.in_flight = 0;
            stats.receivers.clear();
            self.last_stats = stats;
        }
    }

    fn stats(&self) -> FanoutStats {
        self.fanout.as_ref().map_or_else(|| self.last_stats.clone(), Fanout::stats)
    }
}

/// Sends buffers to every receiver listening on a socket in a directory, as they come and
/// go (`qsock.Receiver` or `qtisocketsrc` on ``DIR/name.sock``; what `qtisocketsink
/// socket-dir=DIR` does).
///
/// ``FanoutSender(directory, *, max_in_flight=4, slow_receiver="skip",
/// wait_for_receiver=False, pool_size=16, return_timeout=5.0)`` starts following the
/// directory (which must exist) and connecting to the receivers in it, on a thread of its
/// own; it returns at once.
///
/// Each buffer goes to every connected receiver that holds fewer than `max_in_flight`
/// buffers (None: no limit). A receiver at its limit misses the buffer
/// (``slow_receiver="skip"``, counted per receiver) or the send waits for it to return one,
/// up to `return_timeout` seconds, then raises `qsock.Timeout` (``"wait"``). No receiver
/// connected: the buffer is dropped (counted), or with `wait_for_receiver` the send waits
/// until one connects. Every send method returns how many receivers got the buffer (0:
/// none connected, or every one skipped it).
///
/// Memory goes out as sealed memfds from a pool of at most `pool_size`, as with `Sender`:
/// a memfd goes back to the pool once every receiver that got it has returned it or is
/// gone. When every memfd is out, a send waits up to `return_timeout` for one, then
/// raises `qsock.Timeout`. Receivers hold at most receivers x `max_in_flight` buffers
/// (fewer when, as usual, they hold the same ones): give `pool_size` room for those and
/// one being filled. Waits release the GIL.
#[pyclass(module = "qsock", name = "FanoutSender", frozen)]
pub struct PyFanoutSender {
    core: Core,
    directory: PathBuf,
}

impl PyFanoutSender {
    fn with_link<T>(&self, py: Python<'_>, f: impl FnOnce(&FanoutLink) -> T) -> T {
        let inner = self.core.lock(py);
        let Link::Fanout(link) = &inner.link else { unreachable!("a FanoutSender has a fan-out") };
        f(link)
    }
}

fn peer_dict<'py>(py: Python<'py>, peer: &PeerStats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("socket", peer.socket.display().to_string())?;
    d.set_item("pid", peer.credentials.map(|c| c.pid))?;
    d.set_item("uid", peer.credentials.map(|c| c.uid))?;
    d.set_item("gid", peer.credentials.map(|c| c.gid))?;
    d.set_item("buffers_sent", peer.buffers_sent)?;
    d.set_item("fds_sent", peer.fds_sent)?;
    d.set_item("skipped", peer.skipped)?;
    d.set_item("in_flight", peer.in_flight)?;
    d.set_item("returns", peer.returns)?;
    let since = peer.connected_since.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    d.set_item("connected_since", since)?;
    Ok(d)
}

sending_methods!(PyFanoutSender, {
    #[new]
    #[pyo3(signature = (
        directory, *, max_in_flight=Some(4), slow_receiver="skip", wait_for_receiver=false, pool_size=16,
        return_timeout=5.0
    ))]
    #[pyo3(text_signature = "(directory, *, max_in_flight=4, slow_receiver='skip', wait_for_receiver=False, \
                             pool_size=16, return_timeout=5.0)")]
    fn new(
        py: Python<'_>,
        directory: PathBuf,
        max_in_flight: Option<usize>,
        slow_receiver: &str,
        wait_for_receiver: bool,
        pool_size: usize,
        return_timeout: f64,
    ) -> PyResult<Self> {
        let return_timeout = seconds(return_timeout)?;
        if pool_size == 0 {
            return Err(PyValueError::new_err("pool_size must be at least 1"));
        }
        if max_in_flight == Some(0) {
            return Err(PyValueError::new_err("max_in_flight must be at least 1 (or None: no limit)"));
        }
        let slow_receiver = match slow_receiver {
            "skip" => SlowReceiver::Skip,
            "wait" => SlowReceiver::Wait,
            other => {
                return Err(PyValueError::new_err(format!("slow_receiver is \"skip\" or \"wait\", got {other:?}")))
            }
        };
        let options = FanoutOptions { max_in_flight, slow_receiver };
        let events = Arc::new(Events::default());
        let report = {
            let events = events.clone();
            Box::new(move |event: FanoutEvent| {
                let counter = match event {
                    FanoutEvent::Joined(_) => &events.joined,
                    FanoutEvent::Left(_) => &events.left,
                    FanoutEvent::EosFailed { .. } => &events.eos_failed,
                    _ => return,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            })
        };
        let destination = Destination::Directory(directory.clone());
        let fanout = py.detach(|| Fanout::start(destination, options, report)).map_err(|e| to_py(py, e))?;
        let link = Link::Fanout(FanoutLink {
            fanout: Some(fanout),
            options,
            wait_for_receiver,
            events,
            last_stats: FanoutStats::default(),
        });
        Ok(PyFanoutSender {
            core: Core { inner: Arc::new(Mutex::new(Inner::new(link, pool_size, return_timeout))) },
            directory,
        })
    }

    /// The directory it follows.
    #[getter]
    fn directory(&self) -> PathBuf {
        self.directory.clone()
    }

    #[getter]
    fn max_in_flight(&self, py: Python<'_>) -> Option<usize> {
        self.with_link(py, |link| link.options.max_in_flight)
    }

    #[getter]
    fn slow_receiver(&self, py: Python<'_>) -> &'static str {
        self.with_link(py, |link| match link.options.slow_receiver {
            SlowReceiver::Skip => "skip",
            SlowReceiver::Wait => "wait",
        })
    }

    #[getter]
    fn wait_for_receiver(&self, py: Python<'_>) -> bool {
        self.with_link(py, |link| link.wait_for_receiver)
    }

    /// The receivers connected now (how many the next buffer would go to, at most).
    #[getter]
    fn receivers(&self, py: Python<'_>) -> usize {
        self.with_link(py, |link| link.stats().receivers.len())
    }

    /// The fan-out's figures, as a dict: `buffers_sent` (buffers that went to at least
    /// one receiver), `fds_sent`, `returns` (memory blocks returned), `dropped` (sent
    /// while no receiver was connected), `skipped` (buffers receivers missed at their
    /// `max_in_flight`, all receivers together), `in_flight` (buffers some receiver still
    /// holds), `connections` (connections that carried a buffer), `joined` and `left`
    /// (receivers that took a first buffer, and that went away after), the pool's
    /// `copies`, `bytes_copied`, `bytes_in_place`, `pooled` (memfds made) and
    /// `memfds_in_flight` (out with receivers), and `receivers`: one dict per connected
    /// receiver with `socket`, `pid`, `uid`, `gid` (None if unknown), `buffers_sent`,
    /// `fds_sent`, `skipped`, `in_flight`, `returns` (on its current connection) and
    /// `connected_since` (seconds since the epoch).
    #[getter]
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let inner = self.core.lock(py);
        let Link::Fanout(link) = &inner.link else { unreachable!("a FanoutSender has a fan-out") };
        let stats = link.stats();
        let d = PyDict::new(py);
        d.set_item("buffers_sent", stats.buffers_sent)?;
        d.set_item("fds_sent", stats.fds_sent)?;
        d.set_item("returns", stats.returns)?;
        d.set_item("dropped", stats.dropped)?;
        d.set_item("skipped", stats.skipped)?;
        d.set_item("in_flight", stats.in_flight)?;
        d.set_item("connections", stats.connections_used)?;
        d.set_item("joined", link.events.joined.load(Ordering::Relaxed))?;
        d.set_item("left", link.events.left.load(Ordering::Relaxed))?;
        d.set_item("copies", inner.counters.copies)?;
        d.set_item("bytes_copied", inner.counters.bytes_copied)?;
        d.set_item("bytes_in_place", inner.counters.bytes_in_place)?;
        d.set_item("pooled", inner.pool.len())?;
        d.set_item("memfds_in_flight", inner.pool.in_flight())?;
        let receivers = PyList::empty(py);
        for peer in &stats.receivers {
            receivers.append(peer_dict(py, peer)?)?;
        }
        d.set_item("receivers", receivers)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!("<qsock.FanoutSender {:?}>", self.directory)
    }
});
