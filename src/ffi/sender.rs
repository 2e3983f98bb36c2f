//! `qsock_sender_*`: connect to a receiver, send buffers described by fds and info
//! structs, learn of their returns.

use std::ffi::{c_char, c_int, CString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::transport::OwnerProcess;
use rustix::process::Pid;

use super::*;
use crate::protocol::{
    ClassLabel, ClassMeta, FramePayload, Keypoint, LandmarksMeta, Link, MemoryBlock, Metas, ProtectionMeta, RoiMeta,
    TensorPayload, TextPayload,
};
use crate::{OutgoingBlock, OutgoingBuffer, Sender, SenderEvent, SenderInterrupter, Waited};

/// A connection to a receiver. Opaque. Use it from one thread at a time, except
/// `qsock_sender_interrupt`, which any thread (or a signal handler) may call at any time.
pub struct qsock_sender {
    /// Locked by every call but `qsock_sender_interrupt` (the calls on one sender take
    /// turns; none is meant to overlap another anyway).
    sender: Mutex<Sender>,
    interrupter: SenderInterrupter,
    /// The socket's fd: the same for the sender's whole life, so read without the lock.
    poll_fd: c_int,
    /// The process that connected: after fork, the child may only close its copy.
    owner: OwnerProcess,
}

impl Handle for qsock_sender {}
const _: fn() = || {
    fn sync<T: Sync>() {}
    sync::<qsock_sender>();
};

impl qsock_sender {
    /// The sender, for a call from the process that connected it.
    fn lock(&self) -> Result<MutexGuard<'_, Sender>, Failure> {
        if !self.owner.is_this() {
            return Err(forked(self.owner.pid(), "sender", "qsock_sender_close"));
        }
        // A panic caught in an earlier call leaves it usable: the lock guards no invariant.
        Ok(self.sender.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The failure of a call on a handle inherited across fork.
pub(crate) fn forked(pid: Pid, what: &str, close: &str) -> Failure {
    invalid(format!(
        "this {what} belongs to process {} and this is a forked child: the child may only {close} its copy",
        pid.as_raw_nonzero()
    ))
}

/// Meta payloads that fit in one message: a count past these is refused before its
/// array is read (the whole description is checked against QSOCK_MAX_MESSAGE later).
const MAX_PROTECTION_METAS: usize = QSOCK_MAX_MESSAGE / 1044;
const MAX_ROI_METAS: usize = QSOCK_MAX_MESSAGE / 588;
const MAX_CLASS_METAS: usize = QSOCK_MAX_MESSAGE / 9876;
const MAX_LANDMARKS_METAS: usize = QSOCK_MAX_MESSAGE / 4140;

/// An owned copy of the C string at `ptr`, refused when NULL or longer than `max` bytes
/// (what its array on the wire holds, the NUL aside): nothing is ever cut.
fn bounded_string(ptr: *const c_char, max: usize, name: &str) -> Result<CString, Failure> {
    let value = string(ptr, name)?;
    let len = value.to_bytes().len();
    if len > max {
        let limit = limit_name(max);
        return Err(invalid(format!("{name} is {len} bytes long; the wire holds at most {max} ({limit})")));
    }
    Ok(value.to_owned())
}

fn optional_bounded_string(ptr: *const c_char, max: usize, name: &str) -> Result<Option<CString>, Failure> {
    (!ptr.is_null()).then(|| bounded_string(ptr, max, name)).transpose()
}

/// The header's name of a string limit, for the words of a refusal.
fn limit_name(max: usize) -> &'static str {
    match max {
        QSOCK_MAX_NAME => "QSOCK_MAX_NAME",
        QSOCK_MAX_STRUCTURE => "QSOCK_MAX_STRUCTURE",
        _ => "QSOCK_MAX_PROTECTION",
    }
}

fn block_description(kind: qsock_kind, index: usize, b: &qsock_send_block) -> Result<MemoryBlock, Failure> {
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
            let name = format!("blocks[{index}].text");
            // Checked before the bytes are read: `size` is how many the call reads.
            let len = usize::try_from(b.size).unwrap_or(usize::MAX);
            let contents = items(b.text, len, QSOCK_MAX_TEXT, &name).map_err(|_| {
                let size = b.size;
                invalid(format!("{name}: {size} bytes; a text block holds at most {QSOCK_MAX_TEXT} (QSOCK_MAX_TEXT)"))
            })?;
            MemoryBlock::Text(TextPayload { contents: contents.to_vec(), maxsize: b.maxsize.max(b.size) })
        }
    })
}

