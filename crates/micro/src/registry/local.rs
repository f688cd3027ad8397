//! A registry for the processes of one machine that needs no daemon.
//!
//! go-micro's zero-set-up registry is mDNS; multicast is often unusable
//! (containers, CI sandboxes), so the default here is a directory instead:
//! each node is one JSON file `<dir>/<service>/<node-id>.json` holding
//! go-micro's service record (with just that node) and an expiry time.
//! Writes are atomic (temp file + rename), expired files are ignored and
//! swept by readers, and watches poll the directory.
//!
//! The directory is a trust boundary: whoever can write it decides where
//! calls go. So it must belong to this user (0700 when created here), every
//! directory above it must belong to this user or root and not be writable
//! by others (sticky ones such as /tmp excepted), and the fallback under the
//! shared temporary directory is named by numeric uid. Records are opened
//! without following links, must be regular files of at most 1 MiB, and a
//! corrupt or foreign entry is removed (once, with a warning).

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
    /// A registry in `dir`, created (mode 0700) if missing. Refused, with
    /// what to fix, when the directory is not this user's or when it or a
    /// directory above it could be changed by another user.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        if fs::metadata(&dir).is_ok_and(|m| !m.is_dir()) {
            return Err(Error::bad_request(
                ID,
                format!(
                    "registry directory {} is not a directory: set --registry-address (MICRO_REGISTRY_ADDRESS) to a directory",
                    dir.display()
                ),
            ));
        }
        create_private_dir(&dir)
            .map_err(|e| Error::internal(ID, format!("create registry directory {}: {e}", dir.display())))?;
        check_trusted(&dir)?;
        Ok(LocalRegistry { dir })
    }

    /// The default directory: `$XDG_RUNTIME_DIR/micro/registry`, else
    /// `<tmp>/micro-<uid>/registry` (the numeric uid: a name like `$USER`
    /// may be unset, or shared by users).
    pub fn default_dir() -> PathBuf {
        match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(d) if !d.is_empty() => PathBuf::from(d).join("micro").join("registry"),
            _ => std::env::temp_dir().join(format!("micro-{}", euid().unwrap_or(u32::MAX))).join("registry"),
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

/// This process's effective uid, from the kernel's account of it.
fn euid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Refuses a registry directory that another user owns or can write to, or
/// under a directory that another user could replace it in.
fn check_trusted(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let me = euid().ok_or_else(|| Error::internal(ID, "cannot tell this process's user (no /proc/self/status)"))?;
    let fix = "remove it, or set --registry-address (MICRO_REGISTRY_ADDRESS) to a directory of yours";
    let refuse =
        |why: String| Error::internal(ID, format!("refusing the registry directory {}: {why}: {fix}", dir.display()));
    let dir = fs::canonicalize(dir).map_err(|e| refuse(e.to_string()))?;
    let m = fs::metadata(&dir).map_err(|e| refuse(e.to_string()))?;
    if m.uid() != me {
        return Err(refuse(format!(
            "it is owned by uid {}, not by this user (uid {me}): another user created it",
            m.uid()
        )));
    }
    if m.mode() & 0o022 != 0 {
        return Err(refuse(format!("others can write to it (mode {:o})", m.mode() & 0o7777)));
    }
    let mut up = dir.parent();
    while let Some(d) = up {
        let m = fs::metadata(d).map_err(|e| refuse(format!("{}: {e}", d.display())))?;
        if m.uid() != me && m.uid() != 0 {
            return Err(refuse(format!("{} is owned by uid {}, not by this user or root", d.display(), m.uid())));
        }
        if m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0 {
            return Err(refuse(format!(
                "{} is writable by others (mode {:o}) and not sticky",
                d.display(),
                m.mode() & 0o7777
            )));
        }
        up = d.parent();
    }
    Ok(())
}

/// The most a record may weigh: a service record with one node is small.
const MAX_RECORD: u64 = 1 << 20;

/// What reading one record gave.
enum Read {
    Record(Vec<u8>),
    /// Removed between listing and reading.
    Gone,
    /// Not a regular file of a sane size: to be removed.
    Foreign(String),
}

/// Reads a record without following a link and without blocking on a FIFO
/// or reading a device: only a regular file of at most [`MAX_RECORD`] bytes.
fn read_record(path: &Path) -> Read {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt;
    let f = match fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Read::Gone,
        Err(e) => return Read::Foreign(format!("cannot open it safely: {e}")),
    };
    let meta = match f.metadata() {
        Ok(m) => m,
        Err(e) => return Read::Foreign(e.to_string()),
    };
    if !meta.is_file() {
        return Read::Foreign("not a regular file".into());
    }
    if meta.len() > MAX_RECORD {
        return Read::Foreign(format!("{} bytes, more than a record may have ({MAX_RECORD})", meta.len()));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    match f.take(MAX_RECORD + 1).read_to_end(&mut data) {
        Ok(_) if data.len() as u64 <= MAX_RECORD => Read::Record(data),
        Ok(_) => Read::Foreign("grew past the record size limit".into()),
        Err(e) => Read::Foreign(e.to_string()),
    }
}

/// Removes an entry that is no record, saying so once.
fn remove_foreign(path: &Path, why: &str) {
    tracing::warn!(file = %path.display(), reason = %why, "removing a bad registry entry");
    let _ = fs::remove_file(path);
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

/// Reads the live records (of one service, or all), sweeping expired files
/// and removing entries that are no records (see [`read_record`]).
fn scan(dir: &Path, only: Option<&str>) -> io::Result<Vec<(PathBuf, Service)>> {
    let now = now_ms();
    let mut out = Vec::new();
    let service_dirs: Vec<PathBuf> = match only {
        Some(name) => vec![dir.join(escape(name))],
        None => match fs::read_dir(dir) {
            // `file_type` does not follow links: a planted link to a directory is skipped.
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        },
    };
    for sdir in service_dirs {
        if fs::symlink_metadata(&sdir).is_ok_and(|m| !m.is_dir()) {
            continue; // a link or file where a service's directory should be
        }
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
            let data = match read_record(&path) {
                Read::Record(d) => d,
                Read::Gone => continue,
                Read::Foreign(why) => {
                    remove_foreign(&path, &why);
                    continue;
                }
            };
            match serde_json::from_slice::<Record>(&data) {
                Ok(rec) if rec.expires_ms != 0 && rec.expires_ms <= now => {
                    let _ = fs::remove_file(&path);
                }
                Ok(rec) => out.push((path, rec.service)),
                // Records are written whole (temp file + rename): a corrupt one
                // will not get better, and warning about it every poll helps no one.
                Err(e) => remove_foreign(&path, &format!("not a registry record: {e}")),
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
        micro_testkit::contract::registry(&r, "contract", Duration::from_millis(300), Duration::from_secs(5))
            .await
            .map_err(|e| micro_core::Error::internal("contract", e.to_string()))
    }

    #[tokio::test]
    async fn two_instances_on_one_directory_share_records() -> Result<()> {
        let (_d, a) = tmp()?;
        let b = LocalRegistry::new(a.dir())?;
        a.register(&tests_common::svc("x/y", "n1", "127.0.0.1:1"), RegisterOptions::default()).await?;
        assert_eq!(b.get_service("x/y").await?[0].nodes[0].id, "n1");
        Ok(())
    }

    fn io(e: impl std::fmt::Display) -> Error {
        Error::internal("test", e.to_string())
    }

    #[tokio::test]
    async fn garbage_files_are_removed_once() -> Result<()> {
        let (_d, r) = tmp()?;
        r.register(&tests_common::svc("s", "n1", "127.0.0.1:1"), RegisterOptions::default()).await?;
        let junk = r.dir().join("s").join("junk.json");
        fs::write(&junk, b"{not json").map_err(io)?;
        assert_eq!(r.get_service("s").await?[0].nodes.len(), 1);
        assert!(!junk.exists(), "a corrupt record is removed, not warned about at every scan");
        Ok(())
    }

    #[tokio::test]
    async fn links_fifos_devices_and_huge_files_are_never_read() -> Result<()> {
        let (d, r) = tmp()?;
        r.register(&tests_common::svc("s", "n1", "127.0.0.1:1"), RegisterOptions::default()).await?;
        let sdir = r.dir().join("s");
        std::os::unix::fs::symlink("/dev/zero", sdir.join("zero.json")).map_err(io)?;
        let fifo = sdir.join("fifo.json");
        let st = std::process::Command::new("mkfifo").arg(&fifo).status().map_err(io)?;
        assert!(st.success());
        let big = sdir.join("big.json");
        fs::File::create(&big).and_then(|f| f.set_len(MAX_RECORD + 1)).map_err(io)?;
        // A record of another service, planted behind a link to outside.
        let outside = d.path().join("outside");
        fs::create_dir(&outside).map_err(io)?;
        std::os::unix::fs::symlink(&outside, r.dir().join("planted")).map_err(io)?;
        // Bounded: a FIFO or /dev/zero read would hang or exhaust memory.
        let got = tokio::time::timeout(Duration::from_secs(10), r.list_services()).await.map_err(io)??;
        assert_eq!(got.len(), 1, "only the real record: {got:?}");
        assert_eq!(got[0].nodes[0].id, "n1");
        for gone in ["zero.json", "fifo.json", "big.json"] {
            assert!(fs::symlink_metadata(sdir.join(gone)).is_err(), "{gone} was removed");
        }
        Ok(())
    }

    #[test]
    fn a_directory_of_another_user_or_writable_by_others_is_refused() -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().map_err(io)?;
        let open = d.path().join("open");
        fs::create_dir(&open).map_err(io)?;
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).map_err(io)?;
        let e = LocalRegistry::new(&open).err().map(|e| e.detail).unwrap_or_default();
        assert!(e.contains("others can write to it (mode 777)"), "{e}");
        let under = open.join("reg");
        let e = LocalRegistry::new(&under).err().map(|e| e.detail).unwrap_or_default();
        assert!(e.contains("is writable by others (mode 777) and not sticky"), "{e}");
        let theirs = d.path().join("theirs");
        fs::create_dir(&theirs).map_err(io)?;
        if std::process::Command::new("chown").arg("65534").arg(&theirs).status().is_ok_and(|s| s.success()) {
            let e = LocalRegistry::new(&theirs).err().map(|e| e.detail).unwrap_or_default();
            assert!(e.contains("is owned by uid 65534, not by this user"), "{e}");
            assert!(e.contains("set --registry-address"), "the error says what to do: {e}");
        }
        Ok(())
    }

    #[test]
    fn the_fallback_directory_is_named_by_uid() {
        let d = LocalRegistry::default_dir();
        if std::env::var_os("XDG_RUNTIME_DIR").is_none_or(|v| v.is_empty()) {
            let uid = euid().map(|u| u.to_string()).unwrap_or_default();
            assert!(d.display().to_string().contains(&format!("micro-{uid}/registry")), "{}", d.display());
        }
    }

    #[test]
    fn escaping_keeps_names_inside_the_directory() {
        assert_eq!(escape("go.micro.srv.greeter"), "go.micro.srv.greeter");
        assert_eq!(escape("../etc"), "%2E.%2Fetc");
        assert_eq!(escape("a/b"), "a%2Fb");
    }
}
