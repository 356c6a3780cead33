//! `prezero bench seed-table`: the upstream measurement reproduced on our system.
//!
//! A 2 GiB guest dirties and frees all its memory, free page reporting hands it to the daemon
//! (which punches it out of the memfd), then the guest allocates 256 MiB with `ZERO` and touches
//! every 4 KiB page. Three modes in the same run:
//! - `baseline`: the device does not offer `DEVICE_INIT_REPORTED`, so the guest zeroes;
//! - `optimized`: known-zero blocks skip zeroing;
//! - `floor`: no zeroing anywhere (plain allocation, then touch): the physical limit, since the
//!   host must still fault in and zero each page on first touch.
//!
//! Two granularities: 2 MiB blocks (the THP analogue) and 4 KiB pages; and, as upstream's
//! hugetlb measurement, 2 MiB pages of the guest's huge page pool (the hugetlbfs analogue).
//!
//! `--vm`: the same measurement inside a real VM, prezero's kernel under QEMU against `prezero
//! serve` (`seed_vm.rs`); the result names the accelerator.

use super::chart::{bar_chart, Bar};
use super::median;
use super::seed_vm::{self, Runs, VmOptions};
use crate::in_process::InProcess;
use crate::output::Progress;
use anyhow::{bail, Context, Result};
use clap::Args;
use prezero_guest::workload::{alloc_and_touch, dirty_and_free, free_run, Source};
use prezero_guest::GuestOptions;
use prezero_mm::AllocFlags;
use prezero_vhost::FeatureOffer;
use serde::Serialize;
use std::path::PathBuf;

/// Options of the seed-table benchmark.
#[derive(Args, Debug)]
pub struct SeedTableArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 2048)]
    mem_mib: u64,
    /// Zeroed allocation in MiB.
    #[arg(long, default_value_t = 256)]
    alloc_mib: u64,
    /// Repeats per mode (median, min and max reported).
    #[arg(long, default_value_t = 9)]
    repeats: usize,
    /// Back guest RAM with 2 MiB host huge pages (MFD_HUGETLB). Reserves them through
    /// /proc/sys/vm/nr_hugepages for the run (root) and gives them back afterwards.
    #[arg(long)]
    hugetlb: bool,
    /// Where to write the SVG bar chart.
    #[arg(long, default_value = "seed-table.svg")]
    svg: PathBuf,
    /// Measure inside a VM: prezero's kernel (kernel/) under QEMU >= 10.2
    /// (scripts/qemu-setup.sh) against `prezero serve`, one VM per mode, timed by the guest's
    /// TSC. KVM when it works, else TCG (software emulation, where the guest's own stores are
    /// emulated: the ratios then differ from a KVM guest's).
    #[arg(long, conflicts_with = "hugetlb")]
    vm: bool,
    /// With --vm: the kernel image (default: built by scripts/kernel-build.sh).
    #[arg(long, requires = "vm")]
    kernel: Option<PathBuf>,
}

/// Median, min and max of a series, in ms.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Spread {
    /// Median.
    pub median: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
}

impl Spread {
    fn of(v: &[f64]) -> Spread {
        Spread {
            median: median(v.to_vec()),
            min: v.iter().copied().fold(f64::INFINITY, f64::min),
            max: v.iter().copied().fold(0.0, f64::max),
        }
    }
}

/// One granularity's figures.
#[derive(Clone, Debug, Serialize)]
pub struct Granularity {
    /// Allocation plus touch, guest zeroes (median ms).
    pub baseline_ms: f64,
    /// Allocation plus touch, zeroing skipped (median ms).
    pub optimized_ms: f64,
    /// Allocation plus touch, no zeroing at all (median ms).
    pub floor_ms: f64,
    /// The allocation calls alone, guest zeroes (median ms).
    pub alloc_baseline_ms: f64,
    /// The allocation calls alone, zeroing skipped (median ms).
    pub alloc_optimized_ms: f64,
    /// Share of optimized allocations that were known-zero.
    pub zero_hit_rate: f64,
    /// `optimized_ms / baseline_ms` (upstream: 0.22 in a KVM guest with host THP).
    pub optimized_over_baseline: f64,
    /// `optimized_ms / floor_ms` (target <= 1.10).
    pub optimized_over_floor: f64,
    /// `alloc_optimized_ms / alloc_baseline_ms` (target <= 0.05).
    pub alloc_optimized_over_baseline: f64,
    /// Spreads of every mode: total and allocation alone.
    pub spread: Spreads,
}

