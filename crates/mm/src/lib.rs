//! # prezero-mm: a buddy page-frame allocator that knows which free memory is zero
//!
//! A `no_std` guest memory manager for a Rust kernel or unikernel. It hands out naturally
//! aligned blocks of 4 KiB frames, reports free memory to the host (virtio-balloon free page
//! reporting, mirroring Linux `mm/page_reporting.c`), and remembers per free block what the host
//! said: `Reported` (its backing was discarded) and `Zeroed` (it reads as zero). A later
//! allocation with [`AllocFlags::ZERO`] skips zeroing a known-zero block, which is the whole
//! point: a page the host already zeroed is not zeroed twice.
//!
//! - [`Zone`]: frames over a PFN span with holes, per-order free lists, split and merge
//!   (`zone.rs`); metadata lives outside the pages in a 12-byte [`FrameMeta`] per frame.
//! - Free page reporting: [`Zone::report_pass`], [`ReportSink`]; the engine after Linux
//!   `mm/page_reporting.c` (`reporting.rs`) and the zone's isolate / put back side
//!   (`isolation.rs`).
//! - The trust gate that decides whether "the device zeroed it" is believed:
//!   [`Config::trusts_device_zeroing`] (`config.rs`).
//! - A huge page pool, the hugetlbfs analogue: [`Zone::alloc_huge`] (`hugepool.rs`).
//! - Counters like `/proc/vmstat`: [`VmStat`] (`vmstat.rs`).
//! - For N CPUs: [`LockedZone`], the zone behind a lock with a per-CPU page cache per CPU
//!   (`locked.rs`, the lock protocol; `pcp.rs`, the caches' rules: known-zero rides through
//!   them, and reporting drains them so no free memory hides there).
//!
//! ```
//! use prezero_mm::*;
//!
//! struct Ram(Vec<u8>);
//! impl PhysMem for Ram {
//!     fn fill(&mut self, pfn: Pfn, frames: u64, byte: u8) {
//!         let start = pfn.addr() as usize;
//!         self.0[start..start + (frames * FRAME_SIZE) as usize].fill(byte);
//!     }
//! }
//! // A device that discards and zeroes everything it is given.
//! struct ZeroingDevice;
//! impl ReportSink for ZeroingDevice {
//!     fn report(&mut self, _: &[ReportBlock], outcomes: &mut [ReportOutcome]) {
//!         outcomes.fill(ReportOutcome::ReportedZeroed);
//!     }
//! }
//!
//! let frames = 4096; // 16 MiB
//! let mut ram = Ram(vec![0xaa; frames * FRAME_SIZE as usize]);
//! let mut zone = Zone::new(vec![FrameMeta::EMPTY; frames], Pfn(0), Config::default());
//! zone.add_memory(Pfn(0), frames as u64, false).unwrap();
//! zone.set_device_init(DeviceInit { reported: true, on_inflate: false });
//! zone.report_flush(&mut ZeroingDevice);
//!
//! let block = zone.alloc(9, AllocFlags::ZERO, &mut ram).unwrap();
//! assert!(block.known_zero); // the 2 MiB block was not zeroed again
//! assert_eq!(zone.stat().pages_zero_skipped, 512);
//! ```
#![no_std]
#![deny(missing_docs)]

mod config;
mod error;
mod frame;
mod free_area;
mod hugepool;
mod inspect;
mod isolation;
mod locked;
mod pcp;
mod reporting;
mod vmstat;
mod zone;

pub use config::{Config, DeviceInit, Placement};
pub use error::{AllocError, FreeError, MemoryError};
pub use frame::{FrameMeta, Pfn, PhysMem, FRAME_SHIFT, FRAME_SIZE};
pub use inspect::{BlockInfo, BlockState, Corruption};
pub use locked::LockedZone;
pub use pcp::{CacheConfig, CacheStat, CpuCache, SpinLock, PCP_CAPACITY, PCP_ORDERS};
pub use reporting::{
    ReportBatch, ReportBlock, ReportOutcome, ReportPass, ReportSink, REPORTING_BUDGET_DIVISOR,
    REPORTING_CAPACITY, REPORTING_CAPACITY_MAX,
};
pub use vmstat::VmStat;
pub use zone::{AllocFlags, Allocation, FreeHint, Zone, ZoneCounts};

/// Largest block order: blocks of up to 2^10 frames (4 MiB), as Linux's `MAX_ORDER` 10.
pub const MAX_ORDER: u8 = 10;
/// Number of orders, 0 to [`MAX_ORDER`].
pub const NR_ORDERS: usize = MAX_ORDER as usize + 1;
/// Pageblock order (2 MiB): the default reporting order.
pub const PAGEBLOCK_ORDER: u8 = 9;
/// Order of the huge pages of the pool (2 MiB).
pub const HUGE_PAGE_ORDER: u8 = 9;
