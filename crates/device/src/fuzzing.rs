//! The fuzz harness, shared by the cargo-fuzz target (`crates/device/fuzz`) and the corpus
//! replay test, so the replay runs on stable in CI.
//!
//! The input chooses the negotiated features, `poison_val`, the discard policy of one region
//! (4 KiB or 16 KiB host pages, zeroing, non-zeroing, disabled, failing) and the whole content
//! of guest memory (descriptor tables, available rings, PFN arrays, stats), then a sequence of
//! operations: make one or more chains available on a queue and process it, request stats,
//! write configuration bytes.
//!
//! Checked after every single-chain step, besides "no panic":
//! - every discard lies inside one region, aligned to its host page size;
//! - the device wrote nothing but the queue's used ring and, for an inflate chain, the first
//!   `used_len` bytes of its single bitmap buffer;
//! - a reporting chain answered "zeroed" was well formed, all writable, its used length is its
//!   total length, `DEVICE_INIT_REPORTED` is negotiated, poison allows zeros, and every byte of
//!   it lies in discards of zeroing regions made during this step;
//! - an inflate bit is set only for a page inside such discards, appearing once in the request.

use std::collections::BTreeMap;

use prezero_balloon::features::{
    Features, DEVICE_INIT_ON_INFLATE, DEVICE_INIT_REPORTED, PAGE_POISON, REPORTING, STATS_VQ,
};
use prezero_balloon::pfn::{bitmap_len, bitmap_test, PFN_SHIFT};
use prezero_balloon::queues::QueueRole;
use prezero_virtq::RingLayout;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, GuestMemoryRegion};

use crate::device::BalloonDevice;
use crate::discard::{DiscardBackend, DiscardError, DiscardMode, RegionPolicy};
use crate::metrics::MetricsSnapshot;
use crate::options::DeviceOptions;

const KIB: u64 = 1024;
/// RAM: [0, 16K) rings + buffers, [16K, 32K) adjacent, hole, [48K, 80K). Small, so each
/// step's before/after snapshot stays cheap.
const REGIONS: [(u64, u64); 3] = [(0, 16 * KIB), (16 * KIB, 16 * KIB), (48 * KIB, 32 * KIB)];
const RAM_BYTES: usize = 64 * 1024;
/// Each queue's rings at `qi * QUEUE_STRIDE`: descriptors, avail at +0x100, used at +0x200.
const QUEUE_STRIDE: u64 = 0x400;

/// A discard backend that asserts the device's guarantees and records discards.
struct CheckedDiscard {
    policies: BTreeMap<u64, RegionPolicy>,
    fail: bool,
    /// (guest start, len, zeroing) of successful discards.
    done: Vec<(u64, u64, bool)>,
}

impl<R: GuestMemoryRegion> DiscardBackend<R> for CheckedDiscard {
    fn policy(&mut self, region: &R) -> RegionPolicy {
        self.policies[&region.start_addr().0]
    }

    fn discard(&mut self, region: &R, offset: u64, len: u64) -> Result<(), DiscardError> {
        let policy = self.policies[&region.start_addr().0];
        let end = offset.checked_add(len).expect("discard range overflows");
        assert!(len > 0 && end <= region.len(), "discard outside its region");
        assert_eq!(offset % policy.host_page_size, 0, "unaligned discard");
        assert_eq!(
            len % policy.host_page_size,
            0,
            "partial host page discarded"
        );
        assert_ne!(
            policy.mode,
            DiscardMode::Disabled,
            "discard in a disabled region"
        );
        if self.fail {
            return Err(DiscardError::Range);
        }
        let start = region.start_addr().0 + offset;
        self.done
            .push((start, len, policy.mode == DiscardMode::Zeroing));
        Ok(())
    }

    fn will_need(&mut self, region: &R, offset: u64, len: u64) {
        let end = offset.checked_add(len).expect("hint range overflows");
        assert!(len > 0 && end <= region.len(), "hint outside its region");
    }
}

