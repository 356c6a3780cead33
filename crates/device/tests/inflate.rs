//! Inflate (with and without `DEVICE_INIT_ON_INFLATE`) and deflate.

mod common;

use common::*;
use prezero_device::protocol::features::{self, Features};
use prezero_device::protocol::pfn::bitmap_test;
use prezero_device::protocol::queues::QueueRole;
use prezero_device::{
    BalloonDevice, DeviceOptions, DiscardMode, ErrorKind, RecordingDiscard, RegionPolicy,
};
use vm_memory::GuestAddress;

const PFNS: u64 = BUFS;
const BITMAP: u64 = BUFS + 0x8000;

fn pfn(addr: u64) -> u32 {
    (addr >> 12) as u32
}

fn with_bitmap() -> Features {
    Features::EMPTY
        .with(features::DEVICE_INIT_ON_INFLATE)
        .with(features::PAGE_POISON)
        .with(features::VERSION_1)
}

fn inflate(dev: &mut BalloonDevice<RecordingDiscard>, drv: &mut Driver) {
    let index = dev.queue_roles().index(QueueRole::Inflate).unwrap();
    dev.process_queue(index, &mut drv.queue, drv.mem).unwrap();
}

fn deflate(dev: &mut BalloonDevice<RecordingDiscard>, drv: &mut Driver) {
    let index = dev.queue_roles().index(QueueRole::Deflate).unwrap();
    dev.process_queue(index, &mut drv.queue, drv.mem).unwrap();
}

#[test]
fn pfns_are_sorted_deduplicated_and_merged() {
    let m = mem();
    let mut dev = device(Features::bit(features::VERSION_1));
    let mut drv = Driver::new(&m, 0, 16);
    let c = pfn(REGION_C);
    let len = write_pfns(&m, PFNS, &[c + 5, c + 3, c + 4, c + 10, c + 11]);
    drv.add(&[r(PFNS, len)]);
    inflate(&mut dev, &mut drv);
    assert_eq!(drv.last_used().1, 0);
    let ops: Vec<_> = dev
        .discard_backend()
        .ops
        .iter()
        .map(|o| (o.guest_start(), o.len))
        .collect();
    assert_eq!(
        ops,
        vec![(REGION_C + 0x3000, 0x3000), (REGION_C + 0xa000, 0x2000)]
    );
    assert_eq!(dev.metrics().inflated_pages, 5);
    assert_eq!(dev.metrics().total_errors(), 0);
}

#[test]
fn pfn_arrays_over_several_buffers_are_one_request() {
    let m = mem();
    let mut dev = device(Features::bit(features::VERSION_1));
    let mut drv = Driver::new(&m, 0, 16);
    let c = pfn(REGION_C);
    let a = write_pfns(&m, PFNS, &[c, c + 1]);
    let b = write_pfns(&m, PFNS + 0x100, &[c + 2, c + 3]);
    drv.add(&[r(PFNS, a), r(PFNS + 0x100, b)]);
    inflate(&mut dev, &mut drv);
    assert_eq!(dev.discard_backend().discard_count(), 1);
    assert_eq!(dev.discard_backend().discarded_bytes(), 0x4000);
}

#[test]
fn bitmap_marks_exactly_the_initialized_pages() {
    let m = mem();
    let mut dev = device(with_bitmap());
    let mut drv = Driver::new(&m, 0, 16);
    let c = pfn(REGION_C);
    let pfns = [
        c,                 // 0: zeroed
        pfn(HOLE),         // 1: in the hole
        c + 1,             // 2: zeroed
        c + 7,             // 3: duplicate of 5
        pfn(RAM_END) + 50, // 4: past RAM
        c + 7,             // 5: duplicate of 3
        c + 2,             // 6: zeroed
        u32::MAX,          // 7: far past RAM
        c + 9,             // 8: zeroed, in the second bitmap byte
    ];
    let len = write_pfns(&m, PFNS, &pfns);
    fill(&m, BITMAP, 8, 0xff);
    drv.add(&[r(PFNS, len), w(BITMAP, 8)]);
    inflate(&mut dev, &mut drv);
    assert_eq!(drv.last_used().1, 2, "ceil(9 / 8) bytes written");
    let bm = read_bytes(&m, BITMAP, 3);
    let set: Vec<usize> = (0..9).filter(|i| bitmap_test(&bm, *i)).collect();
    assert_eq!(set, vec![0, 2, 6, 8]);
    assert_eq!(bm[1] & !1, 0, "unused bits of the last byte are zero");
    assert_eq!(bm[2], 0xff, "nothing written past ceil(n / 8)");
    assert_eq!(errors(&dev, ErrorKind::PfnOutOfRange), 3);
    assert_eq!(errors(&dev, ErrorKind::DuplicatePfn), 1);
    let metrics = dev.metrics();
    assert_eq!(metrics.inflated_pages, 5);
    assert_eq!(metrics.inflated_pages_zeroed, 4);
    assert_eq!(metrics.zeroed_bytes, 4 * 4096);
    // The duplicate page was still discarded.
    assert_eq!(dev.discard_backend().discarded_bytes(), 5 * 4096);
}

