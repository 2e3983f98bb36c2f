//! `qsock.Receiver` and `qsock.Buffer`: buffers received from a sender, their description
//! as Python values, and their memory as read-only numpy arrays over the mapped fds.
//!
//! Release: a `Buffer` and every array made from it share one `Arc<Core>`; `Core` owns
//! the `ReceivedBuffer` (whose drop sends the return) and the mappings. So the return
//! goes when the last of them goes, and memory under an array is never unmapped or
//! given back while the array lives. `Buffer.release()` gives the buffer back at once
//! when no array of it is alive, and raises `BufferInUse` (a `BufferError`, as
//! `memoryview.release()` does) when some are: it never pulls memory from under an array.
//!
//! A DMA-BUF block is read inside a `DMA_BUF_IOCTL_SYNC` window: started when the buffer
//! first maps it, ended when the buffer goes back (memfds need none).

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use gstqtisocket::protocol::{
    DataMessage, FramePayload, MemoryBlock, MemoryKind, TensorPayload, TensorType, CLOCK_TIME_NONE,
};
use gstqtisocket::{Event, ReceivedBuffer, Receiver, ReceiverHandle, ReceiverOptions};
use numpy::npyffi::NPY_TYPES;
use numpy::PyArrayDescr;
use pyo3::exceptions::{PyIndexError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::MutexExt;
use pyo3::types::PyDict;

use crate::arrays::{array_over, ArrayLayout, Dtype};
use crate::errors::{new_err, IntoPyResult};
use crate::formats;
use crate::mapping::{dma_buf_sync_read, Mapping, MappingCache};
use crate::metas::{self, PyClassification, PyLandmarks, PyMetas, PyProtection, PyRoi};

/// How long a wait runs without the GIL before it looks for a signal (Ctrl-C): only an
/// idle receiver wakes up this often; a buffer that arrives is returned at once.
const SIGNAL_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// What `Receiver.recv()` returns besides a `Buffer`.
#[pyclass(module = "qsock", eq, eq_int, frozen, from_py_object)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum StreamEvent {
    /// The sender ended its stream (EOS). It may send more after it.
    EOS,
    /// The sender closed the connection or died; the receiver waits for the next one.
    SENDER_GONE,
}

impl StreamEvent {
    /// The class attribute itself, so that `event is qsock.EOS` holds.
    fn object(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let name = match self {
            StreamEvent::EOS => "EOS",
            StreamEvent::SENDER_GONE => "SENDER_GONE",
        };
        Ok(py.get_type::<StreamEvent>().getattr(name)?.unbind())
    }
}

/// A timeout argument: not given (use the receiver's), `None` (for ever) or seconds.
#[derive(Debug, Clone, Copy)]
pub enum TimeoutArg {
    Default,
    Given(Option<Duration>),
}

impl<'a, 'py> FromPyObject<'a, 'py> for TimeoutArg {
    type Error = PyErr;
    fn extract(obj: pyo3::Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if obj.is_none() {
            return Ok(TimeoutArg::Given(None));
        }
        seconds(obj.extract()?).map(|d| TimeoutArg::Given(Some(d)))
    }
}

pub fn seconds(value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| PyValueError::new_err(format!("a timeout is a number of seconds >= 0, or None; got {value}")))
}

/// What one wait brought. Returned once and matched at once: boxing the buffer would
/// only add an allocation per buffer.
#[allow(clippy::large_enum_variant)]
enum Received {
    Buffer(ReceivedBuffer),
    Stream(StreamEvent),
    Interrupted,
    Timeout,
}

/// Receives buffers from one sender at a time on a UNIX socket.
///
/// ``Receiver(path, *, timeout=None, socket_mode=0o600, allowed_uids=None, keep_listening=False)``
/// binds `path` (replacing a stale socket file, refusing any other file) and waits for a
/// sender (`qtisocketsink`, `qsock.Sender`, a C `qsock_sender`).
///
/// Iterate over it for the buffers: the loop ends at the sender's EOS or hang-up (with
/// `keep_listening=True` it waits for more, across senders) or after `interrupt()`, and
/// raises `qsock.Timeout` when `timeout` seconds pass without a buffer, `ProtocolError`
/// for a message that breaks the protocol (rejected, returned to its sender; iterate
/// again to go on) and `SenderRefused` for a sender whose uid is not in
/// `allowed_uids`. `recv()` gives every event one at a time.
///
/// The GIL is released while it waits: other Python threads run.
#[pyclass(module = "qsock", name = "Receiver", frozen)]
pub struct PyReceiver {
    inner: Mutex<Option<Receiver>>,
    handle: ReceiverHandle,
    cache: Arc<Mutex<MappingCache>>,
    path: PathBuf,
    timeout: Option<Duration>,
    keep_listening: bool,
    poll_fd: RawFd,
    closed: AtomicBool,
}

