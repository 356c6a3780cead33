//! The operator's control socket: HTTP/1.1 with JSON bodies over a Unix socket, in the style
//! of Firecracker's and Cloud Hypervisor's API sockets, so `curl --unix-socket` works too.
//!
//! The API is written down, with every body, unit and error and `curl` examples, in
//! `docs/api.md`; in short:
//!
//! | request | body | answer |
//! |---|---|---|
//! | `GET /balloon` | | [`BalloonStatus`](crate::BalloonStatus) |
//! | `PUT /balloon`, `PATCH /balloon` | one of `{"amount_mib": N}` (Firecracker), `{"target_bytes": N}`, `{"target_pages": N}`, and/or `deflate_on_oom`, `stats_polling_interval_s` | [`TargetOutcome`](crate::TargetOutcome); without a target field, the state |
//! | `GET /balloon/statistics` | | [`BalloonStatistics`]: Firecracker's flat statistics plus `stats`; 400 with the reason when there are none |
//! | `PATCH /balloon/statistics` | `{"stats_polling_interval_s": N}` | the state |
//! | `PUT`/`PATCH`/`POST /balloon/statistics` | empty or `{"wait_ms": N}` | [`StatsRequestOutcome`](crate::StatsRequestOutcome) |
//! | `GET /metrics` | | Prometheus text format; [`MetricsReport`](crate::MetricsReport) as JSON when `Accept` starts with `application/json` |
//! | `GET /metrics.json` | | [`MetricsReport`](crate::MetricsReport) |
//!
//! Errors are `{"error": "..."}` naming the problem and the fix, with status 400 (a malformed
//! request, a body that is not the expected JSON, a target out of range, a `deflate_on_oom`
//! the daemon does not offer, polling without the stats queue, no statistics), 404 (no such
//! path), 405 (a method the path does not take) or 500 (an answer that could not be
//! serialized). One request per connection (`Connection: close`). Requests are served one at a
//! time; a config-change notification waits at most the daemon's `notify_timeout`, a stats
//! request at most `max_stats_wait`.
//!
//! ```text
//! $ curl -s --unix-socket /run/balloon.ctl -X PUT -d '{"amount_mib": 256}' http://localhost/balloon
//! {"target_pages":65536,"target_bytes":268435456,"changed":true,"notification":{"result":"acked"}}
//! ```

use std::io;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::controller::Controller;
use crate::error::{Error, Result};
use crate::http::{self, ReadError};
use crate::options::bytes_to_pages;
use crate::prometheus;
use crate::socket::BoundSocket;
use crate::status::BalloonStatistics;
use crate::wait::Waiter;

/// How long the server waits for a slow client to send or take its bytes.
const CLIENT_IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A request the control client can send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlRequest {
    /// `GET /balloon`: target, actual, negotiation, connection.
    Status,
    /// `PUT /balloon`: set the target in bytes (rounded down to 4 KiB pages).
    SetTargetBytes(u64),
    /// `PUT /balloon`: set the target in 4 KiB pages.
    SetTargetPages(u32),
    /// `GET /balloon/statistics`: the latest guest statistics.
    Stats,
    /// `PUT /balloon/statistics`: ask the guest for fresh statistics, waiting up to this long.
    RequestStats(Option<Duration>),
    /// `PATCH /balloon/statistics`: the daemon asks for fresh statistics every N seconds (0:
    /// off).
    SetStatsPollingInterval(u64),
    /// `GET /metrics` (JSON, by `Accept`): device and daemon counters.
    Metrics,
}

