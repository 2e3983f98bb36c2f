//! Metas that carry GstStructures, both ways: regions of interest
//! (`GstVideoRegionOfInterestMeta`, with `det_meta` and `xtraparams` as parameter
//! structures), protection (`GstProtectionMeta`), and classification results and landmarks
//! as the custom metas `QtiSocketClassificationMeta` / `QtiSocketLandmarksMeta` (structures
//! `VideoClassification` / `VideoLandmarks`) when the vendor's metas are not available.

use std::ffi::CString;
use std::str::FromStr;
use std::sync::OnceLock;

use gst::glib;

use super::{c_string_for, structure, structure_string, CAT};
use crate::protocol::{
    ClassLabel, ClassMeta, Keypoint, LandmarksMeta, Link, ProtectionMeta, RoiMeta, MAX_CLASS_LABELS, MAX_KEYPOINTS,
    MAX_LINKS, NAME_CAPACITY,
};

/// Name of the custom meta that carries a classification result when the vendor meta is
/// not available; its structure is named `VideoClassification`.
pub(crate) const CLASSIFICATION_CUSTOM_META: &str = "QtiSocketClassificationMeta";
/// Name of the custom meta that carries landmarks when the vendor meta is not available;
/// its structure is named `VideoLandmarks`.
pub(crate) const LANDMARKS_CUSTOM_META: &str = "QtiSocketLandmarksMeta";

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

pub(super) fn add_custom(buffer: &mut gst::BufferRef, name: &str, s: gst::Structure) {
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

fn structures(s: &gst::StructureRef, field: &str, max: usize) -> Result<Vec<gst::Structure>, String> {
    let array = s.get::<gst::Array>(field).map_err(|_| format!("no array field '{field}'"))?;
    if array.len() > max {
        gst::warning!(CAT, "{} {field}; the protocol carries {max}: the rest are not sent", array.len());
    }
    array
        .iter()
        .take(max)
        .map(|v| v.get::<gst::Structure>().map_err(|_| format!("'{field}' holds a non-structure")))
        .collect()
}

fn field<'a, T: glib::value::FromValue<'a>>(s: &'a gst::StructureRef, name: &str) -> Result<T, String> {
    s.get::<T>(name).map_err(|e| format!("{}: {e}", s.name()))
}

fn extra(s: &gst::StructureRef, what: &str) -> Option<CString> {
    s.get::<gst::Structure>("xtraparams").ok().map(|x| structure_string(&x, what))
}

/// The inverse of [`classification_structure`].
pub(super) fn class_from_structure(s: &gst::StructureRef) -> Result<ClassMeta, String> {
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
pub(super) fn landmarks_from_structure(s: &gst::StructureRef) -> Result<LandmarksMeta, String> {
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
