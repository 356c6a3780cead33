//! `prezero bench report`: free page reporting throughput through the real queue path, for
//! the two request patterns drivers use, against the raw discard syscalls.
//!
//! Patterns (per queue drain: what a driver hands over before it kicks and waits):
//! - **stock**: one chain of 32 x 4 MiB blocks, as the stock Linux 6.1 driver sends (one
//!   chain per pass of up to `PAGE_REPORTING_CAPACITY` pageblocks; 4 MiB in UML);
//! - **upstream**: 256 chains of one 2 MiB block each, as the upstream patched driver sends
//!   (one chain per block, up to the ring size per pass).
//!
//! For each backing (a memfd mapped shared, private anonymous memory), a guest region of
//! `region_bytes` is reported front to back, so the blocks of one drain are contiguous (a
//! freshly freed region, as after a large free). The device runs with the [`HostDiscard`]
//! backend and `DEVICE_INIT_REPORTED` negotiated, its ring in a small separate region; one
//! [`BalloonDevice::process_queue`] call per drain. The floor is one bare discard syscall per
//! contiguous range of each drain (`fallocate(PUNCH_HOLE)` on the memfd,
//! `madvise(MADV_DONTNEED)` on anonymous memory): the least any device can do for the same
//! request.
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

use crate::output::Progress;

const GIB: f64 = (1u64 << 30) as f64;
/// Guest-physical base of the reported region; the ring lives below it.
const DATA_BASE: u64 = 1 << 30;
const RING_REGION: usize = 1 << 20;
/// Entries of the reporting ring (the most blocks a drain may have).
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

/// Which driver's request pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// The stock Linux driver: one chain of many blocks per drain.
    Stock,
    /// The upstream patched driver: one chain per block, many chains per drain.
    Upstream,
}

impl Pattern {
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::Stock => "stock",
            Pattern::Upstream => "upstream",
        }
    }
}

/// The shape of one pattern's drains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Which pattern this is.
    pub pattern: Pattern,
    /// Chains per drain.
    pub chains: u16,
    /// Blocks (device-writable buffers) per chain.
    pub blocks_per_chain: u16,
    /// Bytes per block.
    pub block_bytes: u64,
}

impl Shape {
    /// One chain of 32 x 4 MiB.
    pub const STOCK: Shape = Shape {
        pattern: Pattern::Stock,
        chains: 1,
        blocks_per_chain: 32,
        block_bytes: 4 << 20,
    };
    /// 256 chains of one 2 MiB block.
    pub const UPSTREAM: Shape = Shape {
        pattern: Pattern::Upstream,
        chains: 256,
        blocks_per_chain: 1,
        block_bytes: 2 << 20,
    };

    /// Bytes reported per drain.
    pub fn drain_bytes(&self) -> u64 {
        u64::from(self.chains) * u64::from(self.blocks_per_chain) * self.block_bytes
    }
}

/// What to measure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportBenchOptions {
    /// Size of the reported region per backing (default 2 GiB).
    pub region_bytes: u64,
    /// Passes over the whole region, each for the device and for the floor (default 3).
    pub passes: u32,
    /// Patterns to measure (default stock then upstream).
    pub shapes: Vec<Shape>,
    /// Backings to measure (default memfd then anonymous).
    pub backings: Vec<Backing>,
}

impl Default for ReportBenchOptions {
    fn default() -> Self {
        ReportBenchOptions {
            region_bytes: 2 << 30,
            passes: 3,
            shapes: vec![Shape::STOCK, Shape::UPSTREAM],
            backings: vec![Backing::Memfd, Backing::Anonymous],
        }
    }
}

impl ReportBenchOptions {
    /// A small configuration for tests: 64 MiB, the two patterns with smaller blocks (stock
    /// 32 x 256 KiB, upstream 256 x 128 KiB), 1 pass.
    #[cfg(test)]
    pub fn small() -> Self {
        ReportBenchOptions {
            region_bytes: 64 << 20,
            passes: 1,
            shapes: vec![
                Shape {
                    block_bytes: 256 << 10,
                    ..Shape::STOCK
                },
                Shape {
                    block_bytes: 128 << 10,
                    ..Shape::UPSTREAM
                },
            ],
            ..Self::default()
        }
    }
}

