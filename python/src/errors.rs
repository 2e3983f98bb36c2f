//! The library's errors as Python exceptions. The exception classes are defined in
//! Python (`qsock/_errors.py`) so that they can derive from both `qsock.Error` and the
//! built-in they refine (`TimeoutError`, `PermissionError`, `OSError`, ...).

use gstqtisocket::Error;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

/// Raises `qsock.<name>(args)`.
pub fn new_err(py: Python<'_>, name: &'static str, message: String) -> PyErr {
    error_with(py, name, (message,))
}

fn error_with<A>(py: Python<'_>, name: &'static str, args: A) -> PyErr
where
    A: for<'py> IntoPyObject<'py, Target = pyo3::types::PyTuple> + Send + Sync + 'static,
{
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let class = MODULE
        .get_or_try_init(py, || py.import("qsock._errors").map(Bound::unbind))
        .and_then(|module| module.bind(py).getattr(name))
        .and_then(|class| class.cast_into::<PyType>().map_err(PyErr::from));
    match class {
        Ok(class) => PyErr::from_type(class, args),
        Err(e) => e,
    }
}

/// A library error as the matching `qsock` exception.
pub fn to_py(py: Python<'_>, error: Error) -> PyErr {
    let message = error.to_string();
    match error {
        Error::Protocol(_) => new_err(py, "ProtocolError", message),
        Error::SenderRefused { .. } => new_err(py, "SenderRefused", message),
        Error::InvalidBuffer(_) => new_err(py, "InvalidBuffer", message),
        Error::SocketPath { .. } => new_err(py, "SocketPathError", message),
        Error::Io { source, .. } => match source.raw_os_error() {
            // OSError(errno, strerror): .errno is set and the text names what failed.
            Some(errno) => error_with(py, "SocketError", (errno, message)),
            None => new_err(py, "SocketError", message),
        },
    }
}

/// Turns a library `Result` into a `PyResult`.
pub trait IntoPyResult<T> {
    fn py_err(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for Result<T, Error> {
    fn py_err(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, e))
    }
}
