//! go-micro's default broker, `http`: every subscriber is an HTTP endpoint
//! found through the registry, and publishing POSTs the message to it.
//!
//! The layout is go-micro's, so both can share a registry: a subscription
//! registers a node of service `micro.http.broker` whose version is its
//! queue group (or `ff.http.broadcast` without one), with id
//! `<topic>-<broker id>` and metadata `broker=http`, `topic=<topic>`.
//! `publish` sends `POST http://<node>/?id=<node id>` with the JSON
//! `{"Header": {…}, "Body": "<base64>"}` (go-micro's `broker.Message`) to
//! every broadcast subscriber of the topic and to one member of each queue
//! group. Delivery is at-most-once: a failed POST is not retried, and
//! `publish` returns an error naming every subscriber that did not take the
//! message (refused, unreachable, or no answer within the delivery
//! deadline). The subscribers' server reads headers and bodies against
//! deadlines and caps its connections, so a peer that connects and stalls
//! holds nothing for long.
//!
//! With the transport's TLS settings (`--transport-tls-*`), subscribers
//! listen on TLS (their nodes say `secure=true`, as go-micro's do) and
//! publishers deliver to secure nodes over TLS, verifying them against the
//! CA; with a CA on the subscriber's side, only publishers holding a
//! certificate from that CA can deliver (mutual TLS).

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use micro_core::{
    async_trait, headers, Broker, BrokerHandler, BrokerOptions, Error, Message, Node, RegisterOptions, Registry,
    Result, Service, SubscribeOptions, Subscription,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const ID: &str = "go.micro.broker";
/// The registry service of HTTP broker subscribers, as go-micro names it.
pub const SERVICE: &str = "micro.http.broker";
/// The version of subscribers without a queue group.
pub const BROADCAST: &str = "ff.http.broadcast";
const MAX_BODY: usize = 4 * 1024 * 1024;
const TTL: Duration = Duration::from_secs(60);
const INTERVAL: Duration = Duration::from_secs(30);
/// How long a subscriber may take to answer a delivery (its handler runs
/// before it answers), by default.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a publisher may take to send a delivery's headers, and its body.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Open connections the subscribers' server accepts; more are closed.
const MAX_CONNECTIONS: usize = 1024;

/// go-micro's `broker.Message` in JSON.
#[derive(Serialize, Deserialize)]
struct WireMessage {
    #[serde(rename = "Header", default)]
    header: HashMap<String, String>,
    #[serde(rename = "Body", default, with = "b64")]
    body: Vec<u8>,
}

mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};
    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = Option::<String>::deserialize(d)?.unwrap_or_default();
        base64::engine::general_purpose::STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

struct Sub {
    topic: String,
    handler: BrokerHandler,
    record: Service,
}

struct Inner {
    listen: String,
    /// What to register instead of the listener's own address.
    advertise: Option<String>,
    registry: Arc<dyn Registry>,
    subs: Mutex<HashMap<String, Sub>>,
    server: tokio::sync::Mutex<Option<(String, CancellationToken)>>,
    /// The server's connections: `disconnect` waits for the deliveries in
    /// flight on them to be answered.
    connections: tokio_util::task::TaskTracker,
    client: hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    delivery_timeout: Duration,
    /// TLS for listening (with a certificate) and for delivering to secure nodes (with a CA).
    tls: Option<Arc<crate::transport::tls::TlsNet>>,
    /// Whether subscribers listen on TLS.
    secure: bool,
}

/// The HTTP broker.
pub struct HttpBroker {
    inner: Arc<Inner>,
}

impl HttpBroker {
    /// A broker that finds subscribers through `opts.registry` and listens
    /// on `opts.addresses[0]` (default: [`crate::addr::default_listen`] of the registry).
    pub fn new(opts: BrokerOptions) -> Result<Self> {
        let registry = opts.registry.ok_or_else(|| Error::internal(ID, "the http broker needs a registry"))?;
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build_http();
        let tls = if opts.tls.enabled() {
            Some(Arc::new(crate::transport::tls::TlsNet::new(&opts.tls, READ_TIMEOUT)?))
        } else {
            None
        };
        let secure = opts.tls.cert.is_some() && opts.tls.key.is_some();
        Ok(HttpBroker {
            inner: Arc::new(Inner {
                advertise: opts.advertise.clone(),
                listen: opts
                    .addresses
                    .first()
                    .cloned()
                    .unwrap_or_else(|| crate::addr::default_listen(registry.name()).to_string()),
                registry,
                subs: Mutex::new(HashMap::new()),
                server: tokio::sync::Mutex::new(None),
                connections: tokio_util::task::TaskTracker::new(),
                client,
                delivery_timeout: DELIVERY_TIMEOUT,
                tls,
                secure,
            }),
        })
    }

