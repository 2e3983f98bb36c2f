//! `qsock_buffer_*`: everything a received buffer carries, for C. Every pointer a
//! getter gives out (strings, arrays) belongs to the buffer and stays valid until the
//! buffer is released; every fd too (do not close it; `dup()` it to keep it longer).

use std::ffi::{c_char, CString};
use std::os::fd::AsRawFd;

use gst::glib::translate::FromGlib;

use super::*;
use crate::protocol::{MemoryBlock, MemoryKind, TensorType};
use crate::ReceivedBuffer;

/// A received buffer: a description and its memory fds. Opaque; released with
/// `qsock_receiver_release`, from any thread.
pub struct qsock_buffer {
    buffer: ReceivedBuffer,
    /// C views of the classification and landmarks metas, built once; they point into
    /// `buffer`'s strings, which do not move while it lives.
    class_labels: Vec<Vec<qsock_class_label>>,
    keypoints: Vec<Vec<qsock_keypoint>>,
    links: Vec<Vec<qsock_link>>,
}

// SAFETY: ReceivedBuffer is Send (checked below); the views' pointers only point into it.
unsafe impl Send for qsock_buffer {}
const _: fn() = || {
    fn send<T: Send>() {}
    send::<ReceivedBuffer>();
};

impl Handle for qsock_buffer {}

fn c_str_or_null(s: Option<&CString>) -> *const c_char {
    s.map_or(std::ptr::null(), |s| s.as_ptr())
}

impl qsock_buffer {
    pub(crate) fn new(buffer: ReceivedBuffer) -> qsock_buffer {
        let metas = &buffer.message().metas;
        let class_labels = metas
            .class
            .iter()
            .map(|c| {
                let label = |l: &crate::protocol::ClassLabel| qsock_class_label {
                    name: l.name.as_ptr(),
                    confidence: l.confidence,
                    color: l.color,
                    xtraparams: c_str_or_null(l.xtraparams.as_ref()),
                };
                c.labels.iter().map(label).collect()
            })
            .collect();
        let keypoints = metas
            .landmarks
            .iter()
            .map(|m| {
                let keypoint = |k: &crate::protocol::Keypoint| qsock_keypoint {
                    name: k.name.as_ptr(),
                    confidence: k.confidence,
                    color: k.color,
                    x: k.x,
                    y: k.y,
                };
                m.keypoints.iter().map(keypoint).collect()
            })
            .collect();
        let links = metas
            .landmarks
            .iter()
            .map(|m| m.links.iter().map(|l| qsock_link { s_kp_idx: l.s_kp_idx, d_kp_idx: l.d_kp_idx }).collect())
            .collect();
        qsock_buffer { buffer, class_labels, keypoints, links }
    }

    fn block(&self, index: usize) -> Result<&MemoryBlock, Failure> {
        let blocks = &self.buffer.message().blocks;
        blocks
            .get(index)
            .ok_or_else(|| invalid(format!("block index {index} is past the buffer's {} blocks", blocks.len())))
    }
}

fn nth<'a, T>(items: &'a [T], index: usize, what: &str) -> Result<&'a T, Failure> {
    items.get(index).ok_or_else(|| invalid(format!("{what} index {index} is past the buffer's {}", items.len())))
}

fn wrong_kind(index: usize, wanted: &str, block: &MemoryBlock) -> Failure {
    invalid(format!("block {index} is {}, not {wanted}", block.kind().name()))
}

