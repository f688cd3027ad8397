//! Waiting for an event instead of sleeping for it: every wait polls and
//! is bounded, and its error says what was seen last.

use crate::Error;
use micro_core::Registry;
use std::time::{Duration, Instant};

/// How often the waits below look again.
const EVERY: Duration = Duration::from_millis(50);

/// Polls `reg` until `service` has exactly `n` nodes, for at most `limit`:
/// their ids. A lookup that fails counts as no nodes (a service not yet
/// registered, or a backend restarting).
pub async fn nodes(reg: &dyn Registry, service: &str, n: usize, limit: Duration) -> Result<Vec<String>, Error> {
    let t0 = Instant::now();
    loop {
        let ids: Vec<String> = match reg.get_service(service).await {
            Ok(s) => s.iter().flat_map(|s| s.nodes.iter().map(|n| n.id.clone())).collect(),
            Err(_) => Vec::new(),
        };
        if ids.len() == n {
            return Ok(ids);
        }
        if t0.elapsed() > limit {
            return Err(format!("{service} has {} nodes after {limit:?}, wanted {n}: {ids:?}", ids.len()).into());
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// Polls `f` until it holds, for at most `limit`; `what` names the event in the error.
pub async fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Result<(), Error> {
    let t0 = Instant::now();
    while !f() {
        if t0.elapsed() > limit {
            return Err(format!("{what}: not within {limit:?}").into());
        }
        tokio::time::sleep(EVERY).await;
    }
    Ok(())
}
