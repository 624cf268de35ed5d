//! Several concurrency keys per task, taken all-or-nothing: the dining
//! philosophers on both stores. Five philosophers, forks `fork:0..4` with one
//! permit each; philosopher i needs forks i and i+1. The platform must never
//! let two meals hold one fork, never deadlock, and starve nobody.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use conveyor_api::pb;
use conveyor_client::{Client, TaskContext, TaskRequest, Worker};
use conveyor_store::conformance::test_redis_url;
use conveyor_tests::processes::spawn_chaos_worker;
use conveyor_tests::{Backend, TestCluster, eventually, on_both_stores};

on_both_stores!(
    dining_philosophers_eat_safely_and_fairly,
    a_killed_philosopher_puts_both_forks_back,
    two_keys_are_not_starved_by_a_stream_of_one_key_tasks,
);

const PHILOSOPHERS: usize = 5;

fn forks(philosopher: usize) -> [String; 2] {
    [
        format!("fork:{philosopher}"),
        format!("fork:{}", (philosopher + 1) % PHILOSOPHERS),
    ]
}

fn meal(name: &str, philosopher: usize, args: &[Value]) -> TaskRequest {
    let [left, right] = forks(philosopher);
    let mut request = TaskRequest::new(name);
    for arg in args {
        request = request.arg(arg);
    }
    request
        .concurrency_limit(left, 1)
        .concurrency_limit(right, 1)
}

/// One meal as the handler saw it.
#[derive(Debug, Clone, Copy)]
struct Eaten {
    philosopher: usize,
    start: Instant,
    end: Instant,
}

#[derive(Default)]
struct Table {
    meals: Mutex<Vec<Eaten>>,
    eating: AtomicUsize,
    most: AtomicUsize,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// 1,000 meals submitted at once, four workers on two dispatch replicas.
async fn dining_philosophers_eat_safely_and_fairly(backend: Backend) {
    let Some(store) = TestCluster::store(backend).await else {
        return;
    };
    let (front, dispatchers) = TestCluster::split(store, 2).await;
    let table = Arc::new(Table::default());
    let stop = CancellationToken::new();
    let meal_ms = 2;
    let workers: Vec<_> = (0..4)
        .map(|index| {
            let table = table.clone();
            let worker = Worker::from_channel(dispatchers[index % 2].channel.clone())
                .worker_id(format!("diner-{index}"))
                .concurrency(4)
                .register("eat", move |ctx: TaskContext| {
                    let table = table.clone();
                    async move {
                        let philosopher: usize = ctx.arg(0)?;
                        let start = Instant::now();
                        let now = table.eating.fetch_add(1, Ordering::SeqCst) + 1;
                        table.most.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(meal_ms)).await;
                        table.eating.fetch_sub(1, Ordering::SeqCst);
                        table.meals.lock().unwrap().push(Eaten {
                            philosopher,
                            start,
                            end: Instant::now(),
                        });
                        Ok(Value::Null)
                    }
                })
                .build()
                .unwrap();
            let stop = stop.clone();
            tokio::spawn(async move {
                let _ = worker.run_until(stop.cancelled_owned()).await;
            })
        })
        .collect();
    let client = Client::from_channel(front.channel.clone());
    let total = 1000;
    let submitted = Instant::now();
    let ids = client
        .submit_many(
            (0..total)
                .map(|index| {
                    let philosopher = index % PHILOSOPHERS;
                    meal("eat", philosopher, &[Value::from(philosopher)])
                })
                .collect(),
        )
        .await
        .unwrap();
    for id in &ids {
        let task = client.wait(id, Duration::from_secs(60)).await.unwrap();
        assert_eq!(task.state, pb::TaskState::Succeeded as i32, "meal {id}");
    }
    let took = submitted.elapsed();
    stop.cancel();
    for worker in workers {
        worker.await.unwrap();
    }
    let meals = table.meals.lock().unwrap().clone();
    assert_eq!(meals.len(), total, "every meal eaten once");
    // No fork ever in two hands: per fork, meals do not overlap in time.
    for fork in 0..PHILOSOPHERS {
        let mut using: Vec<&Eaten> = meals
            .iter()
            .filter(|eaten| {
                eaten.philosopher == fork || (eaten.philosopher + 1) % PHILOSOPHERS == fork
            })
            .collect();
        using.sort_by_key(|eaten| eaten.start);
        for pair in using.windows(2) {
            assert!(
                pair[1].start >= pair[0].end,
                "fork {fork}: philosopher {} started {:?} before philosopher {} put it down",
                pair[1].philosopher,
                pair[0].end - pair[1].start,
                pair[0].philosopher,
            );
        }
    }
    let most = table.most.load(Ordering::SeqCst);
    assert!(
        most <= 2,
        "{most} philosophers ate at once; five forks feed two"
    );
    // Fairness: every philosopher eats all its meals, and nobody waits more
    // than 5x the mean wait (wait = submission to the start of the meal).
    let mut waits: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for eaten in &meals {
        waits
            .entry(eaten.philosopher)
            .or_default()
            .push((eaten.start - submitted).as_secs_f64() * 1000.0);
    }
    let all: Vec<f64> = waits.values().flatten().copied().collect();
    let mean = all.iter().sum::<f64>() / all.len() as f64;
    let eating_ms: f64 = meals
        .iter()
        .map(|eaten| (eaten.end - eaten.start).as_secs_f64() * 1000.0)
        .sum();
    println!(
        "{backend:?}: {total} meals in {took:?}; at most {most} eating at once, {:.2} on average; mean wait {mean:.0} ms",
        eating_ms / (took.as_secs_f64() * 1000.0)
    );
    println!("philosopher  meals  wait p50  wait p90  wait max (ms)");
    for (philosopher, list) in &mut waits {
        list.sort_by(f64::total_cmp);
        println!(
            "{philosopher:>11}  {:>5}  {:>8.0}  {:>8.0}  {:>8.0}",
            list.len(),
            percentile(list, 0.5),
            percentile(list, 0.9),
            list[list.len() - 1]
        );
        assert_eq!(
            list.len(),
            total / PHILOSOPHERS,
            "philosopher {philosopher}"
        );
        let worst = list[list.len() - 1];
        assert!(
            worst <= 5.0 * mean,
            "philosopher {philosopher} waited {worst:.0} ms, more than 5x the mean {mean:.0} ms"
        );
    }
    assert_eq!(
        most, 2,
        "two philosophers eat at once when their forks allow"
    );
}

