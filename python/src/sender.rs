//! `qsock.Sender` and `qsock.Frame`: numpy arrays out to a receiver through a pool of
//! sealed memfds, either copied in once (`send_video`, `send_tensors`; counted) or
//! written in place through a writable view of a pooled memfd (`frame()`; no copy).
//!
//! A pooled memfd is handed out again only when the receiver returned it and no Python
//! array over it is alive, so an array the user still holds never changes under them.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstqtisocket::protocol::{
    FramePayload, MemoryBlock, Metas, TensorPayload, TensorType, TextPayload, CLOCK_TIME_NONE,
    MAX_MEMORY_BLOCKS, MAX_PLANES, MAX_TENSOR_DIMENSIONS, MAX_TEXT_LEN,
};
use gstqtisocket::{OutgoingBlock, OutgoingBuffer, Sender, SenderEvent};
use numpy::npyffi::NPY_TYPES;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::MutexExt;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::arrays::{array_over, ArrayLayout, Dtype};
use crate::errors::{new_err, to_py, IntoPyResult};
use crate::formats::{self, Format, Sample};
use crate::mapping::Mapping;
use crate::metas;
use crate::receiver::seconds;

/// How long a wait runs without the GIL before it looks for a signal (Ctrl-C).
const SIGNAL_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// How often a connect is retried while no receiver listens (the deployed sender's 10 ms).
const CONNECT_RETRY_INTERVAL: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// In the pool, ready once no array over it is alive.
    Free,
    /// Handed to a `Frame` being written.
    Lent,
    /// Sent; waiting for the receiver's return.
    InFlight,
}

/// One pooled memfd: sealed against shrinking and growing, mapped read-write once.
struct Slot {
    fd: OwnedFd,
    mapping: Arc<Mapping>,
    state: SlotState,
}

impl Slot {
    fn new(size: usize) -> std::io::Result<Slot> {
        use memfd::{FileSeal, MemfdOptions};
        let memfd = MemfdOptions::default()
            .allow_sealing(true)
            .close_on_exec(true)
            .create("qsock-python")
            .map_err(std::io::Error::other)?;
        memfd.as_file().set_len(size as u64)?;
        // A receiver can rely on the size: nobody can shrink it under its mappings.
        memfd
            .add_seals(&[FileSeal::SealShrink, FileSeal::SealGrow, FileSeal::SealSeal])
            .map_err(std::io::Error::other)?;
        let fd: OwnedFd = memfd.into_file().into();
        let mapping = Arc::new(Mapping::new(fd.as_fd(), size, true)?);
        Ok(Slot {
            fd,
            mapping,
            state: SlotState::Free,
        })
    }

    fn size(&self) -> usize {
        self.mapping.len()
    }

    /// Free, and no array over it alive (the pool holds the only reference).
    fn is_reusable(&self) -> bool {
        self.state == SlotState::Free && Arc::strong_count(&self.mapping) == 1
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    copies: u64,
    bytes_copied: u64,
    bytes_in_place: u64,
    returns: u64,
}

struct Inner {
    sender: Option<Sender>,
    /// By fd number, which is also the block's buf_id.
    slots: BTreeMap<RawFd, Slot>,
    pool_size: usize,
    return_timeout: Duration,
    counters: Counters,
    /// DISCONNECT came: the receiver is pausing and wants nothing more on this connection.
    disconnected: bool,
    receiver_gone: bool,
}

impl Inner {
    fn sender(&mut self, py: Python<'_>) -> PyResult<&mut Sender> {
        if self.sender.is_none() {
            return Err(new_err(py, "Closed", "the sender is closed".into()));
        }
        if self.receiver_gone {
            return Err(new_err(
                py,
                "ReceiverGone",
                "the receiver closed the connection".into(),
            ));
        }
        if self.disconnected {
            return Err(new_err(
                py,
                "Disconnected",
                "the receiver sent DISCONNECT (it paused): make a new Sender to send again".into(),
            ));
        }
        self.sender
            .as_mut()
            .ok_or_else(|| new_err(py, "Closed", "the sender is closed".into()))
    }

