//! The one way Conveyor serves gRPC: the shared layer stack, health and
//! reflection always mounted, and a graceful drain on shutdown.

use std::time::Duration;

use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::Result;
use crate::auth::{AuthLayer, Authenticator};
use crate::layers::OverloadLayer;
use crate::shutdown::Shutdown;

/// Server settings shared by every role.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Default deadline of a unary call (a client's `grpc-timeout` may be
    /// shorter). Streams are not cut by it.
    pub request_timeout: Duration,
    /// Requests in flight before new ones get `RESOURCE_EXHAUSTED`.
    pub max_in_flight: usize,
    /// WaitTask calls waiting at once before new ones get
    /// `RESOURCE_EXHAUSTED`; apart from `max_in_flight`, so waiters never
    /// starve submissions.
    pub max_waiting: usize,
    /// Bearer tokens accepted as admins of every namespace (`--auth-token`).
    pub auth_tokens: Vec<String>,
    /// Principals and their roles per namespace (`--auth-file`), re-read
    /// when the file changes. No file and no tokens: no authentication.
    pub auth_file: Option<std::path::PathBuf>,
    /// Reflection needs a credential when authentication is on
    /// (`--private-reflection`); health is always open.
    pub private_reflection: bool,
    /// How long in-flight calls may take to finish after shutdown begins.
    pub grace: Duration,
    /// Largest request message accepted, bytes.
    pub max_message_bytes: usize,
    /// TLS on the listener (`--tls-cert`, `--tls-key`, `--tls-client-ca`);
    /// `None`: plaintext.
    pub tls: Option<crate::tls::TlsFiles>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(330),
            max_in_flight: 10_000,
            max_waiting: 50_000,
            auth_tokens: Vec::new(),
            auth_file: None,
            private_reflection: false,
            grace: Duration::from_secs(10),
            max_message_bytes: 16 * 1024 * 1024,
            tls: None,
        }
    }
}

/// Serves `routes` (plus health and reflection) on `listener` until
/// `shutdown`, then reports NOT_SERVING and drains for at most the grace time.
/// `service_names` are the fully qualified names health reports on;
/// `descriptors` the encoded descriptor set reflection serves.
///
/// `forwarded` names the services this process forwards to a peer (`--peer`),
/// with a channel to it: their health is the peer's, checked every
/// [`PEER_PROBE_INTERVAL`], so that `grpc.health.v1` says NOT_SERVING for a
/// service whose peer is down rather than promising what a call would not get.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    service_names: &[&str],
    forwarded: Vec<(String, tonic::transport::Endpoint)>,
    descriptors: &'static [u8],
    config: &ServerConfig,
    shutdown: Shutdown,
) -> Result<()> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    for name in service_names {
        let status = if forwarded.iter().any(|(service, _)| service == name) {
            ServingStatus::Unknown
        } else {
            ServingStatus::Serving
        };
        health_reporter.set_service_status(*name, status).await;
    }
    for (service, endpoint) in forwarded {
        tokio::spawn(probe_peer(
            service,
            endpoint,
            health_reporter.clone(),
            shutdown.clone(),
        ));
    }
    health_reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    // Reflection lists only what this process serves (a `serve dispatch`
    // process does not advertise the submission service).
    let reflection = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(descriptors)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc error details, so grpcurl can decode BadRequest.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection");
        for name in service_names {
            builder = builder.with_service_name(*name);
        }
        builder
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    // Loaded before serving, so that a bad auth file stops the process at
    // start; re-read when it changes.
    let authenticator = Authenticator::load(config.auth_file.as_deref(), &config.auth_tokens)?
        .with_private_reflection(config.private_reflection);
    authenticator.watch(shutdown.clone());
    let layers = tower::ServiceBuilder::new()
        // Counts every answer, shed and refused ones included.
        .layer(crate::metrics::RpcMetricsLayer)
        // Outermost after tonic's own trace span: shed before doing any work,
        // so an overloaded server answers fast and cheaply.
        .layer(OverloadLayer::new(config.max_in_flight, config.max_waiting))
        // Then authenticate: a rejected caller costs no handler time.
        .layer(AuthLayer::new(authenticator));

    let routes = routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);

    // Loaded before serving, so that bad files stop the process at start.
    let tls = config
        .tls
        .as_ref()
        .map(crate::tls::ServerTls::load)
        .transpose()?;
    let drain_signal = shutdown.clone();
    let router = Server::builder()
        // A span per call, named by its path; handlers' events nest inside.
        // Exported as an OpenTelemetry SERVER span (named by the method, as
        // the RPC conventions say) whose parent is the caller's
        // `traceparent`, when traces are on.
        .trace_fn(grpc_span)
        // tonic times only the response future: open streams survive it.
        .timeout(config.request_timeout)
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .layer(layers)
        .add_routes(routes);
    let signal = async move {
        drain_signal.cancelled().await;
    };
    type Serving = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>,
    >;
    let server: Serving = match tls {
        // Handshakes in our own accept loop (Nagle off there too), so that
        // the certificate can be swapped under it.
        Some(tls) => Box::pin(
            router.serve_with_incoming_shutdown(tls.incoming(listener, shutdown.clone()), signal),
        ),
        // Nagle off on every accepted connection: small unary replies would
        // otherwise wait for the peer's delayed ACK (~40 ms). tonic applies
        // `Server::tcp_nodelay` only to listeners it binds itself.
        None => Box::pin(router.serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            signal,
        )),
    };
    let mut server = std::pin::pin!(server);
    tokio::select! {
        result = &mut server => return result.map_err(Into::into),
        _ = shutdown.cancelled() => {}
    }
    for name in service_names {
        health_reporter
            .set_service_status(*name, ServingStatus::NotServing)
            .await;
    }
    health_reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    match tokio::time::timeout(config.grace, server).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => {
            tracing::warn!(grace = ?config.grace, "calls still open after the grace period; closing");
            Ok(())
        }
    }
}

