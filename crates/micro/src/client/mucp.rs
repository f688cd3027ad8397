use super::mux::{Conns, Got, MuxConn, QueueError};
use super::Attempt;
use crate::lock;
use micro_core::frame;
use micro_core::{
    async_trait, headers, CallOptions, Client, ClientOptions, Error, Message, Request, Response, Result, SelectOptions,
    Socket, SocketReceiver, SocketSender, Stream, StreamEnds,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ID: &str = "go.micro.client";

/// Connections per address, of the mucp and the grpc client:
/// `MICRO_CLIENT_CONNECTIONS`, else one per core up to 4. A few are enough,
/// since each carries many calls at once; more than one lets a server spread
/// one client's calls over its cores.
pub(crate) fn connections_per_address() -> usize {
    std::env::var("MICRO_CLIENT_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()).min(4))
}

/// The RPC client in the manner of go-micro's mucp: a request is one
/// message with `Micro-*` headers. Calls to one address share a few
/// connections, many calls in flight on each (see the `mux` module);
/// over a transport whose sockets cannot be split, each connection carries
/// one call at a time and idle ones are pooled.
pub struct MucpClient {
    opts: ClientOptions,
    conns: Conns,
    /// Set once the transport turned out unable to split its sockets.
    plain: AtomicBool,
    pool: Pool,
    seq: AtomicU64,
    /// Each thread's choice among the selector's candidates.
    leases: super::Leases,
}

impl MucpClient {
    /// A client with these options, and as many connections per address
    /// as `MICRO_CLIENT_CONNECTIONS` says (default: one per core, up to 4).
    pub fn new(opts: ClientOptions) -> Self {
        Self::with_connections(opts, connections_per_address())
    }

    /// A client with these options that opens up to `per_address`
    /// connections to each address (at least one).
    pub fn with_connections(opts: ClientOptions, per_address: usize) -> Self {
        MucpClient {
            conns: Conns::new(per_address, opts.pool_ttl),
            plain: AtomicBool::new(false),
            pool: Pool::new(opts.pool_size, opts.pool_ttl),
            opts,
            seq: AtomicU64::new(1),
            leases: super::Leases::new(),
        }
    }

    async fn attempt(&self, address: &str, req: &Request, deadline: Instant, last: bool) -> Attempt {
        // The rare paths (dialling, transports without split sockets) are
        // boxed: inline, they tripled the size of every call's future, and a
        // future over ~1 KiB misses the allocator's per-thread cache (glibc's
        // tcache stops at 1,032 bytes), which cost a slow malloc and free per call.
        if self.plain.load(Ordering::Relaxed) {
            return Box::pin(self.attempt_plain(None, address, req, deadline)).await;
        }
        let conn = match self.conns.ready(address) {
            Some(c) => c,
            None => match Box::pin(self.connect(address, req, deadline, last)).await {
                Ok(c) => c,
                Err(done) => return done,
            },
        };
        let id = self.seq.fetch_add(1, Ordering::Relaxed);
        let pending = match conn.queue(id, |out| encode_request(req, id, deadline, out)) {
            Ok(p) => p,
            Err(QueueError::Request(e)) => return Attempt::Done(Err(e)),
            Err(QueueError::Conn(e)) => {
                self.conns.clear(address);
                return Attempt::Conn(e);
            }
        };
        match pending.reply().await {
            Ok(reply) => parse_reply(reply, id, req),
            Err(e) => {
                self.conns.clear(address);
                Attempt::Conn(e)
            }
        }
    }

    /// A connection to `address`, dialled if none is open; `Err` is the
    /// attempt's outcome when there is none (or the call went over a
    /// connection of its own because the transport's sockets cannot be split).
    async fn connect(
        &self,
        address: &str,
        req: &Request,
        deadline: Instant,
        last: bool,
    ) -> std::result::Result<Arc<MuxConn>, Attempt> {
        let dial_limit = super::dial_limit(deadline.saturating_duration_since(Instant::now()), last);
        let got = match tokio::time::timeout(dial_limit, self.conns.get(&*self.opts.transport, address)).await {
            Ok(got) => got,
            Err(_) => Err(super::dial_timed_out(address, dial_limit)),
        };
        match got {
            Ok(Got::Mux(c)) => Ok(c),
            Ok(Got::Plain(sock)) => {
                // This transport's sockets cannot be split: one call per connection, pooled.
                self.plain.store(true, Ordering::Relaxed);
                Err(self.attempt_plain(Some(sock), address, req, deadline).await)
            }
            Err(e) => Err(Attempt::Conn(super::connection_error(&e))),
        }
    }

    /// A call over a connection of its own, for transports whose sockets
    /// cannot be split: idle connections are pooled per address.
    async fn attempt_plain(
        &self,
        sock: Option<Box<dyn Socket>>,
        address: &str,
        req: &Request,
        deadline: Instant,
    ) -> Attempt {
        let mut sock = match sock.or_else(|| self.pool.get(address)) {
            Some(s) => s,
            None => match self.opts.transport.dial(address).await {
                Ok(s) => s,
                Err(e) => return Attempt::Conn(super::connection_error(&e)),
            },
        };
        let id = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut out = bytes::BytesMut::new();
        if let Err(e) = encode_request(req, id, deadline, &mut out) {
            self.pool.put(address, sock);
            return Attempt::Done(Err(Error::bad_request(ID, format!("cannot encode the request: {e}"))));
        }
        if let Err(e) = sock.send_frame(out.freeze().slice(4..)).await {
            self.pool.clear(address);
            return Attempt::Conn(super::connection_error(&e));
        }
        let reply = match sock.recv_frame().await {
            Ok(f) => f,
            Err(e) => {
                self.pool.clear(address);
                return Attempt::Conn(super::connection_error(&e));
            }
        };
        let res = parse_reply(reply, id, req);
        // A garbled or out-of-step reply: the connection is not to be trusted again.
        if !matches!(&res, Attempt::Done(Err(e)) if e.id == ID && e.code == 500) {
            self.pool.put(address, sock);
        }
        res
    }

    async fn call_inner(&self, req: &Request, opts: &CallOptions, deadline: Instant) -> Result<Response> {
        let retries = opts.retries.unwrap_or(self.opts.retries);
        super::with_retries(&*self.opts.selector, &self.leases, "mucp", req, opts, retries, |node, last| async move {
            self.attempt(&node.address, req, deadline, last).await
        })
        .await
    }
}

/// Appends a request's frame, length prefix included. The frame is written
/// straight from the request: no header map per call.
fn encode_request(
    req: &Request,
    id: u64,
    deadline: Instant,
    out: &mut bytes::BytesMut,
) -> std::result::Result<(), frame::FrameError> {
    let id = id.to_string();
    let left = deadline.saturating_duration_since(Instant::now()).as_millis().to_string();
    let fixed = [
        (headers::SERVICE, req.service.as_str()),
        (headers::ENDPOINT, req.endpoint.as_str()),
        (headers::METHOD, req.endpoint.as_str()),
        (headers::ID, id.as_str()),
        (headers::CONTENT_TYPE, req.content_type.as_str()),
        (headers::TIMEOUT, left.as_str()),
    ];
    let metadata =
        req.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())).filter(|(k, _)| !fixed.iter().any(|(f, _)| f == k));
    frame::encode_parts_prefixed(fixed.iter().copied().chain(metadata), &req.body, out)
}

