//! A broker, its subscriptions and subscription handlers across the boundary.

use super::*;

mod broker_m {
    pub(super) const CONNECT: u32 = 1;
    pub(super) const DISCONNECT: u32 = 2;
    pub(super) const PUBLISH: u32 = 3;
    pub(super) const SUBSCRIBE: u32 = 4;
    pub(super) const ADDRESS: u32 = 5;
    pub(super) const NAME: u32 = 6;
}

struct BrokerExport(Arc<dyn Broker>);

impl Dispatch for BrokerExport {
    fn call(
        self: Arc<Self>,
        method: u32,
        args: &[u8],
        mut objects: Vec<FfiObject>,
    ) -> BoxFuture<'static, Result<Reply>> {
        let mut r = Reader::new(args);
        match method {
            broker_m::CONNECT => Box::pin(async move { self.0.connect().await.and_then(|_| ok()) }),
            broker_m::DISCONNECT => Box::pin(async move { self.0.disconnect().await.and_then(|_| ok()) }),
            broker_m::PUBLISH => {
                let topic = dec!(r.string());
                let msg = dec!(wire::get_message(&mut r));
                Box::pin(async move { self.0.publish(&topic, msg).await.and_then(|_| ok()) })
            }
            broker_m::SUBSCRIBE => {
                let topic = dec!(r.string());
                let queue = dec!(r.opt_string());
                let handler = dec!(take_object(&mut objects, "handler").and_then(import_broker_handler));
                Box::pin(async move {
                    let sub = self.0.subscribe(&topic, handler, SubscribeOptions { queue }).await?;
                    Ok(Reply::object(export(Arc::new(SubscriptionExport(sub)))))
                })
            }
            m => ready_err(unknown_method("broker", m)),
        }
    }
    fn call_sync(&self, method: u32, _: &[u8], _: Vec<FfiObject>) -> Result<Reply> {
        match method {
            broker_m::ADDRESS => string_reply(&self.0.address()),
            broker_m::NAME => string_reply(self.0.name()),
            m => Err(unknown_method("broker", m)),
        }
    }
}

/// Exports a broker.
pub fn export_broker(b: Arc<dyn Broker>) -> FfiObject {
    export(Arc::new(BrokerExport(b)))
}

struct BrokerProxy {
    remote: Remote,
    name: String,
}

/// A broker exported by the other side.
pub fn import_broker(obj: FfiObject) -> Result<Arc<dyn Broker>> {
    let remote = Remote::new(obj)?;
    let name = remote.call_string(broker_m::NAME);
    Ok(Arc::new(BrokerProxy { remote, name }))
}

#[async_trait]
impl Broker for BrokerProxy {
    async fn connect(&self) -> Result<()> {
        self.remote.call(broker_m::CONNECT, &[], Vec::new()).await.map(|_| ())
    }
    async fn disconnect(&self) -> Result<()> {
        self.remote.call(broker_m::DISCONNECT, &[], Vec::new()).await.map(|_| ())
    }
    async fn publish(&self, topic: &str, msg: Message) -> Result<()> {
        let publish = self.remote.call_encoded(broker_m::PUBLISH, Vec::new(), |w| {
            w.str(topic);
            wire::put_message(w, &msg);
        });
        publish.await.map(|_| ())
    }
    async fn subscribe(
        &self,
        topic: &str,
        handler: BrokerHandler,
        opts: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>> {
        let mut w = Writer::new();
        w.str(topic).opt_str(opts.queue.as_deref());
        let r = self.remote.call(broker_m::SUBSCRIBE, &w.finish(), vec![export_broker_handler(handler)]).await?;
        Ok(Box::new(SubscriptionProxy {
            remote: Remote::new(reply_object(r, "subscription")?)?,
            topic: topic.to_string(),
            queue: opts.queue,
        }))
    }
    fn address(&self) -> String {
        self.remote.call_string(broker_m::ADDRESS)
    }
    fn name(&self) -> &str {
        &self.name
    }
}

mod subscription_m {
    pub(super) const UNSUBSCRIBE: u32 = 1;
}

struct SubscriptionExport(Box<dyn Subscription>);

impl Dispatch for SubscriptionExport {
    fn call(self: Arc<Self>, method: u32, _: &[u8], _: Vec<FfiObject>) -> BoxFuture<'static, Result<Reply>> {
        match method {
            subscription_m::UNSUBSCRIBE => Box::pin(async move { self.0.unsubscribe().await.and_then(|_| ok()) }),
            m => ready_err(unknown_method("subscription", m)),
        }
    }
    fn call_sync(&self, method: u32, _: &[u8], _: Vec<FfiObject>) -> Result<Reply> {
        Err(unknown_method("subscription", method))
    }
}

struct SubscriptionProxy {
    remote: Remote,
    topic: String,
    queue: Option<String>,
}

#[async_trait]
impl Subscription for SubscriptionProxy {
    fn topic(&self) -> &str {
        &self.topic
    }
    fn queue(&self) -> Option<&str> {
        self.queue.as_deref()
    }
    async fn unsubscribe(&self) -> Result<()> {
        self.remote.call(subscription_m::UNSUBSCRIBE, &[], Vec::new()).await.map(|_| ())
    }
}

mod handler_m {
    pub(super) const CALL: u32 = 1;
}

struct BrokerHandlerExport(BrokerHandler);

impl Dispatch for BrokerHandlerExport {
    fn call(self: Arc<Self>, method: u32, args: &[u8], _: Vec<FfiObject>) -> BoxFuture<'static, Result<Reply>> {
        if method != handler_m::CALL {
            return ready_err(unknown_method("broker handler", method));
        }
        let mut r = Reader::new(args);
        let topic = dec!(r.string());
        let msg = dec!(wire::get_message(&mut r));
        let handled = (self.0)(&topic, msg);
        Box::pin(async move { handled.await.and_then(|_| ok()) })
    }
    fn call_sync(&self, method: u32, _: &[u8], _: Vec<FfiObject>) -> Result<Reply> {
        Err(unknown_method("broker handler", method))
    }
}

pub(super) fn export_broker_handler(h: BrokerHandler) -> FfiObject {
    export(Arc::new(BrokerHandlerExport(h)))
}

pub(super) fn import_broker_handler(obj: FfiObject) -> Result<BrokerHandler> {
    let remote = Arc::new(Remote::new(obj)?);
    Ok(Arc::new(move |topic: &str, msg: Message| {
        // Encoded now, while the topic is borrowed.
        let call = remote.call_encoded_kept(handler_m::CALL, Vec::new(), |w| {
            w.str(topic);
            wire::put_message(w, &msg);
        });
        Handled::later(async move { call.await.map(|_| ()) })
    }))
}
