//! The C data types of include/qsock.h: the status and kind enums, the limits, and every
//! `#[repr(C)]` struct a caller fills or reads. Data only; the functions that fill and
//! read them live in receiver.rs, sender.rs and buffer.rs.

use std::ffi::{c_char, c_int};

use crate::protocol;

/// `GstClockTime` NONE: a timestamp that is not set.
#[allow(dead_code)] // used from C, through the header
pub const QSOCK_CLOCK_TIME_NONE: u64 = u64::MAX;

/// At most this many memory blocks per buffer.
pub const QSOCK_MAX_BLOCKS: usize = 10;
/// At most this many planes per video block.
pub const QSOCK_MAX_PLANES: usize = 4;
/// At most this many dimensions per tensor.
pub const QSOCK_MAX_DIMENSIONS: usize = 8;
/// At most this many bytes per text block.
pub const QSOCK_MAX_TEXT: usize = 1024;
/// At most this many bytes (the NUL not counted) in a name: an ROI label, a class
/// label's name, a keypoint's name. Longer ones are refused, not cut.
pub const QSOCK_MAX_NAME: usize = 31;
/// At most this many bytes (the NUL not counted) in a serialized GstStructure of a meta:
/// `det_meta`, every `xtraparams`.
pub const QSOCK_MAX_STRUCTURE: usize = 255;
/// At most this many bytes (the NUL not counted) in a protection meta's structure.
pub const QSOCK_MAX_PROTECTION: usize = 1023;
/// At most this many labels per classification meta.
pub const QSOCK_MAX_CLASS_LABELS: usize = 32;
/// At most this many keypoints per landmarks meta.
pub const QSOCK_MAX_KEYPOINTS: usize = 64;
/// At most this many links per landmarks meta.
pub const QSOCK_MAX_LINKS: usize = 64;
/// At most this many bytes in a buffer's whole description on the wire (its blocks and
/// every meta): it bounds the metas per buffer, e.g. 445 ROI metas, or 26 classification
/// metas. A meta payload takes 1044 (protection), 588 (ROI), 9876 (classification) or
/// 4140 (landmarks) bytes; a block 88 (video), 60 (tensor) or 1044 (text); 80 more for
/// the buffer.
pub const QSOCK_MAX_MESSAGE: usize = 256 * 1024;
const _: () = assert!(
    QSOCK_MAX_BLOCKS == protocol::MAX_MEMORY_BLOCKS
        && QSOCK_MAX_PLANES == protocol::MAX_PLANES
        && QSOCK_MAX_DIMENSIONS == protocol::MAX_TENSOR_DIMENSIONS
        && QSOCK_MAX_TEXT == protocol::MAX_TEXT_LEN
        && QSOCK_MAX_NAME == protocol::NAME_CAPACITY - 1
        && QSOCK_MAX_STRUCTURE == protocol::STRUCTURE_CAPACITY - 1
        && QSOCK_MAX_PROTECTION == protocol::MAX_TEXT_LEN - 1
        && QSOCK_MAX_CLASS_LABELS == protocol::MAX_CLASS_LABELS
        && QSOCK_MAX_KEYPOINTS == protocol::MAX_KEYPOINTS
        && QSOCK_MAX_LINKS == protocol::MAX_LINKS
        && QSOCK_MAX_MESSAGE == protocol::MAX_RECORD_LEN
);

/// The socket file's default mode, 0600: read and write for the owner only.
pub const QSOCK_DEFAULT_SOCKET_MODE: u32 = 0o600;
const _: () = assert!(QSOCK_DEFAULT_SOCKET_MODE == crate::DEFAULT_SOCKET_MODE);

