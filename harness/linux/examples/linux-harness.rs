//! Manual driver of the Linux-guest harness, for working on the harness itself. Users want
//! `prezero linux` (UML on a `prezero serve` it starts) and `prezero bench linux` (the peer
//! comparison) instead.
//!
//! ```text
//! cargo run -p prezero-linux-harness --example linux-harness -- uml [SCENARIO [KEY=VALUE...]] [--socket PATH] [--mem MIB]
//! cargo run -p prezero-linux-harness --example linux-harness -- qemu [SCENARIO [KEY=VALUE...]]
//! cargo run -p prezero-linux-harness --example linux-harness -- bench [--mib N] [--wait S] [--out DIR] [--uml] [--socket PATH]
//! ```
//!
//! `uml`/`qemu` boot one guest, echo its console and print timings. `bench` runs the QEMU peer
//! (and with `--uml` the UML side, attached to `--socket` if given), prints the figures as JSON
//! and writes `DIR/linux-peers.json` (`prezero bench linux` draws the chart).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use prezero_linux_harness::bench::{bench_qemu, bench_uml, BenchOptions, PeerRun};
use prezero_linux_harness::procs::NoCpu;
use prezero_linux_harness::{Harness, Scenario, SetupOptions};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn take_opt(args: &mut Vec<String>, name: &str) -> Option<String> {
    let i = args.iter().position(|a| a == name)?;
    args.remove(i);
    (i < args.len()).then(|| args.remove(i))
}

fn take_flag(args: &mut Vec<String>, name: &str) -> bool {
    let Some(i) = args.iter().position(|a| a == name) else {
        return false;
    };
    args.remove(i);
    true
}

fn scenario_of(args: &[String]) -> Scenario {
    let mut s = Scenario::new(args.first().map_or("boot", String::as_str));
    for kv in args.iter().skip(1) {
        if let Some((k, v)) = kv.split_once('=') {
            s = s.param(k, v);
        }
    }
    s
}

fn summary(r: &PeerRun) -> serde_json::Value {
    serde_json::json!({
        "peer": r.peer,
        "idle_mib": r.result.idle_mib,
        "peak_mib": r.result.peak_mib,
        "after_mib": r.result.after_mib,
        "seconds_to_return": r.result.seconds_to_return,
        "device_cpu_s_per_gib": r.result.device_cpu_s_per_gib,
        "boot_s": r.boot_s,
        "guest_touch_mib_per_s": r.guest_touch_mib_per_s,
        "marks": r.marks,
        "details": r.details,
        "threads_after_free": r.threads_after_free,
        "samples": r.result.series.len(),
    })
}

fn run() -> prezero_linux_harness::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        eprintln!("usage: linux-harness uml|qemu|bench ... (see the source's doc comment)");
        std::process::exit(2);
    }
    let cmd = args.remove(0);
    let socket = take_opt(&mut args, "--socket").map(PathBuf::from);
    let mem = take_opt(&mut args, "--mem").and_then(|m| m.parse().ok());
    let peer = cmd != "uml";
    let t = Instant::now();
    let h = Harness::new(&SetupOptions {
        peer,
        ..Default::default()
    })?;
    eprintln!("setup + workload: {:.2} s", t.elapsed().as_secs_f64());
    match cmd.as_str() {
        "uml" | "qemu" => {
            let t = Instant::now();
            let mut vm: Box<
                dyn std::ops::DerefMut<Target = prezero_linux_harness::vm::GuestProcess>,
            > = if cmd == "uml" {
                let initrd = h.uml_initramfs()?;
                eprintln!(
                    "initramfs {} ({} bytes, modules {:?}) in {:.2} s",
                    initrd.path.display(),
                    initrd.bytes,
                    initrd.modules,
                    t.elapsed().as_secs_f64()
                );
                let mut cfg = h.uml(&initrd).scenario(scenario_of(&args));
                if let Some(m) = mem {
                    cfg = cfg.mem_mib(m);
                }
                if let Some(s) = &socket {
                    cfg = cfg.balloon_socket(s);
                }
                Box::new(cfg.boot()?)
            } else {
                let initrd = h.qemu_initramfs()?;
                eprintln!(
                    "initramfs {} ({} bytes, modules {:?}) in {:.2} s",
                    initrd.path.display(),
                    initrd.bytes,
                    initrd.modules,
                    t.elapsed().as_secs_f64()
                );
                let mut cfg = h.qemu(&initrd)?.scenario(scenario_of(&args));
                if let Some(m) = mem {
                    cfg = cfg.mem_mib(m);
                }
                Box::new(cfg.boot()?)
            };
            let out = vm.follow(Duration::from_secs(600), |l| {
                println!("[{:8.3}] {}", l.t_s, l.text)
            })?;
            let status = out.exit_code;
            let at = |n: &str| out.event(n).map(|e| e.t_s);
            eprintln!(
                "exit {status:?}; /init at {:?} s, exit event at {:?} s, pids {:?}",
                at("init"),
                at("exit"),
                vm.pids().iter().map(|p| p.pid).collect::<Vec<_>>()
            );
            let left = vm.shutdown();
            eprintln!("survivors after shutdown: {left:?}");
        }
        "bench" => {
            let mut opts = BenchOptions::default();
            if let Some(m) = take_opt(&mut args, "--mib").and_then(|m| m.parse().ok()) {
                opts.workload.mib = m;
            }
            if let Some(w) = take_opt(&mut args, "--wait").and_then(|m| m.parse().ok()) {
                opts.workload.wait_s = w;
            }
            let out = PathBuf::from(
                take_opt(&mut args, "--out")
                    .unwrap_or_else(|| h.tools.cache_dir.join("bench").display().to_string()),
            );
            let with_uml = take_flag(&mut args, "--uml");
            std::fs::create_dir_all(&out).map_err(|e| prezero_linux_harness::Error::Io {
                context: format!("creating {}", out.display()),
                source: e,
            })?;
            let mut runs = Vec::new();
            let initrd = h.qemu_initramfs()?;
            let q = bench_qemu(&h.qemu(&initrd)?, &opts)?;
            println!("{}", serde_json::to_string_pretty(&summary(&q)).unwrap());
            runs.push(q);
            if with_uml {
                let initrd = h.uml_initramfs()?;
                let mut cfg = h.uml(&initrd).mem_mib(mem.unwrap_or(2048));
                if let Some(s) = &socket {
                    cfg = cfg.balloon_socket(s);
                }
                let u = bench_uml(&cfg, Box::new(NoCpu), None, &opts)?;
                println!("{}", serde_json::to_string_pretty(&summary(&u)).unwrap());
                runs.push(u);
            }
            let json = out.join("linux-peers.json");
            std::fs::write(&json, serde_json::to_string_pretty(&runs).unwrap()).map_err(|e| {
                prezero_linux_harness::Error::Io {
                    context: format!("writing {}", json.display()),
                    source: e,
                }
            })?;
            eprintln!("wrote {}", json.display());
        }
        other => {
            eprintln!("unknown command {other}");
            std::process::exit(2);
        }
    }
    Ok(())
}
