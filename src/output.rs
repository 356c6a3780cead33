//! Standard output for results, standard error for progress.
//!
//! Results (tables, JSON) go to stdout through [`print()`]: when the reader has gone (`prezero
//! bench alloc | head`), the command stops quietly with status 0 after its cleanups instead of
//! panicking in `println!`. Progress goes to stderr only, so `--json` output stays clean: an
//! [`indicatif`] bar on a terminal, plain lines otherwise (a log file, CI).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Writes `text` to stdout. A closed stdout (`EPIPE`) ends the process quietly (status 0,
/// cleanups run); other write errors are returned.
pub fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => crate::interrupt::exit(0),
        Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
    }
}

/// [`print()`] with a newline.
pub fn print_line(text: &str) -> anyhow::Result<()> {
    print(&format!("{text}\n"))
}

/// Progress of a command with `total` steps, on stderr.
pub struct Progress {
    bar: Option<ProgressBar>,
    what: String,
    total: u64,
    done: u64,
}

impl Progress {
    /// Starts reporting `what` over `total` steps.
    pub fn new(what: &str, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(what.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            bar,
            what: what.to_string(),
            total,
            done: 0,
        }
    }

    /// Says what the next step is.
    pub fn step(&mut self, message: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(message.to_string()),
            None => eprintln!(
                "{}: [{}/{}] {message}",
                self.what,
                self.done + 1,
                self.total
            ),
        }
    }

    /// Marks a step done.
    pub fn done(&mut self) {
        self.done += 1;
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