#[pymethods]
impl PyReceiver {
    #[new]
    #[pyo3(signature = (path, *, timeout=None, socket_mode=0o600, allowed_uids=None, keep_listening=false))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        timeout: Option<f64>,
        socket_mode: u32,
        allowed_uids: Option<Vec<u32>>,
        keep_listening: bool,
    ) -> PyResult<Self> {
        let timeout = timeout.map(seconds).transpose()?;
        if socket_mode > 0o777 {
            return Err(PyValueError::new_err(format!(
                "socket_mode {socket_mode:#o} is not a permission mode (0..=0o777)"
            )));
        }
        let options = ReceiverOptions { socket_mode, allowed_uids: allowed_uids.unwrap_or_default() };
        let receiver = Receiver::bind_with(&path, &options).py_err(py)?;
        Ok(PyReceiver {
            handle: receiver.handle(),
            poll_fd: receiver.as_fd().as_raw_fd(),
            inner: Mutex::new(Some(receiver)),
            cache: Arc::default(),
            path,
            timeout,
            keep_listening,
            closed: AtomicBool::new(false),
        })
    }

    /// The socket path.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// The default timeout of `recv()` and of iteration, in seconds (None: for ever).
    #[getter]
    fn timeout(&self) -> Option<f64> {
        self.timeout.map(|t| t.as_secs_f64())
    }

    #[getter]
    fn keep_listening(&self) -> bool {
        self.keep_listening
    }

    /// Waits for the next buffer or stream event.
    ///
    /// Returns a `Buffer`, `qsock.EOS` (the sender ended its stream) or
    /// `qsock.SENDER_GONE` (it hung up; the next call waits for another sender).
    /// Raises `qsock.Timeout` after `timeout` seconds (default: the receiver's; None:
    /// for ever), `qsock.Interrupted` after `interrupt()`, `qsock.ProtocolError` when a
    /// message breaks the protocol (it was rejected and returned; call again for the
    /// next), `qsock.SenderRefused` when a sender of a uid not allowed connected (it was
    /// disconnected), `qsock.Closed` after `close()`. The GIL is released while waiting.
    #[pyo3(signature = (timeout=TimeoutArg::Default))]
    fn recv(&self, py: Python<'_>, timeout: TimeoutArg) -> PyResult<Py<PyAny>> {
        let timeout = match timeout {
            TimeoutArg::Default => self.timeout,
            TimeoutArg::Given(t) => t,
        };
        match self.wait(py, timeout)? {
            Received::Buffer(buffer) => Ok(Py::new(py, self.wrap(buffer))?.into_any()),
            Received::Stream(event) => event.object(py),
            Received::Interrupted => Err(new_err(py, "Interrupted", "Receiver.interrupt() was called".into())),
            Received::Timeout => Err(self.timeout_error(py, timeout)),
        }
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<PyBuffer>> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(closed(py));
        }
        loop {
            let received = match self.wait(py, self.timeout) {
                // Closed from another thread: the loop ends, as after interrupt().
                Err(_) if self.closed.load(Ordering::Relaxed) => return Ok(None),
                other => other?,
            };
            match received {
                Received::Buffer(buffer) => return Ok(Some(self.wrap(buffer))),
                Received::Stream(_) if self.keep_listening => continue,
                Received::Stream(_) | Received::Interrupted => return Ok(None),
                Received::Timeout => return Err(self.timeout_error(py, self.timeout)),
            }
        }
    }

    /// Makes a `recv()` or iteration blocked in another thread return (`Interrupted`; the
    /// loop ends). Without one blocked, the next wait returns at once.
    fn interrupt(&self) {
        self.handle.interrupt();
    }

    /// Tells the sender to stop sending (DISCONNECT), as `qtisocketsrc` does when it
    /// pauses. Returns whether a sender was connected.
    fn send_disconnect(&self, py: Python<'_>) -> PyResult<bool> {
        self.handle.send_disconnect().py_err(py)
    }

    /// Counters since the receiver was made, and the connected sender.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.handle.stats();
        let d = PyDict::new(py);
        d.set_item("buffers", s.buffers)?;
        d.set_item("bytes_described", s.bytes_described)?;
        d.set_item("fds_received", s.fds_received)?;
        d.set_item("fds_cached", s.fds_cached)?;
        d.set_item("returns_sent", s.returns_sent)?;
        d.set_item("protocol_errors", s.protocol_errors)?;
        d.set_item("senders_accepted", s.senders_accepted)?;
        d.set_item("senders_refused", s.senders_refused)?;
        d.set_item("socket_rebinds", s.socket_rebinds)?;
        d.set_item("connected", s.connected)?;
        d.set_item("mappings_cached", self.cache.lock_py_attached(py).map(|c| c.len()).unwrap_or(0))?;
        Ok(d)
    }

    /// The connected sender's (pid, uid, gid), from SO_PEERCRED; None when none is.
    #[getter]
    fn peer(&self) -> Option<(i32, u32, u32)> {
        self.handle.stats().peer.map(|p| (p.pid, p.uid, p.gid))
    }

    /// An fd that polls readable when `recv()` has something to do: for `select`,
    /// `selectors` or `asyncio`'s `add_reader`. The same fd for the receiver's life.
    fn fileno(&self, py: Python<'_>) -> PyResult<RawFd> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(closed(py));
        }
        Ok(self.poll_fd)
    }

    /// Closes the socket (also from another thread: a blocked `recv()` returns first).
    /// Buffers still held stay valid and are returned when they go. Closing twice is fine.
    fn close(&self, py: Python<'_>) {
        self.closed.store(true, Ordering::Relaxed);
        self.handle.interrupt();
        let receiver = self.inner.lock_py_attached(py).unwrap_or_else(|e| e.into_inner()).take();
        // Dropping it answers what is queued with returns and removes the socket file.
        py.detach(move || drop(receiver));
        if let Ok(mut cache) = self.cache.lock_py_attached(py) {
            cache.clear();
        }
    }

    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) {
        self.close(py);
    }

    fn __repr__(&self) -> String {
        let state = if self.closed.load(Ordering::Relaxed) { "closed" } else { "open" };
        format!("<qsock.Receiver {:?} {state}>", self.path)
    }
}

