//! The guest console: lines captured from the VM's stdout/stderr with host timestamps, and the
//! workload's machine-readable `PREZERO event=NAME key=value ...` lines parsed out of them.
//!
//! Kernel messages share the console, so an event is recognised anywhere in a line (from the
//! `PREZERO event=` marker on). Every line is kept in [`Console::log`] for error messages and
//! reports.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::str::FromStr;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Marker that starts an event on a console line.
pub const EVENT_MARKER: &str = "PREZERO event=";

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stream {
    /// The VM's stdout (the guest console).
    Stdout,
    /// The VM's stderr (host-side messages of UML or QEMU).
    Stderr,
}

/// One console line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Line {
    /// Host time since the VM was started, in seconds.
    pub t_s: f64,
    /// Which stream.
    pub stream: Stream,
    /// The text, without the line ending.
    pub text: String,
}

/// A parsed `PREZERO event=NAME key=value ...` line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Host time of the line since the VM was started, in seconds (0 when parsed standalone).
    pub t_s: f64,
    /// The event name.
    pub name: String,
    /// The other fields.
    pub fields: BTreeMap<String, String>,
}

impl Event {
    /// Parses the event in `line`, if it has one. Tokens without `=` are ignored.
    pub fn parse(line: &str) -> Option<Event> {
        let start = line.find(EVENT_MARKER)?;
        let mut words = line[start + "PREZERO ".len()..].split_whitespace();
        let name = words.next()?.strip_prefix("event=")?.to_owned();
        if name.is_empty() {
            return None;
        }
        let fields = words
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Some(Event {
            t_s: 0.0,
            name,
            fields,
        })
    }

    /// A field's text.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// A field parsed as a number (or anything `FromStr`).
    pub fn num<T: FromStr>(&self, key: &str) -> Option<T> {
        self.get(key)?.parse().ok()
    }

    /// The guest's own `/proc/meminfo` of a `meminfo` event (kB values), else `None`.
    pub fn meminfo(&self) -> Option<Meminfo> {
        (self.name == "meminfo").then(|| {
            Meminfo(
                self.fields
                    .iter()
                    .filter_map(|(k, v)| v.parse().ok().map(|v| (k.clone(), v)))
                    .collect(),
            )
        })
    }
}

/// `/proc/meminfo` values in kB, keyed by name (`Active(anon)` is spelled `Active_anon`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meminfo(pub BTreeMap<String, u64>);

impl Meminfo {
    /// Parses `/proc/meminfo` text (`Key:   123 kB` lines).
    pub fn parse(text: &str) -> Meminfo {
        Meminfo(
            text.lines()
                .filter_map(|l| {
                    let (k, rest) = l.split_once(':')?;
                    let v = rest.split_whitespace().next()?.parse().ok()?;
                    Some((k.trim().replace('(', "_").replace(')', ""), v))
                })
                .collect(),
        )
    }

    /// A value in kB.
    pub fn kib(&self, key: &str) -> Option<u64> {
        self.0.get(key).copied()
    }

    /// A value in MiB.
    pub fn mib(&self, key: &str) -> Option<f64> {
        self.kib(key).map(|k| k as f64 / 1024.0)
    }
}

/// Lines of a running VM, fed by reader threads.
#[derive(Debug)]
pub struct Console {
    rx: Receiver<Line>,
    log: Vec<Line>,
    open_streams: usize,
    t0: Instant,
}

impl Console {
    /// A console over the given streams, timestamps relative to `t0`. One reader thread per
    /// stream; they end at EOF.
    pub fn start(t0: Instant, streams: Vec<(Stream, Box<dyn Read + Send>)>) -> Console {
        let (tx, rx) = mpsc::channel();
        let n = streams.len();
        for (stream, reader) in streams {
            let tx: Sender<Line> = tx.clone();
            thread::Builder::new()
                .name(format!("prezero-console-{stream:?}"))
                .spawn(move || read_lines(t0, stream, reader, tx))
                .expect("spawning a console reader thread");
        }
        Console {
            rx,
            log: Vec::new(),
            open_streams: n,
            t0,
        }
    }

    /// The instant timestamps are relative to.
    pub fn t0(&self) -> Instant {
        self.t0
    }

    /// Whether every stream reached EOF and every line was consumed.
    pub fn is_closed(&self) -> bool {
        self.open_streams == 0
    }

    fn take(&mut self, line: Line) {
        tracing::trace!(target: "prezero_linux_harness::console", "{:>8.3} {}", line.t_s, line.text);
        self.log.push(line);
    }

    /// The next line, waiting until `deadline`; `None` at the deadline or when closed.
    pub fn next_line(&mut self, deadline: Instant) -> Option<&Line> {
        let i = self.next_index(deadline)?;
        Some(&self.log[i])
    }

