//! Feature bits of the virtio-balloon device (virtio spec 5.5.3) plus the two proposed ones.
//!
//! Constants are bit *numbers*; [`Features`] is the 64-bit mask the transport negotiates.

/// The host must be told before the guest uses deflated pages.
pub const MUST_TELL_HOST: u32 = 0;
/// A statistics queue is present.
pub const STATS_VQ: u32 = 1;
/// The guest may deflate the balloon when it is out of memory.
pub const DEFLATE_ON_OOM: u32 = 2;
/// The device can ask for free page hints (migration aid) and a free-page-hint queue exists.
pub const FREE_PAGE_HINT: u32 = 3;
/// The guest poisons free pages; `poison_val` in the config holds the pattern.
pub const PAGE_POISON: u32 = 4;
/// Free page reporting: a reporting queue exists.
pub const REPORTING: u32 = 5;
/// Proposed: the device tells, per reporting chain, whether the reported memory now reads zero.
pub const DEVICE_INIT_REPORTED: u32 = 6;
/// Proposed: the device tells, per inflated page, whether it initialized (zeroed) it.
pub const DEVICE_INIT_ON_INFLATE: u32 = 7;

/// Transport bit: the driver may use indirect descriptors.
pub const RING_INDIRECT_DESC: u32 = 28;
/// Transport bit: used/avail event index notification suppression.
pub const RING_EVENT_IDX: u32 = 29;
/// Transport bit: compliance with virtio 1.0 or later (non-legacy).
pub const VERSION_1: u32 = 32;
/// Transport bit: the device is behind an IOMMU; addresses are not guest-physical.
pub const ACCESS_PLATFORM: u32 = 33;

/// Names of the balloon-specific bits 0-7, indexed by bit number.
pub const BALLOON_FEATURE_NAMES: [&str; 8] = [
    "MUST_TELL_HOST",
    "STATS_VQ",
    "DEFLATE_ON_OOM",
    "FREE_PAGE_HINT",
    "PAGE_POISON",
    "REPORTING",
    "DEVICE_INIT_REPORTED",
    "DEVICE_INIT_ON_INFLATE",
];

/// Mask of the balloon-specific bits 0-7.
pub const BALLOON_FEATURES_MASK: u64 = 0xff;

/// A set of negotiated or offered feature bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Features(pub u64);

impl Features {
    /// No feature.
    pub const EMPTY: Features = Features(0);

    /// The set containing only `bit`; bits >= 64 give the empty set.
    pub const fn bit(bit: u32) -> Features {
        match 1u64.checked_shl(bit) {
            Some(mask) => Features(mask),
            None => Features(0),
        }
    }

    /// The raw mask.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Whether `bit` is in the set.
    pub const fn has(self, bit: u32) -> bool {
        self.0 & Features::bit(bit).0 != 0
    }

    /// The set with `bit` added.
    #[must_use]
    pub const fn with(self, bit: u32) -> Features {
        Features(self.0 | Features::bit(bit).0)
    }

    /// The set with `bit` removed.
    #[must_use]
    pub const fn without(self, bit: u32) -> Features {
        Features(self.0 & !Features::bit(bit).0)
    }

    /// Intersection.
    #[must_use]
    pub const fn and(self, other: Features) -> Features {
        Features(self.0 & other.0)
    }

    /// Union.
    #[must_use]
    pub const fn or(self, other: Features) -> Features {
        Features(self.0 | other.0)
    }

    /// Whether every bit of `self` is also in `other`.
    pub const fn is_subset_of(self, other: Features) -> bool {
        self.0 & !other.0 == 0
    }

    /// Reporting answers are meaningful: `DEVICE_INIT_REPORTED` only has an effect together with
    /// `REPORTING`.
    pub const fn init_reported(self) -> bool {
        self.has(REPORTING) && self.has(DEVICE_INIT_REPORTED)
    }

    /// Inflate chains carry a bitmap.
    pub const fn init_on_inflate(self) -> bool {
        self.has(DEVICE_INIT_ON_INFLATE)
    }
}

impl From<u64> for Features {
    fn from(bits: u64) -> Self {
        Features(bits)
    }
}

impl From<Features> for u64 {
    fn from(f: Features) -> Self {
        f.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_match_the_spec_and_the_proposals() {
        assert_eq!(Features::bit(MUST_TELL_HOST).bits(), 1);
        assert_eq!(Features::bit(REPORTING).bits(), 0x20);
        assert_eq!(Features::bit(DEVICE_INIT_REPORTED).bits(), 0x40);
        assert_eq!(Features::bit(DEVICE_INIT_ON_INFLATE).bits(), 0x80);
        assert_eq!(Features::bit(VERSION_1).bits(), 1 << 32);
        assert_eq!(BALLOON_FEATURE_NAMES[6], "DEVICE_INIT_REPORTED");
    }

    #[test]
    fn out_of_range_bit_is_empty() {
        assert_eq!(Features::bit(64), Features::EMPTY);
        assert!(!Features(u64::MAX).has(200));
    }

    #[test]
    fn init_reported_needs_reporting() {
        let f = Features::EMPTY.with(DEVICE_INIT_REPORTED);
        assert!(!f.init_reported());
        assert!(f.with(REPORTING).init_reported());
        assert!(!f
            .with(REPORTING)
            .without(DEVICE_INIT_REPORTED)
            .init_reported());
    }

    #[test]
    fn subset() {
        let offered = Features::EMPTY.with(STATS_VQ).with(REPORTING);
        assert!(Features::bit(REPORTING).is_subset_of(offered));
        assert!(!Features::bit(PAGE_POISON).is_subset_of(offered));
    }
}