fn metas(buffer: &qsock_send_buffer) -> Result<Metas, Failure> {
    let n_protection = buffer.n_protection_metas;
    let protection = items(buffer.protection_metas, n_protection, MAX_PROTECTION_METAS, "protection_metas")?
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let structure = bounded_string(s, QSOCK_MAX_PROTECTION, &format!("protection_metas[{i}]"))?;
            let size = structure.as_bytes().len() as u64;
            Ok(ProtectionMeta { structure, size, maxsize: size })
        })
        .collect::<Result<_, Failure>>()?;
    let roi = items(buffer.roi_metas, buffer.n_roi_metas, MAX_ROI_METAS, "roi_metas")?
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let structure = |ptr, field: &str| {
                optional_bounded_string(ptr, QSOCK_MAX_STRUCTURE, &format!("roi_metas[{i}].{field}"))
            };
            Ok(RoiMeta {
                label: bounded_string(r.label, QSOCK_MAX_NAME, &format!("roi_metas[{i}].label"))?,
                id: r.id,
                parent_id: r.parent_id,
                x: r.x,
                y: r.y,
                w: r.w,
                h: r.h,
                det_meta: structure(r.det_meta, "det_meta")?,
                xtraparams: structure(r.xtraparams, "xtraparams")?,
            })
        })
        .collect::<Result<_, Failure>>()?;
    let class = items(buffer.class_metas, buffer.n_class_metas, MAX_CLASS_METAS, "class_metas")?
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let labels_name = format!("class_metas[{i}].labels (QSOCK_MAX_CLASS_LABELS)");
            let labels = items(c.labels, c.n_labels, QSOCK_MAX_CLASS_LABELS, &labels_name)?
                .iter()
                .enumerate()
                .map(|(j, l)| {
                    let name = |field: &str| format!("class_metas[{i}].labels[{j}].{field}");
                    Ok(ClassLabel {
                        name: bounded_string(l.name, QSOCK_MAX_NAME, &name("name"))?,
                        confidence: l.confidence,
                        color: l.color,
                        xtraparams: optional_bounded_string(l.xtraparams, QSOCK_MAX_STRUCTURE, &name("xtraparams"))?,
                    })
                })
                .collect::<Result<_, Failure>>()?;
            Ok(ClassMeta { id: c.id, parent_id: c.parent_id, labels })
        })
        .collect::<Result<_, Failure>>()?;
    let landmarks = items(buffer.landmarks_metas, buffer.n_landmarks_metas, MAX_LANDMARKS_METAS, "landmarks_metas")?
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let keypoints_name = format!("landmarks_metas[{i}].keypoints (QSOCK_MAX_KEYPOINTS)");
            let keypoints = items(m.keypoints, m.n_keypoints, QSOCK_MAX_KEYPOINTS, &keypoints_name)?
                .iter()
                .enumerate()
                .map(|(j, k)| {
                    let name_name = format!("landmarks_metas[{i}].keypoints[{j}].name");
                    let name = bounded_string(k.name, QSOCK_MAX_NAME, &name_name)?;
                    Ok(Keypoint { name, confidence: k.confidence, color: k.color, x: k.x, y: k.y })
                })
                .collect::<Result<Vec<_>, Failure>>()?;
            let links_name = format!("landmarks_metas[{i}].links (QSOCK_MAX_LINKS)");
            let links = items(m.links, m.n_links, QSOCK_MAX_LINKS, &links_name)?
                .iter()
                .map(|l| Link { s_kp_idx: l.s_kp_idx, d_kp_idx: l.d_kp_idx })
                .collect();
            Ok(LandmarksMeta {
                id: m.id,
                parent_id: m.parent_id,
                confidence: m.confidence,
                keypoints,
                links,
                xtraparams: optional_bounded_string(
                    m.xtraparams,
                    QSOCK_MAX_STRUCTURE,
                    &format!("landmarks_metas[{i}].xtraparams"),
                )?,
            })
        })
        .collect::<Result<_, Failure>>()?;
    Ok(Metas { protection, roi, class, landmarks })
}

