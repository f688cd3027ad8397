//! The probe plugin of micro's tests: a client whose endpoints exercise
//! the plugin's own runtime (spawn, timers, TCP), tracing forwarding and
//! panics. Features export it wrongly in each way the loader must refuse.

use bytes::Bytes;
use micro_core::{CallOptions, Client, ClientOptions, Error, Message, Request, Response, Result};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Probe;

/// The probe's NewFunc.
pub fn new_client(_opts: ClientOptions) -> Result<Arc<dyn Client>> {
    if cfg!(feature = "panic-new") {
        panic!("probe panics in its constructor");
    }
    Ok(Arc::new(Probe))
}

fn reply(body: impl Into<Bytes>) -> Result<Response> {
    Ok(Response { content_type: "text/plain".into(), body: body.into(), metadata: Default::default() })
}

type Fut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

// Written out instead of with #[async_trait] so that `Probe.PanicNow` can
// panic in the method itself, before any future exists.
impl Client for Probe {
    fn call<'a, 'b>(&'a self, req: Request, _opts: CallOptions) -> Fut<'b, Result<Response>>
    where
        'a: 'b,
        Self: 'b,
    {
        if req.endpoint == "Probe.PanicNow" {
            panic!("probe panics in a method");
        }
        Box::pin(async move {
            match req.endpoint.as_str() {
                "Probe.Spawn" => {
                    let n =
                        tokio::spawn(async { 41 + 1 }).await.map_err(|e| Error::internal("probe", e.to_string()))?;
                    reply(n.to_string())
                }
                "Probe.Sleep" => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    reply("slept")
                }
                "Probe.Tcp" => {
                    let addr = String::from_utf8_lossy(&req.body).to_string();
                    let mut s = tokio::net::TcpStream::connect(&addr)
                        .await
                        .map_err(|e| Error::internal("probe", e.to_string()))?;
                    s.write_all(b"ping").await.map_err(|e| Error::internal("probe", e.to_string()))?;
                    let mut buf = [0u8; 4];
                    s.read_exact(&mut buf).await.map_err(|e| Error::internal("probe", e.to_string()))?;
                    reply(buf.to_vec())
                }
                "Probe.Log" => {
                    tracing::warn!(probe = "yes", answer = 42, "hello from the probe plugin");
                    reply("logged")
                }
                "Probe.PanicInPoll" => {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    panic!("probe panics inside a polled future");
                }
                other => Err(Error::not_found("probe", format!("no endpoint {other}"))),
            }
        })
    }

    fn publish<'a, 'b, 'c>(&'a self, _topic: &'b str, _msg: Message) -> Fut<'c, Result<()>>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        Box::pin(async { Ok(()) })
    }

    fn name(&self) -> &str {
        "probe"
    }
}

#[cfg(not(any(feature = "unknown-type", feature = "wrong-kind")))]
micro_plugin::export_plugin!(
    name: "probe",
    kind: "client",
    new: new_client,
    init: || {
        if cfg!(feature = "panic-init") {
            panic!("probe panics in init");
        }
        tracing::info!("probe initialised");
    },
);

#[cfg(feature = "unknown-type")]
micro_plugin::export_plugin!(name: "probe", kind: "database", new: new_client);

#[cfg(feature = "wrong-kind")]
micro_plugin::export_plugin!(name: "probe", kind: "transport", new: new_client);
