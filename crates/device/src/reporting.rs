//! The free page reporting queue, with `DEVICE_INIT_REPORTED`.
//!
//! A reporting request is one descriptor chain ("element", as QEMU's `VirtQueueElement`) of
//! device-writable buffers, each a reported block. The stock Linux driver sends one chain of up
//! to 32 blocks and ignores the used length; the upstream patched driver puts each block in its
//! own chain to get one answer per block.
//!
//! Every valid buffer is discarded (adjacent buffers merged: one call per contiguous range).
//! The used length is the chain's total buffer length only if `DEVICE_INIT_REPORTED` (with
//! `REPORTING`) was negotiated, guest poisoning allows zeros, every buffer was valid, and every
//! byte of every buffer lies in a successful zeroing discard of whole host pages that the device
//! does not dirty again (its own used ring); otherwise 0. With a non-zero `poison_val` nothing is
//! discarded at all: a discard would replace the poison pattern with zeros.
//!
//! A chain with a device-readable buffer or a broken shape is rejected whole (nothing
//! discarded). Within a well-formed chain, a buffer of length zero, not 4 KiB aligned,
//! overflowing, or not wholly guest RAM is skipped and counted; the others are still discarded.

use prezero_balloon::pfn::BALLOON_PAGE_SIZE;
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::GuestMemoryBackend;

use crate::chain::{collect, Buffer};
use crate::device::{BalloonDevice, Scratch};
use crate::discard::{discard_ranges, DiscardBackend};
use crate::error::{DeviceError, ErrorKind};
use crate::memory::{self, covered, normalize, GuestRange};
use crate::metrics::bump;
use crate::queue::Completion;

impl<D> BalloonDevice<D> {
    /// Process the reporting queue. Returns whether the driver must be notified.
    pub fn process_reporting<Q, M>(
        &mut self,
        index: usize,
        queue: &mut Q,
        mem: &M,
    ) -> Result<bool, DeviceError>
    where
        Q: QueueT,
        M: GuestMemoryBackend,
        D: DiscardBackend<M::R>,
    {
        self.drain(index, queue, mem, |dev, mem, chain, used_ring, scratch| {
            Completion::Used(dev.report_chain(mem, chain, used_ring, scratch))
        })
    }

    fn report_chain<M>(
        &mut self,
        mem: &M,
        chain: DescriptorChain<&M>,
        used_ring: Option<GuestRange>,
        s: &mut Scratch,
    ) -> u32
    where
        M: GuestMemoryBackend,
        D: DiscardBackend<M::R>,
    {
        bump(&self.metrics.reporting_requests, 1);
        let max_descriptors = self.options.limits.max_chain_descriptors;
        if let Err(kind) = collect(chain, max_descriptors, &mut s.buffers) {
            self.metrics.error(kind);
            return 0;
        }
        if s.buffers.iter().any(|b| !b.writable) {
            self.metrics.error(ErrorKind::WrongDirection);
            return 0;
        }
        bump(&self.metrics.reporting_buffers, s.buffers.len() as u64);
        if self.poison_forbids_zero() {
            bump(&self.metrics.poison_skipped, 1);
            return 0;
        }
        let total_len: u64 = s.buffers.iter().map(|b| u64::from(b.len)).sum();
        s.reported.clear();
        let mut all_valid = true;
        for b in &s.buffers {
            match reported_range(mem, b) {
                Ok(range) => s.reported.push(range),
                Err(kind) => {
                    self.metrics.error(kind);
                    all_valid = false;
                }
            }
        }
        let valid_bytes = s
            .reported
            .iter()
            .fold(0u64, |a, r| a.saturating_add(r.len()));
        bump(&self.metrics.reported_bytes, valid_bytes);

        s.ranges.clear();
        s.ranges.extend_from_slice(&s.reported);
        normalize(&mut s.ranges);
        s.zeroed.clear();
        discard_ranges(
            mem,
            &mut self.discard,
            &self.metrics,
            &s.ranges,
            &mut s.zeroed,
        );
        normalize(&mut s.zeroed);

        if !self.negotiated.init_reported() || !all_valid {
            return 0;
        }
        let all_zeroed = s
            .reported
            .iter()
            .all(|r| covered(&s.zeroed, *r) && !used_ring.is_some_and(|u| r.overlaps(&u)));
        // A chain is at most 4 GiB (virtio-queue stops iterating past that), so this fits.
        let Some(used) = u32::try_from(total_len).ok().filter(|_| all_zeroed) else {
            return 0;
        };
        bump(&self.metrics.reported_chains_zeroed, 1);
        bump(&self.metrics.zeroed_bytes, u64::from(used));
        used
    }
}

/// The guest range of one reported buffer, if acceptable.
fn reported_range<M: GuestMemoryBackend>(mem: &M, b: &Buffer) -> Result<GuestRange, ErrorKind> {
    let range = GuestRange::new(b.addr.0, u64::from(b.len))?;
    if range.start % BALLOON_PAGE_SIZE != 0 || range.len() % BALLOON_PAGE_SIZE != 0 {
        return Err(ErrorKind::Unaligned);
    }
    memory::check(mem, range)?;
    Ok(range)
}
