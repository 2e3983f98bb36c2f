//! The senders' pool of sealed memfds, shared by `qsock.Sender` (one connection) and
//! `qsock.FanoutSender` (every receiver in a directory).
//!
//! A memfd sent is kept out of the pool by a [`SlotHold`]: the one-connection sender
//! drops it when its receiver returns the memfd, the fan-out when every receiver that got
//! the buffer has returned it or is gone (on the fan-out's own thread, without the GIL).
//! A memfd is handed out again only when no hold and no Python array over it is alive,
//! so an array the user still holds never changes under them.
//!
//! The pool's lock is a leaf: nothing else is locked while it is held.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::mapping::Mapping;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// In the pool, ready once no array over it is alive.
    Free,
    /// Handed to a send or a `Frame` being written.
    Lent,
    /// Sent; a [`SlotHold`] keeps it until the receivers return it.
    InFlight,
}

/// One pooled memfd: sealed against shrinking and growing, mapped read-write once.
struct Slot {
    fd: Arc<OwnedFd>,
    mapping: Arc<Mapping>,
    state: SlotState,
}

impl Slot {
    fn new(size: usize) -> std::io::Result<Slot> {
        let fd: OwnedFd = gstqtisocket::sealed_memfd("qsock-python", size)?.into();
        let mapping = Arc::new(Mapping::new(fd.as_fd(), size, true)?);
        Ok(Slot { fd: Arc::new(fd), mapping, state: SlotState::Free })
    }

    fn size(&self) -> usize {
        self.mapping.len()
    }

    /// Free, and no array over it alive (the pool holds the only reference).
    fn is_reusable(&self) -> bool {
        self.state == SlotState::Free && Arc::strong_count(&self.mapping) == 1
    }
}

struct State {
    /// By fd number, which is also the block's buf_id.
    slots: BTreeMap<RawFd, Slot>,
    /// Holds dropped so far: a waiter sees whether one came back since it looked.
    returned: u64,
}

/// What [`Pool::try_acquire`] found.
pub enum Acquired {
    /// A memfd of the size asked for, lent to the caller.
    Slot(RawFd),
    /// Every memfd is in use: `in_flight` of them are out with receivers (the others
    /// are lent, or held by arrays); `returned` is the count to wait past.
    Full { in_flight: usize, returned: u64 },
}

pub struct Pool {
    size: usize,
    state: Mutex<State>,
    changed: Condvar,
}

impl Pool {
    pub fn new(size: usize) -> Arc<Pool> {
        Arc::new(Pool {
            size,
            state: Mutex::new(State { slots: BTreeMap::new(), returned: 0 }),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change under the lock is one assignment or one map operation.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most memfds it makes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// A memfd of exactly `size` bytes, lent to the caller: a free one, or a new one
    /// while the pool has room (a free one of another size makes room).
    pub fn try_acquire(&self, size: usize) -> std::io::Result<Acquired> {
        let mut state = self.lock();
        if let Some((&fd, slot)) = state.slots.iter_mut().find(|(_, s)| s.is_reusable() && s.size() == size) {
            slot.state = SlotState::Lent;
            return Ok(Acquired::Slot(fd));
        }
        if state.slots.len() >= self.size {
            // The frames changed size: a free memfd of the old size makes room.
            if let Some(fd) = state.slots.iter().find(|(_, s)| s.is_reusable()).map(|(&fd, _)| fd) {
                state.slots.remove(&fd);
            }
        }
        if state.slots.len() < self.size {
            let slot = Slot::new(size)
                .map_err(|e| std::io::Error::new(e.kind(), format!("making a {size}-byte memfd: {e}")))?;
            let fd = slot.fd.as_raw_fd();
            state.slots.insert(fd, Slot { state: SlotState::Lent, ..slot });
            return Ok(Acquired::Slot(fd));
        }
        Ok(Acquired::Full { in_flight: Self::count(&state, SlotState::InFlight), returned: state.returned })
    }

    /// A lent memfd's fd and mapping.
    pub fn get(&self, fd: RawFd) -> (Arc<OwnedFd>, Arc<Mapping>) {
        let state = self.lock();
        let slot = &state.slots[&fd];
        (slot.fd.clone(), slot.mapping.clone())
    }

    /// Lent memfds go back unsent.
    pub fn give_back(&self, fds: &[RawFd]) {
        let mut state = self.lock();
        for fd in fds {
            if let Some(slot) = state.slots.get_mut(fd) {
                if slot.state == SlotState::Lent {
                    slot.state = SlotState::Free;
                }
            }
        }
        drop(state);
        self.changed.notify_all();
    }

    /// A lent memfd is sent: out of the pool until the hold is dropped.
    pub fn hold(self: &Arc<Pool>, fd: RawFd) -> SlotHold {
        if let Some(slot) = self.lock().slots.get_mut(&fd) {
            slot.state = SlotState::InFlight;
        }
        SlotHold { pool: self.clone(), fd }
    }

    fn count(state: &State, which: SlotState) -> usize {
        state.slots.values().filter(|s| s.state == which).count()
    }

    /// Memfds out with receivers.
    pub fn in_flight(&self) -> usize {
        Self::count(&self.lock(), SlotState::InFlight)
    }

    /// Memfds made (and not closed).
    pub fn len(&self) -> usize {
        self.lock().slots.len()
    }

    /// How many holds were dropped so far.
    pub fn returned(&self) -> u64 {
        self.lock().returned
    }

    /// Waits (call it without the GIL) up to `timeout` until a hold is dropped after the
    /// `seen`th.
    pub fn wait_returned(&self, seen: u64, timeout: Duration) {
        let state = self.lock();
        let _ = self.changed.wait_timeout_while(state, timeout, |s| s.returned == seen);
    }
}

/// Keeps a sent memfd out of the pool; dropping it puts the memfd back (from any thread).
pub struct SlotHold {
    pool: Arc<Pool>,
    fd: RawFd,
}

impl Drop for SlotHold {
    fn drop(&mut self) {
        let mut state = self.pool.lock();
        if let Some(slot) = state.slots.get_mut(&self.fd) {
            if slot.state == SlotState::InFlight {
                slot.state = SlotState::Free;
            }
        }
        state.returned += 1;
        drop(state);
        self.pool.changed.notify_all();
    }
}