fn closed(py: Python<'_>) -> PyErr {
    new_err(py, "Closed", "the receiver is closed".into())
}

impl PyReceiver {
    fn timeout_error(&self, py: Python<'_>, timeout: Option<Duration>) -> PyErr {
        let waited = timeout.map_or(0.0, |t| t.as_secs_f64());
        new_err(py, "Timeout", format!("nothing arrived at {} within {waited} s", self.path.display()))
    }

    fn wrap(&self, buffer: ReceivedBuffer) -> PyBuffer {
        PyBuffer::new(buffer, self.cache.clone())
    }

    /// Waits (without the GIL) until something arrives, in slices that let Ctrl-C through.
    fn wait(&self, py: Python<'_>, timeout: Option<Duration>) -> PyResult<Received> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let slice = left.map_or(SIGNAL_CHECK_INTERVAL, |l| l.min(SIGNAL_CHECK_INTERVAL));
            let event = py.detach(|| {
                let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                inner.as_mut().map(|receiver| receiver.recv(Some(slice)))
            });
            let Some(event) = event else {
                return Err(closed(py));
            };
            match event.py_err(py)? {
                Event::Buffer(buffer) => return Ok(Received::Buffer(buffer)),
                Event::SenderConnected(_) => self.sweep_cache(py),
                Event::Eos => return Ok(Received::Stream(StreamEvent::EOS)),
                Event::SenderGone => {
                    self.sweep_cache(py);
                    return Ok(Received::Stream(StreamEvent::SENDER_GONE));
                }
                Event::Interrupted if self.closed.load(Ordering::Relaxed) => return Err(closed(py)),
                Event::Interrupted => return Ok(Received::Interrupted),
                Event::Timeout => {
                    if left.is_some_and(|l| l <= slice) {
                        return Ok(Received::Timeout);
                    }
                    py.check_signals()?;
                }
            }
        }
    }

    fn sweep_cache(&self, py: Python<'_>) {
        if let Ok(mut cache) = self.cache.lock_py_attached(py) {
            cache.sweep();
        }
    }
}

