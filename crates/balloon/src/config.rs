//! The device configuration space (virtio spec 5.5.4): four little-endian `u32`s.
//!
//! | offset | field | written by |
//! |---|---|---|
//! | 0 | `num_pages` | device (the host's target) |
//! | 4 | `actual` | driver |
//! | 8 | `free_page_hint_cmd_id` | device (only with `FREE_PAGE_HINT`) |
//! | 12 | `poison_val` | driver (only with `PAGE_POISON`) |
//!
//! The fields are little-endian even for legacy devices.

use crate::features::{Features, FREE_PAGE_HINT, PAGE_POISON};

/// Byte offset of `num_pages`.
pub const NUM_PAGES_OFFSET: usize = 0;
/// Byte offset of `actual`.
pub const ACTUAL_OFFSET: usize = 4;
/// Byte offset of `free_page_hint_cmd_id`.
pub const FREE_PAGE_HINT_CMD_ID_OFFSET: usize = 8;
/// Byte offset of `poison_val`.
pub const POISON_VAL_OFFSET: usize = 12;
/// Size of the full configuration space.
pub const CONFIG_SIZE: usize = 16;

/// `free_page_hint_cmd_id` value asking the driver to stop hinting.
pub const FREE_PAGE_HINT_CMD_ID_STOP: u32 = 0;
/// `free_page_hint_cmd_id` value telling the driver hinting is done.
pub const FREE_PAGE_HINT_CMD_ID_DONE: u32 = 1;

/// Which party may write a configuration field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writer {
    /// Only the device (host) changes it; driver writes are refused.
    Device,
    /// The driver writes it.
    Driver,
}

/// A configuration field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// Number of 4 KiB pages the host wants in the balloon.
    NumPages,
    /// Number of 4 KiB pages the driver has in the balloon.
    Actual,
    /// Free page hint command id.
    FreePageHintCmdId,
    /// The guest's page poison pattern.
    PoisonVal,
}

impl Field {
    /// The field holding configuration byte `offset`, if any.
    pub const fn at(offset: usize) -> Option<Field> {
        match offset {
            0..=3 => Some(Field::NumPages),
            4..=7 => Some(Field::Actual),
            8..=11 => Some(Field::FreePageHintCmdId),
            12..=15 => Some(Field::PoisonVal),
            _ => None,
        }
    }

    /// Byte offset of the field.
    pub const fn offset(self) -> usize {
        match self {
            Field::NumPages => NUM_PAGES_OFFSET,
            Field::Actual => ACTUAL_OFFSET,
            Field::FreePageHintCmdId => FREE_PAGE_HINT_CMD_ID_OFFSET,
            Field::PoisonVal => POISON_VAL_OFFSET,
        }
    }

    /// Who writes the field. `poison_val` is driver-written per the spec, but only meaningful
    /// (and only writable) once `PAGE_POISON` is negotiated; see [`Field::driver_writable`].
    pub const fn writer(self) -> Writer {
        match self {
            Field::Actual | Field::PoisonVal => Writer::Driver,
            Field::NumPages | Field::FreePageHintCmdId => Writer::Device,
        }
    }

    /// Whether the driver may write this field under the negotiated `features`.
    pub const fn driver_writable(self, features: Features) -> bool {
        match self {
            Field::Actual => true,
            Field::PoisonVal => features.has(PAGE_POISON),
            Field::NumPages | Field::FreePageHintCmdId => false,
        }
    }
}

/// Size of the configuration space a device exposes for its *offered* features (as QEMU does:
/// the optional fields exist only when their feature is offered).
pub const fn config_size(offered: Features) -> usize {
    if offered.has(PAGE_POISON) {
        CONFIG_SIZE
    } else if offered.has(FREE_PAGE_HINT) {
        POISON_VAL_OFFSET
    } else {
        FREE_PAGE_HINT_CMD_ID_OFFSET
    }
}

