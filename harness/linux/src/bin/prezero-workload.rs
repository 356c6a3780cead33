//! `prezero-workload`: the guest-side workload of prezero's Linux-guest harness.
//!
//! This program runs *inside* a Linux guest (User-Mode Linux or QEMU), started by the
//! initramfs `/init` that `prezero_linux_harness::initramfs` generates. It is std-only on purpose: the
//! harness compiles this one file with `rustc -C target-feature=+crt-static` at run time into a
//! static binary (no cargo, no crates), so it must not use any dependency.
//!
//! Everything it prints for the host is one line per event:
//!
//! ```text
//! PREZERO event=<name> up=<guest uptime s> key=value key=value ...
//! ```
//!
//! Values never contain spaces. The host side parses these with
//! `prezero_linux_harness::console::Event`.
//!
//! Usage: `prezero-workload run` takes the scenario and its parameters from the kernel command
//! line (`prezero.scenario=NAME prezero.KEY=VALUE ...`); `prezero-workload NAME [KEY=VALUE ...]`
//! runs one directly (arguments override the command line). Scenarios:
//!
//! | scenario | what it does | parameters (default) |
//! |---|---|---|
//! | `boot` | prints the virtio devices and meminfo, exits | |
//! | `meminfo` | prints meminfo and the balloon vmstat counters once | |
//! | `checksum` | fills `mib` MiB with a seeded pattern, checksums it, optionally churns `churn` MiB (allocate, touch, free: memory for page reporting), keeps the pattern up to `hold` s while printing meminfo every `interval` s (and with `verify_every=1` verifying it each time: `checksum-verify`), then verifies every page | `mib` (32), `seed` (1), `hold` (0), `interval` (1), `churn` (0), `verify_every` (0), `until_*` |
//! | `alloc-free` | idles `idle` s, allocates and touches `mib` MiB, holds `hold` s, frees it, then waits up to `wait` s printing meminfo every `interval` s | `mib` (256), `idle` (3), `hold` (1), `wait` (10), `interval` (1), `until_*` |
//! | `idle` | optionally churns `churn` MiB, then prints meminfo every `interval` s for up to `wait` s (host-driven inflate/deflate, stats), then the virtio devices | `wait` (10), `interval` (1), `churn` (0), `until_*` |
//! | `oom` | (with `until_*`: first waits up to `wait` s for the balloon) allocates `mib` MiB in `step`-MiB chunks, touching them, printing progress (deflate-on-OOM) | `mib` (256), `step` (16), `wait` (60), `until_*` |
//!
//! `until_inflated=N` / `until_deflated=N` (4 KiB pages) end a wait early once the guest's
//! `/proc/vmstat` `balloon_inflate` / `balloon_deflate` counters reach N: moving the balloon
//! is how the host tells the guest to go on (there is no other channel). A wait with a
//! condition that runs out of time ends the scenario with exit status 1 (`reason=timeout`).
//!
//! Exit status 0 means the scenario's own checks passed; 1 a failed check (e.g. a checksum
//! mismatch); 2 a usage error.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
const PAGE: usize = 4096;

extern "C" {
    fn mmap(addr: *mut u8, len: usize, prot: i32, flags: i32, fd: i32, off: i64) -> *mut u8;
    fn munmap(addr: *mut u8, len: usize) -> i32;
}
const PROT_READ: i32 = 1;
const PROT_WRITE: i32 = 2;
const MAP_PRIVATE: i32 = 0x02;
const MAP_ANONYMOUS: i32 = 0x20;

/// An anonymous private mapping, unmapped (returned to the guest kernel) on drop.
struct Region {
    ptr: *mut u8,
    len: usize,
}