/// The mapping cache, locked without letting go of the GIL when nobody holds it (the
/// usual case: one receiving thread), and without holding the GIL while waiting otherwise.
fn lock_cache<'a>(py: Python<'_>, cache: &'a Mutex<MappingCache>) -> std::sync::MutexGuard<'a, MappingCache> {
    match cache.try_lock() {
        Ok(guard) => guard,
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => cache.lock_py_attached(py).unwrap_or_else(|e| e.into_inner()),
    }
}

/// What a `Buffer` and its arrays share: the buffer (its drop sends the return) and the
/// mappings of its blocks, made on first use.
struct Core {
    buffer: ReceivedBuffer,
    mappings: Vec<OnceLock<Arc<Mapping>>>,
    /// Blocks that are DMA-BUFs in a CPU read window (DMA_BUF_IOCTL_SYNC started when
    /// first mapped for this buffer, ended when the buffer goes back).
    dma_buf_reads: Vec<AtomicBool>,
}

impl Drop for Core {
    fn drop(&mut self) {
        for (block, reading) in self.dma_buf_reads.iter().enumerate() {
            if reading.load(Ordering::Relaxed) {
                if let Some(fd) = self.buffer.fd(block) {
                    dma_buf_sync_read(fd, true);
                }
            }
        }
        // Then the ReceivedBuffer drops: the return goes to the sender.
    }
}

impl Core {
    fn mapping(&self, py: Python<'_>, block: usize, cache: &Mutex<MappingCache>) -> PyResult<Arc<Mapping>> {
        if let Some(mapping) = self.mappings[block].get() {
            return Ok(mapping.clone());
        }
        let message = self.buffer.message();
        let len = message.blocks[block].maxsize() as usize;
        let fd: &Arc<OwnedFd> =
            self.buffer.shared_fd(block).ok_or_else(|| PyValueError::new_err("this block has no fd"))?;
        let mapped = if message.info.use_buffer_pool {
            lock_cache(py, cache).get(fd, len)
        } else {
            Mapping::new(fd.as_fd(), len, false).map(Arc::new)
        };
        let mapping = mapped.map_err(|e| {
            PyErr::from(std::io::Error::new(e.kind(), format!("mapping block {block} ({len} bytes): {e}")))
        })?;
        let mut first = false;
        let mapping = self.mappings[block].get_or_init(|| {
            first = true;
            mapping
        });
        if first && dma_buf_sync_read(fd.as_fd(), false) {
            self.dma_buf_reads[block].store(true, Ordering::Relaxed);
        }
        Ok(mapping.clone())
    }
}

/// One received buffer: its description (timestamps, video or tensor info, text, metas)
/// and its memory as read-only numpy arrays (no copy).
///
/// The buffer goes back to its sender when this object and every array made from it are
/// gone, or at `release()`. `release()` raises `qsock.BufferInUse` while arrays made from
/// it are alive (copy what you keep: ``y.copy()``), so memory never goes from under an
/// array. Used as a context manager, it is released at the end of the block. After the
/// release, its description stays readable; `planes()`, `tensors()`, `memory()` and
/// `fd()` raise `qsock.Released`.
#[pyclass(module = "qsock", name = "Buffer", frozen)]
pub struct PyBuffer {
    message: DataMessage,
    core: Mutex<Option<Arc<Core>>>,
    cache: Arc<Mutex<MappingCache>>,
}

fn optional_time(t: u64) -> Option<u64> {
    (t != CLOCK_TIME_NONE).then_some(t)
}

fn kind_name(kind: MemoryKind) -> &'static str {
    match kind {
        MemoryKind::Video => "video",
        MemoryKind::Tensor => "tensor",
        MemoryKind::Text => "text",
    }
}

fn tensor_dtype(tensor_type: u32) -> Option<Dtype> {
    use NPY_TYPES::*;
    Some(match TensorType::from_u32(tensor_type)? {
        TensorType::Unknown => return None,
        TensorType::Int8 => Dtype::new(NPY_BYTE, 1),
        TensorType::Uint8 => Dtype::new(NPY_UBYTE, 1),
        TensorType::Int16 => Dtype::new(NPY_SHORT, 2),
        TensorType::Uint16 => Dtype::new(NPY_USHORT, 2),
        TensorType::Int32 => Dtype::new(NPY_INT, 4),
        TensorType::Uint32 => Dtype::new(NPY_UINT, 4),
        TensorType::Int64 => Dtype::new(NPY_LONGLONG, 8),
        TensorType::Uint64 => Dtype::new(NPY_ULONGLONG, 8),
        TensorType::Float16 => Dtype::new(NPY_HALF, 2),
        TensorType::Float32 => Dtype::new(NPY_FLOAT, 4),
    })
}

