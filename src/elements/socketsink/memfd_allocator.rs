//! `GstQtiSocketMemfdAllocator`: a `GstFdAllocator` whose memories are fresh, sealed
//! memfds. `qtisocketsink` offers it (and pools built on it) in the allocation query, so
//! that ordinary upstream elements write straight into memory that can cross the socket
//! as an fd; its own copies of system-memory buffers go into it too.
//!
//! Each memfd is sized once and sealed against shrinking and growing: a receiver can
//! trust that the `maxsize` it was told stays mapped for as long as it holds the fd.
//! Memories stay mapped from their first map to their free (`KEEP_MAPPED`), so a pooled
//! buffer is mapped once in its life.

use gst::glib;
use gst::prelude::*;

glib::wrapper! {
    pub struct MemfdAllocator(ObjectSubclass<imp::MemfdAllocator>)
        @extends gst_allocators::FdAllocator, gst::Allocator, gst::Object;
}

impl Default for MemfdAllocator {
    fn default() -> Self {
        glib::Object::new()
    }
}

mod imp {
    use std::os::fd::IntoRawFd;
    use std::sync::LazyLock;

    use gst::glib::translate::*;
    use gst::subclass::prelude::*;
    use gst_allocators::subclass::prelude::*;

    use super::*;

    static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
        gst::DebugCategory::new(
            "qtisocketmemfd",
            gst::DebugColorFlags::empty(),
            Some("Sealed memfd memory for qtisocketsink"),
        )
    });

    #[derive(Default)]
    pub struct MemfdAllocator;

    #[glib::object_subclass]
    impl ObjectSubclass for MemfdAllocator {
        const NAME: &'static str = "GstQtiSocketMemfdAllocator";
        type Type = super::MemfdAllocator;
        type ParentType = gst_allocators::FdAllocator;
    }

    impl ObjectImpl for MemfdAllocator {
        fn constructed(&self) {
            self.parent_constructed();
            // GstFdAllocator marks itself CUSTOM_ALLOC (it cannot allocate by size, so
            // generic code must not use it); this one can, and pools may use it.
            self.obj()
                .unset_object_flags(gst::ObjectFlags::from_bits_retain(gst::ffi::GST_ALLOCATOR_FLAG_CUSTOM_ALLOC));
        }
    }

    impl GstObjectImpl for MemfdAllocator {}

    unsafe impl AllocatorImpl for MemfdAllocator {
        unsafe fn alloc(&self, size: usize, params: &gst::AllocationParams) -> *mut gst::ffi::GstMemory {
            let Some(maxsize) = size.checked_add(params.prefix()).and_then(|s| s.checked_add(params.padding())) else {
                return std::ptr::null_mut();
            };
            let file = match crate::sealed_memfd("qtisocket", maxsize.max(1)) {
                Ok(file) => file,
                Err(e) => {
                    gst::error!(CAT, imp = self, "cannot make a memfd of {maxsize} bytes: {e}");
                    return std::ptr::null_mut();
                }
            };
            let fd = file.into_raw_fd();
            // SAFETY: `fd` is a memfd of `maxsize.max(1)` bytes whose ownership passes to
            // the new memory (GstFdAllocator closes it when the memory is freed; on
            // failure it is closed below). The allocator is a GstFdAllocator subclass.
            unsafe {
                let memory = gst_allocators::ffi::gst_fd_allocator_alloc(
                    self.obj().upcast_ref::<gst::Allocator>().to_glib_none().0,
                    fd,
                    maxsize,
                    gst_allocators::ffi::GST_FD_MEMORY_FLAG_KEEP_MAPPED,
                );
                if memory.is_null() {
                    libc::close(fd);
                    return memory;
                }
                if params.prefix() > 0 || maxsize != size {
                    gst::ffi::gst_memory_resize(memory, params.prefix() as isize, size);
                }
                memory
            }
        }
    }

    impl FdAllocatorImpl for MemfdAllocator {}
}
