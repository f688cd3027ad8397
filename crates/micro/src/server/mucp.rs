use super::cost::{metered, Cost};
use super::endpoints::{unsubscribe_all, Endpoints};
use crate::lock;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use micro_core::frame;
use micro_core::{
    async_trait, headers, Error, Handler, Message, Request, Result, Server, ServerOptions, Service, Socket,
    SocketReceiver, SocketSender, Subscriber, Subscription,
};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::sync::WaitForCancellationFuture;
use tokio_util::task::TaskTracker;

const ID: &str = "go.micro.server";

/// The RPC server in the manner of go-micro's mucp: it reads requests with
/// `Micro-*` headers from transport connections, calls the handler named by
/// `Micro-Endpoint`, and answers on the same connection.
pub struct MucpServer {
    opts: ServerOptions,
    endpoints: Endpoints,
    running: Mutex<Option<Running>>,
    address: Mutex<Option<String>>,
}

struct Running {
    cancel: CancellationToken,
    tracker: TaskTracker,
    subs: Vec<Box<dyn Subscription>>,
}

impl MucpServer {
    /// A server with these options.
    pub fn new(opts: ServerOptions) -> Self {
        MucpServer { opts, endpoints: Endpoints::default(), running: Mutex::new(None), address: Mutex::new(None) }
    }
}

#[async_trait]
impl Server for MucpServer {
    fn handle(&self, handler: Handler) -> Result<()> {
        self.endpoints.add_handler(handler, lock(&self.running).is_some())
    }

    fn subscribe(&self, subscriber: Subscriber) -> Result<()> {
        self.endpoints.add_subscriber(subscriber, lock(&self.running).is_some())
    }

    async fn start(&self) -> Result<()> {
        if lock(&self.running).is_some() {
            return Err(Error::conflict(ID, "server already started"));
        }
        let listener = self.opts.transport.listen(&self.opts.address).await?;
        let address = listener.addr();
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let handlers: HashMap<String, Served> = self
            .endpoints
            .handlers()
            .into_iter()
            .map(|(name, handler)| (name, Served { handler, cost: Arc::default() }))
            .collect();
        let handlers = Arc::new(handlers);
        let subs = self.endpoints.subscribe_all(&*self.opts.broker).await?;

        let (c, t) = (cancel.clone(), tracker.clone());
        let limits = self.opts.limits;
        let conns = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
        let conn = Arc::new(Conn {
            handlers,
            cancel: cancel.clone(),
            service: self.opts.name.as_str().into(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(limits.max_in_flight.max(1))),
            idle_timeout: limits.idle_timeout,
            per_connection: limits.max_in_flight_per_connection.max(1),
            first_message_timeout: limits.first_message_timeout,
        });
        tokio::spawn(async move {
            loop {
                let sock = tokio::select! {
                    _ = c.cancelled() => return,
                    s = listener.accept() => s,
                };
                match sock {
                    Ok(mut sock) => match conns.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let conn = conn.clone();
                            t.spawn(async move {
                                conn.serve(sock).await;
                                drop(permit);
                            });
                        }
                        Err(_) => {
                            tracing::warn!(peer = %sock.remote_addr(), max = limits.max_connections, "connection limit reached; closing");
                            let _ = sock.close().await;
                        }
                    },
                    Err(e) => tracing::warn!(error = %e, "accept failed"),
                }
            }
        });
        tracing::info!(
            service = %self.opts.name,
            %address,
            transport = self.opts.transport.name(),
            workers = crate::runtime_workers(),
            "server listening"
        );
        *lock(&self.address) = Some(address);
        *lock(&self.running) = Some(Running { cancel, tracker, subs });
        Ok(())
    }

    async fn stop(&self) -> Result<()> {
        let Some(running) = lock(&self.running).take() else { return Ok(()) };
        unsubscribe_all(&running.subs).await;
        // Idle connections close now; connections inside a request finish it first.
        running.cancel.cancel();
        running.tracker.close();
        if tokio::time::timeout(self.opts.drain_timeout, running.tracker.wait()).await.is_err() {
            tracing::warn!(pending = running.tracker.len(), "drain timeout: abandoning in-flight requests");
        }
        Ok(())
    }

    fn service(&self) -> Service {
        let address = lock(&self.address).clone().unwrap_or_default();
        let transport = self.opts.transport.name();
        self.endpoints.record(
            &self.opts,
            address,
            &[("protocol", "mucp"), ("server", "mucp"), ("transport", transport)],
        )
    }

    fn name(&self) -> &str {
        "mucp"
    }
}

