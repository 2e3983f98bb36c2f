//! GstMeta mapping of what rides with a buffer, both ways: the metas `qtisocketsrc` puts
//! on a received buffer (docs/qtisocketsrc.md, *Metas*), and the same metas read back by
//! `qtisocketsink` from a buffer it sends (docs/qtisocketsink.md, *Metas*).
//!
//! - `VIDEO_ROI_META` → `GstVideoRegionOfInterestMeta` (label as its type, `id`,
//!   `parent_id`), with `det_meta` and `xtraparams` as parameter structures.
//! - `PROTECTION_META` → `GstProtectionMeta`.
//! - `TENSOR` blocks → one `GstMLTensorMeta` per memory: the vendor's registration when
//!   the vendor ML library is in the process, otherwise ours under the same names.
//! - `VIDEO_CLASS_META` / `VIDEO_LM_META` → the vendor's `GstVideoClassificationMeta` /
//!   `GstVideoLandmarksMeta` when the vendor video library is in the process (found at
//!   run time: never linked), otherwise custom metas `QtiSocketClassificationMeta` /
//!   `QtiSocketLandmarksMeta` whose structure carries every field.
//!
//! The vendor layouts written here are those of gst-plugins-imsdk (2024 and later: labels
//! with `xtraparams`, metas with `parent_id`), the version whose sink sends these payloads.

use std::ffi::{CStr, CString};
use std::ptr;
use std::str::FromStr;
use std::sync::{LazyLock, OnceLock};

use gst::glib;
use gst::glib::translate::{IntoGlib, IntoGlibPtr};

use crate::protocol::{
    ClassLabel, ClassMeta, Keypoint, LandmarksMeta, Link, Metas, ProtectionMeta, RoiMeta, TensorPayload,
    MAX_CLASS_LABELS, MAX_KEYPOINTS, MAX_LINKS, MAX_TENSOR_DIMENSIONS, MAX_TEXT_LEN, NAME_CAPACITY,
    STRUCTURE_CAPACITY,
};

static CAT: LazyLock<gst::DebugCategory> =
    LazyLock::new(|| gst::DebugCategory::new("qtisocketmeta", gst::DebugColorFlags::empty(), Some("qtisocket metas")));

/// Name of the custom meta that carries a classification result when the vendor meta is
/// not available; its structure is named `VideoClassification`.
pub(crate) const CLASSIFICATION_CUSTOM_META: &str = "QtiSocketClassificationMeta";
/// Name of the custom meta that carries landmarks when the vendor meta is not available;
/// its structure is named `VideoLandmarks`.
pub(crate) const LANDMARKS_CUSTOM_META: &str = "QtiSocketLandmarksMeta";

/// Libraries of the vendor that register the metas; looked for among those already
/// loaded (`RTLD_NOLOAD`), never loaded by us.
const ML_LIBRARIES: &[&CStr] = &[c"libgstqtimlbase.so.1", c"libgstqtimlbase.so"];
const VIDEO_LIBRARIES: &[&CStr] = &[c"libgstqtivideobase.so", c"libgstqtivideobase.so.1"];

/// A registered meta's info. Meta infos are registered once and never freed.
#[derive(Clone, Copy, Debug)]
struct MetaInfo(*const gst::ffi::GstMetaInfo);
// SAFETY: a GstMetaInfo is immutable once registered and lives for the whole process.
unsafe impl Send for MetaInfo {}
// SAFETY: as above.
unsafe impl Sync for MetaInfo {}

impl MetaInfo {
    fn size(self) -> usize {
        // SAFETY: the pointer came from gst_meta_register/gst_meta_get_info: valid for ever.
        unsafe { (*self.0).size }
    }
}

/// The info registered in this process under `implementation`, if any.
fn registered(implementation: &CStr) -> Option<MetaInfo> {
    // SAFETY: a NUL-terminated name; gst_meta_get_info returns NULL or a static info.
    let info = unsafe { gst::ffi::gst_meta_get_info(implementation.as_ptr()) };
    (!info.is_null()).then_some(MetaInfo(info))
}

