//! From a GstBuffer to what goes on the wire: one memory block per GstMemory, described
//! from the buffer's metas or, when it has none, from the caps; memory that has no fd is
//! copied once into a sealed memfd from a pool of ours.

use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;

use gst::prelude::*;
use gst_video::prelude::*;

use super::memfd_allocator::MemfdAllocator;
use crate::elements::caps::{frame_flags, frame_from, Format};
use crate::elements::meta;
use crate::protocol::{
    MemoryBlock, Metas, TensorPayload, TextPayload, MAX_PLANES, MAX_TENSOR_DIMENSIONS, MAX_TEXT_LEN,
};
use crate::{OutgoingBlock, OutgoingBuffer};

/// Pools of memfd-backed buffers to copy memory without an fd into, one per block index.
#[derive(Default)]
pub(super) struct CopyPools {
    allocator: MemfdAllocator,
    pools: Mutex<Vec<Option<(usize, gst::BufferPool)>>>,
    flushing: AtomicBool,
    /// Buffers each pool may have out at once (0: no limit); receivers that keep more make
    /// `render` wait. Set for each run ([`CopyPools::set_max_buffers`]).
    max_buffers: AtomicU32,
}

impl CopyPools {
    /// A memfd-backed buffer of `size` bytes for block `index`; waits when the pool's
    /// buffers are all out with the receiver (the lock is not held while waiting).
    fn acquire(&self, index: usize, size: usize) -> Result<gst::Buffer, Refusal> {
        let pool = {
            let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
            if pools.len() <= index {
                pools.resize_with(index + 1, || None);
            }
            if !matches!(&pools[index], Some((pool_size, _)) if *pool_size == size) {
                if let Some((_, old)) = pools[index].take() {
                    // Buffers still out go back to the old pool, which frees them then.
                    let _ = old.set_active(false);
                }
                pools[index] = Some((size, self.new_pool(size)?));
            }
            pools[index].as_ref().expect("made above").1.clone()
        };
        pool.acquire_buffer(None).map_err(|e| match e {
            gst::FlowError::Flushing => Refusal::Flushing,
            e => Refusal::Invalid(format!("no buffer from the copy pool: {e:?}")),
        })
    }

    fn new_pool(&self, size: usize) -> Result<gst::BufferPool, Refusal> {
        let pool = gst::BufferPool::new();
        let mut config = pool.config();
        config.set_params(None, size as u32, 0, self.max_buffers.load(Ordering::SeqCst));
        config.set_allocator(Some(&self.allocator), None);
        pool.set_config(config).map_err(|e| Refusal::Invalid(format!("cannot configure a copy pool: {e}")))?;
        pool.set_active(true).map_err(|e| Refusal::Invalid(format!("cannot start a copy pool: {e}")))?;
        pool.set_flushing(self.flushing.load(Ordering::SeqCst));
        Ok(pool)
    }

    /// How many buffers each pool made from now on may have out at once (0: no limit).
    pub(super) fn set_max_buffers(&self, max: u32) {
        self.max_buffers.store(max, Ordering::SeqCst);
    }

    /// Makes waiting `acquire`s return (flushing) or lets them wait again.
    pub(super) fn set_flushing(&self, flushing: bool) {
        self.flushing.store(flushing, Ordering::SeqCst);
        for (_, pool) in self.pools.lock().unwrap_or_else(|p| p.into_inner()).iter().flatten() {
            pool.set_flushing(flushing);
        }
    }

    pub(super) fn clear(&self) {
        for (_, pool) in self.pools.lock().unwrap_or_else(|p| p.into_inner()).drain(..).flatten() {
            let _ = pool.set_active(false);
        }
    }
}

/// Why a buffer cannot be sent.
#[derive(Debug)]
pub(super) enum Refusal {
    /// The buffer breaks a limit of the protocol or does not match the caps.
    Invalid(String),
    /// A copy pool is flushing (the element is stopping).
    Flushing,
}

/// A buffer ready to send.
pub(super) struct Prepared {
    /// The memories each fd belongs to: kept until the receiver returns them, which keeps
    /// the fds open (their numbers are the buf_ids) and pooled buffers out of their pool.
    holds: Vec<gst::Buffer>,
    blocks: Vec<(Option<RawFd>, MemoryBlock)>,
    pts: u64,
    dts: u64,
    duration: u64,
    pooled: bool,
    metas: Metas,
    /// Memories copied into memfds, and their bytes.
    pub copies: u64,
    pub bytes_copied: u64,
    /// Bytes sent as the fds they already had: described, never copied. A copied block
    /// counts in `bytes_copied` only, so each byte is counted once.
    pub bytes_described: u64,
}

impl Prepared {
    /// What keeps the buffer's memories (and so its fds) alive, for the fan-out to keep
    /// until the receivers have returned them.
    pub fn take_holds(&mut self) -> Vec<gst::Buffer> {
        std::mem::take(&mut self.holds)
    }