/// How long closing a connection may take (a TLS close flushes, and a peer
/// that never reads must not hold the task).
const CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// A handler as the server runs it.
struct Served {
    handler: Handler,
    /// Whether its calls are run on the connection's task or their own.
    cost: Arc<Cost>,
}

/// What every connection task of a server shares.
struct Conn {
    handlers: Arc<HashMap<String, Served>>,
    cancel: CancellationToken,
    service: Arc<str>,
    in_flight: Arc<tokio::sync::Semaphore>,
    idle_timeout: Duration,
    /// Calls one multiplexed connection may have running.
    per_connection: usize,
    /// How long a new connection may take to send its first request.
    first_message_timeout: Duration,
}

impl Conn {
    async fn serve(&self, mut sock: Box<dyn Socket>) {
        let peer = sock.remote_addr();
        // Registered once per connection, not once per request: every
        // connection waits on the same token and timers share one wheel.
        let cancelled = self.cancel.cancelled();
        tokio::pin!(cancelled);
        let idle = tokio::time::sleep(self.idle_timeout);
        tokio::pin!(idle);
        let last = tokio::time::Instant::now();
        // The first request says what the connection is for: a stream takes
        // it whole; calls may follow one another or overlap (by `Micro-Id`).
        // A socket that connects and says nothing holds its slot only briefly:
        // the first request must be complete within the first-message timeout.
        let first = tokio::time::timeout(
            self.first_message_timeout,
            self.next_frame(sock.recv_frame(), cancelled.as_mut(), idle.as_mut(), last, &peer),
        )
        .await;
        let frame = match first {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                let _ = tokio::time::timeout(CLOSE_LIMIT, sock.close()).await;
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, limit = ?self.first_message_timeout, "closing a connection that sent no request");
                let _ = tokio::time::timeout(CLOSE_LIMIT, sock.close()).await;
                return;
            }
        };
        let req = match parse_request(frame.clone()) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%peer, reason = %e, "closing connection");
                let _ = sock.close().await;
                return;
            }
        };
        if req.stream {
            // The connection carries this stream and nothing else.
            let Ok(msg) = frame::decode(frame) else { return };
            match self.in_flight.clone().try_acquire_owned() {
                Ok(_permit) => self.serve_stream(sock, msg).await,
                Err(_) => {
                    let e = Error::unavailable(ID, "server busy: too many requests in flight");
                    let _ = sock.send(end_of_stream(&req.id, Some(e))).await;
                    let _ = sock.close().await;
                }
            }
            return;
        }
        match sock.split() {
            Some((tx, rx)) => self.serve_calls(tx, rx, req, cancelled, idle, &peer).await,
            None => self.serve_in_turn(sock, req, cancelled, idle, &peer).await,
        }
    }

    /// Waits for a connection's next frame; `None` when the server stops,
    /// the connection was idle for the idle timeout since `last`, or it
    /// failed (logged).
    async fn next_frame(
        &self,
        recv: impl std::future::Future<Output = Result<bytes::Bytes>>,
        mut cancelled: Pin<&mut WaitForCancellationFuture<'_>>,
        mut idle: Pin<&mut tokio::time::Sleep>,
        last: tokio::time::Instant,
        peer: &str,
    ) -> Option<bytes::Bytes> {
        // The read stays pinned while the idle timer is re-armed: a frame
        // half-read is never dropped.
        tokio::pin!(recv);
        loop {
            tokio::select! {
                biased;
                _ = &mut cancelled => return None,
                f = &mut recv => return f.map_err(|e| connection_ended(&e, peer)).ok(),
                _ = &mut idle => {
                    if !self.still_busy(idle.as_mut(), last, false) {
                        tracing::debug!(%peer, idle = ?self.idle_timeout, "closing idle connection");
                        return None;
                    }
                }
            }
        }
    }

    /// Whether an idle timer that fired finds the connection in use (then it
    /// is re-armed): a request in flight, or a reply less than the idle
    /// timeout ago.
    fn still_busy(&self, idle: Pin<&mut tokio::time::Sleep>, last: tokio::time::Instant, in_flight: bool) -> bool {
        let since = last.elapsed();
        if !in_flight && since >= self.idle_timeout {
            return false;
        }
        let wait = if in_flight { self.idle_timeout } else { self.idle_timeout - since };
        idle.reset(tokio::time::Instant::now() + wait);
        true
    }

    /// Serves calls one after another on a socket that cannot be split
    /// (a transport from elsewhere that cannot carry streams either).
    async fn serve_in_turn(
        &self,
        mut sock: Box<dyn Socket>,
        first: Incoming,
        mut cancelled: Pin<&mut WaitForCancellationFuture<'_>>,
        mut idle: Pin<&mut tokio::time::Sleep>,
        peer: &str,
    ) {
        let mut next = Some(first);
        while let Some(req) = next.take() {
            let reply = self.call(req).await;
            if let Err(e) = sock.send_frame(reply.slice(4..)).await {
                tracing::debug!(%peer, reason = %e.detail, "closing connection");
                break;
            }
            // Idle from the reply on, not from the request: a long call is no idleness.
            let last = tokio::time::Instant::now();
            let Some(frame) = self.next_frame(sock.recv_frame(), cancelled.as_mut(), idle.as_mut(), last, peer).await
            else {
                break;
            };
            match parse_request(frame) {
                Ok(r) if r.stream => {
                    tracing::warn!(%peer, "stream opened on a connection used for calls; closing it");
                    break;
                }
                Ok(r) => next = Some(r),
                Err(e) => {
                    tracing::warn!(%peer, reason = %e, "closing connection");
                    break;
                }
            }
        }
        let _ = sock.close().await;
    }

    /// Serves calls on a split connection, as many at once as the client
    /// sends (each answered with its `Micro-Id`, in the order they finish).
    /// The handlers run on this connection's task: a reply ready at once
    /// costs no task, no channel and no wake-up, and everything ready
    /// together leaves in one write. A client that sends one call at a time
    /// (go-micro's) gets the same service as before.
    async fn serve_calls(
        &self,
        mut tx: Box<dyn SocketSender>,
        rx: Box<dyn SocketReceiver>,
        first: Incoming,
        mut cancelled: Pin<&mut WaitForCancellationFuture<'_>>,
        mut idle: Pin<&mut tokio::time::Sleep>,
        peer: &str,
    ) {
        // Every request that has arrived, a batch per read.
        async fn next(mut rx: Box<dyn SocketReceiver>) -> (Box<dyn SocketReceiver>, Result<bytes::Bytes>) {
            let f = rx.recv_frames().await;
            (rx, f)
        }
        let mut running: FuturesUnordered<BoxFuture<'_, bytes::Bytes>> = FuturesUnordered::new();
        let mut out = bytes::BytesMut::new();
        let mut recv = Box::pin(next(rx));
        let mut reading = true;
        // Stopping: requests still read are answered 503 (the client retries
        // them elsewhere at once); those running finish and are answered.
        let mut stopping = false;
        let mut last = tokio::time::Instant::now();
        let max = tx.max_message_size();
        self.start(first, max, stopping, &mut running, &mut out);
        loop {
            // Everything ready now is taken before writing, so that one
            // write carries every reply there is.
            loop {
                let mut progressed = false;
                if reading {
                    if let Poll::Ready((rx, f)) = futures::poll!(recv.as_mut()) {
                        progressed = true;
                        reading = self.on_batch(f, max, stopping, &mut running, &mut out, peer);
                        if reading {
                            recv.set(next(rx));
                        }
                    }
                }
                while let Poll::Ready(Some(reply)) = futures::poll!(running.next()) {
                    out.extend_from_slice(&reply);
                    progressed = true;
                }
                if !progressed {
                    break;
                }
            }
            if !out.is_empty() {
                let batch = out.split().freeze();
                if out.capacity() > 64 * 1024 {
                    // A large batch's buffer is not kept pinned to the connection.
                    out = bytes::BytesMut::new();
                }
                let send = tx.send_frames(batch);
                tokio::pin!(send);
                // On loopback a write nearly always completes at once; only a
                // write that waits arms a timer.
                let sent = match futures::poll!(send.as_mut()) {
                    Poll::Ready(r) => Some(r),
                    Poll::Pending => {
                        let limit = tokio::time::sleep(self.idle_timeout);
                        tokio::pin!(limit);
                        loop {
                            tokio::select! {
                                biased;
                                r = &mut send => break Some(r),
                                // Handlers go on (and free their in-flight slots)
                                // while a peer that reads slowly holds the write up.
                                Some(reply) = running.next(), if !running.is_empty() => out.extend_from_slice(&reply),
                                _ = &mut limit => break None,
                            }
                        }
                    }
                };
                match sent {
                    Some(Ok(())) => {}
                    Some(Err(e)) => {
                        tracing::debug!(%peer, reason = %e.detail, "closing connection");
                        break;
                    }
                    None => {
                        tracing::warn!(%peer, limit = ?self.idle_timeout, "peer reads no replies; closing connection");
                        break;
                    }
                }
                // Idle from the reply on, not from the request: a long call is no idleness.
                last = tokio::time::Instant::now();
            }
            if (!reading || stopping) && running.is_empty() && out.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                _ = &mut cancelled, if !stopping => stopping = true,
                Some(reply) = running.next(), if !running.is_empty() => out.extend_from_slice(&reply),
                (rx, f) = &mut recv, if reading => {
                    reading = self.on_batch(f, max, stopping, &mut running, &mut out, peer);
                    if reading {
                        recv.set(next(rx));
                    }
                }
                _ = &mut idle, if reading && !stopping => {
                    if !self.still_busy(idle.as_mut(), last, !running.is_empty()) {
                        tracing::debug!(%peer, idle = ?self.idle_timeout, "closing idle connection");
                        reading = false;
                    }
                }
            }
        }
        let _ = tx.close().await;
    }

    /// Starts the calls of a batch of frames (see `on_frame`); false once
    /// the connection is to be read no more.
    fn on_batch<'a>(
        &'a self,
        batch: Result<bytes::Bytes>,
        max: Option<usize>,
        stopping: bool,
        running: &mut FuturesUnordered<BoxFuture<'a, bytes::Bytes>>,
        out: &mut bytes::BytesMut,
        peer: &str,
    ) -> bool {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => return self.on_frame(Err(e), max, stopping, running, out, peer),
        };
        for f in frame::split_batch(batch) {
            let f = f.map_err(|e| Error::bad_request(ID, format!("a malformed batch of frames: {e}")));
            if !self.on_frame(f, max, stopping, running, out, peer) {
                return false;
            }
        }
        true
    }

    /// Takes a frame read on a multiplexed connection: starts its call, or
    /// says (false) that the connection is to be read no more.
    fn on_frame<'a>(
        &'a self,
        f: Result<bytes::Bytes>,
        max: Option<usize>,
        stopping: bool,
        running: &mut FuturesUnordered<BoxFuture<'a, bytes::Bytes>>,
        out: &mut bytes::BytesMut,
        peer: &str,
    ) -> bool {
        let req = match f
            .map_err(|e| connection_ended(&e, peer))
            .and_then(|f| parse_request(f).map_err(|e| tracing::warn!(%peer, reason = %e, "closing connection")))
        {
            Ok(r) => r,
            Err(()) => return false,
        };
        if req.stream {
            let e = Error::bad_request(ID, "a stream opens a connection of its own, not one that carries calls");
            out.extend_from_slice(&error_reply(&req, &e));
            return true;
        }
        self.start(req, max, stopping, running, out);
        true
    }

    /// Starts a call on a multiplexed connection, or answers at once that
    /// the server is at its in-flight limit or stopping.
    fn start<'a>(
        &'a self,
        req: Incoming,
        max: Option<usize>,
        stopping: bool,
        running: &mut FuturesUnordered<BoxFuture<'a, bytes::Bytes>>,
        out: &mut bytes::BytesMut,
    ) {
        if stopping {
            out.extend_from_slice(&error_reply(&req, &Error::unavailable(ID, "server stopping")));
            return;
        }
        if running.len() >= self.per_connection {
            // One connection may not take every slot of the server: its excess
            // is refused on it alone, and the client retries elsewhere.
            let e = Error::unavailable(ID, "connection busy: too many requests in flight on this connection");
            out.extend_from_slice(&error_reply(&req, &e));
            return;
        }
        let permit = match self.in_flight.clone().try_acquire_owned() {
            Ok(permit) => permit,
            // Over the in-flight limit: answer at once instead of queueing without bound.
            Err(_) => return out.extend_from_slice(&busy(&req)),
        };
        let Some(served) = self.handlers.get(&req.endpoint) else {
            return out.extend_from_slice(&unknown_endpoint(&req, &self.service));
        };
        let cost = served.cost.clone();
        if !cost.spawns() {
            // The fast path: run where the request was read (see `cost`).
            running.push(Box::pin(metered(cost, dispatch(&served.handler, &self.service, req, max), permit)));
            return;
        }
        // An endpoint that computes gets a task of its own, so the calls
        // beside it on this connection go on, and the runtime spreads one
        // client's heavy calls over every worker.
        let echo = Incoming { id: req.id.clone(), service: req.service.clone(), ..Incoming::default() };
        let (handler, service) = (served.handler.clone(), self.service.clone());
        let task = tokio::spawn(async move { metered(cost, dispatch(&handler, &service, req, max), permit).await });
        // Dropped with the connection, the call is cancelled as an inline one is.
        let task = tokio_util::task::AbortOnDropHandle::new(task);
        running.push(Box::pin(async move {
            task.await.unwrap_or_else(|_| error_reply(&echo, &Error::internal(ID, "the call's task was cancelled")))
        }));
    }

    /// Serves one call (or answers that the server is at its limit).
    async fn call(&self, req: Incoming) -> bytes::Bytes {
        let Ok(_permit) = self.in_flight.clone().try_acquire_owned() else { return busy(&req) };
        match self.handlers.get(&req.endpoint) {
            Some(served) => dispatch(&served.handler, &self.service, req, None).await,
            None => unknown_endpoint(&req, &self.service),
        }
    }
}

