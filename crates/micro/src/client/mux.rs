//! Multiplexed mucp connections: many calls in flight on one connection,
//! told apart by `Micro-Id`. Requests queued while the connection is busy
//! writing leave together in one write, and one read brings many replies,
//! so a busy client makes far fewer syscalls than one connection per call.
//! The wire format is go-micro's: a server that answers one call at a time
//! still answers every call, in order.

use crate::lock;
use micro_core::{frame, headers, Error, Result, SocketReceiver, SocketSender, Transport};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};

const ID: &str = "go.micro.client";

/// A reply frame, or why the connection failed before it came.
type Reply = std::result::Result<bytes::Bytes, Error>;

/// Replies that arrived after their caller gave up, and were dropped.
pub(super) static LATE_REPLIES: AtomicU64 = AtomicU64::new(0);

/// The state a connection's callers, writer and reader share.
struct Shared {
    state: Mutex<State>,
    /// Wakes the writer when a request is queued while it sleeps.
    wake: Notify,
    /// The largest frame the socket sends, checked before queueing so that
    /// one oversized request never fails the calls queued beside it.
    max: Option<usize>,
    /// `state.broken` is set, readable without the lock.
    broken: AtomicBool,
    /// `state.waiting.len()`, readable without the lock: new calls go to
    /// the connection with the fewest in flight.
    in_flight: AtomicUsize,
    /// When the last reply came (or the connection was made), in
    /// milliseconds since `epoch` (for the idle TTL, checked without the
    /// lock on every call).
    last_used_ms: AtomicU64,
    /// The clock of the [`Conns`] this connection belongs to: one reading
    /// of it checks every connection of an address.
    epoch: Instant,
    /// Ends the reader and writer (which closes the socket) once the
    /// connection is broken or its last handle is dropped.
    stop: tokio_util::sync::CancellationToken,
}

#[derive(Default)]
struct State {
    /// Requests not yet written, each with its length prefix.
    out: bytes::BytesMut,
    /// The writer is awake (it looks at `out` again before sleeping).
    writing: bool,
    /// Calls waiting for their reply, by request id.
    waiting: HashMap<u64, oneshot::Sender<Reply>>,
    /// Why the connection is unusable, once it is.
    broken: Option<Error>,
}

impl Shared {
    /// Fails every waiting call and refuses new ones.
    fn fail(&self, e: Error) {
        let waiting = {
            let mut st = lock(&self.state);
            st.broken.get_or_insert_with(|| e.clone());
            self.broken.store(true, Ordering::Relaxed);
            st.out = bytes::BytesMut::new();
            self.in_flight.store(0, Ordering::Relaxed);
            std::mem::take(&mut st.waiting)
        };
        self.stop.cancel();
        for (_, w) in waiting {
            let _ = w.send(Err(e.clone()));
        }
    }
}

/// One multiplexed connection. Dropping the last handle stops its tasks
/// and closes it.
pub(super) struct MuxConn {
    shared: Arc<Shared>,
}

/// A request queued on a connection; its reply arrives through [`Pending::reply`].
pub(super) struct Pending {
    shared: Arc<Shared>,
    id: u64,
    rx: Option<oneshot::Receiver<Reply>>,
}

impl Pending {
    /// Waits for the reply frame (without its length prefix).
    pub(super) async fn reply(mut self) -> Reply {
        // The receiver stays in `self` while waiting: a caller that gives
        // up drops `self` mid-wait, and `Drop` then removes its entry.
        let Some(rx) = self.rx.as_mut() else { return Err(Error::internal(ID, "reply already taken")) };
        let reply = rx.await.unwrap_or_else(|_| Err(Error::internal(ID, "connection closed")));
        // Answered (the reader removed the entry): nothing left to remove.
        self.rx = None;
        reply
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // A caller that gave up (its deadline passed) leaves no entry behind;
        // its reply, if it still comes, is dropped by the reader.
        if self.rx.is_some() {
            let mut st = lock(&self.shared.state);
            st.waiting.remove(&self.id);
            self.shared.in_flight.store(st.waiting.len(), Ordering::Relaxed);
        }
    }
}

/// Why a request could not be queued.
pub(super) enum QueueError {
    /// The connection is broken: another may do.
    Conn(Error),
    /// The request itself cannot be sent.
    Request(Error),
}