/// Input reader that yields zeros once exhausted.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
}

/// Run one fuzz input; returns the device's metrics. Panics on a broken invariant.
pub fn run(data: &[u8]) -> MetricsSnapshot {
    let mut input = Input(data);
    let flags = input.byte();
    let mut features = Features::EMPTY.with(prezero_balloon::features::VERSION_1);
    for (bit, feature) in [
        STATS_VQ,
        REPORTING,
        DEVICE_INIT_REPORTED,
        DEVICE_INIT_ON_INFLATE,
        PAGE_POISON,
    ]
    .into_iter()
    .enumerate()
    {
        if flags & (1 << bit) != 0 {
            features = features.with(feature);
        }
    }
    let poison = input.byte();
    let policy_byte = input.byte();
    let size = 1u16 << (input.byte() % 5); // 1..=16 entries
    let ops = usize::from(input.byte() % 12);

    let region_c = match policy_byte % 5 {
        0 => RegionPolicy::zeroing(4096),
        1 => RegionPolicy::zeroing(16 * KIB),
        2 => RegionPolicy {
            mode: DiscardMode::NonZeroing,
            host_page_size: 4096,
        },
        3 => RegionPolicy {
            mode: DiscardMode::Disabled,
            host_page_size: 4096,
        },
        _ => RegionPolicy::zeroing(8 * KIB),
    };
    let mut policies = BTreeMap::new();
    policies.insert(REGIONS[0].0, RegionPolicy::zeroing(4096));
    policies.insert(REGIONS[1].0, RegionPolicy::zeroing(4096));
    policies.insert(REGIONS[2].0, region_c);
    let discard = CheckedDiscard {
        policies,
        fail: policy_byte & 0x80 != 0,
        done: Vec::new(),
    };

    let ranges: Vec<(GuestAddress, usize)> = REGIONS
        .iter()
        .map(|(s, l)| (GuestAddress(*s), *l as usize))
        .collect();
    let mem = GuestMemoryMmap::<()>::from_ranges(&ranges).expect("fuzz memory");
    let mut options = DeviceOptions::default();
    options.limits.max_chain_descriptors = 64;
    options.limits.max_pfns_per_request = 1024;
    options.deflate_willneed = flags & 0x80 != 0;
    let mut dev = BalloonDevice::new(options, discard).expect("fuzz device");
    dev.ack_features(features.bits());
    if poison & 1 != 0 {
        let value = if poison & 2 != 0 { 0 } else { 0xaaaa_aaaau32 };
        dev.write_config(12, &value.to_le_bytes());
    }

    let ops_bytes: Vec<u8> = input.take(ops * 3).to_vec();
    // The rest is guest memory, from address 0 on.
    let image = input.take(RAM_BYTES);
    write_image(&mem, image);

    let count = dev.queue_roles().count();
    let mut queues: Vec<Queue> = (0..count).map(|qi| queue_at(qi, size)).collect();
    for op in ops_bytes.chunks(3) {
        let (kind, target, arg) = (
            op[0],
            op.get(1).copied().unwrap_or(0),
            op.get(2).copied().unwrap_or(0),
        );
        let qi = usize::from(target) % count;
        match kind % 4 {
            0 | 1 => {
                // One chain: the fully checked step.
                publish(&mem, &queues[qi], 1);
                step_checked(&mut dev, &mem, &mut queues[qi], qi);
            }
            2 => {
                publish(&mem, &queues[qi], u16::from(arg % 20));
                let _ = dev.process_queue(qi, &mut queues[qi], &mem);
                let _ = dev.request_stats(&mut queues[qi], &mem);
            }
            _ => {
                dev.write_config(u64::from(target % 20), &[arg; 4][..usize::from(arg % 5)]);
                let mut buf = [0u8; 20];
                dev.read_config(u64::from(arg), &mut buf);
            }
        }
    }
    dev.metrics()
}

