//! A client's own choice among its selector's candidates, for a short while.
//!
//! A client asks its selector for a node on every call. Where the selector
//! can say which nodes it chooses among and how ([`Selector::candidates`]),
//! the client keeps that answer for [`CANDIDATES_FOR`] on each thread and
//! chooses itself: a selector across the plugin boundary is then crossed
//! once per thread every few milliseconds instead of once per call, and a
//! built-in one is spared its lock and shared counters on every call. A
//! failure the client marks makes every thread ask again; so do calls that
//! exclude nodes (retries), which always ask the selector.

use micro_core::{Choice, Node, Result, SelectOptions, Selector, CANDIDATES_FOR};
use rand::Rng;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How many leases a thread keeps (a client calls few services).
const PER_THREAD: usize = 32;

/// One client's leases: which are its own on each thread, and whether a
/// failure since made them void.
#[derive(Debug)]
pub(crate) struct Leases {
    /// Tells this client's leases from another's (which outlive it).
    id: u64,
    /// Bumped by each failure this client marks.
    generation: AtomicU64,
    /// How long a lease lasts ([`CANDIDATES_FOR`]).
    lasts: Duration,
}

/// What a thread knows of a client's selector for one service and protocol.
struct Lease {
    client: u64,
    generation: u64,
    service: String,
    protocol: String,
    until: Instant,
    /// The candidates and how to choose, or `None`: the selector said
    /// nothing at once, so it is asked per call until `until`.
    nodes: Option<(Vec<Arc<Node>>, Choice)>,
    /// The round-robin position.
    turn: usize,
    /// While the selector is asked per call: the node it last gave, so that
    /// a lease that follows goes on after it (turns stay even across the change).
    last: Option<String>,
}

impl Lease {
    /// Whether this is `client`'s lease for `service` and `protocol`.
    fn is(&self, client: u64, service: &str, protocol: &str) -> bool {
        self.client == client && self.service == service && self.protocol == protocol
    }
}

thread_local! {
    static LEASES: RefCell<Vec<Lease>> = const { RefCell::new(Vec::new()) };
}

/// What a lookup found.
enum Found {
    Node(Arc<Node>),
    /// The selector is to be asked per call for now.
    PerCall,
    /// No lease, or a void one (with its round-robin position and the node
    /// last given per call): ask for candidates.
    Nothing(Option<(usize, Option<String>)>),
}

