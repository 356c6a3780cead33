//! The host discard backend on real memory: write a pattern, report or inflate it, and check
//! that it reads zero, that the host memory was really released, and that the device says so;
//! and the converse for backings that cannot zero.

mod common;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

use common::*;
use prezero_device::host_discard::DiscardMethod;
use prezero_device::protocol::features::{self, Features};
use prezero_device::protocol::pfn::bitmap_test;
use prezero_device::protocol::queues::QueueRole;
use prezero_device::{BalloonDevice, DeviceOptions, DiscardMode, HostDiscard};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap, MemoryRegionAddress,
};

const RING: u64 = 0;
const DATA: u64 = 0x100000;
const DATA_LEN: usize = 8 << 20;
const CHUNK: u32 = 1 << 20;

fn memfd(len: usize) -> File {
    // SAFETY: plain syscall with a valid NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"prezero-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor we own.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len as u64).unwrap();
    file
}

fn tmp_file(len: usize, byte: u8) -> File {
    // An unlinked file on a real filesystem (not a memfd): its scratch directory goes with it.
    let dir = prezero_testkit::Scratch::new("file");
    let path = dir.join("data");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    std::io::Write::write_all(&mut &file, &vec![byte; len]).unwrap();
    file.sync_all().unwrap();
    file
}

fn ring_region() -> GuestRegionMmap<()> {
    GuestRegionMmap::from_range(GuestAddress(RING), DATA as usize, None).unwrap()
}

fn memory(data: GuestRegionMmap<()>) -> GuestMemoryMmap<()> {
    GuestMemoryMmap::from_regions(vec![ring_region(), data]).unwrap()
}

fn anon() -> GuestMemoryMmap<()> {
    memory(GuestRegionMmap::from_range(GuestAddress(DATA), DATA_LEN, None).unwrap())
}

fn with_file(file: File, flags: i32) -> GuestMemoryMmap<()> {
    let region = MmapRegionBuilder::new(DATA_LEN)
        .with_file_offset(FileOffset::new(file, 0))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(flags)
        .build()
        .unwrap();
    memory(GuestRegionMmap::new(region, GuestAddress(DATA)).unwrap())
}

fn shared_anon() -> GuestMemoryMmap<()> {
    let region = MmapRegionBuilder::new(DATA_LEN)
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
        .build()
        .unwrap();
    memory(GuestRegionMmap::new(region, GuestAddress(DATA)).unwrap())
}

fn data_region(m: &GuestMemoryMmap<()>) -> &GuestRegionMmap<()> {
    m.find_region(GuestAddress(DATA)).unwrap()
}

/// Resident pages of `[DATA + offset, + len)` in this process (mincore).
fn resident_pages(m: &GuestMemoryMmap<()>, offset: u64, len: usize) -> usize {
    let host = data_region(m)
        .get_host_address(MemoryRegionAddress(offset))
        .unwrap();
    let pages = len / 4096;
    let mut vec = vec![0u8; pages];
    // SAFETY: the range is inside the live data mapping; vec has one byte per page.
    let rc = unsafe { libc::mincore(host.cast(), len, vec.as_mut_ptr()) };
    assert_eq!(rc, 0);
    vec.iter().filter(|b| *b & 1 != 0).count()
}

/// Bytes allocated to a file (st_blocks * 512).
fn allocated(file_fd: i32) -> u64 {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: valid fd and out-pointer.
    assert_eq!(unsafe { libc::fstat(file_fd, st.as_mut_ptr()) }, 0);
    // SAFETY: fstat succeeded.
    let st = unsafe { st.assume_init() };
    st.st_blocks as u64 * 512
}

fn data_fd(m: &GuestMemoryMmap<()>) -> i32 {
    data_region(m).file_offset().unwrap().file().as_raw_fd()
}

fn reporting_device(discard: HostDiscard<()>) -> BalloonDevice<HostDiscard<()>> {
    let mut dev = BalloonDevice::new(DeviceOptions::default(), discard).unwrap();
    dev.ack_features(
        Features::EMPTY
            .with(features::REPORTING)
            .with(features::DEVICE_INIT_REPORTED)
            .with(features::DEVICE_INIT_ON_INFLATE)
            .with(features::VERSION_1)
            .bits(),
    );
    dev
}

/// Report `[DATA, DATA + 4 MiB)` as four single-block chains; returns the used lengths.
fn report_4mib(dev: &mut BalloonDevice<HostDiscard<()>>, m: &GuestMemoryMmap<()>) -> Vec<u32> {
    let mut drv = Driver::new(m, RING, 16);
    for i in 0..4u64 {
        drv.add(&[w(DATA + i * u64::from(CHUNK), CHUNK)]);
    }
    let index = dev.queue_roles().index(QueueRole::Reporting).unwrap();
    dev.process_queue(index, &mut drv.queue, m).unwrap();
    (0..4).map(|i| drv.used(i).1).collect()
}