/// Logs why a connection's reading ended: a peer hanging up is normal;
/// anything else (garbage, a truncated, oversized or stalled frame) is
/// worth a warning.
fn connection_ended(e: &Error, peer: &str) {
    if e.detail.ends_with("connection closed") {
        tracing::debug!(%peer, "connection closed by peer");
    } else {
        tracing::warn!(%peer, reason = %e.detail, "closing connection");
    }
}

/// A request read from a frame: the protocol's headers picked out, the rest
/// kept as the caller's metadata (no map is built for the protocol's own).
#[derive(Default)]
struct Incoming {
    id: String,
    endpoint: String,
    content_type: String,
    service: String,
    timeout: Option<Duration>,
    stream: bool,
    metadata: HashMap<String, String>,
    body: bytes::Bytes,
}

fn parse_request(frame: bytes::Bytes) -> std::result::Result<Incoming, frame::FrameError> {
    let mut r = Incoming::default();
    r.body = frame::decode_with(frame, |k, v| match k {
        headers::ID => r.id = v.to_owned(),
        headers::ENDPOINT => r.endpoint = v.to_owned(),
        headers::CONTENT_TYPE => r.content_type = v.to_owned(),
        headers::SERVICE => r.service = v.to_owned(),
        headers::TIMEOUT => r.timeout = v.parse::<u64>().ok().map(Duration::from_millis),
        headers::METHOD => {}
        headers::STREAM => r.stream = v == "open",
        _ => {
            r.metadata.insert(k.to_owned(), v.to_owned());
        }
    })?;
    Ok(r)
}

