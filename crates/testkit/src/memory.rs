//! Guest memory laid out with an adjacent region and a hole, for device tests: ranges that
//! cross a region boundary must work, ranges that touch the hole or run past the end must not.
//!
//! | gpa | what |
//! |---|---|
//! | `[0, 1 MiB)` | region A: rings and driver buffers ([`BUFS`]) |
//! | `[1 MiB, 2 MiB)` | region B ([`REGION_B`]), adjacent to A |
//! | `[2 MiB, 4 MiB)` | hole ([`HOLE`]) |
//! | `[4 MiB, 8 MiB)` | region C ([`REGION_C`]); [`RAM_END`] is its end |

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// One MiB.
pub const MIB: u64 = 1 << 20;
/// Start of region B, right after region A.
pub const REGION_B: u64 = MIB;
/// Start of the hole.
pub const HOLE: u64 = 2 * MIB;
/// Start of region C, after the hole.
pub const REGION_C: u64 = 4 * MIB;
/// End of guest memory.
pub const RAM_END: u64 = 8 * MIB;
/// Scratch area for driver buffers (PFN arrays, bitmaps, stats) in region A.
pub const BUFS: u64 = 0x10000;

/// Anonymous guest memory with the layout above.
pub fn mem() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), MIB as usize),
        (GuestAddress(REGION_B), MIB as usize),
        (GuestAddress(REGION_C), 4 * MIB as usize),
    ])
    .unwrap()
}

/// Writes a little-endian PFN array at `at`; returns its byte length.
pub fn write_pfns(mem: &GuestMemoryMmap<()>, at: u64, pfns: &[u32]) -> u32 {
    let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(at)).unwrap();
    bytes.len() as u32
}

/// `len` bytes at `at`.
pub fn read_bytes(mem: &GuestMemoryMmap<()>, at: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(at)).unwrap();
    v
}

/// Sets `len` bytes at `at` to `byte`.
pub fn fill(mem: &GuestMemoryMmap<()>, at: u64, len: usize, byte: u8) {
    mem.write_slice(&vec![byte; len], GuestAddress(at)).unwrap();
}
