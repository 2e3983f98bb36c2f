//! Every payload of the wire protocol, with its packed layout (offsets from the spec's
//! table), decoding with the payload-local validation rules, and encoding.
//!
//! Arrays whose tail the deployed sender leaves uncleared (`buf_id`, tensor
//! `dimensions`) are kept whole, so that re-encoding a parsed payload gives back the
//! bytes that were received; only the first `n` entries mean anything.

use std::ffi::{CStr, CString};

use super::layout::{check_count, Reader, Writer};
use super::ProtocolError;

/// At most this many memory blocks (and so fds) per buffer.
pub const MAX_MEMORY_BLOCKS: usize = 10;
/// At most this many planes per video frame.
pub const MAX_PLANES: usize = 4;
/// At most this many dimensions per tensor.
pub const MAX_TENSOR_DIMENSIONS: usize = 8;
/// At most this many bytes of text per memory block.
pub const MAX_TEXT_LEN: usize = 1024;
/// Capacity of a label or keypoint name, NUL included.
pub const NAME_CAPACITY: usize = 32;
/// Capacity of a serialized-structure field (`det_meta`, `xtraparams`), NUL included.
pub const STRUCTURE_CAPACITY: usize = 256;
/// At most this many labels per classification meta.
pub const MAX_CLASS_LABELS: usize = 32;
/// At most this many keypoints, and links, per landmarks meta.
pub const MAX_KEYPOINTS: usize = 64;
pub const MAX_LINKS: usize = 64;
/// `GstClockTime` `NONE`, as timestamps carry it.
pub const CLOCK_TIME_NONE: u64 = u64::MAX;

/// The first field of every payload; it alone decides the payload's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Identity {
    Eos = 0,
    Disconnect = 1,
    BufferInfo = 2,
    Frame = 3,
    Tensor = 4,
    Text = 5,
    ReturnBuffer = 6,
    FdCount = 7,
    ProtectionMeta = 8,
    VideoRoiMeta = 9,
    VideoClassMeta = 10,
    VideoLmMeta = 11,
}

impl Identity {
    pub fn from_u32(value: u32) -> Option<Self> {
        use Identity::*;
        Some(match value {
            0 => Eos,
            1 => Disconnect,
            2 => BufferInfo,
            3 => Frame,
            4 => Tensor,
            5 => Text,
            6 => ReturnBuffer,
            7 => FdCount,
            8 => ProtectionMeta,
            9 => VideoRoiMeta,
            10 => VideoClassMeta,
            11 => VideoLmMeta,
            _ => return None,
        })
    }

    /// The payload's size in bytes, identity included.
    pub const fn payload_size(self) -> usize {
        match self {
            Identity::Eos | Identity::Disconnect => 4,
            Identity::BufferInfo => 72,
            Identity::Frame => 88,
            Identity::Tensor => 60,
            Identity::Text | Identity::ProtectionMeta => 1044,
            Identity::ReturnBuffer => 44,
            Identity::FdCount => 8,
            Identity::VideoRoiMeta => 588,
            Identity::VideoClassMeta => 9876,
            Identity::VideoLmMeta => 4140,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Identity::Eos => "EOS",
            Identity::Disconnect => "DISCONNECT",
            Identity::BufferInfo => "BUFFER_INFO",
            Identity::Frame => "FRAME",
            Identity::Tensor => "TENSOR",
            Identity::Text => "TEXT",
            Identity::ReturnBuffer => "RETURN_BUFFER",
            Identity::FdCount => "FD_COUNT",
            Identity::ProtectionMeta => "PROTECTION_META",
            Identity::VideoRoiMeta => "VIDEO_ROI_META",
            Identity::VideoClassMeta => "VIDEO_CLASS_META",
            Identity::VideoLmMeta => "VIDEO_LM_META",
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), *self as u32)
    }
}