/// Encodes a reply frame, length prefix included: the protocol's headers, then `extra`.
fn reply_frame<'a>(
    req: &'a Incoming,
    content_type: &'a str,
    extra: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    body: &[u8],
) -> bytes::Bytes {
    let fixed = [
        (headers::ID, req.id.as_str()),
        (headers::SERVICE, req.service.as_str()),
        (headers::ENDPOINT, req.endpoint.as_str()),
        (headers::CONTENT_TYPE, content_type),
    ];
    let extra = extra.filter(|(k, _)| !fixed.iter().any(|(f, _)| f == k));
    let mut out = bytes::BytesMut::new();
    match frame::encode_parts_prefixed(fixed.iter().copied().chain(extra), body, &mut out) {
        Ok(()) => out.freeze(),
        Err(e) => {
            // Only a reply over 4 GiB or with a 64 KiB header key gets here.
            let err = Error::internal(ID, format!("cannot encode the reply: {e}")).to_json();
            let mut out = bytes::BytesMut::new();
            let pairs = fixed.iter().copied().chain([(headers::ERROR, err.as_str())]);
            let _ = frame::encode_parts_prefixed(pairs, &[], &mut out);
            out.freeze()
        }
    }
}

/// The most of a request header that an error reply echoes, and of an
/// error's detail that it carries: an error reply must stay small whatever
/// the request was, or one hostile request could make a reply over the
/// message limit and fail the calls that share its connection.
const ECHO_MAX: usize = 1024;
const DETAIL_MAX: usize = 4096;

