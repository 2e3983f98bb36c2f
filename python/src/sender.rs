//! `qsock.Sender` and `qsock.Frame`, and what `qsock.FanoutSender` shares with them:
//! numpy arrays out to receivers through a pool of sealed memfds (`pool`), either copied
//! in once (`send_video`, `send_tensors`; counted) or written in place through a writable
//! view of a pooled memfd (`frame()`; no copy).
//!
//! [`Core`] is the sending both classes share (checking and copying arrays, the pool,
//! frames); what differs is the [`Link`]: one connection (`Sender`) or the library's
//! fan-out to every receiver in a directory (`FanoutSender`, `crate::fanout`). A sent
//! memfd is kept out of the pool by a [`SlotHold`] until the receivers give it back.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstqtisocket::protocol::{
    FramePayload, MemoryBlock, Metas, TensorPayload, TensorType, TextPayload, CLOCK_TIME_NONE, MAX_MEMORY_BLOCKS,
    MAX_PLANES, MAX_TENSOR_DIMENSIONS, MAX_TEXT_LEN,
};
use gstqtisocket::{OutgoingBlock, OutgoingBuffer, Sender, SenderEvent};
use numpy::npyffi::NPY_TYPES;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::MutexExt;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::arrays::{array_over, ArrayLayout, Dtype};
use crate::errors::{new_err, to_py, IntoPyResult};
use crate::fanout::FanoutLink;
use crate::formats::{self, Format, Sample};
use crate::mapping::Mapping;
use crate::metas;
use crate::pool::{Acquired, Pool, SlotHold};
use crate::receiver::seconds;

/// How long a wait runs without the GIL before it looks for a signal (Ctrl-C).
pub(crate) const SIGNAL_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// How often a connect is retried while no receiver listens (the deployed sender's 10 ms).
const CONNECT_RETRY_INTERVAL: Duration = Duration::from_millis(10);

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counters {
    pub copies: u64,
    pub bytes_copied: u64,
    pub bytes_in_place: u64,
}

/// One connection to one receiver (`qsock.Sender`). The caller's thread reads what the
/// receiver says: a return drops the memfd's hold.
pub(crate) struct One {
    sender: Option<Sender>,
    /// Memfds out with the receiver, by fd number (the buf_id it returns).
    held: HashMap<RawFd, SlotHold>,
    /// RETURN messages taken in.
    returns: u64,
    /// DISCONNECT came: the receiver is pausing and wants nothing more on this connection.
    disconnected: bool,
    receiver_gone: bool,
}

impl One {
    fn on_event(&mut self, event: SenderEvent) {
        match event {
            SenderEvent::Returned(buf_ids) => {
                self.returns += 1;
                for id in buf_ids {
                    self.held.remove(&id);
                }
            }
            SenderEvent::Disconnect => self.disconnected = true,
            SenderEvent::ReceiverGone => {
                self.receiver_gone = true;
                // Nothing out will come back: the receiver's copies of the fds are closed.
                self.held.clear();
            }
        }
    }

    fn check(&mut self, py: Python<'_>) -> PyResult<&mut Sender> {
        if self.receiver_gone && self.sender.is_some() {
            return Err(new_err(py, "ReceiverGone", "the receiver closed the connection".into()));
        }
        if self.disconnected && self.sender.is_some() {
            return Err(new_err(
                py,
                "Disconnected",
                "the receiver sent DISCONNECT (it paused): make a new Sender to send again".into(),
            ));
        }
        self.sender.as_mut().ok_or_else(|| new_err(py, "Closed", "the sender is closed".into()))
    }

    /// Takes what the receiver said, without waiting.
    fn drain(&mut self, py: Python<'_>) -> PyResult<()> {
        loop {
            let Some(sender) = self.sender.as_mut() else {
                return Ok(());
            };
            if self.receiver_gone {
                return Ok(());
            }
            match sender.next_event(Some(Duration::ZERO)).py_err(py)? {
                Some(event) => self.on_event(event),
                None => return Ok(()),
            }
        }
    }

    /// Waits without the GIL up to `timeout` for one thing the receiver says.
    fn wait_event(&mut self, py: Python<'_>, timeout: Duration) -> PyResult<()> {
        let Some(sender) = self.sender.as_mut() else {
            return Ok(());
        };
        if self.receiver_gone {
            return Ok(());
        }
        if let Some(event) = py.detach(|| sender.next_event(Some(timeout))).py_err(py)? {
            self.on_event(event);
        }
        Ok(())
    }
}

/// Where the buffers go.
pub(crate) enum Link {
    /// Boxed: a `Sender` is much larger than the fan-out's handle.
    One(Box<One>),
    Fanout(FanoutLink),
}

/// What a sender is, behind its lock: the link, the pool of memfds and the counters.
pub(crate) struct Inner {
    pub link: Link,
    pub pool: Arc<Pool>,
    pub return_timeout: Duration,
    pub counters: Counters,
}

impl Inner {
    pub fn new(link: Link, pool_size: usize, return_timeout: Duration) -> Inner {
        Inner { link, pool: Pool::new(pool_size), return_timeout, counters: Counters::default() }
    }

