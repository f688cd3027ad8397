//! The built-in selectors: `random` and `roundrobin`, both over a cache of
//! registry answers kept fresh by a registry watch.
//!
//! Every call by service name passes through `select`, so its path is kept
//! to one short lock and no copies: a cached answer is an immutable
//! snapshot behind an `Arc` (its nodes in `Arc`s too), replaced whole when
//! a watch event changes it; nodes are picked without collecting lists;
//! failing nodes are only looked up while some node is failing.

use crate::registry::apply_event;
use micro_core::{
    async_trait, Candidates, Choice, Error, Node, Registry, Result, SelectOptions, Selector, SelectorOptions, Service,
    WatchOptions,
};
use rand::Rng;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How a node is picked among the available ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Uniformly at random.
    Random,
    /// In turn.
    RoundRobin,
}

/// A selector with a registry cache.
pub struct CacheSelector {
    inner: Arc<Inner>,
    strategy: Strategy,
}

struct Inner {
    registry: Arc<dyn Registry>,
    ttl: Duration,
    cache: Mutex<HashMap<String, Entry>>,
    watching: AtomicBool,
    /// Nodes that keep failing, by node id: consecutive failures and until when to skip them.
    blacklist: Mutex<Blacklist>,
    /// Entries in `blacklist`: while none, a call never takes its lock.
    failing: AtomicUsize,
}

/// Failing nodes by id: consecutive failures, and until when to skip them.
type Blacklist = HashMap<String, (u32, Option<Instant>)>;

/// Consecutive connection failures after which a node is skipped.
pub const BLACKLIST_AFTER: u32 = 3;
/// How long a failing node is skipped.
pub const BLACKLIST_FOR: Duration = Duration::from_secs(30);

struct Entry {
    snapshot: Arc<Snapshot>,
    /// When the registry gave this answer; `None` once it is distrusted
    /// (the watch broke, so events may have been missed): the next call
    /// asks the registry again, and uses this answer only if the registry
    /// cannot be reached.
    fetched: Option<Instant>,
    /// The round-robin position, kept across snapshots.
    turn: Arc<AtomicUsize>,
    /// A background lookup of a stale entry is under way.
    refreshing: Arc<AtomicBool>,
}

/// One registry answer for a service, as calls read it.
struct Snapshot {
    services: Vec<Service>,
    /// Every node of every version, shared with the callers they are given to.
    nodes: Vec<Arc<Node>>,
}

impl Snapshot {
    fn new(services: Vec<Service>) -> Self {
        let nodes = services.iter().flat_map(|s| s.nodes.iter().cloned().map(Arc::new)).collect();
        Snapshot { services, nodes }
    }
}

impl CacheSelector {
    /// A selector over `opts.registry` with the given strategy.
    pub fn new(opts: SelectorOptions, strategy: Strategy) -> Self {
        CacheSelector {
            inner: Arc::new(Inner {
                registry: opts.registry,
                ttl: opts.cache_ttl,
                cache: Mutex::new(HashMap::new()),
                watching: AtomicBool::new(false),
                blacklist: Mutex::new(HashMap::new()),
                failing: AtomicUsize::new(0),
            }),
            strategy,
        }
    }

    /// The nodes currently cached for a service, fresh or stale (for tests and debugging).
    pub fn cached_nodes(&self, service: &str) -> Option<Vec<Node>> {
        let cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(service).map(|e| e.snapshot.nodes.iter().map(|n| Node::clone(n)).collect())
    }

    /// Whether the cached answer for a service is trusted (fresh, kept in
    /// step by the watch) rather than stale or missing.
    pub fn is_fresh(&self, service: &str) -> bool {
        let cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(service).and_then(|e| e.fetched).is_some_and(|t| t.elapsed() < self.inner.ttl)
    }

    fn ensure_watch(&self) {
        if self.inner.watching.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(watch_loop(weak));
    }

