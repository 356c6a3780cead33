//! Free page reporting, after Linux `mm/page_reporting.c`: the engine.
//!
//! Candidates are free, unreported blocks of at least the reporting order (and free huge pages
//! of the pool). A cycle works like Linux's `page_reporting_cycle`:
//! - **fill** ([`fill`], the isolating loop of Linux `page_reporting_cycle`): isolate up to
//!   the device's batch capacity ([`ReportSink::capacity`]) candidates, taking them off the free
//!   lists so nobody allocates a block while the device discards it;
//! - **report**: hand the batch to the device ([`ReportSink`], or the driver's own asynchronous
//!   path through `Zone::report_take` / `Zone::report_complete`);
//! - **drain** ([`drain`], Linux `page_reporting_drain`): put every block back `Reported`, plus
//!   `Zeroed` for each block the device confirmed and the trust gate believes. A block the
//!   device failed goes back unreported.
//!
//! Pacing is Linux's ([`Pacing`]): free activity requests a pass, which runs a delay later; a
//! pass reports a budget of `ceil(free blocks / (capacity * 16))` requests per order
//! ([`budget`]), so a large backlog drains over several passes instead of monopolising the CPU.
//! `Zone::report_flush` ignores both, for tests, benchmarks and shutdown.
//!
//! The engine knows the allocator only through [`FreeBlocks`], the narrow isolate / put back
//! interface a zone implements (`isolation.rs`); it never touches free lists or frame
//! metadata itself.

use crate::frame::{FrameFlags, Pfn, FRAME_SIZE};

/// Blocks per reporting request by default (Linux `PAGE_REPORTING_CAPACITY`, the stock
/// drivers' batch).
pub const REPORTING_CAPACITY: usize = 32;
/// The largest batch capacity a device may ask for ([`ReportSink::capacity`] is clamped to
/// it). The upstream driver asks for its reporting ring's size (`page_reporting: allow driver
/// to set batch capacity`); balloon rings are 128 (QEMU) to 256 entries. The batch is kept on
/// the stack without allocation (16 bytes per block), hence a bound.
pub const REPORTING_CAPACITY_MAX: usize = 256;
/// A pass reports at most 1/16 of an order's free blocks (Linux's budget).
pub const REPORTING_BUDGET_DIVISOR: u32 = 16;

/// A block handed to the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportBlock {
    /// First frame of the block.
    pub pfn: Pfn,
    /// The block holds `1 << order` frames.
    pub order: u8,
}

impl ReportBlock {
    /// Frames in the block.
    pub fn frames(&self) -> u64 {
        1 << self.order
    }

    /// Guest-physical address of the block.
    pub fn addr(&self) -> u64 {
        self.pfn.addr()
    }

    /// Length of the block in bytes.
    pub fn len(&self) -> u64 {
        self.frames() * FRAME_SIZE
    }

    /// Always false: a block holds at least one frame.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// The device's answer for one reported block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportOutcome {
    /// The device did not process the block (or the request failed): it goes back unreported.
    Failed,
    /// The device discarded the block's backing.
    Reported,
    /// The device discarded the block and says every byte now reads as zero.
    ReportedZeroed,
}

/// Isolated blocks on their way to the device. It is consumed by `Zone::report_complete`, so
/// a batch cannot be completed twice.
#[derive(Debug)]
#[must_use = "isolated blocks stay unallocatable until the batch is completed"]
pub struct ReportBatch {
    blocks: [ReportBlock; REPORTING_CAPACITY_MAX],
    len: usize,
}

impl ReportBatch {
    fn new() -> Self {
        ReportBatch {
            blocks: [ReportBlock {
                pfn: Pfn(0),
                order: 0,
            }; REPORTING_CAPACITY_MAX],
            len: 0,
        }
    }

