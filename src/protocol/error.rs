use super::Identity;

/// A message that breaks a rule of the protocol. Each variant is one rule of the spec's
/// *Validation* section (docs/protocol.md), and its message names the rule and the values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    #[error("the length record must be exactly 4 bytes, got {got}")]
    LengthRecordSize { got: usize },
    #[error("the length record announces {announced} bytes, outside 4..={max}")]
    RecordLengthOutOfRange { announced: u32, max: usize },
    #[error("the length record announced {announced} bytes but the record that followed has {got}")]
    RecordLengthMismatch { announced: usize, got: usize },
    #[error("unknown payload identity {identity} at byte {offset} of the record")]
    UnknownIdentity { identity: u32, offset: usize },
    #[error("payload {identity} at byte {offset} needs {needed} bytes but only {available} remain: payloads must tile the record exactly")]
    PayloadPastRecord { identity: Identity, offset: usize, needed: usize, available: usize },
    #[error("{count} stray bytes at byte {offset}, too few for a payload: payloads must tile the record exactly")]
    StrayBytes { offset: usize, count: usize },
    #[error("payload {identity} does not belong in {context}")]
    UnexpectedPayload { identity: Identity, context: &'static str },
    #[error("EOS must be the only payload of its record")]
    EosNotAlone,
    #[error("more than one {identity} in one message")]
    DuplicatePayload { identity: Identity },
    #[error("a data message needs a BUFFER_INFO payload")]
    MissingBufferInfo,
    #[error("FD_COUNT.n_fds is {n_fds}, outside 0..=10")]
    FdCountOutOfRange { n_fds: i32 },
    #[error("FD_COUNT announces {announced} fds but {received} arrived with the record")]
    FdCountMismatch { announced: usize, received: usize },
    #[error(
        "the kernel truncated the fds that came with the record (MSG_CTRUNC): more were sent than a message may \
         carry, or this process is at its fd limit (RLIMIT_NOFILE)"
    )]
    ControlTruncated,
    #[error("a data message needs 1..=10 memory blocks, got {count}")]
    BlockCountOutOfRange { count: usize },
    #[error("memory blocks of one message must be of one kind: block {block} is {found}, block 0 is {first}")]
    MixedBlockKinds { block: usize, first: &'static str, found: &'static str },
    #[error("text blocks carry no fds, but {n_fds} arrived")]
    FdsWithText { n_fds: usize },
    #[error("block {block}: size {size} exceeds maxsize {maxsize}")]
    SizeOverMaxsize { block: usize, size: u64, maxsize: u64 },
    #[error("block {block}: maxsize is 0; an fd-backed block must have memory")]
    EmptyBlock { block: usize },
    #[error("block {block} (buf_id {buf_id}): maxsize {maxsize} exceeds the size of the object behind its fd ({object_size} bytes)")]
    MaxsizePastObject { block: usize, buf_id: i32, maxsize: u64, object_size: u64 },
    #[error("block {block} (buf_id {buf_id}): the fd's object size cannot be learned ({reason}); it is not memory that can be mapped")]
    UnsizableFd { block: usize, buf_id: i32, reason: String },
    #[error("video: n_planes is {n_planes}, outside 1..=4")]
    PlaneCountOutOfRange { n_planes: u32 },
    #[error("video: plane {plane} offset {offset} lies outside the block's size {size}")]
    PlaneOffsetOutsideSize { plane: usize, offset: u64, size: u64 },
    #[error("text: size {size} exceeds 1024 bytes")]
    TextTooLong { size: u64 },
    #[error("tensor: n_dimensions is {n_dimensions}, more than 8")]
    TooManyDimensions { n_dimensions: u32 },
    #[error("string {field} has no NUL terminator within its {capacity} bytes")]
    StringNotTerminated { field: &'static str, capacity: usize },
    #[error("{field} is {value}, past its array of {capacity}")]
    CountPastArray { field: &'static str, value: u64, capacity: usize },
    #[error("landmarks link {link} names a keypoint past the {n_keypoints} in use")]
    LinkPastKeypoints { link: usize, n_keypoints: usize },
    #[error("block {block}: buf_id {buf_id} is neither cached on this connection nor given an fd")]
    UncachedBufId { block: usize, buf_id: i32 },
    #[error("{n_fds} fds arrived for {uncached} blocks whose buf_id is not cached: the fds cannot be assigned")]
    FdsDoNotMatchBlocks { n_fds: usize, uncached: usize },
    #[error("a return must carry 1..=10 buf_ids, FD_COUNT says {n_ids}")]
    ReturnCountOutOfRange { n_ids: i32 },
    #[error("the receiver returned buf_id {buf_id}, which is not out with it")]
    UnknownReturn { buf_id: i32 },
    #[error("a return needs an FD_COUNT followed by a RETURN_BUFFER")]
    MalformedReturn,
}
