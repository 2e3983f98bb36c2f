//! `qtisocketsink`: sends buffers to a `qtisocketsrc` (deployed or ours) in another
//! process, zero-copy, as a `GstBaseSink`. The user documentation is
//! docs/qtisocketsink.md; the connections are the fan-out's ([`crate::Fanout`]).

use gst::glib;
use gst::prelude::*;

mod handoff;
mod imp;
mod memfd_allocator;
mod outgoing;
mod pool;
mod report;

glib::wrapper! {
    /// The `qtisocketsink` element.
    pub struct QtiSocketSink(ObjectSubclass<imp::QtiSocketSink>)
        @extends gst_base::BaseSink, gst::Element, gst::Object;
}

pub(crate) fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(Some(plugin), "qtisocketsink", gst::Rank::PRIMARY, QtiSocketSink::static_type())
}
