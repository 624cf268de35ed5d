//! gRPC-level fuzzing: random and mutated protobuf messages to every RPC of
//! the contracts (from the descriptors) and to the worker stream, against a
//! running server. It must never crash, must answer each with a precise
//! status (never INTERNAL or UNKNOWN), and a call it refuses must change
//! nothing in the store. Bounded: CONVEYOR_GRPC_FUZZ_CASES per method
//! (default 150), a fixed seed unless CONVEYOR_GRPC_FUZZ_SEED says otherwise.

use std::time::Duration;

use conveyor_api::pb;
use conveyor_tests::raw::{Method, call_with, field_number, methods, string_field};
use conveyor_tests::{Backend, TestCluster, spec};
use prost::Message;
use tonic::Code;

/// xorshift64*: reproducible from the printed seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// A valid request of `method`, to mutate from.
fn seed(method: &Method) -> Vec<u8> {
    let id = "0190f5c2-0000-7000-8000-000000000000".to_string();
    match method.name.as_str() {
        "SubmitTask" => pb::SubmitTaskRequest {
            task: Some(spec("add", &[1.into(), 2.into()])),
            namespace: String::new(),
        }
        .encode_to_vec(),
        "SubmitTasks" => pb::SubmitTasksRequest {
            tasks: vec![spec("add", &[1.into()]), spec("mul", &[2.into()])],
            ..Default::default()
        }
        .encode_to_vec(),
        "SubmitWorkflow" => pb::SubmitWorkflowRequest {
            workflow: Some(pb::WorkflowSpec {
                nodes: vec![
                    pb::WorkflowNode {
                        task: Some(spec("add", &[1.into()])),
                        ..Default::default()
                    },
                    pb::WorkflowNode {
                        task: Some(spec("add", &[])),
                        parents: vec![0],
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec(),
        "CreateSchedule" | "UpdateSchedule" => pb::CreateScheduleRequest {
            schedule: Some(pb::Schedule {
                id: "fuzzed".into(),
                task: Some(spec("add", &[])),
                rule: Some(pb::schedule::Rule::Cron(pb::CronRule {
                    expression: "*/5 * * * *".into(),
                    time_zone: "UTC".into(),
                })),
                ..Default::default()
            }),
            namespace: String::new(),
        }
        .encode_to_vec(),
        "Connect" => pb::ConnectRequest {
            message: Some(pb::connect_request::Message::Hello(pb::Hello {
                worker_id: "fuzz".into(),
                concurrency: 2,
                queues: vec!["default".into()],
                ..Default::default()
            })),
        }
        .encode_to_vec(),
        _ => {
            let mut out = Vec::new();
            for (field, value) in [
                ("task_id", id.as_str()),
                ("id", "fuzzed"),
                ("queue", "default"),
            ] {
                if let Some(number) = field_number(&method.input, field) {
                    out.extend(string_field(number, value));
                }
            }
            out
        }
    }
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..1 + rng.below(2) {
        match rng.below(4) {
            0 if !data.is_empty() => {
                let at = rng.below(data.len());
                data[at] ^= 1 << rng.below(8);
            }
            1 => {
                let at = rng.below(data.len() + 1);
                data.insert(at, rng.next() as u8);
            }
            2 if !data.is_empty() => {
                data.remove(rng.below(data.len()));
            }
            _ => data.truncate(rng.below(data.len() + 1)),
        }
    }
    data
}

/// Changes something when accepted.
fn mutates(method: &str) -> bool {
    !(method.starts_with("Get")
        || method.starts_with("List")
        || method.starts_with("Wait")
        || method.starts_with("Watch"))
}

async fn snapshot(cluster: &TestCluster) -> String {
    let depths = cluster.store.queue_depths().await.unwrap();
    let schedules = cluster.store.list_schedules().await.unwrap();
    let summary = cluster.store.scheduled_summary().await.unwrap();
    format!("{depths:?} {schedules:?} {}", summary.count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_mutated_messages_to_every_rpc() {
    let cases: usize = std::env::var("CONVEYOR_GRPC_FUZZ_CASES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(150);
    let seed: u64 = match std::env::var("CONVEYOR_GRPC_FUZZ_SEED").ok().as_deref() {
        Some("random") => {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        }
        Some(value) => value
            .parse()
            .expect("CONVEYOR_GRPC_FUZZ_SEED: a number or `random`"),
        None => 0x5eed_c0ff_ee15_u64,
    };
    eprintln!("grpc fuzz: {cases} cases per method, seed {seed} (CONVEYOR_GRPC_FUZZ_SEED)");
    let cluster = TestCluster::start(Backend::Memory).await.unwrap();
    let mut rng = Rng(seed);
    let mut answers: std::collections::BTreeMap<String, usize> = Default::default();
    let mut calls = 0;
    for method in methods() {
        let base = seed_of(&method);
        for case in 0..cases {
            let body = if case % 3 == 0 {
                rng.bytes(300)
            } else {
                mutate(&mut rng, &base)
            };
            let before = if mutates(&method.name) {
                Some(snapshot(&cluster).await)
            } else {
                None
            };
            let result = call_with(
                cluster.channel.clone(),
                &method,
                body.clone(),
                None,
                Duration::from_millis(20),
            )
            .await;
            calls += 1;
            let code = result
                .as_ref()
                .err()
                .map_or(Code::Ok, |status| status.code());
            assert!(
                !matches!(
                    code,
                    Code::Internal | Code::Unknown | Code::DataLoss | Code::Unimplemented
                ),
                "{} answered {result:?} to {body:?} (seed {seed})",
                method.path
            );
            *answers
                .entry(format!("{}: {code:?}", method.name))
                .or_default() += 1;
            if let (Some(before), Err(status)) = (before, &result)
                && status.code() != Code::DeadlineExceeded
            {
                assert_eq!(
                    snapshot(&cluster).await,
                    before,
                    "{} refused {body:?} with {status:?} but changed the store (seed {seed})",
                    method.path
                );
            }
        }
    }
    // Still serving, and still right.
    let mut health = tonic_health::pb::health_client::HealthClient::new(cluster.channel.clone());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(serving.status, 1, "health after fuzzing: {serving:?}");
    let id = conveyor_tests::submit(&cluster, spec("add", &[1.into()])).await;
    assert!(!conveyor_tests::get(&cluster, &id).await.id.is_empty());
    eprintln!("grpc fuzz: {calls} calls; answers: {answers:?}");
    cluster.stop().await.unwrap();
}

fn seed_of(method: &Method) -> Vec<u8> {
    seed(method)
}
