//! `prezero bench linux`: the peer comparison. One workload, two devices, one invocation:
//!
//! - **qemu**: Debian's cloud kernel under `qemu-system-x86_64 -accel tcg` with QEMU's own
//!   `virtio-balloon-pci,free-page-reporting=on`;
//! - **prezero**: User-Mode Linux (the stock 6.1 `virtio_balloon` driver) attached to
//!   `prezero serve`, started here as a separate process.
//!
//! The guest allocates and touches 256 MiB, holds it, frees it and waits while free page
//! reporting hands the memory back. Host memory is sampled every 100 ms: QEMU's `VmRSS` (its
//! guest RAM is private anonymous memory, discarded with `MADV_DONTNEED`); the allocated blocks
//! of UML's guest-memory file (shared tmpfs, discarded by `prezero serve` punching holes).
//!
//! Device CPU per GiB:
//! - prezero: CPU time (utime + stime, all threads, from `/proc/PID/stat` and
//!   `/proc/PID/task/*/schedstat`) of the `prezero serve` process from the guest's free to the
//!   end of its wait, divided by what the daemon discarded in the same window (its
//!   `discarded_bytes` counter, read over the control socket at both ends);
//! - qemu: under TCG, QEMU handles virtqueue notifications synchronously in the vCPU thread,
//!   so device work cannot be told apart from guest work by thread. The figure is QEMU's whole
//!   extra CPU while memory returns (the return window, minus the rate of the quiet tail after
//!   it), per GiB its RSS dropped: an upper bound that includes the guest's own reporting work.

use super::chart::Chart;
use super::print;
use crate::linux_cmd::start_daemon;
use anyhow::{Context, Result};
use clap::Args;
use prezero_linux_harness::bench::{bench_qemu, bench_uml_with, AllocFree, BenchOptions, PeerRun};
use prezero_linux_harness::measure::cpu_at;
use prezero_linux_harness::scratch::ScratchDir;
use prezero_linux_harness::session::clean_up_started_here;
use prezero_linux_harness::{Harness, SetupOptions};
use prezero_vhost::{control_request, ControlRequest};
use serde::Serialize;
use std::cell::RefCell;
use std::path::PathBuf;
use std::time::Duration;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Options of `prezero bench linux`.
#[derive(Args, Debug)]
pub struct LinuxBenchArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Where to write the SVG with both host-memory curves (default:
    /// target/prezero-linux/bench/linux-peers.svg).
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Run only the UML + prezero side (no QEMU, no cloud kernel needed).
    #[arg(long)]
    skip_qemu: bool,
    /// MiB the guest allocates, touches and frees.
    #[arg(long, default_value_t = 256)]
    mib: u64,
    /// Guest memory of both VMs, MiB.
    #[arg(long, default_value_t = 2048)]
    mem: u64,
    /// Seconds the guest idles before allocating (the idle figure is the last 2 s).
    #[arg(long, default_value_t = 5.0)]
    idle: f64,
    /// Seconds the guest waits after the free.
    #[arg(long, default_value_t = 15.0)]
    wait: f64,
    /// Only check for UML/QEMU and the cloud kernel; do not install or fetch them.
    #[arg(long)]
    no_install: bool,
}

/// The figures of one peer.
#[derive(Debug, Serialize)]
pub struct PeerFigures {
    /// Host memory while the guest idles, MiB.
    pub idle_mib: f64,
    /// Highest host memory from the allocation on, MiB.
    pub peak_mib: f64,
    /// Host memory at the end of the wait after the free, MiB.
    pub after_mib: f64,
    /// Seconds from the free until host memory is within 10% of idle (null: not in the wait).
    pub seconds_to_return: Option<f64>,
    /// Device CPU seconds per GiB returned (see the module docs for how, per peer).
    pub device_cpu_s_per_gib: Option<f64>,
    /// Seconds from the free until host memory is within 10% of the drop it ends up making.
    pub seconds_to_settle: Option<f64>,
    /// `peak_mib - after_mib`.
    pub returned_mib: f64,
    /// What the memory figure measures.
    pub memory_probe: String,
    /// How the CPU figure was obtained.
    pub cpu_method: String,
    /// CPU seconds in the window the CPU figure uses.
    pub device_cpu_s: f64,
    /// Bytes the device discarded in that window, MiB (prezero: its own counter; qemu: the
    /// RSS drop).
    pub window_mib: f64,
    /// Seconds from the VM's start to `/init`.
    pub boot_s: f64,
    /// The guest's own first-touch speed, MiB/s.
    pub guest_touch_mib_per_s: Option<f64>,
    /// CPU seconds per thread of the device process from the free to the end of the wait.
    pub threads_after_free: Vec<prezero_linux_harness::procs::ThreadCpu>,
    /// The full run (series, marks, console) for `--json` readers.
    #[serde(skip)]
    pub run: PeerRun,
}

