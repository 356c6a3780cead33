//! The virtio-balloon driver, after Linux `drivers/virtio/virtio_balloon.c`.
//!
//! It negotiates features (and applies the trust gate of the upstream driver's `validate()`,
//! see [`driver_features`]), lays its queues out in guest memory, reports free blocks for the
//! allocator (one chain per block, so each block gets its own "zeroed" answer through the used
//! length; up to the reporting ring's size per request), inflates and deflates toward the
//! device's target (with the `DEVICE_INIT_ON_INFLATE` bitmap when negotiated, read by
//! [`zeroed_pages`]) and answers stats requests.
//!
//! # Conformance with the upstream driver
//!
//! The series author's Linux driver (`drivers/virtio/virtio_balloon.c` in his `vhost` tree,
//! `balloon` branch) is the reference for bits 6 and 7 until the spec has text. This driver
//! does what it does:
//! - reporting: one device-writable buffer per block, each its own chain; a block is zeroed
//!   only if its used length equals its buffer length ([`ReportSink`] impl below);
//! - reporting batch capacity: the reporting ring's size ([`ReportCapacity::RingSize`], the
//!   default; the stock drivers' 32 is [`ReportCapacity::Fixed`]);
//! - never `VIRTIO_RING_F_INDIRECT_DESC` on the balloon queues;
//! - the trust gate ([`driver_features`]);
//! - inflate: valid bits = used length x 8, bit `N` = byte `N / 8`, bit `N % 8`; a guest page
//!   larger than 4 KiB is zeroed only if all its 4 KiB sub-page bits are set and valid
//!   ([`zeroed_pages`]);
//! - deflate: pages the device zeroed on inflate are freed as known-zero
//!   ([`FreeHint::Deflated`], upstream `FPI_ZEROED`).
//!
//! Difference: the upstream driver allocates its bitmap per request and zero-fills it before
//! each inflate; this one reads it back only up to the valid bits, so stale bytes past them
//! never count (the same outcome).
//!
//! The driver owns no memory policy: every call that allocates or frees guest pages takes the
//! [`Zone`] (over any frame metadata storage) and does it there, so the allocator stays the
//! single owner of guest memory. It knows its device only through [`VirtioTransport`] (the
//! vhost-user frontend in a process guest, virtio-pci in a kernel, an in-process device in
//! tests), guest memory only through [`QueueMemory`] (the rings, its PFN array, bitmap and stats
//! pages, and the zeroing or poisoning of the frames it takes from and gives back to the zone),
//! and time only through [`Clock`] (request timeouts).
//!
//! A transport failure while waiting or kicking, or a request the device leaves unanswered
//! for [`REQUEST_TIMEOUT`], marks the device dead: the driver then does nothing, reports fail
//! (the blocks go back unreported) and deflate-on-OOM gives nothing back.

use alloc::vec;
use alloc::vec::Vec;
use core::borrow::Borrow;
use core::time::Duration;

use crate::clock::Clock;
use crate::error::BalloonError;
use crate::transport::VirtioTransport;
use prezero_balloon::config::{ACTUAL_OFFSET, NUM_PAGES_OFFSET, POISON_VAL_OFFSET};
use prezero_balloon::features::{self, Features};
use prezero_balloon::pfn::{bitmap_len, bitmap_test, BALLOON_PAGE_SIZE, PFN_SIZE};
use prezero_balloon::stats::{encode_entry, STAT_ENTRY_SIZE};
use prezero_balloon::{QueueRole, QueueRoles, StatTag};
use prezero_mm::{
    AllocFlags, DeviceInit, FrameMeta, FreeHint, Pfn, PhysMem, ReportBlock, ReportOutcome,
    ReportSink, Zone, FRAME_SIZE,
};
use prezero_virtq::{Buffer, QueueMemory, SplitQueue};

/// PFNs per inflate or deflate request (Linux `VIRTIO_BALLOON_ARRAY_PFNS_MAX`).
pub const PFNS_PER_REQUEST: usize = 256;
/// Pages given back per deflate-on-OOM event (Linux `OOM_VBALLOON_DEFAULT_PAGES`).
pub const OOM_PAGES: usize = 256;
/// Queue size of every balloon queue, or the device's maximum for a queue when it is smaller
/// (the largest power of two it allows: QEMU's own balloon takes 32 for reporting).
pub const QUEUE_SIZE: u16 = 128;
/// How long a request may stay with a live device before the driver gives up on the device.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The balloon features this driver understands.
pub const DRIVER_FEATURES: u64 = (1 << features::MUST_TELL_HOST)
    | (1 << features::STATS_VQ)
    | (1 << features::DEFLATE_ON_OOM)
    | (1 << features::PAGE_POISON)
    | (1 << features::REPORTING)
    | (1 << features::DEVICE_INIT_REPORTED)
    | (1 << features::DEVICE_INIT_ON_INFLATE)
    | (1 << features::VERSION_1);