impl MuxConn {
    fn start(mut tx: Box<dyn SocketSender>, mut rx: Box<dyn SocketReceiver>, epoch: Instant) -> MuxConn {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            max: tx.max_message_size(),
            broken: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            last_used_ms: AtomicU64::new(epoch.elapsed().as_millis() as u64),
            epoch,
            stop: tokio_util::sync::CancellationToken::new(),
        });
        // Inside a plugin these run on the host's runtime (see `micro_plugin::host::spawn`).
        let (w, r) = (shared.clone(), shared.clone());
        let (stop_w, stop_r) = (shared.stop.clone(), shared.stop.clone());
        micro_plugin::host::spawn(async move {
            let write = async {
                loop {
                    w.wake.notified().await;
                    // Woken by the first caller of a burst, the writer would
                    // run straight after it (tokio runs a task just woken
                    // next) and send one request per write; yielding once
                    // lets the callers already runnable queue theirs first.
                    // A lone call is written at once: nobody else is coming.
                    if lock(&w.state).waiting.len() > 1 {
                        // The host's yield inside a plugin (see there).
                        micro_plugin::host::yield_now().await;
                    }
                    let mut wrote = false;
                    loop {
                        let batch = {
                            let mut st = lock(&w.state);
                            if st.out.is_empty() || st.broken.is_some() {
                                st.writing = false;
                                break;
                            }
                            if wrote {
                                None
                            } else {
                                let batch = st.out.split().freeze();
                                if st.out.capacity() > 64 * 1024 {
                                    // A large batch's buffer is not kept pinned to the connection.
                                    st.out = bytes::BytesMut::new();
                                }
                                Some(batch)
                            }
                        };
                        let Some(batch) = batch else {
                            // Requests queued while the last write was made
                            // come from callers running beside it: yield, as
                            // before the first write, so that those still on
                            // their way queue theirs too, rather than send
                            // these few alone. A write of a few frames costs
                            // more than a pass of the scheduler: 2–9% more
                            // calls/s at 16–256 callers (BENCHMARKS.md,
                            // seventh session).
                            wrote = false;
                            micro_plugin::host::yield_now().await;
                            continue;
                        };
                        if let Err(e) = tx.send_frames(batch).await {
                            w.fail(super::connection_error(&e));
                            return;
                        }
                        wrote = true;
                    }
                }
            };
            tokio::select! {
                _ = stop_w.cancelled() => {}
                _ = write => {}
            }
            let _ = tx.close().await;
        });
        micro_plugin::host::spawn(async move {
            let read = async {
                // Replies of one read, with their ids, kept across reads.
                let mut replies = Vec::new();
                let mut waiters = Vec::new();
                loop {
                    // Every reply that has arrived, in one call (one call and
                    // one crossing per batch when the socket is a plugin's).
                    let batch = match rx.recv_frames().await {
                        Ok(b) => b,
                        Err(e) => return super::connection_error(&e),
                    };
                    for frame in frame::split_batch(batch) {
                        let frame = match frame {
                            Ok(f) => f,
                            Err(e) => return Error::internal(ID, format!("bad reply batch: {e}")),
                        };
                        let mut id = None;
                        if let Err(e) = frame::visit_headers(&frame, |k, v| {
                            if k == headers::ID {
                                id = v.parse::<u64>().ok();
                            }
                        }) {
                            return Error::internal(ID, format!("bad reply frame: {e}"));
                        }
                        let Some(id) = id else {
                            // A reply that names no call of ours: the connection is out of step.
                            return Error::internal(ID, "reply without a request id of this client");
                        };
                        replies.push((id, frame));
                    }
                    // One lock for the whole batch.
                    {
                        let mut st = lock(&r.state);
                        waiters.extend(replies.iter().map(|(id, _)| st.waiting.remove(id)));
                        r.in_flight.store(st.waiting.len(), Ordering::Relaxed);
                    }
                    r.last_used_ms.store(r.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                    for ((id, frame), waiter) in replies.drain(..).zip(waiters.drain(..)) {
                        match waiter {
                            Some(w) => {
                                let _ = w.send(Ok(frame));
                            }
                            // Its caller gave up (deadline, cancellation): dropped, counted.
                            None => {
                                LATE_REPLIES.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!(id, "dropped a reply whose caller gave up");
                            }
                        }
                    }
                }
            };
            tokio::select! {
                _ = stop_r.cancelled() => {}
                e = read => r.fail(e),
            }
        });
        MuxConn { shared }
    }

    /// Queues a request whose frame `encode` appends (length prefix
    /// included); the reply comes through the returned [`Pending`].
    pub(super) fn queue(
        &self,
        id: u64,
        encode: impl FnOnce(&mut bytes::BytesMut) -> std::result::Result<(), frame::FrameError>,
    ) -> std::result::Result<Pending, QueueError> {
        let (tx, rx) = oneshot::channel();
        let wake = {
            let mut st = lock(&self.shared.state);
            if let Some(e) = &st.broken {
                return Err(QueueError::Conn(e.clone()));
            }
            let start = st.out.len();
            if let Err(e) = encode(&mut st.out) {
                st.out.truncate(start);
                return Err(QueueError::Request(Error::bad_request(ID, format!("cannot encode the request: {e}"))));
            }
            let size = st.out.len() - start - 4;
            if let Some(max) = self.shared.max.filter(|&m| size > m) {
                st.out.truncate(start);
                let e = frame::FrameError::TooLarge { size, max };
                return Err(QueueError::Request(Error::bad_request(ID, format!("cannot send the request: {e}"))));
            }
            st.waiting.insert(id, tx);
            self.shared.in_flight.store(st.waiting.len(), Ordering::Relaxed);
            !std::mem::replace(&mut st.writing, true)
        };
        if wake {
            self.shared.wake.notify_one();
        }
        Ok(Pending { shared: self.shared.clone(), id, rx: Some(rx) })
    }

    /// Usable for a new call at `now` (since `epoch`): not broken, and with
    /// a reply (or its making) less than `ttl` ago. A connection left idle
    /// longer is not trusted to be open still (the server closes idle ones)
    /// and is replaced.
    fn usable(&self, ttl: Duration, now: Duration) -> bool {
        let s = &self.shared;
        let idle = now.saturating_sub(Duration::from_millis(s.last_used_ms.load(Ordering::Relaxed)));
        !s.broken.load(Ordering::Relaxed) && idle < ttl
    }
}

