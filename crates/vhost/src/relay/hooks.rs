//! What the device behind the relay must see of the frontend's ring messages, in order.
//!
//! `vhost-user-backend` 0.24 passes its backend neither `SET_VRING_BASE` nor `RESET_OWNER`,
//! yet both decide the device's guest-visible state: a ring set up again from available index
//! 0 after the device had taken buffers from it is a new driver's ring (a reboot or driver
//! reload without a disconnect), and `RESET_OWNER` is the older form of a device reset. The
//! relay sees every message, so it calls these hooks before forwarding each one; the daemon
//! has processed everything before it by the time it processes that message, and the device's
//! state changes before any later message is handled.

use std::fmt::Debug;

/// Called by the relay's inbound thread before the message is forwarded.
pub trait RingHooks: Debug + Send + Sync {
    /// How many rings the daemon has (the relay stops no ring at or above it).
    fn rings(&self) -> usize;

    /// `SET_VRING_BASE`: ring `queue` (re)starts at available index `base`; `running`: it was
    /// set up again without being stopped (no `GET_VRING_BASE`, no reset since its kick fd).
    /// Returns whether a new driver sets the device up; if so and `running`, the relay stops
    /// every ring the old one left running (`rings.rs`). Without hooks the relay takes
    /// `running` for that.
    fn ring_base(&self, queue: u32, base: u32, running: bool) -> bool;

    /// `RESET_OWNER`: the frontend gave up the device (a reset).
    fn reset_owner(&self);
}

/// The device's config space, read and written by the relay itself (see `local_config.rs`):
/// a `GET_CONFIG` or `SET_CONFIG` then costs the frontend one hop instead of three (relay,
/// daemon, relay), and QEMU's generic device sends one of each per balloon request, with the
/// guest's vCPU stopped until the answer.
pub trait ConfigSpace: Debug + Send + Sync {
    /// `GET_CONFIG`: exactly `size` bytes at `offset`, or empty when the read is refused.
    fn read(&self, offset: u32, size: u32) -> Vec<u8>;

    /// `SET_CONFIG`: applies what the driver may write; never fails (a stray write is ignored
    /// and counted, as the daemon's own handler does).
    fn write(&self, offset: u32, data: &[u8]);
}
