//! Free page reporting with `DEVICE_INIT_REPORTED`, on a mock split queue and a recording
//! discard backend.

mod common;

use common::*;
use prezero_device::protocol::features::{self, Features};
use prezero_device::protocol::queues::QueueRole;
use prezero_device::{BalloonDevice, DiscardMode, ErrorKind, RecordingDiscard, RegionPolicy};
use vm_memory::GuestAddress;

const FOUR_MIB: u32 = 4 << 20;

/// Reporting without stats: the reporting queue is queue 2.
fn reporting_features() -> Features {
    Features::EMPTY
        .with(features::REPORTING)
        .with(features::DEVICE_INIT_REPORTED)
        .with(features::PAGE_POISON)
        .with(features::VERSION_1)
}

fn process(dev: &mut BalloonDevice<RecordingDiscard>, drv: &mut Driver) -> bool {
    let index = dev.queue_roles().index(QueueRole::Reporting).unwrap();
    dev.process_queue(index, &mut drv.queue, drv.mem).unwrap()
}

#[test]
fn reporting_queue_index_is_dense() {
    let dev = device(reporting_features());
    assert_eq!(dev.queue_role(2), Some(QueueRole::Reporting));
    let dev = device(reporting_features().with(features::STATS_VQ));
    assert_eq!(dev.queue_role(2), Some(QueueRole::Stats));
    assert_eq!(dev.queue_role(3), Some(QueueRole::Reporting));
}

#[test]
fn zeroed_chain_gets_full_length() {
    let m = mem();
    let mut dev = device(reporting_features());
    let mut drv = Driver::new(&m, 0, 16);
    let head = drv.add(&[w(REGION_C, FOUR_MIB / 2)]);
    assert!(process(&mut dev, &mut drv));
    assert_eq!(drv.used_idx(), 1);
    assert_eq!(drv.last_used(), (u32::from(head), FOUR_MIB / 2));
    let ops = &dev.discard_backend().ops;
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].region_start, GuestAddress(REGION_C));
    assert_eq!((ops[0].offset, ops[0].len), (0, u64::from(FOUR_MIB / 2)));
    let m = dev.metrics();
    assert_eq!(m.reporting_requests, 1);
    assert_eq!(m.discarded_bytes, u64::from(FOUR_MIB / 2));
    assert_eq!(m.zeroed_bytes, u64::from(FOUR_MIB / 2));
    assert_eq!(m.reported_chains_zeroed, 1);
    assert_eq!(m.total_errors(), 0);
}

#[test]
fn without_the_feature_used_length_is_zero_but_memory_is_discarded() {
    let m = mem();
    let mut dev = device(reporting_features().without(features::DEVICE_INIT_REPORTED));
    let mut drv = Driver::new(&m, 0, 16);
    drv.add(&[w(REGION_C, 0x10000)]);
    process(&mut dev, &mut drv);
    assert_eq!(drv.last_used().1, 0);
    assert_eq!(dev.discard_backend().discarded_bytes(), 0x10000);
    assert_eq!(dev.metrics().zeroed_bytes, 0);
}

#[test]
fn per_chain_answers_for_single_block_chains() {
    let m = mem();
    // Region B cannot zero: its blocks are discarded but never claimed.
    let discard = RecordingDiscard::new().with_region_policy(
        GuestAddress(REGION_B),
        RegionPolicy {
            mode: DiscardMode::NonZeroing,
            host_page_size: 4096,
        },
    );
    let mut dev = device_with(discard, reporting_features());
    let mut drv = Driver::new(&m, 0, 16);
    drv.add(&[w(REGION_C, 0x20000)]);
    drv.add(&[w(REGION_B, 0x20000)]);
    drv.add(&[w(REGION_C + 0x40000, 0x20000)]);
    process(&mut dev, &mut drv);
    assert_eq!(drv.used_idx(), 3);
    assert_eq!(drv.used(0).1, 0x20000);
    assert_eq!(drv.used(1).1, 0);
    assert_eq!(drv.used(2).1, 0x20000);
    assert_eq!(dev.discard_backend().discard_count(), 3);
}

