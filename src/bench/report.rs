//! `prezero bench report`: free page reporting throughput through the real queue path, against
//! the raw discard syscalls.
//!
//! For each backing (a memfd mapped shared, private anonymous memory), a guest region of
//! `region_bytes` is reported in requests of `elements_per_request` elements of `element_bytes`
//! (default: 2 GiB, 32 x 4 MiB, as the stock Linux driver sends). Each request is one descriptor
//! chain in a split ring (a [`prezero_virtq::SplitQueue`]) placed in a small separate region,
//! processed by
//! [`BalloonDevice::process_queue`] with the [`HostDiscard`] backend, `DEVICE_INIT_REPORTED`
//! negotiated.
//!
//! The elements of one request are never adjacent (request `r` takes blocks `r, r + R, r + 2R,
//! ...`), as blocks taken from the guest's free lists rarely are; so the device cannot merge
//! them and issues exactly the syscalls of the floor: one `fallocate(PUNCH_HOLE)` (memfd) or
//! `madvise(MADV_DONTNEED)` (anonymous) per element, over the same ranges in the same order.
//!
//! Every pass first dirties every page of the region (not timed), so each discard has real
//! work; device and floor passes alternate, and which one goes first alternates too.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

use prezero_balloon::features::{Features, DEVICE_INIT_REPORTED, REPORTING, VERSION_1};
use prezero_balloon::queues::QueueRole;
use serde::Serialize;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap, MemoryRegionAddress,
};

use prezero_device::host_discard::system_page_size;
use prezero_device::{BalloonDevice, DeviceError, DeviceOptions, HostDiscard};
use prezero_virtq::{Buffer, QueueError, SplitQueue};

const GIB: f64 = (1u64 << 30) as f64;
/// Guest-physical base of the reported region; the ring lives below it.
const DATA_BASE: u64 = 1 << 30;
const RING_REGION: usize = 1 << 20;
/// Entries of the reporting ring (the most elements a request may have).
const RING_SIZE: u16 = 256;

/// A backing for the reported region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backing {
    /// A memfd mapped `MAP_SHARED` (discard: `fallocate(PUNCH_HOLE|KEEP_SIZE)`).
    Memfd,
    /// Private anonymous memory (discard: `madvise(MADV_DONTNEED)`).
    Anonymous,
}

impl Backing {
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Backing::Memfd => "memfd",
            Backing::Anonymous => "anonymous",
        }
    }
}

/// What to measure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportBenchOptions {
    /// Size of the reported region per backing (default 2 GiB).
    pub region_bytes: u64,
    /// Size of one reported element (default 4 MiB).
    pub element_bytes: u64,
    /// Elements per request chain (default 32).
    pub elements_per_request: u16,
    /// Passes over the whole region, each for the device and for the floor (default 3).
    pub passes: u32,
    /// Backings to measure (default memfd then anonymous).
    pub backings: Vec<Backing>,
}

impl Default for ReportBenchOptions {
    fn default() -> Self {
        ReportBenchOptions {
            region_bytes: 2 << 30,
            element_bytes: 4 << 20,
            elements_per_request: 32,
            passes: 3,
            backings: vec![Backing::Memfd, Backing::Anonymous],
        }
    }
}

impl ReportBenchOptions {
    /// A small configuration for tests: 64 MiB, 1 MiB elements, 8 per request, 1 pass.
    #[cfg(test)]
    pub fn small() -> Self {
        ReportBenchOptions {
            region_bytes: 64 << 20,
            element_bytes: 1 << 20,
            elements_per_request: 8,
            passes: 1,
            ..Self::default()
        }
    }
}

/// Result for one backing.
#[derive(Clone, Debug, Serialize)]
pub struct BackingResult {
    /// Which backing.
    pub backing: Backing,
    /// Reported bytes per second through the device, in GiB/s.
    pub device_gib_s: f64,
    /// The same discard syscalls in a bare loop, in GiB/s.
    pub floor_gib_s: f64,
    /// Device time over floor time (1.0 = no overhead).
    pub ratio: f64,
    /// Discard syscalls the device issued per GiB reported.
    pub syscalls_per_gib: f64,
    /// Discard syscalls the floor issued per GiB.
    pub floor_syscalls_per_gib: f64,
    /// Fraction of reported bytes the device answered "zeroed" (used length = full length).
    pub zeroed_fraction: f64,
    /// Seconds spent in the device, all passes.
    pub device_seconds: f64,
    /// Seconds spent in the floor loop, all passes.
    pub floor_seconds: f64,
}

