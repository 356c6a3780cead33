//! `prezero linux`: the stock Linux `virtio_balloon` driver, running in User-Mode Linux, against
//! prezero's vhost-user daemon.
//!
//! It sets up what is missing (as root: `apt-get install user-mode-linux busybox-static cpio`,
//! the same `scripts/linux-setup.sh` CI runs), builds a small initramfs at run time (busybox,
//! UML's `virtio_balloon.ko`, the static workload program, an `/init` script; cached under
//! `target/prezero-linux`, never committed), starts `prezero serve` (or uses the running daemon
//! given by `--socket`), boots UML with `virtio_uml.device=SOCKET:5` and prints the guest's
//! console as it comes. While it runs, steer the balloon from another terminal with the printed
//! `prezero balloon ... --control PATH` commands. At the end it prints what was negotiated
//! and what the device did.
//!
//! Interrupting it (Ctrl-C, SIGTERM) kills every process of the guest (UML forks helpers that
//! can outlive its main process) and the daemon it started.

use anyhow::{bail, Context, Result};
use clap::Args;
use prezero_linux_harness::backend::BackendProcess;
use prezero_linux_harness::console::Event;
use prezero_linux_harness::scenario::SCENARIOS;
use prezero_linux_harness::uml::{socket_dir, wait_for_socket_file};
use prezero_linux_harness::{Harness, Scenario, SetupOptions};
use prezero_vhost::{control_request, ControlRequest};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Options of `prezero linux`.
#[derive(Args, Debug)]
pub struct LinuxArgs {
    /// What the guest runs: boot, meminfo, checksum, alloc-free, idle, oom (see
    /// harness/linux/src/lib.rs for what each prints).
    #[arg(long, default_value = "boot")]
    scenario: String,
    /// Guest memory in MiB (UML's `mem=`). Free page reporting needs more than ~160 MiB free:
    /// Linux reports only while free memory stays above the low watermark plus 32 x 4 MiB.
    #[arg(long, default_value_t = 256)]
    mem: u64,
    /// Attach to the vhost-user socket of a daemon that is already running, instead of
    /// starting `prezero serve` here.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The control socket: where the daemon started here listens (default: a scratch path),
    /// or that of the running daemon given with --socket (for the summary).
    #[arg(long)]
    control: Option<PathBuf>,
    /// An argument for the `prezero serve` started here; repeat for several, e.g.
    /// `--serve-arg=--no-stats --serve-arg=--target=64M`.
    #[arg(long = "serve-arg", allow_hyphen_values = true, value_name = "ARG")]
    serve_args: Vec<String>,
    /// Seconds before the guest is given up on (and killed).
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Print only the workload's `PREZERO event=...` lines, not the kernel's messages.
    #[arg(long)]
    events_only: bool,
    /// Only check for UML, busybox and cpio; do not install them.
    #[arg(long)]
    no_install: bool,
    /// Scenario parameters as KEY=VALUE (e.g. `mib=64 hold=5 until_deflated=16384`).
    #[arg(value_name = "KEY=VALUE")]
    params: Vec<String>,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static DAEMON_PID: AtomicI32 = AtomicI32::new(0);
/// Scratch directories to remove if interrupted (Drop does not run on `exit`).
static SCRATCH: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs SIGINT/SIGTERM handlers and a thread that, once one arrives, kills every VM process
/// this process started (by their tag, see `prezero_linux_harness::procs::kill_vms_started_here`) and
/// the daemon it started, then exits with status 130.
pub(crate) fn install_interrupt_cleanup() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let _ = std::thread::Builder::new()
        .name("interrupt-cleanup".into())
        .spawn(|| loop {
            if INTERRUPTED.load(Ordering::SeqCst) {
                eprintln!("interrupted: killing the guest and the daemon");
                let left =
                    prezero_linux_harness::procs::kill_vms_started_here(Duration::from_secs(5));
                if !left.is_empty() {
                    eprintln!("processes that survived SIGKILL: {left:?}");
                }
                let pid = DAEMON_PID.load(Ordering::SeqCst);
                if pid > 0 {
                    // SAFETY: kill(2) on the daemon child this process started (not yet reaped:
                    // the main thread is still running).
                    unsafe {
                        libc::kill(pid, libc::SIGTERM);
                    }
                }
                for dir in SCRATCH.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                    remove_scratch(dir);
                }
                std::process::exit(130);
            }
            std::thread::sleep(Duration::from_millis(50));
        });
}

