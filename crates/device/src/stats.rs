//! The stats queue.
//!
//! Protocol (spec 5.5.6.3): the driver queues one buffer of stats; the device keeps it and
//! hands it back (used length 0) when it wants fresh values, and the driver refills and
//! requeues it. The device therefore holds exactly one buffer: if a compliant-looking driver
//! queues a second one, the older is given back at once (counted) so the driver is never left
//! waiting on a buffer the device forgot.
//!
//! Each new buffer replaces the previous values entirely (a tag missing from it is unknown,
//! not stale). Unknown tags are skipped without stopping. A buffer that is not a whole number
//! of 10-byte entries is counted and its whole entries used; one larger than the limit or with
//! writable parts is held but not parsed.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prezero_balloon::stats::{entries, StatTag, NUM_STAT_TAGS, STAT_ENTRY_SIZE};
use serde::Serialize;
use virtio_queue::DescriptorChain;
use vm_memory::GuestMemoryBackend;

use crate::chain::{collect_split, read_buffers};
use crate::context::{ChainCtx, Completion, RequestBuffers};
use crate::error::ErrorKind;
use crate::metrics::{bump, Metrics};
use crate::options::Limits;

/// One set of guest statistics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GuestStats {
    /// Values by tag index (`None`: the guest did not send the tag).
    pub values: [Option<u64>; NUM_STAT_TAGS],
    /// When the buffer arrived, as milliseconds since the Unix epoch.
    pub updated_unix_ms: u64,
    /// Sequence number of the update (1 for the first buffer).
    pub sequence: u64,
    /// When the buffer arrived (monotonic).
    #[serde(skip)]
    pub received_at: Instant,
}

impl GuestStats {
    /// Value of `tag`, if the guest sent it.
    pub fn get(&self, tag: StatTag) -> Option<u64> {
        self.values[tag.index()]
    }

    /// Time since the values arrived.
    pub fn age(&self) -> std::time::Duration {
        self.received_at.elapsed()
    }
}

/// The stats queue's state, kept by the device between queue events.
#[derive(Debug, Default)]
pub(crate) struct StatsState {
    /// Head index of the buffer the device holds.
    pub held: Option<u16>,
    /// The values of the latest buffer.
    pub latest: Option<GuestStats>,
    /// Buffers parsed so far (the latest one's [`GuestStats::sequence`]).
    pub sequence: u64,
}

/// Handle one stats buffer: hold it (giving back one held before) and take its values.
pub(crate) fn stats_chain<M: GuestMemoryBackend, D>(
    ctx: &mut ChainCtx<'_, M, D>,
    stats: &mut StatsState,
    chain: DescriptorChain<&M>,
) -> Completion {
    bump(&ctx.metrics.stats_buffers, 1);
    let completion = match stats.held.replace(chain.head_index()) {
        Some(previous) => {
            ctx.metrics.error(ErrorKind::StatsExtraBuffer);
            Completion::HoldAndRelease(previous)
        }
        None => Completion::Hold,
    };
    if let Err(kind) = parse_stats(ctx.mem, ctx.metrics, ctx.limits, ctx.bufs, stats, chain) {
        ctx.metrics.error(kind);
    }
    completion
}

/// Replace the latest values with those of `chain`'s buffer.
fn parse_stats<M: GuestMemoryBackend>(
    mem: &M,
    metrics: &Metrics,
    limits: Limits,
    bufs: &mut RequestBuffers,
    stats: &mut StatsState,
    chain: DescriptorChain<&M>,
) -> Result<(), ErrorKind> {
    let (readable, writable) =
        collect_split(chain, limits.max_chain_descriptors, &mut bufs.buffers)?;
    if !writable.is_empty() {
        return Err(ErrorKind::WrongDirection);
    }
    let total = readable
        .iter()
        .try_fold(0usize, |acc, b| acc.checked_add(b.len as usize))
        .filter(|t| *t <= limits.max_stats_bytes)
        .ok_or(ErrorKind::StatsBufferSize)?;
    if total < STAT_ENTRY_SIZE {
        return Err(ErrorKind::StatsBufferSize);
    }
    read_buffers(mem, readable, &mut bufs.bytes)?;
    let mut values = [None; NUM_STAT_TAGS];
    let mut unknown = 0u64;
    for (tag, value) in entries(&bufs.bytes) {
        match StatTag::from_raw(tag) {
            Some(tag) => values[tag.index()] = Some(value),
            None => unknown += 1,
        }
    }
    bump(&metrics.stats_unknown_tags, unknown);
    stats.sequence = stats.sequence.saturating_add(1);
    stats.latest = Some(GuestStats {
        values,
        updated_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0),
        sequence: stats.sequence,
        received_at: Instant::now(),
    });
    if total % STAT_ENTRY_SIZE != 0 {
        return Err(ErrorKind::StatsBufferSize);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use prezero_balloon::features::Features;
    use prezero_balloon::stats::encode_entry;
    use vm_memory::{Bytes, GuestAddress};

    use super::{stats_chain, StatsState};
    use crate::context::test_support::{chain, mem, Parts};
    use crate::context::Completion;

    #[test]
    fn holds_one_buffer_and_keeps_the_latest_values() {
        let mem = mem();
        let mut entries = encode_entry(4, 1234).to_vec();
        entries.extend_from_slice(&encode_entry(0xffff, 1));
        mem.write_slice(&entries, GuestAddress(0x10_0000)).unwrap();
        let mut parts = Parts::default();
        let mut stats = StatsState::default();
        let mut ctx = parts.ctx(&mem, Features::EMPTY);
        let first = chain(&mem, &[(0x10_0000, 20, 0)]);
        let head = first.head_index();
        assert_eq!(stats_chain(&mut ctx, &mut stats, first), Completion::Hold);
        let second = chain(&mem, &[(0x10_0000, 10, 0)]);
        let release = stats_chain(&mut ctx, &mut stats, second);
        assert_eq!(release, Completion::HoldAndRelease(head));
        let latest = stats.latest.unwrap();
        assert_eq!((latest.sequence, latest.values[4]), (2, Some(1234)));
        assert_eq!(parts.metrics.snapshot().stats_unknown_tags, 1);
    }
}
