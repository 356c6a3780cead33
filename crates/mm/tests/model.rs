//! Model test: long random sequences of alloc / free / report / complete / fail / huge page
//! operations, checked after every step against
//! - a memory model that tracks real contents: every allocation returned as known-zero reads
//!   zero, and the device only zeroes what it honestly can;
//! - a reference model of the free blocks and their flags, computed by the rules of DESIGN.md §3
//!   in the simplest possible way (a map of blocks), which the allocator must agree with exactly;
//! - accounting: free + allocated + isolated (+ pool) always equals the zone's frames, and no
//!   frame is handed out twice.
//!
//! `PREZERO_MODEL_CASES` (default 48) and `PREZERO_MODEL_OPS` (default 3000, the maximum
//! sequence length) scale it: `PREZERO_MODEL_CASES=1000 PREZERO_MODEL_OPS=10000` runs about
//! 10^7 operations. The test prints how many operations it ran.

mod common;
use common::Ram;
use prezero_mm::*;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MBlock {
    order: u8,
    reported: bool,
    zeroed: bool,
    pool: bool,
}

#[derive(Clone, Debug)]
enum Op {
    Alloc { order: u8, zero: bool, write: bool },
    Free { pick: usize, hint: Option<bool> },
    Take { max: usize },
    Complete { pick: usize, outcomes: u64 },
    Flush { outcome: u8 },
    PoolResize { target: u64 },
    AllocHuge { zero: bool, write: bool },
    FreeHuge { pick: usize, hint: Option<bool> },
}

#[derive(Clone, Debug)]
struct Setup {
    cfg: Config,
    device: DeviceInit,
    base: u64,
    /// (start offset, frames) of present ranges within the span.
    ranges: Vec<(u64, u64)>,
    span: u64,
    fresh_zero: bool,
}