fn layout_error(py: Python<'_>, message: String) -> PyErr {
    new_err(py, "LayoutError", message)
}

impl PyBuffer {
    fn new(buffer: ReceivedBuffer, cache: Arc<Mutex<MappingCache>>) -> PyBuffer {
        let message = buffer.message().clone();
        let mappings = (0..message.blocks.len()).map(|_| OnceLock::new()).collect();
        let dma_buf_reads = (0..message.blocks.len()).map(|_| AtomicBool::new(false)).collect();
        PyBuffer { message, core: Mutex::new(Some(Arc::new(Core { buffer, mappings, dma_buf_reads }))), cache }
    }

    /// The shared core, or `Released`.
    fn core(&self, py: Python<'_>) -> PyResult<Arc<Core>> {
        self.core.lock().unwrap_or_else(|e| e.into_inner()).clone().ok_or_else(|| {
            new_err(py, "Released", "this buffer was released: its memory went back to the sender".into())
        })
    }

    fn block(&self, block: usize) -> PyResult<&MemoryBlock> {
        self.message.blocks.get(block).ok_or_else(|| {
            PyIndexError::new_err(format!("block {block}: this buffer has {} blocks", self.message.blocks.len()))
        })
    }

    fn frame(&self, py: Python<'_>, block: usize) -> PyResult<&FramePayload> {
        match self.block(block)? {
            MemoryBlock::Frame(frame) => Ok(frame),
            other => Err(new_err(py, "WrongKind", format!("this is a {} buffer, not video", kind_name(other.kind())))),
        }
    }

    fn metas(&self) -> PyMetas {
        metas::from_wire(&self.message.metas)
    }

    fn array<'py>(
        &self,
        py: Python<'py>,
        core: &Arc<Core>,
        block: usize,
        layout: &ArrayLayout,
        what: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let size = self.message.blocks[block].size() as usize;
        let mapping = core.mapping(py, block, &self.cache)?;
        let end = layout.end().unwrap_or(usize::MAX);
        if end > size {
            return Err(layout_error(
                py,
                format!("{what} reaches byte {end} of its memory, but the sender said it holds {size} bytes"),
            ));
        }
        array_over(py, &mapping, size, layout, false, Box::new(core.clone()))
    }
}

#[pymethods]
impl PyBuffer {
    /// Presentation time in ns of the sender's running time, or None.
    #[getter]
    fn pts(&self) -> Option<u64> {
        optional_time(self.message.info.pts)
    }

    /// Decoding time in ns, or None.
    #[getter]
    fn dts(&self) -> Option<u64> {
        optional_time(self.message.info.dts)
    }

    /// Duration in ns, or None.
    #[getter]
    fn duration(&self) -> Option<u64> {
        optional_time(self.message.info.duration)
    }

