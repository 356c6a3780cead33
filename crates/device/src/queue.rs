//! The common queue loop: pop chains, hand them to a handler, complete them, decide whether the
//! driver needs a notification.

use crate::device::Scratch;
use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::device::BalloonDevice;
use crate::error::{DeviceError, ErrorKind};
use crate::memory::GuestRange;
use crate::metrics::bump;

/// What to do with a chain after its handler ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Completion {
    /// Put it in the used ring with this length (bytes written by the device).
    Used(u32),
    /// Keep it (the stats buffer).
    Hold,
    /// Keep it and give back the previously held chain with length 0.
    HoldAndRelease(u16),
}

/// Where the device writes in guest memory for this queue, besides buffers: a range the
/// device itself dirties, so memory overlapping it cannot be claimed zeroed.
pub(crate) fn used_ring_range<Q: QueueT>(queue: &Q) -> Option<GuestRange> {
    // flags + idx + ring + avail_event
    let len = 4 + 8 * u64::from(queue.size()) + 2;
    GuestRange::new(queue.used_ring(), len).ok()
}

/// `VIRTQ_DESC_F_INDIRECT`: the descriptor's buffer is a table of descriptors.
const VIRTQ_DESC_F_INDIRECT: u16 = 4;

/// Whether the descriptor at `head` refers to an indirect table (read again from the ring:
/// `DescriptorChain` follows indirect tables without saying so). Unreadable counts as no.
fn head_is_indirect<Q: QueueT, M: GuestMemoryBackend>(queue: &Q, mem: &M, head: u16) -> bool {
    // struct virtq_desc { le64 addr; le32 len; le16 flags; le16 next; }: flags at byte 12.
    queue
        .desc_table()
        .checked_add(u64::from(head) * 16 + 12)
        .and_then(|a| mem.read_obj::<[u8; 2]>(GuestAddress(a)).ok())
        .is_some_and(|flags| u16::from_le_bytes(flags) & VIRTQ_DESC_F_INDIRECT != 0)
}

impl<D> BalloonDevice<D> {
    /// Run `handle` on every available chain of `queue`. Returns whether the driver must be
    /// notified.
    pub(crate) fn drain<Q, M, F>(
        &mut self,
        index: usize,
        queue: &mut Q,
        mem: &M,
        handle: F,
    ) -> Result<bool, DeviceError>
    where
        Q: QueueT,
        M: GuestMemoryBackend,
        F: FnMut(
            &mut Self,
            &M,
            DescriptorChain<&M>,
            Option<GuestRange>,
            &mut Scratch,
        ) -> Completion,
    {
        // The handlers borrow the device mutably and need the scratch buffers alongside it.
        let mut scratch = std::mem::take(&mut self.scratch);
        let result = self.drain_with(index, queue, mem, handle, &mut scratch);
        self.scratch = scratch;
        result
    }

    fn drain_with<Q, M, F>(
        &mut self,
        index: usize,
        queue: &mut Q,
        mem: &M,
        mut handle: F,
        scratch: &mut Scratch,
    ) -> Result<bool, DeviceError>
    where
        Q: QueueT,
        M: GuestMemoryBackend,
        F: FnMut(
            &mut Self,
            &M,
            DescriptorChain<&M>,
            Option<GuestRange>,
            &mut Scratch,
        ) -> Completion,
    {
        if !queue.ready() {
            return Ok(false);
        }
        let used_ring = used_ring_range(queue);
        let mut completed = false;
        loop {
            if queue.disable_notification(mem).is_err() {
                return Err(self.queue_error(index, ErrorKind::UsedRing));
            }
            self.check_avail(index, queue, mem)?;
            let mut popped = 0usize;
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                popped += 1;
                let head = chain.head_index();
                if head_is_indirect(queue, mem, head) {
                    bump(&self.metrics.indirect_chains, 1);
                }
                let used = match handle(self, mem, chain, used_ring, scratch) {
                    Completion::Used(len) => Some((head, len)),
                    Completion::Hold => None,
                    Completion::HoldAndRelease(previous) => Some((previous, 0)),
                };
                if let Some((id, len)) = used {
                    if queue.add_used(mem, id, len).is_err() {
                        // An out-of-range head index: nothing can be completed for it, the
                        // ring itself is still fine.
                        self.metrics.error(ErrorKind::UsedRing);
                    } else {
                        completed = true;
                    }
                }
            }
            match queue.enable_notification(mem) {
                Ok(true) if popped > 0 => continue,
                // More is announced but nothing could be popped: the avail ring is unreadable.
                Ok(true) => return Err(self.queue_error(index, ErrorKind::AvailRing)),
                Ok(false) => break,
                Err(_) => return Err(self.queue_error(index, ErrorKind::UsedRing)),
            }
        }
        Ok(completed && queue.needs_notification(mem).unwrap_or(true))
    }

    /// Refuse an available index more than a queue size ahead: the driver is broken and the
    /// queue cannot make sense of its ring until it is reset.
    fn check_avail<Q: QueueT, M: GuestMemoryBackend>(
        &self,
        index: usize,
        queue: &Q,
        mem: &M,
    ) -> Result<(), DeviceError> {
        let avail = queue
            .avail_idx(mem, Ordering::Acquire)
            .map_err(|_| self.queue_error(index, ErrorKind::AvailRing))?;
        if (avail - Wrapping(queue.next_avail())).0 > queue.size() {
            return Err(self.queue_error(index, ErrorKind::AvailRing));
        }
        Ok(())
    }

    pub(crate) fn queue_error(&self, index: usize, kind: ErrorKind) -> DeviceError {
        self.metrics.error(kind);
        DeviceError::Queue { index, kind }
    }
}
