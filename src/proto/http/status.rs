//! The answers ringway gives itself when it cannot (or must not) proxy.

use std::fmt;

/// An HTTP status that ringway answers on its own, each with a short
/// plain-text body. `Display` is the reason used in log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Malformed request or invalid WebSocket handshake.
    BadRequest,
    /// The client did not send a whole request head in time.
    RequestTimeout,
    /// The `Origin` is not in `--allow-origin`.
    Forbidden,
    /// No route matches the request.
    NotFound,
    /// A WebSocket version other than 13.
    UpgradeRequired,
    /// The request head is over `--max-header-bytes` (or has too many lines).
    HeaderFieldsTooLarge,
    /// The backend refused, reset, or answered something that is not HTTP.
    BadGateway,
    /// No backend can be tried right now.
    ServiceUnavailable,
    /// Connecting to the backend (or waiting for its answer) timed out.
    GatewayTimeout,
    /// A status chosen by a flag (`--limit-conn-status`): 400 to 599.
    Other(u16),
}

impl Status {
    pub fn code(self) -> u16 {
        match self {
            Status::BadRequest => 400,
            Status::Forbidden => 403,
            Status::NotFound => 404,
            Status::RequestTimeout => 408,
            Status::UpgradeRequired => 426,
            Status::HeaderFieldsTooLarge => 431,
            Status::BadGateway => 502,
            Status::ServiceUnavailable => 503,
            Status::GatewayTimeout => 504,
            Status::Other(code) => code,
        }
    }

    pub fn reason(self) -> &'static str {
        reason_of(self.code())
    }

    /// The complete response: status line, headers, a one-line body.
    /// Built only on the error path.
    pub fn response(self, detail: &str) -> Vec<u8> {
        let body = format!("{} {}: {}\n", self.code(), self.reason(), detail);
        let extra = match self {
            Status::UpgradeRequired => "Sec-WebSocket-Version: 13\r\n",
            _ => "",
        };
        plain_answer(self.code(), extra, &body, false)
    }
}

/// A short answer ringway gives itself: status line, `text/plain` body
/// (left out, but counted in `Content-Length`, for a HEAD request),
/// `extra_headers` (each ending in CRLF), `Connection: close`.
pub fn plain_answer(code: u16, extra_headers: &str, body: &str, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{extra_headers}Connection: close\r\n\r\n",
        reason_of(code),
        body.len()
    );
    if !head_only {
        out.push_str(body);
    }
    out.into_bytes()
}

/// The reason phrase of a status.
pub fn reason_of(code: u16) -> &'static str {
    match code {
        200 => "OK",
        301 => "Moved Permanently",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        421 => "Misdirected Request",
        423 => "Locked",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        444 => "No Response",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        507 => "Insufficient Storage",
        c if c < 500 => "Client Error",
        _ => "Server Error",
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code(), self.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_well_formed() {
        let r = String::from_utf8(Status::UpgradeRequired.response("version 8")).unwrap();
        assert!(r.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(r.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, body.len());
        assert_eq!(body, "426 Upgrade Required: version 8\n");
        let r = String::from_utf8(Status::BadGateway.response("refused")).unwrap();
        assert!(!r.contains("Sec-WebSocket-Version"));
    }
}
