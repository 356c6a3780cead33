//! [`Scratch`]: the one scratch directory of the tests, removed when dropped.
//!
//! A thin layer over `vmm_sys_util::tempdir::TempDir` (which picks a unique name with
//! `mkdtemp`) that keeps names short: a Unix socket path must fit `sun_path`, 108 bytes with
//! its NUL, and `TMPDIR` may already be long.

use std::path::{Path, PathBuf};

use vmm_sys_util::tempdir::TempDir;

/// Longest socket path a test may build inside a scratch directory (`sun_path` minus NUL, minus
/// room for a file name such as `frontend.sock`).
const SOCKET_DIR_MAX: usize = 107 - 24;

/// A fresh directory, unique per call, removed with its contents on drop.
#[derive(Debug)]
pub struct Scratch(TempDir);

impl Scratch {
    /// Creates `$TMPDIR/pz-<tag>-XXXXXX` (or under `/tmp` when `$TMPDIR` is too deep for
    /// socket paths). `tag` names the test in the path; keep it short.
    pub fn new(tag: &str) -> Scratch {
        let tag: String = tag.chars().take(16).collect();
        let mut base = std::env::temp_dir();
        if base.as_os_str().len() + tag.len() + 10 > SOCKET_DIR_MAX {
            base = PathBuf::from("/tmp");
        }
        let dir = TempDir::new_with_prefix(base.join(format!("pz-{tag}-")))
            .unwrap_or_else(|e| panic!("scratch directory under {}: {e}", base.display()));
        Scratch(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.0.as_path()
    }

    /// `name` inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path().join(name)
    }

    /// The vhost-user socket path the tests use: `balloon.sock`.
    pub fn socket(&self) -> PathBuf {
        self.join("balloon.sock")
    }

    /// The control socket path the tests use: `balloon.ctl`.
    pub fn control(&self) -> PathBuf {
        self.join("balloon.ctl")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_dirs_are_unique_short_and_removed() {
        let a = Scratch::new("a-rather-long-test-name-that-gets-cut");
        let b = Scratch::new("a-rather-long-test-name-that-gets-cut");
        assert_ne!(a.path(), b.path());
        assert!(a.path().is_dir());
        assert!(a.socket().as_os_str().len() < 108);
        let gone = a.path().to_path_buf();
        drop(a);
        assert!(!gone.exists());
    }
}
