//! `cargo +nightly fuzz run path`: the checks of `ringway::fuzzing::path`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringway::fuzzing::path(data));
