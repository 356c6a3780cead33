//! The peer comparison (`prezero bench linux`): the same `alloc-free` workload (idle, allocate
//! and touch 256 MiB, hold, free, wait for reporting) under QEMU with its own virtio-balloon,
//! under QEMU with `prezero serve` behind its generic vhost-user device, and under UML attached
//! to `prezero serve`, measured the same way (see [`crate::measure`]); then a balloon target
//! set and released in a fresh guest ([`crate::balloon_cycle`]).
//!
//! [`measure_alloc_free`] is the common part: it samples a running VM while following the
//! workload's console events, then analyses the curve. [`bench_qemu`] and [`bench_uml`] boot the
//! respective VM and call it; their `_with` forms take the CPU probe (VM alone, or VM plus
//! daemon: [`vm_and_device_cpu`]). [`cycle_qemu`] and [`cycle_uml`] time the balloon. The CLI
//! (`prezero bench linux`) turns the runs into a table and a chart.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::balloon_cycle::{balloon_cycle, BalloonControl, CycleResult};
use crate::console::{Event, Line};
use crate::error::Result;
use crate::measure::{analyze, AnalysisOptions, Details, Marks, PeerResult, Sampler};
use crate::procs::{threads_cpu, CpuProbe, MemoryProbe, ProcessCpu, SumCpu, ThreadCpu};
use crate::qemu::{Qemu, QemuBalloon, QemuConfig};
use crate::scenario::Scenario;
use crate::uml::{Uml, UmlConfig};
use crate::vm::GuestProcess;

/// The `alloc-free` workload's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AllocFree {
    /// MiB to allocate and touch (256).
    pub mib: u64,
    /// Idle seconds before allocating (the idle baseline is its last 2 s; 5).
    pub idle_s: f64,
    /// Seconds to hold the memory (1).
    pub hold_s: f64,
    /// Seconds to wait after the free (15; Linux reports ~2 s after frees, in passes).
    pub wait_s: f64,
    /// Seconds between the guest's meminfo lines (1).
    pub interval_s: f64,
}

impl Default for AllocFree {
    fn default() -> Self {
        AllocFree {
            mib: 256,
            idle_s: 5.0,
            hold_s: 1.0,
            wait_s: 15.0,
            interval_s: 1.0,
        }
    }
}

impl AllocFree {
    /// The scenario.
    pub fn scenario(&self) -> Scenario {
        Scenario::alloc_free(self.mib)
            .param("idle", self.idle_s)
            .param("hold", self.hold_s)
            .param("wait", self.wait_s)
            .param("interval", self.interval_s)
    }
}

/// Benchmark options.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BenchOptions {
    /// The workload.
    pub workload: AllocFree,
    /// Host sampling interval (100 ms).
    pub sample_interval: Duration,
    /// Analysis parameters.
    pub analysis: AnalysisOptions,
    /// Deadline for the whole run (boot to `done`; 600 s).
    pub timeout: Duration,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            workload: AllocFree::default(),
            sample_interval: Duration::from_millis(100),
            analysis: AnalysisOptions::default(),
            timeout: Duration::from_secs(600),
        }
    }
}

/// One measured run of a peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerRun {
    /// Which peer (`qemu`, `uml+prezero`, ...).
    pub peer: String,
    /// The figures and the series.
    pub result: PeerResult,
    /// Workload phase times.
    pub marks: Marks,
    /// How the figures were obtained, plus `seconds_to_settle`.
    pub details: Details,
    /// Seconds from the VM's start to the workload's first event (boot time).
    pub boot_s: f64,
    /// The guest's own first-touch speed for the allocation, MiB/s.
    pub guest_touch_mib_per_s: Option<f64>,
    /// What the memory figure measures.
    pub memory_probe: String,
    /// What the CPU figure measures.
    pub cpu_probe: String,
    /// CPU seconds per thread of the device process from the free to the end of the wait
    /// (shows which thread did the reporting work).
    pub threads_after_free: Vec<ThreadCpu>,
    /// The guest's meminfo events.
    pub guest_meminfo: Vec<Event>,
    /// The whole console.
    pub console: Vec<Line>,
}

