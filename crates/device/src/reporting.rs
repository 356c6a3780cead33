//! The free page reporting queue, with `DEVICE_INIT_REPORTED`.
//!
//! A reporting request is one descriptor chain ("element", as QEMU's `VirtQueueElement`) of
//! device-writable buffers, each a reported block. The stock Linux 6.1 driver sends one chain of
//! up to 32 blocks per pass and ignores the used length; the upstream patched driver puts each
//! block in its own chain (up to the ring size per pass) to get one answer per block.
//!
//! **One discard per contiguous range of a whole queue drain.** The queue loop hands every
//! chain it pops to `queue_report`, which checks it and sets its valid ranges aside; when the
//! loop has popped all it can (or the drain holds a ring's worth of chains), `finish_drain`
//! merges the ranges of all pending chains, discards each contiguous range once, and answers
//! every chain from the result, in the order they were popped. So the upstream pattern (256
//! chains of one 2 MiB block) costs one syscall per contiguous run, like the stock pattern (one
//! chain of 32 blocks), instead of one per block; no chain waits beyond the drain it arrived in.
//!
//! A chain's used length is still its own: its total buffer length only if `DEVICE_INIT_REPORTED`
//! (with `REPORTING`) was negotiated, guest poisoning allows zeros, every buffer of the chain was
//! valid, and every byte of every buffer lies in a successful zeroing discard of whole host
//! pages that the device does not dirty again (its own used ring); otherwise 0. Never a partial
//! sum: QEMU answers the sum of the buffers whose discard succeeded, which a driver that sends
//! several buffers per chain cannot map back to blocks. With a non-zero `poison_val` nothing is
//! discarded at all: a discard would replace the poison pattern with zeros.
//!
//! A chain with a device-readable buffer or a broken shape is rejected whole (nothing
//! discarded, used length 0). Within a well-formed chain, a buffer of length zero, not 4 KiB
//! aligned, overflowing, or not wholly guest RAM is skipped and counted; the others are still
//! discarded.

use prezero_balloon::pfn::BALLOON_PAGE_SIZE;
use virtio_queue::DescriptorChain;
use vm_memory::GuestMemoryBackend;

use crate::chain::{collect, Buffer};
use crate::context::{ChainCtx, PendingAnswer, PendingReport};
use crate::discard::{discard_ranges, DiscardBackend};
use crate::error::ErrorKind;
use crate::memory::{self, covered, normalize, GuestRange};
use crate::metrics::bump;

/// Check one reporting chain and set it aside until the end of the drain ([`finish_drain`]):
/// its valid ranges join the drain's, its answer is decided there. A rejected chain (counted
/// here) waits too, with used length 0, so that the used ring keeps the order of the avail ring.
pub(crate) fn queue_report<M, D>(ctx: &mut ChainCtx<'_, M, D>, chain: DescriptorChain<&M>)
where
    M: GuestMemoryBackend,
{
    let head = chain.head_index();
    let answer = check_chain(ctx, chain).unwrap_or_else(|kind| {
        ctx.metrics.error(kind);
        PendingAnswer::Fixed(0)
    });
    ctx.bufs
        .pending_reports
        .push(PendingReport { head, answer });
}

/// Whether the drain holds enough to be finished now: `ring_size` chains (one ring's worth:
/// bounded by what the driver can have in flight), or as many ranges as one chain may carry
/// (bounds what a guest can make the device keep).
pub(crate) fn drain_full<M, D>(ctx: &ChainCtx<'_, M, D>, ring_size: u16) -> bool {
    ctx.bufs.pending_reports.len() >= usize::from(ring_size).max(1)
        || ctx.bufs.reported.len() >= ctx.limits.max_chain_descriptors
}

/// The answer a reporting chain will get, once its valid ranges are in `ctx.bufs.reported`.
/// `Err` rejects the whole chain: nothing of it is discarded.
fn check_chain<M: GuestMemoryBackend, D>(
    ctx: &mut ChainCtx<'_, M, D>,
    chain: DescriptorChain<&M>,
) -> Result<PendingAnswer, ErrorKind> {
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
        return Ok(PendingAnswer::Fixed(0));
    }
    let total_len: u64 = bufs.buffers.iter().map(|b| u64::from(b.len)).sum();
    let first = bufs.reported.len();
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
    let valid_bytes = bufs.reported[first..]
        .iter()
        .fold(0u64, |a, r| a.saturating_add(r.len()));
    bump(&metrics.reported_bytes, valid_bytes);
    // A chain is at most 4 GiB (virtio-queue stops iterating past that), so this fits.
    let len = u32::try_from(total_len).ok();
    Ok(match len {
        Some(len) if all_valid && ctx.features.init_reported() => PendingAnswer::IfZeroed {
            first,
            end: bufs.reported.len(),
            len,
        },
        _ => PendingAnswer::Fixed(0),
    })
}