/// Queues the driver sets up at most: one per role of [`DRIVER_FEATURES`] (free page hinting
/// is not among them, so four). A transport must drive this many.
pub fn max_queues() -> u16 {
    QueueRoles::from_features(Features(DRIVER_FEATURES)).count() as u16
}

/// 4 KiB balloon pages per guest frame: how many PFNs (and bitmap bits) one guest page takes.
/// `prezero-mm` frames are balloon pages, so its PFN arrays list frames; [`zeroed_pages`]
/// takes the ratio as a parameter for guests with larger pages (Linux on arm64 with 64 KiB).
const BALLOON_PAGES_PER_FRAME: usize = (FRAME_SIZE / BALLOON_PAGE_SIZE) as usize;
const _: () = assert!(BALLOON_PAGES_PER_FRAME == 1, "PFN arrays list frames");

/// Driver settings, taken from the guest's own configuration.
#[derive(Clone, Copy, Debug, Default)]
pub struct DriverOptions {
    /// The host is not trusted: refuse both device-init features.
    pub confidential: bool,
    /// The guest poisons free pages with this value (`PAGE_POISON` is then negotiated).
    pub poison: Option<u8>,
    /// Feature bits the driver must not accept even if offered (for experiments and tests).
    pub refuse: u64,
    /// Blocks per free page reporting request.
    pub report_capacity: ReportCapacity,
}

/// Blocks per free page reporting request (the allocator's batch, Linux
/// `page_reporting_dev_info.capacity`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReportCapacity {
    /// The reporting ring's size ([`QUEUE_SIZE`], or the device's smaller maximum), as the upstream driver since
    /// `page_reporting: allow driver to set batch capacity`: one chain per block fills it.
    #[default]
    RingSize,
    /// A fixed number of blocks, e.g. 32 ([`prezero_mm::REPORTING_CAPACITY`], the stock
    /// drivers' batch). Capped by the ring size.
    Fixed(usize),
}

/// The trust gate and transport rules of the upstream driver's `validate()`: the features to
/// accept out of `offered`, for a guest configured as `opts`.
///
/// - bits 6 and 7 are dropped in a confidential guest (an untrusted host must not be able to
///   claim it zeroed anything: a wrong claim leaks another tenant's data), and when the guest
///   poisons free pages with a non-zero value (the device would have to fill with it);
/// - bit 6 is dropped when `REPORTING` is not negotiated (it describes the reporting answers);
/// - `PAGE_POISON` is taken only when the guest poisons;
/// - `VIRTIO_RING_F_INDIRECT_DESC` is never taken: the balloon sends one or two buffers per
///   chain, and an indirect table would need an allocation under the balloon lock, which can
///   deadlock through the OOM notifier deflating the balloon (upstream's reason).
pub fn driver_features(offered: Features, opts: &DriverOptions) -> Features {
    let device_init = Features::bit(features::DEVICE_INIT_REPORTED)
        .or(Features::bit(features::DEVICE_INIT_ON_INFLATE));
    let mut wanted = Features(DRIVER_FEATURES & !opts.refuse).without(features::RING_INDIRECT_DESC);
    if opts.poison.is_none() {
        wanted = wanted.without(features::PAGE_POISON);
    }
    if opts.confidential || opts.poison.is_some_and(|p| p != 0) {
        wanted = Features(wanted.bits() & !device_init.bits());
    }
    let mut accepted = offered.and(wanted);
    if !accepted.has(features::REPORTING) {
        accepted = accepted.without(features::DEVICE_INIT_REPORTED);
    }
    accepted
}

