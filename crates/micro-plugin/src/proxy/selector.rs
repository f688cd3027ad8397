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
    /// The selector's candidates for a service and protocol, and how it
    /// chooses among them; an empty reply when it has none to give (the
    /// caller then selects per call). A peer without it answers "unknown
    /// method", and is not asked again.
    pub(super) const CANDIDATES: u32 = 6;
}

fn encode(node: &Node) -> Vec<u8> {
    let mut w = Writer::with_capacity(12 + node.id.len() + node.address.len() + wire::map_len(&node.metadata));
    wire::put_node(&mut w, node);
    w.finish()
}

/// A node answered, with its encoding, by the node's address in memory.
type Encodings = std::collections::HashMap<usize, (Arc<Node>, Arc<[u8]>), ByAddress>;

/// Hashes a key that is a memory address: one multiply, where the default
/// SipHash (built against untrusted keys, which addresses are not) costs
/// more than the rest of the lookup. Both node caches look up on every call.
#[derive(Default, Clone, Copy)]
struct ByAddress;

impl std::hash::BuildHasher for ByAddress {
    type Hasher = AddressHasher;
    fn build_hasher(&self) -> AddressHasher {
        AddressHasher(0)
    }
}

#[derive(Default)]
struct AddressHasher(u64);

impl std::hash::Hasher for AddressHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn finish(&self) -> u64 {
        // The multiply leaves an aligned address's zero low bits zero, and the
        // table picks buckets by the low bits: fold the high half in.
        self.0 ^ (self.0 >> 32)
    }
}

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
    /// A selection's reply: the node, and whether the selector wants to
    /// hear of successes now (the hint bit set when it does not).
    fn answer(&self, node: Arc<Node>) -> Reply {
        let mut reply = self.encoded_shared(node);
        reply.hint = !self.selector.wants_success_marks();
        reply
    }

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
                    Ok(self.answer(node))
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
            selector_m::CANDIDATES => {
                let service = r.str()?;
                let protocol = r.opt_str()?;
                let Some(c) = self.selector.candidates(service, protocol) else {
                    return Ok(Reply::default());
                };
                let mut w = Writer::new();
                // A choice this side cannot name: the caller selects per call.
                if !wire::put_candidates(&mut w, &c?) {
                    return Ok(Reply::default());
                }
                let mut reply = Reply::bytes(w.finish());
                reply.hint = !self.selector.wants_success_marks();
                Ok(reply)
            }
            selector_m::SELECT_NOW => {
                let service = r.str()?;
                let exclude = r.strings()?;
                let protocol = r.opt_str()?;
                if let Some(answer) = self.selector.select_now(service, &exclude, protocol) {
                    return answer.map(|node| self.answer(node));
                }
                // A selector without `select_now`: one poll, with a waker that
                // does nothing. One that answers from its cache is ready at
                // once, and one that is not (a registry lookup) is dropped
                // here and asked with SELECT.
                let opts = SelectOptions { exclude, protocol: protocol.map(str::to_owned) };
                let mut fut = self.selector.select_shared(service, opts);
                match fut.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
                    std::task::Poll::Ready(Ok(node)) => Ok(self.answer(node)),
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
    /// Nodes already decoded (see [`Decoded`]).
    nodes: std::sync::Mutex<Decoded>,
    /// What the latest selection said of success marks: while the other
    /// side's selector needs none (nothing is failing), `mark(Ok)` does not
    /// cross. A success is the common outcome of every call, and its
    /// crossing was 2% of a plugin client's CPU time (BENCHMARKS.md).
    success_marks: std::sync::atomic::AtomicBool,
    /// Whether the other side answers CANDIDATES (until it says it does not know it).
    candidates: std::sync::atomic::AtomicBool,
}

/// The nodes a selector proxy has decoded. A client selects once per call
/// and a service has few nodes, so most answers are one of these: a hit
/// costs a lookup instead of a dozen allocations (id, address and each
/// metadata entry).
#[derive(Default)]
struct Decoded {
    /// By their encoding (the same bytes `by_address` keeps).
    by_bytes: std::collections::HashMap<Arc<[u8]>, Arc<Node>>,
    /// By where the other side keeps the encoding, with the bytes: a
    /// caching selector's answers are shared from the exporter's cache at
    /// the same address every time, and an address costs one multiply to
    /// hash where ~100 bytes cost a SipHash. The bytes are compared on a
    /// hit, so an address reused for another encoding is a miss, never a
    /// stale node.
    by_address: std::collections::HashMap<(usize, usize), KeptNode, ByAddress>,
}

