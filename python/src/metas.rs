//! The metas a buffer carries (regions of interest, classifications, landmarks,
//! protection) as plain Python objects, both ways.

use std::ffi::{CStr, CString};

use gstqtisocket::protocol::{
    ClassLabel as WireLabel, ClassMeta, Keypoint as WireKeypoint, LandmarksMeta, Link, Metas, ProtectionMeta, RoiMeta,
    MAX_CLASS_LABELS, MAX_KEYPOINTS, MAX_LINKS, MAX_TEXT_LEN, NAME_CAPACITY, STRUCTURE_CAPACITY,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

fn text(s: &CStr) -> String {
    s.to_string_lossy().into_owned()
}

fn optional_text(s: &Option<CString>) -> Option<String> {
    s.as_deref().map(text)
}

/// A Python string as a C string of at most `capacity - 1` bytes, or a `ValueError`
/// naming `field`.
fn c_string(field: &str, value: &str, capacity: usize) -> PyResult<CString> {
    if value.len() >= capacity {
        return Err(PyValueError::new_err(format!(
            "{field} is {} bytes long (UTF-8); at most {} fit",
            value.len(),
            capacity - 1
        )));
    }
    CString::new(value).map_err(|_| PyValueError::new_err(format!("{field} contains a NUL character")))
}

fn optional_c_string(field: &str, value: &Option<String>, capacity: usize) -> PyResult<Option<CString>> {
    value.as_deref().map(|v| c_string(field, v, capacity)).transpose()
}

fn repr_str(s: &str) -> String {
    format!("{s:?}")
}

fn repr_opt(s: &Option<String>) -> String {
    s.as_deref().map_or("None".into(), repr_str)
}

/// A region of interest (GstVideoRegionOfInterestMeta): a labelled rectangle, in pixels.
///
/// `det_meta` and `xtraparams` are serialized GstStructures, e.g.
/// ``"ObjectDetection, confidence=(double)87.5, color=(uint)4278190335;"``.
#[pyclass(module = "qsock", name = "RegionOfInterest", eq, get_all, set_all, from_py_object)]
#[derive(Debug, Clone, PartialEq)]
pub struct PyRoi {
    pub label: String,
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
    pub id: i32,
    pub parent_id: i32,
    pub det_meta: Option<String>,
    pub xtraparams: Option<String>,
}

#[pymethods]
impl PyRoi {
    #[new]
    #[pyo3(signature = (label, x, y, w, h, *, id=0, parent_id=-1, det_meta=None, xtraparams=None),
            text_signature = "(label, x, y, w, h, *, id=0, parent_id=-1, det_meta=None, xtraparams=None)")]
    #[allow(clippy::too_many_arguments)]
    fn new(
        label: String,
        x: u32,
        y: u32,
        w: u32,
        h: u32,
        id: i32,
        parent_id: i32,
        det_meta: Option<String>,
        xtraparams: Option<String>,
    ) -> Self {
        PyRoi { label, x, y, w, h, id, parent_id, det_meta, xtraparams }
    }

    fn __repr__(&self) -> String {
        format!(
            "RegionOfInterest({}, x={}, y={}, w={}, h={}, id={}, parent_id={}, det_meta={}, xtraparams={})",
            repr_str(&self.label),
            self.x,
            self.y,
            self.w,
            self.h,
            self.id,
            self.parent_id,
            repr_opt(&self.det_meta),
            repr_opt(&self.xtraparams)
        )
    }
}

impl PyRoi {
    fn from_wire(r: &RoiMeta) -> Self {
        PyRoi {
            label: text(&r.label),
            x: r.x,
            y: r.y,
            w: r.w,
            h: r.h,
            id: r.id,
            parent_id: r.parent_id,
            det_meta: optional_text(&r.det_meta),
            xtraparams: optional_text(&r.xtraparams),
        }
    }
    fn to_wire(&self) -> PyResult<RoiMeta> {
        Ok(RoiMeta {
            label: c_string("RegionOfInterest.label", &self.label, NAME_CAPACITY)?,
            id: self.id,
            parent_id: self.parent_id,
            x: self.x,
            y: self.y,
            w: self.w,
            h: self.h,
            det_meta: optional_c_string("RegionOfInterest.det_meta", &self.det_meta, STRUCTURE_CAPACITY)?,
            xtraparams: optional_c_string("RegionOfInterest.xtraparams", &self.xtraparams, STRUCTURE_CAPACITY)?,
        })
    }
}

/// One label of a classification: a name, its confidence and a colour (0xRRGGBBAA).
#[pyclass(module = "qsock", name = "ClassLabel", eq, get_all, set_all, from_py_object)]
#[derive(Debug, Clone, PartialEq)]
pub struct PyClassLabel {
    pub name: String,
    pub confidence: f64,
    pub color: u32,
    pub xtraparams: Option<String>,
}

