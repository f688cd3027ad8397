//! A registry for the processes of one machine that needs no daemon.
//!
//! go-micro's zero-set-up registry is mDNS; multicast is often unusable
//! (containers, CI sandboxes), so the default here is a directory instead:
//! each node is one JSON file `<dir>/<service>/<node-id>.json` holding
//! go-micro's service record (with just that node) and an expiry time.
//! Writes are atomic (temp file + rename), expired files are ignored and
//! swept by readers, and watches poll the directory.

use super::{merge, not_found};
use micro_core::{
    async_trait, Error, Event, EventKind, RegisterOptions, Registry, Result, Service, WatchOptions, Watcher,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const ID: &str = "go.micro.registry";
/// How often a watch looks at the directory.
const POLL: Duration = Duration::from_millis(200);

/// The file-based registry (`local`).
#[derive(Debug, Clone)]
pub struct LocalRegistry {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Record {
    /// Unix milliseconds after which the node is gone; 0 means never.
    expires_ms: u64,
    service: Service,
}

impl LocalRegistry {
    /// A registry in `dir`, created (mode 0700) if missing.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        create_private_dir(&dir)
            .map_err(|e| Error::internal(ID, format!("create registry directory {}: {e}", dir.display())))?;
        Ok(LocalRegistry { dir })
    }

    /// The default directory: `$XDG_RUNTIME_DIR/micro/registry`, else
    /// `<tmp>/micro-<user>/registry`.
    pub fn default_dir() -> PathBuf {
        match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(d) if !d.is_empty() => PathBuf::from(d).join("micro").join("registry"),
            _ => {
                let user = std::env::var("USER").unwrap_or_else(|_| "default".into());
                std::env::temp_dir().join(format!("micro-{}", escape(&user))).join("registry")
            }
        }
    }

    /// The directory in use.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Path) -> io::Result<T> + Send + 'static) -> Result<T> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || f(&dir))
            .await
            .map_err(|e| Error::internal(ID, format!("registry task: {e}")))?
            .map_err(|e| Error::internal(ID, format!("registry directory {}: {e}", self.dir.display())))
    }
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// File names from arbitrary service names and node ids: anything outside
/// `[A-Za-z0-9._-]` (and a leading dot) is percent-encoded.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, b) in s.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Reads the live records (of one service, or all), sweeping expired files.
fn scan(dir: &Path, only: Option<&str>) -> io::Result<Vec<(PathBuf, Service)>> {
    let now = now_ms();
    let mut out = Vec::new();
    let service_dirs: Vec<PathBuf> = match only {
        Some(name) => vec![dir.join(escape(name))],
        None => match fs::read_dir(dir) {
            Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        },
    };
    for sdir in service_dirs {
        let entries = match fs::read_dir(&sdir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            if path.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            let data = match fs::read(&path) {
                Ok(d) => d,
                Err(_) => continue, // removed between listing and reading
            };
            match serde_json::from_slice::<Record>(&data) {
                Ok(rec) if rec.expires_ms != 0 && rec.expires_ms <= now => {
                    let _ = fs::remove_file(&path);
                }
                Ok(rec) => out.push((path, rec.service)),
                Err(e) => tracing::warn!(file = %path.display(), error = %e, "ignoring unreadable registry record"),
            }
        }
    }
    Ok(out)
}

#[async_trait]
impl Registry for LocalRegistry {
    async fn register(&self, service: &Service, opts: RegisterOptions) -> Result<()> {
        if service.name.is_empty() || service.nodes.is_empty() {
            return Err(Error::bad_request(ID, "register: service needs a name and a node"));
        }
        let service = service.clone();
        let expires_ms = if opts.ttl.is_zero() { 0 } else { now_ms() + opts.ttl.as_millis() as u64 };
        self.blocking(move |dir| {
            let sdir = dir.join(escape(&service.name));
            create_private_dir(&sdir)?;
            for node in &service.nodes {
                let rec = Record { expires_ms, service: Service { nodes: vec![node.clone()], ..service.clone() } };
                let data = serde_json::to_vec(&rec).map_err(io::Error::other)?;
                let file = sdir.join(format!("{}.json", escape(&node.id)));
                // Atomic replace: readers see the old or the new record, never half of one.
                let tmp = sdir.join(format!(".{}.{}.tmp", escape(&node.id), uuid::Uuid::new_v4().simple()));
                fs::write(&tmp, &data)?;
                if let Err(e) = fs::rename(&tmp, &file) {
                    let _ = fs::remove_file(&tmp);
                    return Err(e);
                }
            }
            Ok(())
        })
        .await
    }

