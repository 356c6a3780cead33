//! `prezero demo` (allocator-only form): a zone over real memory, its free memory reported to a
//! device that discards (zeroes) it, then a zeroed allocation that skips what is known-zero.

use anyhow::{ensure, Result};
use clap::Args;
use prezero_mm::{
    AllocFlags, Config, DeviceInit, FrameMeta, Pfn, PhysMem, ReportBlock, ReportOutcome,
    ReportSink, Zone, FRAME_SIZE,
};
use serde::Serialize;
use std::time::Instant;

/// Options of the demo.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Print a JSON summary instead of text.
    #[arg(long)]
    json: bool,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    mem_mib: u64,
    /// Zeroed allocation in MiB.
    #[arg(long, default_value_t = 256)]
    alloc_mib: u64,
}

/// Guest "physical memory": a buffer the allocator zeroes and the device discards.
struct Ram(Vec<u8>);

impl Ram {
    fn range(&mut self, pfn: Pfn, frames: u64) -> &mut [u8] {
        let start = pfn.addr() as usize;
        &mut self.0[start..start + (frames * FRAME_SIZE) as usize]
    }
}

impl PhysMem for Ram {
    fn fill(&mut self, pfn: Pfn, frames: u64, byte: u8) {
        self.range(pfn, frames).fill(byte);
    }
}

/// A device that "discards" each reported block by zeroing it and says so.
struct ZeroingDevice<'a>(&'a mut Ram);

impl ReportSink for ZeroingDevice<'_> {
    fn report(&mut self, blocks: &[ReportBlock], outcomes: &mut [ReportOutcome]) {
        for (b, o) in blocks.iter().zip(outcomes) {
            self.0.range(b.pfn, b.frames()).fill(0);
            *o = ReportOutcome::ReportedZeroed;
        }
    }
}

#[derive(Serialize)]
struct Summary {
    mem_mib: u64,
    reported_mib: u64,
    alloc_mib: u64,
    zeroing_skipped_mib: u64,
    zeroed_mib: u64,
    alloc_ms_skipping: f64,
    alloc_ms_zeroing: f64,
}

/// Runs the demo.
pub fn run(args: &DemoArgs) -> Result<()> {
    ensure!(
        args.alloc_mib < args.mem_mib,
        "--alloc-mib must be smaller than --mem-mib"
    );
    let frames = (args.mem_mib << 20) / FRAME_SIZE;
    let mut ram = Ram(vec![0u8; (args.mem_mib << 20) as usize]);
    let mut zone = Zone::new(
        vec![FrameMeta::EMPTY; frames as usize],
        Pfn(0),
        Config::default(),
    );
    zone.add_memory(Pfn(0), frames, false)?;
    zone.set_device_init(DeviceInit {
        reported: true,
        on_inflate: false,
    });

    // The guest uses all its memory (dirty), frees it, and reporting hands it to the device.
    let order = prezero_mm::MAX_ORDER;
    let mut held = Vec::new();
    while let Ok(a) = zone.alloc(order, AllocFlags::NONE, &mut ram) {
        ram.range(a.pfn, 1 << order).fill(0xa5);
        held.push(a.pfn);
    }
    for pfn in held {
        zone.free(pfn, order, Default::default(), &mut ram)?;
    }
    let pass = zone.report_flush(&mut ZeroingDevice(&mut ram));

    let blocks = (args.alloc_mib << 20) / (FRAME_SIZE << 9);
    let time = |zone: &mut Zone<Vec<FrameMeta>>, ram: &mut Ram| -> Result<(f64, Vec<Pfn>)> {
        let start = Instant::now();
        let got: Result<Vec<Pfn>, _> = (0..blocks)
            .map(|_| zone.alloc(9, AllocFlags::ZERO, ram).map(|a| a.pfn))
            .collect();
        Ok((start.elapsed().as_secs_f64() * 1e3, got?))
    };
    let (alloc_ms_skipping, first) = time(&mut zone, &mut ram)?;
    let skipped = zone.stat().pages_zero_skipped;
    // The same allocation again, on memory that is now dirty: every block gets zeroed.
    for pfn in &first {
        ram.range(*pfn, 512).fill(0x5a);
        zone.free(*pfn, 9, Default::default(), &mut ram)?;
    }
    let (alloc_ms_zeroing, _) = time(&mut zone, &mut ram)?;

    let mib = |pages: u64| (pages * FRAME_SIZE) >> 20;
    let s = Summary {
        mem_mib: args.mem_mib,
        reported_mib: mib(pass.pages_reported),
        alloc_mib: args.alloc_mib,
        zeroing_skipped_mib: mib(skipped),
        zeroed_mib: mib(zone.stat().pages_zeroed),
        alloc_ms_skipping,
        alloc_ms_zeroing,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!(
            "prezero demo (allocator only): {} MiB guest memory",
            s.mem_mib
        );
        println!(
            "  reported to the device: {} MiB in {} requests, all confirmed zeroed",
            s.reported_mib, pass.requests
        );
        println!(
            "  allocate {} MiB with ZERO after reporting: {:.2} ms, zeroing skipped for {} MiB",
            s.alloc_mib, s.alloc_ms_skipping, s.zeroing_skipped_mib
        );
        println!(
            "  the same on dirty memory:                  {:.2} ms, zeroed {} MiB",
            s.alloc_ms_zeroing, s.zeroed_mib
        );
    }
    Ok(())
}
