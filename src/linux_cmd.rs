//! `prezero linux`: the stock Linux `virtio_balloon` driver, running in User-Mode Linux (the
//! default) or in a QEMU VM (`--vmm qemu`), against prezero's vhost-user daemon.
//!
//! It sets up what is missing (as root: `apt-get install user-mode-linux busybox-static cpio`,
//! the same `scripts/linux-setup.sh` CI runs), builds a small initramfs at run time (busybox,
//! UML's `virtio_balloon.ko`, the static workload program compiled by `rustc` from source
//! embedded in this binary, an `/init` script; kept in the cache directory of
//! [`default_cache_dir`](prezero_linux_harness::setup::default_cache_dir), never committed), starts `prezero serve` (or uses the running daemon
//! given by `--socket`), boots UML with `virtio_uml.device=SOCKET:5` and prints the guest's
//! console as it comes (`--kernel 7`: Debian's User-Mode Linux 7.x, fetched into the cache by
//! `scripts/linux-setup.sh --uml7`, instead of the system's 6.1). With `--vmm qemu` it boots Debian's cloud kernel under QEMU >= 10.2
//! (`scripts/qemu-setup.sh`; KVM when it boots, else TCG) with guest RAM in a shared memfd and
//! `vhost-user-test-device-pci,virtio-id=5,num_vqs=5` on the same socket (see
//! `prezero_linux_harness::qemu`). While it runs, steer the balloon from another terminal with the printed
//! `prezero balloon ... --control PATH` commands. At the end it prints what was negotiated
//! and what the device did.
//!
//! The daemon serves one frontend at a time: given `--socket` (and `--control`) of a daemon
//! that already serves a guest, it says so before the boot and while the guest waits. A run
//! whose guest never got its balloon device (the daemon's `last_negotiation` never names this
//! guest, or the guest lists no `virtio_balloon` device) fails, even if the workload exited 0.
//!
//! Interrupting it (Ctrl-C, SIGTERM) kills every process of the guest (UML forks helpers that
//! can outlive its main process), then the daemon it started: the daemon runs in a process
//! group of its own, so a terminal's Ctrl-C does not stop it under the guest (which would print
//! pages of `virtio_uml` warnings). `--timeout` kills the guest at once and says so once.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use prezero_linux_harness::backend::BackendProcess;
use prezero_linux_harness::console::Event;
use prezero_linux_harness::scratch::ScratchDir;
use prezero_linux_harness::session::clean_up_started_here;
use prezero_linux_harness::uml::wait_for_socket_file;
use prezero_linux_harness::vm::GuestProcess;
use prezero_linux_harness::{Harness, Scenario, SetupOptions, UmlKernelChoice};
use prezero_vhost::{control_request, ControlRequest};
use serde_json::Value;
use std::ops::DerefMut;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Options of `prezero linux`.
#[derive(Args, Debug)]
#[command(after_help = format!(
    "Scenario parameters (KEY=DEFAULT):\n{}\n\
     Needs `rustc` at run time (the guest workload is compiled from source embedded in prezero). \
     Cache: $PREZERO_LINUX_CACHE, else target/prezero-linux when run from the clone, \
     else $XDG_CACHE_HOME/prezero/linux (~/.cache/prezero/linux).",
    prezero_linux_harness::scenario::params_help()
))]
pub struct LinuxArgs {
    /// What the guest runs: boot, meminfo, checksum, alloc-free, idle, oom (see
    /// harness/linux/src/lib.rs for what each prints).
    #[arg(long, default_value = "boot")]
    scenario: String,
    /// The VMM: User-Mode Linux (Debian's 6.1 `linux.uml`, `virtio_uml`), or QEMU >= 10.2 with
    /// Debian's cloud kernel and QEMU's generic vhost-user device (`scripts/qemu-setup.sh`).
    #[arg(long, value_enum, default_value_t = Vmm::Uml)]
    vmm: Vmm,
    /// The User-Mode Linux kernel (`--vmm uml`): 6, the system's `user-mode-linux` (Debian 12:
    /// 6.1), or 7, Debian's prebuilt 7.x fetched into the cache (`scripts/linux-setup.sh
    /// --uml7`). 7.x hangs at poweroff with pages still in the balloon: release it first.
    #[arg(long, value_enum, default_value_t = UmlKernelArg::Six)]
    kernel: UmlKernelArg,
    /// Guest memory in MiB (UML's `mem=`, QEMU's `-m`). Free page reporting needs more than
    /// ~160 MiB free: Linux reports only while free memory stays above the low watermark plus
    /// 32 x 4 MiB.
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
    /// Only check for what the run needs (UML, busybox and cpio; with `--vmm qemu` also a
    /// QEMU >= 10.2 and Debian's cloud kernel); install and fetch nothing.
    #[arg(long)]
    no_install: bool,
    /// Scenario parameters as KEY=VALUE (e.g. `mib=64 hold=5 until_deflated=16384`), checked
    /// before anything boots; each scenario's are listed below.
    #[arg(value_name = "KEY=VALUE")]
    params: Vec<String>,
}