/// The inflate bitmap as the upstream driver reads it: for each guest page `i` of a request
/// (`pages` of them, each `per_page` consecutive 4 KiB balloon PFNs of the request), whether
/// the device zeroed it. Valid bits are `used_len * 8` (never more than the bitmap holds); a
/// page is zeroed only if the bits of all its sub-pages are set and valid. Calls `zeroed(i, z)`
/// for each page in order.
pub fn zeroed_pages(
    bitmap: &[u8],
    used_len: u32,
    pages: usize,
    per_page: usize,
    mut zeroed: impl FnMut(usize, bool),
) {
    let valid = (used_len as usize)
        .saturating_mul(8)
        .min(bitmap.len().saturating_mul(8));
    for page in 0..pages {
        let first = page.saturating_mul(per_page);
        let end = first.saturating_add(per_page);
        let whole = per_page > 0 && end <= valid && (first..end).all(|n| bitmap_test(bitmap, n));
        zeroed(page, whole);
    }
}

/// A page in the balloon and what the device said about it on inflate.
#[derive(Clone, Copy, Debug)]
struct BalloonPage {
    pfn: u32,
    device_zeroed: bool,
}

/// Counters of the driver's activity.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct DriverStats {
    /// Reporting requests sent.
    pub report_requests: u64,
    /// Inflate requests sent.
    pub inflate_requests: u64,
    /// Deflate requests sent.
    pub deflate_requests: u64,
    /// Pages inflated.
    pub pages_inflated: u64,
    /// Inflated pages the device said it zeroed.
    pub pages_inflated_zeroed: u64,
    /// Pages deflated.
    pub pages_deflated: u64,
    /// Stats buffers sent.
    pub stats_updates: u64,
    /// Config-change notifications received.
    pub config_changes: u64,
    /// Pages given back to the guest on out-of-memory.
    pub oom_deflated_pages: u64,
}

/// The zone's view of the driver's memory ([`PhysMem`]): how `prezero-mm` zeroes or poisons the
/// frames of a block the driver takes or gives back, through the same memory the rings use.
struct Frames<'a, M>(&'a M);

impl<M: QueueMemory> PhysMem for Frames<'_, M> {
    fn fill(&mut self, pfn: Pfn, frames: u64, byte: u8) {
        // The zone only fills blocks it owns, and it spans memory the driver was given.
        self.0
            .fill(pfn.addr(), frames * FRAME_SIZE, byte)
            .expect("the zone fills only frames inside the driver's memory");
    }
}

/// The virtio-balloon driver over transport `T`, guest memory `M` and clock `C`.
///
/// - `T`: the device ([`VirtioTransport`]).
/// - `M`: guest memory addressed by guest-physical address ([`QueueMemory`]), cloned into each
///   queue (so a handle: `Arc<GuestRam>` in the process guest,
///   [`IdentityMemory`](crate::IdentityMemory) in a kernel); it must cover the zone's frames,
///   which the zone zeroes or poisons through its `fill`. It is what the transport's
///   [`set_memory`](VirtioTransport::set_memory) gets, through `Borrow` (every type borrows as
///   itself).
/// - `C`: a monotonic [`Clock`] for request timeouts.
pub struct BalloonDriver<T, M, C> {
    transport: T,
    memory: M,
    clock: C,
    features: Features,
    roles: QueueRoles,
    queues: Vec<Option<SplitQueue<usize, M>>>,
    /// One driver-owned page: PFN array at 0, inflate bitmap after it.
    pfn_page: u64,
    /// One driver-owned page for the stats buffer.
    stats_page: u64,
    balloon: Vec<BalloonPage>,
    /// Queue calls seen while waiting for another queue, handled by [`Self::poll`].
    pending_calls: u64,
    pending_config: bool,
    dead: bool,
    stats: DriverStats,
    /// Blocks per reporting request.
    report_capacity: usize,
}