/// go-micro's error JSON with the detail cut to [`DETAIL_MAX`] bytes.
fn bounded_json(e: &Error) -> String {
    if e.detail.len() <= DETAIL_MAX {
        return e.to_json();
    }
    let mut e = e.clone();
    let mut cut = DETAIL_MAX;
    while !e.detail.is_char_boundary(cut) {
        cut -= 1;
    }
    e.detail.truncate(cut);
    e.detail.push_str("… (truncated)");
    e.to_json()
}

/// A reply frame carrying an error, bounded: request headers longer than
/// [`ECHO_MAX`] are not echoed and the detail is cut to [`DETAIL_MAX`].
fn error_reply(req: &Incoming, e: &Error) -> bytes::Bytes {
    let json = bounded_json(e);
    let echoed = [
        (headers::ID, req.id.as_str()),
        (headers::SERVICE, req.service.as_str()),
        (headers::ENDPOINT, req.endpoint.as_str()),
        (headers::CONTENT_TYPE, req.content_type.as_str()),
    ];
    let pairs = echoed.into_iter().filter(|(_, v)| v.len() <= ECHO_MAX).chain([(headers::ERROR, json.as_str())]);
    let mut out = bytes::BytesMut::new();
    // Bounded as above, so it always encodes.
    let _ = frame::encode_parts_prefixed(pairs, &[], &mut out);
    out.freeze()
}