    /// Raises when nothing can be sent (closed; for one connection: the receiver left
    /// or paused).
    fn check(&mut self, py: Python<'_>) -> PyResult<()> {
        match &mut self.link {
            Link::One(one) => one.check(py).map(drop),
            Link::Fanout(fanout) => fanout.check(py).map(drop),
        }
    }

    /// Takes in what the receiver said, without waiting (the fan-out's thread does it
    /// for a fan-out).
    fn drain(&mut self, py: Python<'_>) -> PyResult<()> {
        match &mut self.link {
            Link::One(one) => one.drain(py),
            Link::Fanout(_) => Ok(()),
        }
    }

    /// Waits without the GIL, up to `timeout`, for the receivers to return something
    /// (memfd holds dropped after the `seen`th).
    fn wait_for_returns(&mut self, py: Python<'_>, seen: u64, timeout: Duration) -> PyResult<()> {
        match &mut self.link {
            Link::One(one) => one.wait_event(py, timeout),
            Link::Fanout(_) => {
                let pool = &self.pool;
                py.detach(|| pool.wait_returned(seen, timeout));
                Ok(())
            }
        }
    }

    /// A pooled memfd of exactly `size` bytes, lent to the caller: a returned one, a new
    /// one while the pool has room, or one the receivers give back within the timeout.
    fn acquire(&mut self, py: Python<'_>, size: usize) -> PyResult<RawFd> {
        if size == 0 {
            return Err(PyValueError::new_err("nothing to send: 0 bytes"));
        }
        let deadline = Instant::now() + self.return_timeout;
        loop {
            self.drain(py)?;
            self.check(py)?;
            let (in_flight, seen) = match self.pool.try_acquire(size)? {
                Acquired::Slot(fd) => return Ok(fd),
                Acquired::Full { in_flight, returned } => (in_flight, returned),
            };
            let pool_size = self.pool.size();
            if in_flight == 0 {
                return Err(new_err(
                    py,
                    "PoolExhausted",
                    format!(
                        "all {pool_size} pooled memfds are held by arrays from frame() or by unsent frames; delete \
                         those arrays (or raise pool_size)"
                    ),
                ));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(new_err(
                    py,
                    "Timeout",
                    format!(
                        "{in_flight} of {pool_size} pooled memfds are out with the receiver{} and none came back \
                         within {} s",
                        if matches!(self.link, Link::Fanout(_)) { "s" } else { "" },
                        self.return_timeout.as_secs_f64()
                    ),
                ));
            }
            // In slices, so that Ctrl-C gets through a long wait.
            self.wait_for_returns(py, seen, left.min(SIGNAL_CHECK_INTERVAL))?;
            py.check_signals()?;
        }
    }

    pub fn give_back(&self, fds: &[RawFd]) {
        self.pool.give_back(fds);
    }

    /// Sends `blocks` (each a lent memfd, or text): the memfds are held until the
    /// receivers return them; on failure they go back to the pool. Returns how many
    /// receivers got the buffer.
    fn send(
        &mut self,
        py: Python<'_>,
        slots: &[RawFd],
        descriptions: Vec<MemoryBlock>,
        timing: Timing,
        metas: Metas,
    ) -> PyResult<usize> {
        if let Err(e) = self.drain(py).and_then(|()| self.check(py)) {
            self.give_back(slots);
            return Err(e);
        }
        let text = matches!(descriptions.first(), Some(MemoryBlock::Text(_)));
        // The pool keeps a lent memfd open; these copies keep it open during the send too.
        let fds: Vec<Arc<OwnedFd>> = slots.iter().map(|&fd| self.pool.get(fd).0).collect();
        let blocks = descriptions
            .into_iter()
            .enumerate()
            .map(|(i, description)| OutgoingBlock { fd: fds.get(i).map(|fd| fd.as_fd()), description })
            .collect();
        let buffer = OutgoingBuffer {
            blocks,
            pts: timing.pts,
            dts: CLOCK_TIME_NONE,
            duration: timing.duration,
            pooled: !text,
            metas,
        };
        match &mut self.link {
            Link::One(one) => {
                let sender = one.sender.as_mut().expect("checked above");
                match py.detach(|| sender.send(&buffer)) {
                    Ok(()) => {
                        for &fd in slots {
                            one.held.insert(fd, self.pool.hold(fd));
                        }
                        Ok(1)
                    }
                    Err(e) => {
                        self.pool.give_back(slots);
                        Err(to_py(py, e))
                    }
                }
            }
            Link::Fanout(fanout) => {
                // Held from here: the fan-out drops the holds once every receiver that got
                // the buffer returned it (at once when none got it, or on an error).
                let holds = slots.iter().map(|&fd| self.pool.hold(fd)).collect();
                fanout.send(py, &buffer, holds, self.return_timeout)
            }
        }
    }

    /// Sends EOS; returns to how many receivers.
    fn eos(&mut self, py: Python<'_>) -> PyResult<usize> {
        self.drain(py)?;
        match &mut self.link {
            Link::One(one) => {
                let sender = one.check(py)?;
                py.detach(|| sender.send_eos()).py_err(py)?;
                Ok(1)
            }
            Link::Fanout(fanout) => fanout.eos(py),
        }
    }

