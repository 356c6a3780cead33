//! Resolving guest ranges through the guest memory map.
//!
//! Every range the device discards is walked region by region with checked arithmetic. A range
//! may span adjacent regions (each part is handled in its own region); a range that touches a
//! hole or runs past the end of guest RAM is rejected whole, never clamped into something the
//! guest did not ask for.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::error::ErrorKind;

/// A guest-physical range `[start, end)`, `start < end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct GuestRange {
    pub start: u64,
    pub end: u64,
}

impl GuestRange {
    /// `[start, start + len)`, checking for overflow and emptiness.
    pub(crate) fn new(start: u64, len: u64) -> Result<GuestRange, ErrorKind> {
        if len == 0 {
            return Err(ErrorKind::ZeroLength);
        }
        let end = start.checked_add(len).ok_or(ErrorKind::AddressOverflow)?;
        Ok(GuestRange { start, end })
    }

    pub(crate) fn len(&self) -> u64 {
        self.end - self.start
    }

    pub(crate) fn overlaps(&self, other: &GuestRange) -> bool {
        self.start < other.end && other.start < self.end
    }
}

/// The part of a guest range inside one region.
pub(crate) struct Span<'a, R> {
    pub region: &'a R,
    /// Offset of the span in the region.
    pub offset: u64,
    pub len: u64,
    /// Guest-physical address of the span.
    pub guest: u64,
}

/// Call `f` for each region-sized piece of `range`, in address order. Nothing is called unless
/// the whole range is guest RAM.
pub(crate) fn for_each_span<'a, M, F>(
    mem: &'a M,
    range: GuestRange,
    mut f: F,
) -> Result<(), ErrorKind>
where
    M: GuestMemoryBackend,
    F: FnMut(Span<'a, M::R>),
{
    check(mem, range)?;
    let mut cur = range.start;
    while cur < range.end {
        let span = span_at(mem, cur, range.end)?;
        cur = cur
            .checked_add(span.len)
            .ok_or(ErrorKind::AddressOverflow)?;
        f(span);
    }
    Ok(())
}

/// Whether `range` lies wholly in guest RAM.
pub(crate) fn check<M: GuestMemoryBackend>(mem: &M, range: GuestRange) -> Result<(), ErrorKind> {
    let mut cur = range.start;
    while cur < range.end {
        let span = span_at(mem, cur, range.end)?;
        cur = cur
            .checked_add(span.len)
            .ok_or(ErrorKind::AddressOverflow)?;
    }
    Ok(())
}

fn span_at<M: GuestMemoryBackend>(
    mem: &M,
    cur: u64,
    end: u64,
) -> Result<Span<'_, M::R>, ErrorKind> {
    let region = mem
        .find_region(GuestAddress(cur))
        .ok_or(ErrorKind::OutOfRange)?;
    // A well-behaved backend guarantees both; a custom one is not trusted.
    let offset = cur
        .checked_sub(region.start_addr().0)
        .ok_or(ErrorKind::OutOfRange)?;
    let room = region
        .len()
        .checked_sub(offset)
        .filter(|room| *room > 0)
        .ok_or(ErrorKind::OutOfRange)?;
    let len = room.min(end - cur);
    Ok(Span {
        region,
        offset,
        len,
        guest: cur,
    })
}

/// Sort `ranges` and merge overlapping or adjacent ones, in place.
pub(crate) fn normalize(ranges: &mut Vec<GuestRange>) {
    ranges.sort_unstable();
    let mut merged = 0;
    for i in 0..ranges.len() {
        let r = ranges[i];
        if merged > 0 && r.start <= ranges[merged - 1].end {
            let last = &mut ranges[merged - 1];
            last.end = last.end.max(r.end);
        } else {
            ranges[merged] = r;
            merged += 1;
        }
    }
    ranges.truncate(merged);
}

/// Whether `range` lies inside one range of `normalized` (sorted, merged).
pub(crate) fn covered(normalized: &[GuestRange], range: GuestRange) -> bool {
    let after = normalized.partition_point(|r| r.start <= range.start);
    after > 0 && normalized[after - 1].end >= range.end
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap<()> {
        // [0, 64K) and [64K, 128K) are adjacent; [256K, 320K) after a hole.
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x10000), 0x10000),
            (GuestAddress(0x40000), 0x10000),
        ])
        .unwrap()
    }

    #[test]
    fn range_construction() {
        assert_eq!(GuestRange::new(0, 0), Err(ErrorKind::ZeroLength));
        assert_eq!(
            GuestRange::new(u64::MAX - 1, 2),
            Err(ErrorKind::AddressOverflow)
        );
        assert_eq!(GuestRange::new(u64::MAX - 1, 1).unwrap().len(), 1);
    }

    #[test]
    fn spans_split_at_region_boundaries() {
        let m = mem();
        let mut seen = Vec::new();
        for_each_span(&m, GuestRange::new(0xf000, 0x2000).unwrap(), |s| {
            seen.push((s.region.start_addr().0, s.offset, s.len, s.guest))
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![(0, 0xf000, 0x1000, 0xf000), (0x10000, 0, 0x1000, 0x10000)]
        );
    }

    #[test]
    fn holes_and_ends_are_rejected_without_calls() {
        let m = mem();
        let mut calls = 0;
        let r = for_each_span(&m, GuestRange::new(0x1f000, 0x2000).unwrap(), |_| {
            calls += 1
        });
        assert_eq!(r, Err(ErrorKind::OutOfRange));
        let r = for_each_span(&m, GuestRange::new(0x4f000, 0x2000).unwrap(), |_| {
            calls += 1
        });
        assert_eq!(r, Err(ErrorKind::OutOfRange));
        let r = for_each_span(&m, GuestRange::new(0x30000, 0x1000).unwrap(), |_| {
            calls += 1
        });
        assert_eq!(r, Err(ErrorKind::OutOfRange));
        let r = for_each_span(
            &m,
            GuestRange::new(u64::MAX - 0x1fff, 0x1000).unwrap(),
            |_| calls += 1,
        );
        assert_eq!(r, Err(ErrorKind::OutOfRange));
        assert_eq!(calls, 0);
    }

    #[test]
    fn normalize_and_cover() {
        let mut v = vec![
            GuestRange { start: 10, end: 20 },
            GuestRange { start: 0, end: 5 },
            GuestRange { start: 20, end: 30 },
            GuestRange { start: 12, end: 14 },
            GuestRange { start: 40, end: 50 },
        ];
        normalize(&mut v);
        assert_eq!(
            v,
            vec![
                GuestRange { start: 0, end: 5 },
                GuestRange { start: 10, end: 30 },
                GuestRange { start: 40, end: 50 }
            ]
        );
        assert!(covered(&v, GuestRange { start: 10, end: 30 }));
        assert!(covered(&v, GuestRange { start: 41, end: 50 }));
        assert!(!covered(&v, GuestRange { start: 5, end: 11 }));
        assert!(!covered(&v, GuestRange { start: 29, end: 31 }));
        assert!(!covered(&v, GuestRange { start: 60, end: 61 }));
        assert!(!covered(&[], GuestRange { start: 0, end: 1 }));
    }
}
