//! The pool the sink proposes upstream for video: memfd frames with a video meta, as a
//! `GstVideoBufferPool` would make them, and one difference. When it runs dry, the
//! thread asking for a buffer (upstream's streaming thread) reads the receivers' returns
//! itself ([`crate::Fanout::wait_for_a_return`]) instead of waiting for the fan-out's
//! thread to read them and wake it. So the sends may read the returns for as long as
//! buffers flow (the handoff, see handoff.rs), however many the receivers hold: when
//! the pool is empty, the one who waits for a return is the one who reads it.

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

glib::wrapper! {
    pub struct ReturnReadingPool(ObjectSubclass<imp::ReturnReadingPool>)
        @extends gst::BufferPool, gst::Object;
}

impl ReturnReadingPool {
    /// A pool whose dry acquires wait for `sink`'s receivers to return a buffer.
    pub fn new(sink: &super::QtiSocketSink) -> Self {
        let pool: Self = glib::Object::new();
        pool.imp().sink.set(sink.downgrade()).expect("set once, here");
        pool
    }

    /// Whether `pool` is one that `sink` proposed.
    pub fn is_of(pool: &gst::BufferPool, sink: &super::QtiSocketSink) -> bool {
        pool.downcast_ref::<Self>()
            .and_then(|pool| pool.imp().sink.get())
            .is_some_and(|owner| owner.upgrade().as_ref() == Some(sink))
    }
}

mod imp {
    use std::sync::{Mutex, OnceLock};

    use gst::glib;
    use gst::subclass::prelude::*;

    use super::super::imp::CAT;
    use crate::elements::lock;

    #[derive(Default)]
    pub struct ReturnReadingPool {
        pub(super) sink: OnceLock<glib::WeakRef<super::super::QtiSocketSink>>,
        /// The frames' layout, when upstream asked for video metas.
        video_meta: Mutex<Option<gst_video::VideoInfo>>,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for ReturnReadingPool {
        const NAME: &'static str = "GstQtiSocketSinkPool";
        type Type = super::ReturnReadingPool;
        type ParentType = gst::BufferPool;
    }

    impl ObjectImpl for ReturnReadingPool {}
    impl GstObjectImpl for ReturnReadingPool {}

    impl BufferPoolImpl for ReturnReadingPool {
        fn options() -> &'static [&'static str] {
            static OPTIONS: [&str; 1] = [gst_video::BUFFER_POOL_OPTION_VIDEO_META.as_str()];
            &OPTIONS
        }

        /// As `GstVideoBufferPool`: video caps are required, and each buffer is at least
        /// a frame's size.
        fn set_config(&self, config: &mut gst::BufferPoolConfigRef) -> bool {
            let Some((Some(caps), size, min, max)) = config.params() else {
                gst::warning!(CAT, imp = self, "a pool of video frames needs caps in its configuration");
                return false;
            };
            let Ok(info) = gst_video::VideoInfo::from_caps(&caps) else {
                gst::warning!(CAT, imp = self, "a pool of video frames cannot make frames of {caps}");
                return false;
            };
            config.set_params(Some(&caps), size.max(info.size() as u32), min, max);
            let with_meta = config.has_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META);
            *lock(&self.video_meta) = with_meta.then_some(info);
            self.parent_set_config(config)
        }

        fn alloc_buffer(&self, params: Option<&gst::BufferPoolAcquireParams>) -> Result<gst::Buffer, gst::FlowError> {
            let mut buffer = self.parent_alloc_buffer(params)?;
            if let Some(info) = lock(&self.video_meta).as_ref() {
                let buffer = buffer.get_mut().expect("a buffer just allocated is writable");
                gst_video::VideoMeta::add_full(
                    buffer,
                    gst_video::VideoFrameFlags::empty(),
                    info.format(),
                    info.width(),
                    info.height(),
                    info.offset(),
                    info.stride(),
                )
                .map_err(|e| {
                    gst::error!(CAT, imp = self, "cannot describe a {}x{} frame: {e}", info.width(), info.height());
                    gst::FlowError::Error
                })?;
            }
            Ok(buffer)
        }

        /// Free buffers first; when there are none, the returns the receivers sent
        /// meanwhile, read here; waiting on the pool only when the fan-out holds none of
        /// them (upstream does, and gives them back to the pool, or sends them: the
        /// fan-out's thread then reads their returns at once) or is flushing.
        fn acquire_buffer(&self, params: Option<&gst::BufferPoolAcquireParams>) -> Result<gst::Buffer, gst::FlowError> {
            let flags = params.map_or(gst::BufferPoolAcquireFlags::empty(), |p| p.flags());
            if flags.contains(gst::BufferPoolAcquireFlags::DONTWAIT) {
                return self.parent_acquire_buffer(params);
            }
            let now = gst::BufferPoolAcquireParams::with_flags(flags | gst::BufferPoolAcquireFlags::DONTWAIT);
            loop {
                match self.parent_acquire_buffer(Some(&now)) {
                    // None free, and as many out as the pool may have.
                    Err(gst::FlowError::Eos) => {}
                    got => return got,
                }
                let fanout = self.sink.get().and_then(|sink| sink.upgrade()).and_then(|sink| sink.imp().fanout());
                match fanout {
                    Some(fanout) if fanout.wait_for_a_return() => {}
                    Some(fanout) => {
                        let _waiting = fanout.waiting_elsewhere();
                        return self.parent_acquire_buffer(params);
                    }
                    None => return self.parent_acquire_buffer(params),
                }
            }
        }
    }
}
