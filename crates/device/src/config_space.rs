//! The guest-visible configuration space and its access rules.
//!
//! Reads of any offset and size are served from the 16-byte little-endian image (bytes past the
//! end read as zero and are counted). A driver write applies every byte that belongs to a field
//! the driver may write under the negotiated features: `actual` always, `poison_val` with
//! `PAGE_POISON` (the spec makes it driver-written; Linux writes it at probe). The other bytes
//! are ignored, as a virtio-pci device ignores writes to read-only fields; a byte that would
//! *change* a read-only field (notably `num_pages`, which only the host sets), or one past the
//! space, is reported so the device can count it.
//!
//! Why not all or nothing: QEMU's generic vhost-user device (`vhost-user-test-device-pci`,
//! QEMU 10.2+) keeps a copy of the whole config space and sends all of it (offset 0, 8 bytes
//! with the 6.1 driver's features) on every guest write, `num_pages` included. Refusing such a
//! write would leave `actual` at 0 while the guest holds the balloon (measured with QEMU 11.1.3).

use prezero_balloon::config::{BalloonConfig, Field, CONFIG_SIZE};
use prezero_balloon::features::Features;

/// What a driver write did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConfigWriteOutcome {
    /// `actual` took a new value.
    pub actual_changed: bool,
    /// `poison_val` took a new value.
    pub poison_changed: bool,
    /// Bytes that tried to change a field the driver may not write (ignored).
    pub read_only_bytes: usize,
    /// Bytes past the configuration space, or at an offset that overflows (ignored).
    pub out_of_range_bytes: usize,
}

impl ConfigWriteOutcome {
    /// Whether part of the write was ignored (a real attempt to change a read-only field, or
    /// bytes past the space).
    pub fn ignored_anything(&self) -> bool {
        self.read_only_bytes != 0 || self.out_of_range_bytes != 0
    }
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

    /// Apply a driver write: its driver-writable bytes, whatever else it touches.
    pub(crate) fn write(
        &mut self,
        offset: u64,
        data: &[u8],
        negotiated: Features,
    ) -> ConfigWriteOutcome {
        let mut image = self.values.to_le_bytes();
        let mut outcome = ConfigWriteOutcome::default();
        for (i, byte) in data.iter().enumerate() {
            let at = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .filter(|at| *at < CONFIG_SIZE);
            let Some(at) = at else {
                outcome.out_of_range_bytes += 1;
                continue;
            };
            if Field::at(at).is_some_and(|f| f.driver_writable(negotiated)) {
                image[at] = *byte;
            } else if image[at] != *byte {
                outcome.read_only_bytes += 1;
            }
        }
        let new = BalloonConfig::from_le_bytes(&image);
        outcome.actual_changed = new.actual != self.values.actual;
        outcome.poison_changed = new.poison_val != self.values.poison_val;
        self.values = new;
        outcome
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
        let out = c.write(4, &7u32.to_le_bytes(), Features::EMPTY);
        assert!(out.actual_changed && !out.ignored_anything());
        assert_eq!(c.values.actual, 7);
        // A single byte of actual is fine too.
        c.write(5, &[1], Features::EMPTY);
        assert_eq!(c.values.actual, 0x107);
        let out = c.write(0, &[1, 2, 3, 4], Features::EMPTY);
        assert_eq!(out.read_only_bytes, 4);
        assert_eq!(c.values.num_pages, 0x100);
        // Spanning num_pages and actual: actual's bytes are applied, num_pages' are not.
        let out = c.write(2, &[9; 4], Features::EMPTY);
        assert_eq!((out.read_only_bytes, out.actual_changed), (2, true));
        assert_eq!(c.values.num_pages, 0x100);
        assert_eq!(c.values.actual, 0x909);
        assert_eq!(c.write(16, &[1], Features::EMPTY).out_of_range_bytes, 1);
        assert_eq!(
            c.write(u64::MAX, &[1, 2], Features::EMPTY)
                .out_of_range_bytes,
            2
        );
        assert_eq!(c.write(14, &[0; 4], Features::EMPTY).out_of_range_bytes, 2);
    }

    #[test]
    fn a_whole_config_write_moves_actual_and_leaves_num_pages() {
        // What QEMU's generic vhost-user device sends when the guest writes `actual`: the whole
        // 8-byte space, num_pages as the guest last read it.
        let mut c = space();
        let mut image = [0u8; 8];
        image[..4].copy_from_slice(&0x100u32.to_le_bytes());
        image[4..].copy_from_slice(&0x80u32.to_le_bytes());
        let out = c.write(0, &image, Features::EMPTY);
        assert_eq!(
            out,
            ConfigWriteOutcome {
                actual_changed: true,
                ..Default::default()
            }
        );
        assert_eq!((c.values.num_pages, c.values.actual), (0x100, 0x80));
        // The host moved the target meanwhile: the stale copy must not move it back (the
        // device counts it: from here it is an attempt to change num_pages).
        c.values.num_pages = 0x200;
        let out = c.write(0, &image, Features::EMPTY);
        assert_eq!(c.values.num_pages, 0x200);
        assert_eq!(out.read_only_bytes, 1);
        assert!(!out.actual_changed);
    }

    #[test]
    fn poison_val_needs_page_poison() {
        let mut c = space();
        let aa = 0xaaaa_aaaau32.to_le_bytes();
        assert_eq!(c.write(12, &aa, Features::EMPTY).read_only_bytes, 4);
        assert_eq!(c.values.poison_val, 0);
        let out = c.write(12, &aa, Features::bit(PAGE_POISON));
        assert!(out.poison_changed && !out.actual_changed && !out.ignored_anything());
        assert_eq!(c.values.poison_val, 0xaaaa_aaaa);
    }
}
