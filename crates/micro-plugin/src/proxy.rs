//! Each component trait across the boundary: an exporter (a [`Dispatch`]
//! over `Arc<dyn Trait>`) and a proxy (`impl Trait` over a [`Remote`]).
//! Host and plugin link the same code, so the two ends always agree; the
//! method numbers below are part of the ABI.

use crate::abi::FfiObject;
use crate::object::{export, unknown_method, Dispatch, Remote, Reply};
use crate::wire::{self, Reader, Writer};
use micro_core::{
    async_trait, BoxFuture, Broker, BrokerHandler, CallOptions, Client, Endpoint, Error, Event, EventKind, Handler,
    HandlerFn, Listener, Message, Node, RegisterOptions, Registry, Request, Response, Result, SelectOptions, Selector,
    Server, Service, Socket, SocketReceiver, SocketSender, SubscribeOptions, Subscriber, Subscription, Transport,
    WatchOptions, Watcher,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn ready_err(e: Error) -> BoxFuture<'static, Result<Reply>> {
    Box::pin(std::future::ready(Err(e)))
}

/// Decodes an argument or returns the decoding error as the call's result.
macro_rules! dec {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return ready_err(e),
        }
    };
}

fn ok() -> Result<Reply> {
    Ok(Reply::default())
}

fn string_reply(s: &str) -> Result<Reply> {
    Ok(Reply::bytes(s.as_bytes().to_vec()))
}

fn take_object(objects: &mut Vec<FfiObject>, what: &str) -> Result<FfiObject> {
    if objects.is_empty() {
        return Err(Error::internal("go.micro.plugin", format!("missing {what} object")));
    }
    Ok(objects.remove(0))
}

fn reply_object(r: crate::object::RemoteReply, what: &str) -> Result<FfiObject> {
    r.object.ok_or_else(|| Error::internal("go.micro.plugin", format!("no {what} object returned")))
}

// ---------------------------------------------------------------- registry

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

fn export_watcher(w: Box<dyn Watcher>) -> FfiObject {
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

// ---------------------------------------------------------------- transport

mod transport_m {
    pub(super) const DIAL: u32 = 1;
    pub(super) const LISTEN: u32 = 2;
    pub(super) const NAME: u32 = 3;
}

struct TransportExport(Arc<dyn Transport>);

impl Dispatch for TransportExport {
    fn call(self: Arc<Self>, method: u32, args: &[u8], _: Vec<FfiObject>) -> BoxFuture<'static, Result<Reply>> {
        let addr = dec!(Reader::new(args).string());
        match method {
            transport_m::DIAL => Box::pin(async move { Ok(Reply::object(export_socket(self.0.dial(&addr).await?))) }),
            transport_m::LISTEN => Box::pin(async move {
                let l = self.0.listen(&addr).await?;
                Ok(Reply::object(export(Arc::new(ListenerExport(l)))))
            }),
            m => ready_err(unknown_method("transport", m)),
        }
    }
    fn call_sync(&self, method: u32, _: &[u8], _: Vec<FfiObject>) -> Result<Reply> {
        match method {
            transport_m::NAME => string_reply(self.0.name()),
            m => Err(unknown_method("transport", m)),
        }
    }
}

/// Exports a transport.
pub fn export_transport(t: Arc<dyn Transport>) -> FfiObject {
    export(Arc::new(TransportExport(t)))
}

struct TransportProxy {
    remote: Remote,
    name: String,
}

/// A transport exported by the other side.
pub fn import_transport(obj: FfiObject) -> Result<Arc<dyn Transport>> {
    let remote = Remote::new(obj)?;
    let name = remote.call_string(transport_m::NAME);
    Ok(Arc::new(TransportProxy { remote, name }))
}

#[async_trait]
impl Transport for TransportProxy {
    async fn dial(&self, addr: &str) -> Result<Box<dyn Socket>> {
        let mut w = Writer::new();
        w.str(addr);
        let r = self.remote.call(transport_m::DIAL, &w.finish(), Vec::new()).await?;
        Ok(Box::new(SocketProxy::new(reply_object(r, "socket")?)?))
    }
    async fn listen(&self, addr: &str) -> Result<Box<dyn Listener>> {
        let mut w = Writer::new();
        w.str(addr);
        let r = self.remote.call(transport_m::LISTEN, &w.finish(), Vec::new()).await?;
        let remote = Remote::new(reply_object(r, "listener")?)?;
        let addr = remote.call_string(listener_m::ADDR);
        Ok(Box::new(ListenerProxy { remote, addr }))
    }
    fn name(&self) -> &str {
        &self.name
    }
}

