//! The connection to Redis behind the shared store (`store.backend = "redis"`): one server, or a Redis Cluster
//! (`store.redis_cluster = true`), over TCP (`redis://`) or TLS (`rediss://`, rustls: no OpenSSL).
//!
//! - [`RedisConn`] is what `store::redis` sends commands on: an enum over the crate's `ConnectionManager` (one
//!   server; reconnects with backoff) and its cluster connection (follows `MOVED`/`ASK`, refreshes the slot map,
//!   reconnects per node). Both are cheap to clone and multiplex one socket per node.
//! - Cluster rules the store keeps (Redis Cluster specification, "Keys distribution model", "hash tags"): every
//!   Lua script and every multi-key command names keys of one hash slot (one `{…}` tag); a listing
//!   ([`RedisConn::scan`]) visits every master, since `SCAN` only sees the keys of the node it runs on.
//! - Pub/sub: classic `PUBLISH` is forwarded over the cluster bus to every node, so a subscriber on any one node
//!   hears every replica's events. [`Subscriber`] connects to the configured nodes in turn (the next one when the
//!   current one is gone).
//! - TLS (RFC 8446 via rustls): the server's certificate must chain to `store.redis_ca_file` when set, else to the
//!   public web PKI roots (`webpki-roots`, the roots the IdP client uses too). `store.redis_client_cert_file` and
//!   `store.redis_client_key_file` present a client certificate (mutual TLS). The host name of the URL is checked.
//! - Credentials: `user:password@` in the URL (Redis 6 ACL user, or `:password@` for `requirepass`). No error this
//!   module returns contains the password: the URL is redacted and every message is scrubbed of it.

use std::path::Path;
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClientBuilder;
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use ::redis::{
    Client, ClientTlsConfig, Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, TlsCertificates, Value,
};

use crate::config::RedisConfig;

/// How long connecting to a node, or one answer, may take.
pub const IO_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the store could not connect to Redis at start (the orchestrator restarts the proxy). Messages name the
/// config key to look at and never contain the password.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{url}: {reason}")]
    Url { url: String, reason: String },
    #[error("{key} {path}: {reason}")]
    File { key: &'static str, path: String, reason: String },
    #[error("{url}: cannot connect: {reason}{hint}")]
    Connect { url: String, reason: String, hint: &'static str },
}

/// A connection to one Redis server or to a Redis Cluster; commands are sent through [`ConnectionLike`].
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Opens pub/sub connections for the revocation listener: to the one server, or to the cluster's configured nodes
/// in turn.
pub struct Subscriber {
    clients: Vec<Client>,
    next: usize,
}

/// `text` with every occurrence of the URL's password replaced by `***`.
fn scrub(text: &str, passwords: &[String]) -> String {
    passwords.iter().filter(|p| !p.is_empty()).fold(text.to_owned(), |t, p| t.replace(p.as_str(), "***"))
}

/// The passwords in the nodes' URLs (percent-decoded as Redis sees them, and as written).
fn passwords(nodes: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for node in nodes {
        if let Ok(url) = url::Url::parse(node) {
            if let Some(p) = url.password() {
                out.push(p.to_owned());
                if let Ok(decoded) = percent_encoding::percent_decode_str(p).decode_utf8() {
                    out.push(decoded.into_owned());
                }
            }
        }
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.len()));
    out
}

fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|e| ConnectError::File { key, path: path.display().to_string(), reason: e.to_string() })
}

/// The TLS material of `rediss://` nodes: the private CA and the client certificate, read from their files.
fn tls_certificates(config: &RedisConfig) -> Result<TlsCertificates, ConnectError> {
    let root_cert = match &config.ca_file {
        Some(path) => {
            let pem = read_file("store.redis_ca_file", path)?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(ConnectError::File {
                    key: "store.redis_ca_file",
                    path: path.display().to_string(),
                    reason: "holds no PEM certificate".to_owned(),
                });
            }
            Some(pem)
        }
        None => None,
    };
    let client_tls = match (&config.client_cert_file, &config.client_key_file) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read_file("store.redis_client_cert_file", cert)?,
            client_key: read_file("store.redis_client_key_file", key)?,
        }),
        _ => None,
    };
    Ok(TlsCertificates { client_tls, root_cert })
}