/// How a served stream ended.
enum StreamEnd {
    /// The handler returned (its error, if any).
    Done(Option<Error>),
    /// The peer went away.
    Cancelled,
    /// Writing to the peer failed.
    Failed(Error),
    /// The server is stopping.
    Stopping,
    /// The caller's timeout passed.
    Timeout(Duration),
    /// No message either way for the idle timeout.
    Idle(Duration),
}

/// The message that ends the server's side of a stream.
fn end_of_stream(id: &str, err: Option<Error>) -> Message {
    let mut m = Message::default().with_header(headers::STREAM, "eos").with_header(headers::ID, id);
    if let Some(e) = err {
        m.header.insert(headers::ERROR.into(), bounded_json(&e));
    }
    m
}

impl Conn {
    /// Serves one stream on `sock`, opened by `open`: the peer's messages go
    /// to the handler until the peer's `eos`, the handler's go to the peer,
    /// and the handler's result ends the stream. A peer that goes away
    /// cancels the handler.
    async fn serve_stream(&self, mut sock: Box<dyn Socket>, mut open: Message) {
        let take = |m: &mut Message, k: &str| m.header.remove(k).unwrap_or_default();
        let id = take(&mut open, headers::ID);
        let endpoint = take(&mut open, headers::ENDPOINT);
        let content_type = take(&mut open, headers::CONTENT_TYPE);
        let timeout = take(&mut open, headers::TIMEOUT).parse::<u64>().ok().map(Duration::from_millis);
        let req_service = take(&mut open, headers::SERVICE);
        for k in [headers::METHOD, headers::STREAM] {
            open.header.remove(k);
        }
        let handler =
            match self.handlers.get(&endpoint) {
                None => Err(Error::not_found(ID, format!("unknown endpoint {endpoint} of service {}", self.service))),
                Some(s) => s.handler.stream.clone().ok_or_else(|| {
                    Error::bad_request(ID, format!("{endpoint} is not a stream endpoint: call it instead"))
                }),
            };
        let handler = match handler {
            Ok(h) => h,
            Err(e) => {
                let _ = sock.send(end_of_stream(&id, Some(e))).await;
                let _ = sock.close().await;
                return;
            }
        };
        let Some((mut tx, mut rx)) = sock.split() else {
            let e = Error::new(ID, "this transport cannot carry streams", 501);
            let _ = sock.send(end_of_stream(&id, Some(e))).await;
            let _ = sock.close().await;
            return;
        };
        let (stream, ends) = micro_core::Stream::pair();
        let req = Request {
            service: req_service,
            endpoint: endpoint.clone(),
            content_type,
            body: bytes::Bytes::new(),
            metadata: open.header,
        };
        let mut task = match std::panic::catch_unwind(AssertUnwindSafe(|| handler(req, stream))) {
            Ok(fut) => tokio::spawn(fut),
            Err(_) => {
                let e = Error::internal(&*self.service, format!("handler {endpoint} panicked"));
                let _ = tx.send(end_of_stream(&id, Some(e))).await;
                return;
            }
        };
        let micro_core::StreamEnds { incoming, mut outgoing, .. } = ends;
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        // A stream holds an in-flight slot: one with no message either way
        // for the idle timeout (a silent peer, or one that stopped reading
        // so that a send never completes) is cancelled.
        let start = tokio::time::Instant::now();
        let active = std::sync::atomic::AtomicU64::new(0);
        let touch = || active.store(start.elapsed().as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
        let idle_limit = self.idle_timeout;
        let idle = async {
            loop {
                let last = start + Duration::from_millis(active.load(std::sync::atomic::Ordering::Relaxed));
                if last.elapsed() >= idle_limit {
                    return;
                }
                tokio::time::sleep_until(last + idle_limit).await;
            }
        };
        let expired = || async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let end = {
            // The writer checks the deadline and the server's stop between
            // frames only: a frame is never cut in half on the wire.
            let writer = async {
                loop {
                    let next = tokio::select! {
                        biased;
                        _ = self.cancel.cancelled() => return StreamEnd::Stopping,
                        _ = expired() => return StreamEnd::Timeout(timeout.unwrap_or_default()),
                        b = outgoing.recv() => b,
                    };
                    let Some(body) = next else { break };
                    if let Err(e) = tx.send(Message { header: HashMap::new(), body }).await {
                        return StreamEnd::Failed(e);
                    }
                    touch();
                }
                // The handler dropped its stream: it has finished, or is about to.
                let result = tokio::select! {
                    biased;
                    _ = self.cancel.cancelled() => return StreamEnd::Stopping,
                    _ = expired() => return StreamEnd::Timeout(timeout.unwrap_or_default()),
                    r = &mut task => r,
                };
                match result {
                    Ok(Ok(())) => StreamEnd::Done(None),
                    Ok(Err(e)) => StreamEnd::Done(Some(e)),
                    Err(_) => {
                        StreamEnd::Done(Some(Error::internal(&*self.service, format!("handler {endpoint} panicked"))))
                    }
                }
            };
            let reader = async move {
                let mut incoming = Some(incoming);
                loop {
                    let got = rx.recv().await;
                    touch();
                    match got {
                        Ok(m) if m.get(headers::STREAM) == Some("eos") => incoming = None,
                        Ok(m) => {
                            if let Some(tx) = &incoming {
                                // A handler that stopped receiving still gets to send.
                                let _ = tx.send(Ok(m.body)).await;
                            }
                        }
                        // The peer went away: that cancels the stream.
                        Err(_) => return,
                    }
                }
            };
            tokio::select! {
                end = writer => end,
                _ = reader => StreamEnd::Cancelled,
                _ = idle => StreamEnd::Idle(idle_limit),
            }
        };
        task.abort();
        let last = match end {
            StreamEnd::Done(err) => Some(err),
            StreamEnd::Cancelled => {
                tracing::debug!(%endpoint, "stream cancelled by the peer");
                None
            }
            StreamEnd::Failed(e) => {
                // Say why if the connection still takes it (e.g. an oversized message).
                Some(Some(Error::internal(ID, format!("stream {endpoint}: {}", e.detail))))
            }
            StreamEnd::Stopping => Some(Some(Error::unavailable(ID, "server stopping"))),
            StreamEnd::Timeout(t) => {
                Some(Some(Error::timeout(ID, format!("{endpoint} exceeded the caller's timeout of {t:?}"))))
            }
            StreamEnd::Idle(t) => {
                tracing::debug!(%endpoint, idle = ?t, "stream cancelled: no message either way");
                Some(Some(Error::timeout(ID, format!("stream {endpoint}: no message either way for {t:?}"))))
            }
        };
        // A peer that stopped reading cannot hold this task: the last frame
        // and the close get a bounded time.
        let finish = async {
            if let Some(err) = last {
                let _ = tx.send(end_of_stream(&id, err)).await;
            }
            let _ = tx.close().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), finish).await;
    }
}

