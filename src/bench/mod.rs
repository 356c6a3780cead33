//! Benchmarks. Each prints a table and compares against its named reference in the same run,
//! as ratios; `--json` prints the same figures for machines.

pub mod alloc;
pub mod chart;
pub mod linux;
pub mod report;
pub mod seed_table;
pub mod seed_vm;

use anyhow::Result;
use clap::Subcommand;
use serde::Serialize;

/// Benchmarks.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// The allocator against `buddy_system_allocator`, metadata size and known-zero hit rates.
    Alloc {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// A smaller, faster run (for smoke tests; figures are noisier).
        #[arg(long)]
        quick: bool,
        /// Thread counts for the multi-CPU comparison, comma-separated (`--threads 1,2`); each
        /// thread is one CPU of the zone. Without it the comparison is skipped.
        #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..=256))]
        threads: Vec<u16>,
    },
    /// Free page reporting throughput of the device for the stock (1 chain x 32 x 4 MiB) and
    /// upstream (256 chains x 2 MiB) request patterns, against one raw discard syscall per
    /// contiguous range (memfd and anonymous memory).
    Report {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Bytes of memory per backing, in MiB (a multiple of 512).
        #[arg(long, default_value_t = 2048)]
        mib: u64,
        /// Timed passes over the memory.
        #[arg(long, default_value_t = 3)]
        passes: u32,
    },
    /// The upstream measurement on our system: allocate 256 MiB zeroed in a 2 GiB guest after
    /// reporting; baseline (guest zeroes), optimized (skips), floor (touch only).
    SeedTable(seed_table::SeedTableArgs),
    /// The same-VMM peer comparison with the stock Linux driver: QEMU with its own
    /// virtio-balloon, the same QEMU on `prezero serve`, and User-Mode Linux on `prezero serve`,
    /// allocating, freeing and reporting 256 MiB and setting a 512 MiB balloon; plus an SVG chart.
    Linux(linux::LinuxBenchArgs),
}

fn print<T: Serialize>(json: bool, result: &T, table: impl FnOnce(&T) -> String) -> Result<()> {
    if json {
        crate::output::print_line(&serde_json::to_string_pretty(result)?)
    } else {
        crate::output::print(&table(result))
    }
}

/// Runs a benchmark command.
pub fn run(cmd: &BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Alloc {
            json,
            quick,
            threads,
        } => {
            let o = alloc::AllocBenchOptions {
                threads: threads.iter().map(|&t| t as usize).collect(),
                ..if *quick {
                    alloc::AllocBenchOptions::quick()
                } else {
                    alloc::AllocBenchOptions::default()
                }
            };
            print(*json, &alloc::run(&o), |r| r.table())
        }
        BenchCommand::Report { json, mib, passes } => {
            let o = report::ReportBenchOptions {
                region_bytes: mib << 20,
                passes: *passes,
                ..Default::default()
            };
            print(*json, &report::run(&o)?, |r| r.table())
        }
        BenchCommand::SeedTable(args) => seed_table::run(args),
        BenchCommand::Linux(args) => linux::run(args),
    }
}

/// The median of samples (the mean of the middle two for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty(), "median of nothing");
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A small deterministic generator (xorshift64*), so runs are repeatable without a dependency.
pub struct Rng(pub u64);

impl Rng {
    /// The next pseudo-random number.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}
