//! Where a call runs: on its connection's task, or on a task of its own.
//!
//! A handler that is ready at once is cheapest run where its request was
//! read: no task, no wake-up, and its reply leaves in the same write as its
//! neighbours'. But a handler that computes without awaiting holds whatever
//! task polls it, so on the connection's task it would stall every call
//! multiplexed beside it, and one client's calls could use one core only.
//!
//! Nothing can preempt a poll, so each endpoint's polls are timed (two
//! clock reads per poll, ~40 ns): an endpoint whose poll has once run
//! longer than [`HEAVY_POLL`] has its calls spawned onto tasks of their own
//! from then on, where the runtime spreads them over every worker and the
//! connection's task stays free to read and answer the rest. An endpoint
//! that then stays quick for [`QUICK_CALLS`] calls in a row returns to the
//! connection's task (so one slow poll, say the thread being descheduled,
//! costs little).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A poll longer than this marks its endpoint as one that computes. Well
/// above a quick handler's poll (microseconds, decoding included) and well
/// under what a neighbouring call notices.
pub(crate) const HEAVY_POLL: Duration = Duration::from_micros(500);

/// Calls of a heavy endpoint, all quick, after which it is served on the
/// connection's task again.
pub(crate) const QUICK_CALLS: u32 = 64;

/// What the server has seen of one endpoint's polls.
#[derive(Debug)]
pub(crate) struct Cost {
    heavy_poll: Duration,
    heavy: AtomicBool,
    quick_in_a_row: AtomicU32,
}

impl Default for Cost {
    fn default() -> Self {
        Cost::with_threshold(HEAVY_POLL)
    }
}

impl Cost {
    fn with_threshold(heavy_poll: Duration) -> Self {
        Cost { heavy_poll, heavy: AtomicBool::new(false), quick_in_a_row: AtomicU32::new(0) }
    }

    /// Whether the endpoint's calls get tasks of their own.
    pub(crate) fn spawns(&self) -> bool {
        self.heavy.load(Ordering::Relaxed)
    }

    fn long_poll(&self) {
        self.quick_in_a_row.store(0, Ordering::Relaxed);
        if !self.heavy.swap(true, Ordering::Relaxed) {
            tracing::debug!(limit = ?self.heavy_poll, "an endpoint computed past the limit in one poll: its calls now get tasks of their own");
        }
    }

    fn quick_call(&self) {
        if self.spawns() && self.quick_in_a_row.fetch_add(1, Ordering::Relaxed) + 1 >= QUICK_CALLS {
            self.heavy.store(false, Ordering::Relaxed);
        }
    }

    /// Runs `fut`, timing each of its polls.
    #[cfg(test)]
    pub(crate) fn metered<F: Future>(&self, fut: F) -> Metered<&Self, F, ()> {
        Metered { cost: self, fut, guard: Some(()), long: false }
    }
}

/// Times each poll of `fut` for `cost`, and drops `guard` (an in-flight
/// permit) as soon as `fut` is done.
///
/// A hand-written future rather than an `async fn`: an `async fn` keeps its
/// argument future and the pinned copy it awaits side by side, and a
/// server's call future grew to 2.3 KiB that way, past the largest size
/// glibc caches per thread (1,032 bytes), so every call paid a slow
/// `malloc` and `free` (see BENCHMARKS.md).
pub(crate) fn metered<C: std::ops::Deref<Target = Cost>, F: Future, G>(cost: C, fut: F, guard: G) -> Metered<C, F, G> {
    Metered { cost, fut, guard: Some(guard), long: false }
}

pin_project_lite::pin_project! {
    /// See [`metered`].
    pub(crate) struct Metered<C, F, G> {
        cost: C,
        #[pin]
        fut: F,
        guard: Option<G>,
        long: bool,
    }
}

impl<C: std::ops::Deref<Target = Cost>, F: Future, G> Future for Metered<C, F, G> {
    type Output = F::Output;
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        let this = self.project();
        let start = Instant::now();
        let r = this.fut.poll(cx);
        if !*this.long && start.elapsed() > this.cost.heavy_poll {
            *this.long = true;
            this.cost.long_poll();
        }
        if r.is_ready() {
            this.guard.take();
            if !*this.long {
                this.cost.quick_call();
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A threshold far above any scheduling hiccup of an empty poll, so the
    // quick calls below are quick even on a loaded machine; a thread that
    // sleeps in a poll holds its task exactly as computing does.
    const LIMIT: Duration = Duration::from_millis(20);

    async fn long() {
        std::thread::sleep(LIMIT * 2);
    }

    #[tokio::test]
    async fn a_long_poll_marks_the_endpoint_and_quick_calls_in_a_row_clear_it() {
        let c = Cost::with_threshold(LIMIT);
        c.metered(async {}).await;
        assert!(!c.spawns(), "a quick call leaves the endpoint on the connection's task");
        c.metered(long()).await;
        assert!(c.spawns(), "a long poll marks it");
        for _ in 0..QUICK_CALLS - 1 {
            c.metered(async {}).await;
        }
        assert!(c.spawns(), "it stays marked until {QUICK_CALLS} quick calls in a row");
        c.metered(long()).await;
        for _ in 0..QUICK_CALLS - 1 {
            c.metered(async {}).await;
        }
        assert!(c.spawns(), "a long poll restarts the count");
        c.metered(async {}).await;
        assert!(!c.spawns(), "{QUICK_CALLS} quick calls in a row clear it");
    }

    #[tokio::test]
    async fn a_long_poll_after_awaits_counts_too() {
        let c = Cost::with_threshold(LIMIT);
        c.metered(async {
            tokio::task::yield_now().await;
            long().await;
        })
        .await;
        assert!(c.spawns());
    }
}