/// What a qsock function reports. Every function that can fail returns one; when it is
/// not `QSOCK_OK`, `qsock_last_error()` says what went wrong, in words. Values may be
/// added at the end in later versions.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum qsock_status {
    /// Success. From `qsock_receiver_recv_buffer`: a buffer was received.
    QSOCK_OK = 0,
    /// Nothing arrived within the timeout.
    QSOCK_TIMEOUT = 1,
    /// The sender ended its stream (EOS). It may send again afterwards.
    QSOCK_EOS = 2,
    /// The sender closed the connection or died. Its cached fds are closed; the next
    /// receive waits for a new sender on the same socket.
    QSOCK_SENDER_GONE = 3,
    /// The sender broke the protocol. That message was rejected, its fds closed, and its
    /// buffer returned to the sender; the next receive goes on with the next message.
    QSOCK_PROTOCOL_ERROR = 4,
    /// An argument was NULL, out of range, or of the wrong kind.
    QSOCK_INVALID_ARGUMENT = 5,
    /// The socket path cannot be used (too long, or taken by something that is not a socket).
    QSOCK_BAD_SOCKET_PATH = 6,
    /// A system call failed (e.g. a directory that does not exist, fd exhaustion).
    QSOCK_IO_ERROR = 7,
    /// A bug in qsock: an internal panic was caught at the boundary.
    QSOCK_INTERNAL_ERROR = 8,
    /// The receiver closed the connection or died. Nothing outstanding will come back.
    QSOCK_RECEIVER_GONE = 9,
    /// A sender connected whose uid is not in the receiver's allowed uids: it was
    /// disconnected. The next receive goes on waiting for an allowed sender.
    QSOCK_SENDER_REFUSED = 10,
    /// The wait was ended by `qsock_receiver_interrupt` or `qsock_sender_interrupt`.
    QSOCK_INTERRUPTED = 11,
}

impl qsock_status {
    /// Every status, in order of value.
    pub(crate) const ALL: [qsock_status; 12] = [
        qsock_status::QSOCK_OK,
        qsock_status::QSOCK_TIMEOUT,
        qsock_status::QSOCK_EOS,
        qsock_status::QSOCK_SENDER_GONE,
        qsock_status::QSOCK_PROTOCOL_ERROR,
        qsock_status::QSOCK_INVALID_ARGUMENT,
        qsock_status::QSOCK_BAD_SOCKET_PATH,
        qsock_status::QSOCK_IO_ERROR,
        qsock_status::QSOCK_INTERNAL_ERROR,
        qsock_status::QSOCK_RECEIVER_GONE,
        qsock_status::QSOCK_SENDER_REFUSED,
        qsock_status::QSOCK_INTERRUPTED,
    ];
}

/// The kind of a buffer's memory blocks. (`qsock_send_buffer.kind` is an `int` holding
/// one of these: qsock checks the value it reads instead of trusting it.)
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum qsock_kind {
    /// Video frames: one block per frame, described by `qsock_video_info`.
    QSOCK_KIND_VIDEO = 1,
    /// Tensors: one block per tensor, described by `qsock_tensor_info`.
    QSOCK_KIND_TENSOR = 2,
    /// Text: bytes carried in the message itself (no fd), read with `qsock_buffer_get_text`.
    QSOCK_KIND_TEXT = 3,
}

