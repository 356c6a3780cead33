//! The one queue loop: pop each available chain, hand it to the handler of the queue's role,
//! put it in the used ring, and say whether the driver needs a notification.
//!
//! Reporting chains are answered at the end of each drain (everything popped before the
//! loop looks at the avail ring again, at most a ring's worth): the drain's ranges are
//! discarded together, one call per contiguous range whatever the number of chains (see
//! [`reporting`](crate::reporting)).
//!
//! Notifications from the driver are suppressed while the loop drains the queue and re-enabled
//! before it stops; if chains arrived in between, it drains again, so no kick is lost. Guest
//! mistakes inside a chain are the handlers' business (counted, answered conservatively); this
//! loop only fails when the rings themselves cannot be used.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use prezero_balloon::queues::QueueRole;
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::context::{ChainCtx, Completion};
use crate::deflate::deflate_chain;
use crate::discard::DiscardBackend;
use crate::error::{DeviceError, ErrorKind};
use crate::inflate::inflate_chain;
use crate::memory::GuestRange;
use crate::metrics::{bump, Metrics};
use crate::reporting::{drain_full, finish_drain, queue_report};
use crate::stats::{stats_chain, StatsState};

/// A queue's handler: one chain in, what to do with it out.
type Handler<'a, M, D> =
    fn(&mut ChainCtx<'a, M, D>, &mut StatsState, DescriptorChain<&'a M>) -> Completion;

/// Process every available chain of `queue` (index `index`, role `role` under the negotiated
/// features). Returns whether the driver must be notified.
///
/// `ctx.used_ring` should be [`used_ring_range`] of `queue`. `Err` when the index has no role
/// or the rings cannot be accessed.
pub(crate) fn process<'a, Q, M, D>(
    role: Option<QueueRole>,
    index: usize,
    queue: &mut Q,
    ctx: &mut ChainCtx<'a, M, D>,
    stats: &mut StatsState,
) -> Result<bool, DeviceError>
where
    Q: QueueT,
    M: GuestMemoryBackend,
    D: DiscardBackend<M::R>,
{
    let handle: Handler<'a, M, D> = match role {
        Some(QueueRole::Inflate) => |ctx, _, chain| {
            let used = inflate_chain(ctx, chain);
            answer(ctx.metrics, used)
        },
        Some(QueueRole::Deflate) => |ctx, _, chain| {
            let used = deflate_chain(ctx, chain).map(|()| 0);
            answer(ctx.metrics, used)
        },
        Some(QueueRole::Reporting) => |ctx, _, chain| {
            queue_report(ctx, chain);
            Completion::EndOfDrain
        },
        Some(QueueRole::Stats) => |ctx, stats, chain| stats_chain(ctx, stats, chain),
        Some(QueueRole::FreePageHint) | None => {
            // Transports set up every slot (Linux names five whatever it negotiates) and
            // vhost-user-backend processes a queue once when its kick fd arrives: only chains
            // the driver really put on a slot without a role are its mistake.
            let mem = ctx.mem;
            let pending = queue.ready()
                && queue
                    .avail_idx(mem, Ordering::Acquire)
                    .map_or(true, |avail| avail != Wrapping(queue.next_avail()));
            if !pending {
                return Ok(false);
            }
            ctx.metrics.error(ErrorKind::UnknownQueue);
            return Err(DeviceError::NoSuchQueue(index));
        }
    };
    if !queue.ready() {
        return Ok(false);
    }
    let mem = ctx.mem;
    let metrics = ctx.metrics;
    let mut completed = false;
    loop {
        if queue.disable_notification(mem).is_err() {
            return Err(queue_error(metrics, index, ErrorKind::UsedRing));
        }
        check_avail_idx(metrics, index, queue, mem)?;
        let mut popped = 0usize;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            popped += 1;
            let head = chain.head_index();
            if head_is_indirect(queue, mem, head) {
                bump(&metrics.indirect_chains, 1);
            }
            let used = match handle(ctx, stats, chain) {
                Completion::Used(len) => Some((head, len)),
                Completion::Hold => None,
                Completion::HoldAndRelease(previous) => Some((previous, 0)),
                Completion::EndOfDrain => {
                    if drain_full(ctx, queue.size()) {
                        finish_drain(ctx, |id, len| {
                            completed |= add_used(metrics, queue, mem, id, len)
                        });
                    }
                    None
                }
            };
            if let Some((id, len)) = used {
                completed |= add_used(metrics, queue, mem, id, len);
            }
        }
        finish_drain(ctx, |id, len| {
            completed |= add_used(metrics, queue, mem, id, len)
        });
        match queue.enable_notification(mem) {
            Ok(true) if popped > 0 => continue,
            // More is announced but nothing could be popped: the avail ring is unreadable.
            Ok(true) => return Err(queue_error(metrics, index, ErrorKind::AvailRing)),
            Ok(false) => break,
            Err(_) => return Err(queue_error(metrics, index, ErrorKind::UsedRing)),
        }
    }
    Ok(completed && queue.needs_notification(mem).unwrap_or(true))
}

/// Put chain `id` in the used ring with `len`; whether it went in. An out-of-range head index
/// cannot be completed, but the ring itself is still fine: counted, not fatal.
fn add_used<Q: QueueT, M: GuestMemoryBackend>(
    metrics: &Metrics,
    queue: &mut Q,
    mem: &M,
    id: u16,
    len: u32,
) -> bool {
    let ok = queue.add_used(mem, id, len).is_ok();
    if !ok {
        metrics.error(ErrorKind::UsedRing);
    }
    ok
}

/// The completion of a handler's answer: a rejected chain is counted and used with length 0.
fn answer(metrics: &Metrics, used: Result<u32, ErrorKind>) -> Completion {
    Completion::Used(used.unwrap_or_else(|kind| {
        metrics.error(kind);
        0
    }))
}

/// Complete a chain the device held (the stats buffer) with used length 0, outside the loop.
/// Returns whether the driver must be notified.
pub(crate) fn release_held<Q, M>(
    metrics: &Metrics,
    index: usize,
    queue: &mut Q,
    mem: &M,
    head: u16,
) -> Result<bool, DeviceError>
where
    Q: QueueT,
    M: GuestMemoryBackend,
{
    if queue.add_used(mem, head, 0).is_err() {
        return Err(queue_error(metrics, index, ErrorKind::UsedRing));
    }
    Ok(queue.needs_notification(mem).unwrap_or(true))
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

/// Refuse an available index more than a queue size ahead: the driver is broken and the
/// queue cannot make sense of its ring until it is reset.
fn check_avail_idx<Q: QueueT, M: GuestMemoryBackend>(
    metrics: &Metrics,
    index: usize,
    queue: &Q,
    mem: &M,
) -> Result<(), DeviceError> {
    let avail = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(|_| queue_error(metrics, index, ErrorKind::AvailRing))?;
    if (avail - Wrapping(queue.next_avail())).0 > queue.size() {
        return Err(queue_error(metrics, index, ErrorKind::AvailRing));
    }
    Ok(())
}

/// Count a ring failure and name it for the caller.
fn queue_error(metrics: &Metrics, index: usize, kind: ErrorKind) -> DeviceError {
    metrics.error(kind);
    DeviceError::Queue { index, kind }
}
