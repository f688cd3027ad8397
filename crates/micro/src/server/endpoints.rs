//! What both built-in servers keep alike: the handlers and subscribers they
//! were given before start, the checks on adding them, the broker
//! subscriptions made at start, and the service record they advertise.

use crate::lock;
use micro_core::{
    Broker, Endpoint, Error, Handler, Node, Result, ServerOptions, Service, SubscribeOptions, Subscriber, Subscription,
};
use std::collections::HashMap;
use std::sync::Mutex;

const ID: &str = "go.micro.server";

/// The handlers and subscribers of a server.
#[derive(Default)]
pub(crate) struct Endpoints {
    handlers: Mutex<HashMap<String, Handler>>,
    subscribers: Mutex<Vec<Subscriber>>,
}

impl Endpoints {
    /// Adds a handler named `Handler.Method`; not while the server runs.
    pub(crate) fn add_handler(&self, handler: Handler, running: bool) -> Result<()> {
        let name = handler.endpoint.name.clone();
        if name.split('.').count() != 2 || name.starts_with('.') || name.ends_with('.') {
            return Err(Error::bad_request(ID, format!("handler name {name:?} is not of the form Handler.Method")));
        }
        if running {
            return Err(Error::conflict(ID, format!("cannot add handler {name} to a running server")));
        }
        lock(&self.handlers).insert(name, handler);
        Ok(())
    }

    /// Adds a subscriber; not while the server runs.
    pub(crate) fn add_subscriber(&self, subscriber: Subscriber, running: bool) -> Result<()> {
        if running {
            return Err(Error::conflict(ID, "cannot subscribe on a running server"));
        }
        lock(&self.subscribers).push(subscriber);
        Ok(())
    }

    /// The handlers, by name, as a server serves them once started.
    pub(crate) fn handlers(&self) -> HashMap<String, Handler> {
        lock(&self.handlers).clone()
    }

    /// Subscribes every subscriber to `broker`; on a failure, undoes the
    /// subscriptions already made.
    pub(crate) async fn subscribe_all(&self, broker: &dyn Broker) -> Result<Vec<Box<dyn Subscription>>> {
        let subscribers = lock(&self.subscribers).clone();
        let mut subs = Vec::with_capacity(subscribers.len());
        for s in subscribers {
            match broker.subscribe(&s.topic, s.handler.clone(), SubscribeOptions { queue: s.queue.clone() }).await {
                Ok(sub) => subs.push(sub),
                Err(e) => {
                    unsubscribe_all(&subs).await;
                    return Err(e);
                }
            }
        }
        Ok(subs)
    }

    /// The service record: the node at `address` (or the advertised one)
    /// with the options' metadata, `node_metadata` and the broker's name,
    /// and every endpoint, subscribers as go-micro lists them.
    pub(crate) fn record(&self, opts: &ServerOptions, address: String, node_metadata: &[(&str, &str)]) -> Service {
        let mut endpoints: Vec<Endpoint> = lock(&self.handlers).values().map(|h| h.endpoint.clone()).collect();
        endpoints.sort_by(|a, b| a.name.cmp(&b.name));
        for s in lock(&self.subscribers).iter() {
            let metadata =
                HashMap::from([("topic".to_string(), s.topic.clone()), ("subscriber".to_string(), "true".to_string())]);
            endpoints.push(Endpoint { name: format!("Subscriber.{}", s.topic), metadata, ..Default::default() });
        }
        let mut metadata = opts.metadata.clone();
        for (k, v) in node_metadata {
            metadata.insert(k.to_string(), v.to_string());
        }
        metadata.insert("broker".into(), opts.broker.name().into());
        Service {
            name: opts.name.clone(),
            version: opts.version.clone(),
            metadata: HashMap::new(),
            endpoints,
            nodes: vec![Node {
                id: opts.id.clone(),
                address: opts.advertise.clone().unwrap_or_else(|| crate::addr::advertised(&address)),
                metadata,
            }],
        }
    }
}

/// Unsubscribes each subscription, logging (not returning) failures; all of
/// it within the stop step's deadline (a broker that is down is skipped).
pub(crate) async fn unsubscribe_all(subs: &[Box<dyn Subscription>]) {
    let all = async {
        for s in subs {
            if let Err(e) = s.unsubscribe().await {
                tracing::warn!(topic = s.topic(), error = %e, "unsubscribe failed");
            }
        }
    };
    if tokio::time::timeout(crate::service::STOP_STEP_LIMIT, all).await.is_err() {
        tracing::warn!(limit = ?crate::service::STOP_STEP_LIMIT, "unsubscribe timed out: is the broker down? skipped");
    }
}