    /// The cached answer for `name` and its round-robin position, if there
    /// is one to answer with now; else the round-robin position to keep
    /// when the registry has been asked (`None`: a service not seen yet).
    fn cached(&self, name: &str) -> std::result::Result<Answer, Option<Arc<AtomicUsize>>> {
        let cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
        match cache.get(name) {
            Some(e) if e.fetched.is_some_and(|t| t.elapsed() < self.inner.ttl) => {
                Ok((e.snapshot.clone(), e.turn.clone()))
            }
            // Stale (past its TTL, or the watch broke): answer with it now
            // and ask the registry in the background, as go-micro's cache
            // serves stale entries. A call must not wait on a registry
            // that cannot be reached (a partition): that wait would take
            // the call's whole deadline.
            Some(e) if !e.snapshot.nodes.is_empty() => {
                if !e.refreshing.swap(true, Ordering::AcqRel) {
                    tokio::spawn(refresh(self.inner.clone(), name.to_string()));
                }
                Ok((e.snapshot.clone(), e.turn.clone()))
            }
            Some(e) => Err(Some(e.turn.clone())),
            None => Err(None),
        }
    }

    /// The cached answer for `name` (fetched when missing or stale), and its
    /// round-robin position.
    async fn snapshot(&self, name: &str) -> Result<Answer> {
        let turn = match self.cached(name) {
            Ok(found) => return Ok(found),
            Err(turn) => turn.unwrap_or_else(|| Arc::new(AtomicUsize::new(rand::rng().random_range(0..1024)))),
        };
        self.ensure_watch();
        let services = self.inner.registry.get_service(name).await.map_err(|e| lookup_error(name, &e))?;
        Ok(store(&self.inner, name, services, turn))
    }

    /// Which nodes may be chosen now: those that speak `protocol`, are not
    /// excluded and are not failing (failing ones only when nothing else is
    /// left). Shared by [`pick`](Self::pick) and `candidates`, so that a
    /// client choosing among the candidates itself chooses as the selector would.
    fn eligible<'a>(&'a self, exclude: &'a [String], protocol: Option<&'a str>) -> Eligible<'a> {
        // Failing nodes are looked up only while some node is failing.
        let blacklist = (self.inner.failing.load(Ordering::Relaxed) > 0)
            .then(|| self.inner.blacklist.lock().unwrap_or_else(|p| p.into_inner()));
        Eligible { exclude, protocol, now: blacklist.as_ref().map(|_| Instant::now()), blacklist }
    }

    /// Picks a node of `snap` by the strategy among the eligible ones.
    fn pick(
        &self,
        service: &str,
        snap: &Snapshot,
        turn: &AtomicUsize,
        exclude: &[String],
        protocol: Option<&str>,
    ) -> Result<Arc<Node>> {
        let e = self.eligible(exclude, protocol);
        let skip = e.skips_failing(&snap.nodes);
        let admitted = |n: &&Arc<Node>| e.admits(n, skip);
        let count = snap.nodes.iter().filter(admitted).count();
        if count == 0 {
            return Err(none_available(service, snap, protocol));
        }
        let i = match self.strategy {
            Strategy::Random => rand::rng().random_range(0..count),
            Strategy::RoundRobin => turn.fetch_add(1, Ordering::Relaxed) % count,
        };
        snap.nodes.iter().filter(admitted).nth(i).cloned().ok_or_else(|| none_available(service, snap, protocol))
    }
}

/// A service's cached answer and its round-robin position.
type Answer = (Arc<Snapshot>, Arc<AtomicUsize>);

/// The rule [`CacheSelector::eligible`] gives.
struct Eligible<'a> {
    exclude: &'a [String],
    protocol: Option<&'a str>,
    /// Held only while some node is failing.
    blacklist: Option<std::sync::MutexGuard<'a, Blacklist>>,
    now: Option<Instant>,
}