#[test]
fn stock_linux_chain_of_32_blocks_merges_adjacent_ranges() {
    let m = mem();
    let mut dev = device(reporting_features());
    let mut drv = Driver::new(&m, 0, 64);
    // 32 blocks of 64 KiB: two contiguous runs of 16, given out of order.
    let mut bufs = Vec::new();
    for i in (0..16u64).rev() {
        bufs.push(w(REGION_C + i * 0x10000, 0x10000));
        bufs.push(w(REGION_B + i * 0x10000, 0x10000));
    }
    drv.add(&bufs);
    process(&mut dev, &mut drv);
    assert_eq!(drv.last_used().1, 32 * 0x10000);
    let ops = &dev.discard_backend().ops;
    assert_eq!(ops.len(), 2, "one discard per contiguous range: {ops:?}");
    assert_eq!(dev.metrics().discard_calls, 2);
}

#[test]
fn range_spanning_adjacent_regions_is_split_and_claimed() {
    let m = mem();
    let mut dev = device(reporting_features());
    let mut drv = Driver::new(&m, 0, 16);
    drv.add(&[w(REGION_B - 0x10000, 0x20000)]);
    process(&mut dev, &mut drv);
    assert_eq!(drv.last_used().1, 0x20000);
    let ops = &dev.discard_backend().ops;
    assert_eq!(ops.len(), 2);
    assert_eq!(
        (ops[0].region_start.0, ops[0].offset),
        (0, REGION_B - 0x10000)
    );
    assert_eq!((ops[1].region_start.0, ops[1].offset), (REGION_B, 0));
}

#[test]
fn failing_discard_claims_nothing() {
    let m = mem();
    let mut dev = device_with(RecordingDiscard::new().failing(), reporting_features());
    let mut drv = Driver::new(&m, 0, 16);
    drv.add(&[w(REGION_C, 0x10000)]);
    process(&mut dev, &mut drv);
    assert_eq!(drv.last_used().1, 0);
    assert_eq!(errors(&dev, ErrorKind::DiscardFailed), 1);
    assert_eq!(dev.metrics().discarded_bytes, 0);
}

#[test]
fn discard_disabled_discards_and_claims_nothing() {
    let m = mem();
    let discard = RecordingDiscard::new().with_default_policy(RegionPolicy {
        mode: DiscardMode::Disabled,
        host_page_size: 4096,
    });
    let mut dev = device_with(discard, reporting_features());
    let mut drv = Driver::new(&m, 0, 16);
    drv.add(&[w(REGION_C, 0x10000)]);
    process(&mut dev, &mut drv);
    assert_eq!(drv.last_used().1, 0);
    assert!(dev.discard_backend().ops.is_empty());
}

fn huge_device() -> BalloonDevice<RecordingDiscard> {
    let discard = RecordingDiscard::new()
        .with_region_policy(GuestAddress(REGION_C), RegionPolicy::zeroing(2 * MIB));
    device_with(discard, reporting_features())
}

#[test]
fn element_covering_part_of_a_host_huge_page_is_not_discarded_nor_claimed() {
    let m = mem();
    let mut dev = huge_device();
    let mut drv = Driver::new(&m, 0, 16);
    drv.add(&[w(REGION_C + 0x1000, 0x10000)]);
    process(&mut dev, &mut drv);
    assert_eq!(drv.last_used().1, 0);
    assert!(dev.discard_backend().ops.is_empty());
    assert_eq!(errors(&dev, ErrorKind::PartialHostPage), 1);
}

#[test]
fn element_with_whole_and_partial_huge_pages_discards_only_whole_ones() {
    let m = mem();
    let mut dev = huge_device();
    let mut drv = Driver::new(&m, 0, 16);
    // 3 MiB from the start of region C: one whole 2 MiB page, half of the next.
    drv.add(&[w(REGION_C, 3 * MIB as u32)]);
    process(&mut dev, &mut drv);
    assert_eq!(drv.last_used().1, 0);
    let ops = &dev.discard_backend().ops;
    assert_eq!(ops.len(), 1);
    assert_eq!((ops[0].offset, ops[0].len), (0, 2 * MIB));
    // A whole huge page is claimed.
    drv.add(&[w(REGION_C, 2 * MIB as u32)]);
    process(&mut dev, &mut drv);
    assert_eq!(drv.last_used().1, 2 * MIB as u32);
}