/// Result for one pattern on one backing.
#[derive(Clone, Debug, Serialize)]
pub struct PatternResult {
    /// Which pattern.
    pub pattern: Pattern,
    /// Which backing.
    pub backing: Backing,
    /// Reported bytes per second through the device, in GiB/s.
    pub device_gib_s: f64,
    /// One discard syscall per contiguous range in a bare loop, in GiB/s.
    pub floor_gib_s: f64,
    /// Device time over floor time (1.0 = no overhead; target <= 1.1).
    pub ratio: f64,
    /// Discard syscalls the device issued per GiB reported.
    pub syscalls_per_gib: f64,
    /// Discard syscalls the floor issued per GiB.
    pub floor_syscalls_per_gib: f64,
    /// Chains per drain.
    pub chains_per_drain: u16,
    /// Blocks per chain.
    pub blocks_per_chain: u16,
    /// Bytes per block.
    pub block_bytes: u64,
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
    /// Region size per backing.
    pub region_bytes: u64,
    /// Passes.
    pub passes: u32,
    /// One entry per pattern and backing.
    pub patterns: Vec<PatternResult>,
}

impl ReportBenchResult {
    /// A human-readable table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "report bench: {} MiB per backing, contiguous, {} pass(es); floor: one discard per \
             contiguous range; t/floor: device time over floor time (1.0: no overhead)\n",
            self.region_bytes >> 20,
            self.passes
        );
        out.push_str(&format!(
            "{:<9} {:<18} {:<10} {:>13} {:>12} {:>7} {:>13} {:>13} {:>8}\n",
            "pattern",
            "chains x blocks",
            "backing",
            "device GiB/s",
            "floor GiB/s",
            "t/floor",
            "syscalls/GiB",
            "floor sc/GiB",
            "zeroed"
        ));
        for p in &self.patterns {
            let shape = format!(
                "{} x {} x {}K",
                p.chains_per_drain,
                p.blocks_per_chain,
                p.block_bytes >> 10
            );
            out.push_str(&format!(
                "{:<9} {:<18} {:<10} {:>13.2} {:>12.2} {:>7.3} {:>13.1} {:>13.1} {:>7.1}%\n",
                p.pattern.name(),
                shape,
                p.backing.name(),
                p.device_gib_s,
                p.floor_gib_s,
                p.ratio,
                p.syscalls_per_gib,
                p.floor_syscalls_per_gib,
                p.zeroed_fraction * 100.0
            ));
        }
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

/// Run the benchmark (progress on stderr: one step per pass of each pattern and backing).
pub fn run(opts: &ReportBenchOptions) -> Result<ReportBenchResult, BenchError> {
    validate(opts)?;
    let mut progress = Progress::new(
        "bench report",
        (opts.shapes.len() * opts.backings.len()) as u64 * u64::from(opts.passes),
    );
    let mut patterns = Vec::new();
    for shape in &opts.shapes {
        for backing in &opts.backings {
            patterns.push(run_pattern(opts, *shape, *backing, &mut progress)?);
        }
    }
    Ok(ReportBenchResult {
        region_bytes: opts.region_bytes,
        passes: opts.passes,
        patterns,
    })
}