/// The comparison.
#[derive(Debug, Serialize)]
pub struct LinuxBench {
    /// The workload both ran.
    pub workload: AllocFree,
    /// Guest memory, MiB.
    pub guest_mem_mib: u64,
    /// QEMU with its own virtio-balloon (absent with `--skip-qemu`).
    pub qemu: Option<PeerFigures>,
    /// UML + `prezero serve`.
    pub prezero: PeerFigures,
    /// The chart.
    pub svg: PathBuf,
}

fn figures(run: PeerRun, cpu_method: String, cpu_s: f64, window_mib: f64) -> PeerFigures {
    let r = &run.result;
    PeerFigures {
        idle_mib: r.idle_mib,
        peak_mib: r.peak_mib,
        after_mib: r.after_mib,
        seconds_to_return: r.seconds_to_return,
        device_cpu_s_per_gib: (window_mib >= 16.0).then(|| cpu_s / (window_mib / 1024.0)),
        seconds_to_settle: run.details.seconds_to_settle,
        returned_mib: run.details.returned_mib,
        memory_probe: run.memory_probe.clone(),
        cpu_method,
        device_cpu_s: cpu_s,
        window_mib,
        boot_s: run.boot_s,
        guest_touch_mib_per_s: run.guest_touch_mib_per_s,
        threads_after_free: run.threads_after_free.clone(),
        run,
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

impl LinuxBench {
    fn table(&self) -> String {
        let mut s = format!(
            "Free page reporting, stock Linux driver: allocate {} MiB, free it, wait {} s ({} MiB guests)\n\n",
            self.workload.mib, self.workload.wait_s, self.guest_mem_mib
        );
        s += &format!(
            "{:<9} {:>9} {:>9} {:>10} {:>12} {:>12} {:>17}\n",
            "peer",
            "idle MiB",
            "peak MiB",
            "after MiB",
            "s to return",
            "s to settle",
            "device CPU s/GiB"
        );
        let mut row = |name: &str, f: &PeerFigures| {
            s += &format!(
                "{:<9} {:>9.1} {:>9.1} {:>10.1} {:>12} {:>12} {:>17}\n",
                name,
                f.idle_mib,
                f.peak_mib,
                f.after_mib,
                opt(f.seconds_to_return, 2),
                opt(f.seconds_to_settle, 2),
                opt(f.device_cpu_s_per_gib, 4),
            );
        };
        if let Some(q) = &self.qemu {
            row("qemu", q);
        }
        row("prezero", &self.prezero);
        s += "\n";
        if let Some(q) = &self.qemu {
            s += &format!(
                "qemu:    memory = {}; CPU = {}\n",
                q.memory_probe, q.cpu_method
            );
        }
        s += &format!(
            "prezero: memory = {}; CPU = {}\n",
            self.prezero.memory_probe, self.prezero.cpu_method
        );
        s += "s to return: from the guest's free until host memory is within 10% of idle; \
              s to settle: until within 10% of its final drop.\n";
        s += &format!("chart: {}\n", self.svg.display());
        s
    }
}

/// Host memory over time of several runs in one chart, each shifted so that its allocation
/// starts at 0 s; a marker at each run's free.
fn comparison_chart(runs: &[&PeerRun]) -> Chart {
    let mut chart = Chart::new(
        "Host memory of the guest: allocate, free, free page reporting",
        "seconds since the guest started allocating",
        "host memory (MiB)",
    );
    for r in runs {
        let t0 = r.marks.alloc_start_s;
        let pts = r
            .result
            .series
            .iter()
            .map(|s| (s.t_s - t0, s.mib))
            .collect();
        chart = chart.series(&r.peer, pts);
        chart = chart.marker(&format!("{} free", r.peer), r.marks.freed_s - t0);
    }
    chart
}

/// Runs the comparison.
pub fn run(args: &LinuxBenchArgs) -> Result<()> {
    let _cleanup = crate::interrupt::on_exit(clean_up_started_here);
    let h = Harness::new(&SetupOptions {
        peer: !args.skip_qemu,
        install: !args.no_install,
        ..Default::default()
    })?;
    let opts = BenchOptions {
        workload: AllocFree {
            mib: args.mib,
            idle_s: args.idle,
            wait_s: args.wait,
            ..AllocFree::default()
        },
        ..BenchOptions::default()
    };

    let qemu = if args.skip_qemu {
        None
    } else {
        eprintln!(
            "qemu: {} MiB guest, cloud kernel, allocating {} MiB ...",
            args.mem, args.mib
        );
        let initrd = h.qemu_initramfs()?;
        let run =
            bench_qemu(&h.qemu(&initrd)?.mem_mib(args.mem), &opts).context("the QEMU peer run")?;
        let d = run.details;
        let method = format!(
            "whole QEMU process CPU (TCG: the device runs in the vCPU thread) from the free to {:.1} s after memory settled, minus the quiet tail's rate ({:.4} CPU s/s), per GiB of RSS returned",
            d.cpu_window_end_s - d.cpu_window_start_s,
            d.cpu_baseline_rate
        );
        Some(figures(run, method, d.device_cpu_s, d.returned_mib))
    };

    eprintln!(
        "prezero: {} MiB User-Mode Linux guest on prezero serve, allocating {} MiB ...",
        args.mem, args.mib
    );
    let scratch = ScratchDir::for_sockets(&h.tools.cache_dir, "bench-")?;
    let socket = scratch.join("balloon.sock");
    let control = scratch.join("control.sock");
    let mut daemon = start_daemon(&socket, &control, &scratch.join("serve.log"), &[])?;
    let initrd = h.uml_initramfs()?;
    let cfg = h.uml(&initrd).mem_mib(args.mem).balloon_socket(&socket);
    // The daemon's discarded_bytes at the free and at the end of the wait.
    let discarded = RefCell::new((None::<u64>, None::<u64>));
    let read_discarded = || -> Option<u64> {
        control_request(&control, &ControlRequest::Metrics)
            .ok()?
            .get("device")?
            .get("discarded_bytes")?
            .as_u64()
    };
    let run = bench_uml_with(
        &cfg,
        Box::new(daemon.cpu_probe()),
        Some(daemon.pid()),
        &opts,
        &mut |e| match e.name.as_str() {
            "freed" => discarded.borrow_mut().0 = read_discarded(),
            "done" => discarded.borrow_mut().1 = read_discarded(),
            _ => {}
        },
    )
    .with_context(|| {
        format!(
            "the UML + prezero run (daemon log {})",
            daemon.log_path().display()
        )
    })?;
    let stopped = daemon.terminate(Duration::from_secs(10));
    let (d0, d1) = discarded.into_inner();
    let discarded_mib = match (d0, d1) {
        (Some(a), Some(b)) => b.saturating_sub(a) as f64 * 1024.0 / GIB,
        _ => anyhow::bail!(
            "could not read the daemon's metrics over {}",
            control.display()
        ),
    };
    let series = &run.result.series;
    let cpu_s = match (
        cpu_at(series, run.marks.freed_s),
        cpu_at(series, run.marks.end_s),
    ) {
        (Some(a), Some(b)) => (b - a).max(0.0),
        _ => 0.0,
    };
    let method = format!(
        "prezero serve's CPU time (pid {}, all threads) from the free to the end of the wait ({:.1} s), per GiB it discarded (discarded_bytes)",
        daemon.pid(),
        run.marks.end_s - run.marks.freed_s
    );
    let prezero = figures(run, method, cpu_s, discarded_mib);
    match stopped {
        Ok(s) if s.success() => {}
        Ok(s) => eprintln!(
            "prezero serve exited with {s}; log: {}",
            daemon.log_path().display()
        ),
        Err(e) => eprintln!("stopping prezero serve: {e}"),
    }

    let svg = match &args.svg {
        Some(p) => p.clone(),
        None => {
            let dir = h.tools.cache_dir.join("bench");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.join("linux-peers.svg")
        }
    };
    let mut runs: Vec<&PeerRun> = Vec::new();
    if let Some(q) = &qemu {
        runs.push(&q.run);
    }
    runs.push(&prezero.run);
    std::fs::write(&svg, comparison_chart(&runs).to_svg())
        .with_context(|| format!("writing {}", svg.display()))?;
    drop(scratch);
    let result = LinuxBench {
        workload: opts.workload,
        guest_mem_mib: args.mem,
        qemu,
        prezero,
        svg,
    };
    print(args.json, &result, LinuxBench::table)
}
