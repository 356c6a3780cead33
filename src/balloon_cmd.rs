//! `prezero balloon ...`: the operator's side of the control socket.

use anyhow::{Context, Result};
use clap::Subcommand;
use prezero_vhost::{control_request, parse_size, ControlRequest};
use std::path::PathBuf;
use std::time::Duration;

/// Control commands.
#[derive(Subcommand, Debug)]
pub enum BalloonCommand {
    /// Set the balloon target (e.g. `256M`, `1G`, `0` to release it); the guest is notified.
    Set {
        /// Target size.
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
    /// Target, actual size and negotiation.
    Status {
        /// The daemon's control socket.
        #[arg(long)]
        control: PathBuf,
    },
    /// Device and daemon counters.
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
            let bytes = parse_size(size).with_context(|| format!("balloon size {size:?}"))?;
            (control, ControlRequest::SetTargetBytes(bytes))
        }
        BalloonCommand::Stats { control, wait_ms } => (
            control,
            ControlRequest::RequestStats(Some(Duration::from_millis(*wait_ms))),
        ),
        BalloonCommand::Status { control } => (control, ControlRequest::Status),
        BalloonCommand::Metrics { control } => (control, ControlRequest::Metrics),
    };
    let answer = control_request(control, &request)?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}