    /// "video", "tensor" or "text".
    #[getter]
    fn kind(&self) -> &'static str {
        kind_name(self.message.kind())
    }

    /// Whether the memory comes from the sender's pool (its fds are kept across buffers).
    #[getter]
    fn pooled(&self) -> bool {
        self.message.info.use_buffer_pool
    }

    /// Memory blocks: 1 for video, one per tensor, 1 for text.
    #[getter]
    fn n_blocks(&self) -> usize {
        self.message.blocks.len()
    }

    /// The sender's ids for the blocks (its fd numbers).
    #[getter]
    fn buf_ids(&self) -> Vec<i32> {
        self.message.buf_ids().to_vec()
    }

    /// The video frame's description (block 0), or None when this is not video.
    #[getter]
    fn video(&self) -> Option<VideoInfo> {
        match self.message.blocks.first()? {
            MemoryBlock::Frame(frame) => Some(VideoInfo::from_frame(frame)),
            _ => None,
        }
    }

    /// Every video block's description (one for buffers from `qtisocketsink`).
    #[getter]
    fn video_blocks(&self) -> Vec<VideoInfo> {
        let frames = self.message.blocks.iter().filter_map(|b| match b {
            MemoryBlock::Frame(frame) => Some(VideoInfo::from_frame(frame)),
            _ => None,
        });
        frames.collect()
    }

    /// One description per tensor (empty when this is not a tensor buffer).
    #[getter]
    fn tensor_infos(&self, py: Python<'_>) -> PyResult<Vec<TensorInfo>> {
        let tensors = self.message.blocks.iter().filter_map(|b| match b {
            MemoryBlock::Tensor(t) => Some(t),
            _ => None,
        });
        tensors.map(|t| TensorInfo::from_payload(py, t)).collect()
    }

    /// The text of a text buffer (UTF-8, undecodable bytes replaced), or None.
    #[getter]
    fn text(&self) -> Option<String> {
        let bytes = self.text_bytes()?;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The text's bytes as sent, or None.
    #[getter]
    fn text_bytes(&self) -> Option<Vec<u8>> {
        let texts: Vec<&[u8]> = self
            .message
            .blocks
            .iter()
            .filter_map(|b| match b {
                MemoryBlock::Text(t) => Some(t.contents.as_slice()),
                _ => None,
            })
            .collect();
        (!texts.is_empty()).then(|| texts.concat())
    }

    /// Regions of interest.
    #[getter]
    fn rois(&self) -> Vec<PyRoi> {
        self.metas().roi
    }

    /// Classification results.
    #[getter]
    fn classifications(&self) -> Vec<PyClassification> {
        self.metas().class
    }

    /// Landmarks (pose) results.
    #[getter]
    fn landmarks(&self) -> Vec<PyLandmarks> {
        self.metas().landmarks
    }

    /// Protection metas.
    #[getter]
    fn protections(&self) -> Vec<PyProtection> {
        self.metas().protection
    }

    /// Every meta, in wire order: protection, regions of interest, classifications,
    /// landmarks.
    #[getter]
    fn metas_list(&self, py: Python<'_>) -> PyResult<Vec<Py<PyAny>>> {
        let m = self.metas();
        let mut all = Vec::new();
        for p in m.protection {
            all.push(Py::new(py, p)?.into_any());
        }
        for r in m.roi {
            all.push(Py::new(py, r)?.into_any());
        }
        for c in m.class {
            all.push(Py::new(py, c)?.into_any());
        }
        for l in m.landmarks {
            all.push(Py::new(py, l)?.into_any());
        }
        Ok(all)
    }

    /// The video frame's planes as read-only numpy arrays over the sender's memory, no
    /// copy: NV12 gives Y (height, width) and UV (height/2, width/2, 2); I420 Y, U, V;
    /// RGB (height, width, 3); BGRx and the like (height, width, 4); GRAY16_LE uint16.
    /// Strides are the sender's. Raises `UnsupportedFormat` for a format without a
    /// plane table (use `memory()`), `LayoutError` when the description does not fit
    /// the memory, `Released` after `release()`.
    #[pyo3(signature = (block=0))]
    fn planes<'py>(&self, py: Python<'py>, block: usize) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let frame = *self.frame(py, block)?;
        let format = formats::by_id(frame.format).ok_or_else(|| {
            new_err(
                py,
                "UnsupportedFormat",
                format!(
                    "video format {} has no plane table here (known: {}); memory() gives the raw bytes",
                    frame.format,
                    formats::names()
                ),
            )
        })?;
        if frame.n_planes as usize != format.planes.len() {
            return Err(layout_error(
                py,
                format!("{} has {} planes, the sender described {}", format.name, format.planes.len(), frame.n_planes),
            ));
        }
        let core = self.core(py)?;
        let dtype = Dtype::of_sample(format.sample);
        let mut arrays = Vec::with_capacity(format.planes.len());
        for plane in 0..format.planes.len() {
            let shape = format.plane_array(plane, frame.width, frame.height);
            let stride = frame.strides[plane];
            let row_bytes = shape.row_bytes(format.sample);
            if stride <= 0 || (stride as usize) < row_bytes {
                return Err(layout_error(
                    py,
                    format!(
                        "{} {}x{} plane {plane}: stride {stride} is less than a row's {row_bytes} bytes",
                        format.name, frame.width, frame.height
                    ),
                ));
            }
            let sample = format.sample.size();
            let mut strides = vec![stride as usize, shape.channels * sample];
            if shape.channels > 1 {
                strides.push(sample);
            }
            let layout = ArrayLayout { offset: frame.offsets[plane] as usize, shape: shape.shape(), strides, dtype };
            let what = format!("{} {}x{} plane {plane}", format.name, frame.width, frame.height);
            arrays.push(self.array(py, &core, block, &layout, &what)?);
        }
        Ok(arrays)
    }

    /// The tensors as read-only numpy arrays over the sender's memory, no copy: dtype
    /// from the tensor type (UINT8 -> uint8, FLOAT16 -> float16, ...), shape from the
    /// dimensions, C order.
    fn tensors<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        if self.message.kind() != MemoryKind::Tensor {
            return Err(new_err(py, "WrongKind", format!("this is a {} buffer, not tensors", self.kind())));
        }
        let core = self.core(py)?;
        let mut arrays = Vec::with_capacity(self.message.blocks.len());
        for (block, payload) in self.message.blocks.iter().enumerate() {
            let MemoryBlock::Tensor(tensor) = payload else { unreachable!("one kind per buffer") };
            let dtype = tensor_dtype(tensor.tensor_type).ok_or_else(|| {
                new_err(
                    py,
                    "UnsupportedFormat",
                    format!(
                        "tensor {block}: type {} has no numpy dtype; memory() gives the raw bytes",
                        tensor.tensor_type
                    ),
                )
            })?;
            let mut shape: Vec<usize> = tensor.used_dimensions().iter().map(|&d| d as usize).collect();
            if shape.is_empty() {
                shape.push(tensor.size as usize / dtype.size);
            }
            let layout = ArrayLayout::contiguous(0, shape, dtype);
            let what = format!("tensor {block} {:?}", tensor.used_dimensions());
            arrays.push(self.array(py, &core, block, &layout, &what)?);
        }
        Ok(arrays)
    }

    /// A memory block's visible bytes (`size` of them) as a read-only uint8 array, no copy.
    #[pyo3(signature = (block=0))]
    fn memory<'py>(&self, py: Python<'py>, block: usize) -> PyResult<Bound<'py, PyAny>> {
        let payload = self.block(block)?;
        if payload.kind() == MemoryKind::Text {
            return Err(new_err(py, "WrongKind", "text travels inline, not in memory: use .text".into()));
        }
        let core = self.core(py)?;
        let layout = ArrayLayout::contiguous(0, vec![payload.size() as usize], Dtype::new(NPY_TYPES::NPY_UBYTE, 1));
        self.array(py, &core, block, &layout, "the block")
    }

    /// The fd of a memory block: valid until the buffer is released; do not close it.
    #[pyo3(signature = (block=0))]
    fn fd(&self, py: Python<'_>, block: usize) -> PyResult<RawFd> {
        self.block(block)?;
        let core = self.core(py)?;
        let fd = core.buffer.fd(block).map(|fd| fd.as_raw_fd());
        fd.ok_or_else(|| new_err(py, "WrongKind", "a text buffer has no fd".into()))
    }

    /// Gives the buffer back to its sender now. Raises `qsock.BufferInUse` if arrays made
    /// from it are still alive (delete them first, or copy what you keep). Releasing
    /// twice is fine.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        let taken = {
            let mut core = self.core.lock().unwrap_or_else(|e| e.into_inner());
            // Every array holds a clone of the core, made under this lock: none can
            // appear between this count and the take.
            let arrays = core.as_ref().map_or(0, |held| Arc::strong_count(held) - 1);
            if arrays > 0 {
                return Err(new_err(
                    py,
                    "BufferInUse",
                    format!(
                        "{arrays} array(s) made from this buffer are still alive; delete them (or keep a .copy()) \
                         before release(): the buffer goes back to the sender when the last of them goes"
                    ),
                ));
            }
            core.take()
        };
        // The return is a send on the socket: done without the GIL.
        py.detach(move || drop(taken));
        Ok(())
    }

    /// Whether the buffer went back to the sender through `release()`.
    #[getter]
    fn released(&self) -> bool {
        self.core.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Releases the buffer. With arrays still alive it raises `BufferInUse`, unless the
    /// block is already raising: then the buffer goes back when they go.
    #[pyo3(signature = (exc_type, _exc_value, _traceback))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: &Bound<'_, PyAny>,
        _exc_value: &Bound<'_, PyAny>,
        _traceback: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        match self.release(py) {
            Err(_) if !exc_type.is_none() => Ok(()),
            result => result,
        }
    }

    fn __repr__(&self) -> String {
        let what = match self.message.blocks.first() {
            Some(MemoryBlock::Frame(f)) => {
                let name = formats::by_id(f.format).map_or_else(|| format!("format {}", f.format), |f| f.name.into());
                format!("video {name} {}x{}", f.width, f.height)
            }
            Some(MemoryBlock::Tensor(_)) => format!("{} tensor(s)", self.message.blocks.len()),
            _ => "text".into(),
        };
        let pts = self.pts().map_or("None".into(), |p| p.to_string());
        let state = if self.released() { " released" } else { "" };
        format!("<qsock.Buffer {what} pts={pts}{state}>")
    }
}

