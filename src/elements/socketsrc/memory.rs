//! Wrapping the sender's fds as GstMemory, and tying each received buffer's life (its
//! return to the sender) to the life of its memories.
//!
//! - An unpooled block's fd becomes a new GstMemory whose qdata holds the received buffer
//!   (`Frame`): when the memory is finalized (after its last user, sub-memories included,
//!   let go) the qdata is dropped and, with the frame's last memory, the return goes out.
//! - A pooled block's fd is wrapped once per connection (keyed by the `Arc` the receiver
//!   shares for each reuse of a pooled `buf_id`) with `KEEP_MAPPED`, so the mapping is made
//!   once. The memory recycles itself: its `dispose` hook brings it home instead of freeing
//!   it, and lets go of the frame it served; the next message for that `buf_id` hands the
//!   same GstMemory out again, resized to the message's size.
//!
//! The fds stay owned by the receiver (`Arc<OwnedFd>`); memories never close them
//! (`DONT_CLOSE`) and keep them open for as long as they live.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, LazyLock, Mutex};

use gst::glib;
use gst::glib::translate::{from_glib_full, IntoGlib};
use gst_allocators::prelude::*;

use crate::elements::lock;
use crate::ReceivedBuffer;

/// A received buffer, shared by its memories; its return goes out when the last of
/// them is released.
pub(super) type Frame = Arc<ReceivedBuffer>;

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<ReceivedBuffer>();
};

/// `DMA_BUF_MAGIC` from linux/magic.h: the filesystem of DMA-BUF fds.
const DMA_BUF_MAGIC: i64 = 0x444d_4142;

pub(super) fn is_dmabuf(fd: BorrowedFd<'_>) -> bool {
    // `f_type`'s integer type differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    rustix::fs::fstatfs(fd).is_ok_and(|s| s.f_type as i64 == DMA_BUF_MAGIC)
}

static FRAME_QUARK: LazyLock<glib::Quark> = LazyLock::new(|| glib::Quark::from_str("qtisocketsrc-frame"));
static POOLED_QUARK: LazyLock<glib::Quark> = LazyLock::new(|| glib::Quark::from_str("qtisocketsrc-pooled"));

/// One pooled object of the sender, wrapped once.
struct Pooled {
    /// Keeps the fd open for as long as the memory exists.
    fd: Arc<OwnedFd>,
    maxsize: u64,
    slot: Mutex<Slot>,
}

struct Slot {
    /// The memory, when no buffer uses it.
    home: Option<gst::Memory>,
    /// The frame the memory serves while it is out.
    frame: Option<Frame>,
    /// No longer cached: the memory is freed when it comes back.
    retired: bool,
    /// Buffers served so far.
    uses: u64,
}

impl Pooled {
    fn retire(&self) {
        let home = {
            let mut slot = lock(&self.slot);
            slot.retired = true;
            slot.home.take()
        };
        drop(home); // dispose sees `retired` and lets it be freed
    }
}

pub(super) struct Memories {
    fd_allocator: gst_allocators::FdAllocator,
    dmabuf_allocator: gst_allocators::DmaBufAllocator,
    /// By the address of the receiver's shared `Arc<OwnedFd>` (kept alive by `Pooled`,
    /// so the address cannot be reused while the entry exists).
    pooled: HashMap<usize, Arc<Pooled>>,
}

impl Memories {
    pub(super) fn new() -> Memories {
        Memories {
            fd_allocator: gst_allocators::FdAllocator::new(),
            dmabuf_allocator: gst_allocators::DmaBufAllocator::new(),
            pooled: HashMap::new(),
        }
    }

    /// The GstMemory for block `block` of `frame`, and whether it was a cached one.
    pub(super) fn wrap(
        &mut self,
        frame: &Frame,
        block: usize,
        maxsize: u64,
        size: u64,
    ) -> Result<(gst::Memory, bool), glib::BoolError> {
        let fd = frame.shared_fd(block).ok_or_else(|| glib::bool_error!("the block has no fd"))?;
        if !frame.message().info.use_buffer_pool {
            return self.wrap_once(frame, fd.as_fd(), maxsize, size).map(|m| (m, false));
        }
        let key = Arc::as_ptr(fd) as usize;
        let pooled = match self.pooled.get(&key) {
            Some(pooled) if pooled.maxsize >= maxsize => pooled.clone(),
            _ => {
                // New object (or one that grew): wrap it, and let go of the stale ones.
                if let Some(old) = self.pooled.remove(&key) {
                    old.retire();
                }
                self.sweep();
                let pooled = self.new_pooled(fd, maxsize)?;
                self.pooled.insert(key, pooled.clone());
                pooled
            }
        };
        let mut slot = lock(&pooled.slot);
        let Some(mut memory) = slot.home.take() else {
            // Still in use by an earlier buffer (a sender that did not wait for the
            // return): this buffer gets a memory of its own.
            drop(slot);
            return self.wrap_once(frame, fd.as_fd(), maxsize, size).map(|m| (m, false));
        };
        slot.frame = Some(frame.clone());
        slot.uses += 1;
        let reused = slot.uses > 1;
        drop(slot);
        let m = memory.get_mut().expect("a memory at home has no other user");
        m.resize_maxsize(0..size as usize);
        Ok((memory, reused))
    }

    /// Lets go of every cached memory (the connection ended, or the element stops).
    pub(super) fn retire_all(&mut self) {
        for (_, pooled) in self.pooled.drain() {
            pooled.retire();
        }
    }

