//! Guest memory statistics (virtio spec 5.5.6.4): a buffer of packed 10-byte entries, each a
//! little-endian `u16` tag followed by a little-endian `u64` value.
//!
//! Unknown tags must be ignored, not treated as the end of the buffer: newer guests send tags
//! older devices do not know.

/// Size of one stats entry on the wire (`le16` tag + `le64` value, packed).
pub const STAT_ENTRY_SIZE: usize = 10;
/// Number of tags defined (0-15).
pub const NUM_STAT_TAGS: usize = 16;

/// A statistics tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum StatTag {
    /// Bytes swapped in.
    SwapIn = 0,
    /// Bytes swapped out.
    SwapOut = 1,
    /// Major page faults.
    MajorFaults = 2,
    /// Minor page faults.
    MinorFaults = 3,
    /// Free memory in bytes.
    FreeMemory = 4,
    /// Total memory in bytes.
    TotalMemory = 5,
    /// Available memory in bytes (as `MemAvailable`).
    AvailableMemory = 6,
    /// Disk caches in bytes.
    DiskCaches = 7,
    /// Successful hugetlb page allocations.
    HugetlbAllocations = 8,
    /// Failed hugetlb page allocations.
    HugetlbFailures = 9,
    /// OOM killer invocations.
    OomKills = 10,
    /// Allocation stalls.
    AllocStalls = 11,
    /// Pages scanned asynchronously (kswapd).
    AsyncScans = 12,
    /// Pages scanned directly.
    DirectScans = 13,
    /// Pages reclaimed asynchronously.
    AsyncReclaims = 14,
    /// Pages reclaimed directly.
    DirectReclaims = 15,
}

impl StatTag {
    /// All tags, indexed by their value.
    pub const ALL: [StatTag; NUM_STAT_TAGS] = [
        StatTag::SwapIn,
        StatTag::SwapOut,
        StatTag::MajorFaults,
        StatTag::MinorFaults,
        StatTag::FreeMemory,
        StatTag::TotalMemory,
        StatTag::AvailableMemory,
        StatTag::DiskCaches,
        StatTag::HugetlbAllocations,
        StatTag::HugetlbFailures,
        StatTag::OomKills,
        StatTag::AllocStalls,
        StatTag::AsyncScans,
        StatTag::DirectScans,
        StatTag::AsyncReclaims,
        StatTag::DirectReclaims,
    ];

    /// The tag with wire value `raw`, `None` for tags this crate does not know.
    pub fn from_raw(raw: u16) -> Option<StatTag> {
        StatTag::ALL.get(usize::from(raw)).copied()
    }

    /// Wire value.
    pub const fn raw(self) -> u16 {
        self as u16
    }

    /// Index into a `[_; NUM_STAT_TAGS]` table.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// A stable snake_case name.
    pub const fn name(self) -> &'static str {
        match self {
            StatTag::SwapIn => "swap_in",
            StatTag::SwapOut => "swap_out",
            StatTag::MajorFaults => "major_faults",
            StatTag::MinorFaults => "minor_faults",
            StatTag::FreeMemory => "free_memory",
            StatTag::TotalMemory => "total_memory",
            StatTag::AvailableMemory => "available_memory",
            StatTag::DiskCaches => "disk_caches",
            StatTag::HugetlbAllocations => "hugetlb_allocations",
            StatTag::HugetlbFailures => "hugetlb_failures",
            StatTag::OomKills => "oom_kills",
            StatTag::AllocStalls => "alloc_stalls",
            StatTag::AsyncScans => "async_scans",
            StatTag::DirectScans => "direct_scans",
            StatTag::AsyncReclaims => "async_reclaims",
            StatTag::DirectReclaims => "direct_reclaims",
        }
    }
}

/// Decode one wire entry into `(raw tag, value)`.
pub fn decode_entry(bytes: &[u8; STAT_ENTRY_SIZE]) -> (u16, u64) {
    let tag = u16::from_le_bytes([bytes[0], bytes[1]]);
    let mut val = [0u8; 8];
    val.copy_from_slice(&bytes[2..]);
    (tag, u64::from_le_bytes(val))
}

/// Encode one wire entry.
pub fn encode_entry(tag: u16, value: u64) -> [u8; STAT_ENTRY_SIZE] {
    let mut out = [0u8; STAT_ENTRY_SIZE];
    out[..2].copy_from_slice(&tag.to_le_bytes());
    out[2..].copy_from_slice(&value.to_le_bytes());
    out
}

/// Iterate over the complete entries of a stats buffer; a trailing partial entry is not
/// yielded (check `buf.len() % STAT_ENTRY_SIZE` to detect it).
pub fn entries(buf: &[u8]) -> impl Iterator<Item = (u16, u64)> + '_ {
    buf.chunks_exact(STAT_ENTRY_SIZE).map(|chunk| {
        let mut entry = [0u8; STAT_ENTRY_SIZE];
        entry.copy_from_slice(chunk);
        decode_entry(&entry)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        for (i, tag) in StatTag::ALL.iter().enumerate() {
            assert_eq!(tag.index(), i);
            assert_eq!(StatTag::from_raw(tag.raw()), Some(*tag));
        }
        assert_eq!(StatTag::from_raw(16), None);
        assert_eq!(StatTag::from_raw(u16::MAX), None);
        assert_eq!(StatTag::DirectReclaims.raw(), 15);
    }

    #[test]
    fn entry_wire_format() {
        let e = encode_entry(4, 0x0102_0304_0506_0708);
        assert_eq!(e, [4, 0, 8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(decode_entry(&e), (4, 0x0102_0304_0506_0708));
    }

    #[test]
    fn entries_skip_trailing_partial() {
        let mut buf = [0u8; 25];
        buf[..10].copy_from_slice(&encode_entry(1, 11));
        buf[10..20].copy_from_slice(&encode_entry(99, 22));
        let mut it = entries(&buf);
        assert_eq!(it.next(), Some((1, 11)));
        assert_eq!(it.next(), Some((99, 22)));
        assert_eq!(it.next(), None);
    }
}
