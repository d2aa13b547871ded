//! `cargo +nightly fuzz run proxy_protocol`: the checks of `ringway::fuzzing::proxy_protocol`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringway::fuzzing::proxy_protocol(data));
