//! How a value from outside (a client's request target, header or SNI
//! name, an error text that may quote them) is written into a log line:
//! the one place that decides it, for the error log and both access-log
//! formats.
//!
//! The promise: what [`Escaped`] writes is printable ASCII (0x20..=0x7e)
//! and at most its cap ([`VALUE_MAX`] bytes unless told) plus `...`, so no
//! value can split a line, forge a field, colour a terminal or fill a disk.
//! Printable ASCII stays as it is; every other byte becomes `\xNN` (in
//! JSON, every other character `\uNNNN`, so the line stays valid JSON);
//! quotes and backslashes are backslashed. [`Line`] escapes a whole error-log
//! message once more at the logger (as text or as a JSON string), for lines this crate does not format
//! (a library's) and as a net under the ones it does.

use std::fmt::{self, Write};

/// Most bytes one escaped value takes in a line, before its `...`.
pub const VALUE_MAX: usize = 512;

/// Most bytes of one error-log message, before its `...` (the logger's
/// `[time LEVEL target] ` comes on top).
pub const LINE_MAX: usize = 1536;

/// How a value sits in its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Inside `"..."`: `"` and `\` backslashed, other bytes outside
    /// printable ASCII as `\xNN`.
    Quoted,
    /// A bare `key=value`: as [`Style::Quoted`], and a space as `%20`, so
    /// that it cannot end the field.
    Bare,
    /// Inside a JSON string: `"` and `\` backslashed, every character
    /// outside printable ASCII as `\uNNNN` (a pair of them beyond U+FFFF),
    /// bytes that are not UTF-8 as `\ufffd`.
    Json,
    /// A whole message: only bytes outside printable ASCII as `\xNN`; its
    /// quotes and backslashes are its own escapes and stay.
    Line,
}

/// A value written escaped in its [`Style`], cut at its cap. Borrowed; no
/// allocation.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a> {
    bytes: &'a [u8],
    style: Style,
    max: usize,
}

impl<'a> Escaped<'a> {
    /// `value` in `style`, capped at [`VALUE_MAX`].
    pub fn new(value: &'a (impl AsRef<[u8]> + ?Sized), style: Style) -> Escaped<'a> {
        Escaped {
            bytes: value.as_ref(),
            style,
            max: VALUE_MAX,
        }
    }

    /// For inside `"..."`.
    pub fn quoted(value: &'a (impl AsRef<[u8]> + ?Sized)) -> Escaped<'a> {
        Escaped::new(value, Style::Quoted)
    }

    /// For a bare `key=value`.
    pub fn bare(value: &'a (impl AsRef<[u8]> + ?Sized)) -> Escaped<'a> {
        Escaped::new(value, Style::Bare)
    }

    /// For inside a JSON string.
    pub fn json(value: &'a (impl AsRef<[u8]> + ?Sized)) -> Escaped<'a> {
        Escaped::new(value, Style::Json)
    }

    /// The same, cut after `max` bytes of output instead.
    pub fn max(self, max: usize) -> Escaped<'a> {
        Escaped { max, ..self }
    }
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut room = self.max;
        if !put(f, self.bytes, self.style, &mut room)? {
            f.write_str("...")?;
        }
        Ok(())
    }
}

/// A whole message (`format_args!`), cut at [`LINE_MAX`]: what the logger
/// writes after a line's header ([`Line::text`]), or as the value of a JSON
/// line's `message` ([`Line::json`]).
pub struct Line<'a> {
    args: &'a fmt::Arguments<'a>,
    style: Style,
}

impl<'a> Line<'a> {
    /// In [`Style::Line`]: the text error log.
    pub fn text(args: &'a fmt::Arguments<'a>) -> Line<'a> {
        Line {
            args,
            style: Style::Line,
        }
    }

    /// In [`Style::Json`], without the quotes: the JSON error log.
    pub fn json(args: &'a fmt::Arguments<'a>) -> Line<'a> {
        Line {
            args,
            style: Style::Json,
        }
    }
}

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut w = LineWriter {
            out: f,
            room: LINE_MAX,
            cut: false,
            style: self.style,
        };
        w.write_fmt(*self.args)?;
        if w.cut {
            w.out.write_str("...")?;
        }
        Ok(())
    }
}

/// Escapes what is written through it; once the room is spent, drops the
/// rest and remembers that it did.
struct LineWriter<'a, 'b> {
    out: &'a mut fmt::Formatter<'b>,
    room: usize,
    cut: bool,
    style: Style,
}

