//! Authorization, generated from the service descriptors: every RPC × every
//! role × (its namespace, another namespace, no token, a bad token, a revoked
//! token) gets the documented status, denied calls change nothing, and a new
//! RPC without a rule fails here. Also: a client certificate's subject is a
//! principal; two namespaces with equal queue and task names never see each
//! other's tasks, results, events or workers; a principal's limits answer
//! RESOURCE_EXHAUSTED with a retry hint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use conveyor::app::AppConfig;
use conveyor_api::pb;
use conveyor_runtime::auth::{METHODS, hash_token};
use conveyor_tests::raw::{Method, call, field_number, methods, string_field};
use conveyor_tests::{Backend, TestCluster, eventually, spec};
use prost::Message;
use tonic::Code;

/// What each RPC needs, written down here apart from the server's table
/// (docs/security.md shows the same): a method of the contracts missing
/// from this list fails the test.
fn documented(method: &str) -> &'static str {
    match method {
        "SubmitTask" | "SubmitTasks" | "SubmitWorkflow" => "submit",
        "CancelTask" | "CancelWorkflow" => "cancel",
        "GetTask" | "WaitTask" | "WatchTask" | "ListDeadLetters" | "WatchEvents"
        | "GetWorkflow" | "WaitWorkflow" | "WatchWorkflow" | "ListWorkers" | "ListQueues"
        | "GetSchedulerStatus" | "GetSchedule" | "ListSchedules" | "ListScheduleRuns" => "read",
        "Connect" => "work",
        "ReplayTask" | "ForgetTask" | "PauseQueue" | "ResumeQueue" | "CreateSchedule"
        | "UpdateSchedule" | "DeleteSchedule" | "PauseSchedule" | "ResumeSchedule"
        | "TriggerSchedule" => "admin",
        other => panic!(
            "{other} has no documented permission: add it to docs/security.md, to \
             conveyor_runtime::auth::METHODS and here"
        ),
    }
}

/// The documented grants of each role.
fn grants(role: &str, permission: &str) -> bool {
    match role {
        "admin" => true,
        "producer" => matches!(permission, "submit" | "cancel" | "read"),
        "worker" => permission == "work",
        "reader" => permission == "read",
        other => panic!("unknown role {other}"),
    }
}

const ROLES: [&str; 4] = ["producer", "worker", "reader", "admin"];
const HOME: &str = "team-a";
const AWAY: &str = "team-b";

fn token(role: &str) -> String {
    format!("token-of-{role}")
}

fn auth_file(roles: &[&str], extra: &str) -> String {
    let mut text = String::from("[defaults.limits]\nmax_in_flight = 1000\n");
    for role in roles {
        text.push_str(&format!(
            "\n[[principal]]\nname = \"{role}\"\ntoken_sha256 = [\"{}\"]\nroles = {{ {HOME} = [\"{role}\"] }}\n",
            hash_token(&token(role))
        ));
    }
    text.push_str(extra);
    text
}

fn write(path: &Path, text: &str) {
    // Whole or not at all: the server may read it at any moment.
    let staging = path.with_extension("tmp");
    std::fs::write(&staging, text).unwrap();
    std::fs::rename(&staging, path).unwrap();
}

