//! The inflate and deflate queues.
//!
//! An inflate or deflate chain is one or more device-readable buffers of little-endian `u32`
//! PFNs (4 KiB balloon pages). With `DEVICE_INIT_ON_INFLATE`, an inflate chain also carries
//! exactly one device-writable bitmap buffer after the PFNs: bit `i` (byte `i / 8`, bit `i % 8`)
//! answers for the `i`-th PFN of the request.
//!
//! Inflate: the PFNs are validated (each page must be guest RAM), sorted, deduplicated and
//! merged into runs; each run is discarded with one call per region piece. A bit is set only
//! for a page wholly inside a successful zeroing discard, when poisoning allows zeros, for a
//! PFN that appears once in the request, and for a page the device does not itself write
//! afterwards (the bitmap buffer and the queue's used ring).
//!
//! Malformed chains are rejected whole: nothing discarded, nothing written, used length 0.
//! A bitmap that is present but shorter than `ceil(n / 8)` bytes is filled with zeros and the
//! used length says how short it was (pages are still discarded: ballooned memory belongs to
//! the host whatever the driver gets told). A missing bitmap, more than one writable buffer or
//! a bitmap outside guest RAM gets nothing written and used length 0. Either way, no bit is
//! ever claimed outside the buffer and a driver that checks `used_len >= ceil(n / 8)` never
//! trusts a bitmap the device did not fully write.

use prezero_balloon::pfn::{
    bitmap_len, bitmap_set, decode_pfns, pfn_to_addr, PfnRuns, BALLOON_PAGE_SIZE, PFN_SIZE,
};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{Bytes, GuestMemoryBackend};

use crate::chain::{collect, split_directions, Buffer};
use crate::device::{BalloonDevice, Scratch};
use crate::discard::{discard_ranges, will_need_ranges, DiscardBackend};
use crate::error::{DeviceError, ErrorKind};
use crate::memory::{self, covered, normalize, GuestRange};
use crate::metrics::{bump, Metrics};
use crate::queue::Completion;

/// The writable part of an inflate chain.
#[derive(Clone, Copy)]
enum BitmapBuffer {
    Missing,
    One(Buffer),
    Several,
}

