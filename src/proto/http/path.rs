//! Request paths: percent-decoding and normalization for routing and static
//! files.
//!
//! [`normalize`] turns the path of an origin-form request target into one
//! canonical, decoded form, or refuses it. It refuses rather than repairs
//! whatever could make two layers disagree about which file or route a path
//! names: a `..` segment, an encoded slash, a NUL byte, a broken escape,
//! bytes that are not UTF-8. What comes out starts with `/`, has no empty,
//! `.` or `..` segment, and keeps a trailing slash. [`encode`] is the way
//! back, for a path that must go into a header (`Location`).

/// Why a request path was refused (each maps to `400 Bad Request`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadPath {
    /// `*`, an absolute URI, or anything else that does not start with `/`.
    #[error("request target is not origin-form (must start with '/')")]
    NotOriginForm,
    /// A `%` not followed by two hex digits.
    #[error("bad percent-escape in path (expected %XX with two hex digits)")]
    BadEscape,
    /// `%2F`/`%2f`: a slash that would change where segments begin and end.
    #[error("encoded slash (%2F) in path")]
    EncodedSlash,
    /// A NUL byte, raw or as `%00`.
    #[error("NUL byte in path")]
    Nul,
    /// A `..` segment (after decoding: `%2e%2e` too). Clients resolve dot
    /// segments before sending, so one that arrives is an attack or a bug.
    #[error("\"..\" segment in path")]
    DotDot,
    /// The decoded bytes are not UTF-8.
    #[error("path is not UTF-8 after percent-decoding")]
    NotUtf8,
}