fn thread_delta(before: &[ThreadCpu], after: &[ThreadCpu]) -> Vec<ThreadCpu> {
    after
        .iter()
        .map(|a| {
            let b = before
                .iter()
                .find(|b| b.tid == a.tid)
                .map_or(0.0, |b| b.cpu_s);
            ThreadCpu {
                tid: a.tid,
                name: a.name.clone(),
                cpu_s: a.cpu_s - b,
            }
        })
        .filter(|t| t.cpu_s > 0.0)
        .collect()
}

/// Follows a VM running [`AllocFree::scenario`] while sampling `mem` and `cpu`, waits for the
/// workload's `done`, and analyses. `device_pid` (for the per-thread breakdown) is the process
/// serving the device, if known.
pub fn measure_alloc_free(
    peer: &str,
    vm: &mut GuestProcess,
    mem: Box<dyn MemoryProbe>,
    cpu: Box<dyn CpuProbe>,
    device_pid: Option<i32>,
    opts: &BenchOptions,
) -> Result<PeerRun> {
    measure_alloc_free_with(peer, vm, mem, cpu, device_pid, opts, &mut |_| {})
}

/// [`measure_alloc_free`], calling `on_event` as soon as each workload phase event arrives
/// (`init`, `idle-start`, `alloc-start`, `alloc-done`, `freed`, `done`), e.g. to read the
/// device's own counters at the phase boundaries.
pub fn measure_alloc_free_with(
    peer: &str,
    vm: &mut GuestProcess,
    mem: Box<dyn MemoryProbe>,
    cpu: Box<dyn CpuProbe>,
    device_pid: Option<i32>,
    opts: &BenchOptions,
    on_event: &mut dyn FnMut(&Event),
) -> Result<PeerRun> {
    let (memory_probe, cpu_probe) = (mem.describe(), cpu.describe());
    let sampler = Sampler::start(vm.t0(), opts.sample_interval, mem, cpu);
    let deadline = Instant::now() + opts.timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    let c = vm.console();
    let mut wait = |name: &str| -> Result<Event> {
        let e = c.wait_event(name, left())?;
        on_event(&e);
        Ok(e)
    };
    let first = wait("init")?;
    let idle = wait("idle-start")?;
    let alloc = wait("alloc-start")?;
    let done_alloc = wait("alloc-done")?;
    let freed = wait("freed")?;
    let threads_before = device_pid
        .and_then(|p| threads_cpu(p).ok())
        .unwrap_or_default();
    let done = wait("done")?;
    let threads_after = device_pid
        .and_then(|p| threads_cpu(p).ok())
        .unwrap_or_default();
    // One more interval so the last phase has samples up to `done`.
    std::thread::sleep(opts.sample_interval);
    let series = sampler.stop();
    let marks = Marks {
        idle_start_s: idle.t_s,
        alloc_start_s: alloc.t_s,
        freed_s: freed.t_s,
        end_s: done.t_s,
    };
    let (result, details) = analyze(&series, &marks, &opts.analysis)?;
    let console = vm.console().log().to_vec();
    let guest_meminfo = crate::console::events_of(&console)
        .into_iter()
        .filter(|e| e.name == "meminfo")
        .collect();
    Ok(PeerRun {
        peer: peer.to_owned(),
        result,
        marks,
        details,
        boot_s: first.t_s,
        guest_touch_mib_per_s: done_alloc.num("mib_per_s"),
        memory_probe,
        cpu_probe,
        threads_after_free: thread_delta(&threads_before, &threads_after),
        guest_meminfo,
        console,
    })
}

