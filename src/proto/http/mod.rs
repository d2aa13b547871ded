//! Sans-I/O HTTP/1.1 for the upgrade handshake.
//!
//! Everything here works on byte slices the connection already holds: it
//! never reads or writes a socket. `request` validates a client's request head
//! and writes the upstream request once into one buffer; `response` does the
//! same for the backend's answer; `status` holds the error answers ringway
//! gives itself. An incomplete head is a state (`Ok(None)`), not an error.

pub mod body;
pub mod date;
pub mod path;
pub mod request;
pub mod response;
pub mod status;

/// Most header lines accepted in one head; more is answered like an
/// over-large head (431), since it is the same abuse.
pub const MAX_HEADERS: usize = 128;

/// Does the comma-separated header value contain `token` (ASCII
/// case-insensitive), as `Connection: keep-alive, Upgrade` does?
pub fn has_token(value: &[u8], token: &str) -> bool {
    tokens(value).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// The comma-separated, whitespace-trimmed, non-empty elements of a header value.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim)
        .filter(|t| !t.is_empty())
}

/// `value` without leading and trailing spaces and tabs.
pub fn trim(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

/// Append `name: value\r\n` to `out`.
fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The value of one hexadecimal digit (either case).
pub(crate) fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lists() {
        assert!(has_token(b"keep-alive, Upgrade", "upgrade"));
        assert!(has_token(b"UPGRADE", "upgrade"));
        assert!(!has_token(b"upgraded", "upgrade"));
        assert!(!has_token(b"", "upgrade"));
        assert_eq!(
            tokens(b" a ,, b\t,").collect::<Vec<_>>(),
            vec![&b"a"[..], b"b"]
        );
        assert_eq!(trim(b" \t x y \t"), b"x y");
    }
}
