//! Guest scenarios: which workload the initramfs runs, passed on the kernel command line as
//! `prezero.scenario=NAME prezero.KEY=VALUE ...` (see `src/bin/prezero-workload.rs` for what
//! each does and prints).

use std::collections::BTreeMap;
use std::fmt::Display;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A scenario name plus parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scenario {
    /// `boot`, `meminfo`, `checksum`, `alloc-free`, `idle`, `oom` or `shell`.
    pub name: String,
    /// Parameters (`mib`, `hold`, `wait`, ...).
    pub params: BTreeMap<String, String>,
}

/// Scenario names the init script and workload understand.
pub const SCENARIOS: &[&str] = &[
    "boot",
    "meminfo",
    "checksum",
    "alloc-free",
    "idle",
    "oom",
    "shell",
];

impl Scenario {
    /// A scenario by name, no parameters.
    pub fn new(name: &str) -> Scenario {
        Scenario {
            name: name.into(),
            params: BTreeMap::new(),
        }
    }

    /// Sets a parameter.
    pub fn param(mut self, key: &str, value: impl Display) -> Scenario {
        self.params.insert(key.into(), value.to_string());
        self
    }

    /// Prints the virtio devices (with driver and negotiated features), meminfo and vmstat.
    pub fn boot() -> Scenario {
        Scenario::new("boot")
    }

    /// Fills `mib` MiB with a pattern and verifies it; `hold(s)` keeps it that long in between.
    pub fn checksum(mib: u64) -> Scenario {
        Scenario::new("checksum").param("mib", mib)
    }

    /// Idle, allocate+touch `mib` MiB, hold, free, wait: the reporting benchmark workload.
    pub fn alloc_free(mib: u64) -> Scenario {
        Scenario::new("alloc-free").param("mib", mib)
    }

    /// Prints meminfo every `interval` s for `wait_s` s (host-driven inflate/deflate, stats),
    /// then the virtio devices.
    pub fn idle(wait_s: f64) -> Scenario {
        Scenario::new("idle").param("wait", wait_s)
    }

    /// Allocates `mib` MiB step by step (deflate-on-OOM).
    pub fn oom(mib: u64) -> Scenario {
        Scenario::new("oom").param("mib", mib)
    }

    /// A busybox shell on the console instead of the workload. The harness runners give the VM
    /// `/dev/null` as stdin, so there it exits at once; for an interactive guest run the command
    /// of [`crate::uml::UmlConfig::command`] by hand with `con0=fd:0,fd:1`.
    pub fn shell() -> Scenario {
        Scenario::new("shell")
    }

    /// Sets the `hold` parameter (seconds; with an `until_*` condition, the longest hold).
    pub fn hold(self, secs: f64) -> Scenario {
        self.param("hold", secs)
    }

    /// Sets the `wait` parameter (seconds; with an `until_*` condition, the longest wait).
    pub fn wait(self, secs: f64) -> Scenario {
        self.param("wait", secs)
    }

    /// Sets the `interval` between the guest's meminfo lines (seconds).
    pub fn interval(self, secs: f64) -> Scenario {
        self.param("interval", secs)
    }

    /// `churn`: allocate, touch and free `mib` MiB first (`idle`, `checksum`), so page reporting
    /// has freed memory to report.
    pub fn churn(self, mib: u64) -> Scenario {
        self.param("churn", mib)
    }

    /// `until_inflated`: end the wait (`idle`, `alloc-free`'s wait, `checksum`'s hold, before
    /// `oom`'s allocation) once the guest's `balloon_inflate` counter reaches `pages` (4 KiB
    /// pages). Moving the balloon is the host's signal to the guest.
    pub fn until_inflated(self, pages: u64) -> Scenario {
        self.param("until_inflated", pages)
    }

    /// `until_deflated`: like [`Scenario::until_inflated`] for the `balloon_deflate` counter.
    pub fn until_deflated(self, pages: u64) -> Scenario {
        self.param("until_deflated", pages)
    }

    /// The kernel command-line words. Names and values must not contain whitespace.
    pub fn kernel_args(&self) -> Result<Vec<String>> {
        let ok = |s: &str| !s.is_empty() && !s.contains(char::is_whitespace) && !s.contains('"');
        if !ok(&self.name) {
            return Err(Error::invalid("scenario name", format!("{:?}", self.name)));
        }
        let mut out = vec![format!("prezero.scenario={}", self.name)];
        for (k, v) in &self.params {
            if !ok(k) || !ok(v) || k.contains('=') || k == "scenario" {
                return Err(Error::invalid("scenario parameter", format!("{k:?}={v:?}")));
            }
            out.push(format!("prezero.{k}={v}"));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_args() {
        let s = Scenario::checksum(32).hold(1.5);
        assert_eq!(
            s.kernel_args().unwrap(),
            [
                "prezero.scenario=checksum",
                "prezero.hold=1.5",
                "prezero.mib=32"
            ]
        );
        assert!(Scenario::new("a b").kernel_args().is_err());
        assert!(Scenario::boot().param("x", "1 2").kernel_args().is_err());
        assert!(Scenario::boot()
            .param("scenario", "x")
            .kernel_args()
            .is_err());
        assert!(SCENARIOS.contains(&Scenario::alloc_free(1).name.as_str()));
    }
}
