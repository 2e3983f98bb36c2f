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
use gst_video::prelude::*;

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
    Video { format: gst_video::VideoFormat, width: u32, height: u32, interlace: Interlace },
    Tensor { tensor_type: TensorType, dimensions: Vec<Vec<u32>> },
    Text,
}

/// How the frames are interlaced, as far as FRAME.flags tell (the protocol carries no caps):
/// what `interlace-mode` and `field-order` the receiver's caps say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interlace {
    /// No INTERLACED flag: no `interlace-mode` field (progressive).
    Progressive,
    /// INTERLACED, with TFF or not: `interlace-mode=interleaved` and its `field-order`.
    Interleaved { top_field_first: bool },
    /// Frames that differ (some progressive, or both field orders): `interlace-mode=mixed`,
    /// each buffer's flags telling its own.
    Mixed,
}

impl Interlace {
    /// What one frame's flags say. One field per buffer (ONEFIELD: `interlace-mode=alternate`
    /// upstream) has no caps here: its flags travel on the buffer, its caps stay progressive.
    fn of(flags: u32) -> Interlace {
        use gst_video::VideoFrameFlags as F;
        let flags = F::from_bits_truncate(flags);
        if !flags.contains(F::INTERLACED) || flags.contains(F::ONEFIELD) {
            return Interlace::Progressive;
        }
        Interlace::Interleaved { top_field_first: flags.contains(F::TFF) }
    }
}

impl FormatKey {
    /// This message's key, given the stream's `previous` one: frames whose interlacing
    /// differs from what was negotiated make the stream `mixed`, and it stays mixed, rather
    /// than renegotiating at every change.
    pub(crate) fn following(self, previous: Option<&FormatKey>) -> FormatKey {
        match (self, previous) {
            (
                FormatKey::Video { format, width, height, interlace },
                Some(FormatKey::Video { format: f, width: w, height: h, interlace: before }),
            ) if (format, width, height) == (*f, *w, *h) && interlace != *before => {
                // Two different states, so at least one is interlaced: mixed (and mixed stays).
                FormatKey::Video { format, width, height, interlace: Interlace::Mixed }
            }
            (key, _) => key,
        }
    }

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
                let interlace = Interlace::of(first.flags);
                Ok(FormatKey::Video { format, width: first.width, height: first.height, interlace })
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
            FormatKey::Video { format, width, height, interlace } => {
                s.set("format", format.to_str());
                s.set("width", *width as i32);
                s.set("height", *height as i32);
                match interlace {
                    Interlace::Progressive => {}
                    Interlace::Interleaved { top_field_first } => {
                        s.set("interlace-mode", "interleaved");
                        s.set("field-order", if *top_field_first { "top-field-first" } else { "bottom-field-first" });
                    }
                    Interlace::Mixed => s.set("interlace-mode", "mixed"),
                }
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
    static RAW: LazyLock<Vec<(u32, gst_video::VideoFormat)>> =
        LazyLock::new(|| gst_video::VideoFormat::iter_raw().map(|f| (f.into_glib() as u32, f)).collect());
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
        let row = if is_palette(&info, plane) { PALETTE_ENTRY } else { row_bytes(&info, plane, frame.width) };
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
    let sizes: Vec<u64> = if info.is_tiled() {
        // A tiled stride counts tiles, which GStreamer knows how to measure.
        let sizes = meta.plane_size().map_err(|e| format!("FRAME: plane sizes unknown: {e}"))?;
        sizes[..strides.len()].iter().map(|&s| s as u64).collect()
    } else {
        plane_sizes(&info, frame)
    };
    for (plane, &offset) in frame.planes_offsets().iter().enumerate() {
        if offset + sizes[plane] > frame.size {
            return Err(format!(
                "FRAME: plane {plane} ({} bytes from offset {offset}) runs past the block's size {}",
                sizes[plane], frame.size
            ));
        }
    }
    // SAFETY: a GstVideoMeta we just added to a buffer we hold mutably; `id` is plain data.
    unsafe { (*(meta.as_mut_ptr())).id = index as i32 };
    // Video buffer flags: gst::BufferFlags would drop these bits (beyond GST_BUFFER_FLAG_LAST).
    let mut buffer_flags = gst_video::VideoBufferFlags::empty();
    for (frame_flag, buffer_flag) in [
        (gst_video::VideoFrameFlags::INTERLACED, gst_video::VideoBufferFlags::INTERLACED),
        (gst_video::VideoFrameFlags::TFF, gst_video::VideoBufferFlags::TFF),
        (gst_video::VideoFrameFlags::RFF, gst_video::VideoBufferFlags::RFF),
        (gst_video::VideoFrameFlags::ONEFIELD, gst_video::VideoBufferFlags::ONEFIELD),
    ] {
        if flags.contains(frame_flag) {
            buffer_flags |= buffer_flag;
        }
    }
    if !buffer_flags.is_empty() {
        b.set_video_flags(buffer_flags);
    }
    Ok(())
}

/// A palette entry: 4 bytes (ARGB), 256 of them.
const PALETTE_ENTRY: i64 = 4;
const PALETTE_ENTRIES: u64 = 256;

/// Whether `plane` of `info` is a palette (RGB8P's plane 1), not rows of pixels.
fn is_palette(info: &gst_video::VideoFormatInfo, plane: usize) -> bool {
    info.has_palette() && plane == 1
}

/// The components of `info` stored in `plane`.
fn components_in(info: &gst_video::VideoFormatInfo, plane: usize) -> impl Iterator<Item = u8> + '_ {
    (0..info.n_components() as u8).filter(move |&c| info.plane()[c as usize] as usize == plane)
}

