//! Just enough HTTP/1.1 for the control socket: one request per connection, bodies sized by
//! `Content-Length`, JSON both ways. Sizes are capped; anything else is a 400.

use std::io::{self, Read, Write};

/// Largest request or response head.
const MAX_HEAD: usize = 16 * 1024;
/// Largest body.
pub(crate) const MAX_BODY: usize = 1024 * 1024;

/// A parsed request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) method: String,
    /// The path without the query string.
    pub(crate) path: String,
    /// The `Accept` header, if any (for content negotiation on `/metrics`).
    pub(crate) accept: Option<String>,
    pub(crate) body: Vec<u8>,
}

/// Why a request or response could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The peer broke the protocol (the message is for a 400 or an error).
    Malformed(String),
    /// The connection failed.
    Io(io::Error),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// Reads a message head and the part of the body that came with it.
fn read_head(stream: &mut impl Read) -> Result<(String, Vec<u8>), ReadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8(buf[..end].to_vec())
                .map_err(|_| ReadError::Malformed("the head is not UTF-8".into()))?;
            return Ok((head, buf[end + 4..].to_vec()));
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::Malformed(format!(
                "head longer than {MAX_HEAD} bytes"
            )));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(ReadError::Malformed(if buf.is_empty() {
                "empty message".into()
            } else {
                "connection closed inside the head".into()
            }));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `Content-Length` and `Accept` from header lines; chunked bodies are refused.
fn headers<'a>(lines: impl Iterator<Item = &'a str>) -> Result<(usize, Option<String>), ReadError> {
    let mut length = 0;
    let mut accept = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(ReadError::Malformed(format!("bad header line {line:?}")));
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            length = value
                .parse()
                .map_err(|_| ReadError::Malformed(format!("bad Content-Length {value:?}")))?;
        } else if name.eq_ignore_ascii_case("accept") {
            accept = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ReadError::Malformed(
                "Transfer-Encoding is not supported: send a Content-Length".into(),
            ));
        }
    }
    if length > MAX_BODY {
        return Err(ReadError::Malformed(format!(
            "body of {length} bytes exceeds {MAX_BODY}"
        )));
    }
    Ok((length, accept))
}

fn read_body(
    stream: &mut impl Read,
    mut body: Vec<u8>,
    length: usize,
) -> Result<Vec<u8>, ReadError> {
    if body.len() > length {
        body.truncate(length);
    }
    let have = body.len();
    body.resize(length, 0);
    stream.read_exact(&mut body[have..]).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ReadError::Malformed("connection closed inside the body".into())
        } else {
            ReadError::Io(e)
        }
    })?;
    Ok(body)
}

/// Reads one request.
pub(crate) fn read_request(stream: &mut impl Read) -> Result<Request, ReadError> {
    let (head, rest) = read_head(stream)?;
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Malformed(format!("bad request line {line:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(ReadError::Malformed(format!(
            "unsupported version {version:?}"
        )));
    }
    let (length, accept) = headers(lines)?;
    let body = read_body(stream, rest, length)?;
    let path = target.split('?').next().unwrap_or_default().to_string();
    Ok(Request {
        method: method.to_string(),
        path,
        accept,
        body,
    })
}

/// Reads one response: status and body.
pub(crate) fn read_response(stream: &mut impl Read) -> Result<(u16, Vec<u8>), ReadError> {
    let (head, rest) = read_head(stream)?;
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.splitn(3, ' ');
    let (Some(version), Some(status)) = (parts.next(), parts.next()) else {
        return Err(ReadError::Malformed(format!("bad status line {line:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(ReadError::Malformed(format!("bad status line {line:?}")));
    }
    let status: u16 = status
        .parse()
        .map_err(|_| ReadError::Malformed(format!("bad status line {line:?}")))?;
    let (length, _) = headers(lines)?;
    let body = read_body(stream, rest, length)?;
    Ok((status, body))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        500 => "Internal Server Error",
        _ => "Unknown",
    }
}

/// The JSON content type.
pub(crate) const JSON: &str = "application/json";

/// Writes a response of `content_type` and closes the exchange.
pub(crate) fn write_response(
    stream: &mut impl Write,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

/// Writes a request with an optional JSON body.
pub(crate) fn write_request(
    stream: &mut impl Write,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> io::Result<()> {
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out at most `n` bytes per read.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(self.1).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn request_round_trip_in_small_reads() {
        let mut wire = Vec::new();
        write_request(
            &mut wire,
            "PUT",
            "/balloon?x=1",
            Some(br#"{"target_bytes":4096}"#),
        )
        .unwrap();
        let req = read_request(&mut Trickle(&wire, 3)).unwrap();
        assert_eq!(req.method, "PUT");
        assert_eq!(req.path, "/balloon");
        assert_eq!(req.accept.as_deref(), Some("application/json"));
        assert_eq!(req.body, br#"{"target_bytes":4096}"#);
    }

    #[test]
    fn response_round_trip() {
        let mut wire = Vec::new();
        write_response(&mut wire, 404, JSON, br#"{"error":"x"}"#).unwrap();
        let (status, body) = read_response(&mut Trickle(&wire, 7)).unwrap();
        assert_eq!(status, 404);
        assert_eq!(body, br#"{"error":"x"}"#);
    }

    #[test]
    fn malformed_requests_are_refused() {
        for bad in [
            &b""[..],
            b"GET /\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",
            b"GET / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
            b"GET / SPDY/3\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
        ] {
            assert!(
                matches!(
                    read_request(&mut Trickle(bad, 100)),
                    Err(ReadError::Malformed(_))
                ),
                "{:?} accepted",
                String::from_utf8_lossy(bad)
            );
        }
        let endless = vec![b'a'; MAX_HEAD * 2];
        assert!(matches!(
            read_request(&mut Trickle(&endless, 4096)),
            Err(ReadError::Malformed(_))
        ));
    }
}