    /// The blocks, in the order the device should see them.
    pub fn blocks(&self) -> &[ReportBlock] {
        &self.blocks[..self.len]
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there was nothing to report.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The device side of reporting, for drivers that wait for the device: a test double, the Rust
/// guest's virtio-balloon driver, a kernel driver.
pub trait ReportSink {
    /// Reports `blocks` and writes the device's answer for each into `outcomes` (same length,
    /// initialised to [`ReportOutcome::Failed`]).
    fn report(&mut self, blocks: &[ReportBlock], outcomes: &mut [ReportOutcome]);

    /// Most blocks per [`ReportSink::report`] call (Linux `page_reporting_dev_info.capacity`):
    /// the upstream virtio-balloon driver gives its reporting ring's size, one chain per block.
    /// Clamped to `1..=`[`REPORTING_CAPACITY_MAX`]; [`REPORTING_CAPACITY`] by default. It also
    /// scales the pass budget, as in Linux.
    fn capacity(&self) -> usize {
        REPORTING_CAPACITY
    }
}

/// The sink's batch capacity, within the engine's bounds.
pub(crate) fn capacity(sink: &impl ReportSink) -> usize {
    sink.capacity().clamp(1, REPORTING_CAPACITY_MAX)
}

/// What a pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportPass {
    /// Requests handed to the device.
    pub requests: u64,
    /// Frames the device accepted.
    pub pages_reported: u64,
    /// Frames the device confirmed zeroed, and believed.
    pub pages_zeroed: u64,
    /// Frames the device failed.
    pub pages_failed: u64,
    /// Candidates were left for a later pass (budget spent, or the device failed).
    pub more: bool,
}

/// Pacing state (Linux: `PAGE_REPORTING_IDLE` / `PAGE_REPORTING_REQUESTED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pacing {
    Idle,
    /// Free activity asked for a pass; `since` is when the delay started, once seen by
    /// [`Pacing::due`].
    Requested {
        since: Option<u64>,
    },
}

impl Pacing {
    /// Free activity at or above the reporting order asks for a pass.
    pub(crate) fn request(&mut self) {
        if *self == Pacing::Idle {
            *self = Pacing::Requested { since: None };
        }
    }

    /// Whether a pass is due at `now`, `delay` after the first call that saw the request.
    pub(crate) fn due(&mut self, now: u64, delay: u64) -> bool {
        match *self {
            Pacing::Idle => false,
            Pacing::Requested { since: None } => {
                *self = Pacing::Requested { since: Some(now) };
                delay == 0
            }
            Pacing::Requested { since: Some(t) } => now.saturating_sub(t) >= delay,
        }
    }
}

/// What the engine needs from the allocator: where candidates are, how to isolate one and how
/// to put it back (Linux: the buddy allocator's `__isolate_free_page` and
/// `__putback_isolated_page`). Implemented by the zone in `isolation.rs`.
pub(crate) trait FreeBlocks {
    /// Number of candidate sources: the free areas of the reporting order and above, smallest
    /// order first, then the huge page pool if its pages are large enough.
    fn sources(&self) -> usize;

    /// Free blocks in `source` (reported or not): what the budget is computed from.
    fn source_free(&self, source: usize) -> u32;

    /// Takes the first unreported free block of `source` off its list, if there is one.
    /// Unreported blocks form the head of every free list, so this is O(1).
    fn isolate_unreported(&mut self, source: usize) -> Option<ReportBlock>;

    /// Puts an isolated block back with `content` (`Reported` / `Zeroed`) added to the
    /// `Zeroed` it was isolated with. Returns false, changing nothing, if `block` is not an
    /// isolated block of this allocator (a forged or foreign batch).
    fn putback(&mut self, block: ReportBlock, content: FrameFlags) -> bool;

    /// Frames in unreported candidate blocks.
    fn unreported_pages(&self) -> u64;
}

/// The requests a pass may send: `ceil(free blocks / (capacity * 16))` per source, at least 1.
pub(crate) fn budget(blocks: &impl FreeBlocks, capacity: usize) -> u64 {
    let divisor = capacity as u64 * REPORTING_BUDGET_DIVISOR as u64;
    let total: u64 = (0..blocks.sources())
        .map(|s| u64::from(blocks.source_free(s)).div_ceil(divisor))
        .sum();
    total.max(1)
}

