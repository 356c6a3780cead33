//! Booting Debian's cloud kernel under QEMU with a virtio-balloon: QEMU's own
//! (`virtio-balloon-pci`, the peer prezero is compared with) or prezero's daemon behind QEMU's
//! generic vhost-user device (`vhost-user-test-device-pci`, user-creatable since QEMU 10.2).
//!
//! ```text
//! qemu-system-x86_64 -M pc,memory-backend=mem -accel tcg -m 2048M -smp 1 -nographic -no-reboot
//!     -nic none -name prezero-qemu,debug-threads=on
//!     -object memory-backend-memfd,id=mem,size=2048M,share=on
//!     -kernel vmlinuz -initrd qemu.cpio -append 'console=ttyS0 panic=-1 quiet prezero.scenario=...'
//!     # QEMU's own balloon:
//!     -device virtio-balloon-pci,free-page-reporting=on,deflate-on-oom=off
//!     # or prezero serve --socket SOCK:
//!     -chardev socket,id=balloon,path=SOCK[,reconnect-ms=1000]
//!     -device vhost-user-test-device-pci,chardev=balloon,virtio-id=5,num_vqs=5,vq_size=128,config_size=16
//! ```
//!
//! Guest RAM is a shared memfd for both devices: vhost-user needs it (the daemon maps the
//! same file), and QEMU's own balloon then discards reported ranges with
//! `fallocate(PUNCH_HOLE)` too, so both do the same work. The memfd's allocated blocks
//! ([`MemfdProbe`], found through `/proc/<pid>/fd`) are the host memory measure.
//!
//! - `num_vqs=5`: the Linux driver names five queue slots; the daemon sets up all five.
//! - `config_size=16`: the daemon's config space with `PAGE_POISON` offered (`num_pages`,
//!   `actual`, `free_page_hint_cmd_id`, `poison_val`); 8 when the daemon runs with
//!   `--no-page-poison`. QEMU reads that many bytes at start and writes all of them back
//!   whenever the guest writes `actual`.
//! - `vq_size`: one size for every queue, at most the daemon's maximum (256); the harness
//!   gives 128 ([`VHOST_USER_DEFAULT_VQ_SIZE`]), the size of QEMU's own balloon queues.
//! - Acceleration ([`Accel::detect`]): KVM when it can boot the kernel, else TCG. This
//!   machine's `/dev/kvm` exists but hangs before the kernel prints anything, so it is tried,
//!   not assumed from the file.
//! - The cloud kernel has `virtio`, `virtio_ring`, `virtio_pci` (+ `virtio_pci_modern_dev`,
//!   `virtio_pci_legacy_dev`) and `virtio_balloon` as modules; the initramfs carries them.
//! - QEMU's `balloon` monitor command drives only its own device; a generic vhost-user device
//!   is steered through the daemon's control socket.

use std::fs;
use std::io::Write;
use std::ops::{Deref, DerefMut};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{io_err, Error, Result};
use crate::procs::{allocated_bytes, MemoryProbe, ProcessCpu};
use crate::scenario::Scenario;
use crate::setup::HostTools;
use crate::vm::GuestProcess;

/// Modules the QEMU guest loads (dependencies are added automatically).
pub const QEMU_GUEST_MODULES: &[&str] = &["virtio_pci", "virtio_balloon"];

/// The largest ring the daemon accepts (`prezero serve`'s queue size).
pub const VHOST_USER_VQ_SIZE: u16 = 256;

/// The `vq_size` the harness gives QEMU's generic device: 128, the size of QEMU's own
/// virtio-balloon inflate, deflate and stats queues (`hw/virtio/virtio-balloon.c`), so both
/// QEMU rows of `prezero bench linux` give the guest the same rings. The ring size moves where
/// the guest's allocations land, and with them which 2 MiB pageblocks it can report: measured
/// 2026-11-30 (Debian's 6.1 cloud kernel, 2 GiB, 256 MiB allocated and freed, memfd blocks
/// 15 s after the free), 256 left guest-physical 0x2c20000-0x2e00000 resident in 3 of 3 runs
/// (159.7 MiB), 128 in none of 4 (157.8 MiB three times, as QEMU's own device, 163.1 once).
pub const VHOST_USER_DEFAULT_VQ_SIZE: u16 = 128;