    fn next_index(&mut self, deadline: Instant) -> Option<usize> {
        loop {
            if self.open_streams == 0 {
                return None;
            }
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(line) if line.text == "\0EOF" => self.open_streams -= 1,
                Ok(line) => {
                    self.take(line);
                    return Some(self.log.len() - 1);
                }
                Err(RecvTimeoutError::Timeout) => return None,
                Err(RecvTimeoutError::Disconnected) => {
                    self.open_streams = 0;
                    return None;
                }
            }
        }
    }

    /// Consumes every line already available without waiting.
    pub fn drain(&mut self) {
        while self.next_line(Instant::now()).is_some() {}
    }

    /// Waits for a line satisfying `pred`, up to `timeout`.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Line) -> bool,
    ) -> Result<Line> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_index(deadline) {
                Some(i) if pred(&self.log[i]) => return Ok(self.log[i].clone()),
                Some(_) => {}
                None if self.is_closed() => {
                    return Err(Error::GuestExited {
                        what: what.to_owned(),
                        tail: self.tail(30),
                    })
                }
                None => {
                    return Err(Error::Timeout {
                        what: what.to_owned(),
                        secs: timeout.as_secs_f64(),
                        tail: self.tail(30),
                    })
                }
            }
        }
    }

    /// Waits for event `name` (see [`Event`]), up to `timeout`.
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<Event> {
        let line = self.wait_for(&format!("PREZERO event={name}"), timeout, |l| {
            Event::parse(&l.text).is_some_and(|e| e.name == name)
        })?;
        let mut e = Event::parse(&line.text).expect("matched above");
        e.t_s = line.t_s;
        Ok(e)
    }

    /// Every line so far.
    pub fn log(&self) -> &[Line] {
        &self.log
    }

    /// Every event so far, with their host timestamps.
    pub fn events(&self) -> Vec<Event> {
        events_of(&self.log)
    }

    /// The last `n` lines as text (for error messages).
    pub fn tail(&self, n: usize) -> String {
        let start = self.log.len().saturating_sub(n);
        self.log[start..]
            .iter()
            .map(|l| format!("  [{:8.3}] {}", l.t_s, l.text))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The events in `lines`, with their timestamps.
pub fn events_of(lines: &[Line]) -> Vec<Event> {
    lines
        .iter()
        .filter_map(|l| {
            let mut e = Event::parse(&l.text)?;
            e.t_s = l.t_s;
            Some(e)
        })
        .collect()
}

fn read_lines(t0: Instant, stream: Stream, reader: Box<dyn Read + Send>, tx: Sender<Line>) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let t_s = t0.elapsed().as_secs_f64();
                let text = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\n', '\r'])
                    .replace('\r', "");
                if tx.send(Line { t_s, stream, text }).is_err() {
                    return;
                }
            }
        }
    }
    let _ = tx.send(Line {
        t_s: t0.elapsed().as_secs_f64(),
        stream,
        text: "\0EOF".into(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_amid_kernel_noise() {
        let e = Event::parse(
            "[    1.23] virtio_balloon: x PREZERO event=checksum status=ok mib=32 junk",
        )
        .unwrap();
        assert_eq!(e.name, "checksum");
        assert_eq!(e.get("status"), Some("ok"));
        assert_eq!(e.num::<u64>("mib"), Some(32));
        assert_eq!(e.get("junk"), None);
        assert!(Event::parse("no event here").is_none());
        assert!(Event::parse("PREZERO event= x=1").is_none());
        assert!(Event::parse("PREZERO ready").is_none());
    }

    #[test]
    fn meminfo_from_proc_text_and_event() {
        let text = "MemTotal:        2012345 kB\nMemFree:         1900000 kB\nActive(anon):       1234 kB\nHugePages_Total:       0\n";
        let m = Meminfo::parse(text);
        assert_eq!(m.kib("MemTotal"), Some(2012345));
        assert_eq!(m.kib("Active_anon"), Some(1234));
        assert_eq!(m.kib("HugePages_Total"), Some(0));
        assert_eq!(m.mib("MemFree"), Some(1900000.0 / 1024.0));
        let e = Event::parse("PREZERO event=meminfo up=1.5 phase=idle MemTotal=2012345 MemFree=1900000 Active_anon=1234").unwrap();
        let m2 = e.meminfo().unwrap();
        assert_eq!(m2.kib("MemTotal"), Some(2012345));
        assert_eq!(m2.kib("Active_anon"), Some(1234));
        assert_eq!(m2.kib("phase"), None);
        assert!(Event::parse("PREZERO event=done")
            .unwrap()
            .meminfo()
            .is_none());
    }

    #[test]
    fn console_reads_lines_and_waits() {
        let data = b"boot noise\r\nPREZERO event=init kernel=6.1\nPREZERO event=exit rc=0\npartial"
            .to_vec();
        let mut c = Console::start(
            Instant::now(),
            vec![(Stream::Stdout, Box::new(std::io::Cursor::new(data)))],
        );
        let e = c.wait_event("exit", Duration::from_secs(10)).unwrap();
        assert_eq!(e.num::<i32>("rc"), Some(0));
        assert_eq!(c.log()[0].text, "boot noise");
        let evs = c.events();
        assert_eq!(
            evs.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            ["init", "exit"]
        );
        // The last, unterminated line still arrives; then the console closes.
        assert!(matches!(
            c.wait_event("never", Duration::from_secs(10)),
            Err(Error::GuestExited { .. })
        ));
        assert_eq!(c.log().last().unwrap().text, "partial");
        assert!(c.is_closed());
    }
}
