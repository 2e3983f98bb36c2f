//! The panic boundary and the last error: the one place where a body's outcome becomes
//! what a C function returns and what `qsock_last_error()` says.
//!
//! Every `extern "C"` function runs its body through [`call`] (it returns a status) or
//! [`boundary`] (it returns something else). A body cannot return a status other than
//! `QSOCK_OK` except as a [`Failure`], which carries its words, and only [`finish`] turns
//! a failure into a return value, writing the words on its way: no non-OK return can
//! leave an older message behind.

use std::any::Any;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::types::qsock_status::{self, *};

/// A call that did not end in `QSOCK_OK`: its status and the words for `qsock_last_error()`.
/// Not only errors: `QSOCK_TIMEOUT`, `QSOCK_EOS` and `QSOCK_SENDER_GONE` are failures too.
#[derive(Debug)]
pub(crate) struct Failure {
    status: qsock_status,
    message: String,
}

impl Failure {
    pub(crate) fn new(status: qsock_status, message: impl Into<String>) -> Failure {
        debug_assert!(status != QSOCK_OK, "QSOCK_OK is no failure");
        Failure { status, message: message.into() }
    }

    fn panic(payload: &(dyn Any + Send)) -> Failure {
        let what = payload.downcast_ref::<&str>().copied().or(payload.downcast_ref::<String>().map(String::as_str));
        let message = match what {
            Some(what) => format!("internal error: qsock panicked ({what}); please report it"),
            None => "internal error: qsock panicked; please report it".to_owned(),
        };
        Failure::new(QSOCK_INTERNAL_ERROR, message)
    }
}

impl From<crate::Error> for Failure {
    fn from(e: crate::Error) -> Failure {
        let status = match &e {
            crate::Error::SocketPath { .. } => QSOCK_BAD_SOCKET_PATH,
            crate::Error::Io { .. } => QSOCK_IO_ERROR,
            crate::Error::Protocol(_) => QSOCK_PROTOCOL_ERROR,
            crate::Error::InvalidBuffer(_) => QSOCK_INVALID_ARGUMENT,
            crate::Error::SenderRefused { .. } => QSOCK_SENDER_REFUSED,
        };
        Failure::new(status, e.to_string())
    }
}

/// `QSOCK_INVALID_ARGUMENT`, saying which argument and what is wrong with it.
pub(crate) fn invalid(what: impl Into<String>) -> Failure {
    Failure::new(QSOCK_INVALID_ARGUMENT, what.into())
}

/// What a function that returns no status gives back when it fails or panics (its words
/// are in `qsock_last_error()` all the same). Deliberately not implemented for
/// `qsock_status`: a status comes out of [`call`] only.
pub(crate) trait Fallback {
    const FALLBACK: Self;
}

/// An fd: -1, which is none.
impl Fallback for c_int {
    const FALLBACK: c_int = -1;
}

/// A count: 0.
impl Fallback for usize {
    const FALLBACK: usize = 0;
}

/// Nothing: a `void` function.
impl Fallback for () {
    const FALLBACK: () = ();
}

/// Runs the body of a function that returns a status: `QSOCK_OK` when it succeeds, else
/// the failure's status with its words in `qsock_last_error()`, `QSOCK_INTERNAL_ERROR` if
/// it panicked.
pub(crate) fn call(body: impl FnOnce() -> Result<(), Failure>) -> qsock_status {
    finish(catch_unwind(AssertUnwindSafe(body)), |()| QSOCK_OK, |status| status)
}

/// Runs the body of a function that returns a value: the value when it succeeds, else
/// `T::FALLBACK` with the failure's words in `qsock_last_error()`.
pub(crate) fn boundary<T: Fallback>(body: impl FnOnce() -> Result<T, Failure>) -> T {
    finish(catch_unwind(AssertUnwindSafe(body)), |value| value, |_| T::FALLBACK)
}

fn finish<T, R>(
    outcome: std::thread::Result<Result<T, Failure>>,
    on_success: impl FnOnce(T) -> R,
    on_failure: impl FnOnce(qsock_status) -> R,
) -> R {
    let failure = match outcome {
        Ok(Ok(value)) => return on_success(value),
        Ok(Err(failure)) => failure,
        Err(payload) => Failure::panic(&*payload),
    };
    set_last_error(failure.message);
    on_failure(failure.status)
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: String) {
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    // Fails only while this thread's locals are being destroyed: nobody is left to read it.
    let _ = LAST_ERROR.try_with(|last| *last.borrow_mut() = message);
}

/// The message of the last qsock call on this thread that did not return `QSOCK_OK`
/// (including `QSOCK_TIMEOUT`, `QSOCK_EOS` and `QSOCK_SENDER_GONE`), or of a function
/// without a status that failed (a -1 fd, a 0 count); "" if none yet. Calls that succeed
/// leave it as it was. The string belongs to qsock and stays valid until the next qsock
/// call on this thread.
#[no_mangle]
pub extern "C" fn qsock_last_error() -> *const c_char {
    // No panic boundary: nothing here can panic (try_with instead of with, and the only
    // mutable borrow is in set_last_error, which never calls out).
    LAST_ERROR.try_with(|last| last.borrow().as_ptr()).unwrap_or(c"".as_ptr())
}