impl Region {
    fn new(len: usize) -> Result<Region, String> {
        // SAFETY: anonymous mapping request with no address hint; the result is checked.
        let ptr = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr as isize == -1 || ptr.is_null() {
            return Err(format!(
                "mmap of {len} bytes failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Region { ptr, len })
    }

    fn words(&mut self) -> &mut [u64] {
        // SAFETY: the mapping is `len` bytes, page aligned, readable and writable, and owned by
        // this Region for its whole life.
        unsafe { std::slice::from_raw_parts_mut(self.ptr as *mut u64, self.len / 8) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping this Region created.
        unsafe {
            munmap(self.ptr, self.len);
        }
    }
}

fn uptime() -> String {
    fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// Prints one `PREZERO event=...` line and flushes it (the console is the only channel).
fn emit(event: &str, fields: &[(&str, String)]) {
    let mut line = format!("PREZERO event={event} up={}", uptime());
    for (k, v) in fields {
        line.push(' ');
        line.push_str(k);
        line.push('=');
        line.push_str(&v.replace(char::is_whitespace, "_"));
    }
    line.push('\n');
    let out = std::io::stdout();
    let mut out = out.lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}

/// `/proc/meminfo` as `(key, kB)` pairs; keys keep their names with `(x)` turned into `_x`
/// (`Active(anon)` -> `Active_anon`).
fn meminfo() -> Vec<(String, String)> {
    let text = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((k, rest)) = line.split_once(':') else {
            continue;
        };
        let Some(v) = rest.split_whitespace().next() else {
            continue;
        };
        out.push((k.replace('(', "_").replace(')', ""), v.to_owned()));
    }
    out
}

fn emit_meminfo(phase: &str) {
    let mi = meminfo();
    let mut fields: Vec<(&str, String)> = vec![("phase", phase.to_owned())];
    for (k, v) in &mi {
        fields.push((k.as_str(), v.clone()));
    }
    emit("meminfo", &fields);
}

/// The balloon-related `/proc/vmstat` counters (`balloon_inflate`, `balloon_deflate`, ...).
fn emit_vmstat(phase: &str) {
    let text = fs::read_to_string("/proc/vmstat").unwrap_or_default();
    let mut kv = Vec::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once(' ') {
            if k.starts_with("balloon") || k.starts_with("compact") || k == "nr_free_pages" {
                kv.push((k.to_owned(), v.to_owned()));
            }
        }
    }
    let mut fields: Vec<(&str, String)> = vec![("phase", phase.to_owned())];
    for (k, v) in &kv {
        fields.push((k.as_str(), v.clone()));
    }
    let (pcp_pages, pcp_high) = pcp_counts();
    fields.push(("pcp_pages", pcp_pages.to_string()));
    fields.push(("pcp_high", pcp_high.to_string()));
    emit("vmstat", &fields);
}

/// Pages sitting on the per-cpu free lists (`count:` under `pagesets` in /proc/zoneinfo), and
/// the sum of their `high:` limits. Such pages are free but not in the buddy lists, so they are
/// neither counted in MemFree nor ever reported.
fn pcp_counts() -> (u64, u64) {
    let text = fs::read_to_string("/proc/zoneinfo").unwrap_or_default();
    let (mut count, mut high) = (0, 0);
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("count:") {
            count += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("high:") {
            high += v.trim().parse::<u64>().unwrap_or(0);
        }
    }
    (count, high)
}

/// One `event=virtio` line per device under /sys/bus/virtio/devices (or `count=0`).
fn emit_virtio() {
    let mut names: Vec<String> = fs::read_dir("/sys/bus/virtio/devices")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    for n in &names {
        let base = format!("/sys/bus/virtio/devices/{n}");
        let read = |f: &str| {
            fs::read_to_string(format!("{base}/{f}"))
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        let driver = fs::read_link(format!("{base}/driver"))
            .ok()
            .and_then(|p| p.file_name().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "none".into());
        emit(
            "virtio",
            &[
                ("dev", n.clone()),
                ("device", read("device")),
                ("vendor", read("vendor")),
                ("driver", driver),
                ("status", read("status")),
                ("features", read("features")),
            ],
        );
    }
    emit("virtio-count", &[("count", names.len().to_string())]);
}

/// splitmix64: the pattern word for word index `i` under `seed`.
fn pattern(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add(i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Order-dependent checksum over words (FNV-1a style mixing of 64-bit words).
fn fold(sum: u64, w: u64) -> u64 {
    (sum ^ w).wrapping_mul(0x0000_0100_0000_01B3)
}
const FOLD_INIT: u64 = 0xCBF2_9CE4_8422_2325;

struct Params {
    map: BTreeMap<String, String>,
}

impl Params {
    fn num(&self, key: &str, default: u64) -> Result<u64, String> {
        match self.map.get(key) {
            None => Ok(default),
            Some(v) => {
                let v = v.trim();
                let parsed = if let Some(h) = v.strip_prefix("0x") {
                    u64::from_str_radix(h, 16)
                } else {
                    v.parse()
                };
                parsed.map_err(|_| format!("parameter {key}={v} is not a number"))
            }
        }
    }
    fn secs(&self, key: &str, default: f64) -> Result<Duration, String> {
        match self.map.get(key) {
            None => Ok(Duration::from_secs_f64(default)),
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| format!("parameter {key}={v} is not a number of seconds")),
        }
    }
}

/// The balloon's page counters in `/proc/vmstat` (`balloon_inflate`, `balloon_deflate`): pages
/// the driver ever put into / took out of the balloon.
fn balloon_counters() -> (u64, u64) {
    let text = fs::read_to_string("/proc/vmstat").unwrap_or_default();
    let (mut inflated, mut deflated) = (0, 0);
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("balloon_inflate", v)) => inflated = v.trim().parse().unwrap_or(0),
            Some(("balloon_deflate", v)) => deflated = v.trim().parse().unwrap_or(0),
            _ => {}
        }
    }
    (inflated, deflated)
}

/// A condition the host fulfils by moving the balloon: the host's only way to signal the guest
/// (there is no shared file system). Met once `balloon_inflate >= inflated` and
/// `balloon_deflate >= deflated` (parameters `until_inflated`, `until_deflated`, in 4 KiB
/// pages; 0 = no condition).
#[derive(Clone, Copy)]
struct Until {
    inflated: u64,
    deflated: u64,
}

impl Until {
    fn from(p: &Params) -> Result<Until, String> {
        Ok(Until {
            inflated: p.num("until_inflated", 0)?,
            deflated: p.num("until_deflated", 0)?,
        })
    }
    fn is_set(&self) -> bool {
        self.inflated > 0 || self.deflated > 0
    }
    fn met(&self) -> bool {
        let (i, d) = balloon_counters();
        i >= self.inflated && d >= self.deflated
    }
}

/// How a wait ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WaitEnd {
    /// The full time passed (no condition was set).
    Elapsed,
    /// The host met the condition.
    Until,
    /// A condition was set and the time ran out first.
    Timeout,
}

impl WaitEnd {
    fn name(self) -> &'static str {
        match self {
            WaitEnd::Elapsed => "elapsed",
            WaitEnd::Until => "until",
            WaitEnd::Timeout => "timeout",
        }
    }
}

