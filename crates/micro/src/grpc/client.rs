//! The `grpc` client: a tonic `Channel` (one multiplexed HTTP/2 connection)
//! per node, the same selector and retry policy as the `mucp` client.

use super::{from_status, put_metadata, wire_content_type, BytesCodec};
use crate::client::{with_retries, Attempt, Leases};
use crate::lock;
use crate::transport::Net;
use futures::StreamExt;
use micro_core::{
    async_trait, CallOptions, Client, ClientOptions, Error, Message, Request, Response, Result, Stream, StreamEnds,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

const ID: &str = "go.micro.client";

/// The gRPC client, selected with `--client grpc`. It dials on its own
/// (TLS with ALPN `h2` when `--transport-tls-ca` is set) and calls
/// `/<service>.<Handler>/<Method>` (see [`crate::grpc`]).
pub struct GrpcClient {
    opts: ClientOptions,
    /// Each node's connections, made once: calls that find a dial under
    /// way wait for it rather than dialling too.
    channels: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Channels>>>>,
    // address → content type → a ready-made client, cloned per call; looked
    // up without allocating, under a read lock.
    clients: std::sync::RwLock<HashMap<String, HashMap<String, Clients>>>,
    // service → endpoint → its HTTP/2 path, made once (a `format!` and a
    // parse per call otherwise); bounded, since names come from callers.
    paths: std::sync::RwLock<HashMap<String, HashMap<String, http::uri::PathAndQuery>>>,
    tls: Option<Arc<crate::transport::tls::TlsNet>>,
    /// HTTP/2 connections per node.
    connections: usize,
    /// Each thread's choice among the selector's candidates.
    leases: Leases,
}

/// The most paths [`GrpcClient::path`] keeps (it starts over beyond).
const PATHS_KEPT: usize = 1024;

impl GrpcClient {
    /// A client with these options.
    pub fn new(opts: ClientOptions) -> Result<Self> {
        let tls = if opts.tls.ca.is_some() {
            let net =
                crate::transport::tls::TlsNet::with_alpn(&opts.tls, Duration::from_secs(10), vec![b"h2".to_vec()])?;
            Some(Arc::new(net))
        } else {
            None
        };
        Ok(GrpcClient {
            opts,
            channels: Mutex::new(HashMap::new()),
            clients: Default::default(),
            paths: Default::default(),
            tls,
            connections: crate::client::connections_per_address(),
            leases: Leases::new(),
        })
    }

    /// Sets how many HTTP/2 connections it keeps to each node (at least
    /// one; default: `MICRO_CLIENT_CONNECTIONS`, else one per core up to 4).
    /// Fewer give a shorter tail under load, more let one client use more of
    /// a server's cores (BENCHMARKS.md measures both).
    pub fn with_connections(mut self, n: usize) -> Self {
        self.connections = n.max(1);
        self
    }

    /// A new channel to `address`, connected when returned (one connecting
    /// lazily would dial inside a call, with only the call's deadline over
    /// it); it reconnects by itself.
    async fn channel(&self, address: &str) -> Result<Channel> {
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| Error::bad_request(ID, format!("grpc address {address:?}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        let connected = |r: std::result::Result<Channel, tonic::transport::Error>| {
            r.map_err(|e| {
                let cause = std::error::Error::source(&e).map(|c| c.to_string()).unwrap_or_else(|| e.to_string());
                Error::internal(ID, format!("connection error: dial {address}: {cause}"))
            })
        };
        match &self.tls {
            // Our own connect, for the socket options of micro's tcp
            // transport: above all the 3 s TCP_USER_TIMEOUT, so that calls on
            // a connection to a host that went away fail over instead of
            // waiting out their deadlines (HTTP/2 pings would do it too, but
            // grpc-go servers answer frequent pings with GOAWAY).
            None => {
                let address = address.to_string();
                let connector = tower::service_fn(move |_: http::Uri| {
                    let address = address.clone();
                    async move {
                        let s = tokio::net::TcpStream::connect(&address).await?;
                        crate::transport::tune(&s)?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                    }
                });
                connected(endpoint.connect_with_connector(connector).await)
            }
            Some(tls) => {
                let (tls, address) = (tls.clone(), address.to_string());
                let connector = tower::service_fn(move |_: http::Uri| {
                    let (tls, address) = (tls.clone(), address.clone());
                    async move {
                        let c = tls.connect(&address).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(c.stream))
                    }
                });
                connected(endpoint.connect_with_connector(connector).await)
            }
        }
    }

    /// A node's channels, all connected now and at once.
    async fn dial(&self, address: &str) -> Result<Channels> {
        let dials = (0..self.connections).map(|_| self.channel(address));
        Ok(futures::future::try_join_all(dials).await?.into_iter().map(|c| (c, Load::default())).collect())
    }

    /// A tonic client to `address` that sends `content_type` instead of
    /// tonic's fixed `application/grpc`, with its connection's in-flight
    /// count taken. Each node gets one HTTP/2 connection per core, up to 4,
    /// or `MICRO_CLIENT_CONNECTIONS`, or what
    /// [`with_connections`](Self::with_connections) set (one connection is
    /// driven by one task, which under many concurrent calls becomes the
    /// bottleneck); a call takes the one with the fewest calls in flight, the
    /// first on a tie, so that a lone caller keeps to one warm connection and
    /// concurrent callers spread.
    ///
    /// A node's connections are made here, within `dial_limit`: dialling a
    /// host that went away without a word waits until the dial gives up,
    /// and an attempt that is not the last must leave time for another
    /// node, as mucp's do. After a connection error the node's connections
    /// are dropped ([`Self::forget`]), so the next call dials here again.
    /// Its errors are a bad request (400) or a connection error.
    async fn grpc(
        &self,
        address: &str,
        content_type: &str,
        dial_limit: Duration,
    ) -> Result<(tonic::client::Grpc<WithContentType>, InFlight)> {
        if let Some(list) =
            self.clients.read().unwrap_or_else(|p| p.into_inner()).get(address).and_then(|m| m.get(content_type))
        {
            return Ok(least_loaded(list));
        }
        let ct = http::HeaderValue::from_str(wire_content_type(content_type))
            .map_err(|_| Error::bad_request(ID, format!("content type {content_type:?} is not a valid header")))?;
        let cell = lock(&self.channels).entry(address.to_string()).or_default().clone();
        let dialled = match tokio::time::timeout(dial_limit, cell.get_or_try_init(|| self.dial(address))).await {
            Ok(Ok(list)) => Ok(list.clone()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(crate::client::connection_error(&crate::client::dial_timed_out(address, dial_limit))),
        };
        let list = match dialled {
            Ok(list) => list,
            Err(e) => {
                // No connection: leave no empty cell behind (unless another
                // call's dial has filled it, or replaced it, meanwhile).
                let mut channels = lock(&self.channels);
                if channels.get(address).is_some_and(|c| Arc::ptr_eq(c, &cell) && !c.initialized()) {
                    channels.remove(address);
                }
                return Err(e);
            }
        };
        let grpcs: Clients = list
            .into_iter()
            .map(|(c, load)| (tonic::client::Grpc::new(WithContentType { inner: c, content_type: ct.clone() }), load))
            .collect();
        let pick = least_loaded(&grpcs);
        self.clients
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(address.to_string())
            .or_default()
            .insert(content_type.to_string(), grpcs);
        Ok(pick)
    }

    /// The HTTP/2 path of `endpoint` of `service` (see [`path_of`]), cached.
    fn path(&self, service: &str, endpoint: &str) -> Result<http::uri::PathAndQuery> {
        let read = self.paths.read().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = read.get(service).and_then(|m| m.get(endpoint)) {
            return Ok(p.clone());
        }
        drop(read);
        let p = path_of(service, endpoint)?;
        let mut paths = self.paths.write().unwrap_or_else(|p| p.into_inner());
        if paths.values().map(HashMap::len).sum::<usize>() >= PATHS_KEPT {
            paths.clear();
        }
        paths.entry(service.to_string()).or_default().insert(endpoint.to_string(), p.clone());
        Ok(p)
    }

    /// Drops the connections to a node that failed, so that nodes which went
    /// away do not pile up; the next call to it (if any) connects afresh.
    fn forget(&self, address: &str) {
        self.clients.write().unwrap_or_else(|p| p.into_inner()).remove(address);
        lock(&self.channels).remove(address);
    }

    /// One attempt at `address`, with `timeout` for all of it and at most
    /// `dial_limit` of that for a first connection (see [`Self::grpc`]).
    async fn attempt(&self, address: &str, req: &Request, timeout: Duration, dial_limit: Duration) -> Attempt {
        let started = tokio::time::Instant::now();
        let (mut grpc, _in_flight) = match self.grpc(address, &req.content_type, dial_limit).await {
            Ok(g) => g,
            Err(e) if e.code == 400 => return Attempt::Done(Err(e)),
            Err(e) => return Attempt::Conn(e),
        };
        let mut request = tonic::Request::new(req.body.clone());
        if let Err(e) = put_metadata(request.metadata_mut(), &req.metadata) {
            return Attempt::Done(Err(e));
        }
        // What is left after the dial, as the server's deadline.
        request.set_timeout(timeout.saturating_sub(started.elapsed()));
        let path = match self.path(&req.service, &req.endpoint) {
            Ok(p) => p,
            Err(e) => return Attempt::Done(Err(e)),
        };
        if let Err(e) = grpc.ready().await {
            self.forget(address);
            return Attempt::Conn(Error::internal(ID, format!("connection error: {e}")));
        }
        // Boxed: tonic's call future is large, and inline it would make every
        // future around it (and the per-call allocation holding them) large too.
        match Box::pin(grpc.unary(request, path, BytesCodec)).await {
            Ok(resp) => {
                let metadata = super::metadata_of(resp.metadata());
                Attempt::Done(Ok(Response {
                    content_type: req.content_type.clone(),
                    body: resp.into_inner(),
                    metadata,
                }))
            }
            // tonic's own enforcement of the deadline we gave it.
            // tonic servers answer CANCELLED when our grpc-timeout passes on
            // their side, which can arrive just before our own timer fires.
            Err(s) if is_timeout(&s) || (s.code() == tonic::Code::Cancelled && started.elapsed() >= timeout) => {
                Attempt::Done(Err(Error::timeout(
                    ID,
                    format!("call {}.{} timed out after {timeout:?}", req.service, req.endpoint),
                )))
            }
            // A node that cannot be reached, or a connection that broke (say, the
            // server refused our certificate), is a status made here from an
            // I/O error, not one the server sent.
            Err(s) if is_connection_error(&s) => {
                self.forget(address);
                let cause = std::error::Error::source(&s).map(|c| c.to_string()).unwrap_or_default();
                Attempt::Conn(Error::internal(ID, format!("connection error: {} {cause}", s.message())))
            }
            Err(s) => Attempt::Done(Err(from_status(&s, ID))),
        }
    }
}

fn is_timeout(s: &tonic::Status) -> bool {
    let mut cause = std::error::Error::source(s);
    while let Some(c) = cause {
        if c.is::<tonic::TimeoutExpired>() {
            return true;
        }
        cause = c.source();
    }
    false
}

fn is_connection_error(s: &tonic::Status) -> bool {
    let local = std::error::Error::source(s).is_some() && Error::parse(s.message()).code == 0;
    local && matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown)
}

/// A node's HTTP/2 connections, each with its count of calls in flight.
type Channels = Vec<(Channel, Load)>;

/// One client per connection to a node, for one content type, with the
/// connection's count of calls in flight.
type Clients = Arc<[(tonic::client::Grpc<WithContentType>, Load)]>;

/// Calls in flight on one connection.
type Load = Arc<std::sync::atomic::AtomicUsize>;

/// A call counted on its connection until dropped.
struct InFlight(Load);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The client whose connection has the fewest calls in flight (the first on a tie).
fn least_loaded(
    list: &[(tonic::client::Grpc<WithContentType>, Load)],
) -> (tonic::client::Grpc<WithContentType>, InFlight) {
    let load = |l: &Load| l.load(std::sync::atomic::Ordering::Relaxed);
    let mut best = 0;
    for (i, (_, l)) in list.iter().enumerate().skip(1) {
        if load(l) < load(&list[best].1) {
            best = i;
        }
    }
    let (grpc, l) = &list[best];
    l.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (grpc.clone(), InFlight(l.clone()))
}

/// The channel, sending `content_type` instead of tonic's fixed `application/grpc`.
#[derive(Clone)]
struct WithContentType {
    inner: Channel,
    content_type: http::HeaderValue,
}

impl tower::Service<http::Request<tonic::body::Body>> for WithContentType {
    type Response = <Channel as tower::Service<http::Request<tonic::body::Body>>>::Response;
    type Error = <Channel as tower::Service<http::Request<tonic::body::Body>>>::Error;
    type Future = <Channel as tower::Service<http::Request<tonic::body::Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        req.headers_mut().insert(http::header::CONTENT_TYPE, self.content_type.clone());
        self.inner.call(req)
    }
}