/// Median/min/max of each mode.
#[derive(Clone, Debug, Serialize)]
pub struct Spreads {
    /// Baseline, allocation plus touch.
    pub baseline: Spread,
    /// Optimized, allocation plus touch.
    pub optimized: Spread,
    /// Floor, allocation plus touch.
    pub floor: Spread,
    /// Baseline, allocation alone.
    pub alloc_baseline: Spread,
    /// Optimized, allocation alone.
    pub alloc_optimized: Spread,
    /// Floor, allocation alone.
    pub alloc_floor: Spread,
}

/// The benchmark's result.
#[derive(Clone, Debug, Serialize)]
pub struct SeedTable {
    /// 2 MiB blocks (the THP analogue).
    pub block_2m: Granularity,
    /// 4 KiB pages.
    pub page_4k: Granularity,
    /// Huge pages of the guest's pool (upstream: hugetlb surplus pages 219 ms -> 65 ms).
    pub huge_pool: Granularity,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// Allocation in MiB.
    pub alloc_mib: u64,
    /// Repeats per mode.
    pub repeats: usize,
    /// Guest RAM backed by 2 MiB host huge pages.
    pub hugetlb: bool,
    /// The upstream ratio, for comparison.
    pub upstream_optimized_over_baseline: f64,
    /// Where the guest ran: `in-process` (a host process guest), or the VM's accelerator,
    /// `kvm` or `tcg` (`--vm`).
    pub accelerator: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Baseline,
    Optimized,
    Floor,
}

/// One mode's guest, ready to measure: it has been running (all memory dirtied once and
/// freed) and its free memory has been reported.
struct Subject {
    sys: InProcess,
    flags: AllocFlags,
    runs: Runs,
}

impl Subject {
    fn start(a: &SeedTableArgs, mode: Mode, source: Source) -> Result<Subject> {
        let offer = FeatureOffer {
            device_init_reported: mode != Mode::Baseline,
            ..FeatureOffer::default()
        };
        let guest = GuestOptions {
            ram_size: a.mem_mib << 20,
            huge_page_size: a.hugetlb.then_some(2 << 20),
            ..GuestOptions::default()
        };
        let mut sys = InProcess::start(guest, offer)?;
        let g = &mut sys.guest;
        dirty_and_free(g, u64::MAX)?;
        if source == Source::HugePool {
            let pages = (a.alloc_mib << 20) / (2 << 20);
            if g.set_huge_pages(pages) < pages {
                bail!("the guest could not reserve {pages} huge pages for its pool");
            }
        }
        g.report_now();
        let flags = if mode == Mode::Floor {
            AllocFlags::NONE
        } else {
            AllocFlags::ZERO
        };
        Ok(Subject {
            sys,
            flags,
            runs: Runs::default(),
        })
    }

    /// One timed run, then back to the starting point: the memory is freed dirty and
    /// reported (punched) again.
    fn run_once(&mut self, bytes: u64, source: Source) -> Result<()> {
        let g = &mut self.sys.guest;
        let run = alloc_and_touch(g, bytes, source, self.flags)?;
        self.runs.total_ms.push(run.total().as_secs_f64() * 1e3);
        self.runs.alloc_ms.push(run.alloc.as_secs_f64() * 1e3);
        self.runs.hits += run.known_zero;
        self.runs.blocks += run.blocks.len() as u64;
        free_run(g, &run)?;
        let pass = g.report_now();
        if pass.pages_failed > 0 {
            bail!("the device failed {} reported pages", pass.pages_failed);
        }
        Ok(())
    }
}

/// Progress steps of one granularity: three guests to start, then every timed run.
fn steps(a: &SeedTableArgs) -> u64 {
    3 + 3 * a.repeats as u64
}

fn granularity(
    a: &SeedTableArgs,
    name: &str,
    source: Source,
    progress: &mut Progress,
) -> Result<Granularity> {
    let modes = [Mode::Baseline, Mode::Optimized, Mode::Floor];
    let mut subjects = Vec::new();
    for mode in modes {
        progress.step(&format!(
            "{name}: {mode:?} guest dirties, frees and reports {} MiB",
            a.mem_mib
        ));
        subjects.push(Subject::start(a, mode, source)?);
        progress.done();
    }
    // Modes take turns, so drift in the host's state (page cache, reclaim, other load) hits
    // all three alike instead of biasing whichever ran last.
    for repeat in 0..a.repeats {
        for (s, mode) in subjects.iter_mut().zip(modes) {
            progress.step(&format!(
                "{name}: {mode:?} run {}/{}",
                repeat + 1,
                a.repeats
            ));
            s.run_once(a.alloc_mib << 20, source)?;
            progress.done();
        }
    }
    let Ok([base, opt, floor]) = <[Subject; 3]>::try_from(subjects) else {
        unreachable!("three modes")
    };
    Ok(summarize(&base.runs, &opt.runs, &floor.runs))
}

