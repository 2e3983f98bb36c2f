//! The C ABI (include/qsock.h, generated from this module by cbindgen). A thin layer:
//! argument checks, the panic boundary, status codes and error strings.
//!
//! - `types.rs`: the C data types (enums, limits, `#[repr(C)]` structs).
//! - `panic.rs`: the one panic boundary; every function's body runs in it, and it is the
//!   only place that turns an outcome into a status and `qsock_last_error()`'s words.
//! - `cast.rs`: the only place where a raw pointer becomes a reference, slice, string or
//!   `Box`; every handle a function gives out has exactly one function that frees it.
//! - `receiver.rs`, `sender.rs`, `fanout.rs`, `buffer.rs`: the functions, by object.
//!
//! NULL is accepted where documented and refused with `QSOCK_INVALID_ARGUMENT`
//! everywhere else.
#![allow(non_camel_case_types)]

mod buffer;
mod cast;
mod fanout;
mod panic;
mod receiver;
mod sender;
mod types;

use std::ffi::{c_char, c_int, CStr};

use cast::*;
use panic::{boundary, call, invalid, Failure};
use types::qsock_status::{self, *};
use types::*;

/// The name of the status whose value is `status`, e.g. "QSOCK_TIMEOUT";
/// "QSOCK_UNKNOWN_STATUS" for any other int (any value may be passed). A static string;
/// never NULL.
#[no_mangle]
pub extern "C" fn qsock_status_name(status: c_int) -> *const c_char {
    // No panic boundary: a lookup in a fixed table cannot panic. `status` stays an int:
    // C may pass any value, and one outside the enum must never become a qsock_status.
    let name: &'static CStr = match qsock_status::ALL.into_iter().find(|&s| s as c_int == status) {
        None => c"QSOCK_UNKNOWN_STATUS",
        Some(QSOCK_OK) => c"QSOCK_OK",
        Some(QSOCK_TIMEOUT) => c"QSOCK_TIMEOUT",
        Some(QSOCK_EOS) => c"QSOCK_EOS",
        Some(QSOCK_SENDER_GONE) => c"QSOCK_SENDER_GONE",
        Some(QSOCK_PROTOCOL_ERROR) => c"QSOCK_PROTOCOL_ERROR",
        Some(QSOCK_INVALID_ARGUMENT) => c"QSOCK_INVALID_ARGUMENT",
        Some(QSOCK_BAD_SOCKET_PATH) => c"QSOCK_BAD_SOCKET_PATH",
        Some(QSOCK_IO_ERROR) => c"QSOCK_IO_ERROR",
        Some(QSOCK_INTERNAL_ERROR) => c"QSOCK_INTERNAL_ERROR",
        Some(QSOCK_RECEIVER_GONE) => c"QSOCK_RECEIVER_GONE",
        Some(QSOCK_SENDER_REFUSED) => c"QSOCK_SENDER_REFUSED",
        Some(QSOCK_INTERRUPTED) => c"QSOCK_INTERRUPTED",
    };
    name.as_ptr()
}
