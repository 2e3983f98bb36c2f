//! Little-endian field access at fixed offsets: the packed layouts of the spec are read
//! and written field by field, never by transmuting a struct, so padding, alignment and
//! garbage bytes from the peer can never become undefined behaviour.

use std::ffi::{CStr, CString};

use super::ProtocolError;

/// A payload's bytes, read at the offsets the spec gives.
#[derive(Clone, Copy)]
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl Reader<'_> {
    fn array<const N: usize>(&self, offset: usize) -> [u8; N] {
        self.0[offset..offset + N].try_into().expect("offset inside the payload")
    }
    pub(crate) fn u32(&self, offset: usize) -> u32 {
        u32::from_le_bytes(self.array(offset))
    }
    pub(crate) fn i32(&self, offset: usize) -> i32 {
        i32::from_le_bytes(self.array(offset))
    }
    pub(crate) fn u64(&self, offset: usize) -> u64 {
        u64::from_le_bytes(self.array(offset))
    }
    pub(crate) fn f64(&self, offset: usize) -> f64 {
        f64::from_le_bytes(self.array(offset))
    }
    pub(crate) fn u32s<const N: usize>(&self, offset: usize) -> [u32; N] {
        std::array::from_fn(|i| self.u32(offset + 4 * i))
    }
    pub(crate) fn i32s<const N: usize>(&self, offset: usize) -> [i32; N] {
        std::array::from_fn(|i| self.i32(offset + 4 * i))
    }
    pub(crate) fn u64s<const N: usize>(&self, offset: usize) -> [u64; N] {
        std::array::from_fn(|i| self.u64(offset + 8 * i))
    }
    pub(crate) fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        &self.0[offset..offset + len]
    }

    /// A `char field[capacity]` that must hold a NUL within the array.
    pub(crate) fn c_string(
        &self,
        offset: usize,
        capacity: usize,
        field: &'static str,
    ) -> Result<CString, ProtocolError> {
        CStr::from_bytes_until_nul(self.bytes(offset, capacity))
            .map(CStr::to_owned)
            .map_err(|_| ProtocolError::StringNotTerminated { field, capacity })
    }

    /// A `char field[capacity]` paired with a `u64 field_size` (bytes used, NUL
    /// included; 0 = absent), as the ROI/classification/landmark metas carry them.
    pub(crate) fn optional_c_string(
        &self,
        offset: usize,
        capacity: usize,
        size_offset: usize,
        field: &'static str,
    ) -> Result<Option<CString>, ProtocolError> {
        let size = self.u64(size_offset);
        if size == 0 {
            return Ok(None);
        }
        check_count(field, size, capacity)?;
        self.c_string(offset, capacity, field).map(Some)
    }
}

/// A `*_size` or count field must fit the array it describes.
pub(crate) fn check_count(field: &'static str, value: u64, capacity: usize) -> Result<usize, ProtocolError> {
    if value > capacity as u64 {
        return Err(ProtocolError::CountPastArray { field, value, capacity });
    }
    Ok(value as usize)
}

/// A zero-filled payload being written; every field not written stays 0.
pub(crate) struct Writer<'a>(pub(crate) &'a mut [u8]);

impl Writer<'_> {
    pub(crate) fn u32(&mut self, offset: usize, value: u32) {
        self.0[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }
    pub(crate) fn i32(&mut self, offset: usize, value: i32) {
        self.0[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, offset: usize, value: u64) {
        self.0[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
    }
    pub(crate) fn f64(&mut self, offset: usize, value: f64) {
        self.0[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
    }
    pub(crate) fn u32s(&mut self, offset: usize, values: &[u32]) {
        for (i, v) in values.iter().enumerate() {
            self.u32(offset + 4 * i, *v);
        }
    }
    pub(crate) fn i32s(&mut self, offset: usize, values: &[i32]) {
        for (i, v) in values.iter().enumerate() {
            self.i32(offset + 4 * i, *v);
        }
    }
    pub(crate) fn u64s(&mut self, offset: usize, values: &[u64]) {
        for (i, v) in values.iter().enumerate() {
            self.u64(offset + 8 * i, *v);
        }
    }
    pub(crate) fn bytes(&mut self, offset: usize, bytes: &[u8]) {
        self.0[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    /// Writes a string into `char field[capacity]`, cut to fit and always NUL-terminated,
    /// as the deployed sender does.
    pub(crate) fn c_string(&mut self, offset: usize, capacity: usize, value: &CStr) -> u64 {
        let bytes = value.to_bytes();
        let len = bytes.len().min(capacity - 1);
        self.bytes(offset, &bytes[..len]);
        len as u64 + 1
    }

    /// Writes an optional string and its `*_size` field (NUL included, 0 = absent).
    pub(crate) fn optional_c_string(
        &mut self,
        offset: usize,
        capacity: usize,
        size_offset: usize,
        value: Option<&CString>,
    ) {
        let size = value.map_or(0, |v| self.c_string(offset, capacity, v));
        self.u64(size_offset, size);
    }
}
