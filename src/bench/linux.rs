//! `prezero bench linux`: the same-VMM peer comparison. One workload, three rows, one
//! invocation:
//!
//! - **`qemu_own`**: Debian's cloud kernel under QEMU (>= 10.2, `scripts/qemu-setup.sh`) with
//!   QEMU's own `virtio-balloon-pci,free-page-reporting=on` (the reference);
//! - **`qemu_prezero`**: the same QEMU, kernel and guest, with `prezero serve` behind QEMU's
//!   generic `vhost-user-test-device-pci` (virtio-id 5);
//! - **`uml_prezero`**: User-Mode Linux (the stock 6.1 driver) attached to `prezero serve`.
//!
//! Both QEMU rows back guest RAM with one shared memfd (vhost-user needs it; QEMU's own device
//! then punches holes too), so both devices do the same discard and host memory is the memfd's
//! allocated blocks; for UML it is the allocated blocks of its guest-memory file.
//!
//! **Reporting** (`alloc-free`): the guest idles, allocates and touches 256 MiB, holds it, frees
//! it and waits while free page reporting hands it back; host memory is sampled every 100 ms.
//! `seconds_to_settle` is from the guest's free until host memory is within 5% of the drop it
//! ends up making (a second reporting pass seconds later moves the last few MiB).
//!
//! **Host CPU per GiB returned** (`host_cpu_s_per_gib`): all the CPU the host spent on the guest
//! and its balloon (QEMU process + `prezero serve` for `qemu_prezero`, QEMU alone for
//! `qemu_own`, UML's kernel process + `prezero serve` for `uml_prezero`) from the free until 1 s
//! after memory settled, per GiB returned; the guest's own work (TCG vCPU) is included, so the
//! two QEMU rows compare the whole cost of each device. `device_cpu_s_per_gib` is the device
//! alone: `prezero serve`'s CPU from the free to the end of the wait per GiB it discarded (its
//! `discarded_bytes` counter); for QEMU's own device (run in the vCPU thread under TCG) QEMU's
//! extra CPU over its quiet rate, an upper bound.
//!
//! **Balloon** (a fresh idling guest): a target of `--balloon-mib` (512) set and released;
//! seconds and GiB/s until the guest's `actual` reaches it and returns to 0, and host memory
//! when it reached it. QEMU's own device is steered through its monitor (`balloon`), prezero's
//! through the daemon's control socket.
//!
//! Every figure is the median of `--runs` (3) runs of its row; the two QEMU rows alternate
//! which goes first. `prezero_vs_own` gives the ratios of `qemu_prezero` to `qemu_own` measured in the same run,
//! and whether each of issue 9's targets is met (returns at least as much, settles no later
//! than 0.2 s after, at most 1.0x the host CPU per GiB, inflates at least 1.5x as fast).

use super::chart::Chart;
use super::print;
use crate::linux_cmd::start_daemon;
use anyhow::{Context, Result};
use clap::Args;
use prezero_linux_harness::backend::BackendProcess;
use prezero_linux_harness::balloon_cycle::{BalloonControl, CycleResult, QemuMonitorBalloon};
use prezero_linux_harness::bench::{
    bench_qemu_with, bench_uml_with, cycle_qemu, cycle_uml, vm_and_device_cpu, vm_cpu, AllocFree,
    BenchOptions, PeerRun,
};
use prezero_linux_harness::qemu::QemuConfig;
use prezero_linux_harness::scratch::ScratchDir;
use prezero_linux_harness::session::clean_up_started_here;
use prezero_linux_harness::uml::UmlConfig;
use prezero_linux_harness::{Harness, SetupOptions};
use prezero_vhost::{control_request, ControlRequest};
use serde::Serialize;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Duration;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// How long one balloon phase (inflate or deflate) may take.
const CYCLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Options of `prezero bench linux`.
#[derive(Args, Debug)]
pub struct LinuxBenchArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Where to write the SVG with the host-memory curves (default:
    /// target/prezero-linux/bench/linux-peers.svg).
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Run only the UML + prezero row (no QEMU, no cloud kernel needed).
    #[arg(long)]
    skip_qemu: bool,
    /// MiB the guest allocates, touches and frees.
    #[arg(long, default_value_t = 256)]
    mib: u64,
    /// Guest memory of every VM, MiB.
    #[arg(long, default_value_t = 2048)]
    mem: u64,
    /// Seconds the guest idles before allocating (the idle figure is the last 2 s).
    #[arg(long, default_value_t = 5.0)]
    idle: f64,
    /// Seconds the guest waits after the free.
    #[arg(long, default_value_t = 15.0)]
    wait: f64,
    /// Balloon target set and released in each row, MiB (0: skip the balloon cycle).
    #[arg(long, default_value_t = 512)]
    balloon_mib: u64,
    /// Runs of every row, alternating the QEMU rows' order; each figure is the median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Only check for UML/QEMU and the cloud kernel; do not install or fetch them.
    #[arg(long)]
    no_install: bool,
}