impl qsock_kind {
    /// The kind whose value C passed in `value`, or `None` for a value that is none.
    pub(crate) fn from_c(value: c_int) -> Option<qsock_kind> {
        [qsock_kind::QSOCK_KIND_VIDEO, qsock_kind::QSOCK_KIND_TENSOR, qsock_kind::QSOCK_KIND_TEXT]
            .into_iter()
            .find(|&kind| kind as c_int == value)
    }
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

/// What a buffer holds, in counts and timestamps.
#[repr(C)]
pub struct qsock_buffer_info {
    pub kind: qsock_kind,
    /// Memory blocks (1..=10): frames, tensors or texts.
    pub n_blocks: usize,
    /// The sender's running time in ns; `QSOCK_CLOCK_TIME_NONE` when unset.
    pub pts: u64,
    pub dts: u64,
    pub duration: u64,
    /// Whether the sender pools this buffer (its fds are cached here and reused).
    pub use_buffer_pool: bool,
    pub n_protection_metas: usize,
    pub n_roi_metas: usize,
    pub n_class_metas: usize,
    pub n_landmarks_metas: usize,
}

/// One memory block.
#[repr(C)]
pub struct qsock_block {
    /// The memory's fd (a DMA-BUF or memfd), owned by the buffer: valid until the buffer
    /// is released; do not close it. Map `maxsize` bytes from offset 0. -1 for text.
    pub fd: c_int,
    /// The sender's id for this memory (its fd number there); -1 for text.
    pub buf_id: i32,
    /// Bytes in use, from offset 0.
    pub size: u64,
    /// The memory's whole size; never more than the object behind `fd`.
    pub maxsize: u64,
}

/// A video block's layout (the GstVideoMeta values).
#[repr(C)]
pub struct qsock_video_info {
    /// A GstVideoFormat value (NV12 = 23).
    pub format: u32,
    /// The format's GStreamer name ("NV12"); "UNKNOWN" for a value GStreamer does not
    /// know. A static string.
    pub format_name: *const c_char,
    pub width: u32,
    pub height: u32,
    /// Planes in use (1..=4); entries past it in `offsets`/`strides` are 0.
    pub n_planes: u32,
    /// Each plane's byte offset in the block; every one lies inside the block's size.
    pub offsets: [u64; QSOCK_MAX_PLANES],
    pub strides: [i32; QSOCK_MAX_PLANES],
    /// GstVideoFrameFlags.
    pub flags: u32,
}

/// A tensor block's shape.
#[repr(C)]
pub struct qsock_tensor_info {
    /// 0 UNKNOWN, 1 INT8, 2 UINT8, 3 INT16, 4 UINT16, 5 INT32, 6 UINT32, 7 INT64,
    /// 8 UINT64, 9 FLOAT16, 10 FLOAT32; other values are passed on as sent.
    pub type_: u32,
    /// The type's name as caps spell it ("UINT8"); "UNKNOWN" for other values. Static.
    pub type_name: *const c_char,
    /// Dimensions in use (0..=8); entries past it in `dimensions` are 0.
    pub n_dimensions: u32,
    pub dimensions: [u32; QSOCK_MAX_DIMENSIONS],
}

/// A region of interest (GstVideoRegionOfInterestMeta). Received: the strings belong to
/// the buffer. Sent: `label` at most `QSOCK_MAX_NAME` bytes, `det_meta` and `xtraparams`
/// at most `QSOCK_MAX_STRUCTURE`.
#[repr(C)]
pub struct qsock_roi_meta {
    pub label: *const c_char,
    pub id: i32,
    pub parent_id: i32,
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
    /// Detection parameters, a serialized GstStructure; NULL when absent.
    pub det_meta: *const c_char,
    /// Extra parameters, a serialized GstStructure; NULL when absent.
    pub xtraparams: *const c_char,
}

/// One label of a classification. Sent: `name` at most `QSOCK_MAX_NAME` bytes,
/// `xtraparams` at most `QSOCK_MAX_STRUCTURE`.
#[repr(C)]
pub struct qsock_class_label {
    pub name: *const c_char,
    pub confidence: f64,
    /// 0xRRGGBBAA.
    pub color: u32,
    /// A serialized GstStructure; NULL when absent.
    pub xtraparams: *const c_char,
}

/// An image classification result. Received: arrays and strings belong to the buffer.
#[repr(C)]
pub struct qsock_class_meta {
    pub id: u32,
    pub parent_id: i32,
    /// At most `QSOCK_MAX_CLASS_LABELS`.
    pub n_labels: usize,
    pub labels: *const qsock_class_label,
}

/// One keypoint of a landmarks result. Sent: `name` at most `QSOCK_MAX_NAME` bytes.
#[repr(C)]
pub struct qsock_keypoint {
    pub name: *const c_char,
    pub confidence: f64,
    pub color: u32,
    pub x: u32,
    pub y: u32,
}

/// A link between two keypoints, by index; both lie below `n_keypoints`.
#[repr(C)]
pub struct qsock_link {
    pub s_kp_idx: u32,
    pub d_kp_idx: u32,
}

/// A pose or landmarks result. Received: arrays and strings belong to the buffer.
#[repr(C)]
pub struct qsock_landmarks_meta {
    pub id: u32,
    pub parent_id: i32,
    pub confidence: f64,
    /// At most `QSOCK_MAX_KEYPOINTS`.
    pub n_keypoints: usize,
    pub keypoints: *const qsock_keypoint,
    /// At most `QSOCK_MAX_LINKS`.
    pub n_links: usize,
    pub links: *const qsock_link,
    /// A serialized GstStructure (at most `QSOCK_MAX_STRUCTURE` bytes); NULL when absent.
    pub xtraparams: *const c_char,
}

/// How a receiver guards its socket. Fill it with `qsock_receiver_options_init` first,
/// then change what you need; the defaults are the restrictive choice.
#[repr(C)]
pub struct qsock_receiver_options {
    /// Permission bits of the socket file (at most 0777): connecting needs write
    /// permission on it. Default 0600: only this user (and root) may connect.
    pub socket_mode: u32,
    /// If `n_allowed_uids` > 0: only senders whose process runs as one of these uids
    /// are accepted; others are disconnected at once (`QSOCK_SENDER_REFUSED`). The array
    /// is copied by `qsock_receiver_open_with_options`. Default: none, anyone who can
    /// open the socket.
    pub allowed_uids: *const u32,
    pub n_allowed_uids: usize,
}

/// The receiver's counters, over its whole life.
#[repr(C)]
pub struct qsock_receiver_stats {
    /// Buffers received.
    pub buffers: u64,
    /// Sum of the received blocks' sizes: the bytes that moved without a copy.
    pub bytes_described: u64,
    /// fds received from senders.
    pub fds_received: u64,
    /// fds cached now for the current sender's pooled buffers.
    pub fds_cached: u64,
    /// Return messages sent to senders.
    pub returns_sent: u64,
    /// Messages rejected for breaking the protocol.
    pub protocol_errors: u64,
    /// Senders accepted so far.
    pub senders_accepted: u64,
    /// Senders disconnected at once because their uid is not in `allowed_uids`.
    pub senders_refused: u64,
    /// Whether a sender is connected now.
    pub connected: bool,
    /// The connected sender's process id, uid and gid (SO_PEERCRED); -1 when none is.
    pub peer_pid: i64,
    pub peer_uid: i64,
    pub peer_gid: i64,
}

/// One memory block to send.
#[repr(C)]
pub struct qsock_send_block {
    /// The memory's fd (a DMA-BUF or memfd; ignored for text). Its number becomes the
    /// block's buf_id, and returns name it: keep it open and the memory unchanged until
    /// its return arrives. qsock does not take ownership. A negative value (or one that is
    /// no open fd) for video or tensors is `QSOCK_INVALID_ARGUMENT`.
    pub fd: c_int,
    /// Bytes in use from offset 0, and the memory's whole size (at most the fd's size).
    pub size: u64,
    pub maxsize: u64,
    /// For QSOCK_KIND_VIDEO: the layout (`format_name` is ignored).
    pub video: qsock_video_info,
    /// For QSOCK_KIND_TENSOR: the shape (`type_name` is ignored).
    pub tensor: qsock_tensor_info,
    /// For QSOCK_KIND_TEXT: `size` bytes (at most `QSOCK_MAX_TEXT`), copied into the
    /// message; `size` is checked before they are read.
    pub text: *const u8,
}

/// A buffer to send. Everything it points to is read during the call only, and only
/// after `kind` and every count were checked: a count is never trusted to read past an
/// array. What the wire cannot carry (a name over `QSOCK_MAX_NAME` bytes, a structure
/// over `QSOCK_MAX_STRUCTURE`, more than `QSOCK_MAX_CLASS_LABELS` labels, ...) is refused
/// with `QSOCK_INVALID_ARGUMENT` naming the limit; nothing is cut.
#[repr(C)]
pub struct qsock_send_buffer {
    /// A `qsock_kind` (`QSOCK_KIND_VIDEO`, `QSOCK_KIND_TENSOR` or `QSOCK_KIND_TEXT`); any
    /// other value, 0 from a zeroed struct included, is `QSOCK_INVALID_ARGUMENT`.
    pub kind: c_int,
    /// 1..=10 (`QSOCK_MAX_BLOCKS`) blocks, all of `kind`.
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
    /// Serialized GstStructures, at most `QSOCK_MAX_PROTECTION` bytes each.
    pub protection_metas: *const *const c_char,
    pub n_roi_metas: usize,
    pub roi_metas: *const qsock_roi_meta,
    pub n_class_metas: usize,
    pub class_metas: *const qsock_class_meta,
    pub n_landmarks_metas: usize,
    pub landmarks_metas: *const qsock_landmarks_meta,
}

#[repr(C)]
pub struct qsock_sender_event {
    pub type_: qsock_event_type,
    /// For QSOCK_EVENT_RETURN: how many of `buf_ids` are set.
    pub n_buf_ids: usize,
    pub buf_ids: [i32; QSOCK_MAX_BLOCKS],
}