impl ControlRequest {
    /// HTTP method, path and JSON body.
    pub fn http(&self) -> (&'static str, &'static str, Option<Value>) {
        match self {
            ControlRequest::Status => ("GET", "/balloon", None),
            ControlRequest::SetTargetBytes(b) => {
                ("PUT", "/balloon", Some(json!({"target_bytes": b})))
            }
            ControlRequest::SetTargetPages(p) => {
                ("PUT", "/balloon", Some(json!({"target_pages": p})))
            }
            ControlRequest::Stats => ("GET", "/balloon/statistics", None),
            ControlRequest::RequestStats(wait) => (
                "PUT",
                "/balloon/statistics",
                Some(match wait {
                    Some(w) => json!({"wait_ms": u64::try_from(w.as_millis()).unwrap_or(u64::MAX)}),
                    None => json!({}),
                }),
            ),
            ControlRequest::SetStatsPollingInterval(s) => (
                "PATCH",
                "/balloon/statistics",
                Some(json!({"stats_polling_interval_s": s})),
            ),
            ControlRequest::Metrics => ("GET", "/metrics", None),
        }
    }
}

fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// Sends `request` to the daemon's control socket at `path` and returns its JSON answer.
///
/// ```no_run
/// use prezero_vhost::{control_request, ControlRequest};
/// let outcome = control_request("/run/balloon.ctl", &ControlRequest::SetTargetBytes(256 << 20))?;
/// println!("{}", outcome["notification"]["result"]);
/// let stats = control_request("/run/balloon.ctl", &ControlRequest::Stats)?;
/// println!("{}", stats["stats"]["values"]["free_memory"]);
/// # Ok::<(), prezero_vhost::Error>(())
/// ```
pub fn control_request(path: impl AsRef<Path>, request: &ControlRequest) -> Result<Value> {
    let path = path.as_ref();
    let (method, route, body) = request.http();
    let mut stream = UnixStream::connect(path).map_err(|source| {
        let hint = match source.raw_os_error() {
            Some(libc::ENOENT) => "no such socket: is the daemon running with this --control path?",
            // connect(2) to a directory or a regular file also answers ECONNREFUSED.
            Some(libc::ECONNREFUSED) if !is_socket(path) => {
                "that path is not a socket: give the one the daemon was started with \
                 (`prezero serve --control PATH`)"
            }
            Some(libc::ECONNREFUSED) => "nobody listens on it: the daemon that made it is gone",
            Some(libc::EACCES) => "permission denied: run as the daemon's user",
            Some(libc::ENOTSOCK) => "that path is not a socket",
            _ => "check the path",
        };
        Error::ControlConnect {
            path: path.to_path_buf(),
            source,
            hint,
        }
    })?;
    let wait = match request {
        ControlRequest::RequestStats(Some(w)) => *w,
        _ => Duration::ZERO,
    };
    // The daemon answers at once, except while it waits for a guest (an ack, fresh stats).
    let io_err = |source| Error::Io {
        what: "talking to the control socket",
        source,
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(60).saturating_add(wait)))
        .map_err(io_err)?;
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(io_err)?;
    let body = body.map(|b| b.to_string());
    http::write_request(
        &mut stream,
        method,
        route,
        body.as_deref().map(str::as_bytes),
    )
    .map_err(io_err)?;
    let (status, body) = http::read_response(&mut stream).map_err(|e| match e {
        ReadError::Io(e) => io_err(e),
        ReadError::Malformed(m) => Error::ControlProtocol(m),
    })?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| Error::ControlProtocol(format!("the answer is not JSON: {e}")))?;
    if status != 200 {
        let message = value
            .get("error")
            .and_then(Value::as_str)
            .map_or_else(|| value.to_string(), str::to_string);
        return Err(Error::ControlRefused { status, message });
    }
    Ok(value)
}