impl<T, M, C> BalloonDriver<T, M, C>
where
    T: VirtioTransport,
    M: QueueMemory + Clone + Borrow<T::Memory>,
    C: Clock,
{
    /// Negotiates over `transport` (fresh: nothing negotiated yet, driving at least
    /// [`max_queues`] queues), shares `memory` with the device, and starts the queues. Ring and
    /// buffer memory comes from `zone` (whose frames `memory` must cover) and stays allocated
    /// for the driver's life; `clock` times the requests. If the device offers `STATS_VQ`, the
    /// first stats buffer is queued before this returns.
    pub fn new<S: AsRef<[FrameMeta]> + AsMut<[FrameMeta]>>(
        mut transport: T,
        memory: M,
        clock: C,
        zone: &mut Zone<S>,
        opts: DriverOptions,
    ) -> Result<Self, BalloonError<T::Error>> {
        let offered = Features(transport.device_features());
        let wanted = driver_features(offered, &opts);
        let acked = Features(
            transport
                .negotiate(wanted.bits())
                .map_err(BalloonError::Transport)?,
        );
        let roles = QueueRoles::from_features(acked);

        if acked.has(features::PAGE_POISON) {
            let poison = u32::from(opts.poison.unwrap_or(0)) * 0x0101_0101;
            transport
                .write_config(POISON_VAL_OFFSET as u32, &poison.to_le_bytes())
                .map_err(BalloonError::Transport)?;
        }
        transport
            .set_memory(memory.borrow())
            .map_err(BalloonError::Transport)?;

        let mut mem = Frames(&memory);
        let mut page = |zone: &mut Zone<S>, bytes: u64| -> Result<u64, BalloonError<T::Error>> {
            let order = bytes
                .div_ceil(FRAME_SIZE)
                .next_power_of_two()
                .trailing_zeros() as u8;
            let a = zone
                .alloc(order, AllocFlags::ZERO, &mut mem)
                .map_err(|_| BalloonError::NoMemory)?;
            Ok(a.pfn.addr())
        };
        let event_idx = acked.has(features::RING_EVENT_IDX);
        let mut queues: Vec<Option<SplitQueue<usize, M>>> =
            (0..roles.count()).map(|_| None).collect();
        for (index, role) in roles.iter().enumerate() {
            if role == QueueRole::FreePageHint {
                continue;
            }
            let size = match transport
                .max_queue_size(index as u16)
                .map_err(BalloonError::Transport)?
            {
                Some(0) => return Err(BalloonError::Protocol(role.name())),
                Some(max) => QUEUE_SIZE.min(1 << max.ilog2()),
                None => QUEUE_SIZE,
            };
            let ring = SplitQueue::<usize, M>::memory_requirement(size)?;
            let gpa = page(zone, ring.bytes)?;
            let q = SplitQueue::new(memory.clone(), size, gpa, event_idx)?;
            transport
                .setup_queue(index as u16, &q.layout())
                .map_err(BalloonError::Transport)?;
            queues[index] = Some(q);
        }
        let pfn_page = page(zone, FRAME_SIZE)?;
        let stats_page = page(zone, FRAME_SIZE)?;
        zone.set_device_init(DeviceInit {
            reported: acked.init_reported(),
            on_inflate: acked.init_on_inflate(),
        });
        transport.driver_ok().map_err(BalloonError::Transport)?;
        let reporting_ring = roles
            .index(QueueRole::Reporting)
            .and_then(|i| queues[i].as_ref())
            .map_or(QUEUE_SIZE, |q| q.size());
        let mut driver = BalloonDriver {
            transport,
            memory,
            clock,
            features: acked,
            roles,
            queues,
            pfn_page,
            stats_page,
            balloon: Vec::new(),
            pending_calls: 0,
            pending_config: true, // read the target once at start, as Linux does at probe
            dead: false,
            stats: DriverStats::default(),
            report_capacity: match opts.report_capacity {
                ReportCapacity::RingSize => usize::from(reporting_ring),
                ReportCapacity::Fixed(n) => n.clamp(1, usize::from(reporting_ring)),
            },
        };
        if acked.has(features::STATS_VQ) {
            // "The driver MUST make an output buffer available in the statsq" at init.
            driver.send_stats(zone)?;
        }
        Ok(driver)
    }

    /// The negotiated features.
    pub fn features(&self) -> Features {
        self.features
    }

    /// The queue roles under the negotiated features.
    pub fn roles(&self) -> QueueRoles {
        self.roles
    }

    /// Pages currently in the balloon.
    pub fn balloon_pages(&self) -> usize {
        self.balloon.len()
    }

    /// Activity counters.
    pub fn stats(&self) -> DriverStats {
        self.stats
    }

    /// Whether the device connection was lost (the driver then does nothing).
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// The transport, for tests and tools.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    fn index(&self, role: QueueRole) -> Option<u16> {
        self.roles.index(role).map(|i| i as u16)
    }

    fn queue(&mut self, role: QueueRole) -> Option<(u16, &mut SplitQueue<usize, M>)> {
        let i = self.roles.index(role)?;
        self.queues[i].as_mut().map(|q| (i as u16, q))
    }

    /// Handles what the device signalled: a config change (new target: inflate or deflate
    /// toward it) and a stats request. Waits at most `timeout` for something to happen, holding
    /// `zone` all along: [`BalloonDriver::wait_events`] then [`BalloonDriver::service`] is the
    /// same without holding it while waiting.
    pub fn poll<S: AsRef<[FrameMeta]> + AsMut<[FrameMeta]>>(
        &mut self,
        zone: &mut Zone<S>,
        timeout: Duration,
    ) -> Result<(), BalloonError<T::Error>> {
        self.wait_events(timeout)?;
        self.service(zone)
    }

    /// Waits at most `timeout` for the device to signal and records what it signalled, without
    /// touching the allocator: a multi-CPU guest waits here while its CPUs allocate, then takes
    /// the zone for [`BalloonDriver::service`]. Returns whether `service` has work.
    pub fn wait_events(&mut self, timeout: Duration) -> Result<bool, BalloonError<T::Error>> {
        if self.dead {
            return Ok(false);
        }
        let events = match self.transport.wait(Some(timeout)) {
            Ok(e) => e,
            Err(e) => return Err(self.died(e)),
        };
        self.pending_calls |= events.calls;
        self.pending_config |= events.config_changed;
        Ok(self.has_work())
    }

    /// Whether an event recorded by [`BalloonDriver::wait_events`] waits for
    /// [`BalloonDriver::service`]: a config change, or a stats request.
    pub fn has_work(&self) -> bool {
        let stats = self.index(QueueRole::Stats).map_or(0, |i| 1u64 << i);
        !self.dead && (self.pending_config || self.pending_calls & stats != 0)
    }

    /// Handles the events recorded by [`BalloonDriver::wait_events`] (and by waits inside
    /// inflate and deflate): a config change, then a stats request. Does not wait.
    pub fn service<S: AsRef<[FrameMeta]> + AsMut<[FrameMeta]>>(
        &mut self,
        zone: &mut Zone<S>,
    ) -> Result<(), BalloonError<T::Error>> {
        if self.dead {
            return Ok(());
        }
        if self.pending_config {
            self.pending_config = false;
            self.stats.config_changes += 1;
            self.adjust(zone)?;
        }
        if let Some(i) = self.index(QueueRole::Stats) {
            if self.pending_calls & (1 << i) != 0 {
                self.pending_calls &= !(1 << i);
                let (_, q) = self.queue(QueueRole::Stats).expect("stats queue");
                let mut returned = false;
                while q.pop_used()?.is_some() {
                    returned = true;
                }
                if returned {
                    self.send_stats(zone)?;
                }
            }
        }
        Ok(())
    }

    fn died(&mut self, e: T::Error) -> BalloonError<T::Error> {
        tracing::warn!(error = %e, "balloon device lost");
        self.dead = true;
        BalloonError::Transport(e)
    }

    /// Reads the device's target (`num_pages`).
    pub fn target_pages(&mut self) -> Result<u32, BalloonError<T::Error>> {
        let mut buf = [0u8; 4];
        self.transport
            .read_config(NUM_PAGES_OFFSET as u32, &mut buf)
            .map_err(BalloonError::Transport)?;
        Ok(u32::from_le_bytes(buf))
    }

    /// Inflates or deflates toward the device's target, then tells it `actual`.
    pub fn adjust<S: AsRef<[FrameMeta]> + AsMut<[FrameMeta]>>(
        &mut self,
        zone: &mut Zone<S>,
    ) -> Result<(), BalloonError<T::Error>> {
        let target = self.target_pages()? as usize;
        while self.balloon.len() < target {
            let want = (target - self.balloon.len()).min(PFNS_PER_REQUEST);
            if self.inflate(zone, want)? == 0 {
                tracing::info!(
                    target,
                    actual = self.balloon.len(),
                    "balloon cannot inflate further: guest memory is in use"
                );
                break;
            }
        }
        while self.balloon.len() > target {
            let want = (self.balloon.len() - target).min(PFNS_PER_REQUEST);
            self.deflate(zone, want)?;
        }
        self.write_actual()
    }

    fn write_actual(&mut self) -> Result<(), BalloonError<T::Error>> {
        let actual = self.balloon.len() as u32;
        self.transport
            .write_config(ACTUAL_OFFSET as u32, &actual.to_le_bytes())
            .map_err(BalloonError::Transport)?;
        Ok(())
    }

    /// Puts up to `n` (at most [`PFNS_PER_REQUEST`]) pages into the balloon; returns how many.
    fn inflate<S: AsRef<[FrameMeta]> + AsMut<[FrameMeta]>>(
        &mut self,
        zone: &mut Zone<S>,
        n: usize,
    ) -> Result<usize, BalloonError<T::Error>> {
        let mut mem = Frames(&self.memory);
        let mut frames = Vec::with_capacity(n);
        for _ in 0..n {
            match zone.alloc(0, AllocFlags::NONE, &mut mem) {
                Ok(a) => frames.push(a.pfn.0 as u32),
                Err(_) => break,
            }
        }
        if frames.is_empty() {
            return Ok(0);
        }
        let pfns = frames;
        let with_bitmap = self.features.init_on_inflate();
        let bitmap = self.pfn_page + (PFNS_PER_REQUEST * PFN_SIZE) as u64;
        let used = self.send_pfns(QueueRole::Inflate, &pfns, with_bitmap.then_some(bitmap))?;
        let mut bits = vec![0u8; bitmap_len(pfns.len())];
        if with_bitmap {
            self.memory
                .read(bitmap, &mut bits)
                .expect("the driver's own page is inside its memory");
        }
        let used = if with_bitmap { used } else { 0 };
        let balloon = &mut self.balloon;
        let mut zeroed_count = 0;
        zeroed_pages(
            &bits,
            used,
            pfns.len(),
            BALLOON_PAGES_PER_FRAME,
            |i, device_zeroed| {
                zeroed_count += u64::from(device_zeroed);
                balloon.push(BalloonPage {
                    pfn: pfns[i],
                    device_zeroed,
                });
            },
        );
        self.stats.pages_inflated_zeroed += zeroed_count;
        self.stats.inflate_requests += 1;
        self.stats.pages_inflated += pfns.len() as u64;
        Ok(pfns.len())
    }

    /// Takes up to `n` pages out of the balloon, tells the device, and frees them to the zone:
    /// reported (their backing was discarded), zeroed if the device said so on inflate.
    fn deflate<S: AsRef<[FrameMeta]> + AsMut<[FrameMeta]>>(
        &mut self,
        zone: &mut Zone<S>,
        n: usize,
    ) -> Result<usize, BalloonError<T::Error>> {
        let n = n.min(self.balloon.len()).min(PFNS_PER_REQUEST);
        if n == 0 {
            return Ok(0);
        }
        let pages: Vec<BalloonPage> = self.balloon.split_off(self.balloon.len() - n);
        let pfns: Vec<u32> = pages.iter().map(|p| p.pfn).collect();
        // MUST_TELL_HOST: the device hears about the pages before the guest reuses them.
        if let Err(e) = self.send_pfns(QueueRole::Deflate, &pfns, None) {
            self.balloon.extend(pages);
            return Err(e);
        }
        let mut mem = Frames(&self.memory);
        for p in &pages {
            let hint = FreeHint::Deflated {
                device_zeroed: p.device_zeroed,
            };
            zone.free(Pfn(u64::from(p.pfn)), 0, hint, &mut mem)
                .expect("balloon pages are allocated order-0 blocks");
        }
        self.stats.deflate_requests += 1;
        self.stats.pages_deflated += n as u64;
        Ok(n)
    }

    /// Gives pages back to a guest that ran out of memory (`DEFLATE_ON_OOM`). Returns how many.
    pub fn deflate_on_oom<S: AsRef<[FrameMeta]> + AsMut<[FrameMeta]>>(
        &mut self,
        zone: &mut Zone<S>,
    ) -> Result<usize, BalloonError<T::Error>> {
        if self.dead || !self.features.has(features::DEFLATE_ON_OOM) {
            return Ok(0);
        }
        let n = self.deflate(zone, OOM_PAGES)?;
        self.stats.oom_deflated_pages += n as u64;
        self.write_actual()?;
        Ok(n)
    }

    /// Sends one PFN array (and the inflate bitmap) and waits for the device to use it.
    fn send_pfns(
        &mut self,
        role: QueueRole,
        pfns: &[u32],
        bitmap: Option<u64>,
    ) -> Result<u32, BalloonError<T::Error>> {
        let mut bytes = Vec::with_capacity(pfns.len() * PFN_SIZE);
        for pfn in pfns {
            bytes.extend_from_slice(&pfn.to_le_bytes());
        }
        self.memory
            .write(self.pfn_page, &bytes)
            .expect("the driver's own page is inside its memory");
        let mut chain = vec![Buffer::readable(self.pfn_page, bytes.len() as u32)];
        if let Some(gpa) = bitmap {
            chain.push(Buffer::writable(gpa, bitmap_len(pfns.len()) as u32));
        }
        let lens = self.submit_and_wait(role, &[chain])?;
        Ok(lens[0])
    }

    /// Adds each chain (token = its position), kicks, and waits until the device used them
    /// all. Returns the used lengths.
    fn submit_and_wait(
        &mut self,
        role: QueueRole,
        chains: &[Vec<Buffer>],
    ) -> Result<Vec<u32>, BalloonError<T::Error>> {
        if self.dead {
            return Err(BalloonError::DeviceGone);
        }
        let name = role.name();
        let (index, q) = self.queue(role).ok_or(BalloonError::Protocol(name))?;
        for (token, chain) in chains.iter().enumerate() {
            q.add(chain, token)?;
        }
        if q.should_notify()? {
            if let Err(e) = self.transport.kick(index) {
                return Err(self.died(e));
            }
        }
        let mut lens = vec![None; chains.len()];
        let mut left = chains.len();
        let deadline = self.clock.now() + REQUEST_TIMEOUT;
        while left > 0 {
            let (_, q) = self.queue(role).expect("queue exists");
            while let Some(used) = q.pop_used()? {
                let slot = lens
                    .get_mut(used.token)
                    .ok_or(BalloonError::Protocol(name))?;
                if slot.replace(used.len).is_none() {
                    left -= 1;
                }
            }
            if left == 0 {
                break;
            }
            let now = self.clock.now();
            if now >= deadline {
                // A device that keeps the buffers may still write them later: stop using it.
                self.dead = true;
                return Err(BalloonError::Timeout {
                    queue: name,
                    after: REQUEST_TIMEOUT,
                });
            }
            match self
                .transport
                .wait(Some((deadline - now).min(Duration::from_millis(500))))
            {
                Ok(events) => {
                    self.pending_calls |= events.calls & !(1 << index);
                    self.pending_config |= events.config_changed;
                }
                Err(e) => return Err(self.died(e)),
            }
        }
        Ok(lens.into_iter().map(|l| l.unwrap_or(0)).collect())
    }

    /// Fills the stats buffer from the zone's counters and hands it to the device.
    fn send_stats<S: AsRef<[FrameMeta]> + AsMut<[FrameMeta]>>(
        &mut self,
        zone: &Zone<S>,
    ) -> Result<(), BalloonError<T::Error>> {
        let c = zone.counts();
        let bytes = |pages: u64| pages * FRAME_SIZE;
        let free = c.free + c.pool_free;
        let entries = [
            (StatTag::SwapIn, 0),
            (StatTag::SwapOut, 0),
            (StatTag::FreeMemory, bytes(free)),
            (
                StatTag::TotalMemory,
                bytes(c.present - self.balloon.len() as u64),
            ),
            (StatTag::AvailableMemory, bytes(free)),
            (StatTag::DiskCaches, 0),
        ];
        let mut buf = Vec::with_capacity(entries.len() * STAT_ENTRY_SIZE);
        for (tag, value) in entries {
            buf.extend_from_slice(&encode_entry(tag.raw(), value));
        }
        self.memory
            .write(self.stats_page, &buf)
            .expect("the driver's own page is inside its memory");
        let stats_page = self.stats_page;
        let Some((index, q)) = self.queue(QueueRole::Stats) else {
            return Ok(());
        };
        q.add(&[Buffer::readable(stats_page, buf.len() as u32)], 0)?;
        if q.should_notify()? {
            if let Err(e) = self.transport.kick(index) {
                return Err(self.died(e));
            }
        }
        self.stats.stats_updates += 1;
        Ok(())
    }
}

