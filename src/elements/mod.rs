//! The GStreamer elements, built on the receiver and sender: memories, metas, caps,
//! properties, state changes. No socket code here.

mod socketsrc;

pub(crate) fn register(plugin: &gst::Plugin) -> Result<(), gst::glib::BoolError> {
    socketsrc::register(plugin)?;
    Ok(())
}
