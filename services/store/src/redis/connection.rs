//! The store's command connection: one Redis (a reconnecting
//! `ConnectionManager`), or a Redis Cluster (`redis+cluster://h1:p1,h2:p2`).
//! Every script call carries its partition's routing key (KEYS[1]), whose
//! hash tag all its keys share, so the cluster client sends it to the shard
//! that holds them. Pipelines are split into single commands on a cluster:
//! the ones the store sends read keys of several partitions (slots), which
//! one cluster pipeline may not.

use std::time::Duration;

use futures::future::join_all;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// `redis+cluster://` (or `rediss+cluster://`) URLs name a cluster.
pub fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = match scheme {
        "redis+cluster" => "redis",
        "rediss+cluster" => "rediss",
        _ => return None,
    };
    // Credentials, if any, apply to every node: `redis+cluster://user:pw@h1:p1,h2:p2`.
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (format!("{auth}@"), hosts),
        None => (String::new(), rest),
    };
    let hosts = hosts.trim_end_matches('/');
    Some(
        hosts
            .split(',')
            .filter(|host| !host.is_empty())
            .map(|host| format!("{scheme}://{auth}{host}"))
            .collect(),
    )
}

/// A client for one node, Nagle off: every store call is a small request
/// awaiting its reply. A `rediss://` URL speaks TLS, trusting `tls.ca`
/// besides the system's roots and presenting `tls.cert` when given.
pub(crate) fn client(url: &str, tls: &RedisTls) -> redis::RedisResult<redis::Client> {
    let info = redis::IntoConnectionInfo::into_connection_info(url)?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    match tls.certificates(url)? {
        Some(certificates) => redis::Client::build_with_tls(info, certificates),
        None => redis::Client::open(info),
    }
}

/// TLS settings for `rediss://` URLs (PEM files); all unset: the system's
/// roots, no client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// CA certificates to trust, besides the system's roots.
    pub ca: Option<std::path::PathBuf>,
    /// Client certificate, for a Redis started with `tls-auth-clients yes`.
    pub cert: Option<std::path::PathBuf>,
    /// The client certificate's private key.
    pub key: Option<std::path::PathBuf>,
}

impl RedisTls {
    /// From `CONVEYOR_REDIS_TLS_CA`, `CONVEYOR_REDIS_TLS_CERT` and
    /// `CONVEYOR_REDIS_TLS_KEY` (empty: unset).
    pub fn from_env() -> Self {
        let path = |name: &str| {
            std::env::var_os(name)
                .filter(|value| !value.is_empty())
                .map(std::path::PathBuf::from)
        };
        Self {
            ca: path("CONVEYOR_REDIS_TLS_CA"),
            cert: path("CONVEYOR_REDIS_TLS_CERT"),
            key: path("CONVEYOR_REDIS_TLS_KEY"),
        }
    }

