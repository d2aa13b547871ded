//! `cargo +nightly fuzz run request`: the checks of `ringway::fuzzing::request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringway::fuzzing::request(data));