    /// The sender's view of this buffer.
    pub fn outgoing(&self) -> OutgoingBuffer<'_> {
        let blocks = self
            .blocks
            .iter()
            .map(|(fd, description)| OutgoingBlock {
                // SAFETY: each fd belongs to a memory of a buffer in `holds`, which keeps it
                // open: `self.holds`, or the holds taken out of it (`take_holds`), which the
                // caller hands to the fan-out with this borrow and the fan-out keeps until
                // the receivers give the fds back, so for longer than the borrow.
                fd: fd.map(|fd| unsafe { BorrowedFd::borrow_raw(fd) }),
                description: description.clone(),
            })
            .collect();
        OutgoingBuffer {
            blocks,
            pts: self.pts,
            dts: self.dts,
            duration: self.duration,
            pooled: self.pooled,
            metas: self.metas.clone(),
        }
    }
}

fn clock_ns(t: Option<gst::ClockTime>) -> u64 {
    t.map_or(crate::protocol::CLOCK_TIME_NONE, |t| t.nseconds())
}

/// The fd of `memory` when it is fd memory seen whole from offset 0 of its fd
/// (sub-memories of fd memory have an offset the wire cannot carry for tensors).
fn fd_of(memory: &gst::MemoryRef) -> Option<RawFd> {
    let fd_memory = memory.downcast_memory_ref::<gst_allocators::FdMemory>()?;
    Some(fd_memory.fd())
}

/// Whether `buffer` belongs to a GstBufferPool (it will come back with the same memory).
fn from_pool(buffer: &gst::BufferRef) -> bool {
    // SAFETY: reads the public `pool` field of a valid GstBuffer we hold a reference to.
    unsafe { !(*buffer.as_ptr()).pool.is_null() }
}

/// The GstBufferPool `buffer` belongs to, if any.
pub(super) fn pool_of(buffer: &gst::BufferRef) -> Option<gst::BufferPool> {
    // SAFETY: the `pool` field of a valid GstBuffer we hold a reference to is null or a
    // pool the buffer keeps alive; `from_glib_none` takes a reference of our own.
    unsafe {
        let pool = (*buffer.as_ptr()).pool;
        (!pool.is_null()).then(|| gst::glib::translate::from_glib_none(pool))
    }
}

/// Copies `bytes` into a memfd buffer of block `index`'s pool.
fn copy_into_memfd(pools: &CopyPools, index: usize, bytes: &[u8]) -> Result<gst::Buffer, Refusal> {
    let mut copy = pools.acquire(index, bytes.len().max(1))?;
    {
        let copy = copy.get_mut().expect("a buffer fresh from the pool is writable");
        let mut map = copy.map_writable().map_err(|_| Refusal::Invalid("cannot map a memfd for writing".into()))?;
        map[..bytes.len()].copy_from_slice(bytes);
    }
    copy.make_mut().set_size(bytes.len());
    Ok(copy)
}

/// Describes `buffer` for the wire, copying what has no fd.
pub(super) fn prepare(buffer: &gst::Buffer, format: &Format, pools: &CopyPools) -> Result<Prepared, Refusal> {
    let mut prepared = Prepared {
        holds: Vec::new(),
        blocks: Vec::new(),
        pts: clock_ns(buffer.pts()),
        dts: clock_ns(buffer.dts()),
        duration: clock_ns(buffer.duration()),
        pooled: from_pool(buffer),
        metas: meta::sent_metas(buffer, matches!(format, Format::Video(_))),
        copies: 0,
        bytes_copied: 0,
        bytes_described: 0,
    };
    match format {
        Format::Text => prepare_text(buffer, &mut prepared)?,
        Format::Video(info) => prepare_video(buffer, info, pools, &mut prepared)?,
        Format::Tensors { .. } => prepare_tensors(buffer, format, pools, &mut prepared)?,
    }
    Ok(prepared)
}

fn prepare_text(buffer: &gst::Buffer, prepared: &mut Prepared) -> Result<(), Refusal> {
    let size = buffer.size();
    if size > MAX_TEXT_LEN {
        return Err(Refusal::Invalid(format!(
            "a text buffer of {size} bytes: the protocol's TEXT payload carries at most {MAX_TEXT_LEN} bytes; \
             split the text upstream"
        )));
    }
    let map = buffer.map_readable().map_err(|_| Refusal::Invalid("cannot map the text buffer".into()))?;
    let contents = map.to_vec();
    prepared.blocks.push((None, MemoryBlock::Text(TextPayload { maxsize: contents.len() as u64, contents })));
    Ok(())
}

