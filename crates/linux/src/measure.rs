//! Host-memory measurement of a VM running the `alloc-free` workload, and the curve analysis
//! that turns a time series into the comparison figures.
//!
//! A [`Sampler`] thread reads a [`MemoryProbe`] (QEMU: `VmRSS`; UML: allocated blocks of its
//! memory file) and a [`CpuProbe`] (the process serving the balloon device: QEMU itself, or the
//! prezero daemon) every interval, timestamped on the same clock as the console lines. The
//! guest's events give the [`Marks`]. [`analyze`] then computes, all in MiB of host memory:
//!
//! - `idle_mib`: median of the samples in the idle phase `[idle_start, alloc_start)`;
//! - `peak_mib`: maximum from `alloc_start` to `end`;
//! - `after_mib`: median of the samples in the last `settle_s` seconds before `end` (the end of
//!   the guest's wait after the free);
//! - `seconds_to_return`: from the guest's `freed` event until host memory first falls within
//!   `tolerance` (10%) of idle, i.e. to `<= idle_mib * (1 + tolerance)`, interpolated linearly
//!   between the two samples around the crossing; `None` if it never does before `end`;
//! - `device_cpu_s_per_gib`: the device process's CPU time over the return window
//!   (`freed .. freed + seconds_to_return`, or `freed .. end` if memory never returned) minus
//!   its idle-phase CPU rate times the window length, divided by the GiB returned
//!   (`peak_mib - after_mib`). `None` when less than 16 MiB came back.
//!
//! For QEMU under TCG the device emulation runs in the vCPU thread (no ioeventfd without KVM), so
//! its CPU cannot be told apart from the guest's by thread: the figure is the whole QEMU process's
//! extra CPU while reporting, i.e. device plus the guest's own reporting work (an upper bound on
//! the device cost). For UML + prezero the CPU probe is the daemon process alone.

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
    pub fn start(t0: Instant, interval: Duration, mut mem: Box<dyn MemoryProbe>, mut cpu: Box<dyn CpuProbe>) -> Sampler {
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
        Sampler { stop, samples, handle: Some(handle) }
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
    /// `after_mib` is the median of this many final seconds (1.0).
    pub settle_s: f64,
}

