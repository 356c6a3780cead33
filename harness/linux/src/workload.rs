//! The guest workload program (`src/bin/prezero-workload.rs`) and building it.
//!
//! **Why Rust, and why plain `rustc`:** the workload is one std-only file (raw `mmap`/`munmap`
//! via `extern "C"`, no crates), so a static binary is one command:
//! `rustc -O -C target-feature=+crt-static --target x86_64-unknown-linux-gnu` (glibc's static
//! `libc.a` is part of `libc6-dev`, which any Rust toolchain on Debian already needs). No cargo
//! invocation means no nested build lock, no second dependency tree built with other
//! `RUSTFLAGS`, and ~1 s of compile time. The source is embedded in this library
//! ([`WORKLOAD_SOURCE`]) so the harness only needs `rustc`, not the source tree; it is also a
//! `[[bin]]` of this crate, so `cargo build`/`clippy` keep checking it. A C program would need
//! `gcc` and hand-written parsing and formatting for no gain.
//!
//! The binary is cached as `<cache>/workload/prezero-workload-<hash>`, where the hash covers the
//! source and `rustc -vV`; it is built to a temporary name and renamed, so concurrent builders
//! never see a partial file.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::elf;
use crate::error::{io_err, Error, Result};
use crate::scratch::ScratchDir;

/// The workload's source, compiled at run time.
pub const WORKLOAD_SOURCE: &str = include_str!("bin/prezero-workload.rs");

/// FNV-1a 64: a stable content hash for cache keys.
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        h = (h ^ 0xff).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A unique temporary name next to `path` (for write-then-rename).
pub(crate) fn temp_sibling(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

/// Builds (or reuses) the static workload binary in `cache_dir`; returns its path.
pub fn build_workload(cache_dir: &Path) -> Result<PathBuf> {
    // One build at a time in this process; other processes are kept apart by the unique
    // scratch directory below (rustc names its intermediate files after the output).
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let rustc = std::env::var_os("RUSTC")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("rustc"));
    let version = Command::new(&rustc)
        .arg("-vV")
        .output()
        .map_err(|e| Error::Missing {
            what: format!("the Rust compiler `{}` ({e})", rustc.display()),
            fix: "install Rust (rustup) or set RUSTC to a rustc path".into(),
        })?;
    let hash = fnv1a(&[WORKLOAD_SOURCE.as_bytes(), &version.stdout]);
    let dir = cache_dir.join("workload");
    let out = dir.join(format!("prezero-workload-{hash:016x}"));
    if out.is_file() {
        return Ok(out);
    }
    fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let src = dir.join(format!("prezero-workload-{hash:016x}.rs"));
    let src_tmp = temp_sibling(&src);
    fs::write(&src_tmp, WORKLOAD_SOURCE)
        .map_err(io_err(format!("writing {}", src_tmp.display())))?;
    fs::rename(&src_tmp, &src).map_err(io_err(format!("renaming to {}", src.display())))?;
    // Removed on every path out (drop).
    let scratch = ScratchDir::new(&dir, ".build-")?;
    let tmp = scratch.join("prezero-workload");
    let cmd = [
        "--edition=2021",
        "--crate-name=prezero_workload",
        "-O",
        "-C",
        "target-feature=+crt-static",
        "-C",
        "strip=symbols",
        "--target",
        "x86_64-unknown-linux-gnu",
    ];
    tracing::info!(out = %out.display(), "building the static guest workload");
    let res = Command::new(&rustc)
        .args(cmd)
        .arg(&src)
        .arg("-o")
        .arg(&tmp)
        .output()
        .map_err(io_err("running rustc"))?;
    if !res.status.success() {
        let stderr = String::from_utf8_lossy(&res.stderr);
        let hint = if stderr.contains("cannot find -lc") || stderr.contains("libc.a") {
            " (static glibc is missing: apt-get install libc6-dev)"
        } else {
            ""
        };
        return Err(Error::Command {
            command: format!(
                "{} {} {} -o {}{hint}",
                rustc.display(),
                cmd.join(" "),
                src.display(),
                tmp.display()
            ),
            status: res.status.to_string(),
            stderr: stderr
                .chars()
                .rev()
                .take(2000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect(),
        });
    }
    let bytes = fs::read(&tmp).map_err(io_err(format!("reading {}", tmp.display())))?;
    if elf::has_interp(&bytes)? {
        return Err(Error::invalid(
            "workload binary",
            "rustc produced a dynamically linked binary despite +crt-static",
        ));
    }
    fs::rename(&tmp, &out).map_err(io_err(format!("renaming to {}", out.display())))?;
    Ok(out)
}
