//! The Rust guest: a memfd of "physical memory" managed by `prezero-mm`, optionally attached to
//! a virtio-balloon device over vhost-user.
//!
//! Its allocator is a [`LockedZone`] with one per-CPU cache per vCPU
//! ([`GuestOptions::vcpus`]). The caller's thread is vCPU 0 and the "kernel" thread:
//! [`Guest::poll`] services the device (config changes, stats) and runs free page reporting
//! when it is due, like Linux's delayed work, while other threads allocate and free through
//! [`Vcpu`] handles. The device is called with no allocator lock held.

use crate::balloon::{self, DriverOptions, ReportCapacity};
use crate::clock::InstantClock;
use crate::error::{BalloonError, GuestError};
use crate::ram::{GuestRam, RamFrames};
use crate::vhost_user::VhostUserTransport;
use crate::BalloonDriver;
use prezero_mm::{
    AllocError, AllocFlags, Allocation, CacheConfig, Config, CpuCache, FrameMeta, FreeHint,
    LockedZone, Pfn, ReportPass, Zone, FRAME_SIZE,
};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the guest is built.
#[derive(Clone, Debug)]
pub struct GuestOptions {
    /// Guest RAM in bytes (a multiple of 4 KiB, or of the huge page size).
    pub ram_size: u64,
    /// Back RAM with huge pages of this size (`MFD_HUGETLB`); they must be reserved.
    pub huge_page_size: Option<u64>,
    /// Allocator settings (placement, init-on-free, poisoning, confidential, reporting).
    pub mm: Config,
    /// Feature bits the balloon driver refuses.
    pub refuse_features: u64,
    /// Blocks per free page reporting request (default: the reporting ring's size).
    pub report_capacity: ReportCapacity,
    /// vCPUs: one per-CPU page cache each (at least 1).
    pub vcpus: usize,
}

impl Default for GuestOptions {
    fn default() -> Self {
        GuestOptions {
            ram_size: crate::ram::DEFAULT_RAM_SIZE,
            huge_page_size: None,
            mm: Config::default(),
            refuse_features: 0,
            report_capacity: ReportCapacity::default(),
            vcpus: 1,
        }
    }
}

/// The guest's allocator: its zone shared by its vCPUs.
pub type GuestZone = LockedZone<Vec<FrameMeta>, Vec<CpuCache>>;

/// One vCPU of a guest: allocates and frees through its own per-CPU cache, from any thread.
#[derive(Clone)]
pub struct Vcpu {
    ram: Arc<GuestRam>,
    zone: Arc<GuestZone>,
    index: usize,
}

impl Vcpu {
    /// The vCPU's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The guest's RAM.
    pub fn ram(&self) -> &Arc<GuestRam> {
        &self.ram
    }

    /// Allocates a block on this vCPU.
    pub fn alloc(&self, order: u8, flags: AllocFlags) -> Result<Allocation, GuestError> {
        Ok(self
            .zone
            .alloc(self.index, order, flags, &mut RamFrames(&self.ram))?)
    }

    /// Allocates a huge page from the pool (under the zone lock).
    pub fn alloc_huge(&self, flags: AllocFlags) -> Result<Allocation, GuestError> {
        Ok(self
            .zone
            .lock()
            .alloc_huge(flags, &mut RamFrames(&self.ram))?)
    }

    /// Frees a block on this vCPU.
    pub fn free(&self, pfn: Pfn, order: u8) -> Result<(), GuestError> {
        Ok(self.zone.free(
            self.index,
            pfn,
            order,
            FreeHint::None,
            &mut RamFrames(&self.ram),
        )?)
    }
}

/// The guest.
pub struct Guest {
    ram: Arc<GuestRam>,
    zone: Arc<GuestZone>,
    balloon: Option<BalloonDriver<VhostUserTransport>>,
    opts: GuestOptions,
    boot: Instant,
}

impl Guest {
    /// Creates the guest's RAM and allocator. A fresh memfd reads as zero, and the guest knows
    /// it: its memory starts known-zero (this is the guest's own knowledge, not the host's).
    pub fn new(opts: GuestOptions) -> Result<Self, GuestError> {
        let ram = Arc::new(match opts.huge_page_size {
            Some(h) => GuestRam::with_huge_pages(opts.ram_size, h)?,
            None => GuestRam::new(opts.ram_size)?,
        });
        let frames = ram.size() / FRAME_SIZE;
        let mut zone = Zone::new(vec![FrameMeta::EMPTY; frames as usize], Pfn(0), opts.mm);
        zone.add_memory(Pfn(0), frames, true)
            .expect("the zone spans exactly guest RAM");
        let caches = (0..opts.vcpus.max(1)).map(|_| CpuCache::new()).collect();
        let zone = Arc::new(LockedZone::new(zone, caches, CacheConfig::default()));
        Ok(Guest {
            ram,
            zone,
            balloon: None,
            opts,
            boot: Instant::now(),
        })
    }