/// Reads a reply frame (without its length prefix) to request `id`.
fn parse_reply(reply: bytes::Bytes, id: u64, req: &Request) -> Attempt {
    let (mut got_id, mut error, mut content_type) = (None, None, None);
    let mut metadata = HashMap::new();
    let body = frame::decode_with(reply, |k, v| match k {
        headers::ID => got_id = Some(v.parse::<u64>().ok() == Some(id)),
        headers::ERROR => error = Some(Error::parse(v)),
        headers::CONTENT_TYPE => content_type = Some(v.to_owned()),
        // The protocol's echo of the request, not the handler's metadata.
        headers::SERVICE | headers::ENDPOINT | headers::METHOD => {}
        _ => {
            metadata.insert(k.to_owned(), v.to_owned());
        }
    });
    let body = match body {
        Ok(b) => b,
        Err(e) => return Attempt::Done(Err(Error::internal(ID, format!("bad reply frame: {e}")))),
    };
    if got_id == Some(false) {
        return Attempt::Done(Err(Error::internal(ID, "response id does not match request id")));
    }
    if let Some(e) = error {
        return Attempt::Done(Err(e));
    }
    let content_type = content_type.unwrap_or_else(|| req.content_type.clone());
    Attempt::Done(Ok(Response { content_type, body, metadata }))
}

#[async_trait]
impl Client for MucpClient {
    async fn call(&self, req: Request, opts: CallOptions) -> Result<Response> {
        let timeout = opts.timeout.unwrap_or(self.opts.request_timeout);
        let deadline = Instant::now() + timeout;
        // Boxed apart from this future: one future holding both was over
        // 1 KiB (see `attempt`); two smaller ones each come from the cache.
        let inner = Box::pin(self.call_inner(&req, &opts, deadline));
        match tokio::time::timeout(timeout, inner).await {
            Ok(res) => res,
            Err(_) => {
                Err(Error::timeout(ID, format!("call {}.{} timed out after {timeout:?}", req.service, req.endpoint)))
            }
        }
    }

