//! One test per rule of DESIGN.md §3 (split, merge, free, allocate, zero sources, trust gate,
//! isolation, placement, huge pages) and per kind of bad input.

mod common;
use common::*;
use prezero_mm::*;

const MIB4: usize = 1024; // frames in a max-order block

fn free_block(z: &TestZone, pfn: u64) -> BlockInfo {
    z.blocks()
        .find(|b| b.pfn == Pfn(pfn))
        .expect("no block at pfn")
}

#[test]
fn metadata_is_twelve_bytes_per_frame() {
    assert_eq!(core::mem::size_of::<FrameMeta>(), 12);
}

#[test]
fn split_pieces_inherit_reported_and_zeroed() {
    let (mut z, mut ram) = zone(MIB4, Config::default());
    trusting(&mut z);
    z.report_flush(&mut Device::zeroing(&mut ram));
    let a = z.alloc(0, AllocFlags::ZERO, &mut ram).unwrap();
    assert!(a.known_zero);
    // The order-10 block was split into pieces of orders 0..=9: every one keeps both flags.
    let free: Vec<_> = z.blocks().filter(|b| b.state == BlockState::Free).collect();
    assert_eq!(free.len(), 10);
    assert!(free.iter().all(|b| b.reported && b.zeroed), "{free:?}");
    z.verify().unwrap();
}

#[test]
fn merge_keeps_a_flag_only_if_both_halves_have_it() {
    let (mut z, mut ram) = zone(2, Config::default());
    trusting(&mut z);
    z.report_flush(&mut Device::zeroing(&mut ram)); // order 1 < reporting order: nothing
    assert_eq!(z.counts().free_reported, 0);

    // Reporting order 0 so single frames can be reported.
    let cfg = Config {
        reporting_order: 0,
        ..Config::default()
    };
    let (mut z, mut ram) = zone(2, cfg);
    trusting(&mut z);
    let a = z.alloc(0, AllocFlags::NONE, &mut ram).unwrap();
    let b = z.alloc(0, AllocFlags::NONE, &mut ram).unwrap();
    z.free(a.pfn, 0, FreeHint::None, &mut ram).unwrap();
    z.report_flush(&mut Device::zeroing(&mut ram)); // a: reported + zeroed
    assert!(free_block(&z, a.pfn.0).zeroed);
    z.free(b.pfn, 0, FreeHint::None, &mut ram).unwrap(); // b dirty: merged block is neither
    let merged = free_block(&z, 0);
    assert_eq!(
        (merged.order, merged.reported, merged.zeroed),
        (1, false, false)
    );
    z.verify().unwrap();

    // Both halves reported and zeroed: the merged block is both.
    let a = z.alloc(0, AllocFlags::NONE, &mut ram).unwrap();
    z.report_flush(&mut Device::zeroing(&mut ram)); // the other half
    z.free(
        a.pfn,
        0,
        FreeHint::Deflated {
            device_zeroed: true,
        },
        &mut ram,
    )
    .unwrap();
    let merged = free_block(&z, 0);
    assert_eq!(
        (merged.order, merged.reported, merged.zeroed),
        (1, true, true)
    );
    z.verify().unwrap();
}

#[test]
fn free_clears_flags_and_allocation_consumes_zeroed() {
    let (mut z, mut ram) = zone(MIB4, Config::default());
    trusting(&mut z);
    z.report_flush(&mut Device::zeroing(&mut ram));
    let a = z.alloc(10, AllocFlags::NONE, &mut ram).unwrap();
    assert!(a.known_zero);
    assert_eq!(z.counts().free_zeroed, 0);
    z.free(a.pfn, 10, FreeHint::None, &mut ram).unwrap();
    let b = free_block(&z, 0);
    assert!(!b.reported && !b.zeroed);
    let again = z.alloc(10, AllocFlags::ZERO, &mut ram).unwrap();
    assert!(!again.known_zero);
    assert_eq!(z.stat().pages_zeroed, 1024);
    assert!(ram.is_zero(again.pfn, 1024));
}