#[test]
fn bitmap_too_short_is_zero_filled_and_pages_still_discarded() {
    let m = mem();
    let mut dev = device(with_bitmap());
    let mut drv = Driver::new(&m, 0, 16);
    let c = pfn(REGION_C);
    let pfns: Vec<u32> = (0..20).map(|i| c + i).collect();
    let len = write_pfns(&m, PFNS, &pfns);
    fill(&m, BITMAP, 8, 0xff);
    drv.add(&[r(PFNS, len), w(BITMAP, 2)]);
    inflate(&mut dev, &mut drv);
    assert_eq!(drv.last_used().1, 2, "short used length tells the driver");
    assert_eq!(read_bytes(&m, BITMAP, 3), vec![0, 0, 0xff]);
    assert_eq!(errors(&dev, ErrorKind::BitmapTooShort), 1);
    assert_eq!(dev.discard_backend().discarded_bytes(), 20 * 4096);
    assert_eq!(dev.metrics().zeroed_bytes, 0);
}

#[test]
fn bitmap_missing_writes_nothing() {
    let m = mem();
    let mut dev = device(with_bitmap());
    let mut drv = Driver::new(&m, 0, 16);
    let len = write_pfns(&m, PFNS, &[pfn(REGION_C)]);
    drv.add(&[r(PFNS, len)]);
    inflate(&mut dev, &mut drv);
    assert_eq!(drv.last_used().1, 0);
    assert_eq!(errors(&dev, ErrorKind::BitmapMissing), 1);
}

#[test]
fn two_bitmap_buffers_write_nothing() {
    let m = mem();
    let mut dev = device(with_bitmap());
    let mut drv = Driver::new(&m, 0, 16);
    let len = write_pfns(&m, PFNS, &[pfn(REGION_C)]);
    fill(&m, BITMAP, 2, 0xee);
    drv.add(&[r(PFNS, len), w(BITMAP, 1), w(BITMAP + 1, 1)]);
    inflate(&mut dev, &mut drv);
    assert_eq!(drv.last_used().1, 0);
    assert_eq!(read_bytes(&m, BITMAP, 2), vec![0xee, 0xee]);
    assert_eq!(errors(&dev, ErrorKind::BitmapMalformed), 1);
}

#[test]
fn bitmap_outside_guest_ram_writes_nothing() {
    let m = mem();
    let mut dev = device(with_bitmap());
    let mut drv = Driver::new(&m, 0, 16);
    let len = write_pfns(&m, PFNS, &[pfn(REGION_C)]);
    // Straddles the end of region B into the hole.
    drv.add(&[r(PFNS, len), w(HOLE - 1, 4)]);
    inflate(&mut dev, &mut drv);
    assert_eq!(drv.last_used().1, 0);
    assert_eq!(errors(&dev, ErrorKind::BitmapMalformed), 1);
}

#[test]
fn bitmap_inside_an_inflated_page_does_not_claim_that_page() {
    let m = mem();
    let mut dev = device(with_bitmap());
    let mut drv = Driver::new(&m, 0, 16);
    let c = pfn(REGION_C);
    let len = write_pfns(&m, PFNS, &[c, c + 1]);
    // The driver put the bitmap in the second page it inflates: writing it dirties the page.
    drv.add(&[r(PFNS, len), w(REGION_C + 0x1000, 1)]);
    inflate(&mut dev, &mut drv);
    assert_eq!(drv.last_used().1, 1);
    let bm = read_bytes(&m, REGION_C + 0x1000, 1);
    assert!(bitmap_test(&bm, 0));
    assert!(!bitmap_test(&bm, 1));
}

#[test]
fn failing_discard_sets_no_bit() {
    let m = mem();
    let mut dev = device_with(RecordingDiscard::new().failing(), with_bitmap());
    let mut drv = Driver::new(&m, 0, 16);
    let len = write_pfns(&m, PFNS, &[pfn(REGION_C)]);
    fill(&m, BITMAP, 1, 0xff);
    drv.add(&[r(PFNS, len), w(BITMAP, 1)]);
    inflate(&mut dev, &mut drv);
    assert_eq!(drv.last_used().1, 1);
    assert_eq!(read_bytes(&m, BITMAP, 1), vec![0]);
    assert_eq!(errors(&dev, ErrorKind::DiscardFailed), 1);
}

