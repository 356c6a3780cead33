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

/// The form of a parameter's value, as the workload parses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// A non-negative integer (decimal or `0x` hex): MiB, pages, a seed, a flag (0/1).
    Integer,
    /// A non-negative number of seconds, fractions allowed (`1.5`).
    Seconds,
}

impl Form {
    fn accepts(self, value: &str) -> bool {
        let v = value.trim();
        match self {
            Form::Integer => match v.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).is_ok(),
                None => v.parse::<u64>().is_ok(),
            },
            Form::Seconds => v.parse::<f64>().is_ok_and(|s| s.is_finite() && s >= 0.0),
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Form::Integer => "a whole number >= 0 (e.g. 64)",
            Form::Seconds => "seconds >= 0 (e.g. 5 or 1.5)",
        }
    }
}

/// One scenario parameter: its name, value form, default and meaning.
#[derive(Clone, Copy, Debug)]
pub struct Param {
    /// The key (`mib`, `wait`, ...).
    pub name: &'static str,
    /// The value's form.
    pub form: Form,
    /// The workload's default.
    pub default: &'static str,
    /// What it does.
    pub help: &'static str,
}

const fn param(name: &'static str, form: Form, default: &'static str, help: &'static str) -> Param {
    Param {
        name,
        form,
        default,
        help,
    }
}

const UNTIL_INFLATED: Param = param(
    "until_inflated",
    Form::Integer,
    "0",
    "end the wait once the guest's balloon_inflate counter reaches N 4 KiB pages",
);
const UNTIL_DEFLATED: Param = param(
    "until_deflated",
    Form::Integer,
    "0",
    "end the wait once the guest's balloon_deflate counter reaches N 4 KiB pages",
);
const INTERVAL: Param = param(
    "interval",
    Form::Seconds,
    "1",
    "seconds between meminfo lines",
);
const CHURN: Param = param(
    "churn",
    Form::Integer,
    "0",
    "MiB to allocate, touch and free first (memory for page reporting)",
);

/// The parameters each scenario takes: declared once, here, and matching what
/// `src/bin/prezero-workload.rs` reads (its module docs list the same).
pub const SCENARIO_PARAMS: &[(&str, &[Param])] = &[
    ("boot", &[]),
    ("meminfo", &[]),
    ("shell", &[]),
    (
        "checksum",
        &[
            param("mib", Form::Integer, "32", "MiB to fill with the pattern"),
            param("seed", Form::Integer, "1", "the pattern's seed"),
            param(
                "hold",
                Form::Seconds,
                "0",
                "seconds to keep the pattern (the longest, with until_*)",
            ),
            INTERVAL,
            CHURN,
            param(
                "verify_every",
                Form::Integer,
                "0",
                "1: verify the pattern at every interval",
            ),
            UNTIL_INFLATED,
            UNTIL_DEFLATED,
        ],
    ),
    (
        "alloc-free",
        &[
            param(
                "mib",
                Form::Integer,
                "256",
                "MiB to allocate, touch and free",
            ),
            param("idle", Form::Seconds, "3", "seconds idle first"),
            param("hold", Form::Seconds, "1", "seconds to hold the memory"),
            param(
                "wait",
                Form::Seconds,
                "10",
                "seconds to wait after the free (the longest, with until_*)",
            ),
            INTERVAL,
            UNTIL_INFLATED,
            UNTIL_DEFLATED,
        ],
    ),
    (
        "idle",
        &[
            param(
                "wait",
                Form::Seconds,
                "10",
                "seconds to idle (the longest, with until_*)",
            ),
            INTERVAL,
            CHURN,
            UNTIL_INFLATED,
            UNTIL_DEFLATED,
        ],
    ),
    (
        "oom",
        &[
            param("mib", Form::Integer, "256", "MiB to allocate step by step"),
            param("step", Form::Integer, "16", "MiB per step"),
            param(
                "wait",
                Form::Seconds,
                "60",
                "with until_*: the longest wait for the balloon first",
            ),
            param(
                "interval",
                Form::Seconds,
                "0.5",
                "seconds between progress lines while waiting",
            ),
            UNTIL_INFLATED,
            UNTIL_DEFLATED,
        ],
    ),
];