mod listener_m {
    pub(super) const ACCEPT: u32 = 1;
    pub(super) const ADDR: u32 = 2;
}

struct ListenerExport(Box<dyn Listener>);

impl Dispatch for ListenerExport {
    fn call(self: Arc<Self>, method: u32, _: &[u8], _: Vec<FfiObject>) -> BoxFuture<'static, Result<Reply>> {
        match method {
            listener_m::ACCEPT => Box::pin(async move { Ok(Reply::object(export_socket(self.0.accept().await?))) }),
            m => ready_err(unknown_method("listener", m)),
        }
    }
    fn call_sync(&self, method: u32, _: &[u8], _: Vec<FfiObject>) -> Result<Reply> {
        match method {
            listener_m::ADDR => string_reply(&self.0.addr()),
            m => Err(unknown_method("listener", m)),
        }
    }
}

struct ListenerProxy {
    remote: Remote,
    addr: String,
}

#[async_trait]
impl Listener for ListenerProxy {
    fn addr(&self) -> String {
        self.addr.clone()
    }
    async fn accept(&self) -> Result<Box<dyn Socket>> {
        let r = self.remote.call(listener_m::ACCEPT, &[], Vec::new()).await?;
        Ok(Box::new(SocketProxy::new(reply_object(r, "socket")?)?))
    }
}

mod socket_m {
    pub(super) const SEND: u32 = 1;
    pub(super) const RECV: u32 = 2;
    pub(super) const CLOSE: u32 = 3;
    pub(super) const LOCAL_ADDR: u32 = 4;
    pub(super) const REMOTE_ADDR: u32 = 5;
    pub(super) const SPLIT: u32 = 6;
}

/// Methods of a split socket's halves, served by one object.
mod halves_m {
    pub(super) const SEND: u32 = 1;
    pub(super) const SEND_FRAMES: u32 = 2;
    pub(super) const CLOSE: u32 = 3;
    pub(super) const RECV: u32 = 4;
    pub(super) const MAX_MESSAGE_SIZE: u32 = 5;
}

struct SocketExport {
    // The trait takes `&mut self`; calls on one socket never overlap, so this lock is uncontended.
    socket: tokio::sync::Mutex<Box<dyn Socket>>,
    local: String,
    remote: String,
}

fn export_socket(s: Box<dyn Socket>) -> FfiObject {
    let (local, remote) = (s.local_addr(), s.remote_addr());
    export(Arc::new(SocketExport { socket: tokio::sync::Mutex::new(s), local, remote }))
}

impl Dispatch for SocketExport {
    fn call(self: Arc<Self>, method: u32, args: &[u8], _: Vec<FfiObject>) -> BoxFuture<'static, Result<Reply>> {
        match method {
            // Messages cross in frame encoding: a socket that speaks frames
            // (the tcp transport) writes and reads them without decoding.
            socket_m::SEND => {
                let encoded = bytes::Bytes::copy_from_slice(args);
                Box::pin(async move { self.socket.lock().await.send_frame(encoded).await.and_then(|_| ok()) })
            }
            socket_m::RECV => Box::pin(async move {
                let encoded = self.socket.lock().await.recv_frame().await?;
                Ok(Reply::bytes(encoded.to_vec()))
            }),
            socket_m::CLOSE => Box::pin(async move { self.socket.lock().await.close().await.and_then(|_| ok()) }),
            m => ready_err(unknown_method("socket", m)),
        }
    }
    fn call_sync(&self, method: u32, _: &[u8], _: Vec<FfiObject>) -> Result<Reply> {
        match method {
            socket_m::LOCAL_ADDR => string_reply(&self.local),
            socket_m::REMOTE_ADDR => string_reply(&self.remote),
            socket_m::SPLIT => {
                // Split is synchronous and nothing else runs on a socket being split.
                let Ok(mut socket) = self.socket.try_lock() else {
                    return Err(Error::internal("go.micro.plugin", "socket busy: cannot split it"));
                };
                match socket.split() {
                    None => Ok(Reply::default()),
                    Some((tx, rx)) => Ok(Reply::object(export(Arc::new(HalvesExport {
                        max: tx.max_message_size(),
                        tx: tokio::sync::Mutex::new(tx),
                        rx: tokio::sync::Mutex::new(rx),
                    })))),
                }
            }
            m => Err(unknown_method("socket", m)),
        }
    }
}

