//! A VM host process (UML or QEMU) with its console, its recorded pids and cleanup.
//!
//! [`GuestProcess`] spawns the command in its own process group with stdin from `/dev/null`,
//! stdout and stderr captured line by line ([`Console`]), and a tag in its environment. A watcher
//! thread records every process of the VM ([`PidSet`]) every 50 ms while it runs. Dropping it
//! (or [`GuestProcess::shutdown`]) SIGKILLs every recorded process that is still alive, reaps the
//! main one and removes its scratch directories.

use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::console::{events_of, Console, Event, Line, Stream};
use crate::error::{Error, Result};
use crate::procs::{PidSet, ProcId, TAG_VAR};
use crate::scratch::ScratchDir;

/// A running VM process.
pub struct GuestProcess {
    kind: &'static str,
    child: Child,
    console: Console,
    pids: Arc<Mutex<PidSet>>,
    watcher_stop: Arc<AtomicBool>,
    watcher: Option<JoinHandle<()>>,
    exit: Option<ExitStatus>,
    t0: Instant,
    command_line: String,
    scratch: Vec<ScratchDir>,
    shut_down: bool,
}

/// What a finished run left: exit status, console and events.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunOutcome {
    /// The VM process's exit code (`None`: killed by a signal).
    pub exit_code: Option<i32>,
    /// Every console line.
    pub lines: Vec<Line>,
    /// Every `PREZERO` event.
    pub events: Vec<Event>,
}

impl RunOutcome {
    /// The first event named `name`.
    pub fn event(&self, name: &str) -> Option<&Event> {
        self.events.iter().find(|e| e.name == name)
    }

    /// Every event named `name`.
    pub fn events_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Event> + 'a {
        self.events.iter().filter(move |e| e.name == name)
    }

    /// The workload's exit code, from the init script's `exit` event.
    pub fn guest_rc(&self) -> Option<i32> {
        self.event("exit")?.num("rc")
    }

    /// Whether any console line contains `needle` (kernel messages, e.g. a probe failure).
    pub fn console_contains(&self, needle: &str) -> bool {
        self.lines.iter().any(|l| l.text.contains(needle))
    }
}