/// The figures of one row: each the median over `runs`. JSON keys are stable; `null` means
/// "not measured" (e.g. less than 16 MiB came back, or `--balloon-mib 0`).
#[derive(Debug, Serialize)]
pub struct PeerFigures {
    /// Runs the medians are over.
    pub runs: usize,
    /// Host memory backing guest RAM while the guest idles, MiB.
    pub idle_mib: f64,
    /// Highest host memory from the allocation on, MiB.
    pub peak_mib: f64,
    /// Host memory at the end of the wait after the free, MiB.
    pub after_mib: f64,
    /// `peak_mib - after_mib`: memory the device returned to the host, MiB.
    pub returned_mib: f64,
    /// Seconds from the free until host memory is within 10% of idle (null: not in the wait).
    pub seconds_to_return: Option<f64>,
    /// Seconds from the free until host memory is within 5% of the drop it ends up making.
    pub seconds_to_settle: Option<f64>,
    /// Host CPU seconds (VMM + device process) from the free until 1 s after settling, per GiB
    /// returned.
    pub host_cpu_s_per_gib: Option<f64>,
    /// The host CPU seconds `host_cpu_s_per_gib` divides.
    pub host_cpu_s: f64,
    /// What the host CPU figure measures.
    pub host_cpu_probe: String,
    /// The device alone, CPU seconds per GiB discarded (see the module docs, per row).
    pub device_cpu_s_per_gib: Option<f64>,
    /// The device CPU seconds `device_cpu_s_per_gib` divides.
    pub device_cpu_s: f64,
    /// How the device CPU figure was obtained.
    pub cpu_method: String,
    /// MiB the device CPU figure is per (prezero: its `discarded_bytes`; QEMU: the drop).
    pub window_mib: f64,
    /// The balloon target set and released, MiB (null: no cycle).
    pub balloon_mib: Option<u64>,
    /// Seconds until `actual` reached the target.
    pub inflate_s: Option<f64>,
    /// Seconds until `actual` was back at 0.
    pub deflate_s: Option<f64>,
    /// `balloon_mib / inflate_s`, GiB/s.
    pub inflate_gib_s: Option<f64>,
    /// `balloon_mib / deflate_s`, GiB/s.
    pub deflate_gib_s: Option<f64>,
    /// Host memory before the inflate, MiB.
    pub host_mib_before_inflate: Option<f64>,
    /// Host memory when `actual` reached the target, MiB.
    pub host_mib_after_inflate: Option<f64>,
    /// Host memory when `actual` was back at 0, MiB.
    pub host_mib_after_deflate: Option<f64>,
    /// What the memory figures measure.
    pub memory_probe: String,
    /// Seconds from the VM's start to `/init`.
    pub boot_s: f64,
    /// The guest's own first-touch speed, MiB/s.
    pub guest_touch_mib_per_s: Option<f64>,
    /// CPU seconds per thread of the device process from the free to the end of the wait.
    pub threads_after_free: Vec<prezero_linux_harness::procs::ThreadCpu>,
    /// The run whose `returned_mib` is the median (series, marks, console), for the chart.
    #[serde(skip)]
    pub run: PeerRun,
}

/// `qemu_prezero` against `qemu_own`, measured in the same run, and issue 9's targets.
#[derive(Debug, Serialize)]
pub struct Comparison {
    /// `returned_mib` ratio (target: >= 1.0).
    pub returned_ratio: f64,
    /// `seconds_to_settle` difference, s (target: <= 0.2).
    pub settle_later_s: Option<f64>,
    /// `host_cpu_s_per_gib` ratio (target: <= 1.0).
    pub host_cpu_ratio: Option<f64>,
    /// `inflate_gib_s` ratio (target: >= 1.5).
    pub inflate_speedup: Option<f64>,
    /// `deflate_gib_s` ratio.
    pub deflate_speedup: Option<f64>,
    /// Which targets are met: `returned`, `settle`, `host_cpu`, `inflate`.
    pub targets_met: Targets,
}