/// Fills `*info_out` with the buffer's kind, block count, timestamps and meta counts.
#[no_mangle]
pub extern "C" fn qsock_buffer_get_info(buffer: *const qsock_buffer, info_out: *mut qsock_buffer_info) -> qsock_status {
    call(|| {
        let m = handle(buffer, "buffer")?.buffer.message();
        let kind = match m.kind() {
            MemoryKind::Video => qsock_kind::QSOCK_KIND_VIDEO,
            MemoryKind::Tensor => qsock_kind::QSOCK_KIND_TENSOR,
            MemoryKind::Text => qsock_kind::QSOCK_KIND_TEXT,
        };
        let info = qsock_buffer_info {
            kind,
            n_blocks: m.blocks.len(),
            pts: m.info.pts,
            dts: m.info.dts,
            duration: m.info.duration,
            use_buffer_pool: m.info.use_buffer_pool,
            n_protection_metas: m.metas.protection.len(),
            n_roi_metas: m.metas.roi.len(),
            n_class_metas: m.metas.class.len(),
            n_landmarks_metas: m.metas.landmarks.len(),
        };
        write_out(info_out, "info_out", info)
    })
}

/// Fills `*block_out` with memory block `index`: its fd, buf_id, size and maxsize.
#[no_mangle]
pub extern "C" fn qsock_buffer_get_block(
    buffer: *const qsock_buffer,
    index: usize,
    block_out: *mut qsock_block,
) -> qsock_status {
    call(|| {
        let b = handle(buffer, "buffer")?;
        let block = b.block(index)?;
        let fd = b.buffer.fd(index).map_or(-1, |fd| fd.as_raw_fd());
        let buf_id = b.buffer.message().buf_ids()[index];
        write_out(block_out, "block_out", qsock_block { fd, buf_id, size: block.size(), maxsize: block.maxsize() })
    })
}

/// Fills `*video_out` with video block `index`'s format and layout.
/// `QSOCK_INVALID_ARGUMENT` if the buffer is not video.
#[no_mangle]
pub extern "C" fn qsock_buffer_get_video(
    buffer: *const qsock_buffer,
    index: usize,
    video_out: *mut qsock_video_info,
) -> qsock_status {
    call(|| {
        let block = handle(buffer, "buffer")?.block(index)?;
        let MemoryBlock::Frame(f) = block else { return Err(wrong_kind(index, "video", block)) };
        // SAFETY: from_glib maps every integer, values it does not know to __Unknown.
        let format = unsafe { gst_video::VideoFormat::from_glib(f.format as i32) };
        let format_name = match format {
            gst_video::VideoFormat::__Unknown(_) => c"UNKNOWN".as_ptr(),
            // A static string from GStreamer's own format table.
            format => format.to_str().as_ptr(),
        };
        let mut offsets = [0; QSOCK_MAX_PLANES];
        let mut strides = [0; QSOCK_MAX_PLANES];
        offsets[..f.planes_offsets().len()].copy_from_slice(f.planes_offsets());
        strides[..f.planes_strides().len()].copy_from_slice(f.planes_strides());
        let info = qsock_video_info {
            format: f.format,
            format_name,
            width: f.width,
            height: f.height,
            n_planes: f.n_planes,
            offsets,
            strides,
            flags: f.flags,
        };
        write_out(video_out, "video_out", info)
    })
}

/// Fills `*tensor_out` with tensor block `index`'s type and dimensions.
/// `QSOCK_INVALID_ARGUMENT` if the buffer is not tensors.
#[no_mangle]
pub extern "C" fn qsock_buffer_get_tensor(
    buffer: *const qsock_buffer,
    index: usize,
    tensor_out: *mut qsock_tensor_info,
) -> qsock_status {
    call(|| {
        let block = handle(buffer, "buffer")?.block(index)?;
        let MemoryBlock::Tensor(t) = block else { return Err(wrong_kind(index, "a tensor", block)) };
        let type_name = TensorType::from_u32(t.tensor_type).unwrap_or(TensorType::Unknown).c_name();
        let mut dimensions = [0; QSOCK_MAX_DIMENSIONS];
        dimensions[..t.used_dimensions().len()].copy_from_slice(t.used_dimensions());
        let info = qsock_tensor_info {
            type_: t.tensor_type,
            type_name: type_name.as_ptr(),
            n_dimensions: t.n_dimensions,
            dimensions,
        };
        write_out(tensor_out, "tensor_out", info)
    })
}