fn validate(opts: &ReportBenchOptions) -> Result<(), BenchError> {
    let page = system_page_size();
    for shape in &opts.shapes {
        if shape.block_bytes == 0
            || shape.block_bytes % page != 0
            || shape.block_bytes > u64::from(u32::MAX)
        {
            return Err(BenchError::Options(
                "block_bytes must be a non-zero multiple of the page size below 4 GiB",
            ));
        }
        let blocks = u32::from(shape.chains) * u32::from(shape.blocks_per_chain);
        if blocks == 0 || blocks > u32::from(RING_SIZE) {
            return Err(BenchError::Options(
                "a drain must have 1 to 256 blocks (the ring's size)",
            ));
        }
        let drain = shape.drain_bytes();
        if opts.region_bytes < drain || opts.region_bytes % drain != 0 {
            return Err(BenchError::Options(
                "the region must be a multiple of every pattern's drain (128 MiB stock, 512 MiB upstream): use --mib 512, 1024, 2048, ...",
            ));
        }
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

fn run_pattern(
    opts: &ReportBenchOptions,
    shape: Shape,
    backing: Backing,
    progress: &mut Progress,
) -> Result<PatternResult, BenchError> {
    let mem = memory(opts, backing)?;
    let drain_bytes = shape.drain_bytes();
    let drains = opts.region_bytes / drain_bytes;

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
    let region = mem
        .find_region(GuestAddress(DATA_BASE))
        .ok_or(BenchError::Options("no data region"))?;

    let mut device_time = Duration::ZERO;
    let mut floor_time = Duration::ZERO;
    let mut reported = 0u64;
    let mut zeroed = 0u64;
    let mut floor_calls = 0u64;
    let chain_bytes = u64::from(shape.blocks_per_chain) * shape.block_bytes;
    for pass in 0..opts.passes {
        progress.step(&format!(
            "{} on {}: pass {}/{}",
            shape.pattern.name(),
            backing.name(),
            pass + 1,
            opts.passes
        ));
        let device_first = pass % 2 == 0;
        for step in 0..2 {
            dirty(&mem, opts.region_bytes);
            if (step == 0) == device_first {
                for d in 0..drains {
                    let base = DATA_BASE + d * drain_bytes;
                    for c in 0..u64::from(shape.chains) {
                        let bufs: Vec<Buffer> = (0..u64::from(shape.blocks_per_chain))
                            .map(|b| {
                                let gpa = base + c * chain_bytes + b * shape.block_bytes;
                                Buffer::writable(gpa, shape.block_bytes as u32)
                            })
                            .collect();
                        ring.add(&bufs, ())?;
                    }
                    let start = Instant::now();
                    dev.process_queue(index, &mut queue, &mem)?;
                    device_time += start.elapsed();
                    while let Some(used) = ring.pop_used()? {
                        reported += chain_bytes;
                        zeroed += u64::from(used.len);
                    }
                }
            } else {
                // A drain's blocks form one contiguous range: one syscall each.
                for d in 0..drains {
                    let start = Instant::now();
                    floor_discard(region, backing, d * drain_bytes, drain_bytes)?;
                    floor_time += start.elapsed();
                    floor_calls += 1;
                }
            }
        }
        progress.done();
    }
    let bytes = opts.region_bytes as f64 * f64::from(opts.passes);
    let gib = bytes / GIB;
    let device_s = device_time.as_secs_f64();
    let floor_s = floor_time.as_secs_f64();
    Ok(PatternResult {
        pattern: shape.pattern,
        backing,
        device_gib_s: rate(bytes, device_s),
        floor_gib_s: rate(bytes, floor_s),
        ratio: ratio(device_s, floor_s),
        syscalls_per_gib: dev.metrics().discard_calls as f64 / gib,
        floor_syscalls_per_gib: floor_calls as f64 / gib,
        chains_per_drain: shape.chains,
        blocks_per_chain: shape.blocks_per_chain,
        block_bytes: shape.block_bytes,
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

    /// Run small: both patterns go through the device, which issues one discard per drain (its
    /// blocks are contiguous) like the floor, and answers every block "zeroed".
    #[test]
    fn small_report_bench_runs_both_patterns_through_the_device() {
        let opts = ReportBenchOptions::small();
        let result = run(&opts).unwrap();
        assert_eq!(result.patterns.len(), 4);
        for p in &result.patterns {
            // Stock: 8 MiB drains, 128 per GiB; upstream: 32 MiB drains, 32 per GiB.
            let per_gib = match p.pattern {
                Pattern::Stock => 128.0,
                Pattern::Upstream => 32.0,
            };
            assert_eq!(p.syscalls_per_gib, per_gib, "{p:?}");
            assert_eq!(p.floor_syscalls_per_gib, per_gib);
            assert_eq!(p.zeroed_fraction, 1.0);
            assert!(p.device_gib_s > 0.0 && p.floor_gib_s > 0.0 && p.ratio > 0.0);
        }
        let json = serde_json::to_value(&result).unwrap();
        let first = &json["patterns"][0];
        for key in ["device_gib_s", "floor_gib_s", "syscalls_per_gib"] {
            assert!(first[key].is_number(), "{key} missing");
        }
        assert_eq!(first["pattern"], "stock");
        assert_eq!(first["backing"], "memfd");
        assert_eq!(json["patterns"][3]["pattern"], "upstream");
        assert_eq!(json["patterns"][3]["backing"], "anonymous");
        let table = result.table();
        assert!(table.contains("stock") && table.contains("upstream"));
        assert!(table.contains("memfd") && table.contains("anonymous"));
    }

    #[test]
    fn the_default_patterns_are_the_drivers() {
        assert_eq!(Shape::STOCK.drain_bytes(), 128 << 20);
        assert_eq!(Shape::UPSTREAM.drain_bytes(), 512 << 20);
        assert_eq!(Shape::UPSTREAM.chains, RING_SIZE);
    }

    #[test]
    fn bad_options_are_refused() {
        let small = ReportBenchOptions::small();
        let o = ReportBenchOptions {
            shapes: vec![Shape {
                block_bytes: 1000,
                ..Shape::STOCK
            }],
            ..small.clone()
        };
        assert!(run(&o).is_err());
        let o = ReportBenchOptions {
            region_bytes: 96 << 20,
            shapes: vec![Shape::STOCK],
            ..small.clone()
        };
        assert!(run(&o).is_err());
        let o = ReportBenchOptions {
            shapes: vec![Shape {
                chains: 257,
                ..Shape::UPSTREAM
            }],
            ..small.clone()
        };
        assert!(run(&o).is_err());
        let o = ReportBenchOptions { passes: 0, ..small };
        assert!(run(&o).is_err());
    }
}
