//! A server across the boundary: the handlers and subscribers it is given cross the other way.

use super::*;

mod server_m {
    pub(super) const HANDLE: u32 = 1;
    pub(super) const SUBSCRIBE: u32 = 2;
    pub(super) const START: u32 = 3;
    pub(super) const STOP: u32 = 4;
    pub(super) const SERVICE: u32 = 5;
    pub(super) const NAME: u32 = 6;
    pub(super) const HANDLE_STREAM: u32 = 7;
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
            server_m::HANDLE_STREAM => {
                let endpoint: Endpoint = r.json()?;
                let stream = import_stream_handler(take_object(&mut objects, "stream handler")?)?;
                self.0.handle(Handler::streaming(endpoint, stream))?;
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
        let mut w = Writer::new();
        w.json(&handler.endpoint);
        let (method, obj) = match handler.stream {
            Some(stream) => (server_m::HANDLE_STREAM, export_stream_handler(stream)),
            None => (server_m::HANDLE, export_handler_fn(handler.func)),
        };
        self.remote.call_sync(method, &w.finish(), vec![obj]).map(|_| ())
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
