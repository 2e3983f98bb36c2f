//! `qtisocketsink`: sends buffers to a `qtisocketsrc` (deployed or ours).

pub(crate) fn register(_plugin: &gst::Plugin) -> Result<(), gst::glib::BoolError> {
    Ok(())
}