fn setup() -> impl Strategy<Value = Setup> {
    let placement = prop_oneof![Just(Placement::Linux), Just(Placement::ZeroAware)];
    let poison = prop_oneof![4 => Just(None), 1 => Just(Some(0u8)), 1 => Just(Some(0xaau8))];
    let reporting_order = prop_oneof![3 => Just(9u8), 1 => 0u8..=10];
    (
        placement,
        prop::bool::weighted(0.15),
        poison,
        prop::bool::weighted(0.15),
        reporting_order,
        (prop::bool::weighted(0.8), prop::bool::weighted(0.7)),
        0u64..3,
        prop::collection::vec((0u64..2048, 1u64..3000), 1..4),
        any::<bool>(),
    )
        .prop_map(
            |(
                placement,
                init_on_free,
                poison,
                confidential,
                reporting_order,
                (r, i),
                base_sel,
                raw,
                fresh_zero,
            )| {
                let base = [0u64, 1 << 20, 12345][base_sel as usize];
                // Lay the ranges out one after another with gaps (holes) between them.
                let mut ranges = Vec::new();
                let mut at = 0;
                for (gap, len) in raw {
                    at += gap;
                    ranges.push((at, len));
                    at += len;
                }
                Setup {
                    cfg: Config {
                        placement,
                        init_on_free,
                        poison,
                        confidential,
                        reporting_order,
                        reporting_delay: 0,
                    },
                    device: DeviceInit {
                        reported: r,
                        on_inflate: i,
                    },
                    base,
                    ranges,
                    span: at,
                    fresh_zero,
                }
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    let order = prop_oneof![6 => 0u8..3, 3 => 3u8..9, 2 => 9u8..=10, 1 => Just(11u8)];
    let hint = prop_oneof![3 => Just(None), 1 => any::<bool>().prop_map(Some)];
    prop_oneof![
        10 => (order, any::<bool>(), prop::bool::weighted(0.7)).prop_map(|(order, zero, write)| Op::Alloc { order, zero, write }),
        9 => (any::<usize>(), hint.clone()).prop_map(|(pick, hint)| Op::Free { pick, hint }),
        3 => (1usize..=300).prop_map(|max| Op::Take { max }),
        3 => (any::<usize>(), any::<u64>()).prop_map(|(pick, outcomes)| Op::Complete { pick, outcomes }),
        1 => (0u8..3).prop_map(|outcome| Op::Flush { outcome }),
        1 => (0u64..6).prop_map(|target| Op::PoolResize { target }),
        2 => (any::<bool>(), any::<bool>()).prop_map(|(zero, write)| Op::AllocHuge { zero, write }),
        2 => (any::<usize>(), hint).prop_map(|(pick, hint)| Op::FreeHuge { pick, hint }),
    ]
}

struct Harness {
    s: Setup,
    zone: Zone<Vec<FrameMeta>>,
    ram: Ram,
    free: BTreeMap<u64, MBlock>,
    isolated: BTreeMap<u64, MBlock>,
    allocated: BTreeMap<u64, (u8, bool)>,
    batches: Vec<ReportBatch>,
    next_tag: u8,
}

impl Harness {
    fn new(s: Setup) -> Self {
        let mut zone = Zone::new(vec![FrameMeta::EMPTY; s.span as usize], Pfn(s.base), s.cfg);
        zone.set_device_init(s.device);
        let mut h = Harness {
            ram: Ram::new(s.base, s.span as usize, if s.fresh_zero { 0 } else { 0x11 }),
            zone,
            free: BTreeMap::new(),
            isolated: BTreeMap::new(),
            allocated: BTreeMap::new(),
            batches: Vec::new(),
            next_tag: 1,
            s,
        };
        for &(off, len) in &h.s.ranges.clone() {
            h.zone
                .add_memory(Pfn(h.s.base + off), len, h.s.fresh_zero)
                .unwrap();
            // The model frees the range frame by frame: merging must reach the same blocks.
            for pfn in h.s.base + off..h.s.base + off + len {
                let b = MBlock {
                    order: 0,
                    reported: false,
                    zeroed: h.s.fresh_zero,
                    pool: false,
                };
                h.model_free(pfn, b);
            }
        }
        h
    }

    fn trust(&self, negotiated: bool) -> bool {
        negotiated && matches!(self.s.cfg.poison, None | Some(0)) && !self.s.cfg.confidential
    }

    fn in_span(&self, pfn: u64) -> bool {
        pfn >= self.s.base && pfn < self.s.base + self.s.span
    }

    /// Inserts a free buddy block and merges it with free buddies, ANDing the flags.
    fn model_free(&mut self, mut pfn: u64, mut b: MBlock) {
        while b.order < MAX_ORDER {
            let buddy = pfn ^ (1 << b.order);
            if !self.in_span(buddy) {
                break;
            }
            match self.free.get(&buddy) {
                Some(o) if o.order == b.order && !o.pool => {
                    let o = self.free.remove(&buddy).unwrap();
                    b.reported &= o.reported;
                    b.zeroed &= o.zeroed;
                    pfn = pfn.min(buddy);
                    b.order += 1;
                }
                _ => break,
            }
        }
        self.free.insert(pfn, b);
    }

    /// Takes `[pfn, pfn + 2^order)` out of the free block that contains it, splitting the
    /// block; the pieces left free inherit its flags. Returns the block it came from.
    fn model_take(&mut self, pfn: u64, order: u8) -> (u64, MBlock) {
        let (&start, &b) = self
            .free
            .range(..=pfn)
            .next_back()
            .expect("allocated frame was not free in the model");
        assert!(
            !b.pool && pfn + (1 << order) <= start + (1 << b.order),
            "allocation overlaps a non-free frame"
        );
        self.free.remove(&start);
        let (mut s, mut o) = (start, b.order);
        while o > order {
            o -= 1;
            let (keep, give) = if pfn < s + (1 << o) {
                (s, s + (1 << o))
            } else {
                (s + (1 << o), s)
            };
            self.free.insert(give, MBlock { order: o, ..b });
            s = keep;
        }
        assert_eq!(s, pfn);
        (start, b)
    }

    fn free_flags(&self, hint: Option<bool>) -> (bool, bool) {
        let (mut r, mut z) = (false, false);
        if let Some(device_zeroed) = hint {
            r = true;
            z = device_zeroed && self.trust(self.s.device.on_inflate);
        }
        if !z {
            if self.s.cfg.init_on_free {
                (r, z) = (false, true);
            } else if let Some(v) = self.s.cfg.poison {
                (r, z) = (false, v == 0);
            }
        }
        (r, z)
    }

    fn check_alloc(&mut self, a: Allocation, zero: bool, fills_before: u64, write: bool) {
        let frames = 1u64 << a.order;
        if a.known_zero {
            assert!(
                self.ram.is_zero(a.pfn, frames),
                "known-zero block {:?} does not read zero",
                a
            );
            assert_eq!(
                self.ram.fills, fills_before,
                "a known-zero block was zeroed again"
            );
        }
        if zero {
            assert!(
                self.ram.is_zero(a.pfn, frames),
                "ZERO allocation does not read zero"
            );
        }
        if write {
            let tag = self.next_tag;
            self.next_tag = self.next_tag.wrapping_add(1).max(1);
            self.ram.write(a.pfn, frames, tag);
        }
    }

    /// Which orders hold model blocks matching `pred` (buddy blocks only).
    fn lowest_order(&self, min: u8, pred: impl Fn(&MBlock) -> bool) -> Option<u8> {
        self.free
            .values()
            .filter(|b| !b.pool && b.order >= min && pred(b))
            .map(|b| b.order)
            .min()
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Alloc { order, zero, write } => {
                let fills = self.ram.fills;
                let flags = if zero {
                    AllocFlags::ZERO
                } else {
                    AllocFlags::NONE
                };
                let any = self.lowest_order(order.min(MAX_ORDER), |_| true);
                match self.zone.alloc(order, flags, &mut self.ram) {
                    Err(AllocError::OrderTooLarge(o)) => assert!(o > MAX_ORDER),
                    Err(AllocError::OutOfMemory(_)) => {
                        assert_eq!(any, None, "allocation failed with free blocks")
                    }
                    Err(e @ AllocError::NoSuchCpu(_)) => panic!("a zone has no CPUs: {e}"),
                    Ok(a) => {
                        let wanted = |b: &MBlock| b.zeroed == zero;
                        let preferred = self.lowest_order(order, wanted);
                        let (_, src) = self.model_take(a.pfn.0, order);
                        assert_eq!(
                            a.known_zero, src.zeroed,
                            "known_zero disagrees with the model"
                        );
                        match (self.s.cfg.placement, preferred) {
                            (Placement::ZeroAware, Some(o)) => {
                                assert_eq!(
                                    src.zeroed, zero,
                                    "zero-aware placement missed a preferred block"
                                );
                                assert_eq!(
                                    src.order, o,
                                    "took a larger preferred block than needed"
                                );
                            }
                            _ => assert_eq!(Some(src.order), any, "did not take the lowest order"),
                        }
                        self.allocated.insert(a.pfn.0, (order, false));
                        self.check_alloc(a, zero, fills, write);
                    }
                }
            }
            Op::Free { pick, hint } => {
                let buddy: Vec<_> = self
                    .allocated
                    .iter()
                    .filter(|(_, v)| !v.1)
                    .map(|(k, v)| (*k, v.0))
                    .collect();
                if buddy.is_empty() {
                    // Bad input on an empty zone: must be refused.
                    let pfn = Pfn(self.s.base + (pick as u64 % self.s.span.max(1)));
                    assert!(self
                        .zone
                        .free(pfn, 0, FreeHint::None, &mut self.ram)
                        .is_err());
                    return;
                }
                let (pfn, order) = buddy[pick % buddy.len()];
                if pick % 7 == 3 {
                    // Misuse: wrong order or the middle of the block, refused.
                    let bad = if order > 0 { order - 1 } else { order + 1 };
                    assert!(self
                        .zone
                        .free(Pfn(pfn), bad, FreeHint::None, &mut self.ram)
                        .is_err());
                }
                self.apply_device_init_on_inflate(pfn, order, hint);
                let fhint = hint.map_or(FreeHint::None, |device_zeroed| FreeHint::Deflated {
                    device_zeroed,
                });
                self.zone
                    .free(Pfn(pfn), order, fhint, &mut self.ram)
                    .unwrap();
                assert!(
                    self.zone
                        .free(Pfn(pfn), order, fhint, &mut self.ram)
                        .is_err(),
                    "double free accepted"
                );
                self.allocated.remove(&pfn);
                let (reported, zeroed) = self.free_flags(hint);
                self.model_free(
                    pfn,
                    MBlock {
                        order,
                        reported,
                        zeroed,
                        pool: false,
                    },
                );
            }
            Op::Take { max } => {
                let candidates = self
                    .free
                    .values()
                    .filter(|b| !b.reported && self.is_reportable(b))
                    .count();
                let batch = self.zone.report_take(max);
                assert_eq!(batch.len(), max.min(REPORTING_CAPACITY_MAX).min(candidates));
                for blk in batch.blocks() {
                    let b = self
                        .free
                        .remove(&blk.pfn.0)
                        .expect("took a block that is not free");
                    assert_eq!(b.order, blk.order);
                    assert!(!b.reported && self.is_reportable(&b));
                    self.isolated.insert(blk.pfn.0, b);
                }
                if !batch.is_empty() {
                    self.batches.push(batch);
                } else {
                    let _ = self.zone.report_complete(batch, &[]);
                }
            }
            Op::Complete { pick, outcomes } => {
                if self.batches.is_empty() {
                    return;
                }
                let batch = self.batches.swap_remove(pick % self.batches.len());
                let outs: Vec<_> = (0..batch.len())
                    .map(|i| match (outcomes >> (2 * i)) & 3 {
                        0 => ReportOutcome::Failed,
                        1 => ReportOutcome::Reported,
                        _ => ReportOutcome::ReportedZeroed,
                    })
                    .collect();
                let blocks: Vec<_> = batch.blocks().to_vec();
                for (blk, o) in blocks.iter().zip(&outs) {
                    self.device_acts(blk, *o);
                }
                self.zone.report_complete(batch, &outs);
                for (blk, o) in blocks.iter().zip(&outs) {
                    self.model_complete(blk, *o);
                }
            }
            Op::Flush { outcome } => {
                let o = [
                    ReportOutcome::Failed,
                    ReportOutcome::Reported,
                    ReportOutcome::ReportedZeroed,
                ][outcome as usize];
                let mut seen = Vec::new();
                let trust = self.trust(self.s.device.reported);
                let mut sink = Sink {
                    h_ram: &mut self.ram,
                    trust,
                    outcome: o,
                    seen: &mut seen,
                };
                self.zone.report_flush(&mut sink);
                for blk in &seen {
                    let b = self
                        .free
                        .remove(&blk.pfn.0)
                        .expect("flushed a block that is not free");
                    assert!(!b.reported && self.is_reportable(&b) && b.order == blk.order);
                    self.isolated.insert(blk.pfn.0, b);
                    self.model_complete(blk, o);
                }
            }
            Op::PoolResize { target } => {
                self.zone.pool_resize(target);
                self.sync_pool();
            }
            Op::AllocHuge { zero, write } => {
                let fills = self.ram.fills;
                let flags = if zero {
                    AllocFlags::ZERO
                } else {
                    AllocFlags::NONE
                };
                let any_zeroed = self.free.values().any(|b| b.pool && b.zeroed);
                match self.zone.alloc_huge(flags, &mut self.ram) {
                    Err(_) => assert!(!self.free.values().any(|b| b.pool)),
                    Ok(a) => {
                        let b = self.free.remove(&a.pfn.0).expect("huge page was not free");
                        assert!(b.pool);
                        assert_eq!(a.known_zero, b.zeroed);
                        if zero && any_zeroed && self.s.cfg.placement == Placement::ZeroAware {
                            assert!(a.known_zero, "zero-aware pool missed a known-zero page");
                        }
                        self.allocated.insert(a.pfn.0, (HUGE_PAGE_ORDER, true));
                        self.check_alloc(a, zero, fills, write);
                    }
                }
            }
            Op::FreeHuge { pick, hint } => {
                let huge: Vec<_> = self
                    .allocated
                    .iter()
                    .filter(|(_, v)| v.1)
                    .map(|(k, _)| *k)
                    .collect();
                if huge.is_empty() {
                    return;
                }
                let pfn = huge[pick % huge.len()];
                self.apply_device_init_on_inflate(pfn, HUGE_PAGE_ORDER, hint);
                let fhint = hint.map_or(FreeHint::None, |device_zeroed| FreeHint::Deflated {
                    device_zeroed,
                });
                self.zone.free_huge(Pfn(pfn), fhint, &mut self.ram).unwrap();
                self.allocated.remove(&pfn);
                let (reported, zeroed) = self.free_flags(hint);
                self.free.insert(
                    pfn,
                    MBlock {
                        order: HUGE_PAGE_ORDER,
                        reported,
                        zeroed,
                        pool: true,
                    },
                );
            }
        }
    }

    fn is_reportable(&self, b: &MBlock) -> bool {
        b.order >= self.s.cfg.reporting_order
    }

    /// A deflated block: the device says whether it zeroed it. It is honest exactly when the
    /// guest would trust it; an untrusted device lies and zeroes nothing.
    fn apply_device_init_on_inflate(&mut self, pfn: u64, order: u8, hint: Option<bool>) {
        if hint == Some(true) && self.trust(self.s.device.on_inflate) {
            self.ram.write(Pfn(pfn), 1 << order, 0);
        }
    }

    fn device_acts(&mut self, blk: &ReportBlock, o: ReportOutcome) {
        let honest = self.trust(self.s.device.reported);
        if o == ReportOutcome::ReportedZeroed && honest {
            self.ram.write(blk.pfn, blk.frames(), 0);
        }
    }

    fn model_complete(&mut self, blk: &ReportBlock, o: ReportOutcome) {
        let mut b = self
            .isolated
            .remove(&blk.pfn.0)
            .expect("completed a block that was not isolated");
        b.reported = o != ReportOutcome::Failed;
        b.zeroed |= o == ReportOutcome::ReportedZeroed && self.trust(self.s.device.reported);
        if b.pool {
            self.free.insert(blk.pfn.0, b);
        } else {
            self.model_free(blk.pfn.0, b);
        }
    }

    /// Follows a pool resize: new pool pages come out of model free blocks (splitting them,
    /// flags inherited), released ones go back and merge.
    fn sync_pool(&mut self) {
        let actual: BTreeMap<u64, BlockInfo> = self
            .zone
            .blocks()
            .filter(|b| b.state == BlockState::PoolFree)
            .map(|b| (b.pfn.0, b))
            .collect();
        let released: Vec<u64> = self
            .free
            .iter()
            .filter(|(k, b)| b.pool && !actual.contains_key(k))
            .map(|(k, _)| *k)
            .collect();
        for pfn in released {
            let b = self.free.remove(&pfn).unwrap();
            self.model_free(pfn, MBlock { pool: false, ..b });
        }
        let grown: Vec<u64> = actual
            .keys()
            .copied()
            .filter(|k| !self.free.get(k).is_some_and(|b| b.pool))
            .collect();
        for pfn in grown {
            let (_, src) = self.model_take(pfn, HUGE_PAGE_ORDER);
            self.free.insert(
                pfn,
                MBlock {
                    order: HUGE_PAGE_ORDER,
                    pool: true,
                    ..src
                },
            );
        }
    }

    fn check_counts(&self) {
        let c = self.zone.counts();
        let present: u64 = self.s.ranges.iter().map(|r| r.1).sum();
        assert_eq!(c.present, present);
        assert_eq!(
            c.free + c.pool_free + c.allocated + c.huge_allocated + c.isolated,
            present
        );
        let sum = |f: &dyn Fn(&MBlock) -> bool| -> u64 {
            self.free
                .values()
                .filter(|b| f(b))
                .map(|b| 1u64 << b.order)
                .sum()
        };
        assert_eq!(c.free, sum(&|b| !b.pool));
        assert_eq!(c.pool_free, sum(&|b| b.pool));
        assert_eq!(c.free_reported, sum(&|b| b.reported));
        assert_eq!(c.free_zeroed, sum(&|b| b.zeroed));
        assert_eq!(
            c.isolated,
            self.isolated.values().map(|b| 1u64 << b.order).sum::<u64>()
        );
    }

    fn check_full(&self) {
        self.zone.verify().unwrap();
        let mut model: Vec<BlockInfo> = Vec::new();
        for (&pfn, b) in self.free.iter().chain(self.isolated.iter()) {
            let isolated = self.isolated.contains_key(&pfn);
            let state = match (isolated, b.pool) {
                (true, _) => BlockState::Isolated,
                (false, true) => BlockState::PoolFree,
                (false, false) => BlockState::Free,
            };
            model.push(BlockInfo {
                pfn: Pfn(pfn),
                order: b.order,
                state,
                reported: b.reported && !isolated,
                zeroed: b.zeroed,
            });
        }
        for (&pfn, &(order, huge)) in &self.allocated {
            let state = if huge {
                BlockState::HugeAllocated
            } else {
                BlockState::Allocated
            };
            model.push(BlockInfo {
                pfn: Pfn(pfn),
                order,
                state,
                reported: false,
                zeroed: false,
            });
        }
        model.sort_by_key(|b| b.pfn);
        let actual: Vec<BlockInfo> = self.zone.blocks().collect();
        assert_eq!(
            actual, model,
            "allocator blocks differ from the reference model"
        );
        // Every free block the allocator believes zero really is.
        for b in &actual {
            if b.zeroed {
                assert!(
                    self.ram.is_zero(b.pfn, 1 << b.order),
                    "free block {b:?} flagged zeroed reads non-zero"
                );
            }
        }
    }
}

struct Sink<'a> {
    h_ram: &'a mut Ram,
    trust: bool,
    outcome: ReportOutcome,
    seen: &'a mut Vec<ReportBlock>,
}