impl Default for AnalysisOptions {
    fn default() -> Self {
        AnalysisOptions { tolerance: 0.10, settle_s: 1.0 }
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

/// How `device_cpu_s_per_gib` was obtained (for reports).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CpuAccounting {
    /// Start of the return window, s.
    pub window_start_s: f64,
    /// End of the return window, s.
    pub window_end_s: f64,
    /// Device-process CPU seconds in the window.
    pub window_cpu_s: f64,
    /// Its idle-phase CPU rate (CPU s per s).
    pub idle_cpu_rate: f64,
    /// `window_cpu_s - idle_cpu_rate * window length`, floored at 0.
    pub device_cpu_s: f64,
    /// `peak_mib - after_mib`, in GiB.
    pub returned_gib: f64,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
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

/// Computes the figures from `series` (sorted by time) and `marks`.
pub fn analyze(series: &[Sample], marks: &Marks, opts: &AnalysisOptions) -> Result<(PeerResult, CpuAccounting)> {
    let bad = |d: String| Error::invalid("measurement series", d);
    let m = marks;
    if !(m.idle_start_s <= m.alloc_start_s && m.alloc_start_s <= m.freed_s && m.freed_s <= m.end_s) {
        return Err(bad(format!("marks out of order: {m:?}")));
    }
    if series.windows(2).any(|w| w[1].t_s < w[0].t_s) {
        return Err(bad("samples not sorted by time".into()));
    }
    let in_range = |a: f64, b: f64| series.iter().filter(move |s| s.t_s >= a && s.t_s <= b);
    let idle_mib = median(series.iter().filter(|s| s.t_s >= m.idle_start_s && s.t_s < m.alloc_start_s).map(|s| s.mib).collect())
        .ok_or_else(|| bad(format!("no sample in the idle phase {:.2}..{:.2} s", m.idle_start_s, m.alloc_start_s)))?;
    let peak_mib = in_range(m.alloc_start_s, m.end_s)
        .map(|s| s.mib)
        .max_by(|a, b| a.total_cmp(b))
        .ok_or_else(|| bad(format!("no sample between alloc-start {:.2} s and end {:.2} s", m.alloc_start_s, m.end_s)))?;
    let settle_from = m.freed_s.max(m.end_s - opts.settle_s);
    let after_mib = median(in_range(settle_from, m.end_s).map(|s| s.mib).collect())
        .or_else(|| in_range(m.freed_s, m.end_s).last().map(|s| s.mib))
        .ok_or_else(|| bad(format!("no sample between the free {:.2} s and end {:.2} s", m.freed_s, m.end_s)))?;

    let threshold = idle_mib * (1.0 + opts.tolerance);
    let mut returned_at = None;
    let mut prev: Option<Sample> = None;
    for s in series.iter().filter(|s| s.t_s <= m.end_s) {
        if s.t_s >= m.freed_s && s.mib <= threshold {
            let t = match prev {
                Some(p) if p.mib > threshold && s.mib < p.mib => p.t_s + (s.t_s - p.t_s) * (p.mib - threshold) / (p.mib - s.mib),
                _ => s.t_s,
            };
            returned_at = Some(t.max(m.freed_s));
            break;
        }
        prev = Some(*s);
    }
    let seconds_to_return = returned_at.map(|t| t - m.freed_s);

    let idle_len = m.alloc_start_s - m.idle_start_s;
    let idle_cpu_rate = match (cpu_at(series, m.idle_start_s), cpu_at(series, m.alloc_start_s)) {
        (Some(a), Some(b)) if idle_len > 0.0 => ((b - a) / idle_len).max(0.0),
        _ => 0.0,
    };
    let (ws, we) = (m.freed_s, returned_at.unwrap_or(m.end_s));
    let window_cpu_s = cpu_at(series, we).unwrap_or(0.0) - cpu_at(series, ws).unwrap_or(0.0);
    let device_cpu_s = (window_cpu_s - idle_cpu_rate * (we - ws)).max(0.0);
    let returned_gib = ((peak_mib - after_mib) / 1024.0).max(0.0);
    let device_cpu_s_per_gib = (returned_gib >= 16.0 / 1024.0).then(|| device_cpu_s / returned_gib);
    Ok((
        PeerResult { idle_mib, peak_mib, after_mib, seconds_to_return, device_cpu_s_per_gib, series: series.to_vec() },
        CpuAccounting { window_start_s: ws, window_end_s: we, window_cpu_s, idle_cpu_rate, device_cpu_s, returned_gib },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Idle at 100 MiB (CPU 0.1 s/s) until 2 s; allocation to 356 MiB by 3 s; freed at 4 s;
    /// memory drops from 5 s to 6 s back to 102 MiB while CPU runs at 0.6 s/s; end at 8 s.
    fn synthetic() -> (Vec<Sample>, Marks) {
        let mut v = Vec::new();
        for i in 0..=80 {
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
            let cpu = 0.1 * t + if t < 5.0 { 0.0 } else if t < 6.0 { 0.5 * (t - 5.0) } else { 0.5 };
            v.push(Sample { t_s: t, mib, cpu_s: cpu });
        }
        (v, Marks { idle_start_s: 0.5, alloc_start_s: 2.0, freed_s: 4.0, end_s: 8.0 })
    }

    #[test]
    fn figures_of_a_synthetic_curve() {
        let (s, m) = synthetic();
        let (r, cpu) = analyze(&s, &m, &AnalysisOptions::default()).unwrap();
        assert_eq!(r.idle_mib, 100.0);
        assert!((r.peak_mib - 356.0).abs() < 1e-9);
        assert_eq!(r.after_mib, 102.0);
        // 110 MiB (idle + 10%) is crossed at 5 + 246/254 s, i.e. 1.968 s after the free.
        let str_ = r.seconds_to_return.unwrap();
        assert!((str_ - (1.0 + 246.0 / 254.0)).abs() < 1e-6, "{str_}");
        // Window CPU = 0.1 * 1.968 + 0.5 * 0.968..; minus idle rate 0.1 * window.
        assert!((cpu.idle_cpu_rate - 0.1).abs() < 1e-9);
        let expect_dev = 0.5 * (246.0 / 254.0);
        assert!((cpu.device_cpu_s - expect_dev).abs() < 1e-6, "{cpu:?}");
        let gib = 254.0 / 1024.0;
        assert!((r.device_cpu_s_per_gib.unwrap() - expect_dev / gib).abs() < 1e-6);
        assert_eq!(r.series.len(), s.len());
    }

    #[test]
    fn never_returned() {
        let (mut s, m) = synthetic();
        for x in s.iter_mut().filter(|x| x.t_s >= 5.0) {
            x.mib = 356.0;
        }
        let (r, cpu) = analyze(&s, &m, &AnalysisOptions::default()).unwrap();
        assert_eq!(r.seconds_to_return, None);
        assert_eq!(r.after_mib, 356.0);
        assert_eq!(r.device_cpu_s_per_gib, None);
        assert_eq!(cpu.window_end_s, m.end_s);
    }

    #[test]
    fn tolerance_and_settle_window_apply() {
        let (s, m) = synthetic();
        // With 1% tolerance the threshold is 101 MiB: the curve settles at 102 and never gets there.
        let (r, _) = analyze(&s, &m, &AnalysisOptions { tolerance: 0.01, settle_s: 1.0 }).unwrap();
        assert_eq!(r.seconds_to_return, None);
        // Immediate return (already below threshold at the free) is 0 s.
        let mut flat = s.clone();
        for x in flat.iter_mut() {
            x.mib = 100.0;
        }
        let (r, _) = analyze(&flat, &m, &AnalysisOptions::default()).unwrap();
        assert_eq!(r.seconds_to_return, Some(0.0));
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
        let s = [Sample { t_s: 0.0, mib: 0.0, cpu_s: 1.0 }, Sample { t_s: 2.0, mib: 0.0, cpu_s: 3.0 }];
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
        for k in ["idle_mib", "peak_mib", "after_mib", "seconds_to_return", "device_cpu_s_per_gib", "series"] {
            assert!(keys.contains(&k), "{keys:?}");
        }
        assert_eq!(keys.len(), 6);
    }
}
