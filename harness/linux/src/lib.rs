//! # prezero-linux-harness: the Linux-guest interop and comparison harness
//!
//! Runs the **stock Linux `virtio_balloon` driver** against a virtio-balloon device: under
//! User-Mode Linux (UML, Debian's `user-mode-linux`: the system's 6.1, or forky's 7.x from the
//! cache, see [`setup::UmlKernelChoice`]) attached to prezero's vhost-user daemon
//! (`virtio_uml.device=SOCKET:5`), and under QEMU (>= 10.2, KVM or TCG) with
//! Debian's cloud kernel: attached to the same daemon through QEMU's generic vhost-user device,
//! or with QEMU's own virtio-balloon, the peer to compare with.
//!
//! **What it is:** test and measurement infrastructure. The Linux interop suite
//! (`tests/linux_uml.rs` here, a test of the root package), `prezero linux` and
//! `prezero bench linux` are built on it. **What it is not:** product. No crate under
//! `crates/` depends on it, and it depends on none of them: it talks to the daemon only as a
//! process (`prezero serve`) and over its sockets, as any VMM would.
//!
//! ## Parts
//!
//! | module | what |
//! |---|---|
//! | [`setup`] | check for / install (apt, as root) `user-mode-linux`, `busybox-static`, `cpio`, and for the peer `qemu-system-x86` plus Debian's cloud kernel (downloaded and unpacked into the cache, not installed) |
//! | [`workload`] | the guest workload program (`src/bin/prezero-workload.rs`), built static with `rustc` at run time |
//! | [`initramfs`], [`cpio`], [`modules`], [`elf`] | a newc initramfs with busybox, kernel modules (+ dependencies), the workload and `/init` |
//! | [`scenario`] | what the guest runs, chosen on the kernel command line (`prezero.scenario=...`) |
//! | [`uml`], [`qemu`], [`vm`], [`console`] | booting the VMs, console capture with timeouts, every pid recorded and killed on drop |
//! | [`backend`] | the vhost-user backend as a process of its own (`prezero serve`): started before the guest, probed for CPU, descriptors and mappings |
//! | [`scratch`], [`session`] | short-named scratch directories for sockets and logs; the cleanup of an interrupted command (VMs, backends, scratch) |
//! | [`procs`], [`measure`], [`mod@bench`], [`balloon_cycle`] | host memory / CPU probes, sampling, curve analysis, the peer comparison's runs and its timed balloon inflate / deflate (the CLI draws the table and chart) |
//!
//! Everything it builds or downloads lives in its cache directory ([`setup::default_cache_dir`]:
//! `$PREZERO_LINUX_CACHE`, else `target/prezero-linux` for the clone's own binaries and tests,
//! else the XDG cache directory `~/.cache/prezero/linux`), never committed.
//!
//! ## Use
//!
//! ```no_run
//! use prezero_linux_harness::{Harness, Scenario, SetupOptions};
//! use std::time::Duration;
//!
//! // Check/install the tools, build the workload (cached in the cache directory).
//! let h = Harness::new(&SetupOptions::default())?;
//! let initrd = h.uml_initramfs()?;
//! // Boot UML; add `.balloon_socket(path)` to attach `prezero serve --socket path`.
//! let mut vm = h.uml(&initrd).scenario(Scenario::checksum(16)).boot()?;
//! let out = vm.run_to_exit(Duration::from_secs(60))?;
//! assert_eq!(out.event("checksum").unwrap().get("status"), Some("ok"));
//! drop(vm); // kills every UML process that is left
//! # Ok::<(), prezero_linux_harness::Error>(())
//! ```
//!
//! The QEMU peer: `Harness::new(&SetupOptions { peer: true, ..Default::default() })`, then
//! [`bench::bench_qemu`] with [`Harness::qemu`]`(&h.qemu_initramfs()?)`.
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
//!   touch ~360 MiB/s.
//! - `prezero bench linux` (256 MiB `alloc-free`, 2 GiB guests, 15 s wait), two runs:
//!
//!   | peer | idle MiB | peak MiB | after MiB | s to return | s to settle | device CPU s/GiB |
//!   |---|---|---|---|---|---|---|
//!   | qemu | 246.0-246.2 | 502.3-502.6 | 274.3-274.6 | none | 1.31-1.38 | 0.00-0.04 |
//!   | prezero | 64.9-65.1 | 317.6-317.9 | 73.6-73.9 | none (2.18 in an earlier run at 70.5 MiB after) | 2.10-2.11 | 0.227-0.235 |
//!
//!   Neither comes back within 10% of idle in most runs. QEMU: the cloud kernel keeps part of
//!   the freed THPs on its per-cpu free lists (`pcp_pages` 2964 -> 12079), which reporting
//!   never sees. UML (no THP): the per-cpu lists hold only ~1.3 MiB; the ~9 MiB left are free
//!   pieces smaller than a pageblock (Linux reports only whole 4 MiB pageblocks), around the
//!   workload's page tables and slab; against UML's small idle figure (65 MiB) that is just
//!   over 10%. Device CPU: prezero serve's `vring_worker` spends ~0.055 s per 244 MiB, i.e.
//!   ~0.23 s/GiB, the cost of `fallocate(PUNCH_HOLE)` freeing 4 KiB tmpfs pages (`prezero
//!   bench report` measures the raw syscall at ~5.5 GiB/s = 0.18 s/GiB on a memfd). QEMU's
//!   `MADV_DONTNEED` of 2 MiB THPs is below the noise of its idle TCG guest (~0.007 CPU s/s).
//!   Both return their memory at Linux's pace (a reporting pass 2 s after frees).
//!
//! ## What the stock driver does against `prezero serve` (tests/linux_uml.rs checks it)
//!
//! - vhost-user (`virtio_uml`): protocol features `REPLY_ACK | BACKEND_REQ | CONFIG` (0x228)
//!   out of those offered, an ack asked for every message; `SET_FEATURES` is sent **twice** at
//!   probe: first with `PAGE_POISON` (0x130000037), then, after the balloon driver's
//!   `validate` dropped it because the guest does not poison free pages, without
//!   (0x130000027): a device must go by the last one. `SET_MEM_TABLE` pads to two regions
//!   (the relay trims it), `GET_CONFIG` always reads from offset 0.
//! - Features: `MUST_TELL_HOST`, `STATS_VQ`, `DEFLATE_ON_OOM`, `REPORTING`, plus
//!   `INDIRECT_DESC`, `EVENT_IDX`, `VERSION_1`. The proposed `DEVICE_INIT_REPORTED` and
//!   `DEVICE_INIT_ON_INFLATE` (bits 6, 7) are offered and silently not acked: the proposal
//!   is backward compatible with the stock driver. Queue numbering is dense for every offer
//!   tried (all; reporting without stats: reporting is queue 2; stats without reporting;
//!   neither).
//! - Inflate/deflate: one device-readable buffer of at most 256 PFNs (1 MiB) per request, one
//!   request at a time (~0.14 ms each: 768 MiB in 0.11 s), `actual` written after each.
//!   With a non-zero target at probe the driver inflates before `/init` runs. With
//!   `DEFLATE_ON_OOM` the balloon stays in `MemTotal` (only `MemFree` drops); without it
//!   `MemTotal` drops by exactly the balloon. At device removal (poweroff) the driver deflates
//!   the whole balloon.
//! - Deflate-on-OOM: the OOM notifier gives back 256 pages per OOM event; an 80 MiB workload
//!   in a 128 MiB guest with a 64 MiB balloon completes (12288 pages deflated) and the target
//!   is not re-approached until the next config change. Without the feature the OOM killer
//!   ends it.
//! - Statistics: one buffer at probe, then one each time the device hands it back; 8 tags
//!   (no hugetlb in UML); `free_memory`, `total_memory`, `available_memory` equal the guest's
//!   `MemFree`, `MemTotal`, `MemAvailable` read at the same moment.
//! - Reporting: one chain per pass of up to 32 device-writable buffers, each one pageblock
//!   (order 10, 4 MiB, in UML), through an indirect descriptor table whenever it has more
//!   than one buffer; the used length is ignored. A pass runs ~2 s after frees, and only while
//!   free memory stays above the low watermark plus 32 pageblocks (128 MiB here,
//!   `page_reporting_process_zone`): a 128 MiB guest never reports. At boot the first passes
//!   report nearly all free memory (~1.7 GiB of a 2 GiB guest).
//! - The daemon killed under the guest: `virtio_uml` warns `read returned 0` (about 20 times)
//!   and unregisters the device. With an empty balloon the guest runs on and powers off
//!   normally; with pages in the balloon the removal waits forever for a deflate nobody
//!   answers: the workload still finishes, but the ballooned memory never returns and
//!   `poweroff` hangs (the harness kills UML). There is no reconnect.
//! - The guest killed mid-inflate: the daemon drops the connection, releases its descriptors,
//!   threads and mapping of the guest memory, and serves the next guest on the same socket.
//! - Linux 7.2.7 (Debian forky's UML, [`UmlKernelChoice::Linux7`]; `tests/linux_uml7.rs`):
//!   protocol features 0x229 (the 6.1 set plus `MQ`), then `GET_QUEUE_NUM`: with fewer than
//!   five queues the probe fails with -22 after `SET_FEATURES` (so the daemon's negotiated
//!   features alone do not show a bound driver; the stats buffer does). Balloon features as
//!   6.1, but not `INDIRECT_DESC`: the first `SET_FEATURES` has it (0x130000037), the last
//!   does not (0x120000027), so its reporting chains of up to 32 pageblocks (4 MiB, ~2 s after
//!   frees) are direct descriptors. Powering off with pages in the balloon hangs: after
//!   `reboot: Power down` no request reaches the daemon and UML idles on its signalfd (6.1
//!   deflates first); with an empty balloon it exits 0. No xstate workaround needed on AMX.
#![deny(missing_docs)]