impl ReportSink for Sink<'_> {
    fn report(&mut self, blocks: &[ReportBlock], outcomes: &mut [ReportOutcome]) {
        for (b, o) in blocks.iter().zip(outcomes.iter_mut()) {
            self.seen.push(*b);
            *o = self.outcome;
            if self.outcome == ReportOutcome::ReportedZeroed && self.trust {
                self.h_ram.write(b.pfn, b.frames(), 0);
            }
        }
    }
}

static OPS_RUN: AtomicU64 = AtomicU64::new(0);

fn env(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn max_ops() -> usize {
    env("PREZERO_MODEL_OPS", 3000) as usize
}

proptest! {
    #![proptest_config(ProptestConfig { cases: env("PREZERO_MODEL_CASES", 48), ..ProptestConfig::default() })]

    #[test]
    fn allocator_agrees_with_the_reference_model(s in setup(), ops in prop::collection::vec(op(), 1..max_ops())) {
        let mut h = Harness::new(s);
        h.check_full();
        for (i, op) in ops.iter().enumerate() {
            h.step(op);
            h.check_counts();
            if i % 97 == 0 {
                h.check_full();
            }
        }
        // Drain: complete outstanding batches, free everything, and the zone is whole again.
        while let Some(batch) = h.batches.pop() {
            let blocks: Vec<_> = batch.blocks().to_vec();
            h.zone.report_complete(batch, &[]);
            for blk in &blocks {
                h.model_complete(blk, ReportOutcome::Failed);
            }
        }
        h.check_full();
        let total = OPS_RUN.fetch_add(ops.len() as u64, Ordering::Relaxed) + ops.len() as u64;
        if total % 100_000 < ops.len() as u64 {
            eprintln!("model test: {total} operations so far");
        }
    }
}

#[test]
fn zz_report_operation_count() {
    // Runs after the property in the same binary most of the time; informative only.
    eprintln!(
        "model test: {} operations run",
        OPS_RUN.load(Ordering::Relaxed)
    );
}