/// The span of one call: `grpc{path=…}` in logs; when traces are exported,
/// a SERVER span named `conveyor.v1.Service/Method` continuing the caller's
/// trace.
fn grpc_span(request: &http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    if !crate::telemetry::tracing_enabled() {
        return tracing::info_span!("grpc", path = %path);
    }
    let method = path.trim_start_matches('/');
    let (service, name) = method.split_once('/').unwrap_or((method, ""));
    let span = tracing::info_span!(
        "grpc",
        path = %path,
        otel.name = %method,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %name,
    );
    crate::telemetry::set_parent_from_headers(&span, request.headers());
    span
}

/// How often a forwarded service's peer is asked for its health while it
/// serves (from 250 ms up to this while it does not).
pub const PEER_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Mirrors the peer's health of `service` into this process's health
/// service until shutdown (which sets every status to NOT_SERVING itself).
async fn probe_peer(
    service: String,
    endpoint: tonic::transport::Endpoint,
    reporter: tonic_health::server::HealthReporter,
    shutdown: Shutdown,
) {
    use tonic_health::pb::health_check_response::ServingStatus as Peer;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let endpoint = endpoint.connect_timeout(PEER_PROBE_INTERVAL / 2);
    let mut channel = endpoint.connect_lazy();
    let mut last = None;
    // While the peer is not serving (not up yet, say), ask again sooner.
    let mut retry = Duration::from_millis(250);
    loop {
        let mut client = HealthClient::new(channel.clone());
        let request = HealthCheckRequest {
            service: service.clone(),
        };
        let answer = tokio::time::timeout(PEER_PROBE_INTERVAL, client.check(request)).await;
        let serving = matches!(
            &answer,
            Ok(Ok(response)) if response.get_ref().status == Peer::Serving as i32
        );
        if !serving {
            // A new connection for the next probe: nothing of a failed one
            // (a peer that was not up yet) lingers.
            channel = endpoint.connect_lazy();
        }
        if shutdown.is_cancelled() {
            return;
        }
        if last != Some(serving) {
            if serving {
                reporter
                    .set_service_status(&service, ServingStatus::Serving)
                    .await;
                tracing::info!(%service, "the peer serving it answers: forwarding");
            } else {
                reporter
                    .set_service_status(&service, ServingStatus::NotServing)
                    .await;
                let why = match &answer {
                    Err(_) => "no answer in time".to_string(),
                    Ok(Err(status)) => status.message().to_string(),
                    Ok(Ok(response)) => format!("it reports status {}", response.get_ref().status),
                };
                tracing::warn!(%service, %why, "the peer serving it is not serving; health says NOT_SERVING until it is");
            }
            last = Some(serving);
        }
        let pause = if serving {
            retry = Duration::from_millis(250);
            PEER_PROBE_INTERVAL
        } else {
            let pause = retry;
            retry = (retry * 2).min(PEER_PROBE_INTERVAL);
            pause
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
