//! The per-connection cache of pooled fds, keyed by `buf_id`, and the assignment of a
//! message's fds to its memory blocks (spec: *fd caching*). An fd is shared between
//! the cache and the buffers that use it (`Arc<OwnedFd>`): it closes when the
//! connection has ended and the last buffer using it is released.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use crate::protocol::{DataMessage, MemoryKind, ProtocolError, MAX_MEMORY_BLOCKS};
use crate::transport::{object_can_shrink, object_size};

struct CachedFd {
    fd: Arc<OwnedFd>,
    /// The object's size when it was cached.
    object_size: u64,
    /// An unsealed memfd or file: measured again at every reuse, so that a sender that
    /// shrank it since is caught before downstream maps past its end. A DMA-BUF or a
    /// memfd sealed against shrinking (ours) needs that only when a message claims more.
    can_shrink: bool,
}

#[derive(Default)]
pub(crate) struct FdCache {
    by_buf_id: HashMap<i32, CachedFd>,
}

impl FdCache {
    pub(crate) fn len(&self) -> usize {
        self.by_buf_id.len()
    }

    /// Gives every block of `message` its fd: a new one from `fds`, or the cached one for
    /// its `buf_id`. Checks every block's `maxsize` against its object. All or nothing: on
    /// error the cache is unchanged and the new fds are closed.
    pub(crate) fn assign(
        &mut self,
        message: &DataMessage,
        fds: Vec<OwnedFd>,
    ) -> Result<Vec<Arc<OwnedFd>>, ProtocolError> {
        if message.kind() == MemoryKind::Text {
            return Ok(Vec::new()); // the parser made sure no fds came with text
        }
        let pooled = message.info.use_buffer_pool;
        let buf_ids = message.buf_ids();
        // With every block given an fd, each takes its own (replacing a cached one: our
        // sender resends when the object behind a buf_id changed). With fewer, the fds
        // go in order to the blocks whose buf_id is not cached.
        // On the stack: no allocation per message (the parser allows 1..=10 blocks).
        let mut takes_new_fd = [true; MAX_MEMORY_BLOCKS];
        let takes_new_fd = &mut takes_new_fd[..buf_ids.len()];
        if fds.len() != buf_ids.len() && pooled {
            for (new, id) in takes_new_fd.iter_mut().zip(buf_ids) {
                *new = !self.by_buf_id.contains_key(id);
            }
        }
        let wanting = takes_new_fd.iter().filter(|&&new| new).count();
        if fds.len() > wanting {
            return Err(ProtocolError::FdsDoNotMatchBlocks { n_fds: fds.len(), uncached: wanting });
        }
        if let Some(block) = takes_new_fd.iter().enumerate().filter(|(_, &new)| new).nth(fds.len()).map(|(i, _)| i) {
            return Err(ProtocolError::UncachedBufId { block, buf_id: buf_ids[block] });
        }

        let mut new_fds = fds.into_iter();
        let mut assigned = Vec::with_capacity(buf_ids.len());
        let mut to_cache = Vec::new();
        for (block, (memory, &buf_id)) in message.blocks.iter().zip(buf_ids).enumerate() {
            let maxsize = memory.maxsize();
            let fd = if takes_new_fd[block] {
                let fd = new_fds.next().expect("counted above");
                let object_size = object_size(fd.as_fd()).map_err(|e| ProtocolError::UnsizableFd {
                    block,
                    buf_id,
                    reason: e.to_string(),
                })?;
                check_fits(block, buf_id, maxsize, object_size)?;
                let fd = Arc::new(fd);
                if pooled {
                    let can_shrink = object_can_shrink(fd.as_fd());
                    to_cache.push((buf_id, CachedFd { fd: fd.clone(), object_size, can_shrink }));
                }
                fd
            } else {
                let cached = &self.by_buf_id[&buf_id];
                if maxsize > cached.object_size || cached.can_shrink {
                    // It may have grown (then the claim may fit now) or, unsealed, shrunk.
                    let now = object_size(cached.fd.as_fd()).unwrap_or(0);
                    check_fits(block, buf_id, maxsize, now)?;
                }
                cached.fd.clone()
            };
            assigned.push(fd);
        }
        self.by_buf_id.extend(to_cache);
        Ok(assigned)
    }
}

fn check_fits(block: usize, buf_id: i32, maxsize: u64, object_size: u64) -> Result<(), ProtocolError> {
    if maxsize > object_size {
        return Err(ProtocolError::MaxsizePastObject { block, buf_id, maxsize, object_size });
    }
    Ok(())
}