/// One plane of a video frame: where it starts in the memory, and its row stride.
#[pyclass(module = "qsock", frozen, get_all, eq)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaneInfo {
    pub offset: u64,
    pub stride: i32,
}

#[pymethods]
impl PlaneInfo {
    fn __repr__(&self) -> String {
        format!("PlaneInfo(offset={}, stride={})", self.offset, self.stride)
    }
}

/// A video frame's description, as the sender gave it (GstVideoMeta values).
#[pyclass(module = "qsock", frozen, get_all)]
#[derive(Debug, Clone)]
pub struct VideoInfo {
    /// The format's GStreamer name ("NV12"), or "UNKNOWN(<id>)" for formats without a
    /// plane table here.
    pub format: String,
    /// The GstVideoFormat value (NV12 = 23).
    pub format_id: u32,
    pub width: u32,
    pub height: u32,
    pub planes: Vec<PlaneInfo>,
    /// GstVideoFrameFlags.
    pub flags: u32,
    /// Visible bytes of the memory, and all of it.
    pub size: u64,
    pub maxsize: u64,
}

impl VideoInfo {
    fn from_frame(f: &FramePayload) -> VideoInfo {
        let planes =
            f.planes_offsets().iter().zip(f.planes_strides()).map(|(&offset, &stride)| PlaneInfo { offset, stride });
        VideoInfo {
            format: formats::by_id(f.format).map_or_else(|| format!("UNKNOWN({})", f.format), |f| f.name.into()),
            format_id: f.format,
            width: f.width,
            height: f.height,
            planes: planes.collect(),
            flags: f.flags,
            size: f.size,
            maxsize: f.maxsize,
        }
    }
}