/// Calls the vendor's `const GstMetaInfo *symbol(void)` if the vendor library is already
/// in the process (which registers the meta if it was not yet).
fn vendor_info(libraries: &[&CStr], symbol: &CStr) -> Option<MetaInfo> {
    // SAFETY: dlsym/dlopen get NUL-terminated names; RTLD_NOLOAD only finds a library that
    // is already loaded. A found handle is kept open (never dlclosed) so that the code we
    // call stays loaded. The symbol is the vendor's documented `const GstMetaInfo *f(void)`.
    unsafe {
        let mut function = libc::dlsym(libc::RTLD_DEFAULT, symbol.as_ptr());
        for library in libraries {
            if !function.is_null() {
                break;
            }
            let handle = libc::dlopen(library.as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD);
            if handle.is_null() {
                continue;
            }
            function = libc::dlsym(handle, symbol.as_ptr());
            if function.is_null() {
                libc::dlclose(handle);
            }
        }
        if function.is_null() {
            return None;
        }
        let get_info: unsafe extern "C" fn() -> *const gst::ffi::GstMetaInfo = std::mem::transmute(function);
        let info = get_info();
        (!info.is_null()).then_some(MetaInfo(info))
    }
}

/// Adds a meta of `info` to `buffer` and returns it as `T`, the layout that follows.
///
/// # Safety
/// `T` must be `#[repr(C)]`, start with a `GstMeta`, and describe the layout of `info`'s
/// implementation (its size is checked).
unsafe fn add_raw<T>(buffer: &mut gst::BufferRef, info: MetaInfo) -> Option<&mut T> {
    if info.size() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: a valid buffer we may write (BufferRef is &mut) and a registered info; the
    // caller vouches for T.
    unsafe {
        let meta = gst::ffi::gst_buffer_add_meta(buffer.as_mut_ptr(), info.0, ptr::null_mut());
        (meta as *mut T).as_mut()
    }
}

/// Parses a serialized GstStructure; text that does not parse is carried whole in a
/// `QtiSocketUnparsed` structure rather than lost.
fn structure(text: &CStr, field: &str) -> gst::Structure {
    let parsed = text.to_str().ok().and_then(|s| gst::Structure::from_str(s).ok());
    parsed.unwrap_or_else(|| {
        gst::warning!(CAT, "{field} is not a serialized GstStructure: {text:?}; carried as QtiSocketUnparsed");
        gst::Structure::builder("QtiSocketUnparsed")
            .field("field", field)
            .field("text", text.to_string_lossy().as_ref())
            .build()
    })
}

fn quark(name: &CStr) -> u32 {
    glib::Quark::from_str(name.to_string_lossy().as_ref()).into_glib()
}

// ---------------------------------------------------------------------------------------
// Region of interest, protection

/// `GstVideoRegionOfInterestMeta`, with `det_meta` then `xtraparams` as parameters.
pub(crate) fn add_roi(buffer: &mut gst::BufferRef, roi: &RoiMeta) {
    let label = roi.label.to_string_lossy();
    let mut meta = gst_video::VideoRegionOfInterestMeta::add(buffer, &label, (roi.x, roi.y, roi.w, roi.h));
    meta.set_id(roi.id);
    meta.set_parent_id(roi.parent_id);
    if let Some(det) = &roi.det_meta {
        meta.add_param(structure(det, "VIDEO_ROI_META.det_meta"));
    }
    if let Some(extra) = &roi.xtraparams {
        meta.add_param(structure(extra, "VIDEO_ROI_META.xtraparams"));
    }
}