/// A payload with a fixed identity and layout.
pub(crate) trait Payload: Sized {
    const IDENTITY: Identity;
    const SIZE: usize = Self::IDENTITY.payload_size();
    /// Decodes `bytes`, exactly `SIZE` long and starting with the identity.
    fn decode(bytes: Reader<'_>) -> Result<Self, ProtocolError>;
    /// Writes the fields after the identity into `out`, zero-filled and `SIZE` long.
    fn encode_fields(&self, out: &mut Writer<'_>);

    /// Appends the whole payload, identity first, to `record`.
    fn encode(&self, record: &mut Vec<u8>) {
        let start = record.len();
        record.resize(start + Self::SIZE, 0);
        let mut out = Writer(&mut record[start..]);
        out.u32(0, Self::IDENTITY as u32);
        self.encode_fields(&mut out);
    }
}

/// `FD_COUNT`: how many fds ride in `SCM_RIGHTS` with this record; in a return, how
/// many `buf_id`s follow (with no fds attached).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdCount {
    pub n_fds: i32,
}

impl Payload for FdCount {
    const IDENTITY: Identity = Identity::FdCount;
    fn decode(p: Reader<'_>) -> Result<Self, ProtocolError> {
        let n_fds = p.i32(4);
        if !(0..=MAX_MEMORY_BLOCKS as i32).contains(&n_fds) {
            return Err(ProtocolError::FdCountOutOfRange { n_fds });
        }
        Ok(FdCount { n_fds })
    }
    fn encode_fields(&self, out: &mut Writer<'_>) {
        out.i32(4, self.n_fds);
    }
}

/// `BUFFER_INFO`: the buffer's memory ids and timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferInfo {
    /// `buf_ids[i]` names memory block `i`: the sender's fd number for it (text: -1).
    /// Entries past the block count are whatever the sender left there.
    pub buf_ids: [i32; MAX_MEMORY_BLOCKS],
    /// Nanoseconds of the sender's running time; [`CLOCK_TIME_NONE`] when unset.
    pub pts: u64,
    pub dts: u64,
    pub duration: u64,
    /// True when the fds are pooled: sent once per `buf_id`, cached by the receiver.
    pub use_buffer_pool: bool,
}

impl Payload for BufferInfo {
    const IDENTITY: Identity = Identity::BufferInfo;
    fn decode(p: Reader<'_>) -> Result<Self, ProtocolError> {
        Ok(BufferInfo {
            buf_ids: p.i32s(4),
            pts: p.u64(44),
            dts: p.u64(52),
            duration: p.u64(60),
            use_buffer_pool: p.u32(68) != 0,
        })
    }
    fn encode_fields(&self, out: &mut Writer<'_>) {
        out.i32s(4, &self.buf_ids);
        out.u64(44, self.pts);
        out.u64(52, self.dts);
        out.u64(60, self.duration);
        out.u32(68, self.use_buffer_pool as u32);
    }
}

/// `FRAME`: one video memory block and its GstVideoMeta values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramePayload {
    pub width: u32,
    pub height: u32,
    /// A `GstVideoFormat` value (NV12 = 23).
    pub format: u32,
    pub n_planes: u32,
    pub offsets: [u64; MAX_PLANES],
    pub strides: [i32; MAX_PLANES],
    /// `GstVideoFrameFlags`.
    pub flags: u32,
    pub size: u64,
    pub maxsize: u64,
}

impl Payload for FramePayload {
    const IDENTITY: Identity = Identity::Frame;
    fn decode(p: Reader<'_>) -> Result<Self, ProtocolError> {
        let frame = FramePayload {
            width: p.u32(4),
            height: p.u32(8),
            format: p.u32(12),
            n_planes: p.u32(16),
            offsets: p.u64s(20),
            strides: p.i32s(52),
            flags: p.u32(68),
            size: p.u64(72),
            maxsize: p.u64(80),
        };
        if !(1..=MAX_PLANES as u32).contains(&frame.n_planes) {
            return Err(ProtocolError::PlaneCountOutOfRange { n_planes: frame.n_planes });
        }
        for (plane, &offset) in frame.planes_offsets().iter().enumerate() {
            if offset >= frame.size {
                return Err(ProtocolError::PlaneOffsetOutsideSize { plane, offset, size: frame.size });
            }
        }
        Ok(frame)
    }
    fn encode_fields(&self, out: &mut Writer<'_>) {
        out.u32s(4, &[self.width, self.height, self.format, self.n_planes]);
        out.u64s(20, &self.offsets);
        out.i32s(52, &self.strides);
        out.u32(68, self.flags);
        out.u64(72, self.size);
        out.u64(80, self.maxsize);
    }
}

impl FramePayload {
    /// The offsets of the planes in use.
    pub fn planes_offsets(&self) -> &[u64] {
        &self.offsets[..(self.n_planes as usize).min(MAX_PLANES)]
    }
    /// The strides of the planes in use.
    pub fn planes_strides(&self) -> &[i32] {
        &self.strides[..(self.n_planes as usize).min(MAX_PLANES)]
    }
}

