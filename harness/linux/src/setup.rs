//! Host setup: finding (and, as root, installing) what the harness needs.
//!
//! | need | from | used for |
//! |---|---|---|
//! | `/usr/bin/linux.uml`, `/usr/lib/uml/modules/<ver>` | apt `user-mode-linux` | the UML guest and its `virtio_balloon.ko` ([`UmlKernelChoice::System`]) |
//! | UML 7.x (`uml7` only) | Debian forky's prebuilt `user-mode-linux` with its glibc, unpacked into `<cache>/uml7/prefix/` and `patchelf`'d to that glibc by `scripts/linux-setup.sh --uml7` | the newest stock `virtio_uml` and `virtio_balloon` ([`UmlKernelChoice::Linux7`]) |
//! | a static `busybox` | apt `busybox-static` | the initramfs userland |
//! | `cpio` | apt `cpio` | cross-checking archives (the harness writes cpio itself) |
//! | `qemu-system-x86_64` >= 10.2 (peer only) | the system's, else Debian's newest build unpacked into `<cache>/qemu/` by `scripts/qemu-setup.sh` | QEMU with its own balloon and with `prezero serve` behind `vhost-user-test-device-pci` |
//! | Debian's cloud kernel (peer only) | `apt-get download linux-image-<ver>-cloud-amd64`, unpacked with `dpkg-deb -x` into `<cache>/cloud-kernel/<package>/` | the QEMU guest kernel and its modules |
//!
//! The installing is done by `scripts/linux-setup.sh` and (QEMU) `scripts/qemu-setup.sh`,
//! embedded here as [`SETUP_SCRIPT`] and [`QEMU_SETUP_SCRIPT`] so that CI and the library do
//! exactly the same thing. [`ensure`] checks first and runs the
//! script only when something is missing and it can help: as root, or (not root) when only the
//! cloud kernel is missing, since fetching it needs no root. Otherwise the error names the fix.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::elf;
use crate::error::{io_err, Error, Result};

/// `scripts/linux-setup.sh`, the one installer (CI calls the file, the library runs this copy).
pub const SETUP_SCRIPT: &str = include_str!("../../../scripts/linux-setup.sh");

/// `scripts/qemu-setup.sh`: a QEMU >= 10.2 (no root needed).
pub const QEMU_SETUP_SCRIPT: &str = include_str!("../../../scripts/qemu-setup.sh");

/// `scripts/debian-prefix.sh`, which both scripts source from their own directory; run from
/// this embedded text they find it defined already (`embedded` puts it in front).
pub const DEBIAN_PREFIX_SCRIPT: &str = include_str!("../../../scripts/debian-prefix.sh");

/// A setup script's text as `bash -c` runs it: the shared function first.
fn embedded(script: &str) -> String {
    format!("{DEBIAN_PREFIX_SCRIPT}\n{script}")
}

/// Where downloads and build products live (never committed):
///
/// 1. `$PREZERO_LINUX_CACHE`, if set;
/// 2. `$CARGO_TARGET_DIR/prezero-linux`, if set;
/// 3. `<workspace>/target/prezero-linux` when the running executable lies in that workspace's
///    `target/` (a `cargo run`, `cargo test` or `target/release/prezero` in the clone: CI and
///    the tests keep their cache there);
/// 4. otherwise (an installed or copied binary) the XDG cache directory:
///    `$XDG_CACHE_HOME/prezero/linux`, else `$HOME/.cache/prezero/linux`;
/// 5. with neither variable set, `<temp dir>/prezero-linux-<uid>`.
pub fn default_cache_dir() -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|d| !d.is_empty());
    if let Some(d) = env("PREZERO_LINUX_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = env("CARGO_TARGET_DIR") {
        return PathBuf::from(d).join("prezero-linux");
    }
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace_target = crate_dir
        .parent()
        .and_then(Path::parent)
        .unwrap_or(crate_dir)
        .join("target");
    let exe = std::env::current_exe().and_then(fs::canonicalize).ok();
    let target = fs::canonicalize(&workspace_target).ok();
    cache_dir_for(
        exe.as_deref(),
        target.as_deref(),
        env("XDG_CACHE_HOME").map(PathBuf::from),
        env("HOME").map(PathBuf::from),
    )
}

