//! Guest workloads: the memory behaviour the demo, the benchmarks and the tests exercise.

use crate::error::GuestError;
use crate::guest::{Guest, Vcpu};
use crate::ram::GuestRam;
use prezero_mm::{
    AllocError, AllocFlags, Allocation, CacheStat, Pfn, VmStat, FRAME_SIZE, HUGE_PAGE_ORDER,
    MAX_ORDER,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a workload allocates from: the guest itself (vCPU 0, with deflate-on-OOM) or one of
/// its [`Vcpu`]s on another thread.
pub trait Cpu {
    /// Allocates a block.
    fn alloc(&mut self, order: u8, flags: AllocFlags) -> Result<Allocation, GuestError>;
    /// Frees a block.
    fn free(&mut self, pfn: Pfn, order: u8) -> Result<(), GuestError>;
    /// The guest's RAM.
    fn ram(&self) -> &Arc<GuestRam>;
}

impl Cpu for Guest {
    fn alloc(&mut self, order: u8, flags: AllocFlags) -> Result<Allocation, GuestError> {
        Guest::alloc(self, order, flags)
    }
    fn free(&mut self, pfn: Pfn, order: u8) -> Result<(), GuestError> {
        Guest::free(self, pfn, order)
    }
    fn ram(&self) -> &Arc<GuestRam> {
        Guest::ram(self)
    }
}

impl Cpu for Vcpu {
    fn alloc(&mut self, order: u8, flags: AllocFlags) -> Result<Allocation, GuestError> {
        Vcpu::alloc(self, order, flags)
    }
    fn free(&mut self, pfn: Pfn, order: u8) -> Result<(), GuestError> {
        Vcpu::free(self, pfn, order)
    }
    fn ram(&self) -> &Arc<GuestRam> {
        Vcpu::ram(self)
    }
}

/// A [`Cpu`] that also allocates huge pages from the pool (which lives behind the zone lock).
pub trait HugeCpu: Cpu {
    /// Allocates a huge page from the pool.
    fn alloc_huge(&mut self, flags: AllocFlags) -> Result<Allocation, GuestError>;
}

impl HugeCpu for Guest {
    fn alloc_huge(&mut self, flags: AllocFlags) -> Result<Allocation, GuestError> {
        Guest::alloc_huge(self, flags)
    }
}

impl HugeCpu for Vcpu {
    fn alloc_huge(&mut self, flags: AllocFlags) -> Result<Allocation, GuestError> {
        Vcpu::alloc_huge(self, flags)
    }
}

/// What one vCPU did, from its per-CPU counters.
#[derive(Clone, Copy, Debug)]
pub struct VcpuCounts {
    /// The vCPU.
    pub vcpu: usize,
    /// Its share of the zone's counters (allocations, frees, pages zeroed and skipped).
    pub stat: VmStat,
    /// Its cache's counters (hits, refills, drains).
    pub cache: CacheStat,
}

/// Per-vCPU counts of every vCPU of `guest`.
pub fn vcpu_counts(guest: &Guest) -> Vec<VcpuCounts> {
    (0..guest.vcpus())
        .map(|vcpu| {
            let (stat, cache) = guest.zone().cpu_stat(vcpu);
            VcpuCounts { vcpu, stat, cache }
        })
        .collect()
}

/// [`dirty_and_free`] on every vCPU at once, `bytes` split between them, each on its own
/// thread, while the caller's thread services the device and runs free page reporting
/// ([`Guest::poll`]) concurrently. Returns the bytes dirtied.
pub fn dirty_and_free_on_vcpus(guest: &mut Guest, bytes: u64) -> Result<u64, GuestError> {
    let n = guest.vcpus() as u64;
    let vcpus: Vec<Vcpu> = (0..guest.vcpus()).filter_map(|i| guest.vcpu(i)).collect();
    std::thread::scope(|s| {
        let threads: Vec<_> = vcpus
            .into_iter()
            .map(|mut v| s.spawn(move || dirty_and_free(&mut v, bytes / n)))
            .collect();
        while !threads.iter().all(|t| t.is_finished()) {
            guest.poll(Duration::from_millis(5))?;
        }
        threads
            .into_iter()
            .map(|t| t.join().expect("vCPU thread"))
            .sum()
    })
}

/// Dirties up to `bytes` of free memory (allocate, largest blocks first, write every page,
/// free), as a guest that ran something does. Returns the bytes dirtied.
pub fn dirty_and_free(guest: &mut impl Cpu, bytes: u64) -> Result<u64, GuestError> {
    let mut held = Vec::new();
    let mut dirtied = 0;
    for order in (0..=MAX_ORDER).rev() {
        let block = FRAME_SIZE << order;
        while dirtied + block <= bytes {
            match guest.alloc(order, AllocFlags::NONE) {
                Ok(a) => {
                    guest
                        .ram()
                        .fill(a.pfn.addr(), block, 0xa5)
                        .expect("allocated block inside RAM");
                    held.push((a.pfn, order));
                    dirtied += block;
                }
                Err(GuestError::Alloc(AllocError::OutOfMemory(_))) => break,
                Err(e) => return Err(e),
            }
        }
    }
    for (pfn, order) in held {
        guest.free(pfn, order)?;
    }
    Ok(dirtied)
}

/// Where a run's blocks come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Buddy blocks of this order.
    Buddy(u8),
    /// Huge pages of the pool (the hugetlbfs analogue), order [`HUGE_PAGE_ORDER`].
    HugePool,
}

