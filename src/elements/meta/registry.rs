//! Finding the meta registrations: the infos already registered in this process, the
//! vendor's libraries when they are already loaded (never loaded by us), and adding a meta
//! of a found info through its layout.

use std::ffi::CStr;
use std::ptr;

use super::vendor::{VendorClassificationMeta, VendorLandmarksMeta};

/// Libraries of the vendor that register the metas; looked for among those already
/// loaded (`RTLD_NOLOAD`), never loaded by us.
pub(super) const ML_LIBRARIES: &[&CStr] = &[c"libgstqtimlbase.so.1", c"libgstqtimlbase.so"];
const VIDEO_LIBRARIES: &[&CStr] = &[c"libgstqtivideobase.so", c"libgstqtivideobase.so.1"];

/// A registered meta's info. Meta infos are registered once and never freed.
#[derive(Clone, Copy, Debug)]
pub(super) struct MetaInfo(pub(super) *const gst::ffi::GstMetaInfo);
// SAFETY: a GstMetaInfo is immutable once registered and lives for the whole process.
unsafe impl Send for MetaInfo {}
// SAFETY: as above.
unsafe impl Sync for MetaInfo {}

impl MetaInfo {
    pub(super) fn size(self) -> usize {
        // SAFETY: the pointer came from gst_meta_register/gst_meta_get_info: valid for ever.
        unsafe { (*self.0).size }
    }
}

/// The info registered in this process under `implementation`, if any.
pub(super) fn registered(implementation: &CStr) -> Option<MetaInfo> {
    // SAFETY: a NUL-terminated name; gst_meta_get_info returns NULL or a static info.
    let info = unsafe { gst::ffi::gst_meta_get_info(implementation.as_ptr()) };
    (!info.is_null()).then_some(MetaInfo(info))
}

/// Calls the vendor's `const GstMetaInfo *symbol(void)` if the vendor library is already
/// in the process (which registers the meta if it was not yet).
pub(super) fn vendor_info(libraries: &[&CStr], symbol: &CStr) -> Option<MetaInfo> {
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
pub(super) unsafe fn add_raw<T>(buffer: &mut gst::BufferRef, info: MetaInfo) -> Option<&mut T> {
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

/// Whether `meta` was registered with `info`.
pub(super) fn is_meta_of(meta: &gst::MetaRef<'_, gst::Meta>, info: Option<MetaInfo>) -> bool {
    // SAFETY: `as_ptr` is a valid GstMeta of a buffer we hold; `info` is read only.
    info.is_some_and(|info| unsafe { (*meta.as_ptr()).info } == info.0)
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
pub(super) fn classification_info() -> Option<MetaInfo> {
    registered_classification()
        .or_else(|| vendor_info(VIDEO_LIBRARIES, c"gst_video_classification_meta_get_info"))
        .filter(|info| info.size() >= std::mem::size_of::<VendorClassificationMeta>())
}

pub(super) fn landmarks_info() -> Option<MetaInfo> {
    registered_landmarks()
        .or_else(|| vendor_info(VIDEO_LIBRARIES, c"gst_video_landmarks_meta_get_info"))
        .filter(|info| info.size() >= std::mem::size_of::<VendorLandmarksMeta>())
}

// A meta found on a buffer is registered: reading one needs no look into libraries (a
// `dlopen`, far too slow for every buffer).
pub(super) fn registered_classification() -> Option<MetaInfo> {
    registered(c"GstVideoClassificationMeta")
        .filter(|info| info.size() >= std::mem::size_of::<VendorClassificationMeta>())
}

pub(super) fn registered_landmarks() -> Option<MetaInfo> {
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
