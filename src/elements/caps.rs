//! Message formats <-> GstCaps, both directions.
//!
//! - Receiving (`qtisocketsrc`): a message's blocks give a [`FormatKey`], whose caps the
//!   element negotiates ([`FormatKey::caps`], completed by [`FormatKey::complete`] with the
//!   [`frame_rate`] of the message's duration); each FRAME block becomes a `GstVideoMeta`
//!   once its planes are checked to lie inside the block ([`add_video_meta`]).
//! - Sending (`qtisocketsink`): the negotiated caps give a [`Format`], from which (or from the
//!   buffer's `GstVideoMeta`) the FRAME, TENSOR and TEXT descriptions are made ([`frame_from`],
//!   [`Format::block_size`]).

use std::sync::LazyLock;

use gst::glib::translate::IntoGlib;

use crate::protocol::{
    DataMessage, FramePayload, MemoryBlock, TensorType, CLOCK_TIME_NONE, MAX_MEMORY_BLOCKS, MAX_PLANES,
    MAX_TENSOR_DIMENSIONS,
};

// ---------------------------------------------------------------------------------------
// Message -> caps (qtisocketsrc)

/// What a message describes, as `qtisocketsrc` derives its caps from it: one per distinct
/// format the sender sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FormatKey {
    Video { format: gst_video::VideoFormat, width: u32, height: u32 },
    Tensor { tensor_type: TensorType, dimensions: Vec<Vec<u32>> },
    Text,
}

impl FormatKey {
    pub(crate) fn of(message: &DataMessage) -> Result<FormatKey, String> {
        match &message.blocks[0] {
            MemoryBlock::Frame(first) => {
                let format = video_format(first.format)?;
                for (block, b) in message.blocks.iter().enumerate() {
                    if let MemoryBlock::Frame(f) = b {
                        if (f.format, f.width, f.height) != (first.format, first.width, first.height) {
                            return Err(format!("FRAME block {block} differs in format or size from block 0"));
                        }
                    }
                }
                Ok(FormatKey::Video { format, width: first.width, height: first.height })
            }
            MemoryBlock::Tensor(first) => {
                let tensor_type = TensorType::from_u32(first.tensor_type)
                    .ok_or_else(|| format!("TENSOR.type {} is not a known tensor type", first.tensor_type))?;
                let mut dimensions = Vec::with_capacity(message.blocks.len());
                for (block, b) in message.blocks.iter().enumerate() {
                    if let MemoryBlock::Tensor(t) = b {
                        if t.tensor_type != first.tensor_type {
                            return Err(format!(
                                "TENSOR block {block} is of type {} but block 0 of type {}: caps carry one type",
                                t.tensor_type, first.tensor_type
                            ));
                        }
                        dimensions.push(t.used_dimensions().to_vec());
                    }
                }
                Ok(FormatKey::Tensor { tensor_type, dimensions })
            }
            MemoryBlock::Text(_) => Ok(FormatKey::Text),
        }
    }

    /// The caps the messages describe; with `any_features`, usable with any memory features.
    pub(crate) fn caps(&self, any_features: bool) -> gst::Caps {
        let name = match self {
            FormatKey::Video { .. } => "video/x-raw",
            FormatKey::Tensor { .. } => "neural-network/tensors",
            FormatKey::Text => "text/x-raw",
        };
        let mut caps = gst::Caps::new_empty();
        let mut s = gst::Structure::new_empty(name);
        match self {
            FormatKey::Video { format, width, height } => {
                s.set("format", format.to_str());
                s.set("width", *width as i32);
                s.set("height", *height as i32);
            }
            FormatKey::Tensor { tensor_type, dimensions } => {
                s.set("type", tensor_type.name());
                let arrays = dimensions.iter().map(|d| gst::Array::new(d.iter().map(|&x| x as i32)));
                s.set("dimensions", gst::Array::new(arrays));
            }
            FormatKey::Text => {}
        }
        let features = any_features.then(gst::CapsFeatures::new_any);
        caps.get_mut().expect("new caps").append_structure_full(s, features);
        caps
    }

    /// Fills in what downstream left open, from the messages: frame rate (from the
    /// duration), pixel aspect ratio 1/1, text format utf8.
    pub(crate) fn complete(&self, s: &mut gst::Structure, rate: gst::Fraction) {
        match self {
            FormatKey::Video { .. } => {
                if s.has_field("framerate") {
                    s.fixate_field_nearest_fraction("framerate", rate);
                } else {
                    s.set("framerate", rate);
                }
                if s.has_field("pixel-aspect-ratio") {
                    s.fixate_field_nearest_fraction("pixel-aspect-ratio", gst::Fraction::new(1, 1));
                } else {
                    s.set("pixel-aspect-ratio", gst::Fraction::new(1, 1));
                }
            }
            FormatKey::Tensor { .. } => {
                if s.has_field("framerate") {
                    s.fixate_field_nearest_fraction("framerate", rate);
                }
            }
            FormatKey::Text => {
                if s.has_field("format") {
                    s.fixate_field_str("format", "utf8");
                } else {
                    s.set("format", "utf8");
                }
            }
        }
    }
}

