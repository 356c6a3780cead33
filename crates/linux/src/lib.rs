//! # prezero-linux: the Linux-guest harness
//!
//! Runs the **stock Linux `virtio_balloon` driver** against a virtio-balloon device: under
//! User-Mode Linux (UML, Debian's `user-mode-linux`, kernel 6.1) attached to prezero's
//! vhost-user daemon (`virtio_uml.device=SOCKET:5`), and under QEMU (software emulation) with
//! QEMU's own virtio-balloon as the peer to compare with.
//!
//! ## Pieces
//!
//! | module | what |
//! |---|---|
//! | [`setup`] | check for / install (apt, as root) `user-mode-linux`, `busybox-static`, `cpio`, and for the peer `qemu-system-x86` plus Debian's cloud kernel (downloaded and unpacked into the cache, not installed) |
//! | [`workload`] | the guest workload program (`src/bin/prezero-workload.rs`), built static with `rustc` at run time |
//! | [`initramfs`], [`cpio`], [`modules`], [`elf`] | a newc initramfs with busybox, kernel modules (+ dependencies), the workload and `/init` |
//! | [`scenario`] | what the guest runs, chosen on the kernel command line (`prezero.scenario=...`) |
//! | [`uml`], [`qemu`], [`vm`], [`console`] | booting the VMs, console capture with timeouts, every pid recorded and killed on drop |
//! | [`backend`] | the vhost-user backend as a process of its own (`prezero serve`): started before the guest, probed for CPU, descriptors and mappings |
//! | [`procs`], [`measure`], [`mod@bench`], [`svg`] | host memory / CPU probes, sampling, curve analysis, the peer comparison and its chart |
//!
//! ## Use
//!
//! ```no_run
//! use prezero_linux::{Harness, Scenario, SetupOptions};
//! use std::time::Duration;
//!
//! // Check/install the tools, build the workload (cached in target/prezero-linux).
//! let h = Harness::new(&SetupOptions::default())?;
//! let initrd = h.uml_initramfs()?;
//! // Boot UML; add `.balloon_socket(path)` to attach `prezero serve --socket path`.
//! let mut vm = h.uml(&initrd).scenario(Scenario::checksum(16)).boot()?;
//! let out = vm.run_to_exit(Duration::from_secs(60))?;
//! assert_eq!(out.event("checksum").unwrap().get("status"), Some("ok"));
//! drop(vm); // kills every UML process that is left
//! # Ok::<(), prezero_linux::Error>(())
//! ```
//!
//! The QEMU peer: `Harness::new(&SetupOptions { peer: true, ..Default::default() })`, then
//! [`bench::bench_qemu`] with [`Harness::qemu`]`(&h.qemu_initramfs()?)`; write the chart with
//! [`bench::write_comparison_svg`].
//!
//! ## Scenarios (`prezero.scenario=NAME prezero.KEY=VALUE` on the kernel command line)
//!
//! | scenario | guest does | prints (`PREZERO event=...`) |
//! |---|---|---|
//! | `boot` | lists virtio devices, meminfo, vmstat | `virtio` (device id, driver, negotiated feature bits), `virtio-count`, `meminfo`, `vmstat` |
//! | `meminfo` | meminfo and vmstat once | `meminfo`, `vmstat` |
//! | `checksum` | fills `mib` with a seeded pattern, optionally churns `churn` MiB, holds up to `hold` s (verifying every `interval` with `verify_every=1`), verifies every page | `checksum-filled`, `churn-freed`, `meminfo` while holding, `checksum-verify round= status=`, `hold-end reason=`, `checksum status=ok/fail bad_pages=...` |
//! | `alloc-free` | idles `idle` s, allocates and touches `mib`, holds, frees, waits up to `wait` s | `idle-start`, `alloc-start`, `alloc-done mib_per_s=`, `freed`, `meminfo` each `interval`, `vmstat` (with `pcp_pages`), `done reason=` |
//! | `idle` | optionally churns `churn` MiB, meminfo every `interval` s for up to `wait` s, then the virtio devices | `churn-freed`, `meminfo`, `virtio`, `virtio-count`, `done reason=` |
//! | `oom` | optionally waits for the balloon (`until_*`), allocates `mib` in `step` chunks (deflate-on-OOM) | `oom-ready`, `oom-progress`, `oom-done` (or the kernel's OOM kill, then `exit rc=137`) |
//! | `shell` | a busybox shell instead of the workload | |
//!
//! `until_inflated=N` / `until_deflated=N` end a wait once the guest's `balloon_inflate` /
//! `balloon_deflate` vmstat counters (4 KiB pages) reach N: the host signals the guest by
//! moving the balloon ([`Scenario::until_inflated`]). Such a wait that times out fails the
//! scenario (`reason=timeout`, exit status 1).
//!
//! The init script adds `init` (kernel release), one `insmod module= rc=` per module and a
//! final `exit rc=` before `poweroff -f`.
//!
//! ## Measured on the 2-core development machine
//!
//! - UML 6.1.176, 128-256 MiB: `/init` ~1.3 s after start, a `checksum` run of 8-16 MiB
//!   powers off after ~1.6-1.8 s; ~20 host processes per boot, all gone after shutdown (also
//!   when UML hangs on a backend that never answers). First touch ~22-27 MiB/s.
//! - QEMU 7.2 (`-accel tcg`) with the cloud kernel 6.1.0-56: `/init` ~2.1 s after start; first
//!   touch ~370 MiB/s.
//! - QEMU peer, 256 MiB `alloc-free` in a 2 GiB guest: idle ~236-246 MiB RSS, peak ~492-502,
//!   after ~274-282; 210-228 MiB return ~1.3-1.4 s after the free (`seconds_to_settle`), but
//!   `seconds_to_return` is `None`: the cloud kernel keeps ~36 MiB of the freed THPs on its
//!   per-cpu free lists (`pcp_pages` 2964 -> 12079), which reporting never sees, so host memory
//!   stays 12-20% above idle. `device_cpu_s_per_gib` ~0-0.03 s/GiB: QEMU discards 2 MiB THPs
//!   with `MADV_DONTNEED`, below the noise of the idle guest (~0.007 CPU s/s).
#![deny(missing_docs)]

