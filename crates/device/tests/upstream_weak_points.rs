//! The three weak points of the upstream device (QEMU `hw/virtio/virtio-balloon.c` in the
//! series author's tree, commit `21ee968df9e6`) that this device does not share. Each test
//! states what QEMU does and fails on that behaviour.

mod common;

use common::*;
use prezero_device::protocol::features::{self, Features};
use prezero_device::protocol::pfn::bitmap_test;
use prezero_device::protocol::queues::QueueRole;
use prezero_device::{BalloonDevice, ErrorKind, RecordingDiscard, RegionPolicy};
use vm_memory::GuestAddress;

const PFNS: u64 = BUFS;
const BITMAP: u64 = BUFS + 0x8000;
const HUGE: u64 = 2 * MIB;

fn pfn(addr: u64) -> u32 {
    (addr >> 12) as u32
}

fn kick(dev: &mut BalloonDevice<RecordingDiscard>, role: QueueRole, drv: &mut Driver) {
    let index = dev.queue_roles().index(role).unwrap();
    dev.process_queue(index, &mut drv.queue, drv.mem).unwrap();
}

/// Region C backed by 2 MiB host pages (hugetlbfs), discards writing real zeros.
fn huge_host_pages() -> BalloonDevice<RecordingDiscard> {
    let discard = RecordingDiscard::new()
        .with_region_policy(GuestAddress(REGION_C), RegionPolicy::zeroing(HUGE))
        .writing_zeros();
    device_with(
        discard,
        Features::EMPTY
            .with(features::DEVICE_INIT_ON_INFLATE)
            .with(features::VERSION_1),
    )
}

/// Weak point 1. QEMU answers `ceil(pfns_read / 8)` whatever the bitmap buffer's size: with a
/// short buffer, the used length exceeds what it wrote, and a driver reading `used_len * 8`
/// valid bits reads bytes the device never wrote (stale, possibly 0xff). Here the used length
/// is at most the bytes written, which are at most the buffer.
#[test]
fn inflate_used_length_never_exceeds_the_bitmap_bytes_written() {
    let m = mem();
    let mut dev = device(
        Features::EMPTY
            .with(features::DEVICE_INIT_ON_INFLATE)
            .with(features::VERSION_1),
    );
    let c = pfn(REGION_C);
    // 20 PFNs need ceil(20 / 8) = 3 bytes; the buffer has 2, and stale 0xff around it.
    let pfns: Vec<u32> = (0..20).map(|i| c + i).collect();
    let len = write_pfns(&m, PFNS, &pfns);
    fill(&m, BITMAP, 4, 0xff);
    let mut drv = Driver::new(&m, 0, 16);
    drv.add(&[r(PFNS, len), w(BITMAP, 2)]);
    kick(&mut dev, QueueRole::Inflate, &mut drv);
    let used = drv.last_used().1;
    assert!(used <= 2, "used length {used} exceeds the 2-byte buffer");
    assert_eq!(used, 2, "the two bytes it wrote");
    let bitmap = read_bytes(&m, BITMAP, 4);
    assert_eq!(&bitmap[..2], &[0, 0], "a short bitmap claims nothing");
    assert_eq!(
        &bitmap[2..],
        &[0xff, 0xff],
        "nothing written past the buffer"
    );
    // A driver applying the upstream rule (valid bits = used * 8) finds no page zeroed.
    assert!((0..(used as usize * 8).min(20)).all(|i| !bitmap_test(&bitmap, i)));
    assert_eq!(errors(&dev, ErrorKind::BitmapTooShort), 1);
}

/// Weak point 2, a skipped entry. QEMU discards a 2 MiB host page when its last 4 KiB sub-page
/// arrives and then sets the bits of the whole run of entries before it, assuming they are
/// the other sub-pages. Here a PFN outside RAM sits inside the run: the huge page is still
/// named whole and discarded, every sub-page gets its bit, the stray entry does not.
#[test]
fn huge_host_page_run_with_a_skipped_entry_marks_only_discarded_pages() {
    let m = mem();
    let mut dev = huge_host_pages();
    let c = pfn(REGION_C);
    fill(&m, REGION_C, HUGE as usize, 0x5a);
    let outside = pfn(RAM_END) + 7;
    let mut pfns: Vec<u32> = (0..256).map(|i| c + i).collect();
    pfns.push(outside); // entry 256
    pfns.extend((256..512).map(|i| c + i));
    let len = write_pfns(&m, PFNS, &pfns);
    let mut drv = Driver::new(&m, 0, 16);
    drv.add(&[r(PFNS, len), w(BITMAP, 65)]);
    kick(&mut dev, QueueRole::Inflate, &mut drv);
    assert_eq!(drv.last_used().1, 65);
    let bitmap = read_bytes(&m, BITMAP, 65);
    assert!(
        !bitmap_test(&bitmap, 256),
        "a PFN outside RAM was never discarded"
    );
    assert!((0..513)
        .filter(|i| *i != 256)
        .all(|i| bitmap_test(&bitmap, i)));
    assert_eq!(dev.discard_backend().discarded_bytes(), HUGE);
    assert!(read_bytes(&m, REGION_C, HUGE as usize)
        .iter()
        .all(|b| *b == 0));
    assert_eq!(errors(&dev, ErrorKind::PfnOutOfRange), 1);
}

