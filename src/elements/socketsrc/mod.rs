//! `qtisocketsrc`: receives buffers from a `qtisocketsink` (deployed or ours) in another
//! process, zero-copy, as a live `GstPushSrc`. The user documentation is
//! docs/qtisocketsrc.md; the socket work is the receiver's ([`crate::Receiver`]).

use gst::glib;
use gst::prelude::*;

mod imp;
mod memory;

glib::wrapper! {
    /// The `qtisocketsrc` element.
    pub struct QtiSocketSrc(ObjectSubclass<imp::QtiSocketSrc>)
        @extends gst_base::PushSrc, gst_base::BaseSrc, gst::Element, gst::Object;
}

/// Which timestamps the buffers carry (property `timestamp-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstQtiSocketSrcTimestampMode")]
pub enum TimestampMode {
    /// The sender's PTS and DTS moved onto this pipeline's running time by an offset
    /// taken at the first buffer (and after a new sender, a DISCONT, or a jump): frames
    /// keep the sender's spacing and play at its pace in a synchronising sink.
    #[default]
    #[enum_value(name = "Rebased: the sender's timestamps, moved onto this pipeline's running time", nick = "rebased")]
    Rebased,
    /// The sender's PTS, DTS and duration, unchanged: the running time of the sender's
    /// pipeline, as the deployed element does.
    #[enum_value(
        name = "Sender: the sender's PTS/DTS/duration unchanged (its pipeline's running time)",
        nick = "sender"
    )]
    Sender,
    /// PTS = DTS = this pipeline's running time when the message arrived; the sender's
    /// duration.
    #[enum_value(
        name = "Arrival: PTS = DTS = this pipeline's running time when the message arrived",
        nick = "arrival"
    )]
    Arrival,
}

pub(crate) fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    TimestampMode::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(Some(plugin), "qtisocketsrc", gst::Rank::PRIMARY, QtiSocketSrc::static_type())
}
