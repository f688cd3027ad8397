//! The `mdns` registry of micro, on `mdns-sd`: zero-configuration
//! discovery between machines of one LAN, go-micro's default registry.
//!
//! Each node is a DNS-SD instance of `_micro._tcp.local.` named by its node
//! id. Its TXT record carries the registry record: `txtvers=1`, `name`,
//! `version`, `id`, `addr` (the advertised `host:port`), `meta` (node
//! metadata as JSON), `exp` (the registration's expiry, Unix seconds,
//! refreshed by each re-registration so a killed node disappears after its
//! TTL even though mDNS caches live longer) and the endpoints as JSON split
//! over `e0`, `e1`, … (TXT strings hold at most 255 bytes). A browser
//! running in the background keeps a cache that `get_service` and watches
//! read. Which interfaces are used follows mdns-sd's defaults (all,
//! loopback included); `--registry-address loopback` restricts it to
//! loopback.

use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use micro_core::catalog::NewRegistry;
use micro_core::{
    async_trait, Catalog, Endpoint, Error, Event, EventKind, Node, RegisterOptions, Registry, RegistryOptions, Result,
    Service, WatchOptions, Watcher,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

const ID: &str = "go.micro.registry.mdns";
/// The DNS-SD service type of micro nodes.
pub const SERVICE_TYPE: &str = "_micro._tcp.local.";
const CHUNK: usize = 200;

/// Adds the `mdns` registry to a catalog.
pub fn register(catalog: &mut Catalog) {
    catalog.registries.insert(
        "mdns",
        Arc::new(|o: RegistryOptions| Ok(Arc::new(MdnsRegistry::new(o)?) as Arc<dyn Registry>)) as NewRegistry,
    );
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::internal(ID, format!("mdns {what}: {e}"))
}

/// The TXT properties of one node.
pub fn encode(service: &Service, node: &Node, expires: u64) -> Result<HashMap<String, String>> {
    let mut p = HashMap::new();
    p.insert("txtvers".to_string(), "1".to_string());
    p.insert("name".to_string(), service.name.clone());
    p.insert("version".to_string(), service.version.clone());
    p.insert("id".to_string(), node.id.clone());
    p.insert("addr".to_string(), node.address.clone());
    p.insert("meta".to_string(), serde_json::to_string(&node.metadata).map_err(|e| err("encode", e))?);
    p.insert("exp".to_string(), expires.to_string());
    let endpoints = serde_json::to_string(&service.endpoints).map_err(|e| err("encode", e))?;
    let chars: Vec<char> = endpoints.chars().collect();
    for (i, chunk) in chars.chunks(CHUNK).enumerate() {
        p.insert(format!("e{i}"), chunk.iter().collect());
    }
    for (k, v) in &p {
        if k.len() + v.len() + 1 > 255 {
            return Err(Error::bad_request(ID, format!("mdns: TXT entry {k} is over 255 bytes")));
        }
    }
    Ok(p)
}

/// The service record of a node from its TXT properties; `None` if they are
/// not micro's or the registration has expired.
pub fn decode(get: impl Fn(&str) -> Option<String>, now: u64) -> Option<Service> {
    if get("txtvers").as_deref() != Some("1") {
        return None;
    }
    let exp: u64 = get("exp")?.parse().ok()?;
    if exp != 0 && exp <= now {
        return None;
    }
    let mut endpoints_json = String::new();
    let mut i = 0;
    while let Some(chunk) = get(&format!("e{i}")) {
        endpoints_json.push_str(&chunk);
        i += 1;
    }
    let endpoints: Vec<Endpoint> =
        if endpoints_json.is_empty() { Vec::new() } else { serde_json::from_str(&endpoints_json).ok()? };
    let metadata = serde_json::from_str(&get("meta").unwrap_or_else(|| "{}".into())).ok()?;
    Some(Service {
        name: get("name")?,
        version: get("version").unwrap_or_default(),
        metadata: HashMap::new(),
        endpoints,
        nodes: vec![Node { id: get("id")?, address: get("addr")?, metadata }],
    })
}

/// How long a new registry listens before its first answer (see `get_service`).
const SETTLE: Duration = Duration::from_millis(500);

struct Cache {
    /// fullname -> (record, expiry)
    nodes: HashMap<String, (Service, u64)>,
}

/// The mDNS registry.
pub struct MdnsRegistry {
    daemon: ServiceDaemon,
    cache: Arc<Mutex<Cache>>,
    events: broadcast::Sender<Event>,
    started: Instant,
}

impl MdnsRegistry {
    /// Starts an mDNS daemon and a browser. `opts.addresses[0] == "loopback"`
    /// restricts it to the loopback interface.
    pub fn new(opts: RegistryOptions) -> Result<Self> {
        let daemon = ServiceDaemon::new().map_err(|e| err("start", e))?;
        if opts.addresses.first().map(String::as_str) == Some("loopback") {
            daemon.disable_interface(IfKind::All).map_err(|e| err("interfaces", e))?;
            daemon.enable_interface(IfKind::LoopbackV4).map_err(|e| err("interfaces", e))?;
        }
        let receiver = daemon.browse(SERVICE_TYPE).map_err(|e| err("browse", e))?;
        let cache = Arc::new(Mutex::new(Cache { nodes: HashMap::new() }));
        let (events, _) = broadcast::channel(1024);
        let (c, tx) = (cache.clone(), events.clone());
        // mdns-sd delivers on a channel from its own thread; a thread of ours
        // keeps the cache, and between events sweeps it, so that watchers
        // hear a node whose registration expired (a killed node says no
        // goodbye) even when nobody asks for services.
        std::thread::Builder::new()
            .name("micro-mdns-browse".into())
            .spawn(move || loop {
                match receiver.recv_timeout(SWEEP) {
                    Ok(ServiceEvent::ServiceResolved(info)) => {
                        let get = |k: &str| info.get_property_val_str(k).map(String::from);
                        let Some(svc) = decode(get, now_secs()) else { continue };
                        let exp = info.get_property_val_str("exp").and_then(|e| e.parse().ok()).unwrap_or(0);
                        remember(&c, &tx, info.get_fullname(), svc, exp);
                    }
                    Ok(ServiceEvent::ServiceRemoved(_, fullname)) => forget(&c, &tx, &fullname),
                    Ok(_) => {}
                    // A timeout: time to sweep. Disconnected: the daemon stopped.
                    Err(_) if receiver.is_disconnected() => return,
                    Err(_) => {}
                }
                sweep(&c, &tx);
            })
            .map_err(|e| err("browser thread", e))?;
        Ok(MdnsRegistry { daemon, cache, events, started: Instant::now() })
    }

    /// Live records, dropping expired ones (and telling watchers).
    fn live(&self) -> Vec<Service> {
        sweep(&self.cache, &self.events);
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).nodes.values().map(|(s, _)| s.clone()).collect()
    }
}

