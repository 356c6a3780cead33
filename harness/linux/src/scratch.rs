//! Scratch directories: a run's sockets and logs, UML's per-boot `uml_dir`, a test's files.
//!
//! One helper for every scratch directory of the harness, its tests and the commands on top
//! of it. A [`ScratchDir`] is `<parent>/<prefix><pid>-<n>` (`n` counts up in this process),
//! created empty and removed with everything in it on drop.
//!
//! Why not `vmm_sys_util::tempdir::TempDir`: two things it cannot do. Names must stay short
//! and predictable, because sockets live in them and a Unix socket address holds 107 bytes
//! plus the NUL (UML also puts its `mconsole` socket at `<uml_dir>/<umid>/mconsole`, and the
//! umid is this directory's name); and a command that is interrupted exits without running
//! `Drop`, so every live directory is listed here for [`remove_all`] (called by
//! `session.rs`'s interrupt cleanup).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::error::{io_err, Result};

/// Longest socket path this crate lets callers build (Linux allows 107 bytes plus the NUL).
pub const MAX_SOCKET_PATH: usize = 100;

/// Longest socket file name [`ScratchDir::for_sockets`] leaves room for.
pub const MAX_SOCKET_NAME: usize = 16;

/// Every [`ScratchDir`] alive in this process.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// A directory of this process, removed (with its contents) on drop.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `<parent>/<prefix><pid>-<n>` (and `parent` if needed); a stale directory of that
    /// name (a pid reused after a crash) is removed first.
    pub fn new(parent: &Path, prefix: &str) -> Result<ScratchDir> {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = parent.join(format!("{prefix}{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(io_err(format!("creating {}", path.display())))?;
        live().push(path.clone());
        Ok(ScratchDir { path })
    }

    /// A directory for vhost-user and control sockets (file names up to [`MAX_SOCKET_NAME`]
    /// bytes) and logs: under `<cache_dir>/run`, or under the temp dir as `prezero-<prefix>...`
    /// when the former is too deep for a socket address (deep checkouts).
    pub fn for_sockets(cache_dir: &Path, prefix: &str) -> Result<ScratchDir> {
        let run = cache_dir.join("run");
        // `<prefix><pid>-<n>`: a pid has at most 7 digits, `n` stays short.
        let longest = run.as_os_str().len() + 1 + prefix.len() + 7 + 4 + 1 + MAX_SOCKET_NAME;
        if longest <= MAX_SOCKET_PATH {
            ScratchDir::new(&run, prefix)
        } else {
            ScratchDir::temp(prefix)
        }
    }

    /// A directory under the temp dir: `<tmp>/prezero-<prefix><pid>-<n>`.
    pub fn temp(prefix: &str) -> Result<ScratchDir> {
        ScratchDir::new(&std::env::temp_dir(), &format!("prezero-{prefix}"))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path in it.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// Its last component (`<prefix><pid>-<n>`).
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
        live().retain(|p| p != &self.path);
    }
}

/// Removes every [`ScratchDir`] alive in this process (for a process about to `exit` without
/// unwinding: Ctrl-C on a command).
pub fn remove_all() {
    for p in live().drain(..) {
        let _ = std::fs::remove_dir_all(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_unique_and_removed_on_drop() {
        let a = ScratchDir::temp("scratch-test").unwrap();
        let b = ScratchDir::temp("scratch-test").unwrap();
        assert_ne!(a.path(), b.path());
        assert!(a.path().is_dir() && b.path().is_dir());
        assert!(a
            .name()
            .starts_with(&format!("prezero-scratch-test{}-", std::process::id())));
        std::fs::write(a.join("f"), b"x").unwrap();
        let pa = a.path().to_path_buf();
        drop(a);
        assert!(!pa.exists());
        assert!(live().contains(&b.path().to_path_buf()));
    }

    #[test]
    fn socket_dirs_fit_a_socket_address() {
        let cache = ScratchDir::temp("cache").unwrap();
        let short = ScratchDir::for_sockets(cache.path(), "x-").unwrap();
        assert!(short.path().starts_with(cache.join("run")), "{short:?}");
        let deep = cache.join("d".repeat(90));
        let long = ScratchDir::for_sockets(&deep, "x-").unwrap();
        assert!(long.name().starts_with("prezero-x-"), "{long:?}");
        assert!(!deep.exists());
        let sock = long.join("c".repeat(MAX_SOCKET_NAME));
        assert!(
            sock.as_os_str().len() <= MAX_SOCKET_PATH,
            "{}",
            sock.display()
        );
    }
}