impl Leases {
    /// Leases of a new client.
    pub(crate) fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Leases { id: NEXT.fetch_add(1, Ordering::Relaxed), generation: AtomicU64::new(0), lasts: CANDIDATES_FOR }
    }

    /// Leases that last `lasts` (tests: long ones, so that a slow machine
    /// does not end one in the middle of a check).
    #[cfg(test)]
    fn lasting(lasts: Duration) -> Self {
        Leases { lasts, ..Leases::new() }
    }

    /// A failure was marked: every thread asks the selector again.
    pub(crate) fn void(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// A node of `service` for a call: chosen among the leased candidates
    /// when nothing is excluded, else the selector's answer at once when it
    /// has one (nothing allocated), else its asynchronous answer.
    pub(crate) async fn select(
        &self,
        selector: &dyn Selector,
        service: &str,
        exclude: &[String],
        protocol: &str,
    ) -> Result<Arc<Node>> {
        if let Some(r) = self.select_at_once(selector, service, exclude, protocol) {
            return r;
        }
        // Only the selector's boxed future is held across this wait: a
        // call's future stays small (see grpc's thread-cache test).
        let sel = SelectOptions { exclude: exclude.to_vec(), protocol: Some(protocol.into()) };
        let node = selector.select_shared(service, sel).await?;
        if exclude.is_empty() {
            self.note_last(service, protocol, &node);
        }
        Ok(node)
    }

    /// The lease's choice, else the selector's answer at once, if there is one.
    fn select_at_once(
        &self,
        selector: &dyn Selector,
        service: &str,
        exclude: &[String],
        protocol: &str,
    ) -> Option<Result<Arc<Node>>> {
        if exclude.is_empty() {
            if let Some(node) = self.leased(selector, service, protocol) {
                return Some(Ok(node));
            }
        }
        let r = selector.select_now(service, exclude, Some(protocol))?;
        if let (true, Ok(node)) = (exclude.is_empty(), &r) {
            self.note_last(service, protocol, node);
        }
        Some(r)
    }

    /// Notes the node the selector gave per call in this thread's lease.
    fn note_last(&self, service: &str, protocol: &str, node: &Node) {
        let _ = LEASES.try_with(|leases| {
            let mut leases = leases.borrow_mut();
            if let Some(l) = leases.iter_mut().find(|l| l.is(self.id, service, protocol)) {
                l.last = Some(node.id.clone());
            }
        });
    }

    /// A node chosen among this thread's leased candidates, asking the
    /// selector for them when the lease is missing, void or over.
    fn leased(&self, selector: &dyn Selector, service: &str, protocol: &str) -> Option<Arc<Node>> {
        let now = Instant::now();
        let generation = self.generation.load(Ordering::Relaxed);
        // A thread whose locals are being torn down (a call made from a
        // thread-local's drop) has no leases: it asks per call.
        let found = LEASES.try_with(|leases| {
            let mut leases = leases.borrow_mut();
            let Some(l) = leases.iter_mut().find(|l| l.is(self.id, service, protocol)) else {
                return Found::Nothing(None);
            };
            if l.generation != generation || now >= l.until {
                return Found::Nothing(Some((l.turn, l.last.take())));
            }
            match &l.nodes {
                Some((nodes, choice)) => Found::Node(choose(nodes, *choice, &mut l.turn)),
                None => Found::PerCall,
            }
        });
        let Ok(found) = found else { return None };
        let turn = match found {
            Found::Node(n) => return Some(n),
            Found::PerCall => return None,
            Found::Nothing(before) => before,
        };
        // Asked outside the thread's leases: the selector may be anything.
        let nodes = match selector.candidates(service, Some(protocol)) {
            Some(Ok(c)) if !c.nodes.is_empty() => Some((c.nodes, c.choice)),
            // Nothing at once, none available or no candidates to give: the
            // selector answers per call (with its own error, if any).
            _ => None,
        };
        // A renewed lease goes on from where the last one was: after the
        // node the selector last gave per call, else at the same turn, so
        // that turns stay even across renewals. A new one starts anywhere
        // (threads start at different places).
        let after_last = match (&turn, &nodes) {
            (Some((_, Some(last))), Some((nodes, _))) => nodes.iter().position(|n| &n.id == last),
            _ => None,
        };
        let turn = match (after_last, turn) {
            (Some(i), _) => i,
            (None, Some((turn, _))) => turn,
            (None, None) => rand::rng().random::<u32>() as usize,
        };
        let mut lease = Lease {
            client: self.id,
            generation,
            service: service.to_string(),
            protocol: protocol.to_string(),
            until: now + self.lasts,
            nodes,
            turn,
            last: None,
        };
        let node = lease.nodes.as_ref().map(|(nodes, choice)| choose(nodes, *choice, &mut lease.turn));
        let _ = LEASES.try_with(|leases| {
            let mut leases = leases.borrow_mut();
            leases.retain(|l| !l.is(self.id, service, protocol));
            if leases.len() >= PER_THREAD {
                leases.remove(0);
            }
            leases.push(lease);
        });
        node
    }
}