    async fn stream(&self, req: Request, opts: CallOptions) -> Result<Stream> {
        let deadline = opts.timeout.map(|t| tokio::time::Instant::now() + t);
        // A stream gets a connection of its own, not one from the pool.
        let retries = opts.retries.unwrap_or(self.opts.retries);
        let mut exclude = Vec::new();
        let mut attempt = 0;
        let (mut sock, address) = loop {
            let (address, node_id) = match &opts.address {
                Some(a) => (a.clone(), None),
                None => {
                    let sel = SelectOptions { exclude: exclude.clone(), protocol: Some("mucp".into()) };
                    let n = self.opts.selector.select(&req.service, sel).await?;
                    (n.address, Some(n.id))
                }
            };
            match self.opts.transport.dial(&address).await {
                Ok(s) => break (s, address),
                Err(e) if attempt < retries => {
                    if let Some(id) = node_id {
                        self.opts.selector.mark(&req.service, &id, Err(&e));
                        self.leases.void();
                        exclude.push(id);
                    }
                    attempt += 1;
                }
                Err(e) => return Err(super::connection_error(&e)),
            }
        };
        let id = self.seq.fetch_add(1, Ordering::Relaxed).to_string();
        let mut open = Message { header: req.metadata.clone(), body: bytes::Bytes::new() };
        for (k, v) in [
            (headers::SERVICE, req.service.as_str()),
            (headers::ENDPOINT, &req.endpoint),
            (headers::METHOD, &req.endpoint),
            (headers::ID, &id),
            (headers::CONTENT_TYPE, &req.content_type),
            (headers::STREAM, "open"),
        ] {
            open.header.insert(k.to_string(), v.to_string());
        }
        if let Some(t) = opts.timeout {
            open.header.insert(headers::TIMEOUT.into(), t.as_millis().to_string());
        }
        sock.send(open).await?;
        let Some((mut tx, rx)) = sock.split() else {
            return Err(Error::new(ID, format!("transport {} cannot carry streams", self.opts.transport.name()), 501));
        };
        if !req.body.is_empty() {
            tx.send(Message::new(req.body)).await?;
        }
        let (stream, ends) = Stream::pair();
        tracing::debug!(service = %req.service, endpoint = %req.endpoint, %address, "stream opened");
        tokio::spawn(drive_stream(tx, rx, ends, deadline));
        Ok(stream)
    }

    async fn publish(&self, topic: &str, msg: Message) -> Result<()> {
        crate::client::publish(&*self.opts.broker, topic, msg).await
    }

    fn name(&self) -> &str {
        "mucp"
    }
}

/// Moves a client stream's messages between its channels and the
/// connection until the server ends it, the caller drops it, or the
/// deadline passes; then drops the connection, which tells the server.
async fn drive_stream(
    mut tx: Box<dyn SocketSender>,
    mut rx: Box<dyn SocketReceiver>,
    ends: StreamEnds,
    deadline: Option<tokio::time::Instant>,
) {
    let dropped = ends.dropped_flag();
    let StreamEnds { incoming, mut outgoing, .. } = ends;
    let failure = {
        let writer = async {
            while let Some(body) = outgoing.recv().await {
                if let Err(e) = tx.send(Message::new(body)).await {
                    // Not an end of input: the caller learns why, and the
                    // connection is dropped without `eos`.
                    return e;
                }
            }
            // A dropped stream is a cancellation, which only closing the
            // connection (below) may tell the server, never an `eos`.
            if !dropped.get() {
                let _ = tx.send(Message::default().with_header(headers::STREAM, "eos")).await;
            }
            // The sending direction stays open: closing it would look like a cancellation.
            std::future::pending().await
        };
        let reader = async {
            loop {
                match rx.recv().await {
                    Ok(mut m) if m.get(headers::STREAM) == Some("eos") => {
                        return m.header.remove(headers::ERROR).map(|e| Error::parse(&e));
                    }
                    Ok(m) => {
                        if incoming.send(Ok(m.body)).await.is_err() {
                            return None;
                        }
                    }
                    Err(e) => return Some(Error::internal(ID, format!("stream broken: {}", e.detail))),
                }
            }
        };
        let expired = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            e = reader => e,
            e = writer => Some(e),
            _ = incoming.closed() => {
                tracing::debug!("stream cancelled by the caller");
                None
            }
            _ = expired => Some(Error::timeout(ID, "stream timed out")),
        }
    };
    // The caller's sends fail from here on; then it gets the error, if any.
    drop(outgoing);
    drop((tx, rx));
    if let Some(e) = failure {
        let _ = incoming.send(Err(e)).await;
    }
}

/// An idle connection and since when it is idle.
type Idle = (Box<dyn Socket>, Instant);

/// Idle connections per address, most recently used first out.
struct Pool {
    size: usize,
    ttl: Duration,
    idle: Mutex<HashMap<String, Vec<Idle>>>,
}

impl Pool {
    fn new(size: usize, ttl: Duration) -> Self {
        Pool { size, ttl, idle: Mutex::new(HashMap::new()) }
    }

    fn get(&self, address: &str) -> Option<Box<dyn Socket>> {
        let mut idle = lock(&self.idle);
        let list = idle.get_mut(address)?;
        while let Some((sock, since)) = list.pop() {
            if since.elapsed() < self.ttl {
                return Some(sock);
            }
        }
        None
    }

    fn put(&self, address: &str, sock: Box<dyn Socket>) {
        let mut idle = lock(&self.idle);
        let list = idle.entry(address.to_string()).or_default();
        if list.len() < self.size {
            list.push((sock, Instant::now()));
        }
    }

    /// After a connection error the other idle connections to that address are suspect too.
    fn clear(&self, address: &str) {
        lock(&self.idle).remove(address);
    }
}
