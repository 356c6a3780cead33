//! `prezero`: host-zeroed free page reporting, end to end.

mod bench;
mod demo;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Host-zeroed free page reporting: a guest allocator that skips zeroing memory the host
/// already zeroed, a virtio-balloon device that says what it zeroed, and the system around them.
#[derive(Parser)]
#[command(name = "prezero", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the whole system working: report free memory, then allocate zeroed memory and see
    /// how much zeroing was skipped.
    Demo(demo::DemoArgs),
    /// Run a benchmark (prints a table; --json for machines).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The allocator against `buddy_system_allocator`, metadata size and known-zero hit rates.
    Alloc {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// A smaller, faster run (for smoke tests; figures are noisier).
        #[arg(long)]
        quick: bool,
    },
    /// Free page reporting throughput of the device against a raw loop of the same discard
    /// syscalls (memfd and anonymous memory).
    Report {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Bytes of memory per backing, in MiB.
        #[arg(long, default_value_t = 2048)]
        mib: u64,
        /// Timed passes over the memory.
        #[arg(long, default_value_t = 3)]
        passes: u32,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Bench(BenchCommand::Alloc { json, quick }) => {
            let mut o = bench::alloc::AllocBenchOptions::default();
            if quick {
                o = bench::alloc::AllocBenchOptions {
                    frames: 1 << 15,
                    repeats: 3,
                    blocks_per_repeat: 512,
                    hit_rate_allocs: 10_000,
                };
            }
            let r = bench::alloc::run(&o);
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", r.table());
            }
            Ok(())
        }
        Command::Bench(BenchCommand::Report { json, mib, passes }) => {
            let o = prezero_device::bench::ReportBenchOptions {
                region_bytes: mib << 20,
                passes,
                ..Default::default()
            };
            let r = prezero_device::bench::run(&o)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", r.table());
            }
            Ok(())
        }
    }
}