    /// Drops entries whose fd nobody but us holds any more (the receiver replaced it).
    fn sweep(&mut self) {
        self.pooled.retain(|_, pooled| {
            let alive = Arc::strong_count(&pooled.fd) > 1;
            if !alive {
                pooled.retire();
            }
            alive
        });
    }

    fn alloc(
        &self,
        fd: BorrowedFd<'_>,
        maxsize: u64,
        size: u64,
        flags: gst_allocators::FdMemoryFlags,
    ) -> Result<gst::Memory, glib::BoolError> {
        let flags = flags | gst_allocators::FdMemoryFlags::DONT_CLOSE;
        // SAFETY: DONT_CLOSE: GStreamer never closes the fd, and every caller keeps the
        // `OwnedFd` open for as long as the memory exists (qdata, `Pooled::fd`).
        let mut memory = unsafe {
            if is_dmabuf(fd) {
                self.dmabuf_allocator.alloc_dmabuf_with_flags(fd.as_raw_fd(), maxsize as usize, flags)
            } else {
                self.fd_allocator.alloc_fd(fd.as_raw_fd(), maxsize as usize, flags)
            }
        }?;
        memory.get_mut().expect("a new memory").resize_maxsize(0..size as usize);
        Ok(memory)
    }

    /// A memory for this buffer only; it holds the frame until it is finalized.
    fn wrap_once(
        &self,
        frame: &Frame,
        fd: BorrowedFd<'_>,
        maxsize: u64,
        size: u64,
    ) -> Result<gst::Memory, glib::BoolError> {
        let memory = self.alloc(fd, maxsize, size, gst_allocators::FdMemoryFlags::NONE)?;
        unsafe extern "C" fn drop_frame(data: glib::ffi::gpointer) {
            // SAFETY: `data` is the Box<Frame> given below, freed exactly once here.
            drop(unsafe { Box::from_raw(data as *mut Frame) });
        }
        let data = Box::into_raw(Box::new(frame.clone()));
        // SAFETY: a memory only we hold; the qdata owns the box and frees it when the
        // memory is finalized, on whatever thread.
        unsafe {
            gst::ffi::gst_mini_object_set_qdata(
                memory.as_mut_ptr() as *mut gst::ffi::GstMiniObject,
                FRAME_QUARK.into_glib(),
                data as glib::ffi::gpointer,
                Some(drop_frame),
            );
        }
        Ok(memory)
    }

    fn new_pooled(&self, fd: &Arc<OwnedFd>, maxsize: u64) -> Result<Arc<Pooled>, glib::BoolError> {
        let memory = self.alloc(fd.as_fd(), maxsize, maxsize, gst_allocators::FdMemoryFlags::KEEP_MAPPED)?;
        let pooled = Arc::new(Pooled {
            fd: fd.clone(),
            maxsize,
            slot: Mutex::new(Slot { home: None, frame: None, retired: false, uses: 0 }),
        });
        unsafe extern "C" fn drop_pooled(data: glib::ffi::gpointer) {
            // SAFETY: `data` is the Box<Arc<Pooled>> given below, freed exactly once here.
            drop(unsafe { Box::from_raw(data as *mut Arc<Pooled>) });
        }
        let data = Box::into_raw(Box::new(pooled.clone()));
        // SAFETY: a memory only we hold. The qdata owns the box until the memory is
        // finalized; `dispose` only reads it. Memories get no dispose function from
        // gst_memory_init, so ours replaces nothing.
        unsafe {
            let object = memory.as_mut_ptr() as *mut gst::ffi::GstMiniObject;
            gst::ffi::gst_mini_object_set_qdata(
                object,
                POOLED_QUARK.into_glib(),
                data as glib::ffi::gpointer,
                Some(drop_pooled),
            );
            (*object).dispose = Some(dispose_pooled);
        }
        lock(&pooled.slot).home = Some(memory);
        Ok(pooled)
    }
}

impl Drop for Memories {
    fn drop(&mut self) {
        self.retire_all();
    }
}

/// Called when a pooled memory's last reference goes: bring it home (resurrect it, as
/// GstBufferPool does with buffers) unless it was retired, and let go of its frame.
unsafe extern "C" fn dispose_pooled(object: *mut gst::ffi::GstMiniObject) -> glib::ffi::gboolean {
    // SAFETY: GStreamer calls dispose with our memory at refcount 0; its qdata, set
    // before the dispose hook, lives until the memory is finalized.
    let pooled = unsafe {
        let data = gst::ffi::gst_mini_object_get_qdata(object, POOLED_QUARK.into_glib()) as *const Arc<Pooled>;
        match data.as_ref() {
            Some(pooled) => pooled.clone(),
            None => return glib::ffi::GTRUE,
        }
    };
    let mut slot = lock(&pooled.slot);
    let frame = slot.frame.take();
    let keep = !slot.retired;
    if keep {
        // SAFETY: taking a reference at refcount 0 from dispose resurrects the object
        // (GStreamer's documented recycling, as GstBufferPool does); the new reference
        // is owned by `home`.
        slot.home = Some(unsafe {
            gst::ffi::gst_mini_object_ref(object);
            from_glib_full(object as *mut gst::ffi::GstMemory)
        });
    }
    drop(slot);
    // The memory is home before the return goes out, so the sender's next use of this
    // buf_id finds it there.
    drop(frame);
    if keep {
        glib::ffi::GFALSE
    } else {
        glib::ffi::GTRUE
    }
}
