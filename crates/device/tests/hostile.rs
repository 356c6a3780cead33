//! Hostile guest input, one test each. For every case: no panic, no discard outside guest RAM,
//! no false "zeroed", the error counted, and the queue keeps working (a valid request queued
//! after the bad one is served correctly).

mod common;

use common::*;
use prezero_device::protocol::features::{self, Features};
use prezero_device::protocol::queues::QueueRole;
use prezero_device::{
    BalloonDevice, DeviceError, DeviceOptions, ErrorKind, RecordingDiscard, RegionPolicy,
};
use vm_memory::GuestAddress;

const PFNS: u64 = BUFS;
const BITMAP: u64 = BUFS + 0x8000;
const STATS: u64 = BUFS + 0x9000;

fn features() -> Features {
    Features::EMPTY
        .with(features::STATS_VQ)
        .with(features::REPORTING)
        .with(features::DEVICE_INIT_REPORTED)
        .with(features::DEVICE_INIT_ON_INFLATE)
        .with(features::VERSION_1)
}

fn run(dev: &mut BalloonDevice<RecordingDiscard>, role: QueueRole, drv: &mut Driver) {
    let index = dev.queue_roles().index(role).unwrap();
    dev.process_queue(index, &mut drv.queue, drv.mem).unwrap();
}

/// Every recorded discard lies in guest RAM.
fn assert_discards_inside_ram(dev: &BalloonDevice<RecordingDiscard>) {
    for op in &dev.discard_backend().ops {
        let start = op.guest_start();
        let end = start + op.len;
        let inside = (end <= 2 * MIB) || (start >= REGION_C && end <= RAM_END);
        assert!(inside, "discard outside guest RAM: {op:?}");
    }
}

/// A valid single-block report after the bad input is still answered "zeroed".
fn assert_reporting_still_works(dev: &mut BalloonDevice<RecordingDiscard>, drv: &mut Driver) {
    let before = drv.used_idx();
    let head = drv.add(&[w(REGION_C + 0x100000, 0x1000)]);
    run(dev, QueueRole::Reporting, drv);
    assert_eq!(drv.used_idx(), before.wrapping_add(1));
    assert_eq!(drv.last_used(), (u32::from(head), 0x1000));
}

fn report_one(bufs: &[Buf], kind: ErrorKind) {
    let m = mem();
    let mut dev = device(features());
    let mut drv = Driver::new(&m, 0, 16);
    drv.add(bufs);
    run(&mut dev, QueueRole::Reporting, &mut drv);
    assert_eq!(drv.used_idx(), 1);
    assert_eq!(drv.last_used().1, 0, "no false zeroed");
    assert!(dev.metrics().errors_of(kind) >= 1, "{kind} not counted");
    assert_eq!(dev.metrics().zeroed_bytes, 0);
    assert_discards_inside_ram(&dev);
    assert_reporting_still_works(&mut dev, &mut drv);
}

#[test]
fn report_range_past_the_end_of_ram() {
    report_one(&[w(RAM_END - 0x1000, 0x2000)], ErrorKind::OutOfRange);
}

#[test]
fn report_range_crossing_into_a_hole() {
    report_one(&[w(HOLE - 0x1000, 0x2000)], ErrorKind::OutOfRange);
}

#[test]
fn report_range_inside_a_hole() {
    report_one(&[w(HOLE + 0x1000, 0x1000)], ErrorKind::OutOfRange);
}

#[test]
fn report_range_whose_end_overflows() {
    report_one(&[w(u64::MAX - 0xfff, 0x2000)], ErrorKind::AddressOverflow);
}

#[test]
fn report_range_at_the_top_of_the_address_space() {
    report_one(&[w(u64::MAX - 0x1fff, 0x1000)], ErrorKind::OutOfRange);
}

#[test]
fn report_zero_length() {
    report_one(&[w(REGION_C, 0)], ErrorKind::ZeroLength);
}

#[test]
fn report_odd_length() {
    report_one(&[w(REGION_C, 0x1001)], ErrorKind::Unaligned);
}

#[test]
fn report_unaligned_address() {
    report_one(&[w(REGION_C + 0x800, 0x1000)], ErrorKind::Unaligned);
}

#[test]
fn report_readable_descriptor() {
    report_one(&[r(REGION_C, 0x1000)], ErrorKind::WrongDirection);
}

