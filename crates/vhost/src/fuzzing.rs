//! The relay's fuzz harness, shared by the cargo-fuzz target (`crates/vhost/fuzz`) and the
//! corpus replay test (`tests/relay_fuzz_corpus.rs`), behind the `fuzzing` feature.
//!
//! The input is a sequence of frontend writes, each picked by one byte:
//!
//! | op | what the frontend sends |
//! |---|---|
//! | 0 | a whole message: request, flags, a payload of 0-255 bytes, 0-3 fds (sockets) |
//! | 1 | a header whose size lies (any `u32`), then fewer payload bytes than it says |
//! | 2 | a header with 0-40 fds attached (more than 32 is more than a message may carry) |
//! | 3 | raw bytes (a header cut anywhere) |
//!
//! then closes its side. Config requests, ring setups and `SET_BACKEND_REQ_FD` all come out of
//! op 0 with the right request numbers. The daemon side reads whole messages and answers
//! nothing. Checked, per input ([`run`] returns the violation):
//!
//! - no relay thread panics;
//! - no hang: the relay ends within [`BOUND`] of the frontend closing;
//! - the daemon sees only whole messages, then a clean end of stream (never half a message);
//! - no fd leak: the process has as many open descriptors afterwards as before (run inputs
//!   one at a time in a process).

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::Duration;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::relay::{read_message, Relay};

/// How long the relay may take to end after the frontend closed.
pub const BOUND: Duration = Duration::from_secs(10);

/// What one input did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Whole messages the daemon side received.
    pub delivered: u64,
    /// Frontend writes made.
    pub writes: u64,
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u32(&mut self) -> Option<u32> {
        let mut w = [0u8; 4];
        for b in &mut w {
            *b = self.byte()?;
        }
        Some(u32::from_le_bytes(w))
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head.to_vec()
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn header(request: u32, flags: u32, size: u32) -> Vec<u8> {
    [request, flags, size]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect()
}

/// Runs one input; `Err` names the broken rule.
pub fn run(data: &[u8]) -> Result<Outcome, String> {
    let before = open_fds();
    let outcome = run_inner(data)?;
    let after = open_fds();
    if after != before {
        return Err(format!(
            "{} descriptors leaked",
            after as i64 - before as i64
        ));
    }
    Ok(outcome)
}

fn run_inner(data: &[u8]) -> Result<Outcome, String> {
    let io = |e: std::io::Error| e.to_string();
    let (frontend, relay_front) = UnixStream::pair().map_err(io)?;
    let (relay_back, daemon) = UnixStream::pair().map_err(io)?;
    let relay = Relay::start(relay_front, relay_back).map_err(io)?;
    // The frontend's reader: drains what the relay answers itself.
    let reader = frontend.try_clone().map_err(io)?;
    let drain = std::thread::spawn(move || while let Ok(Some(_)) = read_message(&reader) {});
    // The daemon side: whole messages, then the end.
    let (tx, rx) = mpsc::channel();
    let collector = std::thread::spawn(move || {
        let mut delivered = 0u64;
        let end = loop {
            match read_message(&daemon) {
                Ok(Some(_)) => delivered += 1,
                Ok(None) => break Ok(()),
                Err(e) => break Err(format!("the daemon got half a message: {e}")),
            }
        };
        let _ = tx.send(());
        (delivered, end)
    });

    let mut input = Input(data);
    let mut writes = 0u64;
    let mut w = &frontend;
    while let Some(op) = input.byte() {
        writes += 1;
        let sent = match op % 4 {
            0 => {
                let request = u32::from(input.byte().unwrap_or(0) % 48);
                let flags = u32::from(input.byte().unwrap_or(1));
                let len = usize::from(input.byte().unwrap_or(0));
                let nfds = usize::from(input.byte().unwrap_or(0) % 4);
                let payload = input.bytes(len);
                let mut msg = header(request, flags, payload.len() as u32);
                msg.extend_from_slice(&payload);
                send_with_fds(&frontend, &msg, nfds)
            }
            1 => {
                let size = input.u32().unwrap_or(u32::MAX);
                let request = u32::from(input.byte().unwrap_or(0) % 48);
                let short = usize::from(input.byte().unwrap_or(0));
                let mut msg = header(request, 1, size);
                msg.extend(input.bytes(short.min(size as usize)));
                w.write_all(&msg)
            }
            2 => {
                let nfds = usize::from(input.byte().unwrap_or(0) % 41);
                send_with_fds(&frontend, &header(1, 1, 0), nfds)
            }
            _ => {
                let len = usize::from(input.byte().unwrap_or(0) % 16);
                w.write_all(&input.bytes(len))
            }
        };
        if sent.is_err() {
            // The relay closed the connection (a malformed message): the end is what we check.
            break;
        }
    }
    // The frontend closes (its reader thread holds a clone: shut the socket down, not just
    // this handle).
    let _ = frontend.shutdown(std::net::Shutdown::Both);
    drop(frontend);
    let ended = rx.recv_timeout(BOUND).is_ok();
    if !ended {
        relay.cut();
    }
    let counts = relay.join();
    let (delivered, end) = collector
        .join()
        .map_err(|_| "the daemon side panicked".to_string())?;
    drain
        .join()
        .map_err(|_| "the frontend reader panicked".to_string())?;
    if !ended {
        return Err(format!("the relay did not end within {BOUND:?}"));
    }
    if counts.panicked {
        return Err("a relay thread panicked".into());
    }
    end?;
    Ok(Outcome { delivered, writes })
}

/// Sends `bytes` with `n` fresh socket descriptors attached (closed here after sending).
fn send_with_fds(to: &UnixStream, bytes: &[u8], n: usize) -> std::io::Result<()> {
    let pairs: Vec<(OwnedFd, OwnedFd)> = (0..n)
        .map(|_| UnixStream::pair().map(|(a, b)| (a.into(), b.into())))
        .collect::<Result<_, _>>()?;
    let raw: Vec<RawFd> = pairs.iter().map(|(a, _)| a.as_raw_fd()).collect();
    let sent = to.send_with_fds(&[bytes], &raw)?;
    let mut w = to;
    w.write_all(&bytes[sent..])
}
