//! Every fuzz target of `ringway::fuzzing` on stable Rust, bounded: each
//! file of its checked-in corpus (`fuzz/corpus/NAME/`), then a fixed number
//! of inputs a seeded xorshift makes from those files (bit flips, byte
//! changes, inserts, deletes, splices) or from nothing (random bytes). The
//! same inputs every run; a failure prints the input, to be added to the
//! corpus once its bug is fixed. `cargo +nightly fuzz run NAME` explores
//! the same targets without bounds (README.md, "Fuzzing").

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use ringway::fuzzing::{seed_of, Rng};

/// Bytes parsers treat specially, for inserts and overwrites.
const INTERESTING: &[u8] = b"\r\n :;,%/.?#\0\x7f\x80\xff0123456789abcdefABCDEF";

fn interesting(rng: &mut Rng) -> u8 {
    if rng.below(2) == 0 {
        INTERESTING[rng.below(INTERESTING.len())]
    } else {
        rng.byte()
    }
}

/// One input: a corpus file changed a few times, or random bytes.
fn mutate(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    if rng.below(10) == 0 {
        let len = rng.below(300);
        return (0..len).map(|_| rng.byte()).collect();
    }
    let mut data = corpus[rng.below(corpus.len())].clone();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(6) {
            0 if at < data.len() => data[at] ^= 1 << rng.below(8),
            1 if at < data.len() => data[at] = interesting(rng),
            2 => {
                let bytes: Vec<u8> = (0..1 + rng.below(8)).map(|_| interesting(rng)).collect();
                data.splice(at..at, bytes);
            }
            3 => {
                let end = (at + 1 + rng.below(16)).min(data.len());
                data.drain(at.min(end)..end);
            }
            4 => {
                // Splice: this input's start, another's end.
                let other = &corpus[rng.below(corpus.len())];
                let from = rng.below(other.len() + 1);
                data.truncate(at);
                data.extend_from_slice(&other[from..]);
            }
            _ => {
                // A piece of the input repeated.
                let end = (at + 1 + rng.below(32)).min(data.len());
                let piece = data[at.min(end)..end].to_vec();
                data.splice(at..at, piece);
            }
        }
    }
    data
}

fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir: PathBuf = [env!("CARGO_MANIFEST_DIR"), "fuzz", "corpus", name]
        .iter()
        .collect();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    files.sort();
    let corpus: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).expect("a corpus file"))
        .collect();
    assert!(!corpus.is_empty(), "{}: no corpus", dir.display());
    corpus
}

/// Run `name` on its corpus, then on `count` generated inputs.
fn run(name: &str, count: usize) {
    let (_, target) = ringway::fuzzing::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .expect("a target of that name");
    let corpus = corpus(name);
    let check = |what: &str, data: &[u8]| {
        if catch_unwind(AssertUnwindSafe(|| target(data))).is_err() {
            panic!(
                "fuzz target {name} failed on {what}: b\"{}\"",
                data.escape_ascii()
            );
        }
    };
    for (i, data) in corpus.iter().enumerate() {
        check(&format!("corpus file {i}"), data);
    }
    // Each target its own stream (two names of one length got the same).
    let mut rng = Rng(seed_of(name.as_bytes()) | 1);
    for i in 0..count {
        let data = mutate(&mut rng, &corpus);
        check(&format!("generated input {i}"), &data);
    }
}

#[test]
fn every_target_is_run_here() {
    // The targets cargo fuzz builds (fuzz/fuzz_targets/*.rs) are exactly
    // those of ringway::fuzzing::TARGETS, each with a [[bin]] and a corpus.
    let root = env!("CARGO_MANIFEST_DIR");
    let mut built: Vec<String> = std::fs::read_dir(format!("{root}/fuzz/fuzz_targets"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|f| f.strip_suffix(".rs").map(str::to_string))
        .collect();
    built.sort();
    let mut names: Vec<String> = ringway::fuzzing::TARGETS
        .iter()
        .map(|t| t.0.to_string())
        .collect();
    // Each has its #[test] below: a new target is added there too.
    assert_eq!(
        names,
        [
            "request",
            "body",
            "path",
            "proxy_protocol",
            "frame_tracker",
            "tls_session"
        ]
    );
    names.sort();
    assert_eq!(built, names);
    let manifest = std::fs::read_to_string(format!("{root}/fuzz/Cargo.toml")).unwrap();
    for name in &names {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] {name}"
        );
        assert!(!corpus(name).is_empty(), "no corpus for {name}");
    }
}

#[test]
fn request() {
    run("request", 20_000);
}

#[test]
fn body() {
    run("body", 20_000);
}

#[test]
fn path() {
    run("path", 20_000);
}

#[test]
fn proxy_protocol() {
    run("proxy_protocol", 20_000);
}

#[test]
fn frame_tracker() {
    run("frame_tracker", 20_000);
}

#[test]
fn tls_session() {
    run("tls_session", 2_000);
}