/// 1 s / duration, as a fraction; 0/1 (variable) when the sender gives no duration.
pub(crate) fn frame_rate(duration_ns: u64) -> gst::Fraction {
    if duration_ns == 0 || duration_ns == CLOCK_TIME_NONE {
        return gst::Fraction::new(0, 1);
    }
    let rate = 1e9 / duration_ns as f64;
    // Prefer the usual rates: integers, and the NTSC ones (n*1000/1001).
    if (rate - rate.round()).abs() < 1e-3 && rate.round() <= i32::MAX as f64 {
        return gst::Fraction::new(rate.round() as i32, 1);
    }
    let ntsc = rate * 1.001;
    if (ntsc - ntsc.round()).abs() < 1e-3 && ntsc.round() * 1000.0 <= i32::MAX as f64 {
        return gst::Fraction::new(ntsc.round() as i32 * 1000, 1001);
    }
    gst::Fraction::approximate_f64(rate).unwrap_or_else(|| gst::Fraction::new(0, 1))
}

/// The `GstVideoFormat` named by a FRAME's `format`, if this GStreamer knows it as raw video.
fn video_format(value: u32) -> Result<gst_video::VideoFormat, String> {
    // Asked for every frame: GStreamer's list is walked once.
    static RAW: LazyLock<Vec<(u32, gst_video::VideoFormat)>> = LazyLock::new(|| {
        gst_video::VideoFormat::iter_raw().map(|f| (f.into_glib() as u32, f)).collect()
    });
    RAW.iter()
        .find_map(|&(raw, format)| (raw == value).then_some(format))
        .ok_or_else(|| format!("FRAME.format {value} is not a raw video format this GStreamer knows"))
}