fn write_image(mem: &GuestMemoryMmap<()>, image: &[u8]) {
    let mut at = 0usize;
    for (start, len) in REGIONS {
        let len = len as usize;
        if at >= image.len() {
            break;
        }
        let end = (at + len).min(image.len());
        mem.write_slice(&image[at..end], GuestAddress(start))
            .expect("image inside RAM");
        at = end;
    }
}

fn queue_at(qi: usize, size: u16) -> Queue {
    let base = qi as u64 * QUEUE_STRIDE;
    // Fixed offsets rather than `RingLayout::new`, so a corpus input means the same rings
    // whatever the queue size.
    RingLayout {
        size,
        desc: base,
        avail: base + 0x100,
        used: base + 0x200,
    }
    .device_queue()
}

/// Set the available index `n` past the device's position (ring entries come from the image).
fn publish(mem: &GuestMemoryMmap<()>, q: &Queue, n: u16) {
    let idx = q.next_avail().wrapping_add(n);
    let _ = mem.write_obj(idx.to_le(), GuestAddress(q.avail_ring() + 2));
}

/// What the device saw of the next chain, walked on a copy of the queue.
struct SeenChain {
    descs: Vec<(u64, u32, bool)>,
    well_formed: bool,
}

fn peek_chain(mem: &GuestMemoryMmap<()>, q: &Queue) -> Option<SeenChain> {
    let mut copy = Queue::try_from(q.state()).ok()?;
    let chain = copy.iter(mem).ok()?.next()?;
    let mut descs = Vec::new();
    let mut last_next = false;
    for d in chain {
        last_next = d.has_next();
        descs.push((d.addr().0, d.len(), d.is_write_only()));
        if descs.len() > 64 {
            return Some(SeenChain {
                descs,
                well_formed: false,
            });
        }
    }
    let well_formed = !descs.is_empty() && !last_next;
    Some(SeenChain { descs, well_formed })
}

fn covered(done: &[(u64, u64, bool)], start: u64, len: u64) -> bool {
    // Zeroing discards of this step, merged.
    let mut spans: Vec<(u64, u64)> = done
        .iter()
        .filter(|d| d.2)
        .map(|d| (d.0, d.0 + d.1))
        .collect();
    spans.sort_unstable();
    let mut cur = start;
    let end = start + len;
    for (s, e) in spans {
        if s <= cur && e > cur {
            cur = e;
        }
        if cur >= end {
            return true;
        }
    }
    cur >= end
}

