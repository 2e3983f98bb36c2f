//! Whole messages: the length record, and the message record parsed into what a sender
//! says to a receiver (data, EOS) or a receiver to a sender (return, disconnect).

use super::layout::Reader;
use super::payload::*;
use super::ProtocolError;

/// Our own bound on a message record. The layouts bound every payload; the count of
/// metas is not bounded by the spec, so we allow far more than any deployed sender sends
/// (10 text blocks and twenty classification metas fit) and refuse the rest.
pub const MAX_RECORD_LEN: usize = 256 * 1024;

/// The 4-byte record that precedes every message record: its length, big-endian.
pub fn parse_length_record(bytes: &[u8]) -> Result<usize, ProtocolError> {
    let bytes: [u8; 4] = bytes.try_into().map_err(|_| ProtocolError::LengthRecordSize { got: bytes.len() })?;
    let announced = u32::from_be_bytes(bytes);
    if !(4..=MAX_RECORD_LEN as u32).contains(&announced) {
        return Err(ProtocolError::RecordLengthOutOfRange { announced, max: MAX_RECORD_LEN });
    }
    Ok(announced as usize)
}

pub fn encode_length_record(record_len: usize) -> [u8; 4] {
    (record_len as u32).to_be_bytes()
}

/// Splits a record into its payloads: identity, and the payload's bytes.
fn payloads(record: &[u8]) -> impl Iterator<Item = Result<(Identity, Reader<'_>), ProtocolError>> {
    let mut offset = 0;
    std::iter::from_fn(move || {
        let rest = &record[offset..];
        if rest.is_empty() {
            return None;
        }
        let item = (|| {
            let identity_bytes = rest.get(..4).ok_or(ProtocolError::StrayBytes { offset, count: rest.len() })?;
            let raw = u32::from_le_bytes(identity_bytes.try_into().unwrap());
            let identity = Identity::from_u32(raw).ok_or(ProtocolError::UnknownIdentity { identity: raw, offset })?;
            let needed = identity.payload_size();
            let bytes = rest.get(..needed).ok_or(ProtocolError::PayloadPastRecord {
                identity,
                offset,
                needed,
                available: rest.len(),
            })?;
            Ok((identity, Reader(bytes)))
        })();
        offset = match &item {
            Ok((identity, _)) => offset + identity.payload_size(),
            Err(_) => record.len(), // stop after the first error
        };
        Some(item)
    })
}

/// The kind of a buffer's memory blocks; one kind per buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryKind {
    Video,
    Tensor,
    Text,
}

impl MemoryKind {
    pub fn name(self) -> &'static str {
        match self {
            MemoryKind::Video => "video (FRAME)",
            MemoryKind::Tensor => "tensor (TENSOR)",
            MemoryKind::Text => "text (TEXT)",
        }
    }
}

/// One memory block of a buffer and its description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryBlock {
    Frame(FramePayload),
    Tensor(TensorPayload),
    Text(TextPayload),
}

impl MemoryBlock {
    pub fn kind(&self) -> MemoryKind {
        match self {
            MemoryBlock::Frame(_) => MemoryKind::Video,
            MemoryBlock::Tensor(_) => MemoryKind::Tensor,
            MemoryBlock::Text(_) => MemoryKind::Text,
        }
    }
    /// Visible bytes, from offset 0 of the memory.
    pub fn size(&self) -> u64 {
        match self {
            MemoryBlock::Frame(f) => f.size,
            MemoryBlock::Tensor(t) => t.size,
            MemoryBlock::Text(t) => t.size(),
        }
    }
    /// The memory's whole size.
    pub fn maxsize(&self) -> u64 {
        match self {
            MemoryBlock::Frame(f) => f.maxsize,
            MemoryBlock::Tensor(t) => t.maxsize,
            MemoryBlock::Text(t) => t.maxsize,
        }
    }
    fn encode(&self, record: &mut Vec<u8>) {
        match self {
            MemoryBlock::Frame(p) => p.encode(record),
            MemoryBlock::Tensor(p) => p.encode(record),
            MemoryBlock::Text(p) => p.encode(record),
        }
    }
}