/// The VMM `prezero linux` boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Vmm {
    /// User-Mode Linux (`virtio_uml.device=SOCKET:5`).
    Uml,
    /// QEMU with `vhost-user-test-device-pci` (virtio-id 5) on the daemon's socket.
    Qemu,
}

/// `--kernel`: the UML kernel `prezero linux` boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UmlKernelArg {
    /// The system's `user-mode-linux` (Debian 12: 6.1).
    #[value(name = "6")]
    Six,
    /// Debian's prebuilt `user-mode-linux` 7.x from the cache.
    #[value(name = "7")]
    Seven,
}

impl From<UmlKernelArg> for UmlKernelChoice {
    fn from(k: UmlKernelArg) -> UmlKernelChoice {
        match k {
            UmlKernelArg::Six => UmlKernelChoice::System,
            UmlKernelArg::Seven => UmlKernelChoice::Linux7,
        }
    }
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
    Ok(BackendProcess::serve(
        &exe,
        socket,
        control,
        log,
        extra,
        Duration::from_secs(10),
    )?)
}

fn scenario_of(args: &LinuxArgs) -> Result<Scenario> {
    let mut s = Scenario::new(&args.scenario);
    for kv in &args.params {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("scenario parameter {kv:?} is not KEY=VALUE");
        };
        s = s.param(k, v);
    }
    s.check()?;
    s.kernel_args()?;
    Ok(s)
}

fn control_json(control: &Path, req: &ControlRequest) -> Option<Value> {
    control_request(control, req).ok()
}

/// How often the run asks the daemon whether it has this guest's negotiation yet.
const NEGOTIATION_POLL: Duration = Duration::from_millis(250);

/// When a guest the daemon has not taken yet is reported as waiting.
const WAITING_NOTICE_AFTER: Duration = Duration::from_secs(5);

/// The daemon's count of guests it accepted so far (`daemon.connections` of `GET /metrics`).
fn connections(control: &Path) -> Option<u64> {
    control_json(control, &ControlRequest::Metrics)?["daemon"]["connections"].as_u64()
}

