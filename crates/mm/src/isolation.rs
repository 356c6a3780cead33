//! The zone's side of free page reporting: where the candidates are, isolating a free block
//! and putting it back (Linux `__isolate_free_page` / `__putback_isolated_page`), and the
//! zone's public reporting calls, which run the engine of `reporting.rs` over it.
//!
//! An isolated block is off every free list and carries `ISOLATED` on its head frame, with the
//! `Zeroed` it had, so that putting it back restores it. Put back after the device answered, a
//! buddy block merges with its free buddies (the merge rules of `zone.rs` apply); a pool page
//! goes back to the pool. Linux puts reported pages back without asking for another pass, and
//! so does this.

use crate::frame::{FrameFlags, FrameMeta, Pfn, NIL};
use crate::free_area::{FreeArea, ListKind};
use crate::reporting::{self, FreeBlocks, ReportBatch, ReportBlock, ReportOutcome, ReportPass};
use crate::reporting::{Drained, ReportSink};
use crate::zone::{Home, Zone};
use crate::{HUGE_PAGE_ORDER, MAX_ORDER};

impl<S: AsRef<[FrameMeta]> + AsMut<[FrameMeta]>> Zone<S> {
    /// Candidate source `source`: its home, the order of its blocks and its free area.
    fn source(&self, source: usize) -> (Home, u8, &FreeArea) {
        let first = self.cfg.reporting_order as usize;
        match first + source {
            o if o <= MAX_ORDER as usize => (Home::Buddy, o as u8, &self.areas[o]),
            _ => (Home::Pool, HUGE_PAGE_ORDER, &self.pool),
        }
    }

    /// Whether a reporting pass is due at time `now` (same clock units as
    /// [`Config::reporting_delay`](crate::Config::reporting_delay)). The delay starts at the first
    /// call after free activity, so call this regularly.
    pub fn report_due(&mut self, now: u64) -> bool {
        self.reporting.due(now, self.cfg.reporting_delay)
    }

    /// Frames in free blocks that are reporting candidates (unreported, large enough).
    pub fn unreported_free_pages(&self) -> u64 {
        FreeBlocks::unreported_pages(self)
    }

    /// Isolates up to `max` (at most [`REPORTING_CAPACITY_MAX`](crate::REPORTING_CAPACITY_MAX)) candidates, for a driver that
    /// completes asynchronously; hand the batch back with [`Zone::report_complete`].
    pub fn report_take(&mut self, max: usize) -> ReportBatch {
        reporting::fill(self, max)
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
        let drained = reporting::drain(self, batch, outcomes, trusted);
        self.account(drained);
        drained.pass
    }

    /// Runs a reporting pass if one is due at `now`, within Linux's budget. If candidates are
    /// left, another pass is requested (a delay later).
    pub fn report_pass(&mut self, now: u64, sink: &mut impl ReportSink) -> ReportPass {
        if !self.report_due(now) {
            return ReportPass::default();
        }
        let budget = reporting::budget(self, reporting::capacity(sink));
        let pass = self.report_cycle(budget, sink);
        self.reporting = if pass.more {
            reporting::Pacing::Requested { since: Some(now) }
        } else {
            reporting::Pacing::Idle
        };
        pass
    }

    /// Reports every candidate now, ignoring delay and budget. Stops early if the device fails
    /// a block, so a broken device cannot make it spin.
    pub fn report_flush(&mut self, sink: &mut impl ReportSink) -> ReportPass {
        let pass = self.report_cycle(u64::MAX, sink);
        if !pass.more {
            self.reporting = reporting::Pacing::Idle;
        }
        pass
    }

    fn report_cycle(&mut self, budget: u64, sink: &mut impl ReportSink) -> ReportPass {
        let trusted = self.cfg.trusts_device_zeroing(self.device.reported);
        let drained = reporting::cycle(self, budget, sink, trusted);
        self.account(drained);
        drained.pass
    }

    pub(crate) fn account(&mut self, drained: Drained) {
        let pass = drained.pass;
        self.stat.report_requests += pass.requests;
        self.stat.pages_reported += pass.pages_reported;
        self.stat.pages_reported_zeroed += pass.pages_zeroed;
        self.stat.pages_report_failed += pass.pages_failed;
        self.stat.pages_zeroed_untrusted += drained.zeroed_untrusted;
    }
}

impl<S: AsRef<[FrameMeta]> + AsMut<[FrameMeta]>> FreeBlocks for Zone<S> {
    fn sources(&self) -> usize {
        let buddy = (MAX_ORDER - self.cfg.reporting_order) as usize + 1;
        buddy + usize::from(HUGE_PAGE_ORDER >= self.cfg.reporting_order)
    }

    fn source_free(&self, source: usize) -> u32 {
        self.source(source).2.nr_free()
    }

    fn isolate_unreported(&mut self, source: usize) -> Option<ReportBlock> {
        let (_, order, area) = self.source(source);
        let meta = self.meta.as_ref();
        let idx = ListKind::ALL.into_iter().find_map(|kind| {
            area.head(kind)
                .filter(|&i| !meta[i as usize].flags.contains(FrameFlags::REPORTED))
        })?;
        let content = self.unlink(idx);
        let m = &mut self.meta.as_mut()[idx as usize];
        m.flags = m
            .flags
            .union(FrameFlags::ISOLATED)
            .union(content.and(FrameFlags::ZEROED));
        m.order = order;
        self.counts.isolated += 1 << order;
        Some(ReportBlock {
            pfn: Pfn(self.base + idx as u64),
            order,
        })
    }

    fn putback(&mut self, block: ReportBlock, content: FrameFlags) -> bool {
        let Some(idx) = self.index(block.pfn) else {
            return false;
        };
        let m = self.meta.as_ref()[idx as usize];
        if !m.flags.contains(FrameFlags::ISOLATED) || m.order != block.order {
            return false;
        }
        let content = content.union(m.flags.and(FrameFlags::ZEROED));
        self.counts.isolated -= block.frames();
        if m.flags.contains(FrameFlags::HUGE) {
            self.link(idx, block.order, content, Home::Pool);
        } else {
            self.merge_and_link(idx, block.order, content);
        }
        true
    }

    fn unreported_pages(&self) -> u64 {
        let meta = self.meta.as_ref();
        let mut pages = 0;
        for source in 0..self.sources() {
            let area = self.source(source).2;
            for kind in ListKind::ALL {
                let mut idx = area.head(kind);
                while let Some(i) = idx {
                    let m = meta[i as usize];
                    if m.flags.contains(FrameFlags::REPORTED) {
                        break;
                    }
                    pages += 1u64 << m.order;
                    idx = (m.next != NIL).then_some(m.next);
                }
            }
        }
        pages
    }
}
