//! The `nats` broker of micro, on `async-nats`.
//!
//! Encoding, readable by any NATS client: the NATS subject is the topic,
//! the payload is the message body as is (JSON by default), and micro's
//! message headers (`Content-Type`, `Micro-Topic`, `Micro-Id`, …) travel as
//! NATS headers. A message from a plain NATS client, with or without
//! headers, arrives at a micro subscriber with those headers (if any) and
//! its payload as the body; without `Content-Type` the subscriber's default
//! codec (JSON) decodes it. Queue groups are NATS queue groups.
//!
//! Delivery is NATS core's: at-most-once. The client reconnects by itself
//! after the server restarts and re-subscribes its subscriptions; messages
//! published while the server is down are lost (publishes made while
//! disconnected are buffered by async-nats up to its limit and flushed on
//! reconnect).

use futures::StreamExt;
use micro_core::catalog::NewBroker;
use micro_core::{
    async_trait, Broker, BrokerHandler, BrokerOptions, Catalog, Error, Message, Result, SubscribeOptions, Subscription,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

const ID: &str = "go.micro.broker.nats";

/// Adds the `nats` broker to a catalog.
pub fn register(catalog: &mut Catalog) {
    catalog
        .brokers
        .insert("nats", Arc::new(|o: BrokerOptions| Ok(Arc::new(NatsBroker::new(o)) as Arc<dyn Broker>)) as NewBroker);
}

/// The NATS broker. Connects on first use (or `connect`).
pub struct NatsBroker {
    servers: Vec<String>,
    // Set once; publishing then needs no lock (the client is a cheap handle).
    client: OnceCell<async_nats::Client>,
}

impl NatsBroker {
    /// A broker for `opts.addresses` (default `127.0.0.1:4222`).
    pub fn new(opts: BrokerOptions) -> Self {
        let servers = if opts.addresses.is_empty() { vec!["127.0.0.1:4222".to_string()] } else { opts.addresses };
        NatsBroker { servers, client: OnceCell::new() }
    }

    async fn client(&self) -> Result<&async_nats::Client> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        // Boxed: the connect future is kilobytes, and inline it would make
        // every publish's future (boxed by `async_trait`) that large too,
        // past the allocator's per-thread cache.
        Box::pin(self.client.get_or_try_init(|| self.connect_client())).await
    }

    async fn connect_client(&self) -> Result<async_nats::Client> {
        let servers = self.servers.join(",");
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            // Keep reconnecting: a restarted server must not end the subscriptions.
            .max_reconnects(None)
            .event_callback(|ev| async move {
                // Connecting and closing are routine; losing the server is not.
                match ev {
                    async_nats::Event::Connected | async_nats::Event::Closed | async_nats::Event::Draining => {
                        tracing::debug!(event = %ev, "nats connection event")
                    }
                    _ => tracing::warn!(event = %ev, "nats connection event"),
                }
            })
            .connect(servers.as_str())
            .await
            .map_err(|e| Error::internal(ID, format!("nats connect to {servers}: {e}")))
    }
}

/// micro headers as NATS headers. A CR or LF (or a `:` or space in a name)
/// would be written into the NATS protocol as it is, ending the header block
/// early and smuggling in lines of the sender's choosing: refused.
fn nats_headers(h: &HashMap<String, String>) -> Result<async_nats::HeaderMap> {
    let mut m = async_nats::HeaderMap::new();
    for (k, v) in h {
        if k.is_empty() || k.bytes().any(|b| b.is_ascii_control() || b == b':' || b == b' ') {
            return Err(Error::bad_request(ID, format!("header name {k:?} cannot travel as a NATS header")));
        }
        if v.bytes().any(|b| b == b'\r' || b == b'\n') {
            return Err(Error::bad_request(
                ID,
                format!("header {k}: its value has a CR or LF, which NATS headers cannot carry"),
            ));
        }
        m.insert(k.as_str(), v.as_str());
    }
    Ok(m)
}