/// [`default_cache_dir`] after the two variables: `exe` and `workspace_target` canonical (or
/// `None` when they do not exist).
fn cache_dir_for(
    exe: Option<&Path>,
    workspace_target: Option<&Path>,
    xdg_cache_home: Option<PathBuf>,
    home: Option<PathBuf>,
) -> PathBuf {
    if let (Some(exe), Some(target)) = (exe, workspace_target) {
        if exe.starts_with(target) {
            return target.join("prezero-linux");
        }
    }
    if let Some(d) = xdg_cache_home {
        return d.join("prezero/linux");
    }
    if let Some(h) = home {
        return h.join(".cache/prezero/linux");
    }
    // SAFETY: getuid(2) cannot fail.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir().join(format!("prezero-linux-{uid}"))
}

/// What to check and install.
#[derive(Debug, Clone)]
pub struct SetupOptions {
    /// Also the QEMU peer: `qemu-system-x86` and the cloud kernel.
    pub peer: bool,
    /// Also User-Mode Linux 7.x ([`UmlKernelChoice::Linux7`]), fetched into `<cache>/uml7/`.
    pub uml7: bool,
    /// Install what is missing (as root), fetch the cloud kernel. `false`: only check.
    pub install: bool,
    /// Cache directory (see [`default_cache_dir`]).
    pub cache_dir: PathBuf,
}

impl Default for SetupOptions {
    fn default() -> Self {
        SetupOptions {
            peer: false,
            uml7: false,
            install: true,
            cache_dir: default_cache_dir(),
        }
    }
}