#[pymethods]
impl PyClassLabel {
    #[new]
    #[pyo3(signature = (name, confidence=0.0, *, color=0, xtraparams=None))]
    fn new(name: String, confidence: f64, color: u32, xtraparams: Option<String>) -> Self {
        PyClassLabel { name, confidence, color, xtraparams }
    }

    fn __repr__(&self) -> String {
        format!(
            "ClassLabel({}, {}, color=0x{:08x}, xtraparams={})",
            repr_str(&self.name),
            self.confidence,
            self.color,
            repr_opt(&self.xtraparams)
        )
    }
}

/// An image classification result: up to 32 labels.
#[pyclass(module = "qsock", name = "Classification", eq, get_all, set_all, from_py_object)]
#[derive(Debug, Clone, PartialEq)]
pub struct PyClassification {
    pub labels: Vec<PyClassLabel>,
    pub id: u32,
    pub parent_id: i32,
}

#[pymethods]
impl PyClassification {
    #[new]
    #[pyo3(signature = (labels, *, id=0, parent_id=-1), text_signature = "(labels, *, id=0, parent_id=-1)")]
    fn new(labels: Vec<PyClassLabel>, id: u32, parent_id: i32) -> Self {
        PyClassification { labels, id, parent_id }
    }

    fn __repr__(&self) -> String {
        let labels: Vec<String> = self.labels.iter().map(PyClassLabel::__repr__).collect();
        format!("Classification([{}], id={}, parent_id={})", labels.join(", "), self.id, self.parent_id)
    }
}

impl PyClassification {
    fn from_wire(c: &ClassMeta) -> Self {
        let labels = c
            .labels
            .iter()
            .map(|l| PyClassLabel {
                name: text(&l.name),
                confidence: l.confidence,
                color: l.color,
                xtraparams: optional_text(&l.xtraparams),
            })
            .collect();
        PyClassification { labels, id: c.id, parent_id: c.parent_id }
    }
    fn to_wire(&self) -> PyResult<ClassMeta> {
        if self.labels.len() > MAX_CLASS_LABELS {
            return Err(PyValueError::new_err(format!(
                "a Classification holds at most {MAX_CLASS_LABELS} labels, got {}",
                self.labels.len()
            )));
        }
        let labels = self
            .labels
            .iter()
            .map(|l| {
                Ok(WireLabel {
                    name: c_string("ClassLabel.name", &l.name, NAME_CAPACITY)?,
                    confidence: l.confidence,
                    color: l.color,
                    xtraparams: optional_c_string("ClassLabel.xtraparams", &l.xtraparams, STRUCTURE_CAPACITY)?,
                })
            })
            .collect::<PyResult<_>>()?;
        Ok(ClassMeta { id: self.id, parent_id: self.parent_id, labels })
    }
}

/// One keypoint of a landmarks result, in pixels.
#[pyclass(module = "qsock", name = "Keypoint", eq, get_all, set_all, from_py_object)]
#[derive(Debug, Clone, PartialEq)]
pub struct PyKeypoint {
    pub name: String,
    pub x: u32,
    pub y: u32,
    pub confidence: f64,
    pub color: u32,
}

#[pymethods]
impl PyKeypoint {
    #[new]
    #[pyo3(signature = (name, x, y, confidence=0.0, *, color=0))]
    fn new(name: String, x: u32, y: u32, confidence: f64, color: u32) -> Self {
        PyKeypoint { name, x, y, confidence, color }
    }

    fn __repr__(&self) -> String {
        format!(
            "Keypoint({}, {}, {}, {}, color=0x{:08x})",
            repr_str(&self.name),
            self.x,
            self.y,
            self.confidence,
            self.color
        )
    }
}

/// A pose or landmarks result: up to 64 keypoints and 64 links, each link a pair of
/// keypoint indices.
#[pyclass(module = "qsock", name = "Landmarks", eq, get_all, set_all, from_py_object)]
#[derive(Debug, Clone, PartialEq)]
pub struct PyLandmarks {
    pub keypoints: Vec<PyKeypoint>,
    pub links: Vec<(u32, u32)>,
    pub confidence: f64,
    pub id: u32,
    pub parent_id: i32,
    pub xtraparams: Option<String>,
}

#[pymethods]
impl PyLandmarks {
    #[new]
    #[pyo3(signature = (keypoints, links=Vec::new(), confidence=0.0, *, id=0, parent_id=-1, xtraparams=None),
            text_signature = "(keypoints, links=(), confidence=0.0, *, id=0, parent_id=-1, xtraparams=None)")]
    fn new(
        keypoints: Vec<PyKeypoint>,
        links: Vec<(u32, u32)>,
        confidence: f64,
        id: u32,
        parent_id: i32,
        xtraparams: Option<String>,
    ) -> Self {
        PyLandmarks { keypoints, links, confidence, id, parent_id, xtraparams }
    }

    fn __repr__(&self) -> String {
        let keypoints: Vec<String> = self.keypoints.iter().map(PyKeypoint::__repr__).collect();
        format!(
            "Landmarks([{}], links={:?}, confidence={}, id={}, parent_id={}, xtraparams={})",
            keypoints.join(", "),
            self.links,
            self.confidence,
            self.id,
            self.parent_id,
            repr_opt(&self.xtraparams)
        )
    }
}