/// The `OutgoingBuffer` that `buffer` describes, for `qsock_sender_send` and
/// `qsock_fanout_send`: `kind` and every count are checked before anything is read on
/// their word; the fds are borrowed (the caller keeps them open for the call).
pub(super) fn outgoing_buffer(buffer: &qsock_send_buffer) -> Result<OutgoingBuffer<'_>, Failure> {
    // The enum and the counts first: nothing is read on their word before they are checked.
    let kind = qsock_kind::from_c(buffer.kind).ok_or_else(|| {
        invalid(format!(
            "kind {} is not a qsock_kind (QSOCK_KIND_VIDEO 1, QSOCK_KIND_TENSOR 2, QSOCK_KIND_TEXT 3)",
            buffer.kind
        ))
    })?;
    if !(1..=QSOCK_MAX_BLOCKS).contains(&buffer.n_blocks) {
        let (n_blocks, max) = (buffer.n_blocks, QSOCK_MAX_BLOCKS);
        return Err(invalid(format!("n_blocks is {n_blocks}; a buffer has 1..={max} (QSOCK_MAX_BLOCKS)")));
    }
    let blocks = items(buffer.blocks, buffer.n_blocks, QSOCK_MAX_BLOCKS, "blocks")?
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let fd = match kind {
                qsock_kind::QSOCK_KIND_TEXT => None,
                _ if b.fd < 0 => return Err(invalid(format!("blocks[{i}].fd: fd {} is not an fd", b.fd))),
                // SAFETY: not negative (checked); the caller keeps it open for the call.
                _ => Some(unsafe { BorrowedFd::borrow_raw(b.fd) }),
            };
            Ok(OutgoingBlock { fd, description: block_description(kind, i, b)? })
        })
        .collect::<Result<Vec<_>, Failure>>()?;
    Ok(OutgoingBuffer {
        blocks,
        pts: buffer.pts,
        dts: buffer.dts,
        duration: buffer.duration,
        pooled: buffer.pooled,
        metas: metas(buffer)?,
    })
}

/// Connects to a receiver listening at `socket_path` (one attempt). `QSOCK_IO_ERROR`
/// when none listens there yet: retry (the deployed sender retries every 10 ms).
/// On `QSOCK_OK`, `*sender_out` is a new sender owned by the caller, freed with
/// `qsock_sender_close`; on failure `*sender_out` is left unchanged.
#[no_mangle]
pub extern "C" fn qsock_sender_connect(socket_path: *const c_char, sender_out: *mut *mut qsock_sender) -> qsock_status {
    call(|| {
        let path = path(socket_path, "socket_path")?;
        give_out(sender_out, "sender_out", || {
            let sender = Sender::connect(path)?;
            let (interrupter, poll_fd) = (sender.interrupter(), sender.as_fd().as_raw_fd());
            Ok(qsock_sender { sender: Mutex::new(sender), interrupter, poll_fd, owner: OwnerProcess::this() })
        })
    })
}

/// Sends one buffer. The memory behind its fds must stay unchanged until each block's
/// buf_id (its fd number) comes back in a `QSOCK_EVENT_RETURN` (text holds no memory and
/// is never returned). `QSOCK_INVALID_ARGUMENT` (nothing sent) when the buffer breaks a
/// rule a receiver checks or the wire cannot carry it: `kind` or a count out of range,
/// a negative fd, sizes past the fd's object, plane offsets past the size, text over
/// `QSOCK_MAX_TEXT` bytes, a meta string or array over its limit, ... `QSOCK_IO_ERROR`
/// when the socket failed (the receiver is gone).
///
/// Blocks only while the receiver's socket is full, at most 2 s (then `QSOCK_IO_ERROR`
/// "the peer has not read its socket for 2 s", and the connection is closed). While it
/// waits it reads what the receiver says (returns, DISCONNECT), so a receiver that is
/// itself waiting for room for its returns can go on; what it read waits, in order, for
/// `qsock_sender_next_event`. A sender that keeps many buffers in flight should take
/// its events now and then (`qsock_sender_next_event(sender, 0, ...)` until
/// `QSOCK_TIMEOUT`): every return read and not taken is kept for it.
#[no_mangle]
pub extern "C" fn qsock_sender_send(sender: *mut qsock_sender, buffer: *const qsock_send_buffer) -> qsock_status {
    call(|| {
        let sender = handle(sender, "sender")?;
        let outgoing = outgoing_buffer(arg(buffer, "buffer")?)?;
        Ok(sender.lock()?.send(&outgoing)?)
    })
}

/// Sends EOS: the receiver ends its stream. Blocks as `qsock_sender_send` does.
#[no_mangle]
pub extern "C" fn qsock_sender_send_eos(sender: *mut qsock_sender) -> qsock_status {
    call(|| Ok(handle(sender, "sender")?.lock()?.send_eos()?))
}