/// Both halves of a split socket, exported as one object: each half has
/// its own lock, so one task may send while another receives.
struct HalvesExport {
    tx: tokio::sync::Mutex<Box<dyn SocketSender>>,
    rx: tokio::sync::Mutex<Box<dyn SocketReceiver>>,
    max: Option<usize>,
}

impl Dispatch for HalvesExport {
    fn call(self: Arc<Self>, method: u32, args: &[u8], _: Vec<FfiObject>) -> BoxFuture<'static, Result<Reply>> {
        match method {
            halves_m::SEND => {
                let msg = dec!(micro_core::frame::decode(bytes::Bytes::copy_from_slice(args))
                    .map_err(|e| Error::bad_request("go.micro.plugin", e.to_string())));
                Box::pin(async move { self.tx.lock().await.send(msg).await.and_then(|_| ok()) })
            }
            // A batch crosses as it is and leaves in the socket's one write.
            halves_m::SEND_FRAMES => {
                let batch = bytes::Bytes::copy_from_slice(args);
                Box::pin(async move { self.tx.lock().await.send_frames(batch).await.and_then(|_| ok()) })
            }
            halves_m::CLOSE => Box::pin(async move { self.tx.lock().await.close().await.and_then(|_| ok()) }),
            halves_m::RECV => Box::pin(async move {
                let encoded = self.rx.lock().await.recv_frame().await?;
                Ok(Reply::bytes(encoded.to_vec()))
            }),
            m => ready_err(unknown_method("split socket", m)),
        }
    }
    fn call_sync(&self, method: u32, _: &[u8], _: Vec<FfiObject>) -> Result<Reply> {
        match method {
            halves_m::MAX_MESSAGE_SIZE => {
                Ok(Reply::bytes(self.max.map(|m| m as u64).unwrap_or(0).to_be_bytes().to_vec()))
            }
            m => Err(unknown_method("split socket", m)),
        }
    }
}

/// The sending half of a socket split on the other side.
struct SenderProxy {
    remote: Arc<Remote>,
    max: Option<usize>,
}

#[async_trait]
impl SocketSender for SenderProxy {
    async fn send(&mut self, msg: Message) -> Result<()> {
        self.remote.call(halves_m::SEND, &frame_of(&msg)?, Vec::new()).await.map(|_| ())
    }
    async fn send_frames(&mut self, batch: bytes::Bytes) -> Result<()> {
        self.remote.call(halves_m::SEND_FRAMES, &batch, Vec::new()).await.map(|_| ())
    }
    async fn close(&mut self) -> Result<()> {
        self.remote.call(halves_m::CLOSE, &[], Vec::new()).await.map(|_| ())
    }
    fn max_message_size(&self) -> Option<usize> {
        self.max
    }
}

/// The receiving half of a socket split on the other side.
struct ReceiverProxy {
    remote: Arc<Remote>,
}

#[async_trait]
impl SocketReceiver for ReceiverProxy {
    async fn recv(&mut self) -> Result<Message> {
        message_of(self.recv_frame().await?)
    }
    async fn recv_frame(&mut self) -> Result<bytes::Bytes> {
        let r = self.remote.call(halves_m::RECV, &[], Vec::new()).await?;
        Ok(bytes::Bytes::copy_from_slice(r.bytes.as_slice()))
    }
}

/// A message in the frame encoding sockets' messages cross the boundary in.
fn frame_of(msg: &Message) -> Result<bytes::Bytes> {
    micro_core::frame::to_frame(msg).map_err(|e| Error::internal("go.micro.plugin", e.to_string()))
}