/// A decoded node with the encoding it was decoded from.
type KeptNode = (Arc<[u8]>, Arc<Node>);

/// How many decoded nodes a selector proxy keeps; past this it starts over
/// (nodes that left the registry must not pile up).
const NODE_CACHE: usize = 256;

/// A selector exported by the other side.
pub fn import_selector(obj: FfiObject) -> Result<Arc<dyn Selector>> {
    let remote = Remote::new(obj)?;
    let name = remote.call_string(selector_m::NAME);
    Ok(Arc::new(SelectorProxy::new(remote, name)))
}

/// A selection's arguments, as SELECT and SELECT_NOW take them.
fn put_selection(w: &mut Writer, service: &str, exclude: &[String], protocol: Option<&str>) {
    w.str(service).strs(exclude).opt_str(protocol);
}

impl SelectorProxy {
    fn new(remote: Remote, name: String) -> Self {
        // Every success is marked until a selection says otherwise.
        SelectorProxy {
            remote,
            name,
            nodes: Default::default(),
            success_marks: std::sync::atomic::AtomicBool::new(true),
            candidates: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// The node a selection's reply encodes, noting its hint.
    fn answered(&self, r: &RemoteReply) -> Result<Arc<Node>> {
        self.success_marks.store(!r.hint, std::sync::atomic::Ordering::Relaxed);
        self.node_of(r.bytes.as_slice())
    }

    /// The node a SELECT reply encodes, decoded once per distinct encoding.
    fn node_of(&self, encoded: &[u8]) -> Result<Arc<Node>> {
        let at = (encoded.as_ptr() as usize, encoded.len());
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((bytes, n)) = nodes.by_address.get(&at) {
            if **bytes == *encoded {
                return Ok(n.clone());
            }
        }
        let kept = match nodes.by_bytes.get_key_value(encoded) {
            Some((bytes, n)) => (bytes.clone(), n.clone()),
            None => {
                let node = Arc::new(wire::get_node(&mut Reader::new(encoded))?);
                let bytes: Arc<[u8]> = encoded.into();
                if nodes.by_bytes.len() >= NODE_CACHE {
                    nodes.by_bytes.clear();
                }
                nodes.by_bytes.insert(bytes.clone(), node.clone());
                (bytes, node)
            }
        };
        if nodes.by_address.len() >= NODE_CACHE {
            nodes.by_address.clear();
        }
        let node = kept.1.clone();
        nodes.by_address.insert(at, kept);
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
                put_selection(w, service, &opts.exclude, opts.protocol.as_deref())
            })
            .await?;
        self.answered(&r)
    }
    /// Synchronously: an asynchronous crossing costs two boxes, a future
    /// across the boundary and its waker bridge, for an answer that a
    /// caching selector nearly always has at once. Any error here (none
    /// available, or a peer without SELECT_NOW) reads as "not at once": the
    /// caller then asks `select_shared`, which gives the real answer.
    fn select_now(&self, service: &str, exclude: &[String], protocol: Option<&str>) -> Option<Result<Arc<Node>>> {
        let r = self
            .remote
            .call_sync_encoded(selector_m::SELECT_NOW, Vec::new(), |w| put_selection(w, service, exclude, protocol))
            .ok()?;
        if r.bytes.as_slice().is_empty() {
            return None;
        }
        Some(self.answered(&r))
    }
    /// Across the boundary: a client that chooses among these itself for a
    /// few milliseconds crosses once per thread in that time, not once per call.
    fn candidates(&self, service: &str, protocol: Option<&str>) -> Option<Result<Candidates>> {
        if !self.candidates.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let r = match self.remote.call_sync_encoded(selector_m::CANDIDATES, Vec::new(), |w| {
            w.str(service).opt_str(protocol);
        }) {
            Ok(r) => r,
            Err(e) if is_unknown_method(&e) => {
                self.candidates.store(false, std::sync::atomic::Ordering::Relaxed);
                return None;
            }
            Err(e) => return Some(Err(e)),
        };
        if r.bytes.as_slice().is_empty() {
            return None;
        }
        self.success_marks.store(!r.hint, std::sync::atomic::Ordering::Relaxed);
        // Decoded afresh, not through the node cache of selections: this
        // happens once per client thread every few milliseconds.
        wire::get_candidates(&mut Reader::new(r.bytes.as_slice())).transpose()
    }
    fn mark(&self, service: &str, node_id: &str, outcome: Result<(), &Error>) {
        if outcome.is_ok() && !self.wants_success_marks() {
            return;
        }
        if outcome.is_err() {
            // The other side now has a failing node: the successes that
            // follow cross (and forgive it) until a selection says otherwise.
            self.success_marks.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let _ = self.remote.call_sync_encoded(selector_m::MARK, Vec::new(), |w| {
            w.str(service).str(node_id);
            match outcome {
                Ok(()) => w.u32(0),
                Err(e) => w.u32(1).json(e),
            };
        });
    }
    /// As the other side's selector said with its latest answer, or `true`
    /// since this proxy last marked a failure. A failure another client
    /// marks in between is forgiven by a success after a later selection.
    fn wants_success_marks(&self) -> bool {
        self.success_marks.load(std::sync::atomic::Ordering::Relaxed)
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
        let proxy = SelectorProxy::new(Remote::new(export_selector(host.clone()))?, "fixed".into());
        for i in 0..NODE_CACHE * 3 {
            *host.0.lock().unwrap_or_else(|p| p.into_inner()) = node(&format!("n{i}"), "127.0.0.1:1");
            assert_eq!(proxy.select_shared("s", SelectOptions::default()).await?.id, format!("n{i}"));
            let nodes = proxy.nodes.lock().unwrap_or_else(|p| p.into_inner());
            assert!(nodes.by_bytes.len() <= NODE_CACHE && nodes.by_address.len() <= NODE_CACHE);
        }
        Ok(())
    }

    /// A selector that forgives failures on success, as the cache selector
    /// does: it wants success marks only while a node is failing. It counts
    /// the marks that reach it.
    struct Forgiving {
        failing: std::sync::atomic::AtomicBool,
        marks: Mutex<Vec<(String, bool)>>,
        /// Whether it answers `select_now` (else only asynchronously, after a pending poll).
        at_once: bool,
    }

    #[async_trait]
    impl Selector for Forgiving {
        async fn select(&self, _: &str, _: SelectOptions) -> Result<Node> {
            if !self.at_once {
                tokio::task::yield_now().await;
            }
            Ok(node("n", "127.0.0.1:9"))
        }
        fn select_now(&self, _: &str, _: &[String], _: Option<&str>) -> Option<Result<Arc<Node>>> {
            self.at_once.then(|| Ok(Arc::new(node("n", "127.0.0.1:9"))))
        }
        fn mark(&self, _: &str, node_id: &str, outcome: Result<(), &Error>) {
            self.marks.lock().unwrap_or_else(|p| p.into_inner()).push((node_id.into(), outcome.is_ok()));
            self.failing.store(outcome.is_err(), std::sync::atomic::Ordering::Relaxed);
        }
        fn wants_success_marks(&self) -> bool {
            self.failing.load(std::sync::atomic::Ordering::Relaxed)
        }
        fn reset(&self, _: &str) {}
        fn name(&self) -> &str {
            "forgiving"
        }
    }

    #[tokio::test]
    async fn success_marks_cross_only_while_the_selector_wants_them() -> Result<()> {
        // Answered at once (SELECT_NOW), and only asynchronously (SELECT, and
        // the exporter's poll of `select_shared` that finds it pending).
        for at_once in [true, false] {
            let host = Arc::new(Forgiving { failing: Default::default(), marks: Mutex::new(Vec::new()), at_once });
            let proxy = import_selector(export_selector(host.clone()))?;
            let marks = || host.marks.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let err = Error::internal("t", "connection refused");

            // Nothing failing: the selection says so, and the success stays on this side.
            proxy.select_shared("s", SelectOptions::default()).await?;
            proxy.mark("s", "n", Ok(()));
            assert_eq!(marks(), vec![], "a success that changes nothing does not cross ({at_once})");

            // A failure always crosses, and the success after it too, even
            // before a selection has said that a node is failing.
            proxy.mark("s", "n", Err(&err));
            assert_eq!(marks(), vec![("n".to_string(), false)]);
            proxy.mark("s", "n", Ok(()));
            assert_eq!(marks(), vec![("n".to_string(), false), ("n".to_string(), true)]);

            // Forgiven: after the next selection, successes stay on this side again.
            proxy.select_shared("s", SelectOptions::default()).await?;
            proxy.mark("s", "n", Ok(()));
            assert_eq!(marks().len(), 2, "({at_once})");

            // A failure marked by another client: the next selection says so,
            // and the success after it crosses and forgives it.
            host.mark("s", "n", Err(&err));
            proxy.select_shared("s", SelectOptions::default()).await?;
            proxy.mark("s", "n", Ok(()));
            assert_eq!(marks().last(), Some(&("n".to_string(), true)), "({at_once})");
            assert!(!host.wants_success_marks());
        }

        // A selector that keeps the default wants every success.
        let fixed = Arc::new(Fixed(Mutex::new(node("a", "127.0.0.1:1"))));
        let proxy = import_selector(export_selector(fixed))?;
        proxy.select_shared("s", SelectOptions::default()).await?;
        assert!(proxy.wants_success_marks());
        Ok(())
    }

    use micro_core::Choice;

    /// A selector that gives candidates, or none, or fails to.
    struct Giving(Option<Result<Candidates>>);

    #[async_trait]
    impl Selector for Giving {
        async fn select(&self, _: &str, _: SelectOptions) -> Result<Node> {
            Ok(node("g", "127.0.0.1:1"))
        }
        fn candidates(&self, service: &str, protocol: Option<&str>) -> Option<Result<Candidates>> {
            assert_eq!((service, protocol), ("s", Some("mucp")), "the arguments cross intact");
            self.0.clone()
        }
        fn mark(&self, _: &str, _: &str, _: Result<(), &Error>) {}
        fn reset(&self, _: &str) {}
        fn name(&self) -> &str {
            "giving"
        }
    }

    #[tokio::test]
    async fn candidates_cross_with_how_to_choose() -> Result<()> {
        let nodes = vec![Arc::new(node("a", "127.0.0.1:1")), Arc::new(node("b", "127.0.0.1:2"))];
        for choice in [Choice::Random, Choice::RoundRobin] {
            let given = Candidates { nodes: nodes.clone(), choice };
            let proxy = import_selector(export_selector(Arc::new(Giving(Some(Ok(given.clone()))))))?;
            assert_eq!(proxy.candidates("s", Some("mucp")).transpose()?, Some(given));
        }
        // None to give: none here either (the client selects per call).
        let proxy = import_selector(export_selector(Arc::new(Giving(None))))?;
        assert!(proxy.candidates("s", Some("mucp")).is_none());
        // The selector's error, as it said it.
        let e = Error::not_found("go.micro.client", "service s: none available");
        let proxy = import_selector(export_selector(Arc::new(Giving(Some(Err(e.clone()))))))?;
        let got = proxy.candidates("s", Some("mucp")).ok_or_else(|| Error::internal("t", "no answer"))?;
        assert_eq!(got.err().map(|e| (e.code, e.detail)), Some((404, e.detail)));
        Ok(())
    }

    /// Gives candidates, and wants success marks while `failing`.
    struct Hinting(std::sync::atomic::AtomicBool);

    #[async_trait]
    impl Selector for Hinting {
        async fn select(&self, _: &str, _: SelectOptions) -> Result<Node> {
            Ok(node("h", "127.0.0.1:1"))
        }
        fn candidates(&self, _: &str, _: Option<&str>) -> Option<Result<Candidates>> {
            Some(Ok(Candidates { nodes: vec![Arc::new(node("h", "127.0.0.1:1"))], choice: Choice::Random }))
        }
        fn mark(&self, _: &str, _: &str, outcome: Result<(), &Error>) {
            self.0.store(outcome.is_err(), std::sync::atomic::Ordering::Relaxed);
        }
        fn wants_success_marks(&self) -> bool {
            self.0.load(std::sync::atomic::Ordering::Relaxed)
        }
        fn reset(&self, _: &str) {}
        fn name(&self) -> &str {
            "hinting"
        }
    }

    #[tokio::test]
    async fn candidates_say_whether_successes_must_cross() -> Result<()> {
        // Clients now select from candidates nearly always: they are what
        // tells the proxy that a failure is forgiven.
        let host = Arc::new(Hinting(Default::default()));
        let proxy = import_selector(export_selector(host.clone()))?;
        proxy.candidates("s", None).transpose()?;
        assert!(!proxy.wants_success_marks(), "nothing failing");
        proxy.mark("s", "h", Err(&Error::internal("t", "connection refused")));
        assert!(proxy.wants_success_marks(), "a failure marked: successes cross");
        proxy.candidates("s", None).transpose()?;
        assert!(proxy.wants_success_marks(), "still failing on the other side");
        host.mark("s", "h", Ok(()));
        proxy.candidates("s", None).transpose()?;
        assert!(!proxy.wants_success_marks(), "forgiven, as the candidates said");
        Ok(())
    }

    /// A peer from before CANDIDATES: it answers "unknown method", counted.
    struct Older {
        inner: Arc<SelectorExport>,
        asked: std::sync::atomic::AtomicUsize,
    }

    impl Dispatch for Older {
        fn call(
            self: Arc<Self>,
            method: u32,
            args: &[u8],
            objects: Vec<FfiObject>,
        ) -> BoxFuture<'static, Result<Reply>> {
            self.inner.clone().call(method, args, objects)
        }
        fn call_sync(&self, method: u32, args: &[u8], objects: Vec<FfiObject>) -> Result<Reply> {
            if method == selector_m::CANDIDATES {
                self.asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(unknown_method("selector", method));
            }
            self.inner.call_sync(method, args, objects)
        }
    }