    async fn deregister(&self, service: &Service) -> Result<()> {
        let service = service.clone();
        self.blocking(move |dir| {
            let sdir = dir.join(escape(&service.name));
            for node in &service.nodes {
                match fs::remove_file(sdir.join(format!("{}.json", escape(&node.id)))) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            let _ = fs::remove_dir(&sdir); // only succeeds when empty
            Ok(())
        })
        .await
    }

    async fn get_service(&self, name: &str) -> Result<Vec<Service>> {
        let n = name.to_string();
        let recs = self.blocking(move |dir| scan(dir, Some(&n))).await?;
        let out = merge(recs.into_iter().map(|(_, s)| s).filter(|s| s.name == name));
        if out.is_empty() {
            return Err(not_found(name));
        }
        Ok(out)
    }

    async fn list_services(&self) -> Result<Vec<Service>> {
        let recs = self.blocking(|dir| scan(dir, None)).await?;
        let mut out = merge(recs.into_iter().map(|(_, s)| s));
        out.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        Ok(out)
    }

    async fn watch(&self, opts: WatchOptions) -> Result<Box<dyn Watcher>> {
        let (tx, rx) = mpsc::channel(256);
        let cancel = CancellationToken::new();
        let dir = self.dir.clone();
        let only = opts.service;
        // The first snapshot is taken before returning, so changes made
        // right after `watch` returns are reported.
        let first = {
            let (d, o) = (dir.clone(), only.clone());
            tokio::task::spawn_blocking(move || scan(&d, o.as_deref()))
                .await
                .map_err(|e| Error::internal(ID, e.to_string()))?
                .map_err(|e| Error::internal(ID, format!("watch {}: {e}", dir.display())))?
        };
        let stop = cancel.clone();
        tokio::spawn(async move {
            let mut known: HashMap<PathBuf, Service> = first.into_iter().collect();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(POLL) => {}
                }
                let (d, o) = (dir.clone(), only.clone());
                let now = match tokio::task::spawn_blocking(move || scan(&d, o.as_deref())).await {
                    Ok(Ok(recs)) => recs.into_iter().collect::<HashMap<_, _>>(),
                    Ok(Err(e)) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "registry watch scan failed");
                        continue;
                    }
                    Err(_) => return,
                };
                let mut events = Vec::new();
                for (path, svc) in &now {
                    match known.get(path) {
                        None => events.push(Event { kind: EventKind::Create, service: svc.clone() }),
                        Some(old) if old != svc => events.push(Event { kind: EventKind::Update, service: svc.clone() }),
                        Some(_) => {}
                    }
                }
                for (path, svc) in &known {
                    if !now.contains_key(path) {
                        events.push(Event { kind: EventKind::Delete, service: svc.clone() });
                    }
                }
                known = now;
                for ev in events {
                    if tx.send(ev).await.is_err() {
                        return; // watcher dropped
                    }
                }
            }
        });
        Ok(Box::new(LocalWatcher { rx, cancel }))
    }

    fn name(&self) -> &str {
        "local"
    }
}

struct LocalWatcher {
    rx: mpsc::Receiver<Event>,
    cancel: CancellationToken,
}

#[async_trait]
impl Watcher for LocalWatcher {
    async fn next(&mut self) -> Result<Event> {
        tokio::select! {
            ev = self.rx.recv() => ev.ok_or_else(|| Error::internal(ID, "watcher stopped")),
            _ = self.cancel.cancelled() => Err(Error::internal(ID, "watcher stopped")),
        }
    }

    fn stop(&self) {
        self.cancel.cancel();
    }
}

impl Drop for LocalWatcher {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::tests_common;

    fn tmp() -> Result<(tempfile::TempDir, LocalRegistry)> {
        let d = tempfile::tempdir().map_err(|e| Error::internal("test", e.to_string()))?;
        let r = LocalRegistry::new(d.path().join("reg"))?;
        Ok((d, r))
    }

    #[tokio::test]
    async fn contract() -> Result<()> {
        let (_d, r) = tmp()?;
        tests_common::contract(&r).await
    }

    #[tokio::test]
    async fn two_instances_on_one_directory_share_records() -> Result<()> {
        let (_d, a) = tmp()?;
        let b = LocalRegistry::new(a.dir())?;
        a.register(&tests_common::svc("x/y", "n1", "127.0.0.1:1"), RegisterOptions::default()).await?;
        assert_eq!(b.get_service("x/y").await?[0].nodes[0].id, "n1");
        Ok(())
    }

    #[tokio::test]
    async fn garbage_files_are_ignored() -> Result<()> {
        let (_d, r) = tmp()?;
        r.register(&tests_common::svc("s", "n1", "127.0.0.1:1"), RegisterOptions::default()).await?;
        fs::write(r.dir().join("s").join("junk.json"), b"{not json")
            .map_err(|e| Error::internal("test", e.to_string()))?;
        assert_eq!(r.get_service("s").await?[0].nodes.len(), 1);
        Ok(())
    }

    #[test]
    fn escaping_keeps_names_inside_the_directory() {
        assert_eq!(escape("go.micro.srv.greeter"), "go.micro.srv.greeter");
        assert_eq!(escape("../etc"), "%2E.%2Fetc");
        assert_eq!(escape("a/b"), "a%2Fb");
    }
}