fn temp_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("conveyor-{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A request for `method` in `namespace`: a valid one for the calls that
/// would change something (so that a denied call that got through would
/// show), the namespace alone otherwise.
fn body(method: &Method, namespace: &str, worker: &str) -> Vec<u8> {
    match method.name.as_str() {
        "SubmitTask" => pb::SubmitTaskRequest {
            task: Some(spec("add", &[1.into(), 2.into()])),
            namespace: namespace.into(),
        }
        .encode_to_vec(),
        "SubmitTasks" => pb::SubmitTasksRequest {
            tasks: vec![spec("add", &[3.into(), 4.into()])],
            namespace: namespace.into(),
        }
        .encode_to_vec(),
        "PauseQueue" => pb::PauseQueueRequest {
            queue: "default".into(),
            namespace: namespace.into(),
        }
        .encode_to_vec(),
        "CreateSchedule" => pb::CreateScheduleRequest {
            schedule: Some(pb::Schedule {
                id: format!("matrix-{worker}"),
                task: Some(spec("add", &[])),
                rule: Some(pb::schedule::Rule::Interval(pb::IntervalRule {
                    every: Some(prost_types::Duration {
                        seconds: 3600,
                        nanos: 0,
                    }),
                })),
                ..Default::default()
            }),
            namespace: namespace.into(),
        }
        .encode_to_vec(),
        "Connect" => pb::ConnectRequest {
            message: Some(pb::connect_request::Message::Hello(pb::Hello {
                worker_id: worker.into(),
                concurrency: 1,
                namespace: namespace.into(),
                ..Default::default()
            })),
        }
        .encode_to_vec(),
        _ => match field_number(&method.input, "namespace") {
            Some(number) => string_field(number, namespace),
            None => Vec::new(),
        },
    }
}

/// What a denied call must leave as it was.
async fn snapshot(cluster: &TestCluster) -> String {
    let depths = cluster.store.queue_depths().await.unwrap();
    let schedules = cluster.store.list_schedules().await.unwrap().len();
    format!("{depths:?} schedules={schedules}")
}

fn is_auth_error(code: Code) -> bool {
    matches!(code, Code::Unauthenticated | Code::PermissionDenied)
}

async fn matrix_on(backend: Backend) {
    let dir = temp_dir("authz");
    let file = dir.join("auth.toml");
    let with_revoked = |revoked: bool| {
        let extra = if revoked {
            String::new()
        } else {
            format!(
                "\n[[principal]]\nname = \"former\"\ntoken_sha256 = [\"{}\"]\nroles = {{ \"*\" = [\"admin\"] }}\n",
                hash_token("token-of-former")
            )
        };
        auth_file(&ROLES, &extra)
    };
    write(&file, &with_revoked(false));
    let mut config = TestCluster::test_config();
    config.server.auth_file = Some(file.clone());
    let Some(cluster) = TestCluster::start_with(backend, config).await else {
        return;
    };
    let all = methods();
    assert!(all.len() >= 29, "{} methods", all.len());

    // The token of "former" works, then is revoked by editing the file.
    let get_task = all.iter().find(|m| m.name == "GetTask").unwrap();
    let probe = || async {
        call(
            cluster.channel.clone(),
            get_task,
            body(get_task, HOME, "probe"),
            Some("token-of-former"),
        )
        .await
    };
    let before = probe().await;
    assert!(
        !before.as_ref().is_err_and(|s| is_auth_error(s.code())),
        "{before:?}"
    );
    write(&file, &with_revoked(true));
    assert!(
        eventually(Duration::from_secs(10), || async {
            probe()
                .await
                .is_err_and(|status| status.code() == Code::Unauthenticated)
        })
        .await,
        "the revoked token was still accepted 10 s after the file changed"
    );

    // Every denied call, first: nothing may change.
    let unchanged = snapshot(&cluster).await;
    let mut cells = 0;
    for method in &all {
        for (who, presented, code) in [
            ("no token", None, Code::Unauthenticated),
            (
                "a bad token",
                Some("not-a-token".to_string()),
                Code::Unauthenticated,
            ),
            (
                "a revoked token",
                Some("token-of-former".to_string()),
                Code::Unauthenticated,
            ),
        ] {
            let result = call(
                cluster.channel.clone(),
                method,
                body(method, HOME, "denied"),
                presented.as_deref(),
            )
            .await;
            let got = result.as_ref().err().map(|status| status.code());
            assert_eq!(got, Some(code), "{} with {who}: {result:?}", method.path);
            cells += 1;
        }
        let permission = documented(&method.name);
        let namespaced =
            field_number(&method.input, "namespace").is_some() || method.name == "Connect";
        for role in ROLES {
            let expected_denied = !grants(role, permission) || namespaced; // AWAY: no role there.
            let result = call(
                cluster.channel.clone(),
                method,
                body(method, AWAY, &format!("away-{role}")),
                Some(&token(role)),
            )
            .await;
            if expected_denied {
                let status = result.expect_err(&format!("{} by {role} in {AWAY}", method.path));
                assert_eq!(
                    status.code(),
                    Code::PermissionDenied,
                    "{} by {role} in {AWAY}: {status:?}",
                    method.path
                );
                assert!(status.message().contains(role), "{}", status.message());
            } else {
                assert!(
                    !result.as_ref().is_err_and(|s| is_auth_error(s.code())),
                    "{} by {role} (no namespace in the request): {result:?}",
                    method.path
                );
            }
            cells += 1;
        }
    }
    assert_eq!(
        snapshot(&cluster).await,
        unchanged,
        "a denied call changed the store"
    );

    // Then each role in its own namespace: allowed exactly where the table
    // says (allowed: any answer but an auth error).
    for method in &all {
        let permission = documented(&method.name);
        for role in ROLES {
            let result = call(
                cluster.channel.clone(),
                method,
                body(method, HOME, &format!("home-{role}")),
                Some(&token(role)),
            )
            .await;
            if grants(role, permission) {
                assert!(
                    !result.as_ref().is_err_and(|s| is_auth_error(s.code())),
                    "{} by {role} in {HOME} was refused: {result:?}",
                    method.path
                );
            } else {
                let status = result.expect_err(&format!("{} by {role} in {HOME}", method.path));
                assert_eq!(
                    status.code(),
                    Code::PermissionDenied,
                    "{} by {role}: {status:?}",
                    method.path
                );
            }
            cells += 1;
        }
    }
    // The allowed calls did change the store: the check above can fail.
    assert_ne!(snapshot(&cluster).await, unchanged);

    // A method the server has no rule for is denied to everyone, admins too.
    let unknown = Method {
        path: "/conveyor.v1.ResultsService/NoSuchMethod".into(),
        name: "NoSuchMethod".into(),
        input: "conveyor.v1.GetTaskRequest".into(),
        client_streaming: false,
        server_streaming: false,
    };
    let status = call(
        cluster.channel.clone(),
        &unknown,
        Vec::new(),
        Some(&token("admin")),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // Health and reflection stay open.
    let mut health = tonic_health::pb::health_client::HealthClient::new(cluster.channel.clone());
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health without a token");
    eprintln!("authorization matrix on {backend:?}: {cells} cells");
    cluster.stop().await.unwrap();
}

/// The server's table covers exactly the contracts' methods, each with the
/// documented permission.
#[test]
fn every_rpc_has_a_rule() {
    let methods = methods();
    for method in &methods {
        let rule = conveyor_runtime::auth::rule(&method.path).unwrap_or_else(|| {
            panic!("{} has no authorization rule in auth::METHODS", method.path)
        });
        let name = format!("{rule:?}").to_lowercase();
        assert_eq!(name, documented(&method.name), "{}", method.path);
    }
    for (path, _) in METHODS {
        assert!(
            methods.iter().any(|method| method.path == *path),
            "auth::METHODS lists {path}, which the contracts do not have"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_matrix_memory() {
    matrix_on(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_matrix_redis() {
    matrix_on(Backend::Redis).await;
}

/// A bad auth file stops the server at start with a message naming the
/// file and the problem; `conveyor auth check` says the same.
#[tokio::test]
async fn a_bad_auth_file_is_refused_at_start() {
    let dir = temp_dir("authbad");
    let file = dir.join("auth.toml");
    write(
        &file,
        "[[principal]]\nname = \"x\"\ntoken_sha256 = [\"abc\"]\nroles = { a = [\"reader\"] }\n",
    );
    for args in [
        vec![
            "dev",
            "--auth-file",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        vec!["auth", "check", file.to_str().unwrap()],
    ] {
        let output = std::process::Command::new(conveyor_tests::processes::conveyor_binary())
            .args(&args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("auth.toml") && stderr.contains("not 64 hex digits"),
            "{args:?}: {stderr}"
        );
    }
}

fn certs(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/gen-test-certs");
    let output = std::process::Command::new(script)
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Under mTLS, the client certificate's subject names a principal: a client
/// with no token acts with that principal's roles; a token still wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_subject_is_a_principal() {
    use conveyor_client::{Client, TaskRequest, Tls};
    let dir = temp_dir("authcert");
    certs(&dir);
    let file = dir.join("auth.toml");
    write(
        &file,
        &format!(
            "[[principal]]\nname = \"cert-reader\"\ntls_subject = [\"CN=test-client\"]\nroles = {{ {HOME} = [\"reader\"] }}\n\n\
             [[principal]]\nname = \"api\"\ntoken_sha256 = [\"{}\"]\nroles = {{ {HOME} = [\"producer\"] }}\n",
            hash_token("api-token")
        ),
    );
    let server = conveyor_tests::processes::spawn_conveyor(
        &[
            "dev",
            "--tls-cert",
            dir.join("server.pem").to_str().unwrap(),
            "--tls-key",
            dir.join("server.key").to_str().unwrap(),
            "--tls-client-ca",
            dir.join("ca.pem").to_str().unwrap(),
            "--auth-file",
            file.to_str().unwrap(),
            "--metrics-listen",
            "off",
        ],
        "127.0.0.1:0",
    )
    .await;
    let port = server.addr.rsplit(':').next().unwrap().to_string();
    let url = format!("https://localhost:{port}");
    let tls = Tls::new()
        .ca_file(dir.join("ca.pem"))
        .identity_files(dir.join("client.pem"), dir.join("client.key"));
    let by_cert = Client::connect_with_tls(url.as_str(), tls.clone())
        .await
        .unwrap()
        .with_namespace(HOME);
    // Read: allowed (the id is unknown, so NOT_FOUND).
    let read = by_cert
        .get("0190f5c2-0000-7000-8000-000000000000")
        .await
        .unwrap_err();
    assert_eq!(read.code(), Some(Code::NotFound), "{read}");
    // Submit: the certificate's principal is a reader only.
    let submit = by_cert.submit(TaskRequest::new("add")).await.unwrap_err();
    assert!(submit.to_string().contains("cert-reader"), "{submit}");
    assert_eq!(submit.code(), Some(Code::PermissionDenied), "{submit}");
    // The same connection with a producer's token submits.
    let by_token = Client::connect_with_tls(url.as_str(), tls)
        .await
        .unwrap()
        .with_token("api-token")
        .unwrap()
        .with_namespace(HOME);
    by_token.submit(TaskRequest::new("add")).await.unwrap();
    server.kill().await;
}

/// Two namespaces with the same queue and task names: workers of each get
/// only their own tasks; ids, results, events and workers of one are not
/// visible from the other.
async fn isolation_on(backend: Backend) {
    use conveyor_client::{Client, TaskContext, TaskRequest, Worker};
    use tokio_util::sync::CancellationToken;
    let Some(cluster) = TestCluster::start(backend).await else {
        return;
    };
    let url = format!("http://{}", cluster.addr);
    let stop = CancellationToken::new();
    let mut running = Vec::new();
    let mut events = HashMap::new();
    for namespace in ["iso-a", "iso-b"] {
        // Events of this namespace from the start.
        let mut results =
            pb::results_service_client::ResultsServiceClient::new(cluster.channel.clone());
        let stream = results
            .watch_events(pb::WatchEventsRequest {
                namespace: namespace.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        events.insert(namespace, stream);
        let label = namespace.to_string();
        let worker = Worker::builder(url.as_str())
            .namespace(namespace)
            .worker_id(format!("worker-{namespace}"))
            .register("work", move |_ctx: TaskContext| {
                let label = label.clone();
                async move { Ok(serde_json::Value::from(label)) }
            })
            .build()
            .unwrap();
        let stop = stop.clone();
        running.push(tokio::spawn(async move {
            worker.run_until(stop.cancelled_owned()).await
        }));
    }
    let mut ids: HashMap<&str, Vec<String>> = HashMap::new();
    for namespace in ["iso-a", "iso-b"] {
        let client = Client::connect(url.as_str())
            .await
            .unwrap()
            .with_namespace(namespace);
        for _ in 0..20 {
            let id = client.submit(TaskRequest::new("work")).await.unwrap();
            ids.entry(namespace).or_default().push(id);
        }
    }
    for (namespace, other) in [("iso-a", "iso-b"), ("iso-b", "iso-a")] {
        let own = Client::connect(url.as_str())
            .await
            .unwrap()
            .with_namespace(namespace);
        let foreign = Client::connect(url.as_str())
            .await
            .unwrap()
            .with_namespace(other);
        for id in &ids[namespace] {
            let result: String = own.result(id, Duration::from_secs(20)).await.unwrap();
            assert_eq!(
                result, namespace,
                "task {id} of {namespace} ran on {result}'s worker"
            );
            let error = foreign.get(id).await.unwrap_err();
            assert_eq!(
                error.code(),
                Some(Code::NotFound),
                "{other} read {namespace}'s {id}: {error}"
            );
        }
        let mut dispatch =
            pb::dispatch_service_client::DispatchServiceClient::new(cluster.channel.clone());
        let workers = dispatch
            .list_workers(pb::ListWorkersRequest {
                namespace: namespace.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .workers;
        let names: Vec<&str> = workers.iter().map(|w| w.worker_id.as_str()).collect();
        assert_eq!(
            names,
            vec![format!("worker-{namespace}").as_str()],
            "{namespace}"
        );
    }
    // Each namespace's event stream names only its own tasks.
    for (namespace, mut stream) in events {
        let own: std::collections::HashSet<&String> = ids[namespace].iter().collect();
        let mut seen = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while seen < 40 {
            let next = tokio::time::timeout_at(deadline, stream.message()).await;
            let Ok(Ok(Some(message))) = next else { break };
            for event in message.events {
                assert_eq!(event.namespace, namespace, "{event:?}");
                if !event.task_id.is_empty() {
                    assert!(
                        own.contains(&event.task_id),
                        "{namespace} saw {:?}",
                        event.task_id
                    );
                    seen += 1;
                }
            }
        }
        assert!(seen >= 20, "{namespace}: {seen} task events");
    }
    stop.cancel();
    for handle in running {
        let _ = handle.await;
    }
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_are_isolated_memory() {
    isolation_on(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_are_isolated_redis() {
    isolation_on(Backend::Redis).await;
}

/// A principal over its limits gets RESOURCE_EXHAUSTED with a retry hint;
/// a closed stream frees its slot; other principals are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_over_its_limits_is_told_when_to_retry() {
    use tonic_types::StatusExt;
    let dir = temp_dir("authlimits");
    let file = dir.join("auth.toml");
    write(
        &file,
        &format!(
            "[[principal]]\nname = \"greedy\"\ntoken_sha256 = [\"{}\"]\nroles = {{ \"*\" = [\"admin\"] }}\n\
             limits = {{ max_in_flight = 50, max_streams = 2, submissions_per_second = 5.0 }}\n\n\
             [[principal]]\nname = \"calm\"\ntoken_sha256 = [\"{}\"]\nroles = {{ \"*\" = [\"admin\"] }}\n",
            hash_token("greedy"),
            hash_token("calm")
        ),
    );
    let mut config: AppConfig = TestCluster::test_config();
    config.server.auth_file = Some(file);
    let cluster = TestCluster::start_with(Backend::Memory, config)
        .await
        .unwrap();
    let open_watch = |token: &'static str| {
        let channel = cluster.channel.clone();
        async move {
            let mut client = pb::results_service_client::ResultsServiceClient::new(channel);
            let mut request = tonic::Request::new(pb::WatchEventsRequest::default());
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            client.watch_events(request).await
        }
    };
    let first = open_watch("greedy").await.unwrap();
    let second = open_watch("greedy").await.unwrap();
    let third = open_watch("greedy").await.unwrap_err();
    assert_eq!(third.code(), Code::ResourceExhausted, "{third:?}");
    assert!(
        third.message().contains("greedy") && third.message().contains("2 streams"),
        "{}",
        third.message()
    );
    assert!(
        third.get_details_retry_info().is_some(),
        "no RetryInfo: {third:?}"
    );
    // Another principal is not held back.
    let _calm = open_watch("calm").await.unwrap();
    // Closing a stream frees its slot.
    drop(first);
    assert!(
        eventually(Duration::from_secs(5), || async {
            open_watch("greedy").await.is_ok()
        })
        .await,
        "a closed stream's slot was not given back"
    );
    drop(second);

    // Submissions per second: a burst of 5, then a wait of about 200 ms.
    let submit = |token: &'static str| {
        let channel = cluster.channel.clone();
        async move {
            let mut client = pb::submission_service_client::SubmissionServiceClient::new(channel);
            let mut request = tonic::Request::new(pb::SubmitTaskRequest {
                task: Some(spec("add", &[])),
                namespace: String::new(),
            });
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            client.submit_task(request).await
        }
    };
    let mut refused = None;
    for _ in 0..20 {
        if let Err(status) = submit("greedy").await {
            refused = Some(status);
            break;
        }
    }
    let refused = refused.expect("20 submissions in a row at 5 per second were all accepted");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let delay = refused
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .expect("a retry delay");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_millis(200),
        "{delay:?}"
    );
    assert!(
        refused.message().contains("retry in"),
        "{}",
        refused.message()
    );
    submit("calm").await.expect("another principal submits");
    // After the hinted delay (the hint itself is what is tested), the next
    // submission goes through.
    tokio::time::sleep(delay + Duration::from_millis(20)).await;
    submit("greedy")
        .await
        .expect("accepted after the hinted delay");
    cluster.stop().await.unwrap();
}

/// With authentication on, the scheduler submits a schedule's runs with
/// `--scheduler-token`; without one, triggering says what to set instead of
/// reporting an outage. A namespace that is not a name is INVALID_ARGUMENT,
/// not a permission question.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_needs_its_own_token() {
    let dir = temp_dir("authsched");
    let file = dir.join("auth.toml");
    write(
        &file,
        &format!(
            "[[principal]]\nname = \"ops\"\ntoken_sha256 = [\"{}\"]\nroles = {{ \"*\" = [\"admin\"] }}\n\n\
             [[principal]]\nname = \"scheduler\"\ntoken_sha256 = [\"{}\"]\nroles = {{ \"*\" = [\"producer\"] }}\n",
            hash_token("ops"),
            hash_token("scheduler")
        ),
    );
    for scheduler_token in [None, Some("scheduler")] {
        let mut config = TestCluster::test_config();
        config.server.auth_file = Some(file.clone());
        config.scheduler_token = scheduler_token.map(str::to_string);
        let cluster = TestCluster::start_with(Backend::Memory, config)
            .await
            .unwrap();
        let mut scheduling =
            pb::scheduling_service_client::SchedulingServiceClient::new(cluster.channel.clone());
        fn request<T>(message: T) -> tonic::Request<T> {
            let mut request = tonic::Request::new(message);
            request
                .metadata_mut()
                .insert("authorization", "Bearer ops".parse().unwrap());
            request
        }
        scheduling
            .create_schedule(request(pb::CreateScheduleRequest {
                schedule: Some(pb::Schedule {
                    id: "nightly".into(),
                    task: Some(spec("add", &[1.into(), 2.into()])),
                    rule: Some(pb::schedule::Rule::Interval(pb::IntervalRule {
                        every: Some(prost_types::Duration {
                            seconds: 3600,
                            nanos: 0,
                        }),
                    })),
                    start_at: Some(prost_types::Timestamp {
                        seconds: 4_000_000_000,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                namespace: HOME.into(),
            }))
            .await
            .unwrap();
        let triggered = scheduling
            .trigger_schedule(request(pb::TriggerScheduleRequest {
                id: "nightly".into(),
                namespace: HOME.into(),
            }))
            .await;
        match scheduler_token {
            None => {
                let status = triggered.unwrap_err();
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                assert!(
                    status.message().contains("--scheduler-token"),
                    "{}",
                    status.message()
                );
            }
            Some(_) => {
                triggered.unwrap();
            }
        }
        let invalid = scheduling
            .list_schedules(request(pb::ListSchedulesRequest {
                namespace: "not a name!".into(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(invalid.code(), Code::InvalidArgument, "{invalid:?}");
        cluster.stop().await.unwrap();
    }
}

/// Reflection is open with authentication on, unless `private_reflection`:
/// then it needs a credential (any principal); health stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_is_open_unless_made_private() {
    let dir = temp_dir("authrefl");
    let file = dir.join("auth.toml");
    write(&file, &auth_file(&["reader"], ""));
    let reflection = Method {
        path: "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo".into(),
        name: "ServerReflectionInfo".into(),
        input: "grpc.reflection.v1.ServerReflectionRequest".into(),
        client_streaming: true,
        server_streaming: true,
    };
    // list_services = "*" (field 7).
    let list = || string_field(7, "*");
    for private in [false, true] {
        let mut config = TestCluster::test_config();
        config.server.auth_file = Some(file.clone());
        config.server.private_reflection = private;
        let cluster = TestCluster::start_with(Backend::Memory, config)
            .await
            .unwrap();
        let anonymous = call(cluster.channel.clone(), &reflection, list(), None).await;
        if private {
            assert_eq!(anonymous.unwrap_err().code(), Code::Unauthenticated);
            call(
                cluster.channel.clone(),
                &reflection,
                list(),
                Some(&token("reader")),
            )
            .await
            .expect("reflection with a credential");
        } else {
            anonymous.expect("reflection without a token");
        }
        let mut health =
            tonic_health::pb::health_client::HealthClient::new(cluster.channel.clone());
        health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .expect("health without a token");
        cluster.stop().await.unwrap();
    }
}

/// A producer cancels the tasks and workflows it submitted, not another
/// producer's; an admin of the namespace cancels anyone's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_cancel_only_their_own() {
    use conveyor_client::{Client, TaskRequest, canvas::chain};
    let dir = temp_dir("authcancel");
    let file = dir.join("auth.toml");
    let mut text = auth_file(&["admin"], "");
    for name in ["alice", "bob"] {
        text.push_str(&format!(
            "\n[[principal]]\nname = \"{name}\"\ntoken_sha256 = [\"{}\"]\nroles = {{ {HOME} = [\"producer\"] }}\n",
            hash_token(name)
        ));
    }
    write(&file, &text);
    let mut config = TestCluster::test_config();
    config.server.auth_file = Some(file);
    let cluster = TestCluster::start_with(Backend::Memory, config)
        .await
        .unwrap();
    let url = format!("http://{}", cluster.addr);
    let as_ = |token: String| {
        let url = url.clone();
        async move {
            Client::connect(url.as_str())
                .await
                .unwrap()
                .with_token(token)
                .unwrap()
                .with_namespace(HOME)
        }
    };
    let (alice, bob, admin) = (
        as_("alice".into()).await,
        as_("bob".into()).await,
        as_(token("admin")).await,
    );
    let mine = alice
        .submit(TaskRequest::new("later").countdown(Duration::from_secs(3600)))
        .await
        .unwrap();
    let refused = bob.cancel(&mine).await.unwrap_err();
    assert_eq!(refused.code(), Some(Code::PermissionDenied), "{refused}");
    assert!(
        refused
            .to_string()
            .contains("'bob' may cancel only what it submitted"),
        "{refused}"
    );
    assert!(alice.cancel(&mine).await.unwrap(), "alice cancels her own");
    let hers = alice
        .submit(TaskRequest::new("later").countdown(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert!(
        admin.cancel(&hers).await.unwrap(),
        "an admin cancels anyone's"
    );
    let flow = alice
        .submit_workflow(chain([
            TaskRequest::new("a").countdown(Duration::from_secs(3600)),
            TaskRequest::new("b"),
        ]))
        .await
        .unwrap();
    let refused = bob.cancel_workflow(&flow.id).await.unwrap_err();
    assert_eq!(refused.code(), Some(Code::PermissionDenied), "{refused}");
    alice.cancel_workflow(&flow.id).await.unwrap();
    cluster.stop().await.unwrap();
}
