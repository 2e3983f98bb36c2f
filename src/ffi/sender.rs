//! `qsock_sender_*`: connect to a receiver, send buffers described by fds and info
//! structs, learn of their returns.

use std::ffi::{c_char, c_int, CStr, CString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use super::buffer::*;
use super::*;
use crate::protocol::{
    ClassLabel, ClassMeta, FramePayload, Keypoint, LandmarksMeta, Link, MemoryBlock, Metas, ProtectionMeta, RoiMeta,
    TensorPayload, TextPayload,
};
use crate::{OutgoingBlock, OutgoingBuffer, Sender, SenderEvent};

/// A connection to a receiver. Opaque. Use it from one thread at a time.
pub struct qsock_sender {
    sender: Sender,
}

/// One memory block to send.
#[repr(C)]
pub struct qsock_send_block {
    /// The memory's fd (a DMA-BUF or memfd; ignored for text). Its number becomes the
    /// block's buf_id, and returns name it: keep it open and the memory unchanged until
    /// its return arrives. qsock does not take ownership.
    pub fd: c_int,
    /// Bytes in use from offset 0, and the memory's whole size (at most the fd's size).
    pub size: u64,
    pub maxsize: u64,
    /// For QSOCK_KIND_VIDEO: the layout (`format_name` is ignored).
    pub video: qsock_video_info,
    /// For QSOCK_KIND_TENSOR: the shape (`type_name` is ignored).
    pub tensor: qsock_tensor_info,
    /// For QSOCK_KIND_TEXT: `size` bytes (at most 1024), copied into the message.
    pub text: *const u8,
}

/// A buffer to send. Everything it points to is read during the call only.
#[repr(C)]
pub struct qsock_send_buffer {
    pub kind: qsock_kind,
    /// 1..=10 blocks, all of `kind`.
    pub n_blocks: usize,
    pub blocks: *const qsock_send_block,
    /// Running time in ns; `QSOCK_CLOCK_TIME_NONE` when unset.
    pub pts: u64,
    pub dts: u64,
    pub duration: u64,
    /// The memory comes from a pool and will be sent again: its fds cross the socket only
    /// the first time (or when the object behind an fd number changed).
    pub pooled: bool,
    pub n_protection_metas: usize,
    /// Serialized GstStructures.
    pub protection_metas: *const *const c_char,
    pub n_roi_metas: usize,
    pub roi_metas: *const qsock_roi_meta,
    pub n_class_metas: usize,
    pub class_metas: *const qsock_class_meta,
    pub n_landmarks_metas: usize,
    pub landmarks_metas: *const qsock_landmarks_meta,
}

/// What a receiver said.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum qsock_event_type {
    /// The receiver is done with `buf_ids` (your fd numbers): their memory may be reused.
    QSOCK_EVENT_RETURN = 1,
    /// The receiver is pausing: stop sending, wait for the outstanding returns, close the
    /// sender, and connect again later.
    QSOCK_EVENT_DISCONNECT = 2,
}

#[repr(C)]
pub struct qsock_sender_event {
    pub type_: qsock_event_type,
    /// For QSOCK_EVENT_RETURN: how many of `buf_ids` are set.
    pub n_buf_ids: usize,
    pub buf_ids: [i32; QSOCK_MAX_BLOCKS],
}

/// `n` items at `ptr`, read during the call; NULL is fine when `n` is 0.
fn items<'a, T>(ptr: *const T, n: usize, name: &str) -> Result<&'a [T], Failure> {
    if n == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(invalid(format!("{name} is NULL but its count is {n}")));
    }
    // SAFETY: the caller passes `n` valid items at `ptr`, as the field's documentation requires.
    Ok(unsafe { std::slice::from_raw_parts(ptr, n) })
}

fn string(ptr: *const c_char, name: &str) -> Result<CString, Failure> {
    optional_string(ptr)?.ok_or_else(|| invalid(format!("{name} is NULL")))
}

fn optional_string(ptr: *const c_char) -> Result<Option<CString>, Failure> {
    // SAFETY: the caller passes NULL or a NUL-terminated string, read during the call.
    Ok((!ptr.is_null()).then(|| unsafe { CStr::from_ptr(ptr) }.to_owned()))
}

