//! Every raw pointer that crosses the C ABI becomes a Rust reference, slice, string or
//! `Box` here, and nowhere else. Each conversion checks for NULL and fails naming the
//! argument; what it cannot check (that a non-NULL pointer is live and of the right
//! type) is the caller's side of the contract each function documents in the header.
//!
//! Handles (`qsock_receiver`, `qsock_sender`, `qsock_buffer`) are `Box`es: [`give_out`]
//! turns one into the pointer C holds, [`handle`] borrows it for a
//! call, and [`free`] takes it back, once, in the one function that frees it.

use std::ffi::{c_char, CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::panic::{invalid, Failure};

/// An opaque object C holds only as the pointer [`give_out`] made from a `Box`, until it
/// hands it to the one function that [`free`]s it. `Send`: C may use it, or free it, on
/// another thread than the one that made it.
pub(crate) trait Handle: Send + Sized {}

/// Makes `*out` a new handle for C from `make()`: `out` is checked before `make` runs,
/// so a NULL out-pointer creates nothing; on failure `*out` is left unchanged.
pub(crate) fn give_out<T: Handle>(
    out: *mut *mut T,
    name: &str,
    make: impl FnOnce() -> Result<T, Failure>,
) -> Result<(), Failure> {
    let out = arg_mut(out, name)?;
    *out = Box::into_raw(Box::new(make()?));
    Ok(())
}

/// Borrows the handle `ptr` for the call.
pub(crate) fn handle<'a, T: Handle>(ptr: *const T, name: &str) -> Result<&'a T, Failure> {
    arg(ptr, name)
}

/// Takes back a handle [`give_out`] made, and drops it. NULL is a no-op.
pub(crate) fn free<T: Handle>(ptr: *mut T) {
    if !ptr.is_null() {
        // SAFETY: non-NULL, so made by give_out's Box::into_raw, and freed once, as the header requires.
        drop(unsafe { Box::from_raw(ptr) });
    }
}

/// Borrows `ptr` (a handle, or a struct the caller passes in) for the call.
pub(crate) fn arg<'a, T>(ptr: *const T, name: &str) -> Result<&'a T, Failure> {
    // SAFETY: as_ref refuses NULL; any other pointer is a live T from the caller, as every function requires.
    unsafe { ptr.as_ref() }.ok_or_else(|| invalid(format!("{name} is NULL")))
}

/// Borrows the out-pointer `ptr` for the call, to write through it.
pub(crate) fn arg_mut<'a, T>(ptr: *mut T, name: &str) -> Result<&'a mut T, Failure> {
    // SAFETY: as in `arg`, and no other thread uses the object meanwhile, as these functions document.
    unsafe { ptr.as_mut() }.ok_or_else(|| invalid(format!("{name} is NULL")))
}

/// Writes `value` through the out-pointer `out`.
pub(crate) fn write_out<T>(out: *mut T, name: &str, value: T) -> Result<(), Failure> {
    *arg_mut(out, name)? = value;
    Ok(())
}

/// `n` items at `ptr`, read during the call; NULL is fine when `n` is 0. `n` is checked
/// against `max` first: a count past what the call can use never reads past the array.
pub(crate) fn items<'a, T>(ptr: *const T, n: usize, max: usize, name: &str) -> Result<&'a [T], Failure> {
    if n > max {
        return Err(invalid(format!("{name}: a count of {n}; at most {max}")));
    }
    if n == 0 {
        return Ok(&[]);
    }
    if n.checked_mul(size_of::<T>()).is_none_or(|bytes| bytes > isize::MAX as usize) {
        return Err(invalid(format!("{name}: a count of {n} is larger than any array")));
    }
    if ptr.is_null() {
        return Err(invalid(format!("{name} is NULL but its count is {n}")));
    }
    // SAFETY: non-NULL (checked), with `n` valid items there, as the count's documentation requires.
    Ok(unsafe { std::slice::from_raw_parts(ptr, n) })
}

/// Writes `values` into the array of `capacity` items at `ptr` (NULL is fine when
/// `capacity` is 0), as many as fit; the rest of `values` is left out. Writes without
/// reading: the array may be uninitialized memory.
pub(crate) fn write_items<T>(
    ptr: *mut T,
    capacity: usize,
    name: &str,
    values: impl IntoIterator<Item = T>,
) -> Result<(), Failure> {
    if capacity == 0 {
        return Ok(());
    }
    if capacity.checked_mul(size_of::<T>()).is_none_or(|bytes| bytes > isize::MAX as usize) {
        return Err(invalid(format!("{name}: a capacity of {capacity} is larger than any array")));
    }
    if ptr.is_null() {
        return Err(invalid(format!("{name} is NULL but its capacity is {capacity}")));
    }
    for (i, value) in values.into_iter().take(capacity).enumerate() {
        // SAFETY: non-NULL (checked), with room for `capacity` items, as the capacity's documentation requires.
        unsafe { ptr.add(i).write(value) };
    }
    Ok(())
}

/// The NUL-terminated string at `ptr`, read during the call.
pub(crate) fn string<'a>(ptr: *const c_char, name: &str) -> Result<&'a CStr, Failure> {
    optional_string(ptr).ok_or_else(|| invalid(format!("{name} is NULL")))
}

/// The NUL-terminated string at `ptr`, or `None` for NULL.
pub(crate) fn optional_string<'a>(ptr: *const c_char) -> Option<&'a CStr> {
    // SAFETY: non-NULL (checked): a NUL-terminated string, live for the call, as documented.
    (!ptr.is_null()).then(|| unsafe { CStr::from_ptr(ptr) })
}

/// The file system path at `ptr` (any bytes but NUL; not necessarily UTF-8).
pub(crate) fn path<'a>(ptr: *const c_char, name: &str) -> Result<&'a Path, Failure> {
    Ok(Path::new(OsStr::from_bytes(string(ptr, name)?.to_bytes())))
}
