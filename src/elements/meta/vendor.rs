//! The vendor's meta layouts: those of gst-plugins-imsdk (2024 and later: labels with
//! `xtraparams`, metas with `parent_id`), the version whose sink sends these payloads, as
//! its C compiler lays them out on LP64; and the writing and reading of its classification
//! and landmarks metas through them.
//!
//! The layouts are public, re-exported (hidden) as `gstqtisocket::vendor_meta`, so that
//! the tests register and read these metas with the layouts the elements use rather than
//! with copies of them.

use std::ffi::{CStr, CString};
use std::ptr;

use gst::glib;
use gst::glib::translate::{IntoGlib, IntoGlibPtr};

use super::registry::{add_raw, MetaInfo};
use super::{c_string_for, structure, structure_string, CAT};
use crate::protocol::{
    ClassLabel, ClassMeta, Keypoint, LandmarksMeta, Link, MAX_CLASS_LABELS, MAX_KEYPOINTS, MAX_LINKS,
    MAX_TENSOR_DIMENSIONS, NAME_CAPACITY,
};

/// `GstMLTensorMeta` (spec: *Tensors*), as the vendor ML library registers it and as we
/// register it when that library is not in the process.
#[repr(C)]
pub struct TensorMeta {
    pub meta: gst::ffi::GstMeta,
    /// Index of the memory the meta describes.
    pub id: u32,
    /// A GQuark; the wire carries no tensor name, so 0.
    pub name: u32,
    pub tensor_type: u32,
    pub n_dimensions: u32,
    pub dimensions: [u32; MAX_TENSOR_DIMENSIONS],
    pub qscale: f32,
    pub qoffset: f32,
}

/// `GstClassLabel`: one element of a classification meta's `labels` GArray.
#[repr(C)]
pub struct VendorClassLabel {
    /// A GQuark.
    pub name: u32,
    pub confidence: f64,
    pub color: u32,
    /// Owned by the label (freed by the array's clear function); may be NULL.
    pub xtraparams: *mut gst::ffi::GstStructure,
}

/// `GstVideoClassificationMeta`.
#[repr(C)]
pub struct VendorClassificationMeta {
    pub meta: gst::ffi::GstMeta,
    pub id: u32,
    pub parent_id: i32,
    /// A GArray of [`VendorClassLabel`], owned by the meta.
    pub labels: *mut glib::ffi::GArray,
}

/// `GstVideoKeypoint`: one element of a landmarks meta's `keypoints` GArray.
#[repr(C)]
pub struct VendorKeypoint {
    /// A GQuark.
    pub name: u32,
    pub confidence: f64,
    pub color: u32,
    pub x: i32,
    pub y: i32,
}

/// `GstVideoKeypointLink`: one element of a landmarks meta's `links` GArray.
#[repr(C)]
pub struct VendorKeypointLink {
    pub s_kp_idx: u32,
    pub d_kp_idx: u32,
}

/// `GstVideoLandmarksMeta`.
#[repr(C)]
pub struct VendorLandmarksMeta {
    pub meta: gst::ffi::GstMeta,
    pub id: u32,
    pub parent_id: i32,
    pub confidence: f64,
    /// A GArray of [`VendorKeypoint`], owned by the meta.
    pub keypoints: *mut glib::ffi::GArray,
    /// A GArray of [`VendorKeypointLink`], owned by the meta.
    pub links: *mut glib::ffi::GArray,
    /// Owned by the meta; may be NULL.
    pub xtraparams: *mut gst::ffi::GstStructure,
}