fn block_description(kind: qsock_kind, b: &qsock_send_block) -> Result<MemoryBlock, Failure> {
    Ok(match kind {
        qsock_kind::QSOCK_KIND_VIDEO => MemoryBlock::Frame(FramePayload {
            width: b.video.width,
            height: b.video.height,
            format: b.video.format,
            n_planes: b.video.n_planes,
            offsets: b.video.offsets,
            strides: b.video.strides,
            flags: b.video.flags,
            size: b.size,
            maxsize: b.maxsize,
        }),
        qsock_kind::QSOCK_KIND_TENSOR => MemoryBlock::Tensor(TensorPayload {
            tensor_type: b.tensor.type_,
            n_dimensions: b.tensor.n_dimensions,
            dimensions: b.tensor.dimensions,
            size: b.size,
            maxsize: b.maxsize,
        }),
        qsock_kind::QSOCK_KIND_TEXT => {
            let len = usize::try_from(b.size).map_err(|_| invalid("text size too large"))?;
            if len > QSOCK_MAX_TEXT {
                return Err(invalid(format!("text of {len} bytes; a text block holds at most {QSOCK_MAX_TEXT}")));
            }
            MemoryBlock::Text(TextPayload { contents: items(b.text, len, "text")?.to_vec(), maxsize: b.maxsize.max(b.size) })
        }
    })
}

fn metas(buffer: &qsock_send_buffer) -> Result<Metas, Failure> {
    let protection = items(buffer.protection_metas, buffer.n_protection_metas, "protection_metas")?
        .iter()
        .map(|&s| {
            let structure = string(s, "a protection meta")?;
            let size = structure.as_bytes().len() as u64;
            Ok(ProtectionMeta { structure, size, maxsize: size })
        })
        .collect::<Result<_, Failure>>()?;
    let roi = items(buffer.roi_metas, buffer.n_roi_metas, "roi_metas")?
        .iter()
        .map(|r| {
            Ok(RoiMeta {
                label: string(r.label, "roi label")?,
                id: r.id,
                parent_id: r.parent_id,
                x: r.x,
                y: r.y,
                w: r.w,
                h: r.h,
                det_meta: optional_string(r.det_meta)?,
                xtraparams: optional_string(r.xtraparams)?,
            })
        })
        .collect::<Result<_, Failure>>()?;
    let class = items(buffer.class_metas, buffer.n_class_metas, "class_metas")?
        .iter()
        .map(|c| {
            let labels = items(c.labels, c.n_labels, "class labels")?
                .iter()
                .map(|l| {
                    Ok(ClassLabel {
                        name: string(l.name, "class label name")?,
                        confidence: l.confidence,
                        color: l.color,
                        xtraparams: optional_string(l.xtraparams)?,
                    })
                })
                .collect::<Result<_, Failure>>()?;
            Ok(ClassMeta { id: c.id, parent_id: c.parent_id, labels })
        })
        .collect::<Result<_, Failure>>()?;
    let landmarks = items(buffer.landmarks_metas, buffer.n_landmarks_metas, "landmarks_metas")?
        .iter()
        .map(|m| {
            let keypoints = items(m.keypoints, m.n_keypoints, "keypoints")?
                .iter()
                .map(|k| {
                    Ok(Keypoint { name: string(k.name, "keypoint name")?, confidence: k.confidence, color: k.color, x: k.x, y: k.y })
                })
                .collect::<Result<_, Failure>>()?;
            let links = items(m.links, m.n_links, "links")?
                .iter()
                .map(|l| Link { s_kp_idx: l.s_kp_idx, d_kp_idx: l.d_kp_idx })
                .collect();
            Ok(LandmarksMeta {
                id: m.id,
                parent_id: m.parent_id,
                confidence: m.confidence,
                keypoints,
                links,
                xtraparams: optional_string(m.xtraparams)?,
            })
        })
        .collect::<Result<_, Failure>>()?;
    Ok(Metas { protection, roi, class, landmarks })
}

/// Connects to a receiver listening at `socket_path` (one attempt). `QSOCK_IO_ERROR`
/// when none listens there yet: retry (the deployed sender retries every 10 ms).
/// On `QSOCK_OK`, `*sender_out` is a new sender owned by the caller, freed with
/// `qsock_sender_close`.
#[no_mangle]
pub extern "C" fn qsock_sender_connect(socket_path: *const c_char, sender_out: *mut *mut qsock_sender) -> qsock_status {
    guard(|| {
        let path = string(socket_path, "socket_path")?;
        arg(sender_out, "sender_out")?;
        let path = std::path::Path::new(std::ffi::OsStr::from_bytes(path.as_bytes()));
        let sender = Sender::connect(path)?;
        write_out(sender_out, "sender_out", Box::into_raw(Box::new(qsock_sender { sender })))?;
        Ok(QSOCK_OK)
    })
}