/// `GstProtectionMeta`; a structure that does not parse is skipped with a warning (a
/// decryptor cannot use it).
pub(crate) fn add_protection(buffer: &mut gst::BufferRef, protection: &ProtectionMeta) {
    match protection.structure.to_str().ok().and_then(|s| gst::Structure::from_str(s).ok()) {
        Some(info) => {
            gst::ProtectionMeta::add(buffer, info);
        }
        None => {
            gst::warning!(CAT, "PROTECTION_META is not a serialized GstStructure: {:?}; skipped", protection.structure)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tensors

/// The `GstMLTensorMeta` layout (spec: *Tensors*).
#[repr(C)]
pub(crate) struct TensorMeta {
    meta: gst::ffi::GstMeta,
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

// ---------------------------------------------------------------------------------------
// Classification and landmarks: the vendor's metas, or custom metas

#[repr(C)]
struct VendorClassLabel {
    name: u32,
    confidence: f64,
    color: u32,
    xtraparams: *mut gst::ffi::GstStructure,
}

#[repr(C)]
struct VendorClassificationMeta {
    meta: gst::ffi::GstMeta,
    id: u32,
    parent_id: i32,
    labels: *mut glib::ffi::GArray,
}

#[repr(C)]
struct VendorKeypoint {
    name: u32,
    confidence: f64,
    color: u32,
    x: i32,
    y: i32,
}

#[repr(C)]
struct VendorKeypointLink {
    s_kp_idx: u32,
    d_kp_idx: u32,
}

#[repr(C)]
struct VendorLandmarksMeta {
    meta: gst::ffi::GstMeta,
    id: u32,
    parent_id: i32,
    confidence: f64,
    keypoints: *mut glib::ffi::GArray,
    links: *mut glib::ffi::GArray,
    xtraparams: *mut gst::ffi::GstStructure,
}

/// Which classification/landmarks metas this process offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VendorMetas {
    /// The vendor's metas are registered or their library is loaded.
    Vendor,
    /// Custom metas carrying structures.
    Custom,
}

/// The vendor's classification meta, registered or from its loaded library: to attach one.
fn classification_info() -> Option<MetaInfo> {
    registered_classification()
        .or_else(|| vendor_info(VIDEO_LIBRARIES, c"gst_video_classification_meta_get_info"))
        .filter(|info| info.size() >= std::mem::size_of::<VendorClassificationMeta>())
}

fn landmarks_info() -> Option<MetaInfo> {
    registered_landmarks()
        .or_else(|| vendor_info(VIDEO_LIBRARIES, c"gst_video_landmarks_meta_get_info"))
        .filter(|info| info.size() >= std::mem::size_of::<VendorLandmarksMeta>())
}

// A meta found on a buffer is registered: reading one needs no look into libraries (a
// `dlopen`, far too slow for every buffer).
fn registered_classification() -> Option<MetaInfo> {
    registered(c"GstVideoClassificationMeta").filter(|info| info.size() >= std::mem::size_of::<VendorClassificationMeta>())
}

fn registered_landmarks() -> Option<MetaInfo> {
    registered(c"GstVideoLandmarksMeta").filter(|info| info.size() >= std::mem::size_of::<VendorLandmarksMeta>())
}

/// Which metas classification results get now (for the element's log).
pub(crate) fn classification_metas() -> VendorMetas {
    if classification_info().is_some() {
        VendorMetas::Vendor
    } else {
        VendorMetas::Custom
    }
}

fn register_custom_metas() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        for name in [CLASSIFICATION_CUSTOM_META, LANDMARKS_CUSTOM_META] {
            if !gst::meta::CustomMeta::is_registered(name) {
                gst::meta::CustomMeta::register(name, &[]);
            }
        }
    });
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

/// The classification result as a `VideoClassification` structure.
pub(crate) fn classification_structure(class: &ClassMeta) -> gst::Structure {
    let labels = class.labels.iter().map(|label| {
        let mut s = gst::Structure::builder("ClassLabel")
            .field("name", label.name.to_string_lossy().as_ref())
            .field("confidence", label.confidence)
            .field("color", label.color)
            .build();
        if let Some(extra) = &label.xtraparams {
            s.set("xtraparams", structure(extra, "VIDEO_CLASS_META.labels.xtraparams"));
        }
        s
    });
    gst::Structure::builder("VideoClassification")
        .field("id", class.id)
        .field("parent-id", class.parent_id)
        .field("labels", gst::Array::new(labels))
        .build()
}

/// The landmarks as a `VideoLandmarks` structure.
pub(crate) fn landmarks_structure(landmarks: &LandmarksMeta) -> gst::Structure {
    let keypoints = landmarks.keypoints.iter().map(|kp| {
        gst::Structure::builder("Keypoint")
            .field("name", kp.name.to_string_lossy().as_ref())
            .field("confidence", kp.confidence)
            .field("color", kp.color)
            .field("x", kp.x)
            .field("y", kp.y)
            .build()
    });
    let links = landmarks.links.iter().map(|link| {
        gst::Structure::builder("KeypointLink")
            .field("source", link.s_kp_idx)
            .field("destination", link.d_kp_idx)
            .build()
    });
    let mut s = gst::Structure::builder("VideoLandmarks")
        .field("id", landmarks.id)
        .field("parent-id", landmarks.parent_id)
        .field("confidence", landmarks.confidence)
        .field("keypoints", gst::Array::new(keypoints))
        .field("links", gst::Array::new(links))
        .build();
    if let Some(extra) = &landmarks.xtraparams {
        s.set("xtraparams", structure(extra, "VIDEO_LM_META.xtraparams"));
    }
    s
}

fn add_custom(buffer: &mut gst::BufferRef, name: &str, s: gst::Structure) {
    register_custom_metas();
    match gst::meta::CustomMeta::add(buffer, name) {
        Ok(mut meta) => {
            let target = meta.mut_structure();
            for (field, value) in s.iter() {
                target.set_value(field, value.clone());
            }
            target.set_name(s.name());
        }
        Err(e) => gst::warning!(CAT, "cannot add {name}: {e}"),
    }
}

/// A classification result: the vendor's `GstVideoClassificationMeta` when available,
/// else a `QtiSocketClassificationMeta` custom meta.
pub(crate) fn add_classification(buffer: &mut gst::BufferRef, class: &ClassMeta) {
    if let Some(info) = classification_info() {
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
        return;
    }
    add_custom(buffer, CLASSIFICATION_CUSTOM_META, classification_structure(class));
}

/// Landmarks: the vendor's `GstVideoLandmarksMeta` when available, else a
/// `QtiSocketLandmarksMeta` custom meta.
pub(crate) fn add_landmarks(buffer: &mut gst::BufferRef, landmarks: &LandmarksMeta) {
    if let Some(info) = landmarks_info() {
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
        return;
    }
    add_custom(buffer, LANDMARKS_CUSTOM_META, landmarks_structure(landmarks));
}

// The vendor's structs on LP64, as the C compiler lays them out.
const _: () = assert!(std::mem::size_of::<gst::ffi::GstMeta>() == 16);
const _: () = assert!(std::mem::size_of::<TensorMeta>() == 16 + 56);
const _: () = assert!(std::mem::size_of::<VendorClassLabel>() == 32);
const _: () = assert!(std::mem::size_of::<VendorClassificationMeta>() == 32);
const _: () = assert!(std::mem::size_of::<VendorKeypoint>() == 32);
const _: () = assert!(std::mem::size_of::<VendorLandmarksMeta>() == 56);

// ---------------------------------------------------------------------------------------
// Reading the metas of a buffer to send (qtisocketsink)

/// `text` as a C string for a field of `capacity` bytes: cut (with a warning) at a
/// character boundary to leave room for the NUL, as the deployed sender cuts.
fn c_string_for(text: &str, capacity: usize, field: &str) -> CString {
    let mut end = text.len().min(capacity - 1);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if end < text.len() {
        gst::warning!(CAT, "{field} is {} bytes; cut to the protocol's {}", text.len(), capacity - 1);
    }
    // A NUL inside a GStreamer string cannot happen (they are C strings).
    CString::new(text[..end].replace('\0', "")).expect("no NUL left")
}

fn structure_string(s: &gst::StructureRef, field: &str) -> CString {
    c_string_for(&s.to_string(), STRUCTURE_CAPACITY, field)
}

/// Whether `meta` was registered with `info`.
fn is_meta_of(meta: &gst::MetaRef<'_, gst::Meta>, info: Option<MetaInfo>) -> bool {
    // SAFETY: `as_ptr` is a valid GstMeta of a buffer we hold; `info` is read only.
    info.is_some_and(|info| unsafe { (*meta.as_ptr()).info } == info.0)
}

/// The metas of `buffer` that the protocol carries: protection always; regions of
/// interest, classification and landmarks with video (`video`), as the spec orders.
pub(crate) fn sent_metas(buffer: &gst::BufferRef, video: bool) -> Metas {
    let mut metas = Metas::default();
    for protection in buffer.iter_meta::<gst::ProtectionMeta>() {
        let text = c_string_for(&protection.info().to_string(), MAX_TEXT_LEN, "GstProtectionMeta info");
        let size = text.as_bytes().len() as u64;
        metas.protection.push(ProtectionMeta { structure: text, size, maxsize: size });
    }
    if !video {
        return metas;
    }
    for roi in buffer.iter_meta::<gst_video::VideoRegionOfInterestMeta>() {
        let (x, y, w, h) = roi.rect();
        let det_meta = roi.param("ObjectDetection");
        let extra = roi.params().find(|p| p.name() != "ObjectDetection");
        metas.roi.push(RoiMeta {
            label: c_string_for(roi.roi_type(), NAME_CAPACITY, "ROI label"),
            id: roi.id(),
            parent_id: roi.parent_id(),
            x,
            y,
            w,
            h,
            det_meta: det_meta.map(|s| structure_string(s, "ROI det_meta")),
            xtraparams: extra.map(|s| structure_string(s, "ROI xtraparams")),
        });
    }
    let (class_info, landmarks_info) = (registered_classification(), registered_landmarks());
    for meta in buffer.iter_meta::<gst::Meta>() {
        if is_meta_of(&meta, class_info) {
            // SAFETY: registered with the vendor's classification info, whose size was
            // checked against this layout.
            metas.class.push(read_vendor_classification(unsafe { &*(meta.as_ptr() as *const VendorClassificationMeta) }));
        } else if is_meta_of(&meta, landmarks_info) {
            // SAFETY: as above, for the landmarks layout.
            metas.landmarks.push(read_vendor_landmarks(unsafe { &*(meta.as_ptr() as *const VendorLandmarksMeta) }));
        } else if let Some(custom) = meta.try_as_custom_meta() {
            let s = custom.structure();
            let read = match s.name().as_str() {
                "VideoClassification" => class_from_structure(s).map(|c| metas.class.push(c)),
                "VideoLandmarks" => landmarks_from_structure(s).map(|l| metas.landmarks.push(l)),
                _ => Ok(()),
            };
            if let Err(e) = read {
                gst::warning!(CAT, "custom meta {s} not sent: {e}");
            }
        }
    }
    metas
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

fn read_vendor_classification(meta: &VendorClassificationMeta) -> ClassMeta {
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

fn read_vendor_landmarks(meta: &VendorLandmarksMeta) -> LandmarksMeta {
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

fn structures(s: &gst::StructureRef, field: &str, max: usize) -> Result<Vec<gst::Structure>, String> {
    let array = s.get::<gst::Array>(field).map_err(|_| format!("no array field '{field}'"))?;
    if array.len() > max {
        gst::warning!(CAT, "{} {field}; the protocol carries {max}: the rest are not sent", array.len());
    }
    array.iter().take(max).map(|v| v.get::<gst::Structure>().map_err(|_| format!("'{field}' holds a non-structure"))).collect()
}

fn field<'a, T: glib::value::FromValue<'a>>(s: &'a gst::StructureRef, name: &str) -> Result<T, String> {
    s.get::<T>(name).map_err(|e| format!("{}: {e}", s.name()))
}

fn extra(s: &gst::StructureRef, what: &str) -> Option<CString> {
    s.get::<gst::Structure>("xtraparams").ok().map(|x| structure_string(&x, what))
}

/// The inverse of [`classification_structure`].
fn class_from_structure(s: &gst::StructureRef) -> Result<ClassMeta, String> {
    let labels = structures(s, "labels", MAX_CLASS_LABELS)?
        .iter()
        .map(|l| {
            Ok(ClassLabel {
                name: c_string_for(field::<&str>(l, "name")?, NAME_CAPACITY, "label name"),
                confidence: field(l, "confidence")?,
                color: field(l, "color")?,
                xtraparams: extra(l, "label xtraparams"),
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(ClassMeta { id: field(s, "id")?, parent_id: field(s, "parent-id")?, labels })
}

/// The inverse of [`landmarks_structure`].
fn landmarks_from_structure(s: &gst::StructureRef) -> Result<LandmarksMeta, String> {
    let keypoints = structures(s, "keypoints", MAX_KEYPOINTS)?
        .iter()
        .map(|k| {
            Ok(Keypoint {
                name: c_string_for(field::<&str>(k, "name")?, NAME_CAPACITY, "keypoint name"),
                confidence: field(k, "confidence")?,
                color: field(k, "color")?,
                x: field(k, "x")?,
                y: field(k, "y")?,
            })
        })
        .collect::<Result<_, String>>()?;
    let links = structures(s, "links", MAX_LINKS)?
        .iter()
        .map(|l| Ok(Link { s_kp_idx: field(l, "source")?, d_kp_idx: field(l, "destination")? }))
        .collect::<Result<_, String>>()?;
    Ok(LandmarksMeta {
        id: field(s, "id")?,
        parent_id: field(s, "parent-id")?,
        confidence: field(s, "confidence")?,
        keypoints,
        links,
        xtraparams: extra(s, "landmarks xtraparams"),
    })
}