impl PyLandmarks {
    fn from_wire(l: &LandmarksMeta) -> Self {
        PyLandmarks {
            keypoints: l
                .keypoints
                .iter()
                .map(|k| PyKeypoint { name: text(&k.name), x: k.x, y: k.y, confidence: k.confidence, color: k.color })
                .collect(),
            links: l.links.iter().map(|k| (k.s_kp_idx, k.d_kp_idx)).collect(),
            confidence: l.confidence,
            id: l.id,
            parent_id: l.parent_id,
            xtraparams: optional_text(&l.xtraparams),
        }
    }
    fn to_wire(&self) -> PyResult<LandmarksMeta> {
        if self.keypoints.len() > MAX_KEYPOINTS || self.links.len() > MAX_LINKS {
            return Err(PyValueError::new_err(format!(
                "Landmarks hold at most {MAX_KEYPOINTS} keypoints and {MAX_LINKS} links, got {} and {}",
                self.keypoints.len(),
                self.links.len()
            )));
        }
        let n = self.keypoints.len() as u32;
        if let Some((i, link)) = self.links.iter().enumerate().find(|(_, (s, d))| *s >= n || *d >= n) {
            return Err(PyValueError::new_err(format!(
                "Landmarks link {i} {link:?} names a keypoint past the {n} keypoints"
            )));
        }
        let keypoints = self
            .keypoints
            .iter()
            .map(|k| {
                Ok(WireKeypoint {
                    name: c_string("Keypoint.name", &k.name, NAME_CAPACITY)?,
                    confidence: k.confidence,
                    color: k.color,
                    x: k.x,
                    y: k.y,
                })
            })
            .collect::<PyResult<_>>()?;
        Ok(LandmarksMeta {
            id: self.id,
            parent_id: self.parent_id,
            confidence: self.confidence,
            keypoints,
            links: self.links.iter().map(|&(s_kp_idx, d_kp_idx)| Link { s_kp_idx, d_kp_idx }).collect(),
            xtraparams: optional_c_string("Landmarks.xtraparams", &self.xtraparams, STRUCTURE_CAPACITY)?,
        })
    }
}

/// A GstProtectionMeta's info: a serialized GstStructure (at most 1023 bytes).
#[pyclass(module = "qsock", name = "Protection", eq, get_all, set_all, from_py_object)]
#[derive(Debug, Clone, PartialEq)]
pub struct PyProtection {
    pub structure: String,
}

#[pymethods]
impl PyProtection {
    #[new]
    fn new(structure: String) -> Self {
        PyProtection { structure }
    }

    fn __repr__(&self) -> String {
        format!("Protection({})", repr_str(&self.structure))
    }
}

/// A received buffer's metas as Python lists, in wire order.
pub struct PyMetas {
    pub protection: Vec<PyProtection>,
    pub roi: Vec<PyRoi>,
    pub class: Vec<PyClassification>,
    pub landmarks: Vec<PyLandmarks>,
}

pub fn from_wire(metas: &Metas) -> PyMetas {
    PyMetas {
        protection: metas.protection.iter().map(|p| PyProtection { structure: text(&p.structure) }).collect(),
        roi: metas.roi.iter().map(PyRoi::from_wire).collect(),
        class: metas.class.iter().map(PyClassification::from_wire).collect(),
        landmarks: metas.landmarks.iter().map(PyLandmarks::from_wire).collect(),
    }
}

/// `metas=[...]` of a send: any mix of the four meta classes, put in wire order.
pub fn to_wire(items: Option<&Bound<'_, PyAny>>) -> PyResult<Metas> {
    let mut metas = Metas::default();
    let Some(items) = items else { return Ok(metas) };
    for item in items.try_iter()? {
        let item = item?;
        if let Ok(roi) = item.cast::<PyRoi>() {
            metas.roi.push(roi.borrow().to_wire()?);
        } else if let Ok(class) = item.cast::<PyClassification>() {
            metas.class.push(class.borrow().to_wire()?);
        } else if let Ok(landmarks) = item.cast::<PyLandmarks>() {
            metas.landmarks.push(landmarks.borrow().to_wire()?);
        } else if let Ok(protection) = item.cast::<PyProtection>() {
            let structure = c_string("Protection.structure", &protection.borrow().structure, MAX_TEXT_LEN)?;
            let size = structure.as_bytes().len() as u64;
            metas.protection.push(ProtectionMeta { structure, size, maxsize: size });
        } else {
            return Err(PyTypeError::new_err(format!(
                "metas takes RegionOfInterest, Classification, Landmarks and Protection objects, not {}",
                item.get_type().name()?
            )));
        }
    }
    Ok(metas)
}
