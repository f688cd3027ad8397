//! The `etcd` registry of micro, on the `etcd-client` crate.
//!
//! Records use go-micro's layout so services of both frameworks sharing
//! one etcd see each other: each node is the key
//! `/micro/registry/<service>/<node-id>` (a `/` in either part becomes
//! `-`), whose value is go-micro's JSON of the service holding just that
//! node. A registration is bound to a lease of the TTL; registering again
//! keeps the lease alive (or, if etcd lost it — after a restart with fresh
//! state — takes a new lease and writes the record again). Watches turn
//! etcd events into registry events (`create`, `update`, `delete`).

/// How often a connection to etcd with a watch on it is pinged, and how
/// long a ping may go unanswered before the connection is given up. Not
/// more often: etcd answers pings closer than its `--grpc-keepalive-min-time`
/// (5 s by default) with GOAWAY "too_many_pings", and pings on an idle
/// connection (no stream open) likewise, so idle connections are not pinged.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions as EtcdWatchOptions};
use micro_core::catalog::NewRegistry;
use micro_core::{
    async_trait, Catalog, Error, Event, EventKind, RegisterOptions, Registry, RegistryOptions, Result, Service,
    WatchOptions, Watcher,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

const ID: &str = "go.micro.registry.etcd";
/// go-micro's key prefix.
pub const PREFIX: &str = "/micro/registry/";

/// Adds the `etcd` registry to a catalog.
pub fn register(catalog: &mut Catalog) {
    catalog.registries.insert(
        "etcd",
        Arc::new(|o: RegistryOptions| Ok(Arc::new(EtcdRegistry::new(o)) as Arc<dyn Registry>)) as NewRegistry,
    );
}

/// The key of a node, as go-micro builds it.
pub fn node_key(service: &str, node_id: &str) -> String {
    format!("{PREFIX}{}/{}", service.replace('/', "-"), node_id.replace('/', "-"))
}

fn service_prefix(service: &str) -> String {
    format!("{PREFIX}{}/", service.replace('/', "-"))
}

fn err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::internal(ID, format!("etcd {what}: {e}"))
}

/// An error from talking to etcd, said plainly: an unreachable server is
/// "cannot reach etcd at ADDR: connection refused", not a transport error's
/// debug chain.
fn etcd_err(endpoints: &[String], what: &str, e: etcd_client::Error) -> Error {
    let mut text = e.to_string();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(c) = cause {
        text = c.to_string();
        cause = c.source();
    }
    let lower = text.to_ascii_lowercase();
    let why = if lower.contains("connection refused") {
        Some("connection refused")
    } else if lower.contains("timed out") || lower.contains("deadline") {
        Some("no answer in time")
    } else if lower.contains("unavailable")
        || lower.contains("error trying to connect")
        || lower.contains("transport error")
    {
        Some("unavailable")
    } else {
        None
    };
    match why {
        Some(why) => Error::unavailable(ID, format!("cannot reach etcd at {}: {why}", endpoints.join(","))),
        None => err(what, text),
    }
}

struct Lease {
    id: i64,
    record: String,
}

/// The etcd registry. Connects on first use, so a service can be built
/// before etcd is reachable.
pub struct EtcdRegistry {
    endpoints: Vec<String>,
    timeout: Duration,
    client: Mutex<Option<Client>>,
    leases: Mutex<HashMap<String, Lease>>,
}

impl EtcdRegistry {
    /// A registry for `opts.addresses` (default `127.0.0.1:2379`).
    pub fn new(opts: RegistryOptions) -> Self {
        let endpoints = if opts.addresses.is_empty() { vec!["127.0.0.1:2379".to_string()] } else { opts.addresses };
        EtcdRegistry {
            endpoints,
            timeout: opts.timeout.unwrap_or(Duration::from_secs(5)),
            client: Mutex::new(None),
            leases: Mutex::new(HashMap::new()),
        }
    }

    async fn client(&self) -> Result<Client> {
        let mut c = self.client.lock().await;
        if let Some(c) = &*c {
            return Ok(c.clone());
        }
        // HTTP/2 pings while a watch is open: a partition from etcd is
        // noticed within 15 s (the watch ends and is retried, the cache goes
        // stale) instead of when TCP gives up, many minutes later.
        let opts = ConnectOptions::new()
            .with_connect_timeout(self.timeout)
            .with_timeout(self.timeout)
            .with_keep_alive(KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT)
            .with_keep_alive_while_idle(false);
        let client =
            Client::connect(&self.endpoints, Some(opts)).await.map_err(|e| etcd_err(&self.endpoints, "connect", e))?;
        *c = Some(client.clone());
        Ok(client)
    }

    async fn put_with_new_lease(&self, client: &mut Client, key: &str, record: String, ttl: Duration) -> Result<()> {
        let lease = if ttl.is_zero() {
            None
        } else {
            let secs = ttl.as_secs().max(1) as i64;
            Some(client.lease_grant(secs, None).await.map_err(|e| etcd_err(&self.endpoints, "lease grant", e))?.id())
        };
        let opts = lease.map(|id| PutOptions::new().with_lease(id));
        client.put(key, record.clone(), opts).await.map_err(|e| etcd_err(&self.endpoints, "put", e))?;
        if let Some(id) = lease {
            self.leases.lock().await.insert(key.to_string(), Lease { id, record });
        }
        Ok(())
    }
}

fn decode(value: &[u8]) -> Option<Service> {
    serde_json::from_slice(value).ok()
}

