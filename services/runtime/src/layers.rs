//! Tower layers of the shared server stack that tonic does not provide:
//! load shedding with a precise status (authentication is in `auth`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::Semaphore;
use tonic::Status;
use tower::{Layer, Service};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Rejects requests beyond `limit` in flight with `RESOURCE_EXHAUSTED` at
/// once, instead of queueing them (a queue would only add latency under
/// overload). A streaming call counts until its response starts, not for the
/// stream's life, so worker sessions never exhaust it. Long polls (WaitTask,
/// which may wait minutes) count against a budget of their own, so that
/// thousands of waiters never starve SubmitTask and the other short calls.
#[derive(Debug, Clone)]
pub struct OverloadLayer {
    permits: Arc<Semaphore>,
    waits: Arc<Semaphore>,
}

/// Methods that wait for something to happen rather than do work.
fn is_long_poll(path: &str) -> bool {
    path == "/conveyor.v1.ResultsService/WaitTask"
}

impl OverloadLayer {
    /// At most `limit` short requests and `wait_limit` long polls in flight.
    pub fn new(limit: usize, wait_limit: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            waits: Arc::new(Semaphore::new(wait_limit)),
        }
    }
}

impl<S> Layer<S> for OverloadLayer {
    type Service = Overload<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Overload {
            inner,
            permits: self.permits.clone(),
            waits: self.waits.clone(),
        }
    }
}

/// Service of [`OverloadLayer`].
#[derive(Debug, Clone)]
pub struct Overload<S> {
    inner: S,
    permits: Arc<Semaphore>,
    waits: Arc<Semaphore>,
}

impl<S, B> Service<http::Request<B>> for Overload<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let long_poll = is_long_poll(request.uri().path());
        let budget = if long_poll {
            &self.waits
        } else {
            &self.permits
        };
        let Ok(permit) = budget.clone().try_acquire_owned() else {
            let status = Status::resource_exhausted(if long_poll {
                "too many WaitTask calls waiting on this server; retry with backoff, \
                 or use WatchTask"
            } else {
                "server overloaded: too many requests in flight; retry with backoff"
            });
            return Box::pin(async move { Ok(status.into_http()) });
        };
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await;
            drop(permit);
            response
        })
    }
}