    /// The same broker with another delivery deadline (default [`DELIVERY_TIMEOUT`]).
    pub fn with_delivery_timeout(opts: BrokerOptions, timeout: Duration) -> Result<Self> {
        let mut b = Self::new(opts)?;
        if let Some(inner) = Arc::get_mut(&mut b.inner) {
            inner.delivery_timeout = timeout;
        }
        Ok(b)
    }
}

impl Inner {
    /// Starts the HTTP server on first use; returns its address.
    async fn serve(self: &Arc<Self>) -> Result<String> {
        let mut server = self.server.lock().await;
        if let Some((addr, _)) = &*server {
            return Ok(addr.clone());
        }
        let cancel = CancellationToken::new();
        self.connections.reopen();
        let addr = match (&self.tls, self.secure) {
            (Some(net), true) => self.accept_loop(net.clone(), cancel.clone()).await?,
            _ => self.accept_loop(Arc::new(crate::transport::TokioNet), cancel.clone()).await?,
        };
        self.keep_registered(&cancel);
        *server = Some((addr.clone(), cancel));
        Ok(addr)
    }

    /// Listens (plain TCP or TLS, as `net` is) and serves each connection's
    /// deliveries; returns the bound address.
    async fn accept_loop<N: crate::transport::Net>(
        self: &Arc<Self>,
        net: Arc<N>,
        stop: CancellationToken,
    ) -> Result<String> {
        let (listener, addr) = net
            .bind(&self.listen)
            .await
            .map_err(|e| Error::internal(ID, format!("http broker: listen on {}: {e}", self.listen)))?;
        let weak = Arc::downgrade(self);
        let connections = self.connections.clone();
        let conns = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    _ = stop.cancelled() => return,
                    a = net.accept(&listener) => match a {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(error = %e, "http broker: accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let Ok(permit) = conns.clone().try_acquire_owned() else {
                    tracing::warn!("http broker: connection limit reached; closing");
                    continue;
                };
                let (weak, stop) = (weak.clone(), stop.clone());
                connections.spawn(async move {
                    let _permit = permit;
                    let svc = hyper::service::service_fn(move |req| {
                        let weak = weak.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(match weak.upgrade() {
                                Some(inner) => inner.deliver(req).await,
                                None => status(StatusCode::SERVICE_UNAVAILABLE, "broker stopped"),
                            })
                        }
                    });
                    // Headers must arrive within the read timeout (hyper's
                    // timer); a connection idle between deliveries is closed.
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(READ_TIMEOUT)
                        .serve_connection(TokioIo::new(conn.stream), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        // Disconnecting: a delivery in flight is answered,
                        // then the connection closes (an idle one at once).
                        _ = stop.cancelled() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
        });
        Ok(addr)
    }

    /// Registers the subscriptions again before their TTL runs out.
    fn keep_registered(self: &Arc<Self>, cancel: &CancellationToken) {
        let (stop, weak) = (cancel.clone(), Arc::downgrade(self));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(INTERVAL) => {}
                }
                let Some(inner) = weak.upgrade() else { return };
                let records: Vec<Service> =
                    inner.subs.lock().unwrap_or_else(|p| p.into_inner()).values().map(|s| s.record.clone()).collect();
                for r in records {
                    if let Err(e) = inner.registry.register(&r, RegisterOptions { ttl: TTL }).await {
                        tracing::warn!(error = %e, "http broker: re-registration failed");
                    }
                }
            }
        });
    }

    /// Delivers one message to a node over TLS (a `secure` node): one
    /// connection per delivery, verified against the CA.
    async fn deliver_tls(&self, node: &Node, uri: &str, body: Bytes) -> std::result::Result<StatusCode, String> {
        use crate::transport::Net;
        let net = self.tls.as_ref().ok_or("the subscriber listens on TLS: set --transport-tls-ca to deliver to it")?;
        let conn = net.connect(&node.address).await.map_err(|e| format!("tls connect: {e}"))?;
        let (mut send, driver) =
            hyper::client::conn::http1::handshake(TokioIo::new(conn.stream)).await.map_err(|e| e.to_string())?;
        let driver = tokio::spawn(driver);
        let req = Request::post(uri)
            .header("Content-Type", "application/json")
            .header("Host", node.address.as_str())
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let res = send.send_request(req).await.map_err(|e| e.to_string());
        driver.abort();
        res.map(|r| r.status())
    }

    /// Serves one POST: hands the message to the subscriber named by `?id=`.
    async fn deliver(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != hyper::Method::POST {
            return status(StatusCode::METHOD_NOT_ALLOWED, "POST only");
        }
        let id = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("id=")))
            .map(|s| s.replace("%2F", "/").replace("%3A", ":"))
            .unwrap_or_default();
        let body = match tokio::time::timeout(READ_TIMEOUT, Limited::new(req.into_body(), MAX_BODY).collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) => return status(StatusCode::PAYLOAD_TOO_LARGE, &format!("reading message: {e}")),
            Err(_) => return status(StatusCode::REQUEST_TIMEOUT, "the message did not arrive in time"),
        };
        let msg: WireMessage = match serde_json::from_slice(&body) {
            Ok(m) => m,
            Err(e) => return status(StatusCode::BAD_REQUEST, &format!("bad message: {e}")),
        };
        let Some(topic) = msg.header.get(headers::TOPIC).cloned() else {
            return status(StatusCode::BAD_REQUEST, "message has no Micro-Topic header");
        };
        let handler = {
            let subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
            subs.get(&id).filter(|s| s.topic == topic).map(|s| s.handler.clone())
        };
        let Some(handler) = handler else {
            return status(StatusCode::NOT_FOUND, &format!("no subscriber {id} for topic {topic}"));
        };
        match handler(&topic, Message { header: msg.header, body: msg.body.into() }).await {
            Ok(()) => status(StatusCode::OK, ""),
            Err(e) => {
                tracing::warn!(%topic, error = %e, "subscriber failed");
                status(StatusCode::INTERNAL_SERVER_ERROR, &e.to_json())
            }
        }
    }
}

