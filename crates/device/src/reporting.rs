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
use virtio_queue::DescriptorChain;
use vm_memory::GuestMemoryBackend;

use crate::chain::{collect, Buffer};
use crate::context::ChainCtx;
use crate::discard::{discard_ranges, DiscardBackend};
use crate::error::ErrorKind;
use crate::memory::{self, covered, normalize, GuestRange};
use crate::metrics::bump;

/// Handle one reporting chain: discard its blocks; return its used length (its total length if
/// every byte now reads zero and may be claimed so, else 0). `Err` rejects the whole chain:
/// nothing discarded.
pub(crate) fn report_chain<M, D>(
    ctx: &mut ChainCtx<'_, M, D>,
    chain: DescriptorChain<&M>,
) -> Result<u32, ErrorKind>
where
    M: GuestMemoryBackend,
    D: DiscardBackend<M::R>,
{
    bump(&ctx.metrics.reporting_requests, 1);
    let metrics = ctx.metrics;
    let poison_forbids_zero = ctx.poison_forbids_zero();
    let bufs = &mut *ctx.bufs;
    collect(chain, ctx.limits.max_chain_descriptors, &mut bufs.buffers)?;
    if bufs.buffers.iter().any(|b| !b.writable) {
        return Err(ErrorKind::WrongDirection);
    }
    bump(&metrics.reporting_buffers, bufs.buffers.len() as u64);
    if poison_forbids_zero {
        bump(&metrics.poison_skipped, 1);
        return Ok(0);
    }
    let total_len: u64 = bufs.buffers.iter().map(|b| u64::from(b.len)).sum();
    bufs.reported.clear();
    let mut all_valid = true;
    for b in &bufs.buffers {
        match reported_range(ctx.mem, b) {
            Ok(range) => bufs.reported.push(range),
            Err(kind) => {
                metrics.error(kind);
                all_valid = false;
            }
        }
    }
    let valid_bytes = bufs
        .reported
        .iter()
        .fold(0u64, |a, r| a.saturating_add(r.len()));
    bump(&metrics.reported_bytes, valid_bytes);

    bufs.ranges.clear();
    bufs.ranges.extend_from_slice(&bufs.reported);
    normalize(&mut bufs.ranges);
    discard_ranges(
        ctx.mem,
        ctx.discard,
        metrics,
        &bufs.ranges,
        &mut bufs.zeroed,
    );

    if !ctx.features.init_reported() || !all_valid {
        return Ok(0);
    }
    let used_ring = ctx.used_ring;
    let all_zeroed = bufs
        .reported
        .iter()
        .all(|r| covered(&bufs.zeroed, *r) && !used_ring.is_some_and(|u| r.overlaps(&u)));
    // A chain is at most 4 GiB (virtio-queue stops iterating past that), so this fits.
    let Some(used) = u32::try_from(total_len).ok().filter(|_| all_zeroed) else {
        return Ok(0);
    };
    bump(&metrics.reported_chains_zeroed, 1);
    bump(&metrics.zeroed_bytes, u64::from(used));
    Ok(used)
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

#[cfg(test)]
mod tests {
    use prezero_balloon::features::{Features, DEVICE_INIT_REPORTED, REPORTING};

    use super::report_chain;
    use crate::context::test_support::{chain, mem, Parts, WRITE};

    const MIB: u64 = 1 << 20;

    #[test]
    fn zeroed_chain_answers_its_length_unless_poisoned() {
        let mem = mem();
        let features = Features::bit(REPORTING).with(DEVICE_INIT_REPORTED);
        let mut parts = Parts::default();
        let blocks = [(MIB, 4096, WRITE), (MIB + 8192, 8192, WRITE)];
        let used = report_chain(&mut parts.ctx(&mem, features), chain(&mem, &blocks)).unwrap();
        assert_eq!(used, 3 * 4096);
        assert_eq!(parts.discard.discarded_bytes(), 3 * 4096);

        let mut poisoned = Parts::default();
        let mut ctx = poisoned.ctx(&mem, features);
        ctx.poison_val = Some(0xaa);
        assert_eq!(report_chain(&mut ctx, chain(&mem, &blocks)), Ok(0));
        assert!(poisoned.discard.ops.is_empty());
    }

    #[test]
    fn used_ring_overlap_is_discarded_but_not_claimed() {
        let mem = mem();
        let features = Features::bit(REPORTING).with(DEVICE_INIT_REPORTED);
        let mut parts = Parts::default();
        let mut ctx = parts.ctx(&mem, features);
        ctx.used_ring = crate::memory::GuestRange::new(MIB + 100, 8).ok();
        assert_eq!(
            report_chain(&mut ctx, chain(&mem, &[(MIB, 4096, WRITE)])),
            Ok(0)
        );
        assert_eq!(parts.discard.discarded_bytes(), 4096);
    }
}