impl RedisConn {
    /// Connects to the configured server or cluster (failing when it does not answer, or refuses the TLS
    /// handshake or the credentials), and returns the subscriber for the revocation listener.
    pub async fn connect(config: &RedisConfig) -> Result<(Self, Subscriber), ConnectError> {
        let nodes = config.url.nodes();
        let secrets = passwords(&nodes);
        let shown = config.url.redacted();
        let url_error =
            |e: RedisError| ConnectError::Url { url: shown.clone(), reason: scrub(&e.to_string(), &secrets) };
        let tls = nodes.iter().any(|n| n.starts_with("rediss://"));
        let certs = if tls { Some(tls_certificates(config)?) } else { None };
        let connect_error = |e: RedisError| {
            let reason = scrub(&e.to_string(), &secrets);
            let hint = if tls && reason.to_ascii_lowercase().contains("certificate") {
                " (the server's certificate must chain to store.redis_ca_file, or to a public CA when it is unset)"
            } else if ["wrongpass", "noauth", "noperm", "authentication"]
                .iter()
                .any(|w| reason.to_ascii_lowercase().contains(w))
            {
                " (check the user:password in store.redis_url)"
            } else {
                ""
            };
            ConnectError::Connect { url: shown.clone(), reason, hint }
        };
        let client_of = |node: &str| -> Result<Client, ConnectError> {
            match &certs {
                Some(certs) => Client::build_with_tls(node, certs.clone()),
                None => Client::open(node),
            }
            .map_err(url_error)
        };
        let clients = nodes.iter().map(|n| client_of(n)).collect::<Result<Vec<_>, _>>()?;
        let Some(first) = clients.first().cloned() else {
            return Err(ConnectError::Url { url: shown, reason: "names no node".to_owned() });
        };
        let conn = if config.cluster {
            let infos =
                nodes.iter().map(|n| n.into_connection_info()).collect::<Result<Vec<_>, _>>().map_err(url_error)?;
            let mut builder = ClusterClientBuilder::new(infos)
                .connection_timeout(IO_TIMEOUT)
                .response_timeout(IO_TIMEOUT)
                .retries(2)
                .max_retry_wait(500);
            if let Some(certs) = certs.clone() {
                builder = builder.certs(certs);
            }
            let client = builder.build().map_err(url_error)?;
            let mut conn = client.get_async_connection().await.map_err(connect_error)?;
            // The cluster client connects lazily to some nodes: one command proves the credentials and TLS work.
            ::redis::cmd("PING").query_async::<Value>(&mut conn).await.map_err(connect_error)?;
            Self::Cluster(conn)
        } else {
            let manager = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(IO_TIMEOUT))
                .set_response_timeout(Some(IO_TIMEOUT))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(2));
            Self::Single(ConnectionManager::new_with_config(first, manager).await.map_err(connect_error)?)
        };
        Ok((conn, Subscriber { clients, next: 0 }))
    }

    /// The keys matching `pattern` on every master, by `SCAN` (never `KEYS`: it would block Redis on a large
    /// store). Not a consistent cut: keys written meanwhile may or may not be listed.
    pub async fn scan(&self, pattern: &str) -> Result<Vec<String>, RedisError> {
        let mut keys = Vec::new();
        self.scan_each(pattern, |batch| keys.extend(batch)).await?;
        Ok(keys)
    }

    /// [`RedisConn::scan`], handing each batch to `on_batch` instead of collecting them (counting a large store).
    pub async fn scan_each(&self, pattern: &str, mut on_batch: impl FnMut(Vec<String>)) -> Result<(), RedisError> {
        match self {
            Self::Single(conn) => {
                scan_node(pattern, &mut on_batch, |cmd| {
                    let mut conn = conn.clone();
                    async move { cmd.query_async::<(u64, Vec<String>)>(&mut conn).await }
                })
                .await
            }
            Self::Cluster(conn) => {
                for (host, port) in self.masters().await? {
                    scan_node(pattern, &mut on_batch, |cmd| {
                        let mut conn = conn.clone();
                        let routing =
                            RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host: host.clone(), port });
                        async move {
                            let value = conn.route_command(cmd, routing).await?;
                            ::redis::from_redis_value::<(u64, Vec<String>)>(value).map_err(RedisError::from)
                        }
                    })
                    .await?;
                }
                Ok(())
            }
        }
    }

    /// The masters of the cluster (host, port), from `CLUSTER SLOTS`; one server: empty.
    pub async fn masters(&self) -> Result<Vec<(String, u16)>, RedisError> {
        let Self::Cluster(conn) = self else { return Ok(Vec::new()) };
        let slots: Vec<Value> = ::redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut conn.clone()).await?;
        Ok(masters_of(&slots))
    }
}

