//! In-process servers on `127.0.0.1:0` listeners bound before start: no port
//! races, no sleeps.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use conveyor::app::{self, AppConfig, Role};
use conveyor_api::pb::{
    dispatch_service_client::DispatchServiceClient, results_service_client::ResultsServiceClient,
    submission_service_client::SubmissionServiceClient,
};
use conveyor_store::{RedisStore, Store, conformance};

/// Which store a cluster runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded store.
    Memory,
    /// The test Redis (`CONVEYOR_TEST_REDIS`), with a key prefix per cluster.
    Redis,
}

/// Running servers plus a client channel.
pub struct TestCluster {
    /// Address the server listens on.
    pub addr: SocketAddr,
    /// A channel to it.
    pub channel: Channel,
    /// The store (to check that bad input changed nothing).
    pub store: Arc<dyn Store>,
    shutdown: CancellationToken,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestCluster {
    /// Test defaults: all roles, heartbeats every 200 ms, leases of 1 s.
    pub fn test_config() -> AppConfig {
        let mut config = AppConfig::default();
        config.dispatch.heartbeat_interval = Duration::from_millis(200);
        config.dispatch.lease_ttl = Duration::from_secs(1);
        config.dispatch.drain_grace = Duration::from_secs(2);
        // Tests watch every state, RUNNING included.
        config.dispatch.track_started = true;
        config.server.grace = Duration::from_secs(3);
        config.scheduler.promote_interval = Duration::from_millis(20);
        config.scheduler.reap_interval = Duration::from_millis(50);
        config
    }

    /// A store for `backend`, or `None` when Redis tests are skipped.
    pub async fn store(backend: Backend) -> Option<Arc<dyn Store>> {
        match backend {
            Backend::Memory => Some(conformance::memory_store().await),
            Backend::Redis => {
                let url = conformance::test_redis_url()?;
                let store = RedisStore::connect(conformance::test_redis_config(&url))
                    .await
                    .expect("connect to the test redis");
                Some(Arc::new(store))
            }
        }
    }

    /// All roles with test defaults; `None` when Redis tests are skipped.
    pub async fn start(backend: Backend) -> Option<Self> {
        Self::start_with(backend, Self::test_config()).await
    }

    /// All roles with `config`.
    pub async fn start_with(backend: Backend, config: AppConfig) -> Option<Self> {
        let store = Self::store(backend).await?;
        Some(Self::start_on(store, config).await)
    }

    /// The roles of `config` over an existing store (several clusters may
    /// share one store, as replicas share Redis).
    pub async fn start_on(store: Arc<dyn Store>, config: AppConfig) -> Self {
        crate::init_logs();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let server = app::start(&config, store.clone(), listener, shutdown.clone());
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect to the test server");
        Self {
            addr,
            channel,
            store,
            shutdown,
            server: Some(server),
        }
    }

    /// Only `roles`, with test defaults.
    pub async fn start_roles(store: Arc<dyn Store>, roles: &[Role]) -> Self {
        let config = AppConfig {
            roles: roles.to_vec(),
            ..Self::test_config()
        };
        Self::start_on(store, config).await
    }

    /// A front end (submission, results, scheduling) and `dispatchers`
    /// dispatch replicas, separate servers on one store.
    pub async fn split(store: Arc<dyn Store>, dispatchers: usize) -> (Self, Vec<Self>) {
        let front = Self::start_roles(
            store.clone(),
            &[Role::Submission, Role::Results, Role::Scheduling],
        )
        .await;
        let mut replicas = Vec::with_capacity(dispatchers);
        for _ in 0..dispatchers {
            replicas.push(Self::start_roles(store.clone(), &[Role::Dispatch]).await);
        }
        (front, replicas)
    }

    /// A submission client.
    pub fn submission(&self) -> SubmissionServiceClient<Channel> {
        SubmissionServiceClient::new(self.channel.clone())
    }

    /// A results client.
    pub fn results(&self) -> ResultsServiceClient<Channel> {
        ResultsServiceClient::new(self.channel.clone())
    }

    /// A dispatch client.
    pub fn dispatch(&self) -> DispatchServiceClient<Channel> {
        DispatchServiceClient::new(self.channel.clone())
    }

    /// Shuts down and waits for the drain.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        match self.server.take() {
            Some(server) => server.await?,
            None => Ok(()),
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Expands each listed async test `fn name(backend: Backend)` into a memory
/// and a Redis `#[tokio::test]`.
#[macro_export]
macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case($crate::Backend::Memory).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case($crate::Backend::Redis).await;
                }
            )*
        }
    };
}