/// Weak point 2, a duplicate. 512 entries of which one names a sub-page twice, so one sub-page
/// of the huge page is missing: a count of entries says "whole", the guest did not name it
/// whole. Nothing is discarded, no bit is set, and the memory keeps its contents.
#[test]
fn huge_host_page_run_with_a_duplicate_is_not_discarded() {
    let m = mem();
    let mut dev = huge_host_pages();
    let c = pfn(REGION_C);
    fill(&m, REGION_C, HUGE as usize, 0x5a);
    // Sub-pages 0..511 except 300, with 5 named twice: 512 entries.
    let mut pfns: Vec<u32> = (0..512).filter(|i| *i != 300).map(|i| c + i).collect();
    pfns.insert(300, c + 5);
    assert_eq!(pfns.len(), 512);
    let len = write_pfns(&m, PFNS, &pfns);
    let mut drv = Driver::new(&m, 0, 16);
    drv.add(&[r(PFNS, len), w(BITMAP, 64)]);
    kick(&mut dev, QueueRole::Inflate, &mut drv);
    assert_eq!(drv.last_used().1, 64);
    let bitmap = read_bytes(&m, BITMAP, 64);
    assert!(
        (0..512).all(|i| !bitmap_test(&bitmap, i)),
        "nothing was discarded"
    );
    assert_eq!(dev.discard_backend().discarded_bytes(), 0);
    assert!(read_bytes(&m, REGION_C, HUGE as usize)
        .iter()
        .all(|b| *b == 0x5a));
    assert_eq!(errors(&dev, ErrorKind::DuplicatePfn), 1);
    // Two runs (around the missing sub-page), each only part of the huge page.
    assert_eq!(errors(&dev, ErrorKind::PartialHostPage), 2);
}

/// Weak point 2, a duplicate inside a whole huge page: all 512 sub-pages plus one named twice.
/// The huge page is discarded (the guest named it whole); the duplicated PFN gets no bit (the
/// device cannot tell which of its two entries the driver will believe), the others do.
#[test]
fn huge_host_page_named_whole_with_a_duplicate_marks_the_distinct_pages() {
    let m = mem();
    let mut dev = huge_host_pages();
    let c = pfn(REGION_C);
    let mut pfns: Vec<u32> = (0..512).map(|i| c + i).collect();
    pfns.insert(100, c + 400); // entry 100 and entry 401 are both sub-page 400
    let len = write_pfns(&m, PFNS, &pfns);
    let mut drv = Driver::new(&m, 0, 16);
    drv.add(&[r(PFNS, len), w(BITMAP, 65)]);
    kick(&mut dev, QueueRole::Inflate, &mut drv);
    let bitmap = read_bytes(&m, BITMAP, 65);
    assert_eq!(dev.discard_backend().discarded_bytes(), HUGE);
    assert!(!bitmap_test(&bitmap, 100) && !bitmap_test(&bitmap, 401));
    assert!((0..513)
        .filter(|i| *i != 100 && *i != 401)
        .all(|i| bitmap_test(&bitmap, i)));
}

/// Weak point 3. QEMU answers a reporting chain with the sum of the buffer sizes whose discard
/// succeeded: for a chain of three 4 KiB blocks of which one fails it says 8192, which a driver
/// sending several blocks per chain cannot map to blocks. Here the chain answers 0.
#[test]
fn reporting_chain_with_one_failing_buffer_answers_zero() {
    let m = mem();
    let discard = RecordingDiscard::new()
        .failing_in(GuestAddress(REGION_B))
        .writing_zeros();
    let mut dev = device_with(
        discard,
        Features::EMPTY
            .with(features::REPORTING)
            .with(features::DEVICE_INIT_REPORTED)
            .with(features::VERSION_1),
    );
    let mut drv = Driver::new(&m, 0, 16);
    drv.add(&[
        w(REGION_C, 0x1000),
        w(REGION_B + 0x10000, 0x1000),
        w(REGION_C + 0x10000, 0x1000),
    ]);
    kick(&mut dev, QueueRole::Reporting, &mut drv);
    assert_eq!(drv.last_used().1, 0, "never a partial sum");
    assert_eq!(dev.discard_backend().discard_count(), 3);
    assert_eq!(errors(&dev, ErrorKind::DiscardFailed), 1);
    // The same blocks as one chain each (the upstream driver's pattern) get their own answers.
    drv.add(&[w(REGION_C, 0x1000)]);
    drv.add(&[w(REGION_B + 0x10000, 0x1000)]);
    drv.add(&[w(REGION_C + 0x10000, 0x1000)]);
    kick(&mut dev, QueueRole::Reporting, &mut drv);
    let used: Vec<u32> = (1..4).map(|i| drv.used(i).1).collect();
    assert_eq!(used, [0x1000, 0, 0x1000]);
}
