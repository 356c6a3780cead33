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

use crate::device::Scratch;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prezero_balloon::stats::{entries, StatTag, NUM_STAT_TAGS, STAT_ENTRY_SIZE};
use serde::Serialize;
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{Bytes, GuestMemoryBackend};

use crate::chain::{collect, split_directions};
use crate::device::BalloonDevice;
use crate::error::{DeviceError, ErrorKind};
use crate::metrics::bump;
use crate::queue::Completion;

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

/// Stats queue state.
#[derive(Debug, Default)]
pub(crate) struct StatsState {
    /// Head index of the buffer the device holds.
    pub held: Option<u16>,
    pub latest: Option<GuestStats>,
    pub sequence: u64,
}

impl<D> BalloonDevice<D> {
    /// Process the stats queue. Returns whether the driver must be notified.
    pub fn process_stats<Q, M>(
        &mut self,
        index: usize,
        queue: &mut Q,
        mem: &M,
    ) -> Result<bool, DeviceError>
    where
        Q: QueueT,
        M: GuestMemoryBackend,
    {
        self.drain(index, queue, mem, |dev, mem, chain, _, scratch| {
            dev.stats_chain(mem, chain, scratch)
        })
    }

    fn stats_chain<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        chain: DescriptorChain<&M>,
        scratch: &mut Scratch,
    ) -> Completion {
        bump(&self.metrics.stats_buffers, 1);
        let head = chain.head_index();
        let completion = match self.stats.held.replace(head) {
            Some(previous) => {
                self.metrics.error(ErrorKind::StatsExtraBuffer);
                Completion::HoldAndRelease(previous)
            }
            None => Completion::Hold,
        };
        if let Err(kind) = self.parse_stats(mem, chain, scratch) {
            self.metrics.error(kind);
        }
        completion
    }

    fn parse_stats<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        chain: DescriptorChain<&M>,
        scratch: &mut Scratch,
    ) -> Result<(), ErrorKind> {
        let max_descriptors = self.options.limits.max_chain_descriptors;
        collect(chain, max_descriptors, &mut scratch.buffers)?;
        let (readable, writable) = split_directions(&scratch.buffers)?;
        if !writable.is_empty() {
            return Err(ErrorKind::WrongDirection);
        }
        let total = readable
            .iter()
            .try_fold(0usize, |acc, b| acc.checked_add(b.len as usize))
            .filter(|t| *t <= self.options.limits.max_stats_bytes)
            .ok_or(ErrorKind::StatsBufferSize)?;
        if total < STAT_ENTRY_SIZE {
            return Err(ErrorKind::StatsBufferSize);
        }
        let bytes = &mut scratch.bytes;
        bytes.clear();
        bytes.resize(total, 0);
        let mut at = 0;
        for b in readable {
            let len = b.len as usize;
            mem.read_slice(&mut bytes[at..at + len], b.addr)
                .map_err(|_| ErrorKind::GuestMemory)?;
            at += len;
        }
        let mut values = [None; NUM_STAT_TAGS];
        let mut unknown = 0u64;
        for (tag, value) in entries(bytes) {
            match StatTag::from_raw(tag) {
                Some(tag) => values[tag.index()] = Some(value),
                None => unknown += 1,
            }
        }
        bump(&self.metrics.stats_unknown_tags, unknown);
        self.stats.sequence = self.stats.sequence.saturating_add(1);
        self.stats.latest = Some(GuestStats {
            values,
            updated_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0),
            sequence: self.stats.sequence,
            received_at: Instant::now(),
        });
        if total % STAT_ENTRY_SIZE != 0 {
            return Err(ErrorKind::StatsBufferSize);
        }
        Ok(())
    }
}
