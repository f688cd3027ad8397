//! `brpc`: an example client plugin. It wraps micro's mucp client, marks
//! every call and stream with the `Micro-Client-Plugin: brpc` header, counts calls,
//! and logs each one (the log line reaches the host through the plugin's
//! tracing forwarding). Build it as a plugin with
//! `micro plugin build --name brpc --type client --path examples/plugins/brpc --new-func new_client -o brpc.so`.

use micro::client::MucpClient;
use micro::core::{async_trait, CallOptions, Client, ClientOptions, Message, Request, Response, Result, Stream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The header brpc adds to every call.
pub const HEADER: &str = "Micro-Client-Plugin";

struct Brpc {
    inner: MucpClient,
    calls: AtomicU64,
}

/// The plugin's NewFunc.
pub fn new_client(opts: ClientOptions) -> Result<Arc<dyn Client>> {
    tracing::info!(retries = opts.retries, "brpc client created");
    Ok(Arc::new(Brpc { inner: MucpClient::new(opts), calls: AtomicU64::new(0) }))
}

#[async_trait]
impl Client for Brpc {
    async fn call(&self, mut req: Request, opts: CallOptions) -> Result<Response> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        req.metadata.insert(HEADER.into(), "brpc".into());
        tracing::info!(service = %req.service, endpoint = %req.endpoint, call = n, "brpc call");
        self.inner.call(req, opts).await
    }

    async fn stream(&self, mut req: Request, opts: CallOptions) -> Result<Stream> {
        req.metadata.insert(HEADER.into(), "brpc".into());
        tracing::info!(service = %req.service, endpoint = %req.endpoint, "brpc stream");
        self.inner.stream(req, opts).await
    }

    async fn publish(&self, topic: &str, msg: Message) -> Result<()> {
        self.inner.publish(topic, msg.with_header(HEADER, "brpc")).await
    }

    fn name(&self) -> &str {
        "brpc"
    }
}
