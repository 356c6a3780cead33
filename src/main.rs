//! `prezero`: host-zeroed free page reporting, end to end.

mod balloon_cmd;
mod bench;
mod demo;
mod in_process;
mod interrupt;
mod linux_cmd;
mod output;
mod serve;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Host-zeroed free page reporting: a guest allocator that skips zeroing memory the host
/// already zeroed, a virtio-balloon device that says what it zeroed, and the system around them.
#[derive(Parser)]
#[command(name = "prezero", version, about)]
struct Cli {
    /// Log filter (tracing `EnvFilter` syntax, e.g. `info` or `prezero_vhost=debug`); also
    /// `RUST_LOG`.
    #[arg(long, global = true)]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole system in one process: a Rust guest and the vhost-user balloon daemon; report,
    /// balloon, then allocate zeroed memory and see how much zeroing was skipped.
    Demo(demo::DemoArgs),
    /// Serve the virtio-balloon device as a vhost-user backend daemon.
    Serve(serve::ServeArgs),
    /// Steer a running daemon through its control socket.
    #[command(subcommand)]
    Balloon(balloon_cmd::BalloonCommand),
    /// Run a benchmark (prints a table; --json for machines).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Boot the stock Linux virtio_balloon driver in User-Mode Linux (default) or a QEMU VM
    /// (`--vmm qemu`) attached to `prezero serve` and run a guest scenario, printing its console.
    Linux(linux_cmd::LinuxArgs),
}

fn init_logging(filter: Option<&str>, default: &str) {
    let filter = filter
        .map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default.to_owned());
    // Colour only on a terminal: a log file or a pipe gets plain text.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let default_log = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    init_logging(cli.log.as_deref(), default_log);
    // `serve` stops itself cleanly on SIGINT/SIGTERM (prezero_vhost::serve); every other
    // command stops through the cleanups of `interrupt`.
    if !matches!(cli.command, Command::Serve(_)) {
        interrupt::install()?;
    }
    match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Balloon(cmd) => balloon_cmd::run(&cmd),
        Command::Bench(cmd) => bench::run(&cmd),
        Command::Linux(args) => linux_cmd::run(&args),
    }
}