#[test]
fn non_zeroing_backing_sets_no_bit_but_discards() {
    let m = mem();
    let discard = RecordingDiscard::new().with_default_policy(RegionPolicy {
        mode: DiscardMode::NonZeroing,
        host_page_size: 4096,
    });
    let mut dev = device_with(discard, with_bitmap());
    let mut drv = Driver::new(&m, 0, 16);
    let len = write_pfns(&m, PFNS, &[pfn(REGION_C)]);
    drv.add(&[r(PFNS, len), w(BITMAP, 1)]);
    inflate(&mut dev, &mut drv);
    assert_eq!(read_bytes(&m, BITMAP, 1), vec![0]);
    assert_eq!(dev.discard_backend().discard_count(), 1);
}

#[test]
fn nonzero_poison_sets_no_bit() {
    let m = mem();
    let mut dev = device(with_bitmap());
    dev.write_config(12, &0x5555_5555u32.to_le_bytes());
    let mut drv = Driver::new(&m, 0, 16);
    let len = write_pfns(&m, PFNS, &[pfn(REGION_C)]);
    drv.add(&[r(PFNS, len), w(BITMAP, 1)]);
    inflate(&mut dev, &mut drv);
    assert_eq!(drv.last_used().1, 1);
    assert_eq!(read_bytes(&m, BITMAP, 1), vec![0]);
}

#[test]
fn huge_host_pages_are_discarded_only_when_whole_in_one_request() {
    let m = mem();
    let discard = RecordingDiscard::new().with_default_policy(RegionPolicy::zeroing(2 * MIB));
    let mut dev = device_with(discard, with_bitmap());
    let mut drv = Driver::new(&m, 0, 16);
    let c = pfn(REGION_C);
    // All 512 pages of the first huge page plus one page of the next.
    let mut pfns: Vec<u32> = (0..512).rev().map(|i| c + i).collect();
    pfns.push(c + 600);
    let len = write_pfns(&m, PFNS, &pfns);
    drv.add(&[r(PFNS, len), w(BITMAP, 65)]);
    inflate(&mut dev, &mut drv);
    assert_eq!(drv.last_used().1, 65);
    let bm = read_bytes(&m, BITMAP, 65);
    assert!((0..512).all(|i| bitmap_test(&bm, i)));
    assert!(!bitmap_test(&bm, 512));
    assert_eq!(dev.discard_backend().discarded_bytes(), 2 * MIB);
    assert_eq!(errors(&dev, ErrorKind::PartialHostPage), 1);
}

#[test]
fn odd_pfn_buffer_length_rejects_the_chain() {
    let m = mem();
    let mut dev = device(with_bitmap());
    let mut drv = Driver::new(&m, 0, 16);
    write_pfns(&m, PFNS, &[pfn(REGION_C), pfn(REGION_C) + 1]);
    fill(&m, BITMAP, 1, 0xff);
    drv.add(&[r(PFNS, 6), w(BITMAP, 1)]);
    inflate(&mut dev, &mut drv);
    assert_eq!(drv.last_used().1, 0);
    assert_eq!(read_bytes(&m, BITMAP, 1), vec![0xff], "nothing written");
    assert!(dev.discard_backend().ops.is_empty());
    assert_eq!(errors(&dev, ErrorKind::BadLength), 1);
}

#[test]
fn zero_length_pfn_buffer_rejects_the_chain() {
    let m = mem();
    let mut dev = device(Features::EMPTY);
    let mut drv = Driver::new(&m, 0, 16);
    drv.add(&[r(PFNS, 0)]);
    inflate(&mut dev, &mut drv);
    assert_eq!(drv.used_idx(), 1);
    assert!(dev.discard_backend().ops.is_empty());
    assert_eq!(errors(&dev, ErrorKind::ZeroLength), 1);
}

#[test]
fn too_many_pfns_rejects_the_chain_without_reading_it() {
    let m = mem();
    let mut options = DeviceOptions::default();
    options.limits.max_pfns_per_request = 4;
    let mut dev = BalloonDevice::new(options, RecordingDiscard::new()).unwrap();
    dev.ack_features(0);
    let mut drv = Driver::new(&m, 0, 16);
    drv.add(&[r(PFNS, 5 * 4)]);
    // A 4 GiB "PFN array": rejected on its length.
    drv.add(&[r(PFNS, u32::MAX - 3)]);
    inflate(&mut dev, &mut drv);
    assert_eq!(drv.used_idx(), 2);
    assert!(dev.discard_backend().ops.is_empty());
    assert_eq!(dev.metrics().errors_of(ErrorKind::TooManyPfns), 2);
}

