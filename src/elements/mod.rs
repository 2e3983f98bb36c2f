//! The GStreamer elements, built on the receiver and sender: memories, metas, caps,
//! properties, state changes. No socket code here.

mod meta;
mod socketsink;
mod socketsrc;

pub(crate) fn register(plugin: &gst::Plugin) -> Result<(), gst::glib::BoolError> {
    socketsrc::register(plugin)?;
    socketsink::register(plugin)?;
    Ok(())
}