impl Eligible<'_> {
    /// Speaks the protocol (or says nothing of it) and is not excluded.
    fn candidate(&self, n: &Node) -> bool {
        let speaks = match (self.protocol, n.metadata.get("protocol")) {
            (Some(want), Some(has)) => want == has,
            _ => true,
        };
        speaks && !self.exclude.contains(&n.id)
    }

    /// Is being skipped for failing.
    fn skipped(&self, n: &Node) -> bool {
        match (&self.blacklist, self.now) {
            (Some(bl), Some(now)) => bl.get(&n.id).is_some_and(|(_, until)| until.is_some_and(|u| u > now)),
            _ => false,
        }
    }

    /// Whether failing nodes are left out: only while that leaves one.
    fn skips_failing(&self, nodes: &[Arc<Node>]) -> bool {
        nodes.iter().any(|n| self.candidate(n) && !self.skipped(n))
    }

    /// May be chosen, with failing nodes left out or not (`skips_failing`).
    fn admits(&self, n: &Node, skip_failing: bool) -> bool {
        self.candidate(n) && !(skip_failing && self.skipped(n))
    }
}

/// The error of a failed registry lookup, as callers see it.
fn lookup_error(name: &str, e: &Error) -> Error {
    if e.code == 404 {
        Error::not_found("go.micro.client", format!("service {name}: not found"))
    } else {
        Error::internal("go.micro.client", format!("error selecting {name} node: {}", e.detail))
    }
}

/// Caches a registry answer as fresh.
fn store(
    inner: &Inner,
    name: &str,
    services: Vec<Service>,
    turn: Arc<AtomicUsize>,
) -> (Arc<Snapshot>, Arc<AtomicUsize>) {
    let snapshot = Arc::new(Snapshot::new(services));
    let entry = Entry {
        snapshot: snapshot.clone(),
        fetched: Some(Instant::now()),
        turn: turn.clone(),
        refreshing: Arc::new(AtomicBool::new(false)),
    };
    inner.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), entry);
    (snapshot, turn)
}

/// Asks the registry for a stale entry's service: a fresh answer replaces
/// it, "not found" removes it (the service is gone), and while the registry
/// cannot be reached the stale entry stays and the next call tries again.
async fn refresh(inner: Arc<Inner>, name: String) {
    let res = inner.registry.get_service(&name).await;
    let mut cache = inner.cache.lock().unwrap_or_else(|p| p.into_inner());
    let Some(entry) = cache.get_mut(&name) else { return };
    match res {
        Ok(services) => {
            let turn = entry.turn.clone();
            drop(cache);
            store(&inner, &name, services, turn);
        }
        Err(e) if e.code == 404 => {
            cache.remove(&name);
        }
        Err(e) => {
            tracing::debug!(service = %name, error = %e.detail, "registry unreachable; serving the cached nodes");
            entry.refreshing.store(false, Ordering::Release);
        }
    }
}