/// The metas that ride with a buffer, in wire order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metas {
    pub protection: Vec<ProtectionMeta>,
    pub roi: Vec<RoiMeta>,
    pub class: Vec<ClassMeta>,
    pub landmarks: Vec<LandmarksMeta>,
}

/// A data message: one GstBuffer's description. Its fds travel beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct DataMessage {
    /// FD_COUNT.n_fds, when the record carried one.
    pub n_fds: Option<usize>,
    pub info: BufferInfo,
    /// 1..=10 blocks, all of one kind.
    pub blocks: Vec<MemoryBlock>,
    pub metas: Metas,
}

impl DataMessage {
    pub fn kind(&self) -> MemoryKind {
        self.blocks[0].kind()
    }
    /// The buf_ids of the blocks in use (the rest of the array is not meaningful).
    pub fn buf_ids(&self) -> &[i32] {
        &self.info.buf_ids[..self.blocks.len()]
    }

    fn validate(&self, fds_received: usize) -> Result<(), ProtocolError> {
        if !(1..=MAX_MEMORY_BLOCKS).contains(&self.blocks.len()) {
            return Err(ProtocolError::BlockCountOutOfRange { count: self.blocks.len() });
        }
        let first = self.kind();
        for (block, b) in self.blocks.iter().enumerate() {
            if b.kind() != first {
                return Err(ProtocolError::MixedBlockKinds { block, first: first.name(), found: b.kind().name() });
            }
            if b.size() > b.maxsize() {
                return Err(ProtocolError::SizeOverMaxsize { block, size: b.size(), maxsize: b.maxsize() });
            }
            if first != MemoryKind::Text && b.maxsize() == 0 {
                return Err(ProtocolError::EmptyBlock { block });
            }
        }
        let announced = self.n_fds.unwrap_or(0);
        if announced != fds_received {
            return Err(ProtocolError::FdCountMismatch { announced, received: fds_received });
        }
        if first == MemoryKind::Text && fds_received > 0 {
            return Err(ProtocolError::FdsWithText { n_fds: fds_received });
        }
        Ok(())
    }
}

/// What a sender says to a receiver.
// One per message, parsed and moved once: boxing would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum SenderMessage {
    Data(DataMessage),
    Eos,
}

impl SenderMessage {
    /// Parses a message record that arrived with `fds_received` fds, and checks every
    /// rule that needs no look at the fds themselves.
    pub fn parse(record: &[u8], fds_received: usize) -> Result<Self, ProtocolError> {
        const CONTEXT: &str = "a sender's message";
        let mut n_fds = None;
        let mut info = None;
        let mut blocks = Vec::new();
        let mut metas = Metas::default();
        let mut saw_eos = false;
        for payload in payloads(record) {
            let (identity, p) = payload?;
            match identity {
                Identity::Eos => saw_eos = true,
                Identity::FdCount => {
                    if n_fds.replace(FdCount::decode(p)?.n_fds as usize).is_some() {
                        return Err(ProtocolError::DuplicatePayload { identity });
                    }
                }
                Identity::BufferInfo => {
                    if info.replace(BufferInfo::decode(p)?).is_some() {
                        return Err(ProtocolError::DuplicatePayload { identity });
                    }
                }
                Identity::Frame => blocks.push(MemoryBlock::Frame(FramePayload::decode(p)?)),
                Identity::Tensor => blocks.push(MemoryBlock::Tensor(TensorPayload::decode(p)?)),
                Identity::Text => blocks.push(MemoryBlock::Text(TextPayload::decode(p)?)),
                Identity::ProtectionMeta => metas.protection.push(ProtectionMeta::decode(p)?),
                Identity::VideoRoiMeta => metas.roi.push(RoiMeta::decode(p)?),
                Identity::VideoClassMeta => metas.class.push(ClassMeta::decode(p)?),
                Identity::VideoLmMeta => metas.landmarks.push(LandmarksMeta::decode(p)?),
                Identity::Disconnect | Identity::ReturnBuffer => {
                    return Err(ProtocolError::UnexpectedPayload { identity, context: CONTEXT })
                }
            }
        }
        if saw_eos {
            if record.len() != Identity::Eos.payload_size() || fds_received > 0 {
                return Err(ProtocolError::EosNotAlone);
            }
            return Ok(SenderMessage::Eos);
        }
        let info = info.ok_or(ProtocolError::MissingBufferInfo)?;
        let message = DataMessage { n_fds, info, blocks, metas };
        message.validate(fds_received)?;
        Ok(SenderMessage::Data(message))
    }