    /// Waits (without the GIL) until every memfd sent is back, up to `timeout`.
    fn flush(&mut self, py: Python<'_>, timeout: Duration) -> PyResult<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain(py)?;
            let seen = self.pool.returned();
            let in_flight = self.pool.in_flight();
            if in_flight == 0 {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let whom = match self.link {
                    Link::One(_) => "the receiver",
                    Link::Fanout(_) => "the receivers",
                };
                return Err(new_err(
                    py,
                    "Timeout",
                    format!("{in_flight} memfds still out with {whom} after {} s", timeout.as_secs_f64()),
                ));
            }
            self.wait_for_returns(py, seen, left.min(SIGNAL_CHECK_INTERVAL))?;
            py.check_signals()?;
        }
    }

    /// Closes the connections (the receivers see the sender go); the memfds out stay
    /// out. Closing twice is fine.
    fn close(&mut self, py: Python<'_>) {
        match &mut self.link {
            Link::One(one) => {
                let sender = one.sender.take();
                py.detach(move || drop(sender));
            }
            Link::Fanout(fanout) => fanout.close(py),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pts: u64,
    duration: u64,
}

impl Timing {
    fn new(pts: Option<u64>, duration: Option<u64>) -> Timing {
        Timing { pts: pts.unwrap_or(CLOCK_TIME_NONE), duration: duration.unwrap_or(CLOCK_TIME_NONE) }
    }
}

/// The sending `Sender` and `FanoutSender` share: checking and copying arrays into
/// pooled memfds, frames written in place, EOS, flush. Each class's methods call these.
pub(crate) struct Core {
    pub inner: Arc<Mutex<Inner>>,
}

/// Sends buffers to one receiver (`qtisocketsrc`, `qsock.Receiver`, a C `qsock_receiver`).
///
/// ``Sender(path, *, connect_timeout=10.0, pool_size=16, return_timeout=5.0)`` connects,
/// retrying every 10 ms for `connect_timeout` seconds until a receiver listens at `path`.
///
/// Memory goes out as sealed memfds from a pool of at most `pool_size`; a memfd crosses
/// the socket once and is reused after the receiver returns it. `send_video` and
/// `send_tensors` copy the arrays in (once; counted in `stats()`), `frame()` hands out a
/// writable view of a pooled memfd to fill in place (no copy). When every memfd is out,
/// a send waits up to `return_timeout` seconds for a return (without the GIL).
///
/// To send to every receiver in a directory, see `FanoutSender`.
#[pyclass(module = "qsock", name = "Sender", frozen)]
pub struct PySender {
    core: Core,
    path: PathBuf,
}

fn plane_error(format: &Format, what: String) -> PyErr {
    PyValueError::new_err(format!("{}: {what}", format.name))
}

/// A numpy array's shape and dtype name, via its Python attributes.
fn shape_of(array: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
    array.getattr("shape")?.extract()
}

fn numpy<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyModule>> {
    py.import("numpy")
}

/// `numpy.asarray(value)`.
fn as_array<'py>(value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    numpy(value.py())?.getattr("asarray")?.call1((value,))
}

/// The planes of a `send_video` argument: a sequence of arrays, one array of a one-plane
/// format, or one stacked (height * 3 / 2, width) array of NV12/NV21/I420/YV12.
fn split_planes<'py>(format: &Format, value: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyAny>>> {
    if value.is_instance_of::<PyList>() || value.is_instance_of::<PyTuple>() {
        return value.try_iter()?.map(|item| as_array(&item?)).collect();
    }
    let array = as_array(value)?;
    if format.planes.len() == 1 {
        return Ok(vec![array]);
    }
    let shape = shape_of(&array)?;
    let stacked = matches!(format.name, "NV12" | "NV21" | "I420" | "YV12");
    if !stacked || shape.len() != 2 || shape[0] % 3 != 0 || shape[1] % 2 != 0 {
        return Err(plane_error(
            format,
            format!(
                "give the {} planes as a list of arrays{}; got one array of shape {shape:?}",
                format.planes.len(),
                if stacked { ", or one (height * 3 / 2, width) array with even height and width" } else { "" }
            ),
        ));
    }
    let (height, width) = (shape[0] / 3 * 2, shape[1]);
    if height % 2 != 0 {
        return Err(plane_error(format, format!("a stacked array needs an even height, got {height}")));
    }
    let flat = array.call_method0("ravel")?;
    let slice = |start: usize, end: usize, dims: Vec<usize>| -> PyResult<Bound<'py, PyAny>> {
        let part = flat.get_item(pyo3::types::PySlice::new(value.py(), start as isize, end as isize, 1))?;
        part.call_method1("reshape", (PyTuple::new(value.py(), dims)?,))
    };
    let luma = height * width;
    let mut planes = vec![slice(0, luma, vec![height, width])?];
    if format.planes.len() == 2 {
        planes.push(slice(luma, luma + luma / 2, vec![height / 2, width / 2, 2])?);
    } else {
        let chroma = luma / 4;
        planes.push(slice(luma, luma + chroma, vec![height / 2, width / 2])?);
        planes.push(slice(luma + chroma, luma + 2 * chroma, vec![height / 2, width / 2])?);
    }
    Ok(planes)
}

