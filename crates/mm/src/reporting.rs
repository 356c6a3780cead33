//! Free page reporting, after Linux `mm/page_reporting.c`.
//!
//! Candidates are free, unreported blocks of at least the reporting order (and free huge pages
//! of the pool). A pass isolates up to [`REPORTING_CAPACITY`] of them at a time (taken off the
//! free lists, so nobody allocates a block while the device discards it), hands them to the
//! device, and puts them back `Reported`, plus `Zeroed` for each block the device confirmed and
//! the trust gate believes. A block the device failed goes back unreported.
//!
//! Pacing is Linux's: free activity requests a pass, which runs a delay later; a pass reports a
//! budget of `ceil(free blocks / (capacity * 16))` requests per order, so a large backlog drains
//! over several passes instead of monopolising the CPU. [`Zone::report_flush`] ignores both, for
//! tests, benchmarks and shutdown.
//!
//! Drivers that can block use [`Zone::report_pass`] with a [`ReportSink`]; drivers that
//! complete asynchronously use [`Zone::report_take`] and [`Zone::report_complete`].

use crate::frame::{FrameFlags, FrameMeta, Pfn, FRAME_SIZE};
use crate::free_area::{FreeArea, ListKind};
use crate::zone::{Home, Zone};
use crate::{HUGE_PAGE_ORDER, MAX_ORDER};

/// Blocks per reporting request (Linux `PAGE_REPORTING_CAPACITY`).
pub const REPORTING_CAPACITY: usize = 32;
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

/// Isolated blocks on their way to the device. It is consumed by [`Zone::report_complete`], so
/// a batch cannot be completed twice.
#[derive(Debug)]
#[must_use = "isolated blocks stay unallocatable until the batch is completed"]
pub struct ReportBatch {
    blocks: [ReportBlock; REPORTING_CAPACITY],
    len: usize,
}