impl fmt::Write for LineWriter<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if !self.cut && !put(self.out, s.as_bytes(), self.style, &mut self.room)? {
            self.cut = true;
        }
        Ok(())
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Write `bytes` escaped in `style`, at most `*room` bytes (lowered by what
/// was written); an escape never is cut in two. False when not everything
/// fitted.
fn put(
    out: &mut dyn Write,
    bytes: &[u8],
    style: Style,
    room: &mut usize,
) -> Result<bool, fmt::Error> {
    if style == Style::Json {
        return put_json(out, bytes, room);
    }
    let mut rest = bytes;
    while !rest.is_empty() {
        // The longest run written as it is.
        let run = rest
            .iter()
            .position(|&b| !plain(b, style))
            .unwrap_or(rest.len());
        if run > 0 {
            let n = run.min(*room);
            out.write_str(ascii(&rest[..n]))?;
            *room -= n;
            if n < run {
                return Ok(false);
            }
            rest = &rest[run..];
            continue;
        }
        let b = rest[0];
        let mut esc = [0u8; 4];
        let esc: &[u8] = match b {
            b' ' => b"%20",
            b'"' | b'\\' => {
                esc[..2].copy_from_slice(&[b'\\', b]);
                &esc[..2]
            }
            _ => {
                esc = [
                    b'\\',
                    b'x',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 15)],
                ];
                &esc
            }
        };
        if esc.len() > *room {
            return Ok(false);
        }
        out.write_str(ascii(esc))?;
        *room -= esc.len();
        rest = &rest[1..];
    }
    Ok(true)
}

/// Written as it is in `style`.
fn plain(b: u8, style: Style) -> bool {
    match (b, style) {
        (b' ', Style::Bare) => false,
        (b'"' | b'\\', Style::Line) => true,
        (b'"' | b'\\', _) => false,
        (0x20..=0x7e, _) => true,
        _ => false,
    }
}

/// `bytes`, known to be printable ASCII, as a `str`.
fn ascii(bytes: &[u8]) -> &str {
    // Only ever called on printable ASCII, which is UTF-8.
    std::str::from_utf8(bytes).unwrap_or("?")
}