/// A worker SIGKILLed in the middle of a meal: the meal's two forks come back
/// by the lease rules (the stream's end, at the latest the lease TTL), the
/// meal runs again elsewhere, and the neighbours waiting for either fork eat
/// after it.
async fn a_killed_philosopher_puts_both_forks_back(backend: Backend) {
    let Some(redis) = test_redis_url() else {
        eprintln!("skipped: the chaos worker counts executions in the test Redis");
        return;
    };
    let Some(cluster) = TestCluster::start(backend).await else {
        return;
    };
    let prefix = format!("philosophers-{}:", uuid::Uuid::new_v4());
    let addr = cluster.addr.to_string();
    let client = Client::from_channel(cluster.channel.clone());
    let killed = spawn_chaos_worker(&addr, &redis, &prefix, "doomed");
    // Philosopher 0 needs forks 0 and 1; it eats for 1.5 s.
    let dinner = client
        .submit(meal("work", 0, &[Value::from(1), Value::from(1500)]))
        .await
        .unwrap();
    let eating = eventually(Duration::from_secs(10), || async {
        client.get(&dinner).await.unwrap().worker_id == "doomed"
    })
    .await;
    assert!(eating, "the doomed worker took the meal");
    // Its neighbours: philosopher 4 needs fork 0, philosopher 1 needs fork 1.
    let left = client
        .submit(meal("work", 4, &[Value::from(2), Value::from(10)]))
        .await
        .unwrap();
    let right = client
        .submit(meal("work", 1, &[Value::from(3), Value::from(10)]))
        .await
        .unwrap();
    killed.signal("KILL");
    let killed_at = Instant::now();
    let _rescuer = spawn_chaos_worker(&addr, &redis, &prefix, "rescuer");
    let mut finished = BTreeMap::new();
    for id in [&dinner, &left, &right] {
        let task = client.wait(id, Duration::from_secs(30)).await.unwrap();
        assert_eq!(task.state, pb::TaskState::Succeeded as i32, "task {id}");
        let value: Value = serde_json::from_slice(
            &task
                .result
                .as_ref()
                .map(|payload| payload.data.clone())
                .unwrap_or_default(),
        )
        .unwrap();
        assert_eq!(value["worker"], "rescuer", "task {id} ran on the rescuer");
        finished.insert(id.clone(), task);
    }
    let again = killed_at.elapsed();
    let dinner_task = &finished[&dinner];
    assert_eq!(dinner_task.attempt, 2, "the interrupted meal ran again");
    let mut redis_connection =
        conveyor_store::redis::connection::Connection::open(&redis, Duration::from_secs(5))
            .await
            .unwrap();
    let executions: i64 = ::redis::cmd("GET")
        .arg(format!("{prefix}exec:{dinner}"))
        .query_async(&mut redis_connection)
        .await
        .unwrap();
    assert_eq!(
        executions, 2,
        "once on the killed worker, once on the rescuer"
    );
    // Both neighbours ate only after the meal that held their forks.
    let done = |task: &pb::Task| {
        task.finished_at
            .as_ref()
            .map(|at| (at.seconds, at.nanos))
            .unwrap()
    };
    for neighbour in [&left, &right] {
        assert!(
            done(&finished[neighbour]) > done(dinner_task),
            "{neighbour} finished before the meal holding its fork"
        );
    }
    println!("{backend:?}: all three meals done {again:?} after the kill (the meal takes 1.5 s)");
    assert!(
        again < Duration::from_secs(6),
        "forks came back by the lease rules; took {again:?}"
    );
}

