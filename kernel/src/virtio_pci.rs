//! A virtio 1.x device over PCI (virtio 1.2, 4.1 "Virtio Over PCI Bus"), modern interface
//! only, polled: the transport the balloon driver runs over in this kernel.
//!
//! - Found by vendor 0x1af4 and device id: 0x1040 + virtio id for a modern device
//!   (`vhost-user-test-device-pci,virtio-id=5`: 0x1045), or the transitional id (QEMU's
//!   `virtio-balloon-pci`: 0x1002), whose modern capabilities are used the same way.
//! - The vendor capabilities (4.1.4) name the BAR and offset of the common config, notify,
//!   ISR and device config structures; the BARs (64-bit ones included) are mapped uncached.
//! - Initialization (3.1.1) checks that `FEATURES_OK` sticks after the feature write: a device
//!   that refuses the driver's features is an error, not a half-working device.
//! - No interrupts: MSI-X stays off, so the device raises INTx and sets the ISR bits (4.1.4.5),
//!   which `VirtioPci::poll_events` reads (reading clears them). A config change is a new
//!   config generation (4.1.4.3), not the ISR config bit: QEMU sets the bit *before* it bumps
//!   the generation (`virtio_notify_config`), so a poll between the two saw one notification
//!   as two changes (measured: the kernel then re-inflated after deflate-on-OOM, 1 run in 4 of
//!   `kernel_qemu`). `read_config` retries until it reads the same generation before and
//!   after: with a vhost-user device every config read is a round trip to the daemon
//!   (`GET_CONFIG`), so the driver reads config only on a change.
//!
//! Why not `virtio-drivers` (rcore-os): its `PciTransport` implements that crate's own
//! `Transport` trait for its own `VirtQueue` and `Hal` (DMA allocation and address
//! translation), and its initialization does not check that `FEATURES_OK` stuck; the balloon
//! driver here already has its ring (`prezero-virtq`) and needs only the register accesses
//! below, under `prezero-driver`'s `VirtioTransport`. (Why its ring does not fit either:
//! `crates/virtq/src/lib.rs`.)

use core::ptr::{read_volatile, write_volatile};
use core::time::Duration;

use prezero_driver::{Events, RingLayout, VirtioTransport};

use crate::clock;
use crate::pci::Address;
use prezero_driver::IdentityMemory;

/// The virtio PCI vendor id.
pub const VENDOR: u16 = 0x1af4;

const CAP_VENDOR: u8 = 0x09;
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;

// Common configuration structure offsets (4.1.4.3).
const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const NUM_QUEUES: u64 = 0x12;
const DEVICE_STATUS: u64 = 0x14;
const CONFIG_GENERATION: u64 = 0x15;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;

// Device status bits (2.1).
const ACKNOWLEDGE: u8 = 1;
const DRIVER: u8 = 2;
const DRIVER_OK: u8 = 4;
const FEATURES_OK: u8 = 8;
const FAILED: u8 = 128;

/// Queues this transport tracks (`Events::calls` has one bit per queue).
const MAX_QUEUES: usize = 16;

/// How a virtio-pci device fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PciError {
    /// A capability the modern interface needs is missing or points at a missing BAR.
    #[error("virtio-pci device {0:?} lacks the modern capability of type {1}")]
    MissingCapability(Address, u8),
    /// Mapping a BAR failed.
    #[error("mapping a BAR: {0}")]
    Map(&'static str),
    /// The device did not accept the driver's features (`FEATURES_OK` did not stick).
    #[error("the device refused features {0:#x} (FEATURES_OK did not stick)")]
    FeaturesRefused(u64),
    /// A queue index the device does not have, or that this transport cannot track.
    #[error("queue {0} does not exist on the device (it has {1})")]
    NoSuchQueue(u16, u16),
    /// The ring is larger than the device's queue.
    #[error("queue {index}: ring of {size} entries, the device allows {max}")]
    QueueTooLarge {
        /// Queue index.
        index: u16,
        /// The ring's size.
        size: u16,
        /// The device's maximum.
        max: u16,
    },
    /// A config access outside the device config structure.
    #[error("config access {offset}+{len} outside the device's {size} bytes")]
    ConfigRange {
        /// Offset.
        offset: u32,
        /// Length.
        len: usize,
        /// Size of the device config structure.
        size: u32,
    },
    /// The device set `DEVICE_NEEDS_RESET` or dropped `DRIVER_OK`: it is unusable.
    #[error("the device stopped (status {0:#x})")]
    DeviceStopped(u8),
    /// A call out of the initialization order.
    #[error("{0} out of order")]
    Order(&'static str),
}

/// What a poll of the device saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Polled {
    /// Bit `i`: queue `i` may have used chains (ISR queue bit: any of them).
    pub calls: u64,
    /// The config changed (a new config generation).
    pub config_changed: bool,
}