/// [`Style::Json`]: per character.
fn put_json(out: &mut dyn Write, bytes: &[u8], room: &mut usize) -> Result<bool, fmt::Error> {
    let mut units = [0u16; 2];
    for chunk in bytes.utf8_chunks() {
        let bad = (!chunk.invalid().is_empty()).then_some('\u{fffd}');
        for c in chunk.valid().chars().chain(bad) {
            let mut esc = [0u8; 12];
            let esc: &[u8] = match c {
                '"' | '\\' => {
                    esc[..2].copy_from_slice(&[b'\\', c as u8]);
                    &esc[..2]
                }
                ' '..='~' => {
                    esc[0] = c as u8;
                    &esc[..1]
                }
                _ => {
                    let mut n = 0;
                    for unit in c.encode_utf16(&mut units) {
                        let u = usize::from(*unit);
                        esc[n..n + 6].copy_from_slice(&[
                            b'\\',
                            b'u',
                            HEX[u >> 12],
                            HEX[(u >> 8) & 15],
                            HEX[(u >> 4) & 15],
                            HEX[u & 15],
                        ]);
                        n += 6;
                    }
                    &esc[..n]
                }
            };
            if esc.len() > *room {
                return Ok(false);
            }
            out.write_str(ascii(esc))?;
            *room -= esc.len();
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_byte() -> Vec<u8> {
        (0..=255u8).collect()
    }

    fn printable(s: &str) -> bool {
        s.bytes().all(|b| (0x20..=0x7e).contains(&b))
    }

    /// Undo `Style::Quoted`/`Style::Bare`/`Style::Line`.
    fn unescape(s: &str) -> Vec<u8> {
        let s = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < s.len() {
            match s[i] {
                b'\\' if s[i + 1] == b'x' => {
                    let hex = std::str::from_utf8(&s[i + 2..i + 4]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 4;
                }
                b'\\' => {
                    out.push(s[i + 1]);
                    i += 2;
                }
                b'%' if s[i..].starts_with(b"%20") => {
                    out.push(b' ');
                    i += 3;
                }
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        out
    }

    #[test]
    fn every_byte_value_comes_out_printable_and_back() {
        let all = every_byte();
        for style in [Style::Quoted, Style::Bare] {
            let s = Escaped::new(&all, style).max(usize::MAX).to_string();
            assert!(printable(&s), "{style:?}: {s}");
            assert_eq!(unescape(&s), all, "{style:?}");
            assert!(!s.contains('"') || s.matches("\\\"").count() == s.matches('"').count());
        }
        let bare = Escaped::bare(&all).max(usize::MAX).to_string();
        assert!(!bare.contains(' '), "{bare}");
        assert!(
            bare.contains("\\x00\\x01") && bare.contains("\\x7f\\x80") && bare.ends_with("\\xff")
        );
        let quoted = Escaped::quoted(&all).max(usize::MAX).to_string();
        assert!(
            quoted.contains(" !\\\"#") && quoted.contains("[\\\\]"),
            "{quoted}"
        );
    }

    #[test]
    fn exact_forms() {
        let e = |v: &str, style| Escaped::new(v, style).to_string();
        assert_eq!(e("/a b\"c\\d\ne", Style::Bare), r#"/a%20b\"c\\d\x0ae"#);
        assert_eq!(e("/a b\"c\\d\ne", Style::Quoted), r#"/a b\"c\\d\x0ae"#);
        assert_eq!(e("é\u{1b}[31m", Style::Quoted), r"\xc3\xa9\x1b[31m");
        assert_eq!(
            e("a \"q\" \\ é\u{7f}", Style::Line),
            "a \"q\" \\ \\xc3\\xa9\\x7f"
        );
        assert_eq!(
            e("a \"q\"\\\n\u{0}é✓😀", Style::Json),
            r#"a \"q\"\\\u000a\u0000\u00e9\u2713\ud83d\ude00"#
        );
        // Not UTF-8: one replacement character per bad sequence.
        assert_eq!(Escaped::json(b"a\xffb\xc3").to_string(), r"a\ufffdb\ufffd");
    }

    #[test]
    fn json_of_every_byte_is_printable_and_valid() {
        let s = Escaped::json(&every_byte()).max(usize::MAX).to_string();
        assert!(printable(&s), "{s}");
        // No bare quote; every backslash starts one of JSON's escapes.
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'"' => panic!("bare quote at {i}: {s}"),
                b'\\' => match b[i + 1] {
                    b'"' | b'\\' => i += 2,
                    b'u' => {
                        assert!(b[i + 2..i + 6].iter().all(u8::is_ascii_hexdigit), "{s}");
                        i += 6;
                    }
                    other => panic!("escape \\{} in {s}", other as char),
                },
                _ => i += 1,
            }
        }
        // The ASCII half comes back exactly.
        assert!(s.starts_with(r"\u0000\u0001"));
        assert!(s.contains(r##" !\"#$"##) && s.contains(r"[\\]^_`") && s.contains(r"~\u007f"));
    }

    #[test]
    fn values_are_cut_at_their_cap_never_inside_an_escape() {
        let long = "a".repeat(10_000);
        let s = Escaped::quoted(&long).to_string();
        assert_eq!(s.len(), VALUE_MAX + 3);
        assert!(s.ends_with("a..."));
        // Exactly the cap: nothing cut, no dots.
        let fits = "b".repeat(VALUE_MAX);
        assert_eq!(Escaped::quoted(&fits).to_string(), fits);
        // An escape that does not fit whole is left out.
        assert_eq!(Escaped::quoted("ab\x01").max(5).to_string(), "ab...");
        assert_eq!(Escaped::quoted("ab\x01").max(6).to_string(), "ab\\x01");
        assert_eq!(Escaped::json("ab✓").max(7).to_string(), "ab...");
        assert_eq!(Escaped::json("ab✓").max(8).to_string(), "ab\\u2713");
        // Every style, every byte value, many times over: within the cap.
        let all = every_byte().repeat(20);
        for style in [Style::Quoted, Style::Bare, Style::Json, Style::Line] {
            let s = Escaped::new(&all, style).to_string();
            assert!(s.len() <= VALUE_MAX + 3 && s.ends_with("..."), "{style:?}");
            assert!(printable(&s));
        }
    }

    #[test]
    fn a_line_is_escaped_across_its_pieces_and_cut_once() {
        let target = "/x\u{1b}]0;title\u{7}";
        let args = format_args!("client=1.2.3.4:5 target={target} \"{}\"", 42);
        assert_eq!(
            Line::text(&args).to_string(),
            "client=1.2.3.4:5 target=/x\\x1b]0;title\\x07 \"42\""
        );
        assert_eq!(
            Line::json(&args).to_string(),
            "client=1.2.3.4:5 target=/x\\u001b]0;title\\u0007 \\\"42\\\""
        );
        let long = "\u{0}".repeat(LINE_MAX);
        let args = format_args!("a{long}b{long}");
        let s = Line::text(&args).to_string();
        assert!(s.starts_with("a\\x00") && s.ends_with("\\x00..."), "{s}");
        assert!(s.len() <= LINE_MAX + 3 && printable(&s));
        let s = Line::json(&args).to_string();
        assert!(
            s.starts_with("a\\u0000") && s.ends_with("\\u0000..."),
            "{s}"
        );
        assert!(s.len() <= LINE_MAX + 3 && printable(&s));
    }
}
