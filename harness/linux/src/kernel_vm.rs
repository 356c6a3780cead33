//! prezero's own guest kernel (`kernel/`, built by `scripts/kernel-build.sh`) under QEMU: every
//! frame of the VM from a `prezero-mm` zone, the shared balloon driver over virtio-pci, against
//! QEMU's own `virtio-balloon-pci` or `prezero serve` behind `vhost-user-test-device-pci`.
//!
//! ```text
//! qemu-system-x86_64 -M pc,memory-backend=mem -accel tcg -m 512M -smp 1 -nographic -no-reboot
//!     -nic none -object memory-backend-memfd,id=mem,size=512M,share=on
//!     -device isa-debug-exit,iobase=0xf4,iosize=4
//!     -kernel prezero-kernel -append 'prezero.scenario=balloon prezero.check=1 ...'
//!     <the balloon's arguments, as for a Linux guest: QemuBalloon::args>
//! ```
//!
//! The kernel prints `PREZERO event=NAME key=value ...` lines on COM1 (the console module
//! parses them as for the Linux guests) and ends the run through ACPI (QEMU exits 0) or, on a
//! failure, through `isa-debug-exit` (QEMU exits `2 * code + 1`). Its command line words are in
//! `kernel/src/run.rs`; a run boots to `kmain` in well under a second under TCG.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::{io_err, Error, Result};
use crate::qemu::{monitor_args, Accel, QemuBalloon};
use crate::vm::GuestProcess;

/// The repository root (the harness is `harness/linux` in it).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds the kernel with `scripts/kernel-build.sh` (release; cargo makes it a no-op when
/// nothing changed) and returns the image's path.
pub fn build_kernel() -> Result<PathBuf> {
    let script = repo_root().join("scripts/kernel-build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(format!("running {}", script.display())))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("kernel="))
        .map(PathBuf::from);
    match path {
        Some(p) if out.status.success() && p.is_file() => Ok(p),
        _ => Err(Error::Missing {
            what: "the prezero kernel image".into(),
            fix: format!(
                "scripts/kernel-build.sh failed ({}); its output:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        }),
    }
}

/// How the kernel ended, from QEMU's exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelExit {
    /// ACPI power-off: the run succeeded.
    Success,
    /// `isa-debug-exit` with this code (2: setup failed, 3: panic, 4: a known-zero block was
    /// not zero, 5: a CPU exception).
    Failed(i32),
    /// QEMU ended some other way (killed, or its own error).
    Other(Option<i32>),
}

impl KernelExit {
    /// Interprets QEMU's exit code.
    pub fn from_code(code: Option<i32>) -> KernelExit {
        match code {
            Some(0) => KernelExit::Success,
            Some(c) if c % 2 == 1 && c > 1 => KernelExit::Failed((c - 1) / 2),
            c => KernelExit::Other(c),
        }
    }
}

/// How to boot the kernel.
#[derive(Debug, Clone)]
pub struct KernelVmConfig {
    /// `qemu-system-x86_64` (>= 10.2 for the vhost-user device).
    pub qemu: PathBuf,
    /// The kernel image ([`build_kernel`]).
    pub kernel: PathBuf,
    /// The accelerator ([`detect_accel`]).
    pub accel: Accel,
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// The balloon device.
    pub balloon: QemuBalloon,
    /// Kernel command line words (`prezero.scenario=balloon`, `prezero.check=1`, ...).
    pub append: Vec<String>,
    /// A human monitor on this Unix socket (QEMU's `balloon` command for its own device).
    pub monitor: Option<PathBuf>,
}

impl KernelVmConfig {
    /// QEMU's arguments.
    pub fn args(&self) -> Vec<String> {
        let mem = format!("{}M", self.mem_mib);
        let mut args: Vec<String> = [
            "-M",
            "pc,memory-backend=mem",
            "-accel",
            self.accel.name(),
            "-m",
            &mem,
            "-smp",
            "1",
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=4",
        ]
        .map(String::from)
        .into();
        if let Some(m) = &self.monitor {
            args.extend(monitor_args(m));
        }
        args.extend([
            "-kernel".into(),
            self.kernel.display().to_string(),
            "-append".into(),
            self.append.join(" "),
        ]);
        args.extend(self.balloon.args());
        args
    }

    /// Starts QEMU.
    pub fn boot(&self) -> Result<GuestProcess> {
        let mut cmd = Command::new(&self.qemu);
        cmd.args(self.args()).stdin(Stdio::null());
        GuestProcess::spawn("QEMU (prezero kernel)", cmd, Vec::new())
    }
}

/// KVM if it runs the kernel's `boot` scenario to a clean exit within 3 s (0.5 s under TCG), else TCG.
/// `$PREZERO_QEMU_ACCEL` (`kvm` or `tcg`) overrides.
pub fn detect_accel(qemu: &Path, kernel: &Path) -> Accel {
    match std::env::var("PREZERO_QEMU_ACCEL").as_deref() {
        Ok("kvm") => return Accel::Kvm,
        Ok("tcg") => return Accel::Tcg,
        _ => {}
    }
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !kvm {
        return Accel::Tcg;
    }
    let cfg = KernelVmConfig {
        qemu: qemu.to_path_buf(),
        kernel: kernel.to_path_buf(),
        accel: Accel::Kvm,
        mem_mib: 128,
        balloon: QemuBalloon::Own {
            free_page_reporting: false,
            deflate_on_oom: false,
        },
        append: vec!["prezero.scenario=boot".into()],
        monitor: None,
    };
    let Ok(mut vm) = cfg.boot() else {
        return Accel::Tcg;
    };
    let ok = vm
        .run_to_exit(Duration::from_secs(3))
        .is_ok_and(|o| KernelExit::from_code(o.exit_code) == KernelExit::Success);
    vm.shutdown();
    if ok {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(KernelExit::from_code(Some(0)), KernelExit::Success);
        assert_eq!(KernelExit::from_code(Some(9)), KernelExit::Failed(4));
        assert_eq!(KernelExit::from_code(Some(1)), KernelExit::Other(Some(1)));
        assert_eq!(KernelExit::from_code(None), KernelExit::Other(None));
    }

    #[test]
    fn command_line() {
        let cfg = KernelVmConfig {
            qemu: "q".into(),
            kernel: "/k".into(),
            accel: Accel::Tcg,
            mem_mib: 512,
            balloon: QemuBalloon::vhost_user("/b.sock"),
            append: vec!["prezero.check=1".into(), "prezero.wait=30".into()],
            monitor: None,
        };
        assert_eq!(
            cfg.args().join(" "),
            "-M pc,memory-backend=mem -accel tcg -m 512M -smp 1 -nographic -no-reboot -nic none \
             -object memory-backend-memfd,id=mem,size=512M,share=on -device isa-debug-exit,iobase=0xf4,iosize=4 \
             -kernel /k -append prezero.check=1 prezero.wait=30 -chardev socket,id=balloon,path=/b.sock \
             -device vhost-user-test-device-pci,chardev=balloon,virtio-id=5,num_vqs=5,vq_size=128,config_size=16"
        );
    }
}