#[test]
fn zero_allocation_zeroes_only_unknown_blocks() {
    let (mut z, mut ram) = zone(MIB4, Config::default());
    let a = z.alloc(3, AllocFlags::ZERO, &mut ram).unwrap();
    assert!(!a.known_zero);
    assert!(ram.is_zero(a.pfn, 8));
    assert_eq!((z.stat().pages_zeroed, z.stat().pages_zero_skipped), (8, 0));
    let fills = ram.fills;
    let b = z.alloc(3, AllocFlags::NONE, &mut ram).unwrap();
    assert!(!b.known_zero);
    assert_eq!(ram.fills, fills, "a plain allocation never writes memory");
}

#[test]
fn init_on_free_makes_freed_blocks_known_zero() {
    let cfg = Config {
        init_on_free: true,
        ..Config::default()
    };
    let (mut z, mut ram) = zone(MIB4, cfg);
    let a = z.alloc(0, AllocFlags::NONE, &mut ram).unwrap();
    ram.write(a.pfn, 1, 0x42);
    z.free(a.pfn, 0, FreeHint::None, &mut ram).unwrap();
    assert!(ram.is_zero(a.pfn, 1));
    assert_eq!(z.stat().pages_init_on_free, 1);
    // The zeroed frame merged with dirty buddies: not zeroed. Take it alone instead.
    let (mut z, mut ram) = zone(MIB4, cfg);
    let a = z.alloc(0, AllocFlags::NONE, &mut ram).unwrap();
    let b = z.alloc(0, AllocFlags::NONE, &mut ram).unwrap();
    z.free(a.pfn, 0, FreeHint::None, &mut ram).unwrap();
    assert!(free_block(&z, a.pfn.0).zeroed);
    let c = z.alloc(0, AllocFlags::ZERO, &mut ram).unwrap();
    assert_eq!((c.pfn, c.known_zero), (a.pfn, true));
    assert_eq!(z.stat().pages_zero_skipped, 1);
    let _ = b;
}

#[test]
fn poisoning_with_zero_is_a_zero_source_and_other_values_are_not() {
    let cfg = Config {
        poison: Some(0),
        ..Config::default()
    };
    let (mut z, mut ram) = zone(MIB4, cfg);
    let a = z.alloc(0, AllocFlags::NONE, &mut ram).unwrap();
    let _b = z.alloc(0, AllocFlags::NONE, &mut ram).unwrap();
    z.free(a.pfn, 0, FreeHint::None, &mut ram).unwrap();
    assert!(free_block(&z, a.pfn.0).zeroed && ram.is_zero(a.pfn, 1));

    let cfg = Config {
        poison: Some(0xaa),
        ..Config::default()
    };
    let (mut z, mut ram) = zone(MIB4, cfg);
    let a = z.alloc(0, AllocFlags::NONE, &mut ram).unwrap();
    let _b = z.alloc(0, AllocFlags::NONE, &mut ram).unwrap();
    z.free(a.pfn, 0, FreeHint::None, &mut ram).unwrap();
    assert!(!free_block(&z, a.pfn.0).zeroed);
    assert_eq!(ram.frames[a.pfn.0 as usize], 0xaa);
    assert_eq!(z.stat().pages_poisoned, 1);
}

#[test]
fn deflated_pages_are_reported_and_zeroed_only_through_the_gate() {
    for (on_inflate, confidential, poison, expect_zeroed) in [
        (true, false, None, true),
        (true, false, Some(0), true),
        (false, false, None, false),
        (true, true, None, false),
        (true, false, Some(0x5a), false),
    ] {
        let cfg = Config {
            confidential,
            poison,
            ..Config::default()
        };
        let (mut z, mut ram) = zone(MIB4, cfg);
        z.set_device_init(DeviceInit {
            reported: true,
            on_inflate,
        });
        let a = z.alloc(0, AllocFlags::NONE, &mut ram).unwrap();
        let _b = z.alloc(0, AllocFlags::NONE, &mut ram).unwrap();
        z.free(
            a.pfn,
            0,
            FreeHint::Deflated {
                device_zeroed: true,
            },
            &mut ram,
        )
        .unwrap();
        let blk = free_block(&z, a.pfn.0);
        let poisoned = poison.is_some() && !expect_zeroed;
        // A poisoned page was written on free: its backing is resident again, not reported.
        assert_eq!(
            blk.reported, !poisoned,
            "{on_inflate} {confidential} {poison:?}"
        );
        // Poison 0 fills with zero, so the page is zero either way.
        assert_eq!(
            blk.zeroed, expect_zeroed,
            "{on_inflate} {confidential} {poison:?}"
        );
        assert_eq!(z.stat().pages_deflated, 1);
    }
}

