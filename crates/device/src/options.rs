//! Host-side options of the device: the feature offer, queue size and input limits.

use prezero_balloon::features::{
    Features, ACCESS_PLATFORM, BALLOON_FEATURES_MASK, DEFLATE_ON_OOM, DEVICE_INIT_ON_INFLATE,
    DEVICE_INIT_REPORTED, FREE_PAGE_HINT, MUST_TELL_HOST, PAGE_POISON, REPORTING, RING_EVENT_IDX,
    RING_INDIRECT_DESC, STATS_VQ, VERSION_1,
};

use crate::error::DeviceError;

/// Caps on guest-controlled sizes. Anything above is rejected and counted, never allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Descriptors per chain (indirect tables can hold up to 65535).
    pub max_chain_descriptors: usize,
    /// PFNs per inflate/deflate chain (Linux sends at most 256).
    pub max_pfns_per_request: usize,
    /// Bytes of one stats buffer (Linux sends 16 entries, 160 bytes).
    pub max_stats_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_chain_descriptors: 1024,
            max_pfns_per_request: 65536,
            max_stats_bytes: 4096,
        }
    }
}

/// How the device is set up by the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceOptions {
    /// Balloon feature bits offered (bits 0-7 only; see [`DeviceOptions::offered_features`]).
    pub balloon_features: Features,
    /// Transport bits offered along (`VERSION_1`, `RING_EVENT_IDX`, `RING_INDIRECT_DESC`).
    pub transport_features: Features,
    /// Maximum queue size the device accepts.
    pub queue_size: u16,
    /// Initial target (`num_pages`) in 4 KiB pages.
    pub initial_target_pages: u32,
    /// Advise `MADV_WILLNEED` on deflated ranges (pre-faults them on the host).
    pub deflate_willneed: bool,
    /// Input caps.
    pub limits: Limits,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        DeviceOptions {
            balloon_features: Features::EMPTY
                .with(MUST_TELL_HOST)
                .with(STATS_VQ)
                .with(DEFLATE_ON_OOM)
                .with(PAGE_POISON)
                .with(REPORTING)
                .with(DEVICE_INIT_REPORTED)
                .with(DEVICE_INIT_ON_INFLATE),
            transport_features: Features::EMPTY
                .with(VERSION_1)
                .with(RING_EVENT_IDX)
                .with(RING_INDIRECT_DESC),
            queue_size: 256,
            initial_target_pages: 0,
            deflate_willneed: false,
            limits: Limits::default(),
        }
    }
}

impl DeviceOptions {
    /// Every bit the device offers: `balloon_features` and `transport_features`, except
    /// `DEVICE_INIT_REPORTED` without `REPORTING` (it describes the reporting queue's answers;
    /// QEMU's `x-device-init-reported=auto` likewise offers it only with free page reporting).
    pub fn offered_features(&self) -> Features {
        let mut balloon = self.balloon_features;
        if !balloon.has(REPORTING) {
            balloon = balloon.without(DEVICE_INIT_REPORTED);
        }
        balloon.or(self.transport_features)
    }

    /// Refuse what this device cannot honour.
    pub fn validate(&self) -> Result<(), DeviceError> {
        if self.balloon_features.bits() & !BALLOON_FEATURES_MASK != 0 {
            return Err(DeviceError::Options(
                "balloon_features may only hold bits 0-7",
            ));
        }
        if self.balloon_features.has(FREE_PAGE_HINT) {
            // Free page hinting only helps live migration, which this device does not do.
            return Err(DeviceError::Options("FREE_PAGE_HINT is not supported"));
        }
        if self.transport_features.has(ACCESS_PLATFORM) {
            // With an IOMMU, addresses in the rings are not guest-physical: every range check
            // below would be wrong.
            return Err(DeviceError::Options("ACCESS_PLATFORM is not supported"));
        }
        if self.queue_size == 0 || !self.queue_size.is_power_of_two() || self.queue_size > 32768 {
            return Err(DeviceError::Options(
                "queue_size must be a power of two in 1..=32768",
            ));
        }
        let l = &self.limits;
        if l.max_chain_descriptors == 0 || l.max_pfns_per_request == 0 || l.max_stats_bytes == 0 {
            return Err(DeviceError::Options("limits must be non-zero"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_offer_is_valid_and_has_both_proposals() {
        let o = DeviceOptions::default();
        o.validate().unwrap();
        let f = o.offered_features();
        assert!(f.has(DEVICE_INIT_REPORTED) && f.has(DEVICE_INIT_ON_INFLATE));
        assert!(f.has(VERSION_1));
        assert!(!f.has(FREE_PAGE_HINT));
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        let o = DeviceOptions {
            balloon_features: DeviceOptions::default()
                .balloon_features
                .with(FREE_PAGE_HINT),
            ..DeviceOptions::default()
        };
        assert!(o.validate().is_err());
        let o = DeviceOptions {
            balloon_features: DeviceOptions::default().balloon_features.with(VERSION_1),
            ..DeviceOptions::default()
        };
        assert!(o.validate().is_err());
        let o = DeviceOptions {
            transport_features: DeviceOptions::default()
                .transport_features
                .with(ACCESS_PLATFORM),
            ..DeviceOptions::default()
        };
        assert!(o.validate().is_err());
        let o = DeviceOptions {
            queue_size: 100,
            ..DeviceOptions::default()
        };
        assert!(o.validate().is_err());
        let mut o = DeviceOptions::default();
        o.limits.max_pfns_per_request = 0;
        assert!(o.validate().is_err());
    }
}