/// Sends one buffer. The memory behind its fds must stay unchanged until each block's
/// buf_id (its fd number) comes back in a `QSOCK_EVENT_RETURN` (text holds no memory and
/// is never returned). `QSOCK_INVALID_ARGUMENT` (nothing sent) when the buffer breaks a
/// rule a receiver checks: sizes past the fd's object, plane offsets past the size, text
/// over 1024 bytes, ... `QSOCK_IO_ERROR` when the socket failed (the receiver is gone).
#[no_mangle]
pub extern "C" fn qsock_sender_send(sender: *mut qsock_sender, buffer: *const qsock_send_buffer) -> qsock_status {
    guard(|| {
        let sender = arg_mut(sender, "sender")?;
        let buffer = arg(buffer, "buffer")?;
        let blocks = items(buffer.blocks, buffer.n_blocks, "blocks")?
            .iter()
            .map(|b| {
                let fd = (buffer.kind != qsock_kind::QSOCK_KIND_TEXT).then(|| {
                    // SAFETY: the caller keeps `fd` open for the call (and until its return).
                    unsafe { BorrowedFd::borrow_raw(b.fd) }
                });
                if fd.is_some() && b.fd < 0 {
                    return Err(invalid(format!("fd {} is not an fd", b.fd)));
                }
                Ok(OutgoingBlock { fd, description: block_description(buffer.kind, b)? })
            })
            .collect::<Result<Vec<_>, Failure>>()?;
        let outgoing = OutgoingBuffer {
            blocks,
            pts: buffer.pts,
            dts: buffer.dts,
            duration: buffer.duration,
            pooled: buffer.pooled,
            metas: metas(buffer)?,
        };
        sender.sender.send(&outgoing)?;
        Ok(QSOCK_OK)
    })
}

/// Sends EOS: the receiver ends its stream.
#[no_mangle]
pub extern "C" fn qsock_sender_send_eos(sender: *mut qsock_sender) -> qsock_status {
    guard(|| {
        arg_mut(sender, "sender")?.sender.send_eos()?;
        Ok(QSOCK_OK)
    })
}

/// Waits up to `timeout_ms` (negative: for ever; 0: just look) for what the receiver
/// says next: `QSOCK_OK` with `*event_out` filled, `QSOCK_TIMEOUT`, or
/// `QSOCK_RECEIVER_GONE` (nothing outstanding will come back: all memory is yours again).
#[no_mangle]
pub extern "C" fn qsock_sender_next_event(
    sender: *mut qsock_sender,
    timeout_ms: i32,
    event_out: *mut qsock_sender_event,
) -> qsock_status {
    guard(|| {
        let sender = arg_mut(sender, "sender")?;
        arg(event_out, "event_out")?;
        let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
        let mut event = qsock_sender_event { type_: qsock_event_type::QSOCK_EVENT_RETURN, n_buf_ids: 0, buf_ids: [-1; QSOCK_MAX_BLOCKS] };
        match sender.sender.next_event(timeout)? {
            None => return Ok(QSOCK_TIMEOUT),
            Some(SenderEvent::ReceiverGone) => return Ok(QSOCK_RECEIVER_GONE),
            Some(SenderEvent::Disconnect) => event.type_ = qsock_event_type::QSOCK_EVENT_DISCONNECT,
            Some(SenderEvent::Returned(ids)) => {
                event.n_buf_ids = ids.len();
                event.buf_ids[..ids.len()].copy_from_slice(&ids);
            }
        }
        write_out(event_out, "event_out", event)?;
        Ok(QSOCK_OK)
    })
}

/// Memory blocks sent and not yet returned (0 for NULL).
#[no_mangle]
pub extern "C" fn qsock_sender_in_flight(sender: *const qsock_sender) -> usize {
    let mut n = 0;
    guard(|| {
        n = arg(sender, "sender")?.sender.in_flight();
        Ok(QSOCK_OK)
    });
    n
}

/// An fd for the app's event loop: polls readable when `qsock_sender_next_event` has
/// something. Owned by the sender (do not close it). -1 if `sender` is NULL.
#[no_mangle]
pub extern "C" fn qsock_sender_get_fd(sender: *const qsock_sender) -> c_int {
    let mut fd = -1;
    guard(|| {
        fd = arg(sender, "sender")?.sender.as_fd().as_raw_fd();
        Ok(QSOCK_OK)
    });
    fd
}

/// Closes the connection and frees the sender. Buffers not yet returned never will be:
/// their memory is the caller's again. NULL is a no-op.
#[no_mangle]
pub extern "C" fn qsock_sender_close(sender: *mut qsock_sender) {
    guard(|| {
        if !sender.is_null() {
            // SAFETY: a sender from qsock_sender_connect, closed once, as documented.
            drop(unsafe { Box::from_raw(sender) });
        }
        Ok(QSOCK_OK)
    });
}
