//! Runs the report benchmark: `cargo run --release -p prezero-device --example report_bench
//! [--json] [--mib N] [--passes N]`. (`prezero bench report` is the supported front end.)

use prezero_device::bench::{run, ReportBenchOptions};

fn main() {
    let mut opts = ReportBenchOptions::default();
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--json" => json = true,
            "--mib" => {
                let mib: u64 = args.next().and_then(|v| v.parse().ok()).expect("--mib N");
                opts.region_bytes = mib << 20;
            }
            "--passes" => {
                opts.passes = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--passes N")
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let result = run(&opts).expect("report bench");
    if json {
        println!("{}", serde_json::to_string_pretty(&result).unwrap());
    } else {
        print!("{}", result.table());
    }
}