/// Makes the sampler's CPU probe once the VM's pid is known: the VM alone
/// ([`vm_cpu`]), or the VM plus its external device ([`vm_and_device_cpu`]).
pub type CpuOf<'a> = &'a dyn Fn(i32) -> Box<dyn CpuProbe>;

/// The VM process's own CPU (all threads).
pub fn vm_cpu(vm_pid: i32) -> Box<dyn CpuProbe> {
    Box::new(ProcessCpu { pid: vm_pid })
}

/// The VM process plus the device process `device_pid` (e.g. `prezero serve`): all the CPU
/// the host spends on the guest and its balloon.
pub fn vm_and_device_cpu(vm_pid: i32, device_pid: i32) -> Box<dyn CpuProbe> {
    Box::new(SumCpu(vec![
        Box::new(ProcessCpu { pid: vm_pid }),
        Box::new(ProcessCpu { pid: device_pid }),
    ]))
}

/// The peer name of a QEMU configuration: `qemu` (its own balloon) or `qemu+prezero`.
pub fn qemu_peer(cfg: &QemuConfig) -> &'static str {
    match cfg.balloon {
        QemuBalloon::Own { .. } => "qemu",
        QemuBalloon::VhostUser { .. } => "qemu+prezero",
    }
}

/// The QEMU peer: boots `cfg` with the `alloc-free` workload of `opts` and measures its
/// guest-RAM memfd and QEMU's CPU.
pub fn bench_qemu(cfg: &QemuConfig, opts: &BenchOptions) -> Result<PeerRun> {
    bench_qemu_with(cfg, &vm_cpu, None, opts, &mut |_| {})
}

/// [`bench_qemu`] with the sampler's CPU probe made by `cpu` from QEMU's pid, the per-thread
/// breakdown of `device_pid` (default: QEMU), calling `on_event` at each workload phase.
pub fn bench_qemu_with(
    cfg: &QemuConfig,
    cpu: CpuOf<'_>,
    device_pid: Option<i32>,
    opts: &BenchOptions,
    on_event: &mut dyn FnMut(&Event),
) -> Result<PeerRun> {
    let peer = qemu_peer(cfg);
    let mut vm = Qemu::boot(&cfg.clone().scenario(opts.workload.scenario()))?;
    let (mem, pid) = (vm.memory_probe(), vm.pid());
    let device_pid = Some(device_pid.unwrap_or(pid));
    measure_to_the_end(
        peer,
        &mut vm,
        Box::new(mem),
        cpu(pid),
        device_pid,
        opts,
        on_event,
    )
}

/// [`measure_alloc_free_with`], then the VM's poweroff (or its end after 30 s).
fn measure_to_the_end(
    peer: &str,
    vm: &mut GuestProcess,
    mem: Box<dyn MemoryProbe>,
    cpu: Box<dyn CpuProbe>,
    device_pid: Option<i32>,
    opts: &BenchOptions,
    on_event: &mut dyn FnMut(&Event),
) -> Result<PeerRun> {
    let run = measure_alloc_free_with(peer, vm, mem, cpu, device_pid, opts, on_event);
    let _ = vm.wait_exit(Duration::from_secs(30));
    vm.shutdown();
    run
}

/// The UML side: boots `cfg` (attach the daemon with [`UmlConfig::balloon_socket`]) with the
/// `alloc-free` workload and measures the UML memory file's allocated blocks; `device_cpu`
/// measures the daemon (e.g. `ProcessCpu { pid: daemon }`), `device_pid` gives its per-thread
/// breakdown.
pub fn bench_uml(
    cfg: &UmlConfig,
    device_cpu: Box<dyn CpuProbe>,
    device_pid: Option<i32>,
    opts: &BenchOptions,
) -> Result<PeerRun> {
    let cpu = std::cell::RefCell::new(Some(device_cpu));
    let cpu = move |_| cpu.borrow_mut().take().expect("one boot, one probe");
    bench_uml_with(cfg, &cpu, device_pid, opts, &mut |_| {})
}

