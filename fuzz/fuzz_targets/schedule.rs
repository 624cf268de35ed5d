//! `cargo +nightly fuzz run schedule`: see conveyor_fuzzing::schedule.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| conveyor_fuzzing::schedule(data));