/// A message received across the boundary, from its frame encoding.
fn message_of(frame: bytes::Bytes) -> Result<Message> {
    micro_core::frame::decode(frame)
        .map_err(|e| Error::internal("go.micro.plugin", format!("message from the other side: {e}")))
}

struct SocketProxy {
    remote: Remote,
    local_addr: String,
    remote_addr: String,
}

impl SocketProxy {
    fn new(obj: FfiObject) -> Result<Self> {
        let remote = Remote::new(obj)?;
        let local_addr = remote.call_string(socket_m::LOCAL_ADDR);
        let remote_addr = remote.call_string(socket_m::REMOTE_ADDR);
        Ok(SocketProxy { remote, local_addr, remote_addr })
    }
}

#[async_trait]
impl Socket for SocketProxy {
    async fn send(&mut self, msg: Message) -> Result<()> {
        self.remote.call(socket_m::SEND, &frame_of(&msg)?, Vec::new()).await.map(|_| ())
    }
    async fn recv(&mut self) -> Result<Message> {
        message_of(self.recv_frame().await?)
    }
    async fn send_frame(&mut self, encoded: bytes::Bytes) -> Result<()> {
        self.remote.call(socket_m::SEND, &encoded, Vec::new()).await.map(|_| ())
    }
    async fn recv_frame(&mut self) -> Result<bytes::Bytes> {
        let r = self.remote.call(socket_m::RECV, &[], Vec::new()).await?;
        Ok(bytes::Bytes::copy_from_slice(r.bytes.as_slice()))
    }
    async fn close(&mut self) -> Result<()> {
        self.remote.call(socket_m::CLOSE, &[], Vec::new()).await.map(|_| ())
    }
    fn split(&mut self) -> Option<(Box<dyn SocketSender>, Box<dyn SocketReceiver>)> {
        let r = self.remote.call_sync(socket_m::SPLIT, &[], Vec::new()).ok()?;
        let remote = Arc::new(Remote::new(r.object?).ok()?);
        let max = remote
            .call_sync(halves_m::MAX_MESSAGE_SIZE, &[], Vec::new())
            .ok()
            .and_then(|r| <[u8; 8]>::try_from(r.bytes.as_slice()).ok())
            .map(u64::from_be_bytes)
            .filter(|&m| m > 0)
            .map(|m| m as usize);
        Some((Box::new(SenderProxy { remote: remote.clone(), max }), Box::new(ReceiverProxy { remote })))
    }
    fn local_addr(&self) -> String {
        self.local_addr.clone()
    }
    fn remote_addr(&self) -> String {
        self.remote_addr.clone()
    }
}

// ---------------------------------------------------------------- selector

mod selector_m {
    pub(super) const SELECT: u32 = 1;
    pub(super) const MARK: u32 = 2;
    pub(super) const RESET: u32 = 3;
    pub(super) const NAME: u32 = 4;
}

struct SelectorExport(Arc<dyn Selector>);

impl Dispatch for SelectorExport {
    fn call(self: Arc<Self>, method: u32, args: &[u8], _: Vec<FfiObject>) -> BoxFuture<'static, Result<Reply>> {
        match method {
            selector_m::SELECT => {
                let mut r = Reader::new(args);
                let service = dec!(r.string());
                let exclude = dec!(r.strings());
                Box::pin(async move {
                    let node = self.0.select(&service, SelectOptions { exclude }).await?;
                    let mut w =
                        Writer::with_capacity(12 + node.id.len() + node.address.len() + wire::map_len(&node.metadata));
                    wire::put_node(&mut w, &node);
                    Ok(Reply::bytes(w.finish()))
                })
            }
            m => ready_err(unknown_method("selector", m)),
        }
    }
    fn call_sync(&self, method: u32, args: &[u8], _: Vec<FfiObject>) -> Result<Reply> {
        let mut r = Reader::new(args);
        match method {
            selector_m::MARK => {
                let (service, node) = (r.string()?, r.string()?);
                let err: Option<Error> = match r.u32()? {
                    0 => None,
                    _ => Some(r.json()?),
                };
                self.0.mark(&service, &node, err.as_ref().map_or(Ok(()), Err));
                ok()
            }
            selector_m::RESET => {
                self.0.reset(&r.string()?);
                ok()
            }
            selector_m::NAME => string_reply(self.0.name()),
            m => Err(unknown_method("selector", m)),
        }
    }
}

