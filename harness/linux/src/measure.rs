//! Host-memory measurement of a VM running the `alloc-free` workload, and the curve analysis
//! that turns a time series into the comparison figures.
//!
//! A [`Sampler`] thread reads a [`MemoryProbe`] (QEMU: allocated blocks of its guest-RAM memfd;
//! UML: allocated blocks of its memory file) and a [`CpuProbe`] (whatever the caller measures:
//! QEMU itself, the prezero daemon, or a VM and its daemon together,
//! [`crate::procs::SumCpu`]) every interval, timestamped on the same clock as the console lines. The
//! guest's events give the [`Marks`]. [`analyze`] then computes, all in MiB of host memory:
//!
//! - `idle_mib`: median of the samples in the last `idle_window_s` (2 s) of the idle phase
//!   `[idle_start, alloc_start)` (the start of the idle phase still sees the kernel report what
//!   it freed while booting);
//! - `peak_mib`: maximum from `alloc_start` to `end`;
//! - `after_mib`: median of the samples in the last `settle_s` (1 s) before `end` (the end of
//!   the guest's wait after the free);
//! - `seconds_to_return`: from the guest's `freed` event until host memory first falls within
//!   `tolerance` (10%) of idle, i.e. to `<= idle_mib * (1 + tolerance)`, interpolated linearly
//!   between the two samples around the crossing; `None` if it never does before `end`;
//! - `device_cpu_s_per_gib`: CPU seconds of the device process spent returning memory, per GiB
//!   returned (`peak_mib - after_mib`); `None` when less than 16 MiB came back. The CPU is
//!   measured over the *return window* `[freed, freed + seconds_to_settle + cpu_margin_s]`
//!   (or `[freed, end]` if memory never settled), minus a baseline: the device process's CPU
//!   rate in the quiet tail after the window (`[window end, end]`, if at least 1 s long; else the
//!   idle window) times the window length.
//!
//! [`Details`] adds `seconds_to_settle`, the time from the free until host memory is within
//! `settle_band` (5%) of the drop it ends up making (`<= after + settle_band * (peak - after)`): how fast
//! a device returns what it returns, even when some memory never comes back (e.g. the cloud
//! kernel keeps freed THPs on its per-cpu free lists, where reporting never sees them).
//!
//! For QEMU under TCG, virtio notifications are handled synchronously in the vCPU thread (QEMU
//! uses ioeventfd only with KVM), so device CPU cannot be separated from guest CPU by thread: the
//! QEMU figure is the whole process's extra CPU while memory returns, i.e. the device plus the
//! guest's own reporting work (an upper bound on the device cost). [`Details::cpu_window_s`] is
//! the probe's whole CPU in the return window, with no baseline taken off (`prezero bench
//! linux`'s host CPU per GiB).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::procs::{CpuProbe, MemoryProbe};

/// One sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the VM was started (same clock as console lines).
    pub t_s: f64,
    /// Host memory used by the guest, MiB.
    pub mib: f64,
    /// Cumulative CPU seconds of the device process.
    pub cpu_s: f64,
}

