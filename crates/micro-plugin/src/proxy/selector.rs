//! A selector across the boundary.

use super::*;

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
                let protocol = dec!(r.opt_string());
                Box::pin(async move {
                    let node = self.0.select(&service, SelectOptions { exclude, protocol }).await?;
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
        w.str(service).strs(&opts.exclude).opt_str(opts.protocol.as_deref());
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
