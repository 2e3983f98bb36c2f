//! The GStreamer elements, built on the receiver and sender: memories, metas, caps,
//! properties, state changes. No socket code here.

mod caps;
pub(crate) mod meta;
mod socketsink;
mod socketsrc;

/// Locks `mutex`, also after a panic elsewhere poisoned it: one panic must not make every
/// later call (state changes, property reads) panic too.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn register(plugin: &gst::Plugin) -> Result<(), gst::glib::BoolError> {
    socketsrc::register(plugin)?;
    socketsink::register(plugin)?;
    Ok(())
}
