//! Event counters, in the spirit of `/proc/vmstat`. Page counts are in 4 KiB frames.

use crate::frame::FRAME_SIZE;

/// Cumulative counters of a zone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmStat {
    /// Blocks allocated (buddy and huge pages).
    pub alloc_blocks: u64,
    /// Blocks freed (buddy and huge pages).
    pub free_blocks: u64,
    /// Allocations made with [`AllocFlags::ZERO`](crate::AllocFlags::ZERO).
    pub zero_allocs: u64,
    /// `ZERO` allocations served by a known-zero block.
    pub zero_alloc_hits: u64,
    /// `ZERO` order-0 allocations.
    pub zero_allocs_order0: u64,
    /// `ZERO` order-0 allocations served by a known-zero block.
    pub zero_alloc_hits_order0: u64,
    /// Pages the allocator zeroed for `ZERO` allocations.
    pub pages_zeroed: u64,
    /// Pages of `ZERO` allocations whose zeroing was skipped because they were known-zero.
    pub pages_zero_skipped: u64,
    /// Pages zeroed on free (`init_on_free`).
    pub pages_init_on_free: u64,
    /// Pages filled with the poison value on free.
    pub pages_poisoned: u64,
    /// Reporting requests (batches handed to the device).
    pub report_requests: u64,
    /// Pages the device accepted as reported.
    pub pages_reported: u64,
    /// Reported pages the device confirmed zeroed, and believed.
    pub pages_reported_zeroed: u64,
    /// Pages the device claimed zeroed but the trust gate refused to believe.
    pub pages_zeroed_untrusted: u64,
    /// Reported pages the device failed: back on the free lists unreported.
    pub pages_report_failed: u64,
    /// Pages freed back from a balloon deflate.
    pub pages_deflated: u64,
    /// Deflated pages freed as known-zero.
    pub pages_deflated_zeroed: u64,
}

impl VmStat {
    /// All counters at zero.
    pub const ZERO: VmStat = VmStat {
        alloc_blocks: 0,
        free_blocks: 0,
        zero_allocs: 0,
        zero_alloc_hits: 0,
        zero_allocs_order0: 0,
        zero_alloc_hits_order0: 0,
        pages_zeroed: 0,
        pages_zero_skipped: 0,
        pages_init_on_free: 0,
        pages_poisoned: 0,
        report_requests: 0,
        pages_reported: 0,
        pages_reported_zeroed: 0,
        pages_zeroed_untrusted: 0,
        pages_report_failed: 0,
        pages_deflated: 0,
        pages_deflated_zeroed: 0,
    };

    /// Adds `o`'s counters to these (the zone's and each CPU cache's share).
    pub(crate) fn add(&mut self, o: &VmStat) {
        self.alloc_blocks += o.alloc_blocks;
        self.free_blocks += o.free_blocks;
        self.zero_allocs += o.zero_allocs;
        self.zero_alloc_hits += o.zero_alloc_hits;
        self.zero_allocs_order0 += o.zero_allocs_order0;
        self.zero_alloc_hits_order0 += o.zero_alloc_hits_order0;
        self.pages_zeroed += o.pages_zeroed;
        self.pages_zero_skipped += o.pages_zero_skipped;
        self.pages_init_on_free += o.pages_init_on_free;
        self.pages_poisoned += o.pages_poisoned;
        self.report_requests += o.report_requests;
        self.pages_reported += o.pages_reported;
        self.pages_reported_zeroed += o.pages_reported_zeroed;
        self.pages_zeroed_untrusted += o.pages_zeroed_untrusted;
        self.pages_report_failed += o.pages_report_failed;
        self.pages_deflated += o.pages_deflated;
        self.pages_deflated_zeroed += o.pages_deflated_zeroed;
    }

    /// Bytes the allocator zeroed for `ZERO` allocations.
    pub fn bytes_zeroed(&self) -> u64 {
        self.pages_zeroed * FRAME_SIZE
    }

    /// Bytes of `ZERO` allocations whose zeroing was skipped.
    pub fn bytes_zero_skipped(&self) -> u64 {
        self.pages_zero_skipped * FRAME_SIZE
    }

    /// Share of `ZERO` order-0 allocations served from known-zero blocks (0 when there were none).
    pub fn zero_hit_rate_order0(&self) -> f64 {
        if self.zero_allocs_order0 == 0 {
            0.0
        } else {
            self.zero_alloc_hits_order0 as f64 / self.zero_allocs_order0 as f64
        }
    }
}
