//! The deflate queue: the driver takes pages back from the balloon.
//!
//! A deflate chain is device-readable PFN arrays only (see [`pfns`](crate::pfns)); a writable
//! buffer or a broken shape rejects it whole. The device has nothing to undo (the guest may use
//! the pages at once: touching a discarded page faults it back in), so it counts the pages and,
//! if the host asked for it, hints `MADV_WILLNEED` so they are faulted in ahead of the guest.
//! The used length is always 0.

use virtio_queue::DescriptorChain;
use vm_memory::GuestMemoryBackend;

use crate::chain::{collect, split_directions};
use crate::context::ChainCtx;
use crate::discard::{will_need_ranges, DiscardBackend};
use crate::error::ErrorKind;
use crate::metrics::bump;
use crate::pfns::{distinct_valid_pfns, page_runs, read_pfns};

/// Handle one deflate chain.
pub(crate) fn deflate_chain<M, D>(ctx: &mut ChainCtx<'_, M, D>, chain: DescriptorChain<&M>)
where
    M: GuestMemoryBackend,
    D: DiscardBackend<M::R>,
{
    let metrics = ctx.metrics;
    let bufs = &mut *ctx.bufs;
    bump(&metrics.deflate_requests, 1);
    if let Err(kind) = collect(chain, ctx.limits.max_chain_descriptors, &mut bufs.buffers) {
        metrics.error(kind);
        return;
    }
    let readable = match split_directions(&bufs.buffers) {
        Ok((readable, [])) => readable,
        Ok(_) => {
            metrics.error(ErrorKind::WrongDirection);
            return;
        }
        Err(kind) => {
            metrics.error(kind);
            return;
        }
    };
    let max_pfns = ctx.limits.max_pfns_per_request;
    if let Err(kind) = read_pfns(ctx.mem, readable, max_pfns, &mut bufs.bytes, &mut bufs.pfns) {
        metrics.error(kind);
        return;
    }
    distinct_valid_pfns(ctx.mem, metrics, bufs);
    bump(&metrics.deflated_pages, bufs.distinct.len() as u64);
    if ctx.deflate_willneed {
        page_runs(&bufs.distinct, &mut bufs.ranges);
        will_need_ranges(ctx.mem, ctx.discard, metrics, &bufs.ranges);
    }
}
