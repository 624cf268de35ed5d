//! One address for clients, whatever the layout: a process answers every
//! Conveyor service, the roles it serves itself and the others by
//! forwarding each call, unchanged, to the process that serves that role
//! (`--peer ROLE=URL`), as Temporal's frontend does. Calls of any shape
//! pass through (unary, server streams, the worker's bidirectional
//! `Connect`), with their metadata (tokens, deadlines, trace context).
//! Without a peer, a call to a role this process does not serve gets
//! `UNIMPLEMENTED` naming the role and the flag that fixes it.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::{Channel, Endpoint};
use tower::{Service, ServiceExt};

use crate::app::Role;

/// Set on forwarded calls: a process that would forward such a call again
/// answers instead (one hop at most), so that two processes naming each
/// other as the peer of a role neither serves cannot bounce a call forever.
const FORWARDED: &str = "x-conveyor-forwarded";

/// `ROLE=URL`, as given to `--peer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The role served there.
    pub role: Role,
    /// Where: `http://host:port`.
    pub url: String,
}

impl FromStr for Peer {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let usage = "expected ROLE=URL, e.g. results=http://results:50051 (roles: \
                     submission, scheduling, dispatch, results)";
        let (role, url) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?}: {usage}"))?;
        let role = <Role as clap::ValueEnum>::from_str(role.trim(), true)
            .map_err(|_| format!("{role:?} is not a role: {usage}"))?;
        let url = url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "{url:?}: a peer URL starts with http:// or https://, e.g. http://results:50051"
            ));
        }
        Endpoint::from_shared(url.to_string()).map_err(|error| format!("{url:?}: {error}"))?;
        Ok(Self {
            role,
            url: url.to_string(),
        })
    }
}

/// The gRPC service a role serves (health and reflection aside).
pub fn service_name(role: Role) -> &'static str {
    match role {
        Role::Submission => conveyor_submission::SERVICE_NAME,
        Role::Scheduling => conveyor_scheduling::SERVICE_NAME,
        Role::Dispatch => conveyor_dispatch::SERVICE_NAME,
        Role::Results => conveyor_results::SERVICE_NAME,
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Submission => "submission",
        Role::Scheduling => "scheduling",
        Role::Dispatch => "dispatch",
        Role::Results => "results",
    }
}

/// Names the service a [`Stand`] answers for.
pub trait ServiceMarker: Send + Sync + 'static {
    /// The fully qualified gRPC service name.
    const NAME: &'static str;
}

macro_rules! marker {
    ($marker:ident, $name:path) => {
        /// Marks the service of one role.
        #[derive(Debug, Clone, Copy)]
        pub struct $marker;
        impl ServiceMarker for $marker {
            const NAME: &'static str = $name;
        }
    };
}
marker!(SubmissionMarker, conveyor_submission::SERVICE_NAME);
marker!(SchedulingMarker, conveyor_scheduling::SERVICE_NAME);
marker!(DispatchMarker, conveyor_dispatch::SERVICE_NAME);
marker!(ResultsMarker, conveyor_results::SERVICE_NAME);

/// What stands in for a role this process does not serve.
#[derive(Clone)]
enum Target {
    /// Forward to the peer.
    Peer { channel: Channel, url: Arc<str> },
    /// No peer: answer with what to do.
    Absent,
}

/// Stands in for the service `M` of `role`: forwards to its peer, or
/// answers `UNIMPLEMENTED` when there is none.
#[derive(Clone)]
pub struct Stand<M> {
    role: Role,
    target: Target,
    marker: PhantomData<M>,
}

impl<M> Stand<M> {
    /// Forwards every call to `url`; connects on first use, so peers may
    /// start in any order.
    pub fn forward(role: Role, url: &str) -> anyhow::Result<Self> {
        let channel = crate::tls_out::endpoint(url)?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            // Worker streams and long waits pass through: keep them alive
            // across idle NATs and load balancers as the clients do.
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true)
            .connect_lazy();
        Ok(Self {
            role,
            target: Target::Peer {
                channel,
                url: url.into(),
            },
            marker: PhantomData,
        })
    }

    /// Answers every call with what to do instead.
    pub fn absent(role: Role) -> Self {
        Self {
            role,
            target: Target::Absent,
            marker: PhantomData,
        }
    }
}

impl<M: ServiceMarker> NamedService for Stand<M> {
    const NAME: &'static str = M::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<M: Send + 'static> Service<http::Request<Body>> for Stand<M> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the peer channel's, awaited per call below, so that
        // an unreachable peer fails that call with a status rather than
        // stalling the server's router.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let role = role_name(self.role);
        let service = service_name(self.role);
        let (channel, url) = match &self.target {
            Target::Absent => {
                let status = tonic::Status::unimplemented(format!(
                    "this process does not serve the {role} role ({service}): connect to a \
                     process that does, or start this one with --peer {role}=URL (env \
                     CONVEYOR_PEERS) to forward calls there"
                ));
                return Box::pin(async move { Ok(status.into_http()) });
            }
            Target::Peer { channel, url } => (channel.clone(), url.clone()),
        };
        if request.headers().contains_key(FORWARDED) {
            let status = tonic::Status::unavailable(format!(
                "this call for the {role} role was already forwarded once, to this process, \
                 which does not serve it either (a peer must serve its role itself, so that \
                 calls cannot loop): point --peer {role}= at a process that runs `conveyor \
                 serve {role}`"
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        request
            .headers_mut()
            .insert(FORWARDED, http::HeaderValue::from_static("1"));
        Box::pin(async move {
            match channel.oneshot(request).await {
                Ok(response) => Ok(response),
                Err(error) => {
                    tracing::warn!(%url, %error, role, "peer did not answer");
                    Ok(tonic::Status::unavailable(format!(
                        "the {role} role's peer at {url} (--peer {role}=…) did not answer: \
                         {error}; is `conveyor serve {role}` running there?"
                    ))
                    .into_http())
                }
            }
        })
    }
}

/// Refuses two peers for one role. A peer for a role this process serves
/// itself is ignored, so that every process of a deployment can share one
/// `CONVEYOR_PEERS` naming all four roles.
pub fn check_peers(peers: &[Peer]) -> anyhow::Result<()> {
    for (index, peer) in peers.iter().enumerate() {
        if peers[..index].iter().any(|other| other.role == peer.role) {
            let role = role_name(peer.role);
            anyhow::bail!(
                "--peer {role}= is given twice: a role has one peer (put a load balancer or a \
                 Kubernetes Service in front of its replicas and name that)"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_bad_ones_say_what_to_write() {
        let peer: Peer = "results=http://results:50051".parse().unwrap();
        assert_eq!(peer.role, Role::Results);
        assert_eq!(peer.url, "http://results:50051");
        let error = "results".parse::<Peer>().unwrap_err();
        assert!(error.contains("ROLE=URL"), "{error}");
        let error = "resultz=http://x:1".parse::<Peer>().unwrap_err();
        assert!(error.contains("is not a role"), "{error}");
        let error = "results=results:50051".parse::<Peer>().unwrap_err();
        assert!(error.contains("http://"), "{error}");
    }
}
