use micro_core::{
    async_trait, headers, CallOptions, Client, ClientOptions, Error, Message, Request, Response, Result, SelectOptions,
    Socket,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const ID: &str = "go.micro.client";

/// The RPC client in the manner of go-micro's mucp: a request is one
/// message with `Micro-*` headers over a pooled transport connection, and
/// one connection carries one call at a time.
pub struct MucpClient {
    opts: ClientOptions,
    pool: Pool,
    seq: AtomicU64,
}

/// What one attempt ended with: the call's answer, or a connection
/// problem that another attempt (maybe to another node) may fix.
enum Attempt {
    Done(Result<Response>),
    Conn(Error),
}

impl MucpClient {
    /// A client with these options.
    pub fn new(opts: ClientOptions) -> Self {
        MucpClient { pool: Pool::new(opts.pool_size, opts.pool_ttl), opts, seq: AtomicU64::new(1) }
    }

    async fn attempt(&self, address: &str, req: &Request, deadline: Instant) -> Attempt {
        let mut sock = match self.pool.get(address) {
            Some(s) => s,
            None => match self.opts.transport.dial(address).await {
                Ok(s) => s,
                Err(e) => return Attempt::Conn(Error::internal(ID, format!("connection error: {}", e.detail))),
            },
        };
        let id = self.seq.fetch_add(1, Ordering::Relaxed).to_string();
        let mut header = HashMap::with_capacity(req.metadata.len() + 6);
        for (k, v) in &req.metadata {
            header.insert(k.clone(), v.clone());
        }
        header.insert(headers::SERVICE.into(), req.service.clone());
        header.insert(headers::ENDPOINT.into(), req.endpoint.clone());
        header.insert(headers::METHOD.into(), req.endpoint.clone());
        header.insert(headers::ID.into(), id.clone());
        header.insert(headers::CONTENT_TYPE.into(), req.content_type.clone());
        let left = deadline.saturating_duration_since(Instant::now());
        header.insert(headers::TIMEOUT.into(), left.as_millis().to_string());
        if let Err(e) = sock.send(Message { header, body: req.body.clone() }).await {
            self.pool.clear(address);
            return Attempt::Conn(Error::internal(ID, format!("connection error: {}", e.detail)));
        }
        let msg = match sock.recv().await {
            Ok(m) => m,
            Err(e) => {
                self.pool.clear(address);
                return Attempt::Conn(Error::internal(ID, format!("connection error: {}", e.detail)));
            }
        };
        if msg.get(headers::ID).is_some_and(|got| got != id) {
            // The connection is out of step; never reuse it.
            return Attempt::Done(Err(Error::internal(ID, "response id does not match request id")));
        }
        self.pool.put(address, sock);
        let mut msg = msg;
        if let Some(err) = msg.header.remove(headers::ERROR) {
            return Attempt::Done(Err(Error::parse(&err)));
        }
        let content_type = msg.header.remove(headers::CONTENT_TYPE).unwrap_or_else(|| req.content_type.clone());
        Attempt::Done(Ok(Response { content_type, body: msg.body, metadata: msg.header }))
    }

    async fn call_inner(&self, req: &Request, opts: &CallOptions, deadline: Instant) -> Result<Response> {
        let retries = opts.retries.unwrap_or(self.opts.retries);
        let mut exclude = Vec::new();
        let mut last = None;
        for attempt in 0..=retries {
            if attempt > 0 {
                // Short exponential backoff: 10ms, 20ms, 40ms … capped at 1s.
                let backoff = Duration::from_millis(10u64 << (attempt - 1).min(7)).min(Duration::from_secs(1));
                tokio::time::sleep(backoff).await;
            }
            let (address, node_id) = match &opts.address {
                Some(a) => (a.clone(), None),
                None => {
                    let sel = SelectOptions { exclude: exclude.clone() };
                    match self.opts.selector.select(&req.service, sel).await {
                        Ok(n) => (n.address, Some(n.id)),
                        // Every node failed this call already: try them again.
                        Err(_) if !exclude.is_empty() => {
                            exclude.clear();
                            let n = self.opts.selector.select(&req.service, SelectOptions::default()).await?;
                            (n.address, Some(n.id))
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            match self.attempt(&address, req, deadline).await {
                // A server at its limit or shutting down: another node may take it.
                Attempt::Done(Err(e)) if e.code == 503 && attempt < retries => {
                    tracing::debug!(service = %req.service, %address, attempt, "node busy; trying another");
                    if let Some(id) = node_id {
                        exclude.push(id);
                    }
                    last = Some(e);
                }
                Attempt::Done(res) => {
                    // The node answered, even if with an application error: it is healthy.
                    if let Some(id) = &node_id {
                        self.opts.selector.mark(&req.service, id, Ok(()));
                    }
                    return res;
                }
                Attempt::Conn(e) => {
                    tracing::debug!(service = %req.service, %address, error = %e.detail, attempt, "call attempt failed");
                    if let Some(id) = node_id {
                        self.opts.selector.mark(&req.service, &id, Err(&e));
                        exclude.push(id);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::internal(ID, "no attempt made")))
    }
}

#[async_trait]
impl Client for MucpClient {
    async fn call(&self, req: Request, opts: CallOptions) -> Result<Response> {
        let timeout = opts.timeout.unwrap_or(self.opts.request_timeout);
        let deadline = Instant::now() + timeout;
        match tokio::time::timeout(timeout, self.call_inner(&req, &opts, deadline)).await {
            Ok(res) => res,
            Err(_) => {
                Err(Error::timeout(ID, format!("call {}.{} timed out after {timeout:?}", req.service, req.endpoint)))
            }
        }
    }

    async fn publish(&self, topic: &str, mut msg: Message) -> Result<()> {
        msg.header.insert(headers::TOPIC.into(), topic.into());
        msg.header.entry(headers::ID.into()).or_insert_with(|| uuid::Uuid::new_v4().to_string());
        self.opts.broker.publish(topic, msg).await
    }

    fn name(&self) -> &str {
        "mucp"
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
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(address)?;
        while let Some((sock, since)) = list.pop() {
            if since.elapsed() < self.ttl {
                return Some(sock);
            }
        }
        None
    }

    fn put(&self, address: &str, sock: Box<dyn Socket>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(address.to_string()).or_default();
        if list.len() < self.size {
            list.push((sock, Instant::now()));
        }
    }

    /// After a connection error the other idle connections to that address are suspect too.
    fn clear(&self, address: &str) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).remove(address);
    }
}