// The vendor's structs on LP64, as the C compiler lays them out.
const _: () = assert!(std::mem::size_of::<gst::ffi::GstMeta>() == 16);
const _: () = assert!(std::mem::size_of::<TensorMeta>() == 16 + 56);
const _: () = assert!(std::mem::size_of::<VendorClassLabel>() == 32);
const _: () = assert!(std::mem::size_of::<VendorClassificationMeta>() == 32);
const _: () = assert!(std::mem::size_of::<VendorKeypoint>() == 32);
const _: () = assert!(std::mem::size_of::<VendorLandmarksMeta>() == 56);
// ... and where their fields are, so that a field moved here by mistake cannot go unseen
// (the tests read the metas through these same layouts).
const _: () = {
    use std::mem::offset_of;
    assert!(offset_of!(TensorMeta, id) == 16 && offset_of!(TensorMeta, n_dimensions) == 28);
    assert!(offset_of!(TensorMeta, dimensions) == 32 && offset_of!(TensorMeta, qscale) == 64);
    assert!(offset_of!(TensorMeta, qoffset) == 68);
    assert!(offset_of!(VendorClassLabel, confidence) == 8 && offset_of!(VendorClassLabel, color) == 16);
    assert!(offset_of!(VendorClassLabel, xtraparams) == 24);
    assert!(offset_of!(VendorClassificationMeta, id) == 16 && offset_of!(VendorClassificationMeta, parent_id) == 20);
    assert!(offset_of!(VendorClassificationMeta, labels) == 24);
    assert!(offset_of!(VendorKeypoint, confidence) == 8 && offset_of!(VendorKeypoint, color) == 16);
    assert!(offset_of!(VendorKeypoint, x) == 20 && offset_of!(VendorKeypoint, y) == 24);
    assert!(std::mem::size_of::<VendorKeypointLink>() == 8 && offset_of!(VendorKeypointLink, d_kp_idx) == 4);
    assert!(offset_of!(VendorLandmarksMeta, id) == 16 && offset_of!(VendorLandmarksMeta, parent_id) == 20);
    assert!(offset_of!(VendorLandmarksMeta, confidence) == 24 && offset_of!(VendorLandmarksMeta, keypoints) == 32);
    assert!(offset_of!(VendorLandmarksMeta, links) == 40 && offset_of!(VendorLandmarksMeta, xtraparams) == 48);
};

fn quark(name: &CStr) -> u32 {
    glib::Quark::from_str(name.to_string_lossy().as_ref()).into_glib()
}

/// Clears one vendor label: frees its `xtraparams`. Set as the labels array's clear
/// function, so the vendor's `g_array_free(labels, TRUE)` frees them.
unsafe extern "C" fn clear_vendor_label(label: glib::ffi::gpointer) {
    // SAFETY: GArray calls this with a pointer to one VendorClassLabel element.
    unsafe {
        let label = &mut *(label as *mut VendorClassLabel);
        if !label.xtraparams.is_null() {
            gst::ffi::gst_structure_free(label.xtraparams);
            label.xtraparams = ptr::null_mut();
        }
    }
}

/// A new, zero-filled GArray of `len` elements of `T`.
fn g_array<T>(len: usize, clear: Option<unsafe extern "C" fn(glib::ffi::gpointer)>) -> *mut glib::ffi::GArray {
    // SAFETY: plain GArray construction; the caller fills the zeroed elements.
    unsafe {
        let array = glib::ffi::g_array_sized_new(
            glib::ffi::GFALSE,
            glib::ffi::GTRUE,
            std::mem::size_of::<T>() as u32,
            len as u32,
        );
        let array = glib::ffi::g_array_set_size(array, len as u32);
        if clear.is_some() {
            glib::ffi::g_array_set_clear_func(array, clear);
        }
        array
    }
}

fn g_array_elements<'a, T>(array: *mut glib::ffi::GArray) -> &'a mut [T] {
    // SAFETY: the array was made by g_array::<T> with `len` zeroed elements of T, all
    // plain data for which zero is a valid value.
    unsafe { std::slice::from_raw_parts_mut((*array).data as *mut T, (*array).len as usize) }
}

/// Attaches a `GstVideoClassificationMeta` of `info` (the vendor's registration, whose size
/// was checked against [`VendorClassificationMeta`]).
pub(super) fn add_classification(buffer: &mut gst::BufferRef, info: MetaInfo, class: &ClassMeta) {
    let labels = g_array::<VendorClassLabel>(class.labels.len(), Some(clear_vendor_label));
    for (slot, label) in g_array_elements::<VendorClassLabel>(labels).iter_mut().zip(&class.labels) {
        slot.name = quark(&label.name);
        slot.confidence = label.confidence;
        slot.color = label.color;
        slot.xtraparams = label
            .xtraparams
            .as_ref()
            .map_or(ptr::null_mut(), |x| structure(x, "VIDEO_CLASS_META.labels.xtraparams").into_glib_ptr());
    }
    // SAFETY: VendorClassificationMeta is the vendor's layout (size checked).
    match unsafe { add_raw::<VendorClassificationMeta>(buffer, info) } {
        Some(meta) => {
            meta.id = class.id;
            meta.parent_id = class.parent_id;
            meta.labels = labels; // the vendor's free function frees it
        }
        // SAFETY: the array is ours alone; its clear function frees the structures.
        None => unsafe {
            glib::ffi::g_array_free(labels, glib::ffi::GTRUE);
        },
    }
}