    /// Whether any setting is given.
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// The files' contents for the redis client; `None` when nothing is set
    /// (a `rediss://` URL then trusts the system's roots). Errors say which
    /// file and what to do.
    pub(crate) fn certificates(
        &self,
        url: &str,
    ) -> redis::RedisResult<Option<redis::TlsCertificates>> {
        let invalid = |message: String| {
            redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "redis tls", message))
        };
        if !self.is_set() {
            return Ok(None);
        }
        if !url.starts_with("rediss") {
            return Err(invalid(format!(
                "Redis TLS settings are given but {url} is not a TLS URL: write rediss:// \
                 (or rediss+cluster://)"
            )));
        }
        // The redis client builds its rustls configuration with the
        // process's default provider: ring, as everywhere in Conveyor.
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let read = |path: &std::path::PathBuf, what: &str| {
            std::fs::read(path)
                .map_err(|error| invalid(format!("{what} {}: {error}", path.display())))
        };
        let root_cert = self
            .ca
            .as_ref()
            .map(|path| read(path, "--redis-tls-ca"))
            .transpose()?;
        let client_tls = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read(cert, "--redis-tls-cert")?,
                client_key: read(key, "--redis-tls-key")?,
            }),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "--redis-tls-cert and --redis-tls-key go together: give both, or neither"
                        .to_string(),
                ));
            }
        };
        Ok(Some(redis::TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

/// A command connection to one Redis or a cluster; also what tests and
/// tools use to read the store's Redis beside it.
#[derive(Clone)]
pub enum Connection {
    /// One Redis.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl Connection {
    /// Connects to a cluster through any of `nodes` (the client discovers
    /// the others and follows failovers and slot moves).
    /// Connects to `url`: a `redis://` URL, or `redis+cluster://h:p,h:p`
    /// (`rediss://` for TLS, with the `CONVEYOR_REDIS_TLS_*` settings).
    pub async fn open(url: &str, timeout: Duration) -> redis::RedisResult<Self> {
        Self::open_with(url, timeout, &RedisTls::from_env()).await
    }

    /// [`open`](Self::open) with TLS settings given.
    pub async fn open_with(
        url: &str,
        timeout: Duration,
        tls: &RedisTls,
    ) -> redis::RedisResult<Self> {
        match cluster_nodes(url) {
            Some(nodes) => Self::cluster(&nodes, timeout, tls).await,
            None => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout));
                Ok(Self::Single(
                    ConnectionManager::new_with_config(client(url, tls)?, config).await?,
                ))
            }
        }
    }

    pub(crate) async fn cluster(
        nodes: &[String],
        timeout: Duration,
        tls: &RedisTls,
    ) -> redis::RedisResult<Self> {
        let mut builder =
            redis::cluster::ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                .connection_timeout(timeout)
                .response_timeout(timeout);
        if let Some(certificates) = tls.certificates(nodes.first().map_or("", String::as_str))? {
            builder = builder.certs(certificates);
        }
        Ok(Self::Cluster(
            builder.build()?.get_async_connection().await?,
        ))
    }

    /// Whether this is a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => {
                let connection = connection.clone();
                Box::pin(async move {
                    // Each command to its own slot's shard, all at once.
                    let replies = join_all(pipeline.cmd_iter().map(|cmd| {
                        let mut connection = connection.clone();
                        async move { connection.req_packed_command(cmd).await }
                    }))
                    .await;
                    replies
                        .into_iter()
                        .skip(offset)
                        .take(count)
                        .collect::<redis::RedisResult<Vec<Value>>>()
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(_) => 0,
        }
    }
}

/// The hash tags of `partitions` partitions under `prefix`: `cv:N` on one
/// Redis. On a cluster, `cv:N~K` with the first K that puts partition N in
/// the N-th of `partitions` equal ranges of the 16,384 slots: CRC16 scatters
/// a dozen plain tags unevenly (12 over 3 shards gave 2, 2 and 8), while
/// equal ranges give every evenly sliced cluster an even share.
pub(crate) fn partition_tags(prefix: &str, partitions: u16, cluster: bool) -> Vec<String> {
    const SLOTS: u32 = 16_384;
    let count = u32::from(partitions.max(1));
    (0..count)
        .map(|partition| {
            if !cluster {
                return format!("{prefix}{partition}");
            }
            let (low, high) = (partition * SLOTS / count, (partition + 1) * SLOTS / count);
            (0u32..)
                .map(|k| format!("{prefix}{partition}~{k}"))
                .find(|tag| (low..high).contains(&slot(tag)))
                .expect("some suffix lands in every slot range")
        })
        .collect()
}

/// Redis Cluster's slot of a hash tag.
pub(crate) fn slot(tag: &str) -> u32 {
    u32::from(crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes())) % 16_384
}

#[cfg(test)]
mod tests {
    use super::{cluster_nodes, partition_tags, slot};

    #[test]
    fn cluster_partitions_cover_the_slots_evenly() {
        assert_eq!(partition_tags("cv:", 2, false), vec!["cv:0", "cv:1"]);
        // Redis' own answers to CLUSTER KEYSLOT "{cv:0}" and "{w1c:0}".
        assert_eq!(slot("cv:0"), 13_483);
        assert_eq!(slot("w1c:0"), 15_929);
        let tags = partition_tags("cv:", 12, true);
        for (partition, tag) in tags.iter().enumerate() {
            let partition = partition as u32;
            assert!(
                (partition * 16_384 / 12..(partition + 1) * 16_384 / 12).contains(&slot(tag)),
                "{tag}"
            );
        }
    }

    #[test]
    fn cluster_urls_name_every_node() {
        assert_eq!(
            cluster_nodes("redis+cluster://127.0.0.1:7000,127.0.0.1:7001"),
            Some(vec![
                "redis://127.0.0.1:7000".to_string(),
                "redis://127.0.0.1:7001".to_string()
            ])
        );
        assert_eq!(
            cluster_nodes("rediss+cluster://u:p@a:1,b:2/"),
            Some(vec![
                "rediss://u:p@a:1".to_string(),
                "rediss://u:p@b:2".to_string()
            ])
        );
        assert_eq!(cluster_nodes("redis://127.0.0.1:6379"), None);
    }
}
