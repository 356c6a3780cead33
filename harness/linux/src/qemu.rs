//! Booting Debian's cloud kernel under QEMU (software emulation) with QEMU's own
//! virtio-balloon: the peer prezero is compared with.
//!
//! ```text
//! qemu-system-x86_64 -M pc -accel tcg -m 2048 -smp 1 -nographic -no-reboot -nic none
//!     -name prezero-peer,debug-threads=on -kernel vmlinuz -initrd qemu.cpio
//!     -append 'console=ttyS0 panic=-1 quiet prezero.scenario=...'
//!     -device virtio-balloon-pci,free-page-reporting=on
//! ```
//!
//! `/dev/kvm` cannot run stock kernels on this machine, hence `-accel tcg`. The serial console
//! is QEMU's stdout. Guest RAM is private anonymous memory of the QEMU process; QEMU discards
//! reported ranges with `madvise(MADV_DONTNEED)`, so its `VmRSS` ([`RssProbe`]) is the host
//! memory measure. The cloud kernel has `virtio`, `virtio_ring`, `virtio_pci` (+
//! `virtio_pci_modern_dev`, `virtio_pci_legacy_dev`) and `virtio_balloon` as modules; the
//! initramfs carries them, resolved from each module's `.modinfo`.

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};
use crate::procs::{ProcessCpu, RssProbe};
use crate::scenario::Scenario;
use crate::setup::HostTools;
use crate::vm::GuestProcess;

/// Modules the QEMU guest loads (dependencies are added automatically).
pub const QEMU_GUEST_MODULES: &[&str] = &["virtio_pci", "virtio_balloon"];

/// How to boot QEMU.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// The kernel image (`vmlinuz`).
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// Guest memory in MiB (2048).
    pub mem_mib: u64,
    /// vCPUs (1).
    pub smp: u32,
    /// The scenario.
    pub scenario: Scenario,
    /// `free-page-reporting=on` (true).
    pub free_page_reporting: bool,
    /// `deflate-on-oom=on` (false).
    pub deflate_on_oom: bool,
    /// `quiet` on the kernel command line (true: the serial console is slow under TCG).
    pub quiet: bool,
    /// More kernel arguments.
    pub extra_append: Vec<String>,
    /// More QEMU arguments.
    pub extra_args: Vec<String>,
}

impl QemuConfig {
    /// Defaults from the host tools (which must include the peer: `qemu` and `cloud_kernel`).
    pub fn new(tools: &HostTools, initrd: &Path) -> Result<QemuConfig> {
        let missing = || Error::Missing {
            what: "the QEMU peer (qemu-system-x86_64 and the cloud kernel)".into(),
            fix:
                "run scripts/linux-setup.sh --peer (or set up with SetupOptions { peer: true, .. })"
                    .into(),
        };
        let qemu = tools.qemu.clone().ok_or_else(missing)?;
        let kernel = tools
            .cloud_kernel
            .as_ref()
            .ok_or_else(missing)?
            .vmlinuz
            .clone();
        Ok(QemuConfig {
            qemu,
            kernel,
            initrd: initrd.to_path_buf(),
            mem_mib: 2048,
            smp: 1,
            scenario: Scenario::boot(),
            free_page_reporting: true,
            deflate_on_oom: false,
            quiet: true,
            extra_append: Vec::new(),
            extra_args: Vec::new(),
        })
    }

    /// Sets the scenario.
    pub fn scenario(mut self, s: Scenario) -> Self {
        self.scenario = s;
        self
    }

    /// Sets the guest memory size.
    pub fn mem_mib(mut self, mib: u64) -> Self {
        self.mem_mib = mib;
        self
    }

    /// QEMU's arguments.
    pub fn args(&self) -> Result<Vec<String>> {
        let mut append = vec!["console=ttyS0".to_owned(), "panic=-1".to_owned()];
        if self.quiet {
            append.push("quiet".into());
        }
        append.extend(self.extra_append.iter().cloned());
        append.extend(self.scenario.kernel_args()?);
        let onoff = |b: bool| if b { "on" } else { "off" };
        let mut args: Vec<String> = ["-M", "pc", "-accel", "tcg", "-m"]
            .map(String::from)
            .to_vec();
        args.push(self.mem_mib.to_string());
        args.extend(["-smp".into(), self.smp.to_string()]);
        args.extend(
            [
                "-nographic",
                "-no-reboot",
                "-nic",
                "none",
                "-name",
                "prezero-peer,debug-threads=on",
            ]
            .map(String::from),
        );
        args.extend([
            "-kernel".into(),
            self.kernel.display().to_string(),
            "-initrd".into(),
            self.initrd.display().to_string(),
        ]);
        args.extend(["-append".into(), append.join(" ")]);
        args.extend([
            "-device".into(),
            format!(
                "virtio-balloon-pci,free-page-reporting={},deflate-on-oom={}",
                onoff(self.free_page_reporting),
                onoff(self.deflate_on_oom)
            ),
        ]);
        args.extend(self.extra_args.iter().cloned());
        Ok(args)
    }
}

/// A running QEMU guest; derefs to its [`GuestProcess`].
pub struct Qemu {
    vm: GuestProcess,
}

impl Qemu {
    /// Starts QEMU per `cfg`.
    pub fn boot(cfg: &QemuConfig) -> Result<Qemu> {
        let mut cmd = Command::new(&cfg.qemu);
        cmd.args(cfg.args()?);
        Ok(Qemu {
            vm: GuestProcess::spawn("QEMU", cmd, Vec::new())?,
        })
    }

    /// QEMU's RSS: the host memory backing guest RAM (plus QEMU's own, roughly constant).
    pub fn memory_probe(&self) -> RssProbe {
        RssProbe { pid: self.vm.pid() }
    }

    /// QEMU's CPU time (all threads: under TCG the device runs in the vCPU thread).
    pub fn cpu_probe(&self) -> ProcessCpu {
        ProcessCpu { pid: self.vm.pid() }
    }
}

impl Deref for Qemu {
    type Target = GuestProcess;
    fn deref(&self) -> &GuestProcess {
        &self.vm
    }
}

impl DerefMut for Qemu {
    fn deref_mut(&mut self) -> &mut GuestProcess {
        &mut self.vm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line() {
        let cfg = QemuConfig {
            qemu: "q".into(),
            kernel: "/k/vmlinuz".into(),
            initrd: "/i.cpio".into(),
            mem_mib: 2048,
            smp: 1,
            scenario: Scenario::alloc_free(256),
            free_page_reporting: true,
            deflate_on_oom: false,
            quiet: true,
            extra_append: vec![],
            extra_args: vec![],
        };
        let a = cfg.args().unwrap().join(" ");
        assert_eq!(
            a,
            "-M pc -accel tcg -m 2048 -smp 1 -nographic -no-reboot -nic none -name prezero-peer,debug-threads=on -kernel /k/vmlinuz -initrd /i.cpio \
             -append console=ttyS0 panic=-1 quiet prezero.scenario=alloc-free prezero.mib=256 \
             -device virtio-balloon-pci,free-page-reporting=on,deflate-on-oom=off"
        );
    }
}
