//! Picking a node of a service.

use crate::{async_trait, Error, Node, Registry, Result};
use std::sync::Arc;
use std::time::Duration;

/// Options of one [`Selector::select`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelectOptions {
    /// Node ids not to pick, e.g. ones that just failed this call.
    pub exclude: Vec<String>,
    /// Only nodes that speak this protocol (`mucp`, `grpc`): their
    /// `protocol` metadata, as go-micro registers it. Nodes without that
    /// metadata are taken to speak any protocol. `None`: any node.
    pub protocol: Option<String>,
}

/// How long a client chooses among a selector's [`Selector::candidates`]
/// itself before asking again: changes in the registry, and failures that
/// other clients mark, reach its calls at most this late.
pub const CANDIDATES_FOR: Duration = Duration::from_millis(10);

/// What a selector constructor is given.
#[derive(Clone)]
pub struct SelectorOptions {
    /// Where the selector looks services up.
    pub registry: Arc<dyn Registry>,
    /// How long a cached registry answer is trusted without watch events.
    pub cache_ttl: Duration,
}

impl std::fmt::Debug for SelectorOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelectorOptions")
            .field("registry", &self.registry.name())
            .field("cache_ttl", &self.cache_ttl)
            .finish()
    }
}

/// How a selector chooses one of the nodes it would answer with (see
/// [`Selector::candidates`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Choice {
    /// Any one, uniformly at random.
    Random,
    /// Each in turn.
    RoundRobin,
}

/// The nodes a selector chooses among for a service right now, and how
/// (see [`Selector::candidates`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidates {
    /// The nodes a call may go to (not empty).
    pub nodes: Vec<Arc<Node>>,
    /// How one of them is chosen for a call.
    pub choice: Choice,
}

/// Picks a node of a service.
#[async_trait]
pub trait Selector: Send + Sync {
    /// A node of `service`; a 404 error if none is available.
    async fn select(&self, service: &str, opts: SelectOptions) -> Result<Node>;
    /// As [`select`](Self::select), but the node may be shared with the
    /// selector's cache: clients call this once per call, and a selector
    /// that keeps its nodes in `Arc`s answers without copying one.
    async fn select_shared(&self, service: &str, opts: SelectOptions) -> Result<Arc<Node>> {
        self.select(service, opts).await.map(Arc::new)
    }
    /// The answer of [`select_shared`](Self::select_shared), if the selector
    /// has it without waiting (a service it has cached), with the options
    /// borrowed: `None` when it would have to wait (a registry lookup), and
    /// the caller then asks `select_shared`. Clients ask this first on every
    /// call, so a cached answer costs no future and no allocation. The
    /// default has nothing at once.
    fn select_now(&self, service: &str, exclude: &[String], protocol: Option<&str>) -> Option<Result<Arc<Node>>> {
        let _ = (service, exclude, protocol);
        None
    }
    /// The nodes [`select_now`](Self::select_now) would choose among for
    /// `service` and `protocol` with nothing excluded, and how it chooses,
    /// if it knows them at once. A client may then choose among them itself
    /// for a short while (micro's clients do for [`CANDIDATES_FOR`]) instead
    /// of asking on every call, which across the plugin boundary costs a
    /// crossing each time; it still marks every failure, and asks again
    /// after one. `None`, the default: the selector's choice is not one of
    /// [`Choice`]'s (it weighs load, say), or it would have to wait, so it
    /// is asked once per call.
    fn candidates(&self, service: &str, protocol: Option<&str>) -> Option<Result<Candidates>> {
        let _ = (service, protocol);
        None
    }
    /// Feedback on a call to a node: `Ok` or the error it gave.
    fn mark(&self, service: &str, node_id: &str, outcome: Result<(), &Error>);
    /// Whether a `mark` with `Ok` would change anything now (a selector
    /// that forgives a failing node on its next success, say, while some
    /// node is failing). A caller for whom marking is costly (a selector
    /// across the plugin boundary) skips success marks while this is
    /// false; failures are always marked. The default, `true`, keeps every
    /// success mark.
    fn wants_success_marks(&self) -> bool {
        true
    }
    /// Forgets what is cached about a service.
    fn reset(&self, service: &str);
    /// The selector's name, e.g. `random`.
    fn name(&self) -> &str;
}
