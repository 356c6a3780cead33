//! The seed measurement inside a VM (`prezero bench seed-table --vm`): prezero's kernel
//! (`kernel/`, its `seed` scenario) booted by QEMU three times, once per mode, each against a
//! `prezero serve` child process behind `vhost-user-test-device-pci`. The kernel times each run
//! with its TSC and prints it; this gathers the runs.
//!
//! The modes run in three VMs one after the other (the mode is fixed when the driver
//! negotiates), not interleaved as the in-process guests' runs are: drift between them is not
//! spread evenly. Under TCG the guest's own stores (its zeroing included) are emulated, which
//! inflates what skipping them saves compared with a KVM guest; the accelerator is part of the
//! result.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use prezero_linux_harness::backend::BackendProcess;
use prezero_linux_harness::console::Event;
use prezero_linux_harness::kernel_vm::{build_kernel, detect_accel, KernelExit, KernelVmConfig};
use prezero_linux_harness::qemu::QemuBalloon;
use prezero_linux_harness::scratch::ScratchDir;
use prezero_linux_harness::setup::{default_cache_dir, find_qemu};

use crate::output::Progress;

/// The three modes, in the kernel's names (`prezero.mode=`).
pub const MODES: [&str; 3] = ["baseline", "optimized", "floor"];
/// The granularities, in the kernel's names (`gran=`), as the seed table's JSON fields.
pub const GRANULARITIES: [&str; 3] = ["block_2m", "page_4k", "huge_pool"];

/// What to run.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// Zeroed allocation in MiB.
    pub alloc_mib: u64,
    /// Timed runs per mode and granularity.
    pub repeats: usize,
    /// The kernel image; `None`: build it with scripts/kernel-build.sh.
    pub kernel: Option<PathBuf>,
}

/// One mode's timed runs of one granularity.
#[derive(Debug, Clone, Default)]
pub struct Runs {
    /// Allocation plus touch, ms.
    pub total_ms: Vec<f64>,
    /// The allocation calls alone, ms.
    pub alloc_ms: Vec<f64>,
    /// Allocations served known-zero.
    pub hits: u64,
    /// Allocations.
    pub blocks: u64,
}

/// Everything the three VMs measured.
#[derive(Debug, Clone)]
pub struct VmRuns {
    /// `kvm` or `tcg`.
    pub accelerator: &'static str,
    /// Runs by (granularity, mode).
    pub runs: BTreeMap<(String, String), Runs>,
}

impl VmRuns {
    /// The runs of `granularity` in `mode` (empty if none came).
    pub fn get(&self, granularity: &str, mode: &str) -> Runs {
        self.runs
            .get(&(granularity.to_owned(), mode.to_owned()))
            .cloned()
            .unwrap_or_default()
    }
}

/// Boots the kernel once per mode and gathers its runs.
pub fn measure(o: &VmOptions, progress: &mut Progress) -> Result<VmRuns> {
    if let Some(k) = o.kernel.as_ref().filter(|k| !k.is_file()) {
        bail!(
            "--kernel {}: no such file (the image scripts/kernel-build.sh prints as `kernel=PATH`, \
             or leave out --kernel to build it)",
            k.display()
        );
    }
    let cache = default_cache_dir();
    let qemu = find_qemu(&cache).with_context(|| {
        format!(
            "no QEMU >= 10.2 with vhost-user-test-device-pci (Debian 12 ships 7.2): run \
             `scripts/qemu-setup.sh --cache {}` from the clone (no root needed)",
            cache.display()
        )
    })?;
    progress.step("building the kernel (scripts/kernel-build.sh)");
    let kernel = match &o.kernel {
        Some(k) => k.clone(),
        None => build_kernel().context("building prezero's kernel; or give --kernel PATH")?,
    };
    progress.done();
    let accel = detect_accel(&qemu, &kernel);
    let dir = ScratchDir::for_sockets(&cache, "seed-vm")?;
    let (socket, control) = (dir.join("b.sock"), dir.join("c.sock"));
    let exe = std::env::current_exe().context("locating the prezero binary for `serve`")?;
    let mut daemon = BackendProcess::serve(
        &exe,
        &socket,
        &control,
        &dir.join("serve.log"),
        &["--log", "warn"],
        Duration::from_secs(20),
    )?;
    let mut runs: BTreeMap<(String, String), Runs> = BTreeMap::new();
    for mode in MODES {
        progress.step(&format!(
            "{mode}: a {} MiB VM ({}) dirties, reports, then {} timed runs per granularity",
            o.mem_mib,
            accel.name(),
            o.repeats
        ));
        let cfg = KernelVmConfig {
            qemu: qemu.clone(),
            kernel: kernel.clone(),
            accel,
            mem_mib: o.mem_mib,
            balloon: QemuBalloon::vhost_user(&socket),
            append: vec![
                "prezero.scenario=seed".into(),
                format!("prezero.mode={mode}"),
                format!("prezero.alloc_mib={}", o.alloc_mib),
                format!("prezero.repeats={}", o.repeats),
            ],
            monitor: None,
        };
        let mut vm = cfg.boot()?;
        // TCG: ~3 s per timed baseline run of 256 MiB, ~20 s to dirty and report 2 GiB.
        let limit = Duration::from_secs(120 + 30 * o.repeats as u64);
        let out = vm.run_to_exit(limit)?;
        let tail = vm.console().tail(20);
        vm.shutdown();
        if KernelExit::from_code(out.exit_code) != KernelExit::Success {
            bail!(
                "the {mode} VM failed (QEMU exit {:?}):\n{tail}",
                out.exit_code
            );
        }
        for e in out.events_named("seed-run") {
            let r = runs
                .entry((field(e, "gran")?, mode.to_owned()))
                .or_default();
            r.total_ms.push(num(e, "total_ns")? as f64 / 1e6);
            r.alloc_ms.push(num(e, "alloc_ns")? as f64 / 1e6);
            r.hits += num(e, "hits")?;
            r.blocks += num(e, "blocks")?;
        }
        progress.done();
    }
    daemon.kill();
    for g in GRANULARITIES {
        for m in MODES {
            let n = runs
                .get(&(g.to_owned(), m.to_owned()))
                .map_or(0, |r| r.total_ms.len());
            if n != o.repeats {
                bail!("the {m} VM printed {n} of {} {g} runs", o.repeats);
            }
        }
    }
    Ok(VmRuns {
        accelerator: accel.name(),
        runs,
    })
}

fn field(e: &Event, key: &str) -> Result<String> {
    e.get(key)
        .map(str::to_owned)
        .with_context(|| format!("a seed-run line without {key}: {e:?}"))
}

fn num(e: &Event, key: &str) -> Result<u64> {
    e.num(key)
        .with_context(|| format!("a seed-run line without a number {key}: {e:?}"))
}