/// One granularity's figures from each mode's runs.
fn summarize(base: &Runs, opt: &Runs, floor: &Runs) -> Granularity {
    let s = Spreads {
        baseline: Spread::of(&base.total_ms),
        optimized: Spread::of(&opt.total_ms),
        floor: Spread::of(&floor.total_ms),
        alloc_baseline: Spread::of(&base.alloc_ms),
        alloc_optimized: Spread::of(&opt.alloc_ms),
        alloc_floor: Spread::of(&floor.alloc_ms),
    };
    Granularity {
        baseline_ms: s.baseline.median,
        optimized_ms: s.optimized.median,
        floor_ms: s.floor.median,
        alloc_baseline_ms: s.alloc_baseline.median,
        alloc_optimized_ms: s.alloc_optimized.median,
        zero_hit_rate: opt.hits as f64 / opt.blocks as f64,
        optimized_over_baseline: s.optimized.median / s.baseline.median,
        optimized_over_floor: s.optimized.median / s.floor.median,
        alloc_optimized_over_baseline: s.alloc_optimized.median / s.alloc_baseline.median,
        spread: s,
    }
}

/// Reserves 2 MiB huge pages for the run and gives the previous setting back on drop (and
/// when the run is interrupted).
struct HugePages {
    previous: u64,
    _on_interrupt: crate::interrupt::Cleanup,
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

impl HugePages {
    fn reserve(pages: u64) -> Result<HugePages> {
        let read = || -> Result<u64> {
            Ok(std::fs::read_to_string(NR_HUGEPAGES)
                .context("reading nr_hugepages")?
                .trim()
                .parse()?)
        };
        let previous = read()?;
        if previous < pages {
            std::fs::write(NR_HUGEPAGES, pages.to_string()).with_context(|| {
                format!("reserving {pages} huge pages needs root: `echo {pages} > {NR_HUGEPAGES}`, or run without --hugetlb")
            })?;
            let got = read()?;
            if got < pages {
                let _ = std::fs::write(NR_HUGEPAGES, previous.to_string());
                bail!("only {got} of {pages} 2 MiB huge pages could be reserved (memory fragmented?); run without --hugetlb");
            }
        }
        Ok(HugePages {
            previous,
            _on_interrupt: crate::interrupt::on_exit(move || {
                let _ = std::fs::write(NR_HUGEPAGES, previous.to_string());
            }),
        })
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        let _ = std::fs::write(NR_HUGEPAGES, self.previous.to_string());
    }
}

/// Runs the benchmark.
pub fn run(a: &SeedTableArgs) -> Result<()> {
    if a.repeats == 0 {
        bail!(
            "--repeats 0: give at least 1 (3 or more for a median and spread that mean something)"
        );
    }
    if a.alloc_mib * 2 > a.mem_mib {
        bail!(
            "--alloc-mib {} is more than half of --mem-mib {} (the benchmark's limit): give \
             --mem-mib {} or more, or a smaller --alloc-mib",
            a.alloc_mib,
            a.mem_mib,
            a.alloc_mib * 2
        );
    }
    if a.vm {
        return run_vm(a);
    }
    let _huge = a
        .hugetlb
        .then(|| HugePages::reserve(3 * (a.mem_mib / 2) + 8))
        .transpose()?;
    let mut progress = Progress::new("seed-table", 3 * steps(a));
    let t = SeedTable {
        block_2m: granularity(a, "2 MiB blocks", Source::Buddy(9), &mut progress)?,
        page_4k: granularity(a, "4 KiB pages", Source::Buddy(0), &mut progress)?,
        huge_pool: granularity(a, "huge page pool", Source::HugePool, &mut progress)?,
        mem_mib: a.mem_mib,
        alloc_mib: a.alloc_mib,
        repeats: a.repeats,
        hugetlb: a.hugetlb,
        upstream_optimized_over_baseline: 0.22,
        accelerator: "in-process".into(),
    };
    drop(progress);
    write_chart(&t, &a.svg)?;
    super::print(a.json, &t, |t| table(t, a))
}

/// `--vm`: the three modes in three VMs, the same table from the kernel's runs.
fn run_vm(a: &SeedTableArgs) -> Result<()> {
    let o = VmOptions {
        mem_mib: a.mem_mib,
        alloc_mib: a.alloc_mib,
        repeats: a.repeats,
        kernel: a.kernel.clone(),
    };
    let mut progress = Progress::new("seed-table --vm", 1 + seed_vm::MODES.len() as u64);
    let vm = seed_vm::measure(&o, &mut progress)?;
    drop(progress);
    let g = |name: &str| {
        let [base, opt, floor] = seed_vm::MODES.map(|m| vm.get(name, m));
        summarize(&base, &opt, &floor)
    };
    let t = SeedTable {
        block_2m: g("block_2m"),
        page_4k: g("page_4k"),
        huge_pool: g("huge_pool"),
        mem_mib: a.mem_mib,
        alloc_mib: a.alloc_mib,
        repeats: a.repeats,
        hugetlb: false,
        upstream_optimized_over_baseline: 0.22,
        accelerator: vm.accelerator.into(),
    };
    write_chart(&t, &a.svg)?;
    super::print(a.json, &t, |t| table(t, a))
}

/// Whether the target is met, and if it is missed whether that is within the noise: the
/// ratio of medians misses, but the runs' min-max ranges of the two modes overlap (the spread
/// exceeds the effect, so more repeats are needed to tell).
fn verdict(met: bool, a: Spread, b: Spread) -> &'static str {
    if met {
        "met"
    } else if a.min <= b.max && b.min <= a.max {
        "MISSED, within noise: the min-max ranges overlap (more --repeats)"
    } else {
        "MISSED"
    }
}

