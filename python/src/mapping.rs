//! Memory mappings of received fds and of the sender's memfds, and the receiver's cache
//! of mappings of pooled objects (mapped once per object, not once per buffer).

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::{Arc, Weak};

use rustix::mm::{MapFlags, ProtFlags};

/// `len` bytes of an fd's object from offset 0, mapped shared; unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
}

// SAFETY: a mapping is plain memory shared with another process; who may write to it and
// when is the protocol's business (the receiver maps read-only), not the thread's.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` (> 0) bytes of `fd` from offset 0. The receiver checked that the object
    /// holds at least `maxsize` bytes; a caller maps no more than that.
    pub fn new(fd: BorrowedFd<'_>, len: usize, writable: bool) -> std::io::Result<Mapping> {
        let prot = if writable { ProtFlags::READ | ProtFlags::WRITE } else { ProtFlags::READ };
        // SAFETY: a fresh mapping at an address the kernel picks aliases no Rust object;
        // it is unmapped only in Drop, when nothing can reach it any more (every array
        // made over it holds an Arc to it).
        let ptr = unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0)? };
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| std::io::Error::other("mmap returned NULL"))?;
        Ok(Mapping { ptr, len, writable })
    }

    pub fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_writable(&self) -> bool {
        self.writable
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are the mapping made in `new`; nothing refers to it any more.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// `struct dma_buf_sync` of linux/dma-buf.h.
#[repr(C)]
struct DmaBufSync {
    flags: u64,
}

const DMA_BUF_IOCTL_SYNC: rustix::ioctl::Opcode = rustix::ioctl::opcode::write::<DmaBufSync>(b'b', 0);
const DMA_BUF_SYNC_READ: u64 = 1;
const DMA_BUF_SYNC_END: u64 = 1 << 2;

/// Starts (or ends) a window of CPU reads of a DMA-BUF (`DMA_BUF_IOCTL_SYNC`), so that
/// the CPU sees what a device wrote where caches are not coherent with it. Returns
/// whether `fd` is a DMA-BUF that took it; any other fd (a memfd: `ENOTTY`) needs nothing.
pub fn dma_buf_sync_read(fd: BorrowedFd<'_>, end: bool) -> bool {
    let flags = DMA_BUF_SYNC_READ | if end { DMA_BUF_SYNC_END } else { 0 };
    // SAFETY: DMA_BUF_IOCTL_SYNC takes a pointer to a struct dma_buf_sync, whose layout
    // DmaBufSync has; the kernel only reads it.
    let sync = unsafe { rustix::ioctl::Setter::<DMA_BUF_IOCTL_SYNC, DmaBufSync>::new(DmaBufSync { flags }) };
    // SAFETY: the opcode and its argument match (above); other fds reject it with ENOTTY.
    unsafe { rustix::ioctl::ioctl(fd, sync) }.is_ok()
}

/// Mappings of the pooled objects of the current sender, keyed by the receiver's shared
/// fd (`ReceivedBuffer::shared_fd`): the same `Arc<OwnedFd>` comes back for every buffer
/// that reuses a pooled `buf_id`. An entry is dropped once its fd is gone (the sender
/// left, or the `buf_id` now names another object), so a mapping never outlives the
/// pool it belongs to by more than the buffers and arrays still using it.
#[derive(Debug, Default)]
pub struct MappingCache {
    by_fd: HashMap<usize, (Weak<OwnedFd>, Arc<Mapping>)>,
}

impl MappingCache {
    /// The mapping of `fd`'s first `len` bytes or more, made now or earlier.
    pub fn get(&mut self, fd: &Arc<OwnedFd>, len: usize) -> std::io::Result<Arc<Mapping>> {
        let key = Arc::as_ptr(fd) as usize;
        if let Some((weak, mapping)) = self.by_fd.get(&key) {
            let same_fd = weak.upgrade().is_some_and(|live| Arc::ptr_eq(&live, fd));
            if same_fd && mapping.len() >= len {
                return Ok(mapping.clone());
            }
        }
        self.sweep();
        let mapping = Arc::new(Mapping::new(fd.as_fd(), len, false)?);
        self.by_fd.insert(key, (Arc::downgrade(fd), mapping.clone()));
        Ok(mapping)
    }

    /// Forgets the mappings whose fd was closed.
    pub fn sweep(&mut self) {
        self.by_fd.retain(|_, (weak, _)| weak.strong_count() > 0);
    }

    pub fn clear(&mut self) {
        self.by_fd.clear();
    }

    pub fn len(&self) -> usize {
        self.by_fd.len()
    }
}
