//! The inflate queue, with `DEVICE_INIT_ON_INFLATE`.
//!
//! An inflate chain is device-readable PFN arrays (see [`pfns`](crate::pfns)). With
//! `DEVICE_INIT_ON_INFLATE`, it also carries exactly one device-writable bitmap buffer after the
//! PFNs: bit `i` (byte `i / 8`, bit `i % 8`) answers for the `i`-th PFN of the request.
//!
//! The distinct valid pages are merged into runs; each run is discarded with one call per region
//! piece. A bit is set only for a page wholly inside a successful zeroing discard, when
//! poisoning allows zeros, for a PFN that appears once in the request, and for a page the
//! device does not itself write afterwards (the bitmap buffer and the queue's used ring).
//!
//! Malformed chains are rejected whole: nothing discarded, nothing written, used length 0.
//! A bitmap that is present but shorter than `ceil(n / 8)` bytes is filled with zeros and the
//! used length says how short it was (pages are still discarded: ballooned memory belongs to
//! the host whatever the driver gets told). A missing bitmap, more than one writable buffer or
//! a bitmap outside guest RAM gets nothing written and used length 0. Either way, no bit is
//! ever claimed outside the buffer and a driver that checks `used_len >= ceil(n / 8)` never
//! trusts a bitmap the device did not fully write.

use prezero_balloon::pfn::{bitmap_len, bitmap_set, BALLOON_PAGE_SIZE};
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemoryBackend};

use crate::chain::{collect_split, Buffer};
use crate::context::ChainCtx;
use crate::discard::{discard_ranges, DiscardBackend};
use crate::error::ErrorKind;
use crate::memory::{self, covered, GuestRange};
use crate::metrics::bump;
use crate::pfns::{distinct_valid_pfns, page_range, page_runs, read_pfns};

/// The writable part of an inflate chain.
#[derive(Clone, Copy)]
enum BitmapBuffer {
    Missing,
    One(Buffer),
    Several,
}

/// Handle one inflate chain: discard its pages; return its used length (the bitmap bytes
/// written, 0 without `DEVICE_INIT_ON_INFLATE`). `Err` answers used length 0; the pages may
/// have been discarded already (ballooned memory is the host's whatever the driver is told).
pub(crate) fn inflate_chain<M, D>(
    ctx: &mut ChainCtx<'_, M, D>,
    chain: DescriptorChain<&M>,
) -> Result<u32, ErrorKind>
where
    M: GuestMemoryBackend,
    D: DiscardBackend<M::R>,
{
    bump(&ctx.metrics.inflate_requests, 1);
    let bufs = &mut *ctx.bufs;
    let (readable, writable) =
        collect_split(chain, ctx.limits.max_chain_descriptors, &mut bufs.buffers)?;
    let with_bitmap = ctx.features.init_on_inflate();
    if !with_bitmap && !writable.is_empty() {
        return Err(ErrorKind::WrongDirection);
    }
    let bitmap = match writable {
        [] => BitmapBuffer::Missing,
        [one] => BitmapBuffer::One(*one),
        _ => BitmapBuffer::Several,
    };
    let max_pfns = ctx.limits.max_pfns_per_request;
    read_pfns(ctx.mem, readable, max_pfns, &mut bufs.bytes, &mut bufs.pfns)?;
    distinct_valid_pfns(ctx.mem, ctx.metrics, bufs);
    bump(&ctx.metrics.inflated_pages, bufs.distinct.len() as u64);

    page_runs(&bufs.distinct, &mut bufs.ranges);
    discard_ranges(
        ctx.mem,
        ctx.discard,
        ctx.metrics,
        &bufs.ranges,
        &mut bufs.zeroed,
    );

    if !with_bitmap {
        return Ok(0);
    }
    write_bitmap(ctx, bitmap)
}

/// Build and write the inflate bitmap; returns the used length.
fn write_bitmap<M: GuestMemoryBackend, D>(
    ctx: &mut ChainCtx<'_, M, D>,
    bitmap: BitmapBuffer,
) -> Result<u32, ErrorKind> {
    let buffer = match bitmap {
        BitmapBuffer::Missing => return Err(ErrorKind::BitmapMissing),
        BitmapBuffer::One(one) => one,
        BitmapBuffer::Several => return Err(ErrorKind::BitmapMalformed),
    };
    let target =
        GuestRange::new(buffer.addr.0, u64::from(buffer.len)).map_err(|kind| match kind {
            ErrorKind::ZeroLength => ErrorKind::BitmapTooShort,
            kind => kind,
        })?;
    memory::check(ctx.mem, target).map_err(|_| ErrorKind::BitmapMalformed)?;
    let poison_forbids_zero = ctx.poison_forbids_zero();
    let used_ring = ctx.used_ring;
    let bufs = &mut *ctx.bufs;
    let needed = bitmap_len(bufs.pfns.len());
    let write_len = needed.min(buffer.len as usize);
    bufs.bytes.clear();
    bufs.bytes.resize(write_len, 0);
    let mut zeroed_pages = 0u64;
    if write_len < needed {
        // Still written (all zeros): the used length tells the driver how short it was.
        ctx.metrics.error(ErrorKind::BitmapTooShort);
    } else if !poison_forbids_zero {
        let written = GuestRange {
            start: target.start,
            end: target.start + write_len as u64,
        };
        for (i, pfn) in bufs.pfns.iter().enumerate() {
            if bufs.duplicates.binary_search(pfn).is_ok() {
                continue;
            }
            let page = page_range(*pfn);
            let rewritten = page.overlaps(&written) || used_ring.is_some_and(|u| page.overlaps(&u));
            if covered(&bufs.zeroed, page) && !rewritten && bitmap_set(&mut bufs.bytes, i) {
                zeroed_pages += 1;
            }
        }
    }
    ctx.mem
        .write_slice(&bufs.bytes, buffer.addr)
        .map_err(|_| ErrorKind::GuestMemory)?;
    bump(&ctx.metrics.inflated_pages_zeroed, zeroed_pages);
    bump(
        &ctx.metrics.zeroed_bytes,
        zeroed_pages.saturating_mul(BALLOON_PAGE_SIZE),
    );
    // write_len <= buffer.len, a u32.
    Ok(write_len as u32)
}

#[cfg(test)]
mod tests {
    use prezero_balloon::features::{Features, DEVICE_INIT_ON_INFLATE};
    use vm_memory::{Bytes, GuestAddress};

    use super::inflate_chain;
    use crate::context::test_support::{chain, mem, Parts, WRITE};

    #[test]
    fn bitmap_marks_each_distinct_discarded_page() {
        let mem = mem();
        // PFNs 0x200 (1 MiB), 0x300, 0x200 again, and one past RAM.
        let pfns: Vec<u8> = [0x200u32, 0x300, 0x200, 0x10_0000]
            .iter()
            .flat_map(|p| p.to_le_bytes())
            .collect();
        mem.write_slice(&pfns, GuestAddress(0x30_0000)).unwrap();
        let descs = [(0x30_0000, 16, 0), (0x30_1000, 1, WRITE)];
        let mut parts = Parts::default();
        let features = Features::bit(DEVICE_INIT_ON_INFLATE);
        let used = inflate_chain(&mut parts.ctx(&mem, features), chain(&mem, &descs)).unwrap();
        assert_eq!(used, 1);
        // Only the page that appears once and was discarded: bit 1.
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x30_1000)).unwrap(), 0b10);
        assert_eq!(parts.discard.discarded_bytes(), 2 * 4096);
    }
}