/// [`bench_uml`] with the sampler's CPU probe made by `cpu` from UML's (kernel) pid, calling
/// `on_event` at each workload phase (see [`measure_alloc_free_with`]).
pub fn bench_uml_with(
    cfg: &UmlConfig,
    cpu: CpuOf<'_>,
    device_pid: Option<i32>,
    opts: &BenchOptions,
    on_event: &mut dyn FnMut(&Event),
) -> Result<PeerRun> {
    let cfg = cfg.clone().scenario(opts.workload.scenario());
    let peer = if cfg.balloon_socket.is_some() {
        "uml+prezero"
    } else {
        "uml (no balloon)"
    };
    let mut vm = Uml::boot(&cfg)?;
    let (mem, pid) = (vm.memory_probe(), vm.pid());
    measure_to_the_end(
        peer,
        &mut vm,
        Box::new(mem),
        cpu(pid),
        device_pid,
        opts,
        on_event,
    )
}

/// The scenario of a balloon cycle: idle (meminfo every second) for at most `timeout`.
fn cycle_scenario(timeout: Duration) -> Scenario {
    Scenario::idle(timeout.as_secs_f64().ceil()).interval(1.0)
}

/// Waits until the idling guest's driver is up (the scenario started and printed meminfo
/// twice, so boot-time reporting has had a second), then runs [`balloon_cycle`].
fn cycle_on(
    vm: &mut GuestProcess,
    mem: &mut dyn MemoryProbe,
    ctl: &mut dyn BalloonControl,
    target_mib: u64,
    timeout: Duration,
) -> Result<CycleResult> {
    vm.console().wait_event("scenario", timeout)?;
    vm.console().wait_event("meminfo", timeout)?;
    vm.console().wait_event("meminfo", timeout)?;
    balloon_cycle(ctl, mem, target_mib, timeout)
}

/// Boots `cfg` idling and inflates / deflates a balloon of `target_mib` through `ctl` (for
/// QEMU's own device: a [`crate::balloon_cycle::QemuMonitorBalloon`] on `cfg.monitor`).
pub fn cycle_qemu(
    cfg: &QemuConfig,
    ctl: &mut dyn BalloonControl,
    target_mib: u64,
    timeout: Duration,
) -> Result<CycleResult> {
    let cfg = cfg.clone().scenario(cycle_scenario(timeout));
    let mut vm = Qemu::boot(&cfg)?;
    let mut mem = vm.memory_probe();
    let r = cycle_on(&mut vm, &mut mem, ctl, target_mib, timeout);
    vm.shutdown();
    r
}

/// [`cycle_qemu`] for UML attached to the daemon steered by `ctl`.
pub fn cycle_uml(
    cfg: &UmlConfig,
    ctl: &mut dyn BalloonControl,
    target_mib: u64,
    timeout: Duration,
) -> Result<CycleResult> {
    let cfg = cfg.clone().scenario(cycle_scenario(timeout));
    let mut vm = Uml::boot(&cfg)?;
    let mut mem = vm.memory_probe();
    let r = cycle_on(&mut vm, &mut mem, ctl, target_mib, timeout);
    vm.shutdown();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_of_the_workload() {
        let s = AllocFree::default().scenario();
        let args = s.kernel_args().unwrap();
        assert!(args.contains(&"prezero.scenario=alloc-free".to_owned()));
        assert!(args.contains(&"prezero.mib=256".to_owned()));
        assert!(args.contains(&"prezero.wait=15".to_owned()));
    }

    #[test]
    fn thread_deltas() {
        let t = |tid, cpu_s| ThreadCpu {
            tid,
            name: format!("t{tid}"),
            cpu_s,
        };
        let d = thread_delta(&[t(1, 1.0), t(2, 2.0)], &[t(1, 1.5), t(2, 2.0), t(3, 0.25)]);
        assert_eq!(d, [t(1, 0.5), t(3, 0.25)]);
    }
}