#[test]
fn report_one_bad_block_among_good_ones_claims_nothing() {
    let m = mem();
    let mut dev = device(features());
    let mut drv = Driver::new(&m, 0, 16);
    drv.add(&[
        w(REGION_C, 0x1000),
        w(HOLE, 0x1000),
        w(REGION_C + 0x4000, 0x1000),
    ]);
    run(&mut dev, QueueRole::Reporting, &mut drv);
    assert_eq!(drv.last_used().1, 0);
    // The good blocks are still discarded: the guest said they are free.
    assert_eq!(dev.discard_backend().discard_count(), 2);
    assert_discards_inside_ram(&dev);
    assert_reporting_still_works(&mut dev, &mut drv);
}

#[test]
fn report_covering_part_of_a_host_huge_page() {
    let m = mem();
    let discard = RecordingDiscard::new()
        .with_region_policy(GuestAddress(REGION_C), RegionPolicy::zeroing(2 * MIB));
    let mut dev = device_with(discard, features());
    let mut drv = Driver::new(&m, 0, 16);
    drv.add(&[w(REGION_C + 2 * MIB - 0x200000 / 2, 0x100000)]);
    run(&mut dev, QueueRole::Reporting, &mut drv);
    assert_eq!(drv.last_used().1, 0);
    assert!(dev.discard_backend().ops.is_empty());
    assert_eq!(errors(&dev, ErrorKind::PartialHostPage), 1);
    // A whole huge page after it is claimed.
    let head = drv.add(&[w(REGION_C + 2 * MIB, 2 * MIB as u32)]);
    run(&mut dev, QueueRole::Reporting, &mut drv);
    assert_eq!(drv.last_used(), (u32::from(head), 2 * MIB as u32));
}

#[test]
fn looping_chain() {
    let m = mem();
    let mut dev = device(features());
    let mut drv = Driver::new(&m, 0, 16);
    // Descriptor 0 -> 1 -> 0 -> ...
    drv.desc(0, REGION_C, 0x1000, DESC_F_WRITE | DESC_F_NEXT, 1);
    drv.desc(1, REGION_C + 0x1000, 0x1000, DESC_F_WRITE | DESC_F_NEXT, 0);
    drv.publish(0);
    drv.skip_to(2);
    run(&mut dev, QueueRole::Reporting, &mut drv);
    assert_eq!(drv.last_used(), (0, 0));
    assert!(dev.discard_backend().ops.is_empty());
    assert_eq!(errors(&dev, ErrorKind::ChainTruncated), 1);
    assert_reporting_still_works(&mut dev, &mut drv);
}

#[test]
fn next_index_out_of_range() {
    let m = mem();
    let mut dev = device(features());
    let mut drv = Driver::new(&m, 0, 16);
    drv.desc(0, REGION_C, 0x1000, DESC_F_WRITE | DESC_F_NEXT, 999);
    drv.publish(0);
    drv.skip_to(1);
    run(&mut dev, QueueRole::Reporting, &mut drv);
    assert_eq!(drv.last_used(), (0, 0));
    assert!(dev.discard_backend().ops.is_empty());
    assert_eq!(errors(&dev, ErrorKind::ChainTruncated), 1);
    assert_reporting_still_works(&mut dev, &mut drv);
}

#[test]
fn head_index_out_of_range() {
    let m = mem();
    let mut dev = device(features());
    let mut drv = Driver::new(&m, 0, 16);
    drv.publish(500);
    run(&mut dev, QueueRole::Reporting, &mut drv);
    // Nothing can be completed for a head that does not exist.
    assert_eq!(drv.used_idx(), 0);
    assert_eq!(errors(&dev, ErrorKind::ChainEmpty), 1);
    assert_eq!(errors(&dev, ErrorKind::UsedRing), 1);
    assert_reporting_still_works(&mut dev, &mut drv);
}

#[test]
fn over_long_chain() {
    let m = mem();
    let mut options = DeviceOptions::default();
    options.limits.max_chain_descriptors = 4;
    let mut dev = BalloonDevice::new(options, RecordingDiscard::new()).unwrap();
    dev.ack_features(features().bits());
    let mut drv = Driver::new(&m, 0, 16);
    let bufs: Vec<Buf> = (0..5).map(|i| w(REGION_C + i * 0x1000, 0x1000)).collect();
    drv.add(&bufs);
    run(&mut dev, QueueRole::Reporting, &mut drv);
    assert_eq!(drv.last_used().1, 0);
    assert!(dev.discard_backend().ops.is_empty());
    assert_eq!(errors(&dev, ErrorKind::ChainTooLong), 1);
    assert_reporting_still_works(&mut dev, &mut drv);
}

