//! Publish/subscribe messaging.

use crate::{async_trait, BoxFuture, Message, Registry, Result};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Handles one delivered message: `(topic, message)`.
///
/// The topic is borrowed (a broker can hand over the subject it received
/// without copying it, as the nats broker does) and the result is a
/// [`Handled`], which is either finished already or a future: a handler that
/// needs no waiting costs the broker no allocation per message. A handler's
/// work may start when it is called (one from across the plugin boundary
/// crosses then), so a broker calls it when it means to deliver and awaits
/// the result straight away.
pub type BrokerHandler = Arc<dyn Fn(&str, Message) -> Handled + Send + Sync>;

/// What a [`BrokerHandler`] returns for one message: a future of the
/// handler's result, which the broker awaits (the nats broker before it
/// takes the subscription's next message).
///
/// ```
/// use micro_core::{BrokerHandler, Handled};
/// use std::sync::{atomic::{AtomicUsize, Ordering}, Arc};
///
/// let seen = Arc::new(AtomicUsize::new(0));
/// let s = seen.clone();
/// // Finished at once: no future is allocated.
/// let count: BrokerHandler = Arc::new(move |_topic: &str, _msg| {
///     s.fetch_add(1, Ordering::Relaxed);
///     Handled::ok()
/// });
/// // Goes on after returning: copy what it keeps of the topic.
/// let log: BrokerHandler = Arc::new(|topic: &str, msg| {
///     let topic = topic.to_string();
///     Handled::later(async move {
///         println!("{topic}: {} bytes", msg.body.len());
///         Ok(())
///     })
/// });
/// # let _ = (count, log);
/// ```
#[must_use = "a handler's work may not be done until its result is awaited"]
pub struct Handled(HandledState);

enum HandledState {
    Done(Option<Result<()>>),
    Later(BoxFuture<'static, Result<()>>),
}

impl Handled {
    /// Handled successfully, already.
    pub fn ok() -> Self {
        Handled(HandledState::Done(Some(Ok(()))))
    }

    /// Handled already, with this result.
    pub fn done(result: Result<()>) -> Self {
        Handled(HandledState::Done(Some(result)))
    }

    /// Handling goes on in `fut` (boxed once).
    pub fn later(fut: impl Future<Output = Result<()>> + Send + 'static) -> Self {
        Handled(HandledState::Later(Box::pin(fut)))
    }
}

impl From<Result<()>> for Handled {
    fn from(result: Result<()>) -> Self {
        Handled::done(result)
    }
}

impl From<BoxFuture<'static, Result<()>>> for Handled {
    fn from(fut: BoxFuture<'static, Result<()>>) -> Self {
        Handled(HandledState::Later(fut))
    }
}

impl Future for Handled {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        // Both states are Unpin (a boxed future is pinned on the heap).
        let this = self.get_mut();
        match &mut this.0 {
            HandledState::Done(result) => Poll::Ready(
                result
                    .take()
                    .unwrap_or_else(|| Err(crate::Error::internal("micro", "Handled polled after completion"))),
            ),
            HandledState::Later(fut) => {
                let result = std::task::ready!(fut.as_mut().poll(cx));
                // A finished future must not be polled again (an async
                // block panics): a later poll gets the error below instead.
                this.0 = HandledState::Done(None);
                Poll::Ready(result)
            }
        }
    }
}

impl std::fmt::Debug for Handled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            HandledState::Done(r) => f.debug_tuple("Handled::Done").field(r).finish(),
            HandledState::Later(_) => f.write_str("Handled::Later(..)"),
        }
    }
}

/// Options of [`Broker::subscribe`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// A queue group: each message goes to one member of the group.
    /// Without one, every subscriber gets every message.
    pub queue: Option<String>,
}

/// What a broker constructor is given.
#[derive(Clone, Default)]
pub struct BrokerOptions {
    /// Addresses of the broker's servers.
    pub addresses: Vec<String>,
    /// The registry, for brokers that find their peers through it.
    pub registry: Option<Arc<dyn Registry>>,
    /// TLS files, for brokers that listen or dial on their own (the `http`
    /// broker): the transport's, so that pub/sub is as protected as calls.
    pub tls: crate::TlsOptions,
    /// For brokers that listen on their own (the `http` broker): the
    /// `host:port` to register for that listener instead of the one derived
    /// from its bound address (behind NAT, or to pick an interface).
    pub advertise: Option<String>,
}

impl std::fmt::Debug for BrokerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerOptions")
            .field("addresses", &self.addresses)
            .field("advertise", &self.advertise)
            .field("registry", &self.registry.as_ref().map(|r| r.name().to_string()))
            .field("tls", &self.tls)
            .finish()
    }
}

/// A message broker.
#[async_trait]
pub trait Broker: Send + Sync {
    /// Connects to the broker's servers.
    async fn connect(&self) -> Result<()>;
    /// Disconnects.
    async fn disconnect(&self) -> Result<()>;
    /// Publishes a message to a topic.
    async fn publish(&self, topic: &str, msg: Message) -> Result<()>;
    /// Subscribes a handler to a topic.
    async fn subscribe(
        &self,
        topic: &str,
        handler: BrokerHandler,
        opts: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>>;
    /// Where the broker is, for messages and metadata.
    fn address(&self) -> String;
    /// The broker's name, e.g. `memory`.
    fn name(&self) -> &str;
}

/// A live subscription.
#[async_trait]
pub trait Subscription: Send + Sync {
    /// The topic.
    fn topic(&self) -> &str;
    /// The queue group, if any.
    fn queue(&self) -> Option<&str>;
    /// Stops delivery to this subscription.
    async fn unsubscribe(&self) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn poll(h: &mut Handled) -> Poll<Result<()>> {
        Pin::new(h).poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_finished_handler_is_ready_at_once_and_only_once() {
        let mut h = Handled::done(Err(crate::Error::internal("t", "boom")));
        assert!(matches!(poll(&mut h), Poll::Ready(Err(e)) if e.detail == "boom"));
        // Polled again (a broker's bug): an error, not a panic or a second result.
        assert!(matches!(poll(&mut h), Poll::Ready(Err(e)) if e.detail.contains("after completion")));
        assert!(matches!(poll(&mut Handled::ok()), Poll::Ready(Ok(()))));
    }

    #[tokio::test]
    async fn a_later_handler_runs_its_future() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut h = Handled::later(async move { rx.await.map_err(|_| crate::Error::internal("t", "dropped")) });
        assert!(poll(&mut h).is_pending(), "it waits for its future");
        let _ = tx.send(());
        assert!((&mut h).await.is_ok());
        // Polled again: an error, not the finished async block's panic.
        assert!(matches!(poll(&mut h), Poll::Ready(Err(e)) if e.detail.contains("after completion")));
    }
}