/// The reply to a request for an endpoint the server does not have.
fn unknown_endpoint(req: &Incoming, service: &str) -> bytes::Bytes {
    error_reply(req, &Error::not_found(ID, format!("unknown endpoint {} of service {service}", req.endpoint)))
}

/// The reply to a request refused because the server is at its in-flight limit.
fn busy(req: &Incoming) -> bytes::Bytes {
    error_reply(req, &Error::unavailable(ID, "server busy: too many requests in flight"))
}

/// Serves one request and encodes the reply frame (length prefix included).
/// A reply over `max` becomes an error reply saying so: on a connection
/// that carries other calls, one oversized reply must not take it down.
async fn dispatch(h: &Handler, service: &str, mut req: Incoming, max: Option<usize>) -> bytes::Bytes {
    let request = Request {
        service: req.service.clone(),
        endpoint: req.endpoint.clone(),
        content_type: req.content_type.clone(),
        body: std::mem::take(&mut req.body),
        metadata: std::mem::take(&mut req.metadata),
    };
    let result = invoke(&h.func, request, req.timeout, service, &req.endpoint).await;
    match result {
        Ok(resp) => {
            let extra = resp.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str()));
            let reply = reply_frame(&req, &resp.content_type, extra, &resp.body);
            match max {
                Some(max) if reply.len() - 4 > max => {
                    let e = frame::FrameError::TooLarge { size: reply.len() - 4, max };
                    tracing::warn!(endpoint = %req.endpoint, error = %e, "reply refused");
                    error_reply(&req, &Error::internal(ID, format!("the reply of {}: {e}", req.endpoint)))
                }
                _ => reply,
            }
        }
        Err(e) => {
            if e.code >= 500 {
                tracing::warn!(endpoint = %req.endpoint, error = %e, "request failed");
            }
            error_reply(&req, &e)
        }
    }
}

