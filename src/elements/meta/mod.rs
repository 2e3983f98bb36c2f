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
//! By kind: [`registry`] finds the registrations (in the process, or in a vendor library
//! already loaded), [`tensor`] the tensor metas, [`vendor`] the vendor's layouts (those of
//! gst-plugins-imsdk) and their classification/landmarks metas, [`custom`] the metas that
//! carry structures (ROI, protection, custom classification/landmarks).

mod custom;
mod registry;
mod tensor;
pub mod vendor;

use std::ffi::{CStr, CString};
use std::str::FromStr;
use std::sync::LazyLock;

use custom::{class_from_structure, landmarks_from_structure};
use registry::{is_meta_of, registered_classification, registered_landmarks};
use vendor::{read_vendor_classification, read_vendor_landmarks, VendorClassificationMeta, VendorLandmarksMeta};

use crate::protocol::{
    ClassMeta, LandmarksMeta, Metas, ProtectionMeta, RoiMeta, MAX_TEXT_LEN, NAME_CAPACITY, STRUCTURE_CAPACITY,
};

pub(crate) use custom::{add_protection, add_roi};
pub(crate) use registry::classification_metas;
pub(crate) use tensor::{add_tensor, sent_tensor_metas};

static CAT: LazyLock<gst::DebugCategory> =
    LazyLock::new(|| gst::DebugCategory::new("qtisocketmeta", gst::DebugColorFlags::empty(), Some("qtisocket metas")));

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

/// A classification result: the vendor's `GstVideoClassificationMeta` when available,
/// else a `QtiSocketClassificationMeta` custom meta.
pub(crate) fn add_classification(buffer: &mut gst::BufferRef, class: &ClassMeta) {
    match registry::classification_info() {
        Some(info) => vendor::add_classification(buffer, info, class),
        None => custom::add_custom(buffer, custom::CLASSIFICATION_CUSTOM_META, custom::classification_structure(class)),
    }
}

/// Landmarks: the vendor's `GstVideoLandmarksMeta` when available, else a
/// `QtiSocketLandmarksMeta` custom meta.
pub(crate) fn add_landmarks(buffer: &mut gst::BufferRef, landmarks: &LandmarksMeta) {
    match registry::landmarks_info() {
        Some(info) => vendor::add_landmarks(buffer, info, landmarks),
        None => custom::add_custom(buffer, custom::LANDMARKS_CUSTOM_META, custom::landmarks_structure(landmarks)),
    }
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
            metas
                .class
                .push(read_vendor_classification(unsafe { &*(meta.as_ptr() as *const VendorClassificationMeta) }));
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