/// Sleeps `total`, printing meminfo every `interval` (phase `phase`).
fn sleep_reporting(total: Duration, interval: Duration, phase: &str) {
    let no = Until {
        inflated: 0,
        deflated: 0,
    };
    wait_phase(total, interval, phase, no, |_| true);
}

/// Waits up to `total`, printing meminfo every `interval` (phase `phase`) and calling `tick`
/// with the round number after each (its `false` is remembered as a failure, see the return);
/// with a condition set, returns as soon as it is met (checked after every interval).
fn wait_phase(
    total: Duration,
    interval: Duration,
    phase: &str,
    until: Until,
    mut tick: impl FnMut(u64) -> bool,
) -> WaitEnd {
    let start = Instant::now();
    let interval = interval.max(Duration::from_millis(50));
    let mut round = 0;
    loop {
        if until.is_set() && until.met() {
            return WaitEnd::Until;
        }
        let left = total.saturating_sub(start.elapsed());
        if left.is_zero() {
            return if until.is_set() {
                WaitEnd::Timeout
            } else {
                WaitEnd::Elapsed
            };
        }
        std::thread::sleep(left.min(interval));
        emit_meminfo(phase);
        round += 1;
        tick(round);
    }
}

fn touch(region: &mut Region, value: u64) {
    let words = region.words();
    for i in (0..words.len()).step_by(PAGE / 8) {
        // Volatile so the compiler cannot drop or merge the first-touch writes.
        // SAFETY: `i` is in bounds of the mapping.
        unsafe { std::ptr::write_volatile(words.as_mut_ptr().add(i), value ^ i as u64) };
    }
}

/// Allocates and touches `mib` MiB, then frees it (free memory for page reporting to find),
/// printing `churn-freed`.
fn churn(mib: usize) -> Result<(), String> {
    if mib == 0 {
        return Ok(());
    }
    let t = Instant::now();
    let mut region = Region::new(mib * MIB)?;
    touch(&mut region, 0xc3c3_c3c3_c3c3_c3c3);
    drop(region);
    emit(
        "churn-freed",
        &[
            ("mib", mib.to_string()),
            ("secs", format!("{:.3}", t.elapsed().as_secs_f64())),
        ],
    );
    emit_meminfo("churned");
    Ok(())
}

