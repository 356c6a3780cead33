//! Zone configuration and the trust gate for "the device zeroed it".

/// Where free blocks go, and which ones an allocation prefers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Placement {
    /// Linux's behaviour: one list per order, reported blocks at the tail so they are handed
    /// out last; allocations take the head of the lowest order that has a block.
    #[default]
    Linux,
    /// Known-zero blocks are kept apart: `ZERO` allocations take a known-zero block of any
    /// sufficient order before a dirty one, other allocations take dirty blocks first.
    ZeroAware,
}

/// What the driver negotiated about device-initialized pages (virtio-balloon feature bits 6 and
/// 7). Set by the balloon driver after feature negotiation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DeviceInit {
    /// `VIRTIO_BALLOON_F_DEVICE_INIT_REPORTED`: the device says which reported blocks it zeroed.
    pub reported: bool,
    /// `VIRTIO_BALLOON_F_DEVICE_INIT_ON_INFLATE`: the device says which inflated pages it zeroed.
    pub on_inflate: bool,
}

/// Zone settings. The defaults mirror a Linux guest: Linux placement, reporting at pageblock
/// order, no init-on-free, no poisoning, not confidential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Free-list placement policy.
    pub placement: Placement,
    /// Zero every block when it is freed (`init_on_free=1`): freed blocks become known-zero.
    pub init_on_free: bool,
    /// Page poisoning: fill freed blocks with this byte. `Some(0)` makes them known-zero.
    pub poison: Option<u8>,
    /// The host is untrusted (a confidential guest): never believe the device zeroed anything.
    pub confidential: bool,
    /// Smallest order reported to the device (Linux: pageblock order, 9 = 2 MiB).
    pub reporting_order: u8,
    /// Time to wait after free activity before a reporting pass, in the embedder's clock units
    /// (Linux waits 2 s).
    pub reporting_delay: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            placement: Placement::Linux,
            init_on_free: false,
            poison: None,
            confidential: false,
            reporting_order: crate::PAGEBLOCK_ORDER,
            reporting_delay: 2000,
        }
    }
}

impl Config {
    /// Whether a "zeroed" answer from a device that negotiated the matching feature may be
    /// believed. A wrong "zeroed" leaks one tenant's data to another, so this is a security
    /// decision: poisoning with a non-zero value means the device was asked to fill with that
    /// value, and a confidential guest does not trust the host at all.
    pub fn trusts_device_zeroing(&self, negotiated: bool) -> bool {
        negotiated && matches!(self.poison, None | Some(0)) && !self.confidential
    }
}