/// The numpy dtype name a plane of `sample` must have, and the byte orders that fit.
fn sample_dtype(sample: Sample) -> (&'static str, &'static [&'static str]) {
    match sample {
        Sample::U8 => ("uint8", &["|", "=", "<", ">"]),
        Sample::U16Le if cfg!(target_endian = "little") => ("uint16", &["<", "="]),
        Sample::U16Le => ("uint16", &["<"]),
        Sample::U16Be if cfg!(target_endian = "big") => ("uint16", &[">", "="]),
        Sample::U16Be => ("uint16", &[">"]),
    }
}

/// A tensor type for a numpy dtype (native or little-endian byte order only).
fn tensor_type_of(array: &Bound<'_, PyAny>) -> PyResult<(TensorType, Dtype)> {
    use NPY_TYPES::*;
    let dtype = array.getattr("dtype")?;
    let name: String = dtype.getattr("name")?.extract()?;
    let byteorder: String = dtype.getattr("byteorder")?.extract()?;
    let (t, d) = match name.as_str() {
        "int8" => (TensorType::Int8, Dtype::new(NPY_BYTE, 1)),
        "uint8" => (TensorType::Uint8, Dtype::new(NPY_UBYTE, 1)),
        "int16" => (TensorType::Int16, Dtype::new(NPY_SHORT, 2)),
        "uint16" => (TensorType::Uint16, Dtype::new(NPY_USHORT, 2)),
        "int32" => (TensorType::Int32, Dtype::new(NPY_INT, 4)),
        "uint32" => (TensorType::Uint32, Dtype::new(NPY_UINT, 4)),
        "int64" => (TensorType::Int64, Dtype::new(NPY_LONGLONG, 8)),
        "uint64" => (TensorType::Uint64, Dtype::new(NPY_ULONGLONG, 8)),
        "float16" => (TensorType::Float16, Dtype::new(NPY_HALF, 2)),
        "float32" => (TensorType::Float32, Dtype::new(NPY_FLOAT, 4)),
        other => {
            return Err(PyTypeError::new_err(format!(
                "a tensor's dtype is one of int8, uint8, int16, uint16, int32, uint32, int64, uint64, float16, \
                 float32; got {other} (convert it with .astype())"
            )))
        }
    };
    if byteorder == ">" {
        return Err(PyTypeError::new_err(
            "tensors travel in the machine's byte order: use .astype(dtype.newbyteorder('='))",
        ));
    }
    Ok((t, d))
}

impl Core {
    pub fn lock<'a>(&'a self, py: Python<'_>) -> std::sync::MutexGuard<'a, Inner> {
        self.inner.lock_py_attached(py).unwrap_or_else(|e| e.into_inner())
    }

    /// Copies `source` into `dest_layout` of `slot`'s memory.
    fn copy_into(
        py: Python<'_>,
        inner: &Inner,
        slot: RawFd,
        layout: &ArrayLayout,
        source: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let (_, mapping) = inner.pool.get(slot);
        let dest = array_over(py, &mapping, mapping.len(), layout, true, Box::new(mapping.clone()))?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("casting", "no")?;
        numpy(py)?.getattr("copyto")?.call((dest, source), Some(&kwargs))?;
        Ok(())
    }

    // The methods below are the classes' (documented in `sending_methods!`); each
    // returns how many receivers got the buffer.

    pub fn send_video(
        &self,
        py: Python<'_>,
        planes: &Bound<'_, PyAny>,
        format: &str,
        pts: Option<u64>,
        duration: Option<u64>,
        metas: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<usize> {
        let format = formats::by_name(format).ok_or_else(|| {
            PyValueError::new_err(format!("unknown video format {format:?}; known: {}", formats::names()))
        })?;
        let metas = metas::to_wire(metas)?;
        let planes = split_planes(format, planes)?;
        if planes.len() != format.planes.len() {
            return Err(plane_error(format, format!("{} planes expected, got {}", format.planes.len(), planes.len())));
        }
        let first = shape_of(&planes[0])?;
        if first.len() < 2 {
            return Err(plane_error(
                format,
                format!("plane 0 must be (height, width[, channels]), got shape {first:?}"),
            ));
        }
        let (height, width) = (to_u32(first[0])?, to_u32(first[1])?);
        check_frame_size(width, height)?;
        let dtype = Dtype::of_sample(format.sample);
        for (i, plane) in planes.iter().enumerate() {
            let expected = format.plane_array(i, width, height).shape();
            let shape = shape_of(plane)?;
            if shape != expected {
                return Err(plane_error(
                    format,
                    format!("plane {i} of {width}x{height} must have shape {expected:?}, got {shape:?}"),
                ));
            }
            let (want, byteorders) = sample_dtype(format.sample);
            let dtype_of_plane = plane.getattr("dtype")?;
            let name: String = dtype_of_plane.getattr("name")?.extract()?;
            let byteorder: String = dtype_of_plane.getattr("byteorder")?.extract()?;
            if name != want || !byteorders.contains(&byteorder.as_str()) {
                let order = if byteorder == ">" { " (big-endian)" } else { "" };
                return Err(PyTypeError::new_err(format!(
                    "{}: plane {i} must be {want}{}, got {name}{order}",
                    format.name,
                    if format.sample == Sample::U16Be { " (big-endian)" } else { "" }
                )));
            }
        }
        let (offsets, strides, size) = format.default_layout(width, height);
        let mut inner = self.lock(py);
        let slot = inner.acquire(py, size as usize)?;
        let copied = (|| -> PyResult<u64> {
            let mut copied = 0;
            for (i, plane) in planes.iter().enumerate() {
                let array = format.plane_array(i, width, height);
                let sample = format.sample.size();
                let mut byte_strides = vec![strides[i] as usize, array.channels * sample];
                if array.channels > 1 {
                    byte_strides.push(sample);
                }
                let layout =
                    ArrayLayout { offset: offsets[i] as usize, shape: array.shape(), strides: byte_strides, dtype };
                Self::copy_into(py, &inner, slot, &layout, plane)?;
                copied += (array.rows * array.row_bytes(format.sample)) as u64;
            }
            Ok(copied)
        })();
        let copied = match copied {
            Ok(c) => c,
            Err(e) => {
                inner.give_back(&[slot]);
                return Err(e);
            }
        };
        let frame = frame_payload(format, width, height, &offsets, &strides, size);
        let receivers = inner.send(py, &[slot], vec![MemoryBlock::Frame(frame)], Timing::new(pts, duration), metas)?;
        inner.counters.copies += 1;
        inner.counters.bytes_copied += copied;
        Ok(receivers)
    }

    pub fn send_tensors(
        &self,
        py: Python<'_>,
        tensors: &Bound<'_, PyAny>,
        pts: Option<u64>,
        duration: Option<u64>,
    ) -> PyResult<usize> {
        let arrays: Vec<Bound<'_, PyAny>> = tensors.try_iter()?.map(|t| as_array(&t?)).collect::<PyResult<_>>()?;
        if !(1..=MAX_MEMORY_BLOCKS).contains(&arrays.len()) {
            return Err(PyValueError::new_err(format!("send_tensors takes 1..=10 tensors, got {}", arrays.len())));
        }
        let mut described = Vec::with_capacity(arrays.len());
        for (i, array) in arrays.iter().enumerate() {
            let (tensor_type, dtype) = tensor_type_of(array)?;
            let shape = shape_of(array)?;
            if shape.len() > MAX_TENSOR_DIMENSIONS {
                return Err(PyValueError::new_err(format!(
                    "tensor {i} has {} dimensions; at most 8 travel",
                    shape.len()
                )));
            }
            let shape = if shape.is_empty() { vec![1] } else { shape };
            let mut dimensions = [0u32; MAX_TENSOR_DIMENSIONS];
            for (d, &n) in dimensions.iter_mut().zip(&shape) {
                *d = to_u32(n)?;
            }
            let bytes = shape.iter().product::<usize>() * dtype.size;
            if bytes == 0 {
                return Err(PyValueError::new_err(format!("tensor {i} is empty (shape {shape:?}): nothing to send")));
            }
            let payload = TensorPayload {
                tensor_type: tensor_type as u32,
                n_dimensions: shape.len() as u32,
                dimensions,
                size: bytes as u64,
                maxsize: bytes as u64,
            };
            described.push((ArrayLayout::contiguous(0, shape, dtype), payload));
        }
        let mut inner = self.lock(py);
        let mut slots = Vec::with_capacity(arrays.len());
        let copied = (|| -> PyResult<u64> {
            let mut copied = 0;
            for ((layout, payload), array) in described.iter().zip(&arrays) {
                let slot = inner.acquire(py, payload.size as usize)?;
                slots.push(slot);
                // A 0-d array was described as shape (1,): copy its one element.
                let source =
                    if shape_of(array)?.is_empty() { array.call_method1("reshape", (1,))? } else { array.clone() };
                Self::copy_into(py, &inner, slot, layout, &source)?;
                copied += payload.size;
            }
            Ok(copied)
        })();
        let copied = match copied {
            Ok(c) => c,
            Err(e) => {
                inner.give_back(&slots);
                return Err(e);
            }
        };
        let blocks = described.into_iter().map(|(_, p)| MemoryBlock::Tensor(p)).collect();
        let receivers = inner.send(py, &slots, blocks, Timing::new(pts, duration), Metas::default())?;
        inner.counters.copies += slots.len() as u64;
        inner.counters.bytes_copied += copied;
        Ok(receivers)
    }

    pub fn send_text(
        &self,
        py: Python<'_>,
        text: &Bound<'_, PyAny>,
        pts: Option<u64>,
        duration: Option<u64>,
    ) -> PyResult<usize> {
        let contents: Vec<u8> = if let Ok(s) = text.extract::<String>() { s.into_bytes() } else { text.extract()? };
        if contents.len() > MAX_TEXT_LEN {
            return Err(PyValueError::new_err(format!(
                "a text buffer holds at most {MAX_TEXT_LEN} bytes, got {}",
                contents.len()
            )));
        }
        let maxsize = contents.len() as u64;
        let block = MemoryBlock::Text(TextPayload { contents, maxsize });
        self.lock(py).send(py, &[], vec![block], Timing::new(pts, duration), Metas::default())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn frame(
        &self,
        py: Python<'_>,
        width: u32,
        height: u32,
        format: &str,
        pts: Option<u64>,
        duration: Option<u64>,
        metas: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyFrame> {
        let format = formats::by_name(format).ok_or_else(|| {
            PyValueError::new_err(format!("unknown video format {format:?}; known: {}", formats::names()))
        })?;
        check_frame_size(width, height)?;
        let metas = metas::to_wire(metas)?;
        let (offsets, strides, size) = format.default_layout(width, height);
        let (slot, mapping) = {
            let mut inner = self.lock(py);
            let slot = inner.acquire(py, size as usize)?;
            (slot, inner.pool.get(slot).1)
        };
        Ok(PyFrame {
            inner: self.inner.clone(),
            state: Mutex::new(FrameState { mapping: Some(mapping), arrays: Vec::new(), done: false, receivers: None }),
            slot,
            format,
            width,
            height,
            payload: frame_payload(format, width, height, &offsets, &strides, size),
            timing: Timing::new(pts, duration),
            metas,
        })
    }

    pub fn eos(&self, py: Python<'_>) -> PyResult<usize> {
        self.lock(py).eos(py)
    }

    pub fn flush(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let timeout = seconds(timeout)?;
        self.lock(py).flush(py, timeout)
    }

    pub fn close(&self, py: Python<'_>) {
        self.lock(py).close(py);
    }
}

/// The methods `Sender` and `FanoutSender` share, in the `#[pymethods]` block of
/// `$class` (a struct with a `core: Core` field) after the class's own `$own` methods.
macro_rules! sending_methods {
    ($class:ident, { $($own:tt)* }) => {
        #[pyo3::pymethods]
        impl $class {
            $($own)*

            /// Sends one video frame, copied once into a pooled memfd in GStreamer's
            /// default layout for `format`. Returns how many receivers got it: 1 for a
            /// `Sender`; for a `FanoutSender` 0 when no receiver is connected or every
            /// one holds `max_in_flight` buffers already (skipped). Failures raise.
            ///
            /// `planes` is a list of arrays, one per plane (NV12: Y (height, width) and UV
            /// (height/2, width/2, 2) uint8), or one array for one-plane formats (RGB
            /// (height, width, 3), GRAY8 (height, width), ...), or for NV12/NV21/I420/YV12
            /// one stacked (height * 3 / 2, width) uint8 array. Width and height come from
            /// the first plane. `pts` and `duration` are in ns (None: unset); `metas` is a
            /// list of RegionOfInterest, Classification, Landmarks and Protection objects.
            #[pyo3(signature = (planes, *, format="NV12", pts=None, duration=None, metas=None))]
            fn send_video(
                &self,
                py: pyo3::Python<'_>,
                planes: &pyo3::Bound<'_, pyo3::PyAny>,
                format: &str,
                pts: Option<u64>,
                duration: Option<u64>,
                metas: Option<&pyo3::Bound<'_, pyo3::PyAny>>,
            ) -> pyo3::PyResult<usize> {
                self.core.send_video(py, planes, format, pts, duration, metas)
            }

            /// Sends 1..=10 tensors (numpy arrays of up to 8 dimensions; int8 ... uint64,
            /// float16, float32), each copied once into its own pooled memfd, C order.
            /// Returns how many receivers got them (as `send_video`).
            #[pyo3(signature = (tensors, *, pts=None, duration=None))]
            fn send_tensors(
                &self,
                py: pyo3::Python<'_>,
                tensors: &pyo3::Bound<'_, pyo3::PyAny>,
                pts: Option<u64>,
                duration: Option<u64>,
            ) -> pyo3::PyResult<usize> {
                self.core.send_tensors(py, tensors, pts, duration)
            }

            /// Sends a text buffer (at most 1024 bytes of UTF-8; no fd, no copy into
            /// memory). Returns how many receivers got it (as `send_video`).
            #[pyo3(signature = (text, *, pts=None, duration=None))]
            fn send_text(
                &self,
                py: pyo3::Python<'_>,
                text: &pyo3::Bound<'_, pyo3::PyAny>,
                pts: Option<u64>,
                duration: Option<u64>,
            ) -> pyo3::PyResult<usize> {
                self.core.send_text(py, text, pts, duration)
            }

            /// A frame to write in place: ``with sender.frame(1920, 1080, "NV12", pts=t) as f:``
            /// then fill ``f.planes()`` (writable numpy views of a pooled memfd); the frame
            /// is sent when the block ends without an exception (nothing is copied), and
            /// ``f.receivers`` tells how many receivers got it. Arrays of a sent frame
            /// turn read-only; the memfd is reused only once they are all gone.
            #[pyo3(signature = (width, height, format="NV12", *, pts=None, duration=None, metas=None))]
            #[allow(clippy::too_many_arguments)]
            fn frame(
                &self,
                py: pyo3::Python<'_>,
                width: u32,
                height: u32,
                format: &str,
                pts: Option<u64>,
                duration: Option<u64>,
                metas: Option<&pyo3::Bound<'_, pyo3::PyAny>>,
            ) -> pyo3::PyResult<$crate::sender::PyFrame> {
                self.core.frame(py, width, height, format, pts, duration, metas)
            }

            /// Sends EOS: the receivers end their streams. Returns to how many receivers
            /// it went (a `FanoutSender`: those connected now; 0 when none is).
            fn eos(&self, py: pyo3::Python<'_>) -> pyo3::PyResult<usize> {
                self.core.eos(py)
            }

            /// Waits (without the GIL) until the receivers returned every memfd sent, up
            /// to `timeout` seconds; raises `qsock.Timeout` otherwise.
            #[pyo3(signature = (timeout=5.0))]
            fn flush(&self, py: pyo3::Python<'_>, timeout: f64) -> pyo3::PyResult<()> {
                self.core.flush(py, timeout)
            }

            /// Closes the connections (the receivers see the sender go). Closing twice is
            /// fine.
            fn close(&self, py: pyo3::Python<'_>) {
                self.core.close(py);
            }

            fn __enter__(slf: pyo3::Py<Self>) -> pyo3::Py<Self> {
                slf
            }

            #[pyo3(signature = (*_exc))]
            fn __exit__(&self, py: pyo3::Python<'_>, _exc: &pyo3::Bound<'_, pyo3::types::PyTuple>) {
                self.core.close(py);
            }
        }
    };
}
pub(crate) use sending_methods;

sending_methods!(PySender, {
    #[new]
    #[pyo3(signature = (path, *, connect_timeout=10.0, pool_size=16, return_timeout=5.0))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        connect_timeout: f64,
        pool_size: usize,
        return_timeout: f64,
    ) -> PyResult<Self> {
        let connect_timeout = seconds(connect_timeout)?;
        let return_timeout = seconds(return_timeout)?;
        if pool_size == 0 {
            return Err(PyValueError::new_err("pool_size must be at least 1"));
        }
        // Every 10 ms, as the deployed sender does, in Python so that Ctrl-C gets through.
        let deadline = Instant::now() + connect_timeout;
        let sender = loop {
            match py.detach(|| Sender::connect(&path)) {
                Ok(sender) => break sender,
                Err(_) if Instant::now() < deadline => {
                    py.detach(|| std::thread::sleep(CONNECT_RETRY_INTERVAL));
                    py.check_signals()?;
                }
                Err(e) => return Err(to_py(py, e)),
            }
        };
        let link = Link::One(Box::new(One {
            sender: Some(sender),
            held: HashMap::new(),
            returns: 0,
            disconnected: false,
            receiver_gone: false,
        }));
        Ok(PySender { core: Core { inner: Arc::new(Mutex::new(Inner::new(link, pool_size, return_timeout))) }, path })
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// Counters of this sender: buffers and fds sent, copies and bytes copied into
    /// memfds, bytes written in place through frame(), returns, memfds in flight and pooled.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let mut inner = self.core.lock(py);
        let _ = inner.drain(py);
        let d = PyDict::new(py);
        let Link::One(one) = &inner.link else { unreachable!("a Sender has one connection") };
        let (buffers, fds) = one.sender.as_ref().map_or((0, 0), |s| s.counts());
        d.set_item("buffers_sent", buffers)?;
        d.set_item("fds_sent", fds)?;
        d.set_item("copies", inner.counters.copies)?;
        d.set_item("bytes_copied", inner.counters.bytes_copied)?;
        d.set_item("bytes_in_place", inner.counters.bytes_in_place)?;
        d.set_item("returns", one.returns)?;
        d.set_item("in_flight", inner.pool.in_flight())?;
        d.set_item("pooled", inner.pool.len())?;
        d.set_item("disconnected", one.disconnected)?;
        d.set_item("receiver_gone", one.receiver_gone)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!("<qsock.Sender {:?}>", self.path)
    }
});

/// The largest width or height a frame may have here (GStreamer's 8K is 7680).
const MAX_FRAME_SIDE: u32 = 1 << 16;

fn check_frame_size(width: u32, height: u32) -> PyResult<()> {
    if width == 0 || height == 0 || width > MAX_FRAME_SIDE || height > MAX_FRAME_SIDE {
        return Err(PyValueError::new_err(format!(
            "a frame of {width}x{height}: width and height are 1..={MAX_FRAME_SIDE}"
        )));
    }
    Ok(())
}

fn to_u32(n: usize) -> PyResult<u32> {
    u32::try_from(n).map_err(|_| PyValueError::new_err(format!("{n} does not fit in 32 bits")))
}

fn frame_payload(
    format: &Format,
    width: u32,
    height: u32,
    offsets: &[u64],
    strides: &[i32],
    size: u64,
) -> FramePayload {
    let mut o = [0u64; MAX_PLANES];
    let mut s = [0i32; MAX_PLANES];
    o[..offsets.len()].copy_from_slice(offsets);
    s[..strides.len()].copy_from_slice(strides);
    FramePayload {
        width,
        height,
        format: format.id,
        n_planes: format.planes.len() as u32,
        offsets: o,
        strides: s,
        flags: 0,
        size,
        maxsize: size,
    }
}

struct FrameState {
    /// The pooled memfd's mapping, until the frame is sent or cancelled.
    mapping: Option<Arc<Mapping>>,
    /// Arrays handed out, made read-only when the frame is sent.
    arrays: Vec<Py<PyAny>>,
    done: bool,
    /// How many receivers got it, once sent.
    receivers: Option<usize>,
}

/// A video frame being written in place into a pooled memfd (from `Sender.frame()` or
/// `FanoutSender.frame()`).
///
/// `planes()` gives writable numpy views of the memfd in GStreamer's default layout;
/// `send()` (or the end of a ``with`` block without an exception) sends it without a
/// copy; `cancel()` (or an exception in the block) gives the memfd back unsent.
/// `receivers` tells how many receivers got it once sent.
#[pyclass(module = "qsock", name = "Frame", frozen)]
pub struct PyFrame {
    inner: Arc<Mutex<Inner>>,
    state: Mutex<FrameState>,
    slot: RawFd,
    format: &'static Format,
    width: u32,
    height: u32,
    payload: FramePayload,
    timing: Timing,
    metas: Metas,
}

impl PyFrame {
    fn finish(&self, py: Python<'_>, send: bool) -> PyResult<usize> {
        let (arrays, mapping) = {
            let mut state = self.state.lock_py_attached(py).unwrap_or_else(|e| e.into_inner());
            if state.done {
                return Err(new_err(py, "Released", "this frame was already sent or cancelled".into()));
            }
            state.done = true;
            (std::mem::take(&mut state.arrays), state.mapping.take())
        };
        // Written through: nothing may change under the receiver any more.
        for array in &arrays {
            array.bind(py).getattr("flags")?.setattr("writeable", false)?;
        }
        drop(arrays);
        drop(mapping);
        let mut inner = self.inner.lock_py_attached(py).unwrap_or_else(|e| e.into_inner());
        if !send {
            inner.give_back(&[self.slot]);
            return Ok(0);
        }
        let receivers =
            inner.send(py, &[self.slot], vec![MemoryBlock::Frame(self.payload)], self.timing, self.metas.clone())?;
        inner.counters.bytes_in_place += self.payload.size;
        drop(inner);
        self.state.lock_py_attached(py).unwrap_or_else(|e| e.into_inner()).receivers = Some(receivers);
        Ok(receivers)
    }
}

#[pymethods]
impl PyFrame {
    #[getter]
    fn width(&self) -> u32 {
        self.width
    }

    #[getter]
    fn height(&self) -> u32 {
        self.height
    }

    #[getter]
    fn format(&self) -> &'static str {
        self.format.name
    }

    /// The frame's planes as writable numpy arrays over the pooled memfd (same shapes as
    /// `Buffer.planes()`). What is in them before you write is the memfd's last content.
    fn planes<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let mut state = self.state.lock_py_attached(py).unwrap_or_else(|e| e.into_inner());
        let Some(mapping) = state.mapping.clone() else {
            return Err(new_err(py, "Released", "this frame was already sent or cancelled".into()));
        };
        let dtype = Dtype::of_sample(self.format.sample);
        let mut arrays = Vec::new();
        for plane in 0..self.format.planes.len() {
            let array = self.format.plane_array(plane, self.width, self.height);
            let sample = self.format.sample.size();
            let mut strides = vec![self.payload.strides[plane] as usize, array.channels * sample];
            if array.channels > 1 {
                strides.push(sample);
            }
            let layout =
                ArrayLayout { offset: self.payload.offsets[plane] as usize, shape: array.shape(), strides, dtype };
            let view = array_over(py, &mapping, self.payload.size as usize, &layout, true, Box::new(mapping.clone()))?;
            state.arrays.push(view.clone().unbind());
            arrays.push(view);
        }
        Ok(arrays)
    }

    /// The memfd's fd (the buf_id the receiver will see).
    fn fd(&self) -> RawFd {
        self.slot
    }

    /// How many receivers got the frame; None until it is sent.
    #[getter]
    fn receivers(&self, py: Python<'_>) -> Option<usize> {
        self.state.lock_py_attached(py).unwrap_or_else(|e| e.into_inner()).receivers
    }

    /// Sends the frame (no copy). Its arrays turn read-only. Returns how many receivers
    /// got it (as `send_video`).
    fn send(&self, py: Python<'_>) -> PyResult<usize> {
        self.finish(py, true)
    }

    /// Gives the memfd back to the pool without sending.
    fn cancel(&self, py: Python<'_>) -> PyResult<()> {
        self.finish(py, false).map(drop)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (exc_type, _exc_value, _traceback))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: &Bound<'_, PyAny>,
        _exc_value: &Bound<'_, PyAny>,
        _traceback: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let done = self.state.lock_py_attached(py).map(|s| s.done).unwrap_or(true);
        if done {
            return Ok(()); // sent or cancelled inside the block
        }
        // Never the count: a true value returned by __exit__ swallows the exception.
        self.finish(py, exc_type.is_none()).map(drop)
    }

    fn __repr__(&self) -> String {
        format!("<qsock.Frame {} {}x{} memfd {}>", self.format.name, self.width, self.height, self.slot)
    }
}

impl Drop for PyFrame {
    fn drop(&mut self) {
        // Never sent nor cancelled: the memfd goes back to the pool.
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if !state.done {
            state.done = true;
            state.mapping = None;
            let inner = &self.inner;
            let slot = self.slot;
            Python::attach(|py| {
                inner.lock_py_attached(py).unwrap_or_else(|e| e.into_inner()).give_back(&[slot]);
            });
        }
    }
}