/// Keeps the cache in step with the registry; ends when the selector is dropped.
async fn watch_loop(weak: Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let mut watcher = match inner.registry.watch(WatchOptions::default()).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "selector: registry watch failed; retrying");
                drop(inner);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        drop(inner);
        loop {
            let ev = watcher.next().await;
            let Some(inner) = weak.upgrade() else {
                watcher.stop();
                return;
            };
            match ev {
                Ok(ev) => {
                    if ev.kind == micro_core::EventKind::Create {
                        // A node that registers (again, after it left) is a
                        // fresh start: its earlier failures no longer count.
                        let mut bl = inner.blacklist.lock().unwrap_or_else(|p| p.into_inner());
                        for n in &ev.service.nodes {
                            bl.remove(&n.id);
                        }
                        inner.failing.store(bl.len(), Ordering::Relaxed);
                    }
                    let mut cache = inner.cache.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(entry) = cache.get_mut(&ev.service.name) {
                        // Calls holding the old snapshot finish with it.
                        let mut services = entry.snapshot.services.clone();
                        apply_event(&mut services, &ev);
                        entry.snapshot = Arc::new(Snapshot::new(services));
                    }
                }
                Err(e) => {
                    // Events may have been missed: distrust the whole cache
                    // (each service is asked for again), but keep it to fall
                    // back on while the registry cannot be reached.
                    tracing::debug!(error = %e, "selector: watch ended; the cache is stale");
                    for entry in inner.cache.lock().unwrap_or_else(|p| p.into_inner()).values_mut() {
                        entry.fetched = None;
                    }
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Why no node is available: a clear 404 when the service's nodes all
/// speak another protocol than the client's.
fn none_available(service: &str, snap: &Snapshot, protocol: Option<&str>) -> Error {
    if let Some(want) = protocol {
        let mut spoken: Vec<&str> =
            snap.nodes.iter().filter_map(|n| n.metadata.get("protocol").map(String::as_str)).collect();
        spoken.sort_unstable();
        spoken.dedup();
        if !spoken.is_empty() && !spoken.contains(&want) {
            return Error::not_found(
                "go.micro.client",
                format!(
                    "service {service} has no node speaking {want}: its nodes speak {} (use --client {})",
                    spoken.join(", "),
                    spoken[0]
                ),
            );
        }
    }
    Error::internal("go.micro.client", format!("service {service}: none available"))
}

#[async_trait]
impl Selector for CacheSelector {
    async fn select(&self, service: &str, opts: SelectOptions) -> Result<Node> {
        self.select_shared(service, opts).await.map(|n| Node::clone(&n))
    }

    async fn select_shared(&self, service: &str, opts: SelectOptions) -> Result<Arc<Node>> {
        let (snap, turn) = self.snapshot(service).await?;
        self.pick(service, &snap, &turn, &opts.exclude, opts.protocol.as_deref())
    }

    fn select_now(&self, service: &str, exclude: &[String], protocol: Option<&str>) -> Option<Result<Arc<Node>>> {
        let (snap, turn) = self.cached(service).ok()?;
        Some(self.pick(service, &snap, &turn, exclude, protocol))
    }

    /// The nodes [`pick`](Self::pick) would choose among: a client may
    /// choose itself, by the same strategy, for a short while.
    fn candidates(&self, service: &str, protocol: Option<&str>) -> Option<Result<Candidates>> {
        let (snap, _) = self.cached(service).ok()?;
        let e = self.eligible(&[], protocol);
        let skip = e.skips_failing(&snap.nodes);
        let nodes: Vec<Arc<Node>> = snap.nodes.iter().filter(|n| e.admits(n, skip)).cloned().collect();
        if nodes.is_empty() {
            return Some(Err(none_available(service, &snap, protocol)));
        }
        let choice = match self.strategy {
            Strategy::Random => Choice::Random,
            Strategy::RoundRobin => Choice::RoundRobin,
        };
        Some(Ok(Candidates { nodes, choice }))
    }

    fn mark(&self, _service: &str, node_id: &str, outcome: Result<(), &Error>) {
        // The common case, every call answered: nothing is failing, no lock.
        if outcome.is_ok() && self.inner.failing.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut bl = self.inner.blacklist.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Ok(()) => {
                bl.remove(node_id);
            }
            Err(e) => {
                let entry = bl.entry(node_id.to_string()).or_insert((0, None));
                entry.0 += 1;
                if entry.0 >= BLACKLIST_AFTER {
                    if entry.1.is_none_or(|u| u <= Instant::now()) {
                        tracing::warn!(node = node_id, failures = entry.0, error = %e.detail, "skipping failing node for {BLACKLIST_FOR:?}");
                    }
                    entry.1 = Some(Instant::now() + BLACKLIST_FOR);
                }
            }
        }
        self.inner.failing.store(bl.len(), Ordering::Relaxed);
    }

    fn wants_success_marks(&self) -> bool {
        // A success only ever takes a node off the failing list.
        self.inner.failing.load(Ordering::Relaxed) != 0
    }

    fn reset(&self, service: &str) {
        self.inner.cache.lock().unwrap_or_else(|p| p.into_inner()).remove(service);
    }

    fn name(&self) -> &str {
        match self.strategy {
            Strategy::Random => "random",
            Strategy::RoundRobin => "roundrobin",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::MemoryRegistry;
    use micro_core::RegisterOptions;

    fn svc(id: &str) -> Service {
        Service {
            name: "s".into(),
            version: "1".into(),
            nodes: vec![Node { id: id.into(), address: format!("{id}:1"), ..Default::default() }],
            ..Default::default()
        }
    }

    async fn setup(strategy: Strategy, n: usize) -> Result<(Arc<MemoryRegistry>, CacheSelector)> {
        let reg = Arc::new(MemoryRegistry::new());
        for i in 0..n {
            reg.register(&svc(&format!("n{i}")), RegisterOptions::default()).await?;
        }
        let sel =
            CacheSelector::new(SelectorOptions { registry: reg.clone(), cache_ttl: Duration::from_secs(60) }, strategy);
        Ok((reg, sel))
    }

    async fn counts(sel: &CacheSelector, calls: usize) -> Result<HashMap<String, usize>> {
        let mut m = HashMap::new();
        for _ in 0..calls {
            *m.entry(sel.select("s", SelectOptions::default()).await?.id).or_default() += 1;
        }
        Ok(m)
    }

    /// A registry whose watches can be broken on demand, counting them,
    /// and which can be made unreachable (`down`).
    struct Breakable {
        inner: Arc<MemoryRegistry>,
        watches: Arc<AtomicUsize>,
        broken: Arc<tokio::sync::Notify>,
        down: Arc<AtomicBool>,
    }

    struct BreakableWatcher {
        inner: Box<dyn micro_core::Watcher>,
        broken: Arc<tokio::sync::Notify>,
    }

    #[async_trait]
    impl micro_core::Watcher for BreakableWatcher {
        async fn next(&mut self) -> Result<micro_core::Event> {
            tokio::select! {
                _ = self.broken.notified() => Err(Error::internal("test", "watch broken")),
                e = self.inner.next() => e,
            }
        }
        fn stop(&self) {
            self.inner.stop();
        }
    }

    #[async_trait]
    impl Registry for Breakable {
        async fn register(&self, s: &Service, o: micro_core::RegisterOptions) -> Result<()> {
            self.inner.register(s, o).await
        }
        async fn deregister(&self, s: &Service) -> Result<()> {
            self.inner.deregister(s).await
        }
        async fn get_service(&self, name: &str) -> Result<Vec<Service>> {
            if self.down.load(Ordering::SeqCst) {
                return Err(Error::internal("test", "registry unreachable"));
            }
            self.inner.get_service(name).await
        }
        async fn list_services(&self) -> Result<Vec<Service>> {
            self.inner.list_services().await
        }
        async fn watch(&self, opts: WatchOptions) -> Result<Box<dyn micro_core::Watcher>> {
            if self.down.load(Ordering::SeqCst) {
                return Err(Error::internal("test", "registry unreachable"));
            }
            self.watches.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(BreakableWatcher { inner: self.inner.watch(opts).await?, broken: self.broken.clone() }))
        }
        fn name(&self) -> &str {
            "breakable"
        }
    }

    fn breakable(
        inner: Arc<MemoryRegistry>,
    ) -> (Breakable, Arc<AtomicUsize>, Arc<tokio::sync::Notify>, Arc<AtomicBool>) {
        let (watches, broken, down) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(tokio::sync::Notify::new()), Arc::new(AtomicBool::new(false)));
        (
            Breakable { inner, watches: watches.clone(), broken: broken.clone(), down: down.clone() },
            watches,
            broken,
            down,
        )
    }

    /// A watch that breaks (etcd restarting) may have missed events: the
    /// selector distrusts its whole cache and watches again, and events of
    /// the new watch reach the cache.
    #[tokio::test]
    async fn a_broken_watch_makes_the_cache_stale_and_is_watched_again() -> Result<()> {
        let inner = Arc::new(MemoryRegistry::new());
        inner.register(&svc("n0"), RegisterOptions::default()).await?;
        let (reg, watches, broken, _down) = breakable(inner.clone());
        let sel = CacheSelector::new(
            SelectorOptions { registry: Arc::new(reg), cache_ttl: Duration::from_secs(60) },
            Strategy::RoundRobin,
        );
        sel.select("s", SelectOptions::default()).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while watches.load(Ordering::SeqCst) < 1 {
            assert!(tokio::time::Instant::now() < deadline, "the selector never watched");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(sel.is_fresh("s"));
        // One break (a stored permit: the watch takes it whenever it next waits).
        broken.notify_one();
        while sel.is_fresh("s") || watches.load(Ordering::SeqCst) < 2 {
            assert!(tokio::time::Instant::now() < deadline, "the cache was not distrusted and watched again");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The next call is answered from the stale entry and has the
        // registry asked again in the background.
        sel.select("s", SelectOptions::default()).await?;
        while !sel.is_fresh("s") {
            assert!(tokio::time::Instant::now() < deadline, "the stale entry was never refreshed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The new watch feeds the cache: a node registered now is seen.
        let mut seen = false;
        for _ in 0..200 {
            sel.select("s", SelectOptions::default()).await?;
            inner.register(&svc("n1"), RegisterOptions::default()).await?;
            if sel.cached_nodes("s").is_some_and(|n| n.len() == 2) {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(seen, "events of the new watch never reached the cache");
        Ok(())
    }

    /// A registry that cannot be reached (a partition): calls go on with the
    /// nodes last seen, a service never seen is an error, and a service the
    /// registry says is gone (404) is gone.
    #[tokio::test]
    async fn an_unreachable_registry_leaves_calls_the_nodes_last_seen() -> Result<()> {
        let inner = Arc::new(MemoryRegistry::new());
        inner.register(&svc("n0"), RegisterOptions::default()).await?;
        let (reg, _watches, broken, down) = breakable(inner.clone());
        let sel = CacheSelector::new(
            SelectorOptions { registry: Arc::new(reg), cache_ttl: Duration::from_millis(50) },
            Strategy::RoundRobin,
        );
        assert_eq!(sel.select("s", SelectOptions::default()).await?.id, "n0");
        down.store(true, Ordering::SeqCst);
        broken.notify_one();
        // Past the cache's TTL and with the watch broken, 100 calls all get
        // n0 (none waits for the registry).
        tokio::time::sleep(Duration::from_millis(60)).await;
        for _ in 0..100 {
            assert_eq!(sel.select("s", SelectOptions::default()).await?.id, "n0");
        }
        assert!(!sel.is_fresh("s"));
        let e = sel.select("never-seen", SelectOptions::default()).await.expect_err("a node of nothing");
        assert!(e.detail.contains("registry unreachable"), "{e:?}");
        // Reachable again, and the service deregistered: the registry's
        // answer wins (once the background lookup has it).
        inner.deregister(&svc("n0")).await?;
        down.store(false, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match sel.select("s", SelectOptions::default()).await {
                Ok(n) => assert_eq!(n.id, "n0"),
                Err(e) => {
                    assert_eq!(e.code, 404, "{e:?}");
                    break;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "the registry's 404 never reached the cache");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    #[tokio::test]
    async fn roundrobin_is_exactly_even() -> Result<()> {
        let (_r, sel) = setup(Strategy::RoundRobin, 3).await?;
        let m = counts(&sel, 300).await?;
        assert_eq!(m.len(), 3);
        assert!(m.values().all(|&c| c == 100), "{m:?}");
        Ok(())
    }

    #[tokio::test]
    async fn random_is_roughly_even() -> Result<()> {
        let (_r, sel) = setup(Strategy::Random, 4).await?;
        let m = counts(&sel, 4000).await?;
        assert_eq!(m.len(), 4);
        // Expected 1000 each; 800..1200 is over 6 standard deviations wide.
        assert!(m.values().all(|&c| (800..1200).contains(&c)), "{m:?}");
        Ok(())
    }

    /// `select_now` answers from the cache only (nothing before the first
    /// lookup), and shares the round-robin turn and the exclusions of
    /// `select_shared`: the two interleaved still visit every node evenly.
    #[tokio::test]
    async fn select_now_answers_from_the_cache_as_select_shared_does() -> Result<()> {
        let (_r, sel) = setup(Strategy::RoundRobin, 3).await?;
        assert!(sel.select_now("s", &[], None).is_none(), "nothing cached before the first lookup");
        let now = |exclude: &[String], protocol| {
            sel.select_now("s", exclude, protocol).unwrap_or_else(|| Err(Error::internal("test", "nothing at once")))
        };
        let mut m: HashMap<String, usize> = HashMap::new();
        for i in 0..300 {
            let n = if i % 2 == 0 { sel.select_shared("s", SelectOptions::default()).await? } else { now(&[], None)? };
            *m.entry(n.id.clone()).or_default() += 1;
        }
        assert!(m.len() == 3 && m.values().all(|&c| c == 100), "{m:?}");
        for _ in 0..10 {
            assert_eq!(now(&["n0".into(), "n1".into()], None)?.id, "n2");
        }
        let e = now(&["n0".into(), "n1".into(), "n2".into()], None).err();
        assert!(e.is_some_and(|e| e.detail == "service s: none available"));
        // Nodes without protocol metadata speak any protocol.
        assert!(now(&[], Some("mucp")).is_ok());
        Ok(())
    }

    #[tokio::test]
    async fn exclusion_and_none_available() -> Result<()> {
        let (_r, sel) = setup(Strategy::Random, 2).await?;
        for _ in 0..20 {
            let n = sel.select("s", SelectOptions { exclude: vec!["n0".into()], ..Default::default() }).await?;
            assert_eq!(n.id, "n1");
        }
        let e = sel
            .select("s", SelectOptions { exclude: vec!["n0".into(), "n1".into()], ..Default::default() })
            .await
            .err();
        assert!(e.is_some_and(|e| e.detail == "service s: none available"));
        let e = sel.select("nope", SelectOptions::default()).await.err();
        assert!(e.is_some_and(|e| e.code == 404 && e.detail == "service nope: not found"));
        Ok(())
    }

    #[tokio::test]
    async fn a_skipped_node_is_picked_again_when_its_time_is_up() -> Result<()> {
        let (_r, sel) = setup(Strategy::RoundRobin, 2).await?;
        let e = Error::internal("go.micro.client", "connection error");
        for _ in 0..BLACKLIST_AFTER {
            sel.mark("s", "n0", Err(&e));
        }
        assert_eq!(counts(&sel, 10).await?.keys().collect::<Vec<_>>(), ["n1"], "n0 is skipped");
        // BLACKLIST_FOR (30 s) passes: its end is moved into the past, as waiting would.
        if let Some(entry) = sel.inner.blacklist.lock().unwrap_or_else(|p| p.into_inner()).get_mut("n0") {
            entry.1 = Instant::now().checked_sub(Duration::from_millis(1));
        }
        assert_eq!(counts(&sel, 10).await?.len(), 2, "n0 is picked again");
        // Its failures still count: one more skips it at once, for another BLACKLIST_FOR.
        sel.mark("s", "n0", Err(&e));
        assert_eq!(counts(&sel, 10).await?.keys().collect::<Vec<_>>(), ["n1"]);
        Ok(())
    }

    #[tokio::test]
    async fn a_node_that_keeps_failing_is_skipped_until_it_recovers() -> Result<()> {
        let (_r, sel) = setup(Strategy::RoundRobin, 2).await?;
        assert!(!sel.wants_success_marks(), "nothing failing: a success changes nothing");
        let e = Error::internal("go.micro.client", "connection error");
        for _ in 0..BLACKLIST_AFTER {
            sel.mark("s", "n0", Err(&e));
        }
        assert!(sel.wants_success_marks(), "a failing node is forgiven by a success");
        let m = counts(&sel, 10).await?;
        assert_eq!(m.keys().collect::<Vec<_>>(), ["n1"], "n0 is skipped");
        // With every node blacklisted, they are all tried again rather than none.
        for _ in 0..BLACKLIST_AFTER {
            sel.mark("s", "n1", Err(&e));
        }
        assert_eq!(counts(&sel, 10).await?.len(), 2);
        sel.mark("s", "n0", Ok(()));
        sel.mark("s", "n1", Ok(()));
        assert_eq!(counts(&sel, 10).await?.len(), 2);
        assert!(!sel.wants_success_marks(), "all forgiven");
        Ok(())
    }

    #[tokio::test]
    async fn candidates_are_the_nodes_a_pick_chooses_among() -> Result<()> {
        let ids = |c: Candidates| {
            let mut v: Vec<String> = c.nodes.iter().map(|n| n.id.clone()).collect();
            v.sort();
            (v, c.choice)
        };
        let (_r, sel) = setup(Strategy::RoundRobin, 3).await?;
        assert!(sel.candidates("s", None).is_none(), "nothing cached before the first lookup");
        sel.select("s", SelectOptions::default()).await?;
        let all = || ["n0", "n1", "n2"].map(String::from).to_vec();
        let c = sel.candidates("s", None).ok_or_else(|| Error::internal("t", "none at once"))??;
        assert_eq!(ids(c), (all(), Choice::RoundRobin));
        // A failing node is left out, as a pick skips it; with every node
        // failing, all are candidates again.
        let e = Error::internal("go.micro.client", "connection error");
        for _ in 0..BLACKLIST_AFTER {
            sel.mark("s", "n1", Err(&e));
        }
        let c = sel.candidates("s", None).ok_or_else(|| Error::internal("t", "none at once"))??;
        assert_eq!(ids(c).0, ["n0", "n2"]);
        for id in ["n0", "n2"] {
            for _ in 0..BLACKLIST_AFTER {
                sel.mark("s", id, Err(&e));
            }
        }
        let c = sel.candidates("s", None).ok_or_else(|| Error::internal("t", "none at once"))??;
        assert_eq!(ids(c).0, all());
        // Only nodes of the client's protocol; none: the selector's own error.
        let (reg, sel) = setup(Strategy::Random, 1).await?;
        let mut speaks = svc("m0");
        speaks.nodes[0].metadata.insert("protocol".into(), "mucp".into());
        reg.register(&speaks, RegisterOptions::default()).await?;
        sel.select("s", SelectOptions::default()).await?;
        let c = sel.candidates("s", Some("mucp")).ok_or_else(|| Error::internal("t", "none at once"))??;
        assert_eq!(ids(c), (["m0", "n0"].map(String::from).to_vec(), Choice::Random), "n0 says nothing of it");
        let mut grpc = svc("g0");
        grpc.name = "g".into();
        grpc.nodes[0].metadata.insert("protocol".into(), "grpc".into());
        reg.register(&grpc, RegisterOptions::default()).await?;
        sel.select("g", SelectOptions::default()).await?;
        let err = sel.candidates("g", Some("mucp")).ok_or_else(|| Error::internal("t", "none at once"))?;
        assert!(err.is_err_and(|e| e.detail.contains("no node speaking mucp")));
        Ok(())
    }

    #[tokio::test]
    async fn cache_follows_watch_events() -> Result<()> {
        let (reg, sel) = setup(Strategy::RoundRobin, 1).await?;
        sel.select("s", SelectOptions::default()).await?; // fills the cache, starts the watch
                                                          // The cache TTL is a minute, so only watch events can change what is cached.
        let wait_for = |want: usize| {
            let sel = &sel;
            async move {
                for _ in 0..100 {
                    if sel.cached_nodes("s").map(|n| n.len()) == Some(want) {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                false
            }
        };
        // The watch starts in the background: register until its event is
        // seen (registering again is an update), instead of guessing how
        // long subscribing takes.
        let mut seen = false;
        for _ in 0..50 {
            reg.register(&svc("n1"), RegisterOptions::default()).await?;
            if wait_for(2).await {
                seen = true;
                break;
            }
        }
        assert!(seen, "create event not applied");
        let m = counts(&sel, 10).await?;
        assert_eq!(m.len(), 2);
        reg.deregister(&svc("n0")).await?;
        assert!(wait_for(1).await, "delete event not applied");
        let m = counts(&sel, 10).await?;
        assert_eq!(m.keys().collect::<Vec<_>>(), ["n1"]);
        Ok(())
    }
}
