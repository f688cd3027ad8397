//! The `grpc` server: one HTTP/2 connection per client (hyper), gRPC
//! framing and status by tonic's `Grpc` helpers over pass-through bytes,
//! and every path routed to micro's handlers by name.

use super::{metadata_of, parse_timeout, to_status, BytesCodec};
use crate::lock;
use crate::server::{invoke, unsubscribe_all, Endpoints};
use crate::transport::{Net, TokioNet};
use bytes::Bytes;
use futures::stream::BoxStream;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use micro_core::{
    async_trait, Error, Handler, HandlerFn, Request, Result, Server, ServerOptions, Service, StreamHandlerFn,
    Subscriber, Subscription,
};
use std::collections::HashMap;
use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::Status;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;
use tower::ServiceExt;

const ID: &str = "go.micro.server";

/// The gRPC server, selected with `--server grpc`. It listens on its own
/// (plain TCP, or TLS with ALPN `h2` when `--transport-tls-*` are set),
/// serves handlers at their gRPC paths (see [`crate::grpc`]) and the
/// standard health service `grpc.health.v1.Health`.
pub struct GrpcServer {
    opts: ServerOptions,
    endpoints: Endpoints,
    running: Mutex<Option<Running>>,
    address: Mutex<Option<String>>,
}

struct Running {
    stop_accepting: CancellationToken,
    hard_stop: CancellationToken,
    accept: tokio::task::JoinHandle<GracefulShutdown>,
    subs: Vec<Box<dyn Subscription>>,
    health: HealthReporter,
}

impl GrpcServer {
    /// A server with these options.
    pub fn new(opts: ServerOptions) -> Self {
        GrpcServer { opts, endpoints: Endpoints::default(), running: Mutex::new(None), address: Mutex::new(None) }
    }
}

#[async_trait]
impl Server for GrpcServer {
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
        let (health, health_server) = {
            let reporter = HealthReporter::new();
            (reporter.clone(), HealthServer::new(HealthService::from_health_reporter(reporter)))
        };
        // "" is the whole server, as grpc_health_probe asks by default.
        for name in ["", self.opts.name.as_str()] {
            health.set_service_status(name, ServingStatus::Serving).await;
        }
        let router = Arc::new(Router {
            handlers: self.endpoints.handlers(),
            service: self.opts.name.clone(),
            in_flight: Arc::new(Semaphore::new(self.opts.limits.max_in_flight.max(1))),
            health: health_server,
            body_deadline: self.opts.limits.first_message_timeout,
        });
        let stop_accepting = CancellationToken::new();
        let hard_stop = CancellationToken::new();
        let conns = Arc::new(Semaphore::new(self.opts.limits.max_connections.max(1)));
        let (accept, address) = if self.opts.tls.enabled() {
            // The handshake is part of a connection's first message: it
            // must be done within the first-message timeout.
            let net = crate::transport::tls::TlsNet::with_alpn(
                &self.opts.tls,
                self.opts.limits.first_message_timeout,
                vec![b"h2".to_vec()],
            )?;
            listen(net, &self.opts.address, router, conns, self.opts.limits, stop_accepting.clone(), hard_stop.clone())
                .await?
        } else {
            let (l, s, h) = (self.opts.limits, stop_accepting.clone(), hard_stop.clone());
            listen(TokioNet, &self.opts.address, router, conns, l, s, h).await?
        };