/// Waits up to `timeout_ms` (negative: for ever; 0: just look) for what the receiver
/// says next: `QSOCK_OK` with `*event_out` filled, `QSOCK_TIMEOUT`, `QSOCK_INTERRUPTED`
/// (`qsock_sender_interrupt` was called), or `QSOCK_RECEIVER_GONE` (nothing outstanding
/// will come back: all memory is yours again). What `qsock_sender_send` read while it
/// waited for room comes first, in order. Every status but `QSOCK_OK` leaves
/// `*event_out` unchanged and says why in `qsock_last_error()`.
///
/// Signals: a signal that arrives while it waits does not end the wait (it goes on for
/// the time left after the handler ran). To end it from a signal handler, or from
/// another thread, call `qsock_sender_interrupt`.
#[no_mangle]
pub extern "C" fn qsock_sender_next_event(
    sender: *mut qsock_sender,
    timeout_ms: i32,
    event_out: *mut qsock_sender_event,
) -> qsock_status {
    call(|| {
        let sender = handle(sender, "sender")?;
        arg_mut(event_out, "event_out")?;
        let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
        let mut event = qsock_sender_event {
            type_: qsock_event_type::QSOCK_EVENT_RETURN,
            n_buf_ids: 0,
            buf_ids: [-1; QSOCK_MAX_BLOCKS],
        };
        match sender.lock()?.wait_event(timeout)? {
            Waited::Timeout => {
                return Err(Failure::new(QSOCK_TIMEOUT, format!("the receiver said nothing within {timeout_ms} ms")));
            }
            Waited::Interrupted => {
                return Err(Failure::new(QSOCK_INTERRUPTED, "the wait was interrupted (qsock_sender_interrupt)"));
            }
            Waited::Event(SenderEvent::ReceiverGone) => {
                let message = "the receiver closed the connection: nothing outstanding will come back, all its memory is yours again";
                return Err(Failure::new(QSOCK_RECEIVER_GONE, message));
            }
            Waited::Event(SenderEvent::Disconnect) => event.type_ = qsock_event_type::QSOCK_EVENT_DISCONNECT,
            Waited::Event(SenderEvent::Returned(ids)) => {
                event.n_buf_ids = ids.len();
                event.buf_ids[..ids.len()].copy_from_slice(&ids);
            }
        }
        write_out(event_out, "event_out", event)
    })
}

/// Makes a `qsock_sender_next_event` waiting on `sender` return `QSOCK_INTERRUPTED` at
/// once; when none waits, the next one that would wait returns it instead (an interrupt
/// is never lost, and several before a wait count as one). A call that finds an event
/// ready returns the event first. Safe from any thread, also while another waits in
/// `qsock_sender_next_event`, and from a signal handler (it writes to an eventfd, and
/// does nothing else when `sender` is valid). `sender` must stay open meanwhile.
#[no_mangle]
pub extern "C" fn qsock_sender_interrupt(sender: *const qsock_sender) -> qsock_status {
    call(|| {
        let sender = handle(sender, "sender")?;
        if !sender.owner.is_this() {
            return Err(forked(sender.owner.pid(), "sender", "qsock_sender_close"));
        }
        sender.interrupter.interrupt();
        Ok(())
    })
}

/// Memory blocks sent and not yet returned (0 for NULL, and in a forked child). Returns
/// that `qsock_sender_send` read while it waited count as returned already, before
/// `qsock_sender_next_event` reports them.
#[no_mangle]
pub extern "C" fn qsock_sender_in_flight(sender: *const qsock_sender) -> usize {
    boundary(|| Ok(handle(sender, "sender")?.lock()?.in_flight()))
}

/// An fd for the app's event loop: polls readable when `qsock_sender_next_event` has
/// something to read (call it also after a `qsock_sender_send`: what a send read while it
/// waited no longer polls readable). Owned by the sender (do not close it). -1 if
/// `sender` is NULL.
#[no_mangle]
pub extern "C" fn qsock_sender_get_fd(sender: *const qsock_sender) -> c_int {
    boundary(|| Ok(handle(sender, "sender")?.poll_fd))
}

/// Closes the connection and frees the sender. Buffers not yet returned never will be:
/// their memory is the caller's again. Call it exactly once per sender; `sender` is
/// invalid afterwards. NULL is a no-op. In a forked child it closes the child's copy of
/// the socket only: the parent's connection goes on.
#[no_mangle]
pub extern "C" fn qsock_sender_close(sender: *mut qsock_sender) {
    boundary(|| {
        free(sender);
        Ok(())
    })
}
