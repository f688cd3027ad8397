//! A selector across the boundary.

use super::*;

mod selector_m {
    pub(super) const SELECT: u32 = 1;
    pub(super) const MARK: u32 = 2;
    pub(super) const RESET: u32 = 3;
    pub(super) const NAME: u32 = 4;
    /// SELECT answered synchronously if the selector can answer at once
    /// (a cached service), else an empty reply: the caller then asks with
    /// SELECT. A peer without it answers "unknown method", which the
    /// caller treats the same way.
    pub(super) const SELECT_NOW: u32 = 5;
}

fn encode(node: &Node) -> Vec<u8> {
    let mut w = Writer::with_capacity(12 + node.id.len() + node.address.len() + wire::map_len(&node.metadata));
    wire::put_node(&mut w, node);
    w.finish()
}

/// A node answered, with its encoding, by the node's address in memory.
type Encodings = std::collections::HashMap<usize, (Arc<Node>, Arc<[u8]>)>;

struct SelectorExport {
    selector: Arc<dyn Selector>,
    /// Nodes recently answered, with their encodings, by the node's address
    /// in memory: a caching selector answers with the same `Arc<Node>` call
    /// after call, so most answers cross as a shared reference to bytes
    /// encoded once. Each entry holds its node, so no address is reused
    /// while it is a key.
    encodings: std::sync::Mutex<Encodings>,
}

impl SelectorExport {
    /// A node's encoding, made once per node while the selector keeps it.
    fn encoded_shared(&self, node: Arc<Node>) -> Reply {
        let key = Arc::as_ptr(&node) as usize;
        let mut cache = self.encodings.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, bytes)) = cache.get(&key) {
            return Reply::shared(bytes.clone());
        }
        let bytes: Arc<[u8]> = encode(&node).into();
        if cache.len() >= NODE_CACHE {
            cache.clear();
        }
        cache.insert(key, (node, bytes.clone()));
        Reply::shared(bytes)
    }
}

impl Dispatch for SelectorExport {
    fn call(self: Arc<Self>, method: u32, args: &[u8], _: Vec<FfiObject>) -> BoxFuture<'static, Result<Reply>> {
        match method {
            selector_m::SELECT => {
                let mut r = Reader::new(args);
                let service = dec!(r.string());
                let exclude = dec!(r.strings());
                let protocol = dec!(r.opt_string());
                Box::pin(async move {
                    // Shared: a caching selector answers without copying the node.
                    let node = self.selector.select_shared(&service, SelectOptions { exclude, protocol }).await?;
                    Ok(self.encoded_shared(node))
                })
            }
            m => ready_err(unknown_method("selector", m)),
        }
    }
    fn call_sync(&self, method: u32, args: &[u8], _: Vec<FfiObject>) -> Result<Reply> {
        let mut r = Reader::new(args);
        match method {
            selector_m::MARK => {
                let (service, node) = (r.str()?, r.str()?);
                let err: Option<Error> = match r.u32()? {
                    0 => None,
                    _ => Some(r.json()?),
                };
                self.selector.mark(service, node, err.as_ref().map_or(Ok(()), Err));
                ok()
            }
            selector_m::RESET => {
                self.selector.reset(r.str()?);
                ok()
            }
            selector_m::NAME => string_reply(self.selector.name()),
            selector_m::SELECT_NOW => {
                let service = r.str()?;
                let exclude = r.strings()?;
                let protocol = r.opt_str()?;
                if let Some(answer) = self.selector.select_now(service, &exclude, protocol) {
                    return answer.map(|node| self.encoded_shared(node));
                }
                // A selector without `select_now`: one poll, with a waker that
                // does nothing. One that answers from its cache is ready at
                // once, and one that is not (a registry lookup) is dropped
                // here and asked with SELECT.
                let opts = SelectOptions { exclude, protocol: protocol.map(str::to_owned) };
                let mut fut = self.selector.select_shared(service, opts);
                match fut.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
                    std::task::Poll::Ready(Ok(node)) => Ok(self.encoded_shared(node)),
                    std::task::Poll::Ready(Err(e)) => Err(e),
                    std::task::Poll::Pending => Ok(Reply::default()),
                }
            }
            m => Err(unknown_method("selector", m)),
        }
    }
}

/// Exports a selector.
pub fn export_selector(s: Arc<dyn Selector>) -> FfiObject {
    export(Arc::new(SelectorExport { selector: s, encodings: Default::default() }))
}

struct SelectorProxy {
    remote: Remote,
    name: String,
    /// Nodes already decoded, by their encoding. A client selects once per
    /// call and a service has few nodes, so most answers are one of these:
    /// a hit costs a hash of ~100 bytes instead of a dozen allocations
    /// (id, address and each metadata entry).
    nodes: std::sync::Mutex<std::collections::HashMap<Box<[u8]>, Arc<Node>>>,
}

/// How many decoded nodes a selector proxy keeps; past this it starts over
/// (nodes that left the registry must not pile up).
const NODE_CACHE: usize = 256;