/// The benchmark result (`--json` output).
#[derive(Clone, Debug, Serialize)]
pub struct ReportBenchResult {
    /// All backings together, GiB/s through the device.
    pub device_gib_s: f64,
    /// All backings together, GiB/s for the raw syscall loop.
    pub floor_gib_s: f64,
    /// Device time over floor time, all backings (target: <= 1.2).
    pub ratio: f64,
    /// Discard syscalls per GiB through the device, all backings.
    pub syscalls_per_gib: f64,
    /// Region size per backing.
    pub region_bytes: u64,
    /// Element size.
    pub element_bytes: u64,
    /// Elements per request.
    pub elements_per_request: u16,
    /// Passes.
    pub passes: u32,
    /// Per-backing detail.
    pub backings: Vec<BackingResult>,
}

impl ReportBenchResult {
    /// A human-readable table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "report bench: {} MiB per backing, {} x {} KiB elements per request, {} pass(es)\n",
            self.region_bytes >> 20,
            self.elements_per_request,
            self.element_bytes >> 10,
            self.passes
        );
        out.push_str(&format!(
            "{:<10} {:>13} {:>12} {:>7} {:>13} {:>8}\n",
            "backing", "device GiB/s", "floor GiB/s", "ratio", "syscalls/GiB", "zeroed"
        ));
        for b in &self.backings {
            out.push_str(&format!(
                "{:<10} {:>13.2} {:>12.2} {:>7.3} {:>13.1} {:>7.1}%\n",
                b.backing.name(),
                b.device_gib_s,
                b.floor_gib_s,
                b.ratio,
                b.syscalls_per_gib,
                b.zeroed_fraction * 100.0
            ));
        }
        out.push_str(&format!(
            "{:<10} {:>13.2} {:>12.2} {:>7.3} {:>13.1}\n",
            "all", self.device_gib_s, self.floor_gib_s, self.ratio, self.syscalls_per_gib
        ));
        out
    }
}

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The options make no sense.
    #[error("invalid bench options: {0}")]
    Options(&'static str),
    /// Setting up memory failed.
    #[error("bench setup: {0}")]
    Setup(String),
    /// The device refused a request it should have served.
    #[error("bench: device error: {0}")]
    Device(#[from] DeviceError),
    /// The driver side of the ring refused a request (a bug in this benchmark).
    #[error("bench: ring error: {0}")]
    Ring(#[from] QueueError),
}

/// Run the benchmark.
pub fn run(opts: &ReportBenchOptions) -> Result<ReportBenchResult, BenchError> {
    validate(opts)?;
    let mut backings = Vec::new();
    for backing in &opts.backings {
        backings.push(run_backing(opts, *backing)?);
    }
    let total = |f: fn(&BackingResult) -> f64| backings.iter().map(f).sum::<f64>();
    let bytes = opts.region_bytes as f64 * f64::from(opts.passes) * backings.len() as f64;
    let device_s = total(|b| b.device_seconds);
    let floor_s = total(|b| b.floor_seconds);
    let syscalls = total(|b| b.syscalls_per_gib);
    Ok(ReportBenchResult {
        device_gib_s: rate(bytes, device_s),
        floor_gib_s: rate(bytes, floor_s),
        ratio: ratio(device_s, floor_s),
        syscalls_per_gib: if backings.is_empty() {
            0.0
        } else {
            syscalls / backings.len() as f64
        },
        region_bytes: opts.region_bytes,
        element_bytes: opts.element_bytes,
        elements_per_request: opts.elements_per_request,
        passes: opts.passes,
        backings,
    })
}

fn validate(opts: &ReportBenchOptions) -> Result<(), BenchError> {
    let page = system_page_size();
    if opts.element_bytes == 0
        || opts.element_bytes % page != 0
        || opts.element_bytes > u64::from(u32::MAX)
    {
        return Err(BenchError::Options(
            "element_bytes must be a non-zero multiple of the page size below 4 GiB",
        ));
    }
    if opts.region_bytes < opts.element_bytes || opts.region_bytes % opts.element_bytes != 0 {
        return Err(BenchError::Options(
            "region_bytes must be a non-zero multiple of element_bytes",
        ));
    }
    if opts.elements_per_request == 0 || opts.elements_per_request > RING_SIZE {
        return Err(BenchError::Options(
            "elements_per_request must be in 1..=256",
        ));
    }
    if opts.passes == 0 {
        return Err(BenchError::Options("passes must be at least 1"));
    }
    Ok(())
}

/// Device time over floor time (0 when the floor took no time).
fn ratio(device_s: f64, floor_s: f64) -> f64 {
    if floor_s > 0.0 {
        device_s / floor_s
    } else {
        0.0
    }
}

fn rate(bytes: f64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes / GIB / seconds
    } else {
        0.0
    }
}

fn memory(opts: &ReportBenchOptions, backing: Backing) -> Result<GuestMemoryMmap<()>, BenchError> {
    let size =
        usize::try_from(opts.region_bytes).map_err(|_| BenchError::Options("region too large"))?;
    let setup = |e: &dyn std::fmt::Display| BenchError::Setup(e.to_string());
    let ring =
        GuestRegionMmap::from_range(GuestAddress(0), RING_REGION, None).map_err(|e| setup(&e))?;
    let data = match backing {
        Backing::Anonymous => GuestRegionMmap::from_range(GuestAddress(DATA_BASE), size, None),
        Backing::Memfd => {
            // SAFETY: plain syscall with a NUL-terminated name.
            let fd = unsafe { libc::memfd_create(c"prezero-bench".as_ptr(), libc::MFD_CLOEXEC) };
            if fd < 0 {
                return Err(setup(&std::io::Error::last_os_error()));
            }
            // SAFETY: a fresh descriptor this function owns.
            let file = unsafe { File::from_raw_fd(fd) };
            file.set_len(opts.region_bytes).map_err(|e| setup(&e))?;
            GuestRegionMmap::from_range(
                GuestAddress(DATA_BASE),
                size,
                Some(FileOffset::new(file, 0)),
            )
        }
    }
    .map_err(|e| setup(&e))?;
    GuestMemoryMmap::from_regions(vec![ring, data]).map_err(|e| setup(&e))
}

/// Block indices of request `r`: `r, r + R, r + 2R, ...` so no two are adjacent.
fn request_blocks(
    r: u64,
    requests: u64,
    blocks: u64,
    per_request: u64,
) -> impl Iterator<Item = u64> {
    (0..per_request)
        .map(move |i| i * requests + r)
        .filter(move |b| *b < blocks)
}

fn run_backing(opts: &ReportBenchOptions, backing: Backing) -> Result<BackingResult, BenchError> {
    let mem = memory(opts, backing)?;
    let blocks = opts.region_bytes / opts.element_bytes;
    let per_request = u64::from(opts.elements_per_request);
    let requests = blocks.div_ceil(per_request);

    let mut dev = BalloonDevice::new(DeviceOptions::default(), HostDiscard::<()>::new())?;
    dev.ack_features(
        Features::EMPTY
            .with(REPORTING)
            .with(DEVICE_INIT_REPORTED)
            .with(VERSION_1)
            .bits(),
    );
    let index = dev
        .queue_roles()
        .index(QueueRole::Reporting)
        .ok_or(BenchError::Options("reporting not negotiated"))?;
    let mut ring = SplitQueue::new(&mem, RING_SIZE, 0, false)?;
    let mut queue = ring.layout().device_queue();

    let mut device_time = Duration::ZERO;
    let mut floor_time = Duration::ZERO;
    let mut reported = 0u64;
    let mut zeroed = 0u64;
    let mut floor_calls = 0u64;
    for pass in 0..opts.passes {
        let device_first = pass % 2 == 0;
        for step in 0..2 {
            dirty(&mem, opts.region_bytes);
            if (step == 0) == device_first {
                for r in 0..requests {
                    let bufs: Vec<Buffer> = request_blocks(r, requests, blocks, per_request)
                        .map(|block| {
                            let gpa = DATA_BASE + block * opts.element_bytes;
                            Buffer::writable(gpa, opts.element_bytes as u32)
                        })
                        .collect();
                    if bufs.is_empty() {
                        continue;
                    }
                    ring.add(&bufs, ())?;
                    let start = Instant::now();
                    dev.process_queue(index, &mut queue, &mem)?;
                    device_time += start.elapsed();
                    while let Some(used) = ring.pop_used()? {
                        reported += bufs.len() as u64 * opts.element_bytes;
                        zeroed += u64::from(used.len);
                    }
                }
            } else {
                let region = mem
                    .find_region(GuestAddress(DATA_BASE))
                    .ok_or(BenchError::Options("no data region"))?;
                for r in 0..requests {
                    for block in request_blocks(r, requests, blocks, per_request) {
                        let offset = block * opts.element_bytes;
                        let start = Instant::now();
                        floor_discard(region, backing, offset, opts.element_bytes)?;
                        floor_time += start.elapsed();
                        floor_calls += 1;
                    }
                }
            }
        }
    }
    let bytes = opts.region_bytes as f64 * f64::from(opts.passes);
    let gib = bytes / GIB;
    let device_s = device_time.as_secs_f64();
    let floor_s = floor_time.as_secs_f64();
    Ok(BackingResult {
        backing,
        device_gib_s: rate(bytes, device_s),
        floor_gib_s: rate(bytes, floor_s),
        ratio: ratio(device_s, floor_s),
        syscalls_per_gib: dev.metrics().discard_calls as f64 / gib,
        floor_syscalls_per_gib: floor_calls as f64 / gib,
        zeroed_fraction: if reported > 0 {
            zeroed as f64 / reported as f64
        } else {
            0.0
        },
        device_seconds: device_s,
        floor_seconds: floor_s,
    })
}

/// Touch every page so the next discard has memory to release.
fn dirty(mem: &GuestMemoryMmap<()>, len: u64) {
    let page = system_page_size();
    let mut offset = 0;
    while offset < len {
        let _ = mem.write_obj(0x5au8, GuestAddress(DATA_BASE + offset));
        offset += page;
    }
}

/// The floor: the bare syscall the device would issue for this range.
fn floor_discard(
    region: &GuestRegionMmap<()>,
    backing: Backing,
    offset: u64,
    len: u64,
) -> Result<(), BenchError> {
    let rc = match backing {
        Backing::Memfd => {
            let fd = region
                .file_offset()
                .ok_or(BenchError::Options("memfd region without file"))?
                .file()
                .as_raw_fd();
            // SAFETY: plain syscall on the region's own file, inside its size.
            unsafe {
                libc::fallocate(
                    fd,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    offset as libc::off_t,
                    len as libc::off_t,
                )
            }
        }
        Backing::Anonymous => {
            let host = region
                .get_host_address(MemoryRegionAddress(offset))
                .map_err(|e| BenchError::Setup(e.to_string()))?;
            // SAFETY: [host, host + len) lies inside the region's mapping (offset + len <= size
            // by construction); dropping pages of guest memory is what the device does too.
            unsafe { libc::madvise(host.cast(), len as usize, libc::MADV_DONTNEED) }
        }
    };
    if rc != 0 {
        return Err(BenchError::Setup(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_blocks_are_never_adjacent_and_cover_everything() {
        let (blocks, per) = (50u64, 8u64);
        let requests = blocks.div_ceil(per);
        let mut all = Vec::new();
        for r in 0..requests {
            let b: Vec<u64> = request_blocks(r, requests, blocks, per).collect();
            assert!(b.windows(2).all(|w| w[1] - w[0] > 1));
            all.extend(b);
        }
        all.sort_unstable();
        assert_eq!(all, (0..blocks).collect::<Vec<_>>());
    }

    /// Run small, it must go through the device, issue one discard per element like the floor,
    /// and get every element answered "zeroed".
    #[test]
    fn small_report_bench_runs_through_the_device() {
        let opts = ReportBenchOptions::small();
        let result = run(&opts).unwrap();
        assert_eq!(result.backings.len(), 2);
        for b in &result.backings {
            // 1 MiB elements: 1024 per GiB, one syscall each, for the device and the floor.
            assert_eq!(b.syscalls_per_gib, 1024.0, "{:?}", b.backing);
            assert_eq!(b.floor_syscalls_per_gib, 1024.0);
            assert_eq!(b.zeroed_fraction, 1.0);
            assert!(b.device_gib_s > 0.0 && b.floor_gib_s > 0.0 && b.ratio > 0.0);
        }
        assert_eq!(result.backings[0].backing, Backing::Memfd);
        let json = serde_json::to_value(&result).unwrap();
        for key in ["device_gib_s", "floor_gib_s", "syscalls_per_gib", "ratio"] {
            assert!(json[key].is_number(), "{key} missing");
        }
        assert_eq!(json["backings"][1]["backing"], "anonymous");
        let table = result.table();
        assert!(table.contains("memfd") && table.contains("anonymous") && table.contains("all"));
    }

    #[test]
    fn bad_options_are_refused() {
        let o = ReportBenchOptions {
            element_bytes: 1000,
            ..ReportBenchOptions::small()
        };
        assert!(run(&o).is_err());
        let o = ReportBenchOptions {
            region_bytes: o.element_bytes * 3 / 2,
            ..ReportBenchOptions::small()
        };
        assert!(run(&o).is_err());
        let o = ReportBenchOptions {
            passes: 0,
            ..ReportBenchOptions::small()
        };
        assert!(run(&o).is_err());
    }
}
