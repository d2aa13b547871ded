//! `cargo +nightly fuzz run body`: the checks of `ringway::fuzzing::body`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringway::fuzzing::body(data));