impl Drop for MuxConn {
    fn drop(&mut self) {
        // The tasks end with `stop`; calls still waiting learn why.
        self.shared.fail(Error::internal(ID, "connection closed"));
    }
}

/// The connections of one address.
#[derive(Default)]
struct Address {
    conns: Mutex<Vec<Arc<MuxConn>>>,
    next: AtomicUsize,
    /// One dial at a time per address: a burst of first calls waits for
    /// the connection instead of opening one each.
    dialing: tokio::sync::Mutex<()>,
}

/// What [`Conns::get`] found for an address.
pub(super) enum Got {
    /// A multiplexed connection.
    Mux(Arc<MuxConn>),
    /// The transport cannot split its sockets: the caller uses this one
    /// call at a time.
    Plain(Box<dyn micro_core::Socket>),
}

/// Multiplexed connections per address, up to `per_address` each, used in turn.
pub(super) struct Conns {
    per_address: usize,
    ttl: Duration,
    addresses: Mutex<HashMap<String, Arc<Address>>>,
    epoch: Instant,
}

impl Conns {
    pub(super) fn new(per_address: usize, ttl: Duration) -> Self {
        Conns { per_address: per_address.max(1), ttl, addresses: Mutex::new(HashMap::new()), epoch: Instant::now() }
    }

    /// An open connection to `address` if there are `per_address` of
    /// them, without dialling (the common case, and no future to poll).
    pub(super) fn ready(&self, address: &str) -> Option<Arc<MuxConn>> {
        let addr = lock(&self.addresses).get(address)?.clone();
        self.pick(&addr)
    }

    /// A connection to `address`: one already open when there are
    /// `per_address` of them, else a new one.
    pub(super) async fn get(&self, transport: &dyn Transport, address: &str) -> Result<Got> {
        let addr = {
            let mut addresses = lock(&self.addresses);
            match addresses.get(address) {
                Some(a) => a.clone(),
                None => {
                    // A new address: forget those whose connections all ended
                    // (nodes that went away), so the map does not grow forever.
                    let now = self.epoch.elapsed();
                    addresses.retain(|_, a| {
                        let mut conns = lock(&a.conns);
                        conns.retain(|c| c.usable(self.ttl, now));
                        !conns.is_empty()
                    });
                    addresses.entry(address.to_string()).or_default().clone()
                }
            }
        };
        if let Some(c) = self.pick(&addr) {
            return Ok(Got::Mux(c));
        }
        let _dialing = addr.dialing.lock().await;
        // Another caller may have dialled while this one waited.
        if let Some(c) = self.pick(&addr) {
            return Ok(Got::Mux(c));
        }
        let mut sock = transport.dial(address).await?;
        let Some((tx, rx)) = sock.split() else { return Ok(Got::Plain(sock)) };
        let conn = Arc::new(MuxConn::start(tx, rx, self.epoch));
        lock(&addr.conns).push(conn.clone());
        Ok(Got::Mux(conn))
    }