/// Exports a selector.
pub fn export_selector(s: Arc<dyn Selector>) -> FfiObject {
    export(Arc::new(SelectorExport(s)))
}

struct SelectorProxy {
    remote: Remote,
    name: String,
}

/// A selector exported by the other side.
pub fn import_selector(obj: FfiObject) -> Result<Arc<dyn Selector>> {
    let remote = Remote::new(obj)?;
    let name = remote.call_string(selector_m::NAME);
    Ok(Arc::new(SelectorProxy { remote, name }))
}

#[async_trait]
impl Selector for SelectorProxy {
    async fn select(&self, service: &str, opts: SelectOptions) -> Result<Node> {
        let mut w = Writer::new();
        w.str(service).strs(&opts.exclude);
        let r = self.remote.call(selector_m::SELECT, &w.finish(), Vec::new()).await?;
        wire::get_node(&mut Reader::new(r.bytes.as_slice()))
    }
    fn mark(&self, service: &str, node_id: &str, outcome: Result<(), &Error>) {
        let mut w = Writer::with_capacity(16 + service.len() + node_id.len());
        w.str(service).str(node_id);
        match outcome {
            Ok(()) => w.u32(0),
            Err(e) => w.u32(1).json(e),
        };
        let _ = self.remote.call_sync(selector_m::MARK, &w.finish(), Vec::new());
    }
    fn reset(&self, service: &str) {
        let mut w = Writer::new();
        w.str(service);
        let _ = self.remote.call_sync(selector_m::RESET, &w.finish(), Vec::new());
    }
    fn name(&self) -> &str {
        &self.name
    }
}

// ---------------------------------------------------------------- broker

mod broker_m {
    pub(super) const CONNECT: u32 = 1;
    pub(super) const DISCONNECT: u32 = 2;
    pub(super) const PUBLISH: u32 = 3;
    pub(super) const SUBSCRIBE: u32 = 4;
    pub(super) const ADDRESS: u32 = 5;
    pub(super) const NAME: u32 = 6;
}

struct BrokerExport(Arc<dyn Broker>);

impl Dispatch for BrokerExport {
    fn call(
        self: Arc<Self>,
        method: u32,
        args: &[u8],
        mut objects: Vec<FfiObject>,
    ) -> BoxFuture<'static, Result<Reply>> {
        let mut r = Reader::new(args);
        match method {
            broker_m::CONNECT => Box::pin(async move { self.0.connect().await.and_then(|_| ok()) }),
            broker_m::DISCONNECT => Box::pin(async move { self.0.disconnect().await.and_then(|_| ok()) }),
            broker_m::PUBLISH => {
                let topic = dec!(r.string());
                let msg = dec!(wire::get_message(&mut r));
                Box::pin(async move { self.0.publish(&topic, msg).await.and_then(|_| ok()) })
            }
            broker_m::SUBSCRIBE => {
                let topic = dec!(r.string());
                let queue = dec!(r.opt_string());
                let handler = dec!(take_object(&mut objects, "handler").and_then(import_broker_handler));
                Box::pin(async move {
                    let sub = self.0.subscribe(&topic, handler, SubscribeOptions { queue }).await?;
                    Ok(Reply::object(export(Arc::new(SubscriptionExport(sub)))))
                })
            }
            m => ready_err(unknown_method("broker", m)),
        }
    }
    fn call_sync(&self, method: u32, _: &[u8], _: Vec<FfiObject>) -> Result<Reply> {
        match method {
            broker_m::ADDRESS => string_reply(&self.0.address()),
            broker_m::NAME => string_reply(self.0.name()),
            m => Err(unknown_method("broker", m)),
        }
    }
}

/// Exports a broker.
pub fn export_broker(b: Arc<dyn Broker>) -> FfiObject {
    export(Arc::new(BrokerExport(b)))
}

struct BrokerProxy {
    remote: Remote,
    name: String,
}

