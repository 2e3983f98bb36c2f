//! How many buffers the fan-out may hold while each send reads the returns instead of its
//! thread waking for every one ([`crate::Fanout::set_handoff_below`]), so that upstream
//! never waits on an empty pool for returns nobody reads: no bound for the pool the sink
//! proposed (when empty, it reads the returns itself: pool.rs) or for a pool without a
//! maximum, half of what any other pool can have out. Memory of no pool (or of several)
//! turns the handoff off.

use gst::glib;
use gst::prelude::*;

use super::outgoing::pool_of;
use super::pool::ReturnReadingPool;
use super::QtiSocketSink;
use crate::Fanout;

#[derive(Default)]
pub(super) struct Handoff {
    /// The pool the last buffers came from (not kept alive: its owner decides when it
    /// goes, and its buffers with it), and the bound it gives.
    pool: Option<(glib::WeakRef<gst::BufferPool>, usize)>,
    /// What the fan-out was told last.
    told: usize,
}

impl Handoff {
    /// Tells `fanout` the bound for a buffer whose memories `holds` keeps, when it changed.
    pub fn update<H: Send + 'static>(&mut self, holds: &[gst::Buffer], fanout: &Fanout<H>, sink: &QtiSocketSink) {
        let below = match holds {
            [hold] => self.bound(hold, sink),
            _ => 0,
        };
        if below != self.told {
            fanout.set_handoff_below(below);
            self.told = below;
        }
    }

    fn bound(&mut self, hold: &gst::Buffer, sink: &QtiSocketSink) -> usize {
        let Some(pool) = pool_of(hold) else { return 0 };
        match &self.pool {
            Some((last, below)) if last.upgrade().as_ref() == Some(&pool) => *below,
            _ => {
                let below = match pool.config().params() {
                    _ if ReturnReadingPool::is_of(&pool, sink) => usize::MAX,
                    // A pool without a maximum allocates more when it runs out.
                    Some((_, _, _, 0)) => usize::MAX,
                    Some((_, _, _, max)) => max as usize / 2,
                    None => 0,
                };
                self.pool = Some((pool.downgrade(), below));
                below
            }
        }
    }
}