    /// Picks the usable connection with the fewest calls in flight (ties
    /// in turn), dropping unusable ones; `None` when fewer than
    /// `per_address` are open. In turn alone, a call could land behind a
    /// full batch on one connection while the other was idle: at 16 callers
    /// over two connections that was the tail of the latency (BENCHMARKS.md).
    fn pick(&self, addr: &Address) -> Option<Arc<MuxConn>> {
        let mut conns = lock(&addr.conns);
        let now = self.epoch.elapsed();
        conns.retain(|c| c.usable(self.ttl, now));
        if conns.len() < self.per_address {
            return None;
        }
        let start = addr.next.fetch_add(1, Ordering::Relaxed);
        let n = conns.len();
        let i = (0..n)
            .map(|k| (start + k) % n)
            .min_by_key(|&i| conns[i].shared.in_flight.load(Ordering::Relaxed))
            .unwrap_or(start % n);
        Some(conns[i].clone())
    }

    /// After a connection error, the other connections to that address are
    /// suspect too: new calls dial afresh (calls in flight on them go on).
    pub(super) fn clear(&self, address: &str) {
        if let Some(addr) = lock(&self.addresses).remove(address) {
            lock(&addr.conns).clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro_core::{async_trait, Message};

    /// A sender that records how many frames each write carried, its first
    /// write held until the test lets it finish.
    struct Held {
        writes: Arc<Mutex<Vec<usize>>>,
        release: Option<tokio::sync::oneshot::Receiver<()>>,
    }

    #[async_trait]
    impl SocketSender for Held {
        async fn send(&mut self, _: Message) -> Result<()> {
            Ok(())
        }
        async fn close(&mut self) -> Result<()> {
            Ok(())
        }
        async fn send_frames(&mut self, batch: bytes::Bytes) -> Result<()> {
            lock(&self.writes).push(frame::split_batch(batch).count());
            if let Some(release) = self.release.take() {
                let _ = release.await;
            }
            Ok(())
        }
    }

    /// A receiver that never gets a reply.
    struct Silent;

    #[async_trait]
    impl SocketReceiver for Silent {
        async fn recv(&mut self) -> Result<Message> {
            std::future::pending().await
        }
    }

    fn request(conn: &MuxConn, id: u64) -> std::result::Result<Pending, Error> {
        conn.queue(id, |b| {
            frame::put_prefixed(b, b"request");
            Ok(())
        })
        .map_err(|e| match e {
            QueueError::Conn(e) | QueueError::Request(e) => e,
        })
    }

    #[tokio::test(flavor = "current_thread")]
    async fn requests_queued_during_a_write_wait_for_the_callers_beside_them() -> Result<()> {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let (release, held) = tokio::sync::oneshot::channel();
        let sender = Held { writes: writes.clone(), release: Some(held) };
        let conn = Arc::new(MuxConn::start(Box::new(sender), Box::new(Silent), Instant::now()));
        let mut pending = vec![request(&conn, 1)?];
        // The writer takes the first request and is held in its write.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(*lock(&writes), [1]);
        // A request queued meanwhile, then the write ends, and callers that
        // were already on their way (ready, but run after the writer) queue theirs.
        pending.push(request(&conn, 2)?);
        let _ = release.send(());
        let callers: Vec<_> = (3..=6)
            .map(|id| {
                let conn = conn.clone();
                tokio::spawn(async move { request(&conn, id) })
            })
            .collect();
        for c in callers {
            pending.push(c.await.map_err(|e| Error::internal("t", e.to_string()))??);
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        // All five leave in one write, not the one queued during the write alone.
        assert_eq!(*lock(&writes), [1, 5]);
        drop(pending);
        Ok(())
    }
}