/// The driver as the allocator's reporting device: each block is its own chain, so the device
/// answers "zeroed" per block through the used length.
impl<T, M, C> ReportSink for BalloonDriver<T, M, C>
where
    T: VirtioTransport,
    M: QueueMemory + Clone + Borrow<T::Memory>,
    C: Clock,
{
    fn capacity(&self) -> usize {
        self.report_capacity
    }

    fn report(&mut self, blocks: &[ReportBlock], outcomes: &mut [ReportOutcome]) {
        if self.dead || !self.features.has(features::REPORTING) {
            return; // all Failed: the blocks go back unreported
        }
        let chains: Vec<Vec<Buffer>> = blocks
            .iter()
            .map(|b| vec![Buffer::writable(b.addr(), b.len() as u32)])
            .collect();
        match self.submit_and_wait(QueueRole::Reporting, &chains) {
            Ok(lens) => {
                self.stats.report_requests += 1;
                let zeroing = self.features.init_reported();
                for ((b, len), o) in blocks.iter().zip(lens).zip(outcomes.iter_mut()) {
                    *o = if zeroing && u64::from(len) == b.len() {
                        ReportOutcome::ReportedZeroed
                    } else {
                        ReportOutcome::Reported
                    };
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "free page report failed: blocks go back unreported")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prezero_balloon::features::{
        DEVICE_INIT_ON_INFLATE as INFLATE, DEVICE_INIT_REPORTED as REPORTED, PAGE_POISON,
        REPORTING, RING_INDIRECT_DESC, VERSION_1,
    };

    fn all_offered() -> Features {
        Features(DRIVER_FEATURES).with(RING_INDIRECT_DESC)
    }

    #[test]
    fn the_trust_gate_of_upstream_validate() {
        let plain = DriverOptions::default();
        let f = driver_features(all_offered(), &plain);
        assert!(f.has(REPORTED) && f.has(INFLATE) && f.has(VERSION_1));
        assert!(!f.has(RING_INDIRECT_DESC), "never indirect descriptors");
        assert!(!f.has(PAGE_POISON), "not poisoning");
        // Non-zero poison: both bits dropped, PAGE_POISON taken.
        let poisoned = DriverOptions {
            poison: Some(0xaa),
            ..plain
        };
        let f = driver_features(all_offered(), &poisoned);
        assert!(f.has(PAGE_POISON) && !f.has(REPORTED) && !f.has(INFLATE));
        // Zero poison: zeros are what the guest expects; both kept.
        let zero = DriverOptions {
            poison: Some(0),
            ..plain
        };
        let f = driver_features(all_offered(), &zero);
        assert!(f.has(PAGE_POISON) && f.has(REPORTED) && f.has(INFLATE));
        // Confidential guest: both dropped.
        let cc = DriverOptions {
            confidential: true,
            ..plain
        };
        let f = driver_features(all_offered(), &cc);
        assert!(f.has(REPORTING) && !f.has(REPORTED) && !f.has(INFLATE));
        // Bit 6 without reporting (not offered, or refused): dropped; bit 7 kept.
        let f = driver_features(all_offered().without(REPORTING), &plain);
        assert!(!f.has(REPORTED) && f.has(INFLATE));
        let refuse = DriverOptions {
            refuse: 1 << REPORTING,
            ..plain
        };
        assert!(!driver_features(all_offered(), &refuse).has(REPORTED));
    }

    fn pages(bitmap: &[u8], used: u32, n: usize, per_page: usize) -> Vec<bool> {
        let mut out = Vec::new();
        zeroed_pages(bitmap, used, n, per_page, |i, z| {
            assert_eq!(i, out.len());
            out.push(z)
        });
        out
    }

    #[test]
    fn inflate_bitmap_with_16_sub_pages_per_guest_page() {
        // 64 KiB guest pages: 16 balloon PFNs each; 3 pages = 48 bits = 6 bytes.
        let mut bm = [0xffu8; 6];
        assert_eq!(pages(&bm, 6, 3, 16), [true, true, true]);
        // One sub-page bit missing (page 1, sub-page 9 = bit 25): page 1 is not zeroed.
        bm[3] &= !(1 << 1);
        assert_eq!(pages(&bm, 6, 3, 16), [true, false, true]);
        // Valid bits = used length x 8: 5 bytes = 40 bits cover page 0 and 1, not page 2.
        let all = [0xffu8; 6];
        assert_eq!(pages(&all, 5, 3, 16), [true, true, false]);
        // A page half inside the valid bits (used 3 bytes = 24 bits) is not zeroed.
        assert_eq!(pages(&all, 3, 3, 16), [true, false, false]);
        // A used length beyond the buffer never makes bits outside it valid.
        assert_eq!(pages(&all[..4], 100, 3, 16), [true, true, false]);
        assert_eq!(pages(&all, 0, 3, 16), [false; 3]);
    }

    #[test]
    fn inflate_bitmap_with_4_kib_pages_is_bit_per_pfn_little_endian() {
        // Bit N = byte N / 8, bit N % 8.
        let bm = [0b0000_0101u8, 0b1000_0000];
        let got = pages(&bm, 2, 16, 1);
        let want: Vec<bool> = (0..16).map(|n| [0, 2, 15].contains(&n)).collect();
        assert_eq!(got, want);
        assert!(!pages(&bm, 1, 16, 1)[15], "bit 15 is past used_len * 8");
    }
}