/// Discard the ranges of every pending chain (merged across chains: one call per contiguous
/// range), then answer each chain through `complete(head, used_len)`, in pop order. Leaves the
/// drain empty.
pub(crate) fn finish_drain<M, D>(ctx: &mut ChainCtx<'_, M, D>, mut complete: impl FnMut(u16, u32))
where
    M: GuestMemoryBackend,
    D: DiscardBackend<M::R>,
{
    let metrics = ctx.metrics;
    let bufs = &mut *ctx.bufs;
    if bufs.pending_reports.is_empty() {
        return;
    }
    bump(&metrics.reporting_drains, 1);
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
    let used_ring = ctx.used_ring;
    for pending in bufs.pending_reports.drain(..) {
        let used = match pending.answer {
            PendingAnswer::Fixed(len) => len,
            PendingAnswer::IfZeroed { first, end, len } => {
                let zeroed = bufs.reported[first..end].iter().all(|r| {
                    covered(&bufs.zeroed, *r) && !used_ring.is_some_and(|u| r.overlaps(&u))
                });
                if zeroed {
                    bump(&metrics.reported_chains_zeroed, 1);
                    bump(&metrics.zeroed_bytes, u64::from(len));
                    len
                } else {
                    0
                }
            }
        };
        complete(pending.head, used);
    }
    bufs.reported.clear();
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
    use vm_memory::GuestMemoryMmap;

    use super::{finish_drain, queue_report};
    use crate::context::test_support::{chain, mem, Parts, WRITE};
    use crate::context::ChainCtx;
    use crate::recording::RecordingDiscard;

    const MIB: u64 = 1 << 20;

    /// Queue each chain, finish the drain; the used lengths in pop order.
    fn drain(
        ctx: &mut ChainCtx<'_, GuestMemoryMmap<()>, RecordingDiscard>,
        mem: &GuestMemoryMmap<()>,
        chains: &[&[(u64, u32, u16)]],
    ) -> Vec<u32> {
        for descs in chains {
            queue_report(ctx, chain(mem, descs));
        }
        let mut used = Vec::new();
        finish_drain(ctx, |_, len| used.push(len));
        used
    }

    #[test]
    fn zeroed_chain_answers_its_length_unless_poisoned() {
        let mem = mem();
        let features = Features::bit(REPORTING).with(DEVICE_INIT_REPORTED);
        let mut parts = Parts::default();
        let blocks: &[_] = &[(MIB, 4096, WRITE), (MIB + 8192, 8192, WRITE)];
        let used = drain(&mut parts.ctx(&mem, features), &mem, &[blocks]);
        assert_eq!(used, [3 * 4096]);
        assert_eq!(parts.discard.discarded_bytes(), 3 * 4096);

        let mut poisoned = Parts::default();
        let mut ctx = poisoned.ctx(&mem, features);
        ctx.poison_val = Some(0xaa);
        assert_eq!(drain(&mut ctx, &mem, &[blocks]), [0]);
        assert!(poisoned.discard.ops.is_empty());
    }

    #[test]
    fn chains_of_one_drain_share_their_discards_but_not_their_answers() {
        let mem = mem();
        let features = Features::bit(REPORTING).with(DEVICE_INIT_REPORTED);
        let mut parts = Parts::default();
        let used = drain(
            &mut parts.ctx(&mem, features),
            &mem,
            &[
                &[(MIB, 0x1000, WRITE)],
                &[(MIB + 0x1000, 0x1000, WRITE)],
                // Valid but in a chain with a misaligned buffer: discarded, not claimed.
                &[(MIB + 0x2000, 0x1000, WRITE), (MIB + 0x3001, 0x1000, WRITE)],
                &[(MIB + 0x3000, 0x2000, WRITE)],
            ],
        );
        assert_eq!(used, [0x1000, 0x1000, 0, 0x2000]);
        assert_eq!(parts.discard.discard_count(), 1, "one contiguous range");
        assert_eq!(parts.discard.discarded_bytes(), 0x5000);
        assert!(parts.bufs.pending_reports.is_empty() && parts.bufs.reported.is_empty());
    }

    #[test]
    fn used_ring_overlap_is_discarded_but_not_claimed() {
        let mem = mem();
        let features = Features::bit(REPORTING).with(DEVICE_INIT_REPORTED);
        let mut parts = Parts::default();
        let mut ctx = parts.ctx(&mem, features);
        ctx.used_ring = crate::memory::GuestRange::new(MIB + 100, 8).ok();
        assert_eq!(drain(&mut ctx, &mem, &[&[(MIB, 4096, WRITE)]]), [0]);
        assert_eq!(parts.discard.discarded_bytes(), 4096);
    }
}
