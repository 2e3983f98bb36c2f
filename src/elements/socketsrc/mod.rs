//! `qtisocketsrc`: receives buffers from a `qtisocketsink` (deployed or ours).

pub(crate) fn register(_plugin: &gst::Plugin) -> Result<(), gst::glib::BoolError> {
    Ok(())
}