/// Debian's cloud kernel, unpacked in the cache.
#[derive(Debug, Clone)]
pub struct CloudKernel {
    /// The package it came from, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub package: String,
    /// Kernel release, e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    /// `boot/vmlinuz-<release>`.
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>`.
    pub modules: PathBuf,
}

/// Which User-Mode Linux kernel a guest boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UmlKernelChoice {
    /// The system's `user-mode-linux` package (`/usr/bin/linux.uml`; Debian 12: 6.1.176).
    #[default]
    System,
    /// Debian's prebuilt `user-mode-linux` 7.x from a newer suite (forky: 7.2.7), run from
    /// `<cache>/uml7/` (`scripts/linux-setup.sh --uml7`). Its `virtio_uml` negotiates the MQ
    /// protocol feature and asks for the backend's queue count (`GET_QUEUE_NUM`), which must
    /// cover the balloon driver's five queue slots.
    Linux7,
}

/// One User-Mode Linux kernel: the binary and the modules of the same build.
#[derive(Debug, Clone)]
pub struct UmlKernel {
    /// Which one.
    pub choice: UmlKernelChoice,
    /// `linux.uml`.
    pub linux: PathBuf,
    /// Kernel release (`linux.uml --version`), e.g. `6.1.176`, `7.2.7`.
    pub release: String,
    /// `.../uml/modules/<release>`: `virtio_balloon.ko` must come from here (a module of another
    /// build is refused: "invalid module format").
    pub modules: PathBuf,
}

impl UmlKernel {
    /// The release's `(major, minor)`, e.g. `(7, 2)`.
    pub fn version(&self) -> (u32, u32) {
        let key = version_key(&self.release);
        let part = |i: usize| {
            key.get(i)
                .map_or(0, |&v| u32::try_from(v).unwrap_or(u32::MAX))
        };
        (part(0), part(1))
    }
}

/// The host tools found.
#[derive(Debug, Clone)]
pub struct HostTools {
    /// The system's User-Mode Linux ([`UmlKernelChoice::System`]).
    pub uml: UmlKernel,
    /// User-Mode Linux 7.x ([`UmlKernelChoice::Linux7`]), when set up (`SetupOptions::uml7`).
    pub uml7: Option<UmlKernel>,
    /// A statically linked busybox.
    pub busybox: PathBuf,
    /// `cpio`.
    pub cpio: PathBuf,
    /// `setarch` (util-linux), if present: runs UML with a fixed memory layout.
    pub setarch: Option<PathBuf>,
    /// `qemu-system-x86_64` >= 10.2 (peer only): the system's or `<cache>/qemu/bin/`'s.
    pub qemu: Option<PathBuf>,
    /// The cloud kernel (peer only).
    pub cloud_kernel: Option<CloudKernel>,
    /// The cache directory.
    pub cache_dir: PathBuf,
}

impl HostTools {
    /// The UML kernel `choice`, if set up.
    pub fn uml_kernel(&self, choice: UmlKernelChoice) -> Option<&UmlKernel> {
        match choice {
            UmlKernelChoice::System => Some(&self.uml),
            UmlKernelChoice::Linux7 => self.uml7.as_ref(),
        }
    }
}

/// Whether the process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Looks `name` up in `$PATH` (then `/usr/sbin`, `/sbin`, `/usr/bin`, `/bin`).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// One missing thing: what, and which apt package (or script flag) brings it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// What is missing.
    pub what: String,
    /// The apt package that provides it; `None` for what is fetched into the cache, not
    /// installed (the cloud kernel, QEMU, UML 7.x).
    pub package: Option<&'static str>,
}

fn uml_release(linux_uml: &Path) -> Option<String> {
    let out = Command::new(linux_uml)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!v.is_empty() && !v.contains(char::is_whitespace)).then_some(v)
}

fn uml_modules_dir(base: &Path, release: Option<&str>) -> Option<PathBuf> {
    if let Some(r) = release {
        let d = base.join(r);
        if d.is_dir() {
            return Some(d);
        }
    }
    let mut dirs: Vec<PathBuf> = fs::read_dir(base)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.pop()
}

/// Whether `modules` holds `virtio_balloon.ko` (plain or compressed).
fn has_balloon_module(modules: &Path) -> bool {
    [
        "kernel/drivers/virtio/virtio_balloon.ko",
        "kernel/drivers/virtio/virtio_balloon.ko.xz",
    ]
    .iter()
    .any(|m| modules.join(m).exists())
}

/// The UML kernel `linux` with its modules under `modules_base`, if both are there and it runs.
fn uml_kernel_at(
    choice: UmlKernelChoice,
    linux: PathBuf,
    modules_base: &Path,
) -> Option<UmlKernel> {
    let release = uml_release(&linux);
    let modules =
        uml_modules_dir(modules_base, release.as_deref()).filter(|d| has_balloon_module(d))?;
    let release = release.unwrap_or_else(|| {
        modules
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    });
    Some(UmlKernel {
        choice,
        linux,
        release,
        modules,
    })
}

/// The UML 7.x that `scripts/linux-setup.sh --uml7` unpacked into `<cache>/uml7/`.
pub fn find_uml7(cache_dir: &Path) -> Option<UmlKernel> {
    let root = cache_dir.join("uml7");
    if !root.join(".complete").is_file() {
        return None;
    }
    let prefix = root.join("prefix");
    uml_kernel_at(
        UmlKernelChoice::Linux7,
        prefix.join("usr/bin/linux.uml"),
        &prefix.join("usr/lib/uml/modules"),
    )
}

fn is_static_elf(path: &Path) -> bool {
    fs::read(path)
        .ok()
        .and_then(|d| elf::has_interp(&d).ok())
        .map(|interp| !interp)
        .unwrap_or(false)
}

/// The newest cloud kernel unpacked under `<cache>/cloud-kernel/`.
pub fn find_cloud_kernel(cache_dir: &Path) -> Option<CloudKernel> {
    let mut found = Vec::new();
    for pkg in fs::read_dir(cache_dir.join("cloud-kernel")).ok()?.flatten() {
        let package = pkg.file_name().to_string_lossy().into_owned();
        if package.starts_with('.') {
            continue;
        }
        for f in fs::read_dir(pkg.path().join("boot"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = f.file_name().to_string_lossy().into_owned();
            if let Some(release) = name.strip_prefix("vmlinuz-") {
                let modules = pkg.path().join("lib/modules").join(release);
                if modules.is_dir() {
                    found.push(CloudKernel {
                        package: package.clone(),
                        release: release.to_owned(),
                        vmlinuz: f.path(),
                        modules,
                    });
                }
            }
        }
    }
    found.sort_by_key(|k| version_key(&k.release));
    found.pop()
}

fn version_key(release: &str) -> Vec<u64> {
    release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// `(major, minor)` of `qemu --version`.
fn qemu_version(qemu: &Path) -> Option<(u32, u32)> {
    let out = Command::new(qemu)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.strip_prefix("QEMU emulator version ")?;
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// A QEMU that has the user-creatable generic vhost-user device: the system's when it is
/// >= 10.2, else the one `scripts/qemu-setup.sh` unpacked into `<cache>/qemu/`.
pub fn find_qemu(cache_dir: &Path) -> Option<PathBuf> {
    let recent = |q: &Path| qemu_version(q).is_some_and(|v| v >= (10, 2));
    if let Some(system) = which("qemu-system-x86_64").filter(|q| recent(q)) {
        return Some(system);
    }
    let private = cache_dir.join("qemu/bin/qemu-system-x86_64");
    (cache_dir.join("qemu/.complete").is_file() && recent(&private)).then_some(private)
}

/// Checks everything; returns the tools, or the list of what is missing.
pub fn check(opts: &SetupOptions) -> std::result::Result<HostTools, Vec<Missing>> {
    let mut missing = Vec::new();
    let uml = which("linux.uml").and_then(|linux| {
        uml_kernel_at(
            UmlKernelChoice::System,
            linux,
            Path::new("/usr/lib/uml/modules"),
        )
    });
    if uml.is_none() {
        missing.push(Missing {
            what: "User-Mode Linux (linux.uml and its virtio_balloon.ko)".into(),
            package: Some("user-mode-linux"),
        });
    }
    let uml7 = if opts.uml7 {
        let found = find_uml7(&opts.cache_dir);
        if found.is_none() {
            missing.push(Missing {
                what: format!(
                    "User-Mode Linux 7.x under {}/uml7",
                    opts.cache_dir.display()
                ),
                package: None,
            });
        }
        found
    } else {
        None
    };
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .chain(which("busybox"))
        .find(|p| is_static_elf(p));
    if busybox.is_none() {
        missing.push(Missing {
            what: "a statically linked busybox".into(),
            package: Some("busybox-static"),
        });
    }
    let cpio = which("cpio");
    if cpio.is_none() {
        missing.push(Missing {
            what: "cpio".into(),
            package: Some("cpio"),
        });
    }
    let (mut qemu, mut cloud_kernel) = (None, None);
    if opts.peer {
        qemu = find_qemu(&opts.cache_dir);
        if qemu.is_none() {
            missing.push(Missing {
                what: "qemu-system-x86_64 >= 10.2 (vhost-user-test-device-pci)".into(),
                package: None,
            });
        }
        cloud_kernel = find_cloud_kernel(&opts.cache_dir);
        if cloud_kernel.is_none() {
            missing.push(Missing {
                what: format!(
                    "Debian's cloud kernel under {}/cloud-kernel",
                    opts.cache_dir.display()
                ),
                package: None,
            });
        }
    }
    if !missing.is_empty() {
        return Err(missing);
    }
    Ok(HostTools {
        uml: uml.unwrap(),
        uml7,
        busybox: busybox.unwrap(),
        cpio: cpio.unwrap(),
        setarch: which("setarch"),
        qemu,
        cloud_kernel,
        cache_dir: opts.cache_dir.clone(),
    })
}

fn script_args(opts: &SetupOptions) -> Vec<String> {
    let mut args = Vec::new();
    if opts.peer {
        args.push("--peer".to_owned());
    }
    if opts.uml7 {
        args.push("--uml7".to_owned());
    }
    args.push("--cache".to_owned());
    args.push(opts.cache_dir.display().to_string());
    args
}

fn missing_error(missing: &[Missing], opts: &SetupOptions) -> Error {
    let pkgs: Vec<&str> = missing.iter().filter_map(|m| m.package).collect();
    let what = missing
        .iter()
        .map(|m| m.what.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let mut script = format!("scripts/linux-setup.sh {}", script_args(opts).join(" "));
    if opts.peer {
        script.push_str(&format!(
            " && scripts/qemu-setup.sh --cache {}",
            opts.cache_dir.display()
        ));
    }
    // The scripts are in the clone; an installed `prezero` carries copies and runs them itself
    // when allowed to install (as root, without --no-install).
    let fix = if pkgs.is_empty() {
        format!("run `{script}` from the clone (no root needed for the downloads)")
    } else if is_root() {
        format!(
            "run `{script}` from the clone (or `apt-get install {}`)",
            pkgs.join(" ")
        )
    } else {
        format!(
            "run `sudo {script}` from the clone (or `sudo apt-get install {}`), or this command \
             as root: it installs them itself",
            pkgs.join(" ")
        )
    };
    Error::Missing { what, fix }
}

/// Runs the embedded setup script with `opts` (its progress goes to our stderr).
pub fn run_setup_script(opts: &SetupOptions) -> Result<()> {
    fs::create_dir_all(&opts.cache_dir)
        .map_err(io_err(format!("creating {}", opts.cache_dir.display())))?;
    let args = script_args(opts);
    tracing::info!(?args, "running scripts/linux-setup.sh");
    let status = Command::new("bash")
        .arg("-c")
        .arg(embedded(SETUP_SCRIPT))
        .arg("linux-setup.sh")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .map_err(io_err("running bash for scripts/linux-setup.sh"))?;
    if !status.success() {
        return Err(Error::Command {
            command: format!("scripts/linux-setup.sh {}", args.join(" ")),
            status: status.to_string(),
            stderr: "see its messages above".into(),
        });
    }
    Ok(())
}

/// Runs the embedded `scripts/qemu-setup.sh` (its progress goes to our stderr).
pub fn run_qemu_setup_script(cache_dir: &Path) -> Result<()> {
    fs::create_dir_all(cache_dir).map_err(io_err(format!("creating {}", cache_dir.display())))?;
    let cache = cache_dir.display().to_string();
    tracing::info!(%cache, "running scripts/qemu-setup.sh");
    let status = Command::new("bash")
        .arg("-c")
        .arg(embedded(QEMU_SETUP_SCRIPT))
        .args(["qemu-setup.sh", "--cache", &cache])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .map_err(io_err("running bash for scripts/qemu-setup.sh"))?;
    if !status.success() {
        return Err(Error::Command {
            command: format!("scripts/qemu-setup.sh --cache {cache}"),
            status: status.to_string(),
            stderr: "see its messages above".into(),
        });
    }
    Ok(())
}

/// Checks, installs what is missing when it can (see the module docs), checks again.
pub fn ensure(opts: &SetupOptions) -> Result<HostTools> {
    match check(opts) {
        Ok(tools) => Ok(tools),
        Err(missing) => {
            let only_download = missing.iter().all(|m| m.package.is_none());
            if !opts.install || !(is_root() || only_download) {
                return Err(missing_error(&missing, opts));
            }
            let qemu_only = missing.iter().all(|m| m.what.starts_with("qemu-system"));
            if !qemu_only {
                run_setup_script(opts)?;
            }
            if opts.peer && find_qemu(&opts.cache_dir).is_none() {
                run_qemu_setup_script(&opts.cache_dir)?;
            }
            check(opts).map_err(|still| missing_error(&still, opts))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_is_in_the_clone_only_for_its_own_binaries() {
        let target = Path::new("/src/prezero/target");
        let xdg = Some(PathBuf::from("/home/u/.xdg-cache"));
        let home = Some(PathBuf::from("/home/u"));
        let in_clone = Path::new("/src/prezero/target/release/prezero");
        let installed = Path::new("/home/u/.cargo/bin/prezero");
        assert_eq!(
            cache_dir_for(Some(in_clone), Some(target), xdg.clone(), home.clone()),
            target.join("prezero-linux")
        );
        assert_eq!(
            cache_dir_for(Some(installed), Some(target), xdg.clone(), home.clone()),
            Path::new("/home/u/.xdg-cache/prezero/linux")
        );
        // The clone is gone (or never was on this machine).
        assert_eq!(
            cache_dir_for(Some(installed), None, None, home),
            Path::new("/home/u/.cache/prezero/linux")
        );
        assert!(cache_dir_for(None, None, None, None).starts_with(std::env::temp_dir()));
    }

    #[test]
    fn version_order() {
        assert!(version_key("6.1.0-56-cloud-amd64") > version_key("6.1.0-50-cloud-amd64"));
        assert!(version_key("6.12.0-1-cloud-amd64") > version_key("6.1.0-56-cloud-amd64"));
    }

    #[test]
    fn missing_error_names_the_fix() {
        let opts = SetupOptions {
            peer: true,
            uml7: false,
            install: false,
            cache_dir: "/tmp/x".into(),
        };
        let e = missing_error(
            &[Missing {
                what: "busybox".into(),
                package: Some("busybox-static"),
            }],
            &opts,
        )
        .to_string();
        assert!(e.contains("apt-get install busybox-static"), "{e}");
        assert!(
            e.contains("scripts/linux-setup.sh --peer --cache /tmp/x && scripts/qemu-setup.sh --cache /tmp/x"),
            "{e}"
        );
    }

    #[test]
    fn script_is_embedded() {
        assert!(SETUP_SCRIPT.starts_with("#!/usr/bin/env bash"));
        assert!(SETUP_SCRIPT.contains("dpkg-deb -x"));
        assert!(QEMU_SETUP_SCRIPT.contains("vhost-user-test-device-pci"));
        assert!(DEBIAN_PREFIX_SCRIPT.contains("debian_prefix()"));
    }

    /// Run from the embedded text (no scripts/ directory beside `$0`), both scripts get past
    /// sourcing debian-prefix.sh: an unknown argument is then their own usage error (exit 2),
    /// not a failed `.` (exit 1).
    #[test]
    fn embedded_scripts_find_the_shared_fetch_defined() {
        for (name, script) in [
            ("linux-setup.sh", SETUP_SCRIPT),
            ("qemu-setup.sh", QEMU_SETUP_SCRIPT),
        ] {
            let out = Command::new("bash")
                .arg("-c")
                .arg(embedded(script))
                .args([name, "--no-such-option"])
                .current_dir(std::env::temp_dir())
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
            assert!(stderr.contains("unknown"), "{name}: {stderr}");
        }
    }

    #[test]
    fn finds_the_unpacked_uml7_only_once_complete() {
        let scratch = crate::scratch::ScratchDir::temp("u7").unwrap();
        let dir = scratch.path();
        let prefix = dir.join("uml7/prefix");
        let virtio = prefix.join("usr/lib/uml/modules/7.2.7/kernel/drivers/virtio");
        fs::create_dir_all(&virtio).unwrap();
        fs::create_dir_all(prefix.join("usr/bin")).unwrap();
        // Not a runnable kernel: the release then comes from the modules directory.
        fs::write(prefix.join("usr/bin/linux.uml"), b"").unwrap();
        fs::write(virtio.join("virtio_balloon.ko"), b"").unwrap();
        assert!(find_uml7(dir).is_none(), "an unfinished fetch is not used");
        fs::write(dir.join("uml7/.complete"), b"forky\n").unwrap();
        let k = find_uml7(dir).unwrap();
        assert_eq!(k.choice, UmlKernelChoice::Linux7);
        assert_eq!(k.release, "7.2.7");
        assert_eq!(k.version(), (7, 2));
        assert!(k.modules.ends_with("uml/modules/7.2.7"));
        fs::remove_file(virtio.join("virtio_balloon.ko")).unwrap();
        assert!(find_uml7(dir).is_none(), "no balloon module, no kernel");
    }

    #[test]
    fn finds_unpacked_cloud_kernel() {
        let scratch = crate::scratch::ScratchDir::temp("ck").unwrap();
        let dir = scratch.path();
        for (pkg, rel) in [
            ("linux-image-6.1.0-50-cloud-amd64", "6.1.0-50-cloud-amd64"),
            ("linux-image-6.1.0-56-cloud-amd64", "6.1.0-56-cloud-amd64"),
        ] {
            let base = dir.join("cloud-kernel").join(pkg);
            fs::create_dir_all(base.join("boot")).unwrap();
            fs::create_dir_all(base.join("lib/modules").join(rel)).unwrap();
            fs::write(base.join("boot").join(format!("vmlinuz-{rel}")), b"").unwrap();
        }
        let k = find_cloud_kernel(dir).unwrap();
        assert_eq!(k.release, "6.1.0-56-cloud-amd64");
        assert!(k.vmlinuz.ends_with("boot/vmlinuz-6.1.0-56-cloud-amd64"));
    }
}