        let subs = match self.endpoints.subscribe_all(&*self.opts.broker).await {
            Ok(subs) => subs,
            Err(e) => {
                stop_accepting.cancel();
                hard_stop.cancel();
                return Err(e);
            }
        };
        tracing::info!(
            service = %self.opts.name,
            %address,
            tls = self.opts.tls.enabled(),
            workers = crate::runtime_workers(),
            "grpc server listening"
        );
        *lock(&self.address) = Some(address);
        *lock(&self.running) = Some(Running { stop_accepting, hard_stop, accept, subs, health });
        Ok(())
    }

    async fn stop(&self) -> Result<()> {
        let Some(running) = lock(&self.running).take() else { return Ok(()) };
        for name in ["", self.opts.name.as_str()] {
            running.health.set_service_status(name, ServingStatus::NotServing).await;
        }
        unsubscribe_all(&running.subs).await;
        running.stop_accepting.cancel();
        // GOAWAY to every connection; calls under way finish, up to the drain timeout.
        if let Ok(graceful) = running.accept.await {
            if tokio::time::timeout(self.opts.drain_timeout, graceful.shutdown()).await.is_err() {
                tracing::warn!("drain timeout: abandoning in-flight calls and streams");
            }
        }
        running.hard_stop.cancel();
        Ok(())
    }

    fn service(&self) -> Service {
        let address = lock(&self.address).clone().unwrap_or_default();
        // go-micro's grpc server advertises these.
        self.endpoints.record(&self.opts, address, &[("protocol", "grpc"), ("server", "grpc"), ("transport", "grpc")])
    }

    fn name(&self) -> &str {
        "grpc"
    }
}

/// Binds and spawns the accept loop, which hands each connection to hyper's
/// HTTP/2 server; the loop returns its graceful-shutdown handle when told to
/// stop accepting.
async fn listen<N: Net>(
    net: N,
    address: &str,
    router: Arc<Router>,
    conns: Arc<Semaphore>,
    limits: micro_core::ServerLimits,
    stop_accepting: CancellationToken,
    hard_stop: CancellationToken,
) -> Result<(tokio::task::JoinHandle<GracefulShutdown>, String)> {
    let (listener, bound) =
        net.bind(address).await.map_err(|e| Error::internal(ID, format!("grpc listen on {address}: {e}")))?;
    let task = tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        loop {
            let conn = tokio::select! {
                _ = stop_accepting.cancelled() => return graceful,
                c = net.accept(&listener) => c,
            };
            let conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "grpc accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = conns.clone().try_acquire_owned() else {
                tracing::warn!(peer = %conn.peer, "connection limit reached; closing");
                continue;
            };
            let router = router.clone();
            let activity = Arc::new(Activity::default());
            let act = activity.clone();
            let svc = hyper::service::service_fn(move |req| {
                let router = router.clone();
                // Counted from the request's arrival until its response body
                // ends: a connection with a stream open is never idle.
                let open = act.open();
                async move {
                    Ok::<_, Infallible>(router.route(req).await.map(|b| Body::new(Counted { body: b, _open: open })))
                }
            });
            // Pings find peers that vanished without closing (their
            // connections and streams would otherwise be held forever).
            let http = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(hyper_util::rt::TokioTimer::new())
                // gRPC has no use for HTTP's `date`; without it a response
                // is smaller and the client parses no header it will drop.
                .auto_date_header(false)
                .keep_alive_interval(Some(Duration::from_secs(60)))
                .keep_alive_timeout(Duration::from_secs(20))
                .max_concurrent_streams(u32::try_from(limits.max_in_flight_per_connection.max(1)).unwrap_or(u32::MAX))
                .serve_connection(TokioIo::new(conn.stream), svc);
            let watched = graceful.watch(http);
            let hard_stop = hard_stop.clone();
            let peer = conn.peer;
            tokio::spawn(async move {
                tokio::pin!(watched);
                // A connection that sends no request within the first-message
                // timeout (a socket that never sends the HTTP/2 preface), or
                // that has no stream open for the idle timeout, is closed: it
                // would otherwise hold a connection slot for ever.
                let mut limit = limits.first_message_timeout;
                loop {
                    // With a stream open there is nothing to check before
                    // another `limit` has passed (no busy loop while a long
                    // stream runs); otherwise, when it will have been quiet.
                    let quiet_until =
                        if activity.busy() { tokio::time::Instant::now() + limit } else { activity.quiet_until(limit) };
                    tokio::select! {
                        r = &mut watched => {
                            if let Err(e) = r {
                                tracing::debug!(%peer, error = %e, "grpc connection ended");
                            }
                            break;
                        }
                        _ = hard_stop.cancelled() => break,
                        _ = tokio::time::sleep_until(quiet_until) => {
                            if activity.seen() {
                                limit = limits.idle_timeout;
                            }
                            if activity.idle_for(limit) {
                                tracing::debug!(%peer, ?limit, first = !activity.seen(), "closing a grpc connection with no stream");
                                break;
                            }
                        }
                    }
                }
                drop(permit);
            });
        }
    });
    Ok((task, bound))
}