/// A virtio device on PCI, modern interface.
pub struct VirtioPci {
    address: Address,
    common: u64,
    notify: u64,
    notify_multiplier: u32,
    isr: u64,
    device: u64,
    device_len: u32,
    offered: u64,
    negotiated: Option<u64>,
    num_queues: u16,
    notify_offsets: [u16; MAX_QUEUES],
    enabled: u64,
    generation: core::cell::Cell<u8>,
    config_reads: u64,
}

impl VirtioPci {
    /// The first virtio device of virtio type `virtio_id` on bus 0, if any: its modern
    /// capabilities found, BARs mapped, reset, `ACKNOWLEDGE | DRIVER` set, features read.
    pub fn find(virtio_id: u16, transitional_id: u16) -> Result<Option<VirtioPci>, PciError> {
        let Some(address) = crate::pci::scan().find(|a| {
            let (vendor, device) = a.ids();
            vendor == VENDOR && (device == 0x1040 + virtio_id || device == transitional_id)
        }) else {
            return Ok(None);
        };
        VirtioPci::new(address).map(Some)
    }

    /// Sets up the device at `address`.
    pub fn new(address: Address) -> Result<VirtioPci, PciError> {
        address.enable_memory_and_dma();
        let mut found = [None::<(u64, u32, u8)>; 5];
        let mut notify_multiplier = 0;
        for (id, at) in address.capabilities() {
            if id != CAP_VENDOR {
                continue;
            }
            // struct virtio_pci_cap: cap_vndr, cap_next, cap_len, cfg_type, bar, id, pad[2],
            // offset (le32), length (le32); notify adds notify_off_multiplier (le32).
            let cfg_type = address.read8(at + 3);
            let bar = address.read8(at + 4);
            let offset = address.read32(at + 8);
            let length = address.read32(at + 12);
            if !(CFG_COMMON..=CFG_DEVICE).contains(&cfg_type) || bar > 5 {
                continue; // PCI config access (5) and vendor-specific types are not used
            }
            if found[cfg_type as usize].is_some() {
                continue; // the first of each type is the preferred one (4.1.4)
            }
            let Some(base) = address.memory_bar(bar) else {
                continue;
            };
            crate::paging::map_mmio(base + offset as u64, length as u64).map_err(PciError::Map)?;
            found[cfg_type as usize] = Some((base + offset as u64, length, bar));
            if cfg_type == CFG_NOTIFY {
                notify_multiplier = address.read32(at + 16);
            }
        }
        let get = |t: u8| found[t as usize].ok_or(PciError::MissingCapability(address, t));
        let (common, _, _) = get(CFG_COMMON)?;
        let (notify, _, _) = get(CFG_NOTIFY)?;
        let (isr, _, _) = get(CFG_ISR)?;
        let (device, device_len, _) = get(CFG_DEVICE)?;
        let mut dev = VirtioPci {
            address,
            common,
            notify,
            notify_multiplier,
            isr,
            device,
            device_len,
            offered: 0,
            negotiated: None,
            num_queues: 0,
            notify_offsets: [0; MAX_QUEUES],
            enabled: 0,
            generation: core::cell::Cell::new(0),
            config_reads: 0,
        };
        dev.reset();
        dev.set_status(ACKNOWLEDGE);
        dev.set_status(ACKNOWLEDGE | DRIVER);
        dev.offered = (0..2u32).fold(0, |f, half| {
            dev.w32(DEVICE_FEATURE_SELECT, half);
            f | (dev.r32(DEVICE_FEATURE) as u64) << (32 * half)
        });
        dev.num_queues = dev.r16(NUM_QUEUES);
        dev.generation.set(dev.r8(CONFIG_GENERATION));
        Ok(dev)
    }

    /// Passes over the device config `read_config` made (a retry after a generation change
    /// counts again): each is one `GET_CONFIG` round trip to a vhost-user daemon.
    pub fn config_reads(&self) -> u64 {
        self.config_reads
    }

    /// Where the device sits on the bus.
    pub fn address(&self) -> Address {
        self.address
    }