/// Which virtio-balloon the guest gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QemuBalloon {
    /// QEMU's own `virtio-balloon-pci`.
    Own {
        /// `free-page-reporting=on`.
        free_page_reporting: bool,
        /// `deflate-on-oom=on`.
        deflate_on_oom: bool,
    },
    /// `vhost-user-test-device-pci` (virtio-id 5) on a vhost-user backend's socket.
    VhostUser {
        /// The backend's socket (`prezero serve --socket`).
        socket: PathBuf,
        /// `vq_size`: every queue's ring size.
        vq_size: u16,
        /// `config_size` in bytes (16; 8 with `--no-page-poison`).
        config_size: u32,
        /// `reconnect-ms` of the chardev: QEMU reconnects to a restarted backend.
        reconnect_ms: Option<u32>,
    },
}

impl QemuBalloon {
    /// prezero's daemon on `socket`, with the default ring and config sizes.
    pub fn vhost_user(socket: impl Into<PathBuf>) -> QemuBalloon {
        QemuBalloon::VhostUser {
            socket: socket.into(),
            vq_size: VHOST_USER_DEFAULT_VQ_SIZE,
            config_size: 16,
            reconnect_ms: None,
        }
    }

    /// QEMU's arguments for the device.
    pub fn args(&self) -> Vec<String> {
        let onoff = |b: bool| if b { "on" } else { "off" };
        match self {
            QemuBalloon::Own {
                free_page_reporting,
                deflate_on_oom,
            } => vec![
                "-device".into(),
                format!(
                    "virtio-balloon-pci,free-page-reporting={},deflate-on-oom={}",
                    onoff(*free_page_reporting),
                    onoff(*deflate_on_oom)
                ),
            ],
            QemuBalloon::VhostUser {
                socket,
                vq_size,
                config_size,
                reconnect_ms,
            } => {
                let mut chardev = format!("socket,id=balloon,path={}", socket.display());
                if let Some(ms) = reconnect_ms {
                    chardev.push_str(&format!(",reconnect-ms={ms}"));
                }
                vec![
                    "-chardev".into(),
                    chardev,
                    "-device".into(),
                    format!(
                        "vhost-user-test-device-pci,chardev=balloon,virtio-id=5,num_vqs=5,vq_size={vq_size},config_size={config_size}"
                    ),
                ]
            }
        }
    }
}

/// QEMU's accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization.
    Kvm,
    /// Software emulation (TCG): works everywhere, ~4 s to `/init` here.
    Tcg,
}

impl Accel {
    /// The `-accel` value.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// KVM if it boots `kernel` far enough to print its banner within 5 s, else TCG.
    /// `$PREZERO_QEMU_ACCEL` (`kvm` or `tcg`) overrides. The answer is cached per process.
    pub fn detect(qemu: &Path, kernel: &Path) -> Accel {
        use std::sync::OnceLock;
        static DETECTED: OnceLock<Accel> = OnceLock::new();
        match std::env::var("PREZERO_QEMU_ACCEL").as_deref() {
            Ok("kvm") => return Accel::Kvm,
            Ok("tcg") => return Accel::Tcg,
            _ => {}
        }
        *DETECTED.get_or_init(|| {
            let usable = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_ok()
                && kvm_boots(qemu, kernel);
            let accel = if usable { Accel::Kvm } else { Accel::Tcg };
            tracing::info!(accel = accel.name(), "QEMU accelerator");
            accel
        })
    }
}

/// Tries a KVM boot of `kernel` (no initrd, 256 MiB) and waits for `Linux version`.
fn kvm_boots(qemu: &Path, kernel: &Path) -> bool {
    let mut cmd = Command::new(qemu);
    cmd.args(["-M", "pc", "-accel", "kvm", "-m", "256", "-smp", "1"])
        .args(["-nographic", "-no-reboot", "-nic", "none", "-kernel"])
        .arg(kernel)
        .args(["-append", "console=ttyS0 earlyprintk=ttyS0 panic=-1"]);
    let Ok(mut vm) = GuestProcess::spawn("QEMU (KVM probe)", cmd, Vec::new()) else {
        return false;
    };
    let found = vm
        .console()
        .wait_for("the kernel banner", Duration::from_secs(5), |l| {
            l.text.contains("Linux version")
        })
        .is_ok();
    vm.shutdown();
    found
}

