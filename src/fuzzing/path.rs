//! The `path` target: [`crate::proto::http::path`], the strict
//! normalisation static files use and the lenient one routes use.

use crate::proto::http::path::{encode, normalize, route_path, BadPath};

/// The path target, on the input as text (invalid UTF-8 replaced):
///
/// - [`normalize`] either refuses the path for a reason present in it (no
///   leading `/`; a `%` without two hex digits; `%2F`; NUL; a `..` segment,
///   in any spelling; bytes that decode to invalid UTF-8), or gives a
///   normal path: it starts with `/`, has no empty, `.` or `..` segment and
///   no NUL, keeps a trailing slash exactly when the last segment was empty
///   or `.`, is idempotent (`normalize(encode(p)) == p`), and is also what
///   [`route_path`] makes of the same target;
/// - [`route_path`] never panics, refuses only for a reason present in the
///   target (a `..` above the root: the path never escapes it), and gives a
///   normal path that is a fixed point of both functions once encoded.
pub fn path(data: &[u8]) {
    let target = String::from_utf8_lossy(data);
    check_normalize(&target);
    check_route(&target);
}

/// The path part of a target: before `?` or `#`.
fn path_part(target: &str) -> &str {
    target.split(['?', '#']).next().unwrap_or_default()
}

/// Whether `p` is in normal form: `/`, or `/`-separated non-empty segments
/// that are not `.` or `..`, with an optional trailing `/`; no NUL.
fn is_normal(p: &str) -> bool {
    if p == "/" {
        return true;
    }
    let Some(rest) = p.strip_prefix('/') else {
        return false;
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    !p.contains('\0') && rest.split('/').all(|s| !matches!(s, "" | "." | ".."))
}

/// Percent-decode leniently (`%2F` too, broken escapes kept as they are):
/// for telling which reason a refusal can have.
fn decode(raw: &str) -> Vec<u8> {
    let raw = raw.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            if let (Some(hi), Some(lo)) = (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            ) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    out
}

fn has_broken_escape(raw: &str) -> bool {
    let raw = raw.as_bytes();
    raw.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && !(raw.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && raw.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

fn has_dot_dot(raw: &str) -> bool {
    raw.split('/').any(|s| decode(s) == b"..")
}

/// Whether `reason` is present in the path part `raw`.
fn explains(reason: &BadPath, raw: &str) -> bool {
    let lower = raw.to_ascii_lowercase();
    match reason {
        BadPath::NotOriginForm => !raw.starts_with('/'),
        BadPath::BadEscape => has_broken_escape(raw),
        BadPath::EncodedSlash => lower.contains("%2f"),
        BadPath::Nul => raw.contains('\0') || lower.contains("%00"),
        BadPath::DotDot => has_dot_dot(raw),
        BadPath::NotUtf8 => raw
            .split('/')
            .any(|s| std::str::from_utf8(&decode(s)).is_err()),
    }
}

fn check_normalize(target: &str) {
    let raw = path_part(target);
    match normalize(target) {
        Ok(p) => {
            assert!(is_normal(&p), "{target:?} -> {p:?}");
            let last = raw.rsplit('/').next().unwrap_or_default();
            let names_dir = matches!(&decode(last)[..], b"" | b".");
            assert_eq!(
                p.ends_with('/'),
                names_dir || p == "/",
                "{target:?} -> {p:?}"
            );
            assert_eq!(normalize(&encode(&p)).as_ref(), Ok(&p), "not idempotent");
            assert_eq!(route_path(target).as_ref(), Ok(&p), "route_path disagrees");
        }
        Err(e) => assert!(explains(&e, raw), "{target:?} refused: {e}"),
    }
}

fn check_route(target: &str) {
    match route_path(target) {
        Ok(p) => {
            assert!(is_normal(&p), "{target:?} -> {p:?}");
            let again = encode(&p);
            assert_eq!(route_path(&again).as_ref(), Ok(&p), "not idempotent");
            assert_eq!(normalize(&again).as_ref(), Ok(&p), "not strict-normal");
        }
        Err(e) => {
            // The authority of an absolute-form target is not path.
            let lower = target.to_ascii_lowercase();
            let raw = ["http://", "https://"]
                .iter()
                .find_map(|s| lower.starts_with(s).then(|| &target[s.len()..]))
                .map_or(target, |rest| rest.find('/').map_or("/", |i| &rest[i..]));
            let raw = path_part(raw);
            let fine = match e {
                // Above the root: more `..` than segments before them.
                BadPath::DotDot => {
                    let mut depth = 0i64;
                    let decoded = String::from_utf8_lossy(&decode(raw)).into_owned();
                    decoded.split('/').skip(1).any(|s| {
                        match s {
                            "" | "." => {}
                            ".." => depth -= 1,
                            _ => depth += 1,
                        }
                        depth < 0
                    })
                }
                BadPath::EncodedSlash | BadPath::NotUtf8 => false,
                ref e => explains(e, raw),
            };
            assert!(fine, "{target:?} refused: {e}");
        }
    }
}