impl Source {
    /// Order of the blocks.
    pub fn order(self) -> u8 {
        match self {
            Source::Buddy(order) => order,
            Source::HugePool => HUGE_PAGE_ORDER,
        }
    }
}

/// What one zeroed allocation run measured.
#[derive(Clone, Debug)]
pub struct AllocRun {
    /// Blocks allocated (first pfn of each).
    pub blocks: Vec<Pfn>,
    /// Where the blocks came from.
    pub source: Source,
    /// Time in the allocation calls (including any zeroing they did).
    pub alloc: Duration,
    /// Time writing one byte to every 4 KiB page afterwards (the first touch: page faults).
    pub touch: Duration,
    /// Blocks that were known-zero when allocated.
    pub known_zero: u64,
}

impl AllocRun {
    /// Allocation plus touch.
    pub fn total(&self) -> Duration {
        self.alloc + self.touch
    }
}

/// Allocates `bytes` in blocks of `order` with `flags`, then touches every 4 KiB page: the
/// upstream measurement ("allocate 256 MiB anonymous memory") in guest terms.
pub fn alloc_and_touch(
    guest: &mut impl HugeCpu,
    bytes: u64,
    source: Source,
    flags: AllocFlags,
) -> Result<AllocRun, GuestError> {
    let block = FRAME_SIZE << source.order();
    let n = bytes.div_ceil(block) as usize;
    let mut blocks = Vec::with_capacity(n);
    let mut known_zero = 0;
    let start = Instant::now();
    for _ in 0..n {
        let a = match source {
            Source::Buddy(order) => guest.alloc(order, flags)?,
            Source::HugePool => guest.alloc_huge(flags)?,
        };
        known_zero += u64::from(a.known_zero);
        blocks.push(a.pfn);
    }
    let alloc = start.elapsed();
    let ram = guest.ram().clone();
    let start = Instant::now();
    for pfn in &blocks {
        let mut gpa = pfn.addr();
        let end = gpa + block;
        while gpa < end {
            ram.write(gpa, &[1]).expect("allocated block inside RAM");
            gpa += FRAME_SIZE;
        }
    }
    let touch = start.elapsed();
    Ok(AllocRun {
        blocks,
        source,
        alloc,
        touch,
        known_zero,
    })
}

/// Frees the blocks of a run.
pub fn free_run(guest: &mut Guest, run: &AllocRun) -> Result<(), GuestError> {
    for pfn in &run.blocks {
        match run.source {
            Source::Buddy(order) => guest.free(*pfn, order)?,
            Source::HugePool => guest.free_huge(*pfn)?,
        }
    }
    Ok(())
}

/// Fills `bytes` of freshly allocated memory with a pattern derived from `seed` and returns
/// the blocks, for a later [`verify_pattern`].
pub fn fill_pattern(guest: &mut Guest, bytes: u64, seed: u64) -> Result<Vec<Pfn>, GuestError> {
    let block = FRAME_SIZE << 9;
    let mut blocks = Vec::new();
    for _ in 0..bytes.div_ceil(block) {
        let a = guest.alloc(9, AllocFlags::NONE)?;
        let ram = guest.ram();
        let mut page = vec![0u8; FRAME_SIZE as usize];
        for f in 0..512u64 {
            let gpa = a.pfn.addr() + f * FRAME_SIZE;
            pattern(&mut page, seed, gpa);
            ram.write(gpa, &page).expect("allocated block inside RAM");
        }
        blocks.push(a.pfn);
    }
    Ok(blocks)
}

/// Checks that every page of `blocks` still holds the pattern [`fill_pattern`] wrote.
pub fn verify_pattern(guest: &Guest, blocks: &[Pfn], seed: u64) -> bool {
    let mut want = vec![0u8; FRAME_SIZE as usize];
    let mut got = vec![0u8; FRAME_SIZE as usize];
    blocks.iter().all(|pfn| {
        (0..512u64).all(|f| {
            let gpa = pfn.addr() + f * FRAME_SIZE;
            pattern(&mut want, seed, gpa);
            guest.ram().read(gpa, &mut got).is_ok() && got == want
        })
    })
}

fn pattern(page: &mut [u8], seed: u64, gpa: u64) {
    let mut x = seed ^ gpa.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for chunk in page.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
}
