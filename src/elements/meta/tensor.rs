//! `GstMLTensorMeta`: one per TENSOR block on a received buffer, read back from a buffer to
//! send. The registration is the vendor ML library's when it is in the process, otherwise
//! ours under the same names, with the same layout ([`TensorMeta`]).

use std::ptr;
use std::sync::{LazyLock, OnceLock};

use gst::glib;
use gst::glib::translate::IntoGlib;

use super::registry::{add_raw, is_meta_of, registered, vendor_info, MetaInfo, ML_LIBRARIES};
use super::vendor::TensorMeta;
use super::CAT;
use crate::protocol::{TensorPayload, MAX_TENSOR_DIMENSIONS};

unsafe extern "C" fn tensor_meta_init(
    meta: *mut gst::ffi::GstMeta,
    _params: glib::ffi::gpointer,
    _buffer: *mut gst::ffi::GstBuffer,
) -> glib::ffi::gboolean {
    // SAFETY: GStreamer calls init with a meta of our registered size.
    let meta = unsafe { &mut *(meta as *mut TensorMeta) };
    meta.id = 0;
    meta.name = 0;
    meta.tensor_type = 0;
    meta.n_dimensions = 0;
    meta.dimensions = [0; MAX_TENSOR_DIMENSIONS];
    meta.qscale = 1.0;
    meta.qoffset = 0.0;
    glib::ffi::GTRUE
}

static COPY_TRANSFORM: LazyLock<u32> = LazyLock::new(|| glib::Quark::from_str("gst-copy").into_glib());

unsafe extern "C" fn tensor_meta_transform(
    dest: *mut gst::ffi::GstBuffer,
    meta: *mut gst::ffi::GstMeta,
    _src: *mut gst::ffi::GstBuffer,
    type_: glib::ffi::GQuark,
    _data: glib::ffi::gpointer,
) -> glib::ffi::gboolean {
    if type_ != *COPY_TRANSFORM {
        return glib::ffi::GFALSE;
    }
    // SAFETY: `meta` is one of ours (this transform is only registered with our info) and
    // `dest` a writable buffer, as GstMetaTransformFunction guarantees.
    unsafe {
        let source = &*(meta as *const TensorMeta);
        let copy = gst::ffi::gst_buffer_add_meta(dest, (*meta).info, ptr::null_mut()) as *mut TensorMeta;
        let Some(copy) = copy.as_mut() else { return glib::ffi::GFALSE };
        copy.id = source.id;
        copy.name = source.name;
        copy.tensor_type = source.tensor_type;
        copy.n_dimensions = source.n_dimensions;
        copy.dimensions = source.dimensions;
        copy.qscale = source.qscale;
        copy.qoffset = source.qoffset;
    }
    glib::ffi::GTRUE
}

static OWN_TENSOR_META: OnceLock<Option<MetaInfo>> = OnceLock::new();

fn register_own_tensor_meta() -> Option<MetaInfo> {
    // SAFETY: NUL-terminated names, a NULL-terminated tags array that GStreamer only reads
    // during the call, and init/transform functions that match the registered size.
    unsafe {
        let mut api = glib::gobject_ffi::g_type_from_name(c"GstMLTensorMetaAPI".as_ptr());
        if api == 0 {
            let mut tags = [c"memory".as_ptr(), ptr::null()];
            api = gst::ffi::gst_meta_api_type_register(c"GstMLTensorMetaAPI".as_ptr(), tags.as_mut_ptr());
        }
        if api == 0 {
            return None;
        }
        let info = gst::ffi::gst_meta_register(
            api,
            c"GstMLTensorMeta".as_ptr(),
            std::mem::size_of::<TensorMeta>(),
            Some(tensor_meta_init),
            None,
            Some(tensor_meta_transform),
        );
        (!info.is_null()).then_some(MetaInfo(info))
    }
}

/// The `GstMLTensorMeta` info: the one already registered in the process (the vendor
/// library's), else the vendor library's if it is loaded, else ours.
fn tensor_meta_info() -> Option<MetaInfo> {
    registered(c"GstMLTensorMeta")
        .or_else(|| vendor_info(ML_LIBRARIES, c"gst_ml_tensor_meta_get_info"))
        .or_else(|| *OWN_TENSOR_META.get_or_init(register_own_tensor_meta))
}

/// One `GstMLTensorMeta` for memory `index`. False when no usable registration exists (a
/// foreign one smaller than the spec's layout).
pub(crate) fn add_tensor(buffer: &mut gst::BufferRef, index: u32, tensor: &TensorPayload) -> bool {
    let Some(info) = tensor_meta_info() else { return false };
    // SAFETY: TensorMeta is the spec's layout of GstMLTensorMeta; add_raw checks the size.
    let Some(meta) = (unsafe { add_raw::<TensorMeta>(buffer, info) }) else {
        gst::warning!(
            CAT,
            "the registered GstMLTensorMeta is smaller than the spec's layout; tensor metas not attached"
        );
        return false;
    };
    let dimensions = tensor.used_dimensions();
    meta.id = index;
    meta.tensor_type = tensor.tensor_type;
    meta.n_dimensions = dimensions.len() as u32;
    meta.dimensions = [0; MAX_TENSOR_DIMENSIONS];
    meta.dimensions[..dimensions.len()].copy_from_slice(dimensions);
    true
}

/// The `GstMLTensorMeta`s of `buffer`: (memory index, type, dimensions).
pub(crate) fn sent_tensor_metas(buffer: &gst::BufferRef) -> Vec<(u32, u32, Vec<u32>)> {
    let info = tensor_meta_info().filter(|info| info.size() >= std::mem::size_of::<TensorMeta>());
    buffer
        .iter_meta::<gst::Meta>()
        .filter(|meta| is_meta_of(meta, info))
        .map(|meta| {
            // SAFETY: registered with the GstMLTensorMeta info, at least this layout's size.
            let tensor = unsafe { &*(meta.as_ptr() as *const TensorMeta) };
            let n = (tensor.n_dimensions as usize).min(MAX_TENSOR_DIMENSIONS);
            (tensor.id, tensor.tensor_type, tensor.dimensions[..n].to_vec())
        })
        .collect()
}