fn fill_data(m: &GuestMemoryMmap<()>, byte: u8, len: usize) {
    m.write_slice(&vec![byte; len], GuestAddress(DATA)).unwrap();
}

fn data_bytes(m: &GuestMemoryMmap<()>, offset: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    m.read_slice(&mut v, GuestAddress(DATA + offset)).unwrap();
    v
}

const FOUR_MIB: usize = 4 << 20;

#[test]
fn anonymous_report_zeroes_releases_and_claims() {
    let m = anon();
    fill_data(&m, 0xa5, FOUR_MIB + 4096);
    assert_eq!(resident_pages(&m, 0, FOUR_MIB), FOUR_MIB / 4096);
    let mut dev = reporting_device(HostDiscard::new());
    assert_eq!(report_4mib(&mut dev, &m), vec![CHUNK; 4]);
    assert_eq!(resident_pages(&m, 0, FOUR_MIB), 0, "pages released");
    assert!(data_bytes(&m, 0, FOUR_MIB).iter().all(|b| *b == 0));
    assert_eq!(
        data_bytes(&m, FOUR_MIB as u64, 1),
        vec![0xa5],
        "neighbour untouched"
    );
    let metrics = dev.metrics();
    assert_eq!(metrics.discarded_bytes, FOUR_MIB as u64);
    assert_eq!(metrics.zeroed_bytes, FOUR_MIB as u64);
}

#[test]
fn memfd_report_punches_holes_and_claims() {
    let m = with_file(memfd(DATA_LEN), libc::MAP_SHARED);
    fill_data(&m, 0x5a, FOUR_MIB + 4096);
    let fd = data_fd(&m);
    let before = allocated(fd);
    assert!(before >= (FOUR_MIB + 4096) as u64);
    let mut dev = reporting_device(HostDiscard::new());
    assert_eq!(report_4mib(&mut dev, &m), vec![CHUNK; 4]);
    let after = allocated(fd);
    assert!(
        before - after >= FOUR_MIB as u64,
        "allocation {before} -> {after}"
    );
    assert!(data_bytes(&m, 0, FOUR_MIB).iter().all(|b| *b == 0));
    assert_eq!(data_bytes(&m, FOUR_MIB as u64, 1), vec![0x5a]);
    let backing = dev.discard_backend_mut().backing(data_region(&m));
    assert_eq!(backing.method, DiscardMethod::PunchHole);
}

#[test]
fn shared_file_on_disk_report_punches_and_claims() {
    let m = with_file(tmp_file(DATA_LEN, 0x33), libc::MAP_SHARED);
    fill_data(&m, 0x44, FOUR_MIB);
    let fd = data_fd(&m);
    let before = allocated(fd);
    let mut dev = reporting_device(HostDiscard::new());
    assert_eq!(report_4mib(&mut dev, &m), vec![CHUNK; 4]);
    assert!(before - allocated(fd) >= FOUR_MIB as u64);
    assert!(data_bytes(&m, 0, FOUR_MIB).iter().all(|b| *b == 0));
}

#[test]
fn shared_anonymous_report_removes_and_claims() {
    let m = shared_anon();
    fill_data(&m, 0x77, FOUR_MIB);
    let mut dev = reporting_device(HostDiscard::new());
    assert_eq!(
        dev.discard_backend_mut().backing(data_region(&m)).method,
        DiscardMethod::Madvise(libc::MADV_REMOVE)
    );
    assert_eq!(report_4mib(&mut dev, &m), vec![CHUNK; 4]);
    assert!(data_bytes(&m, 0, FOUR_MIB).iter().all(|b| *b == 0));
}

#[test]
fn private_file_mapping_discards_but_never_claims() {
    // The file holds 0x11; the guest wrote 0x22 into its private copy.
    let m = with_file(tmp_file(DATA_LEN, 0x11), libc::MAP_PRIVATE);
    fill_data(&m, 0x22, FOUR_MIB);
    let mut dev = reporting_device(HostDiscard::new());
    let backing = dev.discard_backend_mut().backing(data_region(&m));
    assert_eq!(backing.policy.mode, DiscardMode::NonZeroing);
    assert_eq!(report_4mib(&mut dev, &m), vec![0; 4]);
    // The private copies were dropped: the memory reads the file again, not zeros.
    assert!(data_bytes(&m, 0, FOUR_MIB).iter().all(|b| *b == 0x11));
    assert_eq!(dev.metrics().discarded_bytes, FOUR_MIB as u64);
    assert_eq!(dev.metrics().zeroed_bytes, 0);
}

