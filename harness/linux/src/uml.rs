//! Booting User-Mode Linux (`linux.uml`, either [`UmlKernel`]: the system's 6.1 or Debian's
//! 7.x) with the harness initramfs (built from the same kernel's modules).
//!
//! Command line (see UML-NOTES):
//!
//! ```text
//! [setarch x86_64 -R] linux.uml mem=<N>M initrd=<cpio> umid=<id> uml_dir=<scratch dir>
//!     con=null con0=null,fd:1 [virtio_uml.device=<socket>:5] prezero.scenario=... </dev/null
//! ```
//!
//! The console goes to stdout. With a balloon socket the vhost-user backend must already be
//! listening (UML does not reconnect); without one, or with nobody listening, the device probe
//! fails (`probe of virtio-uml.0 failed with error -2` / `-111`) and the guest boots on without
//! the balloon. Guest memory is a deleted tmpfs file (`O_TMPFILE` on `/dev/shm`) that
//! [`UmlMemoryProbe`] finds through `/proc/<pid>/fd`. UML forks helpers; [`GuestProcess`] records
//! them all and kills them on drop.

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::{io_err, Error, Result};
use crate::procs::{find_uml_memory_file, UmlMemoryProbe};
use crate::scenario::Scenario;
use crate::scratch::ScratchDir;
use crate::setup::{HostTools, UmlKernel};
use crate::vm::GuestProcess;

/// virtio device id of the balloon.
pub const VIRTIO_ID_BALLOON: u32 = 5;

/// How to boot UML.
#[derive(Debug, Clone)]
pub struct UmlConfig {
    /// The kernel (`linux.uml`).
    pub kernel: UmlKernel,
    /// The initramfs (with modules of `kernel`'s build).
    pub initrd: PathBuf,
    /// Guest memory in MiB (`mem=`), default 256.
    pub mem_mib: u64,
    /// The scenario the initramfs runs.
    pub scenario: Scenario,
    /// The vhost-user balloon socket (`virtio_uml.device=SOCKET:5`), if any.
    pub balloon_socket: Option<PathBuf>,
    /// `setarch` to run UML with ASLR off (fixed memory layout), if wanted.
    pub setarch: Option<PathBuf>,
    /// More kernel arguments.
    pub extra_args: Vec<String>,
    /// Parent of the per-boot scratch directory (`uml_dir`).
    pub run_dir: PathBuf,
}

impl UmlConfig {
    /// Defaults from the host tools for `kernel`: 256 MiB, scenario `boot`, no balloon,
    /// `setarch -R` when available, scratch under `<cache>/run`.
    pub fn new(tools: &HostTools, kernel: &UmlKernel, initrd: &Path) -> UmlConfig {
        UmlConfig {
            kernel: kernel.clone(),
            initrd: initrd.to_path_buf(),
            mem_mib: 256,
            scenario: Scenario::boot(),
            balloon_socket: None,
            setarch: tools.setarch.clone(),
            extra_args: Vec::new(),
            run_dir: tools.cache_dir.join("run"),
        }
    }

    /// Sets the guest memory size.
    pub fn mem_mib(mut self, mib: u64) -> Self {
        self.mem_mib = mib;
        self
    }

    /// Sets the scenario.
    pub fn scenario(mut self, s: Scenario) -> Self {
        self.scenario = s;
        self
    }

    /// Attaches the virtio-balloon served by a vhost-user backend at `socket`.
    pub fn balloon_socket(mut self, socket: impl Into<PathBuf>) -> Self {
        self.balloon_socket = Some(socket.into());
        self
    }

    /// Adds a kernel argument.
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.extra_args.push(a.into());
        self
    }

    /// The program and arguments for one boot with `umid` and `uml_dir`.
    pub fn command(&self, umid: &str, uml_dir: &Path) -> Result<(PathBuf, Vec<String>)> {
        let mut args = Vec::new();
        let program = match &self.setarch {
            Some(setarch) => {
                args.extend([
                    std::env::consts::ARCH.to_owned(),
                    "-R".to_owned(),
                    self.kernel.linux.display().to_string(),
                ]);
                setarch.clone()
            }
            None => self.kernel.linux.clone(),
        };
        args.push(format!("mem={}M", self.mem_mib));
        args.push(format!("initrd={}", self.initrd.display()));
        args.push(format!("umid={umid}"));
        args.push(format!("uml_dir={}", uml_dir.display()));
        args.push("con=null".into());
        args.push("con0=null,fd:1".into());
        if let Some(sock) = &self.balloon_socket {
            args.push(format!(
                "virtio_uml.device={}:{VIRTIO_ID_BALLOON}",
                sock.display()
            ));
        }
        args.extend(self.extra_args.iter().cloned());
        args.extend(self.scenario.kernel_args()?);
        Ok((program, args))
    }
}

