//! The guest-visible configuration space and its access rules.
//!
//! Reads of any offset and size are served from the 16-byte little-endian image (bytes past the
//! end read as zero and are counted). A driver write is applied only if every byte it touches
//! belongs to a field the driver may write under the negotiated features: `actual` always,
//! `poison_val` with `PAGE_POISON` (the spec makes it driver-written; Linux writes it at probe).
//! Anything else (notably `num_pages`, which only the host sets) refuses the whole write.

use prezero_balloon::config::{BalloonConfig, Field, CONFIG_SIZE};
use prezero_balloon::features::Features;

/// What a driver write changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConfigWriteOutcome {
    /// `actual` took a new value.
    pub actual_changed: bool,
    /// `poison_val` took a new value.
    pub poison_changed: bool,
}

/// Why a driver write was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConfigWriteRefusal {
    /// The write reaches past the configuration space (or its offset overflows).
    Range,
    /// The write touches a byte the driver may not write.
    ReadOnly,
}

/// The configuration space.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ConfigSpace {
    pub(crate) values: BalloonConfig,
}

impl ConfigSpace {
    /// Fill `data` with the bytes at `offset..offset + data.len()`. Returns false if part of the
    /// access fell outside the space (those bytes read as zero).
    pub(crate) fn read(&self, offset: u64, data: &mut [u8]) -> bool {
        let image = self.values.to_le_bytes();
        let mut in_range = true;
        for (i, byte) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .filter(|at| *at < CONFIG_SIZE);
            match at {
                Some(at) => *byte = image[at],
                None => {
                    *byte = 0;
                    in_range = false;
                }
            }
        }
        in_range
    }

    /// Apply a driver write, all or nothing.
    pub(crate) fn write(
        &mut self,
        offset: u64,
        data: &[u8],
        negotiated: Features,
    ) -> Result<ConfigWriteOutcome, ConfigWriteRefusal> {
        let start = usize::try_from(offset).map_err(|_| ConfigWriteRefusal::Range)?;
        let end = start
            .checked_add(data.len())
            .filter(|end| *end <= CONFIG_SIZE)
            .ok_or(ConfigWriteRefusal::Range)?;
        for at in start..end {
            let writable = Field::at(at).is_some_and(|f| f.driver_writable(negotiated));
            if !writable {
                return Err(ConfigWriteRefusal::ReadOnly);
            }
        }
        let mut image = self.values.to_le_bytes();
        image[start..end].copy_from_slice(data);
        let new = BalloonConfig::from_le_bytes(&image);
        let outcome = ConfigWriteOutcome {
            actual_changed: new.actual != self.values.actual,
            poison_changed: new.poison_val != self.values.poison_val,
        };
        self.values = new;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prezero_balloon::features::PAGE_POISON;

    fn space() -> ConfigSpace {
        let mut c = ConfigSpace::default();
        c.values.num_pages = 0x100;
        c.values.actual = 0x20;
        c
    }

    #[test]
    fn read_full_and_partial() {
        let c = space();
        let mut all = [0xaau8; 16];
        assert!(c.read(0, &mut all));
        assert_eq!(&all[..8], &[0, 1, 0, 0, 0x20, 0, 0, 0]);
        let mut tail = [0xaau8; 4];
        assert!(!c.read(14, &mut tail));
        assert_eq!(tail, [0, 0, 0, 0]);
        let mut far = [0xaau8; 2];
        assert!(!c.read(u64::MAX, &mut far));
        assert_eq!(far, [0, 0]);
    }

    #[test]
    fn driver_may_write_actual_only() {
        let mut c = space();
        let out = c.write(4, &7u32.to_le_bytes(), Features::EMPTY).unwrap();
        assert!(out.actual_changed);
        assert_eq!(c.values.actual, 7);
        // A single byte of actual is fine too.
        c.write(5, &[1], Features::EMPTY).unwrap();
        assert_eq!(c.values.actual, 0x107);
        assert_eq!(
            c.write(0, &[1, 2, 3, 4], Features::EMPTY),
            Err(ConfigWriteRefusal::ReadOnly)
        );
        // Spanning actual and num_pages: refused as a whole.
        assert_eq!(
            c.write(2, &[9; 4], Features::EMPTY),
            Err(ConfigWriteRefusal::ReadOnly)
        );
        assert_eq!(c.values.num_pages, 0x100);
        assert_eq!(c.values.actual, 0x107);
        assert_eq!(
            c.write(16, &[1], Features::EMPTY),
            Err(ConfigWriteRefusal::Range)
        );
        assert_eq!(
            c.write(u64::MAX, &[1], Features::EMPTY),
            Err(ConfigWriteRefusal::Range)
        );
    }

    #[test]
    fn poison_val_needs_page_poison() {
        let mut c = space();
        let aa = 0xaaaa_aaaau32.to_le_bytes();
        assert_eq!(
            c.write(12, &aa, Features::EMPTY),
            Err(ConfigWriteRefusal::ReadOnly)
        );
        let out = c.write(12, &aa, Features::bit(PAGE_POISON)).unwrap();
        assert!(out.poison_changed && !out.actual_changed);
        assert_eq!(c.values.poison_val, 0xaaaa_aaaa);
    }
}
