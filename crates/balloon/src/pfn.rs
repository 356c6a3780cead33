//! Balloon page frame numbers, PFN arrays, PFN runs and the inflate bitmap.
//!
//! Balloon pages are 4 KiB (PFN shift 12) whatever the host or guest page size. Inflate and
//! deflate buffers are arrays of little-endian `u32` PFNs.

/// Shift from a balloon PFN to a guest-physical address.
pub const PFN_SHIFT: u32 = 12;
/// Size of a balloon page.
pub const BALLOON_PAGE_SIZE: u64 = 1 << PFN_SHIFT;
/// Size of one PFN on the wire.
pub const PFN_SIZE: usize = 4;

/// Guest-physical address of `pfn`. Cannot overflow: a `u32` PFN addresses at most 16 TiB.
pub const fn pfn_to_addr(pfn: u32) -> u64 {
    (pfn as u64) << PFN_SHIFT
}

/// PFN of a page-aligned guest-physical address, `None` if unaligned or beyond 16 TiB.
pub const fn addr_to_pfn(addr: u64) -> Option<u32> {
    if addr % BALLOON_PAGE_SIZE != 0 {
        return None;
    }
    let pfn = addr >> PFN_SHIFT;
    if pfn > u32::MAX as u64 {
        return None;
    }
    Some(pfn as u32)
}

/// Decode a little-endian PFN array into `out`; returns how many PFNs were written. Stops at
/// the shorter of the two; a trailing partial PFN is ignored (check `bytes.len() % PFN_SIZE`).
pub fn decode_pfns(bytes: &[u8], out: &mut [u32]) -> usize {
    let mut n = 0;
    for (chunk, slot) in bytes.chunks_exact(PFN_SIZE).zip(out.iter_mut()) {
        *slot = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        n += 1;
    }
    n
}

/// Encode `pfns` little-endian into `out`; returns the number of bytes written (stops when
/// `out` is full, never writes a partial PFN).
pub fn encode_pfns(pfns: &[u32], out: &mut [u8]) -> usize {
    let mut written = 0;
    for (pfn, chunk) in pfns.iter().zip(out.chunks_exact_mut(PFN_SIZE)) {
        chunk.copy_from_slice(&pfn.to_le_bytes());
        written += PFN_SIZE;
    }
    written
}

/// Sort `pfns` and move the distinct values to the front; returns how many are distinct.
pub fn sort_dedup(pfns: &mut [u32]) -> usize {
    pfns.sort_unstable();
    let mut distinct = 0;
    for i in 0..pfns.len() {
        if distinct == 0 || pfns[i] != pfns[distinct - 1] {
            pfns[distinct] = pfns[i];
            distinct += 1;
        }
    }
    distinct
}

/// A run of consecutive PFNs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PfnRun {
    /// First PFN.
    pub start: u32,
    /// Number of PFNs, at least 1.
    pub count: u64,
}

impl PfnRun {
    /// Guest-physical address of the run.
    pub const fn addr(&self) -> u64 {
        pfn_to_addr(self.start)
    }

    /// Length in bytes. Cannot overflow: at most 2^32 pages of 4 KiB.
    pub const fn len_bytes(&self) -> u64 {
        self.count << PFN_SHIFT
    }
}

/// Iterator over the runs of consecutive PFNs of a sorted, duplicate-free slice.
#[derive(Clone, Debug)]
pub struct PfnRuns<'a> {
    pfns: &'a [u32],
}

impl<'a> PfnRuns<'a> {
    /// Runs of `sorted_distinct` (as left by [`sort_dedup`]). On unsorted input the runs are
    /// still correct PFN ranges, just not maximal.
    pub fn new(sorted_distinct: &'a [u32]) -> Self {
        PfnRuns {
            pfns: sorted_distinct,
        }
    }
}

impl Iterator for PfnRuns<'_> {
    type Item = PfnRun;

    fn next(&mut self) -> Option<PfnRun> {
        let (&start, rest) = self.pfns.split_first()?;
        let mut count: u64 = 1;
        let mut last = start;
        let mut used = 1;
        for &pfn in rest {
            if last.checked_add(1) != Some(pfn) {
                break;
            }
            last = pfn;
            count += 1;
            used += 1;
        }
        self.pfns = &self.pfns[used..];
        Some(PfnRun { start, count })
    }
}