    #[tokio::test]
    async fn a_peer_without_candidates_is_asked_once() -> Result<()> {
        let given = Candidates { nodes: vec![Arc::new(node("a", "127.0.0.1:1"))], choice: Choice::Random };
        let older = Arc::new(Older {
            inner: Arc::new(SelectorExport {
                selector: Arc::new(Giving(Some(Ok(given)))),
                encodings: Default::default(),
            }),
            asked: Default::default(),
        });
        let proxy = import_selector(export(older.clone()))?;
        for _ in 0..3 {
            assert!(proxy.candidates("s", Some("mucp")).is_none());
        }
        assert_eq!(older.asked.load(std::sync::atomic::Ordering::Relaxed), 1);
        // Selections still cross as before.
        assert_eq!(proxy.select_shared("s", SelectOptions::default()).await?.id, "g");
        Ok(())
    }

    #[tokio::test]
    async fn an_encoding_at_a_reused_address_is_decoded_afresh() -> Result<()> {
        let proxy = SelectorProxy::new(Remote::new(export_selector(Arc::new(Slow { fail: false })))?, "slow".into());
        let mut buf = encode(&node("a", "127.0.0.1:1"));
        // (A node's metadata is a HashMap: another encoding of the same node may order it otherwise.)
        let a = buf.clone();
        let first = proxy.node_of(&buf)?;
        let at = (buf.as_ptr() as usize, buf.len());
        assert!(proxy.nodes.lock().unwrap_or_else(|p| p.into_inner()).by_address.contains_key(&at));
        assert!(Arc::ptr_eq(&first, &proxy.node_of(&buf)?), "found by its address");
        // The same address and length, other bytes: as when the other side
        // frees an encoding and makes another where it was.
        let other = encode(&node("b", "127.0.0.1:2"));
        assert_eq!(other.len(), buf.len());
        buf.copy_from_slice(&other);
        assert_eq!(proxy.node_of(&buf)?.id, "b", "never the node that was there before");
        // The first encoding again, elsewhere: found by its bytes.
        assert_ne!(a.as_ptr(), buf.as_ptr());
        assert!(Arc::ptr_eq(&first, &proxy.node_of(&a)?));
        Ok(())
    }
}