pub mod backend;
pub mod balloon_cycle;
pub mod bench;
pub mod console;
pub mod cpio;
pub mod elf;
mod error;
pub mod initramfs;
pub mod kernel_vm;
pub mod measure;
pub mod modules;
pub mod procs;
pub mod qemu;
pub mod scenario;
pub mod scratch;
pub mod session;
pub mod setup;
pub mod uml;
pub mod uml_xstate;
pub mod vm;
pub mod workload;

use std::path::PathBuf;

pub use error::{Error, Result};
pub use initramfs::Initramfs;
pub use measure::PeerResult;
pub use scenario::Scenario;
pub use setup::{HostTools, SetupOptions, UmlKernel, UmlKernelChoice};

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

    /// The harness for a QEMU test suite (`suite` names it in the message), without installing
    /// anything; `None`, with what is missing and the fix on stderr, where the QEMU peer is not
    /// set up (`scripts/linux-setup.sh --peer`, `scripts/qemu-setup.sh`: CI runs both).
    ///
    /// # Panics
    /// If the tools are there but the harness cannot be set up (the workload does not build).
    pub fn for_qemu_tests(suite: &str) -> Option<Harness> {
        let opts = SetupOptions {
            peer: true,
            install: false,
            ..Default::default()
        };
        if let Err(missing) = setup::check(&opts) {
            let what: Vec<_> = missing.iter().map(|m| m.what.as_str()).collect();
            eprintln!(
                "skipping {suite}: missing {} (fix: scripts/linux-setup.sh --peer && \
                 scripts/qemu-setup.sh)",
                what.join(", ")
            );
            return None;
        }
        Some(Harness::new(&opts).expect("setting up the harness"))
    }

    /// The UML kernel `choice`, or what is missing and the fix.
    pub fn uml_kernel(&self, choice: UmlKernelChoice) -> Result<&UmlKernel> {
        self.tools.uml_kernel(choice).ok_or_else(|| Error::Missing {
            what: format!(
                "User-Mode Linux 7.x under {}/uml7",
                self.tools.cache_dir.display()
            ),
            fix: "set up with SetupOptions { uml7: true, .. } or run scripts/linux-setup.sh --uml7"
                .into(),
        })
    }

    /// Builds `<cache>/initramfs/uml-<release>.cpio` for the system's UML (see
    /// [`Harness::uml_initramfs_for`]).
    pub fn uml_initramfs(&self) -> Result<Initramfs> {
        self.uml_initramfs_for(&self.tools.uml)
    }

    /// Builds `<cache>/initramfs/uml-<release>.cpio`: busybox, the workload and `kernel`'s own
    /// `virtio_balloon.ko`.
    pub fn uml_initramfs_for(&self, kernel: &UmlKernel) -> Result<Initramfs> {
        let tree = ModuleTree::open(&kernel.modules)?;
        let modules = tree.resolve(&["virtio_balloon"])?;
        let out = self
            .tools
            .cache_dir
            .join("initramfs")
            .join(format!("uml-{}.cpio", kernel.release));
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

    /// A configuration of the system's UML with defaults (256 MiB, scenario `boot`, no
    /// balloon); `initrd` from [`Harness::uml_initramfs`].
    pub fn uml(&self, initrd: &Initramfs) -> UmlConfig {
        self.uml_on(&self.tools.uml, initrd)
    }

    /// A configuration of `kernel` with defaults; `initrd` from [`Harness::uml_initramfs_for`]
    /// with the same kernel.
    pub fn uml_on(&self, kernel: &UmlKernel, initrd: &Initramfs) -> UmlConfig {
        UmlConfig::new(&self.tools, kernel, &initrd.path)
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
