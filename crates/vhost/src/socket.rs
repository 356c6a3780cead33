//! Listening on a public socket path, telling apart the ways that fails that a person can fix,
//! and removing the socket file on the way out only if it is still ours.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Longest path `sun_path` holds (108 bytes with the terminating NUL).
const SUN_PATH_MAX: usize = 107;

/// A listening socket bound to a path by us.
#[derive(Debug)]
pub(crate) struct BoundSocket {
    pub(crate) listener: UnixListener,
    pub(crate) path: PathBuf,
    // Identity of the socket file right after bind, to recognise it at removal.
    file: Option<(u64, u64)>,
}

impl BoundSocket {
    /// Binds `path`. A socket file nobody listens on (left by a daemon that died) is replaced;
    /// a live one, or anything that is not a socket, is left alone and reported.
    pub(crate) fn bind(path: &Path) -> Result<BoundSocket> {
        let len = path.as_os_str().as_bytes().len();
        if len > SUN_PATH_MAX {
            return Err(Error::SocketPathTooLong {
                path: path.to_path_buf(),
                len,
            });
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(Error::SocketDirMissing {
                path: path.to_path_buf(),
                dir,
            });
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => match UnixStream::connect(path) {
                Ok(_) => {
                    return Err(Error::SocketInUse {
                        path: path.to_path_buf(),
                    })
                }
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    tracing::info!(path = %path.display(), "replacing a stale socket nobody listens on");
                    std::fs::remove_file(path).map_err(|source| Error::Bind {
                        path: path.to_path_buf(),
                        source,
                    })?;
                }
                Err(source) => {
                    return Err(Error::Bind {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            },
            Ok(_) => {
                return Err(Error::NotASocket {
                    path: path.to_path_buf(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Bind {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
        let listener = UnixListener::bind(path).map_err(|source| {
            if source.kind() == io::ErrorKind::AddrInUse {
                // Someone bound it between our check and our bind.
                Error::SocketInUse {
                    path: path.to_path_buf(),
                }
            } else {
                Error::Bind {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        listener
            .set_nonblocking(true)
            .map_err(Error::io("making the listener non-blocking"))?;
        let file = path_id(path);
        Ok(BoundSocket {
            listener,
            path: path.to_path_buf(),
            file,
        })
    }

    /// Accepts a pending connection, if any (the listener is non-blocking: poll it first).
    pub(crate) fn accept(&self) -> io::Result<Option<UnixStream>> {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false)?;
                    return Ok(Some(stream));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::ConnectionAborted =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        // Only our own socket file: another daemon may have replaced it meanwhile.
        if self.file.is_some() && path_id(&self.path) == self.file {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn path_id(path: &Path) -> Option<(u64, u64)> {
    let file = std::fs::symlink_metadata(path).ok()?;
    use std::os::unix::fs::MetadataExt;
    Some((file.dev(), file.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clear_errors_for_each_obstacle() {
        let scratch = vmm_sys_util::tempdir::TempDir::new_with_prefix(
            std::env::temp_dir().join("prezero-vhost-socket-"),
        )
        .unwrap();
        let dir = scratch.as_path();
        let missing = dir.join("nope").join("s.sock");
        assert!(matches!(
            BoundSocket::bind(&missing),
            Err(Error::SocketDirMissing { .. })
        ));
        let file = dir.join("file");
        std::fs::write(&file, b"keep me").unwrap();
        assert!(matches!(
            BoundSocket::bind(&file),
            Err(Error::NotASocket { .. })
        ));
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
        let long = dir.join("x".repeat(120));
        assert!(matches!(
            BoundSocket::bind(&long),
            Err(Error::SocketPathTooLong { .. })
        ));

        let live = dir.join("live.sock");
        let first = BoundSocket::bind(&live).unwrap();
        let err = BoundSocket::bind(&live).unwrap_err();
        assert!(matches!(err, Error::SocketInUse { .. }), "{err}");
        assert!(err.to_string().contains("another daemon"));
        drop(first);
        assert!(!live.exists(), "our socket file is removed on drop");

        // A stale socket (bound, then its listener closed without unlinking) is replaced.
        let stale = dir.join("stale.sock");
        drop(UnixListener::bind(&stale).unwrap());
        assert!(stale.exists());
        let s = BoundSocket::bind(&stale).unwrap();
        UnixStream::connect(&stale).unwrap();
        assert!(s.accept().unwrap().is_some());

        // A socket file replaced by someone else is not ours to remove.
        std::fs::remove_file(&stale).unwrap();
        let other = UnixListener::bind(&stale).unwrap();
        drop(s);
        assert!(stale.exists());
        drop(other);
    }
}