/// Tensor element types, as both `TENSOR.type` and the caps' `type` field name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum TensorType {
    Unknown = 0,
    Int8 = 1,
    Uint8 = 2,
    Int16 = 3,
    Uint16 = 4,
    Int32 = 5,
    Uint32 = 6,
    Int64 = 7,
    Uint64 = 8,
    Float16 = 9,
    Float32 = 10,
}

impl TensorType {
    pub fn from_u32(value: u32) -> Option<Self> {
        use TensorType::*;
        [Unknown, Int8, Uint8, Int16, Uint16, Int32, Uint32, Int64, Uint64, Float16, Float32]
            .get(value as usize)
            .copied()
    }
    /// The name the caps use (`type=(string)UINT8`).
    pub fn name(self) -> &'static str {
        self.c_name().to_str().expect("ASCII names")
    }
    /// The same name, NUL-terminated for C.
    pub fn c_name(self) -> &'static CStr {
        const NAMES: [&CStr; 11] = [
            c"UNKNOWN", c"INT8", c"UINT8", c"INT16", c"UINT16", c"INT32", c"UINT32", c"INT64", c"UINT64", c"FLOAT16",
            c"FLOAT32",
        ];
        NAMES[self as usize]
    }
}

/// `TENSOR`: one tensor's memory block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorPayload {
    /// A [`TensorType`] value; unknown values are passed on as they came.
    pub tensor_type: u32,
    pub n_dimensions: u32,
    /// Entries past `n_dimensions` are whatever the sender left there.
    pub dimensions: [u32; MAX_TENSOR_DIMENSIONS],
    pub size: u64,
    pub maxsize: u64,
}

impl Payload for TensorPayload {
    const IDENTITY: Identity = Identity::Tensor;
    fn decode(p: Reader<'_>) -> Result<Self, ProtocolError> {
        let tensor = TensorPayload {
            tensor_type: p.u32(4),
            n_dimensions: p.u32(8),
            dimensions: p.u32s(12),
            size: p.u64(44),
            maxsize: p.u64(52),
        };
        if tensor.n_dimensions as usize > MAX_TENSOR_DIMENSIONS {
            return Err(ProtocolError::TooManyDimensions { n_dimensions: tensor.n_dimensions });
        }
        Ok(tensor)
    }
    fn encode_fields(&self, out: &mut Writer<'_>) {
        out.u32s(4, &[self.tensor_type, self.n_dimensions]);
        out.u32s(12, &self.dimensions);
        out.u64(44, self.size);
        out.u64(52, self.maxsize);
    }
}

impl TensorPayload {
    /// The dimensions in use.
    pub fn used_dimensions(&self) -> &[u32] {
        &self.dimensions[..(self.n_dimensions as usize).min(MAX_TENSOR_DIMENSIONS)]
    }
}

/// `TEXT`: a text memory block carried inline (no fd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextPayload {
    /// The text's bytes, `size` of them; not NUL-terminated on the wire when 1024 long.
    pub contents: Vec<u8>,
    pub maxsize: u64,
}

impl Payload for TextPayload {
    const IDENTITY: Identity = Identity::Text;
    fn decode(p: Reader<'_>) -> Result<Self, ProtocolError> {
        let size = p.u64(1028);
        let maxsize = p.u64(1036);
        if size > MAX_TEXT_LEN as u64 {
            return Err(ProtocolError::TextTooLong { size });
        }
        Ok(TextPayload { contents: p.bytes(4, size as usize).to_vec(), maxsize })
    }
    fn encode_fields(&self, out: &mut Writer<'_>) {
        out.bytes(4, &self.contents[..self.contents.len().min(MAX_TEXT_LEN)]);
        out.u64(1028, self.size());
        out.u64(1036, self.maxsize);
    }
}

impl TextPayload {
    pub fn size(&self) -> u64 {
        self.contents.len().min(MAX_TEXT_LEN) as u64
    }
}

/// `PROTECTION_META`: a `GstProtectionMeta`'s info, as a serialized GstStructure in the
/// TEXT layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectionMeta {
    pub structure: CString,
    pub size: u64,
    pub maxsize: u64,
}

impl Payload for ProtectionMeta {
    const IDENTITY: Identity = Identity::ProtectionMeta;
    fn decode(p: Reader<'_>) -> Result<Self, ProtocolError> {
        let size = p.u64(1028);
        check_count("PROTECTION_META.size", size, MAX_TEXT_LEN)?;
        Ok(ProtectionMeta {
            structure: p.c_string(4, MAX_TEXT_LEN, "PROTECTION_META.contents")?,
            size,
            maxsize: p.u64(1036),
        })
    }
    fn encode_fields(&self, out: &mut Writer<'_>) {
        out.c_string(4, MAX_TEXT_LEN, &self.structure);
        out.u64(1028, self.size);
        out.u64(1036, self.maxsize);
    }
}