    /// Writes 0 to the status and waits until the device reads back 0 (4.1.4.3.2).
    pub fn reset(&mut self) {
        self.w8(DEVICE_STATUS, 0);
        while self.r8(DEVICE_STATUS) != 0 {
            core::hint::spin_loop();
        }
        self.negotiated = None;
        self.enabled = 0;
    }

    /// The device status byte.
    pub fn status(&self) -> u8 {
        self.r8(DEVICE_STATUS)
    }

    fn set_status(&self, s: u8) {
        self.w8(DEVICE_STATUS, s);
    }

    /// Reads the ISR (clearing it) and the config generation once.
    pub fn poll_events(&self) -> Result<Polled, PciError> {
        // SAFETY: the mapped ISR byte.
        let isr = unsafe { read_volatile(self.isr as *const u8) };
        let generation = self.r8(CONFIG_GENERATION);
        let status = self.status();
        if status & 0x40 != 0 || (self.enabled != 0 && status & DRIVER_OK == 0) {
            return Err(PciError::DeviceStopped(status));
        }
        // Not `isr & 2`: see the module doc (the bit comes before the generation).
        let config_changed = generation != self.generation.get();
        self.generation.set(generation);
        Ok(Polled {
            calls: if isr & 1 != 0 { self.enabled } else { 0 },
            config_changed,
        })
    }

    fn config_range(&self, offset: u32, len: usize) -> Result<(), PciError> {
        if offset as u64 + len as u64 > self.device_len as u64 {
            return Err(PciError::ConfigRange {
                offset,
                len,
                size: self.device_len,
            });
        }
        Ok(())
    }

    fn r8(&self, off: u64) -> u8 {
        // SAFETY: inside the mapped common config structure.
        unsafe { read_volatile((self.common + off) as *const u8) }
    }
    fn r16(&self, off: u64) -> u16 {
        // SAFETY: as `r8`.
        unsafe { read_volatile((self.common + off) as *const u16) }
    }
    fn r32(&self, off: u64) -> u32 {
        // SAFETY: as `r8`.
        unsafe { read_volatile((self.common + off) as *const u32) }
    }
    fn w8(&self, off: u64, v: u8) {
        // SAFETY: as `r8`.
        unsafe { write_volatile((self.common + off) as *mut u8, v) }
    }
    fn w16(&self, off: u64, v: u16) {
        // SAFETY: as `r8`.
        unsafe { write_volatile((self.common + off) as *mut u16, v) }
    }
    fn w32(&self, off: u64, v: u32) {
        // SAFETY: as `r8`.
        unsafe { write_volatile((self.common + off) as *mut u32, v) }
    }
    fn w64(&self, off: u64, v: u64) {
        // 64-bit fields are written as two 32-bit halves, low first (4.1.3.1).
        self.w32(off, v as u32);
        self.w32(off + 4, (v >> 32) as u32);
    }
}

/// The balloon driver's view of the device.
impl VirtioTransport for VirtioPci {
    type Error = PciError;
    type Memory = IdentityMemory;

    /// Every feature bit the device offers.
    fn device_features(&self) -> u64 {
        self.offered
    }