/// Bytes one row of `plane` needs at `width` pixels (whole pixels and macropixels).
fn row_bytes(info: &gst_video::VideoFormatInfo, plane: usize, width: u32) -> i64 {
    components_in(info, plane)
        .map(|c| info.scale_width(c, width) as i64 * info.pixel_stride()[c as usize] as i64)
        .max()
        .unwrap_or(0)
}

/// Bytes each plane of a non-tiled `frame` spans from its offset: its stride times its
/// rows (a palette: 256 entries), whatever the stride, so that padded strides are measured
/// as they are, not as GStreamer's default layout would have them.
fn plane_sizes(info: &gst_video::VideoFormatInfo, frame: &FramePayload) -> Vec<u64> {
    frame
        .planes_strides()
        .iter()
        .enumerate()
        .map(|(plane, &stride)| {
            if is_palette(info, plane) {
                return PALETTE_ENTRIES * PALETTE_ENTRY as u64;
            }
            let rows = components_in(info, plane).map(|c| info.scale_height(c, frame.height)).max().unwrap_or(0);
            stride.max(0) as u64 * u64::from(rows)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Caps -> message (qtisocketsink)

/// The text the sink takes: the TEXT payload has no format field and every receiver labels
/// its bytes utf8, so other formats (pango-markup) would arrive relabelled.
pub(crate) const TEXT_CAPS: &str = "text/x-raw, format=utf8";

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
            "text/x-raw" => match s.get::<&str>("format") {
                Ok("utf8") | Err(gst::structure::GetError::FieldNotFound { .. }) => Ok(Format::Text),
                Ok(other) => Err(format!(
                    "text/x-raw format={other}: the protocol carries text bytes with no format, which receivers \
                     take for utf8; send format=utf8 (subparse strips pango markup when asked for utf8)"
                )),
                Err(e) => Err(format!("text caps {caps}: {e}")),
            },
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
        let dims: Result<Vec<u32>, _> = inner
            .iter()
            .map(|d| d.get::<i32>().ok().and_then(|d| u32::try_from(d).ok()))
            .map(|d| d.ok_or(()))
            .collect();
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

/// FRAME.flags for a frame: its GstVideoMeta's flags (`meta_flags`) and the interlacing
/// GStreamer keeps elsewhere: in the caps (`info`'s interlace mode and field order) and in
/// the buffer's flags (INTERLACED, TFF, RFF, ONEFIELD), which is where `qtisocketsrc`
/// puts them back.
pub(crate) fn frame_flags(info: &gst_video::VideoInfo, buffer: gst_video::VideoBufferFlags, meta_flags: u32) -> u32 {
    use gst_video::{VideoBufferFlags as B, VideoFieldOrder, VideoFrameFlags as F, VideoInterlaceMode as Mode};
    let mut flags = F::from_bits_truncate(meta_flags);
    for (buffer_flag, frame_flag) in [(B::TFF, F::TFF), (B::RFF, F::RFF), (B::ONEFIELD, F::ONEFIELD)] {
        if buffer.contains(buffer_flag) {
            flags |= frame_flag;
        }
    }
    match info.interlace_mode() {
        Mode::Progressive => flags -= F::INTERLACED | F::TFF | F::RFF | F::ONEFIELD,
        Mode::Interleaved => {
            flags |= F::INTERLACED;
            // A field order in the caps holds for every frame; unknown: each buffer says.
            match info.field_order() {
                VideoFieldOrder::TopFieldFirst => flags |= F::TFF,
                VideoFieldOrder::BottomFieldFirst => flags -= F::TFF,
                _ => {}
            }
        }
        // Mixed: only the buffers flagged INTERLACED are; alternate and fields: one field each.
        _ if buffer.contains(B::INTERLACED) || buffer.contains(B::ONEFIELD) => flags |= F::INTERLACED,
        _ => flags -= F::TFF | F::RFF,
    }
    flags.bits()
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

#[cfg(test)]
mod tests {
    use gst_video::{VideoFormat, VideoFormatInfo};

    use super::*;
    use crate::protocol::{BufferInfo, Metas, TensorPayload, TextPayload};

    fn init() {
        gst::init().expect("GStreamer initializes");
    }

    fn message(blocks: Vec<MemoryBlock>) -> DataMessage {
        let info = BufferInfo { buf_ids: [0; MAX_MEMORY_BLOCKS], pts: 0, dts: 0, duration: 0, use_buffer_pool: false };
        DataMessage { n_fds: None, info, blocks, metas: Metas::default() }
    }

    /// A FRAME of `format` with these planes, in a block of `size` bytes.
    fn frame(
        format: VideoFormat,
        (width, height): (u32, u32),
        offsets: &[u64],
        strides: &[i32],
        size: u64,
    ) -> FramePayload {
        let mut frame = FramePayload {
            width,
            height,
            format: format.into_glib() as u32,
            n_planes: offsets.len() as u32,
            offsets: [0; MAX_PLANES],
            strides: [0; MAX_PLANES],
            flags: 0,
            size,
            maxsize: size,
        };
        frame.offsets[..offsets.len()].copy_from_slice(offsets);
        frame.strides[..strides.len()].copy_from_slice(strides);
        frame
    }

    fn tensor(tensor_type: u32, dimensions: &[u32]) -> MemoryBlock {
        let mut tensor = TensorPayload {
            tensor_type,
            n_dimensions: dimensions.len() as u32,
            dimensions: [0; 8],
            size: 1,
            maxsize: 1,
        };
        tensor.dimensions[..dimensions.len()].copy_from_slice(dimensions);
        MemoryBlock::Tensor(tensor)
    }

    /// `add_video_meta` on a buffer of the frame's size starting at `base`; the buffer, to look at the meta.
    fn video_meta(frame: &FramePayload, base: u64) -> Result<gst::Buffer, String> {
        let mut buffer = gst::Buffer::with_size((base + frame.size) as usize).expect("a buffer");
        add_video_meta(buffer.get_mut().expect("ours"), frame, base, 3)?;
        Ok(buffer)
    }

    /// `key`'s caps as `qtisocketsrc` sets them with open downstream caps: completed, fixed.
    fn negotiated(key: &FormatKey, rate: gst::Fraction) -> gst::Caps {
        let mut s = key.caps(false).structure(0).expect("one structure").to_owned();
        key.complete(&mut s, rate);
        let mut caps = gst::Caps::builder_full().structure(s).build();
        caps.fixate();
        caps
    }

    fn caps(text: &str) -> gst::Caps {
        text.parse().expect("valid caps")
    }

    // -----------------------------------------------------------------------------------
    // Frame rates

    #[test]
    fn frame_rate_finds_the_integer_and_ntsc_rates_from_rounded_durations() {
        let ntsc = |n| gst::Fraction::new(n * 1000, 1001);
        let cases = [
            (33_333_333, gst::Fraction::new(30, 1)),
            (33_333_334, gst::Fraction::new(30, 1)),
            (40_000_000, gst::Fraction::new(25, 1)),
            (16_666_667, gst::Fraction::new(60, 1)),
            (16_666_666, gst::Fraction::new(60, 1)),
            (20_000_000, gst::Fraction::new(50, 1)),
            (41_666_667, gst::Fraction::new(24, 1)),
            (1_000_000_000, gst::Fraction::new(1, 1)),
            // NTSC: n * 1000/1001, whichever way the sender rounded the duration
            (33_366_667, ntsc(30)), // 29.97
            (33_366_666, ntsc(30)),
            (16_683_333, ntsc(60)), // 59.94
            (16_683_334, ntsc(60)),
            (41_708_333, ntsc(24)), // 23.976
            (41_708_334, ntsc(24)),
            (66_733_333, ntsc(15)), // 14.985
            // neither: the nearest simple fraction
            (3_000_000_000, gst::Fraction::new(1, 3)),
            (7_000_000, gst::Fraction::new(1000, 7)),
            (1, gst::Fraction::new(1_000_000_000, 1)),
        ];
        for (duration, rate) in cases {
            assert_eq!(frame_rate(duration), rate, "duration {duration} ns");
        }
    }

    #[test]
    fn frame_rate_is_variable_without_a_duration() {
        assert_eq!(frame_rate(0), gst::Fraction::new(0, 1));
        assert_eq!(frame_rate(CLOCK_TIME_NONE), gst::Fraction::new(0, 1));
    }

    // -----------------------------------------------------------------------------------
    // Video formats, both directions

    /// Every raw format of this GStreamer, at `(width, height)`: FRAME.format -> GstVideoFormat ->
    /// FormatKey -> caps -> Format (the sink's view) -> the FRAME the sink describes -> accepted by
    /// the src's video-meta checks, with the same format, size and planes.
    fn round_trip_every_raw_format(size: (u32, u32)) -> usize {
        init();
        let mut checked = 0;
        for format in VideoFormat::iter_raw() {
            let info = VideoFormatInfo::from_format(format);
            let wire = format.into_glib() as u32;
            assert_eq!(video_format(wire), Ok(format));
            let first = frame(format, size, &vec![0; info.n_planes() as usize], &vec![1; info.n_planes() as usize], 1);
            let key = FormatKey::of(&message(vec![MemoryBlock::Frame(first)])).expect("a known format");
            let progressive = Interlace::Progressive;
            assert_eq!(key, FormatKey::Video { format, width: size.0, height: size.1, interlace: progressive });
            let caps = negotiated(&key, gst::Fraction::new(30, 1));
            let Ok(Format::Video(video)) = Format::from_caps(&caps) else { panic!("{caps}: not video caps") };
            assert_eq!((video.format(), video.width(), video.height()), (format, size.0, size.1), "{caps}");
            assert_eq!(video.fps(), gst::Fraction::new(30, 1));
            let mut sent = frame_from(video.format(), video.width(), video.height(), video.offset(), video.stride(), 0);
            sent.size = video.size() as u64;
            assert_eq!(video_format(sent.format), Ok(format));
            assert_eq!(sent.n_planes, info.n_planes());
            assert_eq!(Format::Video(video.clone()).block_size(0), Some(video.size()));
            let buffer = video_meta(&sent, 0).unwrap_or_else(|e| panic!("{format:?} {size:?}: {e}"));
            let meta = buffer.meta::<gst_video::VideoMeta>().expect("a video meta");
            assert_eq!((meta.format(), meta.width(), meta.height()), (format, size.0, size.1));
            assert_eq!(meta.offset(), video.offset());
            assert_eq!(meta.stride(), video.stride());
            checked += 1;
        }
        checked
    }

    #[test]
    fn every_raw_video_format_round_trips() {
        let checked = round_trip_every_raw_format((64, 64));
        assert!(checked > 100, "only {checked} raw formats");
    }

    #[test]
    fn every_raw_video_format_round_trips_at_odd_sizes() {
        round_trip_every_raw_format((63, 31));
        round_trip_every_raw_format((1, 1));
    }

    /// RGB8P's plane 1 is a palette of 256 4-byte entries, not rows of pixels.
    #[test]
    fn rgb8p_palette_plane_is_accepted() {
        init();
        let video = gst_video::VideoInfo::builder(VideoFormat::Rgb8p, 64, 64).build().expect("a layout");
        let mut sent = frame_from(video.format(), video.width(), video.height(), video.offset(), video.stride(), 0);
        sent.size = video.size() as u64;
        video_meta(&sent, 0).expect("RGB8P with GStreamer's own layout");
    }

    #[test]
    fn formats_this_gstreamer_does_not_know_as_raw_video_are_refused() {
        init();
        for value in [VideoFormat::Unknown.into_glib() as u32, VideoFormat::Encoded.into_glib() as u32, 9999] {
            let error = video_format(value).unwrap_err();
            assert!(error.contains(&format!("FRAME.format {value} ")), "{error}");
            let block = MemoryBlock::Frame(frame(VideoFormat::Nv12, (64, 64), &[0, 4096], &[64, 64], 6144));
            let mut message = message(vec![block]);
            if let MemoryBlock::Frame(f) = &mut message.blocks[0] {
                f.format = value;
            }
            assert!(FormatKey::of(&message).is_err());
        }
    }

    #[test]
    fn frame_blocks_of_one_buffer_must_agree() {
        init();
        let nv12 = frame(VideoFormat::Nv12, (64, 64), &[0, 4096], &[64, 64], 6144);
        let same = MemoryBlock::Frame(nv12);
        assert!(FormatKey::of(&message(vec![same.clone(), same])).is_ok());
        for other in [
            frame(VideoFormat::Nv12, (64, 32), &[0, 2048], &[64, 64], 3072),
            frame(VideoFormat::I420, (64, 64), &[0, 4096, 5120], &[64, 32, 32], 6144),
        ] {
            let error = FormatKey::of(&message(vec![MemoryBlock::Frame(nv12), MemoryBlock::Frame(other)])).unwrap_err();
            assert!(error.contains("FRAME block 1 differs"), "{error}");
        }
    }

    #[test]
    fn video_caps_are_completed_with_rate_and_pixel_aspect_ratio() {
        init();
        let key = FormatKey::Video {
            format: VideoFormat::Nv12,
            width: 1920,
            height: 1080,
            interlace: Interlace::Progressive,
        };
        assert_eq!(key.caps(false), caps("video/x-raw, format=NV12, width=1920, height=1080"));
        let any = key.caps(true);
        assert!(any.features(0).expect("features").is_any());
        assert_eq!(
            negotiated(&key, gst::Fraction::new(30000, 1001)),
            caps("video/x-raw, format=NV12, width=1920, height=1080, framerate=30000/1001, pixel-aspect-ratio=1/1")
        );
        // What downstream left open is fixated nearest to the messages' values.
        let mut s =
            caps("video/x-raw, framerate=[0/1, 100/1], pixel-aspect-ratio=[1/2, 2/1]").structure(0).unwrap().to_owned();
        key.complete(&mut s, gst::Fraction::new(25, 1));
        assert_eq!(s.get::<gst::Fraction>("framerate").unwrap(), gst::Fraction::new(25, 1));
        assert_eq!(s.get::<gst::Fraction>("pixel-aspect-ratio").unwrap(), gst::Fraction::new(1, 1));
    }

    // -----------------------------------------------------------------------------------
    // The src's video-meta checks: odd sizes and strides

    /// GStreamer's own layout of `format` at `width`x`height`: offsets, strides, size.
    fn default_layout(format: VideoFormat, width: u32, height: u32) -> (Vec<u64>, Vec<i32>, u64) {
        let info = gst_video::VideoInfo::builder(format, width, height).build().expect("a layout");
        (info.offset().iter().map(|&o| o as u64).collect(), info.stride().to_vec(), info.size() as u64)
    }

    #[test]
    fn nv12_of_odd_width_needs_a_chroma_row_of_the_rounded_up_width() {
        init();
        // 63 wide: 63 luma bytes, but 32 chroma pairs = 64 bytes per chroma row.
        let (offsets, strides, size) = default_layout(VideoFormat::Nv12, 63, 31);
        assert_eq!(strides, [64, 64]);
        assert!(video_meta(&frame(VideoFormat::Nv12, (63, 31), &offsets, &strides, size), 0).is_ok());
        let error = video_meta(&frame(VideoFormat::Nv12, (63, 31), &offsets, &[64, 63], size), 0).unwrap_err();
        assert!(error.contains("plane 1 stride 63 is shorter than a row of NV12 63x31 (64 bytes)"), "{error}");
        let error = video_meta(&frame(VideoFormat::Nv12, (63, 31), &offsets, &[62, 64], size), 0).unwrap_err();
        assert!(error.contains("plane 0 stride 62 is shorter than a row of NV12 63x31 (63 bytes)"), "{error}");
    }

    #[test]
    fn i420_of_odd_sizes_is_accepted_and_a_stride_below_a_row_refused() {
        init();
        // 63x31: a Y row is 63 bytes, a U or V row 32 (rounded up: 31.5 chroma samples).
        let (offsets, strides, size) = default_layout(VideoFormat::I420, 63, 31);
        let buffer = video_meta(&frame(VideoFormat::I420, (63, 31), &offsets, &strides, size), 0).unwrap();
        let meta = buffer.meta::<gst_video::VideoMeta>().unwrap();
        assert_eq!((meta.width(), meta.height(), meta.stride()), (63, 31, &strides[..]));
        for (plane, row) in [(0, 63), (1, 32), (2, 32)] {
            let mut short = strides.clone();
            short[plane] = row - 1;
            let error = video_meta(&frame(VideoFormat::I420, (63, 31), &offsets, &short, size), 0).unwrap_err();
            let expected =
                format!("plane {plane} stride {} is shorter than a row of I420 63x31 ({row} bytes)", row - 1);
            assert!(error.contains(&expected), "{error}");
        }
        // One byte short: the V plane runs past the block.
        let error = video_meta(&frame(VideoFormat::I420, (63, 31), &offsets, &strides, size - 1), 0).unwrap_err();
        assert!(
            error.contains(&format!("plane 2 ({} bytes from offset {}) runs past", size - offsets[2], offsets[2])),
            "{error}"
        );
    }

    #[test]
    fn packed_formats_count_whole_pixels_and_macropixels_per_row() {
        init();
        // RGB: 3 bytes per pixel.
        assert!(video_meta(&frame(VideoFormat::Rgb, (10, 2), &[0], &[32], 64), 0).is_ok());
        let error = video_meta(&frame(VideoFormat::Rgb, (10, 2), &[0], &[29], 64), 0).unwrap_err();
        assert!(error.contains("stride 29 is shorter than a row of RGB 10x2 (30 bytes)"), "{error}");
        // YUY2 63 wide: 32 macropixels of 4 bytes, so 128, not 126.
        assert!(video_meta(&frame(VideoFormat::Yuy2, (63, 2), &[0], &[128], 256), 0).is_ok());
        let error = video_meta(&frame(VideoFormat::Yuy2, (63, 2), &[0], &[126], 256), 0).unwrap_err();
        assert!(error.contains("stride 126 is shorter than a row of YUY2 63x2 (128 bytes)"), "{error}");
    }

    /// Plane sizes are measured from the strides given (GStreamer's gst_video_meta_get_plane_size
    /// fails for any stride but its default one): padded and tight odd strides are accepted.
    #[test]
    fn strides_longer_than_a_row_are_accepted() {
        init();
        for (format, size, offsets, strides, block) in [
            (VideoFormat::Nv12, (64, 64), vec![0, 128 * 64], vec![128, 128], 128 * 96),
            (VideoFormat::Nv12, (720, 480), vec![0, 768 * 480], vec![768, 768], 768 * 720),
            (VideoFormat::Nv12, (63, 31), vec![0, 64 * 31], vec![63, 64], 64 * 47),
            (VideoFormat::I420, (63, 31), vec![0, 63 * 31, 63 * 31 + 32 * 16], vec![63, 32, 32], 63 * 31 + 2 * 32 * 16),
            (VideoFormat::Rgb, (10, 2), vec![0], vec![30], 60),
        ] {
            video_meta(&frame(format, size, &offsets, &strides, block), 0)
                .unwrap_or_else(|e| panic!("{format:?} {size:?} strides {strides:?}: {e}"));
        }
        // Measured with the padded stride: 64 rows of 128 bytes, then 32 of 128.
        let error =
            video_meta(&frame(VideoFormat::Nv12, (64, 64), &[0, 128 * 64], &[128, 128], 128 * 96 - 1), 0).unwrap_err();
        assert!(error.contains("plane 1 (4096 bytes from offset 8192) runs past the block's size 12287"), "{error}");
    }

    #[test]
    fn strides_that_are_zero_or_negative_are_refused() {
        init();
        for stride in [0, -64] {
            let error = video_meta(&frame(VideoFormat::Gray8, (64, 2), &[0], &[stride], 128), 0).unwrap_err();
            assert!(error.contains(&format!("plane 0 stride {stride} ")), "{error}");
        }
    }

    #[test]
    fn a_frame_must_be_a_picture_with_its_formats_planes() {
        init();
        for (width, height) in [(0, 64), (64, 0)] {
            let error = video_meta(&frame(VideoFormat::Gray8, (width, height), &[0], &[64], 4096), 0).unwrap_err();
            assert!(error.contains("is not a picture"), "{error}");
        }
        let error = video_meta(&frame(VideoFormat::Nv12, (64, 64), &[0], &[64], 6144), 0).unwrap_err();
        assert!(error.contains("NV12 has 2 planes, the message says 1"), "{error}");
        let error = video_meta(&frame(VideoFormat::Nv12, (64, 64), &[0, 4096], &[64, 64], 6143), 0).unwrap_err();
        assert!(error.contains("plane 1 (2048 bytes from offset 4096) runs past the block's size 6143"), "{error}");
    }

    #[test]
    fn the_video_meta_is_placed_at_the_blocks_start_with_its_id_and_field_flags() {
        init();
        let mut nv12 = frame(VideoFormat::Nv12, (64, 64), &[0, 4096], &[64, 64], 6144);
        nv12.flags = (gst_video::VideoFrameFlags::INTERLACED | gst_video::VideoFrameFlags::TFF).bits();
        let buffer = video_meta(&nv12, 6144).unwrap();
        let meta = buffer.meta::<gst_video::VideoMeta>().unwrap();
        assert_eq!(meta.offset(), [6144, 6144 + 4096]);
        assert_eq!(meta.id(), 3);
        let flags = gst_video::VideoBufferFlags::INTERLACED | gst_video::VideoBufferFlags::TFF;
        assert_eq!(buffer.video_flags(), flags);
        let progressive = video_meta(&frame(VideoFormat::Nv12, (64, 64), &[0, 4096], &[64, 64], 6144), 0).unwrap();
        assert!(progressive.video_flags().is_empty());
    }

    // -----------------------------------------------------------------------------------
    // Interlacing: caps and buffer flags -> FRAME.flags -> caps and buffer flags

    fn video_info(caps_text: &str) -> gst_video::VideoInfo {
        gst_video::VideoInfo::from_caps(&caps(caps_text)).expect("video caps")
    }

    #[test]
    fn the_sink_takes_interlacing_from_the_caps_and_the_buffer_flags() {
        init();
        use gst_video::{VideoBufferFlags as B, VideoFrameFlags as F};
        let nv12 = "video/x-raw, format=NV12, width=64, height=48";
        let none = B::empty();
        for (caps_fields, buffer, meta, expected) in [
            ("", none, F::empty(), F::empty()),
            // Progressive caps: stray flags are not interlacing.
            ("", B::TFF, F::INTERLACED, F::empty()),
            (", interlace-mode=interleaved, field-order=top-field-first", none, F::empty(), F::INTERLACED | F::TFF),
            (", interlace-mode=interleaved, field-order=bottom-field-first", B::TFF, F::empty(), F::INTERLACED),
            (", interlace-mode=interleaved", B::TFF | B::RFF, F::empty(), F::INTERLACED | F::TFF | F::RFF),
            (", interlace-mode=interleaved", none, F::empty(), F::INTERLACED),
            (", interlace-mode=mixed", B::INTERLACED | B::TFF, F::empty(), F::INTERLACED | F::TFF),
            (", interlace-mode=mixed", B::TFF, F::empty(), F::empty()),
            (", interlace-mode=mixed", none, F::INTERLACED, F::INTERLACED),
        ] {
            let info = video_info(&format!("{nv12}{caps_fields}"));
            let flags = F::from_bits_truncate(frame_flags(&info, buffer, meta.bits()));
            assert_eq!(flags, expected, "{caps_fields} buffer {buffer:?} meta {meta:?}");
        }
    }

    #[test]
    fn interlaced_frames_give_interleaved_caps_with_their_field_order() {
        init();
        let mut nv12 = frame(VideoFormat::Nv12, (64, 48), &[0, 3072], &[64, 64], 4608);
        for (flags, expected) in [
            (0, "video/x-raw, format=NV12, width=64, height=48"),
            (
                (gst_video::VideoFrameFlags::INTERLACED | gst_video::VideoFrameFlags::TFF).bits(),
                "video/x-raw, format=NV12, width=64, height=48, interlace-mode=interleaved, field-order=top-field-first",
            ),
            (
                gst_video::VideoFrameFlags::INTERLACED.bits(),
                "video/x-raw, format=NV12, width=64, height=48, interlace-mode=interleaved, \
                 field-order=bottom-field-first",
            ),
            // One field per buffer: no caps for it; the flags go on the buffer.
            (
                (gst_video::VideoFrameFlags::INTERLACED | gst_video::VideoFrameFlags::ONEFIELD).bits(),
                "video/x-raw, format=NV12, width=64, height=48",
            ),
        ] {
            nv12.flags = flags;
            let key = FormatKey::of(&message(vec![MemoryBlock::Frame(nv12)])).unwrap();
            assert_eq!(key.caps(false), caps(expected));
            // What a sender with these caps sends, back to the same interlacing.
            let negotiated = negotiated(&key, gst::Fraction::new(30, 1));
            let info = gst_video::VideoInfo::from_caps(&negotiated).unwrap();
            if flags & gst_video::VideoFrameFlags::ONEFIELD.bits() == 0 {
                assert_eq!(frame_flags(&info, gst_video::VideoBufferFlags::empty(), 0), flags, "{negotiated}");
            }
        }
    }

    #[test]
    fn frames_whose_interlacing_changes_make_the_stream_mixed_for_good() {
        init();
        let key = |flags: gst_video::VideoFrameFlags| {
            let mut nv12 = frame(VideoFormat::Nv12, (64, 48), &[0, 3072], &[64, 64], 4608);
            nv12.flags = flags.bits();
            FormatKey::of(&message(vec![MemoryBlock::Frame(nv12)])).unwrap()
        };
        let (progressive, tff, bff) = (
            key(gst_video::VideoFrameFlags::empty()),
            key(gst_video::VideoFrameFlags::INTERLACED | gst_video::VideoFrameFlags::TFF),
            key(gst_video::VideoFrameFlags::INTERLACED),
        );
        assert_eq!(tff.clone().following(Some(&tff)), tff);
        assert_eq!(tff.clone().following(None), tff);
        let mixed = bff.clone().following(Some(&tff));
        assert_eq!(mixed.caps(false), caps("video/x-raw, format=NV12, width=64, height=48, interlace-mode=mixed"));
        assert_eq!(progressive.clone().following(Some(&tff)), mixed);
        for next in [progressive.clone(), tff.clone(), bff] {
            assert_eq!(next.following(Some(&mixed)), mixed);
        }
        // Another format or size is a new stream, whatever came before.
        let mut other = frame(VideoFormat::Nv12, (32, 24), &[0, 768], &[32, 32], 1152);
        other.flags = gst_video::VideoFrameFlags::INTERLACED.bits();
        let other = FormatKey::of(&message(vec![MemoryBlock::Frame(other)])).unwrap();
        assert_eq!(other.clone().following(Some(&mixed)), other);
        assert_eq!(progressive.clone().following(Some(&progressive)), progressive);
    }

    // -----------------------------------------------------------------------------------
    // Tensors

    #[test]
    fn several_tensors_make_one_caps_and_back() {
        init();
        let float32 = TensorType::Float32 as u32;
        let blocks = vec![tensor(float32, &[1, 4]), tensor(float32, &[2, 3, 4]), tensor(float32, &[10])];
        let key = FormatKey::of(&message(blocks)).unwrap();
        let dimensions = vec![vec![1, 4], vec![2, 3, 4], vec![10]];
        assert_eq!(key, FormatKey::Tensor { tensor_type: TensorType::Float32, dimensions: dimensions.clone() });
        let expected = caps("neural-network/tensors, type=FLOAT32, dimensions=<<1, 4>, <2, 3, 4>, <10>>");
        assert_eq!(key.caps(false), expected);
        // No frame rate is added; one downstream left open is fixated.
        assert_eq!(negotiated(&key, gst::Fraction::new(30, 1)), expected);
        let mut s = caps("neural-network/tensors, framerate=[0/1, 60/1]").structure(0).unwrap().to_owned();
        key.complete(&mut s, gst::Fraction::new(15, 1));
        assert_eq!(s.get::<gst::Fraction>("framerate").unwrap(), gst::Fraction::new(15, 1));

        let format = Format::from_caps(&expected).unwrap();
        let Format::Tensors { tensor_type, dimensions: back } = &format else { panic!("{format:?}") };
        assert_eq!((*tensor_type, back), (TensorType::Float32, &dimensions));
        let sizes: Vec<_> = (0..4).map(|i| format.block_size(i)).collect();
        assert_eq!(sizes, [Some(16), Some(96), Some(40), None]);
    }

    #[test]
    fn every_tensor_type_round_trips_with_its_element_size() {
        init();
        let sizes = [1, 1, 1, 2, 2, 4, 4, 8, 8, 2, 4];
        for (value, element_size) in (0..=10).zip(sizes) {
            let tensor_type = TensorType::from_u32(value).unwrap();
            let key = FormatKey::of(&message(vec![tensor(value, &[2, 3])])).unwrap();
            let format = Format::from_caps(&key.caps(false)).unwrap();
            assert!(matches!(&format, Format::Tensors { tensor_type: t, .. } if *t == tensor_type), "{format:?}");
            assert_eq!(format.block_size(0), Some(6 * element_size), "{tensor_type:?}");
        }
    }

    #[test]
    fn tensors_the_caps_cannot_carry_are_refused() {
        init();
        let error = FormatKey::of(&message(vec![tensor(10, &[4]), tensor(2, &[4])])).unwrap_err();
        assert!(error.contains("TENSOR block 1 is of type 2 but block 0 of type 10"), "{error}");
        let error = FormatKey::of(&message(vec![tensor(11, &[4])])).unwrap_err();
        assert!(error.contains("TENSOR.type 11"), "{error}");
    }

    #[test]
    fn tensor_caps_the_protocol_cannot_carry_are_refused() {
        init();
        let eleven = ["<1>"; 11].join(", ");
        for (text, reason) in [
            ("neural-network/tensors, dimensions=<<1>>", "no string field 'type'"),
            ("neural-network/tensors, type=FLOAT64, dimensions=<<1>>", "unknown tensor type FLOAT64"),
            ("neural-network/tensors, type=UINT8", "no array field 'dimensions'"),
            ("neural-network/tensors, type=UINT8, dimensions=<1, 2>", "not an array of arrays"),
            ("neural-network/tensors, type=UINT8, dimensions=<<1, -2>>", "not a non-negative integer"),
            ("neural-network/tensors, type=UINT8, dimensions=<<1, 2, 3, 4, 5, 6, 7, 8, 9>>", "9 dimensions"),
            ("neural-network/tensors, type=UINT8, dimensions=<>", "0 tensors"),
            (&format!("neural-network/tensors, type=UINT8, dimensions=<{eleven}>"), "11 tensors"),
        ] {
            let error = Format::from_caps(&caps(text)).unwrap_err();
            assert!(error.contains(reason), "{text}: {error}");
        }
        let ten = ["<1, 2, 3, 4, 5, 6, 7, 8>"; 10].join(", ");
        assert!(Format::from_caps(&caps(&format!("neural-network/tensors, type=UINT8, dimensions=<{ten}>"))).is_ok());
    }

    // -----------------------------------------------------------------------------------
    // Text, and what is no format of ours

    #[test]
    fn text_is_utf8_text_x_raw_both_ways() {
        init();
        let text = MemoryBlock::Text(TextPayload { contents: b"hello".to_vec(), maxsize: 5 });
        let key = FormatKey::of(&message(vec![text])).unwrap();
        assert_eq!(key, FormatKey::Text);
        assert_eq!(key.caps(false), caps("text/x-raw"));
        assert_eq!(negotiated(&key, gst::Fraction::new(30, 1)), caps("text/x-raw, format=utf8"));
        let mut s = caps("text/x-raw, format={pango-markup, utf8}").structure(0).unwrap().to_owned();
        key.complete(&mut s, gst::Fraction::new(0, 1));
        assert_eq!(s.get::<&str>("format").unwrap(), "utf8");
        let format = Format::from_caps(&caps("text/x-raw, format=utf8")).unwrap();
        assert!(matches!(format, Format::Text));
        assert_eq!(format.block_size(0), None);
        assert!(matches!(Format::from_caps(&caps(TEXT_CAPS)), Ok(Format::Text)));
    }

    #[test]
    fn markup_is_refused_rather_than_sent_as_plain_text() {
        init();
        let error = Format::from_caps(&caps("text/x-raw, format=pango-markup")).unwrap_err();
        assert!(error.contains("format=pango-markup") && error.contains("utf8"), "{error}");
    }

    #[test]
    fn other_caps_are_refused_naming_what_is_wrong() {
        init();
        let error = Format::from_caps(&gst::Caps::new_empty()).unwrap_err();
        assert_eq!(error, "empty caps");
        let error = Format::from_caps(&caps("audio/x-raw, format=S16LE")).unwrap_err();
        assert!(error.contains("media type audio/x-raw is not video/x-raw"), "{error}");
        let error = Format::from_caps(&caps("video/x-raw, format=NV12")).unwrap_err();
        assert!(error.contains("do not describe a frame"), "{error}");
    }
}