/// `RETURN_BUFFER`: the `buf_id`s the receiver is done with (count in the FD_COUNT
/// before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReturnBuffer {
    /// Entries past the count are meaningless (the deployed receiver leaves garbage).
    pub buf_ids: [i32; MAX_MEMORY_BLOCKS],
}

impl Payload for ReturnBuffer {
    const IDENTITY: Identity = Identity::ReturnBuffer;
    fn decode(p: Reader<'_>) -> Result<Self, ProtocolError> {
        Ok(ReturnBuffer { buf_ids: p.i32s(4) })
    }
    fn encode_fields(&self, out: &mut Writer<'_>) {
        out.i32s(4, &self.buf_ids);
    }
}

/// `VIDEO_ROI_META`: one region of interest (GstVideoRegionOfInterestMeta).
#[derive(Debug, Clone, PartialEq)]
pub struct RoiMeta {
    pub label: CString,
    pub id: i32,
    pub parent_id: i32,
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
    /// The detection parameters, a serialized GstStructure (e.g. `ObjectDetection, ...`).
    pub det_meta: Option<CString>,
    /// Extra parameters, a serialized GstStructure.
    pub xtraparams: Option<CString>,
}

impl Payload for RoiMeta {
    const IDENTITY: Identity = Identity::VideoRoiMeta;
    fn decode(p: Reader<'_>) -> Result<Self, ProtocolError> {
        Ok(RoiMeta {
            label: p.c_string(4, NAME_CAPACITY, "VIDEO_ROI_META.label")?,
            id: p.i32(36),
            parent_id: p.i32(40),
            x: p.u32(44),
            y: p.u32(48),
            w: p.u32(52),
            h: p.u32(56),
            det_meta: p.optional_c_string(60, STRUCTURE_CAPACITY, 316, "VIDEO_ROI_META.det_meta")?,
            xtraparams: p.optional_c_string(324, STRUCTURE_CAPACITY, 580, "VIDEO_ROI_META.xtraparams")?,
        })
    }
    fn encode_fields(&self, out: &mut Writer<'_>) {
        out.c_string(4, NAME_CAPACITY, &self.label);
        out.i32s(36, &[self.id, self.parent_id]);
        out.u32s(44, &[self.x, self.y, self.w, self.h]);
        out.optional_c_string(60, STRUCTURE_CAPACITY, 316, self.det_meta.as_ref());
        out.optional_c_string(324, STRUCTURE_CAPACITY, 580, self.xtraparams.as_ref());
    }
}

/// One label of a classification meta.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassLabel {
    pub name: CString,
    pub confidence: f64,
    /// 0xRRGGBBAA.
    pub color: u32,
    pub xtraparams: Option<CString>,
}

const CLASS_LABEL_SIZE: usize = 308;

/// `VIDEO_CLASS_META`: an image classification result.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassMeta {
    pub id: u32,
    pub parent_id: i32,
    /// The labels in use (at most [`MAX_CLASS_LABELS`]).
    pub labels: Vec<ClassLabel>,
}

impl Payload for ClassMeta {
    const IDENTITY: Identity = Identity::VideoClassMeta;
    fn decode(p: Reader<'_>) -> Result<Self, ProtocolError> {
        let n_labels = check_count("VIDEO_CLASS_META.size", p.u64(9868), MAX_CLASS_LABELS)?;
        let labels = (0..n_labels)
            .map(|i| {
                let l = Reader(p.bytes(12 + i * CLASS_LABEL_SIZE, CLASS_LABEL_SIZE));
                Ok(ClassLabel {
                    name: l.c_string(0, NAME_CAPACITY, "VIDEO_CLASS_META.labels.name")?,
                    confidence: l.f64(32),
                    color: l.u32(40),
                    xtraparams: l.optional_c_string(
                        44,
                        STRUCTURE_CAPACITY,
                        300,
                        "VIDEO_CLASS_META.labels.xtraparams",
                    )?,
                })
            })
            .collect::<Result<_, ProtocolError>>()?;
        Ok(ClassMeta { id: p.u32(4), parent_id: p.i32(8), labels })
    }
    fn encode_fields(&self, out: &mut Writer<'_>) {
        out.u32(4, self.id);
        out.i32(8, self.parent_id);
        let labels = &self.labels[..self.labels.len().min(MAX_CLASS_LABELS)];
        for (i, label) in labels.iter().enumerate() {
            let mut l = Writer(&mut out.0[12 + i * CLASS_LABEL_SIZE..][..CLASS_LABEL_SIZE]);
            l.c_string(0, NAME_CAPACITY, &label.name);
            l.f64(32, label.confidence);
            l.u32(40, label.color);
            l.optional_c_string(44, STRUCTURE_CAPACITY, 300, label.xtraparams.as_ref());
        }
        out.u64(9868, labels.len() as u64);
    }
}