fn status(code: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text.to_string())));
    *r.status_mut() = code;
    r
}

#[async_trait]
impl Broker for HttpBroker {
    async fn connect(&self) -> Result<()> {
        Ok(())
    }

    async fn disconnect(&self) -> Result<()> {
        let records: Vec<Service> =
            self.inner.subs.lock().unwrap_or_else(|p| p.into_inner()).drain().map(|(_, s)| s.record).collect();
        for r in records {
            let _ = self.inner.registry.deregister(&r).await;
        }
        if let Some((_, cancel)) = self.inner.server.lock().await.take() {
            cancel.cancel();
            // A publisher whose message a handler took must hear so, even if
            // this process exits next (`micro subscribe --count 1` does):
            // wait for the deliveries in flight to be answered.
            self.inner.connections.close();
            if tokio::time::timeout(READ_TIMEOUT, self.inner.connections.wait()).await.is_err() {
                tracing::warn!(limit = ?READ_TIMEOUT, "http broker: deliveries still running at disconnect");
            }
        }
        Ok(())
    }

    async fn publish(&self, topic: &str, mut msg: Message) -> Result<()> {
        msg.header.insert(headers::TOPIC.into(), topic.into());
        let services = match self.inner.registry.get_service(SERVICE).await {
            Ok(s) => s,
            Err(e) if e.code == 404 => return Ok(()), // nobody subscribes to anything
            Err(e) => return Err(e),
        };
        // Broadcast subscribers all get it; each queue group once.
        let subscribers = services.into_iter().flat_map(|s| {
            let queue = (s.version != BROADCAST).then(|| s.version.clone());
            s.nodes.into_iter().map(move |n| (queue.clone(), n))
        });
        let targets: Vec<Node> = super::recipients(subscribers.filter(|(_, n)| {
            n.metadata.get("broker").map(String::as_str) == Some("http")
                && n.metadata.get("topic").map(String::as_str) == Some(topic)
        }));
        let body = Bytes::from(
            serde_json::to_vec(&WireMessage { header: msg.header, body: msg.body.to_vec() })
                .map_err(|e| Error::internal(ID, e.to_string()))?,
        );
        let total = targets.len();
        let deadline = self.inner.delivery_timeout;
        let sends = targets.into_iter().map(|node| {
            let body = body.clone();
            let client = self.inner.client.clone();
            let inner = self.inner.clone();
            async move {
                let secure = node.metadata.get("secure").map(String::as_str) == Some("true");
                let path = format!("/?id={}", node.id.replace('/', "%2F").replace(':', "%3A"));
                let scheme = if secure { "https" } else { "http" };
                let uri = format!("{scheme}://{}{path}", node.address);
                let attempt = async {
                    if secure {
                        return inner.deliver_tls(&node, &path, body).await;
                    }
                    let req = Request::post(&uri).header("Content-Type", "application/json").body(Full::new(body));
                    match req {
                        Ok(req) => client.request(req).await.map(|r| r.status()).map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                };
                let res = match tokio::time::timeout(deadline, attempt).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer within {deadline:?}")),
                };
                let failure = match res {
                    Ok(s) if s.is_success() => return None,
                    Ok(s) => format!("refused with {s}"),
                    Err(e) => e,
                };
                tracing::warn!(%uri, reason = %failure, "http broker: delivery failed");
                Some(format!("{} at {} ({failure})", node.id, node.address))
            }
        });
        let failed: Vec<String> = futures::future::join_all(sends).await.into_iter().flatten().collect();
        if failed.is_empty() {
            return Ok(());
        }
        Err(Error::internal(
            ID,
            format!("{topic}: not delivered to {} of {total} subscribers: {}", failed.len(), failed.join("; ")),
        ))
    }

