//! Time: the TSC, calibrated against the PIT (channel 2, gated through port 0x61, mode 0:
//! the output bit rises when the count runs out), as Linux's `pit_calibrate_tsc` does.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::port::{inb, outb};

/// The PIT's input clock, Hz.
const PIT_HZ: u64 = 1_193_182;
/// Calibration window: 20 ms.
const CALIBRATE_MS: u64 = 20;

static TSC_KHZ: AtomicU64 = AtomicU64::new(0);

/// The time stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` only reads the counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Measures the TSC frequency over 20 ms of PIT time; returns kHz.
pub fn calibrate() -> u64 {
    let count = PIT_HZ * CALIBRATE_MS / 1000;
    // Gate channel 2 on, speaker off; channel 2, lobyte/hibyte, mode 0, binary.
    outb(0x61, (inb(0x61) & !0x02) | 0x01);
    outb(0x43, 0xb0);
    outb(0x42, count as u8);
    outb(0x42, (count >> 8) as u8);
    let t0 = rdtsc();
    while inb(0x61) & 0x20 == 0 {}
    let khz = (rdtsc() - t0) / CALIBRATE_MS;
    TSC_KHZ.store(khz.max(1), Ordering::Relaxed);
    khz
}

/// Nanoseconds since boot (TSC / calibrated rate).
pub fn now_ns() -> u64 {
    let khz = TSC_KHZ.load(Ordering::Relaxed).max(1);
    (rdtsc() as u128 * 1_000_000 / khz as u128) as u64
}

/// Converts TSC ticks to nanoseconds.
pub fn tsc_to_ns(ticks: u64) -> u64 {
    (ticks as u128 * 1_000_000 / TSC_KHZ.load(Ordering::Relaxed).max(1) as u128) as u64
}

/// Converts TSC ticks to microseconds.
pub fn tsc_to_us(ticks: u64) -> u64 {
    (ticks as u128 * 1000 / TSC_KHZ.load(Ordering::Relaxed).max(1) as u128) as u64
}