/// Checks every word of `words` against the pattern of `seed`: (checksum, bad pages, first bad
/// page).
fn verify(words: &[u64], seed: u64) -> (u64, u64, Option<usize>) {
    let mut got = FOLD_INIT;
    let mut bad_pages = 0u64;
    let mut first_bad: Option<usize> = None;
    for (page, chunk) in words.chunks(PAGE / 8).enumerate() {
        let mut ok = true;
        for (j, &w) in chunk.iter().enumerate() {
            let i = page * (PAGE / 8) + j;
            got = fold(got, w);
            if w != pattern(seed, i as u64) {
                ok = false;
            }
        }
        if !ok {
            bad_pages += 1;
            first_bad.get_or_insert(page);
        }
    }
    (got, bad_pages, first_bad)
}

fn scenario_checksum(p: &Params) -> Result<bool, String> {
    let mib = p.num("mib", 32)? as usize;
    let seed = p.num("seed", 1)?;
    let hold = p.secs("hold", 0.0)?;
    let interval = p.secs("interval", 1.0)?;
    let churn_mib = p.num("churn", 0)? as usize;
    let verify_every = p.num("verify_every", 0)? != 0;
    let until = Until::from(p)?;
    let mut region = Region::new(mib * MIB)?;
    let t = Instant::now();
    let words = region.words();
    let mut sum = FOLD_INIT;
    for (i, w) in words.iter_mut().enumerate() {
        let v = pattern(seed, i as u64);
        *w = v;
        sum = fold(sum, v);
    }
    emit(
        "checksum-filled",
        &[
            ("mib", mib.to_string()),
            ("sum", format!("{sum:016x}")),
            ("secs", format!("{:.3}", t.elapsed().as_secs_f64())),
        ],
    );
    churn(churn_mib)?;
    let mut rounds_failed = 0u64;
    let end = wait_phase(hold, interval, "hold", until, |round| {
        if !verify_every {
            return true;
        }
        let (got, bad_pages, first_bad) = verify(region.words(), seed);
        let ok = got == sum && bad_pages == 0;
        let (inflated, deflated) = balloon_counters();
        emit(
            "checksum-verify",
            &[
                ("round", round.to_string()),
                ("status", if ok { "ok" } else { "fail" }.into()),
                ("bad_pages", bad_pages.to_string()),
                (
                    "first_bad_page",
                    first_bad.map_or("none".into(), |p| p.to_string()),
                ),
                ("balloon_inflate", inflated.to_string()),
                ("balloon_deflate", deflated.to_string()),
            ],
        );
        if !ok {
            rounds_failed += 1;
        }
        ok
    });
    emit("hold-end", &[("reason", end.name().into())]);
    let (got, bad_pages, first_bad) = verify(region.words(), seed);
    let pass = got == sum && bad_pages == 0;
    emit(
        "checksum",
        &[
            ("status", if pass { "ok" } else { "fail" }.into()),
            ("mib", mib.to_string()),
            ("expected", format!("{sum:016x}")),
            ("got", format!("{got:016x}")),
            ("bad_pages", bad_pages.to_string()),
            (
                "first_bad_page",
                first_bad.map_or("none".into(), |p| p.to_string()),
            ),
            ("rounds_failed", rounds_failed.to_string()),
        ],
    );
    Ok(pass && rounds_failed == 0 && end != WaitEnd::Timeout)
}

fn scenario_alloc_free(p: &Params) -> Result<bool, String> {
    let mib = p.num("mib", 256)? as usize;
    let idle = p.secs("idle", 3.0)?;
    let hold = p.secs("hold", 1.0)?;
    let wait = p.secs("wait", 10.0)?;
    let interval = p.secs("interval", 1.0)?;
    let until = Until::from(p)?;
    emit_meminfo("start");
    emit_vmstat("start");
    emit("idle-start", &[]);
    sleep_reporting(idle, interval, "idle");
    emit("alloc-start", &[("mib", mib.to_string())]);
    let t = Instant::now();
    let mut region = Region::new(mib * MIB)?;
    touch(&mut region, 0x5a5a_5a5a_5a5a_5a5a);
    let secs = t.elapsed().as_secs_f64();
    emit(
        "alloc-done",
        &[
            ("mib", mib.to_string()),
            ("secs", format!("{secs:.3}")),
            ("mib_per_s", format!("{:.1}", mib as f64 / secs.max(1e-9))),
        ],
    );
    emit_meminfo("allocated");
    sleep_reporting(hold, interval, "hold");
    drop(region);
    emit("freed", &[("mib", mib.to_string())]);
    emit_meminfo("freed");
    emit_vmstat("freed");
    let end = wait_phase(wait, interval, "wait", until, |_| true);
    emit_vmstat("end");
    emit("done", &[("reason", end.name().into())]);
    Ok(end != WaitEnd::Timeout)
}