    async fn subscribe(
        &self,
        topic: &str,
        handler: BrokerHandler,
        opts: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>> {
        if topic.is_empty() {
            return Err(Error::bad_request(ID, "subscribe: empty topic"));
        }
        let addr = self.inner.serve().await?;
        let id = format!("{topic}-{}", uuid::Uuid::new_v4());
        let mut metadata = HashMap::new();
        metadata.insert("broker".to_string(), "http".to_string());
        metadata.insert("topic".to_string(), topic.to_string());
        metadata.insert("secure".to_string(), self.inner.secure.to_string());
        let record = Service {
            name: SERVICE.into(),
            version: opts.queue.clone().unwrap_or_else(|| BROADCAST.into()),
            // As told, else (bound to all interfaces) one that others can dial.
            nodes: vec![Node {
                id: id.clone(),
                address: self.inner.advertise.clone().unwrap_or_else(|| crate::addr::advertised(&addr)),
                metadata,
            }],
            ..Default::default()
        };
        self.inner.registry.register(&record, RegisterOptions { ttl: TTL }).await?;
        self.inner
            .subs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), Sub { topic: topic.to_string(), handler, record });
        Ok(Box::new(HttpSubscription { inner: self.inner.clone(), id, topic: topic.to_string(), queue: opts.queue }))
    }

    fn address(&self) -> String {
        self.inner.server.try_lock().ok().and_then(|s| s.as_ref().map(|(a, _)| a.clone())).unwrap_or_default()
    }

    fn name(&self) -> &str {
        "http"
    }
}

impl Drop for HttpBroker {
    fn drop(&mut self) {
        if let Ok(s) = self.inner.server.try_lock() {
            if let Some((_, c)) = &*s {
                c.cancel();
            }
        }
    }
}

struct HttpSubscription {
    inner: Arc<Inner>,
    id: String,
    topic: String,
    queue: Option<String>,
}