/// One of `nodes` (not empty) by `choice`; an unknown choice is taken in turn.
fn choose(nodes: &[Arc<Node>], choice: Choice, turn: &mut usize) -> Arc<Node> {
    let i = match choice {
        Choice::Random => rand::rng().random_range(0..nodes.len()),
        _ => {
            *turn = turn.wrapping_add(1);
            *turn % nodes.len()
        }
    };
    nodes[i].clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro_core::{async_trait, Candidates, Error};
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    const HOUR: Duration = Duration::from_secs(3600);

    fn node(id: &str) -> Arc<Node> {
        Arc::new(Node { id: id.into(), address: format!("127.0.0.1:{}", id.len()), ..Node::default() })
    }

    /// A selector that gives candidates (or not), counting how it is asked.
    struct Counting {
        nodes: Mutex<Vec<Arc<Node>>>,
        choice: Option<Choice>,
        candidates: AtomicUsize,
        now: AtomicUsize,
    }

    impl Counting {
        fn new(ids: &[&str], choice: Option<Choice>) -> Arc<Self> {
            Arc::new(Counting {
                nodes: Mutex::new(ids.iter().map(|i| node(i)).collect()),
                choice,
                candidates: AtomicUsize::new(0),
                now: AtomicUsize::new(0),
            })
        }
        fn asked(&self) -> (usize, usize) {
            (self.candidates.load(Ordering::Relaxed), self.now.load(Ordering::Relaxed))
        }
        fn first(&self) -> Arc<Node> {
            self.nodes.lock().unwrap_or_else(|p| p.into_inner())[0].clone()
        }
    }

    #[async_trait]
    impl Selector for Counting {
        async fn select(&self, _: &str, _: SelectOptions) -> Result<Node> {
            Ok(Node::clone(&self.first()))
        }
        fn select_now(&self, _: &str, exclude: &[String], _: Option<&str>) -> Option<Result<Arc<Node>>> {
            self.now.fetch_add(1, Ordering::Relaxed);
            let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
            nodes.iter().find(|n| !exclude.contains(&n.id)).cloned().map(Ok)
        }
        fn candidates(&self, _: &str, protocol: Option<&str>) -> Option<Result<Candidates>> {
            self.candidates.fetch_add(1, Ordering::Relaxed);
            assert!(protocol.is_some(), "the client's protocol is asked for");
            let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner()).clone();
            self.choice.map(|choice| Ok(Candidates { nodes, choice }))
        }
        fn mark(&self, _: &str, _: &str, _: Result<(), &Error>) {}
        fn reset(&self, _: &str) {}
        fn name(&self) -> &str {
            "counting"
        }
    }

    async fn ids(leases: &Leases, sel: &Counting, service: &str, n: usize) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(leases.select(sel, service, &[], "mucp").await?.id.clone());
        }
        Ok(out)
    }

    fn counts(ids: &[String]) -> std::collections::BTreeMap<&str, usize> {
        let mut c = std::collections::BTreeMap::new();
        for i in ids {
            *c.entry(i.as_str()).or_default() += 1;
        }
        c
    }

    #[tokio::test(flavor = "current_thread")]
    async fn candidates_are_asked_once_and_chosen_among_in_turn() -> Result<()> {
        let sel = Counting::new(&["a", "bb", "ccc"], Some(Choice::RoundRobin));
        let leases = Leases::lasting(HOUR);
        let got = ids(&leases, &sel, "s", 300).await?;
        // One question, no per-call selection.
        assert_eq!(sel.asked(), (1, 0));
        // Each in turn: every window of three holds all three.
        for w in got.chunks(3) {
            let mut w = w.to_vec();
            w.sort();
            assert_eq!(w, ["a", "bb", "ccc"]);
        }
        Ok(())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn turns_go_on_across_renewed_leases() -> Result<()> {
        // A failure after every call voids every lease: the nodes still take
        // turns, as they would with the selector asked per call.
        let sel = Counting::new(&["a", "bb"], Some(Choice::RoundRobin));
        let leases = Leases::lasting(HOUR);
        let mut got = Vec::new();
        for _ in 0..10 {
            got.push(leases.select(&*sel, "s", &[], "mucp").await?.id.clone());
            leases.void();
        }
        assert_eq!(sel.asked().0, 10);
        assert!(got.windows(2).all(|w| w[0] != w[1]), "{got:?}");
        Ok(())
    }

    /// Gives candidates only once `ready` (as a cache selector before its
    /// first lookup has nothing at once), and per call takes turns itself.
    struct Warming {
        inner: Arc<Counting>,
        ready: std::sync::atomic::AtomicBool,
        turn: AtomicUsize,
    }

    #[async_trait]
    impl Selector for Warming {
        async fn select(&self, s: &str, o: SelectOptions) -> Result<Node> {
            self.inner.select(s, o).await
        }
        fn select_now(&self, _: &str, _: &[String], _: Option<&str>) -> Option<Result<Arc<Node>>> {
            let nodes = self.inner.nodes.lock().unwrap_or_else(|p| p.into_inner());
            let i = self.turn.fetch_add(1, Ordering::Relaxed) % nodes.len();
            Some(Ok(nodes[i].clone()))
        }
        fn candidates(&self, s: &str, p: Option<&str>) -> Option<Result<Candidates>> {
            self.ready.load(Ordering::Relaxed).then(|| self.inner.candidates(s, p)).flatten()
        }
        fn mark(&self, _: &str, _: &str, _: Result<(), &Error>) {}
        fn reset(&self, _: &str) {}
        fn name(&self) -> &str {
            "warming"
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_lease_after_per_call_selections_goes_on_after_the_last_node() -> Result<()> {
        // Eight starts: a lease that began at a random turn would repeat a node in half of them.
        for start in 0..8 {
            let sel = Warming {
                inner: Counting::new(&["a", "bb"], Some(Choice::RoundRobin)),
                ready: Default::default(),
                turn: AtomicUsize::new(start),
            };
            let leases = Leases::lasting(HOUR);
            let mut got = vec![leases.select(&sel, "s", &[], "mucp").await?.id.clone()];
            // The selector now has candidates; a failure voids the per-call lease.
            sel.ready.store(true, Ordering::Relaxed);
            leases.void();
            for _ in 0..5 {
                got.push(leases.select(&sel, "s", &[], "mucp").await?.id.clone());
            }
            assert!(got.windows(2).all(|w| w[0] != w[1]), "{got:?}");
        }
        Ok(())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_random_choice_reaches_every_candidate() -> Result<()> {
        let sel = Counting::new(&["a", "bb", "ccc"], Some(Choice::Random));
        let got = ids(&Leases::lasting(HOUR), &sel, "s", 3000).await?;
        let c = counts(&got);
        assert_eq!(c.len(), 3, "{c:?}");
        // Uniform: 1000 each expected; 800 is over six standard deviations off.
        assert!(c.values().all(|&n| n > 800), "{c:?}");
        Ok(())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_failure_voids_the_lease_and_so_does_time() -> Result<()> {
        let sel = Counting::new(&["a", "bb"], Some(Choice::RoundRobin));
        let leases = Leases::lasting(HOUR);
        ids(&leases, &sel, "s", 10).await?;
        assert_eq!(sel.asked().0, 1);
        // The selector's answer changes (say, a node is failing now); the
        // client marks a failure: the next call asks again and sees it.
        *sel.nodes.lock().unwrap_or_else(|p| p.into_inner()) = vec![node("bb")];
        leases.void();
        assert_eq!(ids(&leases, &sel, "s", 10).await?, vec!["bb"; 10]);
        assert_eq!(sel.asked().0, 2);
        // A change nobody marked reaches calls once the lease is over.
        let leases = Leases::lasting(Duration::from_millis(20));
        ids(&leases, &sel, "s", 1).await?;
        *sel.nodes.lock().unwrap_or_else(|p| p.into_inner()) = vec![node("a")];
        // Until the lease is over, its own answer; then the new one (at most 5 s).
        let mut polls = 0;
        while leases.select(&*sel, "s", &[], "mucp").await?.id != "a" {
            polls += 1;
            assert!(polls < 500, "the lease never ended");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(ids(&leases, &sel, "s", 10).await?, vec!["a"; 10]);
        assert_eq!(sel.asked(), (4, 0));
        Ok(())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_error_in_a_call_voids_the_lease() -> Result<()> {
        let sel = Counting::new(&["a", "bb"], Some(Choice::RoundRobin));
        let leases = Leases::lasting(HOUR);
        let req = micro_core::Request { service: "s".into(), ..Default::default() };
        let refused = Error::internal("t", "connection refused");
        let r = super::super::with_retries(&*sel, &leases, "mucp", &req, &Default::default(), 0, |_, _| {
            let e = refused.clone();
            async move { super::super::Attempt::Conn(e) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(sel.asked().0, 1);
        leases.select(&*sel, "s", &[], "mucp").await?;
        assert_eq!(sel.asked().0, 2, "the failure made the thread ask again");
        Ok(())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_selector_without_candidates_is_asked_per_call_and_retries_always_ask() -> Result<()> {
        let sel = Counting::new(&["a", "bb"], None);
        let leases = Leases::lasting(HOUR);
        ids(&leases, &sel, "s", 50).await?;
        // Asked for candidates once per lease, not per call.
        assert_eq!(sel.asked(), (1, 50));

        // A retry excludes the node that failed: the selector decides, even
        // with a lease that would have chosen.
        let sel = Counting::new(&["a", "bb"], Some(Choice::RoundRobin));
        let leases = Leases::lasting(HOUR);
        leases.select(&*sel, "s", &[], "mucp").await?;
        for _ in 0..4 {
            let n = leases.select(&*sel, "s", &["a".into()], "mucp").await?;
            assert_eq!(n.id, "bb");
        }
        assert_eq!(sel.asked(), (1, 4));
        Ok(())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn leases_are_per_client_service_and_protocol() -> Result<()> {
        let sel = Counting::new(&["a"], Some(Choice::Random));
        let (one, two) = (Leases::lasting(HOUR), Leases::lasting(HOUR));
        one.select(&*sel, "s", &[], "mucp").await?;
        one.select(&*sel, "t", &[], "mucp").await?;
        two.select(&*sel, "s", &[], "mucp").await?;
        assert_eq!(sel.asked().0, 3, "each client, each service");
        one.select(&*sel, "s", &[], "mucp").await?;
        assert_eq!(sel.asked().0, 3, "then from the lease");
        one.select(&*sel, "s", &[], "grpc").await?;
        assert_eq!(sel.asked().0, 4, "each protocol");
        Ok(())
    }
}
