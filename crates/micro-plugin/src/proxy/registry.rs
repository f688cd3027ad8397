//! A registry and its watchers across the boundary.

use super::*;
use std::sync::atomic::{AtomicBool, Ordering};

mod registry_m {
    pub(super) const REGISTER: u32 = 1;
    pub(super) const DEREGISTER: u32 = 2;
    pub(super) const GET_SERVICE: u32 = 3;
    pub(super) const LIST_SERVICES: u32 = 4;
    pub(super) const WATCH: u32 = 5;
    pub(super) const NAME: u32 = 6;
}

struct RegistryExport(Arc<dyn Registry>);

impl Dispatch for RegistryExport {
    fn call(self: Arc<Self>, method: u32, args: &[u8], _: Vec<FfiObject>) -> BoxFuture<'static, Result<Reply>> {
        use registry_m::*;
        let mut r = Reader::new(args);
        match method {
            REGISTER => {
                let svc: Service = dec!(r.json());
                let ttl = dec!(r.duration());
                Box::pin(async move { self.0.register(&svc, RegisterOptions { ttl }).await.and_then(|_| ok()) })
            }
            DEREGISTER => {
                let svc: Service = dec!(r.json());
                Box::pin(async move { self.0.deregister(&svc).await.and_then(|_| ok()) })
            }
            GET_SERVICE => {
                let name = dec!(r.string());
                Box::pin(async move {
                    let v = self.0.get_service(&name).await?;
                    Ok(Reply::bytes(serde_json::to_vec(&v).unwrap_or_default()))
                })
            }
            LIST_SERVICES => Box::pin(async move {
                let v = self.0.list_services().await?;
                Ok(Reply::bytes(serde_json::to_vec(&v).unwrap_or_default()))
            }),
            WATCH => {
                let service = dec!(r.opt_string());
                Box::pin(async move {
                    let w = self.0.watch(WatchOptions { service }).await?;
                    Ok(Reply::object(export_watcher(w)))
                })
            }
            m => ready_err(unknown_method("registry", m)),
        }
    }

    fn call_sync(&self, method: u32, _: &[u8], _: Vec<FfiObject>) -> Result<Reply> {
        match method {
            registry_m::NAME => string_reply(self.0.name()),
            m => Err(unknown_method("registry", m)),
        }
    }
}

/// Exports a registry.
pub fn export_registry(r: Arc<dyn Registry>) -> FfiObject {
    export(Arc::new(RegistryExport(r)))
}

struct RegistryProxy {
    remote: Remote,
    name: String,
}

/// A registry exported by the other side.
pub fn import_registry(obj: FfiObject) -> Result<Arc<dyn Registry>> {
    let remote = Remote::new(obj)?;
    let name = remote.call_string(registry_m::NAME);
    Ok(Arc::new(RegistryProxy { remote, name }))
}

#[async_trait]
impl Registry for RegistryProxy {
    async fn register(&self, service: &Service, opts: RegisterOptions) -> Result<()> {
        let mut w = Writer::new();
        w.json(service).duration(opts.ttl);
        self.remote.call(registry_m::REGISTER, &w.finish(), Vec::new()).await.map(|_| ())
    }
    async fn deregister(&self, service: &Service) -> Result<()> {
        let mut w = Writer::new();
        w.json(service);
        self.remote.call(registry_m::DEREGISTER, &w.finish(), Vec::new()).await.map(|_| ())
    }
    async fn get_service(&self, name: &str) -> Result<Vec<Service>> {
        let mut w = Writer::new();
        w.str(name);
        let r = self.remote.call(registry_m::GET_SERVICE, &w.finish(), Vec::new()).await?;
        serde_json::from_slice(r.bytes.as_slice()).map_err(|e| Error::internal("go.micro.plugin", e.to_string()))
    }
    async fn list_services(&self) -> Result<Vec<Service>> {
        let r = self.remote.call(registry_m::LIST_SERVICES, &[], Vec::new()).await?;
        serde_json::from_slice(r.bytes.as_slice()).map_err(|e| Error::internal("go.micro.plugin", e.to_string()))
    }
    async fn watch(&self, opts: WatchOptions) -> Result<Box<dyn Watcher>> {
        let mut w = Writer::new();
        w.opt_str(opts.service.as_deref());
        let r = self.remote.call(registry_m::WATCH, &w.finish(), Vec::new()).await?;
        Ok(Box::new(WatcherProxy { remote: Remote::new(reply_object(r, "watcher")?)? }))
    }
    fn name(&self) -> &str {
        &self.name
    }
}

// ---------------------------------------------------------------- watcher

mod watcher_m {
    pub(super) const NEXT: u32 = 1;
    pub(super) const STOP: u32 = 2;
}

struct WatcherExport {
    watcher: tokio::sync::Mutex<Box<dyn Watcher>>,
    stopped: AtomicBool,
    stop: tokio::sync::Notify,
}

pub(super) fn export_watcher(w: Box<dyn Watcher>) -> FfiObject {
    export(Arc::new(WatcherExport {
        watcher: tokio::sync::Mutex::new(w),
        stopped: AtomicBool::new(false),
        stop: tokio::sync::Notify::new(),
    }))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct WireEvent {
    action: EventKind,
    service: Service,
}

impl Dispatch for WatcherExport {
    fn call(self: Arc<Self>, method: u32, _: &[u8], _: Vec<FfiObject>) -> BoxFuture<'static, Result<Reply>> {
        match method {
            watcher_m::NEXT => Box::pin(async move {
                let stopped = || Error::internal("go.micro.registry", "watcher stopped");
                if self.stopped.load(Ordering::Acquire) {
                    return Err(stopped());
                }
                let ev = tokio::select! {
                    ev = async { self.watcher.lock().await.next().await } => ev?,
                    _ = self.stop.notified() => return Err(stopped()),
                };
                let wire = WireEvent { action: ev.kind, service: ev.service };
                Ok(Reply::bytes(serde_json::to_vec(&wire).unwrap_or_default()))
            }),
            m => ready_err(unknown_method("watcher", m)),
        }
    }
    fn call_sync(&self, method: u32, _: &[u8], _: Vec<FfiObject>) -> Result<Reply> {
        match method {
            watcher_m::STOP => {
                self.stopped.store(true, Ordering::Release);
                self.stop.notify_waiters();
                if let Ok(w) = self.watcher.try_lock() {
                    w.stop();
                }
                ok()
            }
            m => Err(unknown_method("watcher", m)),
        }
    }
}

struct WatcherProxy {
    remote: Remote,
}

#[async_trait]
impl Watcher for WatcherProxy {
    async fn next(&mut self) -> Result<Event> {
        let r = self.remote.call(watcher_m::NEXT, &[], Vec::new()).await?;
        let ev: WireEvent = serde_json::from_slice(r.bytes.as_slice())
            .map_err(|e| Error::internal("go.micro.plugin", e.to_string()))?;
        Ok(Event { kind: ev.action, service: ev.service })
    }
    fn stop(&self) {
        let _ = self.remote.call_sync(watcher_m::STOP, &[], Vec::new());
    }
}
