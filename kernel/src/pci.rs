//! PCI configuration space through the legacy mechanism (ports 0xCF8/0xCFC, PCI Local Bus 3.0
//! section 3.2.2.3.2), a scan of bus 0, capability lists and memory BARs. QEMU's `pc` and `q35`
//! machines put every device of a small VM on bus 0, and SeaBIOS has assigned the BARs by the
//! time the kernel runs.

use crate::port::{inl, outl};

/// A function's address on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    /// Device (0-31).
    pub device: u8,
    /// Function (0-7).
    pub function: u8,
}

impl Address {
    fn port_value(self, reg: u8) -> u32 {
        0x8000_0000 | (self.device as u32) << 11 | (self.function as u32) << 8 | (reg as u32 & 0xfc)
    }

    /// Reads the 32-bit register at `reg` (4-byte aligned).
    pub fn read32(self, reg: u8) -> u32 {
        outl(0xcf8, self.port_value(reg));
        inl(0xcfc)
    }

    /// Writes the 32-bit register at `reg` (4-byte aligned).
    pub fn write32(self, reg: u8, v: u32) {
        outl(0xcf8, self.port_value(reg));
        outl(0xcfc, v);
    }

    /// Reads the byte at `reg`.
    pub fn read8(self, reg: u8) -> u8 {
        (self.read32(reg) >> ((reg & 3) * 8)) as u8
    }

    /// Reads the 16-bit word at `reg` (2-byte aligned).
    pub fn read16(self, reg: u8) -> u16 {
        (self.read32(reg) >> ((reg & 2) * 8)) as u16
    }

    /// Vendor and device id.
    pub fn ids(self) -> (u16, u16) {
        let v = self.read32(0);
        (v as u16, (v >> 16) as u16)
    }

    /// Turns on memory-space decoding and bus mastering (DMA), the two a virtio device needs.
    pub fn enable_memory_and_dma(self) {
        let cmd = self.read32(0x04);
        self.write32(0x04, (cmd & 0xffff) | 0b110);
    }

    /// The capabilities: `(id, offset in config space)`, following the list from 0x34.
    pub fn capabilities(self) -> impl Iterator<Item = (u8, u8)> {
        // Status bit 4: the capability list exists.
        let mut next = if self.read16(0x06) & 0x10 != 0 {
            self.read8(0x34) & 0xfc
        } else {
            0
        };
        let mut budget = 48; // a looping list ends here (at most 48 in 192 bytes)
        core::iter::from_fn(move || {
            if next == 0 || budget == 0 {
                return None;
            }
            budget -= 1;
            let at = next;
            next = self.read8(at + 1) & 0xfc;
            Some((self.read8(at), at))
        })
    }

    /// The physical address of memory BAR `bar` (0-5), both halves of a 64-bit BAR;
    /// `None` for an I/O BAR or one the firmware left unassigned.
    pub fn memory_bar(self, bar: u8) -> Option<u64> {
        if bar > 5 {
            return None;
        }
        let low = self.read32(0x10 + bar * 4);
        if low & 1 != 0 {
            return None;
        }
        let mut addr = (low & !0xf) as u64;
        if (low >> 1) & 3 == 2 && bar < 5 {
            addr |= (self.read32(0x10 + (bar + 1) * 4) as u64) << 32;
        }
        (addr != 0).then_some(addr)
    }
}

/// Every function present on bus 0.
pub fn scan() -> impl Iterator<Item = Address> {
    (0..32u8).flat_map(|device| {
        let multi = Address {
            device,
            function: 0,
        }
        .read8(0x0e)
            & 0x80
            != 0;
        let functions = if multi { 8 } else { 1 };
        (0..functions)
            .map(move |function| Address { device, function })
            .filter(|a| a.ids().0 != 0xffff)
    })
}