#[pymethods]
impl VideoInfo {
    fn __repr__(&self) -> String {
        let planes: Vec<String> = self.planes.iter().map(PlaneInfo::__repr__).collect();
        format!(
            "VideoInfo(format={:?}, width={}, height={}, planes=[{}], size={}, maxsize={})",
            self.format,
            self.width,
            self.height,
            planes.join(", "),
            self.size,
            self.maxsize
        )
    }
}

/// A tensor's description: element type, dimensions, bytes.
#[pyclass(module = "qsock", frozen, get_all)]
pub struct TensorInfo {
    /// The type's name as the caps spell it ("UINT8", "FLOAT32", ...).
    #[pyo3(name = "type")]
    pub type_name: String,
    /// The TENSOR.type value (UINT8 = 2).
    pub type_id: u32,
    /// The numpy dtype, or None for UNKNOWN.
    pub dtype: Option<Py<PyArrayDescr>>,
    pub dimensions: Vec<u32>,
    pub size: u64,
    pub maxsize: u64,
}

impl TensorInfo {
    fn from_payload(py: Python<'_>, t: &TensorPayload) -> PyResult<TensorInfo> {
        let tensor_type = TensorType::from_u32(t.tensor_type);
        let dtype = match tensor_dtype(t.tensor_type) {
            Some(d) => Some(PyArrayDescr::new(py, dtype_name(d))?.unbind()),
            None => None,
        };
        Ok(TensorInfo {
            type_name: tensor_type.map_or_else(|| format!("UNKNOWN({})", t.tensor_type), |t| t.name().into()),
            type_id: t.tensor_type,
            dtype,
            dimensions: t.used_dimensions().to_vec(),
            size: t.size,
            maxsize: t.maxsize,
        })
    }
}

fn dtype_name(d: Dtype) -> &'static str {
    use NPY_TYPES::*;
    match d.type_num {
        NPY_BYTE => "int8",
        NPY_UBYTE => "uint8",
        NPY_SHORT => "int16",
        NPY_USHORT => "uint16",
        NPY_INT => "int32",
        NPY_UINT => "uint32",
        NPY_LONGLONG => "int64",
        NPY_ULONGLONG => "uint64",
        NPY_HALF => "float16",
        _ => "float32",
    }
}

#[pymethods]
impl TensorInfo {
    fn __repr__(&self) -> String {
        format!(
            "TensorInfo(type={:?}, dimensions={:?}, size={}, maxsize={})",
            self.type_name, self.dimensions, self.size, self.maxsize
        )
    }
}