#[test]
fn trust_gate_ignores_zeroed_answers_it_cannot_believe() {
    for (reported, confidential, poison, believed) in [
        (true, false, None, true),
        (true, false, Some(0), true),
        (false, false, None, false),
        (true, true, None, false),
        (true, false, Some(0xaa), false),
    ] {
        let cfg = Config {
            confidential,
            poison,
            ..Config::default()
        };
        let (mut z, mut ram) = zone(2 * MIB4, cfg);
        z.set_device_init(DeviceInit {
            reported,
            on_inflate: false,
        });
        // A lying device: says zeroed, zeroes nothing. Only a trusted device is believed.
        let pass = z.report_flush(&mut Device::with(
            &mut ram,
            ReportOutcome::ReportedZeroed,
            false,
        ));
        assert_eq!(pass.pages_reported, 2048);
        assert_eq!(pass.pages_zeroed, if believed { 2048 } else { 0 });
        assert_eq!(
            z.stat().pages_zeroed_untrusted,
            if believed { 0 } else { 2048 }
        );
        let a = z.alloc(10, AllocFlags::ZERO, &mut ram).unwrap();
        assert_eq!(a.known_zero, believed);
        if !believed {
            assert!(
                ram.is_zero(a.pfn, 1024),
                "an untrusted claim must not skip zeroing"
            );
        }
    }
}

#[test]
fn isolated_blocks_are_never_allocated() {
    let (mut z, mut ram) = zone(2 * MIB4, Config::default());
    let batch = z.report_take(REPORTING_CAPACITY);
    assert_eq!(batch.len(), 2);
    assert_eq!(z.counts().isolated, 2048);
    assert_eq!(
        z.alloc(0, AllocFlags::NONE, &mut ram),
        Err(AllocError::OutOfMemory(0))
    );
    // Completing puts them back: reported, and zeroed only when confirmed and trusted.
    let pass = z.report_complete(
        batch,
        &[ReportOutcome::Reported, ReportOutcome::ReportedZeroed],
    );
    assert_eq!((pass.pages_reported, pass.pages_zeroed), (2048, 0)); // no DEVICE_INIT_REPORTED
    assert_eq!(z.counts().isolated, 0);
    assert_eq!(z.counts().free_reported, 2048);
    assert!(z.alloc(0, AllocFlags::NONE, &mut ram).is_ok());
    z.verify().unwrap();
}

#[test]
fn failed_blocks_go_back_unreported_and_keep_their_zeroed_flag() {
    let cfg = Config {
        init_on_free: true,
        ..Config::default()
    };
    let (mut z, mut ram) = zone(MIB4, cfg);
    let a = z.alloc(10, AllocFlags::NONE, &mut ram).unwrap();
    z.free(a.pfn, 10, FreeHint::None, &mut ram).unwrap(); // zeroed by init_on_free
    let batch = z.report_take(REPORTING_CAPACITY);
    let pass = z.report_complete(batch, &[]); // a missing answer is a failure
    assert_eq!(pass.pages_failed, 1024);
    let b = free_block(&z, 0);
    assert!(!b.reported && b.zeroed);
    assert_eq!(
        z.report_take(REPORTING_CAPACITY).len(),
        1,
        "a failed block is a candidate again"
    );
}