/// Bytes of bitmap needed for `n` PFNs: `ceil(n / 8)`.
pub const fn bitmap_len(n: usize) -> usize {
    n / 8 + (n % 8 != 0) as usize
}

/// Set bit `i` (byte `i / 8`, bit `i % 8`, LSB first). Returns false, touching nothing, when
/// the bit lies outside `bitmap`.
pub fn bitmap_set(bitmap: &mut [u8], i: usize) -> bool {
    match bitmap.get_mut(i / 8) {
        Some(byte) => {
            *byte |= 1 << (i % 8);
            true
        }
        None => false,
    }
}

/// Value of bit `i`; bits outside `bitmap` read as 0 (never a false "initialized").
pub fn bitmap_test(bitmap: &[u8], i: usize) -> bool {
    bitmap
        .get(i / 8)
        .is_some_and(|byte| byte & (1 << (i % 8)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pfn_addr_conversions() {
        assert_eq!(pfn_to_addr(1), 4096);
        assert_eq!(pfn_to_addr(u32::MAX), 0x0fff_ffff_f000);
        assert_eq!(addr_to_pfn(0x2000), Some(2));
        assert_eq!(addr_to_pfn(0x2001), None);
        assert_eq!(addr_to_pfn(1 << 44), None);
    }

    #[test]
    fn pfn_arrays_round_trip() {
        let pfns = [1u32, 0xdead_beef, 7];
        let mut bytes = [0u8; 13];
        assert_eq!(encode_pfns(&pfns, &mut bytes), 12);
        assert_eq!(&bytes[4..8], &[0xef, 0xbe, 0xad, 0xde]);
        let mut out = [0u32; 8];
        assert_eq!(decode_pfns(&bytes, &mut out), 3);
        assert_eq!(&out[..3], &pfns);
        let mut small = [0u32; 2];
        assert_eq!(decode_pfns(&bytes, &mut small), 2);
    }

    #[test]
    fn sort_dedup_and_runs() {
        let mut pfns = [9u32, 3, 4, 4, 5, 10, u32::MAX, 1, u32::MAX - 1];
        let n = sort_dedup(&mut pfns);
        assert_eq!(&pfns[..n], &[1, 3, 4, 5, 9, 10, u32::MAX - 1, u32::MAX]);
        let runs: [PfnRun; 4] = {
            let mut it = PfnRuns::new(&pfns[..n]);
            [
                it.next().unwrap(),
                it.next().unwrap(),
                it.next().unwrap(),
                it.next().unwrap(),
            ]
        };
        assert_eq!(runs[0], PfnRun { start: 1, count: 1 });
        assert_eq!(runs[1], PfnRun { start: 3, count: 3 });
        assert_eq!(runs[2], PfnRun { start: 9, count: 2 });
        assert_eq!(
            runs[3],
            PfnRun {
                start: u32::MAX - 1,
                count: 2
            }
        );
        assert_eq!(runs[1].addr(), 0x3000);
        assert_eq!(runs[1].len_bytes(), 0x3000);
        assert_eq!(PfnRuns::new(&pfns[..n]).count(), 4);
        assert_eq!(PfnRuns::new(&[]).next(), None);
    }

    #[test]
    fn bitmap_is_lsb_first_and_bounded() {
        assert_eq!(bitmap_len(0), 0);
        assert_eq!(bitmap_len(1), 1);
        assert_eq!(bitmap_len(8), 1);
        assert_eq!(bitmap_len(9), 2);
        let mut bm = [0u8; 2];
        assert!(bitmap_set(&mut bm, 0));
        assert!(bitmap_set(&mut bm, 9));
        assert!(!bitmap_set(&mut bm, 16));
        assert_eq!(bm, [0x01, 0x02]);
        assert!(bitmap_test(&bm, 9));
        assert!(!bitmap_test(&bm, 8));
        assert!(!bitmap_test(&bm, 1000));
    }
}