fn step_checked(
    dev: &mut BalloonDevice<CheckedDiscard>,
    mem: &GuestMemoryMmap<()>,
    q: &mut Queue,
    qi: usize,
) {
    let role = dev.queue_role(qi);
    let seen = peek_chain(mem, q);
    let before = snapshot(mem);
    let used_before = q.next_used();
    dev.discard_backend_mut().done.clear();
    let _ = dev.process_queue(qi, q, mem);
    let after = snapshot(mem);

    let used_ring = (
        q.used_ring(),
        q.used_ring() + 4 + 8 * u64::from(q.size()) + 2,
    );
    let completed = q.next_used() != used_before;
    let used_len = if completed {
        let slot = q.used_ring() + 4 + 8 * u64::from(used_before % q.size());
        mem.read_obj::<u32>(GuestAddress(slot + 4))
            .map(u32::from_le)
            .unwrap_or(0)
    } else {
        0
    };

    // Writes outside the used ring must be the bitmap of an inflate chain.
    let mut allowed: Vec<(u64, u64)> = vec![used_ring];
    if let (Some(QueueRole::Inflate), Some(seen)) = (role, &seen) {
        if let Some(&(addr, _, _)) = seen.descs.iter().find(|d| d.2) {
            allowed.push((addr, addr.saturating_add(u64::from(used_len))));
        }
    }
    for (i, (b, a)) in before.iter().zip(after.iter()).enumerate() {
        if b != a {
            let addr = guest_addr_of(i);
            assert!(
                allowed.iter().any(|(s, e)| addr >= *s && addr < *e),
                "device wrote guest memory at {addr:#x} outside the used ring and bitmap"
            );
        }
    }

    let negotiated = dev.negotiated_features();
    let poison_ok = dev.poison_val().map_or(true, |v| v == 0);
    let done = dev.discard_backend().done.clone();
    match (role, seen) {
        (Some(QueueRole::Reporting), Some(seen)) if used_len > 0 => {
            assert!(
                negotiated.init_reported(),
                "claim without DEVICE_INIT_REPORTED"
            );
            assert!(poison_ok, "claim with non-zero poison");
            assert!(seen.well_formed, "claim for a malformed chain");
            let total: u64 = seen.descs.iter().map(|d| u64::from(d.1)).sum();
            assert_eq!(u64::from(used_len), total, "claim of a partial length");
            for (addr, len, writable) in &seen.descs {
                assert!(*writable, "claim for a chain with a readable buffer");
                assert!(
                    covered(&done, *addr, u64::from(*len)),
                    "false zeroed at {addr:#x}+{len:#x}"
                );
                let end = addr + u64::from(*len);
                assert!(
                    end <= used_ring.0 || *addr >= used_ring.1,
                    "claimed range holds the used ring"
                );
            }
        }
        (Some(QueueRole::Inflate), Some(seen)) if used_len > 0 => {
            assert!(
                negotiated.has(DEVICE_INIT_ON_INFLATE),
                "bitmap written without the feature"
            );
            let pfn_bytes: Vec<u8> = seen
                .descs
                .iter()
                .filter(|d| !d.2)
                .flat_map(|d| {
                    let mut v = vec![0u8; d.1 as usize];
                    let _ = mem.read_slice(&mut v, GuestAddress(d.0));
                    v
                })
                .collect();
            let pfns: Vec<u32> = pfn_bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let bitmap_addr = seen.descs.iter().find(|d| d.2).map(|d| d.0).unwrap_or(0);
            let mut bitmap = vec![0u8; used_len as usize];
            let _ = mem.read_slice(&mut bitmap, GuestAddress(bitmap_addr));
            assert!(
                used_len as usize <= bitmap_len(pfns.len()),
                "bitmap longer than ceil(n/8)"
            );
            for (i, pfn) in pfns.iter().enumerate() {
                if !bitmap_test(&bitmap, i) {
                    continue;
                }
                assert!(poison_ok, "bit set with non-zero poison");
                assert_eq!(
                    pfns.iter().filter(|p| *p == pfn).count(),
                    1,
                    "bit for a duplicate PFN"
                );
                let start = u64::from(*pfn) << PFN_SHIFT;
                assert!(covered(&done, start, 4096), "false bit for PFN {pfn:#x}");
                let end = start + 4096;
                let bitmap_end = bitmap_addr.saturating_add(u64::from(used_len));
                assert!(
                    end <= used_ring.0 || start >= used_ring.1,
                    "bit for the used ring page"
                );
                assert!(
                    end <= bitmap_addr || start >= bitmap_end,
                    "bit for the bitmap's page"
                );
            }
        }
        _ => {}
    }
}

fn snapshot(mem: &GuestMemoryMmap<()>) -> Vec<u8> {
    let mut out = Vec::with_capacity(RAM_BYTES);
    for (start, len) in REGIONS {
        let mut v = vec![0u8; len as usize];
        mem.read_slice(&mut v, GuestAddress(start))
            .expect("snapshot");
        out.extend_from_slice(&v);
    }
    out
}

fn guest_addr_of(index: usize) -> u64 {
    let mut index = index as u64;
    for (start, len) in REGIONS {
        if index < len {
            return start + index;
        }
        index -= len;
    }
    u64::MAX
}