#[test]
fn a_forged_or_foreign_batch_cannot_corrupt_the_zone() {
    let (mut z, _) = zone(2 * MIB4, Config::default());
    let (mut other, _) = zone(4 * MIB4, Config::default());
    let foreign = other.report_take(REPORTING_CAPACITY);
    assert_eq!(foreign.len(), 4);
    let before = z.counts();
    z.report_complete(foreign, &[ReportOutcome::ReportedZeroed; 4]);
    assert_eq!(z.counts(), before);
    z.verify().unwrap();
}

#[test]
fn the_device_sets_the_batch_capacity() {
    // 2 GiB: 512 order-10 blocks.
    let frames = 512 * MIB4;
    let (mut z, mut ram) = zone(frames, Config::default());
    trusting(&mut z);
    let mut dev = Device::zeroing(&mut ram);
    // The upstream driver: its reporting ring's size, one chain per block.
    dev.capacity = 256;
    let pass = z.report_flush(&mut dev);
    assert_eq!((pass.requests, dev.largest_call), (2, 256));
    assert_eq!(z.counts().free_reported, frames as u64);

    // A larger ring is clamped to what the engine holds; the stock 32 stays available.
    for (asked, got, requests) in [(4096, REPORTING_CAPACITY_MAX, 2), (32, 32, 16), (0, 1, 512)] {
        let (mut z, mut ram) = zone(frames, Config::default());
        let mut dev = Device::zeroing(&mut ram);
        dev.capacity = asked;
        let pass = z.report_flush(&mut dev);
        assert_eq!(
            (pass.requests, dev.largest_call),
            (requests, got),
            "{asked}"
        );
    }
}

#[test]
fn the_pass_budget_scales_with_the_capacity() {
    let cfg = Config {
        reporting_delay: 0,
        ..Config::default()
    };
    // 8 GiB: 2048 order-10 blocks; budget ceil(2048 / (capacity * 16)) requests.
    let frames = 2048 * MIB4;
    for (capacity, budget) in [(32, 4), (128, 1)] {
        let (mut z, mut ram) = zone(frames, cfg);
        let mut dev = Device::zeroing(&mut ram);
        dev.capacity = capacity;
        let pass = z.report_pass(0, &mut dev);
        assert_eq!(pass.requests, budget, "capacity {capacity}");
        assert_eq!(pass.pages_reported, budget * capacity as u64 * MIB4 as u64);
    }
}

#[test]
fn reporting_waits_for_the_delay_and_respects_the_budget() {
    let cfg = Config {
        reporting_delay: 2000,
        ..Config::default()
    };
    // 2 GiB: 512 order-10 blocks, budget ceil(512 / (32 * 16)) = 1 request per pass.
    let frames = 512 * MIB4;
    let (mut z, mut ram) = zone(frames, cfg);
    trusting(&mut z);
    let mut dev = Device::zeroing(&mut ram);
    assert_eq!(
        z.report_pass(0, &mut dev).requests,
        0,
        "the delay starts now"
    );
    assert_eq!(z.report_pass(1999, &mut dev).requests, 0);
    let pass = z.report_pass(2000, &mut dev);
    assert_eq!(
        (pass.requests, pass.pages_reported, pass.more),
        (1, 32 * 1024, true)
    );
    assert_eq!(
        z.report_pass(2001, &mut dev).requests,
        0,
        "the next pass waits again"
    );
    let pass = z.report_pass(4000, &mut dev);
    assert_eq!(pass.requests, 1);
    let pass = z.report_flush(&mut dev);
    assert_eq!((pass.requests, pass.more), (14, false));
    assert_eq!(z.counts().free_reported, frames as u64);
    assert_eq!(z.unreported_free_pages(), 0);
    assert_eq!(
        z.report_pass(100_000, &mut dev).requests,
        0,
        "idle until more frees"
    );
    // A free of a large block asks for a new pass; a small one does not.
    let small = z.alloc(0, AllocFlags::NONE, dev.ram).unwrap();
    let _neighbour = z.alloc(0, AllocFlags::NONE, dev.ram).unwrap();
    let big = z.alloc(10, AllocFlags::NONE, dev.ram).unwrap();
    z.report_flush(&mut dev);
    z.free(small.pfn, 0, FreeHint::None, dev.ram).unwrap();
    assert!(!z.report_due(200_000));
    z.free(big.pfn, 10, FreeHint::None, dev.ram).unwrap();
    assert!(!z.report_due(300_000));
    assert!(z.report_due(302_000));
}

