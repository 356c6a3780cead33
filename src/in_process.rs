//! The daemon and a guest in this process: the vhost-user balloon daemon on threads of this
//! process and a Rust guest attached to it over a real Unix socket, sharing the guest's memfd
//! (what `prezero demo` and `prezero bench seed-table` run).

use crate::interrupt::{on_exit, Cleanup};
use anyhow::{Context, Result};
use prezero_guest::{Guest, GuestOptions};
use prezero_vhost::{spawn, DaemonHandle, FeatureOffer, ServeOptions};
use vmm_sys_util::tempdir::TempDir;

/// Daemon and guest, connected.
pub struct InProcess {
    /// The guest (dropped first: it disconnects).
    pub guest: Guest,
    /// The daemon.
    pub daemon: DaemonHandle,
    /// Holds the daemon's socket; removed on drop, after the daemon and the guest.
    _dir: TempDir,
    /// Removes the directory if the command is interrupted (no drop runs then).
    _on_interrupt: Cleanup,
}

impl InProcess {
    /// Starts a daemon offering `offer` on a private socket and attaches a new guest to it.
    pub fn start(guest: GuestOptions, offer: FeatureOffer) -> Result<Self> {
        let prefix = std::env::temp_dir().join("prezero-");
        let dir = TempDir::new_with_prefix(&prefix)
            .map_err(|e| anyhow::anyhow!("creating a directory {}XXXXXX: {e}", prefix.display()))?;
        let path = dir.as_path().to_path_buf();
        let on_interrupt = on_exit(move || {
            let _ = std::fs::remove_dir_all(&path);
        });
        let socket = dir.as_path().join("balloon.sock");
        let daemon = spawn(ServeOptions::new(&socket).with_offer(offer))
            .context("starting the balloon daemon")?;
        let mut g = Guest::new(guest).context("creating the guest")?;
        g.attach_balloon(&socket)
            .context("attaching the guest to the balloon daemon")?;
        Ok(InProcess {
            guest: g,
            daemon,
            _dir: dir,
            _on_interrupt: on_interrupt,
        })
    }
}