#[test]
fn nested_indirect_table() {
    let m = mem();
    let mut dev = device(features());
    let mut drv = Driver::new(&m, 0, 16);
    let table = Driver::new(&m, BUFS, 16);
    table.desc(0, REGION_C, 0x1000, DESC_F_WRITE | DESC_F_NEXT, 1);
    table.desc(1, BUFS, 32, DESC_F_INDIRECT, 0);
    drv.desc(0, BUFS, 32, DESC_F_INDIRECT, 0);
    drv.publish(0);
    drv.skip_to(1);
    run(&mut dev, QueueRole::Reporting, &mut drv);
    assert_eq!(drv.last_used().1, 0);
    assert!(dev.discard_backend().ops.is_empty());
    assert_eq!(errors(&dev, ErrorKind::ChainTruncated), 1);
    assert_reporting_still_works(&mut dev, &mut drv);
}

#[test]
fn descriptor_table_outside_ram() {
    let m = mem();
    let mut dev = device(features());
    let mut drv = Driver::new(&m, 0, 16);
    drv.desc(0, HOLE, 64, DESC_F_INDIRECT, 0);
    drv.publish(0);
    drv.skip_to(1);
    run(&mut dev, QueueRole::Reporting, &mut drv);
    assert_eq!(drv.last_used(), (0, 0));
    assert_eq!(errors(&dev, ErrorKind::ChainEmpty), 1);
    assert_reporting_still_works(&mut dev, &mut drv);
}

#[test]
fn avail_index_far_ahead_is_refused_without_spinning() {
    let m = mem();
    let mut dev = device(features());
    let mut drv = Driver::new(&m, 0, 16);
    for _ in 0..17 {
        drv.publish(0);
    }
    let index = dev.queue_roles().index(QueueRole::Reporting).unwrap();
    let err = dev.process_queue(index, &mut drv.queue, &m).unwrap_err();
    assert!(matches!(
        err,
        DeviceError::Queue {
            kind: ErrorKind::AvailRing,
            ..
        }
    ));
    assert_eq!(drv.used_idx(), 0);
}

// ---- inflate ------------------------------------------------------------------------------

fn inflate_one(bufs: &[Buf], kind: ErrorKind) -> BalloonDevice<RecordingDiscard> {
    let m = mem();
    let mut dev = device(features());
    let mut drv = Driver::new(&m, 0x2000, 16);
    fill(&m, BITMAP, 64, 0xff);
    drv.add(bufs);
    run(&mut dev, QueueRole::Inflate, &mut drv);
    assert_eq!(drv.used_idx(), 1);
    assert!(dev.metrics().errors_of(kind) >= 1, "{kind} not counted");
    assert_discards_inside_ram(&dev);
    // The queue keeps working: a valid one-page inflate gets its bit.
    let pfn = ((REGION_C + 0x200000) >> 12) as u32;
    write_pfns(&m, PFNS + 0x800, &[pfn]);
    fill(&m, BITMAP + 0x100, 1, 0);
    drv.add(&[r(PFNS + 0x800, 4), w(BITMAP + 0x100, 1)]);
    run(&mut dev, QueueRole::Inflate, &mut drv);
    assert_eq!(drv.last_used().1, 1);
    assert_eq!(read_bytes(&m, BITMAP + 0x100, 1), vec![1]);
    dev
}

#[test]
fn inflate_out_of_range_pfns() {
    let pfns = [(HOLE >> 12) as u32, (RAM_END >> 12) as u32, u32::MAX];
    let dev = inflate_one_with(&pfns, 1, ErrorKind::PfnOutOfRange);
    assert_eq!(dev.metrics().errors_of(ErrorKind::PfnOutOfRange), 3);
}

/// Inflate `pfns` with a bitmap of `bitmap_len` bytes.
fn inflate_one_with(
    pfns: &[u32],
    bitmap_len: u32,
    kind: ErrorKind,
) -> BalloonDevice<RecordingDiscard> {
    let m = mem();
    let len = write_pfns(&m, PFNS, pfns);
    let mut dev = device(features());
    let mut drv = Driver::new(&m, 0x2000, 16);
    fill(&m, BITMAP, 64, 0xff);
    drv.add(&[r(PFNS, len), w(BITMAP, bitmap_len)]);
    run(&mut dev, QueueRole::Inflate, &mut drv);
    let used = drv.last_used().1;
    let written = read_bytes(&m, BITMAP, used as usize);
    assert!(written.iter().all(|b| *b == 0), "no false bit: {written:?}");
    assert!(dev.metrics().errors_of(kind) >= 1, "{kind} not counted");
    assert_discards_inside_ram(&dev);
    let pfn = ((REGION_C + 0x200000) >> 12) as u32;
    write_pfns(&m, PFNS + 0x800, &[pfn]);
    fill(&m, BITMAP + 0x100, 1, 0);
    drv.add(&[r(PFNS + 0x800, 4), w(BITMAP + 0x100, 1)]);
    run(&mut dev, QueueRole::Inflate, &mut drv);
    assert_eq!(drv.last_used().1, 1);
    assert_eq!(read_bytes(&m, BITMAP + 0x100, 1), vec![1]);
    dev
}