/// Serves the control socket until the daemon stops.
pub(crate) fn serve_control(socket: BoundSocket, controller: &Controller) {
    let stop_event = controller.shared().stop_event();
    let waiters = Waiter::readable([&socket.listener, stop_event])
        .and_then(|both| Ok((both, Waiter::readable([stop_event])?)));
    let (request_or_stop, stop) = match waiters {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "control socket: poll failed; control stops");
            return;
        }
    };
    loop {
        match request_or_stop.wait(None) {
            Err(e) => {
                tracing::error!(error = %e, "control socket: poll failed; control stops");
                return;
            }
            Ok([_, true]) => return,
            Ok(_) if controller.is_stopping() => return,
            Ok(_) => {}
        }
        match socket.accept() {
            Ok(Some(stream)) => {
                if let Err(e) = handle_connection(stream, controller) {
                    tracing::debug!(error = %e, "control connection failed");
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "control socket: accept failed");
                let _ = stop.wait(Some(Duration::from_millis(200)));
            }
        }
    }
}

fn handle_connection(mut stream: UnixStream, controller: &Controller) -> io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_IO_TIMEOUT))?;
    let reply = match http::read_request(&mut stream) {
        Ok(req) => {
            tracing::debug!(method = %req.method, path = %req.path, "control request");
            route(&req, controller)
        }
        Err(ReadError::Malformed(m)) => Reply::error(400, m),
        Err(ReadError::Io(e)) => return Err(e),
    };
    http::write_response(&mut stream, reply.status, reply.content_type, &reply.body)
}

/// A response: status, content type, body.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Reply {
    fn json(status: u16, value: &Value) -> Reply {
        Reply {
            status,
            content_type: http::JSON,
            body: value.to_string().into_bytes(),
        }
    }

    fn ok<T: serde::Serialize>(value: &T) -> Reply {
        match serde_json::to_value(value) {
            Ok(v) => Reply::json(200, &v),
            Err(e) => Reply::error(500, e.to_string()),
        }
    }

    fn error(status: u16, message: impl Into<String>) -> Reply {
        Reply::json(status, &json!({"error": message.into()}))
    }
}

/// `PUT`/`PATCH /balloon`: one target field (ours or Firecracker's `amount_mib`) and/or
/// Firecracker's `deflate_on_oom` and `stats_polling_interval_s`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BalloonBody {
    target_bytes: Option<u64>,
    target_pages: Option<u32>,
    amount_mib: Option<u64>,
    deflate_on_oom: Option<bool>,
    stats_polling_interval_s: Option<u64>,
}

/// `PUT`/`PATCH`/`POST /balloon/statistics`: a fresh-statistics request (`wait_ms`) and/or
/// Firecracker's `stats_polling_interval_s`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StatsBody {
    wait_ms: Option<u64>,
    stats_polling_interval_s: Option<u64>,
}

const BALLOON_BODY: &str =
    "{\"amount_mib\": N} (or {\"target_bytes\": N}, {\"target_pages\": N}), \
     optionally with \"deflate_on_oom\" and \"stats_polling_interval_s\"";

/// Every route, for the 404 answer.
const ROUTES: [&str; 8] = [
    "GET /balloon",
    "PUT /balloon",
    "PATCH /balloon",
    "GET /balloon/statistics",
    "PUT /balloon/statistics",
    "PATCH /balloon/statistics",
    "GET /metrics",
    "GET /metrics.json",
];