/// One keypoint of a landmarks meta.
#[derive(Debug, Clone, PartialEq)]
pub struct Keypoint {
    pub name: CString,
    pub confidence: f64,
    pub color: u32,
    pub x: u32,
    pub y: u32,
}

const KEYPOINT_SIZE: usize = 52;

/// A link between two keypoints, by their indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub s_kp_idx: u32,
    pub d_kp_idx: u32,
}

/// `VIDEO_LM_META`: a pose or landmarks result.
#[derive(Debug, Clone, PartialEq)]
pub struct LandmarksMeta {
    pub id: u32,
    pub parent_id: i32,
    pub confidence: f64,
    pub keypoints: Vec<Keypoint>,
    /// Every link's indices lie inside `keypoints`.
    pub links: Vec<Link>,
    pub xtraparams: Option<CString>,
}

impl Payload for LandmarksMeta {
    const IDENTITY: Identity = Identity::VideoLmMeta;
    fn decode(p: Reader<'_>) -> Result<Self, ProtocolError> {
        let n_keypoints = check_count("VIDEO_LM_META.kps_size", p.u64(3348), MAX_KEYPOINTS)?;
        let n_links = check_count("VIDEO_LM_META.links_size", p.u64(3868), MAX_LINKS)?;
        let keypoints = (0..n_keypoints)
            .map(|i| {
                let k = Reader(p.bytes(20 + i * KEYPOINT_SIZE, KEYPOINT_SIZE));
                Ok(Keypoint {
                    name: k.c_string(0, NAME_CAPACITY, "VIDEO_LM_META.kps.name")?,
                    confidence: k.f64(32),
                    color: k.u32(40),
                    x: k.u32(44),
                    y: k.u32(48),
                })
            })
            .collect::<Result<_, ProtocolError>>()?;
        let links = (0..n_links)
            .map(|i| {
                let link = Link { s_kp_idx: p.u32(3356 + 8 * i), d_kp_idx: p.u32(3360 + 8 * i) };
                let out_of_range = |idx: u32| idx as usize >= n_keypoints;
                if out_of_range(link.s_kp_idx) || out_of_range(link.d_kp_idx) {
                    return Err(ProtocolError::LinkPastKeypoints { link: i, n_keypoints });
                }
                Ok(link)
            })
            .collect::<Result<_, ProtocolError>>()?;
        Ok(LandmarksMeta {
            id: p.u32(4),
            parent_id: p.i32(8),
            confidence: p.f64(12),
            keypoints,
            links,
            xtraparams: p.optional_c_string(3876, STRUCTURE_CAPACITY, 4132, "VIDEO_LM_META.xtraparams")?,
        })
    }
    fn encode_fields(&self, out: &mut Writer<'_>) {
        out.u32(4, self.id);
        out.i32(8, self.parent_id);
        out.f64(12, self.confidence);
        let keypoints = &self.keypoints[..self.keypoints.len().min(MAX_KEYPOINTS)];
        for (i, kp) in keypoints.iter().enumerate() {
            let mut k = Writer(&mut out.0[20 + i * KEYPOINT_SIZE..][..KEYPOINT_SIZE]);
            k.c_string(0, NAME_CAPACITY, &kp.name);
            k.f64(32, kp.confidence);
            k.u32s(40, &[kp.color, kp.x, kp.y]);
        }
        out.u64(3348, keypoints.len() as u64);
        let links = &self.links[..self.links.len().min(MAX_LINKS)];
        for (i, link) in links.iter().enumerate() {
            out.u32s(3356 + 8 * i, &[link.s_kp_idx, link.d_kp_idx]);
        }
        out.u64(3868, links.len() as u64);
        out.optional_c_string(3876, STRUCTURE_CAPACITY, 4132, self.xtraparams.as_ref());
    }
}