/// Starts `prezero serve` (this executable) on `socket` and `control`, with `extra` arguments,
/// logging to `log`; returns once it listens.
pub(crate) fn start_daemon(
    socket: &Path,
    control: &Path,
    log: &Path,
    extra: &[String],
) -> Result<BackendProcess> {
    let exe = std::env::current_exe().context("locating the prezero executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .arg("--socket")
        .arg(socket)
        .arg("--control")
        .arg(control)
        .args(extra);
    let daemon = BackendProcess::spawn(
        "prezero serve",
        cmd,
        socket,
        Some(control),
        log,
        Duration::from_secs(10),
    )?;
    DAEMON_PID.store(daemon.pid(), Ordering::SeqCst);
    Ok(daemon)
}

/// Removes `dir`; for a VM run directory (`<cache>/run`), only the per-boot directories of
/// this process's VMs (`pz<pid>-<n>`, see `prezero_linux_harness::uml::Uml::boot`).
fn remove_scratch(dir: &Path) {
    if dir.file_name().is_some_and(|n| n == "run") {
        let mine = format!("pz{}-", std::process::id());
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(&mine) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    } else {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Registers the VM run directory of `h` for cleanup on interrupt (UML's per-boot scratch
/// directories live there; the VM's own cleanup does not run when the process exits).
pub(crate) fn clean_vm_dirs_on_interrupt(h: &Harness) {
    SCRATCH
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(h.tools.cache_dir.join("run"));
}

/// A scratch directory for one run's sockets and logs, removed on drop.
pub(crate) struct Scratch(PathBuf);

impl Scratch {
    /// A file in it.
    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        SCRATCH
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|d| d != &self.0);
    }
}

/// A scratch directory for one run's sockets and logs: `<cache>/run/<name>-<pid>`, or under
/// the temp dir when that is too deep for a Unix socket path (108 bytes).
pub(crate) fn scratch_dir(h: &Harness, name: &str) -> Result<Scratch> {
    let dir = socket_dir(
        &h.tools.cache_dir,
        &format!("{name}-{}", std::process::id()),
    );
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    SCRATCH
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(dir.clone());
    Ok(Scratch(dir))
}

fn scenario_of(args: &LinuxArgs) -> Result<Scenario> {
    if !SCENARIOS.contains(&args.scenario.as_str()) {
        bail!(
            "unknown scenario {:?}; choose one of {}",
            args.scenario,
            SCENARIOS.join(", ")
        );
    }
    let mut s = Scenario::new(&args.scenario);
    for kv in &args.params {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("scenario parameter {kv:?} is not KEY=VALUE");
        };
        s = s.param(k, v);
    }
    s.kernel_args()?;
    Ok(s)
}

fn control_json(control: &Path, req: &ControlRequest) -> Option<Value> {
    control_request(control, req).ok()
}

fn names(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn mib(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0) / (1024.0 * 1024.0)
}

/// Runs `prezero linux`.
pub fn run(args: &LinuxArgs) -> Result<()> {
    let scenario = scenario_of(args)?;
    install_interrupt_cleanup();
    let t = Instant::now();
    let h = Harness::new(&SetupOptions {
        install: !args.no_install,
        ..Default::default()
    })?;
    clean_vm_dirs_on_interrupt(&h);
    let initrd = h.uml_initramfs()?;
    eprintln!(
        "User-Mode Linux {} ({}), initramfs {} ({} KiB: busybox, {}, prezero-workload), ready in {:.1} s",
        h.tools.uml_release,
        h.tools.linux_uml.display(),
        initrd.path.display(),
        initrd.bytes / 1024,
        initrd.modules.join(", "),
        t.elapsed().as_secs_f64()
    );

    let mut daemon = None;
    let mut scratch = None;
    let (socket, control) = match &args.socket {
        Some(sock) => {
            wait_for_socket_file(sock, Duration::from_secs(2)).with_context(|| {
                format!(
                    "no vhost-user backend listens on {} (start one with `prezero serve --socket {}`, or leave out --socket)",
                    sock.display(),
                    sock.display()
                )
            })?;
            (sock.clone(), args.control.clone())
        }
        None => {
            let dir = scratch.insert(scratch_dir(&h, "linux")?);
            let socket = dir.join("balloon.sock");
            let control = args
                .control
                .clone()
                .unwrap_or_else(|| dir.join("control.sock"));
            let log = dir.join("serve.log");
            let d = start_daemon(&socket, &control, &log, &args.serve_args)?;
            eprintln!(
                "daemon: prezero serve --socket {} --control {} {}(pid {}, log {})",
                socket.display(),
                control.display(),
                args.serve_args
                    .iter()
                    .map(|a| format!("{a} "))
                    .collect::<String>(),
                d.pid(),
                log.display()
            );
            daemon = Some(d);
            (socket, Some(control))
        }
    };
    if let Some(c) = &control {
        eprintln!(
            "steer it while the guest runs: prezero balloon set 64M --control {}   (also: stats, status, metrics)",
            c.display()
        );
    }

    let cfg = h
        .uml(&initrd)
        .mem_mib(args.mem)
        .scenario(scenario)
        .balloon_socket(&socket);
    let mut vm = cfg.boot()?;
    eprintln!("guest: {}", vm.command_line());
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut printed = 0;
    let mut status_seen: Option<Value> = None;
    loop {
        let step = (Instant::now() + Duration::from_millis(50)).min(deadline);
        while vm.console().next_line(step).is_some() {}
        let lines = vm.console().log()[printed..].to_vec();
        printed += lines.len();
        for l in &lines {
            let event = Event::parse(&l.text);
            if !args.events_only || event.is_some() {
                println!("[{:8.3}] {}", l.t_s, l.text);
            }
            // The driver has probed by the time the workload starts: record the negotiation
            // now (the daemon forgets it when the guest leaves).
            if event.is_some_and(|e| e.name == "scenario") && status_seen.is_none() {
                status_seen = control
                    .as_deref()
                    .and_then(|c| control_json(c, &ControlRequest::Status));
            }
        }
        if vm.console().is_closed() || vm.try_wait().is_some() {
            break;
        }
        if Instant::now() >= deadline {
            eprintln!(
                "the guest did not finish within {} s: killing it",
                args.timeout
            );
            break;
        }
    }
    let out = vm.run_to_exit(Duration::from_secs(5));
    let left = vm.shutdown();
    if !left.is_empty() {
        eprintln!("UML processes that survived SIGKILL: {left:?}");
    }
    let (exit_code, guest_rc) = match &out {
        Ok(o) => (o.exit_code, o.guest_rc()),
        Err(_) => (None, None),
    };
    for l in vm.console().log()[printed..].iter() {
        if !args.events_only || Event::parse(&l.text).is_some() {
            println!("[{:8.3}] {}", l.t_s, l.text);
        }
    }

    eprintln!();
    eprintln!(
        "guest: UML exit {}, workload exit status {}, {:.1} s",
        exit_code.map_or("none (killed)".into(), |c| c.to_string()),
        guest_rc.map_or("none".into(), |c| c.to_string()),
        vm.t0().elapsed().as_secs_f64()
    );
    if let Some(st) = &status_seen {
        eprintln!(
            "negotiated: {} (features {:#x}); queues: {}",
            names(&st["negotiated"]),
            st["negotiated_features"].as_u64().unwrap_or(0),
            names(&st["queues"]),
        );
    }
    if let Some(m) = control
        .as_deref()
        .and_then(|c| control_json(c, &ControlRequest::Metrics))
    {
        let d = &m["device"];
        let n = |k: &str| d[k].as_u64().unwrap_or(0);
        let errors: u64 = d["errors"]
            .as_object()
            .map(|o| o.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        eprintln!(
            "device: reporting {} requests, {:.1} MiB reported; inflate {} requests ({} pages), deflate {} ({} pages); {} stats buffers; {:.1} MiB discarded in {} calls; {} errors",
            n("reporting_requests"),
            mib(&d["reported_bytes"]),
            n("inflate_requests"),
            n("inflated_pages"),
            n("deflate_requests"),
            n("deflated_pages"),
            n("stats_buffers"),
            mib(&d["discarded_bytes"]),
            n("discard_calls"),
            errors
        );
    }
    if let Some(mut d) = daemon {
        match d.terminate(Duration::from_secs(10)) {
            Ok(s) if s.success() => {}
            Ok(s) => eprintln!(
                "the daemon exited with {s}; its log ({}):\n{}",
                d.log_path().display(),
                d.log_tail(30)
            ),
            Err(e) => eprintln!("stopping the daemon: {e}"),
        }
        DAEMON_PID.store(0, Ordering::SeqCst);
    }
    drop(scratch);
    out?;
    match guest_rc {
        Some(0) => Ok(()),
        Some(rc) => bail!("the guest workload failed (exit status {rc})"),
        None => bail!("the guest did not finish its workload"),
    }
}