impl<D> BalloonDevice<D> {
    /// Process the inflate queue. Returns whether the driver must be notified.
    pub fn process_inflate<Q, M>(
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
            Completion::Used(dev.inflate_chain(mem, chain, used_ring, scratch))
        })
    }

    /// Process the deflate queue. Returns whether the driver must be notified.
    pub fn process_deflate<Q, M>(
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
        self.drain(index, queue, mem, |dev, mem, chain, _, scratch| {
            dev.deflate_chain(mem, chain, scratch);
            Completion::Used(0)
        })
    }

    fn inflate_chain<M>(
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
        bump(&self.metrics.inflate_requests, 1);
        let limits = self.options.limits;
        if let Err(kind) = collect(chain, limits.max_chain_descriptors, &mut s.buffers) {
            self.metrics.error(kind);
            return 0;
        }
        let (readable, writable) = match split_directions(&s.buffers) {
            Ok(parts) => parts,
            Err(kind) => {
                self.metrics.error(kind);
                return 0;
            }
        };
        let with_bitmap = self.negotiated.init_on_inflate();
        if !with_bitmap && !writable.is_empty() {
            self.metrics.error(ErrorKind::WrongDirection);
            return 0;
        }
        let bitmap = match writable {
            [] => BitmapBuffer::Missing,
            [one] => BitmapBuffer::One(*one),
            _ => BitmapBuffer::Several,
        };
        if let Err(kind) = read_pfns(
            mem,
            readable,
            limits.max_pfns_per_request,
            &mut s.bytes,
            &mut s.pfns,
        ) {
            self.metrics.error(kind);
            return 0;
        }
        valid_distinct(mem, &self.metrics, s);
        bump(&self.metrics.inflated_pages, s.sorted.len() as u64);

        s.ranges.clear();
        s.ranges
            .extend(PfnRuns::new(&s.sorted).map(|run| GuestRange {
                start: run.addr(),
                end: run.addr() + run.len_bytes(),
            }));
        s.zeroed.clear();
        discard_ranges(
            mem,
            &mut self.discard,
            &self.metrics,
            &s.ranges,
            &mut s.zeroed,
        );
        normalize(&mut s.zeroed);

        if !with_bitmap {
            return 0;
        }
        self.write_bitmap(mem, bitmap, used_ring, s)
    }

    /// Build and write the inflate bitmap; returns the used length.
    fn write_bitmap<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        bitmap: BitmapBuffer,
        used_ring: Option<GuestRange>,
        s: &mut Scratch,
    ) -> u32 {
        let buffer = match bitmap {
            BitmapBuffer::Missing => {
                self.metrics.error(ErrorKind::BitmapMissing);
                return 0;
            }
            BitmapBuffer::One(one) => one,
            BitmapBuffer::Several => {
                self.metrics.error(ErrorKind::BitmapMalformed);
                return 0;
            }
        };
        let needed = bitmap_len(s.pfns.len());
        let target = match GuestRange::new(buffer.addr.0, u64::from(buffer.len)) {
            Ok(target) => target,
            Err(ErrorKind::ZeroLength) => {
                self.metrics.error(ErrorKind::BitmapTooShort);
                return 0;
            }
            Err(kind) => {
                self.metrics.error(kind);
                return 0;
            }
        };
        if memory::check(mem, target).is_err() {
            self.metrics.error(ErrorKind::BitmapMalformed);
            return 0;
        }
        let write_len = needed.min(buffer.len as usize);
        s.bytes.clear();
        s.bytes.resize(write_len, 0);
        let mut zeroed_pages = 0u64;
        if write_len < needed {
            self.metrics.error(ErrorKind::BitmapTooShort);
        } else if !self.poison_forbids_zero() {
            let written = GuestRange {
                start: target.start,
                end: target.start + write_len as u64,
            };
            for (i, pfn) in s.pfns.iter().enumerate() {
                if s.duplicates.binary_search(pfn).is_ok() {
                    continue;
                }
                let start = pfn_to_addr(*pfn);
                let page = GuestRange {
                    start,
                    end: start + BALLOON_PAGE_SIZE,
                };
                let rewritten =
                    page.overlaps(&written) || used_ring.is_some_and(|u| page.overlaps(&u));
                if covered(&s.zeroed, page) && !rewritten && bitmap_set(&mut s.bytes, i) {
                    zeroed_pages += 1;
                }
            }
        }
        if mem.write_slice(&s.bytes, buffer.addr).is_err() {
            self.metrics.error(ErrorKind::GuestMemory);
            return 0;
        }
        bump(&self.metrics.inflated_pages_zeroed, zeroed_pages);
        bump(
            &self.metrics.zeroed_bytes,
            zeroed_pages.saturating_mul(BALLOON_PAGE_SIZE),
        );
        // write_len <= buffer.len, a u32.
        write_len as u32
    }

    fn deflate_chain<M>(&mut self, mem: &M, chain: DescriptorChain<&M>, s: &mut Scratch)
    where
        M: GuestMemoryBackend,
        D: DiscardBackend<M::R>,
    {
        bump(&self.metrics.deflate_requests, 1);
        let limits = self.options.limits;
        if let Err(kind) = collect(chain, limits.max_chain_descriptors, &mut s.buffers) {
            self.metrics.error(kind);
            return;
        }
        let readable = match split_directions(&s.buffers) {
            Ok((readable, [])) => readable,
            Ok(_) => {
                self.metrics.error(ErrorKind::WrongDirection);
                return;
            }
            Err(kind) => {
                self.metrics.error(kind);
                return;
            }
        };
        if let Err(kind) = read_pfns(
            mem,
            readable,
            limits.max_pfns_per_request,
            &mut s.bytes,
            &mut s.pfns,
        ) {
            self.metrics.error(kind);
            return;
        }
        valid_distinct(mem, &self.metrics, s);
        bump(&self.metrics.deflated_pages, s.sorted.len() as u64);
        if self.options.deflate_willneed {
            s.ranges.clear();
            s.ranges
                .extend(PfnRuns::new(&s.sorted).map(|run| GuestRange {
                    start: run.addr(),
                    end: run.addr() + run.len_bytes(),
                }));
            will_need_ranges(mem, &mut self.discard, &self.metrics, &s.ranges);
        }
    }
}

/// Read the PFN arrays of `readable` into `pfns`, in request order.
fn read_pfns<M: GuestMemoryBackend>(
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
    bytes.clear();
    bytes.resize(total, 0);
    let mut at = 0;
    for b in readable {
        let len = b.len as usize;
        mem.read_slice(&mut bytes[at..at + len], b.addr)
            .map_err(|_| ErrorKind::GuestMemory)?;
        at += len;
    }
    pfns.clear();
    pfns.resize(total / PFN_SIZE, 0);
    decode_pfns(bytes, pfns);
    Ok(())
}

/// Fill `s.sorted` with the distinct PFNs of `s.pfns` whose page is guest RAM, and
/// `s.duplicates` with the PFNs that appear more than once (both sorted).
fn valid_distinct<M: GuestMemoryBackend>(mem: &M, metrics: &Metrics, s: &mut Scratch) {
    s.sorted.clear();
    s.sorted.extend_from_slice(&s.pfns);
    s.sorted.sort_unstable();
    s.duplicates.clear();
    let mut distinct = 0;
    for i in 0..s.sorted.len() {
        let pfn = s.sorted[i];
        if distinct > 0 && s.sorted[distinct - 1] == pfn {
            if s.duplicates.last() != Some(&pfn) {
                s.duplicates.push(pfn);
                metrics.error(ErrorKind::DuplicatePfn);
            }
            continue;
        }
        s.sorted[distinct] = pfn;
        distinct += 1;
    }
    s.sorted.truncate(distinct);
    s.sorted.retain(|pfn| {
        let start = pfn_to_addr(*pfn);
        let page = GuestRange {
            start,
            end: start + BALLOON_PAGE_SIZE,
        };
        let ok = memory::check(mem, page).is_ok();
        if !ok {
            metrics.error(ErrorKind::PfnOutOfRange);
        }
        ok
    });
}