/// Samples probes on a background thread.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    handle: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Starts sampling every `interval`; timestamps are relative to `t0`. A failing probe read
    /// (e.g. the process exited) skips that sample.
    pub fn start(
        t0: Instant,
        interval: Duration,
        mut mem: Box<dyn MemoryProbe>,
        mut cpu: Box<dyn CpuProbe>,
    ) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (stop2, samples2) = (stop.clone(), samples.clone());
        let interval = interval.max(Duration::from_millis(5));
        let handle = std::thread::Builder::new()
            .name("prezero-sampler".into())
            .spawn(move || {
                let mut next = Instant::now();
                while !stop2.load(Ordering::Relaxed) {
                    if let (Ok(mib), Ok(cpu_s)) = (mem.read_mib(), cpu.cpu_seconds()) {
                        let t_s = t0.elapsed().as_secs_f64();
                        samples2.lock().unwrap().push(Sample { t_s, mib, cpu_s });
                    }
                    next += interval;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else {
                        next = now;
                    }
                }
            })
            .expect("spawning the sampler thread");
        Sampler {
            stop,
            samples,
            handle: Some(handle),
        }
    }

    /// The samples so far.
    pub fn snapshot(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    /// Stops sampling and returns every sample.
    pub fn stop(mut self) -> Vec<Sample> {
        self.halt();
        self.snapshot()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Workload phases, in seconds on the sample clock (from the guest's console events).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Marks {
    /// `idle-start`: the guest starts idling before the allocation.
    pub idle_start_s: f64,
    /// `alloc-start`: the guest starts allocating.
    pub alloc_start_s: f64,
    /// `freed`: the guest freed the memory.
    pub freed_s: f64,
    /// `done`: the guest's wait after the free ended.
    pub end_s: f64,
}

/// Analysis parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AnalysisOptions {
    /// "Returned" means within this fraction of idle (0.10).
    pub tolerance: f64,
    /// "Settled" means within this fraction of the drop memory ends up making (0.05): a later
    /// reporting pass that moves the last few MiB does not count as still settling.
    pub settle_band: f64,
    /// `after_mib` is the median of this many final seconds (1.0).
    pub settle_s: f64,
    /// `idle_mib` is the median of this many final seconds of the idle phase (2.0).
    pub idle_window_s: f64,
    /// Seconds added after settling to the CPU window (1.0).
    pub cpu_margin_s: f64,
}

impl Default for AnalysisOptions {
    fn default() -> Self {
        AnalysisOptions {
            tolerance: 0.10,
            settle_band: 0.05,
            settle_s: 1.0,
            idle_window_s: 2.0,
            cpu_margin_s: 1.0,
        }
    }
}

/// The comparison figures of one peer (see the module docs for definitions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerResult {
    /// Host memory while the guest idles before allocating, MiB.
    pub idle_mib: f64,
    /// Highest host memory during allocation, hold and wait, MiB.
    pub peak_mib: f64,
    /// Host memory at the end of the wait after the free, MiB.
    pub after_mib: f64,
    /// Seconds from the guest's free until host memory is within 10% of idle (`None`: never).
    pub seconds_to_return: Option<f64>,
    /// Device CPU seconds per GiB returned to the host (`None`: nothing returned).
    pub device_cpu_s_per_gib: Option<f64>,
    /// The samples (time series).
    pub series: Vec<Sample>,
}

/// How the figures were obtained, and `seconds_to_settle` (for reports).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Details {
    /// The samples `idle_mib` is the median of: `[start, end)` in s.
    pub idle_window_s: (f64, f64),
    /// `idle_mib * (1 + tolerance)`.
    pub return_threshold_mib: f64,
    /// Seconds from the free until host memory is within `settle_band` of its final drop.
    pub seconds_to_settle: Option<f64>,
    /// `peak_mib - after_mib`.
    pub returned_mib: f64,
    /// Start of the CPU window, s.
    pub cpu_window_start_s: f64,
    /// End of the CPU window, s.
    pub cpu_window_end_s: f64,
    /// Device-process CPU seconds in the window.
    pub cpu_window_s: f64,
    /// The baseline CPU rate (CPU s per s) subtracted.
    pub cpu_baseline_rate: f64,
    /// Whether the baseline came from the quiet tail after the window (else the idle window).
    pub cpu_baseline_from_tail: bool,
    /// `cpu_window_s - cpu_baseline_rate * window length`, floored at 0.
    pub device_cpu_s: f64,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Cumulative CPU at time `t`, linearly interpolated between samples (clamped at the ends).
pub fn cpu_at(series: &[Sample], t: f64) -> Option<f64> {
    let first = series.first()?;
    if t <= first.t_s {
        return Some(first.cpu_s);
    }
    for w in series.windows(2) {
        let (a, b) = (w[0], w[1]);
        if t <= b.t_s {
            let span = b.t_s - a.t_s;
            let f = if span > 0.0 { (t - a.t_s) / span } else { 1.0 };
            return Some(a.cpu_s + f * (b.cpu_s - a.cpu_s));
        }
    }
    series.last().map(|s| s.cpu_s)
}