fn scenario_idle(p: &Params) -> Result<bool, String> {
    let wait = p.secs("wait", 10.0)?;
    let interval = p.secs("interval", 1.0)?;
    let until = Until::from(p)?;
    emit_meminfo("start");
    churn(p.num("churn", 0)? as usize)?;
    let end = wait_phase(wait, interval, "idle", until, |_| true);
    emit_vmstat("end");
    emit_virtio();
    emit("done", &[("reason", end.name().into())]);
    Ok(end != WaitEnd::Timeout)
}

fn scenario_oom(p: &Params) -> Result<bool, String> {
    let mib = p.num("mib", 256)? as usize;
    let step = (p.num("step", 16)? as usize).max(1);
    let until = Until::from(p)?;
    emit_meminfo("start");
    if until.is_set() {
        // E.g. wait until the balloon the host asked for is inflated before eating memory.
        let end = wait_phase(
            p.secs("wait", 60.0)?,
            p.secs("interval", 0.5)?,
            "wait",
            until,
            |_| true,
        );
        emit("oom-ready", &[("reason", end.name().into())]);
        if end == WaitEnd::Timeout {
            return Ok(false);
        }
        emit_vmstat("ready");
    }
    let mut held = Vec::new();
    let mut total = 0;
    while total < mib {
        let n = step.min(mib - total);
        let mut r = Region::new(n * MIB)?;
        touch(&mut r, total as u64);
        held.push(r);
        total += n;
        emit("oom-progress", &[("mib", total.to_string())]);
    }
    emit_meminfo("allocated");
    emit_vmstat("allocated");
    emit("oom-done", &[("mib", total.to_string())]);
    Ok(true)
}

fn cmdline_params() -> (Option<String>, BTreeMap<String, String>) {
    let text = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let mut scenario = None;
    let mut map = BTreeMap::new();
    for word in text.split_whitespace() {
        let Some(rest) = word.strip_prefix("prezero.") else {
            continue;
        };
        let Some((k, v)) = rest.split_once('=') else {
            continue;
        };
        if k == "scenario" {
            scenario = Some(v.to_owned());
        } else {
            map.insert(k.to_owned(), v.to_owned());
        }
    }
    (scenario, map)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd_scenario, mut map) = cmdline_params();
    let scenario = match args.first().map(String::as_str) {
        None | Some("run") => cmd_scenario.unwrap_or_else(|| "boot".into()),
        Some(s) => s.to_owned(),
    };
    for a in args.iter().skip(1) {
        match a.split_once('=') {
            Some((k, v)) => {
                map.insert(k.to_owned(), v.to_owned());
            }
            None => {
                emit(
                    "error",
                    &[("msg", format!("argument '{a}' is not KEY=VALUE"))],
                );
                std::process::exit(2);
            }
        }
    }
    let params = Params { map };
    emit("scenario", &[("name", scenario.clone())]);
    let result = match scenario.as_str() {
        "boot" => {
            emit_virtio();
            emit_meminfo("boot");
            emit_vmstat("boot");
            Ok(true)
        }
        "meminfo" => {
            emit_meminfo("now");
            emit_vmstat("now");
            Ok(true)
        }
        "checksum" => scenario_checksum(&params),
        "alloc-free" => scenario_alloc_free(&params),
        "idle" => scenario_idle(&params),
        "oom" => scenario_oom(&params),
        other => Err(format!(
            "unknown scenario '{other}' (boot, meminfo, checksum, alloc-free, idle, oom)"
        )),
    };
    match result {
        Ok(true) => std::process::exit(0),
        Ok(false) => std::process::exit(1),
        Err(msg) => {
            emit("error", &[("msg", msg)]);
            std::process::exit(2);
        }
    }
}