/// How often the browser thread sweeps out expired registrations.
const SWEEP: Duration = Duration::from_millis(500);

/// A node's record, cached; watchers hear a create, or an update if it changed.
fn remember(cache: &Mutex<Cache>, events: &broadcast::Sender<Event>, fullname: &str, svc: Service, exp: u64) {
    let old = cache.lock().unwrap_or_else(|p| p.into_inner()).nodes.insert(fullname.to_string(), (svc.clone(), exp));
    let kind = if old.is_some() { EventKind::Update } else { EventKind::Create };
    if old.map(|o| o.0) != Some(svc.clone()) {
        let _ = events.send(Event { kind, service: svc });
    }
}

/// A node gone; watchers hear a delete (once, however many say so).
fn forget(cache: &Mutex<Cache>, events: &broadcast::Sender<Event>, fullname: &str) {
    let old = cache.lock().unwrap_or_else(|p| p.into_inner()).nodes.remove(fullname);
    if let Some((svc, _)) = old {
        let _ = events.send(Event { kind: EventKind::Delete, service: svc });
    }
}

/// Drops expired registrations, telling watchers.
fn sweep(cache: &Mutex<Cache>, events: &broadcast::Sender<Event>) {
    let now = now_secs();
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    let expired: Vec<String> =
        cache.nodes.iter().filter(|(_, (_, e))| *e != 0 && *e <= now).map(|(k, _)| k.clone()).collect();
    for k in expired {
        if let Some((svc, _)) = cache.nodes.remove(&k) {
            let _ = events.send(Event { kind: EventKind::Delete, service: svc });
        }
    }
}

#[async_trait]
impl Registry for MdnsRegistry {
    async fn register(&self, service: &Service, opts: RegisterOptions) -> Result<()> {
        let expires = if opts.ttl.is_zero() { 0 } else { now_secs() + opts.ttl.as_secs().max(1) };
        for node in &service.nodes {
            let addr: std::net::SocketAddr =
                node.address.parse().map_err(|e| err(&format!("node address {}", node.address), e))?;
            let props = encode(service, node, expires)?;
            let host = format!("{}.local.", node.id.replace('.', "-"));
            // What this registry registered it knows at once, as mDNS
            // peers will hear it (the browser's own answer then changes
            // nothing): a lookup right after registering finds the node.
            let own = decode(|k| props.get(k).cloned(), now_secs());
            let info = ServiceInfo::new(SERVICE_TYPE, &node.id, &host, addr.ip(), addr.port(), props)
                .map_err(|e| err("service info", e))?;
            let fullname = info.get_fullname().to_string();
            self.daemon.register(info).map_err(|e| err("register", e))?;
            if let Some(own) = own {
                remember(&self.cache, &self.events, &fullname, own, expires);
            }
        }
        Ok(())
    }