    fn on_event(&mut self, event: SenderEvent) {
        match event {
            SenderEvent::Returned(buf_ids) => {
                self.counters.returns += 1;
                for id in buf_ids {
                    if let Some(slot) = self.slots.get_mut(&id) {
                        if slot.state == SlotState::InFlight {
                            slot.state = SlotState::Free;
                        }
                    }
                }
            }
            SenderEvent::Disconnect => self.disconnected = true,
            SenderEvent::ReceiverGone => {
                self.receiver_gone = true;
                // Nothing out will come back: the receiver's copies of the fds are closed.
                for slot in self
                    .slots
                    .values_mut()
                    .filter(|s| s.state == SlotState::InFlight)
                {
                    slot.state = SlotState::Free;
                }
            }
        }
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
    fn wait_event(&mut self, py: Python<'_>, timeout: Duration) -> PyResult<bool> {
        let Some(sender) = self.sender.as_mut() else {
            return Ok(false);
        };
        let event = py.detach(|| sender.next_event(Some(timeout))).py_err(py)?;
        let got = event.is_some();
        if let Some(event) = event {
            self.on_event(event);
        }
        Ok(got)
    }

    fn in_flight(&self) -> usize {
        self.slots
            .values()
            .filter(|s| s.state == SlotState::InFlight)
            .count()
    }

    /// A pooled memfd of exactly `size` bytes, lent to the caller: a returned one, a new
    /// one while the pool has room, or one the receiver gives back within the timeout.
    fn acquire(&mut self, py: Python<'_>, size: usize) -> PyResult<RawFd> {
        if size == 0 {
            return Err(PyValueError::new_err("nothing to send: 0 bytes"));
        }
        let deadline = Instant::now() + self.return_timeout;
        loop {
            self.drain(py)?;
            self.sender(py)?;
            if let Some((&fd, slot)) = self
                .slots
                .iter_mut()
                .find(|(_, s)| s.is_reusable() && s.size() == size)
            {
                slot.state = SlotState::Lent;
                return Ok(fd);
            }
            if self.slots.len() >= self.pool_size {
                // A free memfd of another size (the frames changed) makes room for one of this size.
                if let Some(&fd) = self
                    .slots
                    .iter()
                    .find(|(_, s)| s.is_reusable())
                    .map(|(fd, _)| fd)
                {
                    self.slots.remove(&fd);
                }
            }
            if self.slots.len() < self.pool_size {
                let slot = Slot::new(size).map_err(|e| {
                    PyErr::from(std::io::Error::new(
                        e.kind(),
                        format!("making a {size}-byte memfd: {e}"),
                    ))
                })?;
                let fd = slot.fd.as_raw_fd();
                self.slots.insert(
                    fd,
                    Slot {
                        state: SlotState::Lent,
                        ..slot
                    },
                );
                return Ok(fd);
            }
            let in_flight = self.in_flight();
            if in_flight == 0 {
                return Err(new_err(
                    py,
                    "PoolExhausted",
                    format!(
                        "all {} pooled memfds are held by arrays from frame() or by unsent frames; delete those \
                         arrays (or raise pool_size)",
                        self.pool_size
                    ),
                ));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(new_err(
                    py,
                    "Timeout",
                    format!(
                        "{in_flight} of {} pooled memfds are out with the receiver and none came back within {} s",
                        self.pool_size,
                        self.return_timeout.as_secs_f64()
                    ),
                ));
            }
            // In slices, so that Ctrl-C gets through a long wait.
            self.wait_event(py, left.min(SIGNAL_CHECK_INTERVAL))?;
            py.check_signals()?;
        }
    }

    fn give_back(&mut self, fds: &[RawFd]) {
        for fd in fds {
            if let Some(slot) = self.slots.get_mut(fd) {
                if slot.state == SlotState::Lent {
                    slot.state = SlotState::Free;
                }
            }
        }
    }

    /// Sends `blocks` (each a lent slot, or text), marking the slots in flight; on
    /// failure the slots go back to the pool.
    fn send(
        &mut self,
        py: Python<'_>,
        slots: &[RawFd],
        descriptions: Vec<MemoryBlock>,
        timing: Timing,
        metas: Metas,
    ) -> PyResult<()> {
        let result = self.send_inner(py, slots, descriptions, timing, metas);
        match &result {
            Ok(()) => {
                for fd in slots {
                    if let Some(slot) = self.slots.get_mut(fd) {
                        slot.state = SlotState::InFlight;
                    }
                }
            }
            Err(_) => self.give_back(slots),
        }
        result
    }

    fn send_inner(
        &mut self,
        py: Python<'_>,
        slots: &[RawFd],
        descriptions: Vec<MemoryBlock>,
        timing: Timing,
        metas: Metas,
    ) -> PyResult<()> {
        self.drain(py)?;
        self.sender(py)?;
        let text = matches!(descriptions.first(), Some(MemoryBlock::Text(_)));
        let fds: Vec<_> = slots.iter().map(|fd| self.slots[fd].fd.as_fd()).collect();
        let blocks = descriptions
            .into_iter()
            .enumerate()
            .map(|(i, description)| OutgoingBlock {
                fd: fds.get(i).copied(),
                description,
            })
            .collect();
        let buffer = OutgoingBuffer {
            blocks,
            pts: timing.pts,
            dts: CLOCK_TIME_NONE,
            duration: timing.duration,
            pooled: !text,
            metas,
        };
        let sender = self.sender.as_mut().expect("checked above");
        py.detach(|| sender.send(&buffer)).map_err(|e| to_py(py, e))
    }
}

#[derive(Debug, Clone, Copy)]
struct Timing {
    pts: u64,
    duration: u64,
}

impl Timing {
    fn new(pts: Option<u64>, duration: Option<u64>) -> Timing {
        Timing {
            pts: pts.unwrap_or(CLOCK_TIME_NONE),
            duration: duration.unwrap_or(CLOCK_TIME_NONE),
        }
    }
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
#[pyclass(module = "qsock", name = "Sender", frozen)]
pub struct PySender {
    inner: Arc<Mutex<Inner>>,
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
fn split_planes<'py>(
    format: &Format,
    value: &Bound<'py, PyAny>,
) -> PyResult<Vec<Bound<'py, PyAny>>> {
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
                if stacked {
                    ", or one (height * 3 / 2, width) array with even height and width"
                } else {
                    ""
                }
            ),
        ));
    }
    let (height, width) = (shape[0] / 3 * 2, shape[1]);
    if height % 2 != 0 {
        return Err(plane_error(
            format,
            format!("a stacked array needs an even height, got {height}"),
        ));
    }
    let flat = array.call_method0("ravel")?;
    let slice = |start: usize, end: usize, dims: Vec<usize>| -> PyResult<Bound<'py, PyAny>> {
        let part = flat.get_item(pyo3::types::PySlice::new(
            value.py(),
            start as isize,
            end as isize,
            1,
        ))?;
        part.call_method1("reshape", (PyTuple::new(value.py(), dims)?,))
    };
    let luma = height * width;
    let mut planes = vec![slice(0, luma, vec![height, width])?];
    if format.planes.len() == 2 {
        planes.push(slice(
            luma,
            luma + luma / 2,
            vec![height / 2, width / 2, 2],
        )?);
    } else {
        let chroma = luma / 4;
        planes.push(slice(luma, luma + chroma, vec![height / 2, width / 2])?);
        planes.push(slice(
            luma + chroma,
            luma + 2 * chroma,
            vec![height / 2, width / 2],
        )?);
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

impl PySender {
    fn lock<'a>(&'a self, py: Python<'_>) -> std::sync::MutexGuard<'a, Inner> {
        self.inner
            .lock_py_attached(py)
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Copies `source` into `dest_layout` of `slot`'s memory.
    fn copy_into(
        py: Python<'_>,
        inner: &Inner,
        slot: RawFd,
        layout: &ArrayLayout,
        source: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let mapping = inner.slots[&slot].mapping.clone();
        let dest = array_over(
            py,
            &mapping,
            mapping.len(),
            layout,
            true,
            Box::new(mapping.clone()),
        )?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("casting", "no")?;
        numpy(py)?
            .getattr("copyto")?
            .call((dest, source), Some(&kwargs))?;
        Ok(())
    }
}

#[pymethods]
impl PySender {
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
        let inner = Inner {
            sender: Some(sender),
            slots: BTreeMap::new(),
            pool_size,
            return_timeout,
            counters: Counters::default(),
            disconnected: false,
            receiver_gone: false,
        };
        Ok(PySender {
            inner: Arc::new(Mutex::new(inner)),
            path,
        })
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// Sends one video frame, copied once into a pooled memfd in GStreamer's default
    /// layout for `format`.
    ///
    /// `planes` is a list of arrays, one per plane (NV12: Y (height, width) and UV
    /// (height/2, width/2, 2) uint8), or one array for one-plane formats (RGB
    /// (height, width, 3), GRAY8 (height, width), ...), or for NV12/NV21/I420/YV12 one
    /// stacked (height * 3 / 2, width) uint8 array. Width and height come from the
    /// first plane. `pts` and `duration` are in ns (None: unset); `metas` is a list of
    /// RegionOfInterest, Classification, Landmarks and Protection objects.
    #[pyo3(signature = (planes, *, format="NV12", pts=None, duration=None, metas=None))]
    fn send_video(
        &self,
        py: Python<'_>,
        planes: &Bound<'_, PyAny>,
        format: &str,
        pts: Option<u64>,
        duration: Option<u64>,
        metas: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let format = formats::by_name(format).ok_or_else(|| {
            PyValueError::new_err(format!(
                "unknown video format {format:?}; known: {}",
                formats::names()
            ))
        })?;
        let metas = metas::to_wire(metas)?;
        let planes = split_planes(format, planes)?;
        if planes.len() != format.planes.len() {
            return Err(plane_error(
                format,
                format!(
                    "{} planes expected, got {}",
                    format.planes.len(),
                    planes.len()
                ),
            ));
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
                    format!(
                        "plane {i} of {width}x{height} must have shape {expected:?}, got {shape:?}"
                    ),
                ));
            }
            let (want, byteorders) = sample_dtype(format.sample);
            let dtype_of_plane = plane.getattr("dtype")?;
            let name: String = dtype_of_plane.getattr("name")?.extract()?;
            let byteorder: String = dtype_of_plane.getattr("byteorder")?.extract()?;
            if name != want || !byteorders.contains(&byteorder.as_str()) {
                let order = if byteorder == ">" {
                    " (big-endian)"
                } else {
                    ""
                };
                return Err(PyTypeError::new_err(format!(
                    "{}: plane {i} must be {want}{}, got {name}{order}",
                    format.name,
                    if format.sample == Sample::U16Be {
                        " (big-endian)"
                    } else {
                        ""
                    }
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
                let layout = ArrayLayout {
                    offset: offsets[i] as usize,
                    shape: array.shape(),
                    strides: byte_strides,
                    dtype,
                };
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
        inner.send(
            py,
            &[slot],
            vec![MemoryBlock::Frame(frame)],
            Timing::new(pts, duration),
            metas,
        )?;
        inner.counters.copies += 1;
        inner.counters.bytes_copied += copied;
        Ok(())
    }

    /// Sends 1..=10 tensors (numpy arrays of up to 8 dimensions; int8 ... uint64,
    /// float16, float32), each copied once into its own pooled memfd, C order.
    #[pyo3(signature = (tensors, *, pts=None, duration=None))]
    fn send_tensors(
        &self,
        py: Python<'_>,
        tensors: &Bound<'_, PyAny>,
        pts: Option<u64>,
        duration: Option<u64>,
    ) -> PyResult<()> {
        let arrays: Vec<Bound<'_, PyAny>> = tensors
            .try_iter()?
            .map(|t| as_array(&t?))
            .collect::<PyResult<_>>()?;
        if !(1..=MAX_MEMORY_BLOCKS).contains(&arrays.len()) {
            return Err(PyValueError::new_err(format!(
                "send_tensors takes 1..=10 tensors, got {}",
                arrays.len()
            )));
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
                return Err(PyValueError::new_err(format!(
                    "tensor {i} is empty (shape {shape:?}): nothing to send"
                )));
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
                let source = if shape_of(array)?.is_empty() {
                    array.call_method1("reshape", (1,))?
                } else {
                    array.clone()
                };
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
        let blocks = described
            .into_iter()
            .map(|(_, p)| MemoryBlock::Tensor(p))
            .collect();
        inner.send(
            py,
            &slots,
            blocks,
            Timing::new(pts, duration),
            Metas::default(),
        )?;
        inner.counters.copies += slots.len() as u64;
        inner.counters.bytes_copied += copied;
        Ok(())
    }

    /// Sends a text buffer (at most 1024 bytes of UTF-8; no fd, no copy into memory).
    #[pyo3(signature = (text, *, pts=None, duration=None))]
    fn send_text(
        &self,
        py: Python<'_>,
        text: &Bound<'_, PyAny>,
        pts: Option<u64>,
        duration: Option<u64>,
    ) -> PyResult<()> {
        let contents: Vec<u8> = if let Ok(s) = text.extract::<String>() {
            s.into_bytes()
        } else {
            text.extract()?
        };
        if contents.len() > MAX_TEXT_LEN {
            return Err(PyValueError::new_err(format!(
                "a text buffer holds at most {MAX_TEXT_LEN} bytes, got {}",
                contents.len()
            )));
        }
        let maxsize = contents.len() as u64;
        let block = MemoryBlock::Text(TextPayload { contents, maxsize });
        self.lock(py).send(
            py,
            &[],
            vec![block],
            Timing::new(pts, duration),
            Metas::default(),
        )
    }

    /// A frame to write in place: ``with sender.frame(1920, 1080, "NV12", pts=t) as f:``
    /// then fill ``f.planes()`` (writable numpy views of a pooled memfd); the frame is
    /// sent when the block ends without an exception (nothing is copied). Arrays of a
    /// sent frame turn read-only; the memfd is reused only once they are all gone.
    #[pyo3(signature = (width, height, format="NV12", *, pts=None, duration=None, metas=None))]
    #[allow(clippy::too_many_arguments)]
    fn frame(
        slf: &Bound<'_, Self>,
        width: u32,
        height: u32,
        format: &str,
        pts: Option<u64>,
        duration: Option<u64>,
        metas: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyFrame> {
        let py = slf.py();
        let format = formats::by_name(format).ok_or_else(|| {
            PyValueError::new_err(format!(
                "unknown video format {format:?}; known: {}",
                formats::names()
            ))
        })?;
        check_frame_size(width, height)?;
        let metas = metas::to_wire(metas)?;
        let (offsets, strides, size) = format.default_layout(width, height);
        let this = slf.get();
        let (slot, mapping) = {
            let mut inner = this.lock(py);
            let slot = inner.acquire(py, size as usize)?;
            (slot, inner.slots[&slot].mapping.clone())
        };
        Ok(PyFrame {
            inner: this.inner.clone(),
            state: Mutex::new(FrameState {
                mapping: Some(mapping),
                arrays: Vec::new(),
                done: false,
            }),
            slot,
            format,
            width,
            height,
            payload: frame_payload(format, width, height, &offsets, &strides, size),
            timing: Timing::new(pts, duration),
            metas,
        })
    }

    /// Sends EOS: the receiver ends its stream.
    fn eos(&self, py: Python<'_>) -> PyResult<()> {
        let mut inner = self.lock(py);
        inner.drain(py)?;
        let sender = inner.sender(py)?;
        py.detach(|| sender.send_eos()).py_err(py)
    }

    /// Waits (without the GIL) until the receiver returned every memfd sent, up to
    /// `timeout` seconds; raises `qsock.Timeout` otherwise.
    #[pyo3(signature = (timeout=5.0))]
    fn flush(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let deadline = Instant::now() + seconds(timeout)?;
        let mut inner = self.lock(py);
        loop {
            inner.drain(py)?;
            let in_flight = inner.in_flight();
            if in_flight == 0 || inner.receiver_gone {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(new_err(
                    py,
                    "Timeout",
                    format!("{in_flight} memfds still out with the receiver after {timeout} s"),
                ));
            }
            inner.wait_event(py, left.min(SIGNAL_CHECK_INTERVAL))?;
            py.check_signals()?;
        }
    }

    /// Counters of this sender: buffers and fds sent, copies and bytes copied into
    /// memfds, bytes written in place through frame(), returns, memfds in flight and pooled.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let mut inner = self.lock(py);
        let _ = inner.drain(py);
        let (buffers, fds) = inner.sender.as_ref().map_or((0, 0), |s| s.counts());
        let d = PyDict::new(py);
        d.set_item("buffers_sent", buffers)?;
        d.set_item("fds_sent", fds)?;
        d.set_item("copies", inner.counters.copies)?;
        d.set_item("bytes_copied", inner.counters.bytes_copied)?;
        d.set_item("bytes_in_place", inner.counters.bytes_in_place)?;
        d.set_item("returns", inner.counters.returns)?;
        d.set_item("in_flight", inner.in_flight())?;
        d.set_item("pooled", inner.slots.len())?;
        d.set_item("disconnected", inner.disconnected)?;
        d.set_item("receiver_gone", inner.receiver_gone)?;
        Ok(d)
    }

    /// Closes the connection (the receiver sees the sender go). Closing twice is fine.
    fn close(&self, py: Python<'_>) {
        let sender = self.lock(py).sender.take();
        py.detach(move || drop(sender));
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) {
        self.close(py);
    }

    fn __repr__(&self) -> String {
        format!("<qsock.Sender {:?}>", self.path)
    }
}

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
}

/// A video frame being written in place into a pooled memfd (from `Sender.frame()`).
///
/// `planes()` gives writable numpy views of the memfd in GStreamer's default layout;
/// `send()` (or the end of a ``with`` block without an exception) sends it without a
/// copy; `cancel()` (or an exception in the block) gives the memfd back unsent.
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
    fn finish(&self, py: Python<'_>, send: bool) -> PyResult<()> {
        let (arrays, mapping) = {
            let mut state = self
                .state
                .lock_py_attached(py)
                .unwrap_or_else(|e| e.into_inner());
            if state.done {
                return Err(new_err(
                    py,
                    "Released",
                    "this frame was already sent or cancelled".into(),
                ));
            }
            state.done = true;
            (std::mem::take(&mut state.arrays), state.mapping.take())
        };
        // Written through: nothing may change under the receiver any more.
        for array in &arrays {
            array
                .bind(py)
                .getattr("flags")?
                .setattr("writeable", false)?;
        }
        drop(arrays);
        drop(mapping);
        let mut inner = self
            .inner
            .lock_py_attached(py)
            .unwrap_or_else(|e| e.into_inner());
        if !send {
            inner.give_back(&[self.slot]);
            return Ok(());
        }
        inner.send(
            py,
            &[self.slot],
            vec![MemoryBlock::Frame(self.payload)],
            self.timing,
            self.metas.clone(),
        )?;
        inner.counters.bytes_in_place += self.payload.size;
        Ok(())
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
        let mut state = self
            .state
            .lock_py_attached(py)
            .unwrap_or_else(|e| e.into_inner());
        let Some(mapping) = state.mapping.clone() else {
            return Err(new_err(
                py,
                "Released",
                "this frame was already sent or cancelled".into(),
            ));
        };
        let dtype = Dtype::of_sample(self.format.sample);
        let mut arrays = Vec::new();
        for plane in 0..self.format.planes.len() {
            let array = self.format.plane_array(plane, self.width, self.height);
            let sample = self.format.sample.size();
            let mut strides = vec![
                self.payload.strides[plane] as usize,
                array.channels * sample,
            ];
            if array.channels > 1 {
                strides.push(sample);
            }
            let layout = ArrayLayout {
                offset: self.payload.offsets[plane] as usize,
                shape: array.shape(),
                strides,
                dtype,
            };
            let view = array_over(
                py,
                &mapping,
                self.payload.size as usize,
                &layout,
                true,
                Box::new(mapping.clone()),
            )?;
            state.arrays.push(view.clone().unbind());
            arrays.push(view);
        }
        Ok(arrays)
    }

    /// The memfd's fd (the buf_id the receiver will see).
    fn fd(&self) -> RawFd {
        self.slot
    }

    /// Sends the frame (no copy). Its arrays turn read-only.
    fn send(&self, py: Python<'_>) -> PyResult<()> {
        self.finish(py, true)
    }

    /// Gives the memfd back to the pool without sending.
    fn cancel(&self, py: Python<'_>) -> PyResult<()> {
        self.finish(py, false)
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
        let done = self
            .state
            .lock_py_attached(py)
            .map(|s| s.done)
            .unwrap_or(true);
        if done {
            return Ok(()); // sent or cancelled inside the block
        }
        self.finish(py, exc_type.is_none())
    }

    fn __repr__(&self) -> String {
        format!(
            "<qsock.Frame {} {}x{} memfd {}>",
            self.format.name, self.width, self.height, self.slot
        )
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
                inner
                    .lock_py_attached(py)
                    .unwrap_or_else(|e| e.into_inner())
                    .give_back(&[slot]);
            });
        }
    }
}