/// A broker exported by the other side.
pub fn import_broker(obj: FfiObject) -> Result<Arc<dyn Broker>> {
    let remote = Remote::new(obj)?;
    let name = remote.call_string(broker_m::NAME);
    Ok(Arc::new(BrokerProxy { remote, name }))
}

#[async_trait]
impl Broker for BrokerProxy {
    async fn connect(&self) -> Result<()> {
        self.remote.call(broker_m::CONNECT, &[], Vec::new()).await.map(|_| ())
    }
    async fn disconnect(&self) -> Result<()> {
        self.remote.call(broker_m::DISCONNECT, &[], Vec::new()).await.map(|_| ())
    }
    async fn publish(&self, topic: &str, msg: Message) -> Result<()> {
        let mut w = Writer::new();
        w.str(topic);
        wire::put_message(&mut w, &msg);
        self.remote.call(broker_m::PUBLISH, &w.finish(), Vec::new()).await.map(|_| ())
    }
    async fn subscribe(
        &self,
        topic: &str,
        handler: BrokerHandler,
        opts: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>> {
        let mut w = Writer::new();
        w.str(topic).opt_str(opts.queue.as_deref());
        let r = self.remote.call(broker_m::SUBSCRIBE, &w.finish(), vec![export_broker_handler(handler)]).await?;
        Ok(Box::new(SubscriptionProxy {
            remote: Remote::new(reply_object(r, "subscription")?)?,
            topic: topic.to_string(),
            queue: opts.queue,
        }))
    }
    fn address(&self) -> String {
        self.remote.call_string(broker_m::ADDRESS)
    }
    fn name(&self) -> &str {
        &self.name
    }
}

mod subscription_m {
    pub(super) const UNSUBSCRIBE: u32 = 1;
}

struct SubscriptionExport(Box<dyn Subscription>);

impl Dispatch for SubscriptionExport {
    fn call(self: Arc<Self>, method: u32, _: &[u8], _: Vec<FfiObject>) -> BoxFuture<'static, Result<Reply>> {
        match method {
            subscription_m::UNSUBSCRIBE => Box::pin(async move { self.0.unsubscribe().await.and_then(|_| ok()) }),
            m => ready_err(unknown_method("subscription", m)),
        }
    }
    fn call_sync(&self, method: u32, _: &[u8], _: Vec<FfiObject>) -> Result<Reply> {
        Err(unknown_method("subscription", method))
    }
}

struct SubscriptionProxy {
    remote: Remote,
    topic: String,
    queue: Option<String>,
}

#[async_trait]
impl Subscription for SubscriptionProxy {
    fn topic(&self) -> &str {
        &self.topic
    }
    fn queue(&self) -> Option<&str> {
        self.queue.as_deref()
    }
    async fn unsubscribe(&self) -> Result<()> {
        self.remote.call(subscription_m::UNSUBSCRIBE, &[], Vec::new()).await.map(|_| ())
    }
}

mod handler_m {
    pub(super) const CALL: u32 = 1;
}

struct BrokerHandlerExport(BrokerHandler);

impl Dispatch for BrokerHandlerExport {
    fn call(self: Arc<Self>, method: u32, args: &[u8], _: Vec<FfiObject>) -> BoxFuture<'static, Result<Reply>> {
        if method != handler_m::CALL {
            return ready_err(unknown_method("broker handler", method));
        }
        let mut r = Reader::new(args);
        let topic = dec!(r.string());
        let msg = dec!(wire::get_message(&mut r));
        let fut = (self.0)(topic, msg);
        Box::pin(async move { fut.await.and_then(|_| ok()) })
    }
    fn call_sync(&self, method: u32, _: &[u8], _: Vec<FfiObject>) -> Result<Reply> {
        Err(unknown_method("broker handler", method))
    }
}

fn export_broker_handler(h: BrokerHandler) -> FfiObject {
    export(Arc::new(BrokerHandlerExport(h)))
}

