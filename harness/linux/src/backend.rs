//! A vhost-user backend running as a process of its own (`prezero serve --socket PATH`), the
//! way User-Mode Linux meets it: UML connects to the socket at boot and never reconnects, so
//! the backend must be listening before the guest boots and stay up until it powers off.
//!
//! [`BackendProcess`] starts the command with its output going to a log file (a daemon must
//! never block on a full pipe nobody reads), waits until it has bound its sockets (or exited,
//! in which case the error carries its log), and gives the probes a test or benchmark needs:
//! CPU time, open descriptors, threads, shared-memory mappings (what a leaked guest would
//! leave behind). Dropping it SIGKILLs the process if it still runs. [`BackendProcess::serve`]
//! starts `prezero serve` itself; every backend still running is listed for
//! [`terminate_all`], which an interrupted command calls (`session.rs`).

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{io_err, Error, Result};
use crate::procs::{CpuProbe, ProcessCpu};

/// A running backend process.
#[derive(Debug)]
pub struct BackendProcess {
    name: String,
    child: Child,
    socket: PathBuf,
    control: Option<PathBuf>,
    log: PathBuf,
    exit: Option<ExitStatus>,
}

/// The pids of the backends this process started and has not reaped yet.
static RUNNING: Mutex<Vec<i32>> = Mutex::new(Vec::new());

fn running() -> std::sync::MutexGuard<'static, Vec<i32>> {
    RUNNING.lock().unwrap_or_else(|p| p.into_inner())
}