    async fn deregister(&self, service: &Service) -> Result<()> {
        for node in &service.nodes {
            let fullname = format!("{}.{SERVICE_TYPE}", node.id);
            // Gone for this registry at once; peers hear the goodbye.
            forget(&self.cache, &self.events, &fullname);
            if let Ok(rx) = self.daemon.unregister(&fullname) {
                // Wait (bounded) for the goodbye packets to go out.
                let _ = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(1))).await;
            }
        }
        Ok(())
    }

    async fn get_service(&self, name: &str) -> Result<Vec<Service>> {
        // Every responder answers a query after its own random delay (up to
        // 120 ms, RFC 6762 §6): a fresh registry that answered with the
        // first node heard would miss the others. Wait out the answers to
        // the first query once, as `list_services` does.
        if self.started.elapsed() < SETTLE {
            tokio::time::sleep(SETTLE.saturating_sub(self.started.elapsed())).await;
        }
        loop {
            let out = micro_core::registry::merge_services(self.live().into_iter().filter(|s| s.name == name));
            if !out.is_empty() {
                return Ok(out);
            }
            // Right after start-up the browser may not have heard the answers yet.
            if self.started.elapsed() > Duration::from_secs(2) {
                return Err(Error::not_found("go.micro.registry", format!("service {name}: not found")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn list_services(&self) -> Result<Vec<Service>> {
        if self.started.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_secs(1).saturating_sub(self.started.elapsed())).await;
        }
        let mut out = micro_core::registry::merge_services(self.live());
        out.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        Ok(out)
    }

    async fn watch(&self, opts: WatchOptions) -> Result<Box<dyn Watcher>> {
        Ok(Box::new(MdnsWatcher {
            rx: self.events.subscribe(),
            service: opts.service,
            stopped: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    fn name(&self) -> &str {
        "mdns"
    }
}

impl Drop for MdnsRegistry {
    fn drop(&mut self) {
        let _ = self.daemon.shutdown();
    }
}

struct MdnsWatcher {
    rx: broadcast::Receiver<Event>,
    service: Option<String>,
    stopped: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl Watcher for MdnsWatcher {
    async fn next(&mut self) -> Result<Event> {
        loop {
            if self.stopped.load(std::sync::atomic::Ordering::Acquire) {
                return Err(Error::internal(ID, "watcher stopped"));
            }
            match self.rx.recv().await {
                Ok(ev) if self.service.as_ref().is_none_or(|s| *s == ev.service.name) => return Ok(ev),
                Ok(_) => continue,
                Err(e) => return Err(Error::internal(ID, format!("watcher: {e}"))),
            }
        }
    }
    fn stop(&self) {
        self.stopped.store(true, std::sync::atomic::Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Service {
        Service {
            name: "greeter".into(),
            version: "1.0.0".into(),
            endpoints: (0..20).map(|i| Endpoint { name: format!("Greeter.Method{i}"), ..Default::default() }).collect(),
            nodes: vec![Node {
                id: "greeter-1".into(),
                address: "127.0.0.1:4000".into(),
                metadata: [("transport".to_string(), "tcp".to_string())].into_iter().collect(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn txt_round_trip_with_endpoints_split_into_chunks() -> Result<()> {
        let s = sample();
        let p = encode(&s, &s.nodes[0], 2_000_000_000)?;
        assert!(p.contains_key("e1"), "long endpoint lists span several TXT strings");
        assert!(p.iter().all(|(k, v)| k.len() + v.len() < 255));
        let back = decode(|k| p.get(k).cloned(), 1_000_000_000).ok_or(err("decode", "none"))?;
        assert_eq!(back, s);
        Ok(())
    }

    #[test]
    fn expired_and_foreign_records_are_ignored() -> Result<()> {
        let s = sample();
        let p = encode(&s, &s.nodes[0], 100)?;
        assert!(decode(|k| p.get(k).cloned(), 101).is_none());
        assert!(decode(|_| None, 0).is_none());
        Ok(())
    }
}