    /// Attaches the virtio-balloon device served at `socket`.
    pub fn attach_balloon(&mut self, socket: impl AsRef<Path>) -> Result<(), GuestError> {
        let opts = DriverOptions {
            confidential: self.opts.mm.confidential,
            poison: self.opts.mm.poison,
            refuse: self.opts.refuse_features,
            report_capacity: self.opts.report_capacity,
        };
        let transport = VhostUserTransport::connect(socket, balloon::max_queues())
            .map_err(BalloonError::Transport)?;
        self.balloon = Some(BalloonDriver::new(
            transport,
            self.ram.clone(),
            InstantClock::new(),
            &mut *self.zone.lock(),
            opts,
        )?);
        Ok(())
    }

    /// The guest's RAM.
    pub fn ram(&self) -> &Arc<GuestRam> {
        &self.ram
    }

    /// The allocator.
    pub fn zone(&self) -> &GuestZone {
        &self.zone
    }

    /// Number of vCPUs.
    pub fn vcpus(&self) -> usize {
        self.zone.cpus()
    }

    /// A handle on vCPU `index` (`None` past the last), to allocate from another thread.
    pub fn vcpu(&self, index: usize) -> Option<Vcpu> {
        (index < self.zone.cpus()).then(|| Vcpu {
            ram: self.ram.clone(),
            zone: self.zone.clone(),
            index,
        })
    }

    /// The balloon driver, if attached.
    pub fn balloon(&self) -> Option<&BalloonDriver<VhostUserTransport>> {
        self.balloon.as_ref()
    }

    /// Milliseconds since the guest was created: the reporting clock.
    pub fn now_ms(&self) -> u64 {
        self.boot.elapsed().as_millis() as u64
    }

    /// Allocates a block on vCPU 0. When memory runs out and the balloon negotiated
    /// `DEFLATE_ON_OOM`, the balloon gives pages back and the allocation is retried.
    pub fn alloc(&mut self, order: u8, flags: AllocFlags) -> Result<Allocation, GuestError> {
        loop {
            match self.zone.alloc(0, order, flags, &mut RamFrames(&self.ram)) {
                Err(AllocError::OutOfMemory(o)) => {
                    let freed = match self.balloon.as_mut() {
                        Some(b) => b.deflate_on_oom(&mut *self.zone.lock())?,
                        None => 0,
                    };
                    if freed == 0 {
                        return Err(AllocError::OutOfMemory(o).into());
                    }
                }
                r => return Ok(r?),
            }
        }
    }

    /// Frees a block on vCPU 0.
    pub fn free(&mut self, pfn: Pfn, order: u8) -> Result<(), GuestError> {
        Ok(self
            .zone
            .free(0, pfn, order, FreeHint::None, &mut RamFrames(&self.ram))?)
    }

    /// Resizes the huge page pool; returns its new size in huge pages.
    pub fn set_huge_pages(&mut self, pages: u64) -> u64 {
        self.zone.lock().pool_resize(pages)
    }

    /// Allocates a huge page from the pool.
    pub fn alloc_huge(&mut self, flags: AllocFlags) -> Result<Allocation, GuestError> {
        Ok(self
            .zone
            .lock()
            .alloc_huge(flags, &mut RamFrames(&self.ram))?)
    }

    /// Frees a huge page back to the pool.
    pub fn free_huge(&mut self, pfn: Pfn) -> Result<(), GuestError> {
        Ok(self
            .zone
            .lock()
            .free_huge(pfn, FreeHint::None, &mut RamFrames(&self.ram))?)
    }

    /// Services the device for up to `timeout`: config changes (balloon target) and stats
    /// requests, then a reporting pass if one is due.
    pub fn poll(&mut self, timeout: Duration) -> Result<ReportPass, GuestError> {
        let Some(balloon) = self.balloon.as_mut() else {
            return Ok(ReportPass::default());
        };
        if Arc::strong_count(&self.zone) == 1 {
            // No vCPU handle is out: nobody waits for the zone lock.
            balloon.poll(&mut *self.zone.lock(), timeout)?;
        } else {
            // vCPUs allocate meanwhile: wait in short slices without the zone lock (the
            // driver's poll waits for the device while it holds the zone).
            let deadline = Instant::now() + timeout;
            loop {
                balloon.poll(&mut *self.zone.lock(), Duration::ZERO)?;
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                std::thread::sleep((deadline - now).min(Duration::from_millis(1)));
            }
        }
        let now = self.boot.elapsed().as_millis() as u64;
        Ok(self.zone.report_pass(now, balloon))
    }

    /// Reports every free block now, ignoring delay and budget (for tests, benchmarks, shutdown).
    pub fn report_now(&mut self) -> ReportPass {
        match self.balloon.as_mut() {
            Some(balloon) => self.zone.report_flush(balloon),
            None => ReportPass::default(),
        }
    }

    /// Polls until `done` says so or `timeout` passes; returns whether `done` was reached.
    pub fn poll_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&Guest) -> bool,
    ) -> Result<bool, GuestError> {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            self.poll((deadline - now).min(Duration::from_millis(50)))?;
        }
        Ok(true)
    }
}