fn table(t: &SeedTable, a: &SeedTableArgs) -> String {
    let mut out = format!(
        "seed table: {} MiB guest, allocate {} MiB with ZERO after reporting and touch every 4 KiB page\n\
         host backing: {}; median of {} runs (min-max)\n{}\n",
        t.mem_mib,
        t.alloc_mib,
        if t.hugetlb { "memfd on 2 MiB huge pages (MFD_HUGETLB)" } else { "memfd on 4 KiB pages" },
        t.repeats,
        match t.accelerator.as_str() {
            "in-process" => "guest: a host process (prezero's Rust guest)\n".to_owned(),
            "tcg" => "guest: prezero's kernel in a QEMU VM under TCG (software emulation): the guest's own \
                      stores, its zeroing included, are emulated, so the ratios differ from a KVM guest's; \
                      with KVM the same command gives the real figure\n"
                .to_owned(),
            accel => format!("guest: prezero's kernel in a QEMU VM ({accel})\n"),
        }
    );
    for (name, g) in [
        ("2 MiB blocks (THP analogue)", &t.block_2m),
        ("4 KiB pages", &t.page_4k),
        ("huge page pool (hugetlbfs analogue)", &t.huge_pool),
    ] {
        let s = &g.spread;
        let r = |x: Spread| format!("{:8.1} ms ({:.1}-{:.1})", x.median, x.min, x.max);
        out += &format!(
            "{name}\n\
             \x20 mode        alloc + touch                     alloc alone\n\
             \x20 baseline    {}   {}\n\
             \x20 optimized   {}   {}\n\
             \x20 floor       {}   {}\n\
             \x20 known-zero hit rate {:.1}%\n\
             \x20 optimized / baseline {:.2}   (upstream, KVM + host THP: {:.2})\n\
             \x20 optimized / floor    {:.2}   (target <= 1.10: {})\n\
             \x20 alloc optimized / alloc baseline {:.4}   (target <= 0.05: {})\n\n",
            r(s.baseline),
            r(s.alloc_baseline),
            r(s.optimized),
            r(s.alloc_optimized),
            r(s.floor),
            r(s.alloc_floor),
            g.zero_hit_rate * 100.0,
            g.optimized_over_baseline,
            t.upstream_optimized_over_baseline,
            g.optimized_over_floor,
            verdict(g.optimized_over_floor <= 1.10, s.optimized, s.floor),
            g.alloc_optimized_over_baseline,
            verdict(
                g.alloc_optimized_over_baseline <= 0.05,
                s.alloc_optimized,
                s.alloc_baseline
            ),
        );
    }
    out += &format!("chart: {}\n", a.svg.display());
    out
}

fn write_chart(t: &SeedTable, path: &std::path::Path) -> Result<()> {
    let mut bars = Vec::new();
    for (group, g) in [
        ("2 MiB blocks", &t.block_2m),
        ("4 KiB pages", &t.page_4k),
        ("huge page pool", &t.huge_pool),
    ] {
        for (mode, s) in [
            ("baseline", g.spread.baseline),
            ("optimized", g.spread.optimized),
            ("floor", g.spread.floor),
        ] {
            bars.push(Bar {
                group: group.into(),
                label: mode.into(),
                value: s.median,
                low: s.min,
                high: s.max,
            });
        }
    }
    let title = format!(
        "allocate {} MiB zeroed + touch, {} MiB guest after reporting ({})",
        t.alloc_mib,
        t.mem_mib,
        if t.hugetlb {
            "2 MiB host pages"
        } else {
            "4 KiB host pages"
        }
    );
    std::fs::write(path, bar_chart(&title, "ms (median, min-max)", &bars))
        .with_context(|| format!("writing {}", path.display()))
}
