//! The lies a hostile sender tells: one row per rule of the spec's *Validation* section
//! that a sender can break, each with the steps that break it, the `ProtocolError` it
//! must be rejected as, and the words that error's text must hold. Shared by
//! `lying_sender.rs` (against a `Receiver`) and `hostile_src.rs` (against `qtisocketsrc`
//! in a pipeline): each expands [`for_each_lie`] into tests of its own.
#![allow(dead_code, unused_imports, unused_macros)] // each test file uses a part

use std::ffi::CString;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;

use gstqtisocket::protocol::{
    BufferInfo, DataMessage, Keypoint, LandmarksMeta, RoiMeta, SenderMessage, CLOCK_TIME_NONE,
};
use gstqtisocket::transport::Connection;

// What the rows of the table name where they are expanded.
pub use gstqtisocket::protocol::{
    encode_length_record, FramePayload, Identity, Link, MemoryBlock, Metas, ProtocolError, ProtocolError::*,
    TensorPayload, TextPayload, MAX_MEMORY_BLOCKS, MAX_RECORD_LEN,
};

use crate::common::{borrow_all, memfd};

/// One NV12 64x48 frame; every memfd here has this size unless a lie says otherwise.
pub const FRAME_BYTES: u64 = 64 * 48 * 3 / 2;
/// The buf_id of the valid message sent after each lie.
pub const VALID_BUF_ID: i32 = 100;

/// Where the payloads of [`video`]'s record lie: FD_COUNT, BUFFER_INFO, FRAME, metas.
pub const INFO_AT: usize = Identity::FdCount.payload_size();
pub const FRAME_AT: usize = INFO_AT + Identity::BufferInfo.payload_size();
pub const METAS_AT: usize = FRAME_AT + Identity::Frame.payload_size();
/// Where a text message's (no FD_COUNT) `TEXT.size` field lies.
pub const TEXT_SIZE_AT: usize = Identity::BufferInfo.payload_size() + 1028;

/// More fds than the receiver's control buffer has room for.
pub const TOO_MANY_FDS: usize = 20;

// ---------------------------------------------------------------------------------------
// Building messages

pub fn nv12(size: u64, maxsize: u64) -> FramePayload {
    FramePayload {
        width: 64,
        height: 48,
        format: 23, // NV12
        n_planes: 2,
        offsets: [0, 64 * 48, 0, 0],
        strides: [64, 64, 0, 0],
        flags: 0,
        size,
        maxsize,
    }
}

pub fn tensor(n_dimensions: u32, size: u64, maxsize: u64) -> TensorPayload {
    TensorPayload { tensor_type: 2, n_dimensions, dimensions: [1, 48, 64, 1, 0, 0, 0, 0], size, maxsize }
}

/// A BUFFER_INFO naming `buf_ids`; the unused entries hold garbage, as the deployed
/// sender leaves them.
pub fn info(buf_ids: &[i32], pooled: bool) -> BufferInfo {
    let mut all = [0x5a5a_5a5a; MAX_MEMORY_BLOCKS];
    all[..buf_ids.len()].copy_from_slice(buf_ids);
    BufferInfo { buf_ids: all, pts: 1_000_000, dts: CLOCK_TIME_NONE, duration: 33_333_333, use_buffer_pool: pooled }
}

pub fn data(n_fds: Option<usize>, info: BufferInfo, blocks: Vec<MemoryBlock>, metas: Metas) -> Vec<u8> {
    SenderMessage::Data(DataMessage { n_fds, info, blocks, metas }).encode()
}

/// A valid message for one `FRAME_BYTES` memfd: FD_COUNT 1, BUFFER_INFO, FRAME.
pub fn video(buf_id: i32) -> Vec<u8> {
    video_with(buf_id, false, nv12(FRAME_BYTES, FRAME_BYTES), Metas::default())
}

pub fn video_with(buf_id: i32, pooled: bool, frame: FramePayload, metas: Metas) -> Vec<u8> {
    data(Some(1), info(&[buf_id], pooled), vec![MemoryBlock::Frame(frame)], metas)
}

