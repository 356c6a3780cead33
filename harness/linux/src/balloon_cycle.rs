//! A balloon target set and released, timed: the inflate / deflate half of the peer
//! comparison (`prezero bench linux`).
//!
//! The guest idles (scenario `idle`); the host asks the device for a balloon of `target` bytes
//! and polls the guest's `actual` (virtio 1.2, 5.5.6: the driver writes the number of pages it
//! has given up into the config field `actual` as it goes) until it equals the target, then asks
//! for 0 and polls until `actual` is back at 0. Host memory backing guest RAM is read before,
//! when `actual` reaches the target (the device has discarded what the guest gave up), and after
//! the deflate.
//!
//! How a target is set depends on the device ([`BalloonControl`]): QEMU's own balloon through
//! its monitor (`balloon MiB` sets the guest's *size*, `info balloon` reports `actual=MiB` of
//! guest size), `prezero serve` through its control socket (implemented by the CLI, which
//! depends on the daemon's client library; this crate talks to the daemon only as a process).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::procs::MemoryProbe;
use crate::qemu::monitor_command;

const MIB: u64 = 1 << 20;

/// Steers a balloon device from the host.
pub trait BalloonControl {
    /// Asks for a balloon of `bytes` (a multiple of 1 MiB).
    fn set_target(&mut self, bytes: u64) -> Result<()>;
    /// The balloon's size as the guest reports it (`actual`), bytes.
    fn actual(&mut self) -> Result<u64>;
    /// How the device is steered, for reports.
    fn describe(&self) -> String;
}

/// QEMU's own `virtio-balloon` through its human monitor (`-monitor unix:SOCKET,...`).
#[derive(Debug, Clone)]
pub struct QemuMonitorBalloon {
    /// The monitor socket.
    pub monitor: PathBuf,
    /// The guest's memory size, MiB (`-m`): QEMU's balloon commands speak in guest size.
    pub guest_mib: u64,
}

