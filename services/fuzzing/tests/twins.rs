//! The stable twins of the fuzz targets: each target's function on random
//! bytes and on random mutations of its seeds (bytes flipped, inserted,
//! removed, the input cut short), a bounded number of cases per run so that
//! `scripts/test` stays quick. `cargo +nightly fuzz run TARGET` explores far
//! more (see fuzz/README.md); a crash it finds goes into fuzz/corpus and
//! becomes a case here.

use conveyor_fuzzing::{TARGETS, seeds};
use proptest::prelude::*;

fn target(name: &str) -> fn(&[u8]) {
    TARGETS
        .iter()
        .find(|(target, _)| *target == name)
        .map(|(_, run)| *run)
        .unwrap_or_else(|| panic!("no target {name}"))
}

/// One edit of a seed.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec(
        prop_oneof![
            (any::<usize>(), any::<u8>()).prop_map(|(at, bit)| Edit::Flip(at, bit)),
            (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Edit::Insert(at, byte)),
            any::<usize>().prop_map(Edit::Remove),
            any::<usize>().prop_map(Edit::Truncate),
        ],
        1..8,
    )
}

fn mutate(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for edit in edits {
        let len = data.len().max(1);
        match *edit {
            Edit::Flip(at, bit) if !data.is_empty() => data[at % len] ^= 1 << (bit % 8),
            Edit::Insert(at, byte) => data.insert(at % (data.len() + 1), byte),
            Edit::Remove(at) if !data.is_empty() => {
                data.remove(at % len);
            }
            Edit::Truncate(at) => data.truncate(at % (data.len() + 1)),
            _ => {}
        }
    }
    data
}

fn cases() -> u32 {
    std::env::var("CONVEYOR_FUZZ_TWIN_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(2_000)
}

/// Every seed, unmutated, is accepted by its target without panicking.
#[test]
fn seeds_run() {
    for (name, seed) in seeds() {
        target(name)(&seed);
    }
}

/// The checked-in corpus (fuzz/corpus/TARGET/*) replays without panicking:
/// what the fuzzer once found stays fixed.
#[test]
fn corpus_replays() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let mut files = 0;
    for (name, run) in TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(name)) else {
            panic!("fuzz/corpus/{name} is missing");
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let started = std::time::Instant::now();
            run(&std::fs::read(&path).unwrap());
            // Slowness is a finding too (a cron field listing no value once
            // cost seconds of CPU per call): every input answers quickly.
            assert!(
                started.elapsed() < std::time::Duration::from_secs(2),
                "{} took {:?}",
                path.display(),
                started.elapsed()
            );
            files += 1;
        }
    }
    assert!(files >= TARGETS.len(), "{files} corpus files");
}

macro_rules! twin {
    ($name:ident) => {
        mod $name {
            use super::*;

            proptest! {
                #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

                #[test]
                fn random_bytes(data in prop::collection::vec(any::<u8>(), 0..2048)) {
                    target(stringify!($name))(&data);
                }

                #[test]
                fn mutated_seeds(which in any::<prop::sample::Index>(), edits in edits()) {
                    let seeds: Vec<Vec<u8>> = seeds()
                        .into_iter()
                        .filter(|(name, _)| *name == stringify!($name))
                        .map(|(_, seed)| seed)
                        .collect();
                    let seed = which.get(&seeds);
                    target(stringify!($name))(&mutate(seed, &edits));
                }
            }
        }
    };
}

twin!(task_spec);
twin!(workflow);
twin!(schedule);
twin!(config);
twin!(stored);

/// The seeds are accepted inputs, so the twins mutate from valid ones (a
/// seed that no longer parses would leave them fuzzing only error paths).
#[test]
fn seeds_are_valid_inputs() {
    use conveyor_api::pb;
    use prost::Message;
    for (name, seed) in seeds() {
        match name {
            "task_spec" => {
                let spec = pb::SubmitTaskRequest::decode(seed.as_slice())
                    .unwrap()
                    .task
                    .unwrap();
                conveyor_core::validate::validate_spec(spec, "task", &Default::default(), 0, 0)
                    .unwrap();
            }
            "workflow" => {
                let spec = pb::WorkflowSpec::decode(seed.as_slice()).unwrap();
                conveyor_core::workflow::validate_workflow(
                    spec,
                    &Default::default(),
                    &Default::default(),
                    0,
                )
                .unwrap();
            }
            "config" => {
                let text = std::str::from_utf8(&seed[1..]).unwrap();
                match seed[0] {
                    0 => drop(conveyor::config::parse_task_defaults(text, "seed").unwrap()),
                    1 => assert_eq!(
                        conveyor::config::parse_schedules(text, "seed")
                            .unwrap()
                            .len(),
                        2
                    ),
                    _ => drop(conveyor_runtime::auth::parse_auth_file(text, "seed").unwrap()),
                }
            }
            _ => {}
        }
    }
}