fn import_broker_handler(obj: FfiObject) -> Result<BrokerHandler> {
    let remote = Arc::new(Remote::new(obj)?);
    Ok(Arc::new(move |topic: String, msg: Message| {
        let remote = remote.clone();
        Box::pin(async move {
            let mut w = Writer::new();
            w.str(&topic);
            wire::put_message(&mut w, &msg);
            remote.call(handler_m::CALL, &w.finish(), Vec::new()).await.map(|_| ())
        })
    }))
}

struct HandlerFnExport(HandlerFn);

impl Dispatch for HandlerFnExport {
    fn call(self: Arc<Self>, method: u32, args: &[u8], _: Vec<FfiObject>) -> BoxFuture<'static, Result<Reply>> {
        if method != handler_m::CALL {
            return ready_err(unknown_method("handler", method));
        }
        let req = dec!(wire::get_request(&mut Reader::new(args)));
        let fut = (self.0)(req);
        Box::pin(async move {
            let resp = fut.await?;
            let mut w = Writer::with_capacity(wire::response_len(&resp));
            wire::put_response(&mut w, &resp);
            Ok(Reply::bytes(w.finish()))
        })
    }
    fn call_sync(&self, method: u32, _: &[u8], _: Vec<FfiObject>) -> Result<Reply> {
        Err(unknown_method("handler", method))
    }
}

fn import_handler_fn(obj: FfiObject) -> Result<HandlerFn> {
    let remote = Arc::new(Remote::new(obj)?);
    Ok(Arc::new(move |req: Request| {
        let remote = remote.clone();
        Box::pin(async move {
            let mut w = Writer::with_capacity(wire::request_len(&req));
            wire::put_request(&mut w, &req);
            let r = remote.call(handler_m::CALL, &w.finish(), Vec::new()).await?;
            wire::get_response(&mut Reader::new(r.bytes.as_slice()))
        })
    }))
}

// ---------------------------------------------------------------- client

mod client_m {
    pub(super) const CALL: u32 = 1;
    pub(super) const PUBLISH: u32 = 2;
    pub(super) const NAME: u32 = 3;
}

struct ClientExport(Arc<dyn Client>);

impl Dispatch for ClientExport {
    fn call(self: Arc<Self>, method: u32, args: &[u8], _: Vec<FfiObject>) -> BoxFuture<'static, Result<Reply>> {
        let mut r = Reader::new(args);
        match method {
            client_m::CALL => {
                let req = dec!(wire::get_request(&mut r));
                let opts = dec!(wire::get_call_options(&mut r));
                Box::pin(async move {
                    let resp = self.0.call(req, opts).await?;
                    let mut w = Writer::with_capacity(wire::response_len(&resp));
                    wire::put_response(&mut w, &resp);
                    Ok(Reply::bytes(w.finish()))
                })
            }
            client_m::PUBLISH => {
                let topic = dec!(r.string());
                let msg = dec!(wire::get_message(&mut r));
                Box::pin(async move { self.0.publish(&topic, msg).await.and_then(|_| ok()) })
            }
            m => ready_err(unknown_method("client", m)),
        }
    }
    fn call_sync(&self, method: u32, _: &[u8], _: Vec<FfiObject>) -> Result<Reply> {
        match method {
            client_m::NAME => string_reply(self.0.name()),
            m => Err(unknown_method("client", m)),
        }
    }
}

/// Exports a client.
pub fn export_client(c: Arc<dyn Client>) -> FfiObject {
    export(Arc::new(ClientExport(c)))
}

struct ClientProxy {
    remote: Remote,
    name: String,
}

/// A client exported by the other side.
pub fn import_client(obj: FfiObject) -> Result<Arc<dyn Client>> {
    let remote = Remote::new(obj)?;
    let name = remote.call_string(client_m::NAME);
    Ok(Arc::new(ClientProxy { remote, name }))
}

#[async_trait]
impl Client for ClientProxy {
    async fn call(&self, req: Request, opts: CallOptions) -> Result<Response> {
        let mut w = Writer::with_capacity(wire::request_len(&req) + 32);
        wire::put_request(&mut w, &req);
        wire::put_call_options(&mut w, &opts);
        let r = self.remote.call(client_m::CALL, &w.finish(), Vec::new()).await?;
        wire::get_response(&mut Reader::new(r.bytes.as_slice()))
    }
    async fn publish(&self, topic: &str, msg: Message) -> Result<()> {
        let mut w = Writer::new();
        w.str(topic);
        wire::put_message(&mut w, &msg);
        self.remote.call(client_m::PUBLISH, &w.finish(), Vec::new()).await.map(|_| ())
    }
    fn name(&self) -> &str {
        &self.name
    }
}