#[test]
fn a_failing_device_stops_the_flush() {
    let (mut z, mut ram) = zone(4 * MIB4, Config::default());
    let pass = z.report_flush(&mut Device::with(&mut ram, ReportOutcome::Failed, false));
    assert_eq!(
        (pass.requests, pass.pages_failed, pass.more),
        (1, 4096, true)
    );
    assert_eq!(z.counts().free_reported, 0);
}

#[test]
fn only_blocks_of_the_reporting_order_are_reported() {
    let (mut z, mut ram) = zone(MIB4, Config::default());
    let mut held = Vec::new();
    // Leave only order < 9 blocks free.
    for _ in 0..2 {
        held.push(z.alloc(8, AllocFlags::NONE, &mut ram).unwrap());
    }
    held.push(z.alloc(9, AllocFlags::NONE, &mut ram).unwrap());
    let mut dev = Device::zeroing(&mut ram);
    let pass = z.report_flush(&mut dev);
    assert_eq!(pass.requests, 0);
    z.free(held[2].pfn, 9, FreeHint::None, dev.ram).unwrap();
    let pass = z.report_flush(&mut dev);
    assert_eq!(pass.pages_reported, 512);
    assert!(dev.seen.iter().all(|b| b.order >= PAGEBLOCK_ORDER));
}

#[test]
fn linux_placement_hands_out_reported_blocks_last() {
    let (mut z, mut ram) = zone(2 * MIB4, Config::default());
    trusting(&mut z);
    let a = z.alloc(10, AllocFlags::NONE, &mut ram).unwrap();
    z.report_flush(&mut Device::zeroing(&mut ram)); // the other 4 MiB: reported + zeroed
    z.free(a.pfn, 10, FreeHint::None, &mut ram).unwrap(); // dirty, at the head
    let b = z.alloc(10, AllocFlags::ZERO, &mut ram).unwrap();
    assert_eq!(
        (b.pfn, b.known_zero),
        (a.pfn, false),
        "Linux placement ignores zeroness"
    );
}

#[test]
fn zero_aware_placement_matches_zero_allocations_with_zeroed_blocks() {
    let cfg = Config {
        placement: Placement::ZeroAware,
        ..Config::default()
    };
    let (mut z, mut ram) = zone(2 * MIB4, cfg);
    trusting(&mut z);
    let dirty: Vec<_> = (0..4)
        .map(|_| z.alloc(0, AllocFlags::NONE, &mut ram).unwrap())
        .collect();
    let _keep = z.alloc(0, AllocFlags::NONE, &mut ram).unwrap();
    z.report_flush(&mut Device::zeroing(&mut ram));
    for d in &dirty {
        z.free(d.pfn, 0, FreeHint::None, &mut ram).unwrap();
    }
    // Dirty order-0 blocks are free, yet ZERO allocations take known-zero ones...
    for _ in 0..8 {
        assert!(z.alloc(0, AllocFlags::ZERO, &mut ram).unwrap().known_zero);
    }
    // ...and plain allocations take the dirty ones first.
    let plain = z.alloc(0, AllocFlags::NONE, &mut ram).unwrap();
    assert!(!plain.known_zero);
    z.verify().unwrap();
    assert_eq!(z.stat().zero_hit_rate_order0(), 1.0);
}

