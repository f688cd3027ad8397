use micro_core::{async_trait, Broker, BrokerHandler, Error, Message, Result, SubscribeOptions, Subscription};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// A broker inside this process. Instances with the same address share
/// their subscriptions, so services in one process reach each other.
///
/// Delivery is synchronous and at-most-once: `publish` returns after every
/// chosen handler has run; a handler's error is logged, not retried.
pub struct MemoryBroker {
    inner: Arc<Inner>,
    address: String,
}

#[derive(Default)]
struct Inner {
    subs: Mutex<HashMap<String, Vec<Sub>>>,
    next_id: std::sync::atomic::AtomicU64,
}

#[derive(Clone)]
struct Sub {
    id: u64,
    queue: Option<String>,
    handler: BrokerHandler,
}

impl MemoryBroker {
    /// The shared broker of this process for `address` (`""` is the default).
    pub fn shared(address: &str) -> Arc<MemoryBroker> {
        static ALL: OnceLock<Mutex<HashMap<String, Weak<Inner>>>> = OnceLock::new();
        let mut all = ALL.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
        let inner = match all.get(address).and_then(Weak::upgrade) {
            Some(inner) => inner,
            None => {
                let inner = Arc::new(Inner::default());
                all.insert(address.to_string(), Arc::downgrade(&inner));
                inner
            }
        };
        Arc::new(MemoryBroker { inner, address: address.to_string() })
    }

    /// A new, private broker.
    pub fn new() -> MemoryBroker {
        MemoryBroker { inner: Arc::default(), address: String::new() }
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn connect(&self) -> Result<()> {
        Ok(())
    }

    async fn disconnect(&self) -> Result<()> {
        Ok(())
    }

    async fn publish(&self, topic: &str, msg: Message) -> Result<()> {
        let chosen: Vec<BrokerHandler> = {
            let subs = self.inner.subs.lock().unwrap_or_else(|p| p.into_inner());
            let Some(list) = subs.get(topic) else { return Ok(()) };
            super::recipients(list.iter().map(|s| (s.queue.clone(), s.handler.clone())))
        };
        for h in chosen {
            if let Err(e) = h(topic, msg.clone()).await {
                tracing::warn!(topic, error = %e, "subscriber failed");
            }
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        topic: &str,
        handler: BrokerHandler,
        opts: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>> {
        if topic.is_empty() {
            return Err(Error::bad_request("go.micro.broker", "subscribe: empty topic"));
        }
        let id = self.inner.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.subs.lock().unwrap_or_else(|p| p.into_inner()).entry(topic.to_string()).or_default().push(Sub {
            id,
            queue: opts.queue.clone(),
            handler,
        });
        Ok(Box::new(MemorySubscription {
            inner: Arc::downgrade(&self.inner),
            topic: topic.to_string(),
            queue: opts.queue,
            id,
        }))
    }

    fn address(&self) -> String {
        self.address.clone()
    }

    fn name(&self) -> &str {
        "memory"
    }
}

struct MemorySubscription {
    inner: Weak<Inner>,
    topic: String,
    queue: Option<String>,
    id: u64,
}

#[async_trait]
impl Subscription for MemorySubscription {
    fn topic(&self) -> &str {
        &self.topic
    }

    fn queue(&self) -> Option<&str> {
        self.queue.as_deref()
    }

    async fn unsubscribe(&self) -> Result<()> {
        if let Some(inner) = self.inner.upgrade() {
            let mut subs = inner.subs.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(list) = subs.get_mut(&self.topic) {
                list.retain(|s| s.id != self.id);
                if list.is_empty() {
                    subs.remove(&self.topic);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro_core::Handled;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn meets_the_broker_contract() -> Result<()> {
        let b = MemoryBroker::new();
        micro_testkit::contract::broker(&b, &b, &b, "contract", std::time::Duration::from_secs(5))
            .await
            .map_err(|e| micro_core::Error::internal("contract", e.to_string()))
    }

    fn counter() -> (Arc<AtomicUsize>, BrokerHandler) {
        let n = Arc::new(AtomicUsize::new(0));
        let m = n.clone();
        let h: BrokerHandler = Arc::new(move |_t: &str, _m| {
            m.fetch_add(1, Ordering::SeqCst);
            Handled::ok()
        });
        (n, h)
    }

    #[tokio::test]
    async fn fan_out_queue_groups_and_unsubscribe() -> Result<()> {
        let b = MemoryBroker::new();
        let (all1, h1) = counter();
        let (all2, h2) = counter();
        let (q1, hq1) = counter();
        let (q2, hq2) = counter();
        let s1 = b.subscribe("t", h1, SubscribeOptions::default()).await?;
        b.subscribe("t", h2, SubscribeOptions::default()).await?;
        b.subscribe("t", hq1, SubscribeOptions { queue: Some("g".into()) }).await?;
        b.subscribe("t", hq2, SubscribeOptions { queue: Some("g".into()) }).await?;
        for _ in 0..100 {
            b.publish("t", Message::new(&b"x"[..])).await?;
        }
        b.publish("other", Message::new(&b"x"[..])).await?;
        assert_eq!(all1.load(Ordering::SeqCst), 100);
        assert_eq!(all2.load(Ordering::SeqCst), 100);
        // Each message went to exactly one group member, and both members got some.
        let (a, c) = (q1.load(Ordering::SeqCst), q2.load(Ordering::SeqCst));
        assert_eq!(a + c, 100);
        assert!(a > 10 && c > 10, "unbalanced queue group: {a}/{c}");
        s1.unsubscribe().await?;
        b.publish("t", Message::new(&b"x"[..])).await?;
        assert_eq!(all1.load(Ordering::SeqCst), 100);
        assert_eq!(all2.load(Ordering::SeqCst), 101);
        Ok(())
    }

    #[tokio::test]
    async fn a_failing_handler_does_not_stop_delivery() -> Result<()> {
        let b = MemoryBroker::new();
        let bad: BrokerHandler = Arc::new(|_t: &str, _m| Handled::done(Err(Error::internal("x", "boom"))));
        let (n, good) = counter();
        b.subscribe("t", bad, SubscribeOptions::default()).await?;
        b.subscribe("t", good, SubscribeOptions::default()).await?;
        b.publish("t", Message::default()).await?;
        assert_eq!(n.load(Ordering::SeqCst), 1);
        Ok(())
    }
}