/// Waits until `path` exists and is a Unix socket (a vhost-user backend such as `prezero serve
/// --socket PATH` has bound it). It does not connect: a vhost-user backend serves one
/// frontend, and a probing connection could take that place. UML does not reconnect, so boot
/// only once this returns.
pub fn wait_for_socket_file(path: &Path, timeout: Duration) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let deadline = Instant::now() + timeout;
    loop {
        if std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("the vhost-user socket {} to appear", path.display()),
                secs: timeout.as_secs_f64(),
                tail: String::new(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running UML guest; derefs to its [`GuestProcess`] (console, pids, wait, shutdown).
pub struct Uml {
    vm: GuestProcess,
    umid: String,
}

impl Uml {
    /// Boots UML per `cfg` (returns once the process is started; read the console to follow).
    pub fn boot(cfg: &UmlConfig) -> Result<Uml> {
        // Short: UML puts its mconsole socket at <uml_dir>/<umid>/mconsole (108-byte limit).
        let uml_dir = ScratchDir::new(&cfg.run_dir, "pz")?;
        let umid = uml_dir.name();
        let (program, args) = cfg.command(&umid, uml_dir.path())?;
        let mut cmd = Command::new(program);
        cmd.args(&args);
        if crate::uml_xstate::needed(&cfg.kernel) {
            crate::uml_xstate::apply(&mut cmd).map_err(|e| Error::Io {
                context: "building the UML xstate seccomp filter".into(),
                source: std::io::Error::other(e.to_string()),
            })?;
        }
        let vm = GuestProcess::spawn("User-Mode Linux", cmd, vec![uml_dir])?;
        Ok(Uml { vm, umid })
    }

    /// The UML instance id.
    pub fn umid(&self) -> &str {
        &self.umid
    }

    /// A memory probe over the guest-memory file's allocated blocks.
    pub fn memory_probe(&self) -> UmlMemoryProbe {
        UmlMemoryProbe::new(self.vm.pid())
    }

    /// `/proc/<pid>/fd/<n>` of the guest-memory file, once UML created it.
    pub fn memory_file(&self) -> Result<Option<PathBuf>> {
        find_uml_memory_file(self.vm.pid())
            .map_err(io_err(format!("reading /proc/{}/fd", self.vm.pid())))
    }
}

impl Deref for Uml {
    type Target = GuestProcess;
    fn deref(&self) -> &GuestProcess {
        &self.vm
    }
}

impl DerefMut for Uml {
    fn deref_mut(&mut self) -> &mut GuestProcess {
        &mut self.vm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_a_socket_file() {
        let dir = ScratchDir::temp("sock").unwrap();
        let sock = dir.join("s.sock");
        let plain = dir.join("plain");
        std::fs::write(&plain, b"").unwrap();
        assert!(wait_for_socket_file(&sock, Duration::from_millis(30)).is_err());
        assert!(wait_for_socket_file(&plain, Duration::from_millis(30)).is_err());
        let s2 = sock.clone();
        let binder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            std::os::unix::net::UnixListener::bind(&s2).unwrap()
        });
        wait_for_socket_file(&sock, Duration::from_secs(30)).unwrap();
        drop(binder.join().unwrap());
    }

    #[test]
    fn command_line() {
        let cfg = UmlConfig {
            kernel: UmlKernel {
                choice: crate::setup::UmlKernelChoice::System,
                linux: "/usr/bin/linux.uml".into(),
                release: "6.1.176".into(),
                modules: "/usr/lib/uml/modules/6.1.176".into(),
            },
            initrd: "/c/uml.cpio".into(),
            mem_mib: 512,
            scenario: Scenario::checksum(8),
            balloon_socket: Some("/tmp/b.sock".into()),
            setarch: Some("/usr/bin/setarch".into()),
            extra_args: vec!["quiet".into()],
            run_dir: "/r".into(),
        };
        let (prog, args) = cfg.command("u1", Path::new("/r/u1")).unwrap();
        assert_eq!(prog, Path::new("/usr/bin/setarch"));
        assert_eq!(
            &args[..3],
            [std::env::consts::ARCH, "-R", "/usr/bin/linux.uml"]
        );
        let rest = &args[3..];
        assert_eq!(
            rest,
            [
                "mem=512M",
                "initrd=/c/uml.cpio",
                "umid=u1",
                "uml_dir=/r/u1",
                "con=null",
                "con0=null,fd:1",
                "virtio_uml.device=/tmp/b.sock:5",
                "quiet",
                "prezero.scenario=checksum",
                "prezero.mib=8"
            ]
        );
        let (prog, args) = UmlConfig {
            setarch: None,
            balloon_socket: None,
            ..cfg
        }
        .command("u", Path::new("/d"))
        .unwrap();
        assert_eq!(prog, Path::new("/usr/bin/linux.uml"));
        assert!(!args.iter().any(|a| a.starts_with("virtio_uml")));
    }
}