/// The path of a request target (the part before `?` / `#`), percent-decoded
/// and normalized: `//` merged, `.` segments removed, any `..` segment
/// refused (even one that would stay inside: clients normalize before
/// sending, so a `..` is an attack or a bug), `%2F`/`%2f` refused (an encoded
/// slash would change segment boundaries), NUL (raw or `%00`) refused,
/// invalid `%XX` refused, non-UTF-8 after decoding refused. A trailing slash
/// is kept (`/a/` stays `/a/`, and so does `/a/.`). `/` stays `/`. A
/// backslash is an ordinary character (it is one on Linux).
pub fn normalize(target: &str) -> Result<String, BadPath> {
    let end = target.find(['?', '#']).unwrap_or(target.len());
    let raw = &target[..end];
    let Some(rest) = raw.strip_prefix('/') else {
        return Err(BadPath::NotOriginForm);
    };
    let mut out = String::with_capacity(raw.len());
    let mut segment = Vec::new();
    // Whether the last segment seen was empty or `.`: the path names a
    // directory, so the result ends in '/'.
    let mut trailing = true;
    for raw_segment in rest.split('/') {
        decode_segment(raw_segment.as_bytes(), &mut segment)?;
        match segment.as_slice() {
            b"" | b"." => trailing = true,
            b".." => return Err(BadPath::DotDot),
            bytes => {
                let text = std::str::from_utf8(bytes).map_err(|_| BadPath::NotUtf8)?;
                out.push('/');
                out.push_str(text);
                trailing = false;
            }
        }
    }
    if trailing || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// The path a request is routed by, as nginx matches `location` prefixes:
/// the target's path (an absolute-form target's authority dropped),
/// percent-decoded (`%2F` too), `//` merged, `.` removed and `..` resolved;
/// a `..` above the root, a broken escape or a NUL is refused. Bytes that
/// are not UTF-8 become U+FFFD (routes are plain text). Lenient where
/// [`normalize`] is strict: a proxied request is passed on as sent, and the
/// backend resolves its own path; static files use [`normalize`].
pub fn route_path(target: &str) -> Result<String, BadPath> {
    let mut target = target;
    for scheme in ["http://", "https://"] {
        // `get`: the scheme's length may fall inside a character.
        if target
            .get(..scheme.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
        {
            let rest = &target[scheme.len()..];
            target = rest.find('/').map_or("/", |i| &rest[i..]);
        }
    }
    let end = target.find(['?', '#']).unwrap_or(target.len());
    let raw = &target[..end];
    if !raw.starts_with('/') {
        return Err(BadPath::NotOriginForm);
    }
    let mut decoded = Vec::with_capacity(raw.len());
    percent_decode(raw.as_bytes(), &mut decoded, true)?;
    let decoded = String::from_utf8_lossy(&decoded);
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing = true;
    for segment in decoded.split('/').skip(1) {
        match segment {
            "" | "." => trailing = true,
            ".." => {
                segments.pop().ok_or(BadPath::DotDot)?;
                trailing = true;
            }
            s => {
                segments.push(s);
                trailing = false;
            }
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Percent-decode one segment into `out` (cleared first); an encoded slash
/// is refused.
fn decode_segment(raw: &[u8], out: &mut Vec<u8>) -> Result<(), BadPath> {
    out.clear();
    percent_decode(raw, out, false)
}

/// Percent-decode `raw` onto `out`: a broken escape or a NUL (raw or
/// `%00`) is refused, and so is `%2F` unless `slash`.
fn percent_decode(raw: &[u8], out: &mut Vec<u8>, slash: bool) -> Result<(), BadPath> {
    let mut i = 0;
    while i < raw.len() {
        let byte = match raw[i] {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    raw.get(i + 1).and_then(|&b| super::hex_digit(b)),
                    raw.get(i + 2).and_then(|&b| super::hex_digit(b)),
                ) else {
                    return Err(BadPath::BadEscape);
                };
                i += 3;
                match (hi << 4) | lo {
                    b'/' if !slash => return Err(BadPath::EncodedSlash),
                    b => b,
                }
            }
            b => {
                i += 1;
                b
            }
        };
        if byte == 0 {
            return Err(BadPath::Nul);
        }
        out.push(byte);
    }
    Ok(())
}

/// A decoded path percent-encoded again for a header such as `Location`:
/// every byte but the RFC 3986 `pchar`s and `/` becomes `%XX` (so `%`, a
/// space, `?`, `#`, control bytes and non-ASCII are escaped, and nothing in
/// the result can end a header line).
pub fn encode(path: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(path.len());
    for &b in path.as_bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'/'
            );
        if keep {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_paths_are_resolved_like_nginx_locations() {
        for (target, want) in [
            ("/", "/"),
            ("/ws/room?x=1", "/ws/room"),
            ("/a%2Fb", "/a/b"),
            ("/a/../b", "/b"),
            ("/a/./b//c/", "/a/b/c/"),
            ("/%77s/x", "/ws/x"),
            ("/ws/%2e%2e/api", "/api"),
            ("/a%FF", "/a\u{fffd}"),
            ("http://example.com/ws/x?q", "/ws/x"),
            ("HTTPS://example.com", "/"),
            ("/a/..", "/"),
        ] {
            assert_eq!(route_path(target).as_deref(), Ok(want), "{target}");
        }
        assert_eq!(route_path("/.."), Err(BadPath::DotDot));
        assert_eq!(route_path("/a/../../b"), Err(BadPath::DotDot));
        assert_eq!(route_path("/a%2"), Err(BadPath::BadEscape));
        assert_eq!(route_path("/a%00"), Err(BadPath::Nul));
        assert_eq!(route_path("*"), Err(BadPath::NotOriginForm));
    }

    #[test]
    fn a_scheme_cut_inside_a_character_is_no_scheme() {
        // Found by the `path` fuzz target: this panicked (a request
        // `GET http:/é HTTP/1.1` took down its worker).
        assert_eq!(route_path("http:/é"), Err(BadPath::NotOriginForm));
        assert_eq!(route_path("https:/é/"), Err(BadPath::NotOriginForm));
        assert_eq!(route_path("http://é/a"), Ok("/a".into()));
    }

    fn ok(target: &str) -> String {
        normalize(target).unwrap_or_else(|e| panic!("{target:?}: {e}"))
    }

    fn err(target: &str) -> BadPath {
        normalize(target).expect_err(target)
    }

    #[test]
    fn plain_paths_pass_unchanged() {
        assert_eq!(ok("/"), "/");
        assert_eq!(ok("/index.html"), "/index.html");
        assert_eq!(ok("/a/b/c.js"), "/a/b/c.js");
        assert_eq!(ok("/a/"), "/a/");
        assert_eq!(ok("/a/b/"), "/a/b/");
        assert_eq!(ok("/.well-known/x"), "/.well-known/x");
        assert_eq!(ok("/a..b/...c/..."), "/a..b/...c/...");
    }

    #[test]
    fn query_and_fragment_are_cut_off() {
        assert_eq!(ok("/a?b=1"), "/a");
        assert_eq!(ok("/a/?../x"), "/a/");
        assert_eq!(ok("/a#frag/../x"), "/a");
        assert_eq!(ok("/?q"), "/");
        assert_eq!(ok("/a%3Fb?c"), "/a?b", "an encoded '?' is data");
    }

    #[test]
    fn slashes_merge_and_dots_go() {
        assert_eq!(ok("//"), "/");
        assert_eq!(ok("///a//b///"), "/a/b/");
        assert_eq!(ok("/./a/./b"), "/a/b");
        assert_eq!(ok("/."), "/");
        assert_eq!(ok("/./"), "/");
        assert_eq!(ok("/a/."), "/a/", "a last '.' names the directory");
        assert_eq!(ok("/a/%2e"), "/a/");
        assert_eq!(ok("/a/%2E/b"), "/a/b");
    }

    #[test]
    fn dot_dot_is_refused_in_every_spelling() {
        for t in [
            "/..",
            "/../",
            "/a/..",
            "/a/../b",
            "/a/b/../b",
            "/%2e%2e",
            "/%2E%2E/etc/passwd",
            "/a/.%2e/b",
            "/a/%2e./b",
            "/a/%2E%2e",
            "//../a",
            "/./../a",
        ] {
            assert_eq!(err(t), BadPath::DotDot, "{t}");
        }
    }

    #[test]
    fn encoded_slash_is_refused() {
        assert_eq!(err("/a%2fb"), BadPath::EncodedSlash);
        assert_eq!(err("/a%2Fb"), BadPath::EncodedSlash);
        assert_eq!(err("/%2F"), BadPath::EncodedSlash);
        assert_eq!(err("/..%2f..%2fetc"), BadPath::EncodedSlash);
    }

    #[test]
    fn nul_is_refused_raw_or_encoded() {
        assert_eq!(err("/a\0b"), BadPath::Nul);
        assert_eq!(err("/a%00b"), BadPath::Nul);
        assert_eq!(err("/index.html%00.png"), BadPath::Nul);
    }

    #[test]
    fn broken_escapes_are_refused() {
        for t in [
            "/%", "/a%", "/a%2", "/%zz", "/%2g", "/%g2", "/a%%41", "/%-1",
        ] {
            assert_eq!(err(t), BadPath::BadEscape, "{t}");
        }
        // Only the path is looked at: a broken escape in the query is the
        // query's business.
        assert_eq!(ok("/a?%zz"), "/a");
    }

    #[test]
    fn escapes_are_decoded() {
        assert_eq!(ok("/a%20b"), "/a b");
        assert_eq!(ok("/%41%62%63"), "/Abc");
        assert_eq!(ok("/caf%C3%A9"), "/café");
        assert_eq!(ok("/café"), "/café", "raw UTF-8 passes");
        assert_eq!(ok("/100%25"), "/100%");
        assert_eq!(ok("/%2541"), "/%41", "decoded once only");
        assert_eq!(ok("/a+b"), "/a+b", "'+' is not a space in a path");
    }

    #[test]
    fn non_utf8_is_refused() {
        assert_eq!(err("/%ff"), BadPath::NotUtf8);
        assert_eq!(err("/caf%C3"), BadPath::NotUtf8);
        assert_eq!(err("/%C0%AE%C0%AE"), BadPath::NotUtf8, "overlong '.'");
    }

    #[test]
    fn not_origin_form_is_refused() {
        for t in ["", "*", "a/b", "http://example.com/", "?x=/", "%2F"] {
            assert_eq!(err(t), BadPath::NotOriginForm, "{t:?}");
        }
    }

    #[test]
    fn backslash_is_an_ordinary_character() {
        assert_eq!(ok("/a\\b"), "/a\\b");
        assert_eq!(ok("/a%5C..%5Cb"), "/a\\..\\b");
        assert_eq!(ok("/..\\x"), "/..\\x", "'..\\x' is one segment, not '..'");
    }

    #[test]
    fn encode_escapes_what_a_header_cannot_hold() {
        assert_eq!(encode("/a/b.html"), "/a/b.html");
        assert_eq!(encode("/a b/"), "/a%20b/");
        assert_eq!(encode("/100%"), "/100%25");
        assert_eq!(encode("/x\r\nSet-Cookie: y"), "/x%0D%0ASet-Cookie:%20y");
        assert_eq!(encode("/a?b#c"), "/a%3Fb%23c");
        assert_eq!(encode("/café"), "/caf%C3%A9");
        assert_eq!(encode("/~user/a(1)+b=c;d@e:f"), "/~user/a(1)+b=c;d@e:f");
        for p in ["/a b/", "/100%", "/café/x", "/a?b#c/"] {
            assert_eq!(ok(&encode(p)), p, "encode then normalize is the identity");
        }
    }
}