fn prepare_video(
    buffer: &gst::Buffer,
    info: &gst_video::VideoInfo,
    pools: &CopyPools,
    prepared: &mut Prepared,
) -> Result<(), Refusal> {
    let mut frame = match buffer.meta::<gst_video::VideoMeta>() {
        Some(meta) => {
            let flags = frame_flags(info, buffer.video_flags(), meta.video_frame_flags().bits());
            frame_from(meta.format(), meta.width(), meta.height(), meta.offset(), meta.stride(), flags)
        }
        None => {
            let flags = frame_flags(info, buffer.video_flags(), 0);
            frame_from(info.format(), info.width(), info.height(), info.offset(), info.stride(), flags)
        }
    };
    if frame.n_planes as usize > MAX_PLANES {
        return Err(Refusal::Invalid(format!("{} planes; the protocol carries at most {MAX_PLANES}", frame.n_planes)));
    }
    let whole = buffer.size() as u64;
    let single_fd = (buffer.n_memory() == 1).then(|| buffer.peek_memory(0)).and_then(|m| fd_of(m).map(|fd| (m, fd)));
    match single_fd {
        Some((memory, fd)) => {
            // The wire has no memory offset: fold it into the size and the plane offsets.
            let offset = memory.offset() as u64;
            for o in &mut frame.offsets[..frame.n_planes as usize] {
                *o += offset;
            }
            frame.size = offset + memory.size() as u64;
            frame.maxsize = memory.maxsize() as u64;
            prepared.bytes_described += memory.size() as u64;
            prepared.holds.push(buffer.clone());
            prepared.blocks.push((Some(fd), MemoryBlock::Frame(frame)));
        }
        None => {
            let map = buffer.map_readable().map_err(|_| Refusal::Invalid("cannot map the frame to copy it".into()))?;
            let copy = copy_into_memfd(pools, 0, &map)?;
            let memory = copy.peek_memory(0);
            let fd = fd_of(memory).expect("copy pools hold memfd memory");
            frame.size = whole;
            frame.maxsize = memory.maxsize() as u64;
            prepared.copies += 1;
            prepared.bytes_copied += whole;
            prepared.pooled = true;
            prepared.blocks.push((Some(fd), MemoryBlock::Frame(frame)));
            prepared.holds.push(copy);
        }
    }
    Ok(())
}

fn prepare_tensors(
    buffer: &gst::Buffer,
    format: &Format,
    pools: &CopyPools,
    prepared: &mut Prepared,
) -> Result<(), Refusal> {
    let Format::Tensors { tensor_type, dimensions } = format else { unreachable!("called for tensors") };
    let n = buffer.n_memory();
    if n != dimensions.len() {
        return Err(Refusal::Invalid(format!(
            "a tensor buffer with {n} memories, but the caps list {} tensors (one memory per tensor)",
            dimensions.len()
        )));
    }
    let from_metas = meta::sent_tensor_metas(buffer);
    let mut copied = 0;
    for (index, caps_dimensions) in dimensions.iter().enumerate() {
        let memory = buffer.peek_memory(index);
        let (tensor_type, dims) = match from_metas.iter().find(|t| t.0 as usize == index) {
            Some((_, t, d)) => (*t, d.clone()),
            None => (*tensor_type as u32, caps_dimensions.clone()),
        };
        let mut tensor = TensorPayload {
            tensor_type,
            n_dimensions: dims.len() as u32,
            dimensions: [0; MAX_TENSOR_DIMENSIONS],
            size: memory.size() as u64,
            maxsize: 0,
        };
        tensor.dimensions[..dims.len()].copy_from_slice(&dims);
        if let Some(expected) = format.block_size(index) {
            if memory.size() < expected {
                return Err(Refusal::Invalid(format!(
                    "tensor {index} has {} bytes; its caps dimensions need {expected}",
                    memory.size()
                )));
            }
        }
        match fd_of(memory).filter(|_| memory.offset() == 0) {
            Some(fd) => {
                tensor.maxsize = memory.maxsize() as u64;
                prepared.bytes_described += memory.size() as u64;
                prepared.blocks.push((Some(fd), MemoryBlock::Tensor(tensor)));
            }
            None => {
                let map = memory.map_readable().map_err(|_| Refusal::Invalid(format!("cannot map tensor {index}")))?;
                let copy = copy_into_memfd(pools, index, &map)?;
                let memory = copy.peek_memory(0);
                tensor.maxsize = memory.maxsize() as u64;
                prepared.copies += 1;
                prepared.bytes_copied += map.len() as u64;
                prepared.blocks.push((Some(fd_of(memory).expect("memfd memory")), MemoryBlock::Tensor(tensor)));
                prepared.holds.push(copy);
                copied += 1;
            }
        }
    }
    if copied == n {
        // Every fd is one of our copy pools': stable, so the receiver may cache them.
        prepared.pooled = true;
    } else {
        prepared.holds.push(buffer.clone());
    }
    Ok(())
}