#[async_trait]
impl Subscription for HttpSubscription {
    fn topic(&self) -> &str {
        &self.topic
    }
    fn queue(&self) -> Option<&str> {
        self.queue.as_deref()
    }
    async fn unsubscribe(&self) -> Result<()> {
        let sub = self.inner.subs.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
        if let Some(s) = sub {
            self.inner.registry.deregister(&s.record).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::MemoryRegistry;
    use base64::Engine as _;
    use micro_core::Handled;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn broker(reg: &Arc<MemoryRegistry>) -> Result<HttpBroker> {
        HttpBroker::new(BrokerOptions { addresses: vec![], registry: Some(reg.clone()), ..Default::default() })
    }

    /// A subscriber that disconnects and exits (its runtime gone) while
    /// its handler still runs: the publisher is answered, not cut off. The
    /// tool's `micro subscribe --count 1` does exactly this.
    #[test]
    fn disconnect_answers_the_deliveries_in_flight() -> Result<()> {
        let rt = || tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().map_err(io);
        let (sub_rt, pub_rt) = (rt()?, rt()?);
        let reg = Arc::new(MemoryRegistry::new());
        let (took_tx, took) = std::sync::mpsc::channel::<()>();
        let handler: BrokerHandler = Arc::new(move |_t: &str, _m| {
            let _ = took_tx.send(());
            // Still running when the subscriber disconnects.
            Handled::later(async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok(())
            })
        });
        let subscriber = broker(&reg)?;
        sub_rt.block_on(subscriber.subscribe("t", handler, SubscribeOptions::default()))?;
        let publisher = broker(&reg)?;
        let published = pub_rt.spawn(async move { publisher.publish("t", Message::new(&b"{}"[..])).await });
        took.recv_timeout(Duration::from_secs(10)).map_err(io)?;
        sub_rt.block_on(subscriber.disconnect())?;
        // The process exits: nothing of the subscriber runs any more.
        sub_rt.shutdown_background();
        let r = pub_rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), published).await });
        match r {
            Ok(Ok(Ok(()))) => Ok(()),
            other => Err(io(format!("the publisher was not answered: {other:?}"))),
        }
    }

    #[tokio::test]
    async fn meets_the_broker_contract() -> Result<()> {
        let reg = Arc::new(MemoryRegistry::new());
        let (p, a, b) = (broker(&reg)?, broker(&reg)?, broker(&reg)?);
        micro_testkit::contract::broker(&p, &a, &b, "contract", std::time::Duration::from_secs(10))
            .await
            .map_err(|e| micro_core::Error::internal("contract", e.to_string()))
    }

    fn counter() -> (Arc<AtomicUsize>, BrokerHandler) {
        let n = Arc::new(AtomicUsize::new(0));
        let m = n.clone();
        (
            n,
            Arc::new(move |_t: &str, msg: Message| {
                assert_eq!(msg.get("k"), Some("v"));
                m.fetch_add(msg.body.len(), Ordering::SeqCst);
                Handled::ok()
            }),
        )
    }

    fn io(e: impl std::fmt::Display) -> Error {
        Error::internal("test", e.to_string())
    }

    /// A subscriber that accepts the delivery's connection and never
    /// answers: publish gives up on it at the deadline and says so, naming
    /// it, while the good subscriber got the message.
    #[tokio::test]
    async fn a_subscriber_that_never_answers_is_named_not_waited_for() -> Result<()> {
        let reg = Arc::new(MemoryRegistry::new());
        let opts = || BrokerOptions { addresses: vec![], registry: Some(reg.clone()), ..Default::default() };
        let good = broker(&reg)?;
        let (got, h) = counter();
        let _sub = good.subscribe("t", h, SubscribeOptions::default()).await?;
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(io)?;
        let silent_addr = silent.local_addr().map_err(io)?.to_string();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = silent.accept().await {
                conns.push(c); // accepted, never read or answered
            }
        });
        let mut metadata = HashMap::new();
        metadata.insert("broker".to_string(), "http".to_string());
        metadata.insert("topic".to_string(), "t".to_string());
        let fake = Service {
            name: SERVICE.into(),
            version: BROADCAST.into(),
            nodes: vec![Node { id: "t-silent".into(), address: silent_addr.clone(), metadata }],
            ..Default::default()
        };
        reg.register(&fake, RegisterOptions::default()).await?;
        let p = HttpBroker::with_delivery_timeout(opts(), Duration::from_millis(300))?;
        let msg = Message::new(&b"hello"[..]).with_header("k", "v");
        let t0 = std::time::Instant::now();
        let e = tokio::time::timeout(Duration::from_secs(5), p.publish("t", msg)).await.map_err(io)?.err();
        let e = e.map(|e| e.detail).unwrap_or_default();
        assert!(t0.elapsed() < Duration::from_secs(2), "publish waited {:?}", t0.elapsed());
        assert!(e.contains("not delivered to 1 of 2 subscribers: t-silent at"), "{e}");
        assert!(e.contains("no answer within"), "{e}");
        assert_eq!(got.load(Ordering::SeqCst), 5, "the good subscriber got it");
        held.abort();
        Ok(())
    }

    /// A publisher that connects to a subscriber's server and stalls in its
    /// headers is cut off by the header read timeout.
    #[tokio::test]
    async fn a_stalled_publisher_connection_is_closed() -> Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let reg = Arc::new(MemoryRegistry::new());
        let b = broker(&reg)?;
        let (_n, h) = counter();
        let _sub = b.subscribe("t", h, SubscribeOptions::default()).await?;
        let mut s = tokio::net::TcpStream::connect(b.address()).await.map_err(io)?;
        s.write_all(b"POST /?id=x HTTP/1.1\r\nHost: x\r\n").await.map_err(io)?;
        let mut buf = [0u8; 1024];
        let t0 = std::time::Instant::now();
        loop {
            match tokio::time::timeout(READ_TIMEOUT * 3, s.read(&mut buf)).await {
                Err(_) => return Err(io("the stalled connection was never closed")),
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => continue, // a 408 before the close
            }
        }
        assert!(t0.elapsed() < READ_TIMEOUT * 2, "{:?}", t0.elapsed());
        Ok(())
    }

    #[tokio::test]
    async fn broadcast_queue_groups_and_go_micro_layout() -> Result<()> {
        let reg = Arc::new(MemoryRegistry::new());
        let (a, b, p) = (broker(&reg)?, broker(&reg)?, broker(&reg)?);
        let (all_a, ha) = counter();
        let (all_b, hb) = counter();
        let (q1, hq1) = counter();
        let (q2, hq2) = counter();
        a.subscribe("t", ha, SubscribeOptions::default()).await?;
        let sb = b.subscribe("t", hb, SubscribeOptions::default()).await?;
        a.subscribe("t", hq1, SubscribeOptions { queue: Some("g".into()) }).await?;
        b.subscribe("t", hq2, SubscribeOptions { queue: Some("g".into()) }).await?;
        let recs = reg.get_service(SERVICE).await?;
        let versions: Vec<&str> = recs.iter().map(|s| s.version.as_str()).collect();
        assert!(versions.contains(&BROADCAST) && versions.contains(&"g"), "{versions:?}");
        let node = &recs[0].nodes[0];
        assert_eq!(node.metadata.get("broker").map(String::as_str), Some("http"));
        assert!(node.id.starts_with("t-"));
        for _ in 0..40 {
            p.publish("t", Message::new(&b"x"[..]).with_header("k", "v")).await?;
        }
        assert_eq!(all_a.load(Ordering::SeqCst), 40);
        assert_eq!(all_b.load(Ordering::SeqCst), 40);
        let (x, y) = (q1.load(Ordering::SeqCst), q2.load(Ordering::SeqCst));
        assert_eq!(x + y, 40);
        assert!(x > 0 && y > 0, "{x}/{y}");
        sb.unsubscribe().await?;
        p.publish("t", Message::new(&b"x"[..]).with_header("k", "v")).await?;
        assert_eq!(all_b.load(Ordering::SeqCst), 40);
        assert_eq!(all_a.load(Ordering::SeqCst), 41);
        // Publishing to a topic nobody subscribes to is not an error.
        p.publish("nobody", Message::new(&b"x"[..])).await?;
        Ok(())
    }

    #[test]
    fn the_json_is_go_micros_broker_message() -> std::result::Result<(), serde_json::Error> {
        let m = WireMessage {
            header: [("Micro-Topic".to_string(), "t".to_string())].into_iter().collect(),
            body: b"{\"a\":1}".to_vec(),
        };
        let v: serde_json::Value = serde_json::from_slice(&serde_json::to_vec(&m)?)?;
        assert_eq!(v["Header"]["Micro-Topic"], "t");
        assert_eq!(v["Body"], base64::engine::general_purpose::STANDARD.encode(b"{\"a\":1}"));
        Ok(())
    }
}