/// First time at or after `from` (up to `end`) when the series falls to `<= threshold`,
/// interpolated between the samples around the crossing.
fn first_below(series: &[Sample], from: f64, end: f64, threshold: f64) -> Option<f64> {
    let mut prev: Option<Sample> = None;
    for s in series.iter().filter(|s| s.t_s <= end) {
        if s.t_s >= from && s.mib <= threshold {
            let t = match prev {
                Some(p) if p.mib > threshold && s.mib < p.mib => {
                    p.t_s + (s.t_s - p.t_s) * (p.mib - threshold) / (p.mib - s.mib)
                }
                _ => s.t_s,
            };
            return Some(t.max(from));
        }
        prev = Some(*s);
    }
    None
}

/// Computes the figures from `series` (sorted by time) and `marks`.
pub fn analyze(
    series: &[Sample],
    marks: &Marks,
    opts: &AnalysisOptions,
) -> Result<(PeerResult, Details)> {
    let bad = |d: String| Error::invalid("measurement series", d);
    let m = marks;
    if !(m.idle_start_s <= m.alloc_start_s && m.alloc_start_s <= m.freed_s && m.freed_s <= m.end_s)
    {
        return Err(bad(format!("marks out of order: {m:?}")));
    }
    if series.windows(2).any(|w| w[1].t_s < w[0].t_s) {
        return Err(bad("samples not sorted by time".into()));
    }
    let in_range = |a: f64, b: f64| series.iter().filter(move |s| s.t_s >= a && s.t_s <= b);
    let idle_from = m.idle_start_s.max(m.alloc_start_s - opts.idle_window_s);
    let idle_mib = median(
        series
            .iter()
            .filter(|s| s.t_s >= idle_from && s.t_s < m.alloc_start_s)
            .map(|s| s.mib)
            .collect(),
    )
    .ok_or_else(|| {
        bad(format!(
            "no sample in the idle window {idle_from:.2}..{:.2} s",
            m.alloc_start_s
        ))
    })?;
    let peak_mib = in_range(m.alloc_start_s, m.end_s)
        .map(|s| s.mib)
        .max_by(|a, b| a.total_cmp(b))
        .ok_or_else(|| {
            bad(format!(
                "no sample between alloc-start {:.2} s and end {:.2} s",
                m.alloc_start_s, m.end_s
            ))
        })?;
    let settle_from = m.freed_s.max(m.end_s - opts.settle_s);
    let after_mib = median(in_range(settle_from, m.end_s).map(|s| s.mib).collect())
        .or_else(|| in_range(m.freed_s, m.end_s).next_back().map(|s| s.mib))
        .ok_or_else(|| {
            bad(format!(
                "no sample between the free {:.2} s and end {:.2} s",
                m.freed_s, m.end_s
            ))
        })?;

    let return_threshold_mib = idle_mib * (1.0 + opts.tolerance);
    let seconds_to_return =
        first_below(series, m.freed_s, m.end_s, return_threshold_mib).map(|t| t - m.freed_s);
    let returned_mib = (peak_mib - after_mib).max(0.0);
    let returned_enough = returned_mib >= 16.0;
    let seconds_to_settle = if returned_enough {
        first_below(
            series,
            m.freed_s,
            m.end_s,
            after_mib + opts.settle_band * returned_mib,
        )
        .map(|t| t - m.freed_s)
    } else {
        None
    };

    let (ws, we) = match seconds_to_settle {
        Some(st) => (m.freed_s, (m.freed_s + st + opts.cpu_margin_s).min(m.end_s)),
        None => (m.freed_s, m.end_s),
    };
    let rate = |a: f64, b: f64| match (cpu_at(series, a), cpu_at(series, b)) {
        (Some(x), Some(y)) if b > a => ((y - x) / (b - a)).max(0.0),
        _ => 0.0,
    };
    let cpu_baseline_from_tail = m.end_s - we >= 1.0;
    let cpu_baseline_rate = if cpu_baseline_from_tail {
        rate(we, m.end_s)
    } else {
        rate(idle_from, m.alloc_start_s)
    };
    let cpu_window_s = cpu_at(series, we).unwrap_or(0.0) - cpu_at(series, ws).unwrap_or(0.0);
    let device_cpu_s = (cpu_window_s - cpu_baseline_rate * (we - ws)).max(0.0);
    let device_cpu_s_per_gib = returned_enough.then(|| device_cpu_s / (returned_mib / 1024.0));
    Ok((
        PeerResult {
            idle_mib,
            peak_mib,
            after_mib,
            seconds_to_return,
            device_cpu_s_per_gib,
            series: series.to_vec(),
        },
        Details {
            idle_window_s: (idle_from, m.alloc_start_s),
            return_threshold_mib,
            seconds_to_settle,
            returned_mib,
            cpu_window_start_s: ws,
            cpu_window_end_s: we,
            cpu_window_s,
            cpu_baseline_rate,
            cpu_baseline_from_tail,
            device_cpu_s,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Idle at 100 MiB (CPU 0.1 s/s) until 2 s; allocation to 356 MiB by 3 s; freed at 4 s;
    /// memory drops from 5 s to 6 s back to 102 MiB while CPU runs at 0.6 s/s; end at 10 s.
    fn synthetic() -> (Vec<Sample>, Marks) {
        let mut v = Vec::new();
        for i in 0..=100 {
            let t = i as f64 * 0.1;
            let mib = if t < 2.0 {
                100.0
            } else if t < 3.0 {
                100.0 + 256.0 * (t - 2.0)
            } else if t < 5.0 {
                356.0
            } else if t < 6.0 {
                356.0 - 254.0 * (t - 5.0)
            } else {
                102.0
            };
            let cpu = 0.1 * t
                + if t < 5.0 {
                    0.0
                } else if t < 6.0 {
                    0.5 * (t - 5.0)
                } else {
                    0.5
                };
            v.push(Sample {
                t_s: t,
                mib,
                cpu_s: cpu,
            });
        }
        (
            v,
            Marks {
                idle_start_s: 0.5,
                alloc_start_s: 2.0,
                freed_s: 4.0,
                end_s: 10.0,
            },
        )
    }

    #[test]
    fn figures_of_a_synthetic_curve() {
        let (s, m) = synthetic();
        let (r, d) = analyze(&s, &m, &AnalysisOptions::default()).unwrap();
        assert_eq!(r.idle_mib, 100.0);
        assert_eq!(d.idle_window_s, (0.5, 2.0));
        assert!((r.peak_mib - 356.0).abs() < 1e-9);
        assert_eq!(r.after_mib, 102.0);
        // 110 MiB (idle + 10%) is crossed at 5 + 246/254 s, i.e. 1.968 s after the free.
        let str_ = r.seconds_to_return.unwrap();
        assert!((str_ - (1.0 + 246.0 / 254.0)).abs() < 1e-6, "{str_}");
        // Settled (within 5% of the 254 MiB drop above 102) at 356 - 254 * 0.95: 5.95 s.
        assert!((d.seconds_to_settle.unwrap() - 1.95).abs() < 1e-6, "{d:?}");
        // CPU window 4 .. 6.95 s; baseline from the tail 6.95 .. 10 s is 0.1 s/s; the extra
        // 0.5 s of CPU is all device work.
        assert!((d.cpu_window_end_s - 6.95).abs() < 1e-6 && d.cpu_baseline_from_tail);
        assert!((d.cpu_baseline_rate - 0.1).abs() < 1e-9, "{d:?}");
        assert!((d.device_cpu_s - 0.5).abs() < 1e-6, "{d:?}");
        let gib = 254.0 / 1024.0;
        assert!((r.device_cpu_s_per_gib.unwrap() - 0.5 / gib).abs() < 1e-6);
        assert_eq!(r.series.len(), s.len());
    }

    #[test]
    fn idle_window_ignores_early_idle() {
        let (mut s, m) = synthetic();
        // Boot-time memory still being reported at the start of the idle phase.
        for x in s.iter_mut().filter(|x| x.t_s < 0.8) {
            x.mib = 300.0;
        }
        let (r, _) = analyze(
            &s,
            &m,
            &AnalysisOptions {
                idle_window_s: 1.0,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(r.idle_mib, 100.0);
    }

    #[test]
    fn never_returned() {
        let (mut s, m) = synthetic();
        for x in s.iter_mut().filter(|x| x.t_s >= 5.0) {
            x.mib = 356.0;
        }
        let (r, d) = analyze(&s, &m, &AnalysisOptions::default()).unwrap();
        assert_eq!(r.seconds_to_return, None);
        assert_eq!(d.seconds_to_settle, None);
        assert_eq!(r.after_mib, 356.0);
        assert_eq!(r.device_cpu_s_per_gib, None);
        assert_eq!(d.cpu_window_end_s, m.end_s);
        assert!(!d.cpu_baseline_from_tail);
    }

    #[test]
    fn partial_return_settles_without_returning() {
        // Memory comes back to 130 MiB only: 30% above idle, never "returned", but settled.
        let (mut s, m) = synthetic();
        for x in s.iter_mut().filter(|x| x.t_s >= 5.0) {
            x.mib = if x.t_s < 6.0 {
                356.0 - 226.0 * (x.t_s - 5.0)
            } else {
                130.0
            };
        }
        let (r, d) = analyze(&s, &m, &AnalysisOptions::default()).unwrap();
        assert_eq!(r.seconds_to_return, None);
        assert!(d.seconds_to_settle.is_some());
        assert!(r.device_cpu_s_per_gib.is_some());
    }

    #[test]
    fn tolerance_applies() {
        let (s, m) = synthetic();
        // With 1% tolerance the threshold is 101 MiB: the curve settles at 102 and never gets there.
        let (r, _) = analyze(
            &s,
            &m,
            &AnalysisOptions {
                tolerance: 0.01,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(r.seconds_to_return, None);
        // Immediate return (already below threshold at the free) is 0 s.
        let mut flat = s.clone();
        for x in flat.iter_mut() {
            x.mib = 100.0;
        }
        let (r, d) = analyze(&flat, &m, &AnalysisOptions::default()).unwrap();
        assert_eq!(r.seconds_to_return, Some(0.0));
        assert_eq!(d.seconds_to_settle, None);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let (s, m) = synthetic();
        let o = AnalysisOptions::default();
        assert!(analyze(&[], &m, &o).is_err());
        assert!(analyze(&s, &Marks { freed_s: 1.0, ..m }, &o).is_err());
        let mut unsorted = s.clone();
        unsorted.swap(3, 4);
        assert!(analyze(&unsorted, &m, &o).is_err());
        // No idle sample.
        assert!(analyze(&s[25..], &m, &o).is_err());
    }

    #[test]
    fn cpu_interpolation() {
        let s = [
            Sample {
                t_s: 0.0,
                mib: 0.0,
                cpu_s: 1.0,
            },
            Sample {
                t_s: 2.0,
                mib: 0.0,
                cpu_s: 3.0,
            },
        ];
        assert_eq!(cpu_at(&s, -1.0), Some(1.0));
        assert_eq!(cpu_at(&s, 1.0), Some(2.0));
        assert_eq!(cpu_at(&s, 5.0), Some(3.0));
        assert_eq!(cpu_at(&[], 1.0), None);
    }

    #[test]
    fn result_serializes_with_the_five_fields() {
        let (s, m) = synthetic();
        let (r, _) = analyze(&s, &m, &AnalysisOptions::default()).unwrap();
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        for k in [
            "idle_mib",
            "peak_mib",
            "after_mib",
            "seconds_to_return",
            "device_cpu_s_per_gib",
            "series",
        ] {
            assert!(keys.contains(&k), "{keys:?}");
        }
        assert_eq!(keys.len(), 6);
    }
}
