//! Cleanup for a command that is interrupted (Ctrl-C, SIGTERM) while guests and backends run.
//!
//! `Drop` does not run when a process exits on a signal, and UML forks helpers that can
//! outlive its main process. The command's signal handling (the `prezero` binary's
//! `interrupt` module) calls [`clean_up_started_here`] before it exits: it kills every VM
//! process this process started (found by their tag, [`crate::procs::kill_vms_started_here`])
//! first, so no guest sees its daemon die under it, then SIGTERMs every backend it started
//! ([`crate::backend::terminate_all`]) and removes every live scratch directory
//! ([`crate::scratch::remove_all`]).
//!
//! Tests do not call it: their guests and backends are dropped by unwinding.

use std::time::Duration;

/// Kills the guests, then the backends this process started, and removes its scratch
/// directories (see the module docs).
pub fn clean_up_started_here() {
    let left = crate::procs::kill_vms_started_here(Duration::from_secs(5));
    if !left.is_empty() {
        eprintln!("processes that survived SIGKILL: {left:?}");
    }
    crate::backend::terminate_all();
    crate::scratch::remove_all();
}
