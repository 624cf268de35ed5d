//! `cargo +nightly fuzz run config`: see conveyor_fuzzing::config.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| conveyor_fuzzing::config(data));