pub mod backend;
pub mod bench;
pub mod console;
pub mod cpio;
pub mod elf;
mod error;
pub mod initramfs;
pub mod measure;
pub mod modules;
pub mod procs;
pub mod qemu;
pub mod scenario;
pub mod setup;
pub mod svg;
pub mod uml;
pub mod vm;
pub mod workload;

use std::path::PathBuf;

pub use error::{Error, Result};
pub use initramfs::Initramfs;
pub use measure::PeerResult;
pub use scenario::Scenario;
pub use setup::{HostTools, SetupOptions};

use crate::initramfs::InitramfsBuilder;
use crate::modules::ModuleTree;
use crate::qemu::{QemuConfig, QEMU_GUEST_MODULES};
use crate::uml::UmlConfig;

/// Everything ready to boot guests: the host tools and the built workload.
#[derive(Debug, Clone)]
pub struct Harness {
    /// The host tools found (or installed).
    pub tools: HostTools,
    /// The static workload binary.
    pub workload: PathBuf,
}

impl Harness {
    /// Checks (and per `opts`, installs) the tools, then builds the workload.
    pub fn new(opts: &SetupOptions) -> Result<Harness> {
        let tools = setup::ensure(opts)?;
        let workload = workload::build_workload(&tools.cache_dir)?;
        Ok(Harness { tools, workload })
    }

    /// Builds `<cache>/initramfs/uml-<release>.cpio`: busybox, the workload and UML's
    /// `virtio_balloon.ko`.
    pub fn uml_initramfs(&self) -> Result<Initramfs> {
        let tree = ModuleTree::open(&self.tools.uml_modules)?;
        let modules = tree.resolve(&["virtio_balloon"])?;
        let out = self
            .tools
            .cache_dir
            .join("initramfs")
            .join(format!("uml-{}.cpio", self.tools.uml_release));
        InitramfsBuilder::new(&self.tools.busybox, &self.workload)
            .modules(modules)
            .write_to(&out)
    }

    /// Builds `<cache>/initramfs/qemu-<release>.cpio` for the cloud kernel: busybox, the workload,
    /// and the kernel's `virtio_pci` and `virtio_balloon` with their dependencies.
    pub fn qemu_initramfs(&self) -> Result<Initramfs> {
        let kernel = self.tools.cloud_kernel.as_ref().ok_or_else(|| Error::Missing {
            what: "Debian's cloud kernel".into(),
            fix: "set up with SetupOptions { peer: true, .. } or run scripts/linux-setup.sh --peer".into(),
        })?;
        let tree = ModuleTree::open(&kernel.modules)?;
        let modules = tree.resolve(QEMU_GUEST_MODULES)?;
        let out = self
            .tools
            .cache_dir
            .join("initramfs")
            .join(format!("qemu-{}.cpio", kernel.release));
        InitramfsBuilder::new(&self.tools.busybox, &self.workload)
            .modules(modules)
            .write_to(&out)
    }

    /// A UML configuration with defaults (256 MiB, scenario `boot`, no balloon).
    pub fn uml(&self, initrd: &Initramfs) -> UmlConfig {
        UmlConfig::new(&self.tools, &initrd.path)
    }

    /// A QEMU configuration with defaults (2 GiB, 1 vCPU, free page reporting on).
    pub fn qemu(&self, initrd: &Initramfs) -> Result<QemuConfig> {
        QemuConfig::new(&self.tools, &initrd.path)
    }
}

impl UmlConfig {
    /// Boots this configuration (shorthand for [`uml::Uml::boot`]).
    pub fn boot(&self) -> Result<uml::Uml> {
        uml::Uml::boot(self)
    }
}

impl QemuConfig {
    /// Boots this configuration (shorthand for [`qemu::Qemu::boot`]).
    pub fn boot(&self) -> Result<qemu::Qemu> {
        qemu::Qemu::boot(self)
    }
}