// ---------------------------------------------------------------- server

mod server_m {
    pub(super) const HANDLE: u32 = 1;
    pub(super) const SUBSCRIBE: u32 = 2;
    pub(super) const START: u32 = 3;
    pub(super) const STOP: u32 = 4;
    pub(super) const SERVICE: u32 = 5;
    pub(super) const NAME: u32 = 6;
}

struct ServerExport(Arc<dyn Server>);

impl Dispatch for ServerExport {
    fn call(self: Arc<Self>, method: u32, _: &[u8], _: Vec<FfiObject>) -> BoxFuture<'static, Result<Reply>> {
        match method {
            server_m::START => Box::pin(async move { self.0.start().await.and_then(|_| ok()) }),
            server_m::STOP => Box::pin(async move { self.0.stop().await.and_then(|_| ok()) }),
            m => ready_err(unknown_method("server", m)),
        }
    }
    fn call_sync(&self, method: u32, args: &[u8], mut objects: Vec<FfiObject>) -> Result<Reply> {
        let mut r = Reader::new(args);
        match method {
            server_m::HANDLE => {
                let endpoint: Endpoint = r.json()?;
                let func = import_handler_fn(take_object(&mut objects, "handler")?)?;
                self.0.handle(Handler::unary(endpoint, func))?;
                ok()
            }
            server_m::SUBSCRIBE => {
                let topic = r.string()?;
                let queue = r.opt_string()?;
                let handler = import_broker_handler(take_object(&mut objects, "handler")?)?;
                self.0.subscribe(Subscriber { topic, queue, handler })?;
                ok()
            }
            server_m::SERVICE => Ok(Reply::bytes(serde_json::to_vec(&self.0.service()).unwrap_or_default())),
            server_m::NAME => string_reply(self.0.name()),
            m => Err(unknown_method("server", m)),
        }
    }
}

/// Exports a server.
pub fn export_server(s: Arc<dyn Server>) -> FfiObject {
    export(Arc::new(ServerExport(s)))
}

struct ServerProxy {
    remote: Remote,
    name: String,
}

/// A server exported by the other side.
pub fn import_server(obj: FfiObject) -> Result<Arc<dyn Server>> {
    let remote = Remote::new(obj)?;
    let name = remote.call_string(server_m::NAME);
    Ok(Arc::new(ServerProxy { remote, name }))
}

#[async_trait]
impl Server for ServerProxy {
    fn handle(&self, handler: Handler) -> Result<()> {
        if handler.stream.is_some() {
            return Err(Error::new(
                "go.micro.plugin",
                format!("stream endpoint {} cannot be served by a server from a plugin", handler.endpoint.name),
                501,
            ));
        }
        let mut w = Writer::new();
        w.json(&handler.endpoint);
        let obj = export(Arc::new(HandlerFnExport(handler.func)));
        self.remote.call_sync(server_m::HANDLE, &w.finish(), vec![obj]).map(|_| ())
    }
    fn subscribe(&self, s: Subscriber) -> Result<()> {
        let mut w = Writer::new();
        w.str(&s.topic).opt_str(s.queue.as_deref());
        self.remote.call_sync(server_m::SUBSCRIBE, &w.finish(), vec![export_broker_handler(s.handler)]).map(|_| ())
    }
    async fn start(&self) -> Result<()> {
        self.remote.call(server_m::START, &[], Vec::new()).await.map(|_| ())
    }
    async fn stop(&self) -> Result<()> {
        self.remote.call(server_m::STOP, &[], Vec::new()).await.map(|_| ())
    }
    fn service(&self) -> Service {
        self.remote
            .call_sync(server_m::SERVICE, &[], Vec::new())
            .ok()
            .and_then(|r| serde_json::from_slice(r.bytes.as_slice()).ok())
            .unwrap_or_default()
    }
    fn name(&self) -> &str {
        &self.name
    }
}