impl ReportBatch {
    fn new() -> Self {
        ReportBatch {
            blocks: [ReportBlock {
                pfn: Pfn(0),
                order: 0,
            }; REPORTING_CAPACITY],
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

/// Pacing state (Linux: `PAGE_REPORTING_IDLE` / `REQUESTED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReportState {
    Idle,
    /// Free activity asked for a pass; `since` is when the delay started, once seen by
    /// [`Zone::report_due`].
    Requested {
        since: Option<u64>,
    },
}

impl<S: AsRef<[FrameMeta]> + AsMut<[FrameMeta]>> Zone<S> {
    /// Free activity at or above the reporting order asks for a pass.
    pub(crate) fn request_report(&mut self) {
        if self.reporting == ReportState::Idle {
            self.reporting = ReportState::Requested { since: None };
        }
    }

    /// Whether a reporting pass is due at time `now` (same clock units as
    /// [`Config::reporting_delay`](crate::Config::reporting_delay)). The delay starts at the first
    /// call after free activity, so call this regularly.
    pub fn report_due(&mut self, now: u64) -> bool {
        match self.reporting {
            ReportState::Idle => false,
            ReportState::Requested { since: None } => {
                self.reporting = ReportState::Requested { since: Some(now) };
                self.cfg.reporting_delay == 0
            }
            ReportState::Requested { since: Some(t) } => {
                now.saturating_sub(t) >= self.cfg.reporting_delay
            }
        }
    }

    /// Frames in free blocks that are reporting candidates (unreported, large enough).
    pub fn unreported_free_pages(&self) -> u64 {
        let mut pages = 0;
        self.for_each_source(|_, area, meta| {
            for kind in [ListKind::Other, ListKind::Zeroed] {
                let mut idx = area.head(kind);
                while let Some(i) = idx {
                    let m = meta[i as usize];
                    if m.flags.contains(FrameFlags::REPORTED) {
                        break;
                    }
                    pages += 1u64 << m.order;
                    idx = (m.next != crate::frame::NIL).then_some(m.next);
                }
            }
        });
        pages
    }

    /// Calls `f` on every free area holding reporting candidates, smallest order first, the
    /// huge page pool last.
    fn for_each_source(&self, mut f: impl FnMut(Home, &FreeArea, &[FrameMeta])) {
        let meta = self.meta.as_ref();
        for area in &self.areas[self.cfg.reporting_order as usize..=MAX_ORDER as usize] {
            f(Home::Buddy, area, meta);
        }
        if HUGE_PAGE_ORDER >= self.cfg.reporting_order {
            f(Home::Pool, &self.pool, meta);
        }
    }

    /// Isolates up to `max` (at most [`REPORTING_CAPACITY`]) candidates. Unreported blocks form
    /// the head of every free list, so this costs O(1) per block.
    pub fn report_take(&mut self, max: usize) -> ReportBatch {
        let mut batch = ReportBatch::new();
        let max = max.min(REPORTING_CAPACITY);
        let orders = self.cfg.reporting_order..=MAX_ORDER;
        let sources = orders.map(|o| (Home::Buddy, o)).chain(
            (HUGE_PAGE_ORDER >= self.cfg.reporting_order).then_some((Home::Pool, HUGE_PAGE_ORDER)),
        );
        for (home, order) in sources {
            for kind in [ListKind::Other, ListKind::Zeroed] {
                while batch.len < max {
                    let area = match home {
                        Home::Buddy => &self.areas[order as usize],
                        Home::Pool => &self.pool,
                    };
                    let Some(idx) = area.head(kind) else { break };
                    if self.meta.as_ref()[idx as usize]
                        .flags
                        .contains(FrameFlags::REPORTED)
                    {
                        break;
                    }
                    self.isolate(idx);
                    batch.blocks[batch.len] = ReportBlock {
                        pfn: Pfn(self.base + idx as u64),
                        order,
                    };
                    batch.len += 1;
                }
            }
        }
        batch
    }

    /// Takes a free block off its list for reporting. Its `Zeroed` flag is kept on the head
    /// frame so that completion can restore it.
    fn isolate(&mut self, idx: u32) {
        let order = self.meta.as_ref()[idx as usize].order;
        let content = self.unlink(idx);
        let m = &mut self.meta.as_mut()[idx as usize];
        m.flags = m
            .flags
            .union(FrameFlags::ISOLATED)
            .union(content.and(FrameFlags::ZEROED));
        m.order = order;
        self.counts.isolated += 1 << order;
    }

    /// Puts an isolated batch back on the free lists with the device's answers. Missing answers
    /// count as [`ReportOutcome::Failed`]. Returns what happened, as a [`ReportPass`] of one
    /// request.
    pub fn report_complete(
        &mut self,
        batch: ReportBatch,
        outcomes: &[ReportOutcome],
    ) -> ReportPass {
        let trusted = self.cfg.trusts_device_zeroing(self.device.reported);
        let mut pass = ReportPass {
            requests: 1,
            ..ReportPass::default()
        };
        for (i, block) in batch.blocks().iter().enumerate() {
            let outcome = outcomes.get(i).copied().unwrap_or(ReportOutcome::Failed);
            // A batch of another zone, or a forged one, must not corrupt this zone.
            let Some(idx) = self.index(block.pfn) else {
                continue;
            };
            let m = self.meta.as_ref()[idx as usize];
            if !m.flags.contains(FrameFlags::ISOLATED) || m.order != block.order {
                continue;
            }
            let frames = block.frames();
            let mut content = m.flags.and(FrameFlags::ZEROED);
            match outcome {
                ReportOutcome::Failed => pass.pages_failed += frames,
                ReportOutcome::Reported | ReportOutcome::ReportedZeroed => {
                    pass.pages_reported += frames;
                    content = content.union(FrameFlags::REPORTED);
                }
            }
            if outcome == ReportOutcome::ReportedZeroed {
                if trusted {
                    pass.pages_zeroed += frames;
                    content = content.union(FrameFlags::ZEROED);
                } else {
                    self.stat.pages_zeroed_untrusted += frames;
                }
            }
            self.counts.isolated -= frames;
            if m.flags.contains(FrameFlags::HUGE) {
                self.link(idx, block.order, content, Home::Pool);
            } else {
                // Linux puts reported pages back without asking for another pass.
                self.merge_and_link(idx, block.order, content);
            }
        }
        self.stat.report_requests += 1;
        self.stat.pages_reported += pass.pages_reported;
        self.stat.pages_reported_zeroed += pass.pages_zeroed;
        self.stat.pages_report_failed += pass.pages_failed;
        pass.more = pass.pages_failed > 0;
        pass
    }

    /// Runs a reporting pass if one is due at `now`, within Linux's budget. If candidates are
    /// left, another pass is requested (a delay later).
    pub fn report_pass(&mut self, now: u64, sink: &mut impl ReportSink) -> ReportPass {
        if !self.report_due(now) {
            return ReportPass::default();
        }
        let divisor = REPORTING_CAPACITY as u64 * REPORTING_BUDGET_DIVISOR as u64;
        let mut budget = 0u64;
        self.for_each_source(|_, area, _| budget += (area.nr_free() as u64).div_ceil(divisor));
        let pass = self.report_batches(budget.max(1), sink);
        self.reporting = if pass.more {
            ReportState::Requested { since: Some(now) }
        } else {
            ReportState::Idle
        };
        pass
    }

    /// Reports every candidate now, ignoring delay and budget. Stops early if the device fails
    /// a block, so a broken device cannot make it spin.
    pub fn report_flush(&mut self, sink: &mut impl ReportSink) -> ReportPass {
        let pass = self.report_batches(u64::MAX, sink);
        if !pass.more {
            self.reporting = ReportState::Idle;
        }
        pass
    }

    fn report_batches(&mut self, mut budget: u64, sink: &mut impl ReportSink) -> ReportPass {
        let mut total = ReportPass::default();
        loop {
            if budget == 0 {
                total.more = self.unreported_free_pages() > 0;
                return total;
            }
            let batch = self.report_take(REPORTING_CAPACITY);
            if batch.is_empty() {
                return total;
            }
            let mut outcomes = [ReportOutcome::Failed; REPORTING_CAPACITY];
            sink.report(batch.blocks(), &mut outcomes[..batch.len()]);
            let pass = self.report_complete(batch, &outcomes);
            total.requests += 1;
            total.pages_reported += pass.pages_reported;
            total.pages_zeroed += pass.pages_zeroed;
            total.pages_failed += pass.pages_failed;
            if pass.more {
                total.more = true;
                return total;
            }
            budget -= 1;
        }
    }
}
