//! A test double for the discard seam: a backend that records what it is asked to do instead
//! of doing it, with per-region policies and injectable failures.
//!
//! Built only with the `test-utils` feature (or the crate's own unit tests), so no product
//! build carries it.

use std::collections::BTreeMap;

use vm_memory::{GuestAddress, GuestMemoryRegion, MemoryRegionAddress};

use crate::discard::{DiscardBackend, DiscardError, DiscardMode, RegionPolicy};

/// One recorded operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiscardOp {
    /// Start of the region the operation was in.
    pub region_start: GuestAddress,
    /// Offset in that region.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// `true` for a discard, `false` for a will-need hint.
    pub discard: bool,
}

impl DiscardOp {
    /// Guest-physical start of the operation.
    pub fn guest_start(&self) -> u64 {
        self.region_start.0.saturating_add(self.offset)
    }
}

/// Records discards instead of performing them. Policies are set per region start address;
/// other regions get the default policy (zeroing, 4 KiB pages).
#[derive(Clone, Debug)]
pub struct RecordingDiscard {
    /// Operations in call order.
    pub ops: Vec<DiscardOp>,
    default_policy: RegionPolicy,
    policies: BTreeMap<u64, RegionPolicy>,
    fail: bool,
    failing_regions: Vec<u64>,
    write_zeros: bool,
}

impl Default for RecordingDiscard {
    fn default() -> Self {
        RecordingDiscard {
            ops: Vec::new(),
            default_policy: RegionPolicy::zeroing(4096),
            policies: BTreeMap::new(),
            fail: false,
            failing_regions: Vec::new(),
            write_zeros: false,
        }
    }
}

impl RecordingDiscard {
    /// Zeroing 4 KiB pages everywhere, discards succeed and change nothing in memory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Use `policy` for regions without their own.
    #[must_use]
    pub fn with_default_policy(mut self, policy: RegionPolicy) -> Self {
        self.default_policy = policy;
        self
    }

    /// Use `policy` for the region starting at `region_start`.
    #[must_use]
    pub fn with_region_policy(mut self, region_start: GuestAddress, policy: RegionPolicy) -> Self {
        self.policies.insert(region_start.0, policy);
        self
    }

    /// Make every discard fail (as a syscall error would).
    #[must_use]
    pub fn failing(mut self) -> Self {
        self.fail = true;
        self
    }

    /// Make the discards in the region starting at `region_start` fail (as a syscall error
    /// would), the others succeed.
    #[must_use]
    pub fn failing_in(mut self, region_start: GuestAddress) -> Self {
        self.failing_regions.push(region_start.0);
        self
    }

    /// Really write zeros over discarded ranges of zeroing regions, so tests can read them.
    #[must_use]
    pub fn writing_zeros(mut self) -> Self {
        self.write_zeros = true;
        self
    }

    /// Total bytes discarded.
    pub fn discarded_bytes(&self) -> u64 {
        self.ops
            .iter()
            .filter(|op| op.discard)
            .fold(0u64, |a, op| a.saturating_add(op.len))
    }

    /// Number of discards.
    pub fn discard_count(&self) -> usize {
        self.ops.iter().filter(|op| op.discard).count()
    }

    fn policy_for(&self, start: GuestAddress) -> RegionPolicy {
        self.policies
            .get(&start.0)
            .copied()
            .unwrap_or(self.default_policy)
    }
}

impl<R: GuestMemoryRegion> DiscardBackend<R> for RecordingDiscard {
    fn policy(&mut self, region: &R) -> RegionPolicy {
        self.policy_for(region.start_addr())
    }

    fn discard(&mut self, region: &R, offset: u64, len: u64) -> Result<(), DiscardError> {
        let policy = self.policy_for(region.start_addr());
        let in_bounds = offset
            .checked_add(len)
            .is_some_and(|end| end <= region.len());
        let aligned = offset % policy.host_page_size == 0 && len % policy.host_page_size == 0;
        if !in_bounds || !aligned || len == 0 {
            return Err(DiscardError::Range);
        }
        self.ops.push(DiscardOp {
            region_start: region.start_addr(),
            offset,
            len,
            discard: true,
        });
        if self.fail || self.failing_regions.contains(&region.start_addr().0) {
            return Err(DiscardError::Os(std::io::Error::from_raw_os_error(
                libc::EINVAL,
            )));
        }
        if self.write_zeros && policy.mode == DiscardMode::Zeroing {
            let zeros = vec![0u8; 64 * 1024];
            let mut done = 0u64;
            while done < len {
                let chunk = (len - done).min(zeros.len() as u64) as usize;
                region
                    .write_slice(&zeros[..chunk], MemoryRegionAddress(offset + done))
                    .map_err(|_| DiscardError::Range)?;
                done += chunk as u64;
            }
        }
        Ok(())
    }

    fn will_need(&mut self, region: &R, offset: u64, len: u64) {
        self.ops.push(DiscardOp {
            region_start: region.start_addr(),
            offset,
            len,
            discard: false,
        });
    }
}
