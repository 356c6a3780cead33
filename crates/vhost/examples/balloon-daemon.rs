//! The daemon on its own, for manual runs (e.g. attaching User-Mode Linux) until the
//! `prezero serve` command is the way to start it.
//!
//! ```text
//! cargo run -p prezero-vhost --example balloon-daemon -- SOCKET [CONTROL] [--no-device-init]
//! curl -s --unix-socket CONTROL -X PUT -d '{"amount_mib": 64}' http://localhost/balloon
//! ```
//!
//! Logs go to stderr (`RUST_LOG` filters, default `info`). Stops on SIGINT/SIGTERM.

use prezero_vhost::{serve, FeatureOffer, ServeOptions};

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let no_init = args.iter().any(|a| a == "--no-device-init");
    args.retain(|a| a != "--no-device-init");
    let Some(socket) = args.first() else {
        eprintln!("usage: balloon-daemon SOCKET [CONTROL] [--no-device-init]");
        std::process::exit(2);
    };
    let mut opts = ServeOptions::new(socket);
    if let Some(control) = args.get(1) {
        opts = opts.with_control(control);
    }
    if no_init {
        opts = opts.with_offer(FeatureOffer {
            device_init_reported: false,
            device_init_on_inflate: false,
            ..FeatureOffer::default()
        });
    }
    if let Err(e) = serve(opts) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
