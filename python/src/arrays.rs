//! numpy arrays over mapped memory: no copy, the array's `base` keeps the memory (and,
//! for a received buffer, the buffer itself) alive for as long as the array or any view
//! of it lives.

use std::any::Any;
use std::os::raw::c_int;

use numpy::npyffi::{self, npy_intp, NPY_TYPES, PY_ARRAY_API};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::formats::Sample;
use crate::mapping::Mapping;

/// The `base` of every array this module makes: what keeps the memory under the array
/// valid. Holds the mapping and, for received buffers, the buffer (whose return is sent
/// when the last holder goes).
#[pyclass(module = "qsock._qsock", frozen)]
pub struct MemoryOwner {
    _keep: Box<dyn Any + Send + Sync>,
}

/// An element type, as numpy's type number and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dtype {
    pub type_num: NPY_TYPES,
    pub size: usize,
    /// Big-endian samples (GRAY16_BE): the descriptor's byte order is swapped.
    pub big_endian: bool,
}

impl Dtype {
    pub const fn new(type_num: NPY_TYPES, size: usize) -> Dtype {
        Dtype { type_num, size, big_endian: false }
    }

    pub fn of_sample(sample: Sample) -> Dtype {
        match sample {
            Sample::U8 => Dtype::new(NPY_TYPES::NPY_UBYTE, 1),
            Sample::U16Le => Dtype::new(NPY_TYPES::NPY_USHORT, 2),
            Sample::U16Be => Dtype { big_endian: true, ..Dtype::new(NPY_TYPES::NPY_USHORT, 2) },
        }
    }

    /// A new reference to the numpy descriptor.
    fn descr(&self, py: Python<'_>) -> PyResult<*mut npyffi::PyArray_Descr> {
        // SAFETY: the API table is initialised by the call; both return new references.
        unsafe {
            let descr = PY_ARRAY_API.PyArray_DescrFromType(py, self.type_num as c_int);
            if descr.is_null() {
                return Err(PyErr::fetch(py));
            }
            if !self.big_endian {
                return Ok(descr);
            }
            let swapped = PY_ARRAY_API.PyArray_DescrNewByteorder(py, descr, b'>' as std::os::raw::c_char);
            pyo3::ffi::Py_DECREF(descr.cast());
            if swapped.is_null() {
                return Err(PyErr::fetch(py));
            }
            Ok(swapped)
        }
    }
}

/// Where an array lies in a mapping.
#[derive(Debug, Clone)]
pub struct ArrayLayout {
    /// Byte offset of element [0, 0, ...] from the mapping's start.
    pub offset: usize,
    pub shape: Vec<usize>,
    /// Byte strides, one per dimension.
    pub strides: Vec<usize>,
    pub dtype: Dtype,
}

impl ArrayLayout {
    /// C-contiguous `shape` at `offset`.
    pub fn contiguous(offset: usize, shape: Vec<usize>, dtype: Dtype) -> ArrayLayout {
        let mut strides = vec![0; shape.len()];
        let mut step = dtype.size;
        for (stride, &dim) in strides.iter_mut().zip(&shape).rev() {
            *stride = step;
            step = step.saturating_mul(dim);
        }
        ArrayLayout { offset, shape, strides, dtype }
    }

    /// One past the last byte the array can reach, from the mapping's start; `None` on
    /// overflow. An empty array reaches nothing past its offset.
    pub fn end(&self) -> Option<usize> {
        if self.shape.contains(&0) {
            return Some(self.offset);
        }
        let mut last = self.offset;
        for (&dim, &stride) in self.shape.iter().zip(&self.strides) {
            last = last.checked_add((dim - 1).checked_mul(stride)?)?;
        }
        last.checked_add(self.dtype.size)
    }
}

/// A numpy array over `layout` inside `mapping`, whose base owns `keep`. The caller
/// makes sure `keep` keeps `mapping` alive; this checks that the array fits in `limit`
/// bytes of it (`limit` <= the mapping's length) and raises `ValueError` otherwise.
pub fn array_over<'py>(
    py: Python<'py>,
    mapping: &Mapping,
    limit: usize,
    layout: &ArrayLayout,
    writable: bool,
    keep: Box<dyn Any + Send + Sync>,
) -> PyResult<Bound<'py, PyAny>> {
    let limit = limit.min(mapping.len());
    match layout.end() {
        Some(end) if end <= limit => {}
        _ => {
            return Err(PyValueError::new_err(format!(
                "an array of shape {:?} with strides {:?} at offset {} does not fit in the {limit} bytes of its memory",
                layout.shape, layout.strides, layout.offset
            )))
        }
    }
    if writable && !mapping.is_writable() {
        return Err(PyValueError::new_err("this memory is mapped read-only"));
    }
    let to_intp = |v: &usize| npy_intp::try_from(*v).map_err(|_| PyValueError::new_err("array too large"));
    let mut dims = layout.shape.iter().map(to_intp).collect::<PyResult<Vec<_>>>()?;
    let mut strides = layout.strides.iter().map(to_intp).collect::<PyResult<Vec<_>>>()?;
    let owner = Bound::new(py, MemoryOwner { _keep: keep })?;
    let descr = layout.dtype.descr(py)?;
    let mut flags = 0;
    if writable {
        flags |= npyffi::NPY_ARRAY_WRITEABLE;
    }
    // SAFETY: the data pointer and every element the dims and strides reach lie inside
    // the mapping (checked above); the mapping lives as long as `owner`, which becomes
    // the array's base, so as long as the array and every view of it. NewFromDescr
    // steals `descr`; SetBaseObject steals the reference to `owner` we hand it.
    unsafe {
        let data = mapping.ptr().add(layout.offset);
        let array = PY_ARRAY_API.PyArray_NewFromDescr(
            py,
            npyffi::get_type_object(py, npyffi::NpyTypes::PyArray_Type),
            descr,
            dims.len() as c_int,
            dims.as_mut_ptr(),
            strides.as_mut_ptr(),
            data.cast(),
            flags,
            std::ptr::null_mut(),
        );
        let array = Bound::from_owned_ptr_or_err(py, array)?;
        // Aligned if the address and strides are: numpy must not assume it otherwise.
        PY_ARRAY_API.PyArray_UpdateFlags(py, array.as_ptr().cast(), npyffi::NPY_ARRAY_ALIGNED);
        if PY_ARRAY_API.PyArray_SetBaseObject(py, array.as_ptr().cast(), owner.into_ptr()) != 0 {
            return Err(PyErr::fetch(py));
        }
        Ok(array)
    }
}