pub fn memfds(n: usize) -> Vec<OwnedFd> {
    (0..n).map(|i| memfd(FRAME_BYTES, 900 + i as u64)).collect()
}

pub fn with_bytes(mut record: Vec<u8>, at: usize, remove: usize, insert: &[u8]) -> Vec<u8> {
    record.splice(at..at + remove, insert.iter().copied());
    record
}

pub fn with_u64(record: Vec<u8>, at: usize, value: u64) -> Vec<u8> {
    with_bytes(record, at, 8, &value.to_le_bytes())
}

pub fn roi(det_meta: Option<&str>) -> Metas {
    Metas {
        roi: vec![RoiMeta {
            label: CString::new("person").unwrap(),
            id: 1,
            parent_id: -1,
            x: 8,
            y: 8,
            w: 16,
            h: 32,
            det_meta: det_meta.map(|d| CString::new(d).unwrap()),
            xtraparams: None,
        }],
        ..Metas::default()
    }
}

pub fn landmarks(links: Vec<Link>) -> Metas {
    let keypoint =
        |name: &str, x| Keypoint { name: CString::new(name).unwrap(), confidence: 0.9, color: 0xff0000ff, x, y: 10 };
    Metas {
        landmarks: vec![LandmarksMeta {
            id: 1,
            parent_id: -1,
            confidence: 0.8,
            keypoints: vec![keypoint("nose", 10), keypoint("eye", 20)],
            links,
            xtraparams: None,
        }],
        ..Metas::default()
    }
}

// ---------------------------------------------------------------------------------------
// The table

/// What the test sender does, in order.
pub enum Step {
    /// A whole message as `Connection::send_message` sends it: the length record, then
    /// the record with these fds.
    Message(Vec<u8>, Vec<OwnedFd>),
    /// One record alone (`send_raw_record`), no length record before it.
    Raw(Vec<u8>, Vec<OwnedFd>),
    /// Set-up before the lie: the receiver must hand out the buffer of the valid message
    /// just sent, with this index in its memory; it is dropped at once.
    Receive(u64),
}
pub use Step::*;

/// A message that breaks one rule.
pub struct Lie {
    /// The steps, the last of which carries the lie.
    pub build: fn() -> Vec<Step>,
    /// Whether the error is the rule's.
    pub expect: fn(&ProtocolError) -> bool,
    /// Words the error's text must hold, so a user can tell what was wrong.
    pub says: &'static [&'static str],
}

/// One message record with `n` memfds attached.
pub fn message(record: Vec<u8>, n_fds: usize) -> Vec<Step> {
    vec![Message(record, memfds(n_fds))]
}