#[test]
fn inflate_duplicate_pfns() {
    let p = (REGION_C >> 12) as u32;
    let dev = inflate_one_with(&[p, p, p], 1, ErrorKind::DuplicatePfn);
    // The page is discarded once (plus the follow-up request's page).
    assert_eq!(dev.discard_backend().discarded_bytes(), 2 * 4096);
}

#[test]
fn inflate_bitmap_too_short() {
    let p = (REGION_C >> 12) as u32;
    let pfns: Vec<u32> = (0..9).map(|i| p + i).collect();
    inflate_one_with(&pfns, 1, ErrorKind::BitmapTooShort);
}

#[test]
fn inflate_bitmap_of_length_zero() {
    let p = (REGION_C >> 12) as u32;
    inflate_one_with(&[p], 0, ErrorKind::BitmapTooShort);
}

#[test]
fn inflate_odd_length() {
    inflate_one(&[r(PFNS, 7), w(BITMAP, 1)], ErrorKind::BadLength);
}

#[test]
fn inflate_zero_length() {
    inflate_one(&[r(PFNS, 0), w(BITMAP, 1)], ErrorKind::ZeroLength);
}

#[test]
fn inflate_wrong_direction() {
    inflate_one(&[w(BITMAP, 1), r(PFNS, 4)], ErrorKind::WrongDirection);
}

#[test]
fn inflate_pfn_buffer_address_overflow() {
    inflate_one(&[r(u64::MAX - 3, 8), w(BITMAP, 1)], ErrorKind::GuestMemory);
}

#[test]
fn inflate_bitmap_address_overflow() {
    let p = (REGION_C >> 12) as u32;
    let m = mem();
    let len = write_pfns(&m, PFNS, &[p]);
    let mut dev = device(features());
    let mut drv = Driver::new(&m, 0x2000, 16);
    drv.add(&[r(PFNS, len), w(u64::MAX, 2)]);
    run(&mut dev, QueueRole::Inflate, &mut drv);
    assert_eq!(drv.last_used().1, 0);
    assert_eq!(errors(&dev, ErrorKind::AddressOverflow), 1);
}

// ---- stats --------------------------------------------------------------------------------

#[test]
fn stats_buffer_of_the_wrong_size() {
    let m = mem();
    let mut dev = device(features());
    let mut drv = Driver::new(&m, 0x3000, 16);
    let mut buf = Vec::new();
    buf.extend_from_slice(&prezero_device::protocol::stats::encode_entry(4, 1234));
    buf.extend_from_slice(&[1, 2, 3]); // a partial entry
    vm_memory::Bytes::write_slice(&m, &buf, GuestAddress(STATS)).unwrap();
    drv.add(&[r(STATS, buf.len() as u32)]);
    run(&mut dev, QueueRole::Stats, &mut drv);
    assert_eq!(errors(&dev, ErrorKind::StatsBufferSize), 1);
    assert!(dev.holds_stats_buffer(), "held even when malformed");
    assert_eq!(
        dev.latest_stats()
            .unwrap()
            .get(prezero_device::protocol::StatTag::FreeMemory),
        Some(1234)
    );
    // The queue keeps working: a fresh-stats request returns it.
    assert!(dev.request_stats(&mut drv.queue, &m).unwrap());
    assert_eq!(drv.last_used(), (0, 0));
}

#[test]
fn stats_buffer_far_too_large_is_not_read() {
    let m = mem();
    let mut dev = device(features());
    let mut drv = Driver::new(&m, 0x3000, 16);
    drv.add(&[r(STATS, u32::MAX)]);
    run(&mut dev, QueueRole::Stats, &mut drv);
    assert_eq!(errors(&dev, ErrorKind::StatsBufferSize), 1);
    assert!(dev.latest_stats().is_none());
    assert!(dev.holds_stats_buffer());
}

#[test]
fn stats_buffer_writable() {
    let m = mem();
    let mut dev = device(features());
    let mut drv = Driver::new(&m, 0x3000, 16);
    drv.add(&[w(STATS, 10)]);
    run(&mut dev, QueueRole::Stats, &mut drv);
    assert_eq!(errors(&dev, ErrorKind::WrongDirection), 1);
    assert!(dev.latest_stats().is_none());
}
