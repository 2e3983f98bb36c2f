//! The C ABI (include/qsock.h, generated from this module by cbindgen). A thin layer:
//! argument checks, the panic boundary, status codes and error strings. Every function
//! catches panics; every handle a function gives out has exactly one function that
//! frees it; NULL is accepted where documented and refused with
//! `QSOCK_INVALID_ARGUMENT` everywhere else.
#![allow(non_camel_case_types)]

mod buffer;
mod receiver;
mod sender;

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What a qsock function reports. Every function that can fail returns one; when it is
/// not `QSOCK_OK`, `qsock_last_error()` says what went wrong, in words.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum qsock_status {
    /// Success. From `qsock_receiver_recv_buffer`: a buffer was received.
    QSOCK_OK = 0,
    /// Nothing arrived within the timeout.
    QSOCK_TIMEOUT = 1,
    /// The sender ended its stream (EOS). It may send again afterwards.
    QSOCK_EOS = 2,
    /// The sender closed the connection or died. Its cached fds are closed; the next
    /// receive waits for a new sender on the same socket.
    QSOCK_SENDER_GONE = 3,
    /// The sender broke the protocol. That message was rejected, its fds closed, and its
    /// buffer returned to the sender; the next receive goes on with the next message.
    QSOCK_PROTOCOL_ERROR = 4,
    /// An argument was NULL, out of range, or of the wrong kind.
    QSOCK_INVALID_ARGUMENT = 5,
    /// The socket path cannot be used (too long, or taken by something that is not a socket).
    QSOCK_BAD_SOCKET_PATH = 6,
    /// A system call failed (e.g. a directory that does not exist, fd exhaustion).
    QSOCK_IO_ERROR = 7,
    /// A bug in qsock: an internal panic was caught at the boundary.
    QSOCK_INTERNAL_ERROR = 8,
    /// The receiver closed the connection or died. Nothing outstanding will come back.
    QSOCK_RECEIVER_GONE = 9,
    /// A sender connected whose uid is not in the receiver's allowed uids: it was
    /// disconnected. The next receive goes on waiting for an allowed sender.
    QSOCK_SENDER_REFUSED = 10,
}

pub(crate) use qsock_status::*;

/// A failed call: its status and the words for `qsock_last_error()`.
pub(crate) struct Failure(qsock_status, String);

impl From<crate::Error> for Failure {
    fn from(e: crate::Error) -> Failure {
        let status = match &e {
            crate::Error::SocketPath { .. } => QSOCK_BAD_SOCKET_PATH,
            crate::Error::Io { .. } => QSOCK_IO_ERROR,
            crate::Error::Protocol(_) => QSOCK_PROTOCOL_ERROR,
            crate::Error::InvalidBuffer(_) => QSOCK_INVALID_ARGUMENT,
            crate::Error::SenderRefused { .. } => QSOCK_SENDER_REFUSED,
        };
        Failure(status, e.to_string())
    }
}

pub(crate) fn invalid(what: impl Into<String>) -> Failure {
    Failure(QSOCK_INVALID_ARGUMENT, what.into())
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: String) {
    let message = CString::new(message.replace('\0', " ")).expect("NULs replaced");
    LAST_ERROR.with(|last| *last.borrow_mut() = message);
}

/// Runs an FFI body: catches panics, records the error text, returns the status.
pub(crate) fn guard(body: impl FnOnce() -> Result<qsock_status, Failure>) -> qsock_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(status)) => status,
        Ok(Err(Failure(status, message))) => {
            set_last_error(message);
            status
        }
        Err(_) => {
            set_last_error("internal error: qsock panicked; please report it".into());
            QSOCK_INTERNAL_ERROR
        }
    }
}

/// Borrows `ptr` for the call, or fails naming the argument.
pub(crate) fn arg<'a, T>(ptr: *const T, name: &str) -> Result<&'a T, Failure> {
    // SAFETY: the caller passes NULL or a pointer this library handed out (or a valid
    // out-struct), live for the call, as every function's documentation requires.
    unsafe { ptr.as_ref() }.ok_or_else(|| invalid(format!("{name} is NULL")))
}

pub(crate) fn arg_mut<'a, T>(ptr: *mut T, name: &str) -> Result<&'a mut T, Failure> {
    // SAFETY: as in `arg`; the caller does not use the object from another thread meanwhile.
    unsafe { ptr.as_mut() }.ok_or_else(|| invalid(format!("{name} is NULL")))
}

/// Writes `value` through an out-pointer.
pub(crate) fn write_out<T>(out: *mut T, name: &str, value: T) -> Result<(), Failure> {
    *arg_mut(out, name)? = value;
    Ok(())
}

/// The message of the last failing qsock call on this thread ("" if none). The string
/// belongs to qsock and stays valid until the next qsock call on this thread.
#[no_mangle]
pub extern "C" fn qsock_last_error() -> *const c_char {
    LAST_ERROR.with(|last| last.borrow().as_ptr())
}

/// The status's name, e.g. "QSOCK_TIMEOUT". A static string; never NULL.
#[no_mangle]
pub extern "C" fn qsock_status_name(status: qsock_status) -> *const c_char {
    let name: &'static CStr = match status {
        QSOCK_OK => c"QSOCK_OK",
        QSOCK_TIMEOUT => c"QSOCK_TIMEOUT",
        QSOCK_EOS => c"QSOCK_EOS",
        QSOCK_SENDER_GONE => c"QSOCK_SENDER_GONE",
        QSOCK_PROTOCOL_ERROR => c"QSOCK_PROTOCOL_ERROR",
        QSOCK_INVALID_ARGUMENT => c"QSOCK_INVALID_ARGUMENT",
        QSOCK_BAD_SOCKET_PATH => c"QSOCK_BAD_SOCKET_PATH",
        QSOCK_IO_ERROR => c"QSOCK_IO_ERROR",
        QSOCK_INTERNAL_ERROR => c"QSOCK_INTERNAL_ERROR",
        QSOCK_RECEIVER_GONE => c"QSOCK_RECEIVER_GONE",
        QSOCK_SENDER_REFUSED => c"QSOCK_SENDER_REFUSED",
    };
    name.as_ptr()
}