/// Attaches a `GstVideoLandmarksMeta` of `info` (the vendor's registration, whose size was
/// checked against [`VendorLandmarksMeta`]).
pub(super) fn add_landmarks(buffer: &mut gst::BufferRef, info: MetaInfo, landmarks: &LandmarksMeta) {
    let keypoints = g_array::<VendorKeypoint>(landmarks.keypoints.len(), None);
    for (slot, kp) in g_array_elements::<VendorKeypoint>(keypoints).iter_mut().zip(&landmarks.keypoints) {
        slot.name = quark(&kp.name);
        slot.confidence = kp.confidence;
        slot.color = kp.color;
        slot.x = kp.x as i32;
        slot.y = kp.y as i32;
    }
    let links = g_array::<VendorKeypointLink>(landmarks.links.len(), None);
    for (slot, link) in g_array_elements::<VendorKeypointLink>(links).iter_mut().zip(&landmarks.links) {
        slot.s_kp_idx = link.s_kp_idx;
        slot.d_kp_idx = link.d_kp_idx;
    }
    // SAFETY: VendorLandmarksMeta is the vendor's layout (size checked).
    match unsafe { add_raw::<VendorLandmarksMeta>(buffer, info) } {
        Some(meta) => {
            meta.id = landmarks.id;
            meta.parent_id = landmarks.parent_id;
            meta.confidence = landmarks.confidence;
            meta.keypoints = keypoints; // the vendor's free function frees them
            meta.links = links;
            meta.xtraparams = landmarks
                .xtraparams
                .as_ref()
                .map_or(ptr::null_mut(), |x| structure(x, "VIDEO_LM_META.xtraparams").into_glib_ptr());
        }
        // SAFETY: both arrays are ours alone and hold plain data.
        None => unsafe {
            glib::ffi::g_array_free(keypoints, glib::ffi::GTRUE);
            glib::ffi::g_array_free(links, glib::ffi::GTRUE);
        },
    }
}

fn quark_name(quark: u32) -> CString {
    // SAFETY: g_quark_to_string returns a static string, or NULL for 0.
    let name = unsafe { glib::ffi::g_quark_to_string(quark) };
    if name.is_null() {
        return CString::default();
    }
    // SAFETY: a NUL-terminated static string.
    let name = unsafe { CStr::from_ptr(name) };
    c_string_for(&name.to_string_lossy(), NAME_CAPACITY, "name")
}

/// The elements of a GArray of `T`, at most `max` of them (warning when cut).
fn g_array_items<'a, T>(array: *const glib::ffi::GArray, max: usize, what: &str) -> &'a [T] {
    if array.is_null() {
        return &[];
    }
    // SAFETY: a GArray of T as the vendor's layout defines it.
    let all = unsafe { std::slice::from_raw_parts((*array).data as *const T, (*array).len as usize) };
    if all.len() > max {
        gst::warning!(CAT, "{} {what}; the protocol carries {max}: the rest are not sent", all.len());
    }
    &all[..all.len().min(max)]
}

fn optional_structure(s: *const gst::ffi::GstStructure, field: &str) -> Option<CString> {
    // SAFETY: NULL or a structure owned by the meta, alive while we read it.
    (!s.is_null()).then(|| structure_string(unsafe { gst::StructureRef::from_glib_borrow(s) }, field))
}

pub(super) fn read_vendor_classification(meta: &VendorClassificationMeta) -> ClassMeta {
    let labels = g_array_items::<VendorClassLabel>(meta.labels, MAX_CLASS_LABELS, "classification labels");
    ClassMeta {
        id: meta.id,
        parent_id: meta.parent_id,
        labels: labels
            .iter()
            .map(|l| ClassLabel {
                name: quark_name(l.name),
                confidence: l.confidence,
                color: l.color,
                xtraparams: optional_structure(l.xtraparams, "label xtraparams"),
            })
            .collect(),
    }
}

pub(super) fn read_vendor_landmarks(meta: &VendorLandmarksMeta) -> LandmarksMeta {
    let keypoints = g_array_items::<VendorKeypoint>(meta.keypoints, MAX_KEYPOINTS, "keypoints");
    let links = g_array_items::<VendorKeypointLink>(meta.links, MAX_LINKS, "keypoint links");
    LandmarksMeta {
        id: meta.id,
        parent_id: meta.parent_id,
        confidence: meta.confidence,
        keypoints: keypoints
            .iter()
            .map(|k| Keypoint {
                name: quark_name(k.name),
                confidence: k.confidence,
                color: k.color,
                x: k.x.max(0) as u32,
                y: k.y.max(0) as u32,
            })
            .collect(),
        links: links.iter().map(|l| Link { s_kp_idx: l.s_kp_idx, d_kp_idx: l.d_kp_idx }).collect(),
        xtraparams: optional_structure(meta.xtraparams, "landmarks xtraparams"),
    }
}