/// Routes requests: the health service by its path, everything else to the
/// handler named by the path.
struct Router {
    handlers: HashMap<String, Handler>,
    service: String,
    in_flight: Arc<Semaphore>,
    health: HealthServer<HealthService>,
    /// How long a unary request's body may take to arrive.
    body_deadline: Duration,
}

/// The streams of one connection: how many are open, and when the last one
/// opened or ended. Atomics only: every request of a connection touches it.
struct Activity {
    start: tokio::time::Instant,
    open: AtomicUsize,
    /// Milliseconds from `start` to the last stream opening or ending, plus
    /// one; 0 until the first request arrives.
    last: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity { start: tokio::time::Instant::now(), open: AtomicUsize::new(0), last: AtomicU64::new(0) }
    }
}

/// One open stream of a connection; dropped when its response body ends.
struct Open(Arc<Activity>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.touch();
    }
}

impl Activity {
    fn open(self: &Arc<Self>) -> Open {
        self.open.fetch_add(1, Ordering::AcqRel);
        self.touch();
        Open(self.clone())
    }
    fn touch(&self) {
        self.last.store(self.start.elapsed().as_millis() as u64 + 1, Ordering::Release);
    }
    fn busy(&self) -> bool {
        self.open.load(Ordering::Acquire) > 0
    }
    /// Whether any request arrived yet.
    fn seen(&self) -> bool {
        self.last.load(Ordering::Acquire) > 0
    }
    fn last(&self) -> tokio::time::Instant {
        self.start + Duration::from_millis(self.last.load(Ordering::Acquire).saturating_sub(1))
    }
    /// When the connection will have been quiet for `limit`, as things are now.
    fn quiet_until(&self, limit: Duration) -> tokio::time::Instant {
        self.last() + limit
    }
    /// No stream open, and none opened or ended for `limit`.
    fn idle_for(&self, limit: Duration) -> bool {
        !self.busy() && self.last().elapsed() >= limit
    }
}

