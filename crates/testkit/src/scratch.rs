//! [`Scratch`]: a test's scratch directory, removed when dropped.
//!
//! The project has one scratch-directory helper, the harness's
//! `ScratchDir` ([`prezero_linux_harness::scratch::ScratchDir`]) (short, predictable names that
//! leave room for a Unix socket address; every live directory listed for interrupt cleanup);
//! this is that helper with the tests' conventions: a directory under the temp dir named
//! after the test, and the socket names the tests use.

use std::path::{Path, PathBuf};

use prezero_linux_harness::scratch::ScratchDir;

/// A fresh directory, unique per call, removed with its contents on drop.
#[derive(Debug)]
pub struct Scratch(ScratchDir);

impl Scratch {
    /// Creates `<temp dir>/prezero-<tag>-<pid>-<n>`. `tag` names the test in the path: keep it
    /// short (it is cut to 16 characters).
    pub fn new(tag: &str) -> Scratch {
        let tag: String = tag.chars().take(16).collect();
        let dir = ScratchDir::temp(&format!("{tag}-"))
            .unwrap_or_else(|e| panic!("scratch directory for {tag}: {e}"));
        Scratch(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// `name` inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
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