/// The configuration space as values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BalloonConfig {
    /// Target balloon size in 4 KiB pages (device-written).
    pub num_pages: u32,
    /// Current balloon size in 4 KiB pages (driver-written).
    pub actual: u32,
    /// Free page hint command id (device-written).
    pub free_page_hint_cmd_id: u32,
    /// Page poison pattern (driver-written with `PAGE_POISON`).
    pub poison_val: u32,
}

impl BalloonConfig {
    /// The little-endian wire image.
    pub fn to_le_bytes(&self) -> [u8; CONFIG_SIZE] {
        let mut out = [0u8; CONFIG_SIZE];
        out[NUM_PAGES_OFFSET..NUM_PAGES_OFFSET + 4].copy_from_slice(&self.num_pages.to_le_bytes());
        out[ACTUAL_OFFSET..ACTUAL_OFFSET + 4].copy_from_slice(&self.actual.to_le_bytes());
        out[FREE_PAGE_HINT_CMD_ID_OFFSET..FREE_PAGE_HINT_CMD_ID_OFFSET + 4]
            .copy_from_slice(&self.free_page_hint_cmd_id.to_le_bytes());
        out[POISON_VAL_OFFSET..POISON_VAL_OFFSET + 4]
            .copy_from_slice(&self.poison_val.to_le_bytes());
        out
    }

    /// Parse the little-endian wire image.
    pub fn from_le_bytes(bytes: &[u8; CONFIG_SIZE]) -> BalloonConfig {
        let word = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        BalloonConfig {
            num_pages: word(NUM_PAGES_OFFSET),
            actual: word(ACTUAL_OFFSET),
            free_page_hint_cmd_id: word(FREE_PAGE_HINT_CMD_ID_OFFSET),
            poison_val: word(POISON_VAL_OFFSET),
        }
    }

    /// Value of `field`.
    pub const fn get(&self, field: Field) -> u32 {
        match field {
            Field::NumPages => self.num_pages,
            Field::Actual => self.actual,
            Field::FreePageHintCmdId => self.free_page_hint_cmd_id,
            Field::PoisonVal => self.poison_val,
        }
    }

    /// Set `field` to `value`.
    pub fn set(&mut self, field: Field, value: u32) {
        match field {
            Field::NumPages => self.num_pages = value,
            Field::Actual => self.actual = value,
            Field::FreePageHintCmdId => self.free_page_hint_cmd_id = value,
            Field::PoisonVal => self.poison_val = value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{Features, PAGE_POISON, REPORTING};

    #[test]
    fn layout_is_little_endian_at_spec_offsets() {
        let c = BalloonConfig {
            num_pages: 0x0403_0201,
            actual: 0x0807_0605,
            free_page_hint_cmd_id: 0x0c0b_0a09,
            poison_val: 0x100f_0e0d,
        };
        let b = c.to_le_bytes();
        assert_eq!(b, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
        assert_eq!(BalloonConfig::from_le_bytes(&b), c);
    }

    #[test]
    fn field_lookup() {
        assert_eq!(Field::at(0), Some(Field::NumPages));
        assert_eq!(Field::at(7), Some(Field::Actual));
        assert_eq!(Field::at(12), Some(Field::PoisonVal));
        assert_eq!(Field::at(16), None);
        assert_eq!(Field::PoisonVal.offset(), 12);
    }

    #[test]
    fn driver_writes_only_actual_and_negotiated_poison() {
        let none = Features::EMPTY;
        let poison = Features::bit(PAGE_POISON);
        assert!(Field::Actual.driver_writable(none));
        assert!(!Field::NumPages.driver_writable(poison));
        assert!(!Field::FreePageHintCmdId.driver_writable(poison));
        assert!(!Field::PoisonVal.driver_writable(none));
        assert!(Field::PoisonVal.driver_writable(poison));
    }

    #[test]
    fn size_follows_offered_features() {
        assert_eq!(config_size(Features::bit(REPORTING)), 8);
        assert_eq!(
            config_size(Features::bit(crate::features::FREE_PAGE_HINT)),
            12
        );
        assert_eq!(config_size(Features::bit(PAGE_POISON)), 16);
    }
}