/// `Greeter.Hello` of `greeter` → `/greeter.Greeter/Hello`; a full path is kept.
fn path_of(service: &str, endpoint: &str) -> Result<http::uri::PathAndQuery> {
    let path = if endpoint.starts_with('/') {
        endpoint.to_string()
    } else {
        match endpoint.split_once('.') {
            Some((h, m)) if !h.is_empty() && !m.is_empty() && !m.contains('.') => {
                if service.is_empty() {
                    format!("/{h}/{m}")
                } else {
                    format!("/{service}.{h}/{m}")
                }
            }
            _ => {
                return Err(Error::bad_request(ID, format!("endpoint {endpoint:?} is not of the form Handler.Method")))
            }
        }
    };
    path.parse().map_err(|e| Error::bad_request(ID, format!("grpc path {path:?}: {e}")))
}

#[async_trait]
impl Client for GrpcClient {
    async fn call(&self, req: Request, opts: CallOptions) -> Result<Response> {
        let timeout = opts.timeout.unwrap_or(self.opts.request_timeout);
        let deadline = tokio::time::Instant::now() + timeout;
        let retries = opts.retries.unwrap_or(self.opts.retries);
        // Each attempt carries the time left as its gRPC deadline, which
        // tonic enforces (one timer per call, not two).
        with_retries(&*self.opts.selector, &self.leases, "grpc", &req, &opts, retries, |node, last| {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let dial_limit = crate::client::dial_limit(left, last);
            let req = &req;
            // Boxed: inline, the attempt (tonic's ready future, the request, a
            // timer) would make the call's own box 1,600 bytes, past glibc's
            // per-thread cache (1,032); as two boxes both stay in it.
            Box::pin(async move {
                let expired =
                    || Error::timeout(ID, format!("call {}.{} timed out after {timeout:?}", req.service, req.endpoint));
                if left.is_zero() {
                    return Attempt::Done(Err(expired()));
                }
                // tonic's own deadline covers the wait for the response's
                // headers; this one covers a body that stalls after them.
                match tokio::time::timeout_at(deadline, self.attempt(&node.address, req, left, dial_limit)).await {
                    Ok(a) => a,
                    Err(_) => Attempt::Done(Err(expired())),
                }
            })
        })
        .await
        .map_err(|e| {
            if e.code == 408 && e.id == ID {
                Error::timeout(ID, format!("call {}.{} timed out after {timeout:?}", req.service, req.endpoint))
            } else {
                e
            }
        })
    }