/// The first node of every slot range of a `CLUSTER SLOTS` answer (`[start, end, [host, port, id], replicas…]`),
/// each once.
fn masters_of(slots: &[Value]) -> Vec<(String, u16)> {
    let mut masters: Vec<(String, u16)> = Vec::new();
    for range in slots {
        let Value::Array(fields) = range else { continue };
        let Some(Value::Array(master)) = fields.get(2) else { continue };
        let host = match master.first() {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::SimpleString(s)) => s.clone(),
            _ => continue,
        };
        let Some(Value::Int(port)) = master.get(1) else { continue };
        let Ok(port) = u16::try_from(*port) else { continue };
        if !masters.iter().any(|(h, p)| *h == host && *p == port) {
            masters.push((host, port));
        }
    }
    masters
}

/// `SCAN` one node to the end, `send` carrying each step's command.
async fn scan_node<F, Fut>(pattern: &str, on_batch: &mut impl FnMut(Vec<String>), mut send: F) -> Result<(), RedisError>
where
    F: FnMut(Cmd) -> Fut,
    Fut: std::future::Future<Output = Result<(u64, Vec<String>), RedisError>>,
{
    let mut cursor: u64 = 0;
    // Bounded: SCAN ends in at most as many steps as the node has keys / COUNT, plus a margin.
    for _ in 0..10_000_000u32 {
        let mut cmd = ::redis::cmd("SCAN");
        cmd.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000);
        let (next, batch) = send(cmd).await?;
        on_batch(batch);
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
    Ok(())
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

impl Subscriber {
    /// A pub/sub connection to the next configured node (the first one first).
    pub async fn pubsub(&mut self) -> Result<::redis::aio::PubSub, RedisError> {
        let Some(client) = self.clients.get(self.next % self.clients.len().max(1)) else {
            return Err(RedisError::from((::redis::ErrorKind::InvalidClientConfig, "no Redis node configured")));
        };
        self.next = self.next.wrapping_add(1);
        match tokio::time::timeout(IO_TIMEOUT * 2, client.get_async_pubsub()).await {
            Ok(result) => result,
            Err(_) => Err(RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "pub/sub connect"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_list_splits_on_commas_and_the_passwords_are_scrubbed() {
        let url = crate::config::RedisUrl("redis://u:s%40cret@a:1, redis://u:s%40cret@b:2,".to_owned());
        let list = url.nodes();
        assert_eq!(list, ["redis://u:s%40cret@a:1", "redis://u:s%40cret@b:2"]);
        let secrets = passwords(&list);
        assert_eq!(scrub("auth s@cret failed for s%40cret", &secrets), "auth *** failed for ***");
        assert_eq!(scrub("nothing to hide", &passwords(&["redis://a:1"])), "nothing to hide");
    }

    #[test]
    fn the_masters_are_the_first_node_of_each_slot_range_once() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![Value::BulkString(host.as_bytes().to_vec()), Value::Int(port), Value::Nil])
        };
        let range =
            |a: i64, b: i64, nodes: Vec<Value>| Value::Array([vec![Value::Int(a), Value::Int(b)], nodes].concat());
        let slots = [
            range(0, 100, vec![node("10.0.0.1", 7000), node("10.0.0.9", 7009)]),
            range(101, 200, vec![node("10.0.0.2", 7001)]),
            range(201, 300, vec![node("10.0.0.1", 7000)]),
            Value::Nil,
        ];
        assert_eq!(masters_of(&slots), [("10.0.0.1".to_owned(), 7000), ("10.0.0.2".to_owned(), 7001)]);
    }
}
