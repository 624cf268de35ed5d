//! Bearer tokens against a real `conveyor dev --auth-token`: the client and
//! the worker send `authorization: Bearer <token>`; without it the server
//! answers UNAUTHENTICATED.

use std::time::Duration;

use conveyor_client::{Client, Error, TaskContext, TaskRequest, Worker};
use serde_json::json;

const TOKEN: &str = "s3cret";

mod dev_server;
use dev_server::Server;

async fn start_server(args: &[&str]) -> Server {
    Server::start(args).await
}

#[tokio::test]
async fn the_token_opens_submission_results_and_the_worker_stream() {
    let server = start_server(&["--auth-token", TOKEN]).await;
    let queue = "rust-auth";
    let task = || TaskRequest::new("add").arg(2).arg(3).queue(queue);

    let anonymous = Client::connect(server.endpoint.clone())
        .await
        .expect("connect");
    let refused = anonymous.submit(task()).await.expect_err("no token");
    assert_eq!(
        refused.code(),
        Some(tonic::Code::Unauthenticated),
        "{refused:?}"
    );
    let wrong = anonymous.clone().with_token("wrong").unwrap();
    let refused = wrong.submit(task()).await.expect_err("wrong token");
    assert_eq!(
        refused.code(),
        Some(tonic::Code::Unauthenticated),
        "{refused:?}"
    );

    let add = |ctx: TaskContext| async move {
        let (a, b): (i64, i64) = (ctx.arg(0)?, ctx.arg(1)?);
        Ok(json!(a + b))
    };
    // A worker without the token is refused for good, not retried forever.
    let refused = tokio::time::timeout(
        Duration::from_secs(15),
        Worker::builder(server.endpoint.clone())
            .queues([queue])
            .register("add", add)
            .run_until(std::future::pending()),
    )
    .await
    .expect("a refused worker returns");
    match refused {
        Err(error @ Error::Rpc(_)) => {
            assert_eq!(
                error.code(),
                Some(tonic::Code::Unauthenticated),
                "{error:?}"
            );
        }
        other => panic!("expected UNAUTHENTICATED, got {other:?}"),
    }

    let client = anonymous.with_token(TOKEN).expect("valid token");
    let id = client.submit(task()).await.expect("submit with the token");
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = Worker::builder(server.endpoint.clone())
        .token(TOKEN)
        .queues([queue])
        .concurrency(2)
        .register("add", add)
        .build()
        .expect("worker");
    let running = tokio::spawn(worker.run_until(stop.clone().cancelled_owned()));

    let sum: i64 = client
        .result(&id, Duration::from_secs(15))
        .await
        .expect("the worker ran the task");
    assert_eq!(sum, 5);
    let ids = client.submit_many(vec![task(), task()]).await.unwrap();
    for id in &ids {
        assert_eq!(
            client
                .result::<i64>(id, Duration::from_secs(15))
                .await
                .unwrap(),
            5
        );
        assert_eq!(client.get(id).await.unwrap().id, *id);
    }

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .expect("worker drained in time")
        .expect("worker task")
        .expect("worker ran cleanly");
}