#[test]
fn pfn_buffer_outside_ram_rejects_the_chain() {
    let m = mem();
    let mut dev = device(Features::EMPTY);
    let mut drv = Driver::new(&m, 0, 16);
    drv.add(&[r(HOLE + 0x100, 8)]);
    inflate(&mut dev, &mut drv);
    assert_eq!(drv.used_idx(), 1);
    assert_eq!(errors(&dev, ErrorKind::GuestMemory), 1);
}

#[test]
fn writable_buffer_without_the_feature_rejects_the_chain() {
    let m = mem();
    let mut dev = device(Features::EMPTY);
    let mut drv = Driver::new(&m, 0, 16);
    let len = write_pfns(&m, PFNS, &[pfn(REGION_C)]);
    fill(&m, BITMAP, 1, 0xff);
    drv.add(&[r(PFNS, len), w(BITMAP, 1)]);
    inflate(&mut dev, &mut drv);
    assert_eq!(drv.last_used().1, 0);
    assert_eq!(read_bytes(&m, BITMAP, 1), vec![0xff]);
    assert!(dev.discard_backend().ops.is_empty());
    assert_eq!(errors(&dev, ErrorKind::WrongDirection), 1);
}

#[test]
fn readable_after_writable_rejects_the_chain() {
    let m = mem();
    let mut dev = device(with_bitmap());
    let mut drv = Driver::new(&m, 0, 16);
    let len = write_pfns(&m, PFNS, &[pfn(REGION_C)]);
    drv.add(&[w(BITMAP, 1), r(PFNS, len)]);
    inflate(&mut dev, &mut drv);
    assert_eq!(drv.last_used().1, 0);
    assert!(dev.discard_backend().ops.is_empty());
    assert_eq!(errors(&dev, ErrorKind::WrongDirection), 1);
}

#[test]
fn deflate_acknowledges_and_hints_when_asked() {
    let m = mem();
    let options = DeviceOptions {
        deflate_willneed: true,
        ..DeviceOptions::default()
    };
    let mut dev = BalloonDevice::new(options, RecordingDiscard::new()).unwrap();
    dev.ack_features(0);
    let mut drv = Driver::new(&m, 0x1000, 16);
    let c = pfn(REGION_C);
    let len = write_pfns(&m, PFNS, &[c + 1, c, pfn(HOLE)]);
    let head = drv.add(&[r(PFNS, len)]);
    deflate(&mut dev, &mut drv);
    assert_eq!(drv.last_used(), (u32::from(head), 0));
    let ops = &dev.discard_backend().ops;
    assert_eq!(ops.len(), 1);
    assert!(!ops[0].discard);
    assert_eq!((ops[0].guest_start(), ops[0].len), (REGION_C, 0x2000));
    assert_eq!(dev.metrics().deflated_pages, 2);
    assert_eq!(errors(&dev, ErrorKind::PfnOutOfRange), 1);
}

#[test]
fn deflate_with_writable_buffer_is_acknowledged_and_counted() {
    let m = mem();
    let mut dev = device(Features::EMPTY);
    let mut drv = Driver::new(&m, 0x1000, 16);
    let len = write_pfns(&m, PFNS, &[pfn(REGION_C)]);
    drv.add(&[r(PFNS, len), w(BITMAP, 1)]);
    deflate(&mut dev, &mut drv);
    assert_eq!(drv.used_idx(), 1);
    assert_eq!(errors(&dev, ErrorKind::WrongDirection), 1);
    assert_eq!(dev.metrics().deflated_pages, 0);
}

#[test]
fn recording_backend_can_really_zero() {
    let m = mem();
    let mut dev = device_with(RecordingDiscard::new().writing_zeros(), with_bitmap());
    let mut drv = Driver::new(&m, 0, 16);
    fill(&m, REGION_C, 0x2000, 0x5a);
    let len = write_pfns(&m, PFNS, &[pfn(REGION_C)]);
    drv.add(&[r(PFNS, len), w(BITMAP, 1)]);
    inflate(&mut dev, &mut drv);
    assert_eq!(read_bytes(&m, REGION_C, 0x1000), vec![0; 0x1000]);
    assert_eq!(read_bytes(&m, REGION_C + 0x1000, 1), vec![0x5a]);
    assert_eq!(read_bytes(&m, BITMAP, 1), vec![1]);
    let _ = GuestAddress(0);
}
