//! The discard seam and the rules for claiming "zeroed".
//!
//! A [`DiscardBackend`] says, per guest memory region, what discarding does there
//! ([`RegionPolicy`]) and performs the discards. The device core decides *what* to discard and
//! what it may claim:
//! - only whole host pages are discarded: a range is shrunk to the host pages it covers fully
//!   (a 2 MiB hugetlbfs page partly covered is left alone);
//! - a range is "zeroed" only if every byte of it was covered by successful discards in regions
//!   whose mode is [`DiscardMode::Zeroing`];
//! - a failed discard claims nothing.
//!
//! [`HostDiscard`](crate::HostDiscard) is the real backend,
//! `RecordingDiscard` (feature `test-utils`) the one tests use.

use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::error::ErrorKind;
use crate::memory::{for_each_span, normalize, GuestRange};
use crate::metrics::{bump, Metrics};

/// What a discard does to the memory of a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiscardMode {
    /// The memory is handed back and reads as zeros afterwards (private anonymous memory with
    /// `MADV_DONTNEED`, shared memory with a hole punched).
    Zeroing,
    /// The memory is handed back but reads back as something else (a private file mapping
    /// reverts to the file's contents). Never claimed as zeroed.
    NonZeroing,
    /// Discarding is off for this region (disabled by the host, pinned or unsuitable memory).
    Disabled,
}

/// Discard properties of one guest memory region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionPolicy {
    /// What a discard does.
    pub mode: DiscardMode,
    /// Host page size backing the region: the discard granule. Must be a power of two >= 4 KiB;
    /// the region's start must be aligned to it (the backend returns `Disabled` otherwise).
    pub host_page_size: u64,
}

impl RegionPolicy {
    /// A zeroing region with `host_page_size` pages.
    pub const fn zeroing(host_page_size: u64) -> Self {
        RegionPolicy {
            mode: DiscardMode::Zeroing,
            host_page_size,
        }
    }
}

/// A discard that failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscardError {
    /// The syscall failed.
    #[error("discard syscall failed: {0}")]
    Os(#[from] std::io::Error),
    /// The backend refuses the range (outside the region, unaligned): a device bug if it
    /// happens, reported rather than acted on.
    #[error("discard range refused by the backend")]
    Range,
}

/// Performs discards in guest memory regions of type `R`.
pub trait DiscardBackend<R: GuestMemoryRegion> {
    /// The discard policy of `region`. Called before every discard in it, so cheap or cached.
    fn policy(&mut self, region: &R) -> RegionPolicy;

    /// Discard `len` bytes at `offset` in `region`. The device guarantees `offset` and `len`
    /// are multiples of the region's host page size, `len > 0` and
    /// `offset + len <= region.len()`. One call is one syscall for the host backend.
    fn discard(&mut self, region: &R, offset: u64, len: u64) -> Result<(), DiscardError>;

    /// Hint that `len` bytes at `offset` in `region` will be used soon (deflate). Same
    /// guarantees as [`DiscardBackend::discard`]; failures are ignored.
    fn will_need(&mut self, region: &R, offset: u64, len: u64) {
        let _ = (region, offset, len);
    }
}

/// Smallest host page the device accepts.
const MIN_HOST_PAGE: u64 = 4096;

/// What discarding a set of ranges achieved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DiscardSummary {
    /// Bytes handed back.
    pub discarded: u64,
}

/// Discard each range of `ranges` (guest RAM, checked by the caller or here), and fill `zeroed`
/// with the guest ranges that now read zero (normalized: sorted, merged).
pub(crate) fn discard_ranges<M, D>(
    mem: &M,
    backend: &mut D,
    metrics: &Metrics,
    ranges: &[GuestRange],
    zeroed: &mut Vec<GuestRange>,
) -> DiscardSummary
where
    M: GuestMemoryBackend,
    D: DiscardBackend<M::R>,
{
    let mut summary = DiscardSummary::default();
    zeroed.clear();
    for range in ranges {
        let mut partial = false;
        let walked = for_each_span(mem, *range, |span| {
            let policy = backend.policy(span.region);
            let hps = policy.host_page_size;
            if hps < MIN_HOST_PAGE || !hps.is_power_of_two() {
                metrics.error(ErrorKind::BadHostPageSize);
                return;
            }
            if policy.mode == DiscardMode::Disabled {
                return;
            }
            let end = span.offset + span.len; // both bounded by the region length
            let first = match span.offset.checked_next_multiple_of(hps) {
                Some(first) => first,
                None => return,
            };
            let last = end - end % hps;
            if first != span.offset || last != end {
                partial = true;
            }
            if first >= last {
                return;
            }
            let len = last - first;
            bump(&metrics.discard_calls, 1);
            match backend.discard(span.region, first, len) {
                Ok(()) => {
                    summary.discarded = summary.discarded.saturating_add(len);
                    mark_dirty(span.region, first, len);
                    if policy.mode == DiscardMode::Zeroing {
                        let start = span.guest + (first - span.offset);
                        zeroed.push(GuestRange {
                            start,
                            end: start + len,
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, offset = first, len, "balloon: discard failed");
                    metrics.error(ErrorKind::DiscardFailed);
                }
            }
        });
        if let Err(kind) = walked {
            metrics.error(kind);
        }
        if partial {
            metrics.error(ErrorKind::PartialHostPage);
        }
    }
    normalize(zeroed);
    bump(&metrics.discarded_bytes, summary.discarded);
    summary
}

/// The contents changed under the dirty log: a migration in progress must resend the zeros,
/// or the destination would keep stale data the guest was told is zero.
fn mark_dirty<R: GuestMemoryRegion>(region: &R, offset: u64, len: u64) {
    if let (Ok(offset), Ok(len)) = (usize::try_from(offset), usize::try_from(len)) {
        region.bitmap().mark_dirty(offset, len);
    }
}

/// Hint `will_need` on the whole host pages covered by `ranges`.
pub(crate) fn will_need_ranges<M, D>(
    mem: &M,
    backend: &mut D,
    metrics: &Metrics,
    ranges: &[GuestRange],
) where
    M: GuestMemoryBackend,
    D: DiscardBackend<M::R>,
{
    for range in ranges {
        let walked = for_each_span(mem, *range, |span| {
            let hps = backend.policy(span.region).host_page_size;
            if hps < MIN_HOST_PAGE || !hps.is_power_of_two() {
                return;
            }
            let end = span.offset + span.len;
            if let Some(first) = span.offset.checked_next_multiple_of(hps) {
                let last = end - end % hps;
                if first < last {
                    backend.will_need(span.region, first, last - first);
                }
            }
        });
        if let Err(kind) = walked {
            metrics.error(kind);
        }
    }
}
