//! `cargo +nightly fuzz run frame_tracker`: the checks of `ringway::fuzzing::frame_tracker`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringway::fuzzing::frame_tracker(data));