/// Issue 9's targets for `qemu_prezero` against `qemu_own`.
#[derive(Debug, Serialize)]
pub struct Targets {
    /// Returns at least as much memory.
    pub returned: bool,
    /// Settles no later than 0.2 s after.
    pub settle: bool,
    /// At most 1.0x the host CPU per GiB returned.
    pub host_cpu: bool,
    /// Inflates at least 1.5x as fast.
    pub inflate: bool,
}

/// The comparison.
#[derive(Debug, Serialize)]
pub struct LinuxBench {
    /// The workload every row ran.
    pub workload: AllocFree,
    /// Guest memory, MiB.
    pub guest_mem_mib: u64,
    /// QEMU with its own virtio-balloon (absent with `--skip-qemu`).
    pub qemu_own: Option<PeerFigures>,
    /// QEMU with `prezero serve` behind its generic vhost-user device (absent with
    /// `--skip-qemu`).
    pub qemu_prezero: Option<PeerFigures>,
    /// UML + `prezero serve`.
    pub uml_prezero: PeerFigures,
    /// `qemu_prezero` against `qemu_own`.
    pub prezero_vs_own: Option<Comparison>,
    /// The chart.
    pub svg: PathBuf,
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

impl Comparison {
    fn of(p: &PeerFigures, own: &PeerFigures) -> Comparison {
        let returned_ratio = p.returned_mib / own.returned_mib.max(1e-9);
        let settle_later_s = match (p.seconds_to_settle, own.seconds_to_settle) {
            (Some(a), Some(b)) => Some(a - b),
            _ => None,
        };
        let host_cpu_ratio = ratio(p.host_cpu_s_per_gib, own.host_cpu_s_per_gib);
        let inflate_speedup = ratio(p.inflate_gib_s, own.inflate_gib_s);
        Comparison {
            returned_ratio,
            settle_later_s,
            host_cpu_ratio,
            inflate_speedup,
            deflate_speedup: ratio(p.deflate_gib_s, own.deflate_gib_s),
            targets_met: Targets {
                returned: returned_ratio >= 1.0,
                settle: settle_later_s.is_some_and(|d| d <= 0.2),
                host_cpu: host_cpu_ratio.is_some_and(|r| r <= 1.0),
                inflate: inflate_speedup.is_some_and(|r| r >= 1.5),
            },
        }
    }
}

/// Device CPU as measured for one row.
struct DeviceCpu {
    method: String,
    cpu_s: f64,
    window_mib: f64,
}

fn figures(run: PeerRun, device: DeviceCpu, cycle: Option<CycleResult>) -> PeerFigures {
    let r = &run.result;
    let d = &run.details;
    let returned_mib = d.returned_mib;
    let enough = returned_mib >= 16.0;
    PeerFigures {
        runs: 1,
        idle_mib: r.idle_mib,
        peak_mib: r.peak_mib,
        after_mib: r.after_mib,
        returned_mib,
        seconds_to_return: r.seconds_to_return,
        seconds_to_settle: d.seconds_to_settle,
        host_cpu_s_per_gib: enough.then(|| d.cpu_window_s / (returned_mib / 1024.0)),
        host_cpu_s: d.cpu_window_s,
        host_cpu_probe: run.cpu_probe.clone(),
        device_cpu_s_per_gib: (device.window_mib >= 16.0)
            .then(|| device.cpu_s / (device.window_mib / 1024.0)),
        device_cpu_s: device.cpu_s,
        cpu_method: device.method,
        window_mib: device.window_mib,
        balloon_mib: cycle.as_ref().map(|c| c.target_mib),
        inflate_s: cycle.as_ref().map(|c| c.inflate_s),
        deflate_s: cycle.as_ref().map(|c| c.deflate_s),
        inflate_gib_s: cycle.as_ref().map(|c| c.inflate_gib_s()),
        deflate_gib_s: cycle.as_ref().map(|c| c.deflate_gib_s()),
        host_mib_before_inflate: cycle.as_ref().map(|c| c.host_mib_before),
        host_mib_after_inflate: cycle.as_ref().map(|c| c.host_mib_after_inflate),
        host_mib_after_deflate: cycle.as_ref().map(|c| c.host_mib_after_deflate),
        memory_probe: run.memory_probe.clone(),
        boot_s: run.boot_s,
        guest_touch_mib_per_s: run.guest_touch_mib_per_s,
        threads_after_free: run.threads_after_free.clone(),
        run,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The median of the runs that measured it (`None` if none did).
fn median_opt(v: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = v.flatten().collect();
    (!v.is_empty()).then(|| median(v))
}

/// One row's runs folded into medians; descriptions, threads and the chart's curve come from
/// the run whose `returned_mib` is closest to the median.
fn medians(mut runs: Vec<PeerFigures>) -> PeerFigures {
    let n = runs.len();
    let m = |f: fn(&PeerFigures) -> f64| median(runs.iter().map(f).collect());
    let mo = |f: fn(&PeerFigures) -> Option<f64>| median_opt(runs.iter().map(f));
    let returned_mib = m(|f| f.returned_mib);
    let (idle_mib, peak_mib, after_mib) =
        (m(|f| f.idle_mib), m(|f| f.peak_mib), m(|f| f.after_mib));
    let (host_cpu_s, device_cpu_s, window_mib, boot_s) = (
        m(|f| f.host_cpu_s),
        m(|f| f.device_cpu_s),
        m(|f| f.window_mib),
        m(|f| f.boot_s),
    );
    let seconds_to_return = mo(|f| f.seconds_to_return);
    let seconds_to_settle = mo(|f| f.seconds_to_settle);
    let host_cpu_s_per_gib = mo(|f| f.host_cpu_s_per_gib);
    let device_cpu_s_per_gib = mo(|f| f.device_cpu_s_per_gib);
    let inflate_s = mo(|f| f.inflate_s);
    let deflate_s = mo(|f| f.deflate_s);
    let inflate_gib_s = mo(|f| f.inflate_gib_s);
    let deflate_gib_s = mo(|f| f.deflate_gib_s);
    let host_mib_before_inflate = mo(|f| f.host_mib_before_inflate);
    let host_mib_after_inflate = mo(|f| f.host_mib_after_inflate);
    let host_mib_after_deflate = mo(|f| f.host_mib_after_deflate);
    let guest_touch_mib_per_s = mo(|f| f.guest_touch_mib_per_s);
    let pick = (0..n)
        .min_by(|&a, &b| {
            (runs[a].returned_mib - returned_mib)
                .abs()
                .total_cmp(&(runs[b].returned_mib - returned_mib).abs())
        })
        .unwrap_or(0);
    let base = runs.swap_remove(pick);
    PeerFigures {
        runs: n,
        idle_mib,
        peak_mib,
        after_mib,
        returned_mib,
        seconds_to_return,
        seconds_to_settle,
        host_cpu_s_per_gib,
        host_cpu_s,
        device_cpu_s_per_gib,
        device_cpu_s,
        window_mib,
        inflate_s,
        deflate_s,
        inflate_gib_s,
        deflate_gib_s,
        host_mib_before_inflate,
        host_mib_after_inflate,
        host_mib_after_deflate,
        boot_s,
        guest_touch_mib_per_s,
        ..base
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

impl LinuxBench {
    fn rows(&self) -> Vec<(&'static str, &PeerFigures)> {
        let mut rows = Vec::new();
        if let Some(q) = &self.qemu_own {
            rows.push(("qemu_own", q));
        }
        if let Some(q) = &self.qemu_prezero {
            rows.push(("qemu_prezero", q));
        }
        rows.push(("uml_prezero", &self.uml_prezero));
        rows
    }

    fn table(&self) -> String {
        let mut s = format!(
            "Free page reporting, stock Linux driver: allocate {} MiB, free it, wait {} s ({} MiB guests; medians of {} runs)\n\n",
            self.workload.mib, self.workload.wait_s, self.guest_mem_mib, self.uml_prezero.runs
        );
        s += &format!(
            "{:<13} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>12} {:>14}\n",
            "row",
            "idle MiB",
            "peak MiB",
            "after",
            "returned",
            "s return",
            "s settle",
            "host CPU s/G",
            "device CPU s/G"
        );
        for (name, f) in self.rows() {
            s += &format!(
                "{:<13} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>9} {:>9} {:>12} {:>14}\n",
                name,
                f.idle_mib,
                f.peak_mib,
                f.after_mib,
                f.returned_mib,
                opt(f.seconds_to_return, 2),
                opt(f.seconds_to_settle, 2),
                opt(f.host_cpu_s_per_gib, 3),
                opt(f.device_cpu_s_per_gib, 3),
            );
        }
        if self.uml_prezero.balloon_mib.is_some() {
            s += &format!(
                "\nBalloon: {} MiB target set and released in an idling guest\n\n",
                self.uml_prezero.balloon_mib.unwrap_or(0)
            );
            s += &format!(
                "{:<13} {:>10} {:>12} {:>10} {:>12} {:>13} {:>14}\n",
                "row",
                "inflate s",
                "inflate GiB/s",
                "deflate s",
                "deflate GiB/s",
                "MiB before",
                "MiB inflated"
            );
            for (name, f) in self.rows() {
                s += &format!(
                    "{:<13} {:>10} {:>12} {:>10} {:>12} {:>13} {:>14}\n",
                    name,
                    opt(f.inflate_s, 3),
                    opt(f.inflate_gib_s, 3),
                    opt(f.deflate_s, 3),
                    opt(f.deflate_gib_s, 3),
                    opt(f.host_mib_before_inflate, 1),
                    opt(f.host_mib_after_inflate, 1),
                );
            }
        }
        if let Some(c) = &self.prezero_vs_own {
            let met = |b: bool| if b { "met" } else { "NOT met" };
            s += "\nqemu_prezero against qemu_own (same QEMU, kernel, memfd, run):\n";
            s += &format!(
                "  returned        {:.3}x   (target >= 1.0x: {})\n",
                c.returned_ratio,
                met(c.targets_met.returned)
            );
            s += &format!(
                "  settles later   {} s  (target <= 0.2 s: {})\n",
                opt(c.settle_later_s, 2),
                met(c.targets_met.settle)
            );
            s += &format!(
                "  host CPU/GiB    {}x   (target <= 1.0x: {})\n",
                opt(c.host_cpu_ratio, 3),
                met(c.targets_met.host_cpu)
            );
            s += &format!(
                "  inflate speed   {}x   (target >= 1.5x: {})\n",
                opt(c.inflate_speedup, 3),
                met(c.targets_met.inflate)
            );
            s += &format!("  deflate speed   {}x\n", opt(c.deflate_speedup, 3));
        }
        s += "\n";
        for (name, f) in self.rows() {
            s += &format!(
                "{name}: memory = {}; host CPU = {}; device CPU = {}\n",
                f.memory_probe, f.host_cpu_probe, f.cpu_method
            );
        }
        s += "s return: from the guest's free until host memory is within 10% of idle; \
              s settle: until within 5% of its final drop; host CPU: VMM + device from the free \
              to 1 s after settling, per GiB returned.\n";
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

/// `prezero serve` steered through its control socket.
struct DaemonBalloon {
    control: PathBuf,
}

impl BalloonControl for DaemonBalloon {
    fn set_target(&mut self, bytes: u64) -> prezero_linux_harness::Result<()> {
        control_request(&self.control, &ControlRequest::SetTargetBytes(bytes))
            .map(drop)
            .map_err(|e| {
                prezero_linux_harness::Error::invalid("the daemon's control socket", e.to_string())
            })
    }

    fn actual(&mut self) -> prezero_linux_harness::Result<u64> {
        let v = control_request(&self.control, &ControlRequest::Status).map_err(|e| {
            prezero_linux_harness::Error::invalid("the daemon's control socket", e.to_string())
        })?;
        v["actual_bytes"].as_u64().ok_or_else(|| {
            prezero_linux_harness::Error::invalid("the daemon's status", format!("{v}"))
        })
    }

    fn describe(&self) -> String {
        format!("prezero serve's control socket {}", self.control.display())
    }
}

/// The VM a prezero row boots.
enum Vmm<'a> {
    Qemu(&'a QemuConfig),
    Uml(&'a UmlConfig),
}

/// A row with `prezero serve`: a daemon started for it, the reporting run, the balloon cycle.
fn prezero_row(
    h: &Harness,
    vmm: Vmm<'_>,
    opts: &BenchOptions,
    balloon_mib: u64,
) -> Result<PeerFigures> {
    let scratch = ScratchDir::for_sockets(&h.tools.cache_dir, "bench-")?;
    let socket = scratch.join("balloon.sock");
    let control = scratch.join("control.sock");
    let mut daemon = start_daemon(&socket, &control, &scratch.join("serve.log"), &[])?;
    let dpid = daemon.pid();
    // The daemon's discarded_bytes and CPU at the free and at the end of the wait.
    let marks = RefCell::new([None::<(u64, f64)>; 2]);
    let read = || -> Option<(u64, f64)> {
        let bytes = control_request(&control, &ControlRequest::Metrics)
            .ok()?
            .get("device")?
            .get("discarded_bytes")?
            .as_u64()?;
        Some((bytes, daemon_cpu(&daemon)?))
    };
    let mut on_event = |e: &prezero_linux_harness::console::Event| match e.name.as_str() {
        "freed" => marks.borrow_mut()[0] = read(),
        "done" => marks.borrow_mut()[1] = read(),
        _ => {}
    };
    let cpu = |vm_pid| vm_and_device_cpu(vm_pid, dpid);
    let context = |what: &str| {
        format!(
            "the {what} + prezero run (daemon log {})",
            daemon.log_path().display()
        )
    };
    let run = match vmm {
        Vmm::Qemu(cfg) => bench_qemu_with(
            &cfg.clone().balloon_socket(&socket),
            &cpu,
            Some(dpid),
            opts,
            &mut on_event,
        )
        .with_context(|| context("QEMU"))?,
        Vmm::Uml(cfg) => bench_uml_with(
            &cfg.clone().balloon_socket(&socket),
            &cpu,
            Some(dpid),
            opts,
            &mut on_event,
        )
        .with_context(|| context("UML"))?,
    };
    let [Some((b0, c0)), Some((b1, c1))] = marks.into_inner() else {
        anyhow::bail!(
            "could not read the daemon's metrics over {}",
            control.display()
        );
    };
    let device = DeviceCpu {
        method: format!(
            "prezero serve's CPU time (pid {dpid}, all threads) from the free to the end of the wait ({:.1} s), per GiB it discarded (discarded_bytes)",
            run.marks.end_s - run.marks.freed_s
        ),
        cpu_s: (c1 - c0).max(0.0),
        window_mib: b1.saturating_sub(b0) as f64 * 1024.0 / GIB,
    };
    let cycle = if balloon_mib == 0 {
        None
    } else {
        let mut ctl = DaemonBalloon {
            control: control.clone(),
        };
        Some(
            match vmm {
                Vmm::Qemu(cfg) => cycle_qemu(
                    &cfg.clone().balloon_socket(&socket),
                    &mut ctl,
                    balloon_mib,
                    CYCLE_TIMEOUT,
                ),
                Vmm::Uml(cfg) => cycle_uml(
                    &cfg.clone().balloon_socket(&socket),
                    &mut ctl,
                    balloon_mib,
                    CYCLE_TIMEOUT,
                ),
            }
            .with_context(|| context("balloon cycle"))?,
        )
    };
    match daemon.terminate(Duration::from_secs(10)) {
        Ok(s) if s.success() => {}
        Ok(s) => eprintln!(
            "prezero serve exited with {s}; log: {}",
            daemon.log_path().display()
        ),
        Err(e) => eprintln!("stopping prezero serve: {e}"),
    }
    Ok(figures(run, device, cycle))
}

fn daemon_cpu(daemon: &BackendProcess) -> Option<f64> {
    daemon.cpu_seconds().ok()
}

/// The reference row: QEMU with its own virtio-balloon.
fn qemu_own_row(
    h: &Harness,
    cfg: &QemuConfig,
    opts: &BenchOptions,
    balloon_mib: u64,
) -> Result<PeerFigures> {
    let run = bench_qemu_with(cfg, &vm_cpu, None, opts, &mut |_| {})
        .context("the QEMU own-balloon run")?;
    let d = run.details;
    let device = DeviceCpu {
        method: format!(
            "QEMU's CPU (TCG: the device runs in the vCPU thread) from the free to {:.1} s after memory settled, minus the quiet tail's rate ({:.4} CPU s/s), per GiB returned",
            d.cpu_window_end_s - d.cpu_window_start_s,
            d.cpu_baseline_rate
        ),
        cpu_s: d.device_cpu_s,
        window_mib: d.returned_mib,
    };
    let cycle = if balloon_mib == 0 {
        None
    } else {
        let scratch = ScratchDir::for_sockets(&h.tools.cache_dir, "bench-")?;
        let monitor = scratch.join("monitor.sock");
        let mut cfg = cfg.clone();
        cfg.monitor = Some(monitor.clone());
        let mut ctl = QemuMonitorBalloon {
            monitor,
            guest_mib: cfg.mem_mib,
        };
        Some(
            cycle_qemu(&cfg, &mut ctl, balloon_mib, CYCLE_TIMEOUT)
                .context("the QEMU own-balloon cycle")?,
        )
    };
    Ok(figures(run, device, cycle))
}

fn svg_path(h: &Harness, arg: Option<&Path>) -> Result<PathBuf> {
    Ok(match arg {
        Some(p) => p.to_path_buf(),
        None => {
            let dir = h.tools.cache_dir.join("bench");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.join("linux-peers.svg")
        }
    })
}

/// Runs the comparison.
pub fn run(args: &LinuxBenchArgs) -> Result<()> {
    anyhow::ensure!(
        args.balloon_mib < args.mem,
        "--balloon-mib {} must be below the guest's --mem {} MiB (fix: a smaller --balloon-mib, or 0 to skip the balloon cycle)",
        args.balloon_mib,
        args.mem
    );
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

    let qemu_cfg = if args.skip_qemu {
        None
    } else {
        let initrd = h.qemu_initramfs()?;
        Some(h.qemu(&initrd)?.mem_mib(args.mem))
    };
    let uml_initrd = h.uml_initramfs()?;
    let uml_cfg = h.uml(&uml_initrd).mem_mib(args.mem);
    let (mut own_runs, mut qpz_runs, mut uml_runs) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..args.runs {
        let progress = |row: &str, what: &str| {
            eprintln!(
                "run {}/{}: {row}: {} MiB guest, {what}, allocating {} MiB ...",
                i + 1,
                args.runs,
                args.mem,
                args.mib
            )
        };
        if let Some(cfg) = &qemu_cfg {
            // Alternate which QEMU row goes first, so neither always runs on a warmer host.
            for own_now in [i % 2 == 0, i % 2 == 1] {
                if own_now {
                    progress("qemu_own", "cloud kernel, QEMU's virtio-balloon");
                    own_runs.push(qemu_own_row(&h, cfg, &opts, args.balloon_mib)?);
                } else {
                    progress(
                        "qemu_prezero",
                        "cloud kernel, prezero serve behind vhost-user-test-device-pci",
                    );
                    qpz_runs.push(prezero_row(&h, Vmm::Qemu(cfg), &opts, args.balloon_mib)?);
                }
            }
        }
        progress("uml_prezero", "User-Mode Linux on prezero serve");
        uml_runs.push(prezero_row(
            &h,
            Vmm::Uml(&uml_cfg),
            &opts,
            args.balloon_mib,
        )?);
    }
    let some = |runs: Vec<PeerFigures>| (!runs.is_empty()).then(|| medians(runs));
    let (qemu_own, qemu_prezero) = (some(own_runs), some(qpz_runs));
    let uml_prezero = medians(uml_runs);

    let svg = svg_path(&h, args.svg.as_deref())?;
    let mut runs: Vec<&PeerRun> = Vec::new();
    for f in [&qemu_own, &qemu_prezero].into_iter().flatten() {
        runs.push(&f.run);
    }
    runs.push(&uml_prezero.run);
    std::fs::write(&svg, comparison_chart(&runs).to_svg())
        .with_context(|| format!("writing {}", svg.display()))?;
    let prezero_vs_own = match (&qemu_prezero, &qemu_own) {
        (Some(p), Some(o)) => Some(Comparison::of(p, o)),
        _ => None,
    };
    let result = LinuxBench {
        workload: opts.workload,
        guest_mem_mib: args.mem,
        qemu_own,
        qemu_prezero,
        uml_prezero,
        prezero_vs_own,
        svg,
    };
    print(args.json, &result, LinuxBench::table)
}