/// A `GstVideoMeta` for a FRAME block starting at `base` in the buffer, after checking
/// that every plane lies inside the block (so no downstream element reads past it).
pub(crate) fn add_video_meta(
    b: &mut gst::BufferRef,
    frame: &FramePayload,
    base: u64,
    index: usize,
) -> Result<(), String> {
    let format = video_format(frame.format)?;
    let info = gst_video::VideoFormatInfo::from_format(format);
    if info.n_planes() != frame.n_planes {
        return Err(format!("FRAME: {} has {} planes, the message says {}", format, info.n_planes(), frame.n_planes));
    }
    if frame.width == 0 || frame.height == 0 {
        return Err(format!("FRAME: {}x{} is not a picture", frame.width, frame.height));
    }
    let strides = frame.planes_strides();
    for (plane, &stride) in strides.iter().enumerate() {
        let row = (0..info.n_components() as usize)
            .filter(|&c| info.plane()[c] as usize == plane)
            .map(|c| info.scale_width(c as u8, frame.width) as i64 * info.pixel_stride()[c] as i64)
            .max()
            .unwrap_or(0);
        if stride <= 0 || (!info.is_tiled() && (stride as i64) < row) {
            return Err(format!(
                "FRAME: plane {plane} stride {stride} is shorter than a row of {format} {}x{} ({row} bytes)",
                frame.width, frame.height
            ));
        }
    }
    let offsets: Vec<usize> = frame.planes_offsets().iter().map(|&o| (o + base) as usize).collect();
    let flags = gst_video::VideoFrameFlags::from_bits_truncate(frame.flags);
    let mut meta = gst_video::VideoMeta::add_full(b, flags, format, frame.width, frame.height, &offsets, strides)
        .map_err(|e| format!("FRAME: no video meta for it: {e}"))?;
    let sizes = meta.plane_size().map_err(|e| format!("FRAME: plane sizes unknown: {e}"))?;
    for (plane, &offset) in frame.planes_offsets().iter().enumerate() {
        if offset + sizes[plane] as u64 > frame.size {
            return Err(format!(
                "FRAME: plane {plane} ({} bytes from offset {offset}) runs past the block's size {}",
                sizes[plane], frame.size
            ));
        }
    }
    // SAFETY: a GstVideoMeta we just added to a buffer we hold mutably; `id` is plain data.
    unsafe { (*(meta.as_mut_ptr())).id = index as i32 };
    let mut buffer_flags = gst::BufferFlags::empty();
    for (frame_flag, buffer_flag) in [
        (gst_video::VideoFrameFlags::INTERLACED, gst_video::VideoBufferFlags::INTERLACED),
        (gst_video::VideoFrameFlags::TFF, gst_video::VideoBufferFlags::TFF),
        (gst_video::VideoFrameFlags::RFF, gst_video::VideoBufferFlags::RFF),
        (gst_video::VideoFrameFlags::ONEFIELD, gst_video::VideoBufferFlags::ONEFIELD),
    ] {
        if flags.contains(frame_flag) {
            buffer_flags |= gst::BufferFlags::from_bits_truncate(buffer_flag.bits());
        }
    }
    if !buffer_flags.is_empty() {
        b.set_flags(buffer_flags);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Caps -> message (qtisocketsink)

/// What the negotiated caps say the buffers hold.
#[derive(Debug, Clone)]
pub(crate) enum Format {
    Video(gst_video::VideoInfo),
    Tensors { tensor_type: TensorType, dimensions: Vec<Vec<u32>> },
    Text,
}

impl Format {
    pub(crate) fn from_caps(caps: &gst::CapsRef) -> Result<Format, String> {
        let s = caps.structure(0).ok_or("empty caps")?;
        match s.name().as_str() {
            "video/x-raw" => gst_video::VideoInfo::from_caps(caps)
                .map(Format::Video)
                .map_err(|e| format!("video caps {caps} do not describe a frame: {e}")),
            "text/x-raw" => Ok(Format::Text),
            "neural-network/tensors" => tensor_caps(s).map_err(|e| format!("tensor caps {caps}: {e}")),
            other => Err(format!("media type {other} is not video/x-raw, neural-network/tensors or text/x-raw")),
        }
    }

    /// The size of block `index` when the caps say it (video frame, tensor).
    pub(crate) fn block_size(&self, index: usize) -> Option<usize> {
        match self {
            Format::Video(info) => Some(info.size()),
            Format::Tensors { tensor_type, dimensions } => {
                let elements: usize = dimensions.get(index)?.iter().map(|&d| d as usize).product();
                Some(elements * element_size(*tensor_type))
            }
            Format::Text => None,
        }
    }
}

fn element_size(tensor_type: TensorType) -> usize {
    use TensorType::*;
    match tensor_type {
        Unknown | Int8 | Uint8 => 1,
        Int16 | Uint16 | Float16 => 2,
        Int32 | Uint32 | Float32 => 4,
        Int64 | Uint64 => 8,
    }
}

fn tensor_caps(s: &gst::StructureRef) -> Result<Format, String> {
    let name = s.get::<&str>("type").map_err(|_| "no string field 'type'")?;
    let tensor_type = (0..=10)
        .filter_map(TensorType::from_u32)
        .find(|t| t.name() == name)
        .ok_or_else(|| format!("unknown tensor type {name}"))?;
    let arrays = s.get::<gst::Array>("dimensions").map_err(|_| "no array field 'dimensions'")?;
    let mut dimensions = Vec::new();
    for inner in arrays.iter() {
        let inner = inner.get::<gst::Array>().map_err(|_| "'dimensions' is not an array of arrays")?;
        let dims: Result<Vec<u32>, _> =
            inner.iter().map(|d| d.get::<i32>().ok().and_then(|d| u32::try_from(d).ok())).map(|d| d.ok_or(())).collect();
        let dims = dims.map_err(|_| "a dimension is not a non-negative integer")?;
        if dims.len() > MAX_TENSOR_DIMENSIONS {
            return Err(format!("a tensor has {} dimensions; the protocol carries at most 8", dims.len()));
        }
        dimensions.push(dims);
    }
    if !(1..=MAX_MEMORY_BLOCKS).contains(&dimensions.len()) {
        return Err(format!("{} tensors; the protocol carries 1..=10 per buffer", dimensions.len()));
    }
    Ok(Format::Tensors { tensor_type, dimensions })
}

/// The FRAME description of a frame of `format` laid out as `offsets`/`strides` (a buffer's
/// GstVideoMeta, or the caps' GstVideoInfo when it has none); size and maxsize are left 0.
pub(crate) fn frame_from(
    format: gst_video::VideoFormat,
    width: u32,
    height: u32,
    offsets: &[usize],
    strides: &[i32],
    flags: u32,
) -> FramePayload {
    let n_planes = gst_video::VideoFormatInfo::from_format(format).n_planes();
    let mut frame = FramePayload {
        width,
        height,
        format: format.into_glib() as u32,
        n_planes,
        offsets: [0; MAX_PLANES],
        strides: [0; MAX_PLANES],
        flags,
        size: 0,
        maxsize: 0,
    };
    let n = (n_planes as usize).min(MAX_PLANES).min(offsets.len()).min(strides.len());
    for i in 0..n {
        frame.offsets[i] = offsets[i] as u64;
        frame.strides[i] = strides[i];
    }
    frame
}