#[async_trait]
impl Registry for EtcdRegistry {
    async fn register(&self, service: &Service, opts: RegisterOptions) -> Result<()> {
        if service.name.is_empty() || service.nodes.is_empty() {
            return Err(Error::bad_request(ID, "register: service needs a name and a node"));
        }
        let mut client = self.client().await?;
        for node in &service.nodes {
            let key = node_key(&service.name, &node.id);
            let record = serde_json::to_string(&Service { nodes: vec![node.clone()], ..service.clone() })
                .map_err(|e| err("encode", e))?;
            let known = self.leases.lock().await.get(&key).map(|l| (l.id, l.record == record));
            match known {
                // Unchanged: keep the lease alive, as go-micro does.
                Some((lease, true)) => match client.lease_keep_alive(lease).await {
                    Ok((mut keeper, mut stream)) => {
                        keeper.keep_alive().await.map_err(|e| etcd_err(&self.endpoints, "keep-alive", e))?;
                        let alive = matches!(stream.message().await, Ok(Some(r)) if r.ttl() > 0);
                        if !alive {
                            // etcd lost the lease (restarted with fresh state): register anew.
                            tracing::info!(%key, "etcd lease gone; registering again");
                            self.put_with_new_lease(&mut client, &key, record, opts.ttl).await?;
                        }
                    }
                    Err(e) => {
                        tracing::info!(%key, error = %e, "etcd keep-alive failed; registering again");
                        self.put_with_new_lease(&mut client, &key, record, opts.ttl).await?;
                    }
                },
                _ => self.put_with_new_lease(&mut client, &key, record, opts.ttl).await?,
            }
        }
        Ok(())
    }

    async fn deregister(&self, service: &Service) -> Result<()> {
        let mut client = self.client().await?;
        for node in &service.nodes {
            let key = node_key(&service.name, &node.id);
            client.delete(key.as_str(), None).await.map_err(|e| etcd_err(&self.endpoints, "delete", e))?;
            if let Some(l) = self.leases.lock().await.remove(&key) {
                let _ = client.lease_revoke(l.id).await;
            }
        }
        Ok(())
    }

    async fn get_service(&self, name: &str) -> Result<Vec<Service>> {
        let mut client = self.client().await?;
        let resp = client
            .get(service_prefix(name), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| etcd_err(&self.endpoints, "get", e))?;
        let out = micro_core::registry::merge_services(
            resp.kvs().iter().filter_map(|kv| decode(kv.value())).filter(|s| s.name == name),
        );
        if out.is_empty() {
            return Err(Error::not_found("go.micro.registry", format!("service {name}: not found")));
        }
        Ok(out)
    }

    async fn list_services(&self) -> Result<Vec<Service>> {
        let mut client = self.client().await?;
        let resp = client
            .get(PREFIX, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| etcd_err(&self.endpoints, "get", e))?;
        let mut out = micro_core::registry::merge_services(resp.kvs().iter().filter_map(|kv| decode(kv.value())));
        out.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        Ok(out)
    }

    async fn watch(&self, opts: WatchOptions) -> Result<Box<dyn Watcher>> {
        let mut client = self.client().await?;
        let prefix = opts.service.as_deref().map(service_prefix).unwrap_or_else(|| PREFIX.to_string());
        let (watcher, stream) = client
            .watch(prefix, Some(EtcdWatchOptions::new().with_prefix().with_prev_key()))
            .await
            .map_err(|e| etcd_err(&self.endpoints, "watch", e))?;
        Ok(Box::new(EtcdWatcher {
            _watcher: watcher,
            stream,
            pending: Vec::new(),
            stopped: Arc::new(tokio::sync::Notify::new()),
            is_stopped: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    fn name(&self) -> &str {
        "etcd"
    }
}

struct EtcdWatcher {
    // Dropping it cancels the watch on the server.
    _watcher: etcd_client::Watcher,
    stream: etcd_client::WatchStream,
    pending: Vec<Event>,
    stopped: Arc<tokio::sync::Notify>,
    is_stopped: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl Watcher for EtcdWatcher {
    async fn next(&mut self) -> Result<Event> {
        loop {
            if !self.pending.is_empty() {
                return Ok(self.pending.remove(0));
            }
            if self.is_stopped.load(std::sync::atomic::Ordering::Acquire) {
                return Err(Error::internal(ID, "watcher stopped"));
            }
            let stopped = self.stopped.clone();
            let msg = tokio::select! {
                m = self.stream.message() => m,
                _ = stopped.notified() => return Err(Error::internal(ID, "watcher stopped")),
            };
            let resp = msg.map_err(|e| err("watch", e))?.ok_or_else(|| Error::internal(ID, "etcd watch ended"))?;
            if resp.canceled() {
                return Err(Error::internal(ID, "etcd watch canceled"));
            }
            for ev in resp.events() {
                let (kind, kv) = match ev.event_type() {
                    EventType::Put => {
                        let kv = ev.kv();
                        let created = kv.map(|kv| kv.create_revision() == kv.mod_revision()).unwrap_or(true);
                        (if created { EventKind::Create } else { EventKind::Update }, kv)
                    }
                    EventType::Delete => (EventKind::Delete, ev.prev_kv()),
                };
                if let Some(service) = kv.and_then(|kv| decode(kv.value())) {
                    self.pending.push(Event { kind, service });
                }
            }
        }
    }

    fn stop(&self) {
        self.is_stopped.store(true, std::sync::atomic::Ordering::Release);
        self.stopped.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_go_micro() {
        assert_eq!(node_key("greeter", "greeter-1"), "/micro/registry/greeter/greeter-1");
        assert_eq!(node_key("a/b", "n/1"), "/micro/registry/a-b/n-1");
    }
}
