//! Example producer for the cross-language tests: submits `add`, `xsum`,
//! `lang` and `fail` to `CONVEYOR_QUEUE` at `CONVEYOR_ADDR`, awaits them and
//! prints one JSON line with what came back.

use std::time::Duration;

use conveyor_client::{Client, Error, TaskRequest};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(20);

#[tokio::main]
async fn main() {
    match run().await {
        Ok(line) => println!("{line}"),
        Err(error) => {
            eprintln!("producer failed: {error}");
            std::process::exit(1);
        }
    }
}

async fn run() -> Result<Value, Error> {
    let addr =
        std::env::var("CONVEYOR_ADDR").unwrap_or_else(|_| "http://127.0.0.1:50051".to_owned());
    let queue = std::env::var("CONVEYOR_QUEUE").unwrap_or_else(|_| "default".to_owned());
    let client = Client::connect(addr).await?;
    let add = client
        .submit(TaskRequest::new("add").arg(2).arg(3).queue(&queue))
        .await?;
    let xsum = client
        .submit(
            TaskRequest::new("xsum")
                .arg(json!([1, 2, 3.5]))
                .queue(&queue),
        )
        .await?;
    let lang = client
        .submit(TaskRequest::new("lang").queue(&queue))
        .await?;
    let fail = client
        .submit(TaskRequest::new("fail").arg("boom from rust").queue(&queue))
        .await?;
    let add: Value = client.result(&add, TIMEOUT).await?;
    let xsum: Value = client.result(&xsum, TIMEOUT).await?;
    let lang: Value = client.result(&lang, TIMEOUT).await?;
    let fail = match client.result::<Value>(&fail, TIMEOUT).await {
        Err(Error::TaskFailed {
            error_type,
            message,
            traceback,
        }) => {
            json!({"type": error_type, "message": message, "has_traceback": !traceback.is_empty()})
        }
        other => return Err(Error::Protocol(format!("fail did not fail: {other:?}"))),
    };
    Ok(json!({"producer": "rust", "add": add, "xsum": xsum, "lang": lang, "fail": fail}))
}