fn micro_headers(h: Option<&async_nats::HeaderMap>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    if let Some(h) = h {
        for (k, vs) in h.iter() {
            if let Some(v) = vs.first() {
                out.insert(k.to_string(), v.as_str().to_string());
            }
        }
    }
    out
}

#[async_trait]
impl Broker for NatsBroker {
    async fn connect(&self) -> Result<()> {
        self.client().await.map(|_| ())
    }

    async fn disconnect(&self) -> Result<()> {
        // Flush what is buffered; the connection itself closes when the broker is dropped.
        if let Some(c) = self.client.get() {
            let _ = c.flush().await;
        }
        Ok(())
    }

    async fn publish(&self, topic: &str, msg: Message) -> Result<()> {
        let headers = if msg.header.is_empty() { None } else { Some(nats_headers(&msg.header)?) };
        let client = self.client().await?;
        let res = match headers {
            None => client.publish(topic.to_string(), msg.body).await,
            Some(h) => client.publish_with_headers(topic.to_string(), h, msg.body).await,
        };
        res.map_err(|e| Error::internal(ID, format!("nats publish to {topic}: {e}")))
    }

    async fn subscribe(
        &self,
        topic: &str,
        handler: BrokerHandler,
        opts: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>> {
        let client = self.client().await?;
        let mut sub = match &opts.queue {
            Some(q) => client.queue_subscribe(topic.to_string(), q.clone()).await,
            None => client.subscribe(topic.to_string()).await,
        }
        .map_err(|e| Error::internal(ID, format!("nats subscribe to {topic}: {e}")))?;
        // A round trip to the server: once subscribe returns, the server has
        // the subscription, so a message published after it is delivered.
        round_trip(client).await.map_err(|e| Error::internal(ID, format!("nats subscribe to {topic}: {e}")))?;
        // Stop signal: a oneshot, whose receiver is polled with one atomic
        // load when nothing changed (a `Notify` waiter takes a lock per poll).
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let stopping = Arc::new(AtomicBool::new(false));
        let halted = stopping.clone();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let client = client.clone();
        let t = topic.to_string();
        tokio::spawn(async move {
            // A subscription handle dropped without `unsubscribe` keeps
            // delivering, as in go-micro: only a sent stop ends the loop.
            let mut orphaned = false;
            loop {
                let m = tokio::select! {
                    biased;
                    m = sub.next() => match m { Some(m) => m, None => break },
                    r = &mut stopped, if !orphaned => match r {
                        Ok(()) => break,
                        Err(_) => { orphaned = true; continue }
                    },
                };
                // Unsubscribed: nothing more reaches the handler, even what
                // the client had already buffered (one atomic load a message).
                if halted.load(Ordering::Relaxed) {
                    break;
                }
                let msg = Message { header: micro_headers(m.headers.as_ref()), body: m.payload };
                if let Err(e) = handler(&m.subject, msg).await {
                    tracing::warn!(topic = %t, error = %e, "subscriber failed");
                }
            }
            // The server has the UNSUB once the round trip is done.
            let _ = sub.unsubscribe().await;
            let _ = round_trip(&client).await;
            let _ = done_tx.send(());
        });
        Ok(Box::new(NatsSubscription {
            topic: topic.to_string(),
            queue: opts.queue,
            stop: std::sync::Mutex::new(Some(stop)),
            stopping,
            done: std::sync::Mutex::new(Some(done_rx)),
        }))
    }

    fn address(&self) -> String {
        self.servers.join(",")
    }

    fn name(&self) -> &str {
        "nats"
    }
}

struct NatsSubscription {
    topic: String,
    queue: Option<String>,
    stop: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    /// Set by `unsubscribe`: the delivery task calls the handler no more.
    stopping: Arc<AtomicBool>,
    /// Fires once the server has the unsubscription.
    done: std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
}

/// How long a [`round_trip`] may take.
const ROUND_TRIP_LIMIT: Duration = Duration::from_secs(5);

/// Returns once the server has processed everything this connection sent
/// before (a SUB, an UNSUB). async-nats's `flush` only empties the socket's
/// buffer: the server may still hold the SUB unread while another
/// connection's messages pass it by (a broker-contract run under load lost
/// all 50 messages of one subscriber so). NATS serves one connection's
/// operations in order, so a message that this connection publishes to a
/// subject only it subscribes to comes back after everything before it.
async fn round_trip(client: &async_nats::Client) -> std::result::Result<(), String> {
    let subject = client.new_inbox();
    let mut probe = client.subscribe(subject.clone()).await.map_err(|e| e.to_string())?;
    client.publish(subject, bytes::Bytes::new()).await.map_err(|e| e.to_string())?;
    client.flush().await.map_err(|e| e.to_string())?;
    // `probe` is dropped on return, which unsubscribes it.
    match tokio::time::timeout(ROUND_TRIP_LIMIT, probe.next()).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("the connection closed".into()),
        Err(_) => Err(format!("the server did not answer within {ROUND_TRIP_LIMIT:?}")),
    }
}