/// `actual=N` (MiB of guest size) from `info balloon`'s answer (`balloon: actual=1536`).
fn parse_info_balloon(answer: &str) -> Option<u64> {
    let at = answer.find("actual=")? + "actual=".len();
    let digits: String = answer[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

impl BalloonControl for QemuMonitorBalloon {
    fn set_target(&mut self, bytes: u64) -> Result<()> {
        let size = self.guest_mib.saturating_sub(bytes / MIB);
        let answer = monitor_command(&self.monitor, &format!("balloon {size}"))?;
        if answer.contains("Error") || answer.contains("No balloon") {
            return Err(Error::invalid("QEMU's balloon command", answer));
        }
        Ok(())
    }

    fn actual(&mut self) -> Result<u64> {
        let answer = monitor_command(&self.monitor, "info balloon")?;
        let size = parse_info_balloon(&answer)
            .ok_or_else(|| Error::invalid("QEMU's `info balloon` answer", answer.clone()))?;
        Ok(self.guest_mib.saturating_sub(size) * MIB)
    }

    fn describe(&self) -> String {
        format!(
            "QEMU monitor {} (balloon / info balloon)",
            self.monitor.display()
        )
    }
}

/// One inflate / deflate cycle's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CycleResult {
    /// The balloon target, MiB.
    pub target_mib: u64,
    /// Host memory backing guest RAM before the inflate, MiB.
    pub host_mib_before: f64,
    /// Seconds from setting the target until `actual` equals it.
    pub inflate_s: f64,
    /// Host memory when `actual` reached the target, MiB.
    pub host_mib_after_inflate: f64,
    /// Seconds from setting 0 until `actual` is 0.
    pub deflate_s: f64,
    /// Host memory when `actual` was back at 0, MiB.
    pub host_mib_after_deflate: f64,
    /// How the device was steered.
    pub control: String,
}

impl CycleResult {
    /// GiB per second the guest gave up.
    pub fn inflate_gib_s(&self) -> f64 {
        self.target_mib as f64 / 1024.0 / self.inflate_s.max(1e-9)
    }

    /// GiB per second the guest got back.
    pub fn deflate_gib_s(&self) -> f64 {
        self.target_mib as f64 / 1024.0 / self.deflate_s.max(1e-9)
    }
}

/// Polls `ctl` every `poll` until `actual == bytes`; returns the seconds since `start`.
fn wait_actual(
    ctl: &mut dyn BalloonControl,
    bytes: u64,
    start: Instant,
    timeout: Duration,
    poll: Duration,
) -> Result<f64> {
    loop {
        let actual = ctl.actual()?;
        if actual == bytes {
            return Ok(start.elapsed().as_secs_f64());
        }
        if start.elapsed() > timeout {
            return Err(Error::invalid(
                "balloon cycle",
                format!(
                    "actual stayed at {actual} bytes, not {bytes}, for {:.0} s ({})",
                    timeout.as_secs_f64(),
                    ctl.describe()
                ),
            ));
        }
        std::thread::sleep(poll);
    }
}

/// Inflates a balloon of `target_mib` and deflates it again (the guest must be up, its driver
/// bound and the balloon at 0). Polls `actual` every 10 ms; each phase may take `timeout`.
pub fn balloon_cycle(
    ctl: &mut dyn BalloonControl,
    mem: &mut dyn MemoryProbe,
    target_mib: u64,
    timeout: Duration,
) -> Result<CycleResult> {
    let poll = Duration::from_millis(10);
    let read = |mem: &mut dyn MemoryProbe| {
        mem.read_mib()
            .map_err(crate::error::io_err("reading host memory".to_owned()))
    };
    let host_mib_before = read(mem)?;
    let start = Instant::now();
    ctl.set_target(target_mib * MIB)?;
    let inflate_s = wait_actual(ctl, target_mib * MIB, start, timeout, poll)?;
    let host_mib_after_inflate = read(mem)?;
    let start = Instant::now();
    ctl.set_target(0)?;
    let deflate_s = wait_actual(ctl, 0, start, timeout, poll)?;
    let host_mib_after_deflate = read(mem)?;
    Ok(CycleResult {
        target_mib,
        host_mib_before,
        inflate_s,
        host_mib_after_inflate,
        deflate_s,
        host_mib_after_deflate,
        control: ctl.describe(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_balloon_answers() {
        let a = "info balloon\r\nballoon: actual=1536\r\n(qemu) ";
        assert_eq!(parse_info_balloon(a), Some(1536));
        assert_eq!(
            parse_info_balloon("Error: No balloon device has been activated"),
            None
        );
    }

    /// A device whose `actual` follows the target after a few polls.
    struct Lagging {
        target: u64,
        actual: u64,
        polls: u32,
    }

    impl BalloonControl for Lagging {
        fn set_target(&mut self, bytes: u64) -> Result<()> {
            self.target = bytes;
            self.polls = 0;
            Ok(())
        }
        fn actual(&mut self) -> Result<u64> {
            self.polls += 1;
            if self.polls >= 3 {
                self.actual = self.target;
            }
            Ok(self.actual)
        }
        fn describe(&self) -> String {
            "lagging".into()
        }
    }

    struct Fixed(f64);
    impl MemoryProbe for Fixed {
        fn read_mib(&mut self) -> std::io::Result<f64> {
            Ok(self.0)
        }
        fn describe(&self) -> String {
            "fixed".into()
        }
    }

    #[test]
    fn a_cycle_waits_for_actual_both_ways() {
        let mut ctl = Lagging {
            target: 0,
            actual: 0,
            polls: 0,
        };
        let r = balloon_cycle(&mut ctl, &mut Fixed(100.0), 64, Duration::from_secs(5)).unwrap();
        // Two polls of 10 ms before `actual` moves, in each direction.
        assert!(r.inflate_s >= 0.02 && r.deflate_s >= 0.02, "{r:?}");
        assert_eq!(ctl.actual, 0);
        assert!((r.inflate_gib_s() - 0.0625 / r.inflate_s).abs() < 1e-9);
    }

    #[test]
    fn a_balloon_that_never_moves_times_out() {
        struct Stuck;
        impl BalloonControl for Stuck {
            fn set_target(&mut self, _: u64) -> Result<()> {
                Ok(())
            }
            fn actual(&mut self) -> Result<u64> {
                Ok(0)
            }
            fn describe(&self) -> String {
                "stuck".into()
            }
        }
        let e = balloon_cycle(&mut Stuck, &mut Fixed(1.0), 8, Duration::from_millis(50))
            .unwrap_err()
            .to_string();
        assert!(e.contains("actual stayed at 0"), "{e}");
    }
}
