//! qsock for Python: the extension module `qsock._qsock`, over the Rust API of the
//! qtisocket crate (`Receiver`, `Sender`, `Fanout`). The package `qsock` (python/qsock/)
//! re-exports it with the exception classes and the type stubs.
//!
//! Layers: `formats` (pure: video formats as arrays), `mapping` (mmap of fds), `arrays`
//! (numpy arrays over mappings: the only numpy FFI), `metas` (metas as Python objects),
//! `pool` (the senders' memfds), `receiver`, `sender` and `fanout` (the Python classes),
//! `errors` (library errors as exceptions).

mod arrays;
mod errors;
mod fanout;
mod formats;
mod mapping;
mod metas;
mod pool;
mod receiver;
mod sender;

use pyo3::prelude::*;

/// The formats `Buffer.planes()`, `Sender.send_video()` and `Sender.frame()` know, as
/// {name: GstVideoFormat value}.
#[pyfunction]
fn video_formats() -> std::collections::BTreeMap<&'static str, u32> {
    formats::FORMATS.iter().map(|f| (f.name, f.id)).collect()
}

/// GStreamer's default layout of a `width`x`height` frame of `format` (the one `Sender`
/// writes): (offsets, strides, size).
#[pyfunction]
fn default_layout(format: &str, width: u32, height: u32) -> PyResult<(Vec<u64>, Vec<i32>, u64)> {
    let f = formats::by_name(format).ok_or_else(|| {
        pyo3::exceptions::PyValueError::new_err(format!("unknown video format {format:?}; known: {}", formats::names()))
    })?;
    Ok(f.default_layout(width, height))
}

#[pymodule]
fn _qsock(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<receiver::PyReceiver>()?;
    m.add_class::<receiver::PyBuffer>()?;
    m.add_class::<receiver::StreamEvent>()?;
    m.add_class::<receiver::VideoInfo>()?;
    m.add_class::<receiver::PlaneInfo>()?;
    m.add_class::<receiver::TensorInfo>()?;
    m.add_class::<sender::PySender>()?;
    m.add_class::<sender::PyFrame>()?;
    m.add_class::<fanout::PyFanoutSender>()?;
    m.add_class::<metas::PyRoi>()?;
    m.add_class::<metas::PyClassLabel>()?;
    m.add_class::<metas::PyClassification>()?;
    m.add_class::<metas::PyKeypoint>()?;
    m.add_class::<metas::PyLandmarks>()?;
    m.add_class::<metas::PyProtection>()?;
    m.add_class::<arrays::MemoryOwner>()?;
    m.add_function(wrap_pyfunction!(video_formats, m)?)?;
    m.add_function(wrap_pyfunction!(default_layout, m)?)?;
    m.add("DEFAULT_SOCKET_MODE", gstqtisocket::DEFAULT_SOCKET_MODE)?;
    Ok(())
}
