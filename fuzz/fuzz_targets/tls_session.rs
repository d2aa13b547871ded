//! `cargo +nightly fuzz run tls_session`: the checks of `ringway::fuzzing::tls_session`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringway::fuzzing::tls_session(data));