/// The `last_negotiation` of the daemon's `GET /balloon` (which the daemon records when the
/// guest acks its features and keeps after it leaves) once it is that of a guest accepted after
/// `before` connections: this run's guest, as the daemon serves one at a time.
/// `seen` is what an earlier call returned: a later guest's negotiation does not replace it.
fn our_negotiation(control: &Path, before: u64, seen: Option<&Value>) -> Option<Value> {
    let st = control_json(control, &ControlRequest::Status)?;
    let n = &st["last_negotiation"];
    let guest = n["guest"].as_u64()?;
    let ours = match seen.and_then(|s| s["guest"].as_u64()) {
        Some(g) => guest == g,
        None => guest > before,
    };
    ours.then(|| n.clone())
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
    let _cleanup = crate::interrupt::on_exit(clean_up_started_here);
    let t = Instant::now();
    if args.vmm == Vmm::Qemu && args.kernel != UmlKernelArg::Six {
        bail!(
            "--kernel chooses the User-Mode Linux kernel; QEMU boots Debian's cloud \
             kernel (leave out --kernel, or use --vmm uml)"
        );
    }
    let h = Harness::new(&SetupOptions {
        install: !args.no_install,
        peer: args.vmm == Vmm::Qemu,
        uml7: args.kernel == UmlKernelArg::Seven,
        ..Default::default()
    })?;
    let uml_kernel = h.uml_kernel(args.kernel.into())?.clone();
    let (initrd, vmm_name) = match args.vmm {
        Vmm::Uml => (
            h.uml_initramfs_for(&uml_kernel)?,
            format!(
                "User-Mode Linux {} ({})",
                uml_kernel.release,
                uml_kernel.linux.display()
            ),
        ),
        Vmm::Qemu => {
            let initrd = h.qemu_initramfs()?;
            let q = h.qemu(&initrd)?;
            let name = format!(
                "QEMU {} (-accel {}), kernel {}",
                q.qemu.display(),
                q.accel.name(),
                q.kernel.display()
            );
            (initrd, name)
        }
    };
    eprintln!(
        "{vmm_name}, initramfs {} ({} KiB: busybox, {}, prezero-workload), ready in {:.1} s",
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
            let dir = scratch.insert(ScratchDir::for_sockets(&h.tools.cache_dir, "linux-")?);
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

    let connections_before = control.as_deref().and_then(|c| {
        let st = control_json(c, &ControlRequest::Status)?;
        if st["connected"].as_bool() == Some(true) {
            eprintln!(
                "note: the daemon on {} already serves a guest. A vhost-user daemon serves one \
                 frontend at a time: this guest waits in its queue (its boot stops at the \
                 balloon's probe) until that guest disconnects. Stop the other guest, or start \
                 another daemon (`prezero serve --socket OTHER`) for this one.",
                socket.display()
            );
        }
        connections(c)
    });
    if control.is_none() {
        eprintln!(
            "note: without --control this run cannot ask the daemon what it negotiated with \
             this guest, and only the boot and idle scenarios show whether the balloon appeared; \
             give the daemon's control socket for both"
        );
    }

    let mut vm: Box<dyn DerefMut<Target = GuestProcess>> = match args.vmm {
        Vmm::Uml => Box::new(
            h.uml_on(&uml_kernel, &initrd)
                .mem_mib(args.mem)
                .scenario(scenario)
                .balloon_socket(&socket)
                .boot()?,
        ),
        Vmm::Qemu => Box::new(
            h.qemu(&initrd)?
                .mem_mib(args.mem)
                .scenario(scenario)
                .balloon_socket(&socket)
                .boot()?,
        ),
    };
    eprintln!("guest: {}", vm.command_line());
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut printed = 0;
    let mut status_seen: Option<Value> = None;
    let mut next_poll = Instant::now();
    let mut told_waiting = false;
    let mut timed_out = false;
    loop {
        let step = (Instant::now() + Duration::from_millis(50)).min(deadline);
        while vm.console().next_line(step).is_some() {}
        let lines = vm.console().log()[printed..].to_vec();
        printed += lines.len();
        for l in &lines {
            let event = Event::parse(&l.text);
            if !args.events_only || event.is_some() {
                crate::output::print_line(&format!("[{:8.3}] {}", l.t_s, l.text))?;
            }
        }
        // Follow this guest's negotiation while it is the daemon's latest (the daemon keeps it
        // after the guest leaves; this copy is for a next guest that takes its place at once).
        if let (Some(c), Some(before)) = (control.as_deref(), connections_before) {
            if Instant::now() >= next_poll {
                next_poll = Instant::now() + NEGOTIATION_POLL;
                if let Some(n) = our_negotiation(c, before, status_seen.as_ref()) {
                    status_seen = Some(n);
                }
                if status_seen.is_none()
                    && !told_waiting
                    && vm.t0().elapsed() > WAITING_NOTICE_AFTER
                    && connections(c) == Some(before)
                {
                    told_waiting = true;
                    eprintln!(
                        "waiting: the daemon has not taken this guest yet after {} s (it serves \
                         one frontend at a time; is another guest attached?)",
                        WAITING_NOTICE_AFTER.as_secs()
                    );
                }
            }
        }
        if vm.console().is_closed() || vm.try_wait().is_some() {
            break;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            break;
        }
    }
    // Stop the guest before the daemon (so it never sees its device vanish), and on a timeout
    // at once: the guest had its time.
    let out = if timed_out {
        Err(anyhow::anyhow!(
            "--timeout {}: the guest had not finished after {} s, so it was killed (give a \
             larger --timeout for a longer scenario)",
            args.timeout,
            args.timeout
        ))
    } else {
        vm.run_to_exit(Duration::from_secs(5)).map_err(Into::into)
    };
    let left = vm.shutdown();
    if !left.is_empty() {
        eprintln!("{:?} processes that survived SIGKILL: {left:?}", args.vmm);
    }
    let (exit_code, guest_rc) = match &out {
        Ok(o) => (o.exit_code, o.guest_rc()),
        Err(_) => (None, None),
    };
    for l in vm.console().log()[printed..].iter() {
        if !args.events_only || Event::parse(&l.text).is_some() {
            crate::output::print_line(&format!("[{:8.3}] {}", l.t_s, l.text))?;
        }
    }

    eprintln!();
    eprintln!(
        "guest: {} exit {}, workload exit status {}, {:.1} s",
        match args.vmm {
            Vmm::Uml => "UML",
            Vmm::Qemu => "QEMU",
        },
        exit_code.map_or("none (killed)".into(), |c| c.to_string()),
        guest_rc.map_or("none".into(), |c| c.to_string()),
        vm.t0().elapsed().as_secs_f64()
    );
    if let (Some(c), Some(before)) = (control.as_deref(), connections_before) {
        if let Some(n) = our_negotiation(c, before, status_seen.as_ref()) {
            status_seen = Some(n);
        }
    }
    match &status_seen {
        Some(st) => eprintln!(
            "negotiated: {} (features {:#x}); queues: {}",
            names(&st["negotiated"]),
            st["features"].as_u64().unwrap_or(0),
            names(&st["queues"]),
        ),
        None if control.is_some() => {
            eprintln!("negotiated: nothing (the daemon never served this guest)")
        }
        None => {}
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
    }
    drop(scratch);
    let out = out?;
    // The guest's own view, where its scenario lists the virtio devices (boot, idle).
    let events: Vec<Event> = out
        .lines
        .iter()
        .filter_map(|l| Event::parse(&l.text))
        .collect();
    let guest_saw_balloon = events.iter().any(|e| e.name == "virtio-count").then(|| {
        events
            .iter()
            .any(|e| e.name == "virtio" && e.get("driver") == Some("virtio_balloon"))
    });
    let balloon_appeared = match (guest_saw_balloon, &control) {
        (Some(seen), _) => seen || status_seen.is_some(),
        (None, Some(_)) => status_seen.is_some(),
        (None, None) => true, // cannot tell; said so before the boot
    };
    if guest_rc == Some(0) && !balloon_appeared {
        bail!(
            "the guest's balloon device never appeared: nothing on {} served this guest (a \
             daemon serves one frontend at a time: was another guest attached? Or no daemon \
             listens there any more: start one with `prezero serve --socket PATH`)",
            socket.display()
        );
    }
    match guest_rc {
        Some(0) => Ok(()),
        Some(2) => bail!(
            "the guest workload refused its parameters (exit status 2): see its messages above"
        ),
        Some(rc) => {
            bail!("the guest workload failed a check (exit status {rc}): see its messages above")
        }
        None if exit_code.is_some() => bail!(
            "{} exited (status {}) before the workload finished: see its messages above{}",
            match args.vmm {
                Vmm::Uml => "User-Mode Linux",
                Vmm::Qemu => "QEMU",
            },
            exit_code.unwrap_or_default(),
            // Measured: QEMU with Debian's cloud kernel and our initramfs ends silently right
            // after SeaBIOS at -m 64M and boots at 96M.
            if args.mem < 128 {
                format!(
                    " (a guest of {} MiB may be too small to boot: try --mem 128)",
                    args.mem
                )
            } else {
                String::new()
            }
        ),
        None => bail!("the guest did not finish its workload"),
    }
}