/// How to boot QEMU.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// `qemu-system-x86_64` (>= 10.2 for the vhost-user device: `scripts/qemu-setup.sh`).
    pub qemu: PathBuf,
    /// The kernel image (`vmlinuz`).
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// Guest memory in MiB (2048).
    pub mem_mib: u64,
    /// vCPUs (1).
    pub smp: u32,
    /// The accelerator.
    pub accel: Accel,
    /// The scenario.
    pub scenario: Scenario,
    /// The balloon device (QEMU's own with free page reporting, by default).
    pub balloon: QemuBalloon,
    /// `-no-reboot` (true): a guest reboot ends QEMU. False: the guest boots again.
    pub no_reboot: bool,
    /// A human monitor on this Unix socket (`system_reset`, `quit`, ...), if set.
    pub monitor: Option<PathBuf>,
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
        let missing = || {
            Error::Missing {
            what: "QEMU >= 10.2 and Debian's cloud kernel".into(),
            fix: "run scripts/linux-setup.sh --peer and scripts/qemu-setup.sh (or set up with SetupOptions { peer: true, .. })".into(),
        }
        };
        let qemu = tools.qemu.clone().ok_or_else(missing)?;
        let kernel = tools
            .cloud_kernel
            .as_ref()
            .ok_or_else(missing)?
            .vmlinuz
            .clone();
        let accel = Accel::detect(&qemu, &kernel);
        Ok(QemuConfig {
            qemu,
            kernel,
            initrd: initrd.to_path_buf(),
            mem_mib: 2048,
            smp: 1,
            accel,
            scenario: Scenario::boot(),
            balloon: QemuBalloon::Own {
                free_page_reporting: true,
                deflate_on_oom: false,
            },
            no_reboot: true,
            monitor: None,
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

    /// Sets the balloon device.
    pub fn balloon(mut self, balloon: QemuBalloon) -> Self {
        self.balloon = balloon;
        self
    }

    /// Attaches the generic vhost-user device to the backend on `socket`.
    pub fn balloon_socket(self, socket: impl Into<PathBuf>) -> Self {
        self.balloon(QemuBalloon::vhost_user(socket))
    }

    /// QEMU's arguments.
    pub fn args(&self) -> Result<Vec<String>> {
        let mut append = vec!["console=ttyS0".to_owned(), "panic=-1".to_owned()];
        if self.quiet {
            append.push("quiet".into());
        }
        append.extend(self.extra_append.iter().cloned());
        append.extend(self.scenario.kernel_args()?);
        let mem = format!("{}M", self.mem_mib);
        let mut args: Vec<String> = vec![
            "-M".into(),
            "pc,memory-backend=mem".into(),
            "-accel".into(),
            self.accel.name().into(),
            "-m".into(),
            mem.clone(),
            "-smp".into(),
            self.smp.to_string(),
            "-nographic".into(),
        ];
        if self.no_reboot {
            args.push("-no-reboot".into());
        }
        args.extend(["-nic", "none", "-name", "prezero-qemu,debug-threads=on"].map(String::from));
        args.extend([
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={mem},share=on"),
        ]);
        if let Some(m) = &self.monitor {
            args.extend(monitor_args(m));
        }
        args.extend([
            "-kernel".into(),
            self.kernel.display().to_string(),
            "-initrd".into(),
            self.initrd.display().to_string(),
        ]);
        args.extend(["-append".into(), append.join(" ")]);
        args.extend(self.balloon.args());
        args.extend(self.extra_args.iter().cloned());
        Ok(args)
    }
}

/// Allocated blocks of QEMU's guest-RAM memfd (`memory-backend-memfd`: the fd whose link
/// reads `/memfd:memory-backend-memfd (deleted)`): the host memory backing guest RAM, whoever faulted it
/// in (QEMU's vCPU or the vhost-user daemon), lowered by either's hole punching. Reads 0
/// until QEMU has created it.
#[derive(Debug, Clone)]
pub struct MemfdProbe {
    /// The QEMU process.
    pub pid: i32,
    file: Option<PathBuf>,
}

impl MemfdProbe {
    /// A probe for QEMU process `pid`.
    pub fn new(pid: i32) -> Self {
        MemfdProbe { pid, file: None }
    }

    /// `/proc/<pid>/fd/<n>` of the memfd, once QEMU has it.
    pub fn file(&mut self) -> std::io::Result<Option<&Path>> {
        if self.file.is_none() {
            for e in fs::read_dir(format!("/proc/{}/fd", self.pid))?.flatten() {
                let is_ram = fs::read_link(e.path()).is_ok_and(|t| {
                    t.to_string_lossy()
                        .starts_with("/memfd:memory-backend-memfd")
                });
                if is_ram {
                    self.file = Some(e.path());
                    break;
                }
            }
        }
        Ok(self.file.as_deref())
    }
}

impl MemoryProbe for MemfdProbe {
    fn read_mib(&mut self) -> std::io::Result<f64> {
        match self.file()? {
            None => Ok(0.0),
            Some(p) => Ok(allocated_bytes(p)? as f64 / (1024.0 * 1024.0)),
        }
    }
    fn describe(&self) -> String {
        format!(
            "allocated blocks of QEMU pid {}'s guest-RAM memfd",
            self.pid
        )
    }
}

/// QEMU's arguments for a human monitor listening on the Unix socket `socket`
/// (`-monitor unix:SOCKET,server=on,wait=off`), for [`monitor_command`].
pub fn monitor_args(socket: &Path) -> [String; 2] {
    [
        "-monitor".into(),
        format!("unix:{},server=on,wait=off", socket.display()),
    ]
}

/// Sends one command to a QEMU human monitor on `socket` (`-monitor unix:...`) and returns
/// its answer (the echo, the output, the next prompt).
pub fn monitor_command(socket: &Path, command: &str) -> Result<String> {
    let ctx = || format!("QEMU monitor {} ({command})", socket.display());
    let mut s = UnixStream::connect(socket).map_err(io_err(ctx()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io_err(ctx()))?;
    s.write_all(format!("{command}\n").as_bytes())
        .map_err(io_err(ctx()))?;
    // The monitor echoes the command and prompts again once it is done.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match std::io::Read::read(&mut s, &mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
        let text = String::from_utf8_lossy(&got);
        if text.matches("(qemu)").count() >= 2 {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&got).into_owned())
}

/// A running QEMU guest; derefs to its [`GuestProcess`].
pub struct Qemu {
    vm: GuestProcess,
}

impl Qemu {
    /// Starts QEMU per `cfg`.
    pub fn boot(cfg: &QemuConfig) -> Result<Qemu> {
        let mut cmd = Command::new(&cfg.qemu);
        cmd.args(cfg.args()?).stdin(Stdio::null());
        Ok(Qemu {
            vm: GuestProcess::spawn("QEMU", cmd, Vec::new())?,
        })
    }

    /// The host memory backing guest RAM: the memfd's allocated blocks.
    pub fn memory_probe(&self) -> MemfdProbe {
        MemfdProbe::new(self.vm.pid())
    }

    /// Sends one command to the human monitor (`system_reset`, `quit`, ...) and returns its
    /// answer. Needs [`QemuConfig::monitor`].
    pub fn monitor(&self, socket: &Path, command: &str) -> Result<String> {
        monitor_command(socket, command)
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
    fn command_lines() {
        let mut cfg = QemuConfig {
            qemu: "q".into(),
            kernel: "/k/vmlinuz".into(),
            initrd: "/i.cpio".into(),
            mem_mib: 2048,
            smp: 1,
            accel: Accel::Tcg,
            scenario: Scenario::alloc_free(256),
            balloon: QemuBalloon::Own {
                free_page_reporting: true,
                deflate_on_oom: false,
            },
            no_reboot: true,
            monitor: None,
            quiet: true,
            extra_append: vec![],
            extra_args: vec![],
        };
        let common = "-M pc,memory-backend=mem -accel tcg -m 2048M -smp 1 -nographic -no-reboot -nic none -name prezero-qemu,debug-threads=on \
             -object memory-backend-memfd,id=mem,size=2048M,share=on -kernel /k/vmlinuz -initrd /i.cpio \
             -append console=ttyS0 panic=-1 quiet prezero.scenario=alloc-free prezero.mib=256";
        assert_eq!(
            cfg.args().unwrap().join(" "),
            format!(
                "{common} -device virtio-balloon-pci,free-page-reporting=on,deflate-on-oom=off"
            )
        );
        cfg.balloon = QemuBalloon::vhost_user("/run/b.sock");
        assert_eq!(
            cfg.args().unwrap().join(" "),
            format!(
                "{common} -chardev socket,id=balloon,path=/run/b.sock \
                 -device vhost-user-test-device-pci,chardev=balloon,virtio-id=5,num_vqs=5,vq_size=128,config_size=16"
            )
        );
        if let QemuBalloon::VhostUser { reconnect_ms, .. } = &mut cfg.balloon {
            *reconnect_ms = Some(500);
        }
        assert!(cfg
            .args()
            .unwrap()
            .join(" ")
            .contains("path=/run/b.sock,reconnect-ms=500 "));
    }
}