/// A response body that keeps its stream counted as open until it ends.
struct Counted {
    body: Body,
    _open: Open,
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = Status;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<hyper::body::Frame<Bytes>, Status>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// A unary request's body, which must arrive whole by a deadline: a peer
/// that sends the headers and then dribbles or withholds the body is cut off.
struct Deadlined {
    body: Incoming,
    /// When the body must be complete.
    until: tokio::time::Instant,
    /// Its timer, made (and registered) only once the body has kept us
    /// waiting: a unary request's body nearly always comes with its headers,
    /// and then the call costs no timer and no allocation for it.
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    limit: Duration,
}

impl hyper::body::Body for Deadlined {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        match std::pin::Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(r) => Poll::Ready(r.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                let until = self.until;
                let timer = self.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
                match std::future::Future::poll(timer.as_mut(), cx) {
                    Poll::Ready(()) => {
                        let limit = self.limit;
                        Poll::Ready(Some(Err(format!("the request body did not arrive within {limit:?}").into())))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// `/pkg.Greeter/Hello` (or `/Greeter/Hello`) → `Greeter.Hello`.
fn endpoint_of(path: &str) -> Option<String> {
    let (svc, method) = path.strip_prefix('/')?.split_once('/')?;
    let handler = svc.rsplit('.').next()?;
    if handler.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    Some(format!("{handler}.{method}"))
}

fn status_response(s: Status) -> http::Response<Body> {
    s.into_http()
}

impl Router {
    async fn route(&self, req: http::Request<Incoming>) -> http::Response<Body> {
        let path = req.uri().path();
        if path.starts_with("/grpc.health.v1.Health/") {
            return match self.health.clone().oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
        }
        let Some(endpoint) = endpoint_of(path) else {
            return status_response(Status::unimplemented(format!("no gRPC method at {path}")));
        };
        let Some(handler) = self.handlers.get(&endpoint) else {
            let e = Error::not_found(ID, format!("unknown endpoint {endpoint} of service {}", self.service));
            return status_response(Status::new(tonic::Code::Unimplemented, e.to_json()));
        };
        let content_type = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/grpc")
            .to_string();
        if !content_type.starts_with("application/grpc") {
            return status_response(Status::invalid_argument(format!("content type {content_type:?} is not gRPC")));
        }
        let timeout = req.headers().get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_timeout);
        let call = Call {
            service: self.service.clone(),
            endpoint,
            content_type: content_type.clone(),
            timeout,
            in_flight: self.in_flight.clone(),
        };
        let mut grpc = tonic::server::Grpc::new(BytesCodec);
        let mut resp = match &handler.stream {
            None => {
                let limit = self.body_deadline;
                let until = tokio::time::Instant::now() + limit;
                let req = req.map(|body| Deadlined { body, until, deadline: None, limit });
                grpc.unary(Unary { call, func: handler.func.clone() }, req).await
            }
            Some(func) => grpc.streaming(Streaming { call, func: func.clone() }, req).await,
        };
        // Answer in the caller's encoding (tonic writes plain application/grpc).
        if let Ok(v) = http::HeaderValue::from_str(&content_type) {
            resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
        }
        resp
    }
}

/// What both kinds of call know from the request line and headers.
#[derive(Clone)]
struct Call {
    service: String,
    endpoint: String,
    content_type: String,
    timeout: Option<Duration>,
    in_flight: Arc<Semaphore>,
}

impl Call {
    /// A slot among the calls in flight, taken once the request has arrived
    /// (a peer that never sends its body holds none); over the limit the
    /// call is answered UNAVAILABLE at once instead of queueing.
    fn permit(&self) -> std::result::Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| to_status(&Error::unavailable(ID, "server busy: too many requests in flight")))
    }

    fn request(&self, metadata: &tonic::metadata::MetadataMap, body: Bytes) -> Request {
        Request {
            service: self.service.clone(),
            endpoint: self.endpoint.clone(),
            content_type: self.content_type.clone(),
            body,
            metadata: metadata_of(metadata),
        }
    }
}

struct Unary {
    call: Call,
    func: HandlerFn,
}

impl tonic::server::UnaryService<Bytes> for Unary {
    type Response = Bytes;
    type Future = micro_core::BoxFuture<'static, std::result::Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let req = self.call.request(request.metadata(), request.get_ref().clone());
        let (func, call) = (self.func.clone(), self.call.clone());
        Box::pin(async move {
            let _permit = call.permit()?;
            match invoke(&func, req, call.timeout, &call.service, &call.endpoint).await {
                Ok(r) => {
                    let mut resp = tonic::Response::new(r.body);
                    // Response metadata that cannot travel as gRPC metadata is dropped.
                    let _ = super::put_metadata(resp.metadata_mut(), &r.metadata);
                    Ok(resp)
                }
                Err(e) => {
                    if e.code >= 500 {
                        tracing::warn!(endpoint = %call.endpoint, error = %e, "request failed");
                    }
                    Err(to_status(&e))
                }
            }
        })
    }
}

struct Streaming {
    call: Call,
    func: StreamHandlerFn,
}

/// Aborts the handler and the reader of the caller's messages when the
/// response stream is dropped: hyper drops it when the caller cancels.
struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

impl tonic::server::StreamingService<Bytes> for Streaming {
    type Response = Bytes;
    type ResponseStream = BoxStream<'static, std::result::Result<Bytes, Status>>;
    type Future = micro_core::BoxFuture<'static, std::result::Result<tonic::Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: tonic::Request<tonic::Streaming<Bytes>>) -> Self::Future {
        let req = self.call.request(request.metadata(), Bytes::new());
        let mut inbound = request.into_inner();
        let (func, call) = (self.func.clone(), self.call.clone());
        Box::pin(async move {
            // A stream holds its slot for its whole life.
            let permit = call.permit()?;
            let (stream, ends) = micro_core::Stream::pair();
            let micro_core::StreamEnds { incoming, outgoing, .. } = ends;
            let handler = match std::panic::catch_unwind(AssertUnwindSafe(|| func(req, stream))) {
                Ok(fut) => tokio::spawn(fut),
                Err(_) => {
                    let e = Error::internal(&*call.service, format!("handler {} panicked", call.endpoint));
                    return Err(to_status(&e));
                }
            };
            let reader = tokio::spawn(async move {
                loop {
                    match inbound.message().await {
                        // A handler that stopped receiving still gets to send: drain.
                        Ok(Some(b)) => {
                            let _ = incoming.send(Ok(b)).await;
                        }
                        Ok(None) => return,
                        Err(s) => {
                            let _ = incoming.send(Err(super::from_status(&s, ID))).await;
                            return;
                        }
                    }
                }
            });
            let guard = AbortOnDrop(vec![handler.abort_handle(), reader.abort_handle()]);
            let deadline = call.timeout.map(|t| tokio::time::Instant::now() + t);
            let state = Some((outgoing, handler, guard, permit));
            let out = futures::stream::unfold(state, move |state| {
                let call = call.clone();
                async move {
                    let (mut outgoing, mut handler, guard, permit) = state?;
                    let next = async {
                        match outgoing.recv().await {
                            Some(b) => Ok(b),
                            // The handler dropped its stream: its result ends ours.
                            None => Err(match (&mut handler).await {
                                Ok(Ok(())) => None,
                                Ok(Err(e)) => Some(to_status(&e)),
                                Err(_) => Some(to_status(&Error::internal(
                                    &*call.service,
                                    format!("handler {} panicked", call.endpoint),
                                ))),
                            }),
                        }
                    };
                    let next = match deadline {
                        Some(d) => tokio::time::timeout_at(d, next).await.unwrap_or_else(|_| {
                            let e = Error::timeout(
                                ID,
                                format!("{} exceeded the caller's timeout of {:?}", call.endpoint, call.timeout),
                            );
                            Err(Some(to_status(&e)))
                        }),
                        None => next.await,
                    };
                    match next {
                        Ok(b) => Some((Ok(b), Some((outgoing, handler, guard, permit)))),
                        Err(Some(status)) => Some((Err(status), None)),
                        Err(None) => None,
                    }
                }
            });
            Ok(tonic::Response::new(Box::pin(out) as Self::ResponseStream))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::endpoint_of;

    #[test]
    fn paths_map_to_endpoints_whatever_the_package() {
        assert_eq!(endpoint_of("/greeter.Greeter/Hello").as_deref(), Some("Greeter.Hello"));
        assert_eq!(endpoint_of("/go.micro.srv.greeter.Greeter/Hello").as_deref(), Some("Greeter.Hello"));
        assert_eq!(endpoint_of("/Greeter/Hello").as_deref(), Some("Greeter.Hello"));
        assert_eq!(endpoint_of("/Greeter"), None);
        assert_eq!(endpoint_of("/Greeter/Hello/x"), None);
        assert_eq!(endpoint_of("/pkg./Hello"), None);
    }
}
