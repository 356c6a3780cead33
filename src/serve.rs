//! `prezero serve`: the virtio-balloon vhost-user daemon.

use anyhow::{Context, Result};
use clap::Args;
use prezero_vhost::{parse_size, FeatureOffer, ServeOptions};
use std::path::PathBuf;

/// Options of `prezero serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The vhost-user socket frontends connect to (a VMM, User-Mode Linux, the Rust guest).
    #[arg(long)]
    socket: PathBuf,
    /// The operator's control socket (HTTP/JSON): `prezero balloon set/stats --control PATH`.
    #[arg(long)]
    control: Option<PathBuf>,
    /// Initial balloon size, what the guest gives back (`256` or `256M`: a number without a
    /// unit is MiB; `1G`, `4096B`; at least one 4 KiB page). Checked against the guest's RAM
    /// only once a guest connects (the daemon logs a warning if it is larger).
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    target: Option<String>,
    /// Ask the guest for fresh statistics every SECONDS (0: only when asked), like QEMU's
    /// `guest-stats-polling-interval`; changeable at run time.
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    stats_polling_interval_s: u64,
    /// Do not offer DEVICE_INIT_REPORTED: reported pages are discarded but never claimed zeroed.
    #[arg(long)]
    no_device_init_reported: bool,
    /// Do not offer DEVICE_INIT_ON_INFLATE (no inflate bitmap).
    #[arg(long)]
    no_device_init_on_inflate: bool,
    /// Do not offer free page reporting.
    #[arg(long)]
    no_reporting: bool,
    /// Do not offer the stats queue.
    #[arg(long)]
    no_stats: bool,
    /// Do not offer DEFLATE_ON_OOM.
    #[arg(long)]
    no_deflate_on_oom: bool,
    /// Do not offer PAGE_POISON.
    #[arg(long)]
    no_page_poison: bool,
    /// Do not offer VIRTIO_RING_F_EVENT_IDX.
    #[arg(long)]
    no_event_idx: bool,
    /// Never discard guest memory (and so never claim anything zeroed).
    #[arg(long)]
    no_discard: bool,
}

impl ServeArgs {
    /// The daemon options these flags describe.
    pub fn options(&self) -> Result<ServeOptions> {
        let mut offer = FeatureOffer::default();
        offer.device_init_reported &= !self.no_device_init_reported;
        offer.device_init_on_inflate &= !self.no_device_init_on_inflate;
        offer.reporting &= !self.no_reporting;
        offer.stats &= !self.no_stats;
        offer.deflate_on_oom &= !self.no_deflate_on_oom;
        offer.page_poison &= !self.no_page_poison;
        offer.event_idx &= !self.no_event_idx;
        let mut opts = ServeOptions::new(&self.socket).with_offer(offer);
        if let Some(c) = &self.control {
            opts = opts.with_control(c);
        }
        if let Some(t) = &self.target {
            let pages = parse_size(t).and_then(prezero_vhost::bytes_to_pages);
            opts.device.initial_target_pages = pages.context("prezero serve --target SIZE")?;
        }
        opts.discard = !self.no_discard;
        opts.stats_polling_interval_s = self.stats_polling_interval_s;
        Ok(opts)
    }
}

/// Runs the daemon until SIGINT/SIGTERM.
pub fn run(args: &ServeArgs) -> Result<()> {
    prezero_vhost::serve(args.options()?)?;
    Ok(())
}