#[test]
fn nonzero_poison_means_no_discard_and_no_claim() {
    let m = mem();
    let mut dev = device(reporting_features());
    dev.write_config(12, &0xaaaa_aaaau32.to_le_bytes());
    let mut drv = Driver::new(&m, 0, 16);
    drv.add(&[w(REGION_C, 0x10000)]);
    process(&mut dev, &mut drv);
    assert_eq!(drv.last_used().1, 0);
    assert!(dev.discard_backend().ops.is_empty());
    assert_eq!(dev.metrics().poison_skipped, 1);
    // poison_val 0 means zero-filled free pages: zeros are what the guest expects.
    dev.write_config(12, &0u32.to_le_bytes());
    drv.add(&[w(REGION_C, 0x10000)]);
    process(&mut dev, &mut drv);
    assert_eq!(drv.last_used().1, 0x10000);
}

#[test]
fn poison_without_page_poison_negotiated_is_refused() {
    let mut dev = device(reporting_features().without(features::PAGE_POISON));
    assert_eq!(dev.write_config(12, &1u32.to_le_bytes()).read_only_bytes, 1);
    assert_eq!(dev.poison_val(), None);
    assert_eq!(errors(&dev, ErrorKind::ConfigWrite), 1);
}

#[test]
fn used_ring_inside_reported_range_is_not_claimed() {
    let m = mem();
    let mut dev = device(reporting_features());
    let mut drv = Driver::new(&m, 0, 16);
    // The driver reports the page holding its own used ring: the device writes there after.
    drv.add(&[w(0, 0x1000)]);
    process(&mut dev, &mut drv);
    assert_eq!(drv.last_used().1, 0);
    assert_eq!(dev.discard_backend().discard_count(), 1);
}

#[test]
fn readable_buffer_rejects_the_whole_chain() {
    let m = mem();
    let mut dev = device(reporting_features());
    let mut drv = Driver::new(&m, 0, 16);
    drv.add(&[w(REGION_C, 0x1000), r(REGION_C + 0x1000, 0x1000)]);
    process(&mut dev, &mut drv);
    assert_eq!(drv.last_used().1, 0);
    assert!(dev.discard_backend().ops.is_empty());
    assert_eq!(errors(&dev, ErrorKind::WrongDirection), 1);
}

#[test]
fn indirect_chain_is_followed() {
    let m = mem();
    let mut dev = device(reporting_features());
    let mut drv = Driver::new(&m, 0, 16);
    // Indirect table of two writable descriptors at BUFS.
    let table = Driver::new(&m, BUFS, 16);
    table.desc(0, REGION_C, 0x1000, DESC_F_WRITE | DESC_F_NEXT, 1);
    table.desc(1, REGION_C + 0x1000, 0x1000, DESC_F_WRITE, 0);
    drv.desc(0, BUFS, 32, DESC_F_INDIRECT, 0);
    drv.publish(0);
    process(&mut dev, &mut drv);
    assert_eq!(drv.last_used().1, 0x2000);
    assert_eq!(dev.discard_backend().discard_count(), 1);
    // The shape is counted: one chain, indirect, of two buffers.
    let m = dev.metrics();
    assert_eq!(
        (m.reporting_requests, m.indirect_chains, m.reporting_buffers),
        (1, 1, 2)
    );
    // A direct chain of three buffers is not counted as indirect.
    drv.skip_to(1);
    drv.add(&[
        w(REGION_C + 0x4000, 0x1000),
        w(REGION_C + 0x5000, 0x1000),
        w(REGION_C + 0x6000, 0x1000),
    ]);
    process(&mut dev, &mut drv);
    let m = dev.metrics();
    assert_eq!(
        (m.reporting_requests, m.indirect_chains, m.reporting_buffers),
        (2, 1, 5)
    );
}

#[test]
fn repeated_passes_keep_working() {
    let m = mem();
    let mut dev = device(reporting_features());
    let mut drv = Driver::new(&m, 0, 4);
    // More chains than the queue size, over several kicks: the ring wraps.
    for pass in 0..10u64 {
        let head = drv.add(&[w(REGION_C + pass * 0x1000, 0x1000)]);
        process(&mut dev, &mut drv);
        assert_eq!(drv.last_used(), (u32::from(head), 0x1000));
    }
    assert_eq!(drv.used_idx(), 10);
}