/// Expands `$then! { name: Lie { .. }, .. }` with every lie, in the order they are told
/// one after another on one connection.
macro_rules! for_each_lie {
    ($then:ident) => {
        $then! {
            // --- framing: the length record and the record after it
            length_record_of_3_bytes: Lie {
                build: || vec![Raw(vec![0, 0, 168], vec![])],
                expect: |e| matches!(e, LengthRecordSize { got: 3 }),
                says: &["exactly 4 bytes", "got 3"],
            },
            empty_record: Lie {
                // A record of 0 bytes where a length record belongs.
                build: || vec![Raw(vec![], vec![])],
                expect: |e| matches!(e, LengthRecordSize { got: 0 }),
                says: &["exactly 4 bytes", "got 0"],
            },
            length_record_announcing_0: Lie {
                build: || vec![Raw(encode_length_record(0).to_vec(), vec![])],
                expect: |e| matches!(e, RecordLengthOutOfRange { announced: 0, .. }),
                says: &["announces 0 bytes"],
            },
            length_record_announcing_more_than_max_record_len: Lie {
                build: || vec![Raw(encode_length_record(MAX_RECORD_LEN + 1).to_vec(), vec![])],
                expect: |e| matches!(e, RecordLengthOutOfRange { announced, .. } if *announced as usize == MAX_RECORD_LEN + 1),
                says: &["262145"],
            },
            length_record_disagreeing_with_its_record: Lie {
                build: || vec![
                    Raw(encode_length_record(METAS_AT + 8).to_vec(), vec![]),
                    Raw(video(7), memfds(1)),
                ],
                expect: |e| matches!(e, RecordLengthMismatch { announced, got } if *announced == METAS_AT + 8 && *got == METAS_AT),
                says: &["announced 176", "has 168"],
            },
            fds_on_the_length_record: Lie {
                // A valid length record, but carrying an fd; then the (valid) record it announces.
                // The pair is rejected once, when its message record arrives; the framing holds.
                build: || vec![
                    Raw(encode_length_record(METAS_AT).to_vec(), memfds(1)),
                    Raw(video(7), memfds(1)),
                ],
                expect: |e| matches!(e, FdCountMismatch { announced: 0, received: 1 }),
                says: &["0 fds but 1 arrived"],
            },
            more_fds_than_the_kernel_passes: Lie {
                // 20 memfds: more than the receiver's control buffer holds; the kernel passes
                // what fits (and sets MSG_CTRUNC), and the receiver must close those.
                build: || vec![
                    Raw(encode_length_record(METAS_AT).to_vec(), vec![]),
                    Raw(video(7), memfds(TOO_MANY_FDS)),
                ],
                expect: |e| matches!(e, ControlTruncated),
                says: &["MSG_CTRUNC"],
            },

            // --- payloads tile the record
            unknown_identity: Lie {
                build: || message([video(7), 99u32.to_le_bytes().to_vec()].concat(), 1),
                expect: |e| matches!(e, UnknownIdentity { identity: 99, offset } if *offset == METAS_AT),
                says: &["unknown payload identity 99", "byte 168"],
            },
            payload_cut_short: Lie {
                // The FRAME ends 8 bytes early; the length record matches the short record.
                build: || message(with_bytes(video(7), METAS_AT - 8, 8, &[]), 1),
                expect: |e| matches!(e, PayloadPastRecord { identity: Identity::Frame, offset, needed: 88, available: 80 } if *offset == FRAME_AT),
                says: &["FRAME", "needs 88", "only 80 remain"],
            },
            stray_bytes_after_the_last_payload: Lie {
                // 2 bytes after the FRAME: too few even for an identity; the length record matches.
                build: || message([video(7), vec![0xab, 0xab]].concat(), 1),
                expect: |e| matches!(e, StrayBytes { count: 2, .. }),
                says: &["2 stray bytes", "tile the record exactly"],
            },
            eos_with_a_payload_after_it: Lie {
                build: || message([0u32.to_le_bytes().to_vec(), video(7)].concat(), 1),
                expect: |e| matches!(e, EosNotAlone),
                says: &["EOS", "only payload"],
            },
            return_buffer_inside_a_data_message: Lie {
                build: || {
                    let return_buffer = [6u32.to_le_bytes().to_vec(), [0xff; 40].to_vec()].concat();
                    message(with_bytes(video(7), FRAME_AT, 0, &return_buffer), 1)
                },
                expect: |e| matches!(e, UnexpectedPayload { identity: Identity::ReturnBuffer, .. }),
                says: &["RETURN_BUFFER", "sender"],
            },

            // --- one BUFFER_INFO, FD_COUNT honest and 0..=10
            duplicate_buffer_info: Lie {
                build: || {
                    let record = video(7);
                    let info = record[INFO_AT..FRAME_AT].to_vec();
                    message(with_bytes(record, FRAME_AT, 0, &info), 1)
                },
                expect: |e| matches!(e, DuplicatePayload { identity: Identity::BufferInfo }),
                says: &["more than one BUFFER_INFO"],
            },
            fd_count_without_buffer_info: Lie {
                build: || message(with_bytes(video(7), INFO_AT, FRAME_AT - INFO_AT, &[]), 1),
                expect: |e| matches!(e, MissingBufferInfo),
                says: &["needs a BUFFER_INFO"],
            },
            fd_count_of_11: Lie {
                // 11 fds really attached, as FD_COUNT says; 11 is past the limit all the same.
                build: || {
                    let frames = vec![MemoryBlock::Frame(nv12(FRAME_BYTES, FRAME_BYTES)); 10];
                    message(data(Some(11), info(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], false), frames, Metas::default()), 11)
                },
                expect: |e| matches!(e, FdCountOutOfRange { n_fds: 11 }),
                says: &["n_fds is 11"],
            },
            fd_count_1_with_no_fd: Lie {
                build: || message(video(7), 0),
                expect: |e| matches!(e, FdCountMismatch { announced: 1, received: 0 }),
                says: &["announces 1 fds but 0 arrived"],
            },
            fd_without_fd_count: Lie {
                build: || {
                    let frame = MemoryBlock::Frame(nv12(FRAME_BYTES, FRAME_BYTES));
                    message(data(None, info(&[7], false), vec![frame], Metas::default()), 1)
                },
                expect: |e| matches!(e, FdCountMismatch { announced: 0, received: 1 }),
                says: &["announces 0 fds but 1 arrived"],
            },

            // --- 1..=10 memory blocks, of one kind
            zero_memory_blocks: Lie {
                build: || message(data(Some(1), info(&[7], false), vec![], Metas::default()), 1),
                expect: |e| matches!(e, BlockCountOutOfRange { count: 0 }),
                says: &["1..=10 memory blocks, got 0"],
            },
            eleven_memory_blocks: Lie {
                build: || {
                    let frames = vec![MemoryBlock::Frame(nv12(FRAME_BYTES, FRAME_BYTES)); 11];
                    message(data(Some(10), info(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], false), frames, Metas::default()), 10)
                },
                expect: |e| matches!(e, BlockCountOutOfRange { count: 11 }),
                says: &["got 11"],
            },
            frame_and_tensor_mixed: Lie {
                build: || {
                    let blocks = vec![
                        MemoryBlock::Frame(nv12(FRAME_BYTES, FRAME_BYTES)),
                        MemoryBlock::Tensor(tensor(4, FRAME_BYTES, FRAME_BYTES)),
                    ];
                    message(data(Some(2), info(&[7, 8], false), blocks, Metas::default()), 2)
                },
                expect: |e| matches!(e, MixedBlockKinds { block: 1, .. }),
                says: &["block 1 is tensor", "block 0 is video"],
            },
            text_with_an_fd: Lie {
                build: || {
                    let text = MemoryBlock::Text(TextPayload { contents: b"hello".to_vec(), maxsize: 5 });
                    message(data(Some(1), info(&[-1], false), vec![text], Metas::default()), 1)
                },
                expect: |e| matches!(e, FdsWithText { n_fds: 1 }),
                says: &["text", "1 arrived"],
            },

            // --- sizes against each other and against the object behind the fd
            size_over_maxsize: Lie {
                build: || message(video_with(7, false, nv12(FRAME_BYTES, 2048), Metas::default()), 1),
                expect: |e| matches!(e, SizeOverMaxsize { block: 0, size, maxsize: 2048 } if *size == FRAME_BYTES),
                says: &["size 4608 exceeds maxsize 2048"],
            },
            maxsize_0: Lie {
                // A tensor: a FRAME with size 0 already breaks "plane 0's offset lies inside size".
                build: || {
                    let empty = MemoryBlock::Tensor(tensor(4, 0, 0));
                    message(data(Some(1), info(&[7], false), vec![empty], Metas::default()), 1)
                },
                expect: |e| matches!(e, EmptyBlock { block: 0 }),
                says: &["maxsize is 0"],
            },
            maxsize_past_the_memfd: Lie {
                build: || message(video_with(7, false, nv12(FRAME_BYTES, 2 * FRAME_BYTES), Metas::default()), 1),
                expect: |e| matches!(e, MaxsizePastObject { block: 0, buf_id: 7, maxsize: 9216, object_size } if *object_size == FRAME_BYTES),
                says: &["maxsize 9216", "4608 bytes"],
            },
            cached_buf_id_claiming_more_than_its_object: Lie {
                // A pooled buffer sent once with its fd, received and dropped; then the same
                // buf_id, no fd (the cached one is meant), claiming twice the object's size.
                build: || vec![
                    Message(video_with(7, true, nv12(FRAME_BYTES, FRAME_BYTES), Metas::default()), vec![memfd(FRAME_BYTES, 7)]),
                    Receive(7),
                    Message(
                        data(None, info(&[7], true), vec![MemoryBlock::Frame(nv12(FRAME_BYTES, 2 * FRAME_BYTES))], Metas::default()),
                        vec![],
                    ),
                ],
                expect: |e| matches!(e, MaxsizePastObject { block: 0, buf_id: 7, maxsize: 9216, object_size } if *object_size == FRAME_BYTES),
                says: &["buf_id 7", "maxsize 9216", "4608 bytes"],
            },
            fd_that_is_not_memory: Lie {
                build: || {
                    let (pipe, _writer) = std::io::pipe().unwrap();
                    vec![Message(video(7), vec![std::os::fd::OwnedFd::from(pipe)])]
                },
                expect: |e| matches!(e, UnsizableFd { block: 0, buf_id: 7, .. }),
                says: &["buf_id 7", "not memory"],
            },

            // --- video, text, tensor fields
            zero_sized_frame: Lie {
                build: || message(video_with(7, false, nv12(0, 0), Metas::default()), 1),
                expect: |e| matches!(e, PlaneOffsetOutsideSize { plane: 0, offset: 0, size: 0 }),
                says: &["plane 0 offset 0", "size 0"],
            },
            five_planes: Lie {
                build: || message(video_with(7, false, FramePayload { n_planes: 5, ..nv12(FRAME_BYTES, FRAME_BYTES) }, Metas::default()), 1),
                expect: |e| matches!(e, PlaneCountOutOfRange { n_planes: 5 }),
                says: &["n_planes is 5"],
            },
            zero_planes: Lie {
                build: || message(video_with(7, false, FramePayload { n_planes: 0, ..nv12(FRAME_BYTES, FRAME_BYTES) }, Metas::default()), 1),
                expect: |e| matches!(e, PlaneCountOutOfRange { n_planes: 0 }),
                says: &["n_planes is 0"],
            },
            plane_offset_at_size: Lie {
                build: || {
                    let frame = FramePayload { offsets: [0, FRAME_BYTES, 0, 0], ..nv12(FRAME_BYTES, FRAME_BYTES) };
                    message(video_with(7, false, frame, Metas::default()), 1)
                },
                expect: |e| matches!(e, PlaneOffsetOutsideSize { plane: 1, offset, size } if *offset == FRAME_BYTES && *size == FRAME_BYTES),
                says: &["plane 1 offset 4608", "size 4608"],
            },
            text_of_1025_bytes: Lie {
                build: || {
                    let text = MemoryBlock::Text(TextPayload { contents: vec![b'x'; 1024], maxsize: 2048 });
                    let record = data(None, info(&[-1], false), vec![text], Metas::default());
                    message(with_u64(record, TEXT_SIZE_AT, 1025), 0)
                },
                expect: |e| matches!(e, TextTooLong { size: 1025 }),
                says: &["size 1025 exceeds 1024"],
            },
            tensor_with_9_dimensions: Lie {
                build: || {
                    let t = MemoryBlock::Tensor(TensorPayload { dimensions: [1; 8], ..tensor(9, FRAME_BYTES, FRAME_BYTES) });
                    message(data(Some(1), info(&[7], false), vec![t], Metas::default()), 1)
                },
                expect: |e| matches!(e, TooManyDimensions { n_dimensions: 9 }),
                says: &["n_dimensions is 9"],
            },

            // --- metas: strings terminated, sizes within their arrays, links within keypoints
            roi_label_without_nul: Lie {
                build: || {
                    let label_at = METAS_AT + 4;
                    message(with_bytes(video_with(7, false, nv12(FRAME_BYTES, FRAME_BYTES), roi(None)), label_at, 32, &[b'A'; 32]), 1)
                },
                expect: |e| matches!(e, StringNotTerminated { field: "VIDEO_ROI_META.label", capacity: 32 }),
                says: &["VIDEO_ROI_META.label", "32 bytes"],
            },
            roi_det_size_300: Lie {
                build: || {
                    let metas = roi(Some("ObjectDetection, confidence=(double)87.5, color=(uint)4278190335;"));
                    let det_size_at = METAS_AT + 316;
                    message(with_u64(video_with(7, false, nv12(FRAME_BYTES, FRAME_BYTES), metas), det_size_at, 300), 1)
                },
                expect: |e| matches!(e, CountPastArray { field: "VIDEO_ROI_META.det_meta", value: 300, capacity: 256 }),
                says: &["VIDEO_ROI_META.det_meta", "300", "256"],
            },
            landmarks_link_past_kps_size: Lie {
                build: || {
                    let metas = landmarks(vec![Link { s_kp_idx: 0, d_kp_idx: 1 }, Link { s_kp_idx: 1, d_kp_idx: 2 }]);
                    message(video_with(7, false, nv12(FRAME_BYTES, FRAME_BYTES), metas), 1)
                },
                expect: |e| matches!(e, LinkPastKeypoints { link: 1, n_keypoints: 2 }),
                says: &["link 1", "2 in use"],
            },

            // --- fds and the buf_id cache
            pooled_buf_id_never_sent_without_fd: Lie {
                build: || {
                    let frame = MemoryBlock::Frame(nv12(FRAME_BYTES, FRAME_BYTES));
                    message(data(None, info(&[55], true), vec![frame], Metas::default()), 0)
                },
                expect: |e| matches!(e, UncachedBufId { block: 0, buf_id: 55 }),
                says: &["buf_id 55", "neither cached"],
            },
            two_fds_for_one_block: Lie {
                build: || {
                    let frame = MemoryBlock::Frame(nv12(FRAME_BYTES, FRAME_BYTES));
                    message(data(Some(2), info(&[7], false), vec![frame], Metas::default()), 2)
                },
                expect: |e| matches!(e, FdsDoNotMatchBlocks { n_fds: 2, uncached: 1 }),
                says: &["2 fds arrived for 1 blocks"],
            },
        }
    };
}
pub(crate) use for_each_lie;