/// A task needing keys a and b, submitted while a stream of tasks needing
/// only a or only b keeps both busy (never both free at once), runs long
/// before the stream ends: after a few overtakes a permit is held for it.
async fn two_keys_are_not_starved_by_a_stream_of_one_key_tasks(backend: Backend) {
    let Some(cluster) = TestCluster::start(backend).await else {
        return;
    };
    let client = Client::from_channel(cluster.channel.clone());
    let started: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
    let record = started.clone();
    let worker = Worker::from_channel(cluster.channel.clone())
        .worker_id("busy")
        .concurrency(8)
        .register("use", move |ctx: TaskContext| {
            let record = record.clone();
            async move {
                record
                    .lock()
                    .unwrap()
                    .insert(ctx.task_id().to_string(), Instant::now());
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(Value::Null)
            }
        })
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run_until(stop.clone().cancelled_owned()));
    let stream_for = Duration::from_secs(4);
    let began = Instant::now();
    let producer = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            while began.elapsed() < stream_for {
                for key in ["a", "b"] {
                    ids.push(
                        client
                            .submit(TaskRequest::new("use").concurrency_limit(key, 1))
                            .await
                            .unwrap(),
                    );
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            ids
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let both = client
        .submit(
            TaskRequest::new("use")
                .concurrency_limit("a", 1)
                .concurrency_limit("b", 1),
        )
        .await
        .unwrap();
    let submitted = Instant::now();
    let task = client.wait(&both, Duration::from_secs(30)).await.unwrap();
    assert_eq!(task.state, pb::TaskState::Succeeded as i32);
    let waited = started.lock().unwrap()[&both] - submitted;
    let ids = producer.await.unwrap();
    for id in &ids {
        client.wait(id, Duration::from_secs(60)).await.unwrap();
    }
    stop.cancel();
    running.await.unwrap().unwrap();
    println!(
        "{backend:?}: the two-key task waited {waited:?} amid {} one-key tasks streamed over {stream_for:?}",
        ids.len()
    );
    assert!(
        waited < Duration::from_millis(1500),
        "starved for {waited:?} while one-key tasks kept a or b busy"
    );
}
