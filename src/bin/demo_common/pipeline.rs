//! What both demos do with GStreamer: start it with the plugin built in, parse a
//! pipeline, wait for its end.

use std::time::Duration;

use gst::prelude::*;

/// Initialises GStreamer and registers this crate's elements (no plugin path needed).
pub fn init() -> Result<(), String> {
    gst::init().map_err(|e| format!("GStreamer: {e}"))?;
    gstqtisocket::plugin_register_static().map_err(|e| format!("registering the plugin: {e}"))
}

pub fn launch(description: &str) -> Result<gst::Pipeline, String> {
    gst::parse::launch(description)
        .map_err(|e| format!("{description}: {e}"))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline".to_string())
}

/// Waits for EOS or an error on `pipeline`'s bus, at most `limit`; an error as text.
pub fn wait_for_eos(pipeline: &gst::Pipeline, limit: Duration) -> Result<(), String> {
    let bus = pipeline.bus().expect("a pipeline has a bus");
    let message = bus.timed_pop_filtered(
        gst::ClockTime::from_nseconds(limit.as_nanos() as u64),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    match message.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::Eos(_)) => Ok(()),
        Some(gst::MessageView::Error(e)) => Err(format!("{} ({:?})", e.error(), e.debug())),
        _ => Err(format!("no EOS within {limit:?}")),
    }
}