#[test]
fn upstream_pattern_chains_of_one_drain_share_one_discard() {
    let m = mem();
    let mut dev = device(reporting_features());
    let mut drv = Driver::new(&m, 0, 64);
    // The upstream driver: one chain per block, 64 blocks of 64 KiB covering region C, given in
    // descending order, then one kick.
    let heads: Vec<u16> = (0..64u64)
        .rev()
        .map(|i| drv.add(&[w(REGION_C + i * 0x10000, 0x10000)]))
        .collect();
    assert!(process(&mut dev, &mut drv));
    assert_eq!(
        dev.metrics().discard_calls,
        1,
        "one contiguous range, one call"
    );
    assert_eq!(dev.discard_backend().discarded_bytes(), 4 * MIB);
    // Every chain is answered in this drain, with its own length, in the order it came.
    assert_eq!(drv.used_idx(), 64);
    for (i, head) in heads.iter().enumerate() {
        assert_eq!(drv.used(i as u16), (u32::from(*head), 0x10000));
    }
    let metrics = dev.metrics();
    assert_eq!(metrics.reporting_drains, 1);
    assert_eq!(metrics.reported_chains_zeroed, 64);
}

#[test]
fn a_failing_chain_of_the_drain_answers_zero_and_the_others_their_length() {
    let m = mem();
    let mut dev = device(reporting_features());
    let mut drv = Driver::new(&m, 0, 16);
    drv.add(&[w(REGION_C, 0x1000)]);
    // Readable: rejected whole, nothing of it discarded.
    drv.add(&[r(REGION_C + 0x1000, 0x1000)]);
    // Its second buffer crosses the hole: the first is discarded but the chain answers 0.
    drv.add(&[w(REGION_C + 0x2000, 0x1000), w(HOLE - 0x1000, 0x2000)]);
    drv.add(&[w(REGION_C + 0x3000, 0x1000)]);
    process(&mut dev, &mut drv);
    let used: Vec<u32> = (0..4).map(|i| drv.used(i).1).collect();
    assert_eq!(used, [0x1000, 0, 0, 0x1000]);
    // Chains 0 and 3 are not adjacent (chain 1's page is not discarded): two ranges.
    let ops: Vec<_> = dev
        .discard_backend()
        .ops
        .iter()
        .map(|o| (o.guest_start(), o.len))
        .collect();
    assert_eq!(ops, [(REGION_C, 0x1000), (REGION_C + 0x2000, 0x2000)]);
}

#[test]
fn chains_of_separate_kicks_are_not_merged_nor_delayed() {
    let m = mem();
    let mut dev = device(reporting_features());
    let mut drv = Driver::new(&m, 0, 16);
    drv.add(&[w(REGION_C, 0x1000)]);
    process(&mut dev, &mut drv);
    assert_eq!(drv.used_idx(), 1, "answered within its own drain");
    drv.add(&[w(REGION_C + 0x1000, 0x1000)]);
    process(&mut dev, &mut drv);
    assert_eq!(drv.used_idx(), 2);
    assert_eq!(dev.metrics().discard_calls, 2);
    assert_eq!(dev.metrics().reporting_drains, 2);
}

#[test]
fn a_drain_holding_the_range_limit_is_finished_early() {
    let m = mem();
    let mut options = prezero_device::DeviceOptions::default();
    options.limits.max_chain_descriptors = 4;
    let mut dev = BalloonDevice::new(options, RecordingDiscard::new()).unwrap();
    dev.ack_features(reporting_features().bits());
    let mut drv = Driver::new(&m, 0, 16);
    // Three chains of two adjacent blocks: the first two fill the limit of 4 ranges.
    for c in 0..3u64 {
        let at = REGION_C + c * 0x2000;
        drv.add(&[w(at, 0x1000), w(at + 0x1000, 0x1000)]);
    }
    process(&mut dev, &mut drv);
    assert_eq!(drv.used_idx(), 3);
    assert!((0..3).all(|i| drv.used(i).1 == 0x2000));
    assert_eq!(dev.metrics().reporting_drains, 2);
    assert_eq!(dev.metrics().discard_calls, 2);
}