    async fn stream(&self, req: Request, opts: CallOptions) -> Result<Stream> {
        let address = match &opts.address {
            Some(a) => a.clone(),
            None => {
                let sel = micro_core::SelectOptions { protocol: Some("grpc".into()), ..Default::default() };
                self.opts.selector.select(&req.service, sel).await?.address
            }
        };
        let dial_limit = opts.timeout.unwrap_or(self.opts.request_timeout);
        let (mut grpc, _in_flight) = self.grpc(&address, &req.content_type, dial_limit).await?;
        let path = path_of(&req.service, &req.endpoint)?;
        let (stream, ends) = Stream::pair();
        let dropped = ends.dropped_flag();
        let StreamEnds { incoming, outgoing, .. } = ends;
        let first = (!req.body.is_empty()).then(|| req.body.clone());
        // The request ends (END_STREAM) on close_send only; a dropped stream
        // never ends it, so the call is reset instead (a cancellation).
        let rest = futures::stream::unfold((outgoing, dropped), |(mut out, dropped)| async move {
            match out.recv().await {
                Some(b) => Some((b, (out, dropped))),
                None if dropped.get() => std::future::pending().await,
                None => None,
            }
        });
        let messages = futures::stream::iter(first).chain(rest);
        let mut request = tonic::Request::new(messages);
        // Resets the HTTP/2 stream (RST_STREAM) unless the request ended cleanly.
        let cancel = request.cancellation_handle();
        put_metadata(request.metadata_mut(), &req.metadata)?;
        if let Some(t) = opts.timeout {
            request.set_timeout(t);
        }
        grpc.ready().await.map_err(|e| Error::internal(ID, format!("connection error: {e}")))?;
        let deadline = opts.timeout.map(|t| tokio::time::Instant::now() + t);
        // The response headers come when the server starts answering, which
        // for a client stream may be after its last message: open in the background.
        tokio::spawn(async move {
            // A stream counts on its connection for as long as it runs.
            let _in_flight = _in_flight;
            let watch = incoming.clone();
            let run = async {
                let mut inbound = match grpc.streaming(request, path, BytesCodec).await {
                    Ok(r) => r.into_inner(),
                    Err(s) => {
                        let _ = incoming.send(Err(from_status(&s, ID))).await;
                        return;
                    }
                };
                loop {
                    match inbound.message().await {
                        Ok(Some(b)) => {
                            if incoming.send(Ok(b)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => return,
                        Err(s) => {
                            let _ = incoming.send(Err(from_status(&s, ID))).await;
                            return;
                        }
                    }
                }
            };
            let expired = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            // Returning drops the call, which resets the HTTP/2 stream: the server sees the cancellation.
            tokio::select! {
                _ = run => {}
                _ = watch.closed() => {
                    tracing::debug!("grpc stream cancelled by the caller");
                    cancel.cancel();
                }
                _ = expired => {
                    cancel.cancel();
                    let _ = watch.send(Err(Error::timeout(ID, "stream timed out"))).await;
                }
            }
        });
        Ok(stream)
    }

    async fn publish(&self, topic: &str, msg: Message) -> Result<()> {
        crate::client::publish(&*self.opts.broker, topic, msg).await
    }

    fn name(&self) -> &str {
        "grpc"
    }
}

#[cfg(test)]
mod tests {
    use super::path_of;

    #[test]
    fn the_package_is_the_service_name() {
        let p = |s, e| path_of(s, e).map(|p| p.to_string()).unwrap_or_else(|e| e.detail);
        assert_eq!(p("greeter", "Greeter.Hello"), "/greeter.Greeter/Hello");
        assert_eq!(p("", "Greeter.Hello"), "/Greeter/Hello");
        assert_eq!(p("x", "/helloworld.Greeter/SayHello"), "/helloworld.Greeter/SayHello");
        assert!(p("x", "Hello").contains("not of the form"));
    }

    #[test]
    fn a_calls_future_stays_in_the_allocators_thread_cache() {
        // `async_trait` boxes it on every call; above 1,032 bytes glibc's
        // malloc skips its per-thread cache (it was 1,600 bytes).
        use std::sync::Arc;
        let registry: Arc<dyn micro_core::Registry> = Arc::new(crate::registry::MemoryRegistry::new());
        let selector = crate::selector::CacheSelector::new(
            micro_core::SelectorOptions { registry, cache_ttl: std::time::Duration::from_secs(1) },
            crate::selector::Strategy::Random,
        );
        let client = super::GrpcClient::new(micro_core::ClientOptions {
            selector: Arc::new(selector),
            transport: Arc::new(crate::transport::TcpTransport::new(Default::default())),
            broker: Arc::new(crate::broker::MemoryBroker::new()),
            retries: 1,
            request_timeout: std::time::Duration::from_secs(1),
            pool_size: 1,
            pool_ttl: std::time::Duration::from_secs(1),
            tls: Default::default(),
        });
        let Ok(client) = client else { panic!("a client without TLS") };
        let f = micro_core::Client::call(&client, Default::default(), Default::default());
        let size = std::mem::size_of_val(&*f);
        assert!(size <= 1024, "a grpc call's future is {size} bytes");
    }
}