fn set_balloon(req: &http::Request, c: &Controller) -> Reply {
    let body: BalloonBody = match serde_json::from_slice(&req.body) {
        Ok(b) => b,
        Err(e) => return Reply::error(400, format!("expected {BALLOON_BODY}: {e}")),
    };
    if let Some(wanted) = body.deflate_on_oom {
        let offered = c.deflate_on_oom();
        if wanted != offered {
            return Reply::error(
                400,
                format!(
                    "deflate_on_oom is a feature bit negotiated when the guest connects, fixed \
                     when the daemon starts: this daemon {} it ({}); restart it to change it",
                    if offered { "offers" } else { "does not offer" },
                    if offered {
                        "--no-deflate-on-oom turns it off"
                    } else {
                        "it was started with --no-deflate-on-oom"
                    }
                ),
            );
        }
    }
    let pages = match (body.target_bytes, body.target_pages, body.amount_mib) {
        (Some(b), None, None) => Some(bytes_to_pages(b)),
        (None, Some(p), None) => Some(Ok(p)),
        (None, None, Some(m)) => Some(
            m.checked_mul(1 << 20)
                .ok_or(Error::Options("amount_mib too large".into()))
                .and_then(bytes_to_pages),
        ),
        (None, None, None) => None,
        _ => {
            return Reply::error(
                400,
                "give one of amount_mib, target_bytes, target_pages, not several",
            )
        }
    };
    if pages.is_none() && body.stats_polling_interval_s.is_none() && body.deflate_on_oom.is_none() {
        return Reply::error(400, format!("nothing to change: expected {BALLOON_BODY}"));
    }
    if let Some(interval) = body.stats_polling_interval_s {
        if let Err(e) = c.set_stats_polling_interval_s(interval) {
            return Reply::error(400, e.to_string());
        }
    }
    match pages {
        None => Reply::ok(&c.status()),
        Some(Err(e)) => Reply::error(400, e.to_string()),
        Some(Ok(p)) => match c.set_target_pages(p) {
            Ok(outcome) => Reply::ok(&outcome),
            Err(e) => Reply::error(400, e.to_string()),
        },
    }
}

fn statistics_request(req: &http::Request, c: &Controller) -> Reply {
    let body: StatsBody = if req.body.iter().all(u8::is_ascii_whitespace) {
        StatsBody::default()
    } else {
        match serde_json::from_slice(&req.body) {
            Ok(b) => b,
            Err(e) => {
                return Reply::error(
                    400,
                    format!(
                    "expected {{\"wait_ms\": N}} and/or {{\"stats_polling_interval_s\": N}}: {e}"
                ),
                )
            }
        }
    };
    if let Some(interval) = body.stats_polling_interval_s {
        if let Err(e) = c.set_stats_polling_interval_s(interval) {
            return Reply::error(400, e.to_string());
        }
        if body.wait_ms.is_none() {
            // Firecracker's PATCH: only the interval.
            return Reply::ok(&c.status());
        }
    }
    Reply::ok(&c.request_stats(body.wait_ms.map(Duration::from_millis)))
}

/// JSON unless the client asks for something else first: Prometheus sends
/// `Accept: application/openmetrics-text;...,text/plain;...`, curl `*/*`, our client
/// `application/json`.
fn wants_json(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',')
            .next()
            .is_some_and(|first| first.trim().starts_with(http::JSON))
    })
}

fn route(req: &http::Request, c: &Controller) -> Reply {
    let path = req.path.trim_end_matches('/');
    match (req.method.as_str(), path) {
        ("GET", "/balloon") => Reply::ok(&c.status()),
        ("PUT" | "PATCH", "/balloon") => set_balloon(req, c),
        ("GET", "/balloon/statistics") => match c.stats() {
            Some(stats) => Reply::ok(&BalloonStatistics::new(&c.status(), stats)),
            None => Reply::error(
                400,
                format!(
                    "no guest statistics: {}",
                    c.stats_unavailable_reason().unwrap_or("none yet")
                ),
            ),
        },
        ("PUT" | "PATCH" | "POST", "/balloon/statistics") => statistics_request(req, c),
        ("GET", "/metrics") if wants_json(req.accept.as_deref()) => Reply::ok(&c.metrics()),
        ("GET", "/metrics.json") => Reply::ok(&c.metrics()),
        ("GET", "/metrics") => Reply {
            status: 200,
            content_type: prometheus::CONTENT_TYPE,
            body: prometheus::render(
                &c.metrics(),
                &c.status(),
                c.stats().as_ref(),
                c.stats_polling_interval_s(),
            )
            .into_bytes(),
        },
        (_, "/balloon" | "/balloon/statistics" | "/metrics" | "/metrics.json") => {
            Reply::error(405, format!("{} is not allowed on {path}", req.method))
        }
        _ => Reply::json(
            404,
            &json!({"error": format!("no route {path}"), "routes": ROUTES}),
        ),
    }
}
