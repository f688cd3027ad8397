//! `logreg`: an example registry plugin. The registry is one append-only
//! log file (`--registry-address FILE`), one go-micro JSON record per line:
//! `{"op":"put","expires_ms":…,"service":{…}}` or `{"op":"del",…}`. Readers
//! replay the log, so every process on the machine that uses the same file
//! sees the same services. Appends are single `write` calls on an
//! `O_APPEND` file, which keeps concurrent writers' lines whole.

use micro::core::{
    async_trait, Error, Event, EventKind, RegisterOptions, Registry, RegistryOptions, Result, Service, WatchOptions,
    Watcher,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const ID: &str = "go.micro.registry.logreg";

#[derive(Serialize, Deserialize)]
struct Line {
    op: String,
    expires_ms: u64,
    service: Service,
}

struct LogRegistry {
    file: PathBuf,
}

/// The plugin's NewFunc.
pub fn new_registry(opts: RegistryOptions) -> Result<Arc<dyn Registry>> {
    let file = opts
        .addresses
        .first()
        .map(PathBuf::from)
        .ok_or_else(|| Error::bad_request(ID, "logreg needs --registry-address <file>"))?;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::internal(ID, format!("{}: {e}", dir.display())))?;
    }
    tracing::info!(file = %file.display(), "logreg registry opened");
    Ok(Arc::new(LogRegistry { file }))
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl LogRegistry {
    fn append(&self, op: &str, service: &Service, ttl: Duration) -> Result<()> {
        let mut out = Vec::new();
        for node in &service.nodes {
            let line = Line {
                op: op.into(),
                expires_ms: if ttl.is_zero() { 0 } else { now_ms() + ttl.as_millis() as u64 },
                service: Service { nodes: vec![node.clone()], ..service.clone() },
            };
            out.extend(serde_json::to_vec(&line).map_err(|e| Error::internal(ID, e.to_string()))?);
            out.push(b'\n');
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.file)
            .map_err(|e| Error::internal(ID, format!("{}: {e}", self.file.display())))?;
        f.write_all(&out).map_err(|e| Error::internal(ID, format!("{}: {e}", self.file.display())))
    }

    /// Live nodes: (service name, node id) -> single-node record.
    fn replay(&self) -> Result<BTreeMap<(String, String), Service>> {
        let text = match std::fs::read_to_string(&self.file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::internal(ID, format!("{}: {e}", self.file.display()))),
        };
        let now = now_ms();
        let mut live = BTreeMap::new();
        for line in text.lines() {
            let Ok(l) = serde_json::from_str::<Line>(line) else { continue };
            let Some(node) = l.service.nodes.first() else { continue };
            let key = (l.service.name.clone(), node.id.clone());
            if l.op == "put" && (l.expires_ms == 0 || l.expires_ms > now) {
                live.insert(key, l.service);
            } else {
                live.remove(&key);
            }
        }
        Ok(live)
    }
}

#[async_trait]
impl Registry for LogRegistry {
    async fn register(&self, service: &Service, opts: RegisterOptions) -> Result<()> {
        self.append("put", service, opts.ttl)
    }
    async fn deregister(&self, service: &Service) -> Result<()> {
        self.append("del", service, Duration::ZERO)
    }
    async fn get_service(&self, name: &str) -> Result<Vec<Service>> {
        let out = micro::core::registry::merge_services(self.replay()?.into_values().filter(|s| s.name == name));
        if out.is_empty() {
            return Err(Error::not_found(ID, format!("service {name}: not found")));
        }
        Ok(out)
    }
    async fn list_services(&self) -> Result<Vec<Service>> {
        Ok(micro::core::registry::merge_services(self.replay()?.into_values()))
    }
    async fn watch(&self, opts: WatchOptions) -> Result<Box<dyn Watcher>> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let reg = LogRegistry { file: self.file.clone() };
        let mut known = reg.replay()?;
        // A task on the plugin's own runtime polls the log.
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let Ok(now) = reg.replay() else { continue };
                let mut events = Vec::new();
                for (k, s) in &now {
                    if !known.contains_key(k) {
                        events.push(Event { kind: EventKind::Create, service: s.clone() });
                    }
                }
                for (k, s) in &known {
                    if !now.contains_key(k) {
                        events.push(Event { kind: EventKind::Delete, service: s.clone() });
                    }
                }
                known = now;
                for e in events {
                    if opts.service.as_ref().is_some_and(|n| *n != e.service.name) {
                        continue;
                    }
                    if tx.send(e).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Box::new(LogWatcher { rx }))
    }
    fn name(&self) -> &str {
        "logreg"
    }
}

struct LogWatcher {
    rx: tokio::sync::mpsc::Receiver<Event>,
}

#[async_trait]
impl Watcher for LogWatcher {
    async fn next(&mut self) -> Result<Event> {
        self.rx.recv().await.ok_or_else(|| Error::internal(ID, "watcher stopped"))
    }
    fn stop(&self) {
        // Dropping the watcher ends the polling task; nothing else to do.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro::core::Node;

    #[tokio::test]
    async fn put_get_expire_delete() -> Result<()> {
        let d = tempfile::tempdir().map_err(|e| Error::internal("t", e.to_string()))?;
        let r = new_registry(RegistryOptions {
            addresses: vec![d.path().join("reg.log").display().to_string()],
            timeout: None,
        })?;
        let svc = |id: &str| Service {
            name: "s".into(),
            nodes: vec![Node { id: id.into(), address: "127.0.0.1:1".into(), ..Default::default() }],
            ..Default::default()
        };
        r.register(&svc("a"), RegisterOptions::default()).await?;
        r.register(&svc("b"), RegisterOptions { ttl: Duration::from_millis(100) }).await?;
        assert_eq!(r.get_service("s").await?[0].nodes.len(), 2);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(r.get_service("s").await?[0].nodes.len(), 1);
        r.deregister(&svc("a")).await?;
        assert_eq!(r.get_service("s").await.err().map(|e| e.code), Some(404));
        Ok(())
    }
}