#[test]
fn huge_pool_pages_are_reported_and_zero_tracked() {
    let cfg = Config {
        placement: Placement::ZeroAware,
        ..Config::default()
    };
    let (mut z, mut ram) = zone(4 * MIB4, cfg);
    trusting(&mut z);
    assert_eq!(z.pool_resize(4), 4);
    assert_eq!(z.counts().pool, 4 * 512);
    let mut dev = Device::zeroing(&mut ram);
    let pass = z.report_flush(&mut dev);
    assert_eq!(pass.pages_reported, 4096);
    assert_eq!(
        dev.seen
            .iter()
            .filter(|b| b.order == HUGE_PAGE_ORDER)
            .count(),
        4
    );
    let h = z.alloc_huge(AllocFlags::ZERO, dev.ram).unwrap();
    assert!(h.known_zero);
    dev.ram.write(h.pfn, 512, 7);
    z.free_huge(h.pfn, FreeHint::None, dev.ram).unwrap();
    // The dirty page is not zero; the other three are and ZERO allocations prefer them.
    for _ in 0..3 {
        assert!(z.alloc_huge(AllocFlags::ZERO, dev.ram).unwrap().known_zero);
    }
    let last = z.alloc_huge(AllocFlags::ZERO, dev.ram).unwrap();
    assert!(!last.known_zero && dev.ram.is_zero(last.pfn, 512));
    assert_eq!(
        z.alloc_huge(AllocFlags::NONE, dev.ram),
        Err(AllocError::OutOfMemory(9))
    );
    assert_eq!(
        z.free(last.pfn, 9, FreeHint::None, dev.ram),
        Err(FreeError::WrongPool(last.pfn))
    );
    z.free_huge(last.pfn, FreeHint::None, dev.ram).unwrap();
    // A freed huge page asks for reporting like a buddy block.
    assert_eq!(z.report_flush(&mut dev).pages_reported, 512);
    assert_eq!(z.pool_resize(0), 3, "allocated huge pages stay in the pool");
    z.verify().unwrap();
}

#[test]
fn pool_pages_keep_their_flags_when_the_pool_shrinks() {
    let (mut z, mut ram) = zone(MIB4, Config::default());
    trusting(&mut z);
    z.report_flush(&mut Device::zeroing(&mut ram));
    assert_eq!(z.pool_resize(2), 2);
    assert_eq!(z.pool_resize(0), 0);
    let b = free_block(&z, 0);
    assert_eq!((b.order, b.reported, b.zeroed), (10, true, true));
    z.verify().unwrap();
}

#[test]
fn holes_are_never_allocated_or_merged_across() {
    // Two 4 MiB ranges with a 4 MiB hole between them.
    let mut z = Zone::new(
        vec![FrameMeta::EMPTY; 3 * MIB4],
        Pfn(0x1000),
        Config::default(),
    );
    z.add_memory(Pfn(0x1000), MIB4 as u64, false).unwrap();
    z.add_memory(Pfn(0x1000 + 2 * MIB4 as u64), MIB4 as u64, false)
        .unwrap();
    let mut ram = Ram::new(0x1000, 3 * MIB4, 1);
    let mut got = Vec::new();
    while let Ok(a) = z.alloc(0, AllocFlags::NONE, &mut ram) {
        got.push(a.pfn.0);
    }
    assert_eq!(got.len(), 2 * MIB4);
    assert!(got
        .iter()
        .all(|&p| !(0x1000 + MIB4 as u64..0x1000 + 2 * MIB4 as u64).contains(&p)));
    for p in got {
        z.free(Pfn(p), 0, FreeHint::None, &mut ram).unwrap();
    }
    assert_eq!(z.nr_free()[10], 2);
    let hole = Pfn(0x1000 + MIB4 as u64);
    assert_eq!(
        z.free(hole, 0, FreeHint::None, &mut ram),
        Err(FreeError::NotAllocated(hole))
    );
    assert_eq!(
        z.add_memory(Pfn(0x1000), 1, false),
        Err(MemoryError::Overlap(Pfn(0x1000)))
    );
    assert!(matches!(
        z.add_memory(Pfn(0), 1, false),
        Err(MemoryError::OutOfZone { .. })
    ));
    assert!(matches!(
        z.add_memory(Pfn(0x1000), u64::MAX, false),
        Err(MemoryError::OutOfZone { .. })
    ));
    z.verify().unwrap();
}

#[test]
fn unaligned_memory_is_split_into_aligned_blocks() {
    let mut z = Zone::new(vec![FrameMeta::EMPTY; 3000], Pfn(7), Config::default());
    z.add_memory(Pfn(7), 3000, false).unwrap();
    assert_eq!(z.counts().free, 3000);
    z.verify().unwrap();
    assert!(z.blocks().all(|b| b.pfn.0 % (1 << b.order) == 0));
}