#[test]
fn discard_disabled_keeps_memory_and_claims_nothing() {
    let m = anon();
    fill_data(&m, 0x99, FOUR_MIB);
    let mut dev = reporting_device(HostDiscard::disabled());
    assert_eq!(report_4mib(&mut dev, &m), vec![0; 4]);
    assert!(data_bytes(&m, 0, FOUR_MIB).iter().all(|b| *b == 0x99));
    assert_eq!(resident_pages(&m, 0, FOUR_MIB), FOUR_MIB / 4096);
}

#[test]
fn memfd_inflate_bitmap_matches_memory() {
    let m = with_file(memfd(DATA_LEN), libc::MAP_SHARED);
    fill_data(&m, 0xc3, 64 * 4096);
    let mut dev = reporting_device(HostDiscard::new());
    let mut drv = Driver::new(&m, RING, 16);
    let first = (DATA >> 12) as u32;
    // Every other page of the first 64, plus one PFN past RAM.
    let mut pfns: Vec<u32> = (0..64).step_by(2).map(|i| first + i).collect();
    pfns.push(u32::MAX);
    let len = write_pfns(&m, BUFS, &pfns);
    drv.add(&[r(BUFS, len), w(BUFS + 0x1000, 8)]);
    let index = dev.queue_roles().index(QueueRole::Inflate).unwrap();
    dev.process_queue(index, &mut drv.queue, &m).unwrap();
    assert_eq!(drv.last_used().1, 5);
    let bm = read_bytes(&m, BUFS + 0x1000, 5);
    for (i, pfn) in pfns.iter().enumerate() {
        if *pfn == u32::MAX {
            assert!(!bitmap_test(&bm, i));
            continue;
        }
        assert!(bitmap_test(&bm, i), "bit {i}");
        let offset = (u64::from(*pfn) << 12) - DATA;
        assert!(data_bytes(&m, offset, 4096).iter().all(|b| *b == 0));
        assert_eq!(
            data_bytes(&m, offset + 4096, 1),
            vec![0xc3],
            "odd page kept"
        );
    }
    // 32 separate pages: 32 punches (no run is longer than one page).
    assert_eq!(dev.metrics().discard_calls, 32);
}

#[test]
fn deflate_willneed_is_harmless() {
    let m = anon();
    let options = DeviceOptions {
        deflate_willneed: true,
        ..DeviceOptions::default()
    };
    let mut dev = BalloonDevice::new(options, HostDiscard::new()).unwrap();
    dev.ack_features(0);
    let mut drv = Driver::new(&m, RING, 16);
    fill_data(&m, 0x10, 4096);
    let len = write_pfns(&m, BUFS, &[(DATA >> 12) as u32]);
    drv.add(&[r(BUFS, len)]);
    let index = dev.queue_roles().index(QueueRole::Deflate).unwrap();
    dev.process_queue(index, &mut drv.queue, &m).unwrap();
    assert_eq!(drv.used_idx(), 1);
    assert_eq!(data_bytes(&m, 0, 1), vec![0x10]);
    assert_eq!(dev.metrics().deflated_pages, 1);
}

#[test]
fn classification_of_backings() {
    let mut d = HostDiscard::<()>::new();
    let m = anon();
    let b = d.backing(data_region(&m));
    assert_eq!(b.method, DiscardMethod::Madvise(libc::MADV_DONTNEED));
    assert_eq!(b.policy.mode, DiscardMode::Zeroing);
    assert_eq!(
        b.policy.host_page_size,
        prezero_device::host_discard::system_page_size()
    );
    let m = with_file(memfd(DATA_LEN), libc::MAP_SHARED);
    assert_eq!(d.backing(data_region(&m)).method, DiscardMethod::PunchHole);
    let mut off = HostDiscard::<()>::disabled();
    assert_eq!(
        off.backing(data_region(&m)).policy.mode,
        DiscardMode::Disabled
    );
}

/// Needs free hugetlb pages (`/proc/sys/vm/nr_hugepages`), which CI machines rarely have.
#[test]
#[ignore = "needs free 2 MiB hugetlb pages"]
fn hugetlbfs_memfd_uses_the_huge_page_size() {
    // SAFETY: plain syscall.
    let fd = unsafe {
        libc::memfd_create(
            c"prezero-huge".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_HUGETLB,
        )
    };
    assert!(fd >= 0);
    // SAFETY: fresh descriptor we own.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(DATA_LEN as u64).unwrap();
    let m = with_file(file, libc::MAP_SHARED);
    fill_data(&m, 0x12, FOUR_MIB);
    let mut dev = reporting_device(HostDiscard::new());
    let b = dev.discard_backend_mut().backing(data_region(&m));
    assert_eq!(b.policy.host_page_size, 2 << 20);
    // 1 MiB chains cover half huge pages: nothing is claimed.
    assert_eq!(report_4mib(&mut dev, &m), vec![0; 4]);
}
