//! Host processes of a VM: recording every pid it creates, killing them all, and reading their
//! memory and CPU time from `/proc`.
//!
//! UML forks helper processes, and one survives SIGKILL of the main process in its own session
//! (see UML-NOTES). A [`PidSet`] therefore records, from `/proc`, every process that descends from
//! the VM's main process **or** carries the VM's tag in its environment (`PREZERO_LINUX_TAG`,
//! inherited across fork and exec, so reparented orphans are still found). Pids are recorded with
//! their start time so a recycled pid is never killed.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Environment variable whose value tags every process of one VM.
pub const TAG_VAR: &str = "PREZERO_LINUX_TAG";

/// A process identity: pid plus start time (clock ticks after boot), immune to pid reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProcId {
    /// The pid.
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat`.
    pub start: u64,
}

/// The fields of `/proc/<pid>/stat` the harness uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// Process name (`comm`).
    pub comm: String,
    /// State letter (`R`, `S`, `Z`, ...).
    pub state: char,
    /// Parent pid.
    pub ppid: i32,
    /// User time in clock ticks.
    pub utime: u64,
    /// System time in clock ticks.
    pub stime: u64,
    /// Start time in clock ticks after boot.
    pub start: u64,
}

/// Parses the text of `/proc/<pid>/stat` (the name may contain spaces and parentheses).
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    let f = |n: usize| rest.get(n - 3).and_then(|s| s.parse::<u64>().ok());
    Some(ProcStat {
        comm,
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        utime: f(14)?,
        stime: f(15)?,
        start: f(22)?,
    })
}

/// `/proc/<pid>/stat` of a live process (or thread, with `/proc/<pid>/task/<tid>`).
pub fn stat(pid: i32) -> Option<ProcStat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Whether `id` still runs (exists with the same start time and is not a zombie).
pub fn is_alive(id: ProcId) -> bool {
    stat(id.pid).is_some_and(|s| s.start == id.start && s.state != 'Z' && s.state != 'X')
}

fn environ_has(pid: i32, needle: &[u8]) -> bool {
    fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == needle))
}

fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Every process of one VM seen so far.
#[derive(Debug, Clone)]
pub struct PidSet {
    root: ProcId,
    tag: String,
    seen: BTreeSet<ProcId>,
}

impl PidSet {
    /// Starts with the VM's main process and its tag value.
    pub fn new(root_pid: i32, tag: &str) -> PidSet {
        let start = stat(root_pid).map_or(0, |s| s.start);
        let root = ProcId {
            pid: root_pid,
            start,
        };
        PidSet {
            root,
            tag: format!("{TAG_VAR}={tag}"),
            seen: BTreeSet::from([root]),
        }
    }

    /// The main process.
    pub fn root(&self) -> ProcId {
        self.root
    }

    /// Scans `/proc` and records descendants and tagged processes; returns the number added.
    pub fn refresh(&mut self) -> usize {
        let before = self.seen.len();
        let procs: Vec<(i32, ProcStat)> = all_pids()
            .into_iter()
            .filter_map(|p| stat(p).map(|s| (p, s)))
            .collect();
        let my_pid = std::process::id() as i32;
        // Tagged processes (environ is readable for our own processes).
        for (pid, s) in &procs {
            if *pid != my_pid && s.state != 'Z' && environ_has(*pid, self.tag.as_bytes()) {
                self.seen.insert(ProcId {
                    pid: *pid,
                    start: s.start,
                });
            }
        }
        // Descendants of anything recorded, to a fixed point.
        loop {
            let known: BTreeSet<i32> = self
                .seen
                .iter()
                .filter(|id| is_alive(**id))
                .map(|id| id.pid)
                .collect();
            let mut added = false;
            for (pid, s) in &procs {
                if known.contains(&s.ppid)
                    && *pid != my_pid
                    && self.seen.insert(ProcId {
                        pid: *pid,
                        start: s.start,
                    })
                {
                    added = true;
                }
            }
            if !added {
                break;
            }
        }
        self.seen.len() - before
    }

    /// Every process recorded (alive or not).
    pub fn all(&self) -> Vec<ProcId> {
        self.seen.iter().copied().collect()
    }

    /// The recorded processes that still run.
    pub fn alive(&self) -> Vec<ProcId> {
        self.seen
            .iter()
            .copied()
            .filter(|id| is_alive(*id))
            .collect()
    }

    /// SIGKILLs every recorded live process (re-checking its identity first), rescans, repeats
    /// until none is left or `timeout` passes. Returns the processes still alive (normally none).
    pub fn kill_all(&mut self, timeout: Duration) -> Vec<ProcId> {
        let deadline = Instant::now() + timeout;
        loop {
            self.refresh();
            let alive = self.alive();
            if alive.is_empty() || Instant::now() >= deadline {
                return alive;
            }
            for id in alive {
                if is_alive(id) {
                    tracing::debug!(pid = id.pid, "SIGKILL");
                    // SAFETY: plain kill(2) on a pid whose start time we just re-checked.
                    unsafe {
                        libc::kill(id.pid, libc::SIGKILL);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// SIGKILLs every process of every VM this process started (their tag, see [`TAG_VAR`], begins
/// with this process's pid), repeating until none is left or `timeout` passes; returns the
/// survivors. For an interrupted command (SIGINT) that cannot reach its `GuestProcess`
/// values (`vm.rs`): it finds the VMs' processes by tag, not by name.
pub fn kill_vms_started_here(timeout: Duration) -> Vec<ProcId> {
    let prefix = format!("{TAG_VAR}={}-", std::process::id());
    let deadline = Instant::now() + timeout;
    let my_pid = std::process::id() as i32;
    loop {
        let tagged: Vec<ProcId> = all_pids()
            .into_iter()
            .filter(|&p| p != my_pid)
            .filter_map(|p| {
                let s = stat(p)?;
                let env = fs::read(format!("/proc/{p}/environ")).ok()?;
                env.split(|&b| b == 0)
                    .any(|kv| kv.starts_with(prefix.as_bytes()))
                    .then_some(ProcId {
                        pid: p,
                        start: s.start,
                    })
            })
            .filter(|id| is_alive(*id))
            .collect();
        if tagged.is_empty() || Instant::now() >= deadline {
            return tagged;
        }
        for id in tagged {
            if is_alive(id) {
                // SAFETY: plain kill(2) on a pid whose start time we just re-checked.
                unsafe {
                    libc::kill(id.pid, libc::SIGKILL);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU time of one task in seconds: `/proc/.../schedstat` (nanoseconds) when the kernel has it,
/// else utime + stime from `stat` (clock ticks).
fn task_cpu_seconds(dir: &Path) -> io::Result<f64> {
    if let Ok(s) = fs::read_to_string(dir.join("schedstat")) {
        if let Some(ns) = s
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        {
            return Ok(ns as f64 / 1e9);
        }
    }
    let s = fs::read_to_string(dir.join("stat"))?;
    let st = parse_stat(&s)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unparsable stat"))?;
    Ok((st.utime + st.stime) as f64 / clock_ticks())
}

/// CPU seconds of one thread of a process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadCpu {
    /// Thread id.
    pub tid: i32,
    /// Thread name (QEMU names its threads: `CPU 0/TCG`, `call_rcu`, `worker`, ...).
    pub name: String,
    /// CPU seconds so far.
    pub cpu_s: f64,
}

/// CPU seconds of every live thread of `pid`.
pub fn threads_cpu(pid: i32) -> io::Result<Vec<ThreadCpu>> {
    let mut out = Vec::new();
    for e in fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let name = fs::read_to_string(e.path().join("comm"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        if let Ok(cpu_s) = task_cpu_seconds(&e.path()) {
            out.push(ThreadCpu { tid, name, cpu_s });
        }
    }
    out.sort_by_key(|t| t.tid);
    Ok(out)
}

/// Host memory used by a VM, in MiB.
pub trait MemoryProbe: Send {
    /// The current value in MiB.
    fn read_mib(&mut self) -> io::Result<f64>;
    /// What is measured (for reports).
    fn describe(&self) -> String;
}

/// CPU seconds consumed by the device (a whole process, e.g. QEMU or the prezero daemon).
pub trait CpuProbe: Send {
    /// Cumulative CPU seconds.
    fn cpu_seconds(&mut self) -> io::Result<f64>;
    /// What is measured.
    fn describe(&self) -> String;
}

/// `VmRSS` of a process (QEMU: its guest RAM is private anonymous memory, so RSS tracks how
/// much of it is backed; reporting's `MADV_DONTNEED` lowers it).
#[derive(Debug, Clone)]
pub struct RssProbe {
    /// The process.
    pub pid: i32,
}

/// A `Key:  N kB` value of `/proc/<pid>/status`, in MiB.
pub fn status_mib(pid: i32, key: &str) -> io::Result<f64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))?;
    crate::console::Meminfo::parse(&text)
        .mib(key)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no {key} in /proc/{pid}/status"),
            )
        })
}

impl MemoryProbe for RssProbe {
    fn read_mib(&mut self) -> io::Result<f64> {
        status_mib(self.pid, "VmRSS")
    }
    fn describe(&self) -> String {
        format!("VmRSS of pid {}", self.pid)
    }
}

/// Allocated blocks of UML's guest-memory file (a deleted tmpfs file held open by the UML
/// process; host memory actually backing guest RAM; hole punching lowers it).
///
/// The file is looked up lazily (it appears a moment after UML starts): until it is found,
/// the probe reads 0.
#[derive(Debug, Clone)]
pub struct UmlMemoryProbe {
    /// The UML main process.
    pub pid: i32,
    file: Option<PathBuf>,
}

impl UmlMemoryProbe {
    /// A probe for UML process `pid`.
    pub fn new(pid: i32) -> Self {
        UmlMemoryProbe { pid, file: None }
    }
}

/// Finds UML's memory file among `/proc/<pid>/fd`: the largest open regular file whose link
/// target ends in ` (deleted)` (UML creates it with `O_TMPFILE`, normally on `/dev/shm`).
/// Returns the `/proc/<pid>/fd/<n>` path, which stays valid while UML runs.
pub fn find_uml_memory_file(pid: i32) -> io::Result<Option<PathBuf>> {
    let mut best: Option<(u64, PathBuf)> = None;
    for e in fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
        let Ok(target) = fs::read_link(e.path()) else {
            continue;
        };
        let t = target.to_string_lossy();
        if !t.starts_with('/') || !t.ends_with(" (deleted)") {
            continue;
        }
        let Ok(md) = fs::metadata(e.path()) else {
            continue;
        };
        if md.is_file() && best.as_ref().map_or(true, |(size, _)| md.len() > *size) {
            best = Some((md.len(), e.path()));
        }
    }
    Ok(best.map(|(_, p)| p))
}

/// Allocated bytes of a file (`st_blocks * 512`).
pub fn allocated_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(fs::metadata(path)?.blocks() * 512)
}

impl UmlMemoryProbe {
    /// The memory file's `/proc/<pid>/fd/<n>` path, once found.
    pub fn file(&mut self) -> io::Result<Option<&Path>> {
        if self.file.is_none() {
            self.file = find_uml_memory_file(self.pid)?;
        }
        Ok(self.file.as_deref())
    }
}

impl MemoryProbe for UmlMemoryProbe {
    fn read_mib(&mut self) -> io::Result<f64> {
        match self.file()? {
            None => Ok(0.0),
            Some(p) => Ok(allocated_bytes(p)? as f64 / (1024.0 * 1024.0)),
        }
    }
    fn describe(&self) -> String {
        format!("allocated blocks of UML pid {}'s memory file", self.pid)
    }
}

/// All threads' CPU time of one process.
#[derive(Debug, Clone)]
pub struct ProcessCpu {
    /// The process.
    pub pid: i32,
}

impl CpuProbe for ProcessCpu {
    fn cpu_seconds(&mut self) -> io::Result<f64> {
        // Sum over live threads plus what exited threads left in the process's own counters
        // would need `/proc/<pid>/stat`; threads of QEMU and the daemon are long-lived.
        let sum: f64 = threads_cpu(self.pid)?.iter().map(|t| t.cpu_s).sum();
        let whole = fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ok()
            .and_then(|s| parse_stat(&s))
            .map(|s| (s.utime + s.stime) as f64 / clock_ticks())
            .unwrap_or(0.0);
        // The whole-process tick count includes exited threads but has 10 ms resolution: take
        // the larger so neither loss is visible.
        Ok(sum.max(whole))
    }
    fn describe(&self) -> String {
        format!("CPU time of pid {} (all threads)", self.pid)
    }
}

/// CPU time of the threads of `pid` whose name starts with `prefix` (a device served by threads
/// inside a bigger process, e.g. the daemon run in-process by `prezero bench linux`).
#[derive(Debug, Clone)]
pub struct ThreadsCpu {
    /// The process.
    pub pid: i32,
    /// Thread-name prefix (`/proc/<pid>/task/<tid>/comm`, at most 15 bytes).
    pub prefix: String,
}

impl CpuProbe for ThreadsCpu {
    fn cpu_seconds(&mut self) -> io::Result<f64> {
        Ok(threads_cpu(self.pid)?
            .iter()
            .filter(|t| t.name.starts_with(&self.prefix))
            .map(|t| t.cpu_s)
            .sum())
    }
    fn describe(&self) -> String {
        format!(
            "CPU time of pid {}'s threads named {}*",
            self.pid, self.prefix
        )
    }
}

/// The sum of several probes: the host CPU of a VM and its device together (QEMU plus
/// `prezero serve`), so that a VMM serving its device in-process and one using an external
/// backend are compared on all the CPU they cost the host.
pub struct SumCpu(pub Vec<Box<dyn CpuProbe>>);

impl CpuProbe for SumCpu {
    fn cpu_seconds(&mut self) -> io::Result<f64> {
        let mut sum = 0.0;
        for p in &mut self.0 {
            sum += p.cpu_seconds()?;
        }
        Ok(sum)
    }
    fn describe(&self) -> String {
        let parts: Vec<String> = self.0.iter().map(|p| p.describe()).collect();
        parts.join(" + ")
    }
}

/// No device CPU measurement (reads 0).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCpu;

impl CpuProbe for NoCpu {
    fn cpu_seconds(&mut self) -> io::Result<f64> {
        Ok(0.0)
    }
    fn describe(&self) -> String {
        "no CPU measurement".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_handles_odd_names() {
        let line = "1234 (qemu (x) sys) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0 98765 1000 200 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.comm, "qemu (x) sys");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!((s.utime, s.stime), (250, 75));
        assert_eq!(s.start, 98765);
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn own_process_is_alive_and_measurable() {
        let me = std::process::id() as i32;
        let st = stat(me).unwrap();
        assert!(is_alive(ProcId {
            pid: me,
            start: st.start
        }));
        assert!(!is_alive(ProcId {
            pid: me,
            start: st.start + 1
        }));
        assert!(RssProbe { pid: me }.read_mib().unwrap() > 0.0);
        assert!(ProcessCpu { pid: me }.cpu_seconds().unwrap() >= 0.0);
        assert!(!threads_cpu(me).unwrap().is_empty());
        let t = std::thread::Builder::new()
            .name("pz-probe-test".into())
            .spawn(|| {
                let start = Instant::now();
                let mut x = 0u64;
                while start.elapsed() < Duration::from_millis(30) {
                    x = x.wrapping_add(std::hint::black_box(1));
                }
                std::thread::sleep(Duration::from_secs(5));
                x
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let named = ThreadsCpu {
            pid: me,
            prefix: "pz-probe".into(),
        }
        .cpu_seconds()
        .unwrap();
        assert!(named > 0.0, "{named}");
        assert_eq!(
            ThreadsCpu {
                pid: me,
                prefix: "no-such-thread".into()
            }
            .cpu_seconds()
            .unwrap(),
            0.0
        );
        drop(t);
    }

    #[test]
    fn pidset_records_and_kills_tagged_children() {
        use std::process::Command;
        let tag = format!("test-{}", std::process::id());
        // sh starts a background sleep in its own session (like UML's surviving helper), then
        // waits.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("setsid sleep 300 & sleep 300")
            .env(TAG_VAR, &tag)
            .spawn()
            .unwrap();
        let mut set = PidSet::new(child.id() as i32, &tag);
        let deadline = Instant::now() + Duration::from_secs(20);
        while set.alive().len() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            set.refresh();
        }
        assert!(set.alive().len() >= 3, "{:?}", set.all());
        let left = set.kill_all(Duration::from_secs(10));
        let _ = child.wait();
        assert!(left.is_empty(), "{left:?}");
        assert!(set.all().iter().all(|id| !is_alive(*id)));
    }
}