    /// Writes `driver_features & offered`, sets `FEATURES_OK` and checks it stuck.
    fn negotiate(&mut self, driver_features: u64) -> Result<u64, Self::Error> {
        if self.negotiated.is_some() {
            return Err(PciError::Order("negotiate after negotiation"));
        }
        let features = driver_features & self.offered;
        for half in 0..2u32 {
            self.w32(DRIVER_FEATURE_SELECT, half);
            self.w32(DRIVER_FEATURE, (features >> (32 * half)) as u32);
        }
        self.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK);
        if self.status() & FEATURES_OK == 0 {
            self.set_status(ACKNOWLEDGE | DRIVER | FAILED);
            return Err(PciError::FeaturesRefused(features));
        }
        self.negotiated = Some(features);
        Ok(features)
    }

    /// Points queue `index` at the ring and enables it (4.1.5.1.3).
    fn max_queue_size(&mut self, index: u16) -> Result<Option<u16>, Self::Error> {
        if index >= self.num_queues || index as usize >= MAX_QUEUES {
            return Err(PciError::NoSuchQueue(index, self.num_queues));
        }
        self.w16(QUEUE_SELECT, index);
        Ok(Some(self.r16(QUEUE_SIZE)))
    }

    fn setup_queue(&mut self, index: u16, ring: &RingLayout) -> Result<(), Self::Error> {
        if self.negotiated.is_none() {
            return Err(PciError::Order("setup_queue before negotiate"));
        }
        if index >= self.num_queues || index as usize >= MAX_QUEUES {
            return Err(PciError::NoSuchQueue(index, self.num_queues));
        }
        self.w16(QUEUE_SELECT, index);
        let max = self.r16(QUEUE_SIZE);
        if ring.size > max {
            return Err(PciError::QueueTooLarge {
                index,
                size: ring.size,
                max,
            });
        }
        self.w16(QUEUE_SIZE, ring.size);
        self.w64(QUEUE_DESC, ring.desc);
        self.w64(QUEUE_DRIVER, ring.avail);
        self.w64(QUEUE_DEVICE, ring.used);
        self.notify_offsets[index as usize] = self.r16(QUEUE_NOTIFY_OFF);
        self.w16(QUEUE_ENABLE, 1);
        self.enabled |= 1 << index;
        Ok(())
    }

    /// Sets `DRIVER_OK`.
    fn driver_ok(&mut self) -> Result<(), Self::Error> {
        if self.negotiated.is_none() {
            return Err(PciError::Order("driver_ok before negotiate"));
        }
        self.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        Ok(())
    }

    /// Notifies queue `index` (4.1.4.4: a 16-bit write of the queue index at its notify
    /// address).
    fn kick(&self, index: u16) -> Result<(), Self::Error> {
        if index as usize >= MAX_QUEUES || self.enabled & (1 << index) == 0 {
            return Err(PciError::NoSuchQueue(index, self.num_queues));
        }
        let at = self.notify
            + self.notify_offsets[index as usize] as u64 * self.notify_multiplier as u64;
        // SAFETY: inside the mapped notify structure.
        unsafe { write_volatile(at as *mut u16, index) };
        Ok(())
    }

    /// Reads device config at `offset` (natural-width accesses where aligned), repeating
    /// until the config generation is the same before and after (4.1.4.3.1).
    fn read_config(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), Self::Error> {
        self.config_range(offset, buf.len())?;
        loop {
            self.config_reads += 1;
            let before = self.r8(CONFIG_GENERATION);
            let mut at = 0;
            while at < buf.len() {
                let a = self.device + offset as u64 + at as u64;
                let left = buf.len() - at;
                // SAFETY: inside the mapped device config structure (checked above).
                let n = unsafe {
                    if left >= 4 && a % 4 == 0 {
                        buf[at..at + 4]
                            .copy_from_slice(&read_volatile(a as *const u32).to_le_bytes());
                        4
                    } else if left >= 2 && a % 2 == 0 {
                        buf[at..at + 2]
                            .copy_from_slice(&read_volatile(a as *const u16).to_le_bytes());
                        2
                    } else {
                        buf[at] = read_volatile(a as *const u8);
                        1
                    }
                };
                at += n;
            }
            let after = self.r8(CONFIG_GENERATION);
            if before == after {
                self.generation.set(after);
                return Ok(());
            }
        }
    }

    /// Writes device config at `offset` (natural-width accesses where aligned).
    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), Self::Error> {
        self.config_range(offset, data.len())?;
        let mut at = 0;
        while at < data.len() {
            let a = self.device + offset as u64 + at as u64;
            let left = data.len() - at;
            // SAFETY: inside the mapped device config structure (checked above).
            let n = unsafe {
                if left >= 4 && a % 4 == 0 {
                    write_volatile(
                        a as *mut u32,
                        u32::from_le_bytes(data[at..at + 4].try_into().unwrap()),
                    );
                    4
                } else if left >= 2 && a % 2 == 0 {
                    write_volatile(a as *mut u16, u16::from_le_bytes([data[at], data[at + 1]]));
                    2
                } else {
                    write_volatile(a as *mut u8, data[at]);
                    1
                }
            };
            at += n;
        }
        Ok(())
    }

    fn set_memory(&mut self, _memory: &IdentityMemory) -> Result<(), Self::Error> {
        Ok(()) // the device addresses guest-physical memory itself
    }

    /// Polls the ISR and the config generation until something happened or `timeout` passed
    /// (the TSC clock; no interrupts).
    fn wait(&self, timeout: Option<Duration>) -> Result<Events, Self::Error> {
        let deadline = timeout.map(|t| clock::now_ns().saturating_add(t.as_nanos() as u64));
        loop {
            let p = self.poll_events()?;
            if p.calls != 0 || p.config_changed {
                return Ok(Events {
                    calls: p.calls,
                    config_changed: p.config_changed,
                });
            }
            if deadline.is_some_and(|d| clock::now_ns() >= d) {
                return Ok(Events::default());
            }
            core::hint::spin_loop();
        }
    }
}