/// Isolates up to `max` (at most [`REPORTING_CAPACITY_MAX`]) candidates, smallest order first.
pub(crate) fn fill(blocks: &mut impl FreeBlocks, max: usize) -> ReportBatch {
    let mut batch = ReportBatch::new();
    let max = max.min(REPORTING_CAPACITY_MAX);
    for source in 0..blocks.sources() {
        while batch.len < max {
            let Some(block) = blocks.isolate_unreported(source) else {
                break;
            };
            batch.blocks[batch.len] = block;
            batch.len += 1;
        }
    }
    batch
}

/// What draining one batch did.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Drained {
    /// The batch as a pass of one request.
    pub pass: ReportPass,
    /// Frames the device claimed zeroed that the trust gate did not believe.
    pub zeroed_untrusted: u64,
}

/// Puts an isolated batch back with the device's answers (missing answers count as
/// [`ReportOutcome::Failed`]). "Zeroed" is believed only if `trusted` (the trust gate).
pub(crate) fn drain(
    blocks: &mut impl FreeBlocks,
    batch: ReportBatch,
    outcomes: &[ReportOutcome],
    trusted: bool,
) -> Drained {
    let mut out = Drained {
        pass: ReportPass {
            requests: 1,
            ..ReportPass::default()
        },
        zeroed_untrusted: 0,
    };
    for (i, &block) in batch.blocks().iter().enumerate() {
        let outcome = outcomes.get(i).copied().unwrap_or(ReportOutcome::Failed);
        let frames = block.frames();
        let (content, reported, zeroed, untrusted) = match outcome {
            ReportOutcome::Failed => (FrameFlags::empty(), 0, 0, 0),
            ReportOutcome::Reported => (FrameFlags::REPORTED, frames, 0, 0),
            ReportOutcome::ReportedZeroed if trusted => (
                FrameFlags::REPORTED.union(FrameFlags::ZEROED),
                frames,
                frames,
                0,
            ),
            ReportOutcome::ReportedZeroed => (FrameFlags::REPORTED, frames, 0, frames),
        };
        // A batch of another zone, or a forged one, must not corrupt this zone.
        if !blocks.putback(block, content) {
            continue;
        }
        if outcome == ReportOutcome::Failed {
            out.pass.pages_failed += frames;
        }
        out.pass.pages_reported += reported;
        out.pass.pages_zeroed += zeroed;
        out.zeroed_untrusted += untrusted;
    }
    out.pass.more = out.pass.pages_failed > 0;
    out
}

/// Fill, report, drain, up to `budget` requests or until the candidates run out. Stops early
/// if the device fails a block, so a broken device cannot make it spin.
pub(crate) fn cycle(
    blocks: &mut impl FreeBlocks,
    mut budget: u64,
    sink: &mut impl ReportSink,
    trusted: bool,
) -> Drained {
    let mut total = Drained::default();
    let capacity = capacity(sink);
    loop {
        if budget == 0 {
            total.pass.more = blocks.unreported_pages() > 0;
            return total;
        }
        let batch = fill(blocks, capacity);
        if batch.is_empty() {
            return total;
        }
        let mut outcomes = [ReportOutcome::Failed; REPORTING_CAPACITY_MAX];
        sink.report(batch.blocks(), &mut outcomes[..batch.len()]);
        let one = drain(blocks, batch, &outcomes, trusted);
        total.pass.requests += 1;
        total.pass.pages_reported += one.pass.pages_reported;
        total.pass.pages_zeroed += one.pass.pages_zeroed;
        total.pass.pages_failed += one.pass.pages_failed;
        total.zeroed_untrusted += one.zeroed_untrusted;
        if one.pass.more {
            total.pass.more = true;
            return total;
        }
        budget -= 1;
    }
}
