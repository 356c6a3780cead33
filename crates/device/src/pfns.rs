//! The PFN arrays of inflate and deflate requests.
//!
//! An inflate or deflate chain is one or more device-readable buffers of little-endian `u32`
//! PFNs (4 KiB balloon pages). A request is read whole or not at all (a zero-length buffer, a
//! length that is not a whole number of PFNs, more PFNs than the limit, unreadable memory).
//! Then each page is checked against guest RAM, repeated PFNs are set aside, and the distinct
//! valid pages are merged into runs, so that each run costs one discard per region piece.

use prezero_balloon::pfn::{decode_pfns, pfn_to_addr, PfnRuns, BALLOON_PAGE_SIZE, PFN_SIZE};
use vm_memory::GuestMemoryBackend;

use crate::chain::{read_buffers, Buffer};
use crate::context::RequestBuffers;
use crate::error::ErrorKind;
use crate::memory::{self, GuestRange};
use crate::metrics::Metrics;

/// Read the PFN arrays of `readable` into `pfns`, in request order (`bytes` holds the raw
/// array meanwhile).
pub(crate) fn read_pfns<M: GuestMemoryBackend>(
    mem: &M,
    readable: &[Buffer],
    max_pfns: usize,
    bytes: &mut Vec<u8>,
    pfns: &mut Vec<u32>,
) -> Result<(), ErrorKind> {
    if readable.is_empty() {
        return Err(ErrorKind::ZeroLength);
    }
    let mut total = 0usize;
    for b in readable {
        if b.len == 0 {
            return Err(ErrorKind::ZeroLength);
        }
        if b.len as usize % PFN_SIZE != 0 {
            return Err(ErrorKind::BadLength);
        }
        total = total
            .checked_add(b.len as usize)
            .filter(|t| *t / PFN_SIZE <= max_pfns)
            .ok_or(ErrorKind::TooManyPfns)?;
    }
    read_buffers(mem, readable, bytes)?;
    pfns.clear();
    pfns.resize(total / PFN_SIZE, 0);
    decode_pfns(bytes, pfns);
    Ok(())
}

/// Fill `bufs.distinct` with the distinct PFNs of `bufs.pfns` whose page is guest RAM, and
/// `bufs.duplicates` with the PFNs that appear more than once (both sorted). Each repeated PFN
/// and each page outside RAM is counted once.
pub(crate) fn distinct_valid_pfns<M: GuestMemoryBackend>(
    mem: &M,
    metrics: &Metrics,
    bufs: &mut RequestBuffers,
) {
    let distinct = &mut bufs.distinct;
    distinct.clear();
    distinct.extend_from_slice(&bufs.pfns);
    distinct.sort_unstable();
    bufs.duplicates.clear();
    let mut kept = 0;
    for i in 0..distinct.len() {
        let pfn = distinct[i];
        if kept > 0 && distinct[kept - 1] == pfn {
            if bufs.duplicates.last() != Some(&pfn) {
                bufs.duplicates.push(pfn);
                metrics.error(ErrorKind::DuplicatePfn);
            }
            continue;
        }
        distinct[kept] = pfn;
        kept += 1;
    }
    distinct.truncate(kept);
    distinct.retain(|pfn| {
        let ok = memory::check(mem, page_range(*pfn)).is_ok();
        if !ok {
            metrics.error(ErrorKind::PfnOutOfRange);
        }
        ok
    });
}

/// The guest range of the balloon page `pfn`.
pub(crate) fn page_range(pfn: u32) -> GuestRange {
    let start = pfn_to_addr(pfn);
    GuestRange {
        start,
        end: start + BALLOON_PAGE_SIZE,
    }
}

/// Replace `ranges` with the runs of contiguous pages of `sorted` (sorted, distinct PFNs).
pub(crate) fn page_runs(sorted: &[u32], ranges: &mut Vec<GuestRange>) {
    ranges.clear();
    ranges.extend(PfnRuns::new(sorted).map(|run| GuestRange {
        start: run.addr(),
        end: run.addr() + run.len_bytes(),
    }));
}