/// A selector exported by the other side.
pub fn import_selector(obj: FfiObject) -> Result<Arc<dyn Selector>> {
    let remote = Remote::new(obj)?;
    let name = remote.call_string(selector_m::NAME);
    Ok(Arc::new(SelectorProxy { remote, name, nodes: Default::default() }))
}

impl SelectorProxy {
    /// The node a SELECT reply encodes, decoded once per distinct encoding.
    fn node_of(&self, encoded: &[u8]) -> Result<Arc<Node>> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = nodes.get(encoded) {
            return Ok(n.clone());
        }
        let node = Arc::new(wire::get_node(&mut Reader::new(encoded))?);
        if nodes.len() >= NODE_CACHE {
            nodes.clear();
        }
        nodes.insert(encoded.into(), node.clone());
        Ok(node)
    }
}

#[async_trait]
impl Selector for SelectorProxy {
    async fn select(&self, service: &str, opts: SelectOptions) -> Result<Node> {
        self.select_shared(service, opts).await.map(|n| (*n).clone())
    }
    async fn select_shared(&self, service: &str, opts: SelectOptions) -> Result<Arc<Node>> {
        if let Some(Ok(node)) = self.select_now(service, &opts.exclude, opts.protocol.as_deref()) {
            return Ok(node);
        }
        let r = self
            .remote
            .call_encoded(selector_m::SELECT, Vec::new(), |w| {
                w.str(service).strs(&opts.exclude).opt_str(opts.protocol.as_deref());
            })
            .await?;
        self.node_of(r.bytes.as_slice())
    }
    /// Synchronously: an asynchronous crossing costs two boxes, a future
    /// across the boundary and its waker bridge, for an answer that a
    /// caching selector nearly always has at once. Any error here (none
    /// available, or a peer without SELECT_NOW) reads as "not at once": the
    /// caller then asks `select_shared`, which gives the real answer.
    fn select_now(&self, service: &str, exclude: &[String], protocol: Option<&str>) -> Option<Result<Arc<Node>>> {
        let r = self
            .remote
            .call_sync_encoded(selector_m::SELECT_NOW, Vec::new(), |w| {
                w.str(service).strs(exclude).opt_str(protocol);
            })
            .ok()?;
        if r.bytes.as_slice().is_empty() {
            return None;
        }
        Some(self.node_of(r.bytes.as_slice()))
    }
    fn mark(&self, service: &str, node_id: &str, outcome: Result<(), &Error>) {
        let _ = self.remote.call_sync_encoded(selector_m::MARK, Vec::new(), |w| {
            w.str(service).str(node_id);
            match outcome {
                Ok(()) => w.u32(0),
                Err(e) => w.u32(1).json(e),
            };
        });
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A selector answering with whatever node the test put in.
    struct Fixed(Mutex<Node>);

    #[async_trait]
    impl Selector for Fixed {
        async fn select(&self, _: &str, _: SelectOptions) -> Result<Node> {
            Ok(self.0.lock().unwrap_or_else(|p| p.into_inner()).clone())
        }
        fn mark(&self, _: &str, _: &str, _: Result<(), &Error>) {}
        fn reset(&self, _: &str) {}
        fn name(&self) -> &str {
            "fixed"
        }
    }

    fn node(id: &str, address: &str) -> Node {
        let metadata = [("protocol", "mucp"), ("transport", "tcp")].map(|(k, v)| (k.into(), v.into())).into();
        Node { id: id.into(), address: address.into(), metadata }
    }

    #[tokio::test]
    async fn the_node_cache_never_answers_with_a_stale_node() -> Result<()> {
        let host = Arc::new(Fixed(Mutex::new(node("a", "127.0.0.1:1"))));
        let proxy = import_selector(export_selector(host.clone()))?;
        let first = proxy.select_shared("s", SelectOptions::default()).await?;
        let again = proxy.select_shared("s", SelectOptions::default()).await?;
        assert!(Arc::ptr_eq(&first, &again), "the same node is decoded once");
        assert_eq!(*first, node("a", "127.0.0.1:1"));

        // The same node id at a new address, then with other metadata: the
        // encoding differs, so the cache has nothing to answer with.
        *host.0.lock().unwrap_or_else(|p| p.into_inner()) = node("a", "127.0.0.1:2");
        assert_eq!(proxy.select("s", SelectOptions::default()).await?.address, "127.0.0.1:2");
        let mut changed = node("a", "127.0.0.1:2");
        changed.metadata.insert("version".into(), "2".into());
        *host.0.lock().unwrap_or_else(|p| p.into_inner()) = changed.clone();
        assert_eq!(*proxy.select_shared("s", SelectOptions::default()).await?, changed);
        Ok(())
    }

    /// A selector that is not ready at once (it looks something up), or
    /// that fails: the synchronous attempt gives way to the asynchronous one.
    struct Slow {
        fail: bool,
    }

    #[async_trait]
    impl Selector for Slow {
        async fn select(&self, _: &str, _: SelectOptions) -> Result<Node> {
            tokio::task::yield_now().await;
            if self.fail {
                return Err(Error::internal("test", "none available"));
            }
            Ok(node("slow", "127.0.0.1:9"))
        }
        fn mark(&self, _: &str, _: &str, _: Result<(), &Error>) {}
        fn reset(&self, _: &str) {}
        fn name(&self) -> &str {
            "slow"
        }
    }

    #[tokio::test]
    async fn a_selector_not_ready_at_once_is_asked_asynchronously() -> Result<()> {
        let proxy = import_selector(export_selector(Arc::new(Slow { fail: false })))?;
        assert_eq!(proxy.select("s", SelectOptions::default()).await?.id, "slow");
        let proxy = import_selector(export_selector(Arc::new(Slow { fail: true })))?;
        let e = proxy.select("s", SelectOptions::default()).await.expect_err("the selector failed");
        assert!(e.detail.contains("none available"), "{e:?}");
        Ok(())
    }

    /// A selector that answers at once (`select_now`), counting the
    /// asynchronous selections it is asked for instead.
    struct AtOnce {
        asked: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl Selector for AtOnce {
        async fn select(&self, _: &str, _: SelectOptions) -> Result<Node> {
            self.asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(node("async", "127.0.0.1:8"))
        }
        fn select_now(&self, _: &str, exclude: &[String], protocol: Option<&str>) -> Option<Result<Arc<Node>>> {
            // What crossed: the exclusions and the protocol, intact.
            let id = format!("now-{}-{}", exclude.join("+"), protocol.unwrap_or("any"));
            Some(Ok(Arc::new(node(&id, "127.0.0.1:7"))))
        }
        fn mark(&self, _: &str, _: &str, _: Result<(), &Error>) {}
        fn reset(&self, _: &str) {}
        fn name(&self) -> &str {
            "at-once"
        }
    }

    #[tokio::test]
    async fn a_selection_at_once_crosses_without_a_future() -> Result<()> {
        let host = Arc::new(AtOnce { asked: Default::default() });
        let proxy = import_selector(export_selector(host.clone()))?;
        let n = proxy
            .select_now("s", &["a".into(), "b".into()], Some("mucp"))
            .ok_or_else(|| Error::internal("t", "none"))??;
        assert_eq!(n.id, "now-a+b-mucp");
        let n = proxy.select_shared("s", SelectOptions::default()).await?;
        assert_eq!(n.id, "now--any", "select_shared asks at once first");
        assert_eq!(host.asked.load(std::sync::atomic::Ordering::Relaxed), 0, "no asynchronous selection");
        // A selector that has nothing at once: the proxy says so, and select_shared still answers.
        let proxy = import_selector(export_selector(Arc::new(Slow { fail: false })))?;
        assert!(proxy.select_now("s", &[], None).is_none());
        assert_eq!(proxy.select_shared("s", SelectOptions::default()).await?.id, "slow");
        Ok(())
    }

    /// The exporter encodes a node the selector keeps once, and sends that
    /// encoding by reference; another node, or the same id changed, is
    /// encoded afresh; the cache stays bounded.
    #[test]
    fn a_kept_node_is_encoded_once() {
        let export = SelectorExport { selector: Arc::new(Slow { fail: false }), encodings: Default::default() };
        let kept = Arc::new(node("a", "127.0.0.1:1"));
        let shared = |r: Reply| r.shared.map(|b| (b.as_ptr() as usize, b.to_vec()));
        let first = shared(export.encoded_shared(kept.clone()));
        let again = shared(export.encoded_shared(kept.clone()));
        assert!(first.is_some() && first == again, "the same bytes, shared");
        let changed = shared(export.encoded_shared(Arc::new(node("a", "127.0.0.1:2"))));
        assert_ne!(changed.map(|c| c.1), first.map(|f| f.1), "a changed node is encoded afresh");
        for i in 0..NODE_CACHE * 2 {
            export.encoded_shared(Arc::new(node(&format!("n{i}"), "127.0.0.1:1")));
            assert!(export.encodings.lock().unwrap_or_else(|p| p.into_inner()).len() <= NODE_CACHE);
        }
    }

    #[tokio::test]
    async fn the_node_cache_stays_bounded() -> Result<()> {
        let host = Arc::new(Fixed(Mutex::new(node("n0", "127.0.0.1:1"))));
        let proxy = SelectorProxy {
            remote: Remote::new(export_selector(host.clone()))?,
            name: "fixed".into(),
            nodes: Default::default(),
        };
        for i in 0..NODE_CACHE * 3 {
            *host.0.lock().unwrap_or_else(|p| p.into_inner()) = node(&format!("n{i}"), "127.0.0.1:1");
            assert_eq!(proxy.select_shared("s", SelectOptions::default()).await?.id, format!("n{i}"));
            assert!(proxy.nodes.lock().unwrap_or_else(|p| p.into_inner()).len() <= NODE_CACHE);
        }
        Ok(())
    }
}
