use super::{merge, not_found};
use micro_core::{
    async_trait, Error, Event, EventKind, Node, RegisterOptions, Registry, Result, Service, WatchOptions, Watcher,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// A registry in this process's memory. Instances created with the same
/// address share their contents, so services in one process see each other.
pub struct MemoryRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    // node id -> (service record holding just that node, expiry)
    nodes: Mutex<HashMap<String, (Service, Option<Instant>)>>,
    events: broadcast::Sender<Event>,
}

impl MemoryRegistry {
    /// The shared registry of this process for `address` (any string; `""` is the default).
    pub fn shared(address: &str) -> Arc<MemoryRegistry> {
        static ALL: OnceLock<Mutex<HashMap<String, Weak<Inner>>>> = OnceLock::new();
        let all = ALL.get_or_init(Default::default);
        let mut all = all.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(inner) = all.get(address).and_then(Weak::upgrade) {
            return Arc::new(MemoryRegistry { inner });
        }
        let reg = MemoryRegistry::new();
        all.insert(address.to_string(), Arc::downgrade(&reg.inner));
        Arc::new(reg)
    }

    /// A new, private registry.
    pub fn new() -> MemoryRegistry {
        let (events, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner { nodes: Mutex::new(HashMap::new()), events });
        // Expire nodes even when nobody reads, so watchers hear of them.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&inner);
            rt.spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    match weak.upgrade() {
                        Some(inner) => inner.expire(),
                        None => break,
                    }
                }
            });
        }
        MemoryRegistry { inner }
    }
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Service, Option<Instant>)>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expire(&self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        self.lock().retain(|_, (svc, exp)| {
            let keep = exp.is_none_or(|t| t > now);
            if !keep {
                expired.push(svc.clone());
            }
            keep
        });
        for service in expired {
            let _ = self.events.send(Event { kind: EventKind::Delete, service });
        }
    }
}

fn one_node(service: &Service, node: &Node) -> Service {
    Service { nodes: vec![node.clone()], ..service.clone() }
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn register(&self, service: &Service, opts: RegisterOptions) -> Result<()> {
        if service.name.is_empty() || service.nodes.is_empty() {
            return Err(Error::bad_request("go.micro.registry", "register: service needs a name and a node"));
        }
        let expiry = (!opts.ttl.is_zero()).then(|| Instant::now() + opts.ttl);
        let mut events = Vec::new();
        {
            let mut nodes = self.inner.lock();
            for node in &service.nodes {
                let rec = one_node(service, node);
                let kind = if nodes.contains_key(&node.id) { EventKind::Update } else { EventKind::Create };
                nodes.insert(node.id.clone(), (rec.clone(), expiry));
                events.push(Event { kind, service: rec });
            }
        }
        for e in events {
            let _ = self.inner.events.send(e);
        }
        Ok(())
    }

    async fn deregister(&self, service: &Service) -> Result<()> {
        let mut removed = Vec::new();
        {
            let mut nodes = self.inner.lock();
            for node in &service.nodes {
                if let Some((rec, _)) = nodes.remove(&node.id) {
                    removed.push(rec);
                }
            }
        }
        for service in removed {
            let _ = self.inner.events.send(Event { kind: EventKind::Delete, service });
        }
        Ok(())
    }

    async fn get_service(&self, name: &str) -> Result<Vec<Service>> {
        self.inner.expire();
        let recs: Vec<Service> =
            self.inner.lock().values().filter(|(s, _)| s.name == name).map(|(s, _)| s.clone()).collect();
        let out = merge(recs);
        if out.is_empty() {
            return Err(not_found(name));
        }
        Ok(out)
    }

    async fn list_services(&self) -> Result<Vec<Service>> {
        self.inner.expire();
        let recs: Vec<Service> = self.inner.lock().values().map(|(s, _)| s.clone()).collect();
        let mut out = merge(recs);
        out.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        Ok(out)
    }

    async fn watch(&self, opts: WatchOptions) -> Result<Box<dyn Watcher>> {
        Ok(Box::new(MemoryWatcher {
            rx: self.inner.events.subscribe(),
            service: opts.service,
            stopped: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }))
    }

    fn name(&self) -> &str {
        "memory"
    }
}

struct MemoryWatcher {
    rx: broadcast::Receiver<Event>,
    service: Option<String>,
    stopped: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait]
impl Watcher for MemoryWatcher {
    async fn next(&mut self) -> Result<Event> {
        loop {
            if self.stopped.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(Error::internal("go.micro.registry", "watcher stopped"));
            }
            match self.rx.recv().await {
                Ok(ev) if self.service.as_ref().is_none_or(|s| *s == ev.service.name) => return Ok(ev),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    // A slow watcher loses events; say so and let the cache refetch.
                    return Err(Error::internal("go.micro.registry", format!("watcher lagged by {n} events")));
                }
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(Error::internal("go.micro.registry", "watcher stopped"))
                }
            }
        }
    }

    fn stop(&self) {
        self.stopped.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::tests_common;

    #[tokio::test]
    async fn contract() -> Result<()> {
        let r = MemoryRegistry::new();
        micro_testkit::contract::registry(&r, "contract", Duration::from_millis(300), Duration::from_secs(5))
            .await
            .map_err(|e| micro_core::Error::internal("contract", e.to_string()))
    }

    #[tokio::test]
    async fn shared_instances_see_each_other() -> Result<()> {
        let a = MemoryRegistry::shared("shared-test");
        let b = MemoryRegistry::shared("shared-test");
        a.register(&tests_common::svc("s", "n1", "127.0.0.1:1"), RegisterOptions::default()).await?;
        assert_eq!(b.get_service("s").await?[0].nodes.len(), 1);
        Ok(())
    }
}