/// With [`for_each_lie`]: `LIES`, every lie in order, and a test per lie that calls
/// the expanding file's `run(&[(name, lie)])`.
macro_rules! lie_tests {
    ($($name:ident: $lie:expr,)*) => {
        const LIES: &[(&str, Lie)] = &[$((stringify!($name), $lie)),*];
        $(
            #[test]
            fn $name() {
                run(&[(stringify!($name), $lie)]);
            }
        )*
    };
}
pub(crate) use lie_tests;

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One test at a time: fd counts mean nothing while another test opens or closes fds.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sends one record alone. `send_raw_record` has room for only a few fds more than a
/// message may carry; a record with more goes through a `sendmsg` of our own.
pub fn send_raw(sender: &Connection, record: &[u8], fds: &[OwnedFd]) -> std::io::Result<()> {
    if fds.len() <= MAX_MEMORY_BLOCKS {
        return sender.send_raw_record(record, &borrow_all(fds));
    }
    assert!(fds.len() <= TOO_MANY_FDS);
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(TOO_MANY_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let borrowed = borrow_all(fds);
    assert!(control.push(SendAncillaryMessage::ScmRights(&borrowed)));
    let sent = rustix::net::sendmsg(sender, &[IoSlice::new(record)], &mut control, SendFlags::NOSIGNAL)?;
    assert_eq!(sent, record.len());
    Ok(())
}