#[test]
fn bad_frees_are_refused_and_change_nothing() {
    let (mut z, mut ram) = zone(2 * MIB4, Config::default());
    let a = z.alloc(2, AllocFlags::NONE, &mut ram).unwrap();
    let h = {
        z.pool_resize(1);
        z.alloc_huge(AllocFlags::NONE, &mut ram).unwrap()
    };
    let before = (z.counts(), z.nr_free());
    let cases = [
        (a.pfn, 11, FreeError::OrderTooLarge(11)),
        (a.pfn, 200, FreeError::OrderTooLarge(200)),
        (Pfn(1 << 40), 0, FreeError::OutOfZone(Pfn(1 << 40))),
        (Pfn(u64::MAX), 0, FreeError::OutOfZone(Pfn(u64::MAX))),
        (
            Pfn(a.pfn.0 + 1),
            2,
            FreeError::Misaligned {
                pfn: Pfn(a.pfn.0 + 1),
                order: 2,
            },
        ),
        (
            Pfn(a.pfn.0 + 1),
            0,
            FreeError::NotAllocated(Pfn(a.pfn.0 + 1)),
        ),
        (
            a.pfn,
            1,
            FreeError::OrderMismatch {
                pfn: a.pfn,
                allocated: 2,
                given: 1,
            },
        ),
        (
            Pfn(a.pfn.0 + 4),
            2,
            FreeError::NotAllocated(Pfn(a.pfn.0 + 4)),
        ),
        (h.pfn, 9, FreeError::WrongPool(h.pfn)),
    ];
    for (pfn, order, err) in cases {
        assert_eq!(z.free(pfn, order, FreeHint::None, &mut ram), Err(err));
        assert_eq!((z.counts(), z.nr_free()), before);
        z.verify().unwrap();
    }
    assert_eq!(
        z.free_huge(a.pfn, FreeHint::None, &mut ram),
        Err(FreeError::WrongPool(a.pfn))
    );
    z.free(a.pfn, 2, FreeHint::None, &mut ram).unwrap();
    assert_eq!(
        z.free(a.pfn, 2, FreeHint::None, &mut ram),
        Err(FreeError::NotAllocated(a.pfn)),
        "double free"
    );
    z.free_huge(h.pfn, FreeHint::None, &mut ram).unwrap();
    assert_eq!(
        z.free_huge(h.pfn, FreeHint::None, &mut ram),
        Err(FreeError::NotAllocated(h.pfn))
    );
    assert_eq!(
        z.alloc(11, AllocFlags::NONE, &mut ram),
        Err(AllocError::OrderTooLarge(11))
    );
    z.verify().unwrap();
    // Errors print what went wrong.
    let msg = FreeError::NotAllocated(Pfn(0x42)).to_string();
    assert!(msg.contains("0x42") && msg.contains("double free"), "{msg}");
}

#[test]
fn counters_and_bytes() {
    let (mut z, mut ram) = zone(MIB4, Config::default());
    trusting(&mut z);
    z.report_flush(&mut Device::zeroing(&mut ram));
    z.alloc(0, AllocFlags::ZERO, &mut ram).unwrap();
    let a = z.alloc(1, AllocFlags::NONE, &mut ram).unwrap();
    z.free(a.pfn, 1, FreeHint::None, &mut ram).unwrap();
    z.alloc(1, AllocFlags::ZERO, &mut ram).unwrap();
    let s = *z.stat();
    assert_eq!(
        (
            s.alloc_blocks,
            s.free_blocks,
            s.zero_allocs,
            s.zero_alloc_hits
        ),
        (3, 1, 2, 1)
    );
    assert_eq!((s.pages_zero_skipped, s.pages_zeroed), (1, 2));
    assert_eq!((s.bytes_zero_skipped(), s.bytes_zeroed()), (4096, 8192));
    assert_eq!(
        (s.report_requests, s.pages_reported, s.pages_reported_zeroed),
        (1, 1024, 1024)
    );
}
