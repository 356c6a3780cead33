//! The embedded system: the vhost-user balloon daemon on threads of this process and a Rust
//! guest attached to it over a real Unix socket, sharing the guest's memfd.

use anyhow::{Context, Result};
use prezero_guest::{Guest, GuestOptions};
use prezero_vhost::{spawn, DaemonHandle, FeatureOffer, ServeOptions};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// Daemon and guest, connected.
pub struct Embedded {
    /// The guest (drop it first: it disconnects).
    pub guest: Guest,
    /// The daemon.
    pub daemon: DaemonHandle,
    dir: PathBuf,
}

impl Embedded {
    /// Starts a daemon offering `offer` on a private socket and attaches a new guest to it.
    pub fn start(guest: GuestOptions, offer: FeatureOffer) -> Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "prezero-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let socket = dir.join("balloon.sock");
        let daemon = spawn(ServeOptions::new(&socket).with_offer(offer))
            .context("starting the balloon daemon")?;
        let mut g = Guest::new(guest).context("creating the guest")?;
        g.attach_balloon(&socket)
            .context("attaching the guest to the balloon daemon")?;
        Ok(Embedded {
            guest: g,
            daemon,
            dir,
        })
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