/// Calls a handler with a request: a panic answers 500, and the caller's
/// remaining `timeout` (when it sent one) is enforced. Both protocols serve
/// plain calls through this. The handler is called at once; the future
/// returned holds only its future (not the request, nor a copy of the
/// endpoint's name: `endpoint` is borrowed for the error messages), which
/// keeps a server's per-call future small (see `cost::Metered`).
pub(crate) fn invoke<'a>(
    func: &micro_core::HandlerFn,
    req: Request,
    timeout: Option<Duration>,
    service: &'a str,
    endpoint: &'a str,
) -> impl std::future::Future<Output = Result<micro_core::Response>> + Send + 'a {
    // A panicking handler answers 500; the connection and server go on.
    let started = std::panic::catch_unwind(AssertUnwindSafe(|| func(req)));
    async move {
        let fut = match started {
            Ok(fut) => AssertUnwindSafe(fut).catch_unwind(),
            Err(_) => return Err(Error::internal(service, format!("handler {endpoint} panicked"))),
        };
        let res = match timeout {
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .map_err(|_| Error::timeout(ID, format!("{endpoint} exceeded the caller's timeout of {t:?}")))?,
            None => fut.await,
        };
        res.unwrap_or_else(|_| Err(Error::internal(service, format!("handler {endpoint} panicked"))))
    }
}