/// How long `unsubscribe` waits for the server to confirm (a server that
/// is down cannot; the subscription is gone on this side anyway).
const UNSUBSCRIBE_LIMIT: Duration = Duration::from_secs(5);

#[async_trait]
impl Subscription for NatsSubscription {
    fn topic(&self) -> &str {
        &self.topic
    }
    fn queue(&self) -> Option<&str> {
        self.queue.as_deref()
    }
    async fn unsubscribe(&self) -> Result<()> {
        // Once this returns, no message reaches the handler: the flag stops
        // delivery at once, and the task confirms the server's UNSUB.
        self.stopping.store(true, Ordering::Relaxed);
        let stop = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        let done = self.done.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(done) = done {
            if tokio::time::timeout(UNSUBSCRIBE_LIMIT, done).await.is_err() {
                tracing::warn!(topic = %self.topic, limit = ?UNSUBSCRIBE_LIMIT, "nats did not confirm the unsubscription in time");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_that_would_break_the_nats_protocol_are_refused() {
        let h = |k: &str, v: &str| HashMap::from([(k.to_string(), v.to_string())]);
        assert!(nats_headers(&h("Micro-Topic", "events")).is_ok());
        for (k, v) in [("X", "a\r\nPUB evil 1"), ("X", "line\n"), ("Bad:Name", "v"), ("Bad Name", "v"), ("", "v")] {
            let e = nats_headers(&h(k, v)).err().map(|e| (e.code, e.detail)).unwrap_or_default();
            assert_eq!(e.0, 400, "{k:?}={v:?}");
            assert!(e.1.contains("cannot"), "{e:?}");
        }
    }

    #[tokio::test]
    async fn publish_refuses_them_before_touching_the_network() {
        // No server at this address: the header check comes first.
        let b = NatsBroker::new(BrokerOptions { addresses: vec!["127.0.0.1:1".into()], ..Default::default() });
        let msg = Message::new(&b"x"[..]).with_header("X", "a\r\nPUB evil 1");
        let e = b.publish("t", msg).await.err().map(|e| e.detail).unwrap_or_default();
        assert!(e.contains("CR or LF"), "{e}");
    }

    #[test]
    fn a_publish_future_stays_small() {
        // `async_trait` boxes it on every publish. With the connect future
        // inline it was 6,864 bytes: past glibc's per-thread cache (1,032),
        // so each publish paid a slow malloc and free and a 6 KiB copy.
        let b = NatsBroker::new(BrokerOptions::default());
        let f = b.publish("t", Message::new(&b"x"[..]));
        let size = std::mem::size_of_val(&*f);
        assert!(size <= 1024, "publish future is {size} bytes");
    }
}
