//! `cargo +nightly fuzz run task_spec`: see conveyor_fuzzing::task_spec.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| conveyor_fuzzing::task_spec(data));