fn unique_tag() -> String {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{nanos:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl GuestProcess {
    /// Spawns `cmd`. `kind` names the VM in messages; `scratch` directories are removed at
    /// shutdown.
    pub fn spawn(
        kind: &'static str,
        mut cmd: Command,
        scratch: Vec<ScratchDir>,
    ) -> Result<GuestProcess> {
        use std::os::unix::process::CommandExt;
        let tag = unique_tag();
        let command_line = format!(
            "{:?} {}",
            cmd.get_program(),
            cmd.get_args()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        cmd.env(TAG_VAR, &tag)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        tracing::info!(%kind, command = %command_line, "starting VM");
        let t0 = Instant::now();
        let mut child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::Missing {
                    what: format!("{kind} binary {:?}", cmd.get_program()),
                    fix: "run scripts/linux-setup.sh (--peer for QEMU)".into(),
                }
            } else {
                Error::Io {
                    context: format!("starting {kind}: {command_line}"),
                    source: e,
                }
            }
        })?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let console = Console::start(
            t0,
            vec![
                (Stream::Stdout, Box::new(stdout)),
                (Stream::Stderr, Box::new(stderr)),
            ],
        );
        let pids = Arc::new(Mutex::new(PidSet::new(child.id() as i32, &tag)));
        let watcher_stop = Arc::new(AtomicBool::new(false));
        let (p2, s2) = (pids.clone(), watcher_stop.clone());
        let watcher = std::thread::Builder::new()
            .name("prezero-pid-watch".into())
            .spawn(move || {
                while !s2.load(Ordering::Relaxed) {
                    p2.lock().unwrap().refresh();
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
            .expect("spawning the pid watcher thread");
        Ok(GuestProcess {
            kind,
            child,
            console,
            pids,
            watcher_stop,
            watcher: Some(watcher),
            exit: None,
            t0,
            command_line,
            scratch,
            shut_down: false,
        })
    }

    /// The main process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The instant console and sample timestamps are relative to (the spawn).
    pub fn t0(&self) -> Instant {
        self.t0
    }

    /// The command that was run.
    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    /// The console.
    pub fn console(&mut self) -> &mut Console {
        &mut self.console
    }

    /// Every process of this VM recorded so far (after a fresh scan).
    pub fn pids(&self) -> Vec<ProcId> {
        let mut p = self.pids.lock().unwrap();
        p.refresh();
        p.all()
    }

    /// The exit status, if the main process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Waits for the main process to exit, reading the console meanwhile, then collects the
    /// remaining console output (up to 2 s: a surviving helper may hold the pipes open).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.try_wait() {
                break s;
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("{} (pid {}) to exit", self.kind, self.pid()),
                    secs: timeout.as_secs_f64(),
                    tail: self.console.tail(30),
                });
            }
            let step = (Instant::now() + Duration::from_millis(50)).min(deadline);
            while self.console.next_line(step).is_some() {}
            if self.console.is_closed() {
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        let drain_until = Instant::now() + Duration::from_secs(2);
        while !self.console.is_closed() && Instant::now() < drain_until {
            self.console.next_line(drain_until);
        }
        Ok(status)
    }

    /// Like [`GuestProcess::run_to_exit`], calling `on_line` for every console line as it
    /// arrives (e.g. to echo the console of `prezero linux`).
    pub fn follow(
        &mut self,
        timeout: Duration,
        mut on_line: impl FnMut(&Line),
    ) -> Result<RunOutcome> {
        let deadline = Instant::now() + timeout;
        let mut seen = self.console.log().len();
        loop {
            let step = (Instant::now() + Duration::from_millis(50)).min(deadline);
            while self.console.next_line(step).is_some() {}
            for l in &self.console.log()[seen..] {
                on_line(l);
            }
            seen = self.console.log().len();
            if self.console.is_closed() || self.try_wait().is_some() || Instant::now() >= deadline {
                break;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let out = self.run_to_exit(left.max(Duration::from_millis(1)));
        for l in &self.console.log()[seen..] {
            on_line(l);
        }
        out
    }

    /// Runs until the VM exits (or `timeout`), returning its console and events. The VM is shut
    /// down (all its processes killed) on timeout.
    pub fn run_to_exit(&mut self, timeout: Duration) -> Result<RunOutcome> {
        let status = match self.wait_exit(timeout) {
            Ok(s) => s,
            Err(e) => {
                self.shutdown();
                return Err(e);
            }
        };
        Ok(self.outcome(status.code()))
    }

    /// The outcome so far (console and events), with `exit_code`.
    pub fn outcome(&self, exit_code: Option<i32>) -> RunOutcome {
        let lines = self.console.log().to_vec();
        RunOutcome {
            exit_code,
            events: events_of(&lines),
            lines,
        }
    }

    /// Kills every recorded process of the VM, reaps the main one, removes scratch directories.
    /// Returns the processes that could not be killed (normally none). Idempotent.
    pub fn shutdown(&mut self) -> Vec<ProcId> {
        if self.shut_down {
            return Vec::new();
        }
        self.shut_down = true;
        self.watcher_stop.store(true, Ordering::Relaxed);
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
        let left = {
            let pids = self.pids.clone();
            let mut pids = pids.lock().unwrap();
            pids.refresh();
            // SAFETY: kill(2) on our child's process group (we created it with process_group(0)),
            // unless it already exited (then the group may be gone or reused: skip it).
            if self.try_wait().is_none() {
                unsafe {
                    libc::kill(-self.pid(), libc::SIGKILL);
                }
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            pids.kill_all(Duration::from_secs(5))
        };
        if !left.is_empty() {
            tracing::warn!(kind = self.kind, ?left, "VM processes survived SIGKILL");
        }
        self.scratch.clear();
        left
    }
}

impl Drop for GuestProcess {
    fn drop(&mut self) {
        self.shutdown();
    }
}
