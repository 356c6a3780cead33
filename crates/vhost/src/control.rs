//! The operator's control socket: HTTP/1.1 with JSON bodies over a Unix socket, in the style
//! of Firecracker's and Cloud Hypervisor's API sockets, so `curl --unix-socket` works too.
//!
//! | request | body | answer |
//! |---|---|---|
//! | `GET /balloon` | | [`BalloonStatus`](crate::BalloonStatus) |
//! | `PUT /balloon` (or `PATCH`) | one of `{"target_bytes": N}`, `{"target_pages": N}`, `{"amount_mib": N}` | [`TargetOutcome`](crate::TargetOutcome) |
//! | `GET /balloon/statistics` | | `{"stats": StatsReport or null}` |
//! | `PUT /balloon/statistics` | optional `{"wait_ms": N}` | [`StatsRequestOutcome`](crate::StatsRequestOutcome) |
//! | `GET /metrics` | | [`MetricsReport`](crate::MetricsReport) |
//!
//! Errors are `{"error": "..."}` with status 400 (bad request), 404 (no such route), 405
//! (wrong method). One request per connection (`Connection: close`). Requests are served one
//! at a time; a config-change notification waits at most the daemon's `notify_timeout`, a
//! stats request at most `max_stats_wait`.
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
use crate::socket::BoundSocket;
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
    /// `GET /metrics`: device and daemon counters.
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
            ControlRequest::Metrics => ("GET", "/metrics", None),
        }
    }
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
    let (status, body) = match http::read_request(&mut stream) {
        Ok(req) => {
            tracing::debug!(method = %req.method, path = %req.path, "control request");
            route(&req, controller)
        }
        Err(ReadError::Malformed(m)) => (400, json!({"error": m})),
        Err(ReadError::Io(e)) => return Err(e),
    };
    http::write_response(&mut stream, status, body.to_string().as_bytes())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetBody {
    target_bytes: Option<u64>,
    target_pages: Option<u32>,
    amount_mib: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StatsBody {
    wait_ms: Option<u64>,
}

fn bad(message: impl Into<String>) -> (u16, Value) {
    (400, json!({"error": message.into()}))
}

fn to_json<T: serde::Serialize>(value: &T) -> (u16, Value) {
    match serde_json::to_value(value) {
        Ok(v) => (200, v),
        Err(e) => (500, json!({"error": e.to_string()})),
    }
}

fn route(req: &http::Request, c: &Controller) -> (u16, Value) {
    let path = req.path.trim_end_matches('/');
    match (req.method.as_str(), path) {
        ("GET", "/balloon") => to_json(&c.status()),
        ("PUT" | "PATCH", "/balloon") => {
            let body: TargetBody = match serde_json::from_slice(&req.body) {
                Ok(b) => b,
                Err(e) => {
                    return bad(format!(
                        "expected one of {{\"target_bytes\": N}}, {{\"target_pages\": N}}, {{\"amount_mib\": N}}: {e}"
                    ))
                }
            };
            let pages = match (body.target_bytes, body.target_pages, body.amount_mib) {
                (Some(b), None, None) => bytes_to_pages(b),
                (None, Some(p), None) => Ok(p),
                (None, None, Some(m)) => m
                    .checked_mul(1 << 20)
                    .ok_or(Error::Options("amount_mib too large".into()))
                    .and_then(bytes_to_pages),
                _ => return bad("give exactly one of target_bytes, target_pages, amount_mib"),
            };
            match pages {
                Ok(p) => to_json(&c.set_target_pages(p)),
                Err(e) => bad(e.to_string()),
            }
        }
        ("GET", "/balloon/statistics") => (200, json!({"stats": c.stats()})),
        ("PUT" | "PATCH" | "POST", "/balloon/statistics") => {
            let body: StatsBody = if req.body.iter().all(u8::is_ascii_whitespace) {
                StatsBody::default()
            } else {
                match serde_json::from_slice(&req.body) {
                    Ok(b) => b,
                    Err(e) => return bad(format!("expected {{\"wait_ms\": N}}: {e}")),
                }
            };
            to_json(&c.request_stats(body.wait_ms.map(Duration::from_millis)))
        }
        ("GET", "/metrics") => to_json(&c.metrics()),
        (_, "/balloon" | "/balloon/statistics" | "/metrics") => (
            405,
            json!({"error": format!("{} is not allowed on {path}", req.method)}),
        ),
        _ => (
            404,
            json!({
                "error": format!("no route {path}"),
                "routes": ["GET /balloon", "PUT /balloon", "GET /balloon/statistics",
                           "PUT /balloon/statistics", "GET /metrics"],
            }),
        ),
    }
}
