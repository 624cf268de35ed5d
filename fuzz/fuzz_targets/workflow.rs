//! `cargo +nightly fuzz run workflow`: see conveyor_fuzzing::workflow.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| conveyor_fuzzing::workflow(data));