/// The parameters of scenario `name` (`None`: no such scenario).
pub fn params_of(name: &str) -> Option<&'static [Param]> {
    SCENARIO_PARAMS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, p)| *p)
}

/// The candidate closest to `word`, if it is close enough to be a typo.
fn close_match<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Every scenario with its parameters, for `--help`.
pub fn params_help() -> String {
    let mut out = String::new();
    for (name, params) in SCENARIO_PARAMS {
        if params.is_empty() {
            out += &format!("  {name}: no parameters\n");
            continue;
        }
        out += &format!("  {name}:\n");
        for p in *params {
            out += &format!("    {}={} ({})\n", p.name, p.default, p.help);
        }
    }
    out
}

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
    /// of `UmlConfig::command` (`uml.rs`) by hand with `con0=fd:0,fd:1`.
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

    /// Checks the name and every parameter against the declarations ([`SCENARIO_PARAMS`]),
    /// before anything boots: an unknown scenario or key is an error naming the closest
    /// match, a value of the wrong form an error with the expected form.
    pub fn check(&self) -> Result<()> {
        let Some(params) = params_of(&self.name) else {
            let hint = close_match(&self.name, SCENARIOS.iter().copied())
                .map_or(String::new(), |c| format!("did you mean {c}? "));
            return Err(Error::invalid(
                "scenario",
                format!(
                    "{:?} is an unknown scenario: {hint}choose one of {}",
                    self.name,
                    SCENARIOS.join(", ")
                ),
            ));
        };
        for (key, value) in &self.params {
            let Some(p) = params.iter().find(|p| p.name == key) else {
                let names: Vec<&str> = params.iter().map(|p| p.name).collect();
                let hint = close_match(key, names.iter().copied())
                    .map_or(String::new(), |c| format!("did you mean {c}? "));
                let takes = if names.is_empty() {
                    "it takes no parameters".to_string()
                } else {
                    format!("it takes {}", names.join(", "))
                };
                return Err(Error::invalid(
                    format!("parameter of scenario {}", self.name),
                    format!("{key:?} is unknown: {hint}{takes}"),
                ));
            };
            if !p.form.accepts(value) {
                return Err(Error::invalid(
                    format!("parameter {key} of scenario {}", self.name),
                    format!("{value:?}: expected {}", p.form.expected()),
                ));
            }
        }
        Ok(())
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

    #[test]
    fn parameters_are_checked_against_their_declarations() {
        assert_eq!(SCENARIO_PARAMS.len(), SCENARIOS.len());
        for name in SCENARIOS {
            assert!(params_of(name).is_some(), "{name} undeclared");
        }
        Scenario::alloc_free(64)
            .wait(5.5)
            .until_inflated(16384)
            .check()
            .unwrap();
        Scenario::new("oom").param("mib", "0x50").check().unwrap();
        let err = |s: Scenario| s.check().unwrap_err().to_string();
        let e = err(Scenario::new("alloc-free").param("mb", 64));
        assert!(e.contains("did you mean mib?"), "{e}");
        let e = err(Scenario::idle(1.0).param("wiat", 1));
        assert!(e.contains("did you mean wait?"), "{e}");
        let e = err(Scenario::new("boot").param("mib", 1));
        assert!(e.contains("no parameters"), "{e}");
        let e = err(Scenario::alloc_free(64).param("wait", "5s"));
        assert!(e.contains("expected seconds"), "{e}");
        let e = err(Scenario::new("alloc-free").param("mib", "-1"));
        assert!(e.contains("expected a whole number"), "{e}");
        let e = err(Scenario::new("alloc-fre"));
        assert!(e.contains("did you mean alloc-free?"), "{e}");
        assert!(params_help().contains("until_inflated=0"));
    }
}