/// SIGTERMs every backend this process started that is still running (for a process about to
/// `exit` without unwinding: Ctrl-C on a command). Not reaped here: the process is exiting.
pub fn terminate_all() {
    for pid in running().drain(..) {
        // SAFETY: kill(2) on a child of this process that has not been reaped (its pid is
        // taken off the list when it is), so the pid cannot have been reused.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

impl BackendProcess {
    /// Starts `cmd` (`name` in messages) with stdout and stderr appended to `log`, and waits up to
    /// `timeout` until `socket` (and `control`, if given) exist as Unix sockets. Stale socket
    /// files are not removed here: the backend decides what to do with them.
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        socket: &Path,
        control: Option<&Path>,
        log: &Path,
        timeout: Duration,
    ) -> Result<BackendProcess> {
        if let Some(dir) = log.parent() {
            fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        }
        let out = fs::File::create(log).map_err(io_err(format!("creating {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(io_err(format!("duplicating {}", log.display())))?;
        // A process group of its own: a terminal's Ctrl-C goes to the foreground group, and the
        // backend must outlive the guest it serves (a guest whose device vanishes prints
        // hundreds of warnings, and hangs with pages in the balloon); the command that started
        // it stops the guest first, then the backend.
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd.spawn().map_err(|e| Error::Io {
            context: format!("starting {name} ({:?})", cmd.get_program()),
            source: e,
        })?;
        running().push(child.id() as i32);
        let mut b = BackendProcess {
            name: name.to_owned(),
            child,
            socket: socket.to_path_buf(),
            control: control.map(Path::to_path_buf),
            log: log.to_path_buf(),
            exit: None,
        };
        let deadline = Instant::now() + timeout;
        loop {
            if is_socket(socket) && control.map_or(true, is_socket) {
                return Ok(b);
            }
            if let Some(status) = b.try_wait() {
                return Err(Error::Command {
                    command: format!("{name}: {cmd:?}"),
                    status: status.to_string(),
                    stderr: b.log_tail(40),
                });
            }
            if Instant::now() >= deadline {
                b.kill();
                return Err(Error::Timeout {
                    what: format!("{name} to bind {}", socket.display()),
                    secs: timeout.as_secs_f64(),
                    tail: b.log_tail(40),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts `<exe> serve --socket S --control C EXTRA...` (the `prezero` binary at `exe`)
    /// logging to `log`, and waits up to `timeout` for both sockets (see [`BackendProcess::spawn`]).
    pub fn serve(
        exe: &Path,
        socket: &Path,
        control: &Path,
        log: &Path,
        extra: &[impl AsRef<std::ffi::OsStr>],
        timeout: Duration,
    ) -> Result<BackendProcess> {
        let mut cmd = Command::new(exe);
        cmd.arg("serve")
            .arg("--socket")
            .arg(socket)
            .arg("--control")
            .arg(control)
            .args(extra);
        BackendProcess::spawn("prezero serve", cmd, socket, Some(control), log, timeout)
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The vhost-user socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The control socket, if any.
    pub fn control(&self) -> Option<&Path> {
        self.control.as_deref()
    }

    /// The log file (its stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// A CPU probe on the process (all threads).
    pub fn cpu_probe(&self) -> ProcessCpu {
        ProcessCpu { pid: self.pid() }
    }

    /// CPU seconds used so far (user + system, all threads).
    pub fn cpu_seconds(&self) -> io::Result<f64> {
        self.cpu_probe().cpu_seconds()
    }

    /// The exit status, if it has exited (reaped here).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
            self.forget_if_reaped();
        }
        self.exit
    }

    /// Takes the pid off the [`terminate_all`] list once the process is reaped.
    fn forget_if_reaped(&self) {
        if self.exit.is_some() {
            let pid = self.pid();
            running().retain(|&p| p != pid);
        }
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// SIGKILLs it (if it still runs) and reaps it.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
            self.forget_if_reaped();
        }
        self.exit
    }

    /// SIGTERMs it and waits up to `timeout` for it to exit (then SIGKILLs it and fails).
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(s) = self.try_wait() {
            return Ok(s);
        }
        // SAFETY: kill(2) on our own unreaped child.
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.try_wait() {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        Err(Error::Timeout {
            what: format!("{} (pid {}) to exit on SIGTERM", self.name, self.pid()),
            secs: timeout.as_secs_f64(),
            tail: self.log_tail(20),
        })
    }

    /// Open file descriptors (`/proc/<pid>/fd`).
    pub fn fd_count(&self) -> io::Result<usize> {
        Ok(fs::read_dir(format!("/proc/{}/fd", self.pid()))?.count())
    }

    /// Threads (`/proc/<pid>/task`).
    pub fn thread_count(&self) -> io::Result<usize> {
        Ok(fs::read_dir(format!("/proc/{}/task", self.pid()))?.count())
    }

    /// Mappings of shared memory the process holds (`/proc/<pid>/maps` lines naming
    /// `/dev/shm`, a memfd or a deleted file): a guest's RAM the backend still maps.
    pub fn shared_memory_mappings(&self) -> io::Result<usize> {
        let maps = fs::read_to_string(format!("/proc/{}/maps", self.pid()))?;
        Ok(maps
            .lines()
            .filter(|l| {
                l.contains("/dev/shm/") || l.contains("/memfd:") || l.ends_with("(deleted)")
            })
            .count())
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_that_binds_and_one_that_fails() {
        let dir = crate::scratch::ScratchDir::temp("backend").unwrap();
        let sock = dir.join("b.sock");
        // A stand-in backend: `sleep`, with its socket bound by a thread of this test.
        let s2 = sock.clone();
        let binder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            std::os::unix::net::UnixListener::bind(&s2).unwrap()
        });
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut b = BackendProcess::spawn(
            "sleep",
            cmd,
            &sock,
            None,
            &dir.join("log"),
            Duration::from_secs(10),
        )
        .unwrap();
        let _listener = binder.join().unwrap();
        assert!(b.is_running());
        assert!(b.fd_count().unwrap() >= 3);
        assert!(b.thread_count().unwrap() >= 1);
        assert!(b.cpu_seconds().unwrap() >= 0.0);
        assert_eq!(b.shared_memory_mappings().unwrap(), 0);
        let st = b.terminate(Duration::from_secs(5)).unwrap();
        assert!(!st.success());
        assert!(!b.is_running());

        // Exits at once: the error carries its output.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo no such luck >&2; exit 3"]);
        let e = BackendProcess::spawn(
            "failing",
            cmd,
            &dir.join("never.sock"),
            None,
            &dir.join("log2"),
            Duration::from_secs(10),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no such luck"), "{e}");
    }
}
