//! The HTTP/1.1 side of the metrics endpoint: read one request head within
//! limits, answer it, close.
//!
//! Written by hand rather than with a server crate (`tiny_http` and the
//! like run a thread pool and keep connections alive): the endpoint
//! answers one GET on one path, one connection at a time, and must not be
//! held by a slow or hostile client. Here every connection gets
//! [`MAX_HEAD_BYTES`] and [`DEADLINE`] in all, then is closed.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// The longest request head read (request line and headers); a longer one
/// is answered 431.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// At most this much is read and dropped after the answer (see
/// `metrics::answer`).
pub const MAX_DRAIN_BYTES: u64 = 128 * 1024;
/// How long one connection may take to send its request head.
pub const DEADLINE: Duration = Duration::from_secs(2);

/// The one path served.
pub const PATH: &str = "/metrics";
/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// `GET /metrics` (or HEAD: the same without the body).
    Metrics { head_only: bool },
    /// A well-formed request for something else.
    Refused(Status),
}

/// The answers other than 200.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    BadRequest,
    NotFound,
    MethodNotAllowed,
    HeadTooLarge,
    Unavailable,
}

impl Status {
    fn line(self) -> &'static str {
        match self {
            Status::BadRequest => "400 Bad Request",
            Status::NotFound => "404 Not Found",
            Status::MethodNotAllowed => "405 Method Not Allowed",
            Status::HeadTooLarge => "431 Request Header Fields Too Large",
            Status::Unavailable => "503 Service Unavailable",
        }
    }

    fn body(self) -> &'static str {
        match self {
            Status::BadRequest => "malformed HTTP request\n",
            Status::NotFound => "not found; the metrics are at /metrics\n",
            Status::MethodNotAllowed => "only GET (and HEAD) is served\n",
            Status::HeadTooLarge => "request head too large\n",
            Status::Unavailable => "repd is stopping; no status to report\n",
        }
    }
}

/// Reads a request head (up to the blank line) from `r` within
/// [`MAX_HEAD_BYTES`]. `Ok(None)`: the client closed or went quiet first
/// (nothing worth an answer). The caller sets the socket's read timeout.
///
/// # Errors
/// [`Status::HeadTooLarge`] for a head over the limit.
pub fn read_head(r: &mut impl Read, started: Instant) -> Result<Option<Vec<u8>>, Status> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let within = head.get(..MAX_HEAD_BYTES).unwrap_or(&head);
        if within.windows(4).any(|w| w == b"\r\n\r\n") || within.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(head));
        }
        if head.len() >= MAX_HEAD_BYTES {
            return Err(Status::HeadTooLarge);
        }
        if started.elapsed() > DEADLINE {
            return Ok(None);
        }
        match r.read(&mut buf) {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => head.extend_from_slice(buf.get(..n).unwrap_or_default()),
        }
    }
}

/// Reads and drops what `r` still sends, up to [`MAX_DRAIN_BYTES`] and
/// until twice the [`DEADLINE`] after `started`.
pub fn drain(r: &mut impl Read, started: Instant) {
    let mut buf = [0u8; 4096];
    let mut left = MAX_DRAIN_BYTES;
    while left > 0 && started.elapsed() < 2 * DEADLINE {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n as u64),
        }
    }
}

/// What the request head `head` asks for.
#[must_use]
pub fn parse(head: &[u8]) -> Request {
    let Ok(text) = std::str::from_utf8(head) else {
        return Request::Refused(Status::BadRequest);
    };
    let line = text.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Refused(Status::BadRequest);
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') || method.is_empty() {
        return Request::Refused(Status::BadRequest);
    }
    // A query string (`?name[]=...`, which Prometheus never sends) is ignored.
    let path = target.split('?').next().unwrap_or_default();
    if path != PATH {
        return Request::Refused(Status::NotFound);
    }
    match method {
        "GET" => Request::Metrics { head_only: false },
        "HEAD" => Request::Metrics { head_only: true },
        _ => Request::Refused(Status::MethodNotAllowed),
    }
}

/// Writes a 200 answer carrying `body` (without it for HEAD).
///
/// # Errors
/// When the client is gone.
pub fn write_ok(w: &mut impl Write, body: &str, head_only: bool) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    w.write_all(head.as_bytes())?;
    if !head_only {
        w.write_all(body.as_bytes())?;
    }
    w.flush()
}

/// Writes the answer for a refused request.
///
/// # Errors
/// When the client is gone.
pub fn write_refusal(w: &mut impl Write, status: Status) -> std::io::Result<()> {
    let body = status.body();
    let allow = if status == Status::MethodNotAllowed {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let text = format!(
        "HTTP/1.1 {}\r\nContent-Type: text/plain; charset=utf-8\r\n{allow}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        status.line(),
        body.len()
    );
    w.write_all(text.as_bytes())?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_and_head_of_the_path_are_served() {
        let get = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n";
        assert_eq!(parse(get), Request::Metrics { head_only: false });
        assert_eq!(
            parse(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Request::Metrics { head_only: true }
        );
    }

    #[test]
    fn wrong_path_method_or_form_is_refused() {
        let refused = |s: &[u8]| match parse(s) {
            Request::Refused(st) => st,
            other => panic!("{other:?}"),
        };
        assert_eq!(refused(b"GET / HTTP/1.1\r\n\r\n"), Status::NotFound);
        assert_eq!(refused(b"GET /metricsx HTTP/1.1\r\n\r\n"), Status::NotFound);
        assert_eq!(
            refused(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Status::MethodNotAllowed
        );
        assert_eq!(refused(b"GET /metrics\r\n\r\n"), Status::BadRequest);
        assert_eq!(refused(b"GET metrics HTTP/1.1\r\n\r\n"), Status::BadRequest);
        assert_eq!(refused(b"GET /metrics SMTP\r\n\r\n"), Status::BadRequest);
        assert_eq!(
            refused(b"\xff\xfe /metrics HTTP/1.1\r\n\r\n"),
            Status::BadRequest
        );
        assert_eq!(refused(b"\r\n\r\n"), Status::BadRequest);
    }

    #[test]
    fn heads_are_read_within_the_limit() {
        let t0 = Instant::now();
        let mut ok: &[u8] = b"GET /metrics HTTP/1.1\r\n\r\nleftover";
        assert!(read_head(&mut ok, t0).unwrap().is_some());
        let mut closed: &[u8] = b"GET /metr";
        assert_eq!(read_head(&mut closed, t0), Ok(None));
        let big = format!(
            "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        let mut big = big.as_bytes();
        assert_eq!(read_head(&mut big, t0), Err(Status::HeadTooLarge));
    }

    #[test]
    fn answers_say_their_length_and_close() {
        let mut out = Vec::new();
        write_ok(&mut out, "a 1\n", false).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 4\r\n"));
        assert!(text.contains("Content-Type: text/plain; version=0.0.4"));
        assert!(text.ends_with("\r\n\r\na 1\n"));
        let mut out = Vec::new();
        write_refusal(&mut out, Status::MethodNotAllowed).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 405 "));
        assert!(text.contains("Allow: GET, HEAD\r\n"));
    }
}
