//! Test doubles: frame contents tracked per frame, and a scripted reporting device.
#![allow(dead_code)]

use prezero_mm::*;

/// Physical memory modelled at frame granularity: one content byte per frame (0 = reads as
/// zero). The allocator only ever fills whole frames, so this is exact.
pub struct Ram {
    pub base: u64,
    pub frames: Vec<u8>,
    pub fills: u64,
}

impl Ram {
    pub fn new(base: u64, count: usize, initial: u8) -> Self {
        Ram {
            base,
            frames: vec![initial; count],
            fills: 0,
        }
    }
    fn range(&self, pfn: Pfn, frames: u64) -> std::ops::Range<usize> {
        let start = (pfn.0 - self.base) as usize;
        start..start + frames as usize
    }
    pub fn is_zero(&self, pfn: Pfn, frames: u64) -> bool {
        self.frames[self.range(pfn, frames)].iter().all(|&b| b == 0)
    }
    pub fn write(&mut self, pfn: Pfn, frames: u64, byte: u8) {
        let r = self.range(pfn, frames);
        self.frames[r].fill(byte);
    }
}

impl PhysMem for Ram {
    fn fill(&mut self, pfn: Pfn, frames: u64, byte: u8) {
        self.fills += 1;
        self.write(pfn, frames, byte);
    }
}

/// A device that answers every block with `outcome`, zeroing the memory when `honest` and it
/// claims zeroed (or discards), and records what it saw.
pub struct Device<'a> {
    pub ram: &'a mut Ram,
    pub outcome: ReportOutcome,
    pub honest: bool,
    pub seen: Vec<ReportBlock>,
    /// Blocks per call it asks for; the largest call it got.
    pub capacity: usize,
    pub largest_call: usize,
}

impl<'a> Device<'a> {
    pub fn zeroing(ram: &'a mut Ram) -> Self {
        Device {
            ram,
            outcome: ReportOutcome::ReportedZeroed,
            honest: true,
            seen: Vec::new(),
            capacity: REPORTING_CAPACITY,
            largest_call: 0,
        }
    }
    pub fn with(ram: &'a mut Ram, outcome: ReportOutcome, honest: bool) -> Self {
        Device {
            ram,
            outcome,
            honest,
            seen: Vec::new(),
            capacity: REPORTING_CAPACITY,
            largest_call: 0,
        }
    }
}

impl ReportSink for Device<'_> {
    fn capacity(&self) -> usize {
        self.capacity
    }

    fn report(&mut self, blocks: &[ReportBlock], outcomes: &mut [ReportOutcome]) {
        self.largest_call = self.largest_call.max(blocks.len());
        for (b, o) in blocks.iter().zip(outcomes.iter_mut()) {
            self.seen.push(*b);
            *o = self.outcome;
            if self.honest && self.outcome != ReportOutcome::Failed {
                // A discard reads back as zero.
                self.ram.write(b.pfn, b.frames(), 0);
            }
        }
    }
}

pub type TestZone = Zone<Vec<FrameMeta>>;

/// A zone of `frames` frames from pfn 0, all present and dirty.
pub fn zone(frames: usize, cfg: Config) -> (TestZone, Ram) {
    let mut z = Zone::new(vec![FrameMeta::EMPTY; frames], Pfn(0), cfg);
    z.add_memory(Pfn(0), frames as u64, false).unwrap();
    (z, Ram::new(0, frames, 0xdd))
}

pub fn trusting(z: &mut TestZone) {
    z.set_device_init(DeviceInit {
        reported: true,
        on_inflate: true,
    });
}
