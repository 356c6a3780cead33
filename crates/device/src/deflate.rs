//! The deflate queue: the driver takes pages back from the balloon.
//!
//! A deflate chain is device-readable PFN arrays only (see [`pfns`](crate::pfns)); a writable
//! buffer or a broken shape rejects it whole. The device has nothing to undo (the guest may use
//! the pages at once: touching a discarded page faults it back in), so it counts the pages and,
//! if the host asked for it, hints `MADV_WILLNEED` so they are faulted in ahead of the guest.
//! The used length is always 0.

use virtio_queue::DescriptorChain;
use vm_memory::GuestMemoryBackend;

use crate::chain::collect_split;
use crate::context::ChainCtx;
use crate::discard::{will_need_ranges, DiscardBackend};
use crate::error::ErrorKind;
use crate::metrics::bump;
use crate::pfns::{distinct_valid_pfns, page_runs, read_pfns};

/// Handle one deflate chain (its used length is always 0). `Err` rejects the whole chain.
pub(crate) fn deflate_chain<M, D>(
    ctx: &mut ChainCtx<'_, M, D>,
    chain: DescriptorChain<&M>,
) -> Result<(), ErrorKind>
where
    M: GuestMemoryBackend,
    D: DiscardBackend<M::R>,
{
    bump(&ctx.metrics.deflate_requests, 1);
    let bufs = &mut *ctx.bufs;
    let readable = match collect_split(chain, ctx.limits.max_chain_descriptors, &mut bufs.buffers)?
    {
        (readable, []) => readable,
        _ => return Err(ErrorKind::WrongDirection),
    };
    let max_pfns = ctx.limits.max_pfns_per_request;
    read_pfns(ctx.mem, readable, max_pfns, &mut bufs.bytes, &mut bufs.pfns)?;
    distinct_valid_pfns(ctx.mem, ctx.metrics, bufs);
    bump(&ctx.metrics.deflated_pages, bufs.distinct.len() as u64);
    if ctx.deflate_willneed {
        page_runs(&bufs.distinct, &mut bufs.ranges);
        will_need_ranges(ctx.mem, ctx.discard, ctx.metrics, &bufs.ranges);
    }
    Ok(())
}
