//! Host setup: finding (and, as root, installing) what the harness needs.
//!
//! | need | from | used for |
//! |---|---|---|
//! | `/usr/bin/linux.uml`, `/usr/lib/uml/modules/<ver>` | apt `user-mode-linux` | the UML guest and its `virtio_balloon.ko` |
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
    /// Install what is missing (as root), fetch the cloud kernel. `false`: only check.
    pub install: bool,
    /// Cache directory (see [`default_cache_dir`]).
    pub cache_dir: PathBuf,
}

impl Default for SetupOptions {
    fn default() -> Self {
        SetupOptions {
            peer: false,
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

/// The host tools found.
#[derive(Debug, Clone)]
pub struct HostTools {
    /// `linux.uml`.
    pub linux_uml: PathBuf,
    /// UML kernel release (`linux.uml --version`), e.g. `6.1.176`.
    pub uml_release: String,
    /// `/usr/lib/uml/modules/<release>`.
    pub uml_modules: PathBuf,
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
    /// The apt package that provides it; `None` for the cloud kernel (fetched, not installed).
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

fn uml_modules_dir(release: Option<&str>) -> Option<PathBuf> {
    let base = Path::new("/usr/lib/uml/modules");
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
    let linux_uml = which("linux.uml");
    let release = linux_uml.as_deref().and_then(uml_release);
    let uml_modules = uml_modules_dir(release.as_deref()).filter(|d| {
        [
            "kernel/drivers/virtio/virtio_balloon.ko",
            "kernel/drivers/virtio/virtio_balloon.ko.xz",
        ]
        .iter()
        .any(|m| d.join(m).exists())
    });
    if linux_uml.is_none() || uml_modules.is_none() {
        missing.push(Missing {
            what: "User-Mode Linux (linux.uml and its virtio_balloon.ko)".into(),
            package: Some("user-mode-linux"),
        });
    }
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
    let uml_modules = uml_modules.unwrap();
    let uml_release = release.unwrap_or_else(|| {
        uml_modules
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    });
    Ok(HostTools {
        linux_uml: linux_uml.unwrap(),
        uml_release,
        uml_modules,
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
        .arg(SETUP_SCRIPT)
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
        .arg(QEMU_SETUP_SCRIPT)
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