/// Sets `*data_out` and `*size_out` to text block `index`'s bytes (not NUL-terminated;
/// at most 1024). `QSOCK_INVALID_ARGUMENT` if the buffer is not text.
#[no_mangle]
pub extern "C" fn qsock_buffer_get_text(
    buffer: *const qsock_buffer,
    index: usize,
    data_out: *mut *const u8,
    size_out: *mut usize,
) -> qsock_status {
    call(|| {
        let block = handle(buffer, "buffer")?.block(index)?;
        let MemoryBlock::Text(t) = block else { return Err(wrong_kind(index, "text", block)) };
        write_out(data_out, "data_out", t.contents.as_ptr())?;
        write_out(size_out, "size_out", t.contents.len())
    })
}

/// Sets `*structure_out` to protection meta `index`: a serialized GstStructure
/// (GstProtectionMeta info), NUL-terminated, owned by the buffer.
#[no_mangle]
pub extern "C" fn qsock_buffer_get_protection_meta(
    buffer: *const qsock_buffer,
    index: usize,
    structure_out: *mut *const c_char,
) -> qsock_status {
    call(|| {
        let metas = &handle(buffer, "buffer")?.buffer.message().metas;
        let meta = nth(&metas.protection, index, "protection meta")?;
        write_out(structure_out, "structure_out", meta.structure.as_ptr())
    })
}

/// Fills `*roi_out` with region-of-interest meta `index`.
#[no_mangle]
pub extern "C" fn qsock_buffer_get_roi_meta(
    buffer: *const qsock_buffer,
    index: usize,
    roi_out: *mut qsock_roi_meta,
) -> qsock_status {
    call(|| {
        let metas = &handle(buffer, "buffer")?.buffer.message().metas;
        let r = nth(&metas.roi, index, "ROI meta")?;
        let roi = qsock_roi_meta {
            label: r.label.as_ptr(),
            id: r.id,
            parent_id: r.parent_id,
            x: r.x,
            y: r.y,
            w: r.w,
            h: r.h,
            det_meta: c_str_or_null(r.det_meta.as_ref()),
            xtraparams: c_str_or_null(r.xtraparams.as_ref()),
        };
        write_out(roi_out, "roi_out", roi)
    })
}

/// Fills `*class_out` with classification meta `index` and its labels.
#[no_mangle]
pub extern "C" fn qsock_buffer_get_class_meta(
    buffer: *const qsock_buffer,
    index: usize,
    class_out: *mut qsock_class_meta,
) -> qsock_status {
    call(|| {
        let b = handle(buffer, "buffer")?;
        let c = nth(&b.buffer.message().metas.class, index, "classification meta")?;
        let labels = &b.class_labels[index];
        let class =
            qsock_class_meta { id: c.id, parent_id: c.parent_id, n_labels: labels.len(), labels: labels.as_ptr() };
        write_out(class_out, "class_out", class)
    })
}

/// Fills `*landmarks_out` with landmarks meta `index`, its keypoints and links.
#[no_mangle]
pub extern "C" fn qsock_buffer_get_landmarks_meta(
    buffer: *const qsock_buffer,
    index: usize,
    landmarks_out: *mut qsock_landmarks_meta,
) -> qsock_status {
    call(|| {
        let b = handle(buffer, "buffer")?;
        let m = nth(&b.buffer.message().metas.landmarks, index, "landmarks meta")?;
        let (keypoints, links) = (&b.keypoints[index], &b.links[index]);
        let landmarks = qsock_landmarks_meta {
            id: m.id,
            parent_id: m.parent_id,
            confidence: m.confidence,
            n_keypoints: keypoints.len(),
            keypoints: keypoints.as_ptr(),
            n_links: links.len(),
            links: links.as_ptr(),
            xtraparams: c_str_or_null(m.xtraparams.as_ref()),
        };
        write_out(landmarks_out, "landmarks_out", landmarks)
    })
}
