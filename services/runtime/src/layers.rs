//! Tower layers of the shared server stack that tonic does not provide:
//! load shedding with a precise status, and bearer-token authentication.

use std::collections::HashSet;
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

/// Requires `authorization: Bearer <token>` with one of the configured tokens
/// on every call except health checks and reflection. No tokens: open.
#[derive(Debug, Clone, Default)]
pub struct AuthLayer {
    tokens: Arc<HashSet<String>>,
}

impl AuthLayer {
    /// Accept these tokens; an empty set disables authentication.
    pub fn new(tokens: impl IntoIterator<Item = String>) -> Self {
        Self {
            tokens: Arc::new(
                tokens
                    .into_iter()
                    .filter(|token| !token.is_empty())
                    .collect(),
            ),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

/// Service of [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    tokens: Arc<HashSet<String>>,
}

fn is_public(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
}

impl<S, B> Service<http::Request<B>> for Auth<S>
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
        if !self.tokens.is_empty() && !is_public(request.uri().path()) {
            let presented = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.strip_prefix("Bearer "));
            let accepted = presented.is_some_and(|token| self.tokens.contains(token));
            if !accepted {
                let status = Status::unauthenticated(if presented.is_some() {
                    "bearer token not accepted"
                } else {
                    "missing authorization: Bearer <token>"
                });
                return Box::pin(async move { Ok(status.into_http()) });
            }
        }
        Box::pin(self.inner.call(request))
    }
}
