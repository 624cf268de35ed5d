//! `cargo +nightly fuzz run stored`: see conveyor_fuzzing::stored.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| conveyor_fuzzing::stored(data));
