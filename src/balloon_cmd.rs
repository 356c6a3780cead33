//! `prezero balloon ...`: the operator's side of the control socket.

use anyhow::{Context, Result};
use clap::Subcommand;
use prezero_vhost::{bytes_to_pages, control_request, parse_size, ControlRequest};
use std::path::PathBuf;
use std::time::Duration;

/// Control commands.
#[derive(Subcommand, Debug)]
pub enum BalloonCommand {
    /// Set the balloon's size: the memory the guest gives back to the host (not what it
    /// keeps, unlike QEMU's monitor `balloon`; as Firecracker's `amount_mib`). The guest is
    /// notified; the daemon refuses a size above the connected guest's RAM.
    Set {
        /// The balloon size: `256` or `256M` (a number without a unit is MiB), `1.5G`,
        /// `4096B`; at least one 4 KiB page, or `0` to release the balloon.
        #[arg(value_name = "SIZE", allow_hyphen_values = true)]
        size: String,
        /// The daemon's control socket.
        #[arg(long)]
        control: PathBuf,
    },
    /// Guest statistics (fresh ones are requested first, waiting up to --wait-ms).
    Stats {
        /// The daemon's control socket.
        #[arg(long)]
        control: PathBuf,
        /// How long to wait for the guest's fresh statistics.
        #[arg(long, default_value_t = 1000)]
        wait_ms: u64,
    },
    /// Let the daemon ask the guest for fresh statistics every SECONDS (0: stop), like QEMU's
    /// `guest-stats-polling-interval` and Firecracker's `stats_polling_interval_s`.
    StatsInterval {
        /// Seconds between requests; 0 turns polling off.
        seconds: u64,
        /// The daemon's control socket.
        #[arg(long)]
        control: PathBuf,
    },
    /// Target, actual size and negotiation.
    Status {
        /// The daemon's control socket.
        #[arg(long)]
        control: PathBuf,
    },
    /// Device and daemon counters (JSON; Prometheus scrapes `GET /metrics` on the control
    /// socket in its text format, see docs/api.md).
    Metrics {
        /// The daemon's control socket.
        #[arg(long)]
        control: PathBuf,
    },
}

/// Runs a control command and prints the daemon's JSON answer.
pub fn run(cmd: &BalloonCommand) -> Result<()> {
    let (control, request) = match cmd {
        BalloonCommand::Set { size, control } => {
            // Checked here too, so a size below one page is refused before anything is sent.
            let bytes = parse_size(size)
                .and_then(|b| bytes_to_pages(b).map(|_| b))
                .context("prezero balloon set SIZE")?;
            (control, ControlRequest::SetTargetBytes(bytes))
        }
        BalloonCommand::Stats { control, wait_ms } => (
            control,
            ControlRequest::RequestStats(Some(Duration::from_millis(*wait_ms))),
        ),
        BalloonCommand::StatsInterval { seconds, control } => {
            (control, ControlRequest::SetStatsPollingInterval(*seconds))
        }
        BalloonCommand::Status { control } => (control, ControlRequest::Status),
        BalloonCommand::Metrics { control } => (control, ControlRequest::Metrics),
    };
    let answer = control_request(control, &request).map_err(|e| match e {
        // The vhost-user socket accepts the connection and then closes it on an HTTP request:
        // the likeliest mistake is giving `--socket`'s path where `--control`'s belongs.
        prezero_vhost::Error::ControlProtocol(why) => anyhow::anyhow!(
            "{} did not answer as a control socket ({why}): is it the daemon's vhost-user \
             socket? Give the path of `prezero serve --control PATH`, not of `--socket`",
            control.display()
        ),
        other => other.into(),
    })?;
    if let Some(warning) = answer.get("warning").and_then(|w| w.as_str()) {
        eprintln!("warning: {warning}");
    }
    crate::output::print_line(&serde_json::to_string_pretty(&answer)?)
}