    /// The message record, payloads in the spec's order.
    pub fn encode(&self) -> Vec<u8> {
        let mut record = Vec::with_capacity(256);
        match self {
            SenderMessage::Eos => record.extend_from_slice(&(Identity::Eos as u32).to_le_bytes()),
            SenderMessage::Data(m) => {
                if let Some(n_fds) = m.n_fds {
                    FdCount { n_fds: n_fds as i32 }.encode(&mut record);
                }
                m.info.encode(&mut record);
                m.blocks.iter().for_each(|b| b.encode(&mut record));
                m.metas.protection.iter().for_each(|p| p.encode(&mut record));
                m.metas.roi.iter().for_each(|p| p.encode(&mut record));
                m.metas.class.iter().for_each(|p| p.encode(&mut record));
                m.metas.landmarks.iter().for_each(|p| p.encode(&mut record));
            }
        }
        record
    }
}

/// The buf_ids a receiver hands back in one return (1..=10 of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReturnMessage {
    buf_ids: [i32; MAX_MEMORY_BLOCKS],
    len: usize,
}

impl ReturnMessage {
    /// `None` when `buf_ids` is empty or longer than 10.
    pub fn new(buf_ids: &[i32]) -> Option<Self> {
        if buf_ids.is_empty() || buf_ids.len() > MAX_MEMORY_BLOCKS {
            return None;
        }
        let mut all = [-1; MAX_MEMORY_BLOCKS];
        all[..buf_ids.len()].copy_from_slice(buf_ids);
        Some(ReturnMessage { buf_ids: all, len: buf_ids.len() })
    }
    pub fn buf_ids(&self) -> &[i32] {
        &self.buf_ids[..self.len]
    }
}

/// What a receiver says to a sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiverMessage {
    Return(ReturnMessage),
    Disconnect,
}

impl ReceiverMessage {
    pub fn parse(record: &[u8], fds_received: usize) -> Result<Self, ProtocolError> {
        const CONTEXT: &str = "a receiver's message";
        if fds_received > 0 {
            return Err(ProtocolError::FdCountMismatch { announced: 0, received: fds_received });
        }
        let mut parts = payloads(record);
        let (first, first_bytes) = parts.next().ok_or(ProtocolError::MalformedReturn)??;
        let second = parts.next().transpose()?;
        let extra = parts.next().transpose()?;
        match (first, second, extra) {
            (Identity::Disconnect, None, None) => Ok(ReceiverMessage::Disconnect),
            (Identity::FdCount, Some((Identity::ReturnBuffer, ids)), None) => {
                let n_ids = first_bytes.i32(4);
                if !(1..=MAX_MEMORY_BLOCKS as i32).contains(&n_ids) {
                    return Err(ProtocolError::ReturnCountOutOfRange { n_ids });
                }
                let ids = ReturnBuffer::decode(ids)?;
                Ok(ReceiverMessage::Return(ReturnMessage { buf_ids: ids.buf_ids, len: n_ids as usize }))
            }
            (Identity::FdCount, _, _) => Err(ProtocolError::MalformedReturn),
            (identity, _, _) => Err(ProtocolError::UnexpectedPayload { identity, context: CONTEXT }),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut record = Vec::with_capacity(FdCount::SIZE + ReturnBuffer::SIZE);
        match self {
            ReceiverMessage::Disconnect => record.extend_from_slice(&(Identity::Disconnect as u32).to_le_bytes()),
            ReceiverMessage::Return(r) => {
                FdCount { n_fds: r.len as i32 }.encode(&mut record);
                ReturnBuffer { buf_ids: r.buf_ids }.encode(&mut record);
            }
        }
        record
    }
}
